"""Results side by side: one table sorted by union, with each row's budget, points and training cost.

`compare_results` reads results JSON files (or `RobustResult`s) into a `Comparison`. It reads what eatai writes: `eatai eval --out` (one result), a recipe's `<recipe>.json` (a row
per run, with its training cost) and `eatai demo --out` (before and after). Rows evaluated with
different budgets, threat sets or numbers of points are marked, with a warning: their differences
are not comparable. `Comparison.to_markdown` and `to_html` write the table as a Markdown file and a
self-contained HTML page (a table sortable by any column, and the union-vs-cost plot as an
embedded PNG).
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .result import RobustResult, check_format
from .tables import _BOUND, _MAX_OUTSIDE, _distinct, _extra_columns, _header

__all__ = ['Training', 'CompareRow', 'Comparison', 'compare_results', 'load_results']

_DIFFERS = '≠'
_UNION_SORTED = ' aria-sort="descending"'   # the order the page opens in


@dataclass(frozen=True)
class Training:
    """What training a row's model cost, from its run's metadata: seconds in all, epochs, scheme, device."""
    seconds: float
    epochs: int | None = None
    scheme: str | None = None
    device: str | None = None

    @property
    def per_epoch(self) -> float | None:
        return self.seconds / self.epochs if self.epochs else None


@dataclass(frozen=True)
class CompareRow:
    name: str
    result: RobustResult
    training: Training | None = None
    source: str | None = None      # the file it was read from


def _training(meta, where: str) -> Training | None:
    if meta is None:
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get('seconds'), (int, float)):
        raise ValueError(f"{where}: training cost without a number of seconds")
    epochs = meta.get('epochs')
    return Training(float(meta['seconds']), epochs if isinstance(epochs, int) and epochs > 0 else None,
                    meta.get('scheme'), meta.get('device'))


def _result(data, where: str) -> RobustResult:
    try:
        return RobustResult.from_dict(data)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def load_results(path) -> list[CompareRow]:
    """The rows of one results file: a result (`eatai eval --out`), a recipe's results (one row per
    run, with the training cost it recorded) or `eatai demo --out` (before and after). Anything
    else, a later results format or a damaged result raises ValueError with one line naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not JSON (not UTF-8 text)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not an eatai results file: a JSON {type(data).__name__}, not an object")
    try:
        check_format(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    source = str(path)
    if 'results' in data:                      # a recipe's <recipe>.json
        runs = data['results']
        if not isinstance(runs, dict) or not runs:
            raise ValueError(f"{path}: 'results' holds no runs")
        training = data.get('training')
        if training is None:                   # written before `training`: the total seconds and --epochs
            epochs = (data.get('args') or {}).get('epochs')
            training = {name: {'seconds': s, 'epochs': epochs} for name, s in (data.get('train_seconds') or {}).items()}
        if not isinstance(training, dict):
            raise ValueError(f"{path}: 'training' is a JSON {type(training).__name__}, not an object")
        return [CompareRow(name, _result(r, f"{path}: run {name!r}"),
                           _training(training.get(name), f"{path}: run {name!r}"), source) for name, r in runs.items()]
    if 'before' in data and 'after' in data:   # eatai demo --out
        before, after = _result(data['before'], f"{path}: 'before'"), _result(data['after'], f"{path}: 'after'")
        seconds = (data.get('seconds') or {}).get('finetune')
        cost = None if seconds is None else _training({'seconds': seconds, 'epochs': data.get('epochs'),
                                                       'scheme': 'eat'}, str(path))
        return [CompareRow(before.model or 'before', before, None, source),
                CompareRow(after.model or 'after', after, cost, source)]
    result = _result(data, str(path))
    return [CompareRow(result.model or path.stem, result, None, source)]


def _rows(items, names) -> list[CompareRow]:
    if isinstance(items, (str, Path, RobustResult, CompareRow, dict)):
        items = [items]
    rows = []
    for item in items:
        if isinstance(item, CompareRow):
            rows.append(item)
        elif isinstance(item, RobustResult):
            rows.append(CompareRow(item.model or f'model {len(rows) + 1}', item))
        elif isinstance(item, dict):              # name -> result
            rows += [CompareRow(str(k), v) for k, v in item.items()]
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], RobustResult):
            rows.append(CompareRow(str(item[0]), item[1]))
        elif isinstance(item, (str, Path)):
            rows += load_results(item)
        else:
            raise TypeError(f"expected a results file, a RobustResult or a (name, result) pair, got {type(item).__name__}")
    for row in rows:
        if not isinstance(row.result, RobustResult):
            raise TypeError(f"expected RobustResult, got {type(row.result).__name__} for row {row.name!r}")
    if not rows:
        raise ValueError("no results to compare")
    if names is not None:
        names = list(names)
        if len(names) != len(rows):
            raise ValueError(f"{len(names)} names for {len(rows)} rows")
        rows = [CompareRow(str(n), r.result, r.training, r.source) for n, r in zip(names, rows)]
    return _unique(rows)


