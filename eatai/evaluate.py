"""Robust accuracy per threat model and over their union, with AutoAttack's attacks (pyautoattack).

The paper (Section 2) counts a point as robust in the union only if it survives every
threat model, so flags are kept per example. Numbers come from our own forward passes on
the attack's outputs, after checking that each output lies in its ball and in [0,1].
This layer knows torch and `pyautoattack`, never fastai.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._dist import gather_objects, rank_and_world
from ._io import atomic_write_text
from ._eval_progress import Progress, chunk_key, fingerprint
from ._point_rng import PointStreams
from .attacks import check_batch, eval_mode, make_ball
from .attacks.guards import check_labels, looks_like_probabilities
from .budget import ATTACKS, BUDGETS, APGDSettings, EvalBudget, _check_count
from .threats import ThreatModel, default_threats, parse_threat

__all__ = ['APGDSettings', 'EvalBudget', 'BUDGETS', 'ATTACKS', 'RobustResult', 'evaluate_robustness', 'check_n']

_AA_NORM = {'linf': 'Linf', 'l2': 'L2', 'l1': 'L1'}
_MIN_CLASSES = 4  # APGD-T's targeted DLR loss reads the 4th largest logit


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


def _autoattack(model, threat: ThreatModel, budget: EvalBudget, attack: str, n_classes: int, seed: int, device,
                logger):
    """pyautoattack's AutoAttack(version='standard') for `threat`, running `attack` alone,
    with `budget`'s APGD settings and Square queries."""
    from pyautoattack import AutoAttack  # imported here: importing eatai stays light

    # version='standard' sets every attack as AutoAttack's standard evaluation has it, per norm
    aa = AutoAttack(model, norm=_AA_NORM[threat.norm], eps=threat.eps, seed=seed, device=device, version='standard')
    aa.attacks_to_run = [attack]
    aa.verbose = False
    aa.logger = aa.apgd.logger = aa.apgd_targeted.logger = logger
    settings = budget.settings(threat.norm)
    _configure(aa.apgd, settings, settings.n_restarts)
    _configure(aa.apgd_targeted, settings, settings.n_restarts_targeted)
    # AutoAttack would index past the logits with more targets than other classes
    aa.apgd_targeted.n_target_classes = min(settings.n_target_classes, n_classes - 1)
    aa.fab.n_target_classes = min(aa.fab.n_target_classes, n_classes - 1)
    aa.square.n_queries = budget.square_queries
    return aa


def _draw_per_point(aa, seed: int, threat) -> None:
    """Random starts per point for the attacks of `aa` that draw them (see `PointStreams`).
    FAB-T draws none: AutoAttack runs it with one restart, which starts at the clean point."""
    streams = PointStreams(f"{seed}|{threat}")
    for name, attack in (('apgd-ce', aa.apgd), ('apgd-t', aa.apgd_targeted), ('square', aa.square)):
        streams.wrap(attack, name)


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
        if looks_like_probabilities(logits):
            raise ValueError("the model returns probabilities (outputs in [0,1] summing to 1), not logits: "
                             "the attacks' losses need logits and would overestimate robustness; remove the "
                             "final softmax (log-probabilities are fine)")
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


def _attack_points(model, x, y, idx, threat, attack, budget, n_classes, seed, device, bs, progress, logger,
                   saved: Progress):
    """(len(idx),) bool: still correct on `attack`'s output within `threat`, checked by us."""
    ball, still = make_ball(threat.norm, threat.eps), []
    chunks = _chunks(idx, bs)
    if progress and chunks:
        from ._progress import progress_bar   # bars in a terminal, one line per threat model and attack in a log
        chunks = progress_bar(chunks, leave=False)
        chunks.comment = f"{threat} {attack}"
    for chunk in chunks:
        key = chunk_key(threat, attack, chunk)
        if saved.get(key) is not None:   # finished before an interruption
            still.append(torch.tensor(saved.get(key), dtype=torch.bool))
            continue
        # fresh AutoAttack per chunk, as AutoAttack itself reseeds every attack on every batch
        aa = _autoattack(model, threat, budget, attack, n_classes, seed, device, logger)
        # contiguous: pyautoattack calls .view on x_adv - x and breaks on permuted inputs
        xb, yb = x[chunk].to(device).contiguous(), y[chunk].to(device).contiguous()
        _draw_per_point(aa, seed, threat)
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


def _steps(threats, attacks, union_only: bool) -> list[tuple]:
    """(attack, threat) in the order they run: per threat (every attack on every point robust
    to it so far), or union-only attack by attack across threats, cheap attacks first, each on
    the points still robust in the union."""
    if union_only:
        return [(attack, threat) for attack in attacks for threat in threats]
    return [(attack, threat) for threat in threats for attack in attacks]


