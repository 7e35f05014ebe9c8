"""Exported model folders, as the Hugging Face Hub and timm read them: `model.safetensors`, `config.json` and a
`README.md` model card.

`config.json` is timm's pretrained format. Its `pretrained_cfg` holds mean 0 and std 1, so that timm's data
pipeline leaves inputs in [0,1]; the model's own normalisation travels in the weights and in the model
arguments `input_mean`/`input_std`, which make the entry point return a `Normalized` model. So
`timm.create_model('local-dir:<folder>', pretrained=True)` (after `import eatai`, which registers eatai's
architectures) gives the exported model's logits for the same [0,1] inputs. timm's own architectures are
exported under `eatai_normalized`, a wrapper entry point with the architecture in its `arch` argument.
Uploading is `huggingface_hub.upload_folder(repo_id=..., folder_path=folder)`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import timm
import torch
from timm.models import model_entrypoint, register_model
from torch import nn

from .._utils.io import atomic_write_text
from ._registry import _TIMM_PLUMBING, hub_loadable
from .checkpoint import uncompiled_keys
from .normalize import Normalized
from .weights import _plain

__all__ = ['EXPORT_FORMAT', 'export_model', 'load_export', 'read_export_config', 'is_export_config', 'model_card',
           'eatai_normalized']

EXPORT_FORMAT = 'eatai-export-1'
EXPORT_FILES = ('model.safetensors', 'config.json', 'README.md')
_HUB_PREFIXES = ('hf-hub:', 'hf_hub:')
# the Hub's dataset ids and names of the datasets eatai knows radii for
_HF_DATASETS = {'cifar10': ('uoft-cs/cifar10', 'CIFAR-10'), 'imagenet': ('ILSVRC/imagenet-1k', 'ImageNet-1k')}
# create_model's own arguments: not the model's, never written into model_args
_NOT_MODEL_ARGS = _TIMM_PLUMBING | {'pretrained', 'checkpoint_path', 'scriptable', 'exportable', 'no_jit', 'device',
                                    'dtype'}
_BUDGETS = {'standard': 'APGD-CE + APGD-T with AutoAttack\'s settings', 'autoattack': 'full AutoAttack',
            'quick': 'the quick budget (fewer iterations and restarts: an upper bound for screening)'}


@register_model
@hub_loadable
def eatai_normalized(pretrained: bool = False, arch: str | None = None, **kwargs) -> nn.Module:
    """Any timm architecture `arch` (built with `kwargs`): the entry point eatai exports timm's own
    architectures under, since only a wrapper can carry the normalisation (`input_mean`/`input_std`)."""
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise ValueError(f"eatai_normalized needs arch=<a timm model name>, got {arch!r}")
    return timm.create_model(arch, **{k: v for k, v in kwargs.items() if k not in _NOT_MODEL_ARGS})


def _loads_exports(arch: str) -> bool:
    """Whether `arch`'s entry point is eatai's `hub_loadable` one (else exports go through `eatai_normalized`)."""
    return getattr(model_entrypoint(arch), 'hub_loadable', False)


def _rebuilt_on_meta(architecture: str, model_args: dict) -> nn.Module:
    with torch.device('meta'):
        return timm.create_model(architecture, **model_args)


def _check_rebuild(model: Normalized, architecture: str, model_args: dict, arch: str) -> None:
    """Refuse, before anything is written, weights that the config would not rebuild (keys and shapes)."""
    try:
        rebuilt = _rebuilt_on_meta(architecture, model_args)
    except Exception as e:   # an argument the architecture does not take
        raise ValueError(f"{arch} cannot be rebuilt from {model_args} ({type(e).__name__}: {e}); pass arch= and "
                         "arch_kwargs= as the model was built") from None
    ours = {k: tuple(v.shape) for k, v in uncompiled_keys(model.state_dict()).items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if ours != theirs:
        diff = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        raise ValueError(f"the model's weights do not fit {arch} built with {model_args} ({len(diff)} parameters "
                         f"differ, e.g. {diff[0]}: {ours.get(diff[0])} in the model, {theirs.get(diff[0])} rebuilt); "
                         "pass arch= and arch_kwargs= as the model was built")


def _export_model(model: nn.Module) -> Normalized:
    model = _plain(model)
    if not isinstance(model, Normalized):
        raise TypeError(f"export_model expects a model with its normalisation inside (a Normalized wrapper, as "
                        f"build_model, load_model and robust_learner make), got {type(model).__name__}")
    return model


def _json_ready(value, what: str):
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON (numbers, strings, lists, dicts): {e}") from None


def _input_size(model: Normalized, input_size) -> list:
    size = input_size
    if size is None:
        size = (getattr(model.model, 'pretrained_cfg', None) or {}).get('input_size')
    if size is None or len(size) != 3 or not all(int(s) == s and s > 0 for s in size):
        raise ValueError(f"input_size must be (channels, height, width), got {size!r}")
    if size[0] != model.mean.numel():
        raise ValueError(f"input_size {tuple(size)} has {size[0]} channels, the normalisation {model.mean.numel()}")
    return [int(s) for s in size]


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version   # eatai.__version__: eatai imports this package
    try:
        return version('eatai')
    except PackageNotFoundError:
        return None


def export_config(model: Normalized, arch: str, arch_kwargs: dict, input_size, label_names=None,
                  dataset: str | None = None) -> dict:
    """config.json of an export: timm's pretrained format plus an 'eatai' section (see the module's docstring)."""
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise ValueError(f"unknown architecture {arch!r}: exports need a timm model name (timm.list_models(), "
                         "eatai's CIFAR architectures included); pass arch=")
    arch_kwargs = _json_ready({k: v for k, v in arch_kwargs.items() if k not in _NOT_MODEL_ARGS}, 'arch_kwargs')
    num_classes = arch_kwargs.get('num_classes', getattr(model.model, 'num_classes', None))
    if not isinstance(num_classes, int):
        raise ValueError("pass arch_kwargs={'num_classes': ...}: the model does not say how many classes it has")
    arch_kwargs['num_classes'] = num_classes
    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    normalisation = {'input_mean': mean, 'input_std': std}
    if _loads_exports(arch):
        architecture, model_args = arch, {**arch_kwargs, **normalisation}
    else:
        architecture, model_args = 'eatai_normalized', {'arch': arch, **arch_kwargs, **normalisation}
    _check_rebuild(model, architecture, model_args, arch)
    size = _input_size(model, input_size)
    inner = getattr(model.model, 'pretrained_cfg', None) or {}
    pretrained_cfg = {'input_size': size, 'interpolation': inner.get('interpolation', 'bilinear'),
                      'crop_pct': inner.get('crop_pct', 1.0), 'crop_mode': inner.get('crop_mode', 'center'),
                      'fixed_input_size': bool(inner.get('fixed_input_size', False)),
                      'mean': [0.0] * size[0], 'std': [1.0] * size[0], 'num_classes': num_classes}
    config = {'architecture': architecture, 'num_classes': num_classes, 'model_args': model_args,
              'pretrained_cfg': pretrained_cfg}
    if label_names is not None:
        label_names = [str(v) for v in label_names]
        if len(label_names) != num_classes:
            raise ValueError(f"{len(label_names)} label names for {num_classes} classes")
        config['label_names'] = label_names
    config['eatai'] = {'format': EXPORT_FORMAT, 'eatai_version': _version(), 'arch': arch,
                       'arch_kwargs': arch_kwargs, 'mean': mean, 'std': std, 'dataset': dataset}
    return config


def _as_results(results) -> list:
    """`results` as a list: one RobustResult (robust_eval's) or several; read files with RobustResult.from_json."""
    if results is None:
        return []
    items = list(results) if isinstance(results, (list, tuple)) else [results]
    for r in items:   # duck-typed: the models layer does not import the evaluation layer
        if not all(hasattr(r, a) for a in ('n', 'clean', 'robust', 'union', 'threats', 'budget', 'exact')):
            raise TypeError(f"results: a RobustResult (robust_eval's) or a list of them, got {type(r).__name__}; "
                            "read a results file with RobustResult.from_json(path)")
    return items


def _rounded(values) -> str:
    return '(' + ', '.join(f'{v:.4g}' for v in values) + ')'


def _pct(x: float) -> float:
    return round(100 * float(x), 2)


def _budget(name: str) -> str:
    return f"{name} ({_BUDGETS[name]})" if name in _BUDGETS else name


def _eval_results(results: list, dataset: str | None) -> list:
    from huggingface_hub import EvalResult
    hf_id, hf_name = _HF_DATASETS.get(dataset, (dataset or 'unknown', dataset or 'unknown'))
    rows = []

    def row(config: str, name: str, value: float, **args):
        rows.append(EvalResult(task_type='image-classification', task_name='Image Classification',
                               dataset_type=hf_id, dataset_name=hf_name, dataset_split='test', metric_type='accuracy',
                               metric_name=name, metric_value=_pct(value), metric_config=config, metric_args=args))

    for r in results:
        row('clean', 'clean accuracy (%)', r.clean, n=r.n)
        for t in r.threats:
            row(t, f"robust accuracy (%), {t}, budget {r.budget}", r.robust[t], threat=t, budget=r.budget, n=r.n,
                exact=bool(r.exact.get(t, True)))
        union = [t for t in r.threats if t not in r.outside_union]
        if len(union) > 1:
            row('union', f"union robust accuracy (%), {' + '.join(union)}, budget {r.budget}", r.union,
                threats=union, budget=r.budget, n=r.n)
        for group, s in (r.summary().items() if r.groups else ()):
            for kind in ('average', 'worst'):
                row(f'{group}:{kind}', f"{group} {kind} (%), budget {r.budget}", s[kind], threats=s['threats'],
                    budget=r.budget, n=r.n)
    return rows


def _table(header: tuple, rows: list) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows])


