"""Shape helper shared by the attacks."""
import torch

__all__ = ['per_example']


def per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1), broadcastable against `like` (B, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))
