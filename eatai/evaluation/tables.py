"""Rich tables of `RobustResult`s in the layout of the paper's Table 2.

Accuracies in percent with one decimal; every row after the first also shows its signed
difference to the first row. Upper bounds (from `union_only` evaluations) are marked.
"""
from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import lp  # noqa: F401  registers the l_p threats
from .registry import get_threat
from .result import RobustResult

__all__ = ['results_table', 'print_results', 'results_text']

_BOUND = '≤'


def _rows(rows) -> list[tuple[str, RobustResult]]:
    """Accept a dict name -> result, (name, result) pairs, results, or a single result."""
    if isinstance(rows, RobustResult):
        rows = [rows]
    items = list(rows.items()) if isinstance(rows, dict) else list(rows)
    pairs = []
    for i, item in enumerate(items):
        name, result = (item.model or f"model {i + 1}", item) if isinstance(item, RobustResult) else item
        if not isinstance(result, RobustResult):
            raise TypeError(f"expected RobustResult, got {type(result).__name__} for row {name!r}")
        pairs.append((str(name), result))
    if not pairs:
        raise ValueError("no results to show")
    return pairs


def _header(threat: str) -> str:
    """The threat's own header ('l_inf (8/255)'); as written for one this session has not registered."""
    try:
        return get_threat(threat).header
    except ValueError:
        return threat


def _distinct(values) -> list:
    return list(dict.fromkeys(values))


def _cell(value: float | None, base: float | None, exact: bool = True) -> Text:
    """'82.3', or '82.3 -1.4' against the first row; '≤' marks an upper bound."""
    if value is None:
        return Text('–', style='dim')
    shown = round(100 * value, 1)
    text = Text(f"{'' if exact else _BOUND}{shown:.1f}")
    if base is not None:
        diff = round(shown - round(100 * base, 1), 1)  # difference of the printed numbers
        style = 'green' if diff > 0 else 'red' if diff < 0 else 'dim'
        text.append(f" {diff:+.1f}", style=style)
    return text


def results_table(rows, title: str | None = None) -> Table:
    """A rich Table: model | clean | one column per threat model | union, in percent."""
    pairs = _rows(rows)
    threats = _distinct(t for _, r in pairs for t in r.threats)
    budgets = _distinct(r.budget for _, r in pairs)
    sizes = _distinct(r.n for _, r in pairs)
    facts = f"{' | '.join(budgets)} · n={'/'.join(map(str, sizes))}"
    # Text rather than str everywhere: rich would read '[...]' in labels and names as markup
    table = Table(title=Text(f"{title or 'Robust accuracy (%)'} · {facts}"))
    table.add_column('model')
    for header in ['clean', *map(_header, threats), 'union']:
        table.add_column(header, justify='right')
    first, bounded = pairs[0][1], False
    for i, (name, res) in enumerate(pairs):
        ref = None if i == 0 else first  # the first row is the reference of the differences
        cells = [_cell(res.clean, None if ref is None else ref.clean)]
        for t in threats:
            exact = res.exact.get(t, True)
            bounded |= t in res.robust and not exact
            cells.append(_cell(res.robust.get(t), None if ref is None else ref.robust.get(t), exact))
        cells.append(_cell(res.union, None if ref is None else ref.union))
        table.add_row(Text(name), *cells)
    notes = ["signed numbers: difference to the first row"] if len(pairs) > 1 else []
    if bounded:
        notes.append(f"{_BOUND}: upper bound (union-only evaluation attacked this norm only on points "
                     "still robust to the earlier ones; the union is exact)")
    table.caption = Text('; '.join(notes)) if notes else None
    return table


def print_results(rows, title: str | None = None, console: Console | None = None) -> None:
    """Print `results_table(rows, title)` to `console` (a new rich Console by default; 100
    columns when the output is not a terminal, so logs and pipes get the table unwrapped)."""
    if console is None:
        console = Console()
        if not console.is_terminal and not console.is_jupyter:
            console = Console(width=100)
    console.print(results_table(rows, title))


def results_text(rows, title: str | None = None, width: int = 120) -> str:
    """The table as plain text (no colours), for READMEs, notebooks and tests."""
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(results_table(rows, title))
    return console.export_text()
