"""The ball objects on their own, against formulas written out here: membership at the boundary,
the l-inf and l2 projections, the random starts' distributions and dtypes, the l1 steepest-ascent
direction and the step rules each ball hands to APGD. The attacks' tests use `contains` as their
judge, so it is pinned down here first."""
import pytest
import torch

from eatai.attacks import APGDConfig, l1_box_projection, make_ball
from eatai.attacks.balls import lp_norm

D = (3, 8, 8)


def interior(batch=4, seed=0, dtype=torch.float32):
    """Clean points well inside [0,1], so that no box clipping happens at the radii used here."""
    g = torch.Generator().manual_seed(seed)
    return (0.4 + 0.2 * torch.rand(batch, *D, generator=g)).to(dtype)


@pytest.mark.parametrize('norm, eps', [('linf', 0.1), ('l2', 0.5), ('l1', 2.0)])
def test_contains_is_inclusive_at_the_radius_and_strict_beyond(norm, eps):
    ball, x = make_ball(norm, eps), interior()
    u = torch.randn_like(x)
    u = u / lp_norm(u, norm).view(-1, 1, 1, 1)            # unit vectors in this norm
    assert ball.contains(x, x + eps * u).all()              # on the sphere: inside
    assert not ball.contains(x, x + 1.001 * eps * u).any()  # 0.1% beyond: outside
    assert ball.contains(x, x).all()


def test_contains_needs_the_box_and_the_ball_both():
    ball, x = make_ball('linf', 0.1), interior(2)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.02, 0.98
    below, above = x.clone(), x.clone()
    below[0, 0, 0, 0], above[1, 0, 0, 0] = -1e-3, 1 + 1e-3  # inside the ball (0.021 < 0.1), outside [0,1]
    assert ball.contains(x, below).tolist() == [False, True]
    assert ball.contains(x, above).tolist() == [True, False]
    far = x.clone()
    far[0] += 0.2                                            # inside [0,1], outside the ball
    assert ball.contains(x, far).tolist() == [False, True]


def test_balls_name_themselves():
    assert repr(make_ball('l2', 0.5)) == 'L2Ball(eps=0.5)'


def test_linf_projection_is_the_coordinate_clip():
    ball, x = make_ball('linf', 0.1), interior()
    x_adv = x + 0.3 * torch.randn_like(x)
    expected = torch.minimum(torch.maximum(x_adv, x - 0.1), x + 0.1).clamp(0, 1)
    assert torch.equal(ball.project(x, x_adv), expected)


def test_l2_projection_rescales_outside_points_and_keeps_inside_ones():
    ball, x = make_ball('l2', 0.5), interior()
    u = torch.randn_like(x)
    u = u / lp_norm(u, 'l2').view(-1, 1, 1, 1)
    assert torch.allclose(ball.project(x, x + 2.0 * u), x + 0.5 * u, atol=1e-6)   # radius 2 -> 0.5
    inside = x + 0.3 * u
    assert torch.allclose(ball.project(x, inside), inside, atol=1e-7)            # radius 0.3 stays
    corner = torch.zeros_like(x)
    corner[:, 0, 0, 0] = 5.0
    assert ball.project(x, x + corner).max() <= 1                                 # then clipped to the box


def test_l1_projection_is_l1_box_projection_of_the_perturbation():
    ball, x = make_ball('l1', 2.0), interior()
    x_adv = x + 0.2 * torch.randn_like(x)
    assert torch.equal(ball.project(x, x_adv), x + l1_box_projection(x, x_adv - x, 2.0))


