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

from . import _validation
from .pl import _raise_row, _row_call

__all__ = ["temperature", "apply_temperature"]

_MAX_BETA = 1e8


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

    Arguments as :func:`prefcal.pl.log_likelihood`. Newton's method in beta from beta = 1, with steps halved
    whenever the likelihood would decrease or beta leave (0, inf); stops when the step is below
    ``tol * max(1, beta)``.

    Raises
    ------
    ValueError
        When no choice in the data depends on beta (every counted choice set has equal scores), or when the
        likelihood keeps increasing without bound (the rankings agree with the scores' order everywhere).

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
    beta = 1.0
    f, d1, d2 = _moments(call, beta)
    for _ in range(max_iter):
        if d2 >= 0.0:
            if d1 == 0.0 and d2 == 0.0:
                raise ValueError(
                    "the likelihood does not depend on the temperature: every choice set in the "
                    "data has equal scores"
                )
            step = beta  # not concave here (rounding): move like a gradient step
        else:
            step = -d1 / d2
        while True:
            cand = beta + step
            if cand > 0.0 and math.isfinite(cand):
                fc, d1c, d2c = _moments(call, cand)
                if fc >= f - 1e-12 * abs(f):
                    break
            step /= 2.0
            if abs(step) < 1e-300:
                return beta
        done = abs(cand - beta) <= tol * max(1.0, cand)
        beta, f, d1, d2 = cand, fc, d1c, d2c
        if done:
            return float(beta)
        if beta > _MAX_BETA:
            break
    if d1 > 0.0:
        raise ValueError(
            "the likelihood increases without bound as the temperature grows: the rankings "
            "follow the scores' order everywhere, so no finite beta is best"
        )
    return float(beta)


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
