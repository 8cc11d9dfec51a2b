"""Collects what each benchmark moved and prints rows/s, GB/s and ratios at the end of the run.

Every benchmark calls ``record(benchmark, group, name, rows, nbytes)`` after running; the summary reports,
per group, the median time, rows/s, GB/s (input bytes read once / median), the ratio of every entry to the
prefcal entry of the group, and the share of the memory copy bandwidth measured in the same run.
"""

from __future__ import annotations

from typing import Any

import pytest

RESULTS: list[dict[str, Any]] = []


def record(benchmark: Any, group: str, name: str, rows: int, nbytes: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: the function ran once, nothing was timed
        return
    median = stats.stats.median
    benchmark.extra_info.update({"rows": rows, "bytes": nbytes, "rows_per_s": rows / median, "GBps": nbytes / median / 1e9})
    RESULTS.append({"group": group, "name": name, "median_s": median, "rows": rows, "bytes": nbytes})


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    copy = [r for r in RESULTS if r["group"] == "copy"]
    copy_bw = copy[0]["bytes"] / copy[0]["median_s"] if copy else None
    tr = terminalreporter
    tr.section("prefcal benchmark summary (medians)")
    if copy_bw:
        tr.write_line(f"memory copy bandwidth in this run: {copy_bw / 1e9:.1f} GB/s (read + write)")
    tr.write_line(f"{'group':14s} {'entry':34s} {'ms':>9s} {'Mrows/s':>9s} {'GB/s':>7s} {'% copy':>7s} {'x prefcal':>9s}")
    for group in dict.fromkeys(r["group"] for r in RESULTS if r["group"] != "copy"):
        rows = [r for r in RESULTS if r["group"] == group]
        ours = next((r for r in rows if r["name"].startswith("prefcal")), None)
        for r in rows:
            gbps = r["bytes"] / r["median_s"]
            pct = f"{100 * gbps / copy_bw:6.1f}%" if copy_bw else "      -"
            ratio = f"{r['median_s'] / ours['median_s']:9.1f}" if ours else "        -"
            tr.write_line(
                f"{group:14s} {r['name']:34s} {r['median_s'] * 1e3:9.2f} {r['rows'] / r['median_s'] / 1e6:9.1f} "
                f"{gbps / 1e9:7.2f} {pct} {ratio}"
            )


@pytest.fixture(scope="session")
def recorder():
    return record


def copy_bandwidth(benchmark: Any, recorder: Any) -> None:
    """The machine's memory copy bandwidth (the floor every bandwidth-bound kernel is compared with)."""
    import numpy as np

    src = np.ones(50_000_000, dtype=np.uint8)
    dst = np.empty_like(src)
    benchmark.group = "copy"
    benchmark(np.copyto, dst, src)
    recorder(benchmark, "copy", "np.copyto 50 MB", src.size, 2 * src.nbytes)
