"""Input checks and every error message, worded once.

Kernels (C++, CUDA and the NumPy reference alike) only report the index of the first offending row; the
functions here look at that row and say what is wrong with it, so every backend raises the same text.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

#: What a kernel returns when every row is valid.
NO_ERROR = 2**63 - 1
#: Largest ``n_bins`` accepted (keeps B exact in float32 and rank arithmetic inside int64).
MAX_BINS = 2**24

_FLOAT_KEEP = (np.dtype(np.float32), np.dtype(np.float64))
_OUTCOME_KEEP = tuple(np.dtype(t) for t in (np.bool_, np.uint8, np.int8, np.int32, np.int64, np.float32, np.float64))
_LABEL_KEEP = (np.dtype(np.int32), np.dtype(np.int64))


# ----------------------------------------------------------------------------------------- options


def n_bins(value: object) -> int:
    """Check ``n_bins``: an integer in [1, 2**24]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"n_bins must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < 1:
        raise ValueError(f"n_bins must be at least 1, got {value}")
    if value > MAX_BINS:
        raise ValueError(f"n_bins must be at most {MAX_BINS}, got {value}")
    return value


def option(name: str, value: object, allowed: Sequence[str]) -> str:
    """Check a string option against its allowed values."""
    if not isinstance(value, str) or value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    return value


def norm(value: object, debias: bool) -> str:
    """Check a calibration-error norm, and that debiasing is only asked of the l2 norm."""
    value = option("norm", value, ("l1", "l2", "max"))
    if debias and value != "l2":
        raise ValueError(f"debias=True needs norm='l2', got norm={value!r}")
    return value


def quantile_size(n: int, bins: int) -> None:
    """Rank arithmetic of quantile bins needs (n + 1) * n_bins inside int64."""
    if (n + 1) * bins >= 2**62:
        raise ValueError(f"n_bins={bins} is too large for {n} rows with strategy='quantile'")


# ----------------------------------------------------------------------------------------- dtypes


def confidence_dtype(name: str, dtype: np.dtype) -> np.dtype:
    """Kernel dtype for probabilities: float32/float64 as they are; other reals become float64."""
    if dtype in _FLOAT_KEEP:
        return dtype
    if dtype.kind == "f":  # float16, a non-native byte order, wider floats
        return np.dtype(np.float32) if dtype.itemsize <= 4 else np.dtype(np.float64)
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    raise TypeError(f"{name} must contain real numbers, got dtype {dtype}")


def outcome_dtype(name: str, dtype: np.dtype) -> np.dtype:
    """Kernel dtype for 0/1 outcomes: bool, uint8, int8, int32, int64, float32, float64 are read as they are."""
    if dtype in _OUTCOME_KEEP:
        return dtype
    if dtype.kind in "iu":
        return np.dtype(np.int64)
    if dtype.kind == "f":
        return np.dtype(np.float32) if dtype.itemsize < 4 else np.dtype(np.float64)
    raise TypeError(f"{name} must be bool, integer or float (0 or 1), got dtype {dtype}")


def label_dtype(name: str, dtype: np.dtype) -> np.dtype:
    """Kernel dtype for class labels: int32/int64; other integers become int64; anything else is a TypeError."""
    if dtype in _LABEL_KEEP:
        return dtype
    if dtype.kind in "iu":
        return np.dtype(np.int64)
    raise TypeError(f"{name} must contain integers, got dtype {dtype}")


def weight_dtype(name: str, dtype: np.dtype) -> np.dtype:
    if dtype.kind in "biuf":
        return np.dtype(np.float64)
    raise TypeError(f"{name} must contain real numbers, got dtype {dtype}")


# ----------------------------------------------------------------------------------------- shapes


def ndim(name: str, shape: tuple[int, ...], expected: int) -> None:
    if len(shape) != expected:
        what = "1-dimensional" if expected == 1 else f"{expected}-dimensional"
        raise ValueError(f"{name} must be {what}, got shape {tuple(shape)}")


def same_length(a: str, na: int, b: str, nb: int) -> None:
    if na != nb:
        raise ValueError(f"{a} and {b} have different lengths: {na} vs {nb}")


def nonempty(name: str, n: int) -> None:
    if n == 0:
        raise ValueError(f"{name} is empty: at least one row is needed")


