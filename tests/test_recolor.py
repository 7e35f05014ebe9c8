"""ReColorAdv (eatai.attacks.color) and its registered threat 'recolor' (eatai.evaluation.recolor): the CIELUV
conversions, the colour function, the bound on the offsets and per pixel, strength 0, monotonicity in the
strength, batch invariance, host syncs, the registry and bad input."""
from pathlib import Path

import pytest
import torch
from conftest import softmax_regression
from torch import nn

import eatai.evaluation.recolor  # noqa: F401  (registers 'recolor')
from eatai.attacks.color import (RECOLOR_GRID, color_smoothness, from_recolor_space, luv_to_rgb, random_offsets,
                                 recolor, recolor_change, recolor_image, rgb_to_luv, to_recolor_space)
from eatai.attacks.syncs import count_host_syncs
from eatai.evaluation import EvalBudget, evaluate_robustness, get_threat
from eatai.evaluation.recolor import TOLERANCE, ReColorThreat
from eatai.evaluation.streams import point_generators

pytestmark = pytest.mark.usefixtures('one_thread')
CHECKPOINT = Path(__file__).parents[1] / 'eatai' / 'checkpoints' / 'cifar_cnn_linf.pt'

# IEC 61966-2-1's printed linear-sRGB -> XYZ matrix (4 decimals), an independent check of the derived one
IEC_MATRIX = ((0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505))
# published CIELUV of the sRGB primaries, D65 (Lindbloom's sRGB matrix and white)
PUBLISHED = {(1, 0, 0): (53.24, 175.01, 37.76), (0, 1, 0): (87.73, -83.08, 107.40), (0, 0, 1): (32.30, -9.41, -130.34)}


def cie_luv(rgb, matrix=IEC_MATRIX):
    """CIE 1976 L*u*v* of one sRGB colour from the CIE formulas, in Python floats, the matrix's white as reference."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    big_x, big_y, big_z = (sum(matrix[i][j] * linear[j] for j in range(3)) for i in range(3))
    xn, yn, zn = (sum(row) for row in matrix)
    t = big_y / yn
    lightness = 116 * t ** (1 / 3) - 16 if t > (6 / 29) ** 3 else (29 / 3) ** 3 * t
    d, dn = big_x + 15 * big_y + 3 * big_z, xn + 15 * yn + 3 * zn
    if d == 0:
        return 0.0, 0.0, 0.0
    return lightness, 13 * lightness * (4 * big_x / d - 4 * xn / dn), 13 * lightness * (9 * big_y / d - 9 * yn / dn)


def colours(rgb, dtype=torch.float64):
    """(K, 3, 1, 1) images of one pixel each."""
    return torch.tensor(rgb, dtype=dtype)[:, :, None, None]


def vivid_images(n=6, size=8, seed=0):
    """Random images with many saturated and extreme colours (channels at 0 and 1), and some greys."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.3, x.round(), x)      # 0s and 1s: gamut's edges
    x[:, :, 0] = x[:, :1, 0]                                                    # a grey row
    return x


# --- colour space ------------------------------------------------------------------------------------

def test_luv_round_trips_to_float_precision():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(4000, 3, 1, 1, generator=g, dtype=torch.float64),
                   colours([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])])   # the cube's corners
    assert (luv_to_rgb(rgb_to_luv(x)) - x).abs().max() < 1e-10
    x32 = x.float()
    assert (luv_to_rgb(rgb_to_luv(x32)) - x32).abs().max() < 5e-5       # float32: ~1e-5 at the gamut's edges
    w = to_recolor_space(rgb_to_luv(x))
    assert torch.allclose(from_recolor_space(w), rgb_to_luv(x), atol=1e-12)


def test_luv_matches_the_cie_formulas_and_published_values():
    rgb = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (0.2, 0.4, 0.6), (0.01, 0.02, 0.005)]
    ours = rgb_to_luv(colours(rgb))[:, :, 0, 0]
    expected = torch.tensor([cie_luv(c) for c in rgb], dtype=torch.float64)
    assert torch.allclose(ours, expected, atol=0.05)             # the printed matrix has 4 decimals
    for c, published in PUBLISHED.items():
        assert torch.allclose(rgb_to_luv(colours([c]))[0, :, 0, 0], torch.tensor(published, dtype=torch.float64),
                              atol=0.05), c
    white_black_grey = rgb_to_luv(colours([(1, 1, 1), (0, 0, 0), (0.5, 0.5, 0.5)]))[:, :, 0, 0]
    assert torch.allclose(white_black_grey[0], torch.tensor([100.0, 0, 0], dtype=torch.float64), atol=1e-9)
    assert white_black_grey[1].abs().max() == 0
    assert white_black_grey[2, 1:].abs().max() < 1e-9                              # greys are neutral
    assert white_black_grey[2, 0] == pytest.approx(cie_luv((0.5, 0.5, 0.5))[0], abs=1e-9)
    # rescaled as the reference: (L/100, (u+100)/200, (v+100)/200)
    red = to_recolor_space(rgb_to_luv(colours([(1, 0, 0)])))[0, :, 0, 0]
    assert red.tolist() == pytest.approx([0.532371, 1.375049, 0.688826], abs=1e-5)


