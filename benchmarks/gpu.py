"""GPU benchmark: binned ECE on CUDA against the device's copy bandwidth, torchmetrics and torch.bincount.

Run on a machine with a CUDA GPU, torch and (optionally) CuPy:

    python benchmarks/gpu.py [--n 100000000] [--json out.json]

Timings are medians of repeated runs measured with CUDA events (device work) or with a host clock around a
synchronised call (end to end, Python included). Bytes counted: every input byte read once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def events_ms(torch, fn, reps: int = 20, warmup: int = 3) -> float:
    """Median device time of fn() in milliseconds (CUDA events on the current stream)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def wall_ms(torch, fn, reps: int = 20, warmup: int = 3) -> float:
    """Median wall time of a synchronised call, in milliseconds."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def copy_bandwidth(torch, nbytes: int = 2**30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = events_ms(torch, lambda: dst.copy_(src), reps=30)
    return 2 * nbytes / (ms * 1e-3)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10**8)
    ap.add_argument("--bins", type=int, default=15)
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", action="store_true", help="profile the Python layers of small calls")
    args = ap.parse_args()

    import prefcal
    import torch
    from prefcal import _backend

    if not torch.cuda.is_available() or not prefcal.backends()["cuda"]["available"]:
        print("no usable GPU:", prefcal.backends()["cuda"].get("reason"))
        return 1
    cuda = _backend.cuda_module()
    dev = torch.cuda.get_device_properties(0)
    n, B = args.n, args.bins
    results: dict = {"device": dev.name, "n": n, "bins": B, "prefcal": prefcal.__version__, "torch": torch.__version__}
    bw = copy_bandwidth(torch)
    results["copy_GBps"] = bw / 1e9
    print(f"device: {dev.name}, {dev.multi_processor_count} SMs; copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")

    g = torch.Generator(device="cuda").manual_seed(1234)
    conf = torch.rand(n, device="cuda", generator=g)
    correct = (torch.rand(n, device="cuda", generator=g) < conf**1.3).to(torch.uint8)
    nbytes = conf.numel() * 4 + correct.numel()
    stream = torch.cuda.current_stream().cuda_stream
    cptr, yptr = (conf.data_ptr(), "|f4"), (correct.data_ptr(), "|u1")

    rows = []

    def row(name: str, ms: float, bytes_: int, note: str = "") -> None:
        gbps = bytes_ / (ms * 1e-3) / 1e9
        rows.append({"name": name, "ms": ms, "GBps": gbps, "pct_copy": 100 * gbps * 1e9 / bw, "note": note})

    # prefcal: kernels only (CUDA events inside the extension), and end to end from Python.
    plan = cuda.describe_bin_uniform(cptr, yptr, None, n, B, 0)
    k_ms = cuda.time_bin_uniform(cptr, yptr, None, n, B, 50, stream, 0)
    row("prefcal ece kernels (f32+u8)", k_ms, nbytes, plan)
    e2e = wall_ms(torch, lambda: prefcal.ece(conf, correct, n_bins=B))
    row("prefcal.ece(torch cuda) end to end", e2e, nbytes)
    try:
        import cupy

        cc, cy = cupy.from_dlpack(conf), cupy.from_dlpack(correct)
        row("prefcal.ece(cupy) end to end", wall_ms(torch, lambda: prefcal.ece(cc, cy, n_bins=B)), nbytes)
    except ImportError:
        pass

    # Fixed cost of one call (tiny input): Python layers, launch, result copy and synchronisation.
    tiny_c, tiny_y = conf[:1024].clone(), correct[:1024].clone()
    row("prefcal.ece(torch cuda) N=1024 (fixed cost)", wall_ms(torch, lambda: prefcal.ece(tiny_c, tiny_y), reps=200), 1024 * 5)
    row(
        "_cuda.bin_uniform N=1024 (no Python layers)",
        wall_ms(torch, lambda: cuda.bin_uniform((tiny_c.data_ptr(), "|f4"), (tiny_y.data_ptr(), "|u1"), None, 1024, B,
                                                 stream, 0), reps=200),
        1024 * 5,
    )
    row("_cuda.bin_uniform N=1e8 (no Python layers)",
        wall_ms(torch, lambda: cuda.bin_uniform(cptr, yptr, None, n, B, stream, 0)), nbytes)

    if "--profile" in sys.argv:
        import cProfile
        import pstats

        cProfile.runctx("for _ in range(300): prefcal.ece(tiny_c, tiny_y)", globals(), locals(), "/tmp/prefcal.prof")
        pstats.Stats("/tmp/prefcal.prof").sort_stats("tottime").print_stats(8)

    # Other dtypes and options (kernels only).
    conf64 = conf.double()
    w = torch.rand(n, device="cuda", generator=g, dtype=torch.float64)
    ybool = correct.bool()
    for name, c_, y_, w_, nb in [
        ("f64+bool", (conf64.data_ptr(), "|f8"), (ybool.data_ptr(), "|b1"), None, n * 9),
        ("f32+u8 weighted", cptr, yptr, w.data_ptr(), n * 13),
    ]:
        ms = cuda.time_bin_uniform(c_, y_, w_, n, B, 20, stream, 0)
        row(f"prefcal ece kernels ({name})", ms, nb, cuda.describe_bin_uniform(c_, y_, w_, n, B, 0))
    for bins in (100, 5000):
        ms = cuda.time_bin_uniform(cptr, yptr, None, n, bins, 10, stream, 0)
        row(f"prefcal ece kernels (f32+u8, {bins} bins)", ms, nbytes, cuda.describe_bin_uniform(cptr, yptr, None, n, bins, 0))

    # Peers.
    def bincount_ece():
        idx = (conf * B).long().clamp_(max=B - 1)
        cnt = torch.bincount(idx, minlength=B)
        s_c = torch.bincount(idx, weights=conf, minlength=B)
        s_y = torch.bincount(idx, weights=correct.float(), minlength=B)
        return (s_y - s_c).abs().sum() / cnt.sum()

    bc_ms = events_ms(torch, bincount_ece)
    row("torch bincount formulation", bc_ms, nbytes)
    try:
        from torchmetrics.functional.classification import binary_calibration_error

        tm_ms = events_ms(
            torch, lambda: binary_calibration_error(conf, correct, n_bins=B, validate_args=False), reps=10
        )
        row("torchmetrics binary_calibration_error", tm_ms, nbytes)
        tm_val = float(binary_calibration_error(conf, correct, n_bins=B, validate_args=False))
    except ImportError:
        tm_ms, tm_val = float("nan"), float("nan")

    ours = prefcal.ece(conf, correct, n_bins=B)
    results["ece"] = {"prefcal": ours, "bincount": float(bincount_ece()), "torchmetrics": tm_val}
    r = prefcal.reliability(conf, correct, n_bins=B)
    idx = (conf.double() * B).floor().long().clamp_(max=B - 1)
    exact_counts = torch.bincount(idx, minlength=B).cpu().numpy()
    results["counts_equal_float64_rule"] = bool(np.array_equal(r.count, exact_counts))

    # Quantile strategy.
    m = min(n, 10**7)
    qconf, qcor = conf[:m], correct[:m]
    q_ms = wall_ms(torch, lambda: prefcal.ece(qconf, qcor, strategy="quantile"), reps=5)
    row(f"prefcal quantile ece, N={m:.0e}", q_ms, m * 5)
    s_ms = events_ms(torch, lambda: torch.sort(qconf, stable=True), reps=5)
    row(f"torch.sort(stable), N={m:.0e}", s_ms, m * 4)

    # Multiclass (confidence kind), N rows x 10 classes.
    mc = 10**7
    probs = torch.softmax(torch.randn(mc, 10, device="cuda", generator=g), dim=1)
    labels = torch.randint(0, 10, (mc,), device="cuda", generator=g)
    for kind in ("confidence", "classwise", "top_label"):
        ms = wall_ms(torch, lambda k=kind: prefcal.multiclass_ece(probs, labels, kind=k), reps=5)
        row(f"prefcal multiclass_ece {kind}, {mc:.0e}x10", ms, mc * 48)

    results["rows"] = rows
    print()
    print(f"{'what':48s} {'ms':>9s} {'GB/s':>8s} {'% copy':>7s}  note")
    for x in rows:
        print(f"{x['name']:48s} {x['ms']:9.3f} {x['GBps']:8.0f} {x['pct_copy']:6.1f}%  {x['note']}")
    print()
    print(f"speed-up of the prefcal kernels over torchmetrics: {tm_ms / k_ms:.0f}x, over torch bincount: {bc_ms / k_ms:.1f}x")
    print(f"end to end: {tm_ms / e2e:.0f}x torchmetrics, {bc_ms / e2e:.1f}x bincount")
    print("ECE values:", results["ece"], "counts equal the float64 rule:", results["counts_equal_float64_rule"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