def _unique(rows: list[CompareRow]) -> list[CompareRow]:
    """Names made distinct: a repeated name gets its file's name, then a number."""
    counts = Counter(r.name for r in rows)
    renamed = [CompareRow(f"{r.name} ({Path(r.source).stem})" if counts[r.name] > 1 and r.source else r.name,
                          r.result, r.training, r.source) for r in rows]
    seen: Counter = Counter()
    out = []
    for r in renamed:
        seen[r.name] += 1
        out.append(r if seen[r.name] == 1 else CompareRow(f"{r.name} #{seen[r.name]}", r.result, r.training, r.source))
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return '–'
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class _Column:
    header: str
    kind: str                     # 'name', 'accuracy', 'seconds', 'count', 'text'
    get: callable                 # row -> value, or (value, exact) for accuracies


def _setting(result: RobustResult) -> tuple:
    return result.budget, tuple(sorted(result.threats)), result.n


@dataclass
class Comparison:
    """Rows sorted by union robust accuracy (best first), with the columns every reader shows."""
    rows: list[CompareRow]
    title: str = 'Results compared'
    columns: list[_Column] = field(init=False, repr=False)

    def __post_init__(self):
        self.rows = sorted(self.rows, key=lambda r: (-r.result.union, -r.result.clean))
        results = [(r.name, r.result) for r in self.rows]
        corruptions = _distinct(t for _, r in results for t in r.corruptions)
        threats = _distinct(t for _, r in results for t in r.threats
                            if t not in corruptions or len(corruptions) <= _MAX_OUTSIDE)
        cols = [_Column('model', 'name', lambda row: row.name),
                _Column('clean', 'accuracy', lambda row: (row.result.clean, True))]
        cols += [_Column(_header(t), 'accuracy', lambda row, t=t: (row.result.robust.get(t), row.result.exact.get(t, True)))
                 for t in threats]
        cols.append(_Column('union', 'accuracy', lambda row: (row.result.union, True)))
        cols += [_Column(h, 'accuracy', lambda row, get=get: get(row.result)) for h, get in _extra_columns(results)]
        if any(r.training for r in self.rows):
            cols += [_Column('train s/epoch', 'seconds', lambda row: row.training and row.training.per_epoch),
                     _Column('train total', 'seconds', lambda row: row.training and row.training.seconds),
                     _Column('epochs', 'count', lambda row: row.training and row.training.epochs)]
        cols += [_Column('budget', 'text', lambda row: row.result.budget),
                 _Column('n', 'count', lambda row: row.result.n)]
        if not self.comparable:   # what of each row's evaluation differs from the most common one
            cols.append(_Column(_DIFFERS, 'text', lambda row: ', '.join(self.differs(row))))
        self.columns = cols

    # ---- comparability
    @property
    def reference(self) -> tuple:
        """The most common (budget, threats, n) of the rows; among equally common ones, the best row's."""
        settings = [_setting(r.result) for r in self.rows]
        return max(_distinct(settings), key=Counter(settings).__getitem__)   # max keeps the first of a tie

    def differs(self, row: CompareRow) -> list[str]:
        """What of `row`'s evaluation differs from the reference setting: 'budget', 'threats', 'n'."""
        return [what for what, mine, ref in zip(('budget', 'threats', 'n'), _setting(row.result), self.reference)
                if mine != ref]

    @property
    def comparable(self) -> bool:
        return len({_setting(r.result) for r in self.rows}) == 1

    @property
    def warnings(self) -> list[str]:
        """One line per way the rows' evaluations differ (budget, threats, points) or their costs were measured."""
        lines = []
        for i, what in enumerate(('budgets', 'threat sets', 'numbers of points')):
            values = _distinct(_setting(r.result)[i] for r in self.rows)
            if len(values) > 1:
                shown = [', '.join(v) if i == 1 else str(v) for v in values]
                lines.append(f"rows evaluated with different {what} ({' | '.join(shown)}): their differences are "
                             f"not comparable; rows marked in column {_DIFFERS} differ from the most common setting")
        devices = _distinct(r.training.device for r in self.rows if r.training and r.training.device)
        if len(devices) > 1:
            lines.append(f"training costs measured on different devices ({', '.join(devices)}): not comparable")
        return lines

    @property
    def notes(self) -> list[str]:
        notes = ["sorted by union robust accuracy; accuracies in %"]
        if any(not ok for r in self.rows for ok in r.result.exact.values()):
            notes.append(f"{_BOUND}: upper bound (union-only evaluation)")
        if any(r.result.groups for r in self.rows):
            notes.append("avg / worst: mean of the group's accuracies / points robust to all of them (MultiRobustBench)")
        if any(r.training for r in self.rows):
            notes.append("training cost from each run's metadata; – where none was recorded")
        return notes

    # ---- cells
    def cell(self, row: CompareRow, column: _Column) -> tuple[str, float | str | None]:
        """(text shown, value sorted by) of one cell."""
        value = column.get(row)
        if column.kind == 'accuracy':
            value, exact = value
            if value is None:
                return '–', None
            return f"{'' if exact else _BOUND}{100 * value:.1f}", 100 * value
        if column.kind == 'seconds':
            return _duration(value), value
        if column.kind == 'count':
            return ('–', None) if value is None else (str(value), value)
        return str(value), str(value)

    # ---- outputs
    def table(self) -> Table:
        """The rich Table: a row per model, best union first; warnings and notes in the caption."""
        table = Table(title=Text(self.title + (f" · {_DIFFERS} NOT COMPARABLE" if not self.comparable else '')))
        for c in self.columns:
            table.add_column(c.header, justify='left' if c.kind in ('name', 'text') else 'right',
                             overflow='fold', style='yellow' if c.header == _DIFFERS else None)
        for row in self.rows:
            table.add_row(*(Text(self.cell(row, c)[0]) for c in self.columns))
        table.caption = Text('; '.join(self.notes))
        return table

    def __rich_console__(self, console, options):
        yield self.table()
        for line in self.warnings:
            yield Text(f"warning: {line}", style='bold yellow')

    def __str__(self) -> str:
        return self.text()

    def text(self, width: int = 160) -> str:
        """The table and its warnings as plain text (no colours)."""
        console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
        console.print(self)
        return console.export_text()

    def to_markdown(self, path=None) -> str:
        """A Markdown page: title, warnings, the table, notes; also written to `path` when given."""
        def esc(text):
            return text.replace('\\', '\\\\').replace('|', '\\|')
        lines = [f"# {self.title}", '']
        lines += [f"> **Warning:** {w}" + ('  ' if i < len(self.warnings) - 1 else '')
                  for i, w in enumerate(self.warnings)]
        if self.warnings:
            lines.append('')
        lines.append('| ' + ' | '.join(esc(c.header) for c in self.columns) + ' |')
        lines.append('|' + '|'.join(':--' if c.kind in ('name', 'text') else '--:' for c in self.columns) + '|')
        for row in self.rows:
            lines.append('| ' + ' | '.join(esc(self.cell(row, c)[0]) for c in self.columns) + ' |')
        lines += ['', *(f"- {n}" for n in self.notes), '']
        text = '\n'.join(lines)
        if path is not None:
            _write(path, text)
        return text

    def plot(self):
        """Union robust accuracy against total training cost, a point per row that recorded one (a
        matplotlib Figure), or None when no row did."""
        from matplotlib.figure import Figure
        rows = [r for r in self.rows if r.training]
        if not rows:
            return None
        seconds = [r.training.seconds for r in rows]
        scale, unit = (3600, 'h') if max(seconds) >= 2 * 3600 else (60, 'min') if max(seconds) >= 120 else (1, 's')
        fig = Figure(figsize=(6, 4), layout='constrained')
        ax = fig.add_subplot()
        xs, ys = [s / scale for s in seconds], [100 * r.result.union for r in rows]
        ax.scatter(xs, ys, color=['tab:orange' if self.differs(r) else 'tab:blue' for r in rows])
        for x, y, r in zip(xs, ys, rows):
            ax.annotate(r.name + (f' {_DIFFERS}' if self.differs(r) else ''), (x, y), textcoords='offset points',
                        xytext=(4, 4), fontsize=8)
        ax.set_xlabel(f'training cost ({unit})')
        ax.set_ylabel('union robust accuracy (%)')
        ax.set_title('union vs training cost')
        ax.grid(alpha=0.3)
        return fig

    def to_html(self, path=None) -> str:
        """A self-contained HTML page (inline CSS and script, no network): warnings, the table sortable
        by a click on any header, notes, the union-vs-cost plot as an embedded PNG; also written to
        `path` when given."""
        e = html.escape
        head = ''.join(f'<th data-type="{"text" if c.kind in ("name", "text") else "number"}" tabindex="0"'
                       f'{_UNION_SORTED if c.header == "union" else ""}>{e(c.header)}</th>' for c in self.columns)
        body = []
        for row in self.rows:
            cells = []
            for c in self.columns:
                shown, key = self.cell(row, c)
                sort = '' if key is None else (repr(float(key)) if c.kind not in ('name', 'text') else key)
                cls = ' class="differs"' if c.header == _DIFFERS and shown else (
                    '' if c.kind in ('name', 'text') else ' class="num"')
                cells.append(f'<td data-sort="{e(sort)}"{cls}>{e(shown)}</td>')
            body.append(f'<tr>{"".join(cells)}</tr>')
        warnings = ''.join(f'<p class="warning">Warning: {e(w)}</p>' for w in self.warnings)
        fig = self.plot()
        if fig is None:
            picture = '<p class="note">No row recorded a training cost: no union-vs-cost plot.</p>'
        else:
            buffer = io.BytesIO()
            fig.savefig(buffer, format='png', dpi=100)
            picture = (f'<img alt="union robust accuracy against training cost" '
                       f'src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">')
        notes = ''.join(f'<li>{e(n)}</li>' for n in self.notes)
        page = _PAGE.format(title=e(self.title), warnings=warnings, head=head, body='\n'.join(body), notes=notes,
                            picture=picture, css=_CSS, script=_SCRIPT)
        if path is not None:
            _write(path, page)
        return page


