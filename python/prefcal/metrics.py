"""Mergeable calibration states for streaming and distributed evaluation (SPEC §9).

Each state takes data in pieces (``update``), combines with states built elsewhere (``merge`` or ``+``, also
after pickling) and gives the result of one call on all of the data (``compute``): bin counts exactly, sums
to float64 rounding, whatever the split.

Classwise (rank-wise) levels keep one table per class of the level. With ``classes="observed"`` (or
``"auto"`` and n >= 8) a one-shot call scores every class observed *anywhere* on *every* row, so the state
keeps the tables of all classes and keeps only the observed ones (those with an observed event) at
``compute``: exact for any split, at the memory of all the level's classes (refused beyond 2^20 classes).
Canonical (kernel) levels need every pair of rows at once and are not mergeable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _reference, _validation, calibration, ranking

__all__ = ["Calibration", "RankingCalibration"]

MAX_STATE_CLASSES = 1 << 20


@dataclass
class Calibration:
    """A running reliability table of binary (confidence, correct) events with uniform bins.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> m = prefcal.metrics.Calibration(n_bins=2)
    >>> m.update(np.array([0.1, 0.4]), np.array([0, 1])); m.update(np.array([0.8, 0.9]), np.array([1, 1]))
    >>> round(m.compute().ece(), 6)
    0.2
    """

    n_bins: int = 15
    _table: calibration.Reliability | None = field(default=None, repr=False, init=False)

    def __post_init__(self) -> None:
        self.n_bins = _validation.n_bins(self.n_bins)

    def update(self, confidence: Any, correct: Any, weights: Any = None) -> None:
        if all(_rows_of(x) == 0 for x in (confidence, correct, weights) if x is not None):
            return  # an empty piece of a split: nothing to add (else reliability says what does not match)
        part = calibration.reliability(confidence, correct, n_bins=self.n_bins, weights=weights)
        self._table = part if self._table is None else self._table + part

    def merge(self, other: Calibration) -> Calibration:
        if not isinstance(other, Calibration):
            raise TypeError(f"can only merge a Calibration state, got {type(other).__name__}")
        if other.n_bins != self.n_bins:
            raise ValueError(f"cannot merge Calibration states of {self.n_bins} and {other.n_bins} bins")
        out = Calibration(self.n_bins)
        tables = [t for t in (self._table, other._table) if t is not None]
        out._table = None if not tables else (tables[0] if len(tables) == 1 else tables[0] + tables[1])
        return out

    __add__ = merge

    def compute(self) -> calibration.Reliability:
        if self._table is None:
            raise ValueError("Calibration.compute() before any update(): nothing to compute")
        return self._table


def _rows_of(x: Any) -> int | None:
    """The number of rows of an input (None when it has no length)."""
    shape = getattr(x, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else None
    try:
        return len(x)
    except TypeError:
        return None


@dataclass
class _Level:
    base: str  # "sub", "top", "top_set", "full", "positions"
    k: int
    kind: str
    n_bins: int
    tables: np.ndarray | None = None  # classwise: (C, 3, B); others: (3, B)
    classes: np.ndarray | None = None
    rows: int = 0
    skipped: int = 0


class RankingCalibration:
    """Running state of calibration levels of rankings (``levels`` named as in :func:`prefcal.ranking.report`:
    ``sub<k>``, ``top<k>``, ``top<k>_set``, ``full``, ``positions``).

    ``kind`` applies to the sub/top levels (``"classwise"`` or ``"top_label"``); full orderings and top-k sets
    are top-label, positions are marginal events. ``weighting``, ``discrepancy`` and ``classes`` are those of
    the classwise kind; ``n_items`` may be given up front, else the first update fixes it.

    Examples
    --------
    >>> import numpy as np, prefcal
    >>> s = np.random.default_rng(0).normal(size=(200, 4))
    >>> obs = prefcal.pl.sample(s, seed=1)[:, 0]
    >>> a, b = prefcal.metrics.RankingCalibration(), prefcal.metrics.RankingCalibration()
    >>> a.update(s[:80], obs[:80]); b.update(s[80:], obs[80:])
    >>> whole = prefcal.ranking.subranking_ece(s, obs, 2).ece
    >>> abs((a + b).compute()["sub2"].ece - whole) < 1e-12
    True
    """

    def __init__(
        self,
        levels: tuple[str, ...] = ("sub2", "top1"),
        kind: str = "classwise",
        n_bins: int | None = None,
        n_items: int | None = None,
        *,
        classes: str = "auto",
        weighting: str = "uniform",
        discrepancy: str = "abs",
    ):
        self.kind = _validation.option("kind", kind, ("classwise", "top_label", "canonical"))
        if self.kind == "canonical":
            raise ValueError(
                "kind='canonical' (the Dirichlet kernel estimator) compares every pair of rows and has no "
                "mergeable state; compute it in one call with prefcal.ranking"
            )
        self.classes = _validation.option("classes", classes, ranking.CLASSES)
        self.weighting = _validation.option("weighting", weighting, ranking.WEIGHTINGS)
        self.discrepancy = _validation.option("discrepancy", discrepancy, ranking.DISCREPANCIES)
        self.n_bins = None if n_bins is None else _validation.n_bins(n_bins)
        self.level_names = (levels,) if isinstance(levels, str) else tuple(levels)
        if not self.level_names:
            raise ValueError("levels is empty: name at least one level, e.g. ('sub2', 'top1')")
        for name in self.level_names:  # the names now; whether they exist for n_items once it is known
            ranking._parse_level(name, 2)
        self.n_items = None if n_items is None else _validation.integer("n_items", n_items, 2)
        self._levels: dict[str, _Level] | None = None
        if self.n_items is not None:
            self._setup(self.n_items)

    def __repr__(self) -> str:
        rows = "no rows yet" if self._levels is None else f"n_items={self.n_items}"
        return f"RankingCalibration(levels={self.level_names!r}, kind={self.kind!r}, {rows})"

    def _setup(self, n: int) -> None:
        levels = {}
        for name in self.level_names:
            base, k = ranking._parse_level(name, n)
            if not ranking._level_exists(name, n):
                raise ValueError(f"level {name!r} does not exist for n_items={n}")
            kind = (
                "marginal"
                if base == "positions"
                else ("top_label" if base in ("full", "top_set") else self.kind)
            )
            default = 10 if kind == "classwise" else 15
            lv = _Level(base, k, kind, self.n_bins or default)
            if kind == "classwise":
                top = base == "top"
                count = math.perm(n, k) if top else math.comb(n, k) * math.factorial(k)
                if count > MAX_STATE_CLASSES:
                    raise ValueError(
                        f"level {name!r} has {count} classes for n_items={n}: too many to keep a mergeable "
                        "table per class; compute it in one call with prefcal.ranking"
                    )
                lv.classes = _reference.all_classes(n, k, top)
                if self.weighting == "top5_mass" and not top:
                    raise ValueError("weighting='top5_mass' is defined for top-k levels only")
            levels[name] = lv
        self.n_items = n
        self._levels = levels

    def update(self, model_or_scores: Any, rankings: Any = None, observed_ranks: Any = None) -> None:
        _validation.one_observation(rankings, observed_ranks)
        observed = "rankings" if rankings is not None else "observed_ranks"
        if _rows_of(rankings if rankings is not None else observed_ranks) == 0:
            model = ranking._as_model(model_or_scores)  # a per-row model must have no rows either
            if model.n_rows:
                raise ValueError(f"the model has {model.n_rows} rows but {observed} has none")
            if self.n_items is not None and model.n_items != self.n_items:
                raise ValueError(
                    f"this state is for n_items={self.n_items}, the update has {model.n_items} items"
                )
            return  # an empty piece of a split: nothing to add
        data = ranking._prepare(model_or_scores, rankings, observed_ranks)
        if self._levels is None:
            self._setup(data.n)
        elif data.n != self.n_items:
            raise ValueError(f"this state is for n_items={self.n_items}, the update has {data.n} items")
        assert self._levels is not None
        kern = ranking._kernels(data.on_gpu)
        for lv in self._levels.values():
            if lv.kind == "classwise":
                t = kern.classwise(
                    data.tuple(), data.keys, lv.classes, lv.base == "top", lv.n_bins, None, None
                )
                skipped = 0
            elif lv.kind == "top_label":
                level = {"sub": "sub", "top": "top", "full": "top", "top_set": "set"}[lv.base]
                t, skipped = kern.top_label(data.tuple(), data.keys, level, lv.k, lv.n_bins)
            else:
                t, skipped = ranking._marginal_tables(data, 0, lv.n_bins)
            lv.tables = np.array(t, dtype=np.float64) if lv.tables is None else lv.tables + t
            lv.rows += data.n_rows
            lv.skipped += int(skipped)

    def merge(self, other: RankingCalibration) -> RankingCalibration:
        if not isinstance(other, RankingCalibration):
            raise TypeError(f"can only merge a RankingCalibration state, got {type(other).__name__}")
        if (
            self.kind,
            self.level_names,
            self.n_bins,
            self.classes,
            self.weighting,
            self.discrepancy,
        ) != (other.kind, other.level_names, other.n_bins, other.classes, other.weighting, other.discrepancy):
            raise ValueError("can only merge RankingCalibration states with the same levels and options")
        if self.n_items is not None and other.n_items is not None and self.n_items != other.n_items:
            raise ValueError(f"cannot merge states for n_items={self.n_items} and n_items={other.n_items}")
        out = RankingCalibration(
            self.level_names,
            self.kind,
            self.n_bins,
            self.n_items or other.n_items,
            classes=self.classes,
            weighting=self.weighting,
            discrepancy=self.discrepancy,
        )
        if out._levels is None:
            return out
        for name, lv in out._levels.items():
            for src in (self, other):
                if src._levels is None or src._levels[name].tables is None:
                    continue
                s = src._levels[name]
                lv.tables = s.tables.copy() if lv.tables is None else lv.tables + s.tables
                lv.rows += s.rows
                lv.skipped += s.skipped
        return out

    __add__ = merge

    def compute(self, *, undetermined: str = "raise") -> dict[str, Any]:
        """The result of each level. A level none of whose events the observations decide (e.g. ``full``
        with top-2 observations) raises ``ValueError``, or with ``undetermined="omit"`` is left out."""
        undetermined = _validation.option("undetermined", undetermined, ("raise", "omit"))
        if self._levels is None or any(lv.tables is None for lv in self._levels.values()):
            raise ValueError("RankingCalibration.compute() before any update(): nothing to compute")
        out: dict[str, Any] = {}
        for name, lv in self._levels.items():
            if not lv.tables[..., 0, :].any():  # no event of the level decided
                if undetermined == "omit":
                    continue
                raise ranking._Undetermined()  # as the one-call functions (the kinds alike)
            if lv.kind != "classwise":
                out[name] = ranking._level_result(lv.tables, lv.skipped, lv.kind)
                continue
            tables, classes = lv.tables, lv.classes
            use_all = self.classes == "all" or (
                self.classes == "auto" and self.n_items < ranking.AUTO_ALL_BELOW
            )
            if not use_all:  # the observed classes: those with an observed event in some row
                keep = np.flatnonzero(tables[:, 2].sum(axis=1) > 0)
                keep = keep[np.lexsort(classes[keep].T[::-1])]  # lexicographic, as a one-shot call lists them
                tables, classes = tables[keep], classes[keep]
            out[name] = ranking.classwise_result(
                tables,
                classes,
                lv.rows,
                self.weighting,
                self.discrepancy,
                np.linspace(0.0, 1.0, lv.n_bins + 1),
            )
        return out
