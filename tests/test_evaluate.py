"""evaluate_robustness: per-example union, exactness, AutoAttack's budget and agreement, hygiene."""
import contextlib
import io
import json

import pytest
import torch
from conftest import TinyNet, softmax_regression
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack
from torch import nn

from eatai.evaluation import APGDSettings, EvalBudget, RobustResult, evaluate_robustness
from eatai.threats import NORMS, ThreatModel

BOX_THREATS = ['linf:0.1', 'l2:0.3', 'l1:1']


pytestmark = pytest.mark.usefixtures('one_thread')


class SumModel(nn.Module):
    """Four classes; class 0 against 1 is decided by sum(x) > 0.3, classes 2 and 3 never win.

    The margin's gradient is the same for every pixel, so the [0,1] box decides which
    norm can break a point: see `box_points`.
    """

    def forward(self, x):
        s = x.flatten(1).sum(dim=1) - 0.3
        low = torch.full_like(s, -10.0)
        return torch.stack([s, -s, low, low], dim=1)


def box_points():
    """Five 1x4x4 images with label 0 (one with label 1, misclassified) and their known fate.

    linf 0.1 lowers every pixel by 0.1, l1 1 lowers the sum by at most 1, l2 0.3 spreads
    0.3 over the pixels that can still go down.
    """
    x = torch.zeros(5, 1, 4, 4)
    x[0] = 0.1            # sum 1.6: linf reaches 0, l1 only 0.6, l2 only 0.4 -> breaks in linf alone
    x[1, 0, 0, 0] = 1.0   # sum 1.0: only one pixel can move: l1 takes it to 0 -> breaks in l1 alone
    x[2] = 1.0            # sum 16: robust everywhere
    x[3] = 0.1            # label 1: misclassified clean
    x[4] = 0.025          # sum 0.4: breaks in every norm
    y = torch.tensor([0, 0, 0, 1, 0])
    expected = {'clean': [1, 1, 1, 0, 1], 'linf:0.1': [0, 1, 1, 0, 0], 'l2:0.3': [1, 1, 1, 0, 0],
                'l1:1': [1, 0, 1, 0, 0], 'union': [0, 0, 1, 0, 0]}
    return x, y, {k: [bool(v) for v in flags] for k, flags in expected.items()}


class ConstantModel(nn.Module):
    """The same logits for every input, still part of the autograd graph of x."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0]))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(dim=1, keepdim=True)


class PermutingNet(nn.Module):
    """Linear model that reads its input channels-last, as code ported from HWC arrays does."""

    def __init__(self, size=8, n_classes=10):
        super().__init__()
        self.lin = nn.Linear(3 * size * size, n_classes)

    def forward(self, x):
        return self.lin(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))


def test_union_is_per_example():
    x, y, expected = box_points()
    res = evaluate_robustness(SumModel(), x, y, threats=BOX_THREATS)
    assert res.flags == expected
    for i in range(res.n):  # union = AND over the threat models, example by example
        assert res.flags['union'][i] == all(res.flags[t][i] for t in res.threats)
    assert res.union < min(res.robust.values())     # the norms break different points
    assert res.robust == pytest.approx({'linf:0.1': 0.4, 'l2:0.3': 0.6, 'l1:1': 0.4})
    assert (res.clean, res.union, res.n) == (pytest.approx(0.8), pytest.approx(0.2), 5)
    assert all(res.exact.values()) and res.threats == BOX_THREATS


def test_each_step_logs_the_points_it_attacked_and_broke():
    x, y, expected = box_points()
    res = evaluate_robustness(SumModel(), x, y, threats=BOX_THREATS, budget='quick')
    assert [(s['threat'], s['attack']) for s in res.steps] == [(t, a) for t in BOX_THREATS for a in ('apgd-ce', 'apgd-t')]
    for ce, t in zip(res.steps[::2], res.steps[1::2]):
        threat = ce['threat']
        assert ce['attacked'] == sum(expected['clean']) and t['attacked'] == ce['attacked'] - len(ce['broken'])
        broken = [i for i in range(5) if expected['clean'][i] and not expected[threat][i]]
        assert sorted(ce['broken'] + t['broken']) == broken


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal: fastprogress draws its bars into it."""

    def isatty(self):
        return True


