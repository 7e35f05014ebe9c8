"""`RobustResult`: clean, per-threat and union robust accuracy with per-example flags, JSON in and out."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ['RobustResult']


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
    # one entry per attack step, in the order run: threat, attack, points attacked, indices it broke, seconds
    steps: list[dict] = field(default_factory=list)

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