def _results_section(results: list) -> str:
    if not results:
        return "No evaluation was exported with this model."
    parts = []
    for r in results:
        rows = [('clean', f"{_pct(r.clean):.2f}", '')]
        rows += [(t, f"{'≤ ' if not r.exact.get(t, True) else ''}{_pct(r.robust[t]):.2f}",
                  '' if t in r.outside_union else 'yes') for t in r.threats]
        if len([t for t in r.threats if t not in r.outside_union]) > 1:
            rows.append(('union', f"{_pct(r.union):.2f}", ''))
        for group, s in (r.summary().items() if r.groups else ()):
            rows += [(f'{group}: {kind}', f"{_pct(s[kind]):.2f}", '') for kind in ('average', 'worst')]
        title = f" of {r.model}" if r.model else ''
        parts.append(f"Evaluation{title} on the first {r.n} test images, budget {_budget(r.budget)}; accuracy in %, "
                     "'≤' marks an upper bound:\n\n" + _table(('threat', 'accuracy (%)', 'in the union'), rows))
    return '\n\n'.join(parts)


def model_card(name: str, config: dict, results=None, recipe: dict | None = None, license: str | None = None,
               tags=()):
    """A `huggingface_hub.ModelCard` for an export: Hub metadata (library, tags, datasets, a model-index with one
    entry per threat, its budget named), how to load it, the training recipe and the evaluation table."""
    from huggingface_hub import ModelCard, ModelCardData
    results = _as_results(results)
    recipe = _json_ready(dict(recipe or {}), 'recipe')
    ours = config['eatai']
    dataset = ours.get('dataset')
    threat_tags = sorted({t.split(':')[0] for r in results for t in r.threats})
    data = ModelCardData(
        model_name=name, library_name='timm', pipeline_tag='image-classification', license=license,
        tags=['image-classification', 'timm', 'eatai', 'adversarial-robustness', 'adversarial-training',
              *threat_tags, *tags],
        datasets=[_HF_DATASETS[dataset][0]] if dataset in _HF_DATASETS else None,
        metrics=['accuracy'], eval_results=_eval_results(results, dataset) or None)
    size = config['pretrained_cfg']['input_size']
    recipe_rows = [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in recipe.items()]
    kwargs = ''.join(f', {k}={v!r}' for k, v in ours['arch_kwargs'].items())
    body = f"""
# {name}

An adversarially robust image classifier: `{ours['arch']}{f"({kwargs[2:]})" if kwargs else ''}`, trained with
[eatai](https://github.com/eatai/eatai) (E-AT and related schemes for multiple l_p threat models).
It takes images of shape {tuple(size)} with values in [0, 1]: the normalisation (mean {_rounded(ours['mean'])},
std {_rounded(ours['std'])}) is part of the model, which is why `config.json` gives mean 0 and std 1.

## Use

```python
import eatai   # registers eatai's architectures with timm
import timm

model = timm.create_model('hf-hub:<org>/{name}', pretrained=True).eval()   # or 'local-dir:<folder>'
# or: model = eatai.models.load_model('hf-hub:<org>/{name}')
```

## Training

{_table(('setting', 'value'), recipe_rows) if recipe_rows else 'No training recipe was exported with this model.'}

## Evaluation

{_results_section(results)}

## Citation

```bibtex
@inproceedings{{croce2022adversarial,
  title={{Adversarial Robustness against Multiple and Single $l_p$-Threat Models via Quick Fine-Tuning of
           Robust Classifiers}},
  author={{Croce, Francesco and Hein, Matthias}},
  booktitle={{ICML}},
  year={{2022}}
}}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _prepare_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder: export into a new or empty folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} is not empty: export into a new or empty folder, or pass overwrite=True "
                              "(eatai export --overwrite) to replace its model files")


def _save_weights(model: Normalized, path: Path) -> None:
    from safetensors.torch import save_file
    # safetensors refuses tensors that share memory (tied weights): the second and later of them are copied
    tensors, seen = {}, set()
    for k, v in uncompiled_keys(model.state_dict()).items():
        v = v.detach().cpu().contiguous()
        shared = v.untyped_storage().data_ptr() in seen
        seen.add(v.untyped_storage().data_ptr())
        tensors[k] = v.clone() if shared else v
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={'format': 'pt'})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_model(model: nn.Module, folder, results=None, recipe: dict | None = None, *, arch: str | None = None,
                 arch_kwargs: dict | None = None, name: str | None = None, dataset: str | None = 'cifar10',
                 input_size=None, label_names=None, license: str | None = None, tags=(),
                 overwrite: bool = False) -> Path:
    """Write `model` (a `Normalized` model taking [0,1] inputs) into `folder` as `model.safetensors`,
    `config.json` (timm's format) and `README.md` (a model card from `results`, one RobustResult or a list, and
    `recipe`, a dict of training settings). `arch`/`arch_kwargs`: the timm name and arguments it was
    built with (default: what `build_model` recorded). A non-empty folder is refused unless `overwrite`; everything
    is checked before anything is written. Returns the folder."""
    model = _export_model(model)
    arch = arch if arch is not None else getattr(model, 'arch', None)
    if arch is None:
        raise ValueError("the model does not say which architecture it is: pass arch='<timm name>' (and "
                         "arch_kwargs= with the arguments it was built with)")
    kwargs = dict(arch_kwargs if arch_kwargs is not None else getattr(model, 'arch_kwargs', None) or {})
    folder = Path(folder).expanduser()
    config = export_config(model, str(arch), kwargs, input_size, label_names, dataset)
    card = model_card(name or folder.resolve().name, config, results, recipe, license, tags)
    _prepare_folder(folder, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    _save_weights(model, folder / 'model.safetensors')
    atomic_write_text(json.dumps(config, indent=2) + '\n', folder / 'config.json')
    atomic_write_text(str(card), folder / 'README.md')
    return folder


def _hub_id(source: str) -> tuple[str, str | None]:
    repo = source.split(':', 1)[1]
    repo, _, revision = repo.partition('@')
    return repo, revision or None


def read_export_config(source, cache_dir=None) -> dict:
    """config.json of a folder, or of a Hub repo ('hf-hub:<org>/<name>[@revision]', from the cache when offline).
    A missing folder or config, or a config that is not JSON, raises with one line."""
    if isinstance(source, str) and source.startswith(_HUB_PREFIXES):
        from huggingface_hub import hf_hub_download
        repo, revision = _hub_id(source)
        try:
            path = Path(hf_hub_download(repo, 'config.json', revision=revision, cache_dir=cache_dir))
        except Exception as e:   # offline and not cached, no such repo, no config.json in it
            first = str(e).strip().splitlines()[0] if str(e).strip() else ''
            raise FileNotFoundError(f"{source}: no config.json on the Hub or in the cache ({type(e).__name__}: "
                                    f"{first})") from None
        where = source
    else:
        folder = Path(str(source).removeprefix('local-dir:')).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder at {folder}")
        path, where = folder / 'config.json', str(folder)
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no config.json: not an exported model folder (export_robust and "
                                    f"`eatai export` write {', '.join(EXPORT_FILES)})")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: config.json is not JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{where}: config.json holds a JSON {type(config).__name__}, not an object")
    return config


def is_export_config(config: dict) -> bool:
    """Whether a config.json (as a dict) is an eatai export's."""
    return isinstance(config.get('eatai'), dict) and 'format' in config['eatai']


