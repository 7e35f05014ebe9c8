"""The JPEG threat (Kang et al. 2019; advex-uar's jpeg_linf): the transforms against scipy and the JFIF
formulas, the coefficient bound on every returned point, the membership check, strength 0, monotonicity,
batch invariance, the registry and bad input."""
import math

import numpy as np
import pytest
import scipy.fft
import torch
from conftest import Flicker, softmax_regression
from torch import nn

import eatai.evaluation.jpeg  # noqa: F401  registers 'jpeg' (until eatai.evaluation imports it)
from eatai.attacks.jpeg import (CHROMA_TABLE, LUMA_TABLE, JpegCoefficients, block_dct, block_idct,
                                coefficient_change, decode_change, jpeg_attack, jpeg_coefficients, jpeg_contains,
                                jpeg_decode, jpeg_random_start, rgb_to_ycbcr, ycbcr_to_rgb)
from eatai.attacks.syncs import count_host_syncs
from eatai.data import load_sample
from eatai.demo import DEMO_CHECKPOINT
from eatai.evaluation import EvalBudget, evaluate_robustness, get_threat
from eatai.evaluation.jpeg import JPEG_CIFAR10_STRENGTHS, JpegThreat
from eatai.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures('one_thread')


def _gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def _random_delta(n, h, w, radius, seed=0, dtype=torch.float64):
    """Coefficient changes with every entry at +-radius (the corners of the box)."""
    g = torch.Generator().manual_seed(seed)
    sign = lambda *shape: (2 * torch.randint(0, 2, shape, generator=g) - 1).to(dtype)   # noqa: E731
    return JpegCoefficients(radius * sign(n, 1, h, w), radius * sign(n, 2, h // 2, w // 2))


def _mid(x):
    """x squeezed into [0.3, 0.7]: small changes then never clip."""
    return 0.3 + 0.4 * x


@pytest.fixture(scope='module')
def bundled():
    """The bundled l-inf-trained CNN and 16 test images of the bundled CIFAR-10 sample."""
    model = load_checkpoint(DEMO_CHECKPOINT).eval()
    _, _, x, y = load_sample()
    return model, x[:16], y[:16]


# --- the transforms ---------------------------------------------------------------------------------

def test_block_dct_is_scipys_orthonormal_dct_on_every_8x8_block():
    t = torch.rand(3, 16, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    coef = block_dct(t)
    for n in range(3):
        for a in range(2):
            for b in range(3):
                block = t[n, 8 * a:8 * a + 8, 8 * b:8 * b + 8].numpy()
                np.testing.assert_allclose(coef[n, 8 * a:8 * a + 8, 8 * b:8 * b + 8].numpy(),
                                           scipy.fft.dctn(block, norm='ortho'), atol=1e-12)
    assert torch.allclose(block_idct(coef), t, atol=1e-12)
    # JPEG's DC: 1/8 of the block's sum
    assert torch.allclose(coef[:, ::8, ::8], t.reshape(3, 2, 8, 3, 8).sum((2, 4)) / 8, atol=1e-12)


def test_ycbcr_follows_the_jfif_formulas_and_inverts_exactly():
    rgb = torch.randint(0, 256, (4, 3, 2, 2), generator=torch.Generator().manual_seed(1)).double()
    r, g, b = rgb.unbind(1)
    ycc = rgb_to_ycbcr(rgb / 255) * 255
    # ITU-T T.871 (JFIF), 8-bit: coefficients printed to 6 digits
    assert torch.allclose(ycc[:, 0], 0.299 * r + 0.587 * g + 0.114 * b, atol=1e-9)
    assert torch.allclose(ycc[:, 1], 128 - 0.168736 * r - 0.331264 * g + 0.5 * b, atol=1e-3)
    assert torch.allclose(ycc[:, 2], 128 + 0.5 * r - 0.418688 * g - 0.081312 * b, atol=1e-3)
    y, cb, cr = ycc.unbind(1)
    back = ycbcr_to_rgb(ycc / 255) * 255
    assert torch.allclose(back[:, 0], y + 1.402 * (cr - 128), atol=1e-3)
    assert torch.allclose(back[:, 1], y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), atol=1e-3)
    assert torch.allclose(back[:, 2], y + 1.772 * (cb - 128), atol=1e-3)
    assert torch.allclose(back, rgb, atol=1e-10)


def test_a_grey_image_has_only_the_dc_coefficient_of_jpeg():
    x = torch.full((1, 3, 16, 16), 0.8, dtype=torch.float64)
    coef = jpeg_coefficients(x)
    dc = coef.luma[:, :, ::8, ::8]
    assert torch.allclose(dc, torch.full_like(dc, 8 * (0.8 * 255 - 128) / 16), atol=1e-10)
    assert float(coef.luma.abs().sum()) == pytest.approx(float(dc.abs().sum()), abs=1e-9)
    assert coef.chroma.abs().amax() < 1e-9                     # grey: Cb = Cr = 128
    assert LUMA_TABLE[0, :3].tolist() == [16, 11, 10] and CHROMA_TABLE[0, :4].tolist() == [17, 18, 24, 47]


def test_the_tables_rows_are_vertical_frequencies():
    """A grey cosine along the width (horizontal frequency 1) is divided by Q[0][1] = 11, not Q[1][0] = 12."""
    wave = torch.cos(math.pi * (2 * torch.arange(8, dtype=torch.float64) + 1) / 16) * math.sqrt(2 / 8)
    x = (0.5 + 0.05 * wave).repeat(1, 3, 16, 2)                      # (1, 3, 16, 16), the same in R, G, B
    coef = jpeg_coefficients(x).luma[0, 0, :8, :8]
    expected = torch.zeros(8, 8, dtype=torch.float64)
    expected[0, 0], expected[0, 1] = 8 * (0.5 * 255 - 128) / 16, 255 * 0.05 * math.sqrt(8) / 11
    assert torch.allclose(coef, expected, atol=1e-9)


def test_round_trip_image_coefficients_image():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 32, 16, dtype=torch.float64, generator=g)
    # 4:2:0: the image comes back with its chroma averaged over 2x2 pixels, its luma exactly
    ycc = rgb_to_ycbcr(x)
    pooled = torch.nn.functional.avg_pool2d(ycc[:, 1:], 2).repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert torch.allclose(jpeg_decode(jpeg_coefficients(x)), ycbcr_to_rgb(torch.cat([ycc[:, :1], pooled], 1)),
                          atol=1e-12)
    smooth = ycbcr_to_rgb(torch.cat([ycc[:, :1], pooled], 1))      # chroma already constant on 2x2
    assert torch.allclose(jpeg_decode(jpeg_coefficients(smooth)), smooth, atol=1e-12)
    # coefficients -> image -> coefficients: a change is recovered exactly, with nothing left over
    delta = _random_delta(2, 32, 16, 0.3, dtype=torch.float64)
    change, residual = coefficient_change(x, x + decode_change(delta))
    assert torch.allclose(change.luma, delta.luma, atol=1e-10)
    assert torch.allclose(change.chroma, delta.chroma, atol=1e-10)
    assert residual.abs().max() < 1e-9
    assert torch.allclose(jpeg_coefficients(x + decode_change(delta)).luma, jpeg_coefficients(x).luma + delta.luma,
                          atol=1e-9)


# --- membership -------------------------------------------------------------------------------------

def test_contains_is_exact_without_clipping_in_float32():
    x = _mid(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    delta = _random_delta(3, 32, 32, 0.05, dtype=torch.float32)     # every coefficient on the boundary
    x_adv = x + decode_change(delta)
    assert 0 < x_adv.min() and x_adv.max() < 1
    assert jpeg_contains(x, x_adv, 0.1).all()                        # radius 0.1 / 2 = 0.05
    assert not jpeg_contains(x, x_adv, 0.099).any()                  # 1% smaller
    assert jpeg_contains(x, x, 0.0).all()
    # a change JPEG cannot make (the chroma of one pixel alone) is refused at any strength
    nudged = x_adv.clone()
    nudged[:, 2, 5, 5] += 1e-3
    assert not jpeg_contains(x, nudged, 2.0).any()
    # and so is a point outside [0,1]
    assert not jpeg_contains(x, x_adv + 0.5, 2.0).any()


def test_contains_where_pixels_are_clipped_checks_the_blocks_it_can_and_every_pixels_reach():
    x = _mid(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)))
    x[:, :, :16, :16] = 0.98                    # a bright corner: one chroma block, four luma blocks
    delta = _random_delta(2, 32, 32, 0.05, dtype=torch.float32)
    x_adv = (x + decode_change(delta)).clamp(0, 1)
    assert (x_adv[:, :, :16, :16] == 1).any() and ((x_adv > 0) & (x_adv < 1))[:, :, 16:].all()
    # the corner's true values are unknown, so they are not held against the point; the rest still is
    assert jpeg_contains(x, x_adv, 0.1).all()
    too_far = (x + decode_change(JpegCoefficients(1.1 * delta.luma, delta.chroma))).clamp(0, 1)
    assert not jpeg_contains(x, too_far, 0.1).any()
    # every pixel is within reach of a change of size eps/2: an all-black image is not a small JPEG change
    assert not jpeg_contains(x, torch.zeros_like(x), 0.0625).any()


