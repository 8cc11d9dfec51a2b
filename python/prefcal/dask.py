"""The calibration metrics on Dask arrays and Dask DataFrames, on any ``dask.distributed`` cluster (SPEC §9).

:func:`ece`, :func:`reliability`, :func:`subranking_ece`, :func:`topk_ece` and :func:`report` take the
arguments of their in-memory namesakes (:mod:`prefcal.calibration`, :mod:`prefcal.ranking`) and return the
same objects with the same numbers (bin counts exactly, sums to float64 rounding), plus two keywords:

``data``
    Optional Dask DataFrame. When it is given, each data argument is a *column name*: one column of numbers
    for ``confidence``, ``correct`` and ``weights``; for ``model`` (the scores), ``rankings`` and
    ``observed_ranks`` either one list-valued column (each cell the row's list or array of values; the
    column needs a list dtype such as ``pd.ArrowDtype(pa.list_(pa.float64()))``, or object cells with
    ``dask.config.set({"dataframe.convert-string": False})``, since Dask otherwise turns object columns into
    strings) or a list of column names, one column per item (per position for ``rankings``). Rankings of
    different lengths are padded with ``-1``; missing values become ``-1`` in rankings and NaN elsewhere
    (unknown ranks; rejected in scores, confidences and outcomes).
    Without ``data``, the data arguments are Dask arrays chunked along rows: ``confidence``, ``correct``,
    ``weights`` (N,), scores (N, n), ``rankings`` (N, m) and ``observed_ranks`` (N, n). Chunks along
    columns are merged, and every array is rechunked to the row chunks of the first (the model's scores when
    they are a Dask array).
    In both forms the model may also be an in-memory model: a NumPy score vector (n,) shared by all rows, a
    NumPy (N, n) array, or a :class:`prefcal.ranking.PL`, :class:`~prefcal.ranking.Explicit` or
    :class:`~prefcal.ranking.Empirical` of NumPy arrays (a choice-set ``mask`` comes this way, in a PL). Its
    per-row parts are sliced to each block (with ``data``, after counting the partitions' rows) and travel
    inside the task graph: give large per-row scores as a Dask array or a column instead.
``client``
    A ``distributed.Client``. Default: the current client (``distributed.get_client()``) if there is one,
    else a ``LocalCluster`` started for the call and closed after it. That cluster runs one in-process worker
    with a thread per core (it starts in milliseconds and needs no ``if __name__ == "__main__"`` guard; the
    C++ kernels release the GIL, so the threads run in parallel).

Mechanism: one task per row block (array chunk or DataFrame partition) builds the block's state with
:mod:`prefcal.metrics` on the worker; the states are merged in a tree (up to 8 per merge task) and the
merged state is computed on the driver. Only what merges exactly is available: uniform bins
(``strategy="quantile"`` and ``bin_spacing="log"`` are refused), ``kind="classwise"`` or ``"top_label"``
(``"canonical"`` compares every pair of rows) and no row ``filter``; refusals are ``ValueError`` naming the
option and saying what to do instead.

Errors: shapes and dtypes that are known up front are checked on the driver before any task runs, with the
messages of the in-memory functions. A bad row found by a worker reaches the caller as the same
``ValueError`` with the row numbered globally (the block's first row added to the block's row numbers; a
message without a row number says which rows the block holds). When several blocks hold bad rows, the one
reported is in the block that failed first, not necessarily the first bad row of the data.

Examples
--------
>>> import dask.array as da, numpy as np, prefcal.dask
>>> conf = da.from_array(np.array([0.9, 0.9, 0.9, 0.9, 0.6]), chunks=2)
>>> hit = da.from_array(np.array([1, 1, 1, 0, 1]), chunks=3)
>>> round(prefcal.dask.ece(conf, hit, n_bins=10), 6)  # as prefcal.ece on the whole arrays
0.2
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

try:
    import dask
    import dask.array as da
    import distributed
except ImportError as exc:  # pragma: no cover - exercised only without dask
    raise ImportError(
        f"prefcal.dask needs dask[array] and distributed: pip install 'prefcal[dask]' ({exc})"
    ) from exc

from . import _io, _validation, calibration, metrics, ranking

__all__ = ["ece", "reliability", "subranking_ece", "topk_ece", "report"]

#: States merged by one task of the tree reduction.
SPLIT_EVERY = 8

# the argument an input comes from, where it is not the input's name
_ARGUMENT = {"scores": "model", "mask": "model", "probs": "model", "samples": "model"}

# roles of the row-aligned inputs: how a DataFrame column becomes an array
_ROLES = {
    "confidence": "vector",
    "correct": "vector",
    "weights": "vector",
    "scores": "matrix",
    "observed_ranks": "matrix",
    "rankings": "orderings",
    "mask": "rows",
    "probs": "rows",
    "samples": "rows",
}


# ------------------------------------------------------------------------------------------------ errors
class _BlockError(ValueError):
    """A ValueError raised while a worker processed block `index`; `located` says whether the message numbers
    rows of the block (to be shifted to global row numbers on the driver)."""

    def __init__(self, index: int, message: str, located: bool = True):
        super().__init__(index, message, located)
        self.index, self.message, self.located = index, message, located

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple:
        return (_BlockError, (self.index, self.message, self.located))


class _Unlocated(ValueError):
    """An option error found on a worker (it depends on n_items, known there only): no rows to number."""


# names whose first index is a row, "row R", "index R" and "at [R, ..." (scores of one row)
_ROW_NUMBER = re.compile(
    r"(\b(?:rankings|observed_ranks|scores|mask|probs|samples|confidence|correct|weights)\[|"
    r"\brow |\bindex |\bat \[)(\d+)"
)


def _shift_rows(message: str, start: int, stop: int) -> str:
    """`message` of a block of rows [start, stop) with its row numbers made global."""
    shifted, count = _ROW_NUMBER.subn(lambda m: f"{m.group(1)}{int(m.group(2)) + start}", message)
    return shifted if count else f"{message} (in the block of rows {start} to {stop - 1})"


# ------------------------------------------------------------------------------------------------ inputs
def _is_frame(x: Any) -> bool:
    if not type(x).__module__.startswith("dask"):
        return False
    import dask.dataframe as dd

    return isinstance(x, (dd.DataFrame, dd.Series))


def _is_columns(x: Any) -> bool:
    return isinstance(x, str) or (
        isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(c, str) for c in x)
    )


def _type_name(x: Any) -> str:
    return f"{type(x).__module__.split('.')[0]}.{type(x).__name__}"


def _data_argument(name: str, value: Any, data: Any, in_memory: str) -> Any:
    """Checks one data argument: a Dask array without `data`, a column name (or names) with it."""
    if _is_frame(value):
        raise TypeError(
            f"{name} is a Dask {type(value).__name__}: pass it as data= and name its columns, "
            f"e.g. {name}='col', data=df"
        )
    if data is None:
        if isinstance(value, da.Array):
            return value
        if _is_columns(value):
            raise TypeError(f"{name}={value!r} names columns, but data= (a Dask DataFrame) is not given")
        raise TypeError(
            f"{name} must be a Dask array (or a column name with data=), got {_type_name(value)}; "
            f"for in-memory arrays use {in_memory}"
        )
    if isinstance(value, da.Array):
        raise TypeError(f"{name} is a Dask array but data= is given: name a column of data instead")
    if not _is_columns(value):
        raise TypeError(
            f"{name} must name a column of data (a str) or columns (a list of str), got {_type_name(value)}"
        )
    if _ROLES[name] == "vector" and not isinstance(value, str):
        raise TypeError(f"{name} must name one column of data, got a list of {len(value)}")
    return value if isinstance(value, str) else tuple(value)


def _check_frame(data: Any, columns: dict[str, str | tuple[str, ...]]) -> None:
    """The columns exist and their dtypes can hold what they are named for (as far as the meta tells)."""
    import dask.dataframe as dd
    import pandas as pd

    if not isinstance(data, dd.DataFrame):
        raise TypeError(
            f"data must be a Dask DataFrame (e.g. dask.dataframe.from_pandas(df, npartitions=8)), "
            f"got {_type_name(data)}"
        )
    present = set(data.columns)
    for name, spec in columns.items():
        arg = _ARGUMENT.get(name, name)
        for col in (spec,) if isinstance(spec, str) else spec:
            if col not in present:
                raise ValueError(
                    f"{arg}={col!r}: data has no such column; its columns are {list(data.columns)}"
                )
        if not isinstance(spec, str) or _ROLES[name] == "vector":
            continue
        dtype = data.dtypes[spec]
        arrow = getattr(dtype, "pyarrow_dtype", None)
        if isinstance(dtype, pd.StringDtype) or (arrow is not None and "string" in str(arrow)):
            raise TypeError(
                f"data[{spec!r}] ({arg}) holds strings, not lists: Dask turns object columns into strings "
                "(dataframe.convert-string); give the column a list dtype, e.g. "
                "pd.ArrowDtype(pa.list_(pa.float64())), or build the frame under "
                "dask.config.set({'dataframe.convert-string': False})"
            )
        if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
            raise TypeError(
                f"data[{spec!r}] ({arg}) holds one {dtype} per row: name a list-valued column, or a list of "
                "columns (one per item)"
            )


def _scalar_column(series: Any, column: str, missing: float) -> np.ndarray:
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype != np.dtype(object):
        values = series.to_numpy()
        if missing == -1 and dtype.kind == "f":  # an integer column with gaps, as pandas stores one
            with np.errstate(invalid="ignore"):
                whole = np.isnan(values) | (np.isfinite(values) & (values == np.round(values)))
            if whole.all():
                return np.where(np.isnan(values), -1, values).astype(np.int64)
        return values
    numpy_dtype = getattr(dtype, "numpy_dtype", None)
    if numpy_dtype is None or numpy_dtype.kind not in "biuf":
        raise TypeError(f"data[{column!r}] has dtype {dtype}: a column of numbers is needed")
    if bool(series.isna().any()):
        target = np.int64 if missing == -1 and numpy_dtype.kind in "biu" else np.float64
        return series.to_numpy(dtype=target, na_value=missing)
    return series.to_numpy(dtype=numpy_dtype)


def _list_column(series: Any, column: str, pad: int | None) -> np.ndarray:
    """A list-valued column as an (N, width) array: equal lengths (pad None) or padded with `pad`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        arr = pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise TypeError(
            f"data[{column!r}] must hold a list (or array) of numbers in every row: {exc}"
        ) from None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise TypeError(f"data[{column!r}] is not a list-valued column (its values are {t})")
    if arr.null_count:
        r = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
        raise ValueError(f"data[{column!r}] is missing (null) in row {r}")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = arr.flatten()
    vt = flat.type
    if not (pa.types.is_integer(vt) or pa.types.is_floating(vt) or pa.types.is_boolean(vt)):
        raise TypeError(f"data[{column!r}] holds lists of {vt}: lists of numbers are needed")
    if flat.null_count and pa.types.is_integer(vt):
        flat = pc.fill_null(flat, pad) if pad is not None else flat.cast(pa.float64())
    values = flat.to_numpy(zero_copy_only=False)
    n_rows = len(arr)
    width = int(lengths.max()) if n_rows else 0
    if (lengths == width).all():
        return values.reshape(n_rows, width)
    if pad is None:
        r = int(np.argmax(lengths != lengths[0]))
        raise ValueError(
            f"data[{column!r}] has {lengths[r]} values in row {r} but {lengths[0]} in row 0: every row needs "
            "one value per item"
        )
    return _io.pad_lists(values, lengths, width, pad)