def _check_export(config: dict, where: str) -> None:
    ours = config.get('eatai')
    if not is_export_config(config):
        raise ValueError(f"{where} is not an eatai export (its config.json has no 'eatai' section): load it with "
                         f"timm.create_model(..., pretrained=True) and wrap it in Normalized with its mean and std")
    if ours['format'] != EXPORT_FORMAT:
        raise ValueError(f"{where} was written by eatai {ours.get('eatai_version', '(unknown version)')} in export "
                         f"format {ours['format']!r}; this eatai reads {EXPORT_FORMAT!r}: upgrade eatai to load it")
    for name in (config.get('architecture'), ours.get('arch')):
        if not isinstance(name, str) or not timm.is_model(name):
            raise ValueError(f"{where}: config.json names the architecture {name!r}, which eatai does not know (not a "
                             "timm model nor one of eatai's); a newer eatai or timm may know it")


def load_export(source, cache_dir=None) -> Normalized:
    """The model of an exported folder ('<folder>' or 'local-dir:<folder>') or Hub repo ('hf-hub:<org>/<name>'),
    taking [0,1] inputs, built by `timm.create_model(..., pretrained=True)`. A folder without config.json, a
    config that is not an eatai export or names an architecture eatai does not know: one clear line each."""
    hub = isinstance(source, str) and source.startswith(_HUB_PREFIXES)
    config = read_export_config(source, cache_dir=cache_dir)
    folder = None if hub else Path(str(source).removeprefix('local-dir:')).expanduser()
    where = str(source) if hub else str(folder)
    _check_export(config, where)
    name = f"hf-hub:{source.split(':', 1)[1]}" if hub else f"local-dir:{folder}"
    if folder is not None and not any((folder / f).is_file() for f in ('model.safetensors', 'pytorch_model.bin')):
        raise FileNotFoundError(f"{folder} has config.json but no model.safetensors")
    model = timm.create_model(name, pretrained=True, cache_dir=cache_dir)
    ours = config['eatai']
    model.arch, model.arch_kwargs = ours['arch'], dict(ours.get('arch_kwargs') or {})   # for a re-export
    return model
