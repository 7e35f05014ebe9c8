"""A point's verdict is its own: batch size, union_only, resuming; full AutoAttack; the resume
file's model check; bad input to the evaluation entry points."""
import json
import logging
import re

import pytest
import torch
from conftest import InputRecorder, softmax_regression
from pyautoattack import AutoAttack
from torch import nn

from eatai.evaluation import check_n, lp  # lp: its private _autoattack, to compare its settings with a fresh AutoAttack
from eatai.evaluation.resume import _WHAT
from eatai.evaluation.budget import ATTACKS
from eatai.evaluation import APGDSettings, EvalBudget, evaluate_robustness

THREATS = ['linf:8/255', 'l2:0.25', 'l1:1.5']
# one or two steps from a random start and two restarts: the random starts decide most verdicts
_FEW = APGDSettings(n_iter=1, n_restarts=2, n_target_classes=2)
# l1 with AutoAttack's radius schedule (3, 2, 1 x eps), whose start is drawn in another method
START_DECIDES = EvalBudget('start decides', linf=_FEW, l2=_FEW,
                           l1=APGDSettings(n_iter=3, n_restarts=2, n_target_classes=2, use_largereps=True))


pytestmark = pytest.mark.usefixtures('one_thread')


def linear_model(seed=0, n=16, size=4, n_flipped=2):
    """`softmax_regression` at this module's sizes."""
    return softmax_regression(seed, n, size, n_flipped)


def test_flags_do_not_depend_on_batch_size_or_union_only():
    """Same flags for bs 1, 2, 7, 250; union_only's union is the per-norm union. With
    pyautoattack's batch-wide draws these differ on this model (checked before the fix)."""
    model, x, y = linear_model()
    runs = {bs: evaluate_robustness(model, x, y, threats=THREATS, budget=START_DECIDES, bs=bs) for bs in (1, 2, 7, 250)}
    assert all(run.flags == runs[250].flags for run in runs.values())
    assert 0 < runs[250].union < runs[250].clean       # the attacks break some points, not all
    cheap = evaluate_robustness(model, x, y, threats=THREATS, budget=START_DECIDES, bs=5, union_only=True)
    assert cheap.flags['union'] == runs[250].flags['union']
    # the same points in another order and in a subset keep their verdicts (content-keyed streams)
    order = torch.arange(len(y)).flip(0)[:11]
    part = evaluate_robustness(model, x[order], y[order], threats=THREATS, budget=START_DECIDES, bs=4)
    assert part.flags['union'] == [runs[250].flags['union'][i] for i in order.tolist()]


def test_square_verdicts_do_not_depend_on_batch_size():
    """Square alone: its starts are per point, its square positions shared and batch-independent."""
    model, x, y = linear_model(seed=1, n=10, size=8)
    budget = EvalBudget('square only', attacks=('square',), square_queries=15)
    threats = ['linf:4/255', 'l2:0.2', 'l1:2']
    runs = [evaluate_robustness(model, x, y, threats=threats, budget=budget, bs=bs) for bs in (1, 3, 10)]
    assert runs[0].flags == runs[1].flags == runs[2].flags
    assert 0 < runs[0].union < runs[0].clean


def test_lp_random_starts_are_keyed_to_the_seed_the_threat_and_the_attack():
    """The first start an attack draws for each point (the first batch it gives the model that is not
    the clean one), as a direction: another seed, threat or attack draws another one."""
    from eatai.evaluation import AttackContext, LpThreat
    model, x, _ = linear_model(n=4, n_flipped=0)
    x = 0.25 + x / 2                                     # l2 starts of radius 0.2 stay inside [0,1]: no clipping
    with torch.no_grad():
        y = model(x).argmax(dim=1)                       # every point correct: every point gets a start

    def first_start(threat, attack='apgd-ce', seed=0):
        recording = InputRecorder(model)
        context = AttackContext(START_DECIDES, seed, 10, torch.device('cpu'), logging.getLogger('test'))
        threat.attack(attack, recording, x, y, context)
        start = next(b for b in recording.inputs if b.shape == x.shape and not torch.equal(b, x))
        return (start - x) / threat.eps

    base = first_start(LpThreat('l2', 0.1))
    assert torch.equal(base, first_start(LpThreat('l2', 0.1)))                          # reproducible
    for other in (first_start(LpThreat('l2', 0.1), seed=1), first_start(LpThreat('l2', 0.2)),
                  first_start(LpThreat('l2', 0.1), 'apgd-t')):
        assert not torch.allclose(base, other, atol=1e-3)