def positive_total(total: float) -> None:
    if not total > 0:
        raise ValueError("weights sum to zero: at least one row needs a positive weight")
    if not math.isfinite(total):
        raise ValueError(
            f"weights sum to {total} in float64 (past 1.8e308): scale them down (the results depend only on "
            "their ratios)"
        )


# ----------------------------------------------------------------------------------------- rows


def _nonfinite(name: str, where: str, v: float) -> str | None:
    if math.isnan(v):
        return f"{name} contains NaN at {where}"
    if math.isinf(v):
        return f"{name} contains {'-' if v < 0 else ''}inf at {where}"
    return None


def probability_problem(name: str, index: str, where: str, value: np.generic) -> str | None:
    """Message for a value that must lie in [0, 1], or None when it does."""
    v = float(value)
    bad = _nonfinite(name, where, v)
    if bad:
        return bad
    if not 0.0 <= v <= 1.0:
        return f"{name}{index} = {value} is outside [0, 1]"
    return None


def weight_problem(row: int, weight: np.generic) -> str | None:
    """Message for a weight that is not finite and non-negative, or None."""
    w = float(weight)
    bad = _nonfinite("weights", f"index {row}", w)
    if bad:
        return bad
    if w < 0:
        return f"weights[{row}] = {weight} is negative"
    return None


def binary_row_message(row: int, confidence: np.generic, correct: np.generic, weight: np.generic | None) -> str:
    """Says what is wrong with row `row` of (confidence, correct, weights)."""
    msg = probability_problem("confidence", f"[{row}]", f"index {row}", confidence)
    if msg:
        return msg
    c = float(correct)
    if not (c == 0.0 or c == 1.0):
        hint = ""
        if 0.0 < c < 1.0 and float(confidence) in (0.0, 1.0):  # a probability where the outcome goes
            hint = " (the outcomes are the second argument: are confidence and correct swapped?)"
        return f"correct[{row}] = {correct} is not 0 or 1{hint}"
    if weight is not None:
        msg = weight_problem(row, weight)
        if msg:
            return msg
    return f"row {row} is invalid"  # unreachable when the kernel and this function agree


def multiclass_row_message(row: int, probs_row: np.ndarray, label: np.generic, n_classes: int) -> str:
    """Says what is wrong with row `row` of (probs, labels)."""
    for j, v in enumerate(probs_row):
        msg = probability_problem("probs", f"[{row}, {j}]", f"[{row}, {j}]", v)
        if msg:
            return msg
    lab = int(label)
    if not 0 <= lab < n_classes:
        return f"labels[{row}] = {lab} is out of range for n_classes={n_classes}"
    return f"row {row} is invalid"  # unreachable when the kernel and this function agree


# ----------------------------------------------------------------------------------------- rankings (SPEC §1, §2)

_INDEX_KEEP = (np.dtype(np.int32), np.dtype(np.int64))


def ranking_dtype(name: str, dtype: np.dtype) -> np.dtype:
    """Kernel dtype for orderings: int32/int64 as they are; narrower integers become int32, wider int64."""
    if dtype in _INDEX_KEEP:
        return dtype
    if dtype.kind in "iu":
        return np.dtype(np.int32) if dtype.itemsize < 4 else np.dtype(np.int64)
    raise TypeError(f"{name} must contain integers (item indices), got dtype {dtype}")


def mask_dtype(name: str, dtype: np.dtype) -> np.dtype:
    """Masks are bool (True = available); anything else is a TypeError."""
    if dtype == np.bool_:
        return dtype
    raise TypeError(f"{name} must be a bool array (True = item available), got dtype {dtype}")