def test_finished_progress_bars_are_erased_in_a_terminal():
    model, x, y = softmax_regression(n=4, n_flipped=0)
    screen = FakeTerminal()
    with contextlib.redirect_stdout(screen):
        evaluate_robustness(model, x, y, threats='linf:1/255', budget='quick', bs=2, progress=True)
    text = screen.getvalue()
    assert 'linf:1/255 apgd-ce' in text and '100.00%' in text           # fastprogress's bars were drawn
    # and each one, once finished, was blanked out: the screen ends on an empty line
    assert text.endswith('\r') and text.rsplit(']', 1)[1].strip(' \r') == ''


def test_union_only_keeps_union_and_marks_upper_bounds():
    x, y, expected = box_points()
    full = evaluate_robustness(SumModel(), x, y, threats=BOX_THREATS)
    cheap = evaluate_robustness(SumModel(), x, y, threats=BOX_THREATS, union_only=True)
    assert cheap.flags['union'] == full.flags['union'] and cheap.union == full.union
    # attack by attack across the norms: point 1 broke in l1's APGD-CE, so no norm's APGD-T ran on it
    assert cheap.exact == {'linf:0.1': False, 'l2:0.3': False, 'l1:1': False}
    assert cheap.flags['linf:0.1'] == full.flags['linf:0.1']
    for t in BOX_THREATS:
        assert cheap.robust[t] >= full.robust[t]
    # point 4 broke in linf, so l2 and l1 never attacked it: counted robust, an upper bound
    assert cheap.robust['l2:0.3'] > full.robust['l2:0.3'] and cheap.flags['l1:1'][4]


def test_union_only_is_exact_when_nothing_was_skipped():
    x, y, _ = box_points()
    res = evaluate_robustness(SumModel(), x[2:4], y[2:4], threats=BOX_THREATS, union_only=True)
    assert all(res.exact.values())


def test_constant_model_is_robust_where_correct():
    x = torch.rand(6, 3, 8, 8)
    y = torch.tensor([0, 0, 0, 1, 2, 0])
    res = evaluate_robustness(ConstantModel(), x, y, budget='quick')
    assert res.clean == pytest.approx(4 / 6)
    assert all(acc == res.clean for acc in res.robust.values()) and res.union == res.clean
    assert any('zero gradient' in note for note in res.notes)  # AutoAttack's warning kept, not printed


def test_non_contiguous_inputs_and_channels_last_model():
    torch.manual_seed(0)
    model = PermutingNet()
    x = torch.rand(6, 8, 8, 3).permute(0, 3, 1, 2)   # (N, C, H, W) view of HWC images
    assert not x.is_contiguous()
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    res = evaluate_robustness(model, x, y, threats=['linf:2/255', 'l2:0.1', 'l1:1'], budget='quick')
    ref = evaluate_robustness(model, x.contiguous(), y, threats=['linf:2/255', 'l2:0.1', 'l1:1'], budget='quick')
    assert res.flags == ref.flags and res.clean == 1.0


def test_modes_grads_and_rng_restored():
    torch.manual_seed(0)
    model = TinyNet()
    model.train()
    model.dropout.eval()                       # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    bn = model.features[1]
    stats = bn.running_mean.clone(), bn.running_var.clone()
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    rng = torch.get_rng_state()
    evaluate_robustness(model, x, y, threats=['linf:8/255', 'l2:0.5'], budget='quick')
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(stats[0], bn.running_mean) and torch.equal(stats[1], bn.running_var)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)   # AutoAttack's manual_seed did not leak


def test_modes_restored_when_the_check_fails(monkeypatch):
    """A point outside its ball is an error, and the model comes back in train mode anyway."""
    model, x, y = softmax_regression(n=8)
    model.train()
    monkeypatch.setattr(AutoAttack, 'run_standard_evaluation', lambda self, x, y, **kw: (1 - x, y))
    with pytest.raises(RuntimeError, match='outside'):
        evaluate_robustness(model, x, y, threats=['linf:8/255'], budget='quick')
    assert all(m.training for m in model.modules())


_APGD_KEYS = ('n_iter', 'n_iter_orig', 'n_restarts', 'use_largereps', 'eps', 'n_iter_2', 'n_iter_min', 'size_decr')


