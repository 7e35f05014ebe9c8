"""Loading the checkpoints people actually have: bare or wrapped state dicts from local files,
RobustBench model-zoo ids, and `load_model`, which tells paths, timm names and ids apart."""
from __future__ import annotations

import difflib
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from .checkpoint import build_model, is_eatai_checkpoint, is_safetensors_file, load_checkpoint
from .normalize import Normalized

__all__ = ['load_state_dict_file', 'load_weights', 'load_robustbench', 'load_model']

_WRAPPER_KEYS = ('state_dict', 'model_state_dict', 'model')   # looked for in this order
_PREFIXES = ('module.', '_orig_mod.')                         # DataParallel/DDP, torch.compile
_SHOW = 10                                                    # keys listed per kind in an error
# RobustBench ids: author + year + keyword, e.g. Gowal2020Uncovering_70_16_extra; plus its baselines
_ROBUSTBENCH_ID = re.compile(r'^(?:[A-Z][A-Za-z]+\d{4}|Standard(?:_\w+)?$)')
_RB_ZOO = 'https://github.com/RobustBench/robustbench#model-zoo'


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


def _arch_hint(model_id: str) -> str:
    """The eatai architecture a RobustBench id suggests, for messages: '..._70_16...' -> 'wrn_70_16',
    or 'wrn_70_16_dm' for the DeepMind-layout WideResNets of Gowal et al. and Rebuffi et al."""
    m = re.search(r'[_-](\d{2})[_-](\d{1,2})(?:[_-]|$)', model_id)
    if m is None:
        return '<architecture>'
    return f"wrn_{m.group(1)}_{m.group(2)}" + ('_dm' if model_id.startswith(('Gowal', 'Rebuffi')) else '')


def _by_hand(model_id: str) -> str:
    arch = _arch_hint(model_id)
    return (f"load it by hand: download the checkpoint file of {model_id} (RobustBench's model zoo links it: "
            f"{_RB_ZOO}) and pass its path with the matching architecture name, e.g. "
            f"robust_learner(dls, {arch!r}, weights='path.pt') or load_model({arch!r}, weights='path.pt').")


def _robustbench_loader(model_id: str):
    try:
        from robustbench.utils import load_model as rb_load_model
    except Exception as e:   # absent, or its PyPI release failing inside (pkg_resources, autoattack)
        install = (" RobustBench installs from GitHub (pip install git+https://github.com/RobustBench/robustbench.git;"
                   " it pins its own timm)."
                   if isinstance(e, ModuleNotFoundError) and e.name == 'robustbench' else '')
        raise ImportError(f"robustbench could not be imported ({type(e).__name__}: {e}), so the RobustBench id "
                          f"{model_id!r} cannot be loaded by name.{install} Or {_by_hand(model_id)}") from e
    return rb_load_model


def load_robustbench(model_id: str, dataset: str = 'cifar10', threat_model: str = 'Linf',
                     model_dir='models') -> nn.Module:
    """A RobustBench model-zoo model (e.g. 'Gowal2020Uncovering_70_16_extra'), downloaded to
    `model_dir` by `robustbench.utils.load_model`. It takes [0,1] inputs and normalises inside,
    so it is returned as it is, in eval mode."""
    rb_load_model = _robustbench_loader(model_id)
    # RobustBench names its threat models 'Linf', 'L2'; accept eatai's lower-case names too
    threat_model = {'linf': 'Linf', 'l2': 'L2', 'l1': 'L1'}.get(threat_model.lower(), threat_model)
    try:
        return rb_load_model(model_name=model_id, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    except Exception as e:   # an unknown id, no network for the download: the manual route still works
        raise RuntimeError(f"robustbench could not load {model_id!r} for {dataset}/{threat_model} "
                           f"({type(e).__name__}: {e}). Check the id, dataset and threat model, or "
                           + _by_hand(model_id)) from e


def _from_file(path: Path, weights, mean, std) -> nn.Module:
    if weights is not None or mean is not None or std is not None:
        raise ValueError("an eatai checkpoint carries its own weights and normalisation: pass weights, mean and "
                         "std only with an architecture name")
    if is_safetensors_file(path):
        return load_checkpoint(path)
    try:   # mmap: telling the format apart reads no tensor data
        state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception:   # pickled objects, the legacy format, not a torch file: not ours either way
        state = None
    if not is_eatai_checkpoint(state):
        raise ValueError(f"{path} is not an eatai checkpoint (architecture + weights). If it holds only weights, "
                         f"pass the architecture name with it: load_model('<arch>', weights={str(path)!r})")
    return load_checkpoint(path)


def load_model(arch, weights=None, num_classes: int = 10, mean=None, std=None, trusted: bool = False,
               **kwargs) -> nn.Module:
    """A model that takes [0,1] inputs, from `arch`: an existing checkpoint file (eatai's format, .pt
    or .safetensors); else a timm name (built with `build_model`, `kwargs` to timm; `weights`, a file
    or state dict, loaded into the inner model); else an id of eatai's model zoo (`kwargs`: dataset,
    threat_model, progress; downloaded once into the cache, no robustbench needed); else another
    RobustBench id, through the robustbench package (`kwargs`: dataset, threat_model, model_dir)."""
    path = Path(str(arch)).expanduser()
    if isinstance(arch, Path) or path.is_file() or path.suffix in ('.pt', '.pth', '.safetensors'):
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {path}")
        return _from_file(path, weights, mean, std)
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a checkpoint path, a timm model name or a RobustBench id, "
                        f"got {type(arch).__name__}")
    if timm.is_model(arch) or arch.startswith(('hf-hub:', 'hf_hub:')):
        model = build_model(arch, num_classes, mean, std, **kwargs)
        if weights is not None:
            load_weights(model, weights, trusted=trusted)
        return model
    from .zoo import is_zoo_id, load_zoo_model   # the zoo builds on this module
    if is_zoo_id(arch):
        if weights is not None or mean is not None or std is not None:
            raise ValueError(f"{arch!r} is a zoo id: its model comes with its weights and normalisation; pass "
                             "weights/mean/std only with an architecture name")
        return load_zoo_model(arch, trusted=trusted, **kwargs)
    if _ROBUSTBENCH_ID.match(arch):
        if weights is not None or mean is not None or std is not None:
            raise ValueError(f"{arch!r} is a RobustBench id: its model comes with its weights and normalises "
                             "inside; pass weights/mean/std only with an architecture name")
        return load_robustbench(arch, **kwargs)
    close = difflib.get_close_matches(arch, timm.list_models(), n=3)
    raise ValueError(f"unknown model {arch!r}. load_model accepts an existing checkpoint file, a timm model name "
                     "(timm.list_models(), including eatai's CIFAR architectures), or a RobustBench model-zoo id "
                     "(Author+Year+Keyword, e.g. 'Gowal2020Uncovering_70_16_extra')"
                     + (f". Did you mean {', '.join(map(repr, close))}?" if close else '.'))
