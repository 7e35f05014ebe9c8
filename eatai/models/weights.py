"""Weights files as people have them: bare or wrapped state dicts (.pt/.pth/.safetensors), loaded into a model
whatever wrappers (DataParallel, torch.compile, `Normalized`) stand around it."""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .checkpoint import is_eatai_checkpoint, is_safetensors_file
from .normalize import Normalized

__all__ = ['load_state_dict_file', 'load_weights']

_WRAPPER_KEYS = ('state_dict', 'model_state_dict', 'model')   # looked for in this order
_PREFIXES = ('module.', '_orig_mod.')                         # DataParallel/DDP, torch.compile
_SHOW = 10                                                    # keys listed per kind in an error


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj, where: str) -> dict:
    """The state dict inside `obj`: itself, eatai's checkpoint, or a training-script wrapper."""
    for _ in range(3):   # wrappers nest at most a little: {'model': {'state_dict': ...}}
        if _is_state_dict(obj):
            return dict(obj)
        if is_eatai_checkpoint(obj):
            obj = obj['state_dict']
            continue
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)),
                     None)
        if inner is None:
            break
        obj = inner
    found = f"a dict with keys {sorted(map(str, obj))[:_SHOW]}" if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(f"{where} holds no state dict ({found}). Accepted: a state dict (parameter name -> tensor), "
                     f"a dict holding one under {' / '.join(map(repr, _WRAPPER_KEYS))}, or an eatai checkpoint")


def _strip_prefixes(state: dict) -> dict:
    """Drop 'module.' and '_orig_mod.' where every key carries them (also stacked: 'module._orig_mod.')."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    # torch.compile of a submodule leaves '_orig_mod.' inside the keys; the name is reserved by torch
    return {k.replace('._orig_mod.', '.'): v for k, v in state.items()}


def _load_file(path: Path, trusted: bool):
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if trusted:
            return torch.load(path, map_location='cpu', weights_only=False)
        try:
            needs = ', '.join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or 'unknown objects'
        except Exception:   # not a zip checkpoint (legacy format): torch's own message says enough
            needs = str(e).splitlines()[0]
        resave = f"torch.save(torch.load({str(path)!r}, weights_only=False)['state_dict'], 'weights.pt')"
        raise ValueError(f"{path} holds pickled Python objects besides the weights ({needs}); torch.load with "
                         "weights_only=True refuses them because unpickling can run arbitrary code. If you trust "
                         f"the file, pass trusted=True, or re-save only its state dict once: {resave}") from None


def load_state_dict_file(path, trusted: bool = False) -> dict:
    """The state dict in a .pt/.pth file: bare, wrapped in {'state_dict'|'model_state_dict'|'model': ...},
    or an eatai checkpoint; 'module.' (DataParallel/DDP) and '_orig_mod.' (torch.compile) prefixes removed.
    Loads with weights_only=True; `trusted=True` allows files that also pickle Python objects."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass the .pt/.pth file inside it")
    if is_safetensors_file(path):   # tensors only, no pickle: nothing to trust
        from safetensors.torch import load_file
        return _strip_prefixes(_unwrap(load_file(str(path)), str(path)))
    return _strip_prefixes(_unwrap(_load_file(path, trusted), str(path)))


def _plain(model: nn.Module) -> nn.Module:
    """The module under DataParallel/DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, '_orig_mod') and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _target(model: nn.Module, state: dict) -> tuple[nn.Module, dict]:
    """Which module the keys belong to, and the keys as it names them: the Normalized wrapper
    itself ('model.…', 'mean', 'std'), its inner model, or the model with a 'model.' prefix dropped."""
    candidates = [(model, state)]
    if isinstance(model, Normalized):
        candidates.insert(0, (model.model, state))   # first: a tie goes to the inner model
    if all(k.startswith('model.') for k in state):
        stripped = {k[len('model.'):]: v for k, v in state.items()}
        candidates += [(module, stripped) for module, _ in candidates[:]]
    return max(candidates, key=lambda c: len(c[1].keys() & c[0].state_dict().keys()))


def _listing(keys, what: str) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ''
    return f"\n  {what} ({len(keys)}): {', '.join(keys[:_SHOW])}{more}"


def load_weights(model: nn.Module, path_or_state, strict: bool = True, trusted: bool = False):
    """Load a weights file (see `load_state_dict_file`) or a state dict into `model`: into
    `model.model` when `model` is a Normalized wrapper and the keys are its inner model's.
    Shape mismatches always raise one ValueError naming each parameter with both shapes; missing
    and unexpected keys raise too when `strict`. Returns torch's (missing_keys, unexpected_keys)."""
    if isinstance(path_or_state, Mapping):
        state = _strip_prefixes(_unwrap(path_or_state, 'the state dict given'))
        source = 'the state dict given'
    else:
        state, source = load_state_dict_file(path_or_state, trusted=trusted), str(path_or_state)
    target, state = _target(_plain(model), state)
    own = target.state_dict()
    mismatched = [(k, tuple(own[k].shape), tuple(v.shape)) for k, v in state.items()
                  if k in own and own[k].shape != v.shape]
    # BatchNorm fills in a missing num_batches_tracked itself (checkpoints from before torch 0.4.1)
    missing = {k for k in own.keys() - state.keys() if not k.endswith('num_batches_tracked')}
    unexpected = state.keys() - own.keys()
    if mismatched or (strict and (missing or unexpected)):
        msg = f"the weights in {source} do not fit {type(target).__name__}:"
        if mismatched:
            msg += f"\n  shape mismatches ({len(mismatched)}; name: expected in the model, found in the weights):"
            msg += ''.join(f"\n    {k}: expected {exp}, found {got}" for k, exp, got in mismatched[:2 * _SHOW])
            msg += f"\n    ... and {len(mismatched) - 2 * _SHOW} more" if len(mismatched) > 2 * _SHOW else ''
        if strict and missing:
            msg += _listing(missing, 'missing from the weights')
        if strict and unexpected:
            msg += _listing(unexpected, 'unexpected in the weights')
        msg += ("\nCheck that the architecture and num_classes match the checkpoint"
                + ("; strict=False ignores missing and unexpected keys, never shape mismatches." if strict else "."))
        raise ValueError(msg)
    return target.load_state_dict(state, strict=strict)
