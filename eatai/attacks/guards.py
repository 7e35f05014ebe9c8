"""What every attack checks and restores: valid inputs, eval mode, untouched model state."""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ['eval_mode', 'check_batch', 'check_labels', 'check_model_outputs', 'looks_like_probabilities',
           'warn_zero_gradients', 'zero_gradients', 'warn_zero_count', 'check_smoothness_and_lr']


@contextmanager
def eval_mode(model: nn.Module):
    """Put every module in eval mode (BatchNorm statistics frozen, dropout off) and restore
    each module's own train/eval flag afterwards, even if the attack raises."""
    flags = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    if isinstance(model, nn.Module):
        model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def check_batch(x: torch.Tensor, y: torch.Tensor) -> int | None:
    """Raise ValueError unless x is a float batch in [0,1] and y matching integer labels.

    Returns the largest label, for `check_labels` (None if x is empty): every value checked is
    read back from the device in one host sync."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor in [0,1], got dtype {x.dtype}: divide uint8 images by 255")
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (B, ...), got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    if x.numel() == 0:
        return None
    # labels in float64 are exact below 2**53
    values = (torch.isfinite(x).all(), x.min(), x.max(), y.min(), y.max())
    finite, lo, hi, y_min, y_max = torch.stack([v.to(torch.float64) for v in values]).tolist()
    if not finite:
        raise ValueError("x contains NaN or infinite values")
    if lo < 0 or hi > 1:
        raise ValueError(
            f"inputs must lie in [0,1] pixel space (got min {lo:.3g}, max {hi:.3g}): eps is measured there. "
            "If the data are normalised, remove Normalize from the data pipeline and put the "
            "normalisation inside the model instead.")
    if y_min < 0:
        raise ValueError(f"labels must be >= 0, got {int(y_min)}")
    return int(y_max)


def check_labels(y: torch.Tensor, logits: torch.Tensor, y_max: int | None = None) -> None:
    """Raise ValueError if the model's output is not (B, K) logits covering the labels.

    y_max: the largest label if known (from `check_batch`); None reads it from y (a host sync)."""
    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"the model must return logits of shape ({y.shape[0]}, n_classes), got {tuple(logits.shape)}")
    if not y.numel():
        return
    if y_max is None:
        y_max = int(y.max())
    if y_max >= logits.shape[1]:
        raise ValueError(f"label {y_max} is out of range for a model with {logits.shape[1]} outputs")


def looks_like_probabilities(out: torch.Tensor) -> bool:
    """True if (B, K) outputs lie in [0,1] and every row sums to 1: a softmax, not logits."""
    if out.dim() != 2 or out.numel() == 0:
        return False
    return bool(((out >= 0) & (out <= 1)).all()) and \
        bool(torch.allclose(out.float().sum(1), torch.ones(len(out), device=out.device), atol=1e-4))


def check_model_outputs(model: nn.Module, x: torch.Tensor) -> None:
    """Warn (as AutoAttack does) if the model returns probabilities instead of logits, or is
    random in eval mode (dropout left on, noise layers): attacks on it would mislead."""
    with eval_mode(model), torch.no_grad():
        first, second = model(x), model(x)
    if looks_like_probabilities(first):
        warnings.warn("the model's outputs look like probabilities (in [0,1], summing to 1): attacks and the "
                      "cross-entropy need logits, remove the final softmax", stacklevel=2)
    if not torch.allclose(first, second, atol=1e-5, rtol=1e-4):
        warnings.warn("the model gives different outputs for the same input in eval mode: a randomised model "
                      "makes attack results unreliable (AutoAttack's version='rand' handles such models)", stacklevel=2)


def zero_gradients(grad: torch.Tensor) -> torch.Tensor:
    """How many examples have an all-zero input gradient, as a 0-d tensor (no host sync)."""
    return (grad.flatten(1).abs().amax(dim=1) == 0).sum()


def warn_zero_gradients(grad: torch.Tensor) -> None:
    """Warn if some examples have an all-zero input gradient: a sign of gradient masking, on
    which gradient attacks overestimate robustness."""
    warn_zero_count(zero_gradients(grad), len(grad), stacklevel=4)


def warn_zero_count(n_zero: torch.Tensor, n: int, stacklevel: int = 3) -> None:
    """`warn_zero_gradients` from a count taken before by `zero_gradients` on n examples; reads the
    count back (one host sync). The warning points at the line `stacklevel` frames up."""
    n_zero = int(n_zero)
    if n_zero:
        warnings.warn(f"{n_zero} of {n} examples have a zero input gradient: the model may mask gradients "
                      "(e.g. saturated or quantised outputs); robust accuracy from gradient attacks may be "
                      "overestimated", stacklevel=stacklevel)


def check_smoothness_and_lr(smoothness, lr) -> None:
    """The penalty weight and Adam's step of the attacks that optimise a smooth field (StAdv, ReColorAdv)."""
    if not (smoothness >= 0 and math.isfinite(smoothness)):
        raise ValueError(f"smoothness must be a finite number >= 0, got {smoothness!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
