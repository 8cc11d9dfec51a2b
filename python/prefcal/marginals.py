"""Permutation marginals of Plackett-Luce models, and their empirical counterparts (SPEC §3).

"What is the probability that item i ends up at position j?" and "... in the top k?" for one PL model per row
(``scores`` (N, n)) or one shared model (``(n,)``), with an optional ``mask`` of available items (choice
sets): only available items and positions get probability, and each matrix's rows and columns sum to 1 over
them.

Methods
-------
``"exact"``
    Dynamic programming over subsets, O(2^n n) per context; n_items <= 20. Exact to rounding (~1e-14). On
    the CPU, up to 15 items eight contexts run at once (128 * 2^n bytes of scratch per thread: 2 MiB at
    n = 14), beyond that one at a time (16 * 2^n bytes per thread).
``"integral"``
    The exponential-race integral (SPEC §0): a 1-D integral over time of a polynomial generating function,
    by the trapezoidal rule in log-time on the union of the items' windows, spacing
    ``h = min(1/4, 1/sqrt(n))``, O(Q n^2) per context with Q ~ (31 + score spread) / h nodes. The integrand
    is entire and decays at both ends, so the rule converges exponentially: the measured error is <= 3e-11
    against ``"exact"`` and against h/2 for n <= 200 and score spreads 0 to 20; any n and score range.
``"mc"``
    Frequencies over ``n_samples`` draws of :func:`prefcal.pl.sample` (the same Philox stream: seeded,
    independent of the thread count, the same on every backend); error ~ 0.5 / sqrt(n_samples).
``"auto"``
    ``"exact"`` for n <= 14 on the CPU and n <= 12 on CUDA (faster there), ``"integral"`` beyond; both meet
    1e-6.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _arrays, _backend, _validation, pl

__all__ = [
    "positions",
    "topk_inclusion",
    "pairwise",
    "from_samples",
    "empirical_positions",
    "empirical_pairwise",
]

METHODS = ("auto", "exact", "integral", "mc")
EXACT_MAX_ITEMS = 20
AUTO_EXACT_MAX_ITEMS = 14  # CPU: the DP of eight contexts at once beats the integral up to here (RESULTS.md)
AUTO_EXACT_MAX_ITEMS_CUDA = 12  # CUDA: the DP's tables fit in shared memory up to here
_CODES = {"exact": 0, "integral": 1, "mc": 2}

pairwise = pl.pairwise


def _model(scores: Any, mask: Any, method: str, topk: int | None, n_samples: int, seed: int | None) -> Any:
    method = _validation.option("method", method, METHODS)
    n_samples = _validation.integer("n_samples", n_samples, 1)
    call, one, n_rows, n = pl._scores_call(scores, mask)
    k = 0 if topk is None else _validation.integer("k", topk, 1, n)
    if method == "exact" and n > EXACT_MAX_ITEMS:
        raise ValueError(
            f"method='exact' needs n_items <= {EXACT_MAX_ITEMS} (its cost and memory grow as 2^n), got "
            f"{n}; use method='integral' (any n, absolute error <= 1e-6) or 'auto'"
        )
    if method == "auto":
        limit = AUTO_EXACT_MAX_ITEMS_CUDA if call.backend == "cuda" else AUTO_EXACT_MAX_ITEMS
        method = "exact" if n <= limit else "integral"
    code = _CODES[method]
    seed_value = _validation.seed(seed) if method == "mc" else 0
    call.place()
    mod = call.module()
    shape = (n_rows, n, n) if k == 0 else (n_rows, n)
    if call.backend == "cuda":
        out = call.output(shape, np.float64)
        bad = mod.marg_model(
            call.pointer("scores"),
            n_rows,
            n,
            call.pointer("mask"),
            len(call.shapes.get("mask", ())) == 1,
            code,
            k,
            n_samples,
            seed_value,
            out.ptr,
            call.stream,
            call.device,
        )
        result = None if bad != _validation.NO_ERROR else out.result()
    else:
        result, bad = mod.marg_model(call.host("scores"), call.host("mask"), code, k, n_samples, seed_value)
        result = None if result is None else call.wrap(result)
    pl._raise_nonfinite_row(call, bad, one)
    return result[0] if one else result


def positions(
    scores: Any, *, mask: Any = None, method: str = "auto", n_samples: int = 10_000, seed: int | None = None
) -> Any:
    """P(item i at position j) under PL(scores): float64 ``(N, n, n)`` (``(n, n)`` for 1-D scores).

    Parameters
    ----------
    scores : float array (N, n) or (n,)
    mask : bool array (N, n) or (n,), optional
        Available items; the others get no position, and positions past the available count are 0.
    method : {"auto", "exact", "integral", "mc"}
        See the module docstring; ``"exact"`` needs n <= 20.
    n_samples, seed
        For ``"mc"`` only.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> p = prefcal.marginals.positions(np.log(np.array([2.0, 1.0])))
    >>> p.round(4).tolist()
    [[0.6667, 0.3333], [0.3333, 0.6667]]
    >>> prefcal.marginals.positions(np.zeros(3), mask=np.array([True, False, True])).round(3).tolist()
    [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0]]
    """
    return _model(scores, mask, method, None, n_samples, seed)


def topk_inclusion(
    scores: Any,
    k: int,
    *,
    mask: Any = None,
    method: str = "auto",
    n_samples: int = 10_000,
    seed: int | None = None,
) -> Any:
    """P(item i in the top k) under PL(scores): float64 ``(N, n)`` (``(n,)`` for 1-D scores).

    Computed without the ``(N, n, n)`` matrix: the exact method stops its subset DP at size k, the others
    sum per context; ``"mc"`` draws top-k prefixes only.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> prefcal.marginals.topk_inclusion(np.zeros(4), 2).tolist()
    [0.5, 0.5, 0.5, 0.5]
    """
    return _model(scores, mask, method, k, n_samples, seed)


def from_samples(samples: Any, n_items: int) -> Any:
    """Empirical position frequencies of sampled orderings of any model: float64 ``(N, n, n)``.

    ``samples`` is ``(N, S, m)`` (``(S, m)`` for one context) with ``-1`` padding; ``out[b, i, j]`` is the
    fraction of the S draws of row b with item i at position j, counting listed items only (without a mask,
    an item a draw leaves out may be one outside its choice set, so no position is implied). S must be at
    least 1.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> prefcal.marginals.from_samples(np.array([[0, 1], [1, 0], [0, 1]]), 2).round(3).tolist()
    [[0.667, 0.333], [0.333, 0.667]]
    """
    n = _validation.integer("n_items", n_items, 1)
    if not hasattr(samples, "shape"):
        samples = np.asarray(samples)
    one = len(_arrays.shape_of(samples)) == 2
    if one:
        samples = samples.reshape((1, *_arrays.shape_of(samples)))
    call = _backend.Call({"samples": samples}, {"samples": _validation.ranking_dtype})
    shape = call.shapes["samples"]
    if len(shape) != 3:
        raise ValueError(
            f"samples must be 3-dimensional (N, S, m) or 2-dimensional (S, m), got shape {shape}"
        )
    n_rows, size, m = shape
    if size == 0 and n_rows > 0:
        raise ValueError("samples has no draws (S = 0): frequencies over no draws are undefined")
    if m > n:
        raise ValueError(f"samples have {m} positions but there are only n_items={n} items")
    call.place()
    mod = call.module()
    if call.backend == "cuda":
        out = call.output((n_rows, n, n), np.float64)
        bad = mod.marg_from_samples(
            call.pointer("samples"), n_rows, size, m, n, out.ptr, call.stream, call.device
        )
        result = out.result()
    else:
        result, bad = mod.marg_from_samples(call.host("samples"), n)
        result = None if result is None else call.wrap(result)
    if bad != _validation.NO_ERROR:
        rows = np.asarray(call.element("samples", bad))
        for t in range(size):
            msg = _validation.ranking_row_message(bad, rows[t], n, None, name="samples", index=f"{bad}, {t}")
            if not msg.startswith("row "):
                raise ValueError(msg)
        raise ValueError(f"samples row {bad} is invalid")
    return result[0] if one else result


def _empirical(rankings: Any, n_items: int, mask: Any, weights: Any, pairwise_counts: bool) -> Any:
    n = _validation.integer("n_items", n_items, 1)
    call, n_rows, m = pl._rankings_call(rankings, n, mask, weights)
    call.place()
    mod = call.module()
    if call.backend == "cuda":
        out = call.output((n, n), np.float64)
        bad = mod.marg_empirical(
            call.pointer("rankings"),
            n_rows,
            m,
            n,
            call.pointer("mask"),
            len(call.shapes.get("mask", ())) == 1,
            call.weight_pointer("weights"),
            pairwise_counts,
            out.ptr,
            call.stream,
            call.device,
        )
        result = out.result()
    else:
        result, bad = mod.marg_empirical(
            call.host("rankings"), call.host("mask"), call.host("weights"), n, pairwise_counts
        )
        result = None if result is None else call.wrap(result)
    pl._raise_row(call, bad, n, weights="weights" in call.shapes)
    return result


def empirical_positions(rankings: Any, n_items: int, *, mask: Any = None, weights: Any = None) -> Any:
    """Weighted counts of item i observed at position j over all rows: float64 ``(n, n)``.

    Positions count within each row's choice set. A partial ranking counts its listed items; one that lists
    all available items but one is a full ranking of its choice set (SPEC §1) and counts that item last.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> prefcal.marginals.empirical_positions(np.array([[0, -1, -1], [0, 2, -1], [2, 1, 0]]), 3).tolist()
    [[2.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    """
    return _empirical(rankings, n_items, mask, weights, False)


def empirical_pairwise(rankings: Any, n_items: int, *, mask: Any = None, weights: Any = None) -> Any:
    """Weighted counts of "i observed before j": float64 ``(n, n)``.

    Partial rankings (SPEC §3): a listed item is before every unlisted available item; two unlisted items
    give no count.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> prefcal.marginals.empirical_pairwise(np.array([[0, 2, -1], [2, 1, 0]]), 3).tolist()
    [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 2.0, 0.0]]
    """
    return _empirical(rankings, n_items, mask, weights, True)
