"""The l1-ball-and-box projection against independent solvers."""
import numpy as np
import pytest
import torch

from eatai.attacks import l1_box_projection


def bisection_projection(x, z, eps, n_steps=200):
    """Independent reference in float64: bisection on the multiplier of the l1 constraint."""
    lo_box, hi_box = -x, 1 - x

    def point(lam):
        return np.clip(np.sign(z) * np.maximum(np.abs(z) - lam, 0), lo_box, hi_box)

    if np.abs(point(0.0)).sum() <= eps:
        return point(0.0)
    lo, hi = 0.0, np.abs(z).max()
    for _ in range(n_steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.abs(point(mid)).sum() > eps else (lo, mid)
    return point(hi)


def random_case(batch, shape, scale, seed, density=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=g, dtype=torch.float64)
    x[:, ..., 0] = 0.0                              # pixels on the box boundary
    x.view(batch, -1)[:, 1] = 1.0
    delta = scale * torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    delta.view(batch, -1)[:, 2:5] = 0.0              # some coordinates that do not move
    delta *= torch.rand(batch, *shape, generator=g, dtype=torch.float64) < density
    delta[0] *= torch.rand(shape, generator=g, dtype=torch.float64) < 0.3   # rows of different sparsity
    return x, delta


@pytest.mark.parametrize('shape, eps, scale, density', [
    ((5,), 0.7, 1.0, 1.0), ((7,), 2.0, 0.5, 1.0), ((3, 32, 32), 12.0, 0.3, 1.0), ((3, 32, 32), 12.0, 0.01, 1.0),
    ((3, 32, 32), 3.0, 1.0, 1.0), ((3, 32, 32), 12.0, 0.3, 0.1), ((3, 32, 32), 2.0, 0.3, 0.02), ((9,), 0.5, 1.0, 0.3)])
def test_matches_bisection(shape, eps, scale, density):
    """Dense and sparse perturbations (the sparse ones take the compacted path)."""
    x, delta = random_case(4, shape, scale, seed=len(shape) + int(eps), density=density)
    ours = l1_box_projection(x, delta, eps).numpy()
    for i in range(x.shape[0]):
        ref = bisection_projection(x[i].numpy().ravel(), delta[i].numpy().ravel(), eps)
        assert np.abs(ours[i].ravel() - ref).max() < 1e-9


def test_float32_cifar_matches_bisection_to_float_error():
    x, delta = random_case(8, (3, 32, 32), 0.3, seed=3)
    ours = l1_box_projection(x.float(), delta.float(), 12.0).double().numpy()
    for i in range(x.shape[0]):
        ref = bisection_projection(x[i].float().double().numpy().ravel(), delta[i].float().double().numpy().ravel(), 12.0)
        assert np.abs(ours[i].ravel() - ref).max() < 1e-5


def test_matches_autoattack_projection():
    from pyautoattack.autopgd_base import L1_projection
    x, delta = random_case(6, (3, 16, 16), 0.3, seed=5)
    x, delta = x.float(), delta.float()
    theirs = delta + L1_projection(x, delta, 5.0)
    ours = l1_box_projection(x, delta, 5.0)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_result_is_feasible_and_idempotent():
    x, delta = random_case(16, (3, 8, 8), 0.5, seed=7)
    eps = torch.linspace(0.1, 20, 16, dtype=torch.float64)
    p = l1_box_projection(x, delta, eps)
    assert torch.all(p.flatten(1).abs().sum(1) <= eps * (1 + 1e-12))
    assert torch.all(x + p >= 0) and torch.all(x + p <= 1)
    assert torch.equal(l1_box_projection(x, p, eps), p)


def test_points_inside_are_unchanged():
    x, delta = random_case(4, (3, 8, 8), 0.01, seed=11)
    delta = (x + delta).clamp(0, 1) - x  # in the box
    eps = delta.flatten(1).abs().sum(1) + 0.5
    assert torch.equal(l1_box_projection(x, delta, eps), delta)


def test_eps_larger_than_box_allows_gives_the_box_clip():
    x, delta = random_case(3, (3, 4, 4), 5.0, seed=13)
    clipped = (x + delta).clamp(0, 1) - x
    assert torch.allclose(l1_box_projection(x, delta, 1e6), clipped)


def test_zero_delta_and_empty_batch():
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(l1_box_projection(x, torch.zeros_like(x), 1.0), torch.zeros_like(x))
    e = torch.zeros(0, 3, 4, 4)
    assert l1_box_projection(e, e, 1.0).shape == e.shape


def test_optimality_against_random_feasible_points():
    """No feasible point is closer to delta than the projection (a necessary condition)."""
    x, delta = random_case(1, (20,), 0.5, seed=17)
    eps = 1.5
    p = l1_box_projection(x, delta, eps)[0]
    best = (p - delta[0]).norm()
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        v = p + 0.05 * torch.randn(20, generator=g, dtype=torch.float64)
        v = (x[0] + v).clamp(0, 1) - x[0]
        if v.abs().sum() <= eps:
            assert (v - delta[0]).norm() >= best - 1e-12


def test_keeps_dtype_and_shape_and_does_not_modify_inputs():
    x, delta = torch.rand(2, 1, 5, 7), torch.randn(2, 1, 5, 7)
    x0, d0 = x.clone(), delta.clone()
    p = l1_box_projection(x, delta, 2.0)
    assert p.shape == delta.shape and p.dtype == delta.dtype
    assert torch.equal(x, x0) and torch.equal(delta, d0)
    assert l1_box_projection(x, delta.to(torch.bfloat16), 2.0).dtype == torch.bfloat16


def test_bad_input():
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match='shape'):
        l1_box_projection(x, torch.rand(2, 4), 1.0)
    with pytest.raises(ValueError, match='^eps must be > 0 for every example$'):
        l1_box_projection(x, torch.rand(2, 3), 0.0)


