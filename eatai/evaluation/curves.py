"""Robustness curves (the paper's Figure 1): robust accuracy against the radius (a threat's strength), per threat.

Any registered threat whose strengths are nested (`Threat.nested`) has a curve: its `quick_attack` at each
strength of a ladder, its `size` the strength a found adversarial needs. For the l_p balls that is APGD-CE and
the norm of the perturbation; StAdv, ReColorAdv and JPEG run their own attacks (`quick_attack`, n_iter steps)
at each strength. Common corruptions have none: a severity does not contain the lower ones, so a point has no
smallest breaking severity (their accuracy per severity is `evaluate_corruptions`'s).

Why APGD on a ladder of radii and not FAB: the curve needs, per point, the norm of its smallest
adversarial perturbation. FAB (pyautoattack's `FABAttack_PT`) estimates exactly that, but on
the bundled CNN on CPU one FAB-T target run of 100 iterations took 4.3x the time of a 100-step
APGD run on the same points (its projections sort every row, and untargeted FAB needs one
backward per class), and AutoAttack's FAB-T tries 9 targets. APGD is also the attack of our
evaluation, so the curve at the evaluated radius speaks the language of `robust_eval`.
So: APGD-CE (evaluation settings, random start) runs at each radius of an ascending ladder on
the points not yet broken; a point's minimal perturbation is the norm of the first
adversarial found (at most that radius: a real adversarial, checked by our own forward pass,
in the ball and in [0,1]). Accuracy at r = share of points whose minimal perturbation exceeds
r; clean errors have norm 0, points never broken have norm inf. The curve is an upper bound
of the true robust accuracy at every r and is non-increasing by construction.
Tolerance against `robust_eval` at the evaluated radius: the curve uses APGD-CE only, the
evaluation adds APGD-T, so the curve may sit above it; it may sit below only by points that
the smaller radii broke and the evaluation's attack missed, the attack's noise, which we bound
by two binomial standard errors, 2 sqrt(p (1 - p) / n) (`agreement_tolerance`).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..attacks import check_batch, eval_mode
from ..threats import NORMS
from . import lp  # noqa: F401  registers the l_p threats
from .checks import check_logits, model_device
from .registry import canonical_threat, get_threat, parse_threats

__all__ = ['ModelCurves', 'RobustnessCurves', 'agreement_tolerance', 'check_radii', 'default_radii',
           'minimal_perturbations', 'robustness_curves', 'threat_radii']

_LADDER = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)   # default radii, in units of the evaluated eps


def check_radii(radii, norm: str = '') -> list[float]:
    """The radii as floats; ValueError if empty, negative, not finite or not strictly increasing."""
    where = f" for {norm}" if norm else ''
    radii = [float(r) for r in radii]
    if not radii:
        raise ValueError(f"the grid of radii{where} is empty: give at least one radius >= 0")
    bad = [r for r in radii if not math.isfinite(r) or r < 0]
    if bad:
        raise ValueError(f"radii{where} must be finite and >= 0, got {bad}")
    if any(b <= a for a, b in zip(radii, radii[1:])):
        raise ValueError(f"radii{where} must be strictly increasing (sorted, no repeats), got {radii}")
    return radii


def default_radii(eps: float, ladder=_LADDER, high: float = math.inf) -> list[float]:
    """The strengths `ladder` times eps (default 0 to 2 eps: 0, eps/4, eps/2, 3 eps/4, eps, 1.5 eps, 2 eps), those
    above `high` (the largest strength the threat allows) replaced by `high` once."""
    radii = [k * eps for k in ladder]
    kept = [r for r in radii if r <= high]
    return kept + [high] if len(kept) < len(radii) and (not kept or kept[-1] < high) else kept


def threat_radii(threat) -> list[float]:
    """The default strengths of a threat's curve: its `curve_ladder` (0 to 2x for a ball and StAdv; doublings
    for JPEG, whose default 0.25 searches advex-uar's CIFAR-10 calibration 0.03125 to 1; up to 5/3 for
    ReColorAdv, 0.1 at its default 0.06) times its strength, within its `strength_range`."""
    return default_radii(threat.strength, getattr(threat, 'curve_ladder', _LADDER),
                         getattr(threat, 'strength_range', (0.0, math.inf))[1])


def _check_nested(threat) -> None:
    if not getattr(threat, 'nested', True):
        raise ValueError(f"{threat} has no robustness curve: a curve needs a threat that grows with its strength "
                         "(each point's smallest breaking strength), and its strengths are not nested"
                         + ("; for accuracy per severity use learn.corruption_eval(...) / evaluate_corruptions(...)"
                            if getattr(threat, 'name', '') == 'corruption' else ''))


def agreement_tolerance(p: float, n: int) -> float:
    """Two binomial standard errors of an accuracy p measured on n points."""
    return 2 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


@torch.no_grad()
def _predict(model, x, bs, device) -> torch.Tensor:
    out = []
    for i in range(0, len(x), bs):
        logits = model(x[i:i + bs].to(device))
        check_logits(logits)
        out.append(logits.argmax(1).cpu())
    return torch.cat(out)


def minimal_perturbations(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, radii,
                          n_iter: int = 100, bs: int = 250, seed: int = 0, device=None) -> torch.Tensor:
    """(N,) per point, the size of the smallest adversarial its threat's quick attack (APGD-CE for a ball)
    found on the ascending ladder `radii` (0 for clean errors, inf where none was found up to the last one).

    norm: a registered threat's name ('linf', 'l2', 'l1', ...). x: (N, C, H, W) in [0,1]; y: (N,) labels.
    Each radius attacks only the points not yet broken."""
    check_batch(x, y)
    name = canonical_threat(norm)
    radii = check_radii(radii, name)
    device = model_device(model, device)
    x, y = x.detach().cpu(), y.detach().long().cpu()
    with eval_mode(model):
        correct = _predict(model, x, bs, device) == y
        found = torch.where(correct, torch.full((len(y),), math.inf, dtype=torch.float64),
                            torch.zeros(len(y), dtype=torch.float64))
        for r in (r for r in radii if r > 0):
            threat = get_threat(name, strength=r)
            todo = torch.isinf(found).nonzero()[:, 0]
            for chunk in (todo[i:i + bs] for i in range(0, len(todo), bs)):
                xb, yb = x[chunk].to(device), y[chunk].to(device)
                x_adv = threat.quick_attack(model, xb, yb, n_iter=n_iter, seed=seed)
                with torch.no_grad():   # our own verdict, not the attack's
                    broken = ((model(x_adv).argmax(1) != yb) & threat.contains(xb, x_adv)).cpu()
                # inside the threat of strength r (checked above): a float32 size a hair above r is r
                size = threat.size(xb, x_adv).cpu().double().clamp(max=r)   # float64, as r
                found[chunk[broken]] = size[broken]
    return found


def _strength_label(name: str, strength: float) -> str:
    """'radius' for a ball; a threat this session has not registered (curves read from JSON): 'strength'."""
    try:
        return get_threat(name, strength=strength).strength_label
    except ValueError:
        return 'strength'


@dataclass
class ModelCurves:
    """One model's minimal perturbations per threat (keyed by its name: 'linf', ...), and the radii searched."""
    name: str
    n: int
    eps: dict[str, float]                     # the evaluated (training) radius per norm
    radii: dict[str, list[float]]             # the ladder per norm
    min_norms: dict[str, list[float | None]]  # per point; None: no adversarial up to the last radius
    attack: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def norms(self) -> list[str]:
        return list(self.radii)

    @property
    def clean(self) -> float:
        """Clean accuracy (the curve at radius 0)."""
        norms = self.min_norms[self.norms[0]]
        return sum(v is None or v > 0 for v in norms) / self.n

    def accuracy(self, norm: str, radii=None) -> list[float]:
        """Robust accuracy at each radius (default: the ladder): share of points whose minimal
        perturbation exceeds it. Radii past the ladder's last one are refused (unknown there)."""
        radii = self.radii[norm] if radii is None else check_radii(radii, norm)
        if radii[-1] > self.radii[norm][-1] * (1 + 1e-6):
            raise ValueError(f"radius {radii[-1]:g} is past the largest radius searched for {norm} "
                             f"({self.radii[norm][-1]:g})")
        norms = [math.inf if v is None else v for v in self.min_norms[norm]]
        return [sum(v > r for v in norms) / self.n for r in radii]

    def at_eps(self, norm: str) -> float:
        """Robust accuracy at the evaluated radius."""
        return self.accuracy(norm, [self.eps[norm]])[0]


