"""fastai DataLoaders over images held in memory, in [0,1] pixel space, and the check that
refuses DataLoaders which normalise: eps is measured in pixel space, so normalisation
belongs inside the model."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.transforms import Category, CategoryMap, IntToFloatTensor, Normalize
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import TensorCategory, TensorImage, default_device
from fastcore.basics import listify

from .._utils.counts import check_n
from .augment import PadCropFlip

__all__ = ['CIFAR10_CLASSES', 'ArrayDataset', 'ArrayDL', 'arrays_dls', 'check_dls', 'first_batch', 'first_items']

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')

_FIX = ("eps is measured in [0,1] pixel space. Remove Normalize from batch_tfms (fastai's vision_learner and "
        "ImageDataLoaders add it) and put the normalisation inside the model: "
        "robust_learner(..., mean=..., std=...).")


class ArrayDataset:
    """Images x (N, C, H, W), uint8 or float in [0,1], with int64 labels y (N,), indexable by an int
    or by a tensor of indices (a whole batch at once)."""
    n_inp = 1

    def __init__(self, x: torch.Tensor, y: torch.Tensor, vocab: CategoryMap, split_idx: int):
        self.x, self.y, self.vocab, self.split_idx = x, y, vocab, split_idx

    @property
    def c(self) -> int:
        """Number of classes."""
        return len(self.vocab)

    @property
    def loss_func(self):
        """What a fastai Learner uses when given no loss: cross-entropy, as for fastai's `Categorize`."""
        return CrossEntropyLossFlat()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, idx):
        return TensorImage(self.x[idx]), TensorCategory(self.y[idx])

    def decode(self, o, full=True):
        """(image, label) -> (image, class name), so that `show_batch` can title the images."""
        x, y = o
        return x, Category(self.vocab[int(y)])


class ArrayDL(TfmdDL):
    """A `TfmdDL` over an `ArrayDataset` that gathers each batch with one indexing operation:
    no per-item work, no collate. `after_batch` transforms apply as usual; `after_item` and
    `before_batch` (per-item events) do not run."""

    def create_batches(self, samps):
        for idxs in self.chunkify(samps):
            yield self.dataset[torch.as_tensor(list(idxs), dtype=torch.long)]


def _images(x, name: str) -> torch.Tensor:
    """uint8 or float images, (N, C, H, W) or (N, H, W, C) with C in (1, 3) -> contiguous (N, C, H, W)."""
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if x.dim() != 4:
        raise ValueError(f"{name} must hold images (N, C, H, W) or (N, H, W, C), got shape {tuple(x.shape)}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    x = x.detach().cpu().contiguous()
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ValueError(f"{name} must be uint8 (0..255) or float in [0,1], got {x.dtype}")
    x = x.float()
    if x.numel() and not (bool(torch.isfinite(x).all()) and x.min() >= 0 and x.max() <= 1):
        lo, hi = x.min().item(), x.max().item()
        raise ValueError(f"{name} has values outside [0,1] (min {lo:.3g}, max {hi:.3g}): " + _FIX)
    return x


def _labels(y, n: int, n_classes: int, name: str) -> torch.Tensor:
    y = (y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))).detach().cpu()
    if y.dim() != 1 or len(y) != n:
        raise ValueError(f"{name} must have shape ({n},) to match the images, got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got {y.dtype}")
    y = y.long()
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} has labels in [{int(y.min())}, {int(y.max())}], outside [0, {n_classes - 1}] "
                         f"given by the vocab of {n_classes} classes")
    return y


def _refuse_normalize(tfms, where: str):
    for tfm in tfms:
        if isinstance(tfm, Normalize):
            raise ValueError(f"{where} contains fastai's {type(tfm).__name__}: " + _FIX)


