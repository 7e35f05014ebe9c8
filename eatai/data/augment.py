"""The paper's CIFAR augmentation (random crop with 4-pixel zero padding, horizontal flip),
vectorised on the batch so it runs on the accelerator with no per-image work."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.torch_core import TensorImage
from fasttransform import Transform

__all__ = ['pad_crop_flip', 'PadCropFlip']


def pad_crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
                  pad: int = 4) -> torch.Tensor:
    """Zero-pad x (B, C, H, W) by `pad`, crop (H, W) at offsets top, left (B,) in [0, 2*pad],
    then mirror left-right the images where flip (B,) is True. Returns (B, C, H, W)."""
    b, c, h, w = x.shape
    x = x.as_subclass(torch.Tensor)                                   # plain tensor: no fastai type dispatch
    padded = F.pad(x, (pad, pad, pad, pad))                          # (B, C, H+2p, W+2p), zeros outside
    rows = top[:, None] + torch.arange(h, device=x.device)           # (B, H)
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + left[:, None]   # (B, W); flip after the crop
    batch, channel = torch.arange(b, device=x.device), torch.arange(c, device=x.device)
    return padded[batch[:, None, None, None], channel[:, None, None], rows[:, None, :, None], cols[:, None, None, :]]


class PadCropFlip(Transform):
    """Batch transform: per image, a random `pad_crop_flip` (crop offset uniform, flip with probability `p_flip`).
    Training set only (`split_idx=0`), so validation batches stay clean and deterministic."""
    split_idx = 0
    # before IntToFloatTensor (10): moving uint8 pixels is 4x cheaper than float32 ones, and the
    # zero padding is black either way
    order = 5

    def __init__(self, pad: int = 4, p_flip: float = 0.5):
        super().__init__()
        self.pad, self.p_flip = pad, p_flip

    def encodes(self, x: TensorImage):
        b = x.shape[0]
        # drawn on x's device from the global torch generator: reproducible under torch.manual_seed
        top = torch.randint(0, 2 * self.pad + 1, (b,), device=x.device)
        left = torch.randint(0, 2 * self.pad + 1, (b,), device=x.device)
        flip = torch.rand(b, device=x.device) < self.p_flip
        return TensorImage(pad_crop_flip(x, top, left, flip, self.pad))