def _from_frame(part: Any, role: str, spec: str | tuple[str, ...]) -> np.ndarray:
    missing = -1 if role == "orderings" else np.nan
    if isinstance(spec, str):
        if role == "vector":
            return _scalar_column(part[spec], spec, missing)
        return _list_column(part[spec], spec, -1 if role == "orderings" else None)
    cols = [_scalar_column(part[c], c, missing) for c in spec]
    return np.column_stack(cols)


# ------------------------------------------------------------------------------------------------ blocks
class _Job:
    """What a block task does: turn its inputs into arrays, then `build(arrays)` the block's state.

    `inputs`: (name, source, spec) with source ``"array"`` (a NumPy block or slice passed to the task) or
    ``"column"`` (spec: the column name(s) in the task's DataFrame partition)."""

    def __init__(self, inputs: list[tuple[str, str, Any]], build: Any):
        self.inputs = inputs
        self.build = build


def _block(job: _Job, index: int, part: Any, *values: Any) -> Any:
    """The state of one block of rows (None for an empty block)."""
    try:
        arrays = {}
        for (name, source, spec), v in zip(job.inputs, values, strict=True):
            arrays[name] = _from_frame(part, _ROLES[name], spec) if source == "column" else np.asarray(v)
        if not arrays or next(iter(arrays.values())).shape[0] == 0:
            return None
        return job.build(arrays)
    except _Unlocated as exc:
        raise _BlockError(index, str(exc), located=False) from None
    except ValueError as exc:
        raise _BlockError(index, str(exc)) from None