# --- the compacted projection of the attacks: a top-k of a width fixed in advance, no host sync ---

def sparse_case(batch=6, d=3 * 16 * 16, live=(5, 40, 90, 150, 300, 600), eps=40.0, seed=19):
    """Rows moving `live` coordinates each (a sparse APGD-l1 iterate), some of them on the box faces."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, d, generator=g)
    x[:, :20] = 0.0
    delta = torch.zeros(batch, d)
    for i, k in enumerate(live):
        idx = torch.randperm(d, generator=g)[:k]
        delta[i, idx] = 0.2 * torch.randn(k, generator=g)
    return x, delta, eps


@pytest.mark.parametrize('width', [8, 64, 200, 384])
def test_compacted_projection_is_exact_where_not_flagged(width):
    from eatai.attacks.projection import _project
    x, delta, eps = sparse_case()
    exact = l1_box_projection(x, delta, eps)
    out, overflow = _project(x, delta, eps, width)
    support = (exact != 0).sum(dim=1)                            # 5, 40, 89, 146, 290, 358
    outside = ((x + delta).clamp(0, 1) - x).abs().sum(dim=1) > eps
    assert torch.equal(overflow, outside & (support > width))    # flagged: the rows that move more than width
    assert overflow.any() == (width < 358)
    torch.testing.assert_close(out[~overflow], exact[~overflow], rtol=0, atol=1e-7)


def test_compacted_projection_does_not_depend_on_the_width():
    """Any width that holds every moving coordinate gives the same bits: the sums run in index order."""
    from eatai.attacks.projection import _project
    x, delta, eps = sparse_case(live=(5, 40, 90, 150, 200, 250), eps=30.0)
    outs = [_project(x, delta, eps, w) for w in (300, 301, 383, 384)]
    assert not any(o.any() for _, o in outs)
    assert all(torch.equal(outs[0][0], out) for out, _ in outs[1:])


def test_rows_inside_the_ball_are_never_flagged():
    from eatai.attacks.projection import _project
    x, delta, _ = sparse_case()
    out, overflow = _project(x, delta, 1e4, 8)                  # every row fits: nothing to leave out
    assert not overflow.any() and torch.equal(out, l1_box_projection(x, delta, 1e4))
    assert _project(x, delta, 3.0, 384)[1] is not None and _project(x, delta, 3.0, 385)[1] is None   # above d / 2: all


def test_eps_as_a_number_is_checked_without_a_tensor():
    x = torch.rand(2, 3)
    for eps in (-1.0, float('nan'), 0):
        with pytest.raises(ValueError, match='^eps must be > 0 for every example$'):
            l1_box_projection(x, torch.rand(2, 3), eps)
    with pytest.raises(ValueError, match='^eps must be > 0 for every example$'):
        l1_box_projection(x, torch.rand(2, 3), torch.tensor([1.0, 0.0]))


# --- exactness where rounding or ties could mislead it, and what the compacted path flags ---------

def test_a_multiplier_on_a_kink_keeps_the_right_active_set():
    """Dyadic values (as 8-bit pixels and simple steps give): the multiplier lands exactly on a kink, where a
    coordinate reaches its box face or zero, and the exact step must count each coordinate once."""
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.0], [0.5, 0.5, 0.5, 0.0]], dtype=torch.float64)
    delta = torch.tensor([[1.0, 0.5, 0.75, 0.0],      # lam = 0.5: |z| - c of the first, |z| of the second
                          [1.0, 0.5, 0.0, 0.0],       # lam = 0.5 again, no coordinate strictly between kinks
                          [1.0, 0.5, 0.0, 0.0]], dtype=torch.float64)   # one coordinate moving: lam = 0.75
    eps = torch.tensor([0.75, 0.5, 0.25], dtype=torch.float64)
    expected = torch.tensor([[0.5, 0.0, 0.25, 0.0], [0.5, 0.0, 0.0, 0.0], [0.25, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(l1_box_projection(x, delta, eps), expected)
    ref = [bisection_projection(x[i].numpy(), delta[i].numpy(), float(eps[i])) for i in range(3)]
    assert np.abs(expected.numpy() - np.stack(ref)).max() < 1e-12


def test_one_moving_coordinate_among_others_below_the_threshold():
    """A single coordinate moves (n = 1 in the exact step), others just below the multiplier stay at 0."""
    x = torch.tensor([[0.1, 0.1, 0.1]])
    delta = torch.tensor([[2.0, 1.0, 0.5]])              # caps 0.9 each: lam = 1.5, only the first moves
    assert torch.allclose(l1_box_projection(x, delta, 0.5), torch.tensor([[0.5, 0.0, 0.0]]), rtol=0, atol=1e-6)


def test_rows_moving_few_of_many_movable_coordinates_give_the_same_bits_at_every_width():
    """Every coordinate can move, a few do: the widths that hold the moving ones differ in the coordinates
    they sort, not in the result's bits (the exact step sums its active set in index order)."""
    from eatai.attacks.projection import _project
    g = torch.Generator().manual_seed(23)
    x = torch.rand(6, 768, generator=g)
    delta = 0.05 * torch.randn(6, 768, generator=g)
    for i, k in enumerate((1, 1, 2, 3, 5, 10)):         # a few large coordinates per row
        idx = torch.randperm(768, generator=g)[:k]
        delta[i, idx] = torch.sign(delta[i, idx]) * (0.5 + torch.rand(k, generator=g))
    outs = [_project(x, delta, 0.3, w) for w in (16, 40, 100, 384)]
    assert not any(o.any() for _, o in outs)
    assert all(torch.equal(outs[0][0], out) for out, _ in outs[1:])
    torch.testing.assert_close(outs[0][0], l1_box_projection(x, delta, 0.3), rtol=0, atol=1e-7)


