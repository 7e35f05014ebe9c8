"""Helpers for registering eatai architectures with timm."""
from __future__ import annotations

__all__ = ['model_kwargs']

# keyword arguments timm's create_model passes to every entry point
_TIMM_PLUMBING = {'pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'features_only', 'pretrained_strict'}


def model_kwargs(name: str, kwargs: dict, allowed: set) -> dict:
    """The kwargs a model constructor accepts; timm's own plumbing is dropped, anything else refused."""
    out = {}
    for key, value in kwargs.items():
        if key in allowed:
            out[key] = value
        elif key in _TIMM_PLUMBING or value is None:
            continue
        else:
            raise TypeError(f"{name} got an unexpected argument {key}={value!r}; it accepts {sorted(allowed)}")
    return out
