"""The threat registry: a threat registered from this file alone reaches robust_eval, the union, union_only,
the table, JSON, curves and pictures, with no change to eatai; names, strengths and errors; the sampling
attack and its per-point streams; the l_p threats' own random starts, sizes and quick attack."""
import json
import logging
import re
from dataclasses import dataclass

import matplotlib
import pytest
import torch
from conftest import CountingModel, softmax_regression
from torch import nn

matplotlib.use('Agg')

from eatai.data import arrays_dls  # noqa: E402
from eatai.evaluation import (AttackContext, EvalBudget, APGDSettings, LpThreat, RobustResult, Threat,  # noqa: E402
                              evaluate_robustness, get_threat, parse_threats, register_threat, results_text,
                              robustness_curves, threat_names, unregister_threat, adversarial_examples)
from eatai.evaluation.registry import sampling_attack  # noqa: E402
from eatai.learner import robust_learner  # noqa: E402
from eatai.threats import ThreatModel  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_thread')
TINY = EvalBudget('tiny', linf=APGDSettings(5, 1, 2), l2=APGDSettings(5, 1, 2), l1=APGDSettings(5, 1, 2, use_largereps=True))


@dataclass(frozen=True)
class UniformNoise(Threat):
    """Uniform noise of l-inf size `strength`: random, not adversarial; 'attacked' by sampling."""
    strength: float
    name = 'noise'
    strength_range = (0.0, 1.0)

    def contains(self, x, x_adv):
        flat, delta = x_adv.flatten(1), (x_adv - x).flatten(1)
        return (delta.abs().amax(1) <= self.strength + 1e-6) & (flat.amin(1) >= 0) & (flat.amax(1) <= 1)

    def random_start(self, x, generator=None):
        noise = torch.rand(x.shape, generator=generator).to(x)
        return (x + self.strength * (2 * noise - 1)).clamp(0, 1)


@pytest.fixture
def noise():
    register_threat('noise', UniformNoise, default_strength={'cifar10': 0.25})
    yield
    unregister_threat('noise')


def _problem(n=40):
    model, x, y = softmax_regression(n=n, size=4)
    return model, x, y


def test_the_l_p_balls_are_registered_and_the_training_threat_maps_to_them():
    assert {'linf', 'l2', 'l1'} <= set(threat_names())
    t = get_threat('Linf')
    assert isinstance(t, LpThreat) and str(t) == 'linf:8/255' and t.strength == pytest.approx(8 / 255)
    assert get_threat(ThreatModel('l1', 7.25)) == LpThreat('l1', 7.25)   # no loss of precision through text
    assert get_threat('inf:0.1').name == 'linf' and get_threat('l2', dataset='imagenet').eps == 2.0
    assert get_threat('l2 0.5').header == 'l_2 (0.5)'


def test_unknown_names_list_the_choices_and_strengths_out_of_range_name_it(noise):
    with pytest.raises(ValueError, match=r"unknown threat 'nosie' \(did you mean 'noise'\?\): registered are .*l1.*noise"):
        get_threat('nosie:0.1')
    with pytest.raises(ValueError, match=r"strength 1.5 of threat 'noise' is out of range: it must lie in \[0, 1\]"):
        get_threat('noise:1.5')
    with pytest.raises(ValueError, match="no default strength for dataset 'imagenet'"):
        get_threat('noise', dataset='imagenet')
    with pytest.raises(ValueError, match='registered already'):
        register_threat('noise', UniformNoise)
    with pytest.raises(ValueError, match='without'):
        register_threat('a:b', UniformNoise)


def test_a_threat_from_this_file_runs_in_evaluate_robustness_union_and_json(noise, tmp_path):
    model, x, y = _problem()
    res = evaluate_robustness(model, x, y, threats=['noise:0.3', 'linf:0.05'], budget=TINY, bs=16)
    noise_flags, linf_flags = res.flags['noise:0.3'], res.flags['linf:0.05']
    assert res.union == pytest.approx(sum(a and b for a, b in zip(noise_flags, linf_flags)) / len(y))
    assert res.flags['union'] == [a and b for a, b in zip(noise_flags, linf_flags)]
    assert res.clean >= res.robust['noise:0.3'] >= res.union
    assert res.robust['noise:0.3'] < res.clean      # the noise breaks some points of this fragile model
    back = RobustResult.from_json(res.to_json(tmp_path / 'r.json'))
    assert back == res and json.loads((tmp_path / 'r.json').read_text())['threats'] == ['noise:0.3', 'linf:0.05']
    assert 'noise (0.3)' in results_text(res)


