"""Plots of the per-epoch training statistics (the paper's Figure 3) with matplotlib."""
from __future__ import annotations

__all__ = ['plot_training_stats']

_PREFIXES = {'freq_': 'share of batches per norm', 'max_': 'MAX: highest loss came from',
             'step_': 'MSD: step taken in', 'rerr_': 'robust training error', 'prob_': 'E-AT sampling probability'}


def plot_training_stats(source, prefix: str | None = None, ax=None):
    """Plot one family of per-epoch statistics over epochs.

    source: a Learner with an `AdversarialTraining` callback, the callback, or its `history`
    (a list of dicts). prefix: 'max_', 'step_', 'freq_', 'rerr_' or 'prob_' (default: the
    first one the history has, in that order). Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt
    history = getattr(getattr(source, 'adversarial_training', source), 'history', source)
    if not history:
        raise ValueError("no training statistics yet: train with an adversarial scheme first")
    keys = [k for k in history[0] if isinstance(history[0][k], (int, float)) and k != 'epoch']
    if prefix is None:
        prefix = next((p for p in ('max_', 'step_', 'freq_', 'rerr_', 'prob_') if any(k.startswith(p) for k in keys)), None)
    chosen = [k for k in keys if prefix and k.startswith(prefix)]
    if not chosen:
        raise ValueError(f"no statistics starting with {prefix!r}; the history has {keys}")
    ax = ax or plt.subplots(figsize=(5, 3))[1]
    epochs = [h['epoch'] for h in history]
    for key in chosen:
        ax.plot(epochs, [100 * h.get(key, float('nan')) for h in history], marker='o', label=key[len(prefix):])
    ax.set_xlabel('epoch'), ax.set_ylabel('%'), ax.set_title(_PREFIXES.get(prefix, prefix))
    ax.legend()
    return ax
