"""``prefcal evaluate``: chunked readers of Parquet, .npz and JSON Lines; the report equals the in-memory
``ranking.report``; every bad input gives one line on stderr, a non-zero exit and the row (or line) at
fault."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import prefcal
import pytest
from prefcal import _io, cli, evaluate, ranking

FORMATS = ["parquet", "npz", "jsonl"]


def _json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _data(rng, n_rows=1500, n=5, partial=True, ranks=False, mask=False):
    s = rng.normal(size=(n_rows, n))
    r = np.asarray(prefcal.pl.sample(1.5 * s, seed=int(rng.integers(1 << 30))))[:, 0]
    if partial:
        r[::3, 2:] = -1
    d = {"scores": s, "rankings": r}
    if ranks:
        rk = np.argsort(r, axis=1).astype(np.float64)  # the rank of each item
        rk[rng.random(rk.shape) < 0.2] = np.nan
        d = {"scores": s, "ranks": rk}
    if mask:
        m = np.ones((n_rows, n), dtype=bool)
        m[1::2, -1] = False
        s2 = s.copy()
        rr = np.asarray(prefcal.pl.sample(s, seed=3))[:, 0]
        # rows without the last item: drop it from the ordering and pad
        for i in range(1, n_rows, 2):
            row = rr[i][rr[i] != n - 1]
            rr[i] = np.concatenate([row, [-1]])
        d = {"scores": s2, "rankings": rr, "mask": m}
    return d


def _write(tmp_path, fmt, d, name="data"):
    path = str(tmp_path / f"{name}.{fmt}")
    if fmt == "npz":
        np.savez(path, **d)
    elif fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        cols = {}
        for k, v in d.items():
            if k == "rankings":
                cols[k] = pa.array([list(map(int, row[row >= 0])) for row in v], type=pa.list_(pa.int32()))
            elif k == "ranks":
                cols[k] = pa.array([[None if np.isnan(x) else float(x) for x in row] for row in v])
            else:
                cols[k] = pa.array([list(row) for row in v.tolist()])
        pq.write_table(pa.table(cols), path, row_group_size=400)
    else:
        with open(path, "w") as f:
            for i in range(len(d["scores"])):
                obj = {}
                for k, v in d.items():
                    row = v[i]
                    if k == "rankings":
                        obj[k] = [int(x) for x in row[row >= 0]]
                    elif k == "ranks":
                        obj[k] = [None if np.isnan(x) else float(x) for x in row]
                    else:
                        obj[k] = row.tolist()
                f.write(json.dumps(obj) + "\n")
                if i % 97 == 0:
                    f.write("\n")  # blank lines are skipped
    return path


def _same(doc, rep):
    assert set(doc["levels"]) == set(rep.levels)
    for name, want in rep.levels.items():
        got = doc["levels"][name]
        assert got["kind"] == want.kind
        assert got["ece"] == pytest.approx(want.ece, rel=1e-10, abs=1e-13), name
        assert got["n_skipped"] == want.n_skipped
        if "classes" in got:
            assert [c["count"] for c in got["classes"]] == [c["count"] for c in want.classes]
        else:
            assert got["reliability"]["count"] == want.reliability.to_dict()["count"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_in_memory_report(tmp_path, rng, fmt):
    d = _data(rng)
    path = _write(tmp_path, fmt, d)
    doc = evaluate.run(path, chunk_rows=333, out=str(tmp_path / "out"), echo=lambda *a: None)
    _same(doc, ranking.report(d["scores"], d["rankings"]))
    assert doc["input"]["rows"] == 1500 and doc["input"]["items"] == 5 and doc["input"]["format"] == fmt
    on_disk = _json(tmp_path / "out" / "report.json")
    assert on_disk["prefcal"] == prefcal.__version__ and set(on_disk["levels"]) == set(doc["levels"])
    assert "| sub2 | classwise |" in (tmp_path / "out" / "report.md").read_text()
    if _has("matplotlib"):
        assert os.path.getsize(tmp_path / "out" / "reliability.png") > 10_000


@pytest.mark.parametrize("fmt", FORMATS)
def test_observed_ranks_with_unknowns(tmp_path, rng, fmt):
    d = _data(rng, 900, 4, ranks=True)
    path = _write(tmp_path, fmt, d)
    doc = evaluate.run(path, chunk_rows=256, out=None, echo=lambda *a: None)
    assert doc["input"]["columns"] == {"scores": "scores", "ranks": "ranks"}
    _same(doc, ranking.report(d["scores"], observed_ranks=d["ranks"]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_mask_column(tmp_path, rng, fmt):
    d = _data(rng, 600, 4, mask=True)
    path = _write(tmp_path, fmt, d)
    cols = evaluate.Columns(rankings="rankings", mask="mask")
    doc = evaluate.run(path, cols, chunk_rows=250, out=None, echo=lambda *a: None)
    want = ranking.report(ranking.PL(d["scores"], d["mask"]), d["rankings"])
    _same(doc, want)
    # a column named mask is the choice sets by default, as rankings / ranks are the observations
    _same(evaluate.run(path, None, chunk_rows=250, out=None, echo=lambda *a: None), want)
    _same(evaluate.run(path, evaluate.Columns(rankings="rankings"), out=None, echo=lambda *a: None), want)


def test_options_levels_bins_kind(tmp_path, rng):
    d = _data(rng, 800, 5)
    path = _write(tmp_path, "npz", d)
    out = tmp_path / "o"
    code = cli.main(
        [
            "evaluate",
            path,
            "--levels",
            "sub2",
            "top1",
            "top2_set",
            "--bins",
            "7",
            "--kind",
            "top_label",
            "--chunk-rows",
            "100",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    doc = _json(out / "report.json")
    s, r = d["scores"], d["rankings"]
    want = {
        "sub2": ranking.subranking_ece(s, r, 2, kind="top_label", n_bins=7),
        "top1": ranking.topk_ece(s, r, 1, kind="top_label", n_bins=7),
        "top2_set": ranking.topk_ece(s, r, 2, kind="top_label", ordered=False, n_bins=7),
    }
    for name, w in want.items():
        assert doc["levels"][name]["ece"] == pytest.approx(w.ece, rel=1e-10, abs=1e-13)
        assert doc["levels"][name]["reliability"]["count"] == w.reliability.to_dict()["count"]


def test_other_column_names_and_format_flag(tmp_path, rng):
    d = _data(rng, 300, 4)
    path = str(tmp_path / "weird.bin")
    np.savez(tmp_path / "tmp.npz", s=d["scores"], order=d["rankings"].astype(np.int16))
    os.rename(tmp_path / "tmp.npz", path)
    code = cli.main(
        [
            "evaluate",
            path,
            "--format",
            "npz",
            "--scores",
            "s",
            "--rankings",
            "order",
            "--out",
            str(tmp_path / "o"),
            "--levels",
            "sub2",
        ]
    )
    assert code == 0
    doc = _json(tmp_path / "o" / "report.json")
    assert doc["levels"]["sub2"]["ece"] == pytest.approx(
        ranking.subranking_ece(d["scores"], d["rankings"]).ece
    )


def test_npz_compressed_fortran_and_short_rankings(tmp_path, rng):
    d = _data(rng, 500, 5, partial=False)
    top2 = np.ascontiguousarray(d["rankings"][:, :2])
    path = str(tmp_path / "c.npz")
    np.savez_compressed(path, scores=np.asfortranarray(d["scores"]).astype(np.float32), rankings=top2)
    doc = evaluate.run(path, chunk_rows=77, out=None, echo=lambda *a: None)
    # top-2 observations decide no event of the full ordering: that default level is left out
    assert doc["omitted_levels"] == ["full"]
    s32 = d["scores"].astype(np.float32).astype(np.float64)
    _same(doc, ranking.report(s32, top2, levels=("sub2", "sub3", "top1", "top2", "positions")))
    with pytest.raises(ValueError, match="undetermined"):  # asked for by name: an error
        evaluate.run(path, levels=("full",), out=None, echo=lambda *a: None)


def test_chunks_are_bounded(tmp_path, rng):
    d = _data(rng, 1000, 4)
    for fmt in FORMATS:
        reader = _io.open_reader(_write(tmp_path, fmt, d), _io.Columns(rankings="rankings"), 128)
        sizes = [c.n_rows for c, _ in reader]
        reader.close()
        assert max(sizes) <= 128 and sum(sizes) == 1000, fmt


def test_progress_bar(tmp_path, rng, capsys, monkeypatch):
    path = _write(tmp_path, "npz", _data(rng, 400, 4))
    assert (
        cli.main(["evaluate", path, "--progress", "--chunk-rows", "100", "--out", str(tmp_path / "a")]) == 0
    )
    err = capsys.readouterr().err
    assert "evaluate" in err and "400" in err
    monkeypatch.setitem(sys.modules, "tqdm", None)  # without tqdm: the plain counter
    assert (
        cli.main(["evaluate", path, "--progress", "--chunk-rows", "100", "--out", str(tmp_path / "b")]) == 0
    )
    assert "evaluate: 100 rows" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bad input
def _fails(capsys, args, *needles, code=1):
    assert cli.main(["evaluate", *args, "--no-progress"]) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_missing_and_empty_files(tmp_path, capsys):
    _fails(capsys, [str(tmp_path / "nope.parquet")], "no such file")
    for ext in ("parquet", "npz", "jsonl"):
        p = tmp_path / f"empty.{ext}"
        p.write_bytes(b"")
        _fails(capsys, [str(p)], "the file is empty")
    _fails(capsys, [str(tmp_path)], "cannot tell the format")
    _fails(capsys, [str(tmp_path), "--format", "npz"], "is a directory")
    (tmp_path / "x.csv").write_text("a,b\n")
    _fails(capsys, [str(tmp_path / "x.csv")], "cannot tell the format", "--format")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    _fails(capsys, [str(blank)], "no rows")


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_files(tmp_path, capsys, fmt, rng):
    p = tmp_path / f"junk.{fmt}"
    p.write_bytes(bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    line = _fails(capsys, [str(p)], str(p))
    assert any(w in line for w in ("not a readable", "not valid JSON", "corrupt"))


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_truncated_files(tmp_path, capsys, fmt, rng):
    path = _write(tmp_path, fmt, _data(rng, 3000, 5))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    _fails(capsys, [path, "--chunk-rows", "500"], path)


def test_npz_member_truncated_inside(tmp_path, capsys, rng):
    # a well-formed zip whose scores.npy promises more rows than it holds
    d = _data(rng, 200, 4)
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as zf:
        hdr = np.lib.format
        for name, arr, rows in (("scores", d["scores"], 300), ("rankings", d["rankings"], 300)):
            with zf.open(name + ".npy", "w") as f:
                hdr.write_array_header_1_0(
                    f,
                    {
                        "descr": hdr.dtype_to_descr(arr.dtype),
                        "fortran_order": False,
                        "shape": (rows, arr.shape[1]),
                    },
                )
                f.write(arr.tobytes())
    _fails(capsys, [str(path), "--chunk-rows", "64"], "corrupt or truncated near row 192", "ends early")


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_columns(tmp_path, capsys, rng, fmt):
    path = _write(tmp_path, fmt, _data(rng, 50, 4))
    _fails(capsys, [path, "--scores", "logits"], "'logits'", "scores")
    _fails(capsys, [path, "--ranks", "r"], "'r'", "ranks")
    _fails(capsys, [path, "--rankings", "rankings", "--mask", "avail"], "'avail'")
    only = {"scores": np.zeros((3, 3))}
    path2 = _write(tmp_path, fmt, only, name="noobs")
    _fails(capsys, [path2], "no 'rankings' or 'ranks' column", "--rankings COL")


def test_wrong_column_types(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = str(tmp_path / "t.parquet")
    pq.write_table(pa.table({"scores": ["a", "b"], "rankings": [[0, 1], [1, 0]]}), p)
    _fails(capsys, [p], "column 'scores'", "type string", "list of numbers")
    pq.write_table(pa.table({"scores": [[0.1, 0.2], [0.3, 0.1]], "rankings": [[0.0, 1.0], [1.0, 0.0]]}), p)
    _fails(capsys, [p], "column 'rankings'", "list of integers")
    pq.write_table(pa.table({"scores": [[0.1, 0.2], [0.3, 0.1]], "rankings": [["x"], ["y"]]}), p)
    _fails(capsys, [p], "column 'rankings'", "list<")
    n = str(tmp_path / "t.npz")
    np.savez(n, scores=np.array([["a", "b"]]), rankings=np.array([[0, 1]]))
    _fails(capsys, [n], "array 'scores'", "dtype <U1", "numbers")
    np.savez(n, scores=np.zeros((2, 3)), rankings=np.zeros((2, 3)))
    _fails(capsys, [n], "array 'rankings'", "dtype float64", "integers")
    np.savez(n, scores=np.zeros(3), rankings=np.zeros((1, 3), dtype=int))
    _fails(capsys, [n], "shape (3,)")
    np.savez(n, scores=np.zeros((2, 3)), rankings=np.zeros((3, 3), dtype=int))
    _fails(capsys, [n], "different numbers of rows")
    np.savez(n, scores=np.zeros((2, 3)), ranks=np.zeros((2, 4)))
    _fails(capsys, [n], "4 columns; scores has 3")
    j = tmp_path / "t.jsonl"
    j.write_text('{"scores": [0.1, 0.2], "rankings": [0, 1]}\n{"scores": "oops", "rankings": [0, 1]}\n')
    _fails(capsys, [str(j)], "line 2", "'scores'", "list of numbers")
    j.write_text('{"scores": [0.1, 0.2], "rankings": [0, 1]}\n[1, 2]\n')
    _fails(capsys, [str(j)], "line 2", "JSON object")
    j.write_text(
        '{"scores": [0.1, 0.2], "rankings": [0, 1]}\n{"scores": [0.1, 0.2], "rankings": [0, true]}\n'
    )
    _fails(capsys, [str(j)], "line 2", "list of integers")


def test_ragged_and_null_rows(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = str(tmp_path / "t.parquet")
    pq.write_table(pa.table({"scores": [[0.1, 0.2, 0.3]] * 5 + [[0.1, 0.2]], "rankings": [[0, 1]] * 6}), p)
    _fails(capsys, [p, "--chunk-rows", "4"], "row 5", "has 2 values; expected 3")
    pq.write_table(pa.table({"scores": [[0.1, 0.2, 0.3]] * 6, "rankings": [[0, 1]] * 4 + [None, [0]]}), p)
    _fails(capsys, [p, "--chunk-rows", "4"], "row 4", "is null")
    pq.write_table(
        pa.table({"scores": [[0.1, 0.2, 0.3]] * 3 + [[0.1, None, 0.3]], "rankings": [[0, 1]] * 4}), p
    )
    _fails(capsys, [p, "--chunk-rows", "2"], "row 3", "null value")
    pq.write_table(pa.table({"scores": [[0.1, 0.2, 0.3]] * 3, "rankings": [[0, 1, 2, 0]] * 3}), p)
    _fails(capsys, [p], "row 0", "4 values; expected at most 3")
    j = tmp_path / "t.jsonl"
    j.write_text('{"scores": [0.1, 0.2], "rankings": [0, 1]}\n\n{"scores": [0.1], "rankings": [0]}\n')
    _fails(capsys, [str(j)], "line 3", "1 values; expected 2")


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_ranking_row_names_the_row_of_the_file(tmp_path, capsys, rng, fmt):
    d = _data(rng, 700, 5, partial=False)
    d["rankings"][523, 1] = d["rankings"][523, 0]  # a repeated item, in the 3rd chunk of 250
    path = _write(tmp_path, fmt, d)
    line = _fails(capsys, [path, "--chunk-rows", "250"], "rankings[523] repeats item")
    if fmt == "jsonl":
        assert "line " in line and "(row 523)" in line
    else:
        assert ": row 523: " in line
    d = _data(rng, 700, 5, partial=False)
    d["scores"][611, 2] = np.inf
    path = _write(tmp_path, fmt, d, name="inf")
    _fails(capsys, [path, "--chunk-rows", "250"], "scores contains inf at [611, 2]")
    d = _data(rng, 700, 5, partial=False)
    d["rankings"][7, 4] = 9
    path = _write(tmp_path, fmt, d, name="range")
    _fails(capsys, [path, "--chunk-rows", "250"], "rankings[7, 4] = 9")


def test_bad_options(tmp_path, capsys, rng):
    path = _write(tmp_path, "npz", _data(rng, 50, 4))
    _fails(capsys, [path, "--levels", "sub9"], "sub9", code=2)
    _fails(capsys, [path, "--levels", "nonsense"], "unknown level", code=2)
    _fails(capsys, [path, "--bins", "0"], "n_bins", code=2)
    _fails(capsys, [path, "--chunk-rows", "0"], "chunk_rows", code=2)
    with pytest.raises(SystemExit):  # argparse: both observation columns
        cli.main(["evaluate", path, "--rankings", "a", "--ranks", "b"])
    capsys.readouterr()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(evaluate.InputError, match="no such file"):
        cli.main(["evaluate", str(tmp_path / "nope.npz"), "--debug"])


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "prefcal.cli", "evaluate", str(tmp_path / "nope.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == f"prefcal evaluate: error: {tmp_path / 'nope.jsonl'}: no such file"


# ------------------------------------------------------------------------------------------------ device
def test_device_cuda_on_the_gpu_equals_cpu(tmp_path, rng):
    """--device cuda runs the chunks through CuPy arrays (the CUDA kernels) with the CPU's result."""
    from conftest import skip_reason

    reason = skip_reason("cupy")
    if reason:
        pytest.skip(reason)
    d = _data(rng, 3000, 6)
    path = _write(tmp_path, "npz", d)
    gpu = evaluate.run(path, device="cuda", chunk_rows=1000, out=None, echo=lambda *a: None)
    cpu = evaluate.run(path, device="cpu", chunk_rows=1000, out=None, echo=lambda *a: None)
    for name, want in cpu["levels"].items():
        assert gpu["levels"][name]["ece"] == pytest.approx(want["ece"], rel=1e-9, abs=1e-12), name