def test_an_attack_clipped_into_the_box_passes_contains(bundled):
    model, x, y = bundled
    x_adv, delta = jpeg_attack(model, x, y, 1.0, n_iter=3, generators=_gens(len(y)))
    assert ((x_adv == 0) | (x_adv == 1)).any()                       # some pixels were clipped
    assert jpeg_contains(x, x_adv, 1.0).all()
    assert torch.equal(x_adv, (x + decode_change(delta).float()).clamp(0, 1))


# --- the attack -------------------------------------------------------------------------------------

@pytest.mark.parametrize('eps', [0.0625, 0.25, 1.0])
def test_the_bound_holds_exactly_on_every_returned_point(eps):
    model, x, y = softmax_regression(n=12, size=16)
    x_adv, delta = jpeg_attack(model, x, y, eps, n_iter=5, generators=_gens(len(y)))
    assert delta.luma.shape == (12, 1, 16, 16) and delta.chroma.shape == (12, 2, 8, 8)
    assert (delta.linf() <= eps / 2).all()                           # exact: the box is a clamp
    assert torch.equal(x_adv, (x + decode_change(delta).float()).clamp(0, 1))
    assert JpegThreat(eps).contains(x, x_adv).all()
    assert 0 <= x_adv.min() and x_adv.max() <= 1


