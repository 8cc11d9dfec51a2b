"""``prefcal evaluate`` on a large Parquet file: peak RSS, time, and the ratio to the in-memory kernels.

    python benchmarks/evaluate_scale.py [--rows 10000000] [--items 10] [--dir /tmp/prefcal-scale] [--keep]

Writes a Parquet file of ``rows`` synthetic rows (scores: list<float32>, rankings: list<int16>, drawn from a
PL model; a third of them top-3 partial orderings) in row groups of 2^20, then measures, each in a fresh
subprocess so that peak RSS (ru_maxrss) is its own:

* ``decode``: reading the file through prefcal's chunked Parquet reader alone (no calibration);
* ``evaluate``: ``prefcal evaluate FILE`` (default levels; chunked, as a user runs it);
* ``in memory``: ``prefcal.ranking.report`` on the whole arrays at once (loaded from a ``.npy`` copy; the
  load is timed apart).

Prints a markdown table (seconds, rows/s, peak RSS) for benchmarks/RESULTS.md. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np
mode, d, levels = sys.argv[1], sys.argv[2], sys.argv[3]
levels = tuple(levels.split(",")) if levels else None
t0 = time.perf_counter()
out = {}
if mode == "decode":
    from prefcal import _io
    r = _io.open_reader(d + "/data.parquet", _io.Columns(rankings="rankings"), int(sys.argv[4]))
    out["rows"] = sum(c.n_rows for c, _ in r)
elif mode == "evaluate":  # the command, as a user runs it
    from prefcal import cli
    args = ["evaluate", d + "/" + sys.argv[5], "--out", d + "/report", "--no-progress"]
    args += ["--chunk-rows", sys.argv[4]]
    assert cli.main(args + (["--levels", *levels] if levels else [])) == 0
    with open(d + "/report/report.json") as f:
        out["ece"] = {k: v["ece"] for k, v in json.load(f)["levels"].items()}
elif mode == "memory":
    import prefcal
    m = int(sys.argv[5])
    s = np.array(np.load(d + "/scores.npy", mmap_mode="r")[:m])
    r = np.array(np.load(d + "/rankings.npy", mmap_mode="r")[:m])
    out["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = prefcal.ranking.report(s.astype(np.float64), r, levels=levels)
    out["ece"] = {k: v.ece for k, v in rep.levels.items()}
out["seconds"] = time.perf_counter() - t0
# peak RSS of this process image: VmHWM (ru_maxrss would carry the parent's peak across fork + exec)
with open("/proc/self/status") as f:
    out["maxrss_mb"] = next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024
print(json.dumps(out))
"""


def make(d: str, rows: int, n: int, seed: int = 0) -> None:
    import prefcal
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    scores = np.lib.format.open_memmap(f"{d}/scores.npy", "w+", np.float32, (rows, n))
    rankings = np.lib.format.open_memmap(f"{d}/rankings.npy", "w+", np.int16, (rows, n))
    schema = pa.schema([("scores", pa.list_(pa.float32())), ("rankings", pa.list_(pa.int16()))])
    group = 1 << 20
    with pq.ParquetWriter(f"{d}/data.parquet", schema) as w:
        for a in range(0, rows, group):
            b = min(rows, a + group)
            s = rng.normal(size=(b - a, n)).astype(np.float32)
            r = np.asarray(prefcal.pl.sample(1.3 * s.astype(np.float64), seed=seed + 1 + a))[:, 0]
            r = r.astype(np.int16)
            r[::3, 3:] = -1
            scores[a:b], rankings[a:b] = s, r
            lengths = (r >= 0).sum(axis=1)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            s_col = pa.ListArray.from_arrays(
                pa.array(np.arange(0, (b - a) * n + 1, n, dtype=np.int32)), pa.array(s.ravel())
            )
            r_col = pa.ListArray.from_arrays(pa.array(offsets), pa.array(r[r >= 0]))
            w.write_table(pa.table({"scores": s_col, "rankings": r_col}, schema=schema), row_group_size=group)
    scores.flush()
    rankings.flush()


def child(mode: str, d: str, levels: str, chunk: int, rows: int | str = 0) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, d, levels, str(chunk), str(rows)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def head(d: str, m: int) -> str:
    """The first m rows of data.parquet as a file of their own."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(f"{d}/data.parquet")
    parts, rows = [], 0
    for i in range(f.num_row_groups):
        t = f.read_row_group(i)
        parts.append(t.slice(0, m - rows))
        rows += parts[-1].num_rows
        if rows == m:
            break
    import pyarrow as pa

    pq.write_table(pa.concat_tables(parts), f"{d}/head.parquet")
    return "head.parquet"


def evaluate(d: str, levels: str, chunk: int, file: str = "data.parquet") -> dict:
    return child("evaluate", d, levels, chunk, file)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--dir", default="/tmp/prefcal-scale")
    ap.add_argument("--levels", default="", help="comma-separated levels (default: the report's)")
    ap.add_argument("--chunk-rows", type=int, default=1 << 16)
    ap.add_argument(
        "--memory-rows",
        type=int,
        default=2_000_000,
        help="rows of the in-memory run (its peak RSS is ~4 GB per 10^6 rows x 10 items)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the files (default: delete them)")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    t0 = time.perf_counter()
    if not os.path.exists(f"{args.dir}/data.parquet"):
        make(args.dir, args.rows, args.items)
    print(
        f"data: {args.rows:,} x {args.items} in {time.perf_counter() - t0:.1f} s; Parquet "
        f"{os.path.getsize(f'{args.dir}/data.parquet') / 1e6:.0f} MB",
        flush=True,
    )
    dec = child("decode", args.dir, args.levels, args.chunk_rows)
    print("decode", dec, flush=True)
    ev = evaluate(args.dir, args.levels, args.chunk_rows)  # runs before any big child: its RSS is its own
    print("evaluate", ev, flush=True)
    m = min(args.rows, args.memory_rows)
    mem = child("memory", args.dir, args.levels, args.chunk_rows, m)
    ref = evaluate(args.dir, args.levels, args.chunk_rows, head(args.dir, m)) if m < args.rows else ev
    print("memory", mem, flush=True)
    worst = max(abs(ref["ece"][k] - mem["ece"][k]) for k in mem["ece"])
    n = args.rows
    print("\n| what | seconds | rows/s | peak RSS (MB) |\n|---|---|---|---|")
    print(
        f"| decode Parquet (chunks of {args.chunk_rows}) | {dec['seconds']:.1f} | {n / dec['seconds']:,.0f} "
        f"| {dec['maxrss_mb']:.0f} |"
    )
    print(
        f"| prefcal evaluate (whole command) | {ev['seconds']:.1f} | {n / ev['seconds']:,.0f} "
        f"| {ev['maxrss_mb']:.0f} |"
    )
    print(
        f"| ranking.report in memory, first {m:,} rows (load {mem['load_s']:.1f} s apart) | "
        f"{mem['seconds']:.1f} | {m / mem['seconds']:,.0f} | {mem['maxrss_mb']:.0f} |"
    )
    ratio = (m / mem["seconds"]) / (n / ev["seconds"])
    print(
        f"\nin-memory rows/s / evaluate rows/s: {ratio:.2f}; largest ECE difference, evaluate of the same "
        f"{m:,} rows vs in memory: {worst:.1e}"
    )
    if not args.keep:
        for f in ("data.parquet", "head.parquet", "scores.npy", "rankings.npy"):
            if os.path.exists(f"{args.dir}/{f}"):
                os.remove(f"{args.dir}/{f}")


if __name__ == "__main__":
    main()
