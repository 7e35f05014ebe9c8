"""`RobustResult`: clean, per-threat and union robust accuracy with per-example flags, JSON in and out."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ['RobustResult', 'RESULTS_FORMAT', 'check_format']

# The layout of results JSON. 1: files without the key (eatai 0.1.0 before it); 2: the key and
# `eatai_version` written, `steps`, `outside_union`, `groups` optional. A reader takes any format up
# to its own and refuses a later one (written by a newer eatai) with one line saying so.
RESULTS_FORMAT = 2
# fields a results file must hold (the rest have defaults), with the JSON types they must have
_REQUIRED = {'n': int, 'clean': (int, float), 'robust': dict, 'union': (int, float), 'threats': list,
             'budget': str, 'exact': dict, 'flags': dict, 'seconds': dict}
_DERIVED = ('summary', 'mCA', 'results_format', 'eatai_version')   # written for readers, not read back


def check_format(data: dict) -> None:
    """Raise ValueError (one line) when `data` (a results file's JSON object) was written in a
    results format later than this eatai reads."""
    fmt = data.get('results_format', 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > RESULTS_FORMAT:
        from .. import __version__
        raise ValueError(f"written by eatai {data.get('eatai_version', '(unknown version)')} in results format {fmt!r}; "
                         f"this eatai {__version__} reads formats up to {RESULTS_FORMAT}: upgrade eatai to read it")


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
    # threats judged but not in the union (common corruptions), and named sets of threats to summarise
    outside_union: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def __repr__(self) -> str:
        parts = [f"clean={self.clean:.1%}"]
        parts += [f"{t}={'<=' if not self.exact.get(t, True) else ''}{self.robust[t]:.1%}" for t in self.threats]
        parts.append(f"union={self.union:.1%}")
        name = f"{self.model!r}, " if self.model else ''
        return f"RobustResult({name}n={self.n}, {', '.join(parts)}, budget={self.budget!r})"

    @property
    def corruptions(self) -> list[str]:
        """The common corruptions evaluated ('corruption:fog:3'), outside the union."""
        return [t for t in self.outside_union if t.startswith('corruption:')]

    @property
    def mca(self) -> float | None:
        """Mean corruption accuracy over every corruption and severity evaluated (RobustBench's mCA), or None."""
        return self.summary(self.corruptions)['average'] if self.corruptions else None

    def summary(self, threats=None) -> dict:
        """Average and worst-case accuracy over `threats` (default: every group of `groups`), as
        MultiRobustBench (Dai et al., ICML 2023) summarises a set of attacks: the average is the mean of
        the threats' robust accuracies, the worst case the fraction of points robust to all of them at
        once (the adversary picks, per point, its best threat). `exact` is False where a member is
        an upper bound. Returns {name: {'threats', 'average', 'worst', 'exact'}}, or one such dict
        for a list of threats."""
        if threats is not None:
            return self._summarise(list(threats))
        return {name: self._summarise(members) for name, members in self.groups.items()}

    def _summarise(self, keys: list[str]) -> dict:
        unknown = [k for k in keys if k not in self.robust]
        if unknown or not keys:
            raise ValueError(f"no such threats in this result: {unknown or 'none given'}; it has {self.threats}")
        flags = [self.flags[k] for k in keys]
        worst = sum(all(point) for point in zip(*flags)) / self.n
        return {'threats': keys, 'average': sum(self.robust[k] for k in keys) / len(keys), 'worst': worst,
                'exact': all(self.exact.get(k, True) for k in keys)}

    def to_dict(self) -> dict:
        """Plain dict of builtins, ready for JSON (with the groups' `summary()` and `mca` for readers of the file)."""
        data = asdict(self)
        if self.groups:
            data['summary'] = self.summary()
        if self.corruptions:
            data['mCA'] = self.mca
        from .. import __version__
        data.update(results_format=RESULTS_FORMAT, eatai_version=__version__)
        return data

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
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data) -> 'RobustResult':
        """A result from `to_dict`'s form (or an older eatai's). A later results format, a missing or
        unknown field or a field of the wrong type raises ValueError with one line naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"not an eatai result: a JSON {type(data).__name__}, not an object")
        check_format(data)
        data = {k: v for k, v in data.items() if k not in _DERIVED}   # derived from the flags, not stored
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"not an eatai result, or a damaged one: missing field{'s' * (len(missing) > 1)} "
                             f"{', '.join(map(repr, missing))}")
        fields = set(cls.__dataclass_fields__)
        unknown = [k for k in data if k not in fields]
        if unknown:
            raise ValueError(f"unknown field{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}: "
                             "written by another eatai version?")
        wrong = [f"{k!r} ({type(data[k]).__name__})" for k, kind in _REQUIRED.items()
                 if not isinstance(data[k], kind) or isinstance(data[k], bool)]
        if wrong:
            raise ValueError(f"fields of the wrong type: {', '.join(wrong)}")
        absent = [t for t in data['threats'] if t not in data['robust']]
        if absent:
            raise ValueError(f"threats without a robust accuracy: {', '.join(map(repr, absent))}")
        return cls(**data)
