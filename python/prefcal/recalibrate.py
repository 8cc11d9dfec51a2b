"""Recalibration of PL scores by temperature (SPEC §7).

``temperature`` finds the beta > 0 that maximises the PL log-likelihood of the observed rankings under
PL(beta * scores) (concave in beta). Each Newton step takes f, f' and f'' from one fused pass over the data
(f' = sum over choices of s_chosen - E[s], f'' = -sum of Var[s], moments under softmax(beta * s) over the
remaining items), on the data's own backend.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _arrays, _reference, _validation
from .pl import _raise_row, _row_call

__all__ = ["temperature", "apply_temperature"]


def _moments(call: Any, beta: float) -> np.ndarray:
    mod = call.module()
    n = call.shapes["scores"][-1]
    if call.backend == "cuda":
        from .pl import _cuda_rows

        out, bad = mod.pl_temperature(*_cuda_rows(call), beta, call.stream, call.device)
    else:
        out, bad = mod.pl_temperature(call.host("scores"), call.host("rankings"), call.host("mask"), beta)
    _raise_row(call, bad, n)
    return np.asarray(out, dtype=np.float64)


def temperature(
    scores: Any, rankings: Any, *, mask: Any = None, max_iter: int = 100, tol: float = 1e-10
) -> float:
    """The temperature beta > 0 maximising the log-likelihood of ``rankings`` under PL(beta * scores).

    Arguments as :func:`prefcal.pl.log_likelihood`. The log-likelihood is concave in beta, so the sign of its
    derivative brackets the maximiser: Newton's method from beta = 1, each step kept inside the bracket
    (else the bracket is halved, or doubled while it is open above); stops when the step is below
    ``tol * beta``. Robust to scores whose gaps make the curvature underflow (scores of 10^3).

    Raises
    ------
    ValueError
        When no choice in the data depends on beta (every counted choice set has equal scores); when the
        likelihood only grows with beta (the rankings follow the scores' order everywhere: no finite beta is
        best); or when it only falls (at beta -> 0 the rankings fit no worse than at any beta > 0: they do not
        follow the scores' order on balance).

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> rng = np.random.default_rng(0)
    >>> s = rng.normal(size=(20000, 4))
    >>> r = prefcal.pl.sample(2.0 * s, seed=1)[:, 0]   # the data follow PL(2 s)
    >>> round(prefcal.recalibrate.temperature(s, r), 1)
    2.0
    """
    max_iter = _validation.integer("max_iter", max_iter, 1)
    tol = _validation.real("tol", tol, positive=True)
    call = _row_call(scores, rankings, mask)
    # at beta = 0 (the uniform model): f' = sum of s_chosen - mean of the remaining scores, f'' = -sum of
    # their variances; f' <= 0 there means f falls on all of (0, inf) (concavity)
    _, d1, d2 = _moments(call, 0.0)
    if d2 == 0.0:
        raise ValueError(
            "the likelihood does not depend on the temperature: every choice set in the data has equal scores"
        )
    if not d1 > 0.0:
        raise ValueError(
            "the likelihood is largest as the temperature goes to 0 (the uniform model): on balance the "
            "rankings do not follow the scores' order (f'(0) = sum of s_chosen - mean s = "
            f"{d1:.6g} <= 0), so no beta > 0 is best"
        )
    # f'' is computed as E[s^2] - E[s]^2, rounding noise of ~1e-16 of the scores' squares once the weights of
    # every choice set sit on its top scores (a large beta). A curvature below this fraction of f''(0) makes
    # the search ask, once, whether the rankings follow the scores everywhere (then f rises to its limit as
    # beta grows, and no finite beta is best); if not, the search goes on (scores of mixed scales).
    flat = 1e-13 * -d2
    follows: bool | None = None
    lo, hi = 0.0, math.inf  # f' > 0 at lo, f' < 0 at hi
    beta = 1.0
    for _ in range(max_iter):
        _, d1, d2 = _moments(call, beta)
        if d1 < 0.0:
            hi = beta
        elif d2 < -flat and d1 == 0.0:
            return float(beta)  # f' = 0 where f is strictly concave
        else:
            if not d2 < -flat:
                if follows is None:
                    follows = _follows_scores(call)
                if follows:
                    break
            lo = beta
        cand = beta - d1 / d2 if d2 < 0.0 else math.nan  # Newton, inside the bracket
        if not lo < cand < hi:
            cand = 2.0 * beta if math.isinf(hi) else (lo + hi) / 2.0 if lo > 0.0 else hi / 4.0
        if abs(cand - beta) <= tol * beta or hi - lo <= tol * lo:
            return float(cand)
        beta = cand
    if math.isinf(hi) and (follows if follows is not None else _follows_scores(call)):
        raise ValueError(
            f"the likelihood increases as the temperature grows, up to beta = {lo:.3g} and beyond: the "
            "rankings follow the scores' order everywhere, so no finite beta is best"
        )
    return float(beta)  # max_iter reached: the last estimate


def _follows_scores(call: Any) -> bool:
    """Whether every counted choice of the call's rankings is a top-scored remaining item (host copies)."""
    arrays = {}
    for name in ("scores", "rankings", "mask"):
        x = call.host(name)
        if x is not None and _arrays.where(x).on_gpu:
            x = _arrays.host_copy(x)
        arrays[name] = None if x is None else np.asarray(x)
    return bool(_reference.pl_follows_scores(arrays["scores"], arrays["rankings"], arrays["mask"]))


def apply_temperature(scores: Any, beta: float) -> Any:
    """``beta * scores`` in the scores' own array type and dtype.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> prefcal.recalibrate.apply_temperature(np.array([1.0, -2.0]), 0.5).tolist()
    [0.5, -1.0]
    """
    beta = _validation.real("beta", beta, positive=True)
    if not hasattr(scores, "dtype"):
        scores = np.asarray(scores, dtype=np.float64)
    return scores * beta  # NumPy, CuPy and torch keep a float32 dtype under a Python float
