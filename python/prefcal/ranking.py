"""The calibration hierarchy of probabilistic label rankings (SPEC §5).

A model predicts, per row (context), a distribution over the orderings of n items; the observation is one
ordering (possibly partial) or ranks with ties. Calibration is asked at several levels:

* **sub-k** (:func:`subranking_ece`): for each k-subset A, the relative order of A (k = 2: pairs);
* **top-k** (:func:`topk_ece`): the ordered top-k prefix (k = 1: which item wins), or the top-k *set*;
* **full** (:func:`full_ece`): the whole ordering (= top-(n-1));
* **marginal events** (:func:`marginal_ece`): "item i at position j", "item i in the top k".

Each level is reduced to calibration errors in one of three ways (``kind=``):

``"classwise"``
    The rank-wise ECE of the label-ranking calibration paper (Thies et al., ICML 2026), with its reference
    code's numbers: one binary ECE per class (an ordered k-tuple) over all rows, aggregated over classes.
``"top_label"``
    One event per row (top-k) or per (row, subset) (sub-k): the mode's probability vs whether the
    observation is the mode; one reliability diagram.
``"canonical"``
    The calibration of the whole distribution at that level (per subset for sub-k), estimated with a
    Dirichlet kernel (leave-one-out) or, for at most 3 classes, simplex binning.

Models: :class:`PL` (or a plain score array), :class:`Explicit` (a table of orderings and their
probabilities per row) and :class:`Empirical` (sampled orderings per row).

Observations and undetermined events
------------------------------------
``rankings=`` (N, m) orderings, ``-1``-padded (SPEC §1: listed items are the top of the available items, in
order; unlisted available items are below them in unknown order), or ``observed_ranks=`` (N, n) (smaller is
better, equal values are ties, ``+inf`` a rank after every finite one, negative or NaN = unknown). A sub-k
event of subset A is decided when every item of A has a known place and no two of them tie; otherwise every
class of A skips the row. A top-k event
is decided when the observed top-k prefix is (no unknown item, the k best strictly ordered and strictly
above the rest). Items outside a row's choice set (the PL model's ``mask``) take part in no event of that
row. Skipped events are counted in ``n_skipped``: at the sub-k and top-k levels (a fixed set of classes per
row) that includes the events of classes with an item outside the row's choice set; the position level has
events for the available items only, so a mask does not add to its ``n_skipped``.

Backends: PL models run the fused kernels, C++ or CUDA (every event probability computed on the fly inside
the binning loop; no (N x classes) array), as does the canonical kind's kernel estimator. :class:`Explicit`
and :class:`Empirical` models run on the host in chunks of rows: an explicit table through a BLAS product or
per-class incidence lists, an empirical model's samples counted in C++, then the C++ binning kernel (the
explicit model's top-label modes come from a BLAS product in NumPy). Without the C++ module every function
runs the NumPy reference.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

import numpy as np

from . import _arrays, _backend, _reference, _validation
from .calibration import Reliability, calibration_error

__all__ = [
    "PL",
    "Explicit",
    "Empirical",
    "LevelResult",
    "ClasswiseResult",
    "CanonicalResult",
    "SweepTable",
    "Report",
    "subranking_ece",
    "topk_ece",
    "full_ece",
    "marginal_ece",
    "sweep",
    "report",
]

KINDS = ("classwise", "top_label", "canonical")
CLASSES = ("auto", "all", "observed")
WEIGHTINGS = ("uniform", "prevalence", "pred_mass", "top5_mass")
DISCREPANCIES = ("abs", "kl", "jeff", "rel_p", "rel_q", "log_ratio")
SPACINGS = ("linear", "log")
FILTERS = (None, "mass95", "top10")
ESTIMATORS = ("kernel", "binning")
EPS = 1e-12
AUTO_ALL_BELOW = 8  # classes="auto": all classes when n < 8, else the observed ones (the paper's rule)
EXPLICIT_SUM_TOL = 1e-6


# ------------------------------------------------------------------------------------------------ models
def _host(name: str, x: Any) -> np.ndarray:
    if x is None:
        return None
    w = _arrays.where(x)
    return _arrays.host_copy(x) if w.on_gpu else np.asarray(_arrays.to_numpy_input(x))


def _on_gpu(*xs: Any) -> bool:
    return any(x is not None and _arrays.where(x).on_gpu for x in xs)


def _engine(on_gpu: bool) -> tuple[Any, Any]:
    """(module for the PL, keys and canonical kernels, host C++ module for the explicit-model kernels): the
    CUDA adapter and _cpu, _cpu twice, or None twice for the NumPy reference."""
    backend = _backend.choose(on_gpu=on_gpu)
    if backend == "cuda":
        from . import _ranking_cuda

        return _ranking_cuda, _backend.cpu_module()
    if backend == "cpu":
        cpu = _backend.cpu_module()
        return cpu, cpu
    return None, None


def _model_probs(host: Any, part: tuple, classes: np.ndarray, mode: int) -> np.ndarray:
    """Event probabilities (rows, C) of a slice of a model, mode 0 sub-k, 1 top-k, 2 top-k set: an empirical
    model's samples are counted in C++ when it is built, everything else as in the reference."""
    if host is not None and part[0] == "empirical":
        samples = np.ascontiguousarray(part[1], dtype=np.int64)
        return host.rank_sample_probs(samples, np.ascontiguousarray(classes, dtype=np.int32), mode)
    return _reference._event_or_set_probs(part, classes, mode)


def _int_array(name: str, x: Any) -> np.ndarray:
    a = _host(name, x)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    _validation.unsigned_fits(name, a, np.dtype(np.int64))  # uint64 past int64 would wrap to -1 (padding)
    return a.astype(np.int64, copy=False)


