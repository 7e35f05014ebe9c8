"""Data in [0,1]: the bundled sample, the in-memory DataLoaders and their augmentation,
CIFAR-10 from local copies, and the check that refuses normalising DataLoaders."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.transforms import Normalize
from fastai.learner import Learner
from fastai.torch_core import TensorCategory, TensorImage, set_seed
from fastai.vision.core import cifar_stats
from PIL import Image

from eatai.data import (
    CIFAR10_CLASSES,
    SAMPLE_PATH,
    PadCropFlip,
    arrays_dls,
    check_dls,
    cifar10_dls,
    load_sample,
    pad_crop_flip,
    sample_dls,
    sample_info,
)
from eatai.data.build_sample import balanced_indices
from eatai.data.codec import decode_images, encode_images, read_arrays, write_arrays

SHARED = Path(__file__).parents[2] / 'shared' / 'data'   # in CI the repo is cloned next to shared/
needs_shared = pytest.mark.skipif(not (SHARED / 'cifar10_test.npz').exists(), reason=f'no shared data at {SHARED}')


@pytest.fixture(scope='module')
def sample():
    return load_sample()


def reference_crop(img, top, left, flip, pad=4):
    """One image (C, H, W): zero-pad, slice, mirror; the obvious way."""
    h, w = img.shape[-2:]
    out = F.pad(img, (pad, pad, pad, pad))[:, top:top + h, left:left + w]
    return out.flip(-1) if flip else out


def batches(dl):
    return [(xb.clone(), yb.clone()) for xb, yb in dl]


# --- the bundled sample ------------------------------------------------------------------------

def test_sample_shapes_dtypes_range_and_balance(sample):
    x_train, y_train, x_valid, y_valid = sample
    assert x_train.shape == (2000, 3, 32, 32) and x_valid.shape == (500, 3, 32, 32)
    assert x_train.dtype == x_valid.dtype == torch.float32 and y_train.dtype == y_valid.dtype == torch.int64
    for x in (x_train, x_valid):
        assert x.is_contiguous() and x.min() >= 0 and x.max() <= 1
        assert torch.equal((x * 255).round() / 255, x)            # exactly uint8 / 255
    assert torch.bincount(y_train, minlength=10).tolist() == [200] * 10
    assert torch.bincount(y_valid, minlength=10).tolist() == [50] * 10
    assert SAMPLE_PATH.stat().st_size <= 6 * 2**20
    x_again = load_sample()[0]
    x_again[0] = 0                                                # callers get their own copies
    assert not torch.equal(load_sample()[0][0], x_again[0])


def test_sample_is_lossless_and_records_its_sources(sample):
    info = sample_info()
    x = torch.cat([sample[0], sample[2]]).mul(255).round().byte().permute(0, 2, 3, 1).contiguous()
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == info['sha256_hwc']
    assert len(info['train_index']) == 2000 and len(info['valid_index']) == 500
    assert info['train_index'] == sorted(set(info['train_index'])) and info['classes'] == list(CIFAR10_CLASSES)


@needs_shared
def test_sample_matches_the_source_files(sample):
    info = sample_info()
    for (x, y), file, key in (((sample[0], sample[1]), info['train_source'], 'train_index'),
                              ((sample[2], sample[3]), info['valid_source'], 'valid_index')):
        with np.load(SHARED / file) as src:
            idx = np.array(info[key])
            assert np.array_equal(src['x'][idx], x.mul(255).round().byte().permute(0, 2, 3, 1).numpy())
            assert np.array_equal(src['y'][idx], y.numpy())


def test_codec_round_trip_is_exact_and_deterministic():
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    x[0], x[1, :, :, 0] = 255, 0                                  # extremes: wrap-around in both directions
    codes = encode_images(x)
    assert codes.shape == (3, 5, 7, 9) and codes.dtype == np.uint8
    assert np.array_equal(decode_images(codes), x.transpose(0, 3, 1, 2))
    arrays = {'codes': codes, 'note': np.array('text')}
    data = write_arrays(arrays)
    assert data == write_arrays(arrays)
    back = read_arrays(data)
    assert np.array_equal(back['codes'], codes) and str(back['note']) == 'text'


def test_balanced_indices_are_balanced_sorted_and_seeded():
    y = np.random.default_rng(1).integers(0, 10, 500)
    idx = balanced_indices(y, 20, seed=3)
    assert np.bincount(y[idx], minlength=10).tolist() == [20] * 10 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, balanced_indices(y, 20, seed=3))
    assert not np.array_equal(idx, balanced_indices(y, 20, seed=4))
    with pytest.raises(ValueError, match='fewer'):
        balanced_indices(y, 400, seed=0)


# --- the augmentation ----------------------------------------------------------------------------

def test_pad_crop_flip_matches_the_obvious_implementation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 8, 10, generator=g)
    top, left = torch.randint(0, 9, (12,), generator=g), torch.randint(0, 9, (12,), generator=g)
    flip = torch.rand(12, generator=g) < 0.5
    out = pad_crop_flip(x, top, left, flip)
    for i in range(12):
        assert torch.equal(out[i], reference_crop(x[i], int(top[i]), int(left[i]), bool(flip[i])))
    centre = torch.full((12,), 4)
    assert torch.equal(pad_crop_flip(x, centre, centre, torch.zeros(12, dtype=torch.bool)), x)
    assert torch.equal(pad_crop_flip(x, centre, centre, torch.ones(12, dtype=torch.bool)), x.flip(-1))
    corner = pad_crop_flip(x, torch.zeros(12, dtype=torch.long), torch.zeros(12, dtype=torch.long), flip & False)
    assert torch.equal(corner[:, :, 4:, 4:], x[:, :, :-4, :-4]) and corner[:, :, :4].abs().sum() == 0


@pytest.mark.parametrize('stored_as', ['float', 'uint8'])   # uint8: cropped before the conversion to float
def test_augmentation_on_train_only_and_every_image_is_a_padded_crop(sample, stored_as):
    x_train, y_train, x_valid, y_valid = sample
    store = (lambda x: x.mul(255).round().byte()) if stored_as == 'uint8' else (lambda x: x)
    dls = arrays_dls(store(x_train[:64]), y_train[:64], store(x_valid[:48]), y_valid[:48], bs=32, shuffle=False)
    valid1, valid2 = batches(dls.valid), batches(dls.valid)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(valid1, valid2))
    assert torch.equal(torch.cat([xb for xb, _ in valid1]), x_valid[:48])       # clean, in order
    assert torch.equal(torch.cat([yb for _, yb in valid1]), y_valid[:48])
    train1, train2 = batches(dls.train), batches(dls.train)
    assert not torch.equal(train1[0][0], train2[0][0])
    assert torch.equal(torch.cat([yb for _, yb in train1]), y_train[:64])       # labels untouched
    xb = train1[0][0]
    assert xb.min() >= 0 and xb.max() <= 1
    as_bytes = lambda x: x.mul(255).round().byte()                             # exact, and 4x less memory
    padded = F.pad(as_bytes(x_train[:16]), (4, 4, 4, 4))
    crops = [padded[..., t:t + 32, l:l + 32] for t in range(9) for l in range(9)]
    candidates = torch.stack([c for crop in crops for c in (crop, crop.flip(-1))])   # (162, 16, 3, 32, 32)
    matches = (candidates == as_bytes(xb[:16])[None]).flatten(2).all(-1)        # (162, 16)
    assert matches.any(0).all()
    assert (~matches[80]).sum() >= 8             # candidate 80 is the identity: most images did move


def test_pad_crop_flip_is_a_training_only_fastai_transform():
    x = TensorImage(torch.rand(4, 3, 8, 8))
    tfm = PadCropFlip()
    assert tfm.split_idx == 0 and torch.equal(tfm(x, split_idx=1), x)
    assert isinstance(tfm(x, split_idx=0), TensorImage)


# --- the DataLoaders -----------------------------------------------------------------------------

def test_sample_dls_batches_types_classes_and_vocab(sample):
    dls = sample_dls(bs=100)
    assert dls.c == 10 and list(dls.vocab) == list(CIFAR10_CLASSES)
    assert len(dls.train) == 20 and len(dls.valid) == 5
    xb, yb = dls.one_batch()
    assert isinstance(xb, TensorImage) and isinstance(yb, TensorCategory)
    assert xb.shape == (100, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert 0 <= xb.min() and xb.max() <= 1
    assert torch.equal(torch.cat([x for x, _ in dls.valid]), sample[2])         # same pixels as load_sample
    check_dls(dls)


def test_shuffling_and_augmentation_are_reproducible_under_a_seed():
    def first_batches(seed):
        set_seed(seed)
        dls = sample_dls(bs=64)
        return [b for b, _ in zip(dls.train, range(2))]
    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])


def test_uint8_nhwc_arrays_give_the_same_batches_as_floats(sample):
    x_train, y_train, x_valid, y_valid = (t[:40] for t in sample)
    as_uint8 = lambda x: x.mul(255).round().byte().permute(0, 2, 3, 1).numpy()   # like the npz files
    kw = dict(bs=16, augment=False, shuffle=False)
    a = arrays_dls(x_train, y_train, x_valid, y_valid, **kw)
    b = arrays_dls(as_uint8(x_train), y_train.numpy().astype(np.uint8), as_uint8(x_valid), y_valid.numpy(), **kw)
    for dl_a, dl_b in ((a.train, b.train), (a.valid, b.valid)):
        for (xa, ya), (xb, yb) in zip(dl_a, dl_b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and xb.dtype == torch.float32


def test_arrays_dls_refuses_bad_inputs_and_names_classes(sample):
    x, y = sample[0][:20], sample[1][:20]
    with pytest.raises(ValueError, match=r'outside \[0,1\].*mean=.*std='):
        arrays_dls(x * 2, y, x, y)
    with pytest.raises(ValueError, match='uint8'):
        arrays_dls(x.long(), y, x, y)
    with pytest.raises(ValueError, match='labels'):
        arrays_dls(x, y + 10, x, y)
    with pytest.raises(ValueError, match='Normalize'):
        arrays_dls(x, y, x, y, batch_tfms=[Normalize.from_stats(*cifar_stats)])
    dls = arrays_dls(x, y % 3, x, y % 3, vocab=None, bs=8)
    assert dls.c == 3 and list(dls.vocab) == ['0', '1', '2']


def test_a_fastai_learner_trains_on_it_with_its_default_loss(tiny_net, sample):
    dls = arrays_dls(*(t[:64] for t in sample), bs=32)
    learn = Learner(dls, tiny_net)                                              # loss from the dataset
    with learn.no_logging():
        learn.fit(1, lr=1e-3)
        preds, targs = learn.get_preds()
    assert preds.shape == (64, 10) and torch.equal(targs, sample[3][:64])
    _, _, samples = dls.valid.show_batch(show=False, max_n=4)                   # decodes to class names
    assert [str(s[1]) for s in samples] == [CIFAR10_CLASSES[int(i)] for i in sample[3][:4]]


# --- check_dls ------------------------------------------------------------------------------------

def test_check_dls_refuses_normalize(sample):
    dls = arrays_dls(*(t[:32] for t in sample), bs=16)
    dls.add_tfms([Normalize.from_stats(*cifar_stats)], 'after_batch')
    with pytest.raises(ValueError, match=r'Normalize.*\[0,1\] pixel space.*robust_learner\(\.\.\., mean=\.\.\., std='):
        check_dls(dls)


def plain_dls(items, bs=4):
    return DataLoaders(TfmdDL(items, bs=bs, num_workers=0), TfmdDL(items, bs=bs, num_workers=0))


def test_check_dls_refuses_data_outside_the_box_and_integer_inputs():
    outside = [(TensorImage(torch.rand(3, 8, 8) * 2 - 0.5), TensorCategory(0)) for _ in range(8)]
    with pytest.raises(ValueError, match=r'train DataLoader yields inputs in .*outside \[0,1\].*mean='):
        check_dls(plain_dls(outside))
    integers = [(TensorImage(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)), TensorCategory(0))
                for _ in range(8)]
    with pytest.raises(ValueError, match='float'):
        check_dls(plain_dls(integers))
    inside = [(TensorImage(torch.rand(3, 8, 8)), TensorCategory(0)) for _ in range(8)]
    assert check_dls(plain_dls(inside)) is None


# --- CIFAR-10 from disk -----------------------------------------------------------------------

@needs_shared
def test_cifar10_dls_from_the_shared_npz_files():
    dls = cifar10_dls(bs=64, path=SHARED, n_train=256, n_valid=100)
    assert len(dls.train_ds) == 256 and len(dls.valid_ds) == 100 and dls.c == 10
    with np.load(SHARED / 'cifar10_test.npz') as test:
        assert np.array_equal(dls.valid_ds.y.numpy(), test['y'][:100])          # first n, stored order
        assert np.array_equal(dls.valid_ds.x.numpy(), test['x'][:100].transpose(0, 3, 1, 2))
    again = cifar10_dls(bs=64, path=SHARED, n_train=256, n_valid=100)
    assert torch.equal(dls.train_ds.x, again.train_ds.x)                        # the fixed-seed subset
    assert len(set(dls.train_ds.y.tolist())) == 10
    check_dls(dls)


def test_cifar10_dls_from_fastai_image_folders(tmp_path, sample):
    x, y = sample[0][:30], sample[1][:30]
    pixels = x.mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    for split in ('train', 'test'):
        for i in range(30):
            folder = tmp_path / split / CIFAR10_CLASSES[int(y[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i]).save(folder / f'{i}_{CIFAR10_CLASSES[int(y[i])]}.png')
    dls = cifar10_dls(bs=8, path=tmp_path, n_valid=12)
    assert list(dls.vocab) == sorted({CIFAR10_CLASSES[int(c)] for c in y})
    assert len(dls.train_ds) == 30 and len(dls.valid_ds) == 12
    valid_x, valid_y = dls.valid_ds.x, dls.valid_ds.y
    assert np.array_equal(valid_x.numpy(), pixels[:12].transpose(0, 3, 1, 2))  # numbered order, lossless
    assert [dls.vocab[int(c)] for c in valid_y] == [CIFAR10_CLASSES[int(c)] for c in y[:12]]


def test_cifar10_dls_says_what_it_expected_where(tmp_path):
    missing = tmp_path / 'nowhere'
    with pytest.raises(FileNotFoundError, match=r'nowhere.*cifar10_test\.npz.*train/<class>'):
        cifar10_dls(path=missing)
    with pytest.raises(FileNotFoundError, match='no CIFAR-10 data found'):
        cifar10_dls(path=tmp_path)


@needs_shared
def test_cifar10_dls_refuses_more_images_than_there_are():
    with pytest.raises(ValueError, match='n_train=100000'):
        cifar10_dls(path=SHARED, n_train=100_000)
