"""Robustness curves: exact on a linear model, monotone, clean at 0, agree with evaluate_robustness, bad input."""
import json
import math

import matplotlib
import pytest
import torch
from conftest import TinyNet
from torch import nn

matplotlib.use('Agg')

from eatai.attacks import EVALUATION, apgd  # noqa: E402
from eatai.cli import main  # noqa: E402
from eatai.evaluation.curves import (RobustnessCurves, agreement_tolerance, check_radii, minimal_perturbations,  # noqa: E402
                          robustness_curves)
from eatai.data import arrays_dls, load_sample  # noqa: E402
from eatai.demo import DEMO_CHECKPOINT  # noqa: E402
from eatai.evaluation import evaluate_robustness  # noqa: E402
from eatai.learner import robust_learner  # noqa: E402


pytestmark = pytest.mark.usefixtures('one_thread')


def linear_problem(n=40, size=6, n_flipped=4, seed=0):
    """A linear 10-class model where only classes 0 and 1 ever compete (so the cross-entropy's
    gradient is the margin's), inputs in [0.4, 0.6] (the box never binds at the radii used) and
    labels it gets right except the first `n_flipped`."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 10))
    with torch.no_grad():
        model[1].bias[2:] = -1e3
    x = 0.4 + 0.2 * torch.rand(n, 3, size, size)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:n_flipped] = (y[:n_flipped] + 1) % 10
    return model, x, y


def true_min_norms(model, x, y, norm):
    """Exact minimal perturbation of a linear model without box: min over classes k of
    margin_k / ||w_y - w_k||_dual (0 for clean errors)."""
    lin = model[1]
    with torch.no_grad():
        logits, weight = model(x), lin.weight.detach()
    dual = {'linf': 1, 'l2': 2}[norm]
    out = []
    for i in range(len(y)):
        if logits[i].argmax() != y[i]:
            out.append(0.0)
            continue
        d = [(logits[i, y[i]] - logits[i, k]) / (weight[y[i]] - weight[k]).norm(p=dual)
             for k in range(10) if k != y[i]]
        out.append(float(min(d)))
    return torch.tensor(out)


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_curve_is_exact_on_a_linear_model(norm):
    model, x, y = linear_problem()
    true = true_min_norms(model, x, y, norm)
    radii = [0.0] + torch.quantile(true[true > 0], torch.tensor([0.2, 0.4, 0.6, 0.8])).tolist()
    curves = robustness_curves(model, x, y, norms=[f'{norm}:{radii[2]}'], radii=radii, n_iter=20)
    acc = curves.models[0].accuracy(norm)
    found = torch.tensor([math.inf if v is None else v for v in curves.models[0].min_norms[norm]])
    # a found adversarial is never shorter than the true minimum; clean errors are 0
    assert bool((found >= true * (1 - 1e-4)).all()) and bool((found[true == 0] == 0).all())
    for r, a in zip(radii, acc):
        # robust where the true minimum exceeds r; APGD may miss points just inside r
        assert int((true > r).sum()) <= round(a * len(y)) <= int((true > 0.97 * r).sum()), (r, a)


def test_monotone_and_clean_at_zero():
    torch.manual_seed(1)
    model = TinyNet().eval()
    x = torch.rand(24, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 10
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    curves = robustness_curves(model, x, y, norms=['linf:0.03', 'l2:0.3', 'l1:2'], n_iter=5)
    m = curves.models[0]
    assert m.clean == pytest.approx(clean)
    for norm in ('linf', 'l2', 'l1'):
        acc = m.accuracy(norm)
        assert acc[0] == pytest.approx(clean)
        assert all(b <= a for a, b in zip(acc, acc[1:])), acc
        assert acc[-1] < acc[0]   # the attack did break something
        finer = m.accuracy(norm, [m.radii[norm][-1] * k / 29 for k in range(30)])
        assert all(b <= a for a, b in zip(finer, finer[1:]))


def test_agrees_with_apgd_at_the_radius():
    """At the evaluated radius: within tolerance of a direct APGD-CE run, and not below
    evaluate_robustness (APGD-CE + APGD-T) by more than the tolerance."""
    model, x, y = linear_problem(n=48, seed=3)
    # the median minimal perturbation: about half the points break
    threats = [f"{norm}:{true_min_norms(model, x, y, norm).median().item():.4f}" for norm in ('linf', 'l2')]
    res = evaluate_robustness(model, x, y, threats=threats, budget='quick')
    m = robustness_curves(model, x, y, norms=threats, n_iter=20).models[0]
    for t in threats:
        norm, eps = t.split(':')
        _, still = apgd(model, x, y, norm, float(eps), **{**EVALUATION, 'n_iter': 20})
        direct, p = still.float().mean().item(), res.robust[t]
        assert 0.2 < p < res.clean - 0.2   # the radius is informative: many points break, many hold
        assert abs(m.at_eps(norm) - direct) <= agreement_tolerance(direct, len(y))
        assert m.at_eps(norm) >= p - agreement_tolerance(p, res.n)


def test_found_adversarials_are_real(monkeypatch):
    """Points whose 'adversarial' the model still classifies correctly are not counted as broken."""
    import eatai.evaluation.lp as lp_mod   # where the l_p threats find APGD
    model, x, y = linear_problem(n=12)
    monkeypatch.setattr(lp_mod, 'apgd', lambda model, xb, yb, *a, **k: (xb.clone(), None))
    found = minimal_perturbations(model, x, y, 'linf', [0, 0.1])
    assert bool(torch.isinf(found[4:]).all()) and bool((found[:4] == 0).all())


def test_json_round_trip_and_plot(tmp_path):
    model, x, y = linear_problem(n=16)
    a = robustness_curves(model, x, y, norms=['linf:0.004', 'l2:0.02'], n_iter=3, name='a')
    b = robustness_curves(model, x, y, norms=['linf:0.004', 'l2:0.02'], n_iter=3, name='b')
    both = a + b
    back = RobustnessCurves.from_json(both.to_json(tmp_path / 'c.json'))
    assert back == both and json.loads((tmp_path / 'c.json').read_text())['models'][1]['name'] == 'b'
    fig = both.plot()
    assert len(fig.axes) == 2
    for ax, eps in zip(fig.axes, (0.004, 0.02)):
        curves = [line for line in ax.lines if line.get_label() in ('a', 'b')]
        assert len(curves) == 2
        assert [100 * v for v in a.models[0].accuracy(ax.get_title())] == pytest.approx(list(curves[0].get_ydata()))
        assert any(list(line.get_xdata()) == [eps, eps] for line in ax.lines)   # the evaluated radius


@pytest.mark.parametrize('radii, match', [([], 'empty'), ([0, -0.1, 0.2], '>= 0'), ([0, 0.2, 0.1], 'increasing'),
                                          ([0, 0.1, 0.1], 'increasing'), ([0, float('nan')], 'finite')])
def test_bad_radii(radii, match):
    with pytest.raises(ValueError, match=match):
        check_radii(radii, 'l2')
    model, x, y = linear_problem(n=4)
    with pytest.raises(ValueError, match=match):
        robustness_curves(model, x, y, norms=['l2'], radii=radii)


def test_bad_input():
    model, x, y = linear_problem(n=4)
    with pytest.raises(ValueError, match='ambiguous'):
        robustness_curves(model, x, y, norms=['l2', 'linf'], radii=[0, 0.1])
    with pytest.raises(ValueError, match='probabilities'):
        robustness_curves(nn.Sequential(model, nn.Softmax(dim=1)), x, y, norms=['l2'])
    with pytest.raises(ValueError, match='past the largest'):
        robustness_curves(model, x, y, norms=['l2:0.1'], n_iter=1).models[0].accuracy('l2', [0, 1.0])


def test_learner_method_and_n_larger_than_the_data():
    x_train, y_train, x_valid, y_valid = load_sample()
    learn = robust_learner(arrays_dls(x_train[:32], y_train[:32], x_valid[:20], y_valid[:20], bs=8), TinyNet())
    curves = learn.robustness_curves(n=6, norms=['linf'], n_iter=2)
    assert curves.models[0].n == 6 and curves.models[0].eps == {'linf': pytest.approx(8 / 255)}
    with pytest.raises(ValueError, match='n=21 is larger than the data'):
        learn.robustness_curves(n=21, norms=['linf'])


def test_cli_writes_a_png(tmp_path):
    out = tmp_path / 'curves.png'
    rc = main(['curves', '--model', str(DEMO_CHECKPOINT), '--model', str(DEMO_CHECKPOINT), '--n', '6',
               '--n-iter', '2', '--norm', 'linf', '--out', str(out), '--json', str(tmp_path / 'c.json')])
    assert rc == 0 and out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert len(RobustnessCurves.from_json(tmp_path / 'c.json').models) == 2
    assert main(['curves', '--model', str(DEMO_CHECKPOINT), '--n', '501', '--out', str(out)]) == 2


def test_curves_of_the_threats_beyond_lp():
    """StAdv, ReColorAdv and JPEG have curves on the bundled model: their default strengths, clean at 0,
    non-increasing, something broken, every found size within the ladder."""
    from eatai.evaluation import get_threat
    from eatai.evaluation.curves import threat_radii
    assert threat_radii(get_threat('jpeg')) == [0.0, 0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0]   # advex-uar's CIFAR-10
    assert threat_radii(get_threat('stadv')) == pytest.approx([0, 0.0125, 0.025, 0.0375, 0.05, 0.075, 0.1])
    assert threat_radii(get_threat('recolor'))[-1] == pytest.approx(0.1)
    assert threat_radii(get_threat('stadv:0.6')) == pytest.approx([0, 0.15, 0.3, 0.45, 0.6, 0.9, 1.0])  # range [0, 1]
    _, _, x, y = load_sample()
    learn = robust_learner(arrays_dls(x[:8], y[:8], x[:8], y[:8], bs=8), DEMO_CHECKPOINT)
    radii = {'stadv': [0, 0.025, 0.1], 'recolor': [0, 0.03, 0.1], 'jpeg': [0, 0.125, 1.0]}
    m = learn.robustness_curves(n=8, norms=['stadv', 'recolor', 'jpeg'], radii=radii, n_iter=5).models[0]
    assert m.eps == {'stadv': 0.05, 'recolor': 0.06, 'jpeg': 0.25} and m.radii == radii
    for name in radii:
        acc = m.accuracy(name)
        assert acc[0] == pytest.approx(m.clean) and all(b <= a for a, b in zip(acc, acc[1:])), (name, acc)
        assert acc[-1] < acc[0], name   # the attack broke something at its largest strength
        sizes = [v for v in m.min_norms[name] if v is not None and v > 0]
        assert sizes and all(v <= radii[name][-1] * (1 + 1e-6) for v in sizes)
    fig = RobustnessCurves([m]).plot()
    assert [ax.get_title() for ax in fig.axes] == ['stadv', 'recolor', 'jpeg']


def test_corruptions_have_no_curve():
    model, x, y = linear_problem(n=4, size=32)
    with pytest.raises(ValueError, match='no robustness curve'):
        robustness_curves(model, x, y, norms=['corruption:fog:3'])
    with pytest.raises(ValueError, match='no robustness curve'):
        minimal_perturbations(model, x, y, 'corruption', [0, 1, 2])