def arrays_dls(x_train, y_train, x_valid, y_valid, bs: int = 128, augment: bool = True, device=None,
               num_workers: int = 0, shuffle: bool = True, vocab: Sequence[str] | None = CIFAR10_CLASSES,
               val_bs: int | None = None, drop_last: bool = False, batch_tfms=None, **kwargs) -> DataLoaders:
    """fastai DataLoaders over in-memory images (uint8, or float in [0,1]; NCHW or NHWC) and integer labels.

    Batches are (TensorImage float (B, C, H, W) in [0,1], TensorCategory int64 (B,)) on `device`
    (fastai's default device when None). The training set is shuffled and, with `augment`, gets
    the paper's random crop (4-pixel zero padding) and horizontal flip; the validation set is
    neither shuffled nor augmented. `vocab=None` names the classes '0', '1', ... `batch_tfms` are
    added after ours (never Normalize); other keyword arguments go to both fastai DataLoaders.
    """
    x_train, x_valid = _images(x_train, 'x_train'), _images(x_valid, 'x_valid')
    if x_train.shape[1:] != x_valid.shape[1:]:
        raise ValueError(f"training images {tuple(x_train.shape[1:])} and validation images "
                         f"{tuple(x_valid.shape[1:])} differ in shape")
    if x_train.dtype != x_valid.dtype:   # one uint8, one float: keep both as floats in [0,1]
        x_train, x_valid = [x.float().div_(255) if x.dtype == torch.uint8 else x for x in (x_train, x_valid)]
    if vocab is None:
        ys = [torch.as_tensor(np.asarray(y)) for y in (y_train, y_valid)]
        vocab = [str(i) for i in range(int(max(y.max() for y in ys if len(y))) + 1)]
    vocab = CategoryMap(list(vocab), sort=False)
    y_train = _labels(y_train, len(x_train), len(vocab), 'y_train')
    y_valid = _labels(y_valid, len(x_valid), len(vocab), 'y_valid')

    tfms = ([IntToFloatTensor()] if x_train.dtype == torch.uint8 else []) + ([PadCropFlip()] if augment else [])
    extra = listify(batch_tfms)
    _refuse_normalize(extra, 'batch_tfms')
    device = default_device() if device is None else device
    common = dict(after_batch=tfms + extra, device=device, num_workers=num_workers, **kwargs)
    train = ArrayDL(ArrayDataset(x_train, y_train, vocab, split_idx=0), bs=bs, shuffle=shuffle,
                    drop_last=drop_last, **common)
    valid = ArrayDL(ArrayDataset(x_valid, y_valid, vocab, split_idx=1), bs=val_bs or bs, shuffle=False,
                    drop_last=False, **common)
    return DataLoaders(train, valid, device=device)


def _loader_name(i: int) -> str:
    return ('train', 'valid')[i] if i < 2 else f'loaders[{i}]'


def first_batch(dl):
    """The first batch of a fastai DataLoader or of a plain PyTorch one (fastai accepts both)."""
    return dl.one_batch() if hasattr(dl, 'one_batch') else next(iter(dl))


def first_items(dl, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n (x, y) of a DataLoader as plain tensors on the CPU; ValueError if it holds fewer."""
    check_n(n)
    xs, ys, count = [], [], 0
    for xb, yb in dl:
        xs.append(xb.detach().cpu()), ys.append(yb.detach().cpu())
        count += len(yb)
        if count >= n:
            break
    if not xs:
        raise ValueError("the DataLoader yielded no batches")
    x, y = torch.cat(xs)[:n], torch.cat(ys)[:n]
    check_n(n, len(y))
    return x.as_subclass(torch.Tensor).float(), y.as_subclass(torch.Tensor).long()


def check_dls(dls) -> None:
    """Raise ValueError, saying how to fix it, unless every DataLoader of `dls` yields float inputs
    in [0,1] and none applies fastai's Normalize. Draws one batch from each non-empty DataLoader."""
    loaders = list(getattr(dls, 'loaders', [dls]))
    for i, dl in enumerate(loaders):
        for event in ('after_item', 'before_batch', 'after_batch'):
            tfms = getattr(getattr(dl, event, None), 'fs', [])
            _refuse_normalize(tfms, f"the {_loader_name(i)} DataLoader's {event}")
    for i, dl in enumerate(loaders):
        try:
            if len(dl) == 0:
                continue
        except TypeError:   # an iterable DataLoader of unknown length
            pass
        b = first_batch(dl)
        n_inp = getattr(dl, 'n_inp', 1) if isinstance(b, (tuple, list)) else 1
        for x in (b[:n_inp] if isinstance(b, (tuple, list)) else [b]):
            _check_inputs(x, _loader_name(i))


def _check_inputs(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        dtype = getattr(x, 'dtype', type(x).__name__)
        raise ValueError(f"the {name} DataLoader yields {dtype} inputs; attacks need float images in [0,1]: "
                         "convert them in the pipeline, e.g. IntToFloatTensor() in after_batch (divides by 255)")
    if x.numel() == 0:
        return
    lo, hi = x.min().item(), x.max().item()
    if not (0 <= lo and hi <= 1):   # also catches NaN
        raise ValueError(f"the {name} DataLoader yields inputs in [{lo:.3g}, {hi:.3g}], outside [0,1]: " + _FIX)
