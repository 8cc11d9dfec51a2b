"""Reward-model evaluation for RLHF (SPEC §6).

A reward model (RM) assigns a scalar reward to each response of a prompt. Read as a Bradley-Terry /
Plackett-Luce model with inverse temperature ``beta``, rewards become probabilities: P(a preferred to b) =
sigma(beta (r_a - r_b)), and the probability that response i is the best of K is softmax(beta r)_i. This
module measures how accurate and how calibrated those probabilities are, and how well the RM picks responses.

* :func:`pairwise_metrics` -- (chosen, rejected) pairs: accuracy, ECE / RMSCE / MCE of the Bradley-Terry
  confidence, NLL, Brier and the reliability table.
* :func:`best_of_k_metrics` -- one chosen against K - 1 rejected responses (RewardBench-2 style): accuracy,
  the paper's top-1 ECE, and a classwise top-1 ECE that can tell calibration from confidence.
* :func:`accuracy_variants` -- RM accuracy against gold rewards, measured several ways.
* :func:`best_of_n` -- the exact best-of-n (over-optimisation) curve: expected gold reward of the RM's pick
  among n responses drawn without replacement.

Inputs may be NumPy arrays (or anything ``np.asarray`` takes), torch tensors or CuPy arrays; every
computation here is a few vectorised passes, done on the host in float64 whatever the input dtype (device
arrays are copied to the host once). Results are summaries: host Python floats and NumPy float64 arrays.
Binned calibration errors go through :func:`prefcal.calibration.reliability` and therefore follow SPEC §4.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import _arrays, _validation, calibration

__all__ = [
    "PairwiseMetrics",
    "BestOfKMetrics",
    "GapAccuracy",
    "AccuracyVariants",
    "BestOfN",
    "pairwise_metrics",
    "best_of_k_metrics",
    "accuracy_variants",
    "best_of_n",
    "ranking_metrics",
]

#: Elements per temporary (rows x response pairs) block in accuracy_variants (bounds its memory).
_PAIR_BLOCK = 1 << 20


# ----------------------------------------------------------------------------------------- helpers


def _host_inputs(named: dict[str, object]) -> tuple[dict[str, np.ndarray], _arrays.Where]:
    """The inputs as host NumPy arrays (lists, torch tensors and CuPy arrays alike), and where they came from.

    All inputs must come from one library and one device (else TypeError). Nothing is converted yet.
    """
    present = {name: (x, _arrays.where(x)) for name, x in named.items() if x is not None}
    place = _arrays.same_place(present)
    out = {}
    for name, (x, w) in present.items():
        out[name] = _arrays.host_copy(x) if w.on_gpu else _arrays.to_numpy_input(x)
    return out, place


def _wrap(host: np.ndarray, place: _arrays.Where) -> Any:
    """A per-row host result in the caller's array type, on the caller's device."""
    if place.library == "torch":
        t = sys.modules["torch"].from_numpy(np.ascontiguousarray(host))
        return t.to(f"cuda:{place.device}") if place.on_gpu else t
    if place.library == "cupy":
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(place.device):
            return cupy.asarray(host)
    return host


def _reals(name: str, x: np.ndarray) -> np.ndarray:
    """A real-valued input in float64 (TypeError for anything else, e.g. strings, complex, objects)."""
    _validation.confidence_dtype(name, x.dtype)  # raises TypeError for non-real dtypes
    return np.asarray(x, dtype=np.float64)


def _where(x: np.ndarray, flat: int) -> tuple[tuple[int, ...], str]:
    idx = tuple(int(i) for i in np.unravel_index(flat, x.shape))
    text = f"index {idx[0]}" if x.ndim == 1 else "[" + ", ".join(str(i) for i in idx) + "]"
    return idx, text


def _finite(arrays: dict[str, np.ndarray], *, allow_nan: bool = False) -> None:
    """ValueError naming the first offending row's first non-finite element (NaN allowed when allow_nan).

    The arrays share their rows (axis 0); within the first row that is bad in any of them, the arrays are
    searched in the order given and each in row-major order.
    """
    first = None
    for name, x in arrays.items():
        bad = np.isinf(x) if allow_nan else ~np.isfinite(x)
        if bad.any():
            flat = int(np.argmax(bad))
            row = int(np.unravel_index(flat, x.shape)[0])
            if first is None or row < first[0]:
                first = (row, name, x, flat)
    if first is not None:
        _, name, x, flat = first
        idx, text = _where(x, flat)
        v = float(x[idx])
        kind = "NaN" if np.isnan(v) else ("-inf" if v < 0 else "inf")
        raise ValueError(f"{name} contains {kind} at {text}")


def _scaled_difference(a: np.ndarray, b: np.ndarray, beta: float) -> np.ndarray:
    """beta (a - b) for finite a, b, also where a - b itself overflows (beta < 1 may bring it back)."""
    with np.errstate(over="ignore"):
        d = a - b
        x = beta * d
        far = np.isinf(d)
        if far.any():
            x = np.where(far, beta * a - beta * b, x)
    return x


# ----------------------------------------------------------------------------------------- pairwise


@dataclass(frozen=True)
class PairwiseMetrics:
    """Result of :func:`pairwise_metrics`.

    Attributes
    ----------
    accuracy : float
        Fraction of pairs with reward(chosen) > reward(rejected); ties count 0.5.
    ece, rmsce, mce : float
        Binned calibration error (l1, l2, max norms; SPEC §4) of the symmetric confidence sigma(beta |Δ|).
    nll : float
        Mean of -log sigma(beta Δ) (the Bradley-Terry negative log-likelihood of the human labels).
    brier : float
        Mean of (sigma(beta Δ) - 1)^2.
    n : int
        Number of pairs.
    reliability : Reliability
        The reliability table behind ece / rmsce / mce (a tie is one half-correct row, see the function).
    """

    accuracy: float
    ece: float
    rmsce: float
    mce: float
    nll: float
    brier: float
    n: int
    reliability: calibration.Reliability

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "ece": self.ece,
            "rmsce": self.rmsce,
            "mce": self.mce,
            "nll": self.nll,
            "brier": self.brier,
            "n": self.n,
            "reliability": self.reliability.to_dict(),
        }


def _pair_inputs(chosen: Any, rejected: Any) -> tuple[np.ndarray, np.ndarray]:
    arrays, _ = _host_inputs({"chosen": chosen, "rejected": rejected})
    c = _reals("chosen", arrays["chosen"])
    r = _reals("rejected", arrays["rejected"])
    _validation.ndim("chosen", c.shape, 1)
    return c, r


def pairwise_metrics(
    chosen: Any, rejected: Any, *, beta: float = 1.0, n_bins: int = 15, strategy: str = "uniform"
) -> PairwiseMetrics:
    """Accuracy and calibration of a reward model on (chosen, rejected) preference pairs.

    Parameters
    ----------
    chosen, rejected : array of shape (N,)
        Rewards of the human-preferred and the other response of each pair (finite reals).
    beta : float, default 1.0
        Inverse temperature of the Bradley-Terry model: P(chosen preferred) = sigma(beta (chosen - rejected)).
    n_bins : int, default 15
    strategy : {"uniform", "quantile"}
        Binning of the confidences (SPEC §4).

    Returns
    -------
    PairwiseMetrics
        ``accuracy, ece, rmsce, mce, nll, brier, n, reliability``.

    Notes
    -----
    With Δ = chosen - rejected, the model predicts the chosen response wins when Δ > 0, the rejected one
    when Δ < 0, with the symmetric confidence c = sigma(beta |Δ|) >= 1/2; the prediction is correct when
    Δ > 0. A tie (Δ == 0) is a coin flip at confidence 1/2: it is one row of the reliability table that adds
    one to its bin's count and 1/2 to its correct sum (the expectation over the tie-break), whatever the
    strategy; accuracy counts it 0.5 in the same way.

    ``nll`` = mean of log(1 + exp(-beta Δ)) and ``brier`` = mean of sigma(-beta Δ)^2, computed without
    overflow for any finite Δ; they equal the log loss and Brier score of the symmetric confidence against
    ``correct`` (ties included). Every sum is in float64.

    Examples
    --------
    >>> import numpy as np
    >>> from prefcal import reward
    >>> m = reward.pairwise_metrics(np.array([2.0, 0.5, 1.0, 3.0]), np.array([0.0, 1.5, 1.0, -1.0]))
    >>> m.accuracy  # two wins, one loss, one tie
    0.625
    >>> round(m.nll, 4), m.n  # mean of log(1 + exp(-Δ)) over Δ = 2, -1, 0, 4
    (0.5379, 4)
    """
    beta = _validation.real("beta", beta, positive=True)
    bins = _validation.n_bins(n_bins)
    strategy = _validation.option("strategy", strategy, calibration.STRATEGIES)
    c, r = _pair_inputs(chosen, rejected)
    _validation.ndim("rejected", r.shape, 1)
    _validation.same_length("chosen", c.shape[0], "rejected", r.shape[0])
    _validation.nonempty("chosen", c.shape[0])
    _finite({"chosen": c, "rejected": r})
    n = c.shape[0]
    x = _scaled_difference(c, r, beta)
    win = c > r
    tie = c == r
    accuracy = (np.count_nonzero(win) + 0.5 * np.count_nonzero(tie)) / n

    # One exp for the three quantities: e = exp(-|x|), the symmetric confidence sigma(|x|) = 1 / (1 + e),
    # the loss log(1 + exp(-x)) = max(-x, 0) + log1p(e) (as np.logaddexp(0, -x) computes it) and
    # sigma(-x) = (e if x >= 0 else 1) / (1 + e), none of them overflowing.
    e = np.exp(-np.abs(x))
    confidence = 1.0 / (1.0 + e)
    rel = calibration.reliability(confidence, win, n_bins=bins, strategy=strategy)
    if tie.any():  # a tie scores 1/2: the mean of the tables with ties counted wrong and counted right
        right = calibration.reliability(confidence, win | tie, n_bins=bins, strategy=strategy)
        rel = replace(rel, sum_correct=(rel.sum_correct + right.sum_correct) / 2)

    nll = float(np.mean(np.maximum(-x, 0.0) + np.log1p(e)))
    lose = np.where(x >= 0, e, 1.0) / (1.0 + e)
    brier = float(np.mean(lose * lose))
    return PairwiseMetrics(
        accuracy=float(accuracy),
        ece=rel.ece("l1"),
        rmsce=rel.ece("l2"),
        mce=rel.ece("max"),
        nll=nll,
        brier=brier,
        n=int(n),
        reliability=rel,
    )


# ----------------------------------------------------------------------------------------- best of K


@dataclass(frozen=True)
class BestOfKMetrics:
    """Result of :func:`best_of_k_metrics`.

    Attributes
    ----------
    accuracy : float
        Fraction of rows whose chosen response has a strictly higher reward than every rejected one.
    top1_ece : float
        Binary ECE of p = P(chosen is best) with every outcome 1 (as RewardBench 2 computes it); equals
        1 - mean_p_chosen.
    classwise_top1_ece : float
        One binned ECE pooled over all N K (candidate probability, is-chosen) events.
    mean_p_chosen : float
    n : int
        Number of rows (prompts).
    k : int
        Number of candidates per row (1 chosen + K - 1 rejected).
    """

    accuracy: float
    top1_ece: float
    classwise_top1_ece: float
    mean_p_chosen: float
    n: int
    k: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "top1_ece": self.top1_ece,
            "classwise_top1_ece": self.classwise_top1_ece,
            "mean_p_chosen": self.mean_p_chosen,
            "n": self.n,
            "k": self.k,
        }


def _softmax_rows(scores: np.ndarray, beta: float) -> np.ndarray:
    """softmax(beta * scores) per row, by log-sum-exp (no overflow for any finite scores)."""
    z = _scaled_difference(scores, scores.max(axis=1, keepdims=True), beta)
    log_norm = np.log(np.sum(np.exp(z), axis=1, keepdims=True))  # in [0, log K]: the max term is exp(0)
    return np.exp(z - log_norm)


def best_of_k_metrics(chosen: Any, rejected: Any, *, beta: float = 1.0, n_bins: int = 10) -> BestOfKMetrics:
    """Accuracy and top-1 calibration of a reward model choosing the chosen response among K candidates.

    Parameters
    ----------
    chosen : array of shape (N,)
        Reward of the preferred response of each row.
    rejected : array of shape (N, K - 1), or (N,) for K = 2
        Rewards of the other responses (at least one per row); all rewards finite.
    beta : float, default 1.0
        Inverse temperature of the Plackett-Luce top-1 model.
    n_bins : int, default 10
        Uniform bins (SPEC §4) of both ECEs.

    Returns
    -------
    BestOfKMetrics
        ``accuracy, top1_ece, classwise_top1_ece, mean_p_chosen, n, k``.

    Notes
    -----
    p_ij = softmax(beta s_i)_j over the K candidates s_i = (chosen_i, rejected_i1, ...), by log-sum-exp;
    p_i = p_i0 is the probability that the chosen response is the best.

    * ``accuracy``: mean of [chosen_i > max_j rejected_ij]; a tie with the best rejected response counts as
      a miss (the chosen response must be strictly highest).
    * ``top1_ece``: binary ECE of p_i with outcome 1 for every row, as the RewardBench-2 paper computes it.
      Every bin's accuracy is 1, so this is sum_b (n_b / N)(1 - conf_b) = 1 - mean p: it measures
      under-confidence in the chosen answer only, and rewards any model that is confident.
    * ``classwise_top1_ece``: the K-way top-1 prediction scored as a calibrated classifier: all N K events
      (p_ij, [j is the chosen one]) pooled into one reliability table with ``n_bins`` uniform bins. Unlike
      ``top1_ece`` it penalises confidence in rejected candidates, so it can tell calibration from
      confidence.

    Examples
    --------
    >>> import numpy as np
    >>> from prefcal import reward
    >>> m = reward.best_of_k_metrics(np.array([1.0, 0.0]), np.array([[0.0, 0.0], [1.0, 0.0]]))
    >>> m.accuracy, m.k
    (0.5, 3)
    >>> round(m.mean_p_chosen, 6), round(m.top1_ece, 6)  # (e/(e+2) + 1/(e+2)) / 2
    (0.394029, 0.605971)
    """
    beta = _validation.real("beta", beta, positive=True)
    bins = _validation.n_bins(n_bins)
    c, r = _pair_inputs(chosen, rejected)
    if r.ndim == 1:
        r = r[:, None]
    _validation.ndim("rejected", r.shape, 2)
    if r.shape[0] != c.shape[0]:
        raise ValueError(f"chosen and rejected have different numbers of rows: {c.shape[0]} vs {r.shape[0]}")
    _validation.nonempty("chosen", c.shape[0])
    if r.shape[1] == 0:
        raise ValueError("rejected has no columns: at least one rejected response per row is needed")
    _finite({"chosen": c, "rejected": r})
    n, k = c.shape[0], r.shape[1] + 1

    probs = _softmax_rows(np.concatenate([c[:, None], r], axis=1), beta)
    p = probs[:, 0]
    accuracy = float(np.mean(c > r.max(axis=1)))
    top1 = calibration.reliability(p, np.ones(n, dtype=np.bool_), n_bins=bins).ece()
    is_chosen = np.zeros((n, k), dtype=np.bool_)
    is_chosen[:, 0] = True
    classwise = calibration.reliability(probs.ravel(), is_chosen.ravel(), n_bins=bins).ece()
    return BestOfKMetrics(
        accuracy=accuracy,
        top1_ece=top1,
        classwise_top1_ece=classwise,
        mean_p_chosen=float(np.mean(p)),
        n=int(n),
        k=int(k),
    )


# ----------------------------------------------------------------------------------------- accuracy variants


@dataclass(frozen=True)
class GapAccuracy:
    """All-pairs accuracy by quantile of the gold-reward gap (see :func:`accuracy_variants`).

    Attributes
    ----------
    edges : ndarray of float64, shape (n_gap_bins + 1,)
        Smallest |gold gap| in each bin, then the largest gap overall.
    accuracy : ndarray of float64, shape (n_gap_bins,)
        Pair accuracy in each bin (NaN for an empty bin).
    count : ndarray of int64, shape (n_gap_bins,)
        Pairs in each bin.
    """

    edges: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": self.edges.tolist(),
            "accuracy": self.accuracy.tolist(),
            "count": self.count.tolist(),
        }


@dataclass(frozen=True)
class AccuracyVariants:
    """Result of :func:`accuracy_variants`.

    Attributes
    ----------
    all_pairs, top1, best_vs_worst : float
    by_gap : GapAccuracy
    n_pairs : int
        Response pairs with distinct gold rewards (the pairs behind ``all_pairs`` and ``by_gap``).
    n_prompts : int
        Prompts with at least two distinct gold rewards (the prompts behind ``top1`` and ``best_vs_worst``).
    """

    all_pairs: float
    top1: float
    best_vs_worst: float
    by_gap: GapAccuracy
    n_pairs: int
    n_prompts: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "all_pairs": self.all_pairs,
            "top1": self.top1,
            "best_vs_worst": self.best_vs_worst,
            "by_gap": self.by_gap.to_dict(),
            "n_pairs": self.n_pairs,
            "n_prompts": self.n_prompts,
        }


def _two_score_inputs(a_name: str, a: Any, b_name: str, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two (N, K) real inputs of equal shape, at least one row."""
    arrays, _ = _host_inputs({a_name: a, b_name: b})
    x = _reals(a_name, arrays[a_name])
    y = _reals(b_name, arrays[b_name])
    _validation.ndim(a_name, x.shape, 2)
    _validation.ndim(b_name, y.shape, 2)
    if x.shape != y.shape:
        raise ValueError(f"{a_name} and {b_name} have different shapes: {x.shape} vs {y.shape}")
    _validation.nonempty(a_name, x.shape[0])
    if x.shape[1] == 0:
        raise ValueError(f"{a_name} has no columns: at least one response per prompt is needed")
    return x, y


