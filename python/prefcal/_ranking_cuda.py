"""The CUDA twins of the ranking kernels of ``prefcal._cpu`` (``rank_*``), with the CPU bindings'
Python signatures and return types, so that ``prefcal.ranking`` can route a call to either.

Inputs may be NumPy arrays (or anything ``np.asarray`` takes, torch CPU tensors included), CuPy arrays or
torch CUDA tensors, mixed freely as long as the device arrays share one device:

* host inputs are staged on the device of the call (``prefcal._cuda.DeviceArray``, freed after the call): the
  device of the device inputs if there are any, else the current device of CuPy or torch if loaded, else 0;
* device inputs are used in place (converted to the kernel dtype and made C-contiguous first where needed);
* the kernels run on the current stream of the device inputs' library (CuPy's or torch's), else the default
  stream.

Results are NumPy arrays, as from the CPU bindings (tables, seen flags, keys). ``rank_keys(...,
device_keys=True)`` leaves the keys on the device instead: a CuPy array or torch tensor when the rankings are
one, else a :class:`DeviceKeys`; every function here accepts either as ``keys``.

Counts agree with the CPU bit for bit (unless an event's probability lies within an ulp or two of a bin edge:
the device's exp is not the host's), sums of probabilities to float64 rounding; see cuda/ranking.hpp.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _arrays, _backend, _validation

#: "No invalid row" from rank_keys, as prefcal._cpu.NO_ERROR.
NO_ERROR = _validation.NO_ERROR

__all__ = [
    "NO_ERROR",
    "DeviceKeys",
    "rank_keys",
    "rank_seen_subsets",
    "rank_classwise",
    "rank_classwise_subsets",
    "rank_top_label",
    "rank_canonical",
    "time_rank_classwise_subsets",
    "describe_rank_classwise",
]

_F64 = np.dtype(np.float64)
_I64 = np.dtype(np.int64)
_I32 = np.dtype(np.int32)
_BOOL = np.dtype(np.bool_)


def _module() -> Any:
    mod = _backend.cuda_module()
    if mod is None:
        raise RuntimeError(f"prefcal._cuda is not usable: {_backend.load_error('cuda')}")
    if not hasattr(mod, "rank_classwise"):
        raise RuntimeError("prefcal._cuda was built without the ranking kernels (rebuild prefcal)")
    return mod


@dataclass
class DeviceKeys:
    """Rank keys (rows, n) float64 left in device memory owned by prefcal
    (``rank_keys(..., device_keys=True)`` with host inputs). ``get()`` copies them to a NumPy array."""

    buffer: Any  # prefcal._cuda.DeviceArray
    shape: tuple[int, int]
    device: int
    dtype: np.dtype = field(default=_F64)

    @property
    def ptr(self) -> int:
        return int(self.buffer.ptr)

    def get(self) -> np.ndarray:
        host = np.empty(self.shape, dtype=np.float64)
        if host.nbytes:
            self.buffer.to_host(host)
        return host

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.get()
        return a if dtype is None else a.astype(dtype)


class _Call:
    """Device, stream and device pointers of one call; keeps the staged copies alive until it is dropped."""

    def __init__(self, **arrays: Any):
        self.mod = _module()
        device = None
        first = None
        library_array = None  # a CuPy array or torch tensor of the call: its library's stream is used
        for name, x in arrays.items():
            if x is None:
                continue
            if isinstance(x, DeviceKeys):
                dev = x.device
            else:
                w = _arrays.where(x)
                if not w.on_gpu:
                    continue
                dev = int(w.device)
                if library_array is None:
                    library_array = x
            if device is not None and dev != device:
                raise TypeError(f"{first} is on cuda:{device} but {name} is on cuda:{dev}")
            device, first = dev, name
        self.device = device if device is not None else _backend._current_cuda_device()
        self.stream = 0 if library_array is None else _arrays.current_stream(library_array, self.device)
        # host inputs of a call on a library's stream are copied by that library on that stream (a plain
        # cudaMemcpy from pageable memory is not ordered before work on a non-blocking stream)
        self.library = None if library_array is None else _arrays.where(library_array).library
        self._alive: list[Any] = []

    def arg(self, x: Any, dtype: np.dtype) -> tuple[int, str]:
        """(pointer, typestr) of x on the call's device in `dtype`, C-contiguous."""
        if isinstance(x, DeviceKeys):
            if np.dtype(dtype) != _F64:
                raise TypeError("DeviceKeys hold float64 keys")
            return (x.ptr, "<f8")
        if _arrays.where(x).on_gpu:
            y = _arrays.device_normalise(x, np.dtype(dtype))
            p = _arrays.device_pointer(y, self.mod)
            self._alive.append(p)
            return p.arg()
        host = np.ascontiguousarray(_arrays.to_numpy_input(x), dtype=dtype)
        if self.library == "cupy":
            cupy = sys.modules["cupy"]
            with cupy.cuda.Device(self.device):
                y = cupy.asarray(host)
        elif self.library == "torch":
            y = sys.modules["torch"].from_numpy(np.array(host)).to(f"cuda:{self.device}")  # writable copy
        else:
            staged = self.mod.DeviceArray(host, self.device)
            self._alive.append((staged, host))
            return (int(staged.ptr), "|" + host.dtype.str[1:])
        p = _arrays.device_pointer(y, self.mod)
        self._alive.append(p)
        return p.arg()

    def optional(self, x: Any, dtype: np.dtype) -> tuple[int, str] | None:
        return None if x is None else self.arg(x, dtype)


