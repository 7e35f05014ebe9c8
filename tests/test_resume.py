"""An interrupted run resumes from its last checkpoint and ends with the numbers of an
uninterrupted run with the same seed: in-process interruptions for every kind of strategy
state, and one real kill -9 of a training process (with GradientProjection) in the middle of an epoch."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from test_training import tiny_dls, tiny_learner

from eatai.callbacks import Checkpointing

JOB = Path(__file__).with_name('resume_job.py')


class Crash(Callback):
    """Raises at a given training batch, as an interruption would."""
    order = 99

    def __init__(self, epoch, batch):
        self.at = (epoch, batch)

    def after_batch(self):
        if self.training and (self.epoch, self.iter) == self.at:
            raise KeyboardInterrupt


def finetune(scheme, cbs):
    set_seed(0)   # before the DataLoaders: they draw their shuffling seed from Python's random
    learn = tiny_learner(tiny_dls(n_train=96, bs=16))
    with learn.no_bar(), learn.no_logging():
        learn.finetune_adversarial(scheme, epochs=2, lr=0.01, n_iter=1, cbs=cbs)
    return learn


def outcome(learn):
    return ([p.clone() for p in learn.model.state_dict().values()], learn.adversarial_training.history,
            [list(v) for v in learn.recorder.values])


def assert_same(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    assert a[1] == b[1]
    assert a[2] == b[2]


@pytest.mark.parametrize('scheme, epoch, batch', [('eat', 1, 2), ('eat', 0, 5), ('max', 0, 3), ('msd', 1, 0),
                                                  ('l2>eat@1', 0, 4)])
def test_resume_after_interruption_gives_the_same_run(scheme, epoch, batch, tmp_path):
    reference = outcome(finetune(scheme, []))
    ckpt = tmp_path / 'run.pth'
    with pytest.raises(KeyboardInterrupt):
        finetune(scheme, [Checkpointing(ckpt, every=1), Crash(epoch, batch)])
    resumed = finetune(scheme, [Checkpointing(ckpt, every=1, resume=True)])
    assert_same(outcome(resumed), reference)


class CrashAfterEpoch(Callback):
    """Raises once an epoch, validation included, is over: after the end-of-epoch checkpoint."""
    order = 99

    def __init__(self, epoch):
        self.at = epoch

    def after_epoch(self):
        if self.epoch == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize('scheme', ['eat', 'max'])
def test_resume_from_an_epochs_end_checkpoint(scheme, tmp_path):
    reference = outcome(finetune(scheme, []))
    ckpt = tmp_path / 'run.pth'
    with pytest.raises(KeyboardInterrupt):
        finetune(scheme, [Checkpointing(ckpt, every=4), CrashAfterEpoch(0)])
    saved = torch.load(ckpt, weights_only=False)
    assert (saved['epoch'], saved['n_done']) == (1, 0)
    resumed = finetune(scheme, [Checkpointing(ckpt, every=4, resume=True)])
    assert_same(outcome(resumed), reference)


def test_resume_refuses_a_different_run(tmp_path):
    ckpt = tmp_path / 'run.pth'
    finetune('eat', [Checkpointing(ckpt, every=2)])
    learn = tiny_learner(tiny_dls(n_train=96, bs=16))
    with pytest.raises(ValueError, match='epochs'):
        learn.finetune_adversarial('eat', epochs=3, lr=0.01, n_iter=1, cbs=[Checkpointing(ckpt, resume=True)])
    with pytest.raises(ValueError, match='every'):
        Checkpointing(ckpt, every=0)


def run_job(ckpt, out, env=None):
    # with GradientProjection: its mid-epoch state (f_r, the natural copy) must come back too
    return subprocess.Popen([sys.executable, str(JOB), str(ckpt), str(out), 'eat', 'gp'], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_9_mid_epoch_and_resume(tmp_path):
    reference = tmp_path / 'reference.pt'
    assert run_job(tmp_path / 'ref.pth', reference).wait(timeout=300) == 0
    ckpt, out = tmp_path / 'run.pth', tmp_path / 'resumed.pt'
    job = run_job(ckpt, out, {'EATAI_SLOW': '0.5'})
    deadline = time.time() + 300
    while time.time() < deadline:   # wait for a checkpoint in the middle of the second epoch
        if ckpt.exists() and (lambda s: s['epoch'] == 1 and s['n_done'] >= 2)(torch.load(ckpt, weights_only=False)):
            break
        time.sleep(0.2)
    job.kill()                      # SIGKILL: no cleanup, no final save
    job.wait()
    assert job.returncode == -9 and not out.exists()
    state = torch.load(ckpt, weights_only=False)      # the checkpoint on disk is whole
    assert state['epoch'] == 1 and 2 <= state['n_done'] < 6
    assert run_job(ckpt, out).wait(timeout=300) == 0
    a, b = torch.load(reference, weights_only=False), torch.load(out, weights_only=False)
    assert all(torch.equal(a['weights'][k], b['weights'][k]) for k in a['weights'])
    assert a['history'] == b['history'] and a['values'] == b['values']
    assert a['gp'] == b['gp'] and len(a['gp']) == 2