def _gap_bins(gap: np.ndarray, credit: np.ndarray, n_bins: int) -> GapAccuracy:
    """Equal-count bins of the pairs by |gold gap| (SPEC §4's quantile rule: the rank in a stable sort).

    Only the values are sorted (a stable argsort of every pair is several times slower): a pair whose gap
    differs from every bin's first value is in the bin of its value; the pairs whose gap equals one of those
    (the only ones whose bin depends on their place among equal gaps) are ranked by a stable argsort of
    their own.
    """
    m = gap.shape[0]
    sorted_gap = np.sort(gap)
    starts = (np.arange(n_bins + 1, dtype=np.int64) * m) // n_bins
    count = np.diff(starts)
    first = sorted_gap[starts[1:-1]]  # value at the first rank of bins 1 .. B-1 (these ranks are < m)
    which = np.searchsorted(first, gap, side="left")
    tied = np.flatnonzero(which != np.searchsorted(first, gap, side="right"))
    if tied.shape[0]:
        sub = gap[tied]
        order = np.argsort(sub, kind="stable")  # keeps (prompt, a, b) order among equal gaps
        sub_sorted = sub[order]
        place = np.arange(sub.shape[0]) - np.searchsorted(sub_sorted, sub_sorted, side="left")
        rank = np.searchsorted(sorted_gap, sub_sorted, side="left") + place
        which[tied[order]] = np.searchsorted(starts, rank, side="right") - 1
    sums = np.bincount(which, weights=credit, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, sums / count, np.nan)
    edges = np.empty(n_bins + 1, dtype=np.float64)
    edges[:-1] = sorted_gap[np.minimum(starts[:-1], m - 1)]
    edges[-1] = sorted_gap[-1]
    return GapAccuracy(edges=edges, accuracy=accuracy, count=count.astype(np.int64))


