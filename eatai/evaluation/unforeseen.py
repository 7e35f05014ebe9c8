"""The unforeseen set (threats outside the l_p balls of training) and the models x threats heat map.

Multi-norm papers are asked whether robustness to l1, l2 and l-inf carries over to threats
nobody trained for; MultiRobustBench (Dai et al., ICML 2023) and Kaufmann et al. ("Testing
robustness against unforeseen adversaries") measure it with larger l_p radii, spatial flow,
colour and JPEG attacks. `UNFORESEEN` is that set for CIFAR-10 at the papers' strengths.
"""
from __future__ import annotations

from .result import RobustResult

__all__ = ['UNFORESEEN', 'unforeseen_threats', 'summary_plot']

# CIFAR-10: unseen l_p radii (1.5x l-inf's 8/255, 2x l2's 0.5 and l1's 12), StAdv and ReColorAdv at
# Laidlaw et al. (ICLR 2021)'s bounds, JPEG at Kang et al.'s strength calibrated to l-inf 8/255
UNFORESEEN = {'cifar10': ('linf:12/255', 'l2:1', 'l1:24', 'stadv:0.05', 'recolor:0.06', 'jpeg:0.25')}


def unforeseen_threats(dataset: str = 'cifar10') -> list[str]:
    """The unforeseen threats of `dataset` (CIFAR-10 only, so far)."""
    key = str(dataset).lower().replace('-', '').replace('_', '')
    if key not in UNFORESEEN:
        raise ValueError(f"no unforeseen threat set for dataset {dataset!r} (known: {', '.join(UNFORESEEN)}): "
                         "pass the threats yourself")
    return list(UNFORESEEN[key])



def _columns(results: list[RobustResult]) -> list[str]:
    keys = []
    for r in results:
        keys += [t for t in r.threats if t not in r.corruptions and t not in keys]
    return keys


def summary_plot(results, figsize=None):
    """A heat map, models x threats: robust accuracy per threat, the union, each group's average and
    worst case, and mCA where corruptions were evaluated. results: `RobustResult`s or a dict
    name -> result. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = list(results.items()) if isinstance(results, dict) else [(r.model or f'model {i + 1}', r)
                                                                      for i, r in enumerate(results)]
    if not pairs:
        raise ValueError("no results to plot")
    rows = [r for _, r in pairs]
    threats = _columns(rows)
    groups = list(dict.fromkeys(g for r in rows for g in r.groups))
    headers = threats + ['union'] + [f'{g} {w}' for g in groups for w in ('avg', 'worst')]
    corruptions = any(r.corruptions for r in rows)
    headers += ['mCA'] if corruptions else []
    values = np.full((len(rows), len(headers)), np.nan)
    for i, r in enumerate(rows):
        cells = [r.robust.get(t, np.nan) for t in threats] + [r.union]
        for g in groups:
            s = r.summary(r.groups[g]) if g in r.groups else {'average': np.nan, 'worst': np.nan}
            cells += [s['average'], s['worst']]
        if corruptions:
            cells.append(np.nan if r.mca is None else r.mca)
        values[i] = np.array(cells, dtype=float) * 100
    fig, ax = plt.subplots(figsize=figsize or (1.1 * len(headers) + 2, 0.6 * len(rows) + 2))
    image = ax.imshow(values, cmap='viridis', vmin=0, vmax=100, aspect='auto')
    ax.set_xticks(range(len(headers)), headers, rotation=45, ha='right')
    ax.set_yticks(range(len(rows)), [name for name, _ in pairs])
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            bound = j < len(threats) and not rows[i].exact.get(threats[j], True)   # a union_only upper bound
            ax.text(j, i, f"{'≤' if bound else ''}{v:.1f}", ha='center', va='center',
                    color='white' if v < 55 else 'black', fontsize=8)
    fig.colorbar(image, ax=ax, label='accuracy (%)')
    ax.set_title(f"Robust accuracy (%), n={'/'.join(sorted({str(r.n) for r in rows}))}")
    fig.tight_layout()
    return fig
