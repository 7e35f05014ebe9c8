"""The paper's other data: ImageNet from image folders (augmented as in [20]) and the extra data
of Carmon et al. mixed half and half into CIFAR training batches; everything in [0,1]."""
import os
import pickle

import numpy as np
import pytest
import torch
from fastai.data.transforms import Normalize
from fastai.torch_core import TensorImage
from PIL import Image
from torchvision import transforms as T

from eatai.data import Lighting, check_dls, imagenet_dls, load_extra, mixed_dls

CLASSES = ('n01440764', 'n01443537', 'n01484850')
VAL_COLOURS = {0: (200, 30, 30), 1: (30, 200, 30), 2: (30, 30, 200)}   # solid per class: the label is visible


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
    """3 classes x 4 noisy training images, 3 x 2 solid-colour validation images, PNG and JPEG, 64x48."""
    root = tmp_path_factory.mktemp('imagenet')
    rng = np.random.default_rng(0)
    for label, wnid in enumerate(CLASSES):
        for split, n in (('train', 4), ('val', 2)):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                pixels = (rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) if split == 'train'
                          else np.broadcast_to(np.uint8(VAL_COLOURS[label]), (48, 64, 3)))
                name = f'{wnid}_{i}.' + ('JPEG' if i % 2 else 'png')
                Image.fromarray(np.ascontiguousarray(pixels)).save(root / split / wnid / name)
    (root / 'train' / CLASSES[0] / 'notes.txt').write_text('not an image')
    return root


def dls_of(root, **kwargs):
    return imagenet_dls(root, **{'bs': 4, 'size': 32, 'num_workers': 0, 'device': 'cpu', **kwargs})


def batches(dl):
    return [(xb.clone(), yb.clone()) for xb, yb in dl]


# --- ImageNet -------------------------------------------------------------------------------------

def test_imagenet_batches_are_floats_in_01_with_vocab(imagenet):
    dls = dls_of(imagenet)
    assert dls.c == 3 and list(dls.vocab) == list(CLASSES)
    assert len(dls.train.dataset) == 12 and len(dls.valid.dataset) == 6
    check_dls(dls)                                                     # floats in [0,1], no Normalize
    for dl in dls.loaders:
        assert not any(isinstance(t, Normalize) for t in dl.after_batch.fs)
        for xb, yb in dl:
            assert xb.shape[1:] == (3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
            assert 0 <= xb.min() and xb.max() <= 1


def test_imagenet_validation_is_resize_centre_crop_labelled_and_deterministic(imagenet):
    dls = dls_of(imagenet)
    first, second = batches(dls.valid), batches(dls_of(imagenet).valid)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    x, y = torch.cat([b[0] for b in first]), torch.cat([b[1] for b in first])
    assert sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    for xi, yi in zip(x, y):                                           # the label matches the folder's colour
        assert torch.allclose(xi.mean((1, 2)), torch.tensor(VAL_COLOURS[int(yi)]) / 255, atol=2 / 255)
    ds = dls.valid.dataset
    with Image.open(ds.files[0]) as im:                                # Resize(32 * 256/224 = 37), CenterCrop(32)
        expected = T.functional.pil_to_tensor(T.CenterCrop(32)(T.Resize(37)(im.convert('RGB')))).float() / 255
    assert torch.equal(x[0], expected)


def test_imagenet_training_is_augmented_and_validation_order_spans_classes(imagenet):
    torch.manual_seed(0)
    dls = dls_of(imagenet, bs=12)
    a, b = dls.train.one_batch()[0].clone(), dls.train.one_batch()[0].clone()
    assert not torch.equal(a, b)                                       # random crops, flips, jitter
    plain = dls_of(imagenet, bs=12, augment=False)
    def sorted_batch():   # the same images in a new shuffle
        return torch.stack(sorted(plain.train.one_batch()[0], key=lambda t: t.sum().item()))
    assert torch.equal(sorted_batch(), sorted_batch())
    for augment in ('crop_flip', False):
        check_dls(dls_of(imagenet, augment=augment))
    with pytest.raises(ValueError, match="'engstrom', 'crop_flip' or False"):
        dls_of(imagenet, augment='autoaugment')


def test_lighting_stays_in_01_and_only_on_training():
    torch.manual_seed(0)
    x = TensorImage(torch.cat([torch.zeros(4, 3, 8, 8), torch.ones(4, 3, 8, 8), torch.full((4, 3, 8, 8), 0.5)]))
    out = Lighting(alphastd=1.0)(x, split_idx=0)
    assert 0 <= out.min() and out.max() <= 1 and not torch.equal(out[8:], x[8:])
    shift = out[8:] - x[8:]                                            # one RGB offset per image
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift))
    assert torch.equal(Lighting()(x, split_idx=1), x)


def test_imagenet_subsets(imagenet):
    dls = dls_of(imagenet, n_train=5, n_valid=4)
    assert len(dls.train.dataset) == 5 and len(dls.valid.dataset) == 4
    assert dls.valid.dataset.files == dls_of(imagenet, n_valid=4).valid.dataset.files   # fixed seed
    with pytest.raises(ValueError, match='n_valid=7, but the folder holds 6'):
        dls_of(imagenet, n_valid=7)


