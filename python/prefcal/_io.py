"""Chunked readers of ranking data for ``prefcal evaluate``: Parquet (list columns), ``.npz`` and JSON Lines.

Each reader yields :class:`Chunk` objects of at most ``chunk_rows`` rows, so memory stays bounded whatever
the size of the file. Every problem with the input raises :class:`InputError` with one line that names the
file and, where it applies, the column and the row (0-based) or line (1-based) of the file.

Per row: ``scores`` (n numbers), and either ``rankings`` (an ordering of item indices, best first; a partial
ordering may be shorter or padded with -1) or ``ranks`` (one rank per item, null/NaN when unknown); an
optional boolean ``mask`` (n values: the items available in the row).
"""

from __future__ import annotations

import abc
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from . import _validation

FORMATS = ("parquet", "npz", "jsonl")
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".npz": "npz", ".jsonl": "jsonl", ".ndjson": "jsonl"}
#: What each field must hold: "float" (numbers), "int" (integers) or "bool".
_KINDS = {"scores": "float", "rankings": "int", "ranks": "float", "mask": "bool"}


class InputError(Exception):
    """A problem with the input file, said in one line."""


@dataclass
class Chunk:
    start: int  # index in the file of the chunk's first row
    scores: np.ndarray  # (rows, n) float64
    rankings: np.ndarray | None  # (rows, n) int64, -1 padded
    ranks: np.ndarray | None  # (rows, n) float64, NaN unknown
    mask: np.ndarray | None  # (rows, n) bool

    @property
    def n_rows(self) -> int:
        return self.scores.shape[0]


@dataclass
class Columns:
    """Which column (Parquet), array (npz) or field (JSON Lines) holds each part of a row."""

    scores: str = "scores"
    rankings: str | None = None
    ranks: str | None = None
    mask: str | None = None

    def fields(self) -> dict[str, str]:
        out = {"scores": self.scores}
        for part in ("rankings", "ranks", "mask"):
            if getattr(self, part) is not None:
                out[part] = getattr(self, part)
        return out


def detect_format(path: str, fmt: str | None = None) -> str:
    if fmt is not None:
        return fmt
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise InputError(
            f"{path}: cannot tell the format from the extension {ext or '(none)'!r}; name the file .parquet, "
            ".npz or .jsonl, or pass --format parquet|npz|jsonl"
        )
    return _EXTENSIONS[ext]


def open_reader(path: str, columns: Columns, chunk_rows: int, fmt: str | None = None) -> Reader:
    """The reader of ``path`` (checked: exists, not empty, readable, has the columns with the right types)."""
    fmt = _check_file(path, fmt)
    cls = {"parquet": ParquetReader, "npz": NpzReader, "jsonl": JsonlReader}[fmt]
    return cls(path, columns, chunk_rows)


def _check_file(path: str, fmt: str | None) -> str:
    fmt = detect_format(path, fmt)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty")
    return fmt


def column_names(path: str, fmt: str | None = None) -> list[str]:
    """The columns (Parquet), arrays (npz) or fields of the first row (JSON Lines) of ``path``."""
    fmt = _check_file(path, fmt)
    try:
        if fmt == "parquet":
            pa, pq = _arrow()
            try:
                return list(pq.read_schema(path).names)
            except pa.ArrowException as exc:
                raise InputError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from exc
        if fmt == "npz":
            try:
                with zipfile.ZipFile(path) as zf:
                    return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            except zipfile.BadZipFile as exc:
                raise InputError(f"{path}: not a readable .npz file ({_first_line(exc)})") from exc
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        return []  # the reader names the line
                    return list(obj) if isinstance(obj, dict) else []
        raise InputError(f"{path}: the file has no rows (only blank lines)")
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