def test_float32_with_many_coordinates_on_the_box_faces_stays_exact():
    """Most coordinates sit on their box faces and the budget left goes to a few: lam is the difference of
    sums in the thousands, which float32 would get wrong by 1e-5; the float64 sums keep it to float error."""
    g = torch.Generator().manual_seed(29)
    x = torch.rand(4, 3072, generator=g)
    sign = torch.where(torch.rand(4, 3072, generator=g) < 0.5, -1.0, 1.0)
    cap = torch.where(sign > 0, 1 - x, x)
    delta = sign * (cap + 2)                                            # far past the face
    delta[:, :8] = sign[:, :8] * torch.rand(4, 8, generator=g) * cap[:, :8]   # eight inside the box
    eps = (cap[:, 8:].double().sum(dim=1) + 0.3).float()               # 0.3 left for those eight
    ours = l1_box_projection(x, delta, eps).double().numpy()
    for i in range(4):
        ref = bisection_projection(x[i].double().numpy(), delta[i].double().numpy(), float(eps[i]))
        assert np.abs(ours[i] - ref).max() < 2e-6


def test_float32_result_is_feasible_and_idempotent():
    """The rescale guard reads the float64 norm: in float64, the float32 result never exceeds eps."""
    x, delta = random_case(32, (3, 32, 32), 0.3, seed=31)
    x, delta, eps = x.float(), delta.float(), torch.linspace(1.0, 30.0, 32)
    p = l1_box_projection(x, delta, eps)
    assert torch.all(p.double().flatten(1).abs().sum(1) <= eps.double())
    assert torch.equal(l1_box_projection(x, p, eps), p)