def test_the_conversions_are_differentiable_without_nans():
    x = torch.cat([colours([(0, 0, 0), (1, 1, 1), (1, 0, 0), (0.02, 0.0, 0.01)]),
                   torch.rand(8, 3, 1, 1, dtype=torch.float64)]).requires_grad_(True)
    grad, = torch.autograd.grad(luv_to_rgb(rgb_to_luv(x) + 0.1).sum(), x)
    assert torch.isfinite(grad).all()


# --- the colour function ------------------------------------------------------------------------------

def test_zero_offsets_leave_every_colour_even_outside_the_grids_box():
    x = vivid_images()
    x[0, :, 0, 0] = torch.tensor([1.0, 0, 0])        # pure red: u* = 175, outside the grid's box (u* <= 100)
    out = recolor_image(x, torch.zeros(len(x), 3, *RECOLOR_GRID))
    assert (out - x).abs().max() < 5e-5


def test_a_pixels_change_is_the_trilinear_interpolation_of_the_offsets():
    # offsets affine in the grid position: trilinear interpolation reproduces an affine function exactly
    x = 0.3 + 0.4 * torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid_l = torch.linspace(0, 1, RECOLOR_GRID[0], dtype=torch.float64)[:, None, None]
    grid_u = torch.linspace(0, 1, RECOLOR_GRID[1], dtype=torch.float64)[None, :, None]
    offsets = torch.zeros(3, 3, *RECOLOR_GRID, dtype=torch.float64)
    offsets[:, 0] = 0.02 * grid_l - 0.01               # L's change: 0.02 * L - 0.01
    offsets[:, 2] = 0.01 * grid_u                      # v's change: 0.01 * u
    w = to_recolor_space(rgb_to_luv(x))
    change = recolor_change(x, recolor_image(x, offsets))
    assert torch.allclose(change[:, 0], 0.02 * w[:, 0] - 0.01, atol=1e-9)
    assert torch.allclose(change[:, 1], torch.zeros_like(change[:, 1]), atol=1e-9)
    assert torch.allclose(change[:, 2], 0.01 * w[:, 1], atol=1e-9)


def test_the_same_colour_becomes_the_same_colour_everywhere():
    g = torch.Generator().manual_seed(2)
    palette = torch.rand(5, 3, generator=g)
    pick = torch.randint(0, 5, (2, 8, 8), generator=g)
    x = palette[pick].permute(0, 3, 1, 2)                                        # (2, 3, 8, 8)
    offsets = 0.1 * (2 * torch.rand(1, 3, *RECOLOR_GRID, generator=g) - 1)
    out = recolor_image(x, offsets.expand(2, -1, -1, -1, -1))
    for k in range(5):
        pixels = out.permute(0, 2, 3, 1)[pick == k]                              # every pixel of colour k
        assert (pixels - pixels[0]).abs().max() == 0


def test_offsets_within_eps_keep_every_pixel_within_eps_and_in_the_box():
    g = torch.Generator().manual_seed(3)
    x = vivid_images(n=8)
    for eps in (0.03, 0.06, 0.3):
        offsets = eps * (2 * torch.rand(len(x), 3, *RECOLOR_GRID, generator=g) - 1)
        out = recolor_image(x, offsets)
        assert out.min() >= 0 and out.max() <= 1
        assert recolor_change(x, out).abs().max() <= eps + TOLERANCE
        assert ReColorThreat(eps).contains(x, out).all()


def test_clipping_in_rgb_would_leave_the_bound_where_shortening_keeps_it():
    # why the change is shortened into the gamut: clipping RGB after the conversion can enlarge the CIELUV change
    x, eps = vivid_images(n=8), 0.03
    shifted = from_recolor_space(to_recolor_space(rgb_to_luv(x)) + eps)                    # every colour + eps
    clipped = luv_to_rgb(shifted).clamp(0, 1)
    assert recolor_change(x, clipped).abs().max() > 1.5 * eps                            # 0.052 here
    shortened = recolor_image(x, torch.full((8, 3, *RECOLOR_GRID), eps))
    assert recolor_change(x, shortened).abs().max() <= eps + TOLERANCE
    moved = recolor_change(x, shortened).abs().amax(1)
    assert (moved > eps - 1e-4).float().mean() > 0.3                       # in-gamut colours take the full shift