def _shape(x: Any) -> tuple[int, ...]:
    if isinstance(x, DeviceKeys):
        return tuple(x.shape)
    if isinstance(x, (list, tuple)):
        return np.shape(x)
    return _arrays.shape_of(x)


def _range(x: Any) -> tuple[int, int] | None:
    """(min, max) of an integer array on the host or the device; None when empty."""
    if int(np.prod(_shape(x), dtype=np.int64)) == 0:
        return None
    if not _arrays.where(x).on_gpu:
        a = np.asarray(_arrays.to_numpy_input(x))
        return int(a.min()), int(a.max())
    return int(x.min()), int(x.max())


def _check_range(name: str, x: Any, lo: int, hi: int) -> None:
    r = _range(x)
    if r is not None and (r[0] < lo or r[1] >= hi):
        raise ValueError(f"internal error: {name} values must lie in [{lo}, {hi}), got [{r[0]}, {r[1]}]")


def _scores_keys(scores: Any, keys: Any) -> tuple[int, int, int]:
    ss, ks = _shape(scores), _shape(keys)
    if len(ss) != 2 or len(ks) != 2:
        raise ValueError("internal error: scores and keys must be 2-D")
    rows, n = ks
    if ss[1] != n or ss[0] not in (1, rows) or n < 1:
        raise ValueError(f"internal error: scores {ss} do not match keys {ks}")
    return int(ss[0]), int(rows), int(n)


def _check_keep(keep: Any, rows: int) -> None:
    if keep is not None and _shape(keep) != (rows,):
        raise ValueError(f"internal error: keep must have shape ({rows},)")


def _check_edges(edges: Any, n_bins: int) -> None:
    if edges is not None and _shape(edges) != (n_bins + 1,):
        raise ValueError(f"internal error: edges must have shape ({n_bins + 1},)")


