"""The evaluation runner: clean accuracy, robust accuracy per threat and over their union, per example.

The paper (Section 2) counts a point as robust in the union only if it survives every
threat model, so flags are kept per example. Numbers come from our own forward passes on
the attacks' outputs, after checking that each output lies inside its threat. Which attacks
run, and how, each threat says (`eatai.evaluation.registry`); the runner knows no norm.
This layer knows torch and the attacks, never fastai.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from .._utils.dist import gather_objects, rank_and_world
from ..attacks import check_batch, eval_mode
from ..attacks.guards import check_labels
from ..threats import default_threats
from . import lp  # noqa: F401  registers the l_p threats
from .budget import EvalBudget, _check_count
from .cost import greedy_order
from .checks import check_logits, check_n, model_device
from .registry import AttackContext, Threat, get_threat, parse_threats
from .result import RobustResult
from .resume import Progress, chunk_key, fingerprint

__all__ = ['evaluate_robustness', 'check_n']


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


def _chunks(idx: torch.Tensor, bs: int) -> list[torch.Tensor]:
    return [idx[i:i + bs] for i in range(0, idx.numel(), bs)]


@torch.no_grad()
def _clean_correct(model, x: torch.Tensor, y: torch.Tensor, bs: int, device) -> tuple[torch.Tensor, int]:
    """(N,) bool on the CPU: classified correctly; and the number of classes of the model."""
    correct, n_classes = [], 0
    for i in range(0, x.shape[0], bs):
        yb, logits = y[i:i + bs].to(device), model(x[i:i + bs].to(device))
        check_labels(yb, logits)
        check_logits(logits)
        correct.append((logits.argmax(dim=1) == yb).cpu())
        n_classes = logits.shape[1]
    return torch.cat(correct), n_classes


def _attack_points(model, x, y, idx, threat: Threat, attack: str, context: AttackContext, bs, progress,
                   saved: Progress):
    """(len(idx),) bool: still correct on `attack`'s output inside `threat`, checked by us."""
    still, chunks = [], _chunks(idx, bs)
    if progress and chunks:
        from .._utils.progress import progress_bar   # bars in a terminal, one line per threat and attack in a log
        chunks = progress_bar(chunks, leave=False)
        chunks.comment = f"{threat} {attack}"
    for chunk in chunks:
        key = chunk_key(threat, attack, chunk)
        if saved.get(key) is not None:   # finished before an interruption
            still.append(torch.tensor(saved.get(key), dtype=torch.bool))
            continue
        xb, yb = x[chunk].to(context.device), y[chunk].to(context.device)
        x_adv = threat.attack(attack, model, xb, yb, context)
        inside = threat.contains(xb, x_adv)
        if not bool(inside.all()):
            raise RuntimeError(f"{attack} returned {int((~inside).sum())} point(s) outside the {threat} threat model "
                               "(its ball, or the [0,1] box): the evaluation would not be valid")
        with torch.no_grad():
            logits = model(x_adv)
        still.append((logits.argmax(dim=1) == yb).cpu())
        saved.put(key, still[-1].tolist())
    return torch.cat(still) if still else torch.zeros(0, dtype=torch.bool)


def _steps(threats: list[Threat], budget, union_only: bool) -> list[tuple[str, Threat]]:
    """(attack, threat) in the order they run: per threat (every attack on every point robust
    to it so far), or union-only round by round across threats (every threat's first attack,
    then every threat's second, ...: cheap attacks first), each on the points still robust in the union."""
    plans = [(threat, threat.attacks(budget)) for threat in threats]
    if union_only:
        rounds = max(len(attacks) for _, attacks in plans)
        return [(attacks[k], threat) for k in range(rounds) for threat, attacks in plans if k < len(attacks)]
    return [(attack, threat) for threat, attacks in plans for attack in attacks]


_PROBE = 32   # points of the first chunk that union_only learns its order on (bench/eval_cost.py)