def _float_array(name: str, x: Any) -> np.ndarray:
    a = _host(name, x)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def _permutation_problem(orders: np.ndarray, n: int) -> int | None:
    """Index (flat, over the leading axes) of the first row of `orders` (..., n) that is not a permutation."""
    flat = orders.reshape(-1, n)
    ok = (flat >= 0) & (flat < n)
    srt = np.sort(np.where(ok, flat, -1), axis=1)
    bad = ~ok.all(axis=1) | (srt != np.arange(n)).any(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def _not_permutation(name: str, index: str, row: np.ndarray, n: int) -> str:
    seen: dict[int, int] = {}
    for j, v in enumerate(int(x) for x in row):
        if not 0 <= v < n:
            return f"{name}[{index}, {j}] = {v} is out of range for n_items={n}"
        if v in seen:
            return f"{name}[{index}] repeats item {v} (positions {seen[v]} and {j})"
        seen[v] = j
    return f"{name}[{index}] is not a permutation of 0..{n - 1}"


@dataclass(frozen=True)
class PL:
    """Plackett-Luce model per row: ``scores`` (N, n) or one shared (n,), optional choice-set ``mask``.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> m = prefcal.ranking.PL(np.log([[3.0, 1.0]]))
    >>> m.n_items, m.n_rows
    (2, 1)
    """

    scores: Any
    mask: Any = None

    def __post_init__(self) -> None:
        _place(self, scores=self.scores, mask=self.mask)
        object.__setattr__(self, "_device", _on_gpu(self.scores, self.mask))
        s = _float_array("scores", self.scores)
        _validation.scores_shape(s.shape)
        if s.ndim == 1:
            msg = _validation.nonfinite_scores(s)
        else:
            bad = ~np.isfinite(s).all(axis=1)
            msg = (
                _validation.nonfinite_scores(s[int(np.argmax(bad))], f"{int(np.argmax(bad))}, ")
                if bad.any()
                else None
            )
        if msg:
            raise ValueError(msg)
        object.__setattr__(self, "scores", s)
        if self.mask is not None:
            m = _host("mask", self.mask)
            if m.dtype != np.bool_:
                raise TypeError(f"mask must be a boolean array, got dtype {m.dtype}")
            _validation.mask_shape(m.shape, s.shape[0] if s.ndim == 2 else m.shape[0], s.shape[-1])
            object.__setattr__(self, "mask", m)

    @property
    def n_items(self) -> int:
        return int(self.scores.shape[-1])

    @property
    def n_rows(self) -> int | None:
        if self.scores.ndim == 2:
            return int(self.scores.shape[0])
        return None if self.mask is None or self.mask.ndim == 1 else int(self.mask.shape[0])


@dataclass(frozen=True)
class Explicit:
    """An explicit table: candidate full ``orderings`` (R, n) and their ``probs`` (N, R) per row; each row
    sums to at most 1 (the rest of the mass is on orderings not listed).

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> m = prefcal.ranking.Explicit([[0, 1, 2], [2, 1, 0]], [[0.75, 0.25]])
    >>> m.n_items, m.n_rows
    (3, 1)
    """

    orderings: Any
    probs: Any

    def __post_init__(self) -> None:
        _place(self, orderings=self.orderings, probs=self.probs)
        object.__setattr__(self, "_device", _on_gpu(self.orderings, self.probs))
        o = _int_array("orderings", self.orderings)
        p = _float_array("probs", self.probs)
        if o.ndim != 2 or o.shape[0] == 0 or o.shape[1] == 0:
            raise ValueError(
                f"orderings must be a non-empty 2-dimensional array (R, n_items), got shape {o.shape}"
            )
        if p.ndim != 2 or p.shape[1] != o.shape[0]:
            raise ValueError(
                f"probs must have shape (N, {o.shape[0]}) (one column per ordering), got {p.shape}"
            )
        bad = _permutation_problem(o, o.shape[1])
        if bad is not None:
            raise ValueError(_not_permutation("orderings", str(bad), o[bad], o.shape[1]))
        if np.unique(o, axis=0).shape[0] != o.shape[0]:
            raise ValueError("orderings lists the same ordering twice; give each ordering once")
        wrong = ~((p >= 0) & (p <= 1)).all(axis=1)
        if wrong.any():
            r = int(np.argmax(wrong))
            c = int(np.argmax(~((p[r] >= 0) & (p[r] <= 1))))
            raise ValueError(f"probs[{r}, {c}] = {float(p[r, c])!r} is not a probability in [0, 1]")
        over = p.sum(axis=1) > 1.0 + EXPLICIT_SUM_TOL
        if over.any():
            r = int(np.argmax(over))
            raise ValueError(
                f"probs[{r}] sums to {float(p[r].sum())!r} > 1 (+{EXPLICIT_SUM_TOL}); "
                "rows must sum to at most 1"
            )
        object.__setattr__(self, "orderings", o)
        object.__setattr__(self, "probs", p)

    @property
    def n_items(self) -> int:
        return int(self.orderings.shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.probs.shape[0])


@dataclass(frozen=True)
class Empirical:
    """Sampled full orderings ``samples`` (N, S, n) per row (e.g. from :func:`prefcal.pl.sample`);
    probabilities are frequencies.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> m = prefcal.ranking.Empirical(np.array([[[0, 1], [1, 0], [0, 1]]]))
    >>> m.n_items, m.n_rows
    (2, 1)
    """

    samples: Any

    def __post_init__(self) -> None:
        _place(self, samples=self.samples)
        object.__setattr__(self, "_device", _on_gpu(self.samples))
        s = _int_array("samples", self.samples)
        if s.ndim != 3 or 0 in s.shape:
            raise ValueError(
                f"samples must be a non-empty 3-dimensional array (N, S, n_items), got shape {s.shape}"
            )
        bad = _permutation_problem(s, s.shape[2])
        if bad is not None:
            b, d = divmod(bad, s.shape[1])
            raise ValueError(_not_permutation("samples", f"{b}, {d}", s[b, d], s.shape[2]))
        object.__setattr__(self, "samples", s)

    @property
    def n_items(self) -> int:
        return int(self.samples.shape[2])

    @property
    def n_rows(self) -> int:
        return int(self.samples.shape[0])


def _place(model: Any, **arrays: Any) -> None:
    """Records where a model's arrays come from (one library and device, else TypeError), so that its
    observations can be held to the same."""
    named = {name: (x, _arrays.where(x)) for name, x in arrays.items() if x is not None}
    object.__setattr__(model, "_where", _arrays.same_place(named))


def _as_model(model: Any) -> PL | Explicit | Empirical:
    if isinstance(model, (PL, Explicit, Empirical)):
        return model
    if isinstance(model, dict):
        raise TypeError(
            "model must be ranking.PL, ranking.Explicit, ranking.Empirical or a score array, got dict"
        )
    return PL(model)


# ------------------------------------------------------------------------------------------ observations
@dataclass
class _Data:
    """A model and its observations prepared for the kernels."""

    model: PL | Explicit | Empirical
    keys: np.ndarray  # (N, n) float64 rank keys: NaN unknown, +inf unavailable
    n: int
    avail: np.ndarray | None  # (N, n) or None when every item is available
    on_gpu: bool = False  # an input came from a GPU: the CUDA kernels run where available

    @property
    def n_rows(self) -> int:
        return int(self.keys.shape[0])

    def tuple(self, rows: slice | None = None) -> tuple:
        m = self.model
        if isinstance(m, PL):
            s = m.scores if m.scores.ndim == 2 else m.scores[None, :]
            if self.avail is not None:
                s = np.where(self.avail, np.broadcast_to(s, self.avail.shape), -np.inf)
            return ("pl", s)
        if isinstance(m, Explicit):
            return ("explicit", m.orderings, m.probs)
        return ("empirical", m.samples)


def _prepare(model: Any, rankings: Any, observed_ranks: Any) -> _Data:
    model = _as_model(model)
    n = model.n_items
    _validation.one_observation(rankings, observed_ranks)
    mask = model.mask if isinstance(model, PL) else None
    obs_name, obs = ("rankings", rankings) if rankings is not None else ("observed_ranks", observed_ranks)
    model_where = getattr(model, "_where", None)
    if model_where is not None:
        _arrays.same_place({"model": (None, model_where), obs_name: (obs, _arrays.where(obs))})
    if rankings is not None:
        r = _int_array("rankings", rankings)
        n_rows, m = _validation.rankings_shape(r.shape, n)
    else:
        r = _float_array("observed_ranks", observed_ranks)
        if r.ndim != 2 or r.shape[1] != n:
            raise ValueError(f"observed_ranks must have shape (N, {n}) (one rank per item), got {r.shape}")
        n_rows = r.shape[0]
    _validation.nonempty("rankings" if rankings is not None else "observed_ranks", n_rows)
    rows = model.n_rows
    if rows is not None and rows != n_rows:
        raise ValueError(f"the model has {rows} rows but the observations have {n_rows}")
    avail = None
    if mask is not None:
        _validation.mask_shape(mask.shape, n_rows, n)
        avail = np.broadcast_to(mask, (n_rows, n))
    full_avail = avail if avail is not None else np.ones((n_rows, n), dtype=bool)
    on_gpu = getattr(model, "_device", False) or _on_gpu(rankings, observed_ranks)
    cpu, _ = _engine(on_gpu)
    if rankings is not None and cpu is not None:
        mask_arg = None if mask is None else np.ascontiguousarray(mask, dtype=np.bool_)
        keys, bad_row = cpu.rank_keys(np.ascontiguousarray(r, dtype=np.int64), mask_arg, n)
        if bad_row != _validation.NO_ERROR:
            raise ValueError(
                _validation.ranking_row_message(
                    bad_row, r[bad_row], n, None if avail is None else avail[bad_row]
                )
            )
        return _Data(model, np.asarray(keys), n, avail, on_gpu)
    if rankings is not None:
        listed, items, indicator, bad = _reference.parse_rankings(r, full_avail)
        if bad.any():
            b = int(np.argmax(bad))
            raise ValueError(_validation.ranking_row_message(b, r[b], n, None if avail is None else avail[b]))
        length = listed.sum(axis=1)
        keys = np.broadcast_to(length[:, None].astype(np.float64), (n_rows, n)).copy()
        pos = np.broadcast_to(np.arange(m, dtype=np.float64), (n_rows, m))
        b_idx = np.broadcast_to(np.arange(n_rows)[:, None], (n_rows, m))
        keys[b_idx[listed], items[listed]] = pos[listed]
    else:
        keys = np.where(np.isnan(r) | (r < 0), np.nan, r)
        keys = _finite_ranks(keys)
    if avail is not None:
        keys = np.where(avail, keys, np.inf)
    return _Data(model, np.ascontiguousarray(keys), n, avail, on_gpu)


def _finite_ranks(keys: np.ndarray) -> np.ndarray:
    """Observed ranks with +inf (a rank after every finite one; +inf is the keys' code for an unavailable
    item) as the dense ranks 0, 1, ... of their rows, which keep every order and tie; other rows as they
    are."""
    rows = np.isposinf(keys).any(axis=1)
    if not rows.any():
        return keys
    sub = keys[rows]
    order = np.argsort(sub, axis=1, kind="stable")  # NaN (unknown) last
    srt = np.take_along_axis(sub, order, axis=1)
    step = np.concatenate([np.ones((len(sub), 1), dtype=bool), srt[:, 1:] != srt[:, :-1]], axis=1)
    dense = np.where(np.isnan(srt), np.nan, np.cumsum(step, axis=1) - 1.0)
    out = np.empty_like(sub)
    np.put_along_axis(out, order, dense, axis=1)
    keys = keys.copy()
    keys[rows] = out
    return keys


class _Undetermined(ValueError):
    """No event of a level is decided by the observations (report leaves such default levels out)."""

    def __init__(self, what: str = "every event of this level is") -> None:
        super().__init__(f"{what} undetermined by the observations: nothing to calibrate")


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class LevelResult:
    """Binned calibration of one event per row (or per (row, subset)): the ``top_label`` kind and
    :func:`marginal_ece`."""

    ece: float
    rmsce: float
    mce: float
    accuracy: float
    mean_confidence: float
    n_events: int
    n_skipped: int
    reliability: Reliability
    kind: str = "top_label"

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("kind", "ece", "rmsce", "mce", "accuracy", "mean_confidence")}
        d.update(n_events=self.n_events, n_skipped=self.n_skipped, reliability=self.reliability.to_dict())
        return d