@pytest.mark.parametrize('norm, eps', [('linf', 0.1), ('l2', 0.5), ('l1', 2.0)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
def test_balls_keep_the_input_dtype(norm, eps, dtype):
    ball, x = make_ball(norm, eps), interior(dtype=dtype)
    g = torch.Generator().manual_seed(0)
    assert ball.random_start(x, g).dtype == dtype
    assert ball.project(x, x + 0.1).dtype == dtype
    assert ball.direction(torch.randn_like(x)).dtype == dtype


def test_linf_random_start_is_uniform_in_the_cube():
    ball, x = make_ball('linf', 0.1), interior(64)
    delta = (ball.random_start(x, torch.Generator().manual_seed(0)) - x) / 0.1    # uniform on [-1, 1]
    assert delta.abs().max() <= 1 + 1e-5
    assert abs(delta.mean().item()) < 0.02                                         # centred
    assert abs((delta.abs() < 0.5).float().mean().item() - 0.5) < 0.02            # P(|u| < 1/2) = 1/2
    assert abs((delta > 0).float().mean().item() - 0.5) < 0.02


def test_l2_random_start_is_a_spread_point_of_the_sphere():
    ball, x = make_ball('l2', 0.5), interior(16)
    delta = ball.random_start(x, torch.Generator().manual_seed(0)) - x
    assert torch.allclose(lp_norm(delta, 'l2'), torch.full((16,), 0.5), atol=1e-5)
    # a Gaussian direction in d = 192 dimensions: no coordinate holds much of it
    assert (delta.abs().amax(dim=(1, 2, 3)) < 0.5 * 0.4).all()
    assert abs(delta.mean().item()) < 0.01


def test_l1_random_start_is_on_the_l1_sphere_in_the_box():
    ball, x = make_ball('l1', 2.0), interior(8)
    start = ball.random_start(x, torch.Generator().manual_seed(0))
    assert ball.contains(x, start).all()
    assert torch.allclose(lp_norm(start - x, 'l1'), torch.full((8,), 2.0), rtol=1e-4)  # N(0,1) noise is far outside


def test_l2_direction_has_unit_norm_per_example():
    ball = make_ball('l2', 0.5)
    grad = torch.randn(3, *D) * torch.tensor([1e-3, 1.0, 1e3]).view(-1, 1, 1, 1)
    assert torch.allclose(lp_norm(ball.direction(grad), 'l2'), torch.ones(3), atol=1e-5)
    assert torch.equal(ball.direction(torch.zeros(2, *D)), torch.zeros(2, *D))


def test_l1_direction_keeps_the_top_coordinates_with_unit_l1_norm():
    ball = make_ball('l1', 2.0)
    grad = torch.randn(2, *D, generator=torch.Generator().manual_seed(0))
    full = ball.direction(grad)                               # no sparsity given: every coordinate
    d = grad[0].numel()
    assert torch.equal(full, grad.sign() / d)
    sparse = ball.direction(grad, torch.tensor([0.25, 1e-6]))
    flat, g = sparse.reshape(2, -1), grad.reshape(2, -1).abs()
    assert (flat != 0).sum(dim=1).tolist() == [d // 4, 1]     # a quarter, and at least one
    assert torch.allclose(flat.abs().sum(dim=1), torch.ones(2))
    kept = flat[0] != 0
    assert g[0][kept].min() >= g[0][~kept].max()              # the largest |grad| are the ones kept
    assert flat[1].abs().argmax() == g[1].argmax()
    tied = ball.direction(torch.ones(1, *D), torch.tensor([0.5]))
    assert (tied != 0).sum() == d                             # ties at the threshold are all kept


def test_each_ball_hands_apgd_its_step_rule():
    config = APGDConfig(n_iter=100, rho=0.6, l1_sparsity=0.1)
    for norm in ('linf', 'l2'):
        rule = make_ball(norm, 0.1).step_schedule(100, config)
        assert (rule.period, rule.rho) == (22, 0.6)
    rule = make_ball('l1', 2.0).step_schedule(100, config)
    assert (rule.period, rule.init_sparsity) == (4, 0.1)


def test_lp_norm_names_the_known_norms():
    with pytest.raises(ValueError, match=r"^unknown norm 'l3': expected one of linf, l2, l1"):
        lp_norm(torch.zeros(1, 3), 'l3')


def test_l1_projection_of_bf16_inputs_is_computed_in_float32():
    g = torch.Generator().manual_seed(0)
    x, delta = torch.rand(4, *D, generator=g).bfloat16(), (0.3 * torch.randn(4, *D, generator=g)).bfloat16()
    out = l1_box_projection(x, delta, 2.0)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, l1_box_projection(x.float(), delta.float(), 2.0).bfloat16())


# --- compacted l1 computations (a top-k of a width fixed in advance) and the attacks' rerun ------

def test_compacted_l1_direction_keeps_the_same_coordinates_or_says_it_could_not():
    from eatai.attacks.balls import L1Ball
    grad = torch.randn(3, *D, generator=torch.Generator().manual_seed(1))            # d = 192
    sparsity = torch.tensor([0.05, 0.2, 0.4])                                         # keeps 10, 39, 77
    exact = make_ball('l1', 2.0).direction(grad, sparsity)
    wide = L1Ball(2.0, 80)
    assert torch.equal(wide.direction(grad, sparsity), exact) and not wide.overflowed()
    narrow = L1Ball(2.0, 40)
    narrow.direction(grad, sparsity)
    assert narrow.overflowed()                                                        # 77 > 40
    assert torch.equal(narrow.direction(grad[:2], sparsity[:2]), exact[:2])
    full = L1Ball(2.0, 97)                                                            # above d / 2: every coordinate
    assert torch.equal(full.direction(grad, sparsity), exact) and full.overflow is None


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
def test_one_sparsity_for_every_example_needs_no_flag(dtype):
    """SLIDE's fixed 1%: the number kept is bounded on the host, whatever the dtype rounds (1 - s) * d to."""
    from eatai.attacks.balls import L1Ball, _most_kept
    grad = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(dtype)
    ball = L1Ball(12.0, 40)
    out = ball.direction(grad, 0.01)
    assert ball.overflow is None
    assert torch.equal(out, make_ball('l1', 12.0).direction(grad, torch.full((4,), 0.01, dtype=dtype)))
    assert (out.flatten(1) != 0).sum(dim=1).tolist() == [31] * 4 or dtype == torch.bfloat16
    for d in (7, 192, 3072, 150528):
        for s in (0.01, 0.05, 0.2, 1.0):
            n_keep = d - int(((1 - torch.tensor(s, dtype=dtype)) * d).clamp(0, d - 1).long())
            assert n_keep <= _most_kept(s, d, dtype)


def test_compact_width_covers_the_first_steps_and_the_radius():
    from eatai.attacks.balls import compact_width
    assert compact_width(3072, 0.05, 12.0) == 384                 # d / 8
    assert compact_width(3072, 0.2, 12.0) == 986                  # 1.5 * 0.2 * d + 64
    assert compact_width(3072, 0.05, 24.0) == 768                 # 32 eps
    assert compact_width(100, 0.01, 0.5) == 66


def test_run_compacted_runs_again_wider_from_the_same_random_state():
    from eatai.attacks import balls
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    widths = []

    def run(b):
        widths.append(b.width)
        return b.project(x, x + 0.3 * torch.randn(x.shape))        # every coordinate moves: needs more than 8
    balls._WIDER.pop((5.0, 8), None)
    torch.manual_seed(0)
    out = balls.run_compacted(make_ball('l1', 5.0), 8, run, x.device)
    after = torch.rand(1)
    last = widths[-1]
    assert widths == [8 * 2 ** i for i in range(len(widths))] and len(widths) > 2 and balls._WIDER[(5.0, 8)] == last
    torch.manual_seed(0)
    expected = balls.L1Ball(5.0, last).project(x, x + 0.3 * torch.randn(x.shape))
    assert torch.equal(out, expected) and torch.equal(after, torch.rand(1))   # the same draws, drawn once
    widths.clear()
    balls.run_compacted(make_ball('l1', 5.0), 8, run, x.device)
    assert widths == [last]                                        # later calls start where it sufficed
    g = torch.Generator().manual_seed(5)
    draws = []
    balls._WIDER.pop((5.0, 4), None)
    balls.run_compacted(make_ball('l1', 5.0), 4, lambda b: draws.append(torch.rand(2, generator=g))
                        or b.project(x, x + 0.3 * torch.randn(x.shape, generator=g)), x.device, (g,))
    assert len(draws) > 1 and all(torch.equal(d, draws[0]) for d in draws)   # its own generator restored too
    widths.clear()
    assert balls.run_compacted(make_ball('linf', 0.1), 8, lambda b: widths.append(b) or 7, x.device) == 7
    assert len(widths) == 1 and widths[0].norm == 'linf'           # l-inf, l2: one run, the ball itself


def test_l1_projection_of_bf16_pixels_near_0_takes_its_box_caps_in_float32():
    """1 - x is not a bf16 number for x = 2^-11: caps rounded to bf16 would hand 187 coordinates 2^-11 too
    much room each, and the five that share the rest of the budget would get 0.1 less between them."""
    x = torch.full((2, 192), 2.0 ** -11).bfloat16()
    delta = torch.full((2, 192), 2.0)
    delta[:, :5] = 0.1 * torch.arange(1, 6)                  # five inside the box, the rest far past it
    delta = delta.bfloat16()
    out = l1_box_projection(x, delta, 187.25)
    assert torch.equal(out, l1_box_projection(x.float(), delta.float(), 187.25).bfloat16())
    assert out[0, 2:5].float().sum() > 0.3


def test_contains_allows_float32_rounding_at_a_tiny_radius():
    """x + eps * u in float32 lies on the sphere only up to ~3e-8: the 1e-7 of slack holds it at eps = 1e-3."""
    x = interior()
    for norm in ('linf', 'l2'):
        u = torch.randn_like(x)
        u = u / lp_norm(u, norm).view(-1, 1, 1, 1)
        assert make_ball(norm, 1e-3).contains(x, x + 1e-3 * u).all()


def test_the_overflow_flag_keeps_every_overflow_and_only_those():
    from eatai.attacks.balls import L1Ball
    grad = torch.randn(3, *D, generator=torch.Generator().manual_seed(1))            # d = 192
    sparsity = torch.tensor([0.05, 0.2, 0.4])                                         # keeps 10, 39, 77
    ball = L1Ball(2.0, 40)
    ball.direction(grad[:2], sparsity[:2])
    assert not ball.overflowed()
    ball.direction(grad, sparsity)                                                    # 77 > 40
    ball.direction(grad[:2], sparsity[:2])
    assert ball.overflowed()                                                          # remembered after a call that fits
    exact = L1Ball(2.0, 39)                                                           # keeps 39 of a top-39: fits
    assert torch.equal(exact.direction(grad[:2], sparsity[:2]), make_ball('l1', 2.0).direction(grad[:2], sparsity[:2]))
    assert not exact.overflowed()
    half = L1Ball(2.0, 96)                                                            # d / 2: still compacted
    half.direction(grad, torch.full((3,), 0.6))
    assert half.overflow is not None and half.overflowed()
    assert not make_ball('linf', 0.1).overflowed() and not make_ball('l2', 0.5).overflowed()


def test_l1_direction_keeps_one_coordinate_at_the_least_and_all_at_sparsity_1():
    ball = make_ball('l1', 2.0)
    grad = torch.randn(3, *D, generator=torch.Generator().manual_seed(1))
    d, g = grad[0].numel(), grad.reshape(3, -1).abs()
    for sparsity in (1e-9, 0.0):                              # one number: (1 - s) * d rounds to d
        out = ball.direction(grad, sparsity).reshape(3, -1)
        assert (out != 0).sum(dim=1).tolist() == [1, 1, 1]
        assert torch.equal(out.abs().argmax(dim=1), g.argmax(dim=1))
    assert torch.equal(ball.direction(grad, torch.ones(3)), grad.sign() / d)


def test_compact_width_is_an_int_and_d_over_8_at_the_least():
    from eatai.attacks.balls import _most_kept, compact_width
    assert compact_width(3072, 0.01, 4.0) == 384 and type(compact_width(3072, 0.01, 4.0)) is int   # d / 8 alone
    assert type(compact_width(3072, 0.05, 12.0)) is int                                            # d / 8 = 32 eps
    for d in (192, 3072, 150528):
        for s in (0.01, 0.05, 0.2):
            assert s * d <= _most_kept(s, d, torch.float32) <= s * d + 3     # what rounding can add, no more


@pytest.mark.skipif(not torch.cuda.is_available(), reason='the device generator exists on a GPU only')
def test_run_compacted_restores_the_device_generator_too():
    """On a GPU the attack's draws come from the device's generator: a rerun must start from its state too."""
    from eatai.attacks import balls
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3)).cuda()
    widths = []

    def run(b):
        widths.append(b.width)
        return b.project(x, x + 0.3 * torch.randn(x.shape, device=x.device))   # needs more than 8
    balls._WIDER.pop((5.0, 8), None)
    torch.cuda.manual_seed(0)
    out = balls.run_compacted(make_ball('l1', 5.0), 8, run, x.device)
    after = torch.rand(1, device=x.device)
    torch.cuda.manual_seed(0)
    expected = balls.L1Ball(5.0, widths[-1]).project(x, x + 0.3 * torch.randn(x.shape, device=x.device))
    assert len(widths) > 1 and torch.equal(out, expected) and torch.equal(after, torch.rand(1, device=x.device))
    balls._WIDER.pop((5.0, 8), None)
