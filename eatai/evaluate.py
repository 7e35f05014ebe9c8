"""Robust accuracy per threat model and over their union, with AutoAttack's APGD-CE + APGD-T.

The paper (Section 2) counts a point as robust in the union only if it survives every
threat model, so flags are kept per example. Numbers come from our own forward passes on
the attack's outputs, after checking that each output lies in its ball and in [0,1].
This layer knows torch and `pyautoattack`, never fastai.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._dist import gather_objects, rank_and_world
from ._io import atomic_write_text
from .attacks import check_batch, eval_mode, make_ball
from .attacks.guards import check_labels
from .threats import NORMS, ThreatModel, canonical_norm, default_threats, parse_threat

__all__ = ['APGDSettings', 'EvalBudget', 'RobustResult', 'evaluate_robustness']

_AA_NORM = {'linf': 'Linf', 'l2': 'L2', 'l1': 'L1'}
_MIN_CLASSES = 4  # APGD-T's targeted DLR loss reads the 4th largest logit


def _check_count(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class APGDSettings:
    """AutoAttack's APGD-CE and APGD-T settings for one norm."""
    n_iter: int = 100
    n_restarts: int = 1           # APGD-CE random restarts
    n_target_classes: int = 9     # APGD-T: top classes tried as targets, one run each
    n_restarts_targeted: int = 1  # APGD-T restarts per target class
    use_largereps: bool = False   # l1: attack at radii 3, 2, 1 x eps in turn ("Mind the box")

    def __post_init__(self):
        for name in ('n_iter', 'n_restarts', 'n_target_classes', 'n_restarts_targeted'):
            _check_count(name, getattr(self, name))

    def summary(self) -> str:
        """'100 it., 1 restart, 9 targets' (restarts: APGD-CE; targets: APGD-T)."""
        s = lambda k: '' if k == 1 else 's'
        text = f"{self.n_iter} it., {self.n_restarts} restart{s(self.n_restarts)}, {self.n_target_classes} targets"
        return text if self.n_restarts_targeted == 1 else f"{text} x {self.n_restarts_targeted} restarts"


# AutoAttack's version='standard' (AutoAttack._set_version) for its first two attacks.
_STANDARD = {'linf': APGDSettings(), 'l2': APGDSettings(),
             'l1': APGDSettings(n_restarts=5, n_target_classes=5, use_largereps=True)}
_QUICK = {'linf': APGDSettings(20, 1, 3), 'l2': APGDSettings(20, 1, 3),
          'l1': APGDSettings(20, 1, 3, use_largereps=True)}


@dataclass(frozen=True)
class EvalBudget:
    """A named set of APGD-CE then APGD-T settings, one `APGDSettings` per norm."""
    name: str
    linf: APGDSettings = _STANDARD['linf']
    l2: APGDSettings = _STANDARD['l2']
    l1: APGDSettings = _STANDARD['l1']

    def __post_init__(self):
        for norm in NORMS:
            if not isinstance(getattr(self, norm), APGDSettings):
                raise TypeError(f"{norm} must be an APGDSettings, got {type(getattr(self, norm)).__name__}")

    @classmethod
    def from_name(cls, name) -> 'EvalBudget':
        """'standard' (AutoAttack's budget, the default everywhere) or 'quick' (opt-in);
        an `EvalBudget` is returned as it is."""
        if isinstance(name, EvalBudget):
            return name
        key = str(name).strip().lower()
        if key == 'standard':
            return cls('standard')
        if key == 'quick':
            return cls('quick', **_QUICK)
        raise ValueError(f"unknown evaluation budget {name!r}: use 'standard', 'quick' or an EvalBudget")

    def settings(self, norm: str) -> APGDSettings:
        """The settings used for `norm`."""
        return getattr(self, canonical_norm(norm))

    @property
    def is_standard(self) -> bool:
        """True when every norm gets AutoAttack's standard APGD-CE + APGD-T settings."""
        return all(self.settings(norm) == _STANDARD[norm] for norm in NORMS)

    @property
    def label(self) -> str:
        """Short text for report titles; a budget other than AutoAttack's says so."""
        if self.is_standard:
            return "AutoAttack standard budget (APGD-CE + APGD-T)"
        plain = {norm: self.settings(norm).summary() for norm in NORMS}
        detail = plain['linf'] if len(set(plain.values())) == 1 else \
            '; '.join(f"{norm} {text}" for norm, text in plain.items())
        # l1's radius schedule is part of the standard budget, not of the summary: flag changes to it
        moved = [norm for norm in NORMS if self.settings(norm).use_largereps != _STANDARD[norm].use_largereps]
        if moved:
            detail += f"; use_largereps changed for {', '.join(moved)}"
        return f"{self.name} budget (NOT AutoAttack standard): {detail}"