@dataclass(frozen=True)
class ClasswiseResult:
    """Rank-wise (classwise) ECE: the aggregate ``ece`` and the per-class table ``classes`` (records with
    ``cls``, ``ece``, ``prevalence``, ``pred_mass``, ``count``, built on first access); :meth:`reliability`
    gives a class's diagram."""

    ece: float
    n_classes: int
    n_skipped: int
    weighting: str
    discrepancy: str
    _tables: np.ndarray = field(repr=False)
    _edges: np.ndarray = field(repr=False)
    _classes: np.ndarray = field(repr=False)  # (C, k) items of each class
    _stats: np.ndarray = field(repr=False)  # (4, C): ece, prevalence, pred_mass, count of each class
    kind: str = "classwise"

    @functools.cached_property
    def classes(self) -> list[dict[str, Any]]:
        e, prev, mass, count = self._stats
        return [
            {"cls": c, "ece": e_, "prevalence": p, "pred_mass": q, "count": n_}
            for c, e_, p, q, n_ in zip(
                map(tuple, np.asarray(self._classes, dtype=np.int64).tolist()),
                e.tolist(),
                prev.tolist(),
                mass.tolist(),
                count.astype(np.int64).tolist(),
                strict=True,
            )
        ]

    @property
    def n_events(self) -> int:
        return int(self._stats[3].sum())

    def reliability(self, cls: Any) -> Reliability:
        key = np.array([int(v) for v in cls], dtype=np.int64)
        if key.shape[0] == self._classes.shape[1]:
            hit = np.flatnonzero((np.asarray(self._classes, dtype=np.int64) == key).all(axis=1))
            if hit.size:
                t = self._tables[int(hit[0])]
                return Reliability(t[0], t[1], t[2], self._edges)
        shown = tuple(key.tolist())
        raise KeyError(f"class {shown} is not among the {self.n_classes} classes of this result")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ece": self.ece,
            "n_classes": self.n_classes,
            "n_events": self.n_events,
            "n_skipped": self.n_skipped,
            "weighting": self.weighting,
            "discrepancy": self.discrepancy,
            "classes": [dict(r, cls=list(r["cls"])) for r in self.classes],
        }


@dataclass(frozen=True)
class CanonicalResult:
    """Canonical (full-rank) calibration error: the mean over subsets of the per-subset errors."""

    ece: float
    per_subset: dict[tuple[int, ...], float]
    n_skipped: int = 0
    estimator: str = "kernel"
    kind: str = "canonical"

    @property
    def n_events(self) -> int:
        return -1

    @property
    def n_classes(self) -> int:
        return len(self.per_subset)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ece": self.ece,
            "estimator": self.estimator,
            "n_skipped": self.n_skipped,
            "per_subset": {",".join(map(str, k)): v for k, v in self.per_subset.items()},
        }