class Interrupting(nn.Module):
    """The linear model, failing at its `fail_at`-th forward pass (an interrupted job)."""

    def __init__(self, model, fail_at=None):
        super().__init__()
        self.model, self.fail_at, self.calls = model, fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.model(x)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    model, x, y = linear_model()
    whole = evaluate_robustness(model, x, y, threats=THREATS, budget=START_DECIDES, bs=4)
    path = tmp_path / 'eval.json'
    stopped = Interrupting(model, fail_at=120)
    with pytest.raises(KeyboardInterrupt):
        evaluate_robustness(stopped, x, y, threats=THREATS, budget=START_DECIDES, bs=4, resume_file=path)
    assert 0 < len(json.loads(path.read_text())['done']) < 3 * 2 * 4    # some chunks finished, not all
    resumed = evaluate_robustness(Interrupting(model), x, y, threats=THREATS, budget=START_DECIDES, bs=4,
                                  resume_file=path)
    assert resumed.flags == whole.flags


def test_resume_file_of_another_model_is_refused(tmp_path):
    """Same name, data, threats and budget, other weights (or only other BatchNorm statistics)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 2 * 2, 10))
    x = torch.rand(4, 3, 4, 4)
    with torch.no_grad():
        y = net.eval()(x).argmax(dim=1)
    path = tmp_path / 'eval.json'
    kw = dict(threats=['linf:1/255'], budget='quick', name='same name', resume_file=path)
    first = evaluate_robustness(net, x, y, **kw)
    saved = path.read_text()
    assert evaluate_robustness(net, x, y, **kw).flags == first.flags     # its own file is used
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 2 * 2, 10))
    with pytest.raises(ValueError, match='model weights'):
        evaluate_robustness(other, x, y, **kw)
    other.load_state_dict(net.state_dict())
    other[1].running_mean += 0.5                                          # a buffer only
    with pytest.raises(ValueError, match='model weights.*not used'):
        evaluate_robustness(other, x, y, **kw)
    assert path.read_text() == saved


def ten_classes(s: torch.Tensor) -> torch.Tensor:
    """Logits: class 0 against 1 decided by the sign of s, the other eight never win."""
    return torch.cat([torch.stack([s, -s], dim=1), torch.full((len(s), 8), -10.0)], dim=1)


class DetachedMargin(nn.Module):
    """mean(x) > 0.5 decides, with no input gradient: gradient attacks (APGD, FAB) stall,
    Square (gradient-free) does not."""

    def forward(self, x):
        return ten_classes((x.flatten(1).mean(dim=1) - 0.5).detach() + 0 * x.flatten(1).sum(dim=1))


def _settings(aa) -> dict:
    """Every setting of AutoAttack's four attacks that version='standard' decides."""
    apgd = ('n_iter', 'n_restarts', 'use_largereps', 'eps', 'n_iter_2', 'n_iter_min', 'size_decr', 'thr_decr',
            'eot_iter')
    out = {f'ce.{k}': getattr(aa.apgd, k) for k in apgd}
    out.update({f't.{k}': getattr(aa.apgd_targeted, k) for k in (*apgd, 'n_target_classes')})
    out.update({f'fab.{k}': getattr(aa.fab, k) for k in ('n_restarts', 'n_iter', 'n_target_classes', 'eps', 'norm',
                                                          'alpha_max', 'eta', 'beta')})
    out.update({f'square.{k}': getattr(aa.square, k) for k in ('n_queries', 'p_init', 'n_restarts', 'eps', 'norm',
                                                               'rescale_schedule', 'loss')})
    return {**out, 'seed': aa.seed, 'norm': aa.norm, 'eps': aa.epsilon}


@pytest.mark.parametrize('norm, eps', [('linf', 8 / 255), ('l2', 0.5), ('l1', 12.0)])
def test_autoattack_budget_has_pyautoattacks_standard_settings(norm, eps):
    """Per norm (l1 has its own): the attacks in AutoAttack(version='standard')'s order, each
    set as that AutoAttack sets it."""
    from eatai.threats import ThreatModel
    ref = AutoAttack(nn.Identity(), norm={'linf': 'Linf', 'l2': 'L2', 'l1': 'L1'}[norm], eps=eps, seed=3,
                     version='standard')
    budget = EvalBudget.from_name('autoattack')
    assert list(budget.attacks) == ref.attacks_to_run
    for attack in budget.attacks:
        aa = lp._autoattack(nn.Identity(), ThreatModel(norm, eps), budget, attack, 10, 3, 'cpu', None)
        assert aa.attacks_to_run == [attack] and _settings(aa) == _settings(ref)


