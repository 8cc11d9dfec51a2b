"""Noisy preference labels: EM estimation of the label flip rate (SPEC §8).

Each recorded preference label i (say "a preferred to b") is either the annotator's true preference or a
flip of it. A reward model gives p_i, its probability that the recorded label is correct (for a pair
recorded as a over b: sigma(beta (r_a - r_b))). With a latent z_i in {correct, flipped} and P(flipped) = eps
(one rate, or one per annotator), the probability of the recorded label is (1 - eps) p_i + eps (1 - p_i), and
EM alternates

* E-step: posterior_i = (1 - eps) p_i / ((1 - eps) p_i + eps (1 - p_i)), the probability that label i is
  correct;
* M-step: eps = mean of (1 - posterior_i) over the rows of each annotator.

When the model is calibrated for the clean labels, the estimate converges to the true flip rate. The
posteriors are the per-row weights for noise-robust training.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _arrays, _validation
from .reward import _host_inputs, _wrap

__all__ = ["NoiseFit", "em"]


@dataclass(frozen=True)
class NoiseFit:
    """Result of :func:`em`.

    Attributes
    ----------
    rate : float or ndarray of float64
        The flip rate: a float without annotators; with annotators an array indexed by annotator id
        (length max id + 1, or the length of an ``init`` array), NaN for ids without rows.
    posterior : array of shape (N,)
        Posterior probability that each recorded label is correct, at ``rate``; in the caller's array type
        and float dtype (float32 stays float32; other inputs give float64).
    n_iter : int
        EM iterations run.
    converged : bool
        Whether the largest change of a rate in the last iteration was below ``tol``.
    """

    rate: float | np.ndarray
    posterior: Any
    n_iter: int
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        rate = self.rate
        post = self.posterior
        if not isinstance(post, np.ndarray):
            post = _arrays.host_copy(post) if _arrays.where(post).on_gpu else _arrays.to_numpy_input(post)
        return {
            "rate": rate.tolist() if isinstance(rate, np.ndarray) else rate,
            "posterior": np.asarray(post, dtype=np.float64).tolist(),
            "n_iter": self.n_iter,
            "converged": self.converged,
        }


def _posterior(p: np.ndarray, eps: np.ndarray | float) -> np.ndarray:
    num = (1.0 - eps) * p
    den = num + eps * (1.0 - p)
    # den > 0 whenever 0 < eps < 1; an iterate reaches eps = 0 only when every posterior is 1 (so every
    # p > 0) and eps = 1 only when every posterior is 0 (so every p < 1): den stays positive.
    return num / den


def _probabilities(p_model: Any, annotators: Any) -> tuple[np.ndarray, np.ndarray | None, np.dtype, Any]:
    arrays, place = _host_inputs({"p_model": p_model, "annotators": annotators})
    raw = arrays["p_model"]
    out_dtype = _validation.confidence_dtype("p_model", raw.dtype)
    p = np.asarray(raw, dtype=np.float64)
    _validation.ndim("p_model", p.shape, 1)
    _validation.nonempty("p_model", p.shape[0])
    bad = ~((p >= 0.0) & (p <= 1.0))  # NaN included
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(_validation.probability_problem("p_model", f"[{i}]", f"index {i}", raw[i]))
    ids = None
    if annotators is not None:
        a = arrays["annotators"]
        _validation.label_dtype("annotators", a.dtype)  # TypeError for floats, bools, ...
        _validation.ndim("annotators", a.shape, 1)
        _validation.same_length("p_model", p.shape[0], "annotators", a.shape[0])
        if (a < 0).any():
            i = int(np.argmax(a < 0))
            raise ValueError(f"annotators[{i}] = {int(a[i])} is negative (annotator ids are 0, 1, 2, ...)")
        limit = max(1 << 20, 16 * a.shape[0])  # ids index the rates: max id + 1 of them
        if a.size and (a >= limit).any():
            i = int(np.argmax(a >= limit))
            raise ValueError(
                f"annotators[{i}] = {int(a[i])} is too large: annotator ids index the returned rates (max "
                "id + 1 entries), so they should be 0 .. K-1; map other ids with "
                "np.unique(ids, return_inverse=True)"
            )
        ids = np.asarray(a, dtype=np.intp)
    return p, ids, out_dtype, place


def _initial(init: Any, has_rows: np.ndarray | None) -> np.ndarray:
    """The starting rate per annotator id (one entry without annotators)."""
    if isinstance(init, numbers.Real) or (isinstance(init, np.ndarray) and init.ndim == 0):
        v = _validation.real("init", init.item() if isinstance(init, np.ndarray) else init)
        if not 0.0 < v < 1.0:
            raise ValueError(f"init must lie strictly between 0 and 1, got {v}")
        return np.full(1 if has_rows is None else has_rows.shape[0], v)
    arrays, _ = _host_inputs({"init": init})
    _validation.confidence_dtype("init", arrays["init"].dtype)  # TypeError for non-real values
    values = np.asarray(arrays["init"], dtype=np.float64)
    if has_rows is None:
        raise ValueError("init is an array, which needs annotators= (one starting rate per annotator id)")
    _validation.ndim("init", values.shape, 1)
    if values.shape[0] < has_rows.shape[0]:
        raise ValueError(
            f"init has {values.shape[0]} entries but annotator ids go up to {has_rows.shape[0] - 1}: one "
            "starting rate per annotator id is needed"
        )
    used = np.zeros(values.shape[0], dtype=np.bool_)
    used[: has_rows.shape[0]] = has_rows
    bad = used & ~((values > 0.0) & (values < 1.0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"init[{i}] = {values[i]} must lie strictly between 0 and 1 (annotator {i} has rows)"
        )
    return values


def em(
    p_model: Any,
    *,
    annotators: Any = None,
    init: float | Any = 0.1,
    max_iter: int = 200,
    tol: float = 1e-10,
) -> NoiseFit:
    """Estimate the label flip rate (one, or one per annotator) by EM, and each label's posterior.

    Parameters
    ----------
    p_model : array of shape (N,)
        The model's probability that each recorded label is correct, in [0, 1].
    annotators : int array of shape (N,), optional
        Annotator id (0, 1, 2, ...) of each label; one flip rate per id. Without it, one rate for all rows.
    init : float or array, default 0.1
        Starting rate(s), strictly between 0 and 1 (0 and 1 are fixed points of EM). An array gives one
        starting rate per annotator id (needs ``annotators``; at least max id + 1 entries, and the result
        has as many; entries of ids without rows are ignored, so a previous fit's ``rate`` is a valid warm
        start).
    max_iter : int, default 200
    tol : float, default 1e-10
        Iteration stops when the largest change of a rate in one EM iteration is below ``tol``.

    Returns
    -------
    NoiseFit
        ``rate`` (float, or array by annotator id with NaN for ids without rows), ``posterior`` (per row, at
        the returned rate), ``n_iter``, ``converged``.

    Notes
    -----
    E-step: posterior_i = (1 - eps_a) p_i / ((1 - eps_a) p_i + eps_a (1 - p_i)) with a the annotator of row
    i; M-step: eps_a = mean of (1 - posterior_i) over the rows of annotator a. Each iteration does not
    decrease the log-likelihood sum_i log((1 - eps_a) p_i + eps_a (1 - p_i)), which is concave in each
    eps_a. The returned posterior comes from one more E-step at the returned rate, so ``rate`` and
    ``posterior`` are consistent. Not converging within ``max_iter`` is reported by ``converged=False``
    (no warning). Inputs may be NumPy, torch or CuPy; EM runs on the host in float64.

    Examples
    --------
    >>> import numpy as np
    >>> from prefcal import noise
    >>> p = np.array([0.9, 0.8, 0.95, 0.1, 0.85])  # the fourth label looks flipped
    >>> fit = noise.em(p)
    >>> round(fit.rate, 3), fit.converged
    (0.134, True)
    >>> fit.posterior.round(3).tolist()  # the weights for robust training
    [0.983, 0.963, 0.992, 0.417, 0.973]
    """
    max_iter = _validation.integer("max_iter", max_iter, 1)
    tol = _validation.real("tol", tol, positive=True)
    p, ids, out_dtype, place = _probabilities(p_model, annotators)
    if ids is None:
        counts = np.array([p.shape[0]], dtype=np.float64)
        has_rows = None
        rows = np.zeros(p.shape[0], dtype=np.intp)
    else:
        counts = np.bincount(ids).astype(np.float64)
        has_rows = counts > 0
        rows = ids
    eps = _initial(init, has_rows)
    size = eps.shape[0]
    counts = np.pad(counts, (0, size - counts.shape[0]))
    used = counts > 0
    eps = np.where(used, eps, np.nan)
    safe_counts = np.where(used, counts, 1.0)

    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (n_iter is the result)
        post = _posterior(p, eps[rows])
        new = np.bincount(rows, weights=1.0 - post, minlength=size) / safe_counts
        new = np.where(used, np.clip(new, 0.0, 1.0), np.nan)
        change = float(np.max(np.abs(new[used] - eps[used])))
        eps = new
        if change < tol:
            converged = True
            break
    posterior = _posterior(p, eps[rows]).astype(out_dtype, copy=False)
    rate: float | np.ndarray = float(eps[0]) if ids is None else eps
    return NoiseFit(rate=rate, posterior=_wrap(posterior, place), n_iter=n_iter, converged=converged)
