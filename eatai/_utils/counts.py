"""The check of a number of examples, shared by the data layer and evaluation."""
from __future__ import annotations

__all__ = ['check_n']


def check_n(n, available: int | None = None) -> None:
    """Raise ValueError unless n is an integer, 1 <= n <= available (the number of examples)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if available is not None and n > available:
        raise ValueError(f"n={n} is larger than the data: it holds {available} examples; use n <= {available}")
