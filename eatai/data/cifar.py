"""CIFAR-10 DataLoaders: the bundled sample, local copies (npz pair or fastai's image folders)
and fastai's download. Everything stays in [0,1] pixel space; nothing normalises."""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.data.transforms import get_image_files

from .codec import decode_images, read_arrays
from .extra import load_extra, mixed_dls
from .loaders import CIFAR10_CLASSES, arrays_dls

__all__ = ['SAMPLE_PATH', 'load_sample', 'sample_info', 'sample_dls', 'cifar10_dls']

SAMPLE_PATH = Path(__file__).parent / 'sample' / 'cifar10_sample.npz.xz'
SUBSET_SEED = 0   # the fixed shuffle behind `n_train`

_LAYOUTS = ("a folder with cifar10_train*.npz and cifar10_test.npz (arrays x: uint8 (N, 32, 32, 3) RGB, "
            "y: labels 0-9), or fastai's CIFAR image layout train/<class>/*.png and test/<class>/*.png "
            "(what untar_data(URLs.CIFAR) extracts)")


@lru_cache(maxsize=1)
def _sample_arrays():
    """The bundled sample, decoded once: uint8 (N, 3, 32, 32) images and uint8 labels, train then valid."""
    if not SAMPLE_PATH.exists():
        raise FileNotFoundError(f"the bundled CIFAR-10 sample is missing from {SAMPLE_PATH}: reinstall eatai, or "
                                "rebuild it with `python -m eatai.data.build_sample --src <folder with the npz files>`")
    arrays = read_arrays(SAMPLE_PATH.read_bytes())
    x, y, n = decode_images(arrays['codes']), arrays['y'], int(arrays['n_train'])
    return x[:n], y[:n], x[n:], y[n:], arrays


def sample_info() -> dict:
    """How the bundled sample was made: sources, seed, codec, and the source indices it took."""
    arrays = _sample_arrays()[-1]
    return {**json.loads(str(arrays['info'])), 'train_index': arrays['train_index'].tolist(),
            'valid_index': arrays['valid_index'].tolist()}


def load_sample():
    """The bundled CIFAR-10 sample (2,000 training, 500 test images, class-balanced) as
    x_train (2000, 3, 32, 32), y_train (2000,), x_valid (500, 3, 32, 32), y_valid (500,):
    float32 images in [0,1], int64 labels. Needs no network and no data folder."""
    x_train, y_train, x_valid, y_valid, _ = _sample_arrays()
    return (torch.from_numpy(x_train).float().div_(255), torch.from_numpy(y_train).long(),
            torch.from_numpy(x_valid).float().div_(255), torch.from_numpy(y_valid).long())


def sample_dls(bs: int = 128, **kwargs) -> DataLoaders:
    """`arrays_dls` over the bundled sample (same batches as over `load_sample()`, from uint8 storage)."""
    x_train, y_train, x_valid, y_valid, _ = _sample_arrays()
    return arrays_dls(*(torch.tensor(a) for a in (x_train, y_train, x_valid, y_valid)), bs=bs, **kwargs)


def _natural_key(path: Path):
    """Sort fastai's `<number>_<class>.png` files by their number, then by path."""
    m = re.match(r'\d+', path.name)
    return (int(m.group()) if m else -1, str(path))


def _read_images(files) -> np.ndarray:
    from PIL import Image

    def read(f):
        with Image.open(f) as im:
            return np.asarray(im.convert('RGB'))

    with ThreadPoolExecutor(8) as pool:
        images = list(pool.map(read, files))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"the images differ in size ({sorted(shapes)[:3]} ...): CIFAR-10 images are 32x32")
    return np.stack(images) if images else np.zeros((0, 32, 32, 3), np.uint8)


def _take(n_items: int, n: int | None, shuffle: bool, name: str) -> np.ndarray | slice:
    """Indices of the first n items, after a fixed-seed shuffle if `shuffle`; all of them when n is None."""
    if n is None:
        return slice(None)
    if not 0 < n <= n_items:
        raise ValueError(f"{name}={n}, but the data hold {n_items} items")
    return np.random.default_rng(SUBSET_SEED).permutation(n_items)[:n] if shuffle else np.arange(n)


