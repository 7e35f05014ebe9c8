"""Data in [0,1] pixel space, never normalised: CIFAR-10 DataLoaders, the bundled sample,
the paper's batch augmentation and the check that refuses normalising DataLoaders."""
from .augment import PadCropFlip, pad_crop_flip
from .cifar import SAMPLE_PATH, cifar10_dls, load_sample, sample_dls, sample_info
from .extra import MixedDataset, MixedDL, load_extra, mixed_dls
from .imagenet import IMAGENET_PCA, ImageFolderDataset, Lighting, imagenet_dls, imagenet_transforms
from .loaders import CIFAR10_CLASSES, ArrayDataset, ArrayDL, arrays_dls, check_dls, first_items

__all__ = ['CIFAR10_CLASSES', 'arrays_dls', 'sample_dls', 'cifar10_dls', 'load_sample', 'sample_info', 'check_dls',
           'SAMPLE_PATH', 'PadCropFlip', 'pad_crop_flip', 'ArrayDataset', 'ArrayDL',
           'imagenet_dls', 'imagenet_transforms', 'ImageFolderDataset', 'Lighting', 'IMAGENET_PCA',
           'load_extra', 'mixed_dls', 'MixedDataset', 'MixedDL', 'first_items']
