"""Building models by name and eatai's own checkpoint format (architecture + weights + normalisation),
as a torch `.pt` file (the default) or a `.safetensors` file (no pickle: tensors plus JSON metadata)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import timm
import torch
from torch import nn

from .._utils.io import atomic_torch_save, atomic_write_bytes
from .normalize import Normalized
from .vit_cifar import check_patch_size

__all__ = ['build_model', 'save_checkpoint', 'load_checkpoint', 'is_eatai_checkpoint', 'is_safetensors_file']

_FORMAT = 'eatai-checkpoint-1'
_FORMATS = ('pt', 'safetensors')
_META_KEYS = ('format', 'arch', 'arch_kwargs', 'mean', 'std', 'meta')   # safetensors metadata: JSON strings
_COMPILED = re.compile(r'(?:^|(?<=\.))_orig_mod\.')   # what torch.compile(module) calls the module it wraps


def uncompiled_keys(state: dict) -> dict:
    """`state` without the '_orig_mod.' that `torch.compile(module)` wrappers put into its keys."""
    return {_COMPILED.sub('', k): v for k, v in state.items()}


def build_model(arch: str, num_classes: int, mean=None, std=None, **kwargs) -> nn.Module:
    """A timm model by name, wrapped so it takes [0,1] inputs: normalisation from `mean`/`std`,
    else from the model's pretrained config."""
    try:
        model = timm.create_model(arch, num_classes=num_classes, **kwargs)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise ValueError(f"unknown architecture {arch!r}: give a timm model name (timm.list_models()), "
                             "an nn.Module or a checkpoint path") from None
        raise
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    mean = cfg.get('mean') if mean is None else mean
    std = cfg.get('std') if std is None else std
    if mean is None or std is None:
        raise ValueError(f"{arch} has no mean/std in its config: pass mean=... and std=...")
    embed = getattr(model, 'patch_embed', None)   # a ViT given an img_size its patch_size does not divide
    if getattr(embed, 'img_size', None) is not None and isinstance(getattr(embed, 'patch_size', None), (int, tuple)):
        check_patch_size(embed.img_size, embed.patch_size, arch)
    wrapped = Normalized(model, mean, std)
    # what rebuilds it: `eatai.models.hub.export_model` writes them into an exported folder's config
    wrapped.arch, wrapped.arch_kwargs = arch, {'num_classes': num_classes, **kwargs}
    return wrapped


def _format_of(path: Path, format: str | None) -> str:
    if format is None:
        return 'safetensors' if path.suffix == '.safetensors' else 'pt'
    if format not in _FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}: use one of {_FORMATS}")
    return format


def _save_safetensors(state: dict, path: Path) -> Path:
    from safetensors.torch import save
    try:
        metadata = {k: json.dumps(state[k]) for k in _META_KEYS}
    except TypeError as e:
        raise ValueError(f"a safetensors checkpoint keeps arch_kwargs and meta as JSON: {e}") from None
    # clone: safetensors refuses tensors that share memory (tied weights), and wants them contiguous
    tensors = {k: v.clone().contiguous() for k, v in state['state_dict'].items()}
    return atomic_write_bytes(save(tensors, metadata=metadata), path)


def save_checkpoint(model: nn.Module, path, arch: str, arch_kwargs: dict | None = None, meta: dict | None = None,
                    format: str | None = None) -> Path:
    """Save a model built by `build_model(arch, **arch_kwargs)` so `load_checkpoint` can rebuild it.
    format: 'pt' (torch.save, the default) or 'safetensors' (no pickle; the default for a .safetensors path);
    either keeps the architecture, its kwargs, the normalisation and `meta`."""
    path = Path(path)
    format = _format_of(path, format)
    model = getattr(model, 'module', model)
    model = getattr(model, '_orig_mod', model)   # under torch.compile(model)
    if not isinstance(model, Normalized):
        raise TypeError("save_checkpoint expects a model from build_model (a Normalized wrapper)")
    arch_kwargs = dict(arch_kwargs or {})
    arch_kwargs.setdefault('num_classes', getattr(model.model, 'num_classes', None))
    if arch_kwargs['num_classes'] is None:
        raise ValueError("pass arch_kwargs={'num_classes': ...}: the model does not say how many classes it has")
    state = {'format': _FORMAT, 'arch': arch, 'arch_kwargs': arch_kwargs,
             'mean': model.mean.flatten().tolist(), 'std': model.std.flatten().tolist(),
             'state_dict': {k: v.detach().cpu() for k, v in uncompiled_keys(model.model.state_dict()).items()},
             'meta': dict(meta or {})}
    if format == 'safetensors':
        return _save_safetensors(state, path)
    return atomic_torch_save(state, path)


def is_eatai_checkpoint(state) -> bool:
    """Whether a loaded object is eatai's checkpoint dict."""
    return isinstance(state, dict) and state.get('format') == _FORMAT


def is_safetensors_file(path) -> bool:
    """Whether `path` is a safetensors file: an 8-byte little-endian header length, then a JSON header."""
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and 2 <= int.from_bytes(head[:8], 'little') <= Path(path).stat().st_size


def _load_safetensors(path: Path, map_location) -> dict:
    from safetensors import safe_open
    device = str(map_location) if isinstance(map_location, (str, torch.device)) else 'cpu'
    with safe_open(str(path), framework='pt', device=device) as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if metadata.get('format') != json.dumps(_FORMAT):
        return {'state_dict': tensors}   # weights only: not ours, the caller says so
    state = {k: json.loads(metadata[k]) for k in _META_KEYS}
    state['state_dict'] = tensors
    return state


def load_checkpoint(path, map_location='cpu') -> nn.Module:
    """Rebuild a model saved by `save_checkpoint` (.pt or .safetensors); its `meta` dict is attached as `.meta`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if is_safetensors_file(path):
        state = _load_safetensors(path, map_location)
    else:
        state = torch.load(path, map_location=map_location, weights_only=True)
    if not is_eatai_checkpoint(state):
        raise ValueError(f"{path} is not an eatai checkpoint (no 'format': {_FORMAT!r})")
    kwargs = dict(state['arch_kwargs'])
    num_classes = kwargs.pop('num_classes')
    model = build_model(state['arch'], num_classes, state['mean'], state['std'], **kwargs)
    model.model.load_state_dict(state['state_dict'])
    model.meta = state['meta']
    return model