def test_verdicts_do_not_depend_on_the_batch_or_union_only(noise):
    model, x, y = _problem()
    threats = ['noise:0.3', 'l2:0.3']
    full = evaluate_robustness(model, x, y, threats=threats, budget=TINY, bs=40)
    small = evaluate_robustness(model, x, y, threats=threats, budget=TINY, bs=7)
    union_only = evaluate_robustness(model, x, y, threats=threats, budget=TINY, bs=11, union_only=True)
    assert full.flags == small.flags
    assert union_only.flags['union'] == full.flags['union']
    # union_only: round one is the noise's sampling, then l2's APGD-CE on what the noise left; round two
    # l2's APGD-T. Every point met the noise (exact); l2 skipped the points the noise broke (a bound)
    assert union_only.exact == {'noise:0.3': True, 'l2:0.3': False}
    assert union_only.robust['l2:0.3'] >= full.robust['l2:0.3']


def test_strength_zero_keeps_the_clean_verdict_and_strength_never_helps(noise):
    model, x, y = _problem()
    res = evaluate_robustness(model, x, y, threats=['noise:0', 'noise:0.2', 'noise:0.6'], budget=TINY)
    assert res.flags['noise:0'] == res.flags['clean']
    accs = [res.robust[t] for t in ('noise:0', 'noise:0.2', 'noise:0.6')]
    assert accs[0] >= accs[1] >= accs[2]


def test_robust_eval_curves_and_pictures_of_a_registered_threat(noise):
    model, x, y = _problem(n=32)
    dls = arrays_dls(x[:16], y[:16], x, y, bs=16, augment=False)
    learn = robust_learner(dls, model, check_data=False)
    res = learn.robust_eval(n=32, threats=['noise', 'linf:0.05'], budget=TINY, progress=False)
    assert res.threats == ['noise:0.25', 'linf:0.05'] and res.n == 32
    curves = robustness_curves(model, x, y, norms=['noise:0.2'], radii=[0, 0.2, 0.4, 0.8], n_iter=4)
    m = curves.models[0]
    acc = m.accuracy('noise')
    assert acc[0] == pytest.approx(res.clean) and acc == sorted(acc, reverse=True) and acc[-1] < acc[0]
    assert m.attack == 'random sampling 4 it. per radius'
    fig = curves.plot()
    assert fig.axes[0].get_xlabel() == 'noise strength'
    ex = adversarial_examples(model, x[:4], y[:4], threats=['noise:0.3'], n_iter=3)
    assert bool(UniformNoise(0.3).contains(ex.x, ex.x_adv['noise:0.3']).all())
    fig = learn.show_adversarial(n=2, threats=['noise:0.3', 'l2:0.3'], n_iter=2)
    assert len(fig.axes) == 2 * (1 + 2 * 2)


def test_an_attack_that_leaves_its_threat_is_refused(noise):
    @dataclass(frozen=True)
    class Cheating(UniformNoise):
        name = 'cheat'

        def attack(self, name, model, x, y, context):
            return (x + 2 * self.strength).clamp(0, 1)   # twice as far as allowed
    register_threat('cheat', Cheating)
    try:
        model, x, y = _problem(n=8)
        with pytest.raises(RuntimeError, match=r'sampling returned \d+ point\(s\) outside the cheat:0.1 threat model'):
            evaluate_robustness(model, x, y, threats=['cheat:0.1'])
    finally:
        unregister_threat('cheat')


def test_register_threat_works_as_a_decorator():
    @register_threat('half-noise', default_strength={'cifar10': 0.5})
    @dataclass(frozen=True)
    class HalfNoise(UniformNoise):
        name = 'half-noise'
    try:
        assert HalfNoise.__name__ == 'HalfNoise' and get_threat('half-noise') == HalfNoise(0.5)
        assert str(get_threat('HALF-NOISE:0.125')) == 'half-noise:0.125' and 'half-noise' in threat_names()
    finally:
        unregister_threat('half-noise')
    assert 'half-noise' not in threat_names()


def test_the_decorator_passes_on_aliases_parse_and_overwrite(noise):
    @register_threat('noise', aliases=['fuzz'], parse=lambda text: float(text) / 100, overwrite=True)
    @dataclass(frozen=True)
    class PercentNoise(UniformNoise):
        """Noise whose strength is written in percent."""
    assert get_threat('fuzz:25') == PercentNoise(0.25) and get_threat('noise:50') == PercentNoise(0.5)