def test_imagenet_missing_or_malformed_folders_say_where_and_what(tmp_path, imagenet):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'}.*train/<wnid>/\\*.JPEG"):
        dls_of(tmp_path / 'nowhere')
    (tmp_path / 'a' / 'train' / 'n1').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no val/ folder in .*Expected"):
        dls_of(tmp_path / 'a')
    (tmp_path / 'a' / 'val').mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images .* in the class folders of .*train"):
        dls_of(tmp_path / 'a')
    Image.new('RGB', (8, 8)).save(tmp_path / 'a' / 'train' / 'n1' / 'x.png')
    Image.new('RGB', (8, 8)).save(tmp_path / 'a' / 'val' / 'ILSVRC2012_val_00000001.JPEG')
    with pytest.raises(FileNotFoundError, match='not sorted into class folders.*valprep'):
        dls_of(tmp_path / 'a')
    (tmp_path / 'a' / 'val' / 'n1').mkdir()
    Image.new('RGB', (8, 8)).save(tmp_path / 'a' / 'val' / 'n1' / 'y.png')
    (tmp_path / 'a' / 'val' / 'n2').mkdir()
    with pytest.raises(FileNotFoundError, match=r"class folders \['n2'\] that the training folder lacks"):
        dls_of(tmp_path / 'a')


def test_imagenet_refuses_normalize(imagenet):
    with pytest.raises(ValueError, match='Normalize'):
        dls_of(imagenet, batch_tfms=[Normalize.from_stats((0.5,) * 3, (0.5,) * 3)])


# --- extra data -----------------------------------------------------------------------------------

def marked(values, nhwc=False):
    """uint8 images whose every pixel is the given value: (N, 3, 32, 32), or (N, 32, 32, 3)."""
    x = torch.as_tensor(values, dtype=torch.uint8)[:, None, None, None]
    return x.expand(-1, 32, 32, 3).contiguous() if nhwc else x.expand(-1, 3, 32, 32).contiguous()


@pytest.fixture
def sources():
    """40 standard images marked 0..39 (labels 0-4), 30 extra images marked 100..129 (labels 5-9),
    10 validation images marked 200..209."""
    n, n_extra = torch.arange(40), torch.arange(30)
    return (marked(n), n % 5, marked(200 + torch.arange(10)), torch.arange(10) % 10,
            marked(100 + n_extra, nhwc=True), 5 + n_extra % 5)


def values(xb):
    return (xb[:, 0, 0, 0] * 255).round().long().as_subclass(torch.Tensor)


def test_every_batch_is_half_standard_half_extra(sources):
    dls = mixed_dls(*sources, bs=8, augment=False, device='cpu')
    assert len(dls.train) == 10                                        # 40 standard / (8 / 2)
    draws = []
    for epoch in range(3):
        seen = []
        for xb, yb in dls.train:
            v = values(xb)
            assert xb.shape == (8, 3, 32, 32) and (v[:4] < 40).all() and (v[4:] >= 100).all()
            labels = torch.where(v < 100, v % 5, 5 + (v - 100) % 5)     # labels travel with their images
            assert torch.equal(yb.as_subclass(torch.Tensor), labels)
            seen += v[:4].tolist()
            draws += (v[4:] - 100).tolist()
        assert sorted(seen) == list(range(40))                         # an epoch: every standard image once
    assert len(draws) == 120 and sorted(draws) == sorted(list(range(30)) * 4)
    for start in range(0, 120, 30):                                    # no extra image twice before all are used
        assert sorted(draws[start:start + 30]) == list(range(30))
    check_dls(dls)


def test_epoch_length_with_a_partial_last_batch(sources):
    x, y, xv, yv, xe, ye = sources
    dls = mixed_dls(x[:38], y[:38], xv, yv, xe, ye, bs=8, augment=False, device='cpu')
    sizes = [(values(xb) < 100).sum().item() for xb, _ in dls.train]
    assert len(dls.train) == len(sizes) == 10 and sizes[-1] == 2      # ceil(38 / 4); last: 2 + 2
    assert [len(xb) for xb, _ in dls.train][-1] == 4
    dropped = mixed_dls(x[:38], y[:38], xv, yv, xe, ye, bs=8, augment=False, drop_last=True, device='cpu')
    assert len(dropped.train) == sum(1 for _ in dropped.train) == 9


def test_augmented_batches_stay_in_01_and_validation_is_clean(sources):
    torch.manual_seed(0)
    dls = mixed_dls(*sources, bs=8, device='cpu')
    padded = 0
    for xb, yb in dls.train:
        assert 0 <= xb.min() and xb.max() <= 1 and xb.dtype == torch.float32
        assert (yb[:4] < 5).all() and (yb[4:] >= 5).all()
        padded += sum(bool((img == 0).any() and img.max() > 0) for img in xb)   # PadCropFlip's zero border
    assert padded > 0
    valid = [xb.clone() for xb, _ in dls.valid]
    assert torch.equal(torch.cat(valid), sources[2].float() / 255)     # in order, not augmented
    assert all(torch.equal(a, b) for a, b in zip(valid, [xb for xb, _ in dls.valid]))


