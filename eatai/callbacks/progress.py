"""`AdaptiveProgress`: fastai's progress bars in a terminal or notebook, one line per epoch elsewhere."""
from __future__ import annotations

from fastai.callback.progress import ProgressCallback
from fastcore.basics import noop
from fastprogress.fastprogress import ProgressBar

from .._utils.progress import LineMasterBar, bars_wanted

__all__ = ['AdaptiveProgress']


class AdaptiveProgress(ProgressCallback):
    """fastai's `ProgressCallback` where bars belong (terminal, notebook); where standard output is a
    file or a pipe, only the epoch table is printed, one row per epoch, without carriage returns."""

    @property
    def name(self) -> str:
        return 'progress'   # learn.progress, which fastai's ShowGraphCallback and no_bar look for

    def before_fit(self):
        self.lines = not bars_wanted()   # decided per fit: stdout may have been redirected since
        if not self.lines:
            return super().before_fit()
        # fastai's before_fit with a master bar whose per-batch children draw nothing
        if self.create_mbar:
            self.mbar = LineMasterBar(list(range(self.n_epoch)))
        if self.learn.logger != noop:
            self.old_logger, self.learn.logger = self.logger, self._write_stats
            self._write_stats(self.recorder.metric_names)
        else:
            self.old_logger = noop

    def _launch_pbar(self):
        if bars_wanted():   # also asked here: validate(inner=True) and get_preds start no fit
            return super()._launch_pbar()
        self.pbar = ProgressBar(self.dl, parent=getattr(self, 'mbar', None), leave=False)   # silent
        self.pbar.update(0)
