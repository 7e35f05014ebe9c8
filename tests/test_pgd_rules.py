"""PGD's and MSD's rules one at a time, each against a computation made here: the robustness flag
as the AND over the iterates, which iterate is kept, the default step, the random start and its
generator, the TRADES (KL) loss and its reference, SLIDE's blocked coordinates, eval mode, the
argument and batch checks, ties in the loss, grad_scale under fp16, and the host syncs."""
import importlib

import pytest
import torch
from conftest import CountingModel, Flicker, TinyNet
from test_apgd_inputs import saturated
from test_precision import faint
from torch import nn

from eatai.attacks.losses import ce_loss, kl_loss
from eatai.attacks.msd import msd
from eatai.attacks.pgd import pgd, steepest_direction
from eatai.attacks import make_ball
from eatai.attacks.syncs import count_host_syncs

pytestmark = pytest.mark.usefixtures('one_thread')


def chain(model, x, y, norm, eps, n_iter, **kw):
    """The iterates 0..n_iter of deterministic PGD, each as PGD run for that many steps (keep='last')."""
    points = [x]
    for k in range(1, n_iter + 1):
        points.append(pgd(model, x, y, norm, eps, n_iter=k, keep='last', **kw)[0])
    return points


@pytest.mark.parametrize('norm, eps', [('linf', 0.06), ('l2', 0.8), ('l1', 6.0)])
def test_pgd_flags_are_the_and_over_its_iterates_and_keep_picks_the_iterate(tiny_net, batch, norm, eps):
    x, y = batch
    tiny_net.eval()
    points = chain(tiny_net, x, y, norm, eps, 4)
    with torch.no_grad():
        preds = torch.stack([tiny_net(p).argmax(1) for p in points])        # (5, B)
        losses = torch.stack([ce_loss(tiny_net(p), y) for p in points])
    _, correct, last_loss = pgd(tiny_net, x, y, norm, eps, n_iter=4, keep='last', return_loss=True)
    assert torch.equal(correct, (preds == y).all(dim=0))
    assert torch.allclose(last_loss, losses[-1], atol=1e-6)
    best, _, best_loss = pgd(tiny_net, x, y, norm, eps, n_iter=4, keep='loss', return_loss=True)
    assert torch.allclose(best_loss, losses.max(dim=0).values, atol=1e-6)
    assert torch.equal(best, torch.stack(points)[losses.argmax(dim=0), torch.arange(len(y))])


def test_pgd_default_step_is_a_quarter_of_eps_in_linf(tiny_net, batch):
    x, y = batch
    x = 0.25 + 0.5 * x                                  # interior: the box never clips a step of 0.02
    x_adv, _ = pgd(tiny_net.eval(), x, y, 'linf', 0.08, n_iter=1)
    moved = (x_adv - x).abs()
    assert torch.allclose(moved[moved > 0], torch.tensor(0.02), atol=1e-6)
    with pytest.raises(ValueError, match=r'^step_size must be > 0, got 0'):
        pgd(tiny_net, x, y, 'linf', 0.08, step_size=0)