def _settings(aa) -> dict:
    """What AutoAttack's APGD-CE and APGD-T are set to (read before running: l1 changes n_iter as it goes)."""
    out = {f'ce.{k}': getattr(aa.apgd, k) for k in _APGD_KEYS}
    out.update({f't.{k}': getattr(aa.apgd_targeted, k) for k in _APGD_KEYS})
    out['t.n_target_classes'] = aa.apgd_targeted.n_target_classes
    out.update(norm=aa.norm, eps=aa.epsilon, seed=aa.seed)
    return out


@pytest.fixture
def settings_seen(monkeypatch):
    """Records `_settings` of every AutoAttack that evaluate_robustness runs."""
    seen, run = [], AutoAttack.run_standard_evaluation

    def spy(self, *args, **kwargs):
        seen.append({**_settings(self), 'attacks': list(self.attacks_to_run)})
        return run(self, *args, **kwargs)

    monkeypatch.setattr(AutoAttack, 'run_standard_evaluation', spy)
    return seen


@pytest.mark.parametrize('norm', NORMS)
def test_standard_budget_is_autoattacks(settings_seen, norm):
    """The settings that actually run equal AutoAttack(version='standard')'s for APGD-CE and APGD-T."""
    model, x, y = softmax_regression(n=2, n_flipped=0)
    with torch.no_grad():
        model[1].weight *= 1e-6      # the bias decides: robust points, so APGD-T runs too
        y = model(x).argmax(dim=1)
    eps = {'linf': 8 / 255, 'l2': 0.5, 'l1': 12.0}[norm]
    evaluate_robustness(model, x, y, threats=[ThreatModel(norm, eps)], seed=3)
    ref = AutoAttack(model, norm={'linf': 'Linf', 'l2': 'L2', 'l1': 'L1'}[norm], eps=eps, seed=3,
                     version='standard')
    # one attack at a time, each on the points still robust
    assert settings_seen == [{**_settings(ref), 'attacks': ['apgd-ce']}, {**_settings(ref), 'attacks': ['apgd-t']}]


def test_quick_budget_sets_apgd_like_a_fresh_attack(settings_seen):
    """Fewer iterations also move APGD's step-size checkpoints, as APGDAttack(n_iter=20) has them."""
    model, x, y = softmax_regression(n=2, n_flipped=0)
    evaluate_robustness(model, x, y, threats=['l2:0.5'], budget='quick')
    fresh = APGDAttack(model, n_iter=20, norm='L2', eps=0.5)
    for k in ('n_iter', 'n_iter_orig', 'n_iter_2', 'n_iter_min', 'size_decr'):
        assert settings_seen[0][f'ce.{k}'] == settings_seen[0][f't.{k}'] == getattr(fresh, k)
    assert settings_seen[0]['t.n_target_classes'] == 3


def test_budget_names_and_labels():
    standard, quick = EvalBudget.from_name('standard'), EvalBudget.from_name('Quick')
    assert standard.is_standard and 'standard' in standard.label and 'NOT' not in standard.label
    assert not quick.is_standard and 'NOT' in quick.label and 'quick' in quick.label
    assert standard.settings('l1') == APGDSettings(n_restarts=5, n_target_classes=5, use_largereps=True)
    mine = EvalBudget('mine', linf=APGDSettings(n_iter=50))
    assert not mine.is_standard and 'NOT' in mine.label and 'linf 50 it.' in mine.label
    no_schedule = EvalBudget('plain l1', l1=APGDSettings(n_restarts=5, n_target_classes=5))
    assert 'use_largereps changed for l1' in no_schedule.label
    assert EvalBudget('renamed').is_standard          # the settings decide, not the name
    assert EvalBudget.from_name(mine) is mine
    with pytest.raises(ValueError, match='budget'):
        EvalBudget.from_name('fast')
    with pytest.raises(ValueError, match='n_iter'):
        APGDSettings(n_iter=0)


