"""Evaluation through its public doors (evaluate_robustness, Learner.robust_eval, `eatai eval`) on
points whose fate is known by construction, and the CLI's flags against what their help says."""
import json
import math
import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eatai.demo
import eatai.learner
from eatai.all import arrays_dls, robust_learner
from eatai.cli import main
from eatai.demo import DEMO_CHECKPOINT
from eatai.evaluation import evaluate_robustness
from eatai.geometry import hull_radius, union_radius
from eatai.models import load_checkpoint

THREATS = ['linf:0.1', 'l1:1']


pytestmark = pytest.mark.usefixtures('one_thread')


class MeanModel(nn.Module):
    """Four classes on 1x4x4 images: class 0 if mean(x) > 0.5, else class 1; 2 and 3 never win.

    l-inf 0.1 moves the mean by 0.1; l1 1 moves it by at most 1/16 = 0.0625. Counts its forwards."""

    def __init__(self):
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(()))   # a parameter, so the learner knows the device
        self.n_forward = 0

    def forward(self, x):
        self.n_forward += 1
        s = x.flatten(1).mean(dim=1) - 0.5 + self.zero
        low = torch.full_like(s, -10.0)
        return torch.stack([s, -s, low, low], dim=1)


# (pixel value, label) -> (clean, robust in linf 0.1, robust in l1 1)
FATES = {
    'A': (0.9, 0, (1, 1, 1)),     # far from the boundary
    'B': (0.55, 0, (1, 0, 0)),    # close: both norms cross it
    'C': (0.58, 0, (1, 0, 1)),    # l-inf crosses (0.48), l1 does not (0.5175)
    'D': (0.1, 1, (1, 1, 1)),
    'E': (0.45, 1, (1, 0, 0)),
    'F': (0.9, 1, (0, 0, 0)),     # misclassified clean
    'G': (0.42, 1, (1, 0, 1)),    # l-inf crosses (0.52), l1 does not (0.4825)
}
ORDER = 'ACFBDEGACBE'   # chunks of 2 over the clean-correct points mix every kind of neighbour


def known_points(order=ORDER):
    x = torch.stack([torch.full((1, 4, 4), FATES[k][0]) for k in order])
    y = torch.tensor([FATES[k][1] for k in order])
    fate = {name: [bool(FATES[k][2][i]) for k in order] for i, name in enumerate(['clean', *THREATS])}
    fate['union'] = [a and b for a, b in zip(fate['linf:0.1'], fate['l1:1'])]
    return x, y, fate


@pytest.mark.parametrize('bs', [2, 3, 250])
def test_each_point_gets_its_own_flags_whatever_the_chunks(bs):
    x, y, fate = known_points()
    res = evaluate_robustness(MeanModel(), x, y, threats=THREATS, budget='quick', bs=bs)
    assert res.flags == fate
    assert res.robust['l1:1'] == pytest.approx(sum(fate['l1:1']) / len(ORDER))


def _learner(valid_order='AAAA'):
    xv, yv, _ = known_points(valid_order)
    return robust_learner(arrays_dls(xv, yv, xv, yv, bs=4, augment=False), MeanModel(), check_data=False)


def test_robust_eval_reads_the_given_loader_and_threats():
    learn = _learner()                         # its validation set: four easy points
    x, y, fate = known_points()
    dl = DataLoader(TensorDataset(x, y), batch_size=4)
    res = learn.robust_eval(n=len(ORDER), threats=THREATS, budget='quick', dl=dl, bs=2, progress=False)
    assert res.threats == THREATS and res.flags == fate
    first = learn.robust_eval(n=5, threats=THREATS, budget='quick', dl=dl, bs=2, progress=False)
    assert first.flags == {k: v[:5] for k, v in fate.items()}          # n: the first n points of dl


def test_robust_eval_union_only_skips_points_already_broken():
    learn = _learner()
    x, y, fate = known_points()
    dl = DataLoader(TensorDataset(x, y), batch_size=4)
    res = learn.robust_eval(n=len(ORDER), threats=THREATS, budget='quick', dl=dl, bs=2, union_only=True,
                            progress=False)
    assert res.flags['union'] == fate['union'] and res.flags['linf:0.1'] == fate['linf:0.1']
    # l1 attacks only the points robust in l-inf: C and G (robust in l1) and B, E (not) are never attacked
    # in l1 and count as robust there, an upper bound the result marks as such
    assert res.flags['l1:1'] == fate['clean']
    assert res.exact == {'linf:0.1': True, 'l1:1': False}