def test_pgd_random_start_follows_its_generator(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    run = lambda seed: pgd(tiny_net, x, y, 'l2', 0.5, n_iter=1, random_start=True,
                           generator=torch.Generator().manual_seed(seed))[0]
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    assert not torch.equal(run(3), pgd(tiny_net, x, y, 'l2', 0.5, n_iter=1)[0])


def test_pgd_kl_loss_moves_away_from_its_reference(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    g = torch.Generator().manual_seed(0)
    x_adv, _, loss = pgd(tiny_net, x, y, 'linf', 0.06, n_iter=3, random_start=True, loss='kl', keep='last',
                         return_loss=True, generator=g)
    with torch.no_grad():
        assert torch.allclose(loss, kl_loss(tiny_net(x_adv), y, tiny_net(x)), atol=1e-6)
        other = torch.randn(len(y), 10, generator=torch.Generator().manual_seed(1))
    x_o, _, loss_o = pgd(tiny_net, x, y, 'linf', 0.06, n_iter=3, random_start=True, loss='kl', keep='last',
                         return_loss=True, generator=torch.Generator().manual_seed(0), reference=other)
    with torch.no_grad():
        assert torch.allclose(loss_o, kl_loss(tiny_net(x_o), y, other), atol=1e-6)
    assert loss.mean() > 0
    with pytest.raises(ValueError, match=r"^loss 'kl' needs random_start=True: its gradient is zero at the clean point"):
        pgd(tiny_net, x, y, 'linf', 0.06, loss='kl')
    with pytest.raises(ValueError, match=r"^pgd's loss must be 'ce' or 'kl', got 'KL'"):
        pgd(tiny_net, x, y, 'linf', 0.06, loss='KL', random_start=True)


def test_slide_skips_exactly_the_coordinates_the_box_blocks():
    ball = make_ball('l1', 1.0)
    x_adv = torch.full((1, 1, 10, 10), 0.5)
    grad = torch.full((1, 1, 10, 10), 0.01)
    # the two largest gradients point out of the box: skipped; the next ones point into it: kept
    x_adv[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.0, 1.0])
    grad[0, 0, 0, :4] = torch.tensor([-9.0, 0.9, 0.5, -0.7])   # 0.9 at a pixel of 1: blocked however small
    grad[0, 0, 1, 0] = -5.0                                    # interior and negative: kept
    d = steepest_direction(ball, grad, x_adv, percentile=97.0)  # keeps 3 of 100 coordinates
    kept = d[0, 0] != 0
    assert kept[0, 0].item() is False and kept[0, 1].item() is False
    assert kept[1, 0] and kept[0, 3] and kept[0, 2] and int(kept.sum()) == 3
    assert d[0, 0, 1, 0] < 0 and d[0, 0, 0, 3] < 0 and d[0, 0, 0, 2] > 0


class TrainFlag(nn.Module):
    """A linear model that remembers whether it ran in training mode."""

    def __init__(self):
        super().__init__()
        self.fc, self.modes = nn.Linear(3 * 16 * 16, 10), []

    def forward(self, x):
        self.modes.append(self.training)
        return self.fc(x.flatten(1))


def test_attacks_run_in_eval_mode_and_give_it_back(batch):
    x, y = batch
    for attack in (lambda m: pgd(m, x, y, 'linf', 0.03, n_iter=2), lambda m: msd(m, x, y, {'linf': 0.03, 'l1': 3.0}, 2)):
        model = TrainFlag().train()
        attack(model)
        assert model.modes and not any(model.modes) and model.training


def test_msd_flags_take_the_clean_point_and_every_step(batch):
    x, y = batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).eval()
    with torch.no_grad():                       # predicts y[0] everywhere near x: right for some points only
        model[1].weight.mul_(0.2)
        model[1].bias.zero_()[y[0]] = 1.0
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    assert clean_ok.any() and not clean_ok.all()
    _, correct, _ = msd(model, x, y, {'linf': 1e-6, 'l1': 1e-6}, 2)   # steps too small to change a prediction
    assert torch.equal(correct, clean_ok)
    _, correct, _ = msd(model, x, y, {'linf': 0.5, 'l1': 50.0}, 8)     # large enough to break every point
    assert not correct.any()
    net = TinyNet().eval()
    with torch.no_grad():
        y_net = net(x).argmax(1)                                   # labels that differ from point to point
    assert msd(net, x, y_net, {'linf': 1e-6}, 1)[1].all()


def test_msd_uses_the_step_sizes_it_is_given(tiny_net, batch):
    x, y = batch
    tiny_net.eval()
    default = msd(tiny_net, x, y, {'linf': 0.06}, 1)[0]
    small = msd(tiny_net, x, y, {'linf': 0.06}, 1, step_sizes={'linf': 0.001})[0]
    assert (small - x).abs().max() <= 0.001 + 1e-6 < (default - x).abs().max()


@pytest.mark.parametrize('n_iter', [0, 2.5, True])
def test_pgd_and_msd_check_their_arguments(tiny_net, batch, n_iter):
    x, y = batch
    with pytest.raises(ValueError, match='^n_iter must be an integer >= 1, got'):
        pgd(tiny_net, x, y, 'linf', 0.03, n_iter=n_iter)
    with pytest.raises(ValueError, match='^n_iter must be an integer >= 1, got'):
        msd(tiny_net, x, y, {'linf': 0.03}, n_iter)
    with pytest.raises(ValueError, match=r"^eps must name at least one threat model, e.g. \{'linf': 8/255, 'l1': 12\}"):
        msd(tiny_net, x, y, {}, 1)


