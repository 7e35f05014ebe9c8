"""Vision transformers for 32x32 inputs, as robust-training papers use them, registered with timm.

- `vit_small_patch4_32`: timm's ViT-S (width 384, depth 12, 6 heads) on 4x4 patches of a 32x32
  image, 64 tokens + the class token. The same model as
  `timm.create_model('vit_small_patch16_224', img_size=32, patch_size=4)`.
- `xcit_small_12_p4_32` (and `_medium_`, `_large_`): the XCiT-S12/M12/L12 of Debenedetti et al.
  (2022, "A Light Recipe to Train Robust Vision Transformers"), RobustBench's
  `Debenedetti2022Light_XCiT-*` models. Their patch stem is timm's 16-pixel convolutional stem
  (four 3x3 convs, BatchNorm, GELU) with the first and third convs set to stride 1, so a patch is
  4x4 pixels. That keeps the parameter layout of the ImageNet model (so the CIFAR checkpoints load
  with timm's key names) while the 32x32 image gives an 8x8 token grid.

Normalisation stays outside the model (`Normalized`); `pretrained_cfg` carries the CIFAR-10 mean/std.
"""
from __future__ import annotations

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from timm.models.xcit import Xcit

from ._registry import hub_loadable, model_kwargs
from .normalize import CIFAR10_MEAN, CIFAR10_STD

__all__ = ['check_patch_size', 'vit_small_patch4_32', 'xcit_small_12_p4_32', 'xcit_medium_12_p4_32',
           'xcit_large_12_p4_32']

# the keyword arguments tests and users may change (tiny widths in tests, another class count)
_VIT_KWARGS = {'num_classes', 'img_size', 'patch_size', 'embed_dim', 'depth', 'num_heads', 'drop_path_rate',
               'in_chans'}
_XCIT_KWARGS = {'num_classes', 'embed_dim', 'depth', 'num_heads', 'drop_path_rate', 'in_chans'}


def check_patch_size(img_size, patch_size, name: str = 'the model') -> None:
    """Refuse an image size that the patch size does not divide (timm would drop the remainder pixels)."""
    sizes = img_size if isinstance(img_size, (tuple, list)) else (img_size, img_size)
    patches = patch_size if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)
    if any(int(s) % int(p) for s, p in zip(sizes, patches)):
        raise ValueError(f"{name}: image size {tuple(sizes)} is not a multiple of patch size {tuple(patches)}; "
                         "pick img_size and patch_size so that patches tile the image (e.g. img_size=32, "
                         "patch_size=4)")


def _cfg(num_classes: int) -> dict:
    return dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, input_size=(3, 32, 32), num_classes=num_classes)


@register_model
@hub_loadable
def vit_small_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-S/4 for 32x32 inputs (timm's ViT-S with 4x4 patches)."""
    args = dict(img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6, num_classes=10)
    args.update(model_kwargs('vit_small_patch4_32', kwargs, _VIT_KWARGS))
    check_patch_size(args['img_size'], args['patch_size'], 'vit_small_patch4_32')
    model = VisionTransformer(**args)
    model.pretrained_cfg = _cfg(args['num_classes'])
    return model


def _xcit_p4(name: str, pretrained: bool, kwargs: dict, **defaults) -> Xcit:
    args = dict(num_classes=10, eta=1.0, tokens_norm=True, **defaults)
    args.update(model_kwargs(name, kwargs, _XCIT_KWARGS))
    if args['embed_dim'] % 8:   # the conv stem's first width is embed_dim / 8
        raise ValueError(f"{name}: embed_dim must be a multiple of 8, got {args['embed_dim']}")
    # built as the 16-pixel ImageNet model on a 32x32 image (16 divides 32), then two strides set to 1
    model = Xcit(img_size=32, patch_size=16, **args)
    stem = model.patch_embed.proj   # conv3x3 blocks (Conv2d, BatchNorm2d) at 0, 2, 4, 6; GELUs between
    for index in (0, 2):            # stride 2^4 = 16 -> 2^2 = 4
        stem[index][0].stride = (1, 1)
    model.patch_embed.patch_size, model.patch_embed.num_patches = 4, 64
    model.pretrained_cfg = _cfg(args['num_classes'])
    return model


@register_model
@hub_loadable
def xcit_small_12_p4_32(pretrained: bool = False, **kwargs) -> Xcit:
    """XCiT-S12/4 for 32x32 inputs (Debenedetti2022Light_XCiT-S12)."""
    return _xcit_p4('xcit_small_12_p4_32', pretrained, kwargs, embed_dim=384, depth=12, num_heads=8)


@register_model
@hub_loadable
def xcit_medium_12_p4_32(pretrained: bool = False, **kwargs) -> Xcit:
    """XCiT-M12/4 for 32x32 inputs (Debenedetti2022Light_XCiT-M12)."""
    return _xcit_p4('xcit_medium_12_p4_32', pretrained, kwargs, embed_dim=512, depth=12, num_heads=8)


@register_model
@hub_loadable
def xcit_large_12_p4_32(pretrained: bool = False, **kwargs) -> Xcit:
    """XCiT-L12/4 for 32x32 inputs (Debenedetti2022Light_XCiT-L12)."""
    return _xcit_p4('xcit_large_12_p4_32', pretrained, kwargs, embed_dim=768, depth=12, num_heads=16)