@dataclass
class RobustnessCurves:
    """Curves of one or several models; `a + b` overlays them, `.plot()` draws them."""
    models: list[ModelCurves]

    def __add__(self, other: 'RobustnessCurves') -> 'RobustnessCurves':
        return RobustnessCurves(self.models + other.models)

    def __repr__(self) -> str:
        rows = [f"{m.name}: clean {m.clean:.1%}, " + ', '.join(f"{k}@{m.eps[k]:.4g} {m.at_eps(k):.1%}" for k in m.norms)
                for m in self.models]
        return f"RobustnessCurves({'; '.join(rows)})"

    def to_dict(self) -> dict:
        """Plain dict of builtins (inf stored as null), ready for JSON."""
        return {'models': [asdict(m) for m in self.models]}

    def to_json(self, path=None) -> str:
        """The curves as JSON text; also written to `path` when one is given."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path_or_str) -> 'RobustnessCurves':
        """Read curves back from JSON text or from a file holding it."""
        text = str(path_or_str)
        if not text.lstrip().startswith('{'):
            text = Path(path_or_str).read_text()
        return cls([ModelCurves(**m) for m in json.loads(text)['models']])

    def plot(self, norms=None, figsize=None):
        """One panel per norm, every model overlaid, the evaluated radius as a dashed line.
        Returns the matplotlib Figure."""
        import matplotlib.pyplot as plt
        norms = norms or list(dict.fromkeys(k for m in self.models for k in m.norms))
        fig, axes = plt.subplots(1, len(norms), figsize=figsize or (4 * len(norms), 3.3), squeeze=False)
        for ax, norm in zip(axes[0], norms):
            for model in (m for m in self.models if norm in m.radii):
                radii = model.radii[norm]
                ax.plot(radii, [100 * a for a in model.accuracy(norm)], marker='o', ms=3, label=model.name)
            eps = next(m.eps[norm] for m in self.models if norm in m.eps)
            ax.axvline(eps, color='grey', ls='--', lw=1)
            ax.text(eps, 98, f' eps={eps:.4g}', color='grey', va='top', fontsize=8)
            ax.set(xlabel=f'{norm} {_strength_label(norm, eps)}', ylabel='robust accuracy (%)', ylim=(0, 100),
                   title=norm)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8, loc='lower left')   # the eps label sits top right
        fig.suptitle(f"robust accuracy against the radius ({self.models[0].attack}, n={self.models[0].n})",
                     fontsize=9)
        fig.tight_layout()
        return fig


def robustness_curves(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norms=NORMS, radii=None,
                      n_iter: int = 100, bs: int = 250, seed: int = 0, device=None, name: str = 'model',
                      dataset: str = 'cifar10') -> RobustnessCurves:
    """Robust accuracy over a grid of strengths per threat, from one minimal-perturbation search per threat.

    norms: threat names ('linf', 'l2', 'l1': the dataset's radius is the marked one; any registered
    threat with a default: 'stadv', 'recolor', 'jpeg') or threats such as 'l2:0.5'. Common corruptions have
    no curve (their severities are not nested): ValueError. radii: one ascending list (with a single
    threat) or a dict name -> list; default `threat_radii(threat)` (0 to 2x the strength for a ball). n_iter: steps of the quick
    attack per radius (100: AutoAttack's APGD)."""
    if isinstance(norms, (list, tuple)) and not norms:
        raise ValueError(f"norms is empty: give some of {NORMS}")
    threats = parse_threats(norms, dataset)
    for t in threats:
        _check_nested(t)
    if radii is not None and not isinstance(radii, dict):
        if len(threats) != 1:
            raise ValueError("radii as one list is ambiguous with several norms: give a dict norm -> radii")
        radii = {threats[0].name: radii}
    grids = {t.name: check_radii(radii[t.name] if radii and t.name in radii else threat_radii(t), t.name)
             for t in threats}
    found, seconds = {}, {}
    for t in threats:
        start = time.perf_counter()
        norms_t = minimal_perturbations(model, x, y, t.name, grids[t.name], n_iter=n_iter, bs=bs, seed=seed,
                                        device=device)
        found[t.name] = [None if math.isinf(v) else v for v in norms_t.tolist()]
        seconds[t.name] = time.perf_counter() - start
    attack = f"{' / '.join(dict.fromkeys(t.quick_attack_name for t in threats))} {n_iter} it. per radius"
    return RobustnessCurves([ModelCurves(name, len(y), {t.name: t.strength for t in threats}, grids, found, attack,
                                         seconds)])