def _merge(*states: Any) -> Any:
    present = [s for s in states if s is not None]
    if not present:
        return None
    out = present[0]
    for s in present[1:]:
        out = out.merge(s)
    return out


@contextlib.contextmanager
def _client(client: Any) -> Iterator[Any]:
    if client is not None:
        yield client
        return
    try:
        current = distributed.get_client()
    except ValueError:  # no current client
        current = None
    if current is not None and current.status == "running":
        yield current
        return
    # no dashboard, and the scheduler's HTTP endpoints on a free port (8787 may be another cluster's)
    with (
        distributed.LocalCluster(
            processes=False, dashboard_address=None, scheduler_kwargs={"dashboard_address": ":0"}
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as own,
    ):
        yield own


def _check_client(client: Any) -> None:
    if client is not None and not isinstance(client, distributed.Client):
        raise TypeError(f"client must be a distributed.Client (or None), got {_type_name(client)}")


def _rows(name: str, value: Any) -> int:
    n = value.shape[0]
    if isinstance(value, da.Array) and np.isnan(n):
        raise ValueError(f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first")
    return int(n)


def _evaluate(inputs: dict[str, Any], build: Any, data: Any, client: Any, empty: str) -> Any:
    """Maps `build` over the row blocks of `inputs` (Dask arrays, NumPy arrays sliced per block, or column
    specs of `data`), merges the states in a tree and returns the merged state. Everything that can be
    checked without the data is checked before a cluster is started."""
    if data is None:
        first = next(k for k, v in inputs.items() if isinstance(v, da.Array))
        n_rows = _rows(first, inputs[first])
        for name, v in inputs.items():
            _validation.same_length(first, n_rows, name, _rows(name, v))
        _validation.nonempty(first, n_rows)
        ref = inputs[first]
        chunks = (ref.rechunk({1: -1}) if ref.ndim == 2 else ref).chunks[0]
        bounds = np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)
        per_input = []
        for v in inputs.values():
            if isinstance(v, da.Array):
                v = v.rechunk((chunks,) + tuple((s,) for s in v.shape[1:]))
                per_input.append(list(v.to_delayed().ravel()))
            else:
                per_input.append([v[bounds[i] : bounds[i + 1]] for i in range(len(chunks))])
        blocks = [(None, *(p[i] for p in per_input)) for i in range(len(chunks))]
        job = _Job([(name, "array", None) for name in inputs], build)
    else:
        columns = {k: v for k, v in inputs.items() if _is_columns(v)}
        wanted = [c for v in columns.values() for c in ((v,) if isinstance(v, str) else v)]
        parts = data[list(dict.fromkeys(wanted))].to_delayed()
        job = _Job([(k, "column" if k in columns else "array", columns.get(k)) for k in inputs], build)
        memory = [k for k in inputs if k not in columns]
    with _client(client) as c:
        lengths: list[int] = []

        def part_lengths(upto: int) -> list[int]:
            if len(lengths) < upto:
                lengths[:] = c.compute([dask.delayed(len)(p) for p in parts[:upto]], sync=True)
            return lengths[:upto]

        if data is not None:
            if memory:  # in-memory per-row parts of the model are sliced by the partitions' lengths
                bounds = np.concatenate([[0], np.cumsum(part_lengths(len(parts)))]).astype(np.int64)
                for name in memory:
                    _validation.same_length(
                        "data", int(bounds[-1]), _ARGUMENT.get(name, name), len(inputs[name])
                    )
            blocks = [
                (p, *(None if k in columns else inputs[k][bounds[i] : bounds[i + 1]] for k in inputs))
                for i, p in enumerate(parts)
            ]
        block = dask.delayed(functools.partial(_block, job), pure=False)
        tasks = [block(i, *args) for i, args in enumerate(blocks)]
        merge = dask.delayed(_merge, pure=False)
        while len(tasks) > 1:
            tasks = [merge(*tasks[i : i + SPLIT_EVERY]) for i in range(0, len(tasks), SPLIT_EVERY)]
        try:
            state = c.compute(tasks[0], sync=True)
        except _BlockError as err:
            if not err.located:
                raise ValueError(err.message) from None
            if data is None:
                start, stop = int(bounds[err.index]), int(bounds[err.index + 1])
            else:  # partition lengths are counted only now, when they are needed
                sizes = part_lengths(err.index + 1)
                start, stop = sum(sizes[:-1]), sum(sizes)
            raise ValueError(_shift_rows(err.message, start, stop)) from None
    if state is None:
        raise ValueError(empty)
    return state


# ------------------------------------------------------------------------------------------- binary ECE
class _BinaryBuild:
    def __init__(self, n_bins: int):
        self.n_bins = n_bins

    def __call__(self, arrays: dict[str, np.ndarray]) -> metrics.Calibration:
        state = metrics.Calibration(self.n_bins)
        state.update(arrays["confidence"], arrays["correct"], arrays.get("weights"))
        return state


def reliability(
    confidence: Any,
    correct: Any,
    *,
    n_bins: int = 15,
    strategy: str = "uniform",
    weights: Any = None,
    data: Any = None,
    client: Any = None,
) -> calibration.Reliability:
    """Reliability table of binary confidences held by Dask: :func:`prefcal.calibration.reliability` by
    blocks of rows.

    Parameters
    ----------
    confidence, correct : Dask array (N,), or a column name of ``data``
        Predicted probabilities in [0, 1] and 0/1 outcomes; ``correct`` is rechunked to ``confidence``'s
        row chunks.
    n_bins : int, default 15
    strategy : {"uniform"}
        ``"quantile"`` is refused: its edges depend on all rows at once.
    weights : Dask array (N,) or column name, optional
    data : Dask DataFrame, optional
        Makes the data arguments column names (see the module notes).
    client : distributed.Client, optional
        Default: the current client, else a LocalCluster for the call.

    Returns
    -------
    Reliability
        Equal to the in-memory table of all rows (counts exactly, sums to float64 rounding).

    Examples
    --------
    >>> import dask.array as da, numpy as np, prefcal.dask
    >>> conf = da.from_array(np.array([0.2, 0.7, 0.75, 1.0]), chunks=3)
    >>> hit = da.from_array(np.array([False, True, False, True]), chunks=3)
    >>> prefcal.dask.reliability(conf, hit, n_bins=4).count.tolist()
    [1.0, 0.0, 1.0, 2.0]
    """
    bins = _validation.n_bins(n_bins)
    strategy = _validation.option("strategy", strategy, calibration.STRATEGIES)
    if strategy != "uniform":
        raise ValueError(
            "strategy='quantile' is not mergeable: its bin edges depend on all rows at once, so blocks of "
            "rows cannot be binned apart; use strategy='uniform', or compute the quantile table in memory "
            "with prefcal.calibration.reliability"
        )
    _check_client(client)
    where = "prefcal.calibration.reliability"
    inputs = {
        "confidence": _data_argument("confidence", confidence, data, where),
        "correct": _data_argument("correct", correct, data, where),
    }
    if weights is not None:
        inputs["weights"] = _data_argument("weights", weights, data, where)
    if data is None:
        checks = (
            ("confidence", _validation.confidence_dtype),
            ("correct", _validation.outcome_dtype),
            ("weights", _validation.weight_dtype),
        )
        for name, check in checks:
            if name in inputs:
                check(name, inputs[name].dtype)
                _validation.ndim(name, inputs[name].shape, 1)
    else:
        _check_frame(data, inputs)
    state = _evaluate(
        inputs, _BinaryBuild(bins), data, client, "confidence is empty: at least one row is needed"
    )
    return state.compute()


def ece(
    confidence: Any,
    correct: Any,
    *,
    n_bins: int = 15,
    strategy: str = "uniform",
    norm: str = "l1",
    debias: bool = False,
    weights: Any = None,
    data: Any = None,
    client: Any = None,
) -> float:
    """Expected calibration error of binary confidences held by Dask (``norm="l2"``: RMSCE, ``"max"``:
    MCE): :func:`prefcal.calibration.ece` by blocks of rows; arguments as in :func:`reliability`.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd, prefcal.dask
    >>> frame = pd.DataFrame({"p": [0.9, 0.9, 0.9, 0.9, 0.6], "y": [1, 1, 1, 0, 1]})
    >>> df = dd.from_pandas(frame, npartitions=2)
    >>> round(prefcal.dask.ece("p", "y", n_bins=10, data=df), 6)  # 0.8 * |0.75 - 0.9| + 0.2 * |1 - 0.6|
    0.2
    """
    _validation.norm(norm, debias)  # before the pass over the data
    table = reliability(
        confidence, correct, n_bins=n_bins, strategy=strategy, weights=weights, data=data, client=client
    )
    return table.ece(norm, debias)


# ------------------------------------------------------------------------------------------- rankings
class _Levels:
    """The levels a call asks for, resolved once n_items is known (on the driver, or on each worker when the
    scores come from a list-valued column): (result name, state level, state kind) triples."""

    def __init__(
        self,
        what: str,
        *,
        k: int = 0,
        kind: str = "classwise",
        ordered: bool = True,
        levels: tuple[str, ...] | None = None,
        kinds: dict[str, str] | None = None,
        n_bins: int | None = None,
        classes: str = "auto",
        weighting: str = "uniform",
        discrepancy: str = "abs",
    ):
        self.what, self.k, self.kind, self.ordered = what, k, kind, ordered
        self.levels, self.kinds = levels, dict(kinds or {})
        self.options = dict(n_bins=n_bins, classes=classes, weighting=weighting, discrepancy=discrepancy)
        metrics.RankingCalibration(("top1",), "classwise", **self.options)  # the options' errors, up front

    def resolve(self, n: int) -> list[tuple[str, str, str]]:
        if self.what == "sub":
            k = _validation.integer("k", self.k, 2, n)
            return [(f"sub{k}", f"sub{k}", self.kind)]
        if self.what == "top":
            if n < 2:
                raise ValueError("top-k levels need at least 2 items")
            k = _validation.integer("k", self.k, 1, n - 1)
            name = f"top{k}" if self.ordered else f"top{k}_set"
            return [(name, name, self.kind if self.ordered else "top_label")]
        chosen = self.levels
        if chosen is None:
            chosen = tuple(lv for lv in ranking.DEFAULT_LEVELS if ranking._level_exists(lv, n))
        plan = []
        for name in chosen:
            base, _ = ranking._parse_level(name, n)
            if not ranking._level_exists(name, n):
                raise ValueError(f"level {name!r} does not exist for n_items={n}")
            if base in ("positions", "top_set"):
                if base == "top_set":  # validated as by ranking.report, and like there always top-label
                    _validation.option(f"kinds[{name!r}]", self.kinds.get(name, "top_label"), ranking.KINDS)
                plan.append((name, name, "top_label"))
                continue
            default = "top_label" if base == "full" else "classwise"
            kind = _validation.option(f"kinds[{name!r}]", self.kinds.get(name, default), ranking.KINDS)
            if kind == "canonical":
                raise ValueError(_CANONICAL.format(f"kinds[{name!r}]='canonical'"))
            if base == "full" and kind == "classwise":
                plan.append((name, f"top{n - 1}", kind))
            else:
                plan.append((name, name, kind))
        return plan

    def state(self, n: int) -> _RankingState:
        plan = self.resolve(n)
        groups = {}
        for kind in dict.fromkeys(kind for _, _, kind in plan):
            names = tuple(dict.fromkeys(level for _, level, g in plan if g == kind))
            groups[kind] = metrics.RankingCalibration(names, kind, n_items=n, **self.options)
        # report's default levels leave out those the observations decide nothing of, as in memory
        return _RankingState(n, plan, groups, omit=self.what == "report" and self.levels is None)


class _RankingState:
    """One RankingCalibration per kind, and which of its levels each result name reads."""

    def __init__(
        self,
        n: int,
        plan: list[tuple[str, str, str]],
        groups: dict[str, metrics.RankingCalibration],
        omit: bool = False,
    ):
        self.n, self.plan, self.groups, self.omit = n, plan, groups, omit

    def merge(self, other: _RankingState) -> _RankingState:
        if other.n != self.n:
            raise ValueError(
                f"the rows have different numbers of items: {self.n} in some blocks, {other.n} in others; "
                "every row needs one score per item"
            )
        groups = {k: g.merge(other.groups[k]) for k, g in self.groups.items()}
        return _RankingState(self.n, self.plan, groups, self.omit)

    def compute(self) -> dict[str, Any]:
        how = "omit" if self.omit else "raise"
        done = {k: g.compute(undetermined=how) for k, g in self.groups.items()}
        out = {name: done[kind][level] for name, level, kind in self.plan if level in done[kind]}
        if not out:
            raise ranking._Undetermined("every event of every level is")
        return out


class _RankingBuild:
    """Builds a block's model (global parts from the driver, per-row parts from the block) and its state."""

    def __init__(self, model: tuple, levels: _Levels):
        self.model, self.levels = model, levels

    def __call__(self, arrays: dict[str, np.ndarray]) -> _RankingState:
        kind = self.model[0]
        if kind == "pl":
            m = ranking.PL(arrays.get("scores", self.model[1]), arrays.get("mask", self.model[2]))
        elif kind == "explicit":
            m = ranking.Explicit(self.model[1], arrays["probs"])
        else:
            m = ranking.Empirical(arrays["samples"])
        try:
            state = self.levels.state(m.n_items)
        except ValueError as exc:
            raise _Unlocated(str(exc)) from None
        for group in state.groups.values():
            group.update(m, arrays.get("rankings"), arrays.get("observed_ranks"))
        return state


_CANONICAL = (
    "{} is not available with prefcal.dask: the canonical (Dirichlet kernel) estimate compares every pair of "
    "rows, so it has no mergeable state; use kind='classwise' or 'top_label', or compute it in memory with "
    "prefcal.ranking"
)


def _model_inputs(model: Any, data: Any) -> tuple[tuple, dict[str, Any], int | None, int | None]:
    """(template of the model for the blocks, its row-aligned inputs, n_items if known, rows if known)."""
    if _is_frame(model):
        raise TypeError(
            f"model is a Dask {type(model).__name__}: pass it as data= and name the score column(s), "
            "e.g. model='scores', data=df"
        )
    if isinstance(model, da.Array):
        if data is not None:
            raise TypeError(
                "model is a Dask array but data= is given: name the score column(s) of data instead"
            )
        if model.dtype == np.bool_ or model.dtype.kind not in "iuf":
            raise TypeError(f"scores must be a float array, got dtype {model.dtype}")
        if model.ndim != 2:
            raise ValueError(
                f"scores as a Dask array must be 2-dimensional (N, n_items), got shape {model.shape}; give a "
                "model shared by all rows as a NumPy array (n_items,)"
            )
        if model.shape[1] == 0:
            raise ValueError("scores has no items: at least one item is needed")
        return ("pl", None, None), {"scores": model}, int(model.shape[1]), _rows("scores", model)
    if _is_columns(model):
        if data is None:
            raise TypeError(f"model={model!r} names columns, but data= (a Dask DataFrame) is not given")
        spec = model if isinstance(model, str) else tuple(model)
        return ("pl", None, None), {"scores": spec}, None if isinstance(spec, str) else len(spec), None
    m = ranking._as_model(model)  # an in-memory model (validated here, once)
    rowwise: dict[str, Any] = {}
    if isinstance(m, ranking.PL):
        template = ("pl", None if m.scores.ndim == 2 else m.scores, None)
        if m.scores.ndim == 2:
            rowwise["scores"] = m.scores
        if m.mask is not None and m.mask.ndim == 2:
            rowwise["mask"] = m.mask
        elif m.mask is not None:
            template = (template[0], template[1], m.mask)
    elif isinstance(m, ranking.Explicit):
        template, rowwise = ("explicit", m.orderings), {"probs": m.probs}
    else:
        template, rowwise = ("empirical",), {"samples": m.samples}
    return template, rowwise, m.n_items, m.n_rows


def _ranking_call(
    model: Any,
    rankings: Any,
    observed_ranks: Any,
    levels: _Levels,
    data: Any,
    client: Any,
    where: str,
) -> dict[str, Any]:
    _check_client(client)
    _validation.one_observation(rankings, observed_ranks)
    obs_name = "rankings" if rankings is not None else "observed_ranks"
    obs = _data_argument(obs_name, rankings if rankings is not None else observed_ranks, data, where)
    template, inputs, n, model_rows = _model_inputs(model, data)
    if data is None:
        if obs.ndim != 2:
            raise ValueError(f"{obs_name} must be 2-dimensional (N, m), got shape {obs.shape}")
        if obs_name == "rankings":
            if obs.dtype == np.bool_ or obs.dtype.kind not in "iu":
                raise TypeError(f"rankings must be an integer array, got dtype {obs.dtype}")
            if n is not None:
                _validation.rankings_shape(obs.shape, n)
        else:
            if obs.dtype == np.bool_ or obs.dtype.kind not in "iuf":
                raise TypeError(f"observed_ranks must be a float array, got dtype {obs.dtype}")
            if n is not None and obs.shape[1] != n:
                raise ValueError(
                    f"observed_ranks must have shape (N, {n}) (one rank per item), got {obs.shape}"
                )
        n_rows = _rows(obs_name, obs)
        if model_rows is not None and model_rows != n_rows:
            raise ValueError(f"the model has {model_rows} rows but the observations have {n_rows}")
        _validation.nonempty(obs_name, n_rows)
    elif not isinstance(obs, str) and n is not None:
        if obs_name == "rankings" and len(obs) > n:
            raise ValueError(f"rankings have {len(obs)} positions but there are only n_items={n} items")
        if obs_name == "observed_ranks" and len(obs) != n:
            raise ValueError(f"observed_ranks names {len(obs)} columns but there are n_items={n} items")
    if n is not None:
        levels.state(n)  # option errors now, before any task
    inputs[obs_name] = obs
    if data is not None:
        _check_frame(data, {k: v for k, v in inputs.items() if _is_columns(v)})
    state = _evaluate(
        inputs,
        _RankingBuild(template, levels),
        data,
        client,
        f"{obs_name} is empty: at least one row is needed",
    )
    return state.compute()


def _mergeable(kind: str, bin_spacing: str, filter: Any, weighting: str, top: bool) -> str:
    kind = _validation.option("kind", kind, ranking.KINDS)
    if kind == "canonical":
        raise ValueError(_CANONICAL.format("kind='canonical'"))
    _validation.option("bin_spacing", bin_spacing, ranking.SPACINGS)
    if bin_spacing != "linear":
        raise ValueError(
            f"bin_spacing={bin_spacing!r} is not available with prefcal.dask: the mergeable state "
            "(prefcal.metrics.RankingCalibration) bins linearly; use bin_spacing='linear', or compute the "
            "log-spaced bins in memory with prefcal.ranking"
        )
    if filter is not None:
        if filter not in ranking.FILTERS:
            raise ValueError(f"filter must be one of None, 'mass95', 'top10'; got {filter!r}")
        raise ValueError(
            f"filter={filter!r} is not available with prefcal.dask: it keeps rows by how often their "
            "ordering occurs among all rows, so blocks cannot be scored apart; use filter=None, or compute "
            "it in memory with prefcal.ranking"
        )
    if kind == "classwise" and weighting == "top5_mass" and not top:
        raise ValueError("weighting='top5_mass' is defined for top-k levels only (as in the reference code)")
    return kind


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
    data: Any = None,
    client: Any = None,
) -> Any:
    """Calibration of the sub-rankings of size k held by Dask: :func:`prefcal.ranking.subranking_ece` by
    blocks of rows.

    Parameters
    ----------
    model : Dask array (N, n), column name(s) of ``data``, or an in-memory model
        Scores of a Plackett-Luce model per row; or a NumPy (n,) / (N, n) array, or a ranking.PL, Explicit or
        Empirical model of NumPy arrays (per-row parts are sliced to each block).
    rankings : Dask array (N, m) of int, or column name(s) of ``data``
        Observed orderings, ``-1``-padded (a list-valued column may have lists of any length up to n).
        Or give ``observed_ranks=`` (N, n) instead.
    k : int, 2 <= k <= n_items
    kind : {"classwise", "top_label"}
        ``"canonical"`` has no mergeable state and is refused.
    n_bins, classes, weighting, discrepancy
        As in the in-memory function (``classes="observed"`` keeps every class's table and drops the
        unobserved ones when the merged state is computed, so it is exact for any split).
    bin_spacing : {"linear"}
        ``"log"`` is refused (the mergeable state bins linearly).
    filter : None
        Row filters are refused (they rank orderings by their frequency among all rows).
    estimator, h, p
        Accepted for the in-memory signature; they only matter for ``kind="canonical"``.
    data : Dask DataFrame, optional
        Makes ``model``, ``rankings`` and ``observed_ranks`` column names (see the module notes).
    client : distributed.Client, optional
        Default: the current client, else a LocalCluster for the call.

    Returns
    -------
    ClasswiseResult or LevelResult
        Equal to the in-memory result on all rows.

    Examples
    --------
    >>> import dask.array as da, numpy as np, prefcal.dask
    >>> scores = da.from_array(np.log([[4.0, 2.0, 1.0]] * 4), chunks=(3, 3))
    >>> obs = da.from_array(np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [0, 1, 2]]), chunks=(2, 3))
    >>> r = prefcal.dask.subranking_ece(scores, obs, k=2)
    >>> r.n_classes, round(r.ece, 4)  # as prefcal.ranking.subranking_ece on the whole arrays
    (6, 0.1222)
    """
    del estimator, h, p  # canonical only
    kind = _mergeable(kind, bin_spacing, filter, weighting, top=False)
    levels = _Levels(
        "sub", k=k, kind=kind, n_bins=n_bins, classes=classes, weighting=weighting, discrepancy=discrepancy
    )
    out = _ranking_call(
        model, rankings, observed_ranks, levels, data, client, "prefcal.ranking.subranking_ece"
    )
    return next(iter(out.values()))


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
    data: Any = None,
    client: Any = None,
) -> Any:
    """Calibration of the top-k prefix held by Dask (k = 1: which item wins; ``ordered=False``: the top-k
    *set*, ``kind="top_label"`` only): :func:`prefcal.ranking.topk_ece` by blocks of rows. Arguments as in
    :func:`subranking_ece`, plus ``weighting="top5_mass"``.

    Examples
    --------
    >>> import dask.dataframe as dd, numpy as np, pandas as pd, prefcal.dask
    >>> frame = pd.DataFrame({"a": [4.0] * 4, "b": [2.0] * 4, "c": [1.0] * 4, "first": [0, 0, 1, 0]})
    >>> df = dd.from_pandas(np.log(frame[["a", "b", "c"]]).assign(first=frame["first"]), npartitions=2)
    >>> r = prefcal.dask.topk_ece(["a", "b", "c"], ["first"], k=1, kind="top_label", data=df)
    >>> r.accuracy, round(r.mean_confidence, 4)
    (0.75, 0.5714)
    """
    del estimator, h, p  # canonical only
    kind = _mergeable(kind, bin_spacing, filter, weighting, top=True)
    if not ordered and kind != "top_label":
        raise ValueError("ordered=False (top-k sets) is available with kind='top_label' only")
    levels = _Levels(
        "top",
        k=k,
        kind=kind,
        ordered=ordered,
        n_bins=n_bins,
        classes=classes,
        weighting=weighting,
        discrepancy=discrepancy,
    )
    out = _ranking_call(model, rankings, observed_ranks, levels, data, client, "prefcal.ranking.topk_ece")
    return next(iter(out.values()))


