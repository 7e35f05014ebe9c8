"""Common corruptions: the library's own pixels for a seed, every type on 32x32, the disk cache and its checksum,
mCA arithmetic, the 'corruption:<name>:<severity>' threat, and the errors for bad names, severities and images."""
import os

import imagecorruptions
import numpy as np
import pytest
import torch
from torch import nn

from eatai.evaluation import evaluate_robustness, get_threat
from eatai.evaluation.corruptions import (CORRUPTIONS, EXTRA_CORRUPTIONS, CorruptionCacheWarning, CorruptionThreat,
                                          cached_corruption, corrupt, corruption_seed, evaluate_corruptions)

pytestmark = pytest.mark.usefixtures('one_thread')
OWN_SEED = ('glass_blur', 'impulse_noise')   # documented: these take seed= as well as np.random.seed


def _images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g).float() / 255   # (N, 3, 32, 32) on the uint8 grid


def _hwc(x):
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _library_output(image, name, severity, seed):
    s = corruption_seed(image, name, severity, seed)
    np.random.seed(s)
    return imagecorruptions.corrupt(image, severity=severity, corruption_name=name,
                                    **({'seed': s} if name in OWN_SEED else {}))


class MeanThreshold(nn.Module):
    """Class 1 when an image's mean pixel exceeds 0.5, else class 0."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], 1)


def test_names_are_the_librarys_in_its_order():
    assert CORRUPTIONS == tuple(imagecorruptions.get_corruption_names('common'))
    assert EXTRA_CORRUPTIONS == tuple(imagecorruptions.get_corruption_names('validation'))


@pytest.mark.parametrize('name', ['gaussian_noise', 'impulse_noise', 'glass_blur', 'frost', 'fog', 'jpeg_compression'])
def test_pixel_identical_to_the_library_for_a_seed(name):
    x = _images()
    for severity in (1, 5):
        expected = np.stack([_library_output(img, name, severity, seed=3) for img in _hwc(x)])
        out = corrupt(x, name, severity, seed=3)                              # torch, float, channels first
        assert out.dtype == x.dtype and out.shape == x.shape
        assert np.array_equal(_hwc(out), expected)
        assert np.array_equal(corrupt(_hwc(x), name, severity, seed=3), expected)   # numpy uint8, channels last


def test_seeded_per_image_batch_free_and_numpys_state_restored():
    x = _images(4)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = corrupt(x, 'gaussian_noise', 3, seed=0)
    assert np.array_equal(np.random.get_state()[1], before)
    assert torch.equal(a, corrupt(x, 'gaussian_noise', 3, seed=0))
    assert torch.equal(a[1:3], corrupt(x[[2, 1]], 'gaussian_noise', 3, seed=0)[[1, 0]])   # any batch, any order
    assert torch.equal(a[2], corrupt(x[2], 'gaussian_noise', 3, seed=0))                   # one (C, H, W) image
    assert not torch.equal(a, corrupt(x, 'gaussian_noise', 3, seed=1))


def test_every_corruption_runs_on_two_32x32_images():
    x = _images(2)
    for name in CORRUPTIONS + EXTRA_CORRUPTIONS:
        out = corrupt(x, name, 3)
        assert out.shape == x.shape and out.dtype == x.dtype, name
        assert 0 <= out.min() and out.max() <= 1, name
        assert not torch.equal(out, x), name


def _stat(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_the_cache_loads_on_the_second_call(tmp_path):
    x = _images()
    first = cached_corruption(x, 'frost', 2, cache_dir=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert [f.suffix for f in files] == ['.npz', '.sha256']
    stats = [_stat(f) for f in files]
    second = cached_corruption(x, 'frost', 2, cache_dir=tmp_path)
    assert torch.equal(first, second) and torch.equal(first, corrupt(x, 'frost', 2))
    assert [_stat(f) for f in files] == stats                    # neither file rewritten: loaded, not generated
    cached_corruption(x, 'frost', 2, seed=1, cache_dir=tmp_path)   # another seed is another file
    assert len(list(tmp_path.glob('*.npz'))) == 2


def test_a_flipped_byte_is_caught_by_the_checksum_and_regenerated(tmp_path):
    x = _images()
    good = cached_corruption(x, 'snow', 4, cache_dir=tmp_path)
    (path,) = tmp_path.glob('*.npz')
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(CorruptionCacheWarning, match='does not match its SHA-256 checksum; regenerating'):
        again = cached_corruption(x, 'snow', 4, cache_dir=tmp_path)
    assert torch.equal(again, good)
    (tmp_path / (path.name + '.sha256')).unlink()
    with pytest.warns(CorruptionCacheWarning, match='checksum file is missing'):
        cached_corruption(x, 'snow', 4, cache_dir=tmp_path)
    stats = _stat(path)
    cached_corruption(x, 'snow', 4, cache_dir=tmp_path)          # healthy again: loaded without a warning
    assert _stat(path) == stats


def test_mca_arithmetic_on_a_known_case(tmp_path):
    # uniform grey images of levels 50, 100 and 200: brightness raises them by about 25.5 * severity
    # (HSV value + 0.1 * severity), contrast leaves a uniform image as it is
    levels, y = torch.tensor([50., 100., 200.]), torch.tensor([0, 0, 1])
    x = (levels / 255).view(3, 1, 1, 1).expand(3, 3, 32, 32).contiguous()
    model = MeanThreshold().train()
    res = evaluate_corruptions(model, x, y, corruptions=['brightness', 'contrast'], cache_dir=tmp_path, progress=False)
    assert model.training                                          # flags restored
    assert res['clean'] == 1.0
    # 50 stays below 0.5 up to severity 3, 100 only at severity 1, 200 always above
    assert res['per_type_severity']['brightness'] == pytest.approx({1: 1, 2: 2 / 3, 3: 2 / 3, 4: 1 / 3, 5: 1 / 3})
    assert res['per_type_severity']['contrast'] == pytest.approx({s: 1.0 for s in range(1, 6)})
    assert res['per_type'] == pytest.approx({'brightness': 0.6, 'contrast': 1.0})
    assert res['per_severity'] == pytest.approx({1: 1, 2: 5 / 6, 3: 5 / 6, 4: 2 / 3, 5: 2 / 3})
    assert res['mCA'] == pytest.approx(0.8)
    assert res['n'] == 3 and res['severities'] == [1, 2, 3, 4, 5] and 'imagecorruptions-imaug' in res['library']


def test_evaluate_corruptions_uses_the_images_of_corrupt(tmp_path, capsys):
    x, y = _images(6), torch.tensor([0, 1, 0, 1, 0, 1])
    model = MeanThreshold()
    res = evaluate_corruptions(model, x, y, corruptions=('fog', 'pixelate'), severities=(2, 5), bs=4,
                               cache_dir=tmp_path, seed=7)
    for name in ('fog', 'pixelate'):
        for s in (2, 5):
            acc = (model(corrupt(x, name, s, seed=7)).argmax(1) == y).float().mean().item()
            assert res['per_type_severity'][name][s] == pytest.approx(acc)
    assert res['mCA'] == pytest.approx(sum(res['per_type'].values()) / 2)
    assert 'corruptions' in capsys.readouterr().out               # the progress line (a log, not a terminal)


def test_unknown_names_and_severities_list_the_choices_or_name_the_range():
    x, y = _images(2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"unknown corruption 'fgo' \(did you mean 'fog'\?\): the choices are "
                                         r"gaussian_noise, .*jpeg_compression, speckle_noise.*saturate"):
        corrupt(x, 'fgo', 1)
    for bad in (0, 6, 2.5, '3', True):
        with pytest.raises(ValueError, match=r"severity .* is out of range: it must be an integer in 1\.\.5"):
            corrupt(x, 'fog', bad)
    with pytest.raises(ValueError, match='the choices are'):
        evaluate_corruptions(MeanThreshold(), x, y, corruptions=['fog', 'smog'], progress=False)
    with pytest.raises(ValueError, match=r'integer in 1\.\.5'):
        evaluate_corruptions(MeanThreshold(), x, y, severities=(1, 9), progress=False)
    with pytest.raises(ValueError, match=r"unknown corruption 'smog'.*the choices are"):
        get_threat('corruption:smog:2')
    with pytest.raises(ValueError, match=r"severity 7 is out of range: it must be an integer in 1\.\.5"):
        get_threat('corruption:fog:7')
    with pytest.raises(ValueError, match=r"'corruption:fog:<severity>'"):
        get_threat('corruption:fog')
    with pytest.raises(ValueError, match=r"write it as 'corruption:<name>:<severity>', severity in 1\.\.5 and a name "
                                         r"from gaussian_noise, .*saturate$"):
        get_threat('corruption')                                  # a bare name: how to write one, with the choices


def test_grayscale_and_small_images_say_why():
    x = _images(2)
    with pytest.raises(ValueError, match='3 channels, got 1: .*grayscale.*x.expand'):
        corrupt(x[:, :1], 'fog', 1)
    with pytest.raises(ValueError, match='at least 32x32 pixels, got 16x16'):
        corrupt(x[..., :16, :16], 'fog', 1)
    assert corrupt(torch.rand(1, 3, 40, 48), 'zoom_blur', 2).shape == (1, 3, 40, 48)   # larger sizes work
    with pytest.raises(ValueError, match=r'float images must lie in \[0,1\]'):
        corrupt(x * 2, 'fog', 1)


def test_the_runner_says_why_for_grayscale_and_corrupts_larger_images(tmp_path, monkeypatch):
    """Through `evaluate_robustness`: a (N, 1, 32, 32) batch is refused with the reason and the fix; a (N, 3, 64, 64) batch is corrupted at its own size (ImageNet-C's parameters apply to any size)."""
    monkeypatch.setenv('EATAI_HOME', str(tmp_path))
    y = torch.tensor([0, 1, 0, 1])
    gray = _images(4)[:, :1]
    with pytest.raises(ValueError, match=r'3 channels, got 1: .*x\.expand\(-1, 3, -1, -1\)'):
        evaluate_robustness(MeanThreshold(), gray, y, threats=['corruption:fog:2'])
    big = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    res = evaluate_robustness(MeanThreshold(), big, y, threats=['corruption:fog:2', 'corruption:pixelate:5'])
    for name, severity in (('fog', 2), ('pixelate', 5)):
        right = (MeanThreshold()(corrupt(big, name, severity)).argmax(1) == y).tolist()
        assert res.flags[f'corruption:{name}:{severity}'] == right
    assert corrupt(big, 'pixelate', 5).shape == big.shape
    with pytest.raises(ValueError, match='at least 32x32 pixels, got 16x16'):
        evaluate_robustness(MeanThreshold(), big[..., :16, :16], y, threats=['corruption:fog:2'])


def test_the_threat_by_name_contains_its_corruption_and_stays_out_of_the_union(tmp_path, monkeypatch):
    monkeypatch.setenv('EATAI_HOME', str(tmp_path))                 # the default cache lands in the test's folder
    threat = get_threat('corruption:fog:3')
    assert isinstance(threat, CorruptionThreat) and str(threat) == 'corruption:fog:3'
    assert threat.strength == 3 and threat.header == 'fog (3)' and threat.in_union is False
    assert get_threat(str(threat)) == threat and get_threat('corruption:Fog 3') == threat
    x = _images(4)
    x_c = threat.attack('corruption', MeanThreshold(), x, torch.zeros(4, dtype=torch.long), None)
    assert torch.equal(x_c, corrupt(x, 'fog', 3)) and threat.contains(x, x_c).all()
    assert not threat.contains(x, x).any()
    assert not threat.contains(x, corrupt(x, 'fog', 4)).any()
    assert not threat.contains(x, x_c + 1 / 255 * (torch.arange(4) == 2).view(4, 1, 1, 1)).tolist()[2]
    assert list((tmp_path / 'corruptions').glob('fog-3-*.npz'))


def test_the_runner_judges_the_corrupted_images(tmp_path, monkeypatch):
    monkeypatch.setenv('EATAI_HOME', str(tmp_path))
    x, y = _images(8, seed=1), torch.tensor([0, 1] * 4)
    model = MeanThreshold()
    res = evaluate_robustness(model, x, y, threats=['corruption:contrast:5'], bs=3)
    clean_ok = model(x).argmax(1) == y
    corrupted_ok = model(corrupt(x, 'contrast', 5)).argmax(1) == y
    # corruption accuracy (RobustBench's): every point judged on its corruption, clean-wrong ones too
    assert res.flags['corruption:contrast:5'] == corrupted_ok.tolist()
    assert (corrupted_ok & ~clean_ok).any()   # the case that tells the two definitions apart
    assert os.path.isdir(tmp_path / 'corruptions')
