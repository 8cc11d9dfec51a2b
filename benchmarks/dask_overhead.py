"""Overhead of prefcal.dask over the in-memory call (SPEC §9): ``prefcal.ranking.report`` on N rows of n
items in memory against ``prefcal.dask.report`` on a LocalCluster of worker processes (one thread each).

Timed separately: the cluster's start (excluded from the rest), a first call on tiny data (workers import
prefcal), moving the arrays to the workers (``persist``), the report on the persisted arrays (compute
only), and the report straight from NumPy arrays (transfer included). Each timing is the median of
``--repeats`` runs; the script checks that every level agrees with the in-memory result and prints a
markdown table.

Not collected by pytest (benchmarks/ collects ``bench_*.py``). Run::

    python benchmarks/dask_overhead.py [--rows 1000000] [--items 10] [--chunks 8] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median seconds over `repeats` runs, the last result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def largest_difference(got: Any, want: Any) -> float:
    """Largest relative difference of the levels' ECE; raises if counts or levels differ."""
    assert list(got.levels) == list(want.levels), (list(got.levels), list(want.levels))
    worst = 0.0
    for name, w in want.levels.items():
        g = got[name]
        assert g.n_events == w.n_events and g.n_skipped == w.n_skipped, name
        worst = max(worst, abs(g.ece - w.ece) / max(abs(w.ece), 1e-300))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--chunks", type=int, default=8, help="row chunks of the Dask arrays")
    ap.add_argument("--workers", type=int, default=2, help="worker processes, one thread each")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import dask
    import dask.array as da
    import distributed
    import prefcal
    import prefcal.dask

    rng = np.random.default_rng(args.seed)
    n_rows, n = args.rows, args.items
    scores = rng.normal(size=(n_rows, n))
    rankings = np.asarray(prefcal.pl.sample(scores * 1.3, seed=args.seed + 1))[:, 0]
    chunk = -(-n_rows // args.chunks)
    nbytes = scores.nbytes + rankings.nbytes

    rows: list[tuple[str, float, str]] = []
    mem_s, want = timed(lambda: prefcal.ranking.report(scores, rankings), args.repeats)
    threads = prefcal.config.get_num_threads()
    rows.append((f"in memory: `prefcal.ranking.report` ({threads} OpenMP threads)", mem_s, ""))

    # the same blocks through the mergeable states in this process, without Dask: what blocking alone changes
    groups = {
        kind: tuple(
            name for name, r in want.levels.items() if (r.kind == "classwise") == (kind == "classwise")
        )
        for kind in ("classwise", "top_label")
    }

    def blocks_here() -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for start in range(0, n_rows, chunk):
            sl = slice(start, start + chunk)
            for kind, levels in groups.items():
                state = prefcal.metrics.RankingCalibration(levels, kind, n_items=n)
                state.update(scores[sl], rankings[sl])
                merged[kind] = state if kind not in merged else merged[kind] + state
        return {name: r for state in merged.values() for name, r in state.compute().items()}

    here_s, here = timed(blocks_here, args.repeats)
    assert all(here[name].n_events == r.n_events for name, r in want.levels.items())
    rows.append(
        (f"`prefcal.metrics` states over the same {args.chunks} blocks, this process, no Dask", here_s, "")
    )

    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},
    )
    client = distributed.Client(cluster, set_as_default=False)
    startup = time.perf_counter() - t0
    try:
        tiny = da.from_array(rankings[:64], chunks=16)
        t0 = time.perf_counter()
        prefcal.dask.report(da.from_array(scores[:64], chunks=16), tiny, client=client)
        first = time.perf_counter() - t0

        s_d = da.from_array(scores, chunks=(chunk, n))
        r_d = da.from_array(rankings, chunks=(chunk, n))
        with warnings.catch_warnings():  # the NumPy chunks travel inside the graph: dask says so
            warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")

            def persist() -> tuple[Any, Any]:
                s_p, r_p = client.persist([s_d, r_d])
                with client.as_current():
                    distributed.wait([s_p, r_p])
                return s_p, r_p

            transfer, (s_p, r_p) = timed(persist, 1)
            compute_s, got = timed(lambda: prefcal.dask.report(s_p, r_p, client=client), args.repeats)
            diff_persisted = largest_difference(got, want)
            e2e_s, got = timed(lambda: prefcal.dask.report(s_d, r_d, client=client), args.repeats)
            diff_numpy = largest_difference(got, want)
    finally:
        client.close()
        cluster.close()

    def ratio(t: float) -> str:
        return f"{t / mem_s:.2f}x"

    rows[1] = (rows[1][0], rows[1][1], ratio(rows[1][1]))

    label = f"{args.workers} workers x 1 thread, {args.chunks} chunks"
    rows += [
        (f"`prefcal.dask.report` on persisted arrays ({label})", compute_s, ratio(compute_s)),
        (f"`prefcal.dask.report` from NumPy, transfer included ({label})", e2e_s, ratio(e2e_s)),
        (f"moving the arrays to the workers (`persist`, {nbytes / 1e6:.0f} MB, once)", transfer, ""),
        ("cluster start (excluded above)", startup, ""),
        ("first call, 64 rows (workers import prefcal; excluded above)", first, ""),
    ]
    print(
        f"N = {n_rows:,} rows x {n} items, levels {', '.join(want.levels)}; {os.cpu_count()} CPU cores; "
        f"median of {args.repeats}; dask {dask.__version__}, distributed {distributed.__version__}, "
        f"prefcal {prefcal.__version__}\n"
    )
    print("| what | seconds | rows/s | vs in memory |")
    print("| --- | ---: | ---: | ---: |")
    for what, sec, r in rows:
        rate = f"{n_rows / sec:,.0f}" if r or what.startswith(("in memory", "`prefcal.metrics`")) else ""
        print(f"| {what} | {sec:.3f} | {rate} | {r} |")
    print(
        f"\nresults agree with the in-memory report: largest relative ECE difference {diff_persisted:.1e} "
        f"(persisted), {diff_numpy:.1e} (from NumPy); event and skip counts equal"
    )


if __name__ == "__main__":
    main()