# ------------------------------------------------------------------------------------------- classwise
def _discrepancy(name: str, cnt: np.ndarray, sc: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """Per-bin discrepancy between the outcome rate p and the mean probability q (0 in empty bins)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(cnt > 0, sy / cnt, 0.0)
        q = np.where(cnt > 0, sc / cnt, 0.0)
        if name == "abs":
            d = np.abs(p - q)
        elif name == "rel_p":
            d = np.abs(p - q) / (p + EPS)
        elif name == "rel_q":
            d = np.abs(p - q) / (q + EPS)
        elif name == "log_ratio":
            d = np.abs(np.log((p + EPS) / (q + EPS)))
        elif name == "kl":
            pc, qc = np.clip(p, EPS, 1 - EPS), np.clip(q, EPS, 1 - EPS)
            d = pc * np.log(pc / qc) + (1 - pc) * np.log((1 - pc) / (1 - qc))
        else:  # jeff
            ps = (sy + 0.5) / (cnt + 1.0)
            qc = np.clip(q, EPS, 1 - EPS)
            kl_pq = ps * np.log(ps / qc) + (1 - ps) * np.log((1 - ps) / (1 - qc))
            kl_qp = qc * np.log(qc / ps) + (1 - qc) * np.log((1 - qc) / (1 - ps))
            d = 1.0 - np.exp(-(kl_pq + kl_qp))
    return np.where(cnt > 0, d, 0.0)


def classwise_summary(
    tables: np.ndarray, discrepancy: str, weighting: str
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(aggregate, per-class ece, prevalence, pred_mass, count) from per-class tables (C, 3, B).

    Classes without a decided event have ece NaN and take no part in the aggregate."""
    cnt, sc, sy = tables[:, 0], tables[:, 1], tables[:, 2]
    n_c = cnt.sum(axis=1)
    has = n_c > 0
    safe = np.where(has, n_c, 1.0)
    ece = np.where(has, (cnt / safe[:, None] * _discrepancy(discrepancy, cnt, sc, sy)).sum(axis=1), np.nan)
    prevalence = np.where(has, sy.sum(axis=1) / safe, np.nan)
    pred_mass = np.where(has, sc.sum(axis=1) / safe, np.nan)
    e = ece[has]
    if e.size == 0:
        return math.nan, ece, prevalence, pred_mass, n_c
    if weighting == "uniform":
        total = float(np.mean(e))
    elif weighting == "top5_mass":
        order = np.argsort(-pred_mass[has], kind="stable")
        total = float(e[order[:5]].sum() / 5.0)
    else:
        w = (prevalence if weighting == "prevalence" else pred_mass)[has]
        total = float(np.sum(e * w) / w.sum()) if w.sum() > 0 else float(np.mean(e))
    return total, ece, prevalence, pred_mass, n_c


def _class_list(data: _Data, k: int, top: bool, classes: str) -> np.ndarray:
    if classes == "auto":
        classes = "all" if data.n < AUTO_ALL_BELOW else "observed"
    if classes == "all":
        count = math.perm(data.n, k) if top else math.comb(data.n, k) * math.factorial(k)
        if count > 50_000_000:
            raise ValueError(
                f"classes='all' at this level has {count} classes (n_items={data.n}, k={k}); "
                "use classes='observed'"
            )
        return _reference.all_classes(data.n, k, top)
    cpu, host = _engine(data.on_gpu)
    size = math.comb(data.n, k) * math.factorial(k)
    if cpu is not None and not top and 2 <= k <= 12 and size <= MAX_SEEN_SLOTS:
        seen = np.flatnonzero(np.asarray(cpu.rank_seen_subsets(data.keys, k)).view(np.bool_))
        found = _reference.slot_classes(seen, data.n, k)
        return found[np.lexsort(found.T[::-1])] if found.size else found
    if host is not None and top and k * math.log2(max(data.n, 2)) < 62:
        codes = np.unique(host.rank_observed_tops(np.ascontiguousarray(data.keys), k))
        return _reference.classes_of_codes(codes[codes >= 0], data.n, k)
    return _reference.observed_classes(data.keys, k, top)


def _filtered(data: _Data, how: str) -> tuple[tuple, np.ndarray]:
    """The reference code's row filter: (model restricted to the retained orderings, kept rows)."""
    keys = data.keys
    if data.avail is not None and not data.avail.all():
        raise ValueError("filter= needs every item available in every row (no mask)")
    srt = np.sort(keys, axis=1)
    incomplete = ~np.isfinite(keys).all(axis=1) | (srt[:, 1:] == srt[:, :-1]).any(axis=1)
    if incomplete.any():
        raise ValueError(
            f"filter={how!r} needs complete observed orderings; "
            f"row {int(np.argmax(incomplete))} is partial or tied"
        )
    orders = np.argsort(keys, axis=1)
    uniq, first, inverse, counts = np.unique(
        orders, axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    rank = np.lexsort((first, -counts))  # frequency descending, ties by first occurrence
    if how == "top10":
        chosen = rank[:10]
    else:
        cum = np.cumsum(counts[rank])
        stop = int(np.searchsorted(cum / keys.shape[0], 0.95, side="left"))
        chosen = rank[: stop + 1]
    retained = uniq[np.sort(chosen)]
    keep = np.isin(inverse, chosen)
    return ("explicit", retained, _ordering_probs(data, retained)), keep


def _ordering_probs(data: _Data, orderings: np.ndarray) -> np.ndarray:
    """p_b(pi) of each given full ordering for every row: (N, R)."""
    m = data.tuple()
    n = data.n
    host = _kernels(data.on_gpu).host
    out = np.empty((data.n_rows, orderings.shape[0]))
    for sl in _reference._chunks(data.n_rows, orderings.shape[0] * n * max(n - 1, 1)):
        part = _reference._model_rows(m, sl)
        if n == 1:
            out[sl] = 1.0
        elif part[0] == "explicit":
            hit = (part[1][:, None, :] == orderings[None]).all(axis=-1).astype(np.float64)  # (R_model, R)
            out[sl] = part[2] @ hit
        else:
            out[sl] = np.broadcast_to(_model_probs(host, part, orderings[:, : n - 1], 1), out[sl].shape)
    return out


def _classwise(
    data: _Data,
    k: int,
    top: bool,
    *,
    n_bins: int,
    classes: str,
    weighting: str,
    discrepancy: str,
    bin_spacing: str,
    filter: str | None,
    return_tables: bool = True,
) -> ClasswiseResult:
    class_list = _class_list(data, k, top, classes)
    edges = _reference.log_edges(n_bins) if bin_spacing == "log" else None
    keep = None
    model_t = data.tuple()
    if filter is not None:
        model_t, keep = _filtered(data, filter)
    if class_list.shape[0] == 0:
        raise _Undetermined()  # no class of this level is observed in any row
    tables = _kernels(data.on_gpu).classwise(model_t, data.keys, class_list, top, n_bins, edges, keep)
    if not np.asarray(tables)[:, 0, :].any():  # no row decides any class's event
        raise _Undetermined()
    rows = int(keep.sum()) if keep is not None else data.n_rows
    show_edges = edges if edges is not None else np.linspace(0.0, 1.0, n_bins + 1)
    return classwise_result(tables, class_list, rows, weighting, discrepancy, show_edges)


def classwise_result(
    tables: np.ndarray, classes: np.ndarray, rows: int, weighting: str, discrepancy: str, edges: np.ndarray
) -> ClasswiseResult:
    """The result of a classwise level from its per-class tables (C, 3, B) over `rows` rows."""
    total, ece, prev, mass, count = classwise_summary(tables, discrepancy, weighting)
    stats = np.stack([np.asarray(v, dtype=np.float64) for v in (ece, prev, mass, count)])
    skipped = int(rows * classes.shape[0] - count.sum())
    return ClasswiseResult(
        total, int(classes.shape[0]), skipped, weighting, discrepancy, tables, edges, classes, stats
    )


# ------------------------------------------------------------------------------------------- top label
def _level_result(tables: np.ndarray, skipped: int, kind: str = "top_label") -> LevelResult:
    cnt, sc, sy = tables
    total = float(cnt.sum())
    rel = Reliability(cnt, sc, sy, np.linspace(0.0, 1.0, cnt.shape[0] + 1))
    if total == 0:
        raise _Undetermined()
    return LevelResult(
        calibration_error(cnt, sc, sy, "l1"),
        calibration_error(cnt, sc, sy, "l2"),
        calibration_error(cnt, sc, sy, "max"),
        float(sy.sum() / total),
        float(sc.sum() / total),
        int(total),
        int(skipped),
        rel,
        kind,
    )


def _top_label(data: _Data, k: int, level: str, n_bins: int) -> LevelResult:
    tables, skipped = _kernels(data.on_gpu).top_label(data.tuple(), data.keys, level, k, n_bins)
    return _level_result(tables, skipped)


# ------------------------------------------------------------------------------------------- canonical
def _canonical(
    data: _Data, k: int, top: bool, *, classes: str, estimator: str, h: float, p: float, n_bins: int
) -> CanonicalResult:
    use_all = classes == "all" or (classes == "auto" and data.n < AUTO_ALL_BELOW)
    m = data.tuple()
    host = _kernels(data.on_gpu).host
    per: dict[tuple[int, ...], float] = {}
    skipped = 0
    groups = [None] if top else [tuple(int(v) for v in a) for a in _reference.subsets(data.n, k)]
    for a in groups:
        if top:
            cls = _class_list(data, k, True, "all" if use_all else "observed")
        elif use_all:
            cls = np.array(list(permutations(a)), dtype=np.int32)
        else:
            cls = _reference.observed_classes(data.keys[:, list(a)], k, False)
            cls = np.array(a, dtype=np.int32)[cls]
        if cls.shape[0] == 0:
            continue
        if estimator == "binning" and cls.shape[0] not in (2, 3):
            raise ValueError(
                f"estimator='binning' needs 2 or 3 classes per distribution, got {cls.shape[0]}; use 'kernel'"
            )
        probs = np.empty((data.n_rows, cls.shape[0]))
        labels = np.empty(data.n_rows, dtype=np.int64)
        for sl in _reference._chunks(data.n_rows, cls.shape[0] * k * data.n):
            part = _reference._model_rows(m, sl)
            probs[sl] = np.nan_to_num(
                np.broadcast_to(_model_probs(host, part, cls, int(top)), (sl.stop - sl.start, cls.shape[0]))
            )
            truth = (_reference.top_truth if top else _reference.sub_truth)(data.keys[sl], cls)
            hit = truth == 1
            labels[sl] = np.where(hit.any(axis=1), np.argmax(hit, axis=1), -1)
        skipped += int((labels < 0).sum())
        if estimator == "kernel":
            err = _kernels(data.on_gpu).canonical(probs, labels, h, p)
        else:
            err = _reference.simplex_bins(probs, labels, n_bins)
        per[a if a is not None else tuple(range(k))] = float(err)
    vals = [v for v in per.values() if not math.isnan(v)]
    if not vals:
        raise _Undetermined()
    return CanonicalResult(float(np.mean(vals)), per, skipped, estimator)


# ---------------------------------------------------------------------------------------------- kernels
MAX_SLOTS = 1 << 20  # sub-k slot tables (subsets x orders) up to this size
MAX_SLOT_TABLES = 1 << 18  # and per-class tables (classes x bins x 3) up to this many float64
MAX_SEEN_SLOTS = 1 << 24  # the scan for observed sub-k classes: one flag byte per slot and thread


def _slots(n: int, classes: np.ndarray, kernel: bool = True) -> np.ndarray | None:
    """slot[subset * k! + rank] = class index or -1 (subsets in combinations order, the orders of a subset in
    lexicographic order of the positions within it); None when the table would be too large (for the PL slot
    kernel, ``kernel``: also when the classes' tables would not fit its cache plan)."""
    c, k = classes.shape
    kf = math.factorial(k)
    size = math.comb(n, k) * kf
    if kernel and (k > 12 or size > MAX_SLOTS or c * 30 > MAX_SLOT_TABLES):
        return None
    if size > MAX_SEEN_SLOTS:
        return None
    srt = np.sort(classes, axis=1).astype(np.int64)
    # the subset's index in combinations order, found by its bitmask
    subs = _reference.subsets(n, k).astype(np.int64)
    weights = np.int64(1) << np.arange(n, dtype=np.int64)
    sub_keys = (weights[subs]).sum(axis=1)
    order = np.argsort(sub_keys)
    pos = np.searchsorted(sub_keys[order], (weights[srt]).sum(axis=1))
    subset = order[pos]
    within = np.empty((c, k), dtype=np.int64)
    for j in range(k):
        within[:, j] = (srt < classes[:, j : j + 1]).sum(axis=1)  # index of classes[:, j] inside its subset
    rank = np.zeros(c, dtype=np.int64)
    for j in range(k):
        smaller = (within[:, j + 1 :] < within[:, j : j + 1]).sum(axis=1)
        rank = rank * (k - j) + smaller
    slot = np.full(size, -1, dtype=np.int32)
    slot[subset * kf + rank] = np.arange(c, dtype=np.int32)
    return slot


def _order_ranks(classes: np.ndarray) -> np.ndarray:
    """Lexicographic rank of each class's order among the orders of its (sorted) item set."""
    c, k = classes.shape
    srt = np.sort(classes, axis=1)
    within = np.empty((c, k), dtype=np.int64)
    for j in range(k):
        within[:, j] = (srt < classes[:, j : j + 1]).sum(axis=1)  # index of classes[:, j] inside its subset
    rank = np.zeros(c, dtype=np.int64)
    for j in range(k):
        rank = rank * (k - j) + (within[:, j + 1 :] < within[:, j : j + 1]).sum(axis=1)
    return rank


def _grouped(
    cpu: Any,
    model_t: tuple,
    keys: np.ndarray,
    classes: np.ndarray,
    top: bool,
    n_bins: int,
    edges: np.ndarray | None,
    keep: np.ndarray | None,
) -> np.ndarray:
    """Explicit model through the grouped kernel: classes sorted by item set (sub-k) with the observed order
    found once per (row, set), or with each row's observed prefix class given (top-k)."""
    c, k = classes.shape
    n = keys.shape[1]
    if top:
        perm = np.arange(c)
        group = np.zeros(c, dtype=np.int32)
        rank = np.zeros(c, dtype=np.int32)
        groups = np.zeros((1, k), dtype=np.int32)
        prefix, ok = _reference.observed_prefix(keys, k)
        base = np.int64(n) ** np.arange(k - 1, -1, -1, dtype=np.int64)
        codes = classes.astype(np.int64) @ base
        order = np.argsort(codes)
        at = np.searchsorted(codes[order], prefix.astype(np.int64) @ base)
        at = np.minimum(at, c - 1)
        found = codes[order][at] == prefix.astype(np.int64) @ base
        row_class = np.where(ok, np.where(found, order[at], -1), -2).astype(np.int32)
    else:
        srt = np.sort(classes, axis=1)
        if k * math.log2(max(n, 2)) < 62:  # the item sets as integer codes (base n): much faster than rows
            base = np.int64(n) ** np.arange(k - 1, -1, -1, dtype=np.int64)
            codes, inv = np.unique(srt.astype(np.int64) @ base, return_inverse=True)
            uniq = (codes[:, None] // base) % n
        else:
            uniq, inv = np.unique(srt, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        rnk = _order_ranks(classes)
        perm = np.lexsort((rnk, inv))
        group, rank = inv[perm].astype(np.int32), rnk[perm].astype(np.int32)
        groups = np.ascontiguousarray(uniq, dtype=np.int32)
        row_class = np.zeros(1, dtype=np.int32)
    indptr, idx = _incidence(model_t[1], classes[perm], top)
    tables = cpu.rank_classwise_grouped(
        np.ascontiguousarray(model_t[2]),
        indptr,
        idx,
        keys,
        k,
        bool(top),
        group,
        rank,
        groups,
        row_class,
        n_bins,
        edges,
        keep,
    )
    out = np.empty_like(tables)
    out[perm] = tables
    return out


DENSE_MAX = 1 << 22  # orderings x classes of a dense incidence matrix


def _dense_product(orders: np.ndarray, classes: np.ndarray, top: bool) -> bool:
    """Whether an explicit model's class probabilities are best a dense matrix product (BLAS): sub-2 with many
    orderings (an ordering satisfies half of the classes; measured: the product wins from ~200 orderings at
    10^4 rows of 10 items, the grouped kernel below that and for every larger k) and a bounded matrix."""
    return not top and classes.shape[1] == 2 and orders.shape[0] >= 200 and (
        orders.shape[0] * classes.shape[0] <= DENSE_MAX
    )


def _incidence(orders: np.ndarray, classes: np.ndarray, top: bool) -> tuple[np.ndarray, np.ndarray]:
    """CSC (indptr, idx): for each class, the orderings that satisfy it (an ordering satisfies one class per
    subset for sub-k, at most one for top-k)."""
    r, n = orders.shape
    c, k = classes.shape
    if top:
        index = {tuple(v): i for i, v in enumerate(classes.tolist())}
        hits = [index.get(tuple(o[:k]), -1) for o in orders.tolist()]
        idx = np.array(hits, dtype=np.int64)
        owner = np.arange(r)
    else:
        slot = _slots(n, classes, kernel=False)
        if slot is None:
            owner_l, idx_l = [], []
            for sl in _reference._chunks(r, c * k):
                o, cc = np.nonzero(_reference._satisfies(orders[sl], classes.astype(np.intp), False))
                owner_l.append(o + sl.start)
                idx_l.append(cc)
            owner, idx = np.concatenate(owner_l), np.concatenate(idx_l)
        else:
            subs = _reference.subsets(n, k).astype(np.intp)
            pos = np.argsort(orders, axis=1)[:, subs]  # (R, M, k) positions of each subset's items
            rel = np.argsort(pos, axis=2)  # the subset's items (as indices 0..k-1) in the ordering's order
            rank = np.zeros(pos.shape[:2], dtype=np.int64)
            for j in range(k):
                smaller = (rel[:, :, j + 1 :] < rel[:, :, j : j + 1]).sum(axis=2)
                rank = rank * (k - j) + smaller
            cls = slot[np.arange(subs.shape[0])[None, :] * math.factorial(k) + rank]
            owner = np.broadcast_to(np.arange(r)[:, None], cls.shape).ravel()
            idx = cls.ravel().astype(np.int64)
    keep = idx >= 0
    owner, idx = owner[keep], idx[keep]
    order = np.argsort(idx, kind="stable")  # class-major (CSC): each class's orderings together
    indptr = np.zeros(c + 1, dtype=np.int64)
    np.cumsum(np.bincount(idx, minlength=c), out=indptr[1:])
    return indptr, np.ascontiguousarray(owner[order], dtype=np.int32)


class _Kernels:
    """Routes each kernel to the C++ backend where one exists for the model, else to the reference."""

    def __init__(self, on_gpu: bool):
        self.cpu, self.host = _engine(
            on_gpu
        )  # self.cpu: the _cpu module or the CUDA adapter (same signatures)

    def classwise(self, model_t, keys, classes, top, n_bins, edges, keep):
        if self.cpu is not None and model_t[0] == "pl" and not top:
            slot = _slots(keys.shape[1], classes)
            if slot is not None:
                return self.cpu.rank_classwise_subsets(
                    np.ascontiguousarray(model_t[1]),
                    keys,
                    classes.shape[1],
                    slot,
                    classes.shape[0],
                    n_bins,
                    edges,
                    keep,
                )
        if self.host is not None and model_t[0] == "explicit" and _dense_product(model_t[1], classes, top):
            # dense incidence: a BLAS product per chunk of rows, then the binning kernel
            sat = _reference._satisfies(model_t[1], classes.astype(np.intp), top).astype(np.float64)
            cls = np.ascontiguousarray(classes, dtype=np.int32)
            tables = np.zeros((classes.shape[0], 3, n_bins))
            for sl in _reference._chunks(keys.shape[0], classes.shape[0]):
                pmat = np.ascontiguousarray(model_t[2][sl] @ sat)
                self.host.rank_classwise_given(
                    pmat, keys[sl], cls, bool(top), edges, None if keep is None else keep[sl], tables
                )
            return tables
        if self.host is not None and model_t[0] == "empirical":
            # the samples counted per chunk of rows in C++, then the binning kernel
            cls = np.ascontiguousarray(classes, dtype=np.int32)
            tables = np.zeros((classes.shape[0], 3, n_bins))
            samples = model_t[1]
            per_row = classes.shape[0] + samples.shape[1] * samples.shape[2]
            for sl in _reference._chunks(keys.shape[0], per_row):
                pmat = _model_probs(self.host, ("empirical", samples[sl]), cls, int(top))
                self.host.rank_classwise_given(
                    pmat, keys[sl], cls, bool(top), edges, None if keep is None else keep[sl], tables
                )
            return tables
        if self.host is not None and model_t[0] == "explicit" and classes.shape[1] <= 12:
            return _grouped(self.host, model_t, keys, classes, top, n_bins, edges, keep)
        if self.host is not None and model_t[0] == "explicit":
            indptr, idx = _incidence(model_t[1], classes, top)
            return self.host.rank_classwise_table(
                np.ascontiguousarray(model_t[2]),
                indptr,
                idx,
                keys,
                np.ascontiguousarray(classes, dtype=np.int32),
                bool(top),
                n_bins,
                edges,
                keep,
            )
        if self.cpu is not None and model_t[0] == "pl":
            return self.cpu.rank_classwise(
                np.ascontiguousarray(model_t[1]),
                keys,
                np.ascontiguousarray(classes, dtype=np.int32),
                bool(top),
                n_bins,
                edges,
                keep,
            )
        return _reference.classwise_hist(model_t, keys, classes, top, n_bins, edges, keep)

    def top_label(self, model_t, keys, level, k, n_bins):
        if self.cpu is not None and model_t[0] == "pl":
            code = ("sub", "top", "set").index(level)
            groups = _reference.subsets(keys.shape[1], k) if code == 0 else None
            return self.cpu.rank_top_label(np.ascontiguousarray(model_t[1]), keys, code, groups, k, n_bins)
        if self.host is not None and model_t[0] == "empirical":
            host = self.host

            def probs(part, cls, mode):
                return _model_probs(host, part, cls, mode)

            return _reference.top_label_hist(model_t, keys, level, k, n_bins, probs=probs)
        return _reference.top_label_hist(model_t, keys, level, k, n_bins)

    def canonical(self, probs, labels, h, p):
        if self.cpu is not None:
            return self.cpu.rank_canonical(
                np.ascontiguousarray(probs, dtype=np.float64),
                np.ascontiguousarray(labels, dtype=np.int64),
                h,
                p,
            )
        return _reference.canonical_kernel(probs, labels, h, p)


def _kernels(on_gpu: bool = False) -> _Kernels:
    return _Kernels(on_gpu)


# ------------------------------------------------------------------------------------------ public API
def _common(kind, n_bins, default_bins):
    kind = _validation.option("kind", kind, KINDS)
    bins = default_bins if n_bins is None else _validation.n_bins(n_bins)
    return kind, bins


def _run_level(
    data: _Data,
    k: int,
    top: bool,
    level: str,
    kind: str,
    n_bins: int | None,
    classes: str,
    weighting: str,
    discrepancy: str,
    bin_spacing: str,
    filter: str | None,
    estimator: str,
    h: float,
    p: float,
) -> Any:
    # every option is checked whatever the kind (a misspelt one is an error, not ignored)
    classes = _validation.option("classes", classes, CLASSES)
    weighting = _validation.option("weighting", weighting, WEIGHTINGS)
    discrepancy = _validation.option("discrepancy", discrepancy, DISCREPANCIES)
    bin_spacing = _validation.option("bin_spacing", bin_spacing, SPACINGS)
    if filter not in FILTERS:
        raise ValueError(f"filter must be one of None, 'mass95', 'top10'; got {filter!r}")
    estimator = _validation.option("estimator", estimator, ESTIMATORS)
    h = _validation.real("h", h, positive=True)
    p = _validation.real("p", p, positive=True)
    if filter is not None and kind != "classwise":
        raise ValueError(f"filter={filter!r} applies to kind='classwise' only, not kind={kind!r}")
    if kind == "classwise":
        if weighting == "top5_mass" and not top:
            raise ValueError(
                "weighting='top5_mass' is defined for top-k levels only (as in the reference code)"
            )
        bins = 10 if n_bins is None else _validation.n_bins(n_bins)
        return _classwise(
            data,
            k,
            top,
            n_bins=bins,
            classes=classes,
            weighting=weighting,
            discrepancy=discrepancy,
            bin_spacing=bin_spacing,
            filter=filter,
        )
    if kind == "top_label":
        return _top_label(data, k, level, 15 if n_bins is None else _validation.n_bins(n_bins))
    return _canonical(
        data,
        k,
        top,
        classes=classes,
        estimator=estimator,
        h=h,
        p=p,
        n_bins=10 if n_bins is None else _validation.n_bins(n_bins),
    )


def subranking_ece(
    model: Any,
    rankings: Any = None,
    k: int = 2,
    *,
    observed_ranks: Any = None,
    kind: str = "classwise",
    n_bins: int | None = None,
    classes: str = "auto",
    weighting: str = "uniform",
    discrepancy: str = "abs",
    bin_spacing: str = "linear",
    filter: str | None = None,
    estimator: str = "kernel",
    h: float = 1.0,
    p: float = 1.0,
) -> Any:
    """Calibration of the sub-rankings of size k (k = 2: pairwise preferences, the Bradley-Terry view).

    Parameters
    ----------
    model : PL, Explicit, Empirical or a score array (N, n) / (n,) (meaning PL)
    rankings : int array (N, m), optional
        Observed orderings (``-1``-padded); or give ``observed_ranks=`` (N, n) instead.
    k : int, 2 <= k <= n_items
    kind : {"classwise", "top_label", "canonical"}
    n_bins : int, optional
        10 for ``classwise`` and ``canonical`` binning, 15 for ``top_label``.
    classes : {"auto", "all", "observed"}
        ``classwise`` / ``canonical``: every ordered k-tuple, only those observed in some row, or all when
        n_items < 8 (the paper's rule).
    weighting : {"uniform", "prevalence", "pred_mass"}
    discrepancy : {"abs", "kl", "jeff", "rel_p", "rel_q", "log_ratio"}
    bin_spacing : {"linear", "log"}
    filter : {None, "mass95", "top10"}
        Keep only rows whose observed ordering is among the most frequent ones (reference-code semantics:
        event probabilities are summed over the retained orderings, not renormalised).
    estimator, h, p : canonical only: ``"kernel"`` (Dirichlet kernel, bandwidth h, p-norm) or ``"binning"``.

    Returns
    -------
    ClasswiseResult, LevelResult or CanonicalResult

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> scores = np.log([[4.0, 2.0, 1.0]] * 4)
    >>> obs = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [0, 1, 2]])
    >>> r = prefcal.ranking.subranking_ece(scores, obs, k=2)
    >>> r.n_classes, round(r.ece, 4)
    (6, 0.1222)
    """
    data = _prepare(model, rankings, observed_ranks)
    kind, _ = _common(kind, n_bins, 10)
    k = _validation.integer("k", k, 2, data.n)
    return _run_level(
        data,
        k,
        False,
        "sub",
        kind,
        n_bins,
        classes,
        weighting,
        discrepancy,
        bin_spacing,
        filter,
        estimator,
        h,
        p,
    )


def topk_ece(
    model: Any,
    rankings: Any = None,
    k: int = 1,
    *,
    observed_ranks: Any = None,
    kind: str = "classwise",
    ordered: bool = True,
    n_bins: int | None = None,
    classes: str = "auto",
    weighting: str = "uniform",
    discrepancy: str = "abs",
    bin_spacing: str = "linear",
    filter: str | None = None,
    estimator: str = "kernel",
    h: float = 1.0,
    p: float = 1.0,
) -> Any:
    """Calibration of the top-k prefix (k = 1: which item wins); ``ordered=False`` uses the top-k *set*
    (``kind="top_label"`` only). Options as in :func:`subranking_ece`, plus ``weighting="top5_mass"``.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> scores = np.log([[4.0, 2.0, 1.0]] * 4)
    >>> obs = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [0, 1, 2]])
    >>> r = prefcal.ranking.topk_ece(scores, obs, k=1, kind="top_label")
    >>> r.accuracy, round(r.mean_confidence, 4)
    (0.75, 0.5714)
    """
    data = _prepare(model, rankings, observed_ranks)
    kind, _ = _common(kind, n_bins, 10)
    if data.n < 2:
        raise ValueError("top-k levels need at least 2 items")
    k = _validation.integer("k", k, 1, data.n - 1)
    if not ordered:
        if kind != "top_label":
            raise ValueError("ordered=False (top-k sets) is available with kind='top_label' only")
        return _top_label(data, k, "set", 15 if n_bins is None else _validation.n_bins(n_bins))
    return _run_level(
        data,
        k,
        True,
        "top",
        kind,
        n_bins,
        classes,
        weighting,
        discrepancy,
        bin_spacing,
        filter,
        estimator,
        h,
        p,
    )


def full_ece(
    model: Any, rankings: Any = None, *, observed_ranks: Any = None, kind: str = "top_label", **options: Any
) -> Any:
    """Calibration of whole orderings (= :func:`topk_ece` with k = n_items - 1).

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> r = prefcal.ranking.full_ece(np.log([[4.0, 2.0, 1.0]]), np.array([[0, 1, 2]]))
    >>> r.accuracy, round(r.mean_confidence, 4)
    (1.0, 0.381)
    """
    model = _as_model(model)
    return topk_ece(
        model, rankings, max(model.n_items - 1, 1), observed_ranks=observed_ranks, kind=kind, **options
    )


def marginal_ece(
    model: Any,
    rankings: Any = None,
    *,
    observed_ranks: Any = None,
    event: str = "position",
    k: int = 1,
    n_bins: int = 15,
    strategy: str = "uniform",
    method: str = "auto",
) -> LevelResult:
    """Binned calibration of the binary marginal events of every (row, item): ``event="position"``: "item i
    is at position j" for every j; ``event="topk"``: "item i is in the top k". PL marginals come from
    :mod:`prefcal.marginals` (``method``); explicit and empirical models sum their orderings. An event is
    decided when the observation fixes it (an unlisted item of a partial ordering is known *not* to be at a
    listed position; its exact position below is unknown).

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> r = prefcal.ranking.marginal_ece(np.zeros(2), np.array([[0, 1], [1, 0]]))
    >>> r.n_events, r.ece
    (8, 0.0)
    """
    event = _validation.option("event", event, ("position", "topk"))
    bins = _validation.n_bins(n_bins)
    strategy = _validation.option("strategy", strategy, ("uniform",))
    data = _prepare(model, rankings, observed_ranks)
    if event == "topk":
        k = _validation.integer("k", k, 1, data.n)
    tables, skipped = _marginal_tables(data, 0 if event == "position" else k, bins, method)
    return _level_result(tables, skipped, kind="marginal")


def _marginal_tables(data: _Data, k: int, bins: int, method: str = "auto") -> tuple[np.ndarray, int]:
    """Table (3, bins) of the marginal events of prepared data and the undecided ones: ``k == 0``: "item i at
    position j"; ``k >= 1``: "item i in the top k"."""
    from . import marginals

    n = data.n
    m = data.model
    keys = np.ascontiguousarray(_host("keys", data.keys), dtype=np.float64)
    _, cpu = _engine(False)

    def hist(pos_p: np.ndarray, keys_block: np.ndarray) -> tuple[np.ndarray, int]:
        if cpu is not None:
            return cpu.rank_marginal_hist(np.ascontiguousarray(pos_p, dtype=np.float64), keys_block, k, bins)
        return _reference.marginal_hist(pos_p, keys_block, k, bins)

    per_row = isinstance(m, PL) and (m.scores.ndim == 2 or (m.mask is not None and m.mask.ndim == 2))
    if per_row:  # row blocks: memory O(block * n^2), not O(N * n^2)
        tables, skipped = np.zeros((3, bins)), 0
        step = max(1, MARGINAL_BLOCK_EVENTS // (n * n))
        for a in range(0, data.n_rows, step):
            rows = slice(a, min(a + step, data.n_rows))
            mask = m.mask if m.mask is None or m.mask.ndim == 1 else m.mask[rows]
            # one global model with per-row choice sets: the scores broadcast over the block's rows
            scores = m.scores[rows] if m.scores.ndim == 2 else np.broadcast_to(m.scores, (rows.stop - a, n))
            pos_p = np.asarray(marginals.positions(scores, mask=mask, method=method))
            t, s_ = hist(pos_p, keys[rows])
            tables += t
            skipped += int(s_)
        return tables, skipped
    if isinstance(m, PL):
        pos_p = np.asarray(marginals.positions(m.scores, mask=m.mask, method=method))
        if pos_p.ndim == 2:
            pos_p = pos_p[None]
    else:
        orders = m.orderings if isinstance(m, Explicit) else None
        pos_p = np.zeros((data.n_rows, n, n))
        if orders is not None:
            onehot = np.zeros((orders.shape[0], n, n))
            onehot[np.arange(orders.shape[0])[:, None], orders, np.arange(n)[None, :]] = 1.0
            pos_p = np.einsum("br,rij->bij", m.probs, onehot)
        else:
            smp = m.samples
            b = np.broadcast_to(np.arange(smp.shape[0])[:, None, None], smp.shape)
            j = np.broadcast_to(np.arange(n)[None, None, :], smp.shape)
            np.add.at(pos_p, (b, smp, j), 1.0 / smp.shape[1])
    tables, skipped = hist(pos_p, keys)
    return tables, int(skipped)


# ------------------------------------------------------------------------------------------- sweep/report
@dataclass(frozen=True)
class SweepTable:
    """The paper's table: one record per level with ``level`` ("sub"/"top"), ``k``, ``kind``, ``ece``,
    ``n_classes``, ``n_events``; ``results`` keeps the full result objects by level name."""

    records: list[dict[str, Any]]
    results: dict[str, Any]

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame.from_records(self.records)

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "results": {k: v.to_dict() for k, v in self.results.items()}}

    def to_markdown(self) -> str:
        return _markdown(self.records, ("level", "k", "kind", "ece", "n_classes", "n_events"))

    def __len__(self) -> int:
        return len(self.records)


def _markdown(records: list[dict[str, Any]], cols: tuple[str, ...]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in records]
    return "\n".join(lines)


def sweep(
    model: Any,
    rankings: Any = None,
    *,
    observed_ranks: Any = None,
    levels: tuple[str, ...] = ("sub", "top"),
    kind: str = "classwise",
    **options: Any,
) -> SweepTable:
    """Every level: sub-k for k = 2..n and top-k for k = 1..n-1 (the paper's sweep), as a table; levels of
    which the observations decide no event (top-3 of top-2 observations) are left out.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> t = prefcal.ranking.sweep(np.zeros(3), np.array([[0, 1, 2], [2, 1, 0]]))
    >>> [(r["level"], r["k"]) for r in t.records]
    [('sub', 2), ('sub', 3), ('top', 1), ('top', 2)]
    """
    model = _as_model(model)
    data = _prepare(model, rankings, observed_ranks)
    kind, _ = _common(kind, None, 10)
    for lv in levels:
        _validation.option("levels entry", lv, ("sub", "top"))
    records, results = [], {}
    n_bins = options.pop("n_bins", None)
    params = dict(
        classes="auto",
        weighting="uniform",
        discrepancy="abs",
        bin_spacing="linear",
        filter=None,
        estimator="kernel",
        h=1.0,
        p=1.0,
    )
    unknown = set(options) - set(params)
    if unknown:
        raise TypeError(
            f"sweep() got unexpected options {sorted(unknown)}; valid: {sorted(params) + ['n_bins']}"
        )
    params.update(options)
    for lv in levels:
        ks = range(2, data.n + 1) if lv == "sub" else range(1, data.n)
        for k in ks:
            w = params["weighting"]
            if kind == "classwise" and lv == "sub" and w == "top5_mass":
                w = "uniform"
            try:
                res = _run_level(
                    data,
                    k,
                    lv == "top",
                    lv,
                    kind,
                    n_bins,
                    params["classes"],
                    w,
                    params["discrepancy"],
                    params["bin_spacing"],
                    params["filter"],
                    params["estimator"],
                    params["h"],
                    params["p"],
                )
            except _Undetermined:
                continue  # the observations decide no event of this level (top-k of partial rankings)
            name = f"{lv}{k}"
            results[name] = res
            records.append(
                {
                    "level": lv,
                    "k": k,
                    "kind": kind,
                    "ece": res.ece,
                    "n_classes": getattr(res, "n_classes", 1),
                    "n_events": res.n_events,
                }
            )
    if not records:  # not one event of any level decided
        raise _Undetermined("every event of every level is")
    return SweepTable(records, results)


@dataclass(frozen=True)
class Report:
    """Results of several levels by name (``sub2``, ``top1``, ``full``, ``positions``, ``top{k}_set``,
    ...)."""

    levels: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {name: r.to_dict() for name, r in self.levels.items()}

    def records(self) -> list[dict[str, Any]]:
        out = []
        for name, r in self.levels.items():
            rec = {"level": name, "kind": r.kind, "ece": r.ece}
            rec["n_events"] = r.n_events
            rec["n_skipped"] = r.n_skipped
            rec["accuracy"] = getattr(r, "accuracy", None)
            out.append(rec)
        return out

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame.from_records(self.records()).set_index("level")

    def to_markdown(self) -> str:
        return _markdown(self.records(), ("level", "kind", "ece", "accuracy", "n_events", "n_skipped"))

    def __getitem__(self, name: str) -> Any:
        return self.levels[name]

    def __repr__(self) -> str:  # one line; the levels' tables are in .levels and to_dict()
        parts = ", ".join(f"{name}={r.ece:.6g} ({r.kind})" for name, r in self.levels.items())
        return f"Report({parts})"

    def __str__(self) -> str:
        return self.to_markdown()


#: Events per block of rows in marginal_ece (n^2 per row): bounds its memory to a few tens of MB.
MARGINAL_BLOCK_EVENTS = 1 << 21

DEFAULT_LEVELS = ("sub2", "sub3", "top1", "top2", "full", "positions")


def _parse_level(name: str, n: int) -> tuple[str, int]:
    import re

    if name == "full":
        return "full", n - 1
    if name == "positions":
        return "positions", 0
    m = re.fullmatch(r"(sub|top)(\d+)(_set)?", name)
    if not m or (m.group(3) and m.group(1) != "top"):
        raise ValueError(f"unknown level {name!r}; levels are sub<k>, top<k>, top<k>_set, full, positions")
    return m.group(1) + (m.group(3) or ""), int(m.group(2))


def report(
    model: Any,
    rankings: Any = None,
    *,
    observed_ranks: Any = None,
    levels: tuple[str, ...] | None = None,
    kinds: dict[str, str] | None = None,
    n_bins: int | None = None,
) -> Report:
    """A default set of levels in one call: sub-2 and sub-3 and top-1 and top-2 (classwise), the full
    ordering (top-label) and the position marginals; levels that do not exist for n_items, or of which the
    observations decide no event (the full ordering of top-2 observations), are left out. A level named in
    ``levels`` is always computed (``ValueError`` when nothing decides it).

    ``levels`` names: ``sub<k>``, ``top<k>``, ``top<k>_set``, ``full``, ``positions``; ``kinds`` maps a level
    name to its kind (default classwise for sub/top, top_label for full and sets).

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> rep = prefcal.ranking.report(np.zeros(3), np.array([[0, 1, 2], [2, 1, 0]]))
    >>> list(rep.levels)
    ['sub2', 'sub3', 'top1', 'top2', 'full', 'positions']
    """
    model = _as_model(model)
    data = _prepare(model, rankings, observed_ranks)
    n = data.n
    kinds = dict(kinds or {})
    chosen = levels
    if chosen is None:
        chosen = tuple(lv for lv in DEFAULT_LEVELS if _level_exists(lv, n))
    out: dict[str, Any] = {}
    for name in chosen:
        try:
            out[name] = _report_level(data, name, n, kinds, n_bins)
        except _Undetermined:
            if levels is not None:
                raise
    if not out:  # not one event of any level decided (every rank unknown or tied)
        raise _Undetermined("every event of every level is")
    return Report(out)


def _report_level(data: _Data, name: str, n: int, kinds: dict[str, str], n_bins: int | None) -> Any:
    """One level of :func:`report`."""
    base, k = _parse_level(name, n)
    if not _level_exists(name, n):
        raise ValueError(f"level {name!r} does not exist for n_items={n}")
    bins15 = 15 if n_bins is None else _validation.n_bins(n_bins)
    if base == "positions":
        tables, skipped = _marginal_tables(data, 0, bins15)
        return _level_result(tables, skipped, kind="marginal")
    kind = _validation.option(
        f"kinds[{name!r}]",
        kinds.get(name, "top_label" if base in ("full", "top_set") else "classwise"),
        KINDS,
    )
    if base == "top_set":
        return _top_label(data, k, "set", bins15)
    top = base in ("top", "full")
    level = "top" if top else "sub"
    return _run_level(
        data, k, top, level, kind, n_bins, "auto", "uniform", "abs", "linear", None, "kernel", 1.0, 1.0
    )


def _level_exists(name: str, n: int) -> bool:
    base, k = _parse_level(name, n)
    if base in ("positions",):
        return True
    if base == "full":
        return n >= 2
    if base == "sub":
        return 2 <= k <= n
    return 1 <= k <= n - 1
