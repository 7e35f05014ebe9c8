"""StAdv, the spatial-flow threat 'stadv:<bound>': the flow's bound (exactly, on the returned flow) and the
image-only membership check, strength 0, monotone strength, batch-invariant verdicts, the registry, host
syncs, and the attack's own rules (eval mode, untouched parameter gradients, reproducible starts)."""
import pytest
import torch
from conftest import CountingModel, TinyNet

import eatai.evaluation.stadv  # noqa: F401  registers 'stadv' (the package's __init__ may not import it yet)
from eatai.attacks.spatial import STADV_ITERATIONS, apply_flow, flow_loss, flow_reach, stadv
from eatai.attacks.syncs import count_host_syncs
from eatai.data import load_sample
from eatai.demo import DEMO_CHECKPOINT
from eatai.evaluation import EvalBudget, evaluate_robustness, get_threat, threat_names
from eatai.evaluation.stadv import StAdvThreat
from eatai.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def trained():
    """The bundled l-inf-trained CIFAR CNN and 40 test images of the bundled sample."""
    model = load_checkpoint(DEMO_CHECKPOINT).eval()
    _, _, x, y = load_sample()
    return model, x[:40], y[:40]


def generators(n, seed=0):
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


@pytest.mark.parametrize('bound', [0.02, 0.05, 0.3])
def test_the_flow_stays_in_its_bound_and_makes_the_image(bound, trained):
    model, x, y = trained
    x, y = x[:6], y[:6]
    x_adv, flow = stadv(model, x, y, bound, n_iter=4, generators=generators(6))
    assert flow.shape == (6, 32, 32, 2) and x_adv.shape == x.shape
    assert flow.abs().amax().item() <= bound                                # exactly, compared in float64
    assert bool((flow.abs().amax((1, 2, 3)) > bound / 2).all())             # it does move
    assert torch.allclose(x_adv, apply_flow(x, flow).clamp(0, 1))
    assert bool(StAdvThreat(bound).contains(x, x_adv).all())


def test_contains_refuses_what_no_flow_in_the_bound_reaches():
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    threat = StAdvThreat(0.05)                                               # 0.8 pixels: a reach of 2 pixels
    assert flow_reach(0.05, 32, 32) == (2, 2) and flow_reach(0.1, 16, 32) == (2, 3)
    assert bool(threat.contains(x, x).all())
    far = x.clone()
    far[..., 6:] = x[..., :-6]                                               # pixels from 6 columns away
    assert not bool(threat.contains(x, far).any())
    assert bool(StAdvThreat(0.5).contains(x, far).all())                     # 8 pixels: within reach
    flat = x.clone()
    flat[0] = 0.5
    wrong = flat.clone()
    wrong[0, 1, 10, 10] = 0.6                                                # no pixel around it is 0.6
    assert threat.contains(flat, wrong).tolist() == [False, True, True]
    brighter = x.clone()
    brighter[1] = x[1] * 0 + 1.0
    assert threat.contains(x, brighter).tolist() == [True, False, True]
    # the border: grid_sample's zero padding can darken the edge pixels, never the middle ones
    edge, middle = flat.clone(), flat.clone()
    edge[0, :, 0, 0], middle[0, :, 16, 16] = 0.3, 0.3
    assert threat.contains(flat, edge).tolist() == [True, True, True]
    assert threat.contains(flat, middle).tolist() == [False, True, True]


def test_a_random_start_is_a_flow_in_the_bound_drawn_from_the_generator():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    threat = StAdvThreat(0.2)
    start = lambda seed: threat.random_start(x, torch.Generator().manual_seed(seed))
    first = start(1)
    assert first.shape == x.shape and bool(threat.contains(x, first).all())
    assert torch.equal(first, start(1)) and not torch.equal(first, start(2))
    assert (first - x).abs().amax() > 0.01
    assert torch.equal(StAdvThreat(0.0).random_start(x, torch.Generator()), x)


def test_strength_zero_returns_the_clean_image_and_verdict(trained):
    model, x, y = trained
    x_adv, flow = stadv(model, x[:4], y[:4], 0.0, generators=generators(4))
    assert torch.equal(x_adv, x[:4]) and not flow.any()
    res = evaluate_robustness(model, x[:16], y[:16], threats=['stadv:0'], budget='quick')
    assert res.flags['stadv:0'] == res.flags['clean']


def test_a_larger_bound_never_raises_robust_accuracy_and_the_attack_breaks_points(trained):
    model, x, y = trained
    threats = ['stadv:0.02', 'stadv:0.05', 'stadv:0.1']
    res = evaluate_robustness(model, x[:32], y[:32], threats=threats, budget='quick')
    accs = [res.robust[t] for t in threats]
    assert res.clean >= accs[0] >= accs[1] >= accs[2]
    assert accs[2] < accs[1] < res.clean                                     # not vacuous: it breaks points