def test_strength_parameter_datasets_and_their_messages(noise):
    # `strength` gives a bare name its strength; a strength in the text wins
    assert get_threat('l2', strength=0.3) == LpThreat('l2', 0.3)
    assert get_threat('l2:0.5', strength=0.3) == LpThreat('l2', 0.5)
    with pytest.raises(ValueError, match=r"^strength 1.5 of threat 'noise' is out of range: it must lie in \[0, 1\]$"):
        get_threat('noise', strength=1.5)
    assert get_threat('noise:1') == UniformNoise(1.0) and get_threat('noise:0') == UniformNoise(0.0)   # bounds included
    # dataset names are read as the paper writes them: any case, with or without '-' or '_'
    assert get_threat('linf', dataset='CIFAR-10') == get_threat('linf', dataset='cifar_10') == LpThreat('linf', 8 / 255)
    with pytest.raises(ValueError, match='^' + re.escape("threat 'linf' has no default strength for dataset 'mnist' "
                                                         "(defaults: cifar10, imagenet): write it as 'linf:<strength>'")):
        get_threat('linf', dataset='mnist')
    register_threat('bare', UniformNoise)
    try:
        with pytest.raises(ValueError, match=re.escape("threat 'bare' has no default strength for dataset 'cifar10' "
                                                       "(defaults: none): write it as 'bare:<strength>'")):
            get_threat('bare')
    finally:
        unregister_threat('bare')
    with pytest.raises(ValueError, match=r"^unknown threat 'linff' \(did you mean 'linf'\?\): registered are "):
        get_threat('linff')


def test_parse_threats_reads_bare_names_with_the_dataset():
    assert parse_threats('linf') == [LpThreat('linf', 8 / 255)]                     # CIFAR-10 by default
    assert parse_threats(['l2', 'l1:3'], dataset='imagenet') == [LpThreat('l2', 2.0), LpThreat('l1', 3.0)]


def test_a_threats_check_is_given_the_budget(noise):
    @dataclass(frozen=True)
    class Exhaustive(UniformNoise):
        """Noise that is only evaluated with the standard budget."""
        name = 'exhaustive'

        def check(self, budget, n_classes):
            if not budget.is_standard:
                raise ValueError(f"{self} needs the standard budget, got {budget.name!r}")
    register_threat('exhaustive', Exhaustive)
    try:
        model, x, y = _problem(n=8)
        with pytest.raises(ValueError, match=r"^exhaustive:0.1 needs the standard budget, got 'quick'$"):
            evaluate_robustness(model, x, y, threats=['exhaustive:0.1'], budget='quick')
        assert evaluate_robustness(model, x, y, threats=['exhaustive:0.1'], budget='standard').n == 8
    finally:
        unregister_threat('exhaustive')


def test_the_refusal_counts_the_points_outside_and_says_why(noise):
    @dataclass(frozen=True)
    class CheatsOnce(UniformNoise):
        """Moves the first point of every chunk twice as far as allowed, leaves the others in place."""
        name = 'cheat'

        def attack(self, name, model, x, y, context):
            out = x.clone()
            out[0] = torch.where(x[0] < 0.5, x[0] + 2 * self.strength, x[0] - 2 * self.strength)
            return out
    register_threat('cheat', CheatsOnce)
    try:
        model, x, y = softmax_regression(n=8, size=4, n_flipped=0)       # one chunk of 8 clean-correct points
        message = ("sampling returned 1 point(s) outside the cheat:0.1 threat model (its ball, or the [0,1] box): "
                   "the evaluation would not be valid")
        with pytest.raises(RuntimeError, match='^' + re.escape(message) + '$'):
            evaluate_robustness(model, x, y, threats=['cheat:0.1'])
    finally:
        unregister_threat('cheat')


class MeanAbove(nn.Module):
    """Class 0 if mean(x) > 0.5, else class 1."""

    def forward(self, x):
        s = x.flatten(1).mean(dim=1) - 0.5
        return torch.stack([s, -s], dim=1)


@dataclass(frozen=True)
class Lowering(Threat):
    """Every pixel lowered by strength * u, one u uniform in [0, 1) per point."""
    strength: float
    name = 'lowering'

    def contains(self, x, x_adv):
        return ((x - x_adv).flatten(1).amax(1) <= self.strength) & ((x_adv - x).flatten(1).amax(1) <= 0)

    def random_start(self, x, generator=None):
        return (x - self.strength * torch.rand(len(x), generator=generator).view(-1, 1, 1, 1)).clamp(0, 1)