@dataclass
class RobustResult:
    """Clean and robust accuracy (fractions in [0,1]) per threat model and over their union."""
    n: int
    clean: float
    robust: dict[str, float]
    union: float
    threats: list[str]
    budget: str
    exact: dict[str, bool]            # False: an upper bound of what the full evaluation gives
    flags: dict[str, list[bool]]      # per example: 'clean', each threat, 'union'
    seconds: dict[str, float]
    model: str | None = None
    notes: list[str] = field(default_factory=list)  # AutoAttack's own warnings, deduplicated

    def __repr__(self) -> str:
        parts = [f"clean={self.clean:.1%}"]
        parts += [f"{t}={'<=' if not self.exact.get(t, True) else ''}{self.robust[t]:.1%}" for t in self.threats]
        parts.append(f"union={self.union:.1%}")
        name = f"{self.model!r}, " if self.model else ''
        return f"RobustResult({name}n={self.n}, {', '.join(parts)}, budget={self.budget!r})"

    def to_dict(self) -> dict:
        """Plain dict of builtins, ready for JSON."""
        return asdict(self)

    def to_json(self, path=None) -> str:
        """The result as JSON text; also written to `path` when one is given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path_or_str) -> 'RobustResult':
        """Read a result back from JSON text or from a file holding it."""
        text = str(path_or_str)
        if not text.lstrip().startswith('{'):
            text = Path(path_or_str).read_text()
        return cls(**json.loads(text))


class _Collect(logging.Handler):
    """Keeps AutoAttack's log messages (zero gradients, randomised defence...) for the result."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


def _quiet_logger(handler: logging.Handler) -> logging.Logger:
    # an unregistered logger has no parent: nothing reaches the root logger or the console
    logger = logging.Logger('eatai.autoattack', logging.INFO)
    logger.addHandler(handler)
    return logger


def _configure(attack, settings: APGDSettings, n_restarts: int) -> None:
    """Apply one norm's settings to a pyautoattack APGD object."""
    attack.n_restarts, attack.use_largereps = n_restarts, settings.use_largereps
    if attack.n_iter_orig != settings.n_iter:
        n_iter = settings.n_iter
        attack.n_iter = attack.n_iter_orig = n_iter
        # the step-size checkpoints are derived from n_iter in APGDAttack.__init__; keep them in step
        attack.n_iter_2 = max(int(0.22 * n_iter), 1)
        attack.n_iter_min = max(int(0.06 * n_iter), 1)
        attack.size_decr = max(int(0.03 * n_iter), 1)


def _autoattack(model, threat: ThreatModel, budget: EvalBudget, n_classes: int, seed: int, device, logger):
    """pyautoattack's AutoAttack running APGD-CE then APGD-T with `budget`'s settings."""
    from pyautoattack import AutoAttack  # imported here: importing eatai stays light

    settings = budget.settings(threat.norm)
    aa = AutoAttack(model, attacks=['apgd-ce', 'apgd-t'], version='custom', norm=_AA_NORM[threat.norm],
                    eps=threat.eps, seed=seed, device=device)
    aa.verbose = False
    aa.logger = aa.apgd.logger = aa.apgd_targeted.logger = logger
    _configure(aa.apgd, settings, settings.n_restarts)
    _configure(aa.apgd_targeted, settings, settings.n_restarts_targeted)
    # AutoAttack would index past the logits with more targets than other classes
    aa.apgd_targeted.n_target_classes = min(settings.n_target_classes, n_classes - 1)
    return aa


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device('cpu')


