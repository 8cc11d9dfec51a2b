"""The ``prefcal`` command."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import __version__, _backend


def info() -> dict[str, Any]:
    """Version, platform, the backends found and how the kernels were built."""
    cpu = _backend.cpu_module()
    return {
        "prefcal": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "backends": _backend.backends(),
        "build": cpu.build_info() if cpu is not None else None,
        "environment": {k: os.environ[k] for k in ("PREFCAL_BACKEND", "OMP_NUM_THREADS") if k in os.environ},
    }


def _print_info(d: dict[str, Any]) -> None:
    b = d["backends"]
    print(f"prefcal {d['prefcal']}  (Python {d['python']}, NumPy {d['numpy']}, {d['platform']})")
    print("backends:")
    print("  numpy   available (pure-NumPy reference)")
    cpu = b["cpu"]
    if cpu["available"]:
        par = f"OpenMP, {cpu['threads']} threads" if cpu["openmp"] else "built WITHOUT OpenMP: serial, 1 thread"
        print(f"  cpu     available (C++17, {par}; {cpu['compiler']})")
    else:
        print(f"  cpu     NOT available: {cpu['reason']}")
    cuda = b["cuda"]
    if cuda["available"]:
        print(f"  cuda    available (built for {cuda['architectures']}, nvcc {cuda['nvcc']})")
        for i, dev in enumerate(cuda["devices"]):
            cc = ".".join(str(v) for v in dev["compute_capability"])
            mem = dev["total_memory"] / 2**30
            print(f"          cuda:{i} {dev['name']}  sm_{cc.replace('.', '')}  {dev['multiprocessors']} SMs  {mem:.1f} GiB")
    else:
        print(f"  cuda    NOT available: {cuda['reason']}")
    if d["environment"]:
        print("environment: " + ", ".join(f"{k}={v}" for k, v in d["environment"].items()))


def _evaluate(args: argparse.Namespace) -> int:
    from . import evaluate

    columns = evaluate.Columns(args.scores, args.rankings, args.ranks, args.mask)
    try:
        evaluate.run(
            args.input,
            columns,
            levels=tuple(args.levels) if args.levels else None,
            n_bins=args.bins,
            kind=args.kind,
            device=args.device,
            chunk_rows=args.chunk_rows,
            out=args.out,
            fmt=args.format,
            progress=args.progress,
        )
    except KeyboardInterrupt:
        print("prefcal evaluate: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line per error, the traceback only with --debug
        if args.debug:
            raise
        usage = isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, evaluate.InputError)
        what = "error" if isinstance(exc, (evaluate.InputError, ValueError, TypeError, OSError)) else (
            f"unexpected {type(exc).__name__}")
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if what == "error" else " (--debug shows the traceback)"
        print(f"prefcal evaluate: {what}: {text}{hint}", file=sys.stderr)
        return 2 if usage else 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefcal", description="Calibration of ranking, preference and reward models.")
    parser.add_argument("--version", action="version", version=f"prefcal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="version, backends found (CPU threads, CUDA devices), build options")
    p_info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p_demo = sub.add_parser("demo", help="the full calibration report on a reproducible synthetic data set")
    p_demo.add_argument("--out", default="prefcal-demo", help="output directory (default: prefcal-demo)")
    p_demo.add_argument("--prompts", type=int, default=20_000, help="number of prompts (default 20000)")
    p_demo.add_argument("--items", type=int, default=6, help="responses per prompt (default 6)")
    p_demo.add_argument("--seed", type=int, default=0)
    p_bench = sub.add_parser(
        "bench", help="kernel throughput (rows/s, GB/s) against the measured copy bandwidth"
    )
    p_bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p_bench.add_argument("--scale", type=float, default=1.0, help="multiply every size (default 1)")
    p_bench.add_argument("--reps", type=int, default=5, help="timed runs per kernel (default 5)")
    p_eval = sub.add_parser(
        "evaluate",
        help="the calibration report of a file of scored rankings (Parquet, .npz, JSON Lines) in chunks",
        description="The calibration report (ranking.report) of INPUT, read in chunks with bounded memory. "
        "Per row: scores (a list of n numbers) and the observation, an ordering of item indices (best "
        "first; shorter or -1 padded when partial) or one rank per item (null/NaN unknown); optionally a "
        "boolean mask of the available items. Writes report.json, report.md and reliability.png.",
    )
    p_eval.add_argument("input", metavar="INPUT", help="a .parquet (list columns), .npz or .jsonl file")
    p_eval.add_argument("--scores", default="scores", metavar="COL", help="scores column (default: scores)")
    obs = p_eval.add_mutually_exclusive_group()
    obs.add_argument("--rankings", metavar="COL", help="orderings column (default: rankings, if present)")
    obs.add_argument("--ranks", metavar="COL", help="per-item ranks column (default: ranks, if present)")
    p_eval.add_argument(
        "--mask", metavar="COL", help="boolean availability column (default: mask, if present)"
    )
    p_eval.add_argument("--levels", nargs="+", metavar="LEVEL",
                        help="levels: sub<k>, top<k>, top<k>_set, full, positions "
                        "(default: sub2 sub3 top1 top2 full positions, those that exist)")
    p_eval.add_argument("--kind", choices=("classwise", "top_label"), default="classwise",
                        help="kind of the sub/top levels (default: classwise)")
    p_eval.add_argument("--bins", type=int, metavar="N", help="bins per level (default: each level's own)")
    p_eval.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p_eval.add_argument("--chunk-rows", type=int, default=1 << 16, metavar="N",
                        help="rows per chunk: bounds the memory (default 65536)")
    p_eval.add_argument(
        "--format", choices=("parquet", "npz", "jsonl"), help="input format (default: from the extension)"
    )
    p_eval.add_argument(
        "--out", default="prefcal-report", metavar="DIR", help="output directory (default: prefcal-report)"
    )
    bar = p_eval.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p_eval.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "bench":
        from . import bench

        if not args.scale > 0 or args.reps < 1:
            print("prefcal bench: --scale must be > 0 and --reps >= 1", file=sys.stderr)
            return 2
        try:
            _backend.array_module(args.device)
        except ValueError as exc:
            print(f"prefcal bench: {exc}", file=sys.stderr)
            return 1
        bench.run(args.device, args.scale, args.reps)
        return 0
    if args.command == "demo":
        from . import demo

        if args.prompts < 2 or not 2 <= args.items <= 12 or args.seed < 0:
            print(
                "prefcal demo: --prompts must be >= 2, --items between 2 and 12 and --seed >= 0",
                file=sys.stderr,
            )
            return 2
        try:
            demo.run(args.out, args.prompts, args.items, args.seed)
        except OSError as exc:
            print(f"prefcal demo: cannot write to {args.out!r}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "info":
        d = info()
        if args.json:
            print(json.dumps(d, indent=2, default=str))
        else:
            _print_info(d)
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