# ------------------------------------------------------------------------------------------------ kernels
def rank_keys(rankings: Any, mask: Any, n: int, *, device_keys: bool = False) -> tuple[Any, int]:
    """(keys (rows, n) float64, first invalid row or NO_ERROR), as ``prefcal._cpu.rank_keys``.

    device_keys: leave the keys on the device (a CuPy array / torch tensor when the rankings are one, else a
    :class:`DeviceKeys`) instead of returning a NumPy array."""
    rs = _shape(rankings)
    if len(rs) != 2:
        raise ValueError("internal error: rankings must be 2-D")
    rows, m = int(rs[0]), int(rs[1])
    n = int(n)
    if m > n:
        raise ValueError("internal error: rank_keys shapes")
    global_mask = False
    if mask is not None:
        ms = _shape(mask)
        if ms == (n,):
            global_mask = True
        elif ms != (rows, n):
            raise ValueError("internal error: mask shape")
    call = _Call(rankings=rankings, mask=mask)
    r = call.arg(rankings, _I64)
    mk = call.optional(mask, _BOOL)
    on_gpu = _arrays.where(rankings).on_gpu
    library = _arrays.where(rankings).library if on_gpu else None
    out = _arrays.Output.new(library, (rows, n), _F64, call.device, call.mod)
    bad = int(call.mod.rank_keys(r, mk, global_mask, rows, m, n, out.ptr, call.stream, call.device))
    if device_keys:
        if library is not None:
            return out.array, bad
        return DeviceKeys(out.array, (rows, n), call.device), bad
    res = out.result()
    return (res if isinstance(res, np.ndarray) else _arrays.host_copy(res)), bad


def rank_seen_subsets(keys: Any, k: int) -> np.ndarray:
    """uint8 (C(n, k) * k!,): as ``prefcal._cpu.rank_seen_subsets``."""
    ks = _shape(keys)
    if len(ks) != 2:
        raise ValueError("internal error: keys must be 2-D")
    rows, n = int(ks[0]), int(ks[1])
    k = int(k)
    if k < 2 or k > n or k > 12:
        raise ValueError("internal error: rank_seen_subsets k")
    call = _Call(keys=keys)
    return call.mod.rank_seen_subsets(call.arg(keys, _F64), rows, n, k, call.stream, call.device)


def rank_classwise(
    scores: Any, keys: Any, classes: Any, top: bool, n_bins: int, edges: Any, keep: Any
) -> np.ndarray:
    """Tables (C, 3, n_bins) float64: as ``prefcal._cpu.rank_classwise``."""
    score_rows, rows, n = _scores_keys(scores, keys)
    cs = _shape(classes)
    if len(cs) != 2 or cs[1] < 1 or cs[1] > n:
        raise ValueError("internal error: classes must have shape (C, k), 1 <= k <= n")
    n_classes, k = int(cs[0]), int(cs[1])
    n_bins = int(n_bins)
    _check_edges(edges, n_bins)
    _check_keep(keep, rows)
    _check_range("classes", classes, 0, n)
    call = _Call(scores=scores, keys=keys, classes=classes, edges=edges, keep=keep)
    return call.mod.rank_classwise(
        call.arg(scores, _F64),
        call.arg(keys, _F64),
        call.arg(classes, _I32),
        bool(top),
        n_bins,
        call.optional(edges, _F64),
        call.optional(keep, _BOOL),
        score_rows,
        rows,
        n,
        n_classes,
        k,
        call.stream,
        call.device,
    )


def _subsets_args(
    scores: Any, keys: Any, k: int, slot: Any, n_classes: int, n_bins: int, edges: Any, keep: Any
):
    score_rows, rows, n = _scores_keys(scores, keys)
    k, n_classes, n_bins = int(k), int(n_classes), int(n_bins)
    if k < 2 or k > n or k > 12:
        raise ValueError("internal error: rank_classwise_subsets k")
    if _shape(slot) != (math.comb(n, k) * math.factorial(k),):
        raise ValueError("internal error: slot size")
    _check_edges(edges, n_bins)
    _check_keep(keep, rows)
    _check_range("slot", slot, -1, n_classes)
    call = _Call(scores=scores, keys=keys, slot=slot, edges=edges, keep=keep)
    args = (
        call.arg(scores, _F64),
        call.arg(keys, _F64),
        k,
        call.arg(slot, _I32),
        n_classes,
        n_bins,
        call.optional(edges, _F64),
        call.optional(keep, _BOOL),
        score_rows,
        rows,
        n,
    )
    return call, args


