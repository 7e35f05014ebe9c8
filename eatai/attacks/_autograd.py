"""The input gradient every attack takes, safe under fp16 autocast."""
import torch

__all__ = ['input_grad']


def input_grad(loss: torch.Tensor, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """d(sum of the per-example `loss`)/dx, parameters untouched (autograd.grad, not backward).

    The loss is multiplied by `scale` first, as a GradScaler would, so that gradients of fp16
    activations do not underflow; x is fp32, so dividing its gradient back is safe. Every
    attack direction (sign, normalised, top-k) is invariant to this scaling anyway.
    """
    grad, = torch.autograd.grad(loss.sum() * scale, x)
    return grad.detach() / scale
