"""Evaluation budgets: which of AutoAttack's attacks run, with which settings, per norm.

'standard' is the paper's protocol (APGD-CE then APGD-T with AutoAttack's standard settings),
'autoattack' is full AutoAttack (adds FAB-T and Square, pyautoattack's version='standard' for
every norm), 'quick' is a cheaper, opt-in APGD budget labelled as such in every report.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..threats import NORMS, canonical_norm

__all__ = ['APGDSettings', 'EvalBudget', 'BUDGETS', 'ATTACKS']

BUDGETS = ('standard', 'quick', 'autoattack')
ATTACKS = ('apgd-ce', 'apgd-t', 'fab-t', 'square')   # pyautoattack's names, in AutoAttack's order
_PAPER = ('apgd-ce', 'apgd-t')
_SQUARE_QUERIES = 5000                                # AutoAttack._set_version('standard')
_TITLE = {'apgd-ce': 'APGD-CE', 'apgd-t': 'APGD-T', 'fab-t': 'FAB-T', 'square': 'Square'}


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


# AutoAttack's version='standard' (AutoAttack._set_version) for APGD-CE and APGD-T.
_STANDARD = {'linf': APGDSettings(), 'l2': APGDSettings(),
             'l1': APGDSettings(n_restarts=5, n_target_classes=5, use_largereps=True)}
_QUICK = {'linf': APGDSettings(20, 1, 3), 'l2': APGDSettings(20, 1, 3),
          'l1': APGDSettings(20, 1, 3, use_largereps=True)}


@dataclass(frozen=True)
class EvalBudget:
    """A named budget: the attacks run in turn (each on the points still robust) and the
    APGD settings per norm. FAB-T and Square keep AutoAttack's standard settings, except
    `square_queries`."""
    name: str
    linf: APGDSettings = _STANDARD['linf']
    l2: APGDSettings = _STANDARD['l2']
    l1: APGDSettings = _STANDARD['l1']
    attacks: tuple = _PAPER
    square_queries: int = _SQUARE_QUERIES

    def __post_init__(self):
        for norm in NORMS:
            if not isinstance(getattr(self, norm), APGDSettings):
                raise TypeError(f"{norm} must be an APGDSettings, got {type(getattr(self, norm)).__name__}")
        attacks = (self.attacks,) if isinstance(self.attacks, str) else tuple(self.attacks)
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown or not attacks or len(set(attacks)) != len(attacks):
            raise ValueError(f"attacks must be distinct names among {', '.join(ATTACKS)}, got {list(attacks)}")
        object.__setattr__(self, 'attacks', attacks)
        _check_count('square_queries', self.square_queries)

    @classmethod
    def from_name(cls, name) -> 'EvalBudget':
        """'standard' (APGD-CE + APGD-T, AutoAttack's settings: the default everywhere),
        'autoattack' (full AutoAttack) or 'quick' (opt-in); an `EvalBudget` is returned as it is."""
        if isinstance(name, EvalBudget):
            return name
        key = str(name).strip().lower()
        if key == 'standard':
            return cls('standard')
        if key == 'autoattack':
            return cls('autoattack', attacks=ATTACKS)
        if key == 'quick':
            return cls('quick', **_QUICK)
        close = difflib.get_close_matches(key, BUDGETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ''
        raise ValueError(f"unknown evaluation budget {name!r}{hint}: use one of "
                         f"{', '.join(repr(b) for b in BUDGETS)} or an EvalBudget")

    def settings(self, norm: str) -> APGDSettings:
        """The settings used for `norm`."""
        return getattr(self, canonical_norm(norm))

    @property
    def standard_settings(self) -> bool:
        """True when every attack that runs has AutoAttack's standard settings."""
        return (all(self.settings(norm) == _STANDARD[norm] for norm in NORMS)
                and ('square' not in self.attacks or self.square_queries == _SQUARE_QUERIES))

    @property
    def is_standard(self) -> bool:
        """True for the paper's protocol: APGD-CE + APGD-T with AutoAttack's standard settings."""
        return self.standard_settings and self.attacks == _PAPER

    @property
    def is_autoattack(self) -> bool:
        """True for full AutoAttack: its four attacks with its standard settings."""
        return self.standard_settings and self.attacks == ATTACKS

    @property
    def label(self) -> str:
        """Short text for report titles; a budget other than AutoAttack's says so."""
        if self.is_standard:
            return "AutoAttack standard budget (APGD-CE + APGD-T)"
        if self.is_autoattack:
            return "full AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square)"
        plain = {norm: self.settings(norm).summary() for norm in NORMS}
        detail = plain['linf'] if len(set(plain.values())) == 1 else \
            '; '.join(f"{norm} {text}" for norm, text in plain.items())
        # l1's radius schedule is part of the standard budget, not of the summary: flag changes to it
        moved = [norm for norm in NORMS if self.settings(norm).use_largereps != _STANDARD[norm].use_largereps]
        if moved:
            detail += f"; use_largereps changed for {', '.join(moved)}"
        if self.attacks != _PAPER:
            detail += f"; attacks {', '.join(_TITLE[a] for a in self.attacks)}"
            if 'square' in self.attacks:
                detail += f" ({self.square_queries} Square queries)"
        return f"{self.name} budget (NOT AutoAttack standard): {detail}"