class Reader(abc.ABC):
    """Base of the three readers: ``n_items``, ``n_rows`` (None if unknown before reading: JSON Lines),
    ``progress_total`` / ``progress_unit`` for a progress bar, iteration over :class:`Chunk`."""

    format = ""

    def __init__(self, path: str, columns: Columns, chunk_rows: int):
        self.path = path
        self.columns = columns
        self.chunk_rows = int(chunk_rows)
        self.n_items = 0
        self.n_rows: int | None = None
        if columns.rankings is None and columns.ranks is None:
            raise InputError(f"{path}: name the observations: a rankings column or a ranks column")

    @property
    def progress_total(self) -> int | None:
        return self.n_rows

    progress_unit = "rows"

    @abc.abstractmethod
    def __iter__(self) -> Iterator[tuple[Chunk, int]]:
        """(chunk, progress made) pairs, in the file's row order."""

    def close(self) -> None:  # noqa: B027 - readers that hold a file override it; JSON Lines opens per pass
        """Releases the file (the JSON Lines reader holds none between passes)."""

    def where(self, row: int) -> str:
        """How a row of the file is named in messages."""
        return f"row {row}"

    def _fail(self, msg: str) -> InputError:
        return InputError(f"{self.path}: {msg}")


# ------------------------------------------------------------------------------------------------ Parquet
def _arrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError("reading Parquet needs pyarrow: pip install 'prefcal[cli]'") from exc
    return pa, pq


def _arrow_kind(t: Any) -> str | None:
    import pyarrow.types as pt

    if pt.is_boolean(t):
        return "bool"
    if pt.is_integer(t):
        return "int"
    if pt.is_floating(t):
        return "float"
    return None


_ACCEPTS = {"float": ("float", "int"), "int": ("int",), "bool": ("bool",)}
_NOUNS = {"float": "numbers", "int": "integers", "bool": "booleans"}


class ParquetReader(Reader):
    format = "parquet"

    def __init__(self, path: str, columns: Columns, chunk_rows: int):
        super().__init__(path, columns, chunk_rows)
        pa, pq = _arrow()
        try:
            self._file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 22)
        except (pa.ArrowException, OSError) as exc:
            raise self._fail(f"not a readable Parquet file ({_first_line(exc)})") from exc
        try:
            self._check(columns)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._file.close()

    def _check(self, columns: Columns) -> None:
        pa, _ = _arrow()
        import pyarrow.types as pt

        schema = self._file.schema_arrow
        names = list(schema.names)
        for part, col in columns.fields().items():
            if col not in names:
                raise self._fail(f"no column {col!r} (for {part}); the columns are {', '.join(names)}")
            t = schema.field(col).type
            ok = pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t)
            inner = _arrow_kind(t.value_type) if ok else None
            if inner not in _ACCEPTS[_KINDS[part]]:
                raise self._fail(
                    f"column {col!r} ({part}) has type {t}; expected a list of {_NOUNS[_KINDS[part]]} per row"
                )
        self.n_rows = self._file.metadata.num_rows
        if self.n_rows == 0:
            raise self._fail("the file has no rows")
        try:
            first = next(self._file.iter_batches(batch_size=1, columns=[columns.scores])).column(0)
        except (pa.ArrowException, OSError, StopIteration) as exc:
            raise self._fail(f"the file is corrupt or truncated ({_first_line(exc)})") from exc
        self.n_items = 0 if not first.is_valid()[0].as_py() else int(first.value_lengths()[0].as_py())
        if self.n_items < 1:
            raise self._fail(f"row 0: column {columns.scores!r} (scores) is empty or null")

    def __iter__(self) -> Iterator[tuple[Chunk, int]]:
        pa, _ = _arrow()
        fields = self.columns.fields()
        start = 0
        try:
            batches = self._file.iter_batches(
                batch_size=self.chunk_rows, columns=list(dict.fromkeys(fields.values()))
            )
            for batch in batches:
                parts = {
                    part: _list_to_2d(batch.column(col), self.n_items, part, col, start, self)
                    for part, col in fields.items()
                }
                chunk = Chunk(
                    start, parts["scores"], parts.get("rankings"), parts.get("ranks"), parts.get("mask")
                )
                start += batch.num_rows
                yield chunk, batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise self._fail(
                f"the file is corrupt or truncated near row {start} ({_first_line(exc)})"
            ) from exc


