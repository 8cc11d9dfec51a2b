"""GPU benchmark of the Plackett-Luce engine against the device's copy bandwidth and torch formulations.

Run on a machine with a CUDA GPU and torch:

    python benchmarks/gpu_pl.py [--n 10000000] [--items 10] [--json out.json]

Log-likelihood of N full rankings of n items (float32 scores, int32 rankings: 8 n bytes per row, read once),
its kernel time from CUDA events inside the extension and its end-to-end time from Python; the torch
formulation (gather + logcumsumexp); Gumbel top-k sampling against torch Gumbel-argsort; the fit and the
temperature on the GPU. Medians of repeated runs. Accuracy: the float32 kernel against the float64 NumPy
reference on a subset.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from gpu import copy_bandwidth, events_ms, wall_ms

KERNELS = ("staged", "flat", "exact")


def kernel_choice(torch, cuda, pl, N: int, bw: float, stream) -> list[dict]:
    """The log-likelihood kernels (set_loglik_kernel) side by side on shapes that take each of them: full
    rankings of 5, 10 (unpadded tiles) and 16 items (padded), and top-5 rankings of 10 items, padded with -1
    or narrow (m = 5); float32 scores, int32 rankings, N rows. A kernel that does not apply to a shape falls
    back to the next one (exact -> flat -> staged), so its column then repeats a neighbour's time."""
    g = torch.Generator(device="cuda").manual_seed(11)
    shapes = [("full n=5", 5, 5), ("full n=10", 10, 10), ("full n=16", 16, 16)]
    shapes += [("top-5 of 10, padded", 10, 10), ("top-5 of 10, narrow m=5", 10, 5)]
    out = []
    for name, n, m in shapes:
        s = torch.randn(N, n, device="cuda", generator=g)
        r = torch.argsort(torch.rand(N, n, device="cuda", generator=g), dim=1).to(torch.int32)
        if "top-5" in name:
            r = r[:, :5].contiguous() if m == 5 else torch.cat([r[:, :5], torch.full_like(r[:, 5:], -1)], 1)
        ll = torch.empty(N, device="cuda")
        nbytes = s.numel() * 4 + r.numel() * 4
        entry: dict = {"shape": name}
        base = None
        for kernel in KERNELS:
            previous = cuda.set_loglik_kernel(kernel)
            try:
                ms = cuda.time_pl_loglik(
                    (s.data_ptr(), "|f4"),
                    False,
                    (r.data_ptr(), "|i4"),
                    None,
                    False,
                    N,
                    m,
                    n,
                    ll.data_ptr(),
                    None,
                    20,
                    stream,
                    0,
                )
                got = pl.log_likelihood(s, r)
            finally:
                cuda.set_loglik_kernel(previous)
            base = got if base is None else base
            entry[kernel] = {"ms": ms, "pct_copy": 100 * nbytes / (ms * 1e-3) / bw}
            entry["max_abs_diff"] = max(entry.get("max_abs_diff", 0.0), float((got - base).abs().max()))
        out.append(entry)
        del s, r, ll
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10**7)
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import prefcal
    import torch
    from prefcal import _backend, _reference, pl

    if not torch.cuda.is_available() or not prefcal.backends()["cuda"]["available"]:
        print("no usable GPU:", prefcal.backends()["cuda"].get("reason"))
        return 1
    cuda = _backend.cuda_module()
    N, n = args.n, args.items
    bw = copy_bandwidth(torch)
    dev = torch.cuda.get_device_properties(0)
    print(f"device: {dev.name}; copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    g = torch.Generator(device="cuda").manual_seed(7)
    scores = torch.randn(N, n, device="cuda", generator=g)
    rankings = torch.argsort(torch.rand(N, n, device="cuda", generator=g), dim=1).to(torch.int32)
    nbytes = scores.numel() * 4 + rankings.numel() * 4
    stream = torch.cuda.current_stream().cuda_stream
    ll = torch.empty(N, device="cuda")
    grad = torch.empty(N, n, device="cuda")
    sp, rp = (scores.data_ptr(), "|f4"), (rankings.data_ptr(), "|i4")
    rows: list[dict] = []

    def row(name: str, ms: float, bytes_: int | None = None, note: str = "") -> None:
        entry = {"name": name, "ms": ms, "note": note}
        if bytes_:
            gbps = bytes_ / (ms * 1e-3)
            entry.update(GBps=gbps / 1e9, pct_copy=100 * gbps / bw)
        rows.append(entry)

    k_ms = cuda.time_pl_loglik(sp, False, rp, None, False, N, n, n, ll.data_ptr(), None, 30, stream, 0)
    row(f"prefcal loglik kernel {N:.0e}x{n} f32/i32", k_ms, nbytes)
    # the kernels off by default, on the same data: the flat-staged one (n and m not multiples of 4,
    # n <= 32) and the exact-width one (full rankings of 2 .. 16 items without a mask); their largest
    # difference from the default kernel's log-likelihoods
    ll_default = pl.log_likelihood(scores, rankings)
    alt: dict[str, tuple[float, float]] = {}
    for kernel in ("flat", "exact"):
        previous = cuda.set_loglik_kernel(kernel)
        try:
            ms = cuda.time_pl_loglik(sp, False, rp, None, False, N, n, n, ll.data_ptr(), None, 30, stream, 0)
            diff = float((pl.log_likelihood(scores, rankings) - ll_default).abs().max())
        finally:
            cuda.set_loglik_kernel(previous)
        alt[kernel] = (ms, diff)
    kf_ms, flat_diff = alt["flat"]
    ke_ms, exact_diff = alt["exact"]
    taken = n % 4 != 0 and n <= 32
    row("prefcal loglik kernel, flat staging", kf_ms, nbytes, "" if taken else "(not taken at this n)")
    row("prefcal loglik kernel, exact width", ke_ms, nbytes, "" if 2 <= n <= 16 else "(not taken at this n)")
    kg_ms = cuda.time_pl_loglik(
        sp, False, rp, None, False, N, n, n, ll.data_ptr(), grad.data_ptr(), 20, stream, 0
    )
    row("prefcal loglik+grad kernel", kg_ms, nbytes + grad.numel() * 4)
    e2e = wall_ms(torch, lambda: pl.log_likelihood(scores, rankings))
    row("prefcal pl.log_likelihood end to end", e2e, nbytes)

    r64 = rankings.long()

    def torch_ll():
        x = torch.gather(scores, 1, r64)
        return (x - torch.logcumsumexp(x.flip(1), 1).flip(1))[:, :-1].sum(1)

    t_ms = events_ms(torch, torch_ll, reps=10)
    row("torch gather+logcumsumexp", t_ms, nbytes)

    # accuracy of the float32 kernel against the float64 reference
    sub = slice(0, 100_000)
    ref, _, _ = _reference.pl_loglik(
        scores[sub].double().cpu().numpy(), rankings[sub].cpu().numpy(), None, False
    )
    got = pl.log_likelihood(scores[sub], rankings[sub]).double().cpu().numpy()
    rel = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-30)))

    choice = kernel_choice(torch, cuda, pl, N, bw, stream)

    s_ms = wall_ms(torch, lambda: pl.sample(scores, seed=1), reps=10)
    row(f"prefcal pl.sample {N:.0e}x{n}", s_ms, None)

    def torch_sample():
        u = torch.rand(N, n, device="cuda", generator=g)
        return torch.argsort(scores - torch.log(-torch.log(u)), dim=1, descending=True)

    ts_ms = events_ms(torch, torch_sample, reps=10)
    row("torch Gumbel-argsort", ts_ms, None)
    cpu_same = bool(
        np.array_equal(
            pl.sample(scores[:20000], 3, seed=5).cpu().numpy(),
            pl.sample(scores[:20000].cpu().numpy(), 3, seed=5),
        )
    )

    truth = torch.randn(20, device="cuda", generator=g)
    fr = pl.sample(truth.expand(10**5, 20).contiguous(), seed=2)[:, 0]
    f_ms = wall_ms(torch, lambda: pl.fit(fr, 20, tol=1e-8), reps=3, warmup=1)
    row("prefcal pl.fit MM 1e5x20 (GPU)", f_ms, None)
    fn_ms = wall_ms(torch, lambda: pl.fit(fr, 20, method="newton", tol=1e-8), reps=3, warmup=1)
    row("prefcal pl.fit Newton 1e5x20 (GPU)", fn_ms, None)
    t_beta = wall_ms(torch, lambda: prefcal.recalibrate.temperature(scores, rankings), reps=3, warmup=1)
    row(f"prefcal recalibrate.temperature {N:.0e}x{n}", t_beta, None)

    print(f"\n{'what':48s} {'ms':>9s} {'GB/s':>8s} {'% copy':>7s}  note")
    for x in rows:
        gb = f"{x['GBps']:8.0f} {x['pct_copy']:6.1f}%" if "GBps" in x else f"{'':8s} {'':7s}"
        print(f"{x['name']:48s} {x['ms']:9.3f} {gb}  {x['note']}")
    print(f"\nloglik kernel: {t_ms / k_ms:.0f}x torch; end to end {t_ms / e2e:.0f}x torch")
    print(f"flat-staged loglik kernel: {t_ms / kf_ms:.0f}x torch; max |flat - default| {flat_diff:.1e}")
    print(f"exact-width loglik kernel: {t_ms / ke_ms:.0f}x torch; max |exact - default| {exact_diff:.1e}")
    print(f"sampling: {ts_ms / s_ms:.1f}x torch Gumbel-argsort; CPU == GPU samples: {cpu_same}")
    print(f"float32 kernel vs float64 reference: max relative error {rel:.2e}")
    print("\nlog-likelihood kernels by shape (ms, % copy; the default is 'staged'):")
    print(f"{'shape':28s}" + "".join(f"{k:>18s}" for k in KERNELS) + "   max |diff| vs staged")
    for c in choice:
        cells = "".join(f"{c[k]['ms']:9.3f} {c[k]['pct_copy']:6.1f}% " for k in KERNELS)
        print(f"{c['shape']:28s}{cells}  {c['max_abs_diff']:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": dev.name,
                    "copy_GBps": bw / 1e9,
                    "rows": rows,
                    "max_rel_err_f32": rel,
                    "cpu_equals_gpu_samples": cpu_same,
                    "max_abs_flat_minus_default": flat_diff,
                    "max_abs_exact_minus_default": exact_diff,
                    "kernel_choice": choice,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