def test_a_radius_as_a_number_or_a_tensor_gives_the_same_bits():
    """A tensor eps is taken in the inputs' dtype, like a number: float64 radii of float32 inputs too."""
    g = torch.Generator().manual_seed(41)
    x, delta = torch.rand(16, 3, 8, 8, generator=g), 0.3 * torch.randn(16, 3, 8, 8, generator=g)
    for eps in (1.1, 2.3, 3.7):
        p = l1_box_projection(x, delta, eps)
        assert torch.equal(l1_box_projection(x, delta, torch.tensor(eps)), p)                       # 0-d
        assert torch.equal(l1_box_projection(x, delta, torch.tensor(eps, dtype=torch.float64)), p)
        assert torch.equal(l1_box_projection(x, delta, torch.full((16,), eps, dtype=torch.float64)), p)


def test_a_number_eps_costs_no_host_sync():
    from eatai.attacks.projection import _project
    from eatai.attacks.syncs import count_host_syncs
    x, delta = torch.rand(3, 768), 0.3 * torch.randn(3, 768)
    for eps in (2.0, 2):
        with count_host_syncs() as syncs:
            l1_box_projection(x, delta, eps)
            _project(x, delta, eps, 64)
        assert syncs.total == 0
    with count_host_syncs() as syncs:
        l1_box_projection(x, delta, torch.full((3,), 2.0))
    assert syncs.total == 1                                      # checking a tensor of radii


def test_points_on_the_sphere_or_inside_by_the_float64_sum_are_unchanged_and_not_flagged():
    from eatai.attacks.projection import _project
    x = torch.full((2, 768), 0.5)
    delta = torch.zeros(2, 768)
    delta[0, :64], delta[1, 100:164] = 0.125, -0.125            # l1 norm 8 exactly
    for width in (None, 16):
        out, overflow = _project(x, delta, 8.0, width)
        assert torch.equal(out, delta) and (overflow is None or not overflow.any())
    # rows whose float32 sum rounds above eps while the float64 one (the one that decides) does not
    g = torch.Generator().manual_seed(47)
    x = torch.rand(256, 768, generator=g)
    delta = (torch.rand(256, 768, generator=g) - x) * (torch.rand(256, 768, generator=g) < 0.5)   # in the box
    s32 = delta.abs().sum(dim=1)
    eps = torch.nextafter(s32, torch.zeros_like(s32))           # the float32 number just below that sum
    inside = eps.double() >= delta.abs().sum(dim=1, dtype=torch.float64)
    assert inside.sum() > 3
    out, overflow = _project(x[inside], delta[inside], eps[inside], 64)
    assert torch.equal(out, delta[inside]) and not overflow.any()


def test_compacted_projection_on_a_tie_and_on_two_coordinates():
    from eatai.attacks.projection import _project
    # width 2: the third largest |z| (0.5) is exactly lam, so it does not move: nothing to flag
    x = torch.zeros(1, 8, dtype=torch.float64)
    delta = torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    out, overflow = _project(x, delta, 0.75, 2)
    assert torch.equal(out, l1_box_projection(x, delta, 0.75)) and out[0, :3].tolist() == [0.5, 0.25, 0.0]
    assert not overflow.any()
    # d = 2 takes width 1 (not above d / 2): a top-k of two
    x, delta = torch.tensor([[0.2, 0.9], [0.5, 0.5]]), torch.tensor([[0.7, -0.05], [0.3, 0.3]])
    out, overflow = _project(x, delta, 0.5, 1)
    assert overflow.tolist() == [False, True]
    torch.testing.assert_close(out[0], l1_box_projection(x, delta, 0.5)[0], rtol=0, atol=1e-7)


def test_l1_threshold_is_zero_for_rows_whose_capped_total_is_eps_and_keeps_the_dtype():
    from eatai.attacks.projection import l1_threshold
    magnitude = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    cap = torch.tensor([[0.5, 0.5], [0.5, 0.25]])
    lam = l1_threshold(magnitude, cap, torch.tensor([1.0, 0.5]))   # capped totals 1.0 and 0.75
    assert lam.dtype == torch.float32
    assert lam[0] == 0                                               # g is flat at eps: the documented 0
    assert lam[1] > 0
