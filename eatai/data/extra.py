"""The extra data of Carmon et al. [8] (500k pseudo-labelled 32x32 images) and training
DataLoaders whose batches are half standard, half extra images, as in the paper's fine-tuning
of models trained with extra data (Sec. 4.3): an epoch is one pass over the standard set."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.data.transforms import CategoryMap
from fastai.torch_core import TensorCategory, TensorImage

from .loaders import CIFAR10_CLASSES, ArrayDataset, ArrayDL, _images, _labels, arrays_dls

__all__ = ['load_extra', 'MixedDataset', 'MixedDL', 'mixed_dls']

SUBSET_SEED = 0   # the fixed shuffle behind `load_extra(n=...)`

# (images, labels) key pairs: Carmon et al.'s pickle, the npz files of generated data
# (Gowal et al., Rebuffi et al., Wang et al.), and eatai's own npz naming
_KEYS = (('data', 'extrapolated_targets'), ('image', 'label'), ('x', 'y'))
_SOURCE = ("Carmon et al.'s ti_500K_pseudo_labeled.pickle (https://github.com/yaircarmon/semisup-adv), "
           "a dict with 'data' (N, 32, 32, 3) uint8 and 'extrapolated_targets' (N,)")
# what a pickle of numpy arrays needs; anything else could run code while unpickling
_SAFE_GLOBALS = {('numpy._core.multiarray', '_reconstruct'), ('numpy._core.multiarray', 'scalar'),
                 ('numpy._core.numeric', '_frombuffer'), ('numpy', 'ndarray'), ('numpy', 'dtype'),
                 ('_codecs', 'encode'), ('collections', 'OrderedDict')}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only."""

    def find_class(self, module, name):
        if module.startswith('numpy.core.'):   # pickles from numpy 1.x: the module moved to numpy._core
            module = 'numpy._core.' + module[len('numpy.core.'):]
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"the file asks to load {module}.{name}; an extra-data pickle may hold only "
                                         "dicts, lists and numpy arrays (other objects can run code when unpickled)")
        return super().find_class(module, name)


def _read(path: Path) -> dict:
    if path.suffix == '.npz':
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    with open(path, 'rb') as f:
        obj = _ArrayUnpickler(f).load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a dict of arrays. Expected {_SOURCE}.")
    return obj


def load_extra(path, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Extra training images and their (pseudo-)labels: x uint8 (N, 3, 32, 32), y int64 (N,).
    Reads Carmon et al.'s pickle (keys data, extrapolated_targets) or an .npz with image/label
    or x/y. n keeps n of them, chosen with a fixed seed, in their stored order (all when None)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no extra data at {path}{' (a folder)' if path.is_dir() else ''}. "
                                f"Download {_SOURCE}, or pass an .npz with arrays image/label.")
    arrays = _read(path)
    keys = next((k for k in _KEYS if k[0] in arrays and k[1] in arrays), None)
    if keys is None:
        raise ValueError(f"{path} holds keys {sorted(map(str, arrays))[:10]}; expected one of the pairs "
                         f"{', '.join('/'.join(k) for k in _KEYS)}")
    x, y = _images(arrays[keys[0]], keys[0]), np.asarray(arrays[keys[1]])
    if n is not None:
        if not 0 < n <= len(x):
            raise ValueError(f"n={n}, but {path} holds {len(x)} images")
        idx = torch.from_numpy(np.sort(np.random.default_rng(SUBSET_SEED).permutation(len(x))[:n]))
        x, y = x[idx], y[idx.numpy()]
    return x, _labels(y, len(x), int(y.max(initial=0)) + 1, keys[1])


class MixedDataset(ArrayDataset):
    """Standard images x, y followed by extra images x_extra, y_extra in one index space:
    index i < n_standard is standard image i, index n_standard + j is extra image j."""

    def __init__(self, x, y, x_extra, y_extra, vocab: CategoryMap, split_idx: int = 0):
        super().__init__(x, y, vocab, split_idx)
        self.x_extra, self.y_extra = x_extra, y_extra

    @property
    def n_standard(self) -> int:
        """Number of standard images (the extra ones follow them)."""
        return len(self.y)

    def __len__(self):
        return len(self.y) + len(self.y_extra)

    def __getitem__(self, idx):
        n = self.n_standard
        if not isinstance(idx, torch.Tensor):   # one item (fastai's first pass)
            return super().__getitem__(idx) if idx < n else (TensorImage(self.x_extra[idx - n]),
                                                               TensorCategory(self.y_extra[idx - n]))
        extra = idx >= n
        x = self.x.new_empty((len(idx), *self.x.shape[1:]))
        y = self.y.new_empty(len(idx))
        x[~extra], y[~extra] = self.x[idx[~extra]], self.y[idx[~extra]]
        x[extra], y[extra] = self.x_extra[idx[extra] - n], self.y_extra[idx[extra] - n]
        return TensorImage(x), TensorCategory(y)


