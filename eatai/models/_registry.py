"""Helpers for registering eatai architectures with timm."""
from __future__ import annotations

import functools

import torch

from .normalize import Normalized

__all__ = ['model_kwargs', 'hub_loadable']

# keyword arguments timm's create_model passes to every entry point ('pretrained_model_args': the model_args of
# a `local-dir:` or `hf-hub:` config, passed as keywords as well)
_TIMM_PLUMBING = {'pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'features_only', 'pretrained_strict',
                  'pretrained_model_args'}
_WEIGHT_SOURCES = ('local-dir', 'hf-hub')
_RANDOM_INIT = {'eatai_normalized'}   # timm's architectures may keep tensors outside their state dict


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


def hub_loadable(entry):
    """Decorate a timm entry point (under `@register_model`) so that it reads exported folders: model arguments
    `input_mean`/`input_std` put `Normalized` around the model (an export's weights hold its normalisation, so
    it takes [0,1] inputs), and `pretrained=True` loads the weights that timm's `local-dir:<folder>` or
    `hf-hub:<org>/<name>` config points at (`eatai.models.hub` writes such folders)."""
    @functools.wraps(entry)
    def create(pretrained: bool = False, **kwargs):
        mean, std = kwargs.pop('input_mean', None), kwargs.pop('input_std', None)
        if (mean is None) != (std is None):
            raise ValueError(f"{entry.__name__}: input_mean and input_std go together, got {mean!r} and {std!r}")
        cfg = kwargs.get('pretrained_cfg')
        cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg
        if pretrained and not (isinstance(cfg, dict) and cfg.get('source') in _WEIGHT_SOURCES):
            raise ValueError(f"{entry.__name__} has no pretrained weights of its own: load an exported folder "
                             "(timm.create_model('local-dir:<folder>' or 'hf-hub:<org>/<name>', pretrained=True)), "
                             "a zoo id or a checkpoint with eatai.models.load_model")
        def build():
            model = entry(pretrained=False, **kwargs)
            return model if mean is None else Normalized(model, mean, std)

        model = None
        if pretrained and entry.__name__ not in _RANDOM_INIT:   # the weights replace every tensor: no random init
            with torch.device('meta'):
                model = build()
            tensors = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
            # unless a tensor is outside the state dict or a load hook reads the model's own values (DMWideResNet's)
            hooked = any(m._load_state_dict_pre_hooks for m in model.modules())
            fills = tensors <= model.state_dict().keys() and not hooked
            model = model.to_empty(device=torch.get_default_device()) if fills else None
        model = build() if model is None else model
        if pretrained:
            from timm.models import load_pretrained
            load_pretrained(model, pretrained_cfg=cfg, strict=kwargs.get('pretrained_strict', True),
                            cache_dir=kwargs.get('cache_dir'))
            model.pretrained_cfg = model.default_cfg = dict(cfg)   # timm's data config reads the export's
        return model
    create.hub_loadable = True
    return create