def test_strength_zero_returns_the_clean_image_and_the_clean_verdict():
    model, x, y = softmax_regression(n=20, size=16)
    x_adv, delta = jpeg_attack(model, x, y, 0.0, n_iter=3, generators=_gens(len(y)))
    assert torch.equal(x_adv, x) and delta.linf().max() == 0
    res = evaluate_robustness(model, x, y, threats=['jpeg:0'], budget='quick', bs=20)
    assert res.flags['jpeg:0'] == res.flags['clean']


def test_steps_are_in_advex_uar_units_and_default_to_eps_over_sqrt_n_iter():
    class Sure(nn.Module):
        """Class 0 by a wide margin whatever the image; its loss falls as the pixel sum grows."""

        def forward(self, x):
            s = 1e-3 * x.flatten(1).sum(1)
            return torch.stack([10 + s, -s], 1)

    x = _mid(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)))
    y = torch.zeros(2, dtype=torch.long)
    _, delta = jpeg_attack(Sure(), x, y, 0.5, n_iter=4, step_size=0.05, random_start=False)
    # never misclassified: the last iterate, whose DC coefficients took 4 steps of 0.05 / 2 against the sum
    assert torch.allclose(delta.luma[:, :, ::8, ::8], torch.full((2, 1, 2, 2), -0.1, dtype=torch.float64))
    assert delta.linf().max() <= 0.1 + 1e-7
    model, x, y = softmax_regression(n=8, size=16)
    default, _ = jpeg_attack(model, x, y, 0.25, n_iter=9, generators=_gens(8))
    explicit, _ = jpeg_attack(model, x, y, 0.25, n_iter=9, step_size=0.25 / 3, generators=_gens(8))
    assert torch.equal(default, explicit)


def test_a_point_keeps_its_first_misclassified_iterate():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    y = torch.arange(4)
    run = lambda model, n_iter: jpeg_attack(model, x, y, 0.5, n_iter=n_iter, step_size=0.1,   # noqa: E731
                                            generators=_gens(4))

    def flicker():   # misclassifies iterate 1 only; the same weights each time
        torch.manual_seed(0)
        return Flicker(y)

    first, delta = run(flicker(), 3)
    at_one, delta_at_one = run(flicker(), 1)
    assert torch.equal(first, at_one) and torch.equal(delta.luma, delta_at_one.luma)
    steady = flicker()
    steady.calls = 2                                  # past its flicker: never misclassifies
    assert not torch.equal(run(steady, 3)[0], run(steady, 1)[0])   # so it returns the last iterate