class MixedDL(ArrayDL):
    """An `ArrayDL` over a `MixedDataset` whose batches are bs/2 standard images followed by as many
    extra ones. An epoch passes once over the standard set (ceil(n_standard / (bs/2)) batches, the
    last one smaller unless drop_last); the extra images are drawn without replacement, carrying on
    across epochs and reshuffled when all have been used."""

    def __init__(self, dataset: MixedDataset, bs: int = 128, **kwargs):
        if bs % 2:
            raise ValueError(f"bs={bs}: a batch is half standard, half extra images, so bs must be even")
        kwargs['n'] = 2 * dataset.n_standard   # what fastai's len() counts: every standard image once, as many extra
        super().__init__(dataset, bs=bs, **kwargs)
        self._extra_order, self._extra_pos = [], 0

    def _draw_extra(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self._extra_pos == len(self._extra_order):
                order = list(range(len(self.dataset.y_extra)))
                self._extra_order, self._extra_pos = (self.shuffle_fn(order) if self.shuffle else order), 0
            take = self._extra_order[self._extra_pos:self._extra_pos + k - len(out)]
            out += take
            self._extra_pos += len(take)
        return out

    def get_idxs(self):
        # runs in the main process (fastai), so the position in the extra images survives worker processes
        n, half = self.dataset.n_standard, self.bs // 2
        standard = list(range(n))
        standard = self.shuffle_fn(standard) if self.shuffle else standard
        idxs = []
        for start in range(0, n, half):
            chunk = standard[start:start + half]
            if len(chunk) < half and self.drop_last:
                break
            idxs += chunk + [n + j for j in self._draw_extra(len(chunk))]
        return idxs


def mixed_dls(x_train, y_train, x_valid, y_valid, x_extra, y_extra, bs: int = 128, augment: bool = True,
              vocab=CIFAR10_CLASSES, **kwargs) -> DataLoaders:
    """`arrays_dls` whose training batches are half standard (x_train), half extra (x_extra) images,
    standard first (see `MixedDL`), both augmented alike; validation on x_valid, unchanged.
    Images uint8, or float in [0,1]; NCHW or NHWC. Other keyword arguments go to `arrays_dls`."""
    if bs % 2:
        raise ValueError(f"bs={bs}: a batch is half standard, half extra images, so bs must be even")
    x_train, x_valid, x_extra = _images(x_train, 'x_train'), _images(x_valid, 'x_valid'), _images(x_extra, 'x_extra')
    if x_extra.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"extra images {tuple(x_extra.shape[1:])} and training images {tuple(x_train.shape[1:])} "
                         "differ in shape")
    if len({x.dtype for x in (x_train, x_valid, x_extra)}) > 1:   # uint8 and float mixed: all floats in [0,1]
        x_train, x_valid, x_extra = [x.float().div_(255) if x.dtype == torch.uint8 else x
                                     for x in (x_train, x_valid, x_extra)]
    if vocab is None:   # names '0', '1', ... for every label seen, extra labels included
        ys = [torch.as_tensor(np.asarray(y)) for y in (y_train, y_valid, y_extra)]
        vocab = [str(i) for i in range(int(max(y.max() for y in ys if len(y))) + 1)]
    dls = arrays_dls(x_train, y_train, x_valid, y_valid, bs=bs, augment=augment, vocab=vocab, **kwargs)
    train = dls.train.dataset
    y_extra = _labels(y_extra, len(x_extra), len(train.vocab), 'y_extra')
    mixed = dls.train.new(MixedDataset(train.x, train.y, x_extra, y_extra, train.vocab), cls=MixedDL)
    return DataLoaders(mixed, dls.valid, device=dls.device)
