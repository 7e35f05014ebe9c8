"""The threat registry: a threat registered from this file alone reaches robust_eval, the union, union_only,
the table, JSON, curves and pictures, with no change to eatai; names, strengths and errors."""
import json
from dataclasses import dataclass

import matplotlib
import pytest
import torch
from conftest import softmax_regression

matplotlib.use('Agg')

from eatai.data import arrays_dls  # noqa: E402
from eatai.evaluation import (EvalBudget, APGDSettings, LpThreat, RobustResult, Threat, evaluate_robustness,  # noqa: E402
                              get_threat, register_threat, results_text, robustness_curves, threat_names,
                              unregister_threat, adversarial_examples)
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