def test_device_cuda_without_cupy_is_a_clear_error(tmp_path, rng, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as on a machine without CuPy
    path = _write(tmp_path, "npz", _data(rng, 50, 4))
    _fails(capsys, [path, "--device", "cuda"], "--device cuda needs CuPy and a CUDA device", code=2)


def test_integers_too_large_for_the_arrays(tmp_path, capsys):
    """uint64 items past int64 would wrap to -1 (padding) and be accepted; JSON integers past int64 (or
    float64, for scores) used to end in an OverflowError naming no line."""
    s = np.zeros((3, 3))
    r = np.array([[0, 1, 2], [2, 1, 0], [1, 2**64 - 1, 0]], dtype=np.uint64)
    npz = str(tmp_path / "u.npz")
    np.savez(npz, scores=s, rankings=r)
    _fails(capsys, [npz, "--out", str(tmp_path / "o")], "row 2", "18446744073709551615, out of range")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = str(tmp_path / "u.parquet")
    pq.write_table(
        pa.table(
            {"scores": pa.array(s.tolist()), "rankings": pa.array(r.tolist(), type=pa.list_(pa.uint64()))}
        ),
        path,
    )
    _fails(capsys, [path, "--out", str(tmp_path / "o")], "row 2", "18446744073709551615, out of range")
    js = tmp_path / "big.jsonl"
    js.write_text(
        '{"scores": [0, 1, 2], "rankings": [0, 1, 2]}\n'
        '{"scores": [1e20, 0, 100000000000000000000], "rankings": [2, 1, 0]}\n'
        '{"scores": [0, 1, 2], "rankings": [0, 18446744073709551616]}\n'
    )
    _fails(capsys, [str(js), "--out", str(tmp_path / "o")], "line 3", "18446744073709551616, out of range")
    first = '{"scores": [0, 1, 2], "rankings": [0, 1, 2]}\n'
    js.write_text(first + '{"scores": [0, 1, ' + "9" * 400 + '], "rankings": [0]}\n')
    _fails(capsys, [str(js), "--out", str(tmp_path / "o")], "line 2", "(400 digits), out of range")

