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

__all__ = ['results_table', 'print_results', 'results_text', 'corruption_table']

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


def _extra_columns(pairs) -> list[tuple[str, callable]]:
    """(header, result -> (value, exact)) for each group's average and worst case, and the mean
    accuracy over the threats outside the union (mCA for common corruptions)."""
    columns = []
    for group in _distinct(g for _, r in pairs for g in r.groups):
        for what in ('average', 'worst'):
            def get(r, group=group, what=what):
                if group not in r.groups:
                    return None, True
                s = r.summary(r.groups[group])
                return s[what], s['exact']
            columns.append((f"{group} {'avg' if what == 'average' else 'worst'}", get))
    if any(r.corruptions for _, r in pairs):
        columns.append(('mCA', lambda r: (r.mca, True)))
    return columns



_MAX_OUTSIDE = 6   # more corruptions than this (75 cells) show as their mean only


def results_table(rows, title: str | None = None) -> Table:
    """A rich Table: model | clean | one column per threat model | union | group averages and worst
    cases | mCA, in percent (`corruption_table` shows the corruptions one by one)."""
    pairs = _rows(rows)
    corruptions = _distinct(t for _, r in pairs for t in r.corruptions)
    outside = _distinct(t for _, r in pairs for t in r.outside_union)
    threats = _distinct(t for _, r in pairs for t in r.threats
                        if t not in corruptions or len(corruptions) <= _MAX_OUTSIDE)
    budgets = _distinct(r.budget for _, r in pairs)
    sizes = _distinct(r.n for _, r in pairs)
    facts = f"{' | '.join(budgets)} · n={'/'.join(map(str, sizes))}"
    # Text rather than str everywhere: rich would read '[...]' in labels and names as markup
    table = Table(title=Text(f"{title or 'Robust accuracy (%)'} · {facts}"))
    table.add_column('model')
    extra = _extra_columns(pairs)
    for header in ['clean', *map(_header, threats), 'union', *(h for h, _ in extra)]:
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
        for _, get in extra:
            value, exact = get(res)
            cells.append(_cell(value, None if ref is None else get(ref)[0], exact))
        table.add_row(Text(name), *cells)
    notes = ["signed numbers: difference to the first row"] if len(pairs) > 1 else []
    if outside:
        shown = [t for t in outside if t not in corruptions] + (
            corruptions if len(corruptions) <= _MAX_OUTSIDE else [f'{len(corruptions)} corruptions (mCA)'])
        notes.append(f"not in the union: {', '.join(shown)}")
    if extra and any(r.groups for _, r in pairs):
        notes.append("avg / worst: mean of the group's accuracies / points robust to all of them (MultiRobustBench)")
    if bounded:
        notes.append(f"{_BOUND}: upper bound (union-only evaluation attacked this norm only on points "
                     "still robust to the earlier ones; the union is exact)")
    table.caption = Text('; '.join(notes)) if notes else None
    return table


def corruption_table(result: RobustResult, title: str | None = None) -> Table:
    """A rich Table of one result's common corruptions: a row per type, a column per severity, and the means."""
    cells = {}
    for key in result.corruptions:
        _, name, severity = key.split(':')
        cells[name, int(severity)] = result.robust[key]
    if not cells:
        raise ValueError("this result holds no corruption threats ('corruption:<name>:<severity>')")
    names, severities = _distinct(n for n, _ in cells), sorted({s for _, s in cells})
    table = Table(title=Text(title or f"Accuracy under common corruptions (%) · n={result.n}"))
    table.add_column('corruption')
    for header in [*map(str, severities), 'mean']:
        table.add_column(header, justify='right')
    for name in names:
        row = [cells.get((name, sev)) for sev in severities]
        known = [v for v in row if v is not None]
        table.add_row(Text(name), *(_cell(v, None) for v in row), _cell(sum(known) / len(known), None))
    means = [[v for (n, sev), v in cells.items() if sev == s] for s in severities]
    table.add_row(Text('mean'), *(_cell(sum(m) / len(m), None) for m in means),
                  _cell(sum(cells.values()) / len(cells), None))
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