def _write(path, text: str) -> None:
    from .._utils.io import atomic_write_text
    atomic_write_text(text, path)


def compare_results(paths_or_results, names=None, title: str = 'Results compared') -> Comparison:
    """Results side by side: results files (`eatai eval --out`, a recipe's JSON, `eatai demo --out`),
    `RobustResult`s, (name, result) pairs or a dict name -> result, in one `Comparison` sorted by union.
    `names` renames the rows in the order read. Print it (rich) or write `to_markdown` / `to_html`."""
    return Comparison(_rows(paths_or_results, names), title=title)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; }
th { cursor: pointer; background: #f4f4f4; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num, td:first-child { text-align: right; white-space: nowrap; }
td:first-child { text-align: left; }
td.differs, .warning { color: #a35200; font-weight: bold; }
img { margin-top: 1.5em; max-width: 100%; }
"""

# sorts the body rows by the clicked column: numbers by value (missing last), text alphabetically;
# a second click reverses; aria-sort says the current order
_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  function sort() {
    var table = th.closest('table'), body = table.tBodies[0], numeric = th.dataset.type === 'number';
    var now = th.getAttribute('aria-sort');
    var dir = now ? (now === 'descending' ? 'ascending' : 'descending') : (numeric ? 'descending' : 'ascending');
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir);
    var sign = dir === 'ascending' ? 1 : -1;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
      if (x === '' || y === '') { return (x === '') - (y === ''); }
      return sign * (numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y));
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  th.addEventListener('click', sort);
  th.addEventListener('keydown', function (ev) { if (ev.key === 'Enter') { sort(); } });
});
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
{warnings}
<table class="sortable">
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
<ul class="notes">{notes}</ul>
{picture}
<script>{script}</script>
</body>
</html>
"""