def test_matches_autoattack_run_directly():
    """Same seed, same settings: our l-inf robust accuracy is AutoAttack's, example by example."""
    model, x, y = softmax_regression()
    eps = 2 / 255
    res = evaluate_robustness(model, x, y, threats=[ThreatModel('linf', eps)], seed=0)
    aa = AutoAttack(model, attacks=['apgd-ce', 'apgd-t'], version='custom', norm='Linf', eps=eps, seed=0)
    aa.verbose = False
    aa.apgd.n_restarts = 1                      # what version='standard' sets for Linf
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=250)
    with torch.no_grad():
        direct = model(x_adv).argmax(dim=1) == y
    key = str(ThreatModel('linf', eps))
    assert 0 < res.robust[key] < res.clean      # the attack matters on this model
    assert res.flags[key] == direct.tolist()
    assert res.robust[key] == pytest.approx(direct.float().mean().item())


def test_fixed_seed_is_reproducible_with_progress_bar(capsys):
    model, x, y = softmax_regression(n=20)
    a = evaluate_robustness(model, x, y, threats=['linf:2/255', 'l1:2'], budget='quick', bs=7)
    b = evaluate_robustness(model, x, y, threats=['linf:2/255', 'l1:2'], budget='quick', bs=7, progress=True)
    assert a.flags == b.flags and a.robust == b.robust
    one_chunk = evaluate_robustness(model, x, y, threats=['linf:2/255', 'l1:2'], budget='quick', bs=20)
    assert a.n == 20 and a.flags == one_chunk.flags      # chunks of 7 put back in order
    assert 0 < sum(a.flags['l1:2']) < sum(a.flags['clean'])   # and the order matters: flags differ


def test_json_round_trip(tmp_path):
    x, y, _ = box_points()
    res = evaluate_robustness(SumModel(), x, y, threats=BOX_THREATS, budget='quick', name='sum')
    path = tmp_path / 'res.json'
    text = res.to_json(path)
    assert path.read_text() == text
    assert RobustResult.from_json(path) == res == RobustResult.from_json(text)
    assert RobustResult.from_json(str(path)) == res
    assert "'sum'" in repr(res) and 'union=20.0%' in repr(res)


@pytest.mark.parametrize('bad, match', [
    (dict(x=torch.rand(2, 3, 8, 8) * 2), r'\[0,1\]'),
    (dict(x=torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)), 'floating'),
    (dict(threats=['l3:1']), r"unknown threat 'l3': registered are .*l1, l2, linf"),
    (dict(threats=['linf:8/255', 'linf:8/255']), 'repeat'),
    (dict(threats=['linf:-1']), 'eps'),
    (dict(budget='fast'), 'budget'),
    (dict(x=torch.rand(2, 3 * 8 * 8)), r'\(N, C, H, W\)'),
    (dict(y=torch.tensor([0, 10])), 'out of range'),
])
def test_bad_input(bad, match):
    model, x, y = softmax_regression(n=2)
    args = {'x': x, 'y': y, **bad}
    with pytest.raises(ValueError, match=match):
        evaluate_robustness(model, args.pop('x'), args.pop('y'), **args)


def test_too_few_classes_for_apgd_t():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    with pytest.raises(ValueError, match='at least 4 classes'):
        evaluate_robustness(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))


def test_interrupted_evaluation_resumes_from_its_file(tmp_path):
    """Finished chunks are kept in the resume file: a rerun skips them and gives the same result."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    x, y = torch.rand(12, 3, 8, 8), torch.randint(0, 10, (12,))
    with torch.no_grad():
        y = model(x).argmax(1)
    path = tmp_path / 'eval.json'
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, inp):
            calls.append(len(inp))
            return self.m(inp)
    full = evaluate_robustness(Counting(), x, y, threats=['linf:0.5/255'], budget='quick', bs=4, resume_file=path)
    first = len(calls)
    saved = json.loads(path.read_text())
    assert len(saved['done']) == 3 * 2      # 3 chunks, APGD-CE and APGD-T
    calls.clear()
    again = evaluate_robustness(Counting(), x, y, threats=['linf:0.5/255'], budget='quick', bs=4, resume_file=path)
    assert again.flags == full.flags and len(calls) < first / 4     # only the clean pass ran again
    with pytest.raises(ValueError, match='another evaluation'):
        evaluate_robustness(model, x[:8], y[:8], threats=['linf:0.5/255'], budget='quick', bs=4, resume_file=path)
