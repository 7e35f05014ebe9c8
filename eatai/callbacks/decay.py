"""Weight decay on every parameter during one fit (the authors' fine-tuning decays BatchNorm and biases)."""
from __future__ import annotations

from fastai.callback.core import Callback

__all__ = ['DecayAll']


class DecayAll(Callback):
    """Decay BatchNorm and bias parameters too for this fit, then give them back fastai's setting.

    fastai exempts them (`Learner.wd_bn_bias=False` marks their optimiser state `do_wd=False` in
    `create_opt`, which `fit` runs before `before_fit`); the authors' code fine-tunes with plain
    SGD weight decay on every parameter, while from-scratch training keeps fastai's exemption.
    """
    order = -20   # before any other callback's before_fit, so the first step already decays them

    def before_fit(self):
        self._saved = [(state, state.get('do_wd', True)) for state in self.learn._bn_bias_state(True)]
        for state, _ in self._saved:
            state['do_wd'] = True

    def after_fit(self):
        for state, flag in getattr(self, '_saved', []):
            state['do_wd'] = flag
        self._saved = []
