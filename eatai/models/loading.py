"""`load_model`: a model from whatever names it (a checkpoint file, a timm name, a zoo id, a RobustBench id)."""
from __future__ import annotations

import difflib
import re
from pathlib import Path

import timm
import torch
from torch import nn

from .checkpoint import build_model, is_eatai_checkpoint, is_safetensors_file, load_checkpoint
from .hub import is_export_config, load_export, read_export_config
from .weights import load_state_dict_file, load_weights
from .zoo import is_zoo_id, load_zoo_model

__all__ = ['load_robustbench', 'load_model']

# RobustBench ids: author + year + keyword, e.g. Gowal2020Uncovering_70_16_extra; plus its baselines
_ROBUSTBENCH_ID = re.compile(r'^(?:[A-Z][A-Za-z]+\d{4}|Standard(?:_\w+)?$)')
_RB_ZOO = 'https://github.com/RobustBench/robustbench#model-zoo'


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


def _from_export(source, weights, mean, std, cache_dir=None, **kwargs) -> nn.Module:
    if weights is not None or mean is not None or std is not None or kwargs:
        given = [k for k, v in (('weights', weights), ('mean', mean), ('std', std)) if v is not None] + sorted(kwargs)
        raise ValueError(f"an exported model carries its own architecture, weights and normalisation: "
                         f"{', '.join(given)} cannot be given with {source}")
    return load_export(source if isinstance(source, str) else Path(source), cache_dir=cache_dir)


def load_model(arch, weights=None, num_classes: int = 10, mean=None, std=None, trusted: bool = False,
               **kwargs) -> nn.Module:
    """A model that takes [0,1] inputs, from `arch`: an existing checkpoint file (eatai's format, .pt
    or .safetensors); else an exported folder ('<folder>', 'local-dir:<folder>') or Hub repo
    ('hf-hub:<org>/<name>', `kwargs`: cache_dir) written by `export_model`; else a timm name (built with
    `build_model`, `kwargs` to timm; `weights`, a file or state dict, loaded into the inner model); else an
    id of eatai's model zoo (`kwargs`: dataset, threat_model, progress; downloaded once into the cache, no
    robustbench needed); else another
    RobustBench id, through the robustbench package (`kwargs`: dataset, threat_model, model_dir)."""
    path = Path(str(arch)).expanduser()
    exported = path.is_dir() and (isinstance(arch, Path) or not timm.is_model(arch))   # a timm name wins
    if exported or (isinstance(arch, str) and arch.startswith('local-dir:')):
        return _from_export(arch, weights, mean, std, **kwargs)
    if isinstance(arch, Path) or path.is_file() or path.suffix in ('.pt', '.pth', '.safetensors'):
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {path}")
        return _from_file(path, weights, mean, std)
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a checkpoint path, a timm model name or a RobustBench id, "
                        f"got {type(arch).__name__}")
    if arch.startswith(('hf-hub:', 'hf_hub:')) and is_export_config(read_export_config(arch, kwargs.get('cache_dir'))):
        return _from_export(arch, weights, mean, std, **kwargs)
    if timm.is_model(arch) or arch.startswith(('hf-hub:', 'hf_hub:')):
        model = build_model(arch, num_classes, mean, std, **kwargs)
        if weights is not None:
            load_weights(model, weights, trusted=trusted)
        return model
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