def test_autoattack_flags_equal_pyautoattack_run_directly(monkeypatch):
    """Square breaks a point that APGD and FAB cannot see (no gradient): the 'autoattack' budget
    runs all four attacks in turn and gets AutoAttack(version='standard')'s flags, where the
    paper's 'standard' budget keeps the point. Decided outcomes: the per-point random starts,
    which differ from pyautoattack's batch-wide ones by design, cannot change a verdict."""
    seen, run = [], AutoAttack.run_standard_evaluation

    def spy(self, *args, **kwargs):
        seen.append(list(self.attacks_to_run))
        return run(self, *args, **kwargs)

    x = torch.full((2, 3, 8, 8), 0.52)                       # mean 0.52, l-inf radius 0.05
    y = torch.tensor([0, 1])                                 # the second misclassified
    monkeypatch.setattr(AutoAttack, 'run_standard_evaluation', spy)
    full = evaluate_robustness(DetachedMargin(), x, y, threats=['linf:0.05'], budget='autoattack')
    # each attack runs on the points still robust: the first point survived APGD-CE, APGD-T and
    # FAB-T (the paper's 'standard' budget would call it robust), and Square broke it
    assert seen == [[a] for a in ATTACKS]
    ref = AutoAttack(DetachedMargin(), norm='Linf', eps=0.05, seed=0, version='standard')
    ref.verbose = False
    x_adv, _ = ref.run_standard_evaluation(x, y, batch_size=250)
    with torch.no_grad():
        direct = (DetachedMargin()(x_adv).argmax(dim=1) == y).tolist()
    assert full.flags['union'] == direct == [False, False]
    assert 'full AutoAttack' in full.budget and 'FAB-T' in full.budget and 'NOT' not in full.budget
    assert json.loads(full.to_json())['budget'] == full.budget


@pytest.mark.parametrize('budget', ['autoatack', 'Standrd', 'fast'])
def test_typo_in_budget_names_the_choices(budget):
    model, x, y = linear_model(n=2)
    with pytest.raises(ValueError, match="'standard', 'quick', 'autoattack'") as err:
        evaluate_robustness(model, x, y, budget=budget)
    if budget == 'autoatack':
        assert "did you mean 'autoattack'" in str(err.value)


def test_model_returning_probabilities_is_refused():
    model, x, y = linear_model(n=3)
    message = ("the model returns probabilities (outputs in [0,1] summing to 1), not logits: the attacks' losses "
               "need logits and would overestimate robustness; remove the final softmax (log-probabilities are fine)")
    with pytest.raises(ValueError, match='^' + re.escape(message) + '$'):
        evaluate_robustness(nn.Sequential(model, nn.Softmax(dim=1)), x, y, budget='quick')
    # log-probabilities are logits up to a constant: accepted
    evaluate_robustness(nn.Sequential(model, nn.LogSoftmax(dim=1)), x[2:], y[2:], threats=['linf:1/255'],
                        budget='quick')


def test_check_n():
    check_n(5, 5)
    for n, match in [(6, 'larger than the data.*n <= 5'), (0, '>= 1'), (2.5, 'integer'), (True, 'integer')]:
        with pytest.raises(ValueError, match=match):
            check_n(n, 5)


def test_entry_points_take_autoattack_and_refuse_bad_input(tmp_path, capsys):
    """robust_eval, `eatai eval` and the recipes: 'autoattack' is a budget, labelled in the
    table and the JSON; a typo or an n beyond the data is one clear error naming the choices."""
    from eatai.cli import main
    from eatai.data import sample_dls
    from eatai.demo import DEMO_CHECKPOINT
    from eatai.learner import robust_learner
    from eatai.recipes import recipe_parser
    out = tmp_path / 'aa.json'
    # the first sample test image is misclassified: nothing to attack, the labels still show
    assert main(['eval', '--model', str(DEMO_CHECKPOINT), '--n', '1', '--budget', 'autoattack', '--out', str(out)]) == 0
    assert 'full AutoAttack' in capsys.readouterr().out
    assert json.loads(out.read_text())['budget'].startswith('full AutoAttack')
    with pytest.raises(SystemExit):
        main(['eval', '--model', str(DEMO_CHECKPOINT), '--budget', 'autoatack'])
    assert "invalid choice: 'autoatack'" in capsys.readouterr().err
    assert recipe_parser('r').parse_args(['--budget', 'autoattack']).budget == 'autoattack'
    learn = robust_learner(sample_dls(bs=64), str(DEMO_CHECKPOINT))
    with pytest.raises(ValueError, match="did you mean 'autoattack'"):
        learn.robust_eval(n=2, budget='autoatack', progress=False)
    with pytest.raises(ValueError, match='n=501 is larger than the data: it holds 500'):
        learn.robust_eval(n=501, budget='quick', progress=False)