def integer(name: str, value: object, low: int, high: int | None = None) -> int:
    """An integer option in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def real(name: str, value: object, *, positive: bool = False, nonnegative: bool = False) -> float:
    """A finite real option (optionally > 0 or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be positive, got {v}")
    if nonnegative and not v >= 0:
        raise ValueError(f"{name} must be non-negative, got {v}")
    return v


def seed(value: object) -> int:
    """A seed for the Philox generator: None (fresh entropy) or an integer in [0, 2**64)."""
    if value is None:
        return int(np.random.SeedSequence().entropy) % 2**64
    return integer("seed", value, 0, 2**64 - 1)


def scores_shape(shape: tuple[int, ...], n_rows: int | None = None) -> int:
    """scores must be (n,) or (N, n) with N == n_rows; returns n."""
    if len(shape) not in (1, 2):
        raise ValueError(f"scores must be 1-dimensional (n_items,) or 2-dimensional (N, n_items), got shape {shape}")
    n = shape[-1]
    if n == 0:
        raise ValueError("scores has no items: at least one item is needed")
    if n_rows is not None and len(shape) == 2 and shape[0] != n_rows:
        raise ValueError(f"scores and rankings have different numbers of rows: {shape[0]} vs {n_rows}")
    return n


def rankings_shape(shape: tuple[int, ...], n: int) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"rankings must be 2-dimensional (N, m), got shape {shape}")
    if shape[1] > n:
        raise ValueError(f"rankings have {shape[1]} positions but there are only n_items={n} items")
    return shape[0], shape[1]


def mask_shape(shape: tuple[int, ...], n_rows: int, n: int) -> None:
    if shape not in ((n,), (n_rows, n)):
        raise ValueError(f"mask must have shape ({n},) or ({n_rows}, {n}), got {shape}")


def nonfinite_scores(values: np.ndarray, prefix: str = "") -> str | None:
    """Message for the first non-finite score of `values` (a row or a global model), or None."""
    bad = ~np.isfinite(values.astype(np.float64))
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    where = f"[{prefix}{i}]" if prefix else f"index {i}"
    return _nonfinite("scores", where, float(values[i]))


def ranking_row_message(row: int, ranking: np.ndarray, n: int, mask_row: np.ndarray | None,
                        scores_row: np.ndarray | None = None, weight: object = None, name: str = "rankings",
                        index: str | None = None) -> str:
    """Says what is wrong with row `row` of (rankings, mask, scores, weights); `name[index]` is how the ordering
    is shown (default ``rankings[row]``; e.g. ``samples[row, draw]``)."""
    at = str(row) if index is None else index
    first_seen: dict[int, int] = {}
    pad = None
    for j, v in enumerate(int(x) for x in ranking):
        if v == -1:
            pad = j if pad is None else pad
            continue
        if pad is not None:
            return f"{name}[{at}, {j}] = {v} follows padding (-1) at position {pad}"
        if not 0 <= v < n:
            return f"{name}[{at}, {j}] = {v} is out of range for n_items={n}"
        if mask_row is not None and not bool(mask_row[v]):
            return f"{name}[{at}, {j}] = {v} is not available in row {row} (its mask is False)"
        if v in first_seen:
            return f"{name}[{at}] repeats item {v} (positions {first_seen[v]} and {j})"
        first_seen[v] = j
    if scores_row is not None:
        msg = nonfinite_scores(scores_row, f"{row}, ")
        if msg:
            return msg
    if weight is not None:
        msg = weight_problem(row, weight)
        if msg:
            return msg
    return f"row {row} is invalid"  # unreachable when the kernel and this function agree


def one_observation(rankings: object, observed_ranks: object) -> None:
    """Exactly one of rankings= and observed_ranks= is given (ValueError naming which mistake)."""
    if rankings is None and observed_ranks is None:
        raise ValueError("no observations: pass rankings= (orderings) or observed_ranks= (ranks per item)")
    if rankings is not None and observed_ranks is not None:
        raise ValueError(
            "give the observations either as rankings= (orderings) or as observed_ranks=, not both"
        )


def first_too_large(x: np.ndarray, dtype: np.dtype) -> tuple[int, ...] | None:
    """The index of the first value of an unsigned array that a signed ``dtype`` cannot hold (uint64 past
    int64 would wrap to negative values, -1 reading as padding), or None."""
    x = np.asarray(x)
    if x.dtype.kind != "u" or dtype.kind != "i" or x.dtype.itemsize < dtype.itemsize or x.size == 0:
        return None
    big = x > np.iinfo(dtype).max
    if not big.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(big)), big.shape))


def unsigned_fits(name: str, x: np.ndarray, dtype: np.dtype) -> None:
    """ValueError naming the first unsigned value that ``dtype`` cannot hold (see first_too_large)."""
    at = first_too_large(x, dtype)
    if at is not None:
        where = ", ".join(str(i) for i in at)
        value = int(np.asarray(x)[at])
        raise ValueError(f"{name}[{where}] = {value} is out of range (too large for an index)")