def _first_points(mask: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: the first k True entries of `mask`."""
    first = torch.zeros_like(mask)
    first[mask.nonzero()[:k, 0]] = True
    return first


def _learned_order(steps: list[tuple[str, Threat]], stats: dict, saved: Progress) -> list[tuple[str, Threat]]:
    """`steps` by breaks per second on the probe (rank 0's measurement in a DDP run); a resumed run
    reuses the order it saved, so that its chunks are found again."""
    names = {f"{attack}|{threat}": (attack, threat) for attack, threat in steps}
    order = saved.get('union_only order')
    if order is None:
        order = gather_objects([f"{attack}|{threat}" for attack, threat in greedy_order(stats)])[0]
        saved.put('union_only order', order)
    return [names[name] for name in order]


class _State:
    """Per-threat flags of an evaluation as its steps run, with what each step cost and broke.
    attack_points(threat, attack, idx) -> (len(idx),) bool: still correct after that attack."""

    def __init__(self, threats: list[Threat], clean: torch.Tensor, union_only: bool, attack_points, union: list[str]):
        self.union_only, self.attack_points = union_only, attack_points
        keys = [str(t) for t in threats]
        self.union_keys = union
        # points never attacked count as robust: an upper bound; what is not an attack judges every point
        self.robust = {str(t): clean.clone() if t.in_union else torch.ones_like(clean) for t in threats}
        self.clean = clean
        self.skipped = {k: torch.zeros_like(clean) for k in keys}
        self.seconds = {k: 0.0 for k in keys}
        self.log: list[dict] = []

    def union(self) -> torch.Tensor:
        """(N,) bool: robust to every threat of the union (clean-correct, when none is in it)."""
        return torch.stack([self.clean] + [self.robust[k] for k in self.union_keys]).all(dim=0)

    def run(self, steps, scope: torch.Tensor) -> dict:
        """Each (attack, threat) of `steps` on the points of `scope` still robust (in the union with
        `union_only`, else to that threat); returns (attacked, broken, seconds) per step."""
        rank, world = rank_and_world()
        stats = {}
        for attack, threat in steps:
            start, key = time.perf_counter(), str(threat)
            gated = self.union_only and key in self.union_keys
            todo = (self.union() if gated else self.robust[key]) & scope   # the points this attack runs on
            self.skipped[key] |= self.robust[key] & scope & ~todo
            idx = todo.nonzero()[:, 0]
            # in a DDP run every process attacks its share of the points; the flags are gathered
            mine = idx[rank::world]
            flags_mine = self.attack_points(threat, attack, mine)
            broken = []
            for part, part_flags in gather_objects((mine.tolist(), flags_mine.tolist())):
                self.robust[key][part] &= torch.tensor(part_flags, dtype=torch.bool)
                broken += [i for i, still in zip(part, part_flags) if not still]
            spent = time.perf_counter() - start
            self.seconds[key] += spent
            self.log.append({'threat': key, 'attack': attack, 'attacked': len(idx), 'broken': sorted(broken),
                             'seconds': spent})
            stats[(attack, threat)] = (len(idx), len(broken), spent)
        return stats


def _union_and_groups(threats: list[Threat], union, groups) -> tuple[list[str], dict[str, list[str]]]:
    """The keys of the union's threats and of each group, checked against the threats evaluated."""
    keys = {str(t): t for t in threats}
    union = [k for k, t in keys.items() if t.in_union] if union is None else [str(get_threat(t)) for t in union]
    groups = {str(g): [str(get_threat(t)) for t in members] for g, members in (groups or {}).items()}
    for what, members in [('union', union), *((f'group {g!r}', m) for g, m in groups.items())]:
        missing = [k for k in members if k not in keys]
        if missing:
            raise ValueError(f"the {what} names threats that are not evaluated: {missing} (threats: {list(keys)})")
    not_attacks = [k for k in union if not keys[k].in_union]
    if not_attacks:
        raise ValueError(f"{not_attacks} are not attacks and cannot be in the union")
    return union, groups


def evaluate_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats=None, budget='standard',
                        bs: int = 250, union_only: bool = False, seed: int = 0, device=None,
                        progress: bool = False, name: str | None = None, resume_file=None,
                        union=None, groups: dict | None = None) -> RobustResult:
    """Clean accuracy, robust accuracy per threat model and over their union (per example).

    x: (N, C, H, W) floats in [0,1]; y: (N,) labels. threats: registered threats (`get_threat`),
    `ThreatModel`s or strings like 'linf:8/255' (default: the paper's CIFAR-10 three; `register_threat`
    adds others). budget: 'standard' (APGD-CE + APGD-T with AutoAttack's settings, the paper's
    protocol), 'autoattack' (full AutoAttack: adds FAB-T and Square, pyautoattack's
    version='standard' per norm), 'quick' or an `EvalBudget`; each threat's attacks run in turn,
    each only on the points still robust.

    A point's verdict does not depend on its batch: every random start and restart is drawn
    from a stream of its own, keyed to the seed, the threat, the attack and the point (its
    pixels and label), and Square's shared square positions do not depend on the batch
    either. So any `bs`, chunking, resuming, DDP sharding or `union_only` gives the same
    flags, up to floating-point differences of the model between batch shapes (which can move
    a point that sits on a decision boundary; none seen on CPU so far, see bench/eval_cost.py).

    Every clean-correct point gets every attack of every threat, so each figure is exact.
    `union_only=True` runs each attack only on points still robust in the union so far: on the
    first chunk (32 points at most) round by round across the threats, cheap attacks first; on the
    rest in the order of what broke most per second on that chunk. The union flags are the same as
    without it, while per-threat figures of skipped points may be upper bounds (`result.exact`).
    `result.steps` logs every step: its threat, attack, points attacked, points broken, seconds. In a DDP run
    (torch.distributed initialised) each process attacks every world_size-th point and the
    per-example flags are gathered: all processes return the same complete result.
    union: the threats whose union is reported (default: every attack among `threats`); the others are
    evaluated on their own. What is not an attack (`in_union=False`: common corruptions) is judged on
    every point, clean-correct or not, as corruption accuracy is. groups: named sets of threats that
    `result.summary()` summarises (average and worst-case accuracy), e.g. {'unforeseen': ['stadv:0.05']}.
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
    threats = parse_threats(default_threats('cifar10') if threats is None else threats)
    union_keys, groups = _union_and_groups(threats, union, groups)
    budget = EvalBudget.from_name(budget)
    device = model_device(model, device)
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
        for threat in threats:
            threat.check(budget, n_classes)
        context = AttackContext(budget, seed, n_classes, device, logger)
        state = _State(threats, clean, union_only, lambda threat, attack, idx: _attack_points(
            model, x, y, idx, threat, attack, context, bs, progress and rank == 0, saved), union_keys)
        steps = _steps(threats, budget, union_only)
        if union_only and len(steps) > 1:
            # learn the order on the first chunk (run cheap-first), then run the rest by breaks per second
            probe = _first_points(clean, min(bs, _PROBE))
            stats = state.run(steps, probe)
            state.run(_learned_order(steps, stats, saved), ~probe)
        else:
            state.run(steps, torch.ones_like(clean))
        union, robust, skipped, seconds, log = state.union(), state.robust, state.skipped, state.seconds, state.log
    keys = [str(t) for t in threats]
    exact = {k: not bool(skipped[k].any()) for k in keys}
    return RobustResult(
        n=x.shape[0], clean=clean.float().mean().item(), robust={k: v.float().mean().item() for k, v in robust.items()},
        union=union.float().mean().item(), threats=keys, budget=budget.label, exact=exact,
        flags={'clean': clean.tolist(), **{k: v.tolist() for k, v in robust.items()}, 'union': union.tolist()},
        seconds=seconds, model=name, notes=handler.messages, steps=log,
        outside_union=[k for k in keys if k not in union_keys], groups=groups)