def test_pgd_flag_and_kept_point_when_only_one_iterate_is_misclassified(batch):
    x, y = batch
    torch.manual_seed(0)
    for keep in ('last', 'loss'):
        model = Flicker(y)
        x_adv, correct, loss = pgd(model, x, y, 'linf', 0.03, n_iter=3, keep=keep, return_loss=True)
        assert not correct.any()                     # wrong at iterate 1, right at iterates 0, 2, 3
        if keep == 'loss':
            assert (loss > 40).all()                 # the loss of iterate 1, the highest
        else:
            assert (loss < 1).all()                  # the loss of iterate 3, the last


def test_msd_flag_when_only_one_iterate_is_misclassified(batch):
    x, y = batch
    torch.manual_seed(0)
    # MSD's forwards: x, then per iteration one per norm and one for the gradient; forward 2 is a candidate
    _, correct, _ = msd(Flicker(y), x, y, {'linf': 0.03}, 3)
    assert not correct.any()


def test_default_budgets_are_ten_steps(tiny_net, batch):
    x, y = batch
    model = CountingModel(tiny_net.eval())
    pgd(model, x, y, 'linf', 0.03)
    assert model.n_forward == 10 + 1
    model.n_forward = 0
    msd(model, x, y, {'linf': 0.03, 'l1': 3.0})
    assert model.n_forward == 1 + 10 * 2 + 9        # clean, 2 candidates per step, 9 gradient points


def test_slide_too_narrow_for_its_iterates_runs_again_from_its_generator(tiny_net, batch, monkeypatch):
    """SLIDE's projection computes on a top-k of a width fixed in advance; where an example needed
    more, PGD runs again wider, from the random state (its generator's too) it started from."""
    pgd_module = importlib.import_module('eatai.attacks.pgd')
    from eatai.attacks import balls
    x, y = batch
    monkeypatch.setattr(balls, '_WIDER', {})
    monkeypatch.setattr(pgd_module, 'compact_width', lambda d, s, eps: 10 ** 6)
    exact = pgd(tiny_net, x, y, 'l1', 9.0, n_iter=4, random_start=True, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(pgd_module, 'compact_width', lambda d, s, eps: 8)
    g = torch.Generator().manual_seed(2)
    narrow = pgd(tiny_net, x, y, 'l1', 9.0, n_iter=4, random_start=True, generator=g)
    assert torch.equal(narrow[0], exact[0]) and torch.equal(narrow[1], exact[1])
    assert list(balls._WIDER) == [(9.0, 8)] and balls._WIDER[(9.0, 8)] >= 16
    reference = torch.Generator().manual_seed(2)
    torch.randn(x.shape, generator=reference)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=reference))   # drawn from once


def test_pgd_and_msd_check_the_batch_and_the_labels_first(tiny_net, batch):
    """In the checks' words: inputs out of [0,1], and a label the model cannot output, found at the
    clean forward, before the cross-entropy would fail on it with an IndexError of its own."""
    x, y = batch
    tiny_net.eval()
    for attack in (lambda x, y: pgd(tiny_net, x, y, 'linf', 0.03, 2),
                   lambda x, y: msd(tiny_net, x, y, {'linf': 0.03}, 2)):
        with pytest.raises(ValueError, match=r'^inputs must lie in \[0,1\] pixel space'):
            attack(x + 1, y)
        with pytest.raises(ValueError, match='^label 10 is out of range for a model with 10 outputs$'):
            attack(x, torch.full_like(y, 10))