def test_the_smoothness_is_zero_for_a_shift_and_counts_each_pair_twice():
    shift = torch.ones(2, 3, 4, 5, 6)
    floor = color_smoothness(torch.zeros(2, 3, 4, 5, 6))
    # the floor: every point and each of its 6 neighbours (itself beyond an edge) adds sqrt(1e-10)
    assert torch.allclose(color_smoothness(shift), floor) and floor.tolist() == pytest.approx([4 * 5 * 6 * 6e-5] * 2)
    bump = torch.zeros(1, 3, 4, 5, 6)
    bump[0, 1, 1, 2, 3] = 0.5                    # one interior point: 6 neighbours at distance 0.5, both sides
    assert color_smoothness(bump) - color_smoothness(torch.zeros_like(bump)) == pytest.approx(6 * 2 * 0.5, abs=1e-3)


def test_the_attacks_written_out_smoothness_gradient_is_autograds():
    # a private helper: the attack uses it instead of autograd for speed, so it must be the same gradient
    from eatai.attacks.color import _smoothness_grad
    offsets = (0.1 * torch.randn(2, 3, 4, 5, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    offsets[0, :, 1] = 0.0                                      # equal neighbours too
    offsets.requires_grad_(True)
    expected, = torch.autograd.grad(color_smoothness(offsets).sum(), offsets)
    assert torch.allclose(_smoothness_grad(offsets.detach()), expected, atol=1e-9)


# --- the attack ---------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def trained():
    """The bundled l-inf checkpoint (a small CNN) and 12 test points of the bundled sample it classifies correctly."""
    from eatai.data import load_sample
    from eatai.models import load_checkpoint
    model = load_checkpoint(CHECKPOINT).eval()
    _, _, x, y = load_sample()
    x, y = x[:48], y[:48]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:12], y[ok][:12]


def test_the_attack_lowers_accuracy_of_a_trained_model_inside_the_bound(trained):
    model, x, y = trained
    x_adv, offsets = recolor(model, x, y, 0.12, n_iter=20, generators=point_generators('test', x, y))
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float().mean()
    assert robust < 1.0                                            # every point was correct before
    assert offsets.shape == (len(x), 3, *RECOLOR_GRID) and offsets.abs().max() <= 0.12
    assert ReColorThreat(0.12).contains(x, x_adv).all()
    assert torch.allclose(recolor_image(x, offsets), x_adv, atol=1e-6)   # the offsets make the image


def test_bound_on_offsets_and_pixels_for_every_returned_point():
    model, x, y = softmax_regression(n=16, size=8)
    x = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) < 0.2, x.round(), x)
    for eps, generators in ((0.06, None), (0.2, point_generators('b', x, y))):
        x_adv, offsets = recolor(model, x, y, eps, n_iter=6, generators=generators)
        assert offsets.abs().max() <= eps                                       # exactly, in float32
        assert ReColorThreat(eps).contains(x, x_adv).all()
        assert ReColorThreat(eps).size(x, x_adv).max() <= eps + TOLERANCE
        assert torch.allclose(recolor_image(x, offsets), x_adv, atol=1e-6)


def test_strength_zero_returns_the_clean_images():
    model, x, y = softmax_regression(n=8, size=4)
    x_adv, offsets = recolor(model, x, y, 0.0, generators=point_generators('z', x, y))
    assert torch.equal(x_adv, x) and not offsets.any() and offsets.shape == (8, 3, *RECOLOR_GRID)


def test_the_start_is_the_threats_random_start_from_the_same_stream():
    model, x, y = softmax_regression(n=4, size=4)
    x_start, offsets = recolor(model, x, y, 0.1, n_iter=0, generators=point_generators('s', x, y))
    threat = ReColorThreat(0.1)
    again = torch.cat([threat.random_start(x[i:i + 1], g) for i, g in enumerate(point_generators('s', x, y))])
    # equal up to float rounding: vectorised pow differs in its last bits between batch shapes
    assert torch.allclose(x_start, again, atol=1e-5) and threat.contains(x, again).all()
    assert (offsets == offsets[:, :, :1, :1, :1]).all()                 # a shift: the same at every grid point
    other = torch.cat([threat.random_start(x[i:i + 1], g) for i, g in enumerate(point_generators('t', x, y))])
    assert not torch.allclose(other, again, atol=1e-3)


def test_the_attack_restores_flags_and_leaves_parameter_gradients_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 10)).train()
    x, y = torch.rand(4, 3, 6, 6), torch.randint(0, 10, (4,))
    running = model[1].running_mean.clone()
    recolor(model, x, y, 0.06, n_iter=2)
    assert model.training and model[1].training and torch.equal(model[1].running_mean, running)
    assert all(p.grad is None for p in model.parameters())


def test_host_syncs_per_call_do_not_grow_with_n_iter():
    model, x, y = softmax_regression(n=4, size=4)

    def syncs(n_iter):
        with count_host_syncs() as counter:
            recolor(model, x, y, 0.06, n_iter=n_iter, generators=point_generators('h', x, y))
        return counter.by_kind()
    assert syncs(2) == syncs(6)