def _chunks(idx: torch.Tensor, bs: int) -> list[torch.Tensor]:
    return [idx[i:i + bs] for i in range(0, idx.numel(), bs)]


@torch.no_grad()
def _clean_correct(model, x: torch.Tensor, y: torch.Tensor, bs: int, device) -> tuple[torch.Tensor, int]:
    """(N,) bool on the CPU: classified correctly; and the number of classes of the model."""
    correct, n_classes = [], 0
    for i in range(0, x.shape[0], bs):
        yb, logits = y[i:i + bs].to(device), model(x[i:i + bs].to(device))
        check_labels(yb, logits)
        correct.append((logits.argmax(dim=1) == yb).cpu())
        n_classes = logits.shape[1]
    return torch.cat(correct), n_classes


def _parse_threats(threats) -> list[ThreatModel]:
    threats = list(default_threats('cifar10') if threats is None else
                   [threats] if isinstance(threats, (str, ThreatModel)) else threats)
    threats = [parse_threat(t) for t in threats]
    names = [str(t) for t in threats]
    if not threats:
        raise ValueError("threats is empty: give at least one threat model such as 'linf:8/255'")
    if len(set(names)) != len(names):
        raise ValueError(f"threat models repeat: {names}")
    return threats


class _Progress:
    """Finished chunks of an evaluation, kept in a JSON file so that a long evaluation resumes.

    The file records what the evaluation is of (inputs, threats, budget, seed, batch size) and,
    per threat, the flags of each finished chunk; a file of another evaluation is refused."""

    def __init__(self, path, fingerprint: dict):
        self.path, self.fingerprint, self.done = (Path(path) if path else None), fingerprint, {}
        if self.path is not None and self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get('fingerprint') != fingerprint:
                raise ValueError(f"{self.path} holds the progress of another evaluation (other inputs, threats, "
                                 "budget, seed or batch size): delete it or give another resume_file")
            self.done = saved['done']

    def get(self, key: str):
        return self.done.get(key)

    def put(self, key: str, flags: list) -> None:
        if self.path is None:
            return
        self.done[key] = flags
        atomic_write_text(json.dumps({'fingerprint': self.fingerprint, 'done': self.done}), self.path)


def _fingerprint(x, y, threats, budget, seed, bs, union_only, name) -> dict:
    digest = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(y.detach().cpu().numpy().tobytes())
    return {'data': digest.hexdigest(), 'threats': [str(t) for t in threats], 'budget': budget.label, 'seed': seed,
            'bs': bs, 'union_only': union_only, 'model': name}


def _attack_threat(model, x, y, idx, threat, budget, n_classes, seed, device, bs, progress, logger, saved: _Progress):
    """(len(idx),) bool: still correct on AutoAttack's output within `threat`, checked by us."""
    ball, still = make_ball(threat.norm, threat.eps), []
    chunks = _chunks(idx, bs)
    if progress and chunks:
        from ._progress import progress_bar   # bars in a terminal, one line per threat model in a log
        chunks = progress_bar(chunks, leave=False)
        chunks.comment = str(threat)
    for chunk in chunks:
        key = f"{threat}|{chunk[0].item()}-{chunk[-1].item()}|{len(chunk)}"
        if saved.get(key) is not None:   # finished before an interruption
            still.append(torch.tensor(saved.get(key), dtype=torch.bool))
            continue
        # fresh AutoAttack per chunk, as AutoAttack itself reseeds every attack on every batch
        aa = _autoattack(model, threat, budget, n_classes, seed, device, logger)
        # contiguous: pyautoattack calls .view on x_adv - x and breaks on permuted inputs
        xb, yb = x[chunk].to(device).contiguous(), y[chunk].to(device).contiguous()
        x_adv, _ = aa.run_standard_evaluation(xb, yb, batch_size=bs)
        inside = ball.contains(xb, x_adv)
        if not bool(inside.all()):
            raise RuntimeError(f"AutoAttack returned {int((~inside).sum())} point(s) outside the {threat} ball "
                               "or the [0,1] box: the evaluation would not be valid")
        with torch.no_grad():
            logits = model(x_adv)
        still.append((logits.argmax(dim=1) == yb).cpu())
        saved.put(key, still[-1].tolist())
    return torch.cat(still) if still else torch.zeros(0, dtype=torch.bool)