def accuracy_variants(rewards: Any, gold: Any, *, n_gap_bins: int = 4) -> AccuracyVariants:
    """Reward-model accuracy against gold rewards, measured four ways.

    Parameters
    ----------
    rewards : array of shape (N, K)
        The RM's rewards of K responses to each of N prompts.
    gold : array of shape (N, K)
        Gold (reference) rewards of the same responses. A NaN in either array marks the response as absent
        (for prompts with fewer than K responses); infinities are errors.
    n_gap_bins : int, default 4
        Number of gold-gap quantile bins in ``by_gap``.

    Returns
    -------
    AccuracyVariants
        ``all_pairs, top1, best_vs_worst, by_gap (edges, accuracy, count), n_pairs, n_prompts``.

    Notes
    -----
    A pair of present responses (a, b) of one prompt with distinct gold rewards scores 1 when the RM orders
    it as gold does, 0 when it orders it the other way and 0.5 when the RM ties it. Pairs with equal gold
    rewards carry no information and are left out of every variant.

    * ``all_pairs``: mean score over all such pairs of all prompts, pooled (each pair weighs the same, so
      prompts with more responses weigh more).
    * ``top1``: per prompt, the RM picks uniformly among its argmax responses; credit is the fraction of
      that argmax set whose gold reward is the prompt's maximum (1 when the RM's unique argmax is a gold
      best response; ties in the gold maximum all count as best). Mean over prompts.
    * ``best_vs_worst``: per prompt, the pair (gold best, gold worst) scored as above; with ties in the gold
      maximum or minimum, the mean over all (best, worst) combinations. Mean over prompts.
    * ``by_gap``: the ``all_pairs`` scores grouped by |gold gap| into ``n_gap_bins`` equal-count bins (pairs
      sorted by gap, stably in (prompt, a, b) order; bin b holds sort ranks [floor(b M / B),
      floor((b + 1) M / B)) of the M pairs, so pairs with equal gaps may straddle a bin edge). A bin is
      empty only when M < B. ``edges[b]`` is the smallest gap in bin b, ``edges[-1]`` the largest gap.
      The count-weighted mean of ``by_gap.accuracy`` equals ``all_pairs``.

    ``top1`` and ``best_vs_worst`` average over the prompts that have at least two distinct gold rewards
    among their present responses (others are uninformative). Raises ValueError when no prompt has one.

    Examples
    --------
    >>> import numpy as np
    >>> from prefcal import reward
    >>> gold = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, np.nan]])
    >>> rm = np.array([[0.9, 0.1, 0.5], [0.0, 0.0, 7.0]])  # the second prompt has two responses
    >>> v = reward.accuracy_variants(rm, gold)
    >>> v.all_pairs, v.top1, v.best_vs_worst  # pairs: 2 of 3 right, then a tie
    (0.625, 0.75, 0.75)
    """
    bins = _validation.integer("n_gap_bins", n_gap_bins, 1, _validation.MAX_BINS)
    r, g = _two_score_inputs("rewards", rewards, "gold", gold)
    _finite({"rewards": r, "gold": g}, allow_nan=True)
    n, k = r.shape
    present = ~(np.isnan(r) | np.isnan(g))

    # per prompt: gold best / worst sets, RM argmax set
    g_max = np.max(np.where(present, g, -np.inf), axis=1, initial=-np.inf)
    g_min = np.min(np.where(present, g, np.inf), axis=1, initial=np.inf)
    r_max = np.max(np.where(present, r, -np.inf), axis=1, initial=-np.inf)
    informative = g_max > g_min  # at least two present responses with distinct gold rewards
    n_prompts = int(np.count_nonzero(informative))
    if n_prompts == 0:
        raise ValueError(
            "no prompt has two present responses with different gold rewards: accuracy is undefined"
        )
    best = present & (g == g_max[:, None])
    worst = present & (g == g_min[:, None])
    pick = present & (r == r_max[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        top1_rows = np.count_nonzero(pick & best, axis=1) / np.count_nonzero(pick, axis=1)
    top1 = float(np.mean(top1_rows[informative]))

    # pairs (a < b) in blocks of rows
    ia, ib = np.triu_indices(k, 1)
    n_pair_cols = ia.shape[0]
    bvw_sum = np.zeros(n, dtype=np.float64)
    credits, gaps = [], []
    step = max(1, _PAIR_BLOCK // max(n_pair_cols, 1))
    for lo in range(0, n if n_pair_cols else 0, step):
        hi = min(n, lo + step)
        ra, rb = r[lo:hi, ia], r[lo:hi, ib]
        ga, gb = g[lo:hi, ia], g[lo:hi, ib]
        valid = present[lo:hi, ia] & present[lo:hi, ib] & (ga != gb)
        gold_sign = (ga > gb).astype(np.float64) - (ga < gb)
        rm_sign = (ra > rb).astype(np.float64) - (ra < rb)
        score = np.where(rm_sign == gold_sign, 1.0, np.where(rm_sign == 0.0, 0.5, 0.0))
        credits.append(score[valid])
        with np.errstate(over="ignore"):
            gaps.append(np.abs(ga - gb)[valid])
        # credit of a as the better one of (a, b)
        a_wins = (ra > rb) + 0.5 * (ra == rb)
        ba = best[lo:hi, ia] & worst[lo:hi, ib]
        bb = best[lo:hi, ib] & worst[lo:hi, ia]
        bvw_sum[lo:hi] = np.sum(np.where(ba, a_wins, 0.0) + np.where(bb, 1.0 - a_wins, 0.0), axis=1)
    credit = np.concatenate(credits) if credits else np.empty(0)
    gap = np.concatenate(gaps) if gaps else np.empty(0)
    n_best = np.count_nonzero(best, axis=1)[informative]
    n_worst = np.count_nonzero(worst, axis=1)[informative]
    best_vs_worst = float(np.mean(bvw_sum[informative] / (n_best * n_worst)))
    return AccuracyVariants(
        all_pairs=float(np.mean(credit)),
        top1=top1,
        best_vs_worst=best_vs_worst,
        by_gap=_gap_bins(gap, credit, bins),
        n_pairs=int(credit.shape[0]),
        n_prompts=n_prompts,
    )


# ----------------------------------------------------------------------------------------- best of n


@dataclass(frozen=True)
class BestOfN:
    """Result of :func:`best_of_n`.

    Attributes
    ----------
    ns : ndarray of int64
        The n of each point, as given.
    proxy : ndarray of float64
        Expected gold reward of the proxy's pick among n responses, averaged over prompts.
    oracle : ndarray of float64
        The same with gold as the picker (the best achievable best-of-n curve).
    n_prompts, k : int
        Number of prompts and of responses per prompt.
    """

    ns: np.ndarray
    proxy: np.ndarray
    oracle: np.ndarray
    n_prompts: int
    k: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "ns": self.ns.tolist(),
            "proxy": self.proxy.tolist(),
            "oracle": self.oracle.tolist(),
            "n_prompts": self.n_prompts,
            "k": self.k,
        }


def _ns(ns: Any, k: int) -> np.ndarray:
    if ns is DEFAULT_NS:
        ns = tuple(v for v in DEFAULT_NS if v <= k)
    if isinstance(ns, numbers.Integral) and not isinstance(ns, bool):
        ns = (ns,)
    if isinstance(ns, (str, bytes)):
        raise TypeError(f"ns must be a sequence of integers, got {type(ns).__name__}")
    arr = np.asarray(ns)
    if arr.size == 0:
        raise ValueError("ns is empty: at least one n is needed")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"ns must contain integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"ns must be 1-dimensional, got shape {arr.shape}")
    for i, v in enumerate(arr.tolist()):
        if v < 1:
            raise ValueError(f"ns[{i}] = {v} is less than 1")
        if v > k:
            raise ValueError(
                f"ns[{i}] = {v} is larger than the number of responses per prompt (K={k}): "
                f"n responses cannot be drawn without replacement from K; pass ns <= {k}"
            )
    return arr.astype(np.int64)


def _pick_weights(ns: np.ndarray, k: int) -> np.ndarray:
    """(len(ns), K): probability that the j-th best (0-based) of K is the best of n drawn without replacement.

    P_j = C(K-1-j, n-1) / C(K, n), by P_0 = n / K and the ratios P_{j+1} / P_j = (K-j-n) / (K-1-j), each in
    [0, 1] (clipped at 0 once j > K - n): a cumulative product that neither overflows nor cancels.
    """
    n = ns[:, None].astype(np.float64)
    j = np.arange(k - 1, dtype=np.float64)[None, :]
    ratio = np.maximum((k - j - n) / (k - 1 - j), 0.0)
    w = np.empty((ns.shape[0], k), dtype=np.float64)
    w[:, 0] = ns / k
    w[:, 1:] = w[:, :1] * np.cumprod(ratio, axis=1)
    return w


def _sorted_gold(picker: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Gold rewards per row in decreasing order of `picker`, each replaced by the mean gold of its tie
    group in `picker` (the pick among responses of equal picker score is uniform)."""
    n, k = picker.shape
    order = np.argsort(-picker, axis=1, kind="stable")
    ps = np.take_along_axis(picker, order, axis=1)
    gs = np.take_along_axis(gold, order, axis=1)
    starts = np.ones((n, k), dtype=np.bool_)
    starts[:, 1:] = ps[:, 1:] != ps[:, :-1]
    if starts.all():
        return gs
    group = np.cumsum(starts.ravel()) - 1  # tie groups never span rows: each row starts a group
    means = np.bincount(group, weights=gs.ravel()) / np.bincount(group)
    return means[group].reshape(n, k)


DEFAULT_NS = (1, 2, 4, 8, 16, 32)


def best_of_n(proxy: Any, gold: Any, ns: Any = DEFAULT_NS) -> BestOfN:
    """Exact best-of-n curve: expected gold reward of the proxy's pick among n random responses.

    Parameters
    ----------
    proxy : array of shape (N, K)
        Proxy (RM) rewards of K responses to each of N prompts (finite).
    gold : array of shape (N, K)
        Gold rewards of the same responses (finite).
    ns : int or sequence of int, default (1, 2, 4, 8, 16, 32)
        Values of n, each in [1, K]; a larger n raises ValueError (n responses cannot be drawn without
        replacement from K; pass the ns that fit). The default keeps the entries <= K.

    Returns
    -------
    BestOfN
        ``ns, proxy, oracle`` (arrays aligned with ``ns``), ``n_prompts``, ``k``.

    Notes
    -----
    For each prompt, n of the K responses are drawn uniformly without replacement and the one with the
    highest proxy reward is kept. Sorting the responses by decreasing proxy, the pick is the j-th (0-based)
    with probability P_j = C(K-1-j, n-1) / C(K, n) (the j-th is drawn and the other n - 1 come from the
    K - 1 - j below it), so E[gold of pick] = sum_j P_j gold_(j): exact, no resampling; P_j is computed by
    stable ratios. Ties in proxy: the pick among the drawn responses that share the highest proxy is
    uniform, which amounts to replacing each gold reward by the mean gold of its proxy tie group. Values
    are averaged over prompts (float64). The ``oracle`` curve uses gold as the picker (an upper bound on
    ``proxy`` at every n); both curves start at the mean gold reward at n = 1.

    Examples
    --------
    >>> import numpy as np
    >>> from prefcal import reward
    >>> gold = np.array([[1.0, 2.0, 3.0]])
    >>> proxy = np.array([[0.0, 2.0, 1.0]])  # ranks the second response first
    >>> curve = reward.best_of_n(proxy, gold, ns=(1, 2, 3))
    >>> curve.proxy.round(4).tolist(), curve.oracle.round(4).tolist()  # n = 2: (2/3) 2 + (1/3) 3
    ([2.0, 2.3333, 2.0], [2.0, 2.6667, 3.0])
    """
    p, g = _two_score_inputs("proxy", proxy, "gold", gold)
    _finite({"proxy": p, "gold": g})
    n, k = p.shape
    n_values = _ns(ns, k)
    w = _pick_weights(n_values, k)
    # gold near the float maximum scaled by a power of two (exact) to at most 2^960, so that no sum overflows
    scale = max(0, int(np.frexp(np.max(np.abs(g)))[1]) - 960)
    g = np.ldexp(g, -scale)
    proxy_curve = np.ldexp(w @ np.mean(_sorted_gold(p, g), axis=0), scale)
    oracle_curve = np.ldexp(w @ np.mean(-np.sort(-g, axis=1), axis=0), scale)
    return BestOfN(ns=n_values, proxy=proxy_curve, oracle=oracle_curve, n_prompts=int(n), k=int(k))


def ranking_metrics(
    rewards: Any,
    rankings: Any = None,
    *,
    observed_ranks: Any = None,
    beta: float = 1.0,
    mask: Any = None,
    levels: tuple[str, ...] | None = None,
    kinds: dict[str, str] | None = None,
    n_bins: int | None = None,
) -> Any:
    """:func:`prefcal.ranking.report` of PL(beta * rewards) against the human orderings of the K responses of
    each prompt (``rankings`` (N, m), ``-1``-padded, or ``observed_ranks`` (N, K) with ties).

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> rewards = np.array([[2.0, 1.0, 0.0], [0.5, 0.0, 1.0]])
    >>> orders = np.array([[0, 1, 2], [2, 0, 1]])
    >>> rep = prefcal.reward.ranking_metrics(rewards, orders, levels=("sub2", "top1"))
    >>> sorted(rep.levels)
    ['sub2', 'top1']
    """
    from . import ranking

    beta = _validation.real("beta", beta, positive=True)
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta!r}")
    if rewards is None:
        raise TypeError("rewards must be an array of shape (N, K) or (K,), got None")
    named = {"rewards": rewards, "rankings": rankings, "observed_ranks": observed_ranks, "mask": mask}
    place = _arrays.same_place({k: (x, _arrays.where(x)) for k, x in named.items() if x is not None})
    r = _reals("rewards", _host_inputs({"rewards": rewards})[0]["rewards"])  # the others stay where they are
    if r.ndim not in (1, 2):
        raise ValueError(f"rewards must be 1-dimensional (K,) or 2-dimensional (N, K), got shape {r.shape}")
    _finite({"rewards": r})
    with np.errstate(over="ignore"):
        scores = r * beta
    _finite({"beta * rewards": scores})
    model = ranking.PL(_wrap(scores, place), mask)
    return ranking.report(
        model, rankings, observed_ranks=observed_ranks, levels=levels, kinds=kinds, n_bins=n_bins
    )