def test_random_starts_come_from_the_points_generators_and_scale_with_eps():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    small, d_small = jpeg_random_start(x, 0.1, torch.Generator().manual_seed(0))
    again, _ = jpeg_random_start(x, 0.1, torch.Generator().manual_seed(0))
    _, d_large = jpeg_random_start(x, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(small, again) and torch.allclose(d_large.luma, 3 * d_small.luma)
    assert (d_small.linf() <= 0.05).all() and JpegThreat(0.1).contains(x, small).all()
    threat_start = JpegThreat(0.1).random_start(x, torch.Generator().manual_seed(0))
    assert torch.equal(threat_start, small)
    # one generator per point: a point draws the same start alone or in a batch
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    y = torch.zeros(3, dtype=torch.long)
    batch, _ = jpeg_attack(model, x, y, 0.2, n_iter=0, generators=_gens(3))
    alone, _ = jpeg_attack(model, x[1:2], y[1:2], 0.2, n_iter=0, generators=_gens(1, seed=1))
    assert torch.equal(batch[1:2], alone)


def test_targets_are_reached_on_a_linear_model():
    model, x, y = softmax_regression(n=20, size=16)
    target = (y + 1) % 10
    x_adv, _ = jpeg_attack(model, x, y, 1.0, n_iter=20, generators=_gens(20), y_target=target)
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    assert (pred == target).float().mean() > 0.5 and (pred != y).all()


def test_larger_strength_never_helps_and_breaks_the_trained_model(bundled):
    """Per point the same random draws, scaled with eps, and steps eps / sqrt(n_iter): the trajectories
    differ only through the model. On this fixed model and seed accuracy falls with eps."""
    model, x, y = bundled
    threats = ['jpeg:0.125', 'jpeg:0.25', 'jpeg:0.5']
    res = evaluate_robustness(model, x, y, threats=threats, budget='quick', bs=16)
    acc = [res.robust[t] for t in threats]
    assert res.clean >= acc[0] >= acc[1] >= acc[2] and acc[2] < res.clean


def test_verdicts_do_not_depend_on_the_batch():
    model, x, y = softmax_regression(n=30, size=16)
    threats = ['jpeg:0.0625', 'jpeg:0.125']
    full = evaluate_robustness(model, x, y, threats=threats, budget='quick', bs=30)
    small = evaluate_robustness(model, x, y, threats=threats, budget='quick', bs=7)
    assert full.flags == small.flags
    assert full.robust['jpeg:0.125'] < full.clean


def test_model_state_is_restored_and_parameter_grads_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    model.train()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    stats = model[1].running_mean.clone()
    jpeg_attack(model, x, torch.arange(4), 0.25, n_iter=2, generators=_gens(4))
    assert model.training and model[1].training and torch.equal(model[1].running_mean, stats)
    assert all(p.grad is None for p in model.parameters())


def test_host_syncs_per_call_do_not_grow_with_n_iter():
    model, x, y = softmax_regression(n=6, size=16)
    counts = []
    for n_iter in (2, 8):
        with count_host_syncs() as syncs:
            jpeg_attack(model, x, y, 0.25, n_iter=n_iter, generators=_gens(6))
        counts.append(syncs.total)
    assert counts[0] == counts[1]


# --- the registered threat --------------------------------------------------------------------------

def test_registered_name_default_strength_and_paper_settings():
    assert get_threat('jpeg:0.125') == JpegThreat(0.125) and str(get_threat('jpeg:1/8')) == 'jpeg:0.125'
    default = get_threat('jpeg')
    assert default == JpegThreat(0.25) and default.strength == JPEG_CIFAR10_STRENGTHS[3]
    assert get_threat('jpeg_linf:0.5') == JpegThreat(0.5)
    assert default.family == 'jpeg-pgd' and default.header == 'jpeg (0.25)'
    assert default.steps(EvalBudget.from_name('standard')) == 200 and default.steps(EvalBudget.from_name('quick')) == 20
    assert JPEG_CIFAR10_STRENGTHS == (0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0)


@pytest.mark.parametrize('spec', ['jpeg:2.5', 'jpeg:-0.1'])
def test_a_strength_out_of_range_names_the_range(spec):
    with pytest.raises(ValueError, match=r"of threat 'jpeg' is out of range: it must lie in \[0, 2\]"):
        get_threat(spec)


def test_bad_images_are_refused_with_the_requirement():
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(10))
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match='multiples of 16, got 24x32'):
        jpeg_attack(model, torch.rand(2, 3, 24, 32), y, 0.25)
    with pytest.raises(ValueError, match=r'RGB images \(N, 3, H, W\), got shape \(2, 1, 32, 32\)'):
        jpeg_attack(model, torch.rand(2, 1, 32, 32), y, 0.25)
    with pytest.raises(ValueError, match='multiples of 16'):
        JpegThreat(0.25).contains(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match='eps must be a finite number >= 0'):
        jpeg_attack(model, torch.rand(2, 3, 16, 16), y, math.nan)
    with pytest.raises(ValueError, match='one generator per point'):
        jpeg_attack(model, torch.rand(2, 3, 16, 16), y, 0.25, generators=_gens(3))