def _list_to_2d(arr: Any, n: int, part: str, col: str, start: int, reader: Reader) -> np.ndarray:
    """A list column of one batch as a (rows, n) array: scores and masks must have n values per row; rankings
    up to n (padded with -1); ranks n (nulls become NaN)."""
    kind = _KINDS[part]
    rows = len(arr)
    if arr.null_count:
        bad = int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
        raise reader._fail(f"{reader.where(start + bad)}: column {col!r} ({part}) is null")
    lengths = np.asarray(arr.value_lengths(), dtype=np.int64)
    values = arr.flatten()
    wrong = (lengths > n) if part == "rankings" else (lengths != n)
    if wrong.any():
        bad = int(np.flatnonzero(wrong)[0])
        need = f"at most {n}" if part == "rankings" else f"{n} (as in row 0)"
        raise reader._fail(
            f"{reader.where(start + bad)}: column {col!r} ({part}) has {lengths[bad]} values; expected {need}"
        )
    if values.null_count:
        if part != "ranks":
            at = int(np.flatnonzero(~np.asarray(values.is_valid()))[0])
            row = int(np.searchsorted(np.cumsum(lengths), at, side="right"))
            raise reader._fail(f"{reader.where(start + row)}: column {col!r} ({part}) has a null value")
        flat = values.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    else:
        flat = values.to_numpy(zero_copy_only=False)
    dtype = {"float": np.float64, "int": np.int64, "bool": np.bool_}[kind]
    big = _validation.first_too_large(flat, np.dtype(dtype))
    if big is not None:
        at = big[0]
        row = int(np.searchsorted(np.cumsum(lengths), at, side="right"))
        raise reader._fail(
            f"{reader.where(start + row)}: column {col!r} ({part}) holds {int(flat[at])}, out of range"
        )
    flat = flat.astype(dtype, copy=False)
    if part != "rankings" or (lengths == n).all():
        return flat.reshape(rows, n)
    return pad_lists(flat, lengths, n, -1)


def pad_lists(values: np.ndarray, lengths: np.ndarray, width: int, pad: Any) -> np.ndarray:
    """Lists given flat (``values``, the rows' ``lengths``) as a (rows, width) array, each row padded with
    ``pad`` after its values."""
    rows = lengths.shape[0]
    out = np.full((rows, width), pad, dtype=values.dtype)
    starts = np.cumsum(lengths) - lengths
    out[np.repeat(np.arange(rows), lengths), np.arange(values.size) - np.repeat(starts, lengths)] = values
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------ npz
class _NpyMember:
    """One ``.npy`` array inside an ``.npz`` file, read row block by row block (also when compressed)."""

    def __init__(self, zf: zipfile.ZipFile, name: str, reader: Reader, part: str):
        self.name = name
        self.fp: BinaryIO = zf.open(name)
        try:
            version = np.lib.format.read_magic(self.fp)
            header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = header(self.fp)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise reader._fail(
                f"array {name[:-4]!r} is not a readable .npy array ({_first_line(exc)})"
            ) from exc
        self.shape, self.dtype, self.fortran = shape, np.dtype(dtype), fortran
        kind = _KINDS[part]
        ok = {"float": "fiu", "int": "iu", "bool": "b"}[kind]
        if self.dtype.kind not in ok or self.dtype.hasobject:
            raise reader._fail(
                f"array {name[:-4]!r} ({part}) has dtype {self.dtype}; expected {_NOUNS[kind]}"
            )
        if len(shape) != 2:
            raise reader._fail(f"array {name[:-4]!r} ({part}) has shape {shape}; expected (rows, items)")
        self.row_bytes = self.dtype.itemsize * int(shape[1])
        self._whole: np.ndarray | None = None
        if fortran:  # column-major: rows are not contiguous on disk; read it whole (rare: np.savez of a .T)
            self._whole = np.lib.format.read_array(zf.open(name))

    def read(self, start: int, rows: int) -> np.ndarray:
        if self._whole is not None:
            return np.ascontiguousarray(self._whole[start : start + rows])
        want = rows * self.row_bytes
        buf = self.fp.read(want)
        if len(buf) != want:
            raise EOFError(f"array {self.name[:-4]!r} ends early")
        return np.frombuffer(buf, dtype=self.dtype).reshape(rows, self.shape[1])