def _from_npz(train_file: Path, test_file: Path, n_train, n_valid):
    out = []
    for file, n, shuffle, name in ((train_file, n_train, True, 'n_train'), (test_file, n_valid, False, 'n_valid')):
        with np.load(file, allow_pickle=False) as npz:   # members load lazily: y first, to check n cheaply
            y = npz['y']
            idx = _take(len(y), n, shuffle, name)
            out += [npz['x'][idx], y[idx]]
    return (*out, CIFAR10_CLASSES)


def _from_folders(train_dir: Path, test_dir: Path, n_train, n_valid):
    vocab = tuple(sorted(d.name for d in train_dir.iterdir() if d.is_dir()))
    out = []
    for folder, n, shuffle, name in ((train_dir, n_train, True, 'n_train'), (test_dir, n_valid, False, 'n_valid')):
        files = sorted(get_image_files(folder), key=_natural_key)
        files = [files[i] for i in np.arange(len(files))[_take(len(files), n, shuffle, name)]]
        unknown = {f.parent.name for f in files} - set(vocab)
        if unknown:
            raise ValueError(f"{folder} has images in folders {sorted(unknown)} that {train_dir} lacks")
        out += [_read_images(files), np.array([vocab.index(f.parent.name) for f in files], dtype=np.int64)]
    return (*out, vocab)


def _locate(path: Path):
    """(reader, train, test) for the layout found at `path`, or FileNotFoundError."""
    if not path.exists():
        raise FileNotFoundError(f"no CIFAR-10 data at {path}: the path does not exist. Expected {_LAYOUTS}.")
    if path.is_file():
        raise FileNotFoundError(f"{path} is a file; pass the folder that holds the data. Expected {_LAYOUTS}.")
    trains = sorted(path.glob('cifar10_train*.npz'))
    if path / 'cifar10_train.npz' in trains:   # the full training set wins over subsets beside it
        trains = [path / 'cifar10_train.npz']
    if len(trains) > 1:
        raise ValueError(f"several training files in {path}: {[t.name for t in trains]}; keep one, "
                         "or name the one to use cifar10_train.npz")
    if trains and (path / 'cifar10_test.npz').exists():
        return _from_npz, trains[0], path / 'cifar10_test.npz'
    if (path / 'train').is_dir() and (path / 'test').is_dir():
        return _from_folders, path / 'train', path / 'test'
    raise FileNotFoundError(f"no CIFAR-10 data found in {path}. Expected {_LAYOUTS}.")


def _download() -> Path:
    from fastai.data.external import URLs, fastai_cfg, untar_data
    try:
        where = fastai_cfg().path('data') / 'cifar10'
    except Exception:   # an unreadable fastai config: the message below still says what to do
        where = "fastai's data folder (~/.fastai/data/cifar10)"
    try:
        return untar_data(URLs.CIFAR)
    except Exception as e:
        raise RuntimeError(
            f"CIFAR-10 was not found in {where} and could not be downloaded from {URLs.CIFAR} with fastai's "
            f"untar_data ({type(e).__name__}: {e}). Download it on a machine with network access and pass "
            f"cifar10_dls(path=...) the local copy: {_LAYOUTS}.") from e


def cifar10_dls(bs: int = 128, path=None, n_train: int | None = None, n_valid: int | None = None,
                augment: bool = True, extra=None, n_extra: int | None = None, **kwargs) -> DataLoaders:
    """CIFAR-10 DataLoaders in [0,1] (see `arrays_dls`), read from `path`: a folder with
    cifar10_train*.npz and cifar10_test.npz, or fastai's train/<class>/*.png and test/<class>/*.png;
    None downloads with fastai's `untar_data(URLs.CIFAR)`. n_train takes the first n training
    images after a fixed-seed shuffle, n_valid the first n test images in their stored order.
    extra: Carmon et al.'s 500k extra images (see `load_extra`); each training batch is then
    half standard, half extra, and an epoch is counted over the standard set (paper Sec. 4.3)."""
    path = _download() if path is None else Path(path).expanduser()
    reader, train, test = _locate(path)
    x_train, y_train, x_valid, y_valid, vocab = reader(train, test, n_train, n_valid)
    kwargs.setdefault('vocab', vocab)
    if extra is not None:
        return mixed_dls(x_train, y_train, x_valid, y_valid, *load_extra(extra, n=n_extra), bs=bs, augment=augment,
                         **kwargs)
    return arrays_dls(x_train, y_train, x_valid, y_valid, bs=bs, augment=augment, **kwargs)