def evaluate_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats=None, budget='standard',
                        bs: int = 250, union_only: bool = False, seed: int = 0, device=None,
                        progress: bool = False, name: str | None = None, resume_file=None) -> RobustResult:
    """Clean accuracy, robust accuracy per threat model and over their union (per example).

    x: (N, C, H, W) floats in [0,1]; y: (N,) labels. threats: `ThreatModel`s or strings like
    'linf:8/255' (default: the paper's CIFAR-10 three). budget: 'standard' (AutoAttack's),
    'quick' or an `EvalBudget`. Every clean-correct point is attacked in every norm, so each
    figure is exact; `union_only=True` attacks a later norm only on points still robust in
    the union so far: the union stays exact, later per-norm figures may be upper bounds
    (`result.exact`). In a DDP run (torch.distributed initialised) each process attacks every
    world_size-th point and the per-example flags are gathered: all processes return the
    same complete result. resume_file: a JSON file where finished chunks are kept, so that an
    interrupted evaluation started again with the same arguments skips them (one file per
    process in a DDP run). The model runs in eval mode; its train/eval flags are restored, and
    the global torch RNG state too (AutoAttack reseeds it). device: the model's by default.
    """
    check_batch(x, y)
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x holds no examples")
    _check_count('bs', bs)
    threats, budget = _parse_threats(threats), EvalBudget.from_name(budget)
    device = torch.device(device) if device is not None else _model_device(model)
    x, y = x.detach(), y.detach().long().cpu()
    rank, world = rank_and_world()
    if resume_file is not None and world > 1:
        resume_file = Path(resume_file).with_suffix(f'.rank{rank}{Path(resume_file).suffix}')
    saved = _Progress(resume_file, _fingerprint(x, y, threats, budget, seed, bs, union_only, name))
    handler = _Collect()
    logger = _quiet_logger(handler)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == 'cuda' else []
    # AutoAttack calls torch.manual_seed(seed) on every batch: keep the caller's RNG stream intact
    with eval_mode(model), torch.random.fork_rng(devices=cuda):
        clean, n_classes = _clean_correct(model, x, y, bs, device)
        if n_classes < _MIN_CLASSES:
            raise ValueError(f"APGD-T needs a model with at least {_MIN_CLASSES} classes, this one has {n_classes}")
        union, flags, exact, seconds = clean.clone(), {}, {}, {}
        for threat in threats:
            start, key = time.perf_counter(), str(threat)
            todo = (union if union_only else clean).clone()  # the points this norm attacks
            robust = clean.clone()  # points left unattacked count as robust: an upper bound
            idx = todo.nonzero()[:, 0]
            # in a DDP run every process attacks its share of the points; the flags are gathered
            mine = idx[rank::world]
            flags_mine = _attack_threat(model, x, y, mine, threat, budget, n_classes, seed, device, bs,
                                        progress and rank == 0, logger, saved)
            for part, part_flags in gather_objects((mine.tolist(), flags_mine.tolist())):
                robust[part] = torch.tensor(part_flags, dtype=torch.bool)
            exact[key] = bool(torch.equal(todo, clean))
            union &= robust
            flags[key], seconds[key] = robust, time.perf_counter() - start
    n = x.shape[0]
    return RobustResult(
        n=n, clean=clean.float().mean().item(), robust={k: v.float().mean().item() for k, v in flags.items()},
        union=union.float().mean().item(), threats=[str(t) for t in threats], budget=budget.label, exact=exact,
        flags={'clean': clean.tolist(), **{k: v.tolist() for k, v in flags.items()}, 'union': union.tolist()},
        seconds=seconds, model=name, notes=handler.messages)
