"""Activation functions by name, shared by the CIFAR architectures."""
from __future__ import annotations

from torch import nn

__all__ = ['ACTIVATIONS', 'make_activation']

ACTIVATIONS = ('relu', 'softplus', 'swish')


def make_activation(name: str) -> nn.Module:
    """A fresh activation module: 'relu', 'softplus' (beta=1, as in the paper's PreAct ResNet-18) or 'swish' (= SiLU)."""
    if name == 'relu':
        return nn.ReLU(inplace=True)  # in place is safe: it always follows a BatchNorm whose output nothing else reads
    if name == 'softplus':
        return nn.Softplus()
    if name == 'swish':
        return nn.SiLU()  # DeepMind's custom Swish autograd function computes the same values and gradients
    raise ValueError(f"unknown activation {name!r}: use one of {ACTIVATIONS}")
