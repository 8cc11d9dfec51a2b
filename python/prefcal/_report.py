"""What ``prefcal demo`` and ``prefcal evaluate`` write: reliability-diagram PNGs of a report's levels."""

from __future__ import annotations

from typing import Any

from . import ranking
from .calibration import Reliability


def pooled(result: Any) -> Reliability:
    """One reliability diagram for a level: the level's own, or the classwise tables pooled over classes."""
    if isinstance(result, ranking.ClasswiseResult):
        t = result._tables.sum(axis=0)
        return Reliability(t[0], t[1], t[2], result._edges)
    return result.reliability


def figure(title: str, levels: dict[str, Any], path: str) -> bool:
    """Draws one panel per level into ``path``; False (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(levels)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.4 * rows), squeeze=False)
    for ax, level in zip(axes.ravel(), names, strict=False):
        r = levels[level]
        if isinstance(r, ranking.ClasswiseResult):
            head = f"{level}: classwise ECE {r.ece:.4f}\n{r.n_classes} classes pooled, {r.n_events:,} events"
        else:
            head = f"{level}: {r.kind} ECE {r.ece:.4f}\n{r.n_events:,} events"
        pooled(r).plot(ax=ax, title=head)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
