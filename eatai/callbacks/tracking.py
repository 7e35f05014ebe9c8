"""Experiment tracking with fastai's own callbacks: `TensorBoardCallback`, `WandbCallback` and `CSVLogger`.

The per-epoch columns of adversarial training (`freq_*`, `rerr_*`, `loss_*`, RAMP's `max_*` and `kl`) are
metrics of fastai's recorder, so these callbacks log them as they log `valid_loss`, under the same names.
`log_robust_result` adds the final robust evaluation (clean, each threat, union, group summaries) to
whichever of them the learner has; `tracking` sets them up for one run (what the recipes' `--log` does).
tensorboard and wandb are optional (`pip install eatai[track]`): nothing here imports them until asked.
"""
from __future__ import annotations

import csv
import math
import sys
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .._utils.dist import is_main_process

__all__ = ['TRACKERS', 'robust_scalars', 'log_robust_result', 'tracker_callbacks', 'tracking', 'robust_csv_path']

TRACKERS = ('tensorboard', 'wandb', 'csv')


def robust_scalars(result, prefix: str = 'robust') -> dict:
    """The numbers of a `RobustResult` as flat `{'<prefix>/<name>': value}`: clean, each threat (named as in
    the result, e.g. 'linf:8/255'), union, `<group>_avg` / `<group>_worst` for each group of `summary()`
    (e.g. 'unforeseen') and `mCA` when corruptions were evaluated."""
    out = {'clean': result.clean, **{t: result.robust[t] for t in result.threats}, 'union': result.union}
    for group, s in result.summary().items():
        out[f'{group}_avg'], out[f'{group}_worst'] = s['average'], s['worst']
    if result.corruptions:
        out['mCA'] = result.mca
    return {f'{prefix}/{k}': float(v) for k, v in out.items()}


def _callbacks_of(learn, module: str, name: str) -> list:
    """The learner's callbacks of class `module.name`, without importing the module (if it is not
    imported, no such callback exists)."""
    cls = getattr(sys.modules.get(module), name, None)
    return [] if cls is None else [cb for cb in learn.cbs if isinstance(cb, cls)]


def robust_csv_path(logger, learn) -> Path:
    """Where `log_robust_result` writes beside a `CSVLogger`'s file: 'history.csv' -> 'history_robust.csv'."""
    path = Path(learn.path) / logger.fname
    return path.with_name(f'{path.stem}_robust.csv')


def _write_csv(path: Path, scalars: dict, prefix: str) -> None:
    """Rows (metric, value), replacing the rows of `prefix` already in the file, keeping the others."""
    rows = []
    if path.exists():
        with path.open(newline='') as f:
            rows = [r for r in csv.DictReader(f) if not r['metric'].startswith(f'{prefix}/')]
    rows += [{'metric': k, 'value': repr(v)} for k, v in scalars.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('w', newline='') as f:
        writer = csv.DictWriter(f, ['metric', 'value'])
        writer.writeheader()
        writer.writerows(rows)


def log_robust_result(learn, result, prefix: str = 'robust') -> dict:
    """Log the final robust evaluation `result` to the trackers among `learn.cbs`, returning its scalars.

    TensorBoardCallback: one scalar per number, tag '<prefix>/<name>', at the learner's last training
    step (in the callback's log folder). WandbCallback: the run's summary (`wandb.run.summary`), where
    W&B keeps a run's final numbers. CSVLogger: a side file `<name>_robust.csv` with columns metric,
    value (`robust_csv_path`): the logger's own file keeps the epoch table, whose header is fixed at the
    start of fit. Only the main process of a distributed run writes."""
    scalars = robust_scalars(result, prefix)
    if not is_main_process():
        return scalars
    for cb in _callbacks_of(learn, 'fastai.callback.tensorboard', 'TensorBoardCallback'):
        from torch.utils.tensorboard import SummaryWriter
        old = getattr(cb, 'writer', None)
        writer = SummaryWriter(log_dir=old.log_dir if old is not None else cb.log_dir)
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, getattr(learn, 'train_iter', 0))
        writer.close()
    if _callbacks_of(learn, 'fastai.callback.wandb', 'WandbCallback'):
        import wandb
        if wandb.run is None:
            warnings.warn("a WandbCallback but no W&B run (wandb.init): the robust evaluation was not logged to W&B",
                          stacklevel=2)
        else:
            wandb.run.summary.update(scalars)
    for cb in _callbacks_of(learn, 'fastai.callback.progress', 'CSVLogger'):
        _write_csv(robust_csv_path(cb, learn), scalars, prefix)
    return scalars


