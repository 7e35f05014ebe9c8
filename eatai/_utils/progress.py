"""Progress that fits where it goes: fastprogress's bars in a terminal or a notebook, plain lines elsewhere.

fastprogress decides with `getattr(stdout, 'isatty', False)`, the method itself, which is always
true: redirected to a file or a pipe, every bar update is written as a carriage-return line (about
130 for `eatai demo`, tens of thousands for a long run). Here the decision is made when a bar
starts, from the `sys.stdout` of that moment.
"""
from __future__ import annotations

import os
import sys
import time

from fastcore.imports import IN_NOTEBOOK
from fastprogress import fastprogress
from fastprogress.fastprogress import ConsoleMasterBar, MasterBar, ProgressBar, format_time

__all__ = ['bars_wanted', 'progress_bar', 'LineBar', 'LineMasterBar']


def bars_wanted(stream=None) -> bool:
    """True in a notebook, a terminal, or PyCharm's console (fastprogress's cases); False for a file or pipe."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, 'isatty', None)
    try:
        tty = bool(isatty()) if callable(isatty) else False
    except ValueError:   # a closed stream
        tty = False
    return IN_NOTEBOOK or tty or 'PYCHARM_HOSTED' in os.environ


class LineBar(ProgressBar):
    """A bar that draws nothing while it runs and prints one line when it finishes: its comment,
    the number of items and the time taken."""

    def on_iter_end(self):
        if self.display and self.total:
            elapsed = time.time() - self.start_t
            print(f"{self.comment or 'done'}: {self.total} batch{'es' if self.total > 1 else ''} in "
                  f"{format_time(elapsed)}", flush=True)
        super().on_iter_end()


class LineMasterBar(ConsoleMasterBar):
    """fastprogress's console master bar that draws no bar: only `write` prints (the epoch table's rows);
    `AdaptiveProgress` gives it silent children."""

    def __init__(self, gen, total=None, **kwargs):
        # ConsoleMasterBar.__init__ would build a ConsoleProgressBar, which writes a carriage return at once
        MasterBar.__init__(self, gen, ProgressBar, total)
        self.total_time = False


def progress_bar(gen, **kwargs):
    """fastprogress's `progress_bar` in a terminal or notebook; elsewhere a `LineBar` (one line at the end)."""
    return fastprogress.progress_bar(gen, **kwargs) if bars_wanted() else LineBar(gen, **kwargs)
