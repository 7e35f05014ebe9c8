"""A real two-process DDP run (torchrun, gloo on CPU) of eat_finetune (with GradientProjection)
and a sharded evaluation."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import tiny_dls, tiny_learner

from eatai.all import evaluate_robustness

JOB = Path(__file__).with_name('ddp_job.py')


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('ddp')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                           '--master_port', '29517', str(JOB), str(out)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f'rank{r}.pt', weights_only=False) for r in (0, 1)]


def test_both_ranks_end_with_the_same_weights_and_statistics(ddp_run):
    r0, r1 = ddp_run
    assert r0['world'] == r1['world'] == 2
    assert all(torch.equal(r0['weights'][k], r1['weights'][k]) for k in r0['weights'])
    assert r0['history'] == r1['history'] and r0['probs'] == r1['probs']
    assert len(r0['history']) == 2
    assert r0['gp'] == r1['gp'] and len(r0['gp']) == 2   # GP combined every epoch, the same on both ranks


def test_evaluation_is_gathered_exactly(ddp_run):
    """Each process attacked every other point; the gathered flags equal those of the two
    shards evaluated one after the other in a single process."""
    r0, r1 = ddp_run
    assert r0['flags'] == r1['flags']
    learn = tiny_learner(tiny_dls(n_train=128, bs=16))
    learn.model.load_state_dict(r0['weights'])
    xs, ys = [], []
    for xb, yb in learn.dls.valid:
        xs.append(xb.as_subclass(torch.Tensor)), ys.append(yb.as_subclass(torch.Tensor))
    x, y = torch.cat(xs)[:16], torch.cat(ys)[:16]
    clean = torch.tensor(r0['flags']['clean'])
    for threat in ('linf:8/255', 'l2:0.5', 'l1:12'):
        expected = clean.clone()
        idx = clean.nonzero()[:, 0]
        for shard in (idx[0::2], idx[1::2]):
            if len(shard):
                res = evaluate_robustness(learn.model, x[shard], y[shard], threats=[threat], budget='quick')
                expected[shard] = torch.tensor(res.flags[threat])
        assert r0['flags'][threat] == expected.tolist()
    union = [all(r0['flags'][t][i] for t in ('linf:8/255', 'l2:0.5', 'l1:12')) for i in range(16)]
    assert r0['flags']['union'] == union
    # random starts drawn per point: sharding changes no verdict, the whole set in one process agrees
    whole = evaluate_robustness(learn.model, x, y, threats=['linf:8/255', 'l2:0.5', 'l1:12'], budget='quick')
    assert whole.flags == r0['flags']