def check_n(n, available: int | None = None) -> None:
    """Raise ValueError unless n is an integer, 1 <= n <= available (the number of examples)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if available is not None and n > available:
        raise ValueError(f"n={n} is larger than the data: it holds {available} examples; use n <= {available}")


def evaluate_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats=None, budget='standard',
                        bs: int = 250, union_only: bool = False, seed: int = 0, device=None,
                        progress: bool = False, name: str | None = None, resume_file=None) -> RobustResult:
    """Clean accuracy, robust accuracy per threat model and over their union (per example).

    x: (N, C, H, W) floats in [0,1]; y: (N,) labels. threats: `ThreatModel`s or strings like
    'linf:8/255' (default: the paper's CIFAR-10 three). budget: 'standard' (APGD-CE + APGD-T
    with AutoAttack's settings, the paper's protocol), 'autoattack' (full AutoAttack: adds
    FAB-T and Square, pyautoattack's version='standard' per norm), 'quick' or an `EvalBudget`;
    each attack runs only on the points still robust.

    A point's verdict does not depend on its batch: every random start and restart is drawn
    from a stream of its own, keyed to the seed, the threat, the attack and the point (its
    pixels and label), and Square's shared square positions do not depend on the batch
    either. So any `bs`, chunking, resuming, DDP sharding or `union_only` gives the same
    flags, up to floating-point differences of the model between batch shapes (which can move
    a point that sits on a decision boundary; none seen on CPU so far, see bench/eval_cost.py).

    Every clean-correct point gets every attack in every norm, so each figure is exact.
    `union_only=True` runs the attacks cheapest first across the norms, each only on points
    still robust in the union so far: the union flags are the same as without it, while
    per-norm figures of skipped points may be upper bounds (`result.exact`). In a DDP run
    (torch.distributed initialised) each process attacks every world_size-th point and the
    per-example flags are gathered: all processes return the same complete result.
    resume_file: a JSON file where finished chunks are kept, so that an interrupted evaluation
    started again with the same arguments skips them (one file per process in a DDP run); a
    file written for other inputs, model weights, threats, budget, seed or bs is refused. The
    model runs in eval mode; its train/eval flags are restored, and the global torch RNG state
    too (AutoAttack reseeds it). device: the model's by default.
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
    # the model's weights are hashed only when there is a file to check them against
    saved = Progress(resume_file, fingerprint(model, x, y, threats, budget, seed, bs, union_only, name)
                     if resume_file is not None else {})
    handler = _Collect()
    logger = _quiet_logger(handler)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == 'cuda' else []
    # AutoAttack calls torch.manual_seed(seed) on every batch: keep the caller's RNG stream intact
    with eval_mode(model), torch.random.fork_rng(devices=cuda):
        clean, n_classes = _clean_correct(model, x, y, bs, device)
        if n_classes < _MIN_CLASSES:
            raise ValueError(f"APGD-T needs a model with at least {_MIN_CLASSES} classes, this one has {n_classes}")
        keys = [str(t) for t in threats]
        robust = {k: clean.clone() for k in keys}      # points never attacked count as robust: an upper bound
        skipped = {k: torch.zeros_like(clean) for k in keys}
        seconds = {k: 0.0 for k in keys}
        for attack, threat in _steps(threats, budget.attacks, union_only):
            start, key = time.perf_counter(), str(threat)
            union = torch.stack(list(robust.values())).all(dim=0)
            todo = union if union_only else robust[key]   # the points this attack runs on
            skipped[key] |= robust[key] & ~todo
            idx = todo.nonzero()[:, 0]
            # in a DDP run every process attacks its share of the points; the flags are gathered
            mine = idx[rank::world]
            flags_mine = _attack_points(model, x, y, mine, threat, attack, budget, n_classes, seed, device, bs,
                                        progress and rank == 0, logger, saved)
            for part, part_flags in gather_objects((mine.tolist(), flags_mine.tolist())):
                robust[key][part] &= torch.tensor(part_flags, dtype=torch.bool)
            seconds[key] += time.perf_counter() - start
        union = torch.stack(list(robust.values())).all(dim=0)
    exact = {k: not bool(skipped[k].any()) for k in keys}
    return RobustResult(
        n=x.shape[0], clean=clean.float().mean().item(), robust={k: v.float().mean().item() for k, v in robust.items()},
        union=union.float().mean().item(), threats=keys, budget=budget.label, exact=exact,
        flags={'clean': clean.tolist(), **{k: v.tolist() for k, v in robust.items()}, 'union': union.tolist()},
        seconds=seconds, model=name, notes=handler.messages)
