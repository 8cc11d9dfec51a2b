"""Pure-NumPy reference implementation: the oracle of the tests and the fallback when ``_cpu`` is missing.

Readable over fast, but vectorised. Each function has the signature of its ``prefcal._cpu`` twin and
returns the same things: float64 bins laid out (groups, 3, n_bins) as (count, sum_confidence, sum_correct),
edges where the strategy defines them, and the first offending row (``NO_ERROR`` when none).
"""

from __future__ import annotations

import numpy as np

from ._validation import NO_ERROR

_FLOAT64_MAX = np.finfo(np.float64).max


def _first(bad: np.ndarray) -> int:
    return int(np.argmax(bad)) if bad.any() else NO_ERROR


def _invalid_binary(conf: np.ndarray, correct: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    bad = ~((conf >= 0) & (conf <= 1))  # NaN compares False: it is invalid
    bad |= ~((correct == 0) | (correct == 1))
    if weights is not None:
        bad |= ~((weights >= 0) & (weights <= _FLOAT64_MAX))
    return bad


def _invalid_multiclass(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    n_classes = probs.shape[1]
    return ~((probs >= 0) & (probs <= 1)).all(axis=1) | (labels < 0) | (labels >= n_classes)


def uniform_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """min(floor(c * B), B - 1), the product taken in float64 (SPEC §12)."""
    return np.minimum(np.floor(conf.astype(np.float64) * n_bins), n_bins - 1).astype(np.intp)


def quantile_index(conf: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin of every row under the quantile rule, and the bins' edges.

    Rows are sorted by confidence (stable); bin b holds sort ranks [floor(b n / B), floor((b + 1) n / B)).
    Edge b (0 < b < B) is the confidence at rank floor(b n / B); edges 0 and B are 0 and 1.
    """
    n = conf.shape[0]
    edges = np.full(n_bins + 1, np.nan)
    edges[0], edges[-1] = 0.0, 1.0
    if n == 0:
        return np.zeros(0, dtype=np.intp), edges
    order = np.argsort(conf, kind="stable")
    ranks = np.arange(n, dtype=np.int64)
    index = np.empty(n, dtype=np.intp)
    index[order] = ((ranks + 1) * n_bins + n - 1) // n - 1
    starts = (np.arange(1, n_bins, dtype=np.int64) * n) // n_bins
    edges[1:-1] = conf[order[starts]]
    return index, edges


def _tables(conf, correct, weights, index, n_bins, groups=None, n_groups=1) -> np.ndarray:
    """(n_groups, 3, n_bins) float64 sums of (weight, weight * conf, weight * correct) per (group, bin)."""
    flat = index if groups is None else groups.astype(np.intp) * n_bins + index
    size = n_groups * n_bins
    c = conf.astype(np.float64)
    w = np.ones_like(c) if weights is None else weights.astype(np.float64)
    hit = correct != 0
    count = np.bincount(flat, weights=w, minlength=size)
    sum_conf = np.bincount(flat, weights=w * c, minlength=size)
    sum_correct = np.bincount(flat, weights=np.where(hit, w, 0.0), minlength=size)
    return np.stack([count, sum_conf, sum_correct]).reshape(3, n_groups, n_bins).transpose(1, 0, 2).copy()


def bin_uniform(conf, correct, weights, n_bins):
    bad = _first(_invalid_binary(conf, correct, weights))
    if bad != NO_ERROR:
        return np.zeros((3, n_bins)), bad
    return _tables(conf, correct, weights, uniform_index(conf, n_bins), n_bins)[0], NO_ERROR


def bin_quantile(conf, correct, weights, n_bins):
    bad = _first(_invalid_binary(conf, correct, weights))
    if bad != NO_ERROR:
        return np.zeros((3, n_bins)), np.zeros(n_bins + 1), bad
    index, edges = quantile_index(conf, n_bins)
    return _tables(conf, correct, weights, index, n_bins)[0], edges, NO_ERROR


def _multiclass_events(probs, labels, kind):
    """(confidence, correct, group, n_groups) of the binary events a multiclass kind bins."""
    n, n_classes = probs.shape
    if kind == 1:  # classwise: every (row, class) pair, grouped by class
        classes = np.arange(n_classes)
        conf = probs.reshape(-1)
        hit = (labels[:, None] == classes[None, :]).reshape(-1)
        return conf, hit, np.tile(classes, n), n_classes
    pred = np.argmax(probs, axis=1)  # lowest index on ties
    conf = probs[np.arange(n), pred]
    hit = pred == labels
    if kind == 0:
        return conf, hit, np.zeros(n, dtype=np.intp), 1
    return conf, hit, pred, n_classes


def multiclass_uniform(probs, labels, n_bins, kind):
    bad = _first(_invalid_multiclass(probs, labels))
    groups = 1 if kind == 0 else probs.shape[1]
    if bad != NO_ERROR:
        return np.zeros((groups, 3, n_bins)), None, bad
    conf, hit, group, n_groups = _multiclass_events(probs, labels, kind)
    return _tables(conf, hit, None, uniform_index(conf, n_bins), n_bins, group, n_groups), None, NO_ERROR


def multiclass_quantile(probs, labels, n_bins, kind):
    """Quantile bins computed separately within each group (class), over that group's rows in row order."""
    bad = _first(_invalid_multiclass(probs, labels))
    groups = 1 if kind == 0 else probs.shape[1]
    out = np.zeros((groups, 3, n_bins))
    edges = np.zeros((groups, n_bins + 1))
    if bad != NO_ERROR:
        return out, edges, bad
    conf, hit, group, n_groups = _multiclass_events(probs, labels, kind)
    for g in range(n_groups):
        rows = np.flatnonzero(group == g)
        index, edges[g] = quantile_index(conf[rows], n_bins)
        out[g] = _tables(conf[rows], hit[rows], None, index, n_bins)[0]
    return out, edges, NO_ERROR


def score_sums(conf, correct, weights, eps):
    """(sum of weights, weighted Brier sum, weighted log-loss sum with conf clipped to [eps, 1 - eps])."""
    bad = _first(_invalid_binary(conf, correct, weights))
    if bad != NO_ERROR:
        return np.zeros(3), bad
    c = conf.astype(np.float64)
    y = (correct != 0).astype(np.float64)
    w = np.ones_like(c) if weights is None else weights
    clipped = np.clip(c, eps, 1.0 - eps)
    log_loss = -(y * np.log(clipped) + (1.0 - y) * np.log1p(-clipped))
    return np.array([w.sum(), (w * (c - y) ** 2).sum(), (w * log_loss).sum()]), NO_ERROR