def report(
    model: Any,
    rankings: Any = None,
    *,
    observed_ranks: Any = None,
    levels: Sequence[str] | None = None,
    kinds: dict[str, str] | None = None,
    n_bins: int | None = None,
    data: Any = None,
    client: Any = None,
) -> ranking.Report:
    """Several levels in one pass over data held by Dask: :func:`prefcal.ranking.report` by blocks of rows.

    Defaults as in memory: sub2, sub3, top1 and top2 (classwise), full (top-label) and positions, for the
    levels that exist for n_items. ``kinds`` may map a level to ``"classwise"`` or ``"top_label"``
    (``"canonical"`` is refused); other arguments as in :func:`subranking_ece`.

    Examples
    --------
    >>> import dask.array as da, numpy as np, prefcal.dask
    >>> obs = da.from_array(np.array([[0, 1, 2], [2, 1, 0]]), chunks=(1, 3))
    >>> rep = prefcal.dask.report(np.zeros(3), obs)
    >>> list(rep.levels)
    ['sub2', 'sub3', 'top1', 'top2', 'full', 'positions']
    """
    if kinds is not None and not isinstance(kinds, dict):
        raise TypeError(f"kinds must be a dict of level name -> kind, got {_type_name(kinds)}")
    chosen = None
    if levels is not None:
        if isinstance(levels, str):
            raise TypeError(f"levels must be a sequence of level names, got the str {levels!r}")
        chosen = tuple(levels)
        if not chosen:
            raise ValueError("levels is empty: name at least one level, e.g. ('sub2', 'top1')")
    spec = _Levels("report", levels=chosen, kinds=kinds, n_bins=n_bins)
    out = _ranking_call(model, rankings, observed_ranks, spec, data, client, "prefcal.ranking.report")
    return ranking.Report(out)