def rank_classwise_subsets(
    scores: Any, keys: Any, k: int, slot: Any, n_classes: int, n_bins: int, edges: Any, keep: Any
) -> np.ndarray:
    """Tables (n_classes, 3, n_bins) float64 through a slot table: as ``prefcal._cpu.rank_classwise_subsets``.
    (A class index listed in several slots is summed correctly, but its sums then vary in the last bits from
    run to run.)"""
    call, args = _subsets_args(scores, keys, k, slot, n_classes, n_bins, edges, keep)
    return call.mod.rank_classwise_subsets(*args, call.stream, call.device)


def rank_top_label(
    scores: Any, keys: Any, level: int, groups: Any, k: int, n_bins: int
) -> tuple[np.ndarray, int]:
    """((3, n_bins) float64 table, skipped events): as ``prefcal._cpu.rank_top_label``."""
    score_rows, rows, n = _scores_keys(scores, keys)
    level, k, n_bins = int(level), int(k), int(n_bins)
    if k < 1 or k > n or level not in (0, 1, 2) or (level == 2 and k > 20):
        raise ValueError("internal error: rank_top_label arguments")
    n_groups = 0
    if level == 0:
        if groups is None:
            raise ValueError("internal error: rank_top_label needs groups at level 0")
        gs = _shape(groups)
        if len(gs) != 2 or gs[1] != k:
            raise ValueError("internal error: groups must have shape (G, k)")
        n_groups = int(gs[0])
        _check_range("groups", groups, 0, n)
    else:
        groups = None
    call = _Call(scores=scores, keys=keys, groups=groups)
    table, skipped = call.mod.rank_top_label(
        call.arg(scores, _F64),
        call.arg(keys, _F64),
        level,
        call.optional(groups, _I32),
        k,
        n_bins,
        score_rows,
        rows,
        n,
        n_groups,
        call.stream,
        call.device,
    )
    return table, int(skipped)


def rank_canonical(probs: Any, labels: Any, h: float, p: float) -> float:
    """Dirichlet-kernel canonical calibration error, as ``prefcal._cpu.rank_canonical`` (NaN: no labels)."""
    ps = _shape(probs)
    if len(ps) != 2 or ps[1] < 1 or _shape(labels) != (ps[0],):
        raise ValueError("internal error: rank_canonical shapes")
    rows, n_classes = int(ps[0]), int(ps[1])
    if not (h > 0) or not (p > 0):
        raise ValueError("internal error: rank_canonical h and p must be positive")
    r = _range(labels)
    if r is not None and r[1] >= n_classes:
        raise ValueError("internal error: label out of range")
    call = _Call(probs=probs, labels=labels)
    return float(
        call.mod.rank_canonical(
            call.arg(probs, _F64),
            call.arg(labels, _I64),
            rows,
            n_classes,
            float(h),
            float(p),
            call.stream,
            call.device,
        )
    )


# -------------------------------------------------------------------------------------------- benchmark hooks
def time_rank_classwise_subsets(
    scores: Any,
    keys: Any,
    k: int,
    slot: Any,
    n_classes: int,
    n_bins: int,
    edges: Any,
    keep: Any,
    reps: int = 10,
) -> float:
    """Median milliseconds of the device work of rank_classwise_subsets (CUDA events, after one warm-up)."""
    call, args = _subsets_args(scores, keys, k, slot, n_classes, n_bins, edges, keep)
    return float(call.mod.time_rank_classwise_subsets(*args, int(reps), call.stream, call.device))


def describe_rank_classwise(
    rows: int,
    n: int,
    k: int,
    n_classes: int,
    *,
    subsets: bool,
    top: bool = False,
    n_bins: int = 10,
    log_edges: bool = False,
    global_scores: bool = False,
    device: int | None = None,
) -> str:
    """The launch plan (path, block, grid, shared memory) the classwise kernels would use."""
    mod = _module()
    dev = _backend._current_cuda_device() if device is None else int(device)
    return mod.describe_rank_classwise(
        int(rows),
        int(n),
        int(k),
        int(n_classes),
        bool(subsets),
        bool(top),
        int(n_bins),
        bool(log_edges),
        bool(global_scores),
        dev,
    )