@pytest.mark.parametrize('shape, norm, eps, kinds', [
    ((3, 16, 16), 'linf', 0.03, {'tolist': 1}),
    ((3, 16, 16), 'l1', 9.0, {'tolist': 1, '__bool__': 1}),
    ((1, 8, 8), 'l1', 0.5, {'tolist': 1}),
    ((134,), 'l1', 0.5, {'tolist': 1, '__bool__': 1}),
])
def test_pgd_reads_from_the_device_once_and_slide_once_more(shape, norm, eps, kinds):
    """The batch's checks in one read, the labels' included. SLIDE's top-k and projection are compacted
    to a width fixed in advance (288 of 768 coordinates here): one more read after the loop, whether
    an example needed more. The width, 64 plus 1.5 times SLIDE's 1% of the coordinates, compacts
    only up to half of them: not on 64 coordinates (65), nothing to ask; just so on 134 (67). It
    comes from one example's size, the same for a batch of one."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(torch.Size(shape).numel(), 10)).eval()
    for n in (1, 5):
        x, y = torch.rand(n, *shape, generator=torch.Generator().manual_seed(n)), torch.arange(n)
        with count_host_syncs() as syncs:
            pgd(model, x, y, norm, eps, 3, random_start=True, generator=torch.Generator().manual_seed(0))
        assert syncs.by_kind() == kinds, n


def test_msd_reads_from_the_device_twice_per_call(tiny_net, batch):
    x, y = batch
    with count_host_syncs() as syncs:
        msd(tiny_net.eval(), x, y, {'linf': 0.03, 'l1': 6.0}, 2)
    assert syncs.by_kind() == {'tolist': 2}            # the batch's checks; the steps each norm won


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_pgd_on_an_empty_batch_returns_empty_flags(tiny_net, norm):
    x, y = torch.rand(0, 3, 16, 16), torch.zeros(0, dtype=torch.long)
    x_adv, correct = pgd(tiny_net.eval(), x, y, norm, 0.1, 2)
    assert x_adv.shape == x.shape and correct.shape == (0,) and correct.dtype == torch.bool
    out = pgd(tiny_net, x, y, norm, 0.1, 2, keep='loss', return_loss=True)
    assert len(out) == 3 and out[2].shape == (0,) and out[2].is_floating_point()


@pytest.mark.parametrize('norm, eps', [('linf', 0.03), ('l2', 0.5), ('l1', 12.0)])
def test_msd_over_one_threat_model_is_pgd_keeping_the_highest_loss(tiny_net, batch, norm, eps):
    """The same steps (PGD's default size), from the same points, the same iterate kept."""
    x, y = batch
    tiny_net.eval()
    best, correct, chosen, loss = msd(tiny_net, x, y, {norm: eps}, 3, return_loss=True)
    pgd_best, pgd_correct, pgd_loss = pgd(tiny_net, x, y, norm, eps, 3, keep='loss', return_loss=True)
    assert torch.allclose(best, pgd_best, atol=1e-6) and torch.equal(correct, pgd_correct)
    assert torch.allclose(loss, pgd_loss, atol=1e-6) and chosen == {norm: 3 * len(y)}
    assert not torch.equal(best, x)


def test_pgd_and_msd_keep_the_first_of_equal_loss_iterates():
    """A later iterate replaces the best only with a strictly higher loss: at a saturated loss (0 in
    float32, with a gradient) the attacks move, and return their start."""
    model, x, y = saturated()
    assert torch.equal(pgd(model, x, y, 'linf', 0.03, 3, keep='loss')[0], x)
    assert not torch.equal(pgd(model, x, y, 'linf', 0.03, 3)[0], x)                    # keep='last': it moved
    assert torch.equal(msd(model, x, y, {'linf': 0.03, 'l2': 0.3}, 3)[0], x)


def test_grad_scale_reaches_the_gradient_and_defaults_to_none():
    """Under fp16 autocast the input gradients of `faint` models underflow (see test_precision): with
    weights 2.4e-5, about 2e-8, which rounds to 0 unscaled (the default) and not once doubled; with
    1e-5, 8e-9, which a scale of 1024 keeps. Seen in the attacks' first step (their loss, in fp16,
    does not change)."""
    def moves(attack, weight, **options):
        model, x, y = faint(weight)
        points = []
        model.register_forward_pre_hook(lambda m, args: points.append(args[0].detach()))
        with torch.autocast('cpu', dtype=torch.float16):
            attack(model, x, y, **options)
        return not torch.equal(points[1], x)          # the first point after x: PGD's step, MSD's candidate

    for attack in (lambda m, x, y, **o: pgd(m, x, y, 'linf', 0.03, 1, **o),
                   lambda m, x, y, **o: msd(m, x, y, {'linf': 0.03}, 1, **o)):
        assert not moves(attack, 2.4e-5) and not moves(attack, 2.4e-5, grad_scale=1.0)
        assert moves(attack, 2.4e-5, grad_scale=2.0) and moves(attack, 1e-5, grad_scale=1024.0)