def test_robust_eval_resumes_from_its_file(tmp_path):
    learn = _learner()
    x, y, fate = known_points()
    dl = DataLoader(TensorDataset(x, y), batch_size=4)
    kw = dict(n=len(ORDER), threats=THREATS, budget='quick', dl=dl, bs=4, progress=False,
              resume_file=tmp_path / 'progress.json')
    first = learn.robust_eval(**kw)
    attacked = learn.model.n_forward
    assert first.flags == fate and (tmp_path / 'progress.json').exists()
    learn.model.n_forward = 0
    again = learn.robust_eval(**kw)
    assert again.flags == fate
    assert learn.model.n_forward <= math.ceil(len(ORDER) / 4) < attacked   # the clean pass only: no attack ran


# ---- the command line ------------------------------------------------------------------------------------

@pytest.fixture
def evaluations(monkeypatch):
    """The keyword arguments of every evaluate_robustness call the learner makes, calling through."""
    seen, real = [], eatai.learner.evaluate_robustness

    def recording(model, x, y, **kwargs):
        seen.append(kwargs)
        return real(model, x, y, **kwargs)

    monkeypatch.setattr(eatai.learner, 'evaluate_robustness', recording)
    return seen


def test_cli_eval_numbers_are_evaluate_robustness(tmp_path, evaluations):
    out = tmp_path / 'eval.json'
    assert main(['eval', '--model', str(DEMO_CHECKPOINT), '--n', '6', '--bs', '4', '--budget', 'quick', '--seed', '3',
                 '--threat', 'linf:8/255', '--threat', 'l1:12', '--out', str(out)]) == 0
    printed = json.loads(out.read_text())
    # the learner hands over the threats it parsed (bare names with its dataset's strengths)
    assert [(k['bs'], k['seed'], k['budget'], list(map(str, k['threats']))) for k in evaluations] == \
        [(4, 3, 'quick', ['linf:8/255', 'l1:12'])]
    from eatai.data import load_sample
    _, _, x, y = load_sample()
    direct = evaluate_robustness(load_checkpoint(DEMO_CHECKPOINT), x[:6], y[:6], threats=['linf:8/255', 'l1:12'],
                                 budget='quick', bs=4, seed=3)
    assert printed['n'] == 6 and printed['flags'] == direct.flags
    assert printed['robust'] == direct.robust and printed['union'] == direct.union


def test_cli_eval_dataset_gives_its_radii(tmp_path, evaluations):
    out = tmp_path / 'eval.json'
    assert main(['eval', '--model', str(DEMO_CHECKPOINT), '--n', '2', '--budget', 'quick', '--dataset', 'imagenet',
                 '--out', str(out)]) == 0
    assert json.loads(out.read_text())['threats'] == ['linf:4/255', 'l2:2', 'l1:255']
    assert evaluations[0]['bs'] == 250 and evaluations[0]['seed'] == 0      # the defaults the help gives


def test_cli_radius_flags(capsys):
    assert main(['radius', '--eps1', '10', '--eps-inf', '4/255', '--d', '1000', '--p', '3', '--eps-p', '0.2']) == 0
    printed = capsys.readouterr().out
    numbers = [float(v) for v in re.findall(r'\): (\d+\.\d+)', printed)]
    assert numbers == [round(union_radius(10, 4 / 255, 1000, 3), 4), round(hull_radius(10, 4 / 255, 1000, 3), 4)]
    covered = 0.2 <= hull_radius(10, 4 / 255, 1000, 3)
    assert ('does NOT cover' in printed) != covered and 'l_3 radius of 0.2' in printed


def test_cli_demo_flags_reach_the_demo(tmp_path, monkeypatch):
    seen, real = [], eatai.demo.run_demo

    def recording(config, progress=True):
        seen.append((config, progress))
        return real(config, progress)

    monkeypatch.setattr(eatai.demo, 'run_demo', recording)
    out = tmp_path / 'demo.json'
    assert main(['demo', '--epochs', '1', '--lr', '0.01', '--n', '4', '--n-train', '16', '--seed', '2', '--quiet',
                 '--budget', 'quick', '--out', str(out)]) == 0
    (config, progress), = seen
    assert (config.epochs, config.lr, config.n_eval, config.n_train, config.seed, config.budget, progress) == \
        (1, 0.01, 4, 16, 2, 'quick', False)
    data = json.loads(out.read_text())
    assert data['before']['n'] == data['after']['n'] == 4