def test_float_extra_with_uint8_standard_and_vocab_none(sources):
    x, y, xv, yv, xe, ye = sources
    dls = mixed_dls(x, y, xv, yv, xe.float() / 255, ye, bs=8, augment=False, vocab=None, device='cpu')
    assert dls.c == 10
    xb, _ = dls.train.one_batch()
    assert (values(xb)[4:] >= 100).all()
    with pytest.raises(ValueError, match='bs must be even'):
        mixed_dls(*sources, bs=7)
    with pytest.raises(ValueError, match='y_extra has labels in'):
        mixed_dls(x, y, xv, yv, xe, ye + 5, bs=8)


def test_extra_position_survives_worker_processes(sources):
    if os.cpu_count() < 2:
        pytest.skip('needs two cores')
    dls = mixed_dls(*sources, bs=8, augment=False, device='cpu', num_workers=2)
    draws = [v for _ in range(3) for xb, _ in dls.train for v in (values(xb)[4:] - 100).tolist()]
    assert sorted(draws[:30]) == sorted(draws[30:60]) == list(range(30))


def test_load_extra_reads_carmons_pickle_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    data, targets = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 20)
    with open(tmp_path / 'ti_500K_pseudo_labeled.pickle', 'wb') as f:
        pickle.dump({'data': data, 'extrapolated_targets': targets, 'prediction_model': 'wrn'}, f)
    x, y = load_extra(tmp_path / 'ti_500K_pseudo_labeled.pickle')
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(data).permute(0, 3, 1, 2)) and y.tolist() == targets.tolist()
    np.savez(tmp_path / 'generated.npz', image=data, label=targets)
    xs, ys = load_extra(tmp_path / 'generated.npz', n=8)
    assert len(xs) == 8 and all((x == xi).all((1, 2, 3)).any() for xi in xs)
    assert torch.equal(xs, load_extra(tmp_path / 'generated.npz', n=8)[0])            # fixed seed
    dls = mixed_dls(x, y, x[:4], y[:4], xs, ys, bs=4, device='cpu')
    assert len(dls.train) == 10
    check_dls(dls)


def test_load_extra_reads_numpy1_pickles(tmp_path):
    data = np.arange(2 * 32 * 32 * 3, dtype=np.uint32).astype(np.uint8).reshape(2, 32, 32, 3)
    raw = pickle.dumps({'data': data, 'extrapolated_targets': np.array([1, 2])}, protocol=2)
    (tmp_path / 'old.pickle').write_bytes(raw.replace(b'numpy._core.', b'numpy.core.'))   # as numpy 1.x wrote it
    assert torch.equal(load_extra(tmp_path / 'old.pickle')[0], torch.from_numpy(data).permute(0, 3, 1, 2))


class Payload:
    def __reduce__(self):
        return (os.getpid, ())


def test_load_extra_refuses_code_and_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.pickle.*ti_500K_pseudo_labeled.pickle'):
        load_extra(tmp_path / 'nothere.pickle')
    (tmp_path / 'evil.pickle').write_bytes(pickle.dumps({'data': Payload()}))
    with pytest.raises(pickle.UnpicklingError, match='posix.getpid'):
        load_extra(tmp_path / 'evil.pickle')
    (tmp_path / 'keys.pickle').write_bytes(pickle.dumps({'images': np.zeros((1, 32, 32, 3), np.uint8)}))
    with pytest.raises(ValueError, match=r"\['images'\].*data/extrapolated_targets"):
        load_extra(tmp_path / 'keys.pickle')


def test_cifar10_dls_mixes_in_extra_data(tmp_path):
    """cifar10_dls(extra=...) gives half standard, half extra training batches."""
    from eatai.data import cifar10_dls
    g = np.random.default_rng(0)
    np.savez(tmp_path / 'cifar10_train.npz', x=np.zeros((16, 32, 32, 3), np.uint8), y=g.integers(0, 10, 16).astype(np.uint8))
    np.savez(tmp_path / 'cifar10_test.npz', x=np.zeros((8, 32, 32, 3), np.uint8), y=g.integers(0, 10, 8).astype(np.uint8))
    np.savez(tmp_path / 'extra.npz', x=np.full((40, 32, 32, 3), 255, np.uint8), y=g.integers(0, 10, 40).astype(np.uint8))
    dls = cifar10_dls(bs=8, path=tmp_path, extra=tmp_path / 'extra.npz', augment=False)
    assert len(dls.train) == 4                       # an epoch counts the 16 standard images, 4 per batch
    xb, yb = dls.one_batch()
    per_image = xb.flatten(1).mean(1)
    assert torch.equal(per_image[:4], torch.zeros(4)) and torch.equal(per_image[4:], torch.ones(4))
