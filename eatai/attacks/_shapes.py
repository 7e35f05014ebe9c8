"""Shape and dtype helpers shared by the attacks."""
import torch

__all__ = ['per_example', 'at_least_fp32']


def per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1), broadcastable against `like` (B, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32 or wider: fp16/bf16 (autocast) values are upcast, float64 is kept."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
