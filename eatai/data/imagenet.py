"""ImageNet DataLoaders from an image folder, augmented as in Engstrom et al.'s robustness
library (the paper's [20], App. A), in [0,1] pixel space: nothing normalises."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.transforms import CategoryMap, IntToFloatTensor
from fastai.torch_core import TensorCategory, TensorImage, default_device, defaults
from fastcore.basics import listify
from fasttransform import Transform
from torchvision import transforms as T
from torchvision.transforms.functional import pil_to_tensor

from .loaders import ArrayDataset, _refuse_normalize

__all__ = ['IMAGENET_PCA', 'Lighting', 'ImageFolderDataset', 'imagenet_transforms', 'imagenet_dls']

SUBSET_SEED = 0   # the fixed shuffle behind `n_train`, `n_valid` and the validation order
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')

# eigenvalues and eigenvectors (columns) of the RGB covariance of ImageNet, as in [20] and AlexNet
IMAGENET_PCA = {'eigval': (0.2175, 0.0188, 0.0045),
                'eigvec': ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))}

_LAYOUT = ("ImageNet as image folders: <path>/train/<wnid>/*.JPEG and <path>/val/<wnid>/*.JPEG, one folder "
           "per class, the same class names in both")
_FLAT_VAL = ("the validation images are not sorted into class folders (ImageNet ships val/ flat, with labels in a "
             "separate file): move each image into val/<wnid>/, e.g. with the valprep.sh script that PyTorch's "
             "ImageNet example links")


class Lighting(Transform):
    """Batch transform: AlexNet-style PCA lighting noise as in [20] (per image, RGB shift
    eigvec @ (alpha * eigval) with alpha ~ N(0, alphastd^2)), clamped to [0,1]. Training set only."""
    split_idx = 0
    order = 15   # after IntToFloatTensor (10): it shifts float pixels

    def __init__(self, alphastd: float = 0.05):
        super().__init__()
        self.alphastd = alphastd
        self.eigval, self.eigvec = torch.tensor(IMAGENET_PCA['eigval']), torch.tensor(IMAGENET_PCA['eigvec'])

    def encodes(self, x: TensorImage):
        alpha = torch.randn(x.shape[0], 3, device=x.device) * self.alphastd                  # (B, 3)
        eigval, eigvec = self.eigval.to(x.device), self.eigvec.to(x.device)
        rgb = (eigvec[None] * (alpha * eigval)[:, None, :]).sum(-1)                           # (B, 3)
        # [20] leaves the result unclamped; eps and the attacks' box need inputs in [0,1]
        return TensorImage((x + rgb[:, :, None, None].to(x.dtype)).clamp(0, 1))


def imagenet_transforms(size: int = 224, augment='engstrom'):
    """(train, valid) PIL transforms: valid resizes to size*8/7 (256 for 224) and centre-crops `size`;
    train is 'engstrom' (RandomResizedCrop, flip, ColorJitter 0.1; add `Lighting` on the batch),
    'crop_flip' (RandomResizedCrop and flip only), or False (as valid)."""
    valid = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size)])
    if augment is False or augment is None:
        return valid, valid
    crop_flip = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    if augment == 'crop_flip':
        return T.Compose(crop_flip), valid
    if augment == 'engstrom':
        return T.Compose(crop_flip + [T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1)]), valid
    raise ValueError(f"augment must be 'engstrom', 'crop_flip' or False, got {augment!r}")


class ImageFolderDataset(ArrayDataset):
    """Image files with int64 labels; an item is (TensorImage uint8 (3, H, W), TensorCategory),
    read as RGB and passed through the PIL transform `tfm`."""

    def __init__(self, files, y: torch.Tensor, vocab: CategoryMap, tfm, split_idx: int):
        super().__init__(None, y, vocab, split_idx)
        self.files, self.tfm = list(files), tfm

    def __getitem__(self, idx):
        from PIL import Image
        with Image.open(self.files[idx]) as im:
            x = pil_to_tensor(self.tfm(im.convert('RGB')))
        return TensorImage(x), TensorCategory(self.y[idx])


def _images_in(folder: Path) -> list[str]:
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)


def _scan(folder: Path, vocab=None):
    """(files, labels, vocab) of one split; the classes are the subfolders (those of `vocab` when given)."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        flat = _FLAT_VAL if _images_in(folder) and folder.name == 'val' else f"Expected {_LAYOUT}"
        raise FileNotFoundError(f"no class folders in {folder}: {flat}.")
    vocab = classes if vocab is None else vocab
    unknown = sorted(set(classes) - set(vocab))
    if unknown:
        raise FileNotFoundError(f"{folder} has class folders {unknown[:5]} that the training folder lacks. "
                                f"Expected {_LAYOUT}.")
    files, labels = [], []
    for label, name in enumerate(vocab):
        found = _images_in(folder / name) if name in classes else []
        files += found
        labels += [label] * len(found)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {folder}. "
                                f"Expected {_LAYOUT}.")
    return files, np.asarray(labels, dtype=np.int64), vocab


