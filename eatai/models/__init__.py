"""Architectures (registered with timm on import), normalisation inside the model, checkpoints."""
from . import cifar_cnn  # noqa: F401  registers the architectures with timm
from .checkpoint import build_model, is_eatai_checkpoint, load_checkpoint, save_checkpoint
from .normalize import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Normalized

__all__ = ['Normalized', 'build_model', 'save_checkpoint', 'load_checkpoint', 'is_eatai_checkpoint',
           'CIFAR10_MEAN', 'CIFAR10_STD', 'IMAGENET_MEAN', 'IMAGENET_STD']
