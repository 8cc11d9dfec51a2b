"""prefcal's classwise sweep against the label-ranking calibration paper's reference code, same inputs.

    PREFCAL_REFCODE=/path/to/Calibrated_Preference_Learning python benchmarks/refcode_sweep.py [--rows 10000]
        [--items 10] [--orderings 50] [--levels sub2,sub3,top1,...]

The reference code (github Advueu963/Calibrated_Preference_Learning, src/cal_pref/utils.py) is read from that
path and run beside prefcal (none of it is part of prefcal): its module-level imports of plotting, pandas,
scikit-learn, tqdm and its model classes are not needed by the calibration functions and are stubbed out.
It takes a dict {ordering (1-based tuple): probabilities per row}, so the model here is an explicit table of
R orderings (a PL table over all 10! orderings would need 145 GB at 10^4 rows); the observed orderings are
drawn from each row's table (``--observations uniform``: uniformly at random, so that almost no two rows
repeat). For every level the script prints both ECEs, their difference and both times,
then the totals and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

import numpy as np


def load_reference(root: str) -> types.ModuleType:
    path = os.path.join(root, "src", "cal_pref", "utils.py")
    src = open(path, encoding="utf-8").read()
    stubs = {
        "import pandas as pd": "pd = None",
        "from tqdm import tqdm": "tqdm = lambda x, **k: x",
        "import matplotlib.pyplot as plt": "plt = None",
    }
    lines = []
    for line in src.splitlines():
        stripped = line.strip()
        if stripped in stubs:
            line = stubs[stripped]
        elif stripped.startswith(("from sklearn", "from .preference_models")):
            line = ""
        lines.append(line)
    mod = types.ModuleType("cal_pref_utils_reference")
    exec(compile("\n".join(lines), path, "exec"), mod.__dict__)  # noqa: S102 - a local checkout, on request
    return mod


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--orderings", type=int, default=50)
    ap.add_argument("--levels", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--observations",
        choices=("table", "uniform"),
        default="table",
        help="observed orderings drawn from each row's table (default; rows repeat) or uniformly at random "
        "(almost every row distinct)",
    )
    args = ap.parse_args()
    root = os.environ.get("PREFCAL_REFCODE")
    if not root:
        print(
            "set PREFCAL_REFCODE to a checkout of Advueu963/Calibrated_Preference_Learning", file=sys.stderr
        )
        return 2
    import torch
    from prefcal import ranking

    ref = load_reference(root)
    rng = np.random.default_rng(args.seed)
    n, rows = args.items, args.rows
    orders = np.unique(np.array([rng.permutation(n) for _ in range(args.orderings)]), axis=0)
    probs = rng.dirichlet(np.ones(len(orders)) * 0.3, size=rows)
    obs = orders[(probs.cumsum(1) > rng.random((rows, 1))).argmax(1)]
    if args.observations == "uniform":
        obs = np.argsort(rng.random((rows, n)), axis=1)
    table = {
        tuple(int(v) + 1 for v in o): torch.tensor(probs[:, r], dtype=torch.float32)
        for r, o in enumerate(orders)
    }
    y_true = torch.tensor(np.argsort(obs, axis=1) + 1)
    items = list(range(1, n + 1))
    model = ranking.Explicit(orders, probs)
    levels = [("sub", k) for k in range(2, n + 1)] + [("top", k) for k in range(1, n)]
    if args.levels:
        wanted = set(args.levels.split(","))
        levels = [lv for lv in levels if f"{lv[0]}{lv[1]}" in wanted]
    print(
        f"rows {rows}, items {n}, orderings {len(orders)}, observations {args.observations} "
        f"({len(np.unique(obs, axis=0))} distinct), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    print(
        f"{'level':6s} {'classes':>8s} {'prefcal ECE':>14s} {'reference ECE':>14s} {'|diff|':>9s} "
        f"{'prefcal s':>10s} {'ref s':>9s} {'ratio':>7s}"
    )
    tot_ours = tot_ref = worst = 0.0
    for lv, k in levels:
        t0 = time.perf_counter()
        if lv == "sub":
            ours = ranking.subranking_ece(model, obs, k)
        else:
            ours = ranking.topk_ece(model, obs, k)
        t1 = time.perf_counter()
        if lv == "sub":
            theirs = ref.calculate_sub_k_calibration(items, y_true, table, k=k)["total_ece"]
        else:
            theirs = ref.calculate_top_k_calibration(items, y_true, table, k=k)["total_ece"]
        t2 = time.perf_counter()
        diff = abs(ours.ece - float(theirs))
        worst = max(worst, diff)
        tot_ours += t1 - t0
        tot_ref += t2 - t1
        print(
            f"{lv}{k:<3d} {ours.n_classes:8d} {ours.ece:14.9f} {float(theirs):14.9f} {diff:9.1e} "
            f"{t1 - t0:10.3f} {t2 - t1:9.2f} {(t2 - t1) / (t1 - t0):7.0f}",
            flush=True,
        )
    print(
        f"total  prefcal {tot_ours:.2f} s, reference {tot_ref:.1f} s, ratio {tot_ref / tot_ours:.0f}x, "
        f"largest |diff| {worst:.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