def _order(n_items: int, n: int | None, name: str) -> np.ndarray:
    """A fixed-seed permutation of the items, cut to the first n (all when n is None)."""
    if n is not None and not 0 < n <= n_items:
        raise ValueError(f"{name}={n}, but the folder holds {n_items} images")
    return np.random.default_rng(SUBSET_SEED).permutation(n_items)[:n]


def _locate(path: Path) -> tuple[Path, Path]:
    if not path.exists():
        raise FileNotFoundError(f"no ImageNet data at {path}: the path does not exist. Expected {_LAYOUT}.")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is a file; pass the folder that holds train/ and val/. Expected {_LAYOUT}.")
    missing = [name for name in ('train', 'val') if not (path / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"no {' or '.join(m + '/' for m in missing)} folder in {path}. Expected {_LAYOUT}.")
    return path / 'train', path / 'val'


def imagenet_dls(path, bs: int = 256, size: int = 224, n_train: int | None = None, n_valid: int | None = None,
                 augment='engstrom', num_workers: int | None = None, device=None, val_bs: int | None = None,
                 drop_last: bool = False, batch_tfms=None, **kwargs) -> DataLoaders:
    """ImageNet DataLoaders in [0,1] from `path`/train/<wnid>/* and `path`/val/<wnid>/*.

    Batches are (TensorImage float (B, 3, size, size) in [0,1], TensorCategory int64 (B,)); `dls.vocab`
    holds the wnids. Training follows [20] (see `imagenet_transforms`; 'engstrom' adds `Lighting`);
    validation resizes and centre-crops, unshuffled, in a fixed-seed random order so that its first
    n items span the classes. n_train / n_valid keep the first n of a fixed-seed shuffle.
    num_workers defaults to fastai's (all cores up to 16); other keyword arguments go to both TfmdDLs.
    """
    train_dir, valid_dir = _locate(Path(path).expanduser())
    train_files, train_y, classes = _scan(train_dir)
    valid_files, valid_y, _ = _scan(valid_dir, classes)
    vocab = CategoryMap(list(classes), sort=False)
    train_tfm, valid_tfm = imagenet_transforms(size, augment)

    def dataset(files, y, n, name, tfm, split_idx):
        idx = _order(len(files), n, name)
        return ImageFolderDataset([files[i] for i in idx], torch.from_numpy(y[idx]), vocab, tfm, split_idx)

    extra = listify(batch_tfms)
    _refuse_normalize(extra, 'batch_tfms')
    device = default_device() if device is None else device
    num_workers = min(16, defaults.cpus) if num_workers is None else num_workers
    common = dict(device=device, num_workers=num_workers, **kwargs)
    lighting = [Lighting()] if augment == 'engstrom' else []
    train = TfmdDL(dataset(train_files, train_y, n_train, 'n_train', train_tfm, 0), bs=bs, shuffle=True,
                   drop_last=drop_last, after_batch=[IntToFloatTensor()] + lighting + extra, **common)
    valid = TfmdDL(dataset(valid_files, valid_y, n_valid, 'n_valid', valid_tfm, 1), bs=val_bs or bs, shuffle=False,
                   after_batch=[IntToFloatTensor()] + extra, **common)
    return DataLoaders(train, valid, device=device)