def _check_log(log) -> list:
    names = [log] if isinstance(log, str) else list(log or [])
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}: choose from {', '.join(TRACKERS)}")
    return list(dict.fromkeys(names))


def _patch_fastai_wandb_config() -> None:
    """fastai's WandbCallback fails in before_fit on every learner when its config formatting meets a plain
    value (fastai issue #4173: `init_args` of an int): where the installed fastai has that bug, format such
    values as they are (fastai then prints that W&B could not store some of its config: the model)."""
    import fastai.callback.wandb as fw
    from fastcore.basics import init_args
    try:
        fw._format_config({'probe': 1})
        return
    except TypeError:
        pass

    def format_value(v):
        if isinstance(v, list):
            return [format_value(item) for item in v]
        try:
            args = init_args(v)
        except TypeError:   # no attributes: an int, a str, a bool, ...
            return v
        # as fastai's: values stay as they are (the config's dicts are the callbacks' own, changed in place)
        return {**fw._format_config(args), '_name': v} if args else v

    fw._format_config_value = format_value


def tracker_callbacks(log, out_dir, name: str) -> list:
    """fastai's tracking callbacks for `log` ('tensorboard', 'wandb', 'csv' or several), writing under
    `out_dir`: TensorBoard events in `<out_dir>/tensorboard/<name>`, the CSV epoch table `<out_dir>/<name>.csv`.
    TensorBoard neither traces the model (it refuses under mixed precision) nor draws predictions; W&B
    logs no prediction table either (both need DataLoaders that can show items); a W&B run must be
    started (`wandb.init`, or `tracking` does it) before fitting."""
    out, cbs = Path(out_dir).resolve(), []
    for tracker in _check_log(log):
        if tracker == 'tensorboard':
            from fastai.callback.tensorboard import TensorBoardCallback
            cbs.append(TensorBoardCallback(log_dir=str(out / 'tensorboard' / name), trace_model=False, log_preds=False))
        elif tracker == 'wandb':
            from fastai.callback.wandb import WandbCallback
            _patch_fastai_wandb_config()
            cbs.append(WandbCallback(log_preds=False))
        else:
            from fastai.callback.progress import CSVLogger
            cbs.append(CSVLogger(fname=out / f'{name}.csv'))
    return cbs


@contextmanager
def tracking(learn, log, out_dir, name: str, config: dict | None = None, project: str = 'eatai'):
    """With `tracker_callbacks(log, out_dir, name)` on `learn` (main process only), and for 'wandb' a W&B run
    named `name` in `out_dir` (its mode from the environment: WANDB_MODE=offline keeps it local), finished
    on exit. Yields the callbacks; call `log_robust_result(learn, result)` inside to log the evaluation."""
    names = _check_log(log)
    if not names or not is_main_process():
        yield []
        return
    cbs = tracker_callbacks(names, out_dir, name)
    run = None
    if 'wandb' in names:
        import wandb
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=project, name=name, dir=str(out_dir), config=_plain(config or {}))
    try:
        with learn.added_cbs(cbs) if cbs else nullcontext():
            yield cbs
    finally:
        if run is not None:
            run.finish()


def _plain(config: dict) -> dict:
    """JSON-friendly config values (paths as strings, NaN kept as a float)."""
    def plain(v):
        if isinstance(v, (bool, int, str)) or v is None or (isinstance(v, float) and not math.isinf(v)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(i) for i in v]
        if isinstance(v, dict):
            return {str(k): plain(i) for k, i in v.items()}
        return str(v)
    return {str(k): plain(v) for k, v in config.items()}
