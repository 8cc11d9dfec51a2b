"""``prefcal bench``: kernel throughput on this machine, against its measured copy bandwidth (SPEC §10).

Each kernel runs a few times on synthetic data; the table shows the median time, rows/s, the input bytes per
second (each input byte read once) and that rate as a share of the memory copy bandwidth measured in the same
run (bytes read + written by a large copy). ``--device cuda`` runs the same kernels on CuPy arrays when CuPy
and a CUDA device are present. ``--scale`` multiplies every size (0.1 for a quick look).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import calibration, marginals, pl, ranking


def _median_s(fn: Callable[[], Any], reps: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(
    device: str = "cpu", scale: float = 1.0, reps: int = 5, echo: Callable[[str], None] = print
) -> list[dict]:
    """Runs the kernels and returns one record per kernel (also printed through ``echo``)."""
    xp: Any = np
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if device == "cuda":
        import cupy

        xp = cupy
        sync = cupy.cuda.get_current_stream().synchronize

    def size(n: int) -> int:
        return max(1000, int(n * scale))

    rng = np.random.default_rng(0)
    records = []
    copy_n = size(50_000_000) if device == "cpu" else size(1 << 30)
    src = xp.ones(copy_n, dtype=xp.uint8)
    dst = xp.empty_like(src)
    copy_s = _median_s(lambda: xp.copyto(dst, src), reps, sync)
    copy_bw = 2 * copy_n / copy_s

    n_ece = size(10_000_000)
    conf = xp.asarray(rng.random(n_ece, dtype=np.float32))
    correct = xp.asarray(rng.random(n_ece) < 0.5)
    n_pl = size(1_000_000)
    scores = rng.normal(size=(n_pl, 10))
    orders = np.asarray(pl.sample(scores, seed=1))[:, 0]
    s_x, o_x = xp.asarray(scores), xp.asarray(orders)
    n_rank = size(200_000)
    n_marg = size(10_000)
    cases = [
        ("ECE, float32 + bool", n_ece, 5 * n_ece, lambda: calibration.ece(conf, correct)),
        ("PL log-likelihood, 10 items", n_pl, s_x.nbytes + o_x.nbytes, lambda: pl.log_likelihood(s_x, o_x)),
        ("PL sampling, 10 items", n_pl, s_x.nbytes, lambda: pl.sample(s_x, seed=2)),
        (
            "marginals exact, 8 items",
            n_marg,
            n_marg * 8 * 8,
            lambda: marginals.positions(scores[:n_marg, :8]),
        ),
        (
            "classwise sub-3 ECE, 10 items",
            n_rank,
            n_rank * 160,
            lambda: ranking.subranking_ece(scores[:n_rank], orders[:n_rank], 3),
        ),
    ]
    echo(
        f"prefcal bench on {device}: copy bandwidth {copy_bw / 1e9:.1f} GB/s (read + write), median of {reps}"
    )
    echo(f"{'kernel':32s} {'rows':>11s} {'ms':>9s} {'Mrows/s':>9s} {'GB/s':>7s} {'% copy':>7s}")
    for name, rows, nbytes, fn in cases:
        sec = _median_s(fn, reps, sync)
        rec = {
            "kernel": name,
            "rows": rows,
            "ms": sec * 1e3,
            "rows_per_s": rows / sec,
            "GBps": nbytes / sec / 1e9,
            "copy_share": nbytes / sec / copy_bw,
        }
        records.append(rec)
        echo(
            f"{name:32s} {rows:11d} {sec * 1e3:9.2f} {rows / sec / 1e6:9.1f} {nbytes / sec / 1e9:7.2f} "
            f"{100 * rec['copy_share']:6.1f}%"
        )
    return records