# --- the threat in evaluation -------------------------------------------------------------------------

QUICK = EvalBudget.from_name('quick')


def test_strength_never_helps_and_zero_keeps_the_clean_verdict():
    # the same start w and the same steps in w at every strength (offsets = strength * w)
    model, x, y = softmax_regression(n=32, size=8)
    threats = ['recolor:0', 'recolor:0.03', 'recolor:0.06', 'recolor:0.12']
    res = evaluate_robustness(model, x, y, threats=threats, budget=QUICK, bs=32)
    assert res.flags['recolor:0'] == res.flags['clean']
    acc = [res.robust[t] for t in threats]
    assert acc[0] >= acc[1] >= acc[2] >= acc[3] and acc[3] < res.clean


def test_verdicts_do_not_depend_on_the_batch():
    model, x, y = softmax_regression(n=24, size=8)
    full = evaluate_robustness(model, x, y, threats=['recolor:0.1'], budget=QUICK, bs=24)
    small = evaluate_robustness(model, x, y, threats=['recolor:0.1'], budget=QUICK, bs=5)
    assert full.flags == small.flags and full.robust['recolor:0.1'] < full.clean


def test_the_registered_names_defaults_steps_and_range():
    assert get_threat('recolor:0.06') == ReColorThreat(0.06) == get_threat('recolor')     # CIFAR-10 default
    assert get_threat('ReColorAdv:0.1') == ReColorThreat(0.1) and str(get_threat('recolor')) == 'recolor:0.06'
    threat = get_threat('recolor')
    assert threat.family == 'recoloradv' and threat.header == 'recolor (0.06)'
    assert threat.steps(QUICK) == 20 and threat.steps(EvalBudget.from_name('standard')) == 100
    with pytest.raises(ValueError, match=r"strength 1.5 of threat 'recolor' is out of range: it must lie in \[0, 1\]"):
        get_threat('recolor:1.5')
    with pytest.raises(ValueError, match=r"out of range: it must lie in \[0, 1\]"):
        get_threat('recolor:-0.1')


def test_contains_refuses_changes_beyond_the_bound_or_outside_the_box():
    x = 0.2 + 0.6 * torch.rand(3, 3, 5, 5, generator=torch.Generator().manual_seed(5))
    threat = ReColorThreat(0.06)
    lighter = x.clone()
    lighter[0] = (x[0] + 0.2).clamp(0, 1)               # L* up by far more than 6
    lighter[1, :, 0, 0] = x[1, :, 0, 0] + 0.03           # one pixel's colour moved by ~3 L*: inside
    lighter[2, 0, 0, 0] = 1.2                            # outside [0,1]
    assert threat.contains(x, lighter).tolist() == [False, True, False]
    assert threat.size(x, lighter)[0] > 0.06 and threat.size(x, x).max() == 0


def test_bad_input_says_what_is_wrong():
    gray, y = torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r'needs RGB images \(N, 3, H, W\), got shape \(2, 1, 8, 8\)'):
        recolor(model, gray, y, 0.06)
    with pytest.raises(ValueError, match='needs RGB images'):
        ReColorThreat(0.06).contains(gray, gray)
    rgb = torch.rand(2, 3, 8, 8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
    with pytest.raises(ValueError, match='eps must be a finite number >= 0'):
        recolor(model, rgb, y, -0.1)
    with pytest.raises(ValueError, match='n_iter must be an integer >= 0'):
        recolor(model, rgb, y, 0.06, n_iter=-1)
    with pytest.raises(ValueError, match='one generator per point'):
        recolor(model, rgb, y, 0.06, generators=[torch.Generator()])
    with pytest.raises(ValueError, match='grid must be three integers >= 2'):
        recolor(model, rgb, y, 0.06, grid=(1, 32, 32))
    with pytest.raises(ValueError, match=r'\[0,1\] pixel space'):
        recolor(model, rgb + 1, y, 0.06)
    with pytest.raises(ValueError, match='smoothness must be a finite number >= 0'):
        recolor(model, rgb, y, 0.06, smoothness=-1.0)
    with pytest.raises(ValueError, match='lr must be a finite number > 0'):
        recolor(model, rgb, y, 0.06, lr=float('inf'))


def test_random_offsets_are_a_shift_drawn_from_the_generator():
    a = random_offsets(RECOLOR_GRID, torch.Generator().manual_seed(0), torch.zeros(1))
    b = random_offsets(RECOLOR_GRID, torch.Generator().manual_seed(0), torch.zeros(1))
    assert torch.equal(a, b) and a.shape == (1, 3, *RECOLOR_GRID) and a.abs().max() <= 1
    assert (a == a[:, :, :1, :1, :1]).all()