@pytest.mark.parametrize('n_iter', [5, 50, 200])
def test_other_iteration_counts_get_autoattacks_step_size_checkpoints(n_iter):
    """APGD's checkpoints are derived from n_iter when AutoAttack builds it: a budget with another
    n_iter must get the ones a fresh APGD with that n_iter has (0.22 N, 0.06 N, 0.03 N, each >= 1)."""
    from pyautoattack.autopgd_base import APGDAttack

    from eatai.threats import ThreatModel
    settings = APGDSettings(n_iter=n_iter)
    budget = EvalBudget('custom', linf=settings, l2=settings, l1=settings)
    aa = lp._autoattack(nn.Identity(), ThreatModel('linf', 8 / 255), budget, 'apgd-ce', 10, 0, 'cpu', None)
    fresh = APGDAttack(nn.Identity(), n_iter=n_iter, norm='Linf', eps=8 / 255, device='cpu')
    fields = ('n_iter', 'n_iter_2', 'n_iter_min', 'size_decr')
    assert [getattr(aa.apgd, k) for k in fields] == [getattr(fresh, k) for k in fields]


def test_an_evaluation_without_progress_prints_nothing(capsys):
    """progress=False, the default of the function (robust_eval and the CLI turn it on)."""
    model, x, y = softmax_regression(n=8, n_flipped=0)
    result = evaluate_robustness(model, x, y, threats='linf:8/255', budget='quick', bs=4)
    out = capsys.readouterr()
    assert out.out == '' and out.err == ''
    assert result.notes == []                 # AutoAttack runs quietly: its verbose log would land in the notes


@pytest.mark.parametrize('change, what', [(dict(budget='standard'), 'budget'), (dict(seed=1), 'seed'),
                                          (dict(bs=3), 'bs'), (dict(union_only=True), 'union_only'),
                                          (dict(name='another'), 'model')])
def test_resume_file_of_another_evaluation_is_refused_and_defaults_are_recorded(tmp_path, change, what):
    """Each argument that changes the verdicts is in the resume file's fingerprint; so are the defaults
    (seed 0, bs 250): a file written with them spelled out serves a call that leaves them out."""
    model, x, y = softmax_regression(n=6, n_flipped=1)
    path = tmp_path / 'eval.json'
    kw = dict(threats=['linf:1/255'], budget='quick', name='net', resume_file=path, progress=False)
    first = evaluate_robustness(model, x, y, seed=0, bs=250, union_only=False, **kw)
    assert evaluate_robustness(model, x, y, **kw).flags == first.flags
    with pytest.raises(ValueError, match=f"holds the progress of another evaluation \\(other {_WHAT[what]}\\)"):
        evaluate_robustness(model, x, y, **{**kw, **change})


def test_single_examples_and_refusals():
    model, x, y = softmax_regression(n=2, n_flipped=0)
    one = evaluate_robustness(model, x[:1], y[:1], threats='linf:1/255', budget='quick')
    assert one.n == 1 and set(one.seconds) == {'linf:1/255'} and one.seconds['linf:1/255'] >= 0
    with pytest.raises(ValueError, match='^x holds no examples$'):
        evaluate_robustness(model, x[:0], y[:0], threats='linf:1/255')
    with pytest.raises(ValueError, match="^bs must be an integer >= 1, got 0$"):
        evaluate_robustness(model, x, y, threats='linf:1/255', bs=0)
    with pytest.raises(ValueError, match="^threats is empty: give at least one threat model such as 'linf:8/255'$"):
        evaluate_robustness(model, x, y, threats=[])


def test_progress_shows_one_line_per_threat_and_attack_in_a_file(capsys):
    model, x, y = softmax_regression(n=4, n_flipped=0)
    evaluate_robustness(model, x, y, threats='linf:1/255', budget='standard', bs=2, progress=True)
    printed = capsys.readouterr()
    assert 'linf:1/255 apgd-ce' in printed.out + printed.err


def test_fab_targets_fit_a_model_with_few_classes():
    """FAB-T tries at most the other classes: 3 targets for a 4-class model, AutoAttack's 9 for 10 or more."""
    from eatai.threats import ThreatModel
    budget = EvalBudget.from_name('autoattack')
    for n_classes, targets in ((4, 3), (10, 9), (100, 9)):
        aa = lp._autoattack(nn.Identity(), ThreatModel('linf', 8 / 255), budget, 'fab-t', n_classes, 0, 'cpu', None)
        assert aa.fab.n_target_classes == targets and aa.apgd_targeted.n_target_classes == min(9, n_classes - 1)
