"""Architectures (registered with timm on import), normalisation inside the model, checkpoints."""
from . import (
           cifar_cnn,  # noqa: F401  registers the architectures with timm
           preact_resnet,  # noqa: F401
           resnet_cifar,  # noqa: F401
           vit_cifar,  # noqa: F401
           wide_resnet,  # noqa: F401
)
from .checkpoint import build_model, is_eatai_checkpoint, load_checkpoint, save_checkpoint
from .hub import export_model, load_export  # also registers eatai_normalized with timm
from .loading import load_model, load_robustbench
from .weights import load_state_dict_file, load_weights
from .normalize import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Normalized
from .zoo import ZOO, ZooEntry, get_entry, load_zoo_model, zoo_download, zoo_entries

__all__ = ['Normalized', 'build_model', 'save_checkpoint', 'load_checkpoint', 'is_eatai_checkpoint',
           'CIFAR10_MEAN', 'CIFAR10_STD', 'IMAGENET_MEAN', 'IMAGENET_STD',
           'load_state_dict_file', 'load_weights', 'load_robustbench', 'load_model',
           'ZOO', 'ZooEntry', 'get_entry', 'load_zoo_model', 'zoo_download', 'zoo_entries',
           'export_model', 'load_export']