class NpzReader(Reader):
    format = "npz"

    def __init__(self, path: str, columns: Columns, chunk_rows: int):
        super().__init__(path, columns, chunk_rows)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise self._fail(f"not a readable .npz file ({_first_line(exc)})") from exc
        self._members: dict[str, _NpyMember] = {}
        try:
            self._open_members(columns)
        except BaseException:
            self.close()
            raise

    def _open_members(self, columns: Columns) -> None:
        names = [n[:-4] for n in self._zip.namelist() if n.endswith(".npy")]
        for part, col in columns.fields().items():
            if col not in names:
                raise self._fail(
                    f"no array {col!r} (for {part}); the arrays are {', '.join(names) or 'none'}"
                )
            self._members[part] = _NpyMember(self._zip, col + ".npy", self, part)
        rows = {m.shape[0] for m in self._members.values()}
        if len(rows) != 1:
            sizes = ", ".join(f"{m.name[:-4]}: {m.shape[0]}" for m in self._members.values())
            raise self._fail(f"the arrays have different numbers of rows ({sizes})")
        self.n_rows = rows.pop()
        if self.n_rows == 0:
            raise self._fail("the arrays have no rows")
        self.n_items = int(self._members["scores"].shape[1])
        for part, m in self._members.items():
            if part != "rankings" and m.shape[1] != self.n_items:
                raise self._fail(
                    f"array {m.name[:-4]!r} ({part}) has {m.shape[1]} columns; scores has {self.n_items}"
                )
            if part == "rankings" and not 1 <= m.shape[1] <= self.n_items:
                raise self._fail(
                    f"array {m.name[:-4]!r} (rankings) has {m.shape[1]} columns; expected 1 to {self.n_items}"
                )

    def __iter__(self) -> Iterator[tuple[Chunk, int]]:
        assert self.n_rows is not None
        start = 0
        try:
            while start < self.n_rows:
                rows = min(self.chunk_rows, self.n_rows - start)
                parts = {part: m.read(start, rows) for part, m in self._members.items()}
                scores = parts["scores"].astype(np.float64)
                r = parts.get("rankings")
                if r is not None:
                    big = _validation.first_too_large(r, np.dtype(np.int64))
                    if big is not None:
                        where = self.where(start + big[0])
                        raise self._fail(f"{where}: rankings hold {int(r[big])}, out of range")
                    r = r.astype(np.int64)
                    if r.shape[1] < self.n_items:
                        r = np.concatenate(
                            [r, np.full((rows, self.n_items - r.shape[1]), -1, np.int64)], axis=1
                        )
                ranks = parts.get("ranks")
                yield (
                    Chunk(
                        start,
                        scores,
                        r,
                        None if ranks is None else ranks.astype(np.float64),
                        parts.get("mask"),
                    ),
                    rows,
                )
                start += rows
        except (EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
            raise self._fail(
                f"the file is corrupt or truncated near row {start} ({_first_line(exc)})"
            ) from exc

    def close(self) -> None:
        for m in self._members.values():
            m.fp.close()
        self._zip.close()


# ------------------------------------------------------------------------------------------------ JSON Lines
class JsonlReader(Reader):
    """One JSON object per line, e.g. ``{"scores": [0.3, -1.2, 2.0], "rankings": [2, 0, 1]}``; blank lines
    are skipped; messages name the line (1-based). Progress is counted in bytes."""

    format = "jsonl"
    progress_unit = "B"

    def __init__(self, path: str, columns: Columns, chunk_rows: int):
        super().__init__(path, columns, chunk_rows)
        self._size = os.path.getsize(path)
        self._lines: dict[int, int] = {}  # row -> line of the current chunk
        try:
            with open(path, "rb") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        row = self._parse(line, lineno)
                        self.n_items = self._length("scores", row["scores"], lineno)
                        break
                else:
                    raise self._fail("the file has no rows (only blank lines)")
        except OSError as exc:
            raise self._fail(f"cannot be read ({exc.strerror or exc})") from exc

    @property
    def progress_total(self) -> int | None:
        return self._size

    def where(self, row: int) -> str:
        line = self._lines.get(row)
        return f"line {line} (row {row})" if line is not None else f"row {row}"

    def _parse(self, line: bytes, lineno: int) -> dict[str, Any]:
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self._fail(f"line {lineno}: not valid JSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise self._fail(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
        out = {}
        for part, col in self.columns.fields().items():
            if col not in obj:
                raise self._fail(
                    f"line {lineno}: no field {col!r} (for {part}); the fields are {', '.join(obj)}"
                )
            v = obj[col]
            kind = _KINDS[part]
            if not isinstance(v, list) or not all(_json_ok(x, kind, part) for x in v):
                raise self._fail(f"line {lineno}: field {col!r} ({part}) must be a list of {_NOUNS[kind]}")
            limit = _INT64 if kind == "int" else 1 << 1024  # what an int64 / a float64 can hold
            big = next((x for x in v if isinstance(x, int) and not -limit <= x < limit), None)
            if big is not None:
                shown = str(big) if len(str(big)) <= 24 else f"{str(big)[:12]}... ({len(str(big))} digits)"
                raise self._fail(f"line {lineno}: field {col!r} ({part}) holds {shown}, out of range")
            out[part] = v
        return out

    def _length(self, part: str, v: list, lineno: int) -> int:
        if part == "scores" and not v:
            raise self._fail(f"line {lineno}: field {self.columns.scores!r} (scores) is empty")
        return len(v)

    def __iter__(self) -> Iterator[tuple[Chunk, int]]:
        n = self.n_items
        rows: list[dict[str, Any]] = []
        lines: list[int] = []
        start = 0
        done = 0
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                done += len(line)
                if not line.strip():
                    continue
                row = self._parse(line, lineno)
                for part, v in row.items():
                    bad = len(v) > n if part == "rankings" else len(v) != n
                    if bad:
                        need = f"at most {n}" if part == "rankings" else f"{n} (as in the first row)"
                        raise self._fail(
                            f"line {lineno}: field {getattr(self.columns, part)!r} ({part}) has {len(v)} "
                            f"values; expected {need}"
                        )
                rows.append(row)
                lines.append(lineno)
                if len(rows) == self.chunk_rows:
                    yield self._chunk(rows, lines, start), done
                    start += len(rows)
                    rows, lines, done = [], [], 0
        if rows:
            yield self._chunk(rows, lines, start), done

    def _chunk(self, rows: list[dict[str, Any]], lines: list[int], start: int) -> Chunk:
        n = self.n_items
        self._lines = {start + i: line for i, line in enumerate(lines)}
        scores = np.array([r["scores"] for r in rows], dtype=np.float64)
        rankings = ranks = mask = None
        if "rankings" in rows[0]:
            rankings = np.full((len(rows), n), -1, dtype=np.int64)
            for i, r in enumerate(rows):
                rankings[i, : len(r["rankings"])] = r["rankings"]
        if "ranks" in rows[0]:
            ranks = np.array(
                [[np.nan if x is None else x for x in r["ranks"]] for r in rows], dtype=np.float64
            )
        if "mask" in rows[0]:
            mask = np.array([r["mask"] for r in rows], dtype=np.bool_)
        return Chunk(start, scores, rankings, ranks, mask)


_INT64 = 1 << 63


def _json_ok(x: Any, kind: str, part: str) -> bool:
    if kind == "bool":
        return isinstance(x, bool)
    if isinstance(x, bool):
        return False
    if kind == "int":
        return isinstance(x, int)
    return isinstance(x, (int, float)) or (x is None and part == "ranks")