def test_sampling_keeps_a_points_first_success_else_its_last_draw():
    threat, n_samples = Lowering(0.1), 3
    x, y = torch.full((32, 1, 2, 2), 0.55), torch.zeros(32, dtype=torch.long)   # fooled by a draw u > 0.5
    seeds = range(32)
    out = sampling_attack(threat, MeanAbove(), x, y, [torch.Generator().manual_seed(s) for s in seeds], n_samples)
    patterns = set()
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(s)
        draws = [threat.random_start(x[i:i + 1], g) for _ in range(n_samples)]
        fooled = [bool(MeanAbove()(d).argmax(1) != 0) for d in draws]
        patterns.add(tuple(fooled))
        expected = draws[fooled.index(True)] if any(fooled) else draws[-1]
        assert torch.equal(out[i:i + 1], expected), (i, fooled)
    # the points cover the cases: never fooled, fooled by the first draw and not the next, fooled later only
    assert {(False,) * 3, (True, False, False), (False, True, False)} <= patterns


class Sure(nn.Module):
    """Class 0 for every input: sampling never fools it, so it returns each point's last draw."""

    def forward(self, x):
        return torch.cat([torch.ones(len(x), 1), torch.zeros(len(x), 9)], dim=1) + 0 * x.flatten(1)[:, :1]


def test_sampling_draws_are_keyed_to_the_seed_the_threat_and_the_attack():
    x = 0.4 + 0.2 * torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))   # no clamping at 0.3
    y = torch.zeros(4, dtype=torch.long)

    def noise(threat, attack='sampling', seed=0):
        """The last draw of each point, as uniform numbers in [-1, 1]."""
        context = AttackContext(TINY, seed, 10, torch.device('cpu'), logging.getLogger('test'))
        return (threat.attack(attack, Sure(), x, y, context) - x) / threat.strength

    base = noise(UniformNoise(0.2))
    assert torch.equal(base, noise(UniformNoise(0.2)))                                   # reproducible
    for other in (noise(UniformNoise(0.2), seed=1), noise(UniformNoise(0.3)), noise(UniformNoise(0.2), 'resample')):
        assert not torch.allclose(base, other, atol=1e-3)
    quick = lambda seed: UniformNoise(0.2).quick_attack(Sure(), x, y, 3, seed)
    assert torch.equal(quick(0), quick(0)) and not torch.allclose(quick(0), quick(1), atol=1e-3)


def test_a_threats_default_size_is_its_strength_in_float64():
    size = UniformNoise(0.1).size(torch.zeros(3, 1, 2, 2), torch.zeros(3, 1, 2, 2))
    assert size.dtype == torch.float64 and size.tolist() == [0.1, 0.1, 0.1]


@pytest.mark.parametrize('norm, eps', [('linf', 8 / 255), ('l2', 0.5), ('l1', 4.0)])
def test_an_lp_threat_draws_its_random_start_inside_its_ball_from_the_generator(norm, eps):
    threat = get_threat(f'{norm}:{eps}')
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    start = lambda seed: threat.random_start(x, torch.Generator().manual_seed(seed))
    first = start(1)
    assert first.shape == x.shape and bool(threat.contains(x, first).all())            # in the ball and in [0,1]
    assert bool((threat.size(x, first) > eps / 4).all())                                 # a move, not x itself
    assert torch.equal(first, start(1)) and not torch.equal(first, start(2))            # the generator's numbers


def test_an_lp_threat_measures_a_perturbation_in_its_norm():
    x = torch.full((2, 1, 2, 2), 0.5)
    x_adv = x.clone()
    x_adv[0, 0, 0] = torch.tensor([0.8, 0.1])                                           # +0.3 and -0.4
    sizes = {norm: get_threat(f'{norm}:1').size(x, x_adv) for norm in ('linf', 'l2', 'l1')}
    assert all(s.dtype == torch.float64 and s.device.type == 'cpu' for s in sizes.values())
    assert sizes['linf'].tolist() == pytest.approx([0.4, 0.0])
    assert sizes['l2'].tolist() == pytest.approx([0.5, 0.0])
    assert sizes['l1'].tolist() == pytest.approx([0.7, 0.0])


def test_the_lp_quick_attack_runs_n_iter_steps_of_evaluation_apgd():
    model, x, y = softmax_regression(n=4, size=4, n_flipped=0)
    counting, threat, forwards = CountingModel(model), LpThreat('l2', 0.5), {}
    for n_iter in (2, 5):
        counting.n_forward = 0
        threat.quick_attack(counting, x, y, n_iter, seed=0)
        forwards[n_iter] = counting.n_forward
    assert forwards[5] - forwards[2] == 3                                                # one forward a step
    # evaluation's APGD starts at a random point drawn from the seed
    assert not torch.equal(threat.quick_attack(model, x, y, 1, seed=0), threat.quick_attack(model, x, y, 1, seed=1))