def test_verdicts_do_not_depend_on_the_batch(trained):
    model, x, y = trained
    full = evaluate_robustness(model, x[:20], y[:20], threats=['stadv:0.05'], budget='quick', bs=20)
    small = evaluate_robustness(model, x[:20], y[:20], threats=['stadv:0.05'], budget='quick', bs=6)
    assert full.flags == small.flags


def test_the_registered_name_defaults_and_range():
    assert 'stadv' in threat_names()
    assert get_threat('stadv') == StAdvThreat(0.05) and str(get_threat('stadv')) == 'stadv:0.05'
    assert get_threat('StAdv:0.1') == StAdvThreat(0.1) and get_threat('stadv:0.1').header == 'stadv (0.1)'
    with pytest.raises(ValueError, match=r"strength 1.5 of threat 'stadv' is out of range: it must lie in \[0, 1\]"):
        get_threat('stadv:1.5')
    with pytest.raises(ValueError, match='no default strength'):
        get_threat('stadv', dataset='imagenet')


def test_the_budget_gives_the_papers_steps():
    threat = StAdvThreat(0.05)
    assert threat.steps(EvalBudget.from_name('standard')) == STADV_ITERATIONS == 100
    assert threat.steps(EvalBudget.from_name('quick')) == 20
    assert threat.attacks(EvalBudget.from_name('standard')) == ('stadv',) and threat.quick_attack_name == 'stadv'


def test_n_iter_steps_cost_n_iter_plus_one_forwards_and_no_syncs_in_the_loop():
    torch.manual_seed(0)
    model = CountingModel(TinyNet().eval())
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4)
    counts = {}
    for n_iter in (2, 5):
        model.n_forward = 0
        with count_host_syncs() as syncs:
            stadv(model, x, y, 0.05, n_iter=n_iter, generators=generators(4))
        counts[n_iter] = syncs.by_kind()
        assert model.n_forward == n_iter + 1
    assert counts[2] == counts[5] and sum(counts[5].values()) <= 2


def test_the_attack_restores_modes_leaves_parameter_grads_and_is_reproducible():
    torch.manual_seed(0)
    model = TinyNet().train()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4)
    first = stadv(model, x, y, 0.1, n_iter=3, generators=generators(4))
    assert model.training and all(p.grad is None for p in model.parameters())
    again = stadv(model, x, y, 0.1, n_iter=3, generators=generators(4))
    other = stadv(model, x, y, 0.1, n_iter=3, generators=generators(4, seed=1))
    assert torch.equal(first[1], again[1]) and not torch.equal(first[1], other[1])
    # a point's result is its own: the same from its generator alone as within the batch
    alone = stadv(model, x[2:3], y[2:3], 0.1, n_iter=3, generators=generators(4)[2:3])
    assert torch.allclose(alone[1], first[1][2:3], atol=1e-6)


def test_the_smoothness_penalty_smooths_the_flow(trained):
    model, x, y = trained
    rough = stadv(model, x[:8], y[:8], 0.1, n_iter=10, smoothness=0.0)[1]
    smooth = stadv(model, x[:8], y[:8], 0.1, n_iter=10, smoothness=0.05)[1]
    assert flow_loss(smooth).mean() < flow_loss(rough).mean()


def test_the_flow_loss_is_xiao_et_als_over_four_neighbours_with_the_edge_replicated():
    flow = torch.randn(2, 5, 7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = torch.nn.functional.pad(flow.permute(0, 3, 1, 2), (1, 1, 1, 1), mode='replicate')   # (N, 2, H+2, W+2)
    centre = grid[:, :, 1:-1, 1:-1]
    expected = sum(((centre - grid[:, :, 1 + di:6 + di, 1 + dj:8 + dj]).pow(2).sum(1) + 1e-10).sqrt().sum((1, 2))
                   for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)))
    assert torch.allclose(flow_loss(flow), expected)
    assert flow_loss(torch.zeros(1, 4, 6, 2, dtype=torch.float64)).item() == pytest.approx(4 * 4 * 6 * 1e-5)


def test_bad_arguments_are_errors():
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    model = TinyNet().eval()
    with pytest.raises(ValueError, match='bound must be a finite number >= 0'):
        stadv(model, x, y, -0.1)
    with pytest.raises(ValueError, match='n_iter must be an integer >= 1'):
        stadv(model, x, y, 0.1, n_iter=0)
    with pytest.raises(ValueError, match=r'one generator per point \(2\), got 1'):
        stadv(model, x, y, 0.1, generators=generators(1))
    with pytest.raises(ValueError, match=r'\[0,1\]'):
        stadv(model, x + 1, y, 0.1)
    with pytest.raises(ValueError, match='smoothness must be a finite number >= 0'):
        stadv(model, x, y, 0.1, smoothness=float('nan'))
    with pytest.raises(ValueError, match='lr must be a finite number > 0'):
        stadv(model, x, y, 0.1, lr=0.0)
