"""The Plackett-Luce model: likelihoods, gradients, sampling, modes and fitting (SPEC §2).

A PL model over n items has log-worths (scores) s; an ordering pi has probability

    P(pi) = prod_j exp(s_{pi_j}) / sum_{l >= j} exp(s_{pi_l}).

Conventions (SPEC §1): ``scores`` is ``(N, n)`` (one model per row) or ``(n,)`` (one model shared by all
rows); ``rankings`` is ``(N, m)`` integer with ``-1`` padding at the end (a partial ranking lists the top of
the available items); ``mask`` is bool ``(N, n)`` or ``(n,)`` (True = item available). NumPy in, NumPy out
(C++ kernels); CuPy arrays and torch CUDA tensors run on the GPU and give arrays of the same kind; torch CPU
tensors give tensors.

Numerics: every normaliser is a suffix sum taken from the last listed item backwards (no cancellation);
rows whose scores span more than 80 (float32) or 300 (float64) take a float64 log-sum-exp path, so scores up
to +-1e4 are exact to rounding. Validation happens inside the same pass; a bad row raises ``ValueError``
naming the row and the problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _arrays, _backend, _validation

__all__ = [
    "PLFit",
    "log_likelihood",
    "log_likelihood_grad",
    "sample",
    "mode",
    "mode_log_prob",
    "pairwise",
    "fit",
]

REDUCTIONS = ("none", "sum", "mean")
FIT_METHODS = ("mm", "newton")


# ----------------------------------------------------------------------------------------- plumbing


def _row_call(scores: Any, rankings: Any, mask: Any) -> _backend.Call:
    call = _backend.Call(
        {"scores": scores, "rankings": rankings, "mask": mask},
        {
            "scores": _validation.confidence_dtype,
            "rankings": _validation.ranking_dtype,
            "mask": _validation.mask_dtype,
        },
    )
    n = _validation.scores_shape(call.shapes["scores"])
    n_rows, _ = _validation.rankings_shape(call.shapes["rankings"], n)
    _validation.scores_shape(call.shapes["scores"], n_rows)
    if "mask" in call.shapes:
        _validation.mask_shape(call.shapes["mask"], n_rows, n)
    call.place()
    if len(call.shapes["scores"]) == 1:
        _check_global_scores(call.element("scores", slice(None)))
    return call


def _check_global_scores(values: Any) -> None:
    """A global model is n values (host): checked once here instead of in every row, named by index."""
    msg = _validation.nonfinite_scores(np.asarray(values))
    if msg:
        raise ValueError(msg)


def _raise_row(call: _backend.Call, bad: int, n: int, weights: bool = False) -> None:
    if bad == _validation.NO_ERROR:
        return
    mask = call.element("mask", bad if len(call.shapes.get("mask", ())) == 2 else slice(None))
    scores = call.element("scores", bad) if len(call.shapes.get("scores", ())) == 2 else None
    ranking = call.element("rankings", bad) if "rankings" in call.shapes else np.array([], dtype=np.int64)
    weight = call.element("weights", bad) if weights else None
    raise ValueError(_validation.ranking_row_message(bad, ranking, n, mask, scores, weight))


def _raise_nonfinite_row(call: _backend.Call, bad: int, one: bool) -> None:
    """The error of a scores-only kernel (sampling, modes, pairwise): row `bad` has a non-finite score."""
    if bad != _validation.NO_ERROR:
        row = np.asarray(call.element("scores", bad))
        raise ValueError(_validation.nonfinite_scores(row, "" if one else f"{bad}, "))


def _cuda_rows(call: _backend.Call) -> tuple:
    n_rows, m = call.shapes["rankings"]
    n = call.shapes["scores"][-1]
    mask = call.pointer("mask")
    return (
        call.pointer("scores"),
        len(call.shapes["scores"]) == 1,
        call.pointer("rankings"),
        mask,
        len(call.shapes.get("mask", ())) == 1,
        n_rows,
        m,
        n,
    )


def _loglik(call: _backend.Call, want_grad: bool) -> tuple[Any, Any]:
    n_rows, _ = call.shapes["rankings"]
    n = call.shapes["scores"][-1]
    dtype = call.arrays["scores"][1]
    mod = call.module()
    if call.backend == "cuda":
        ll = call.output((n_rows,), dtype)
        grad = None
        if want_grad:
            grad = call.output((n,) if len(call.shapes["scores"]) == 1 else (n_rows, n), dtype)
        bad = mod.pl_loglik(
            *_cuda_rows(call), ll.ptr, None if grad is None else grad.ptr, call.stream, call.device
        )
        _raise_row(call, bad, n)
        return ll.result(), None if grad is None else grad.result()
    ll, g, bad = mod.pl_loglik(call.host("scores"), call.host("rankings"), call.host("mask"), want_grad)
    _raise_row(call, bad, n)
    return call.wrap(ll), None if g is None else call.wrap(g)


def _reduce(ll: Any, reduction: str, n_rows: int) -> Any:
    if reduction == "none":
        return ll
    if reduction == "mean":
        _validation.nonempty("rankings", n_rows)
    host = _arrays.host_copy(ll) if _is_device(ll) else np.asarray(ll)
    total = float(host.astype(np.float64).sum())
    return total / n_rows if reduction == "mean" else total


def _is_device(x: Any) -> bool:
    return _arrays.where(x).on_gpu


# ----------------------------------------------------------------------------------------- likelihood


def log_likelihood(scores: Any, rankings: Any, *, mask: Any = None, reduction: str = "none") -> Any:
    """Log-probability of each (partial) ranking under PL(scores).

    Parameters
    ----------
    scores : array (N, n) or (n,)
        Log-worths per row, or one model shared by all rows; float32 or float64 (read natively).
    rankings : int array (N, m), m <= n
        ``rankings[b, j]`` is the item at position j; trailing ``-1`` pad partial rankings, whose listed items
        are the top of the row's available items.
    mask : bool array (N, n) or (n,), optional
        Available items (default all).
    reduction : {"none", "sum", "mean"}

    Returns
    -------
    array (N,) in the scores' dtype and array type, or a float for ``"sum"`` / ``"mean"`` (summed in float64).

    Notes
    -----
    With A the available items, L the listed count, R_j the items of A not listed before j:
    ``log P = sum_{j < min(L, |A| - 1)} s_{r_j} - log sum_{i in R_j} exp(s_i)``.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> s = np.log(np.array([[3.0, 2.0, 1.0]]))
    >>> round(float(np.exp(prefcal.pl.log_likelihood(s, np.array([[0, 1, 2]]))[0])), 12)  # 3/6 * 2/3
    0.333333333333
    >>> round(float(np.exp(prefcal.pl.log_likelihood(s, np.array([[1, -1, -1]]))[0])), 12)  # top-1: 2/6
    0.333333333333
    """
    reduction = _validation.option("reduction", reduction, REDUCTIONS)
    call = _row_call(scores, rankings, mask)
    ll, _ = _loglik(call, want_grad=False)
    return _reduce(ll, reduction, call.shapes["rankings"][0])


def log_likelihood_grad(scores: Any, rankings: Any, *, mask: Any = None) -> tuple[Any, Any]:
    """Log-likelihood per row and its gradient with respect to the scores, from one fused pass.

    Returns ``(loglik (N,), grad)`` with ``grad`` of shape (N, n), or (n,) summed over the rows when
    ``scores`` is one global model (n,). Unavailable items get 0.

    Notes
    -----
    ``d log P / d s_i = [i chosen at a counted stage] - exp(s_i) * sum_{stages j with i in R_j} 1 / D_j``.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> ll, g = prefcal.pl.log_likelihood_grad(np.zeros((1, 2)), np.array([[1, 0]]))
    >>> g.tolist()  # P = sigmoid(s_1 - s_0)
    [[-0.5, 0.5]]
    """
    call = _row_call(scores, rankings, mask)
    return _loglik(call, want_grad=True)


# ----------------------------------------------------------------------------------------- sampling and modes


def _scores_call(scores: Any, mask: Any = None) -> tuple[_backend.Call, bool, int, int]:
    """The call of a scores-only kernel: (call, one context given as 1-D scores, rows, items); shapes checked,
    not yet placed."""
    if not hasattr(scores, "shape"):
        scores = np.asarray(scores)
    _validation.scores_shape(_arrays.shape_of(scores))  # (n,) or (N, n), before any indexing of the shape
    one = len(_arrays.shape_of(scores)) == 1
    model = None  # one model spread over the rows of a per-row mask
    if one and mask is not None:
        m_shape = _arrays.shape_of(mask if hasattr(mask, "shape") else np.asarray(mask))
        if len(m_shape) == 2:  # one model, per-row choice sets: one context per mask row
            model, scores, one = scores, _arrays.broadcast_rows(scores, m_shape[0]), False
    if one:
        scores = scores.reshape(1, -1)
    call = _backend.Call(
        {"scores": scores, "mask": mask},
        {"scores": _validation.confidence_dtype, "mask": _validation.mask_dtype},
    )
    if model is not None:  # its n values, checked once (also with no rows) and named as the caller gave them
        _check_global_scores(_arrays.element(model, slice(None)))
    n_rows, n = call.shapes["scores"][0], _validation.scores_shape(call.shapes["scores"])
    if "mask" in call.shapes:
        _validation.mask_shape(call.shapes["mask"], n_rows, n)
    return call, one, n_rows, n


def _selection(scores: Any, size: int, k: int | None, mask: Any, seed: int, noise: bool) -> Any:
    call, one, n_rows, n = _scores_call(scores, mask)
    k = n if k is None else _validation.integer("k", k, 1, n)
    call.place()
    mod = call.module()
    if call.backend == "cuda":
        out = call.output((n_rows, size, k), np.int32)
        bad = mod.pl_sample(
            call.pointer("scores"),
            n_rows,
            n,
            call.pointer("mask"),
            len(call.shapes.get("mask", ())) == 1,
            size,
            k,
            seed,
            noise,
            out.ptr,
            call.stream,
            call.device,
        )
        result = None if bad != _validation.NO_ERROR else out.result()
    else:
        result, bad = mod.pl_sample(call.host("scores"), call.host("mask"), size, k, seed, noise)
        result = None if result is None else call.wrap(result)
    _raise_nonfinite_row(call, bad, one)
    return result[0] if one else result


def sample(
    scores: Any, size: int = 1, *, k: int | None = None, mask: Any = None, seed: int | None = None
) -> Any:
    """Draw orderings from PL(scores) with the Gumbel top-k trick.

    Returns int32 ``(N, size, k)`` (``(size, k)`` for a 1-D ``scores``; a 1-D ``scores`` with a 2-D ``mask``
    is one model over per-row choice sets, ``(N, size, k)``): the top-k of ``scores + Gumbel`` per draw,
    found by partial selection. Positions past the available items are ``-1``.

    The Gumbel noise of (row, draw, item) comes from Philox4x32-10 keyed by ``seed``, so the samples do not
    depend on the thread count, and the CPU, CUDA and NumPy backends give the same samples for the same seed.
    The keys are the scores as given plus the noise, in float64: far from 0 (|scores| beyond ~1e12, where the
    noise's low digits fall below the scores' rounding) near-ties are broken towards the lower index; subtract
    each row's maximum first for such scores (the distribution depends on the differences only).

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> draws = prefcal.pl.sample(np.array([5.0, 0.0, -5.0]), size=3, seed=0)
    >>> draws.shape, draws.dtype.name
    ((3, 3), 'int32')
    >>> bool((prefcal.pl.sample(np.array([5.0, 0.0, -5.0]), size=3, seed=0) == draws).all())
    True
    """
    size = _validation.integer("size", size, 1)
    return _selection(scores, size, k, mask, _validation.seed(seed), noise=True)


def mode(scores: Any, *, k: int | None = None, mask: Any = None) -> Any:
    """The most probable ordering (top-k prefix): items by decreasing score, lower index first on ties.

    Returns int32 ``(N, k)`` (``(k,)`` for a 1-D ``scores`` with no 2-D ``mask``); positions past the
    available items are ``-1``.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> prefcal.pl.mode(np.array([0.1, 2.0, 0.1, -1.0]), k=3).tolist()
    [1, 0, 2]
    """
    out = _selection(scores, 1, k, mask, 0, noise=False)
    return out[0] if out.ndim == 2 else out[:, 0]


def mode_log_prob(scores: Any, *, k: int | None = None, mask: Any = None) -> Any:
    """Log-probability of the mode ordering (or top-k prefix): ``(N,)``, or a float for a 1-D ``scores``.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> round(float(np.exp(prefcal.pl.mode_log_prob(np.log(np.array([1.0, 3.0])), k=1))), 6)
    0.75
    """
    top = mode(scores, k=k, mask=mask)
    if top.ndim == 1:  # one global model: its mode as a single ranking, with the global mask
        ll = log_likelihood(scores, top.reshape(1, -1), mask=mask)
        return float(_arrays.host_copy(ll)[0] if _is_device(ll) else np.asarray(ll)[0])
    return log_likelihood(scores, top, mask=mask)


def pairwise(scores: Any) -> Any:
    """P(item i before item j) = sigmoid(s_i - s_j): ``(N, n, n)`` (``(n, n)`` for 1-D scores), diagonal 0.5.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> prefcal.pl.pairwise(np.array([0.0, np.log(3.0)])).round(6).tolist()
    [[0.5, 0.25], [0.75, 0.5]]
    """
    call, one, n_rows, n = _scores_call(scores)
    call.place()
    mod = call.module()
    dtype = call.arrays["scores"][1]
    if call.backend == "cuda":
        out = call.output((n_rows, n, n), dtype)
        bad = mod.pl_pairwise(call.pointer("scores"), n_rows, n, out.ptr, call.stream, call.device)
        result = out.result()
    else:
        result, bad = mod.pl_pairwise(call.host("scores"))
        result = None if result is None else call.wrap(result)
    _raise_nonfinite_row(call, bad, one)
    return result[0] if one else result


# ----------------------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class PLFit:
    """Result of :func:`fit`.

    Attributes
    ----------
    scores : ndarray (n,) float64
        Centred log-worths (mean 0).
    log_likelihood : float
        Weighted log-likelihood of the data at ``scores`` (without the ``alpha`` pseudo-comparisons).
    n_iter : int
    converged : bool
        Whether the largest change of the centred log-worths fell below ``tol`` within ``max_iter``.
    method : str
    """

    scores: np.ndarray
    log_likelihood: float
    n_iter: int
    converged: bool
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores.tolist(),
            "log_likelihood": self.log_likelihood,
            "n_iter": self.n_iter,
            "converged": self.converged,
            "method": self.method,
        }


def _rankings_call(rankings: Any, n_items: int, mask: Any, weights: Any) -> tuple[_backend.Call, int, int]:
    """The call of a kernel over observed rankings of n_items (with mask and weights): (call, rows,
    positions); shapes checked, not yet placed."""
    call = _backend.Call(
        {"rankings": rankings, "mask": mask, "weights": weights},
        {
            "rankings": _validation.ranking_dtype,
            "mask": _validation.mask_dtype,
            "weights": _validation.weight_dtype,
        },
    )
    n_rows, m = _validation.rankings_shape(call.shapes["rankings"], n_items)
    if "mask" in call.shapes:
        _validation.mask_shape(call.shapes["mask"], n_rows, n_items)
    if "weights" in call.shapes:
        _validation.ndim("weights", call.shapes["weights"], 1)
        _validation.same_length("rankings", n_rows, "weights", call.shapes["weights"][0])
    return call, n_rows, m


class _FitData:
    """The rankings of a fit placed once on their backend; each pass is one kernel over all of them."""

    def __init__(self, rankings: Any, n_items: int, mask: Any, weights: Any):
        call, n_rows, _ = _rankings_call(rankings, n_items, mask, weights)
        _validation.nonempty("rankings", n_rows)
        call.place()
        self.call, self.n, self.n_rows = call, n_items, n_rows

    def _cuda_args(self) -> tuple:
        c = self.call
        return (
            c.pointer("rankings"),
            c.pointer("mask"),
            len(c.shapes.get("mask", ())) == 1,
            c.weight_pointer("weights"),
            self.n_rows,
            c.shapes["rankings"][1],
            self.n,
        )

    def setup(self) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, float] | None]:
        """(wins, edges, the first MM pass at equal worths (denominators, log-likelihood) or None where the
        backend does not fuse it into the setup)."""
        c = self.call
        first = None
        if c.backend == "cuda":
            wins, edges, bad = c.module().pl_fit_setup(*self._cuda_args(), c.stream, c.device)
        else:
            wins, edges, first, bad = c.module().pl_fit_setup(
                c.host("rankings"), c.host("mask"), c.host("weights"), self.n
            )
        _raise_row(c, bad, self.n, weights="weights" in c.shapes)
        return wins, edges, first

    def run(
        self, theta: np.ndarray, want_q: bool, want_ll: bool
    ) -> tuple[np.ndarray, np.ndarray | None, float]:
        c = self.call
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        if c.backend == "cuda":
            denom, q, ll = c.module().pl_fit_pass(
                *self._cuda_args(), theta, want_q, want_ll, c.stream, c.device
            )
        else:
            denom, q, ll = c.module().pl_fit_pass(
                c.host("rankings"), c.host("mask"), c.host("weights"), theta, want_q, want_ll
            )
        ll = float(ll)
        if want_ll and not (
            math.isfinite(ll) and np.isfinite(denom).all() and (q is None or np.isfinite(q).all())
        ):
            # a step far out (one item hundreds above the rest): the worths exp(theta - max theta) of the
            # items below it underflow, and the log-likelihood (log 0), the denominators or Q (1 / D^2)
            # overflow; no better than -inf for the steps that compare it, which go back towards the last
            # good point
            return denom, q, -math.inf
        if q is not None:
            q = q + q.T - np.diag(np.diag(q))
        return denom, q, ll


def _disconnection(edges: np.ndarray) -> str | None:
    """None when the comparison graph (edges[a, b]: a ranked above b) is strongly connected, else a sentence
    naming a group of items that is never ranked above (or never below) all the others, directly or through
    chains of comparisons: the items reachable from item 0 (a group closed under "ranked above"), or the ones
    that reach it."""
    n = edges.shape[0]
    adj = edges.astype(bool)

    def reach(a: np.ndarray) -> np.ndarray:
        seen = np.zeros(n, dtype=bool)
        seen[0] = True
        frontier = seen.copy()
        while frontier.any():
            nxt = a[frontier].any(axis=0) & ~seen
            seen |= nxt
            frontier = nxt
        return seen

    def items(mask: np.ndarray) -> str:
        idx = np.nonzero(mask)[0]
        shown = ", ".join(str(int(i)) for i in idx[:10]) + (", ..." if len(idx) > 10 else "")
        return ("item " if len(idx) == 1 else "items ") + shown

    below = reach(adj)  # item 0 and every item ranked below it through a chain
    if not below.all():
        verb = "is" if below.sum() == 1 else "are"
        return f"{items(below)} {verb} never ranked above {items(~below)}"
    above = reach(adj.T)  # item 0 and every item ranked above it through a chain
    if not above.all():
        verb = "is" if above.sum() == 1 else "are"
        return f"{items(above)} {verb} never ranked below {items(~above)}"
    return None


def fit(
    rankings: Any,
    n_items: int,
    *,
    mask: Any = None,
    weights: Any = None,
    alpha: float = 0.0,
    method: str = "mm",
    max_iter: int = 1000,
    tol: float = 1e-8,
) -> PLFit:
    """Maximum-likelihood PL model of many (partial, masked, weighted) rankings.

    Parameters
    ----------
    rankings : int array (M, m)
        Orderings with ``-1`` padding (SPEC §1); on any backend (the data stay where they are; every
        iteration is one kernel pass over them).
    n_items : int
    mask : bool array (M, n_items) or (n_items,), optional
        Choice sets (a ranking that lists all its available items is a full ranking of its choice set).
    weights : array (M,), optional
        Non-negative weights of the rankings.
    alpha : float, default 0
        Pseudo-comparisons: every item gets ``alpha`` wins and ``alpha`` losses against a virtual item of
        log-worth 0 (as R's PlackettLuce ``npseudo``), so the estimate exists for any data.
    method : {"mm", "newton"}
        ``"mm"``: Hunter's (2004) minorise-maximise updates, O(M m) per pass, accelerated by SQUAREM
        (Varadhan & Roland 2008) with a safeguard that keeps the likelihood from decreasing between
        cycles; ``n_iter`` counts MM updates (passes). ``"newton"``: Newton's method on the log-worths with
        the exact Hessian,
        O(M n^2) per pass and few passes; steps are halved until the likelihood increases.
    max_iter : int, default 1000
    tol : float, default 1e-8
        Stop when the largest change of the centred log-worths is below ``tol``.

    Returns
    -------
    PLFit

    Raises
    ------
    ValueError
        With ``alpha=0`` when the comparison graph is not strongly connected (some group of items is never
        ranked below, or never above, the others): the maximum-likelihood estimate does not exist.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> r = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [2, 0, 1]])
    >>> f = prefcal.pl.fit(r, 3)
    >>> f.converged, int(np.argmax(f.scores))
    (True, 0)
    """
    n = _validation.integer("n_items", n_items, 1)
    alpha = _validation.real("alpha", alpha, nonnegative=True)
    method = _validation.option("method", method, FIT_METHODS)
    max_iter = _validation.integer("max_iter", max_iter, 1)
    tol = _validation.real("tol", tol, positive=True)
    data = _FitData(rankings, n, mask, weights)
    wins, edges, first = data.setup()
    with np.errstate(over="ignore"):
        total = float(np.sum(wins))
    if not math.isfinite(total):
        raise ValueError(
            f"the weighted counts of the rankings sum to {total} in float64 (past 1.8e308): scale the "
            "weights down (with alpha, scale it alike)"
        )
    if alpha == 0.0 and n > 1:
        why = _disconnection(edges)
        if why is not None:
            raise ValueError(
                f"the comparison graph of the rankings is not strongly connected: {why} (directly or "
                "through chains of comparisons), so the maximum-likelihood estimate does not exist; pass "
                "alpha > 0 (e.g. alpha=0.1) to add pseudo-comparisons"
            )
    theta = np.zeros(n)
    if n == 1:
        return PLFit(theta, 0.0, 0, True, method)
    if method == "mm":
        theta, it, converged, ll = _squarem(data, theta, wins, alpha, max_iter, tol, first)
        _check_finite(theta)
        if ll is None:  # not known at the returned point: one more pass
            ll = data.run(theta, False, True)[2]
        return PLFit(theta - theta.mean(), ll, it, converged, method)
    step = _newton_step
    converged = False
    it = 0
    state = None  # what the last pass computed at theta, when a step can reuse it
    while it < max_iter:
        it += 1
        new, state, accepted = step(data, theta, wins, alpha, state)
        if not accepted:  # no step along the Newton direction keeps the likelihood: stalled, not converged
            break
        change = float(np.max(np.abs((new - new.mean()) - (theta - theta.mean()))))
        theta = new
        _check_finite(theta)
        if change < tol:
            converged = True
            break
    ll_final = state[2] if state is not None else data.run(theta, False, True)[2]
    return PLFit(theta - theta.mean(), ll_final, it, converged, method)


def _check_finite(theta: np.ndarray) -> None:
    if not np.isfinite(theta).all():
        raise ValueError("the fit diverged (non-finite log-worths); pass alpha > 0 to regularise it")


def _centred_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs((a - a.mean()) - (b - b.mean()))))


def _squarem(
    data: _FitData,
    theta: np.ndarray,
    wins: np.ndarray,
    alpha: float,
    max_iter: int,
    tol: float,
    first: tuple[np.ndarray, float] | None = None,
) -> tuple[np.ndarray, int, bool, float | None]:
    """Hunter's MM updates accelerated by SQUAREM (Varadhan & Roland 2008, scheme S3), safeguarded.

    A cycle takes two MM updates t1 = M(t0), t2 = M(t1), extrapolates t' = t0 - 2a r + a^2 v (r = t1 - t0,
    v = t2 - t1 - r, a = -|r| / |v| capped at -1) and stabilises with one more update M(t'). When the
    penalised
    log-likelihood at the new point (computed by the next cycle's first pass, at no extra cost) is below the
    previous cycle's, the cycle is replaced by the plain double update t2, which MM guarantees not to decrease
    it. Converged when an MM update changes the centred log-worths by less than ``tol``; when that update
    started from a point whose log-likelihood its pass computed, that point is returned with it (so no
    further pass is needed). Returns (estimate, number of MM updates, converged, the data log-likelihood at
    the estimate or None)."""
    raw = [0.0]  # the data log-likelihood of the last update that computed one

    def update(t: np.ndarray, want_ll: bool) -> tuple[np.ndarray, float]:
        nonlocal first
        if first is not None and not t.any():  # the setup pass already made the pass at equal worths
            (denom, ll), first = first, None
        else:
            denom, _, ll = data.run(t, False, want_ll)
        raw[0] = ll
        top = float(np.max(t))
        w = np.exp(t - top)  # the kernel's scaled worths; the virtual item has worth exp(-top)
        if alpha > 0.0:
            denom = denom + 2.0 * alpha / (w + np.exp(-top))
        new = np.log((wins + alpha) / denom) + top
        return (new if alpha > 0.0 else new - new.mean()), ll + _pseudo(t, alpha)[2]

    updates = 0
    t0 = theta
    previous: tuple[float, np.ndarray] | None = (
        None  # (objective at the last cycle's start, its safe double update)
    )
    while updates < max_iter:
        t1, f0 = update(t0, True)
        updates += 1
        if previous is not None and not f0 >= previous[0] - 1e-12 * abs(previous[0]):
            t0, previous = previous[1], None  # the extrapolation lost ground: take the plain double update
            continue
        _check_finite(t1)
        if _centred_change(t1, t0) < tol:
            return t0, updates, True, raw[0]
        if updates >= max_iter:
            return t1, updates, False, None
        t2, _ = update(t1, False)
        updates += 1
        _check_finite(t2)
        if _centred_change(t2, t1) < tol or updates >= max_iter:
            return t2, updates, _centred_change(t2, t1) < tol, None
        r = t1 - t0
        v = t2 - t1 - r
        norm_v = float(np.linalg.norm(v))
        if norm_v == 0.0:
            t0, previous = t2, None
            continue
        a = min(-float(np.linalg.norm(r)) / norm_v, -1.0)
        extrapolated = t0 - 2.0 * a * r + a * a * v
        if alpha == 0.0:
            extrapolated = extrapolated - extrapolated.mean()
        if not np.isfinite(extrapolated).all() or updates >= max_iter:
            t0, previous = t2, None
            continue
        t3, _ = update(extrapolated, False)
        updates += 1
        previous = (f0, t2)
        t0 = t3 if np.isfinite(t3).all() else t2
    return t0, updates, False, None


def _pseudo(theta: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Gradient, Hessian diagonal and log-likelihood of the alpha pseudo-comparisons with the virtual item."""
    if alpha == 0.0:
        return np.zeros_like(theta), np.zeros_like(theta), 0.0
    p = 1.0 / (1.0 + np.exp(-theta))
    ll = float(np.sum(alpha * theta - 2.0 * alpha * np.logaddexp(0.0, theta)))
    return alpha - 2.0 * alpha * p, -2.0 * alpha * p * (1.0 - p), ll


def _newton_step(data: _FitData, theta: np.ndarray, wins: np.ndarray, alpha: float, state: Any) -> tuple:
    """One Newton step on the log-worths, halved until the penalised likelihood does not decrease.

    ``state`` is (denominators, Q, log-likelihood) at ``theta`` from the previous step's last pass, so an
    accepted step costs one pass over the data. Returns (new estimate, its state, accepted); when 60 halvings
    all lose ground (or the likelihood is not a number), (theta, state, False)."""
    if state is None:
        state = data.run(theta, True, True)
    denom, q, ll_data = state
    g_p, h_p, ll_p = _pseudo(theta, alpha)
    w = np.exp(theta - np.max(theta))
    grad = wins - w * denom + g_p
    hess = np.outer(w, w) * q - np.diag(w * denom) + np.diag(h_p)
    neg = -hess
    if alpha == 0.0:
        neg = neg + np.full_like(neg, np.trace(neg) / len(theta) ** 2)  # the gauge direction (all ones)
    try:
        delta = np.linalg.solve(neg, grad)
    except np.linalg.LinAlgError:
        # alpha > 0 with weights so large (~1e150) that the pseudo-comparisons' curvature rounds away next to
        # the data's: singular in the gauge direction, which the least-squares step leaves alone
        delta = np.linalg.lstsq(neg, grad, rcond=None)[0]
    current = ll_data + ll_p
    for _ in range(60):
        cand = theta + delta
        if alpha == 0.0:
            cand = cand - cand.mean()
        new_state = data.run(cand, True, True)
        if new_state[2] + _pseudo(cand, alpha)[2] >= current - 1e-12 * abs(current):
            return cand, new_state, True
        delta = delta / 2.0
    return theta, state, False
