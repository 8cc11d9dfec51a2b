"""``prefcal evaluate``: the calibration report of a file of scored rankings, read in chunks (SPEC §10).

Each chunk of rows updates one mergeable :class:`prefcal.metrics.RankingCalibration` state, so memory is
bounded by the chunk size whatever the size of the file, and the result equals
:func:`prefcal.ranking.report` on all the rows at once (bin counts exactly, sums to float64 rounding).
Writes ``report.json``, ``report.md`` and ``reliability.png`` (with matplotlib) and prints a summary.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any

import numpy as np

from . import __version__, _backend, _io, _report, metrics, ranking
from ._io import Columns, InputError

__all__ = ["Columns", "InputError", "run"]

DEFAULT_CHUNK_ROWS = 1 << 16


def default_levels(n_items: int) -> tuple[str, ...]:
    return tuple(lv for lv in ranking.DEFAULT_LEVELS if ranking._level_exists(lv, n_items))


def run(
    path: str,
    columns: Columns | None = None,
    *,
    levels: tuple[str, ...] | None = None,
    n_bins: int | None = None,
    kind: str = "classwise",
    device: str = "cpu",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    out: str | None = "prefcal-report",
    fmt: str | None = None,
    progress: bool | None = None,
    echo: Any = print,
) -> dict[str, Any]:
    """Evaluates the file ``path`` and returns report.json's content (also written into ``out`` unless it
    is None). ``columns`` names the scores and the observations (default: ``scores`` and, whichever the file
    has, ``rankings`` or ``ranks``). Problems with the file raise :class:`InputError`; bad options raise
    ``ValueError``."""
    t0 = time.perf_counter()
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    xp = _backend.array_module(device)
    columns = _default_columns(path, columns, fmt)
    reader = _io.open_reader(path, columns, chunk_rows, fmt)
    try:
        n = reader.n_items
        if n < 2:
            raise InputError(f"{path}: rows have {n} item; rankings need at least 2")
        chosen = tuple(levels) if levels else default_levels(n)
        state = metrics.RankingCalibration(chosen, kind=kind, n_bins=n_bins, n_items=n)
        bar = _Progress(
            reader.progress_total, reader.progress_unit, sys.stderr.isatty() if progress is None else progress
        )
        rows = 0
        try:
            for chunk, done in reader:
                _update(state, chunk, reader, xp)
                rows += chunk.n_rows
                bar.update(done)
        finally:
            bar.close()
    finally:
        reader.close()
    # default levels that the observations leave undecided (full, with top-k observations) are left out
    results = state.compute(undetermined="raise" if levels else "omit")
    omitted = [lv for lv in chosen if lv not in results]
    if not results:
        raise InputError(f"{path}: the observations decide no event of any level ({', '.join(chosen)})")
    seconds = time.perf_counter() - t0
    doc = {
        "prefcal": __version__,
        "input": {
            "path": os.path.abspath(path),
            "format": reader.format,
            "rows": rows,
            "items": n,
            "columns": columns.fields(),
            "device": device,
            "chunk_rows": int(chunk_rows),
            "seconds": seconds,
        },
        "omitted_levels": omitted,
        "levels": {name: r.to_dict() for name, r in results.items()},
    }
    rep = ranking.Report(results)
    table = rep.to_markdown()
    written = []
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(doc, f, indent=1, default=float)
        written.append("report.json")
        png = os.path.join(out, "reliability.png")
        title = f"prefcal evaluate: {os.path.basename(path)} ({rows:,} rows x {n} items)"
        pictures = _report.figure(title, results, png)
        with open(os.path.join(out, "report.md"), "w") as f:
            f.write(f"# prefcal evaluate: {os.path.basename(path)}\n\n")
            f.write(f"{rows:,} rows of {n} items ({reader.format}; columns {columns.fields()}).\n\n")
            f.write(table + "\n")
            if omitted:
                f.write(f"\nLeft out (no event decided by the observations): {', '.join(omitted)}.\n")
            if pictures:
                f.write("\n![reliability diagrams](reliability.png)\n")
        written.append("report.md")
        if pictures:
            written.append("reliability.png")
    echo(
        f"prefcal evaluate: {path}: {rows:,} rows x {n} items in {seconds:.1f} s "
        f"({rows / max(seconds, 1e-9):,.0f} rows/s)"
    )
    echo(table)
    if omitted:
        echo(f"left out (no event decided by the observations): {', '.join(omitted)}")
    if written:
        echo(f"wrote {', '.join(os.path.join(out, w) for w in written)}")  # type: ignore[arg-type]
    return doc


def _default_columns(path: str, columns: Columns | None, fmt: str | None) -> Columns:
    """Fills in the columns not named: the observations ``rankings`` if the file has it, else ``ranks``; the
    choice sets ``mask`` if the file has it (as the scores ``scores``)."""
    columns = columns or Columns()
    named_obs = columns.rankings is not None or columns.ranks is not None
    if named_obs and columns.mask is not None:
        return columns
    names = _io.column_names(path, fmt)
    mask = columns.mask if columns.mask is not None else ("mask" if "mask" in names else None)
    if named_obs:
        return Columns(columns.scores, columns.rankings, columns.ranks, mask)
    for part in ("rankings", "ranks"):
        if part in names:
            return Columns(columns.scores, **{part: part}, mask=mask)
    shown = ", ".join(sorted(names)) if names else "none found"
    raise InputError(
        f"{path}: no 'rankings' or 'ranks' column; name the observations with --rankings COL or --ranks COL "
        f"(the columns are: {shown})"
    )


def _update(state: metrics.RankingCalibration, chunk: _io.Chunk, reader: _io.Reader, xp: Any) -> None:
    arrays = {
        "scores": chunk.scores,
        "rankings": chunk.rankings,
        "observed_ranks": chunk.ranks,
        "mask": chunk.mask,
    }
    try:
        _apply(state.update, arrays, xp)
    except (ValueError, TypeError) as exc:
        raise _locate(arrays, chunk.start, reader, exc) from exc


def _apply(fn: Any, arrays: dict[str, np.ndarray | None], xp: Any, rows: slice = slice(None)) -> Any:
    a = {k: None if v is None else xp.asarray(v[rows]) for k, v in arrays.items()}
    model = ranking.PL(a["scores"], a["mask"]) if a["mask"] is not None else ranking.PL(a["scores"])
    return fn(model, a["rankings"], a["observed_ranks"])


def _check(arrays: dict[str, np.ndarray | None], lo: int, hi: int) -> Exception | None:
    try:
        _apply(lambda m, r, o: ranking._prepare(m, r, o), arrays, np, slice(lo, hi))
    except (ValueError, TypeError) as exc:
        return exc
    return None


def _locate(
    arrays: dict[str, np.ndarray | None], start: int, reader: _io.Reader, exc: Exception
) -> InputError:
    """The first row of the chunk that fails on its own (by bisection), named by its place in the file."""
    rows = arrays["scores"].shape[0]  # type: ignore[union-attr]
    if _check(arrays, 0, rows) is None:
        return InputError(f"{reader.path}: rows {start} to {start + rows - 1}: {exc}")
    lo, hi = 0, rows
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _check(arrays, lo, mid) is not None:
            hi = mid
        else:
            lo = mid
    single = _check(arrays, lo, lo + 1)
    if single is None:  # pragma: no cover - a row-local problem always shows on its own
        return InputError(f"{reader.path}: rows {start} to {start + rows - 1}: {exc}")
    g = start + lo
    msg = re.sub(r"\[0([,\]])", rf"[{g}\1", str(single))
    msg = re.sub(r"\brow 0\b", f"row {g}", msg)
    return InputError(f"{reader.path}: {reader.where(g)}: {msg}")


class _Progress:
    """tqdm when it is installed, else a one-line counter on stderr; silent when disabled."""

    def __init__(self, total: int | None, unit: str, enabled: bool):
        self.enabled = enabled
        self.total, self.unit, self.done = total, unit, 0
        self.bar = None
        self._last = 0.0
        self._t0 = time.perf_counter()
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(
            total=total, unit=unit, unit_scale=True, file=sys.stderr, desc="evaluate", dynamic_ncols=True
        )

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.perf_counter() - self._last > 0.5:
            self._last = time.perf_counter()
            pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            rate = self.done / max(self._last - self._t0, 1e-9)
            sys.stderr.write(f"\revaluate: {self.done:,} {self.unit}{pct}, {rate:,.0f} {self.unit}/s ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")
