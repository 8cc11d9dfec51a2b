"""Binned calibration error of confidences: reliability diagrams, ECE and its family (SPEC §4).

Every function accepts NumPy arrays (C++ kernels), CuPy arrays and torch tensors (CUDA kernels on the
array's device and current stream; torch CPU tensors go to the C++ kernels without a copy). Bins are always
accumulated in float64 and returned as host NumPy arrays inside a :class:`Reliability`, whatever the input,
so reliability objects from different devices, processes and machines can be merged.

Binning
-------
``strategy="uniform"``: bin index ``min(floor(c * B), B - 1)`` with the product in float64, so bin b is
``[b/B, (b+1)/B)`` and the last bin is closed (c = 1 lands in bin B - 1).

``strategy="quantile"``: rows sorted by confidence (stable: ties keep row order); bin b holds the sort ranks
``[floor(b N / B), floor((b + 1) N / B))``. Edges are 0, the confidence at each bin's first rank, and 1.

Summaries
---------
With n_b the (weighted) count, acc_b and conf_b the bin's mean outcome and mean confidence, N = sum n_b:

* ``norm="l1"`` (ECE): sum_b (n_b / N) |acc_b - conf_b|
* ``norm="l2"`` (RMSCE): sqrt(sum_b (n_b / N) (acc_b - conf_b)^2); with ``debias=True`` each bin with
  n_b >= 2 subtracts acc_b (1 - acc_b) / (n_b - 1) (Kumar, Liang & Ma 2019), clipped at 0 before the root
* ``norm="max"`` (MCE): max over non-empty bins of |acc_b - conf_b|

Empty bins contribute nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _backend, _validation

__all__ = ["Reliability", "reliability", "ece", "multiclass_ece", "brier", "log_loss"]

STRATEGIES = ("uniform", "quantile")
MULTICLASS_KINDS = ("confidence", "classwise", "top_label")


def calibration_error(
    count: np.ndarray, sum_confidence: np.ndarray, sum_correct: np.ndarray, norm: str = "l1", debias: bool = False
) -> float:
    """ECE / RMSCE / MCE of one table of bins (the one place where bins become a number)."""
    norm = _validation.norm(norm, debias)
    with np.errstate(over="ignore"):  # an overflowing total is reported below
        total = float(np.sum(count))
    _validation.positive_total(total)
    nonempty = count > 0
    n = count[nonempty]
    gap = (sum_correct[nonempty] - sum_confidence[nonempty]) / n
    if norm == "max":
        return float(np.max(np.abs(gap)))
    frac = n / total
    if norm == "l1":
        return float(np.sum(frac * np.abs(gap)))
    terms = frac * gap**2
    if debias:
        acc = sum_correct[nonempty] / n
        spread = np.zeros_like(acc)
        many = n >= 2
        spread[many] = acc[many] * (1.0 - acc[many]) / (n[many] - 1.0)
        terms = terms - frac * spread
    return math.sqrt(max(float(np.sum(terms)), 0.0))


@dataclass(frozen=True)
class Reliability:
    """Per-bin sums of a reliability diagram.

    Attributes
    ----------
    count, sum_confidence, sum_correct : ndarray of float64, shape (n_bins,)
        Rows (or total weight), sum of confidences and sum of outcomes in each bin (weighted when weights
        were given).
    edges : ndarray of float64, shape (n_bins + 1,)
        Bin edges (see the module notes for the quantile strategy).
    strategy : str
        ``"uniform"`` or ``"quantile"``; only uniform tables can be merged.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> r = prefcal.reliability(np.array([0.1, 0.4, 0.8, 0.9]), np.array([0, 1, 1, 1]), n_bins=2)
    >>> r.count.tolist(), r.accuracy.tolist()
    ([2.0, 2.0], [0.5, 1.0])
    >>> round(r.ece(), 6)
    0.2
    """

    count: np.ndarray
    sum_confidence: np.ndarray
    sum_correct: np.ndarray
    edges: np.ndarray
    strategy: str = "uniform"

    def __post_init__(self) -> None:
        for name in ("count", "sum_confidence", "sum_correct", "edges"):
            arr = np.array(getattr(self, name), dtype=np.float64)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        b = self.count.shape[0]
        if self.sum_confidence.shape != (b,) or self.sum_correct.shape != (b,) or self.edges.shape != (b + 1,):
            raise ValueError("count, sum_confidence and sum_correct need n_bins entries and edges n_bins + 1")

    @property
    def n_bins(self) -> int:
        return int(self.count.shape[0])

    @property
    def total(self) -> float:
        """Number of rows (total weight) in the table."""
        return float(self.count.sum())

    def _ratio(self, num: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, num / self.count, np.nan)

    @property
    def mean_confidence(self) -> np.ndarray:
        """Mean confidence per bin (NaN for empty bins)."""
        return self._ratio(self.sum_confidence)

    @property
    def accuracy(self) -> np.ndarray:
        """Fraction of correct outcomes per bin (NaN for empty bins)."""
        return self._ratio(self.sum_correct)

    @property
    def fraction(self) -> np.ndarray:
        """Share of the rows (weight) in each bin."""
        total = self.total
        return self.count / total if total > 0 else np.zeros_like(self.count)

    def ece(self, norm: str = "l1", debias: bool = False) -> float:
        """Calibration error of the table: ``"l1"`` (ECE), ``"l2"`` (RMSCE, optionally debiased), ``"max"``."""
        return calibration_error(self.count, self.sum_confidence, self.sum_correct, norm, debias)

    def merge(self, other: Reliability) -> Reliability:
        """The table of the union of both tables' rows (uniform bins with the same edges only)."""
        if not isinstance(other, Reliability):
            raise TypeError(f"can only merge a Reliability, got {type(other).__name__}")
        if self.strategy != "uniform" or other.strategy != "uniform":
            raise ValueError(
                "quantile bins are not mergeable: their edges depend on all rows; "
                "bin the union of the rows instead, or use strategy='uniform'"
            )
        if self.n_bins != other.n_bins or not np.array_equal(self.edges, other.edges):
            raise ValueError(f"cannot merge tables of {self.n_bins} and {other.n_bins} bins")
        return Reliability(
            self.count + other.count,
            self.sum_confidence + other.sum_confidence,
            self.sum_correct + other.sum_correct,
            self.edges,
            "uniform",
        )

    def __add__(self, other: Reliability) -> Reliability:
        return self.merge(other)

    def __radd__(self, other: object) -> Reliability:
        if isinstance(other, int) and other == 0:  # sum() starts from 0
            return self
        return NotImplemented

    def __repr__(self) -> str:  # the arrays are in the attributes and to_dict(); a line here
        total = float(np.sum(self.count))
        ece = f"{self.ece():.6g}" if total > 0 and math.isfinite(total) else "nan"
        return f"Reliability({self.n_bins} {self.strategy} bins, total {total:.6g}, ece={ece})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "edges": self.edges.tolist(),
            "count": self.count.tolist(),
            "sum_confidence": self.sum_confidence.tolist(),
            "sum_correct": self.sum_correct.tolist(),
        }

    def plot(self, ax: Any = None, *, title: str | None = None, show_counts: bool = True) -> Any:
        """Draw the reliability diagram on a matplotlib Axes (created if not given) and return it.

        Bars show each bin's accuracy over its edges, a red band the gap to the bin's mean confidence, the
        dashed diagonal perfect calibration; with ``show_counts`` each bar carries its bin's count (weight).
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
            raise ImportError("Reliability.plot needs matplotlib: pip install 'prefcal[plot]'") from exc
        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 4.5))
        left = self.edges[:-1]
        width = np.diff(self.edges)
        filled = self.count > 0
        acc = np.nan_to_num(self.accuracy)
        conf = np.nan_to_num(self.mean_confidence)
        ax.bar(left[filled], acc[filled], width=width[filled], align="edge", color="#4c72b0",
               edgecolor="white", label="accuracy")
        ax.bar(left[filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled], align="edge",
               color="#dd8452", alpha=0.55, edgecolor="#dd8452", label="gap to confidence")
        ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=1, label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ece = self.ece() if self.total > 0 else float("nan")
        ax.set_title(title if title is not None else f"ECE = {ece:.4f} ({self.n_bins} {self.strategy} bins)")
        if show_counts:  # each bin's count, written up the foot of its bar
            for x, c, a in zip((left + width / 2)[filled], self.count[filled], acc[filled], strict=True):
                inside = a > 0.16
                ax.text(x, 0.012 if inside else a + 0.012, _short_count(c), rotation=90, ha="center",
                        va="bottom", fontsize=7, color="white" if inside else "0.25")
        ax.legend(loc="upper left", fontsize="small", frameon=False)
        return ax


def _short_count(c: float) -> str:
    """A bin count in at most 5 characters: 87, 1.2k, 45k, 3.1M."""
    c = float(c)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if c >= div:
            v = c / div
            return f"{v:.1f}{suffix}" if v < 10 else f"{v:.0f}{suffix}"
    return f"{c:.0f}" if c == round(c) else f"{c:.3g}"


def _binary_call(confidence: Any, correct: Any, weights: Any) -> _backend.Call:
    call = _backend.Call(
        {"confidence": confidence, "correct": correct, "weights": weights},
        {
            "confidence": _validation.confidence_dtype,
            "correct": _validation.outcome_dtype,
            "weights": _validation.weight_dtype,
        },
    )
    shapes = call.shapes
    for name in shapes:
        _validation.ndim(name, shapes[name], 1)
    n = shapes["confidence"][0]
    _validation.same_length("confidence", n, "correct", shapes["correct"][0])
    if "weights" in shapes:
        _validation.same_length("confidence", n, "weights", shapes["weights"][0])
    _validation.nonempty("confidence", n)
    call.place()
    return call


def _run_binary(call: _backend.Call, kernel: str, *args: Any) -> tuple:
    """Runs a binary kernel on the call's backend; raises the row's error if the kernel reports one."""
    mod = call.module()
    if call.backend == "cuda":
        n = call.shapes["confidence"][0]
        out = getattr(mod, kernel)(
            call.pointer("confidence"), call.pointer("correct"), call.weight_pointer("weights"), n, *args,
            call.stream, call.device,
        )
    else:
        out = getattr(mod, kernel)(call.host("confidence"), call.host("correct"), call.host("weights"), *args)
    bad = int(out[-1])
    if bad != _validation.NO_ERROR and call.canonical_bools("correct", bad):
        return _run_binary(call, kernel, *args)
    if bad != _validation.NO_ERROR:
        raise ValueError(
            _validation.binary_row_message(
                bad, call.element("confidence", bad), call.element("correct", bad), call.element("weights", bad)
            )
        )
    return out[:-1]


def reliability(
    confidence: Any, correct: Any, *, n_bins: int = 15, strategy: str = "uniform", weights: Any = None
) -> Reliability:
    """Reliability table of binary confidences.

    Parameters
    ----------
    confidence : array of shape (N,)
        Predicted probability that each row is correct, in [0, 1] (float32 or float64 are read natively).
    correct : array of shape (N,)
        Outcome of each row: bool, or integers / floats equal to 0 or 1 (read without conversion).
    n_bins : int, default 15
    strategy : {"uniform", "quantile"}
    weights : array of shape (N,), optional
        Non-negative row weights.

    Returns
    -------
    Reliability

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> r = prefcal.reliability(np.array([0.2, 0.7, 0.75, 1.0]), np.array([False, True, False, True]), n_bins=4)
    >>> r.count.tolist()
    [1.0, 0.0, 1.0, 2.0]
    """
    bins = _validation.n_bins(n_bins)
    strategy = _validation.option("strategy", strategy, STRATEGIES)
    call = _binary_call(confidence, correct, weights)
    if strategy == "uniform":
        (table,) = _run_binary(call, "bin_uniform", bins)
        edges = np.arange(bins + 1, dtype=np.float64) / bins
    else:
        _validation.quantile_size(call.shapes["confidence"][0], bins)
        table, edges = _run_binary(call, "bin_quantile", bins)
    return Reliability(table[0], table[1], table[2], edges, strategy)


def ece(
    confidence: Any,
    correct: Any,
    *,
    n_bins: int = 15,
    strategy: str = "uniform",
    norm: str = "l1",
    debias: bool = False,
    weights: Any = None,
) -> float:
    """Expected calibration error of binary confidences (``norm="l2"``: RMSCE, ``"max"``: MCE).

    See :func:`reliability` for the arguments and the module notes for the formulas.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> conf = np.array([0.9, 0.9, 0.9, 0.9, 0.6])
    >>> hit = np.array([1, 1, 1, 0, 1])
    >>> round(prefcal.ece(conf, hit, n_bins=10), 6)  # 0.8 * |0.75 - 0.9| + 0.2 * |1 - 0.6|
    0.2
    """
    _validation.norm(norm, debias)  # before the pass over the data
    return reliability(confidence, correct, n_bins=n_bins, strategy=strategy, weights=weights).ece(norm, debias)


def multiclass_ece(
    probs: Any,
    labels: Any,
    *,
    kind: str = "confidence",
    n_bins: int = 15,
    strategy: str = "uniform",
    norm: str = "l1",
) -> float:
    """Calibration error of multiclass probabilities ``probs`` (N, C) against integer ``labels`` (N,).

    ``kind``:

    * ``"confidence"``: binary ECE of the top probability vs whether the top class (lowest index on ties)
      is the label;
    * ``"classwise"``: mean over the C classes of the binary ECE of p_c vs [label == c];
    * ``"top_label"``: for each predicted class c, the binned error of the top probability over the rows
      predicted c, weighted by the share of rows predicted c.

    Each entry of ``probs`` must lie in [0, 1]; rows need not sum to 1.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    >>> round(prefcal.multiclass_ece(p, np.array([0, 1, 0]), n_bins=5), 6)  # (0.3 + 0.2 + 0.4) / 3
    0.3
    """
    kind = _validation.option("kind", kind, MULTICLASS_KINDS)
    bins = _validation.n_bins(n_bins)
    strategy = _validation.option("strategy", strategy, STRATEGIES)
    norm = _validation.norm(norm, False)
    call = _backend.Call(
        {"probs": probs, "labels": labels},
        {"probs": _validation.confidence_dtype, "labels": _validation.label_dtype},
    )
    _validation.ndim("probs", call.shapes["probs"], 2)
    _validation.ndim("labels", call.shapes["labels"], 1)
    n, n_classes = call.shapes["probs"]
    _validation.same_length("probs", n, "labels", call.shapes["labels"][0])
    _validation.nonempty("probs", n)
    if n_classes == 0:
        raise ValueError("probs has no columns: at least one class is needed")
    if strategy == "quantile":
        _validation.quantile_size(n * n_classes, bins)
    call.place()
    code = MULTICLASS_KINDS.index(kind)
    kernel = "multiclass_uniform" if strategy == "uniform" else "multiclass_quantile"
    mod = call.module()
    if call.backend == "cuda":
        tables, _, bad = getattr(mod, kernel)(
            call.pointer("probs"), call.pointer("labels"), n, n_classes, bins, code, call.stream, call.device
        )
    else:
        tables, _, bad = getattr(mod, kernel)(call.host("probs"), call.host("labels"), bins, code)
    if bad != _validation.NO_ERROR:
        raise ValueError(
            _validation.multiclass_row_message(bad, call.element("probs", bad), call.element("labels", bad), n_classes)
        )
    if kind == "confidence":
        return calibration_error(*tables[0], norm)
    if kind == "classwise":
        return float(np.mean([calibration_error(*t, norm) for t in tables]))
    rows = tables[:, 0, :].sum(axis=1)
    return float(sum(r / n * calibration_error(*t, norm) for r, t in zip(rows, tables, strict=True) if r > 0))


def _scores(confidence: Any, correct: Any, weights: Any) -> np.ndarray:
    call = _binary_call(confidence, correct, weights)
    eps = float(np.finfo(call.arrays["confidence"][1]).eps)
    (sums,) = _run_binary(call, "score_sums", eps)
    _validation.positive_total(float(sums[0]))
    return sums


def brier(confidence: Any, correct: Any, *, weights: Any = None) -> float:
    """Brier score: the (weighted) mean of (confidence - correct)^2.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> round(prefcal.brier(np.array([0.8, 0.3]), np.array([1, 0])), 6)  # (0.2**2 + 0.3**2) / 2
    0.065
    """
    sums = _scores(confidence, correct, weights)
    return float(sums[1] / sums[0])


def log_loss(confidence: Any, correct: Any, *, weights: Any = None) -> float:
    """Binary log loss: -(weighted) mean of y log c + (1 - y) log(1 - c).

    The confidence is clipped to [eps, 1 - eps] with eps the machine epsilon of its dtype (as scikit-learn).

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> round(prefcal.log_loss(np.array([0.8, 0.3]), np.array([1, 0])), 6)  # -(log 0.8 + log 0.7) / 2
    0.289909
    """
    sums = _scores(confidence, correct, weights)
    return float(sums[2] / sums[0])
