"""Checks every evaluation makes before trusting its inputs: the model's device, logits not probabilities, n."""
from __future__ import annotations

import torch
from torch import nn

from .._utils.counts import check_n
from ..attacks.guards import looks_like_probabilities

__all__ = ['model_device', 'check_logits', 'check_n']


def model_device(model: nn.Module, device=None) -> torch.device:
    """`device` when given, else where the model's first parameter or buffer lives (the CPU for none)."""
    if device is not None:
        return torch.device(device)
    return next((t.device for t in (*model.parameters(), *model.buffers())), torch.device('cpu'))


def check_logits(logits: torch.Tensor) -> None:
    """ValueError if a model's (B, K) outputs look like probabilities (in [0,1], rows summing to 1)."""
    if looks_like_probabilities(logits):
        raise ValueError("the model returns probabilities (outputs in [0,1] summing to 1), not logits: "
                         "the attacks' losses need logits and would overestimate robustness; remove the "
                         "final softmax (log-probabilities are fine)")
