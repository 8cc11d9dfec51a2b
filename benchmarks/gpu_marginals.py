"""GPU benchmark of the permutation marginals, with the CPU in the same table.

Run on a machine with a CUDA GPU and torch:

    python benchmarks/gpu_marginals.py [--exact-n 1000000] [--integral-n 10000] [--json out.json]

Exact (subset DP) positions of N = 10^6 contexts of n = 10 and top-3 inclusion; the integral for N = 10^4
contexts of n = 100; Monte Carlo (Philox Gumbel top-k, counted on the device) against torch Gumbel-argsort
with the counts made by scatter_add. Every GPU result is compared with the CPU kernels on a subset. Floors:
the DP does ~3 flops per (subset, item) push, 2^(n-1) n pushes per context; the integral ~6 n^2 flops per
node and context; both are float64, so the floor is flops / the device's float64 peak (or the bytes of the
output / the copy bandwidth when that is larger). Medians of repeated runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
from gpu import copy_bandwidth, wall_ms

FP64_VECTOR = {"H100": 34e12, "H200": 34e12}  # float64 without tensor cores: what these kernels can use


def cpu_ms(fn, reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exact-n", type=int, default=10**6)
    ap.add_argument("--exact-items", type=int, default=10)
    ap.add_argument("--integral-n", type=int, default=10**4)
    ap.add_argument("--integral-items", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import prefcal
    import torch
    from prefcal import marginals

    if not torch.cuda.is_available() or not prefcal.backends()["cuda"]["available"]:
        print("no usable GPU:", prefcal.backends()["cuda"].get("reason"))
        return 1
    dev = torch.cuda.get_device_properties(0)
    key = next((k for k in FP64_VECTOR if k in dev.name), None)
    peak = FP64_VECTOR.get(key, 34e12)
    bw = copy_bandwidth(torch)
    print(
        f"device: {dev.name}; copy bandwidth {bw / 1e9:.0f} GB/s; "
        f"float64 vector peak {peak / 1e12:.0f} TFLOP/s"
    )
    g = torch.Generator(device="cuda").manual_seed(3)
    rows: list[dict] = []
    checks: dict[str, float | bool] = {}

    def row(
        name: str, ms: float, flops: float | None = None, out_bytes: int | None = None, note: str = ""
    ) -> None:
        entry: dict = {"name": name, "ms": ms, "note": note}
        if flops:
            floor = max(flops / peak, (out_bytes or 0) / bw) * 1e3
            entry.update(floor_ms=floor, pct_floor=100 * floor / ms)
        rows.append(entry)

    # exact: 2^(n-1) n pushes of ~3 flops per context
    N, n = args.exact_n, args.exact_items
    s = torch.randn(N, n, device="cuda", dtype=torch.float64, generator=g) * 2
    flops = 3.0 * 2 ** (n - 1) * n * N
    out_bytes = N * n * n * 8
    ms = wall_ms(torch, lambda: marginals.positions(s, method="exact"), reps=10)
    row(f"GPU exact positions {N:.0e}x{n}", ms, flops, out_bytes)
    ms3 = wall_ms(torch, lambda: marginals.topk_inclusion(s, 3, method="exact"), reps=10)
    top3_flops = 3.0 * sum(math.comb(n, j) * (n - j) for j in range(3)) * N
    row(f"GPU exact top-3 inclusion {N:.0e}x{n}", ms3, top3_flops, N * n * 8)
    sub = s[:20000].cpu().numpy()
    c_ms = cpu_ms(lambda: marginals.positions(sub, method="exact")) * N / len(sub)
    row(f"CPU exact positions {N:.0e}x{n} (from 2e4 contexts)", c_ms, flops, out_bytes)
    checks["exact_gpu_vs_cpu"] = float(
        np.abs(
            marginals.positions(s[:20000], method="exact").cpu().numpy()
            - marginals.positions(sub, method="exact")
        ).max()
    )

    # integral: ~6 n^2 flops per node, Q ~ (31 + spread) / h nodes
    N, n = args.integral_n, args.integral_items
    s = torch.randn(N, n, device="cuda", dtype=torch.float64, generator=g)
    spread = float((s.max(dim=1).values - s.min(dim=1).values).mean())
    q_nodes = (31.0 + spread) / min(0.25, 1 / np.sqrt(n))
    flops = 6.0 * n * n * q_nodes * N
    ms = wall_ms(torch, lambda: marginals.positions(s, method="integral"), reps=5, warmup=1)
    row(f"GPU integral positions {N:.0e}x{n}", ms, flops, N * n * n * 8, f"~{q_nodes:.0f} nodes")
    sub = s[:200].cpu().numpy()
    c_ms = cpu_ms(lambda: marginals.positions(sub, method="integral")) * N / len(sub)
    row(f"CPU integral positions {N:.0e}x{n} (from 200 contexts)", c_ms, flops, N * n * n * 8)
    checks["integral_gpu_vs_cpu"] = float(
        np.abs(
            marginals.positions(s[:200], method="integral").cpu().numpy()
            - marginals.positions(sub, method="integral")
        ).max()
    )
    small = s[:50, :12]
    checks["integral_vs_exact_n12"] = float(
        (marginals.positions(small, method="integral") - marginals.positions(small, method="exact"))
        .abs()
        .max()
    )

    # Monte Carlo: 10^4 contexts of 8, 1000 samples
    s = torch.randn(10**4, 8, device="cuda", dtype=torch.float32, generator=g)
    ms = wall_ms(torch, lambda: marginals.positions(s, method="mc", n_samples=1000, seed=1), reps=10)
    row("GPU Monte Carlo 1e4x8, 1000 samples", ms)

    def torch_mc():
        out = torch.zeros(10**4, 8 * 8, device="cuda")
        pos = torch.arange(8, device="cuda").expand(10**4, 8)
        for _ in range(1000):
            u = torch.rand(10**4, 8, device="cuda", generator=g)
            order = torch.argsort(s - torch.log(-torch.log(u)), dim=1, descending=True)
            out.scatter_add_(1, order * 8 + pos, torch.ones_like(u))
        return out / 1000

    t_ms = wall_ms(torch, torch_mc, reps=3, warmup=1)
    row("torch Gumbel-argsort + scatter_add, 1000 samples", t_ms)
    a = marginals.positions(s[:500], method="mc", n_samples=300, seed=9).cpu().numpy()
    b = marginals.positions(s[:500].cpu().numpy(), method="mc", n_samples=300, seed=9)
    checks["mc_cpu_equals_gpu"] = bool(np.array_equal(a, b))

    print(f"\n{'what':58s} {'ms':>10s} {'floor ms':>9s} {'% floor':>8s}  note")
    for x in rows:
        fl = f"{x['floor_ms']:9.3f} {x['pct_floor']:7.1f}%" if "floor_ms" in x else f"{'':9s} {'':8s}"
        print(f"{x['name']:58s} {x['ms']:10.3f} {fl}  {x['note']}")
    print(f"\nMonte Carlo: {t_ms / ms:.0f}x torch")
    for k, v in checks.items():
        print(f"{k}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": dev.name,
                    "copy_GBps": bw / 1e9,
                    "fp64_peak": peak,
                    "rows": rows,
                    "checks": checks,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
