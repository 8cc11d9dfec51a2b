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
    args = parser.parse_args(argv)
    if args.command == "bench":
        from . import bench

        if not args.scale > 0 or args.reps < 1:
            print("prefcal bench: --scale must be > 0 and --reps >= 1", file=sys.stderr)
            return 2
        if args.device == "cuda":
            try:
                import cupy

                cupy.cuda.runtime.getDeviceCount()
            except Exception as exc:  # noqa: BLE001 - any reason CuPy cannot run is reported the same way
                print(f"prefcal bench: --device cuda needs CuPy and a CUDA device ({exc})", file=sys.stderr)
                return 1
        bench.run(args.device, args.scale, args.reps)
        return 0
    if args.command == "demo":
        from . import demo

        if args.prompts < 2 or not 2 <= args.items <= 12:
            print("prefcal demo: --prompts must be >= 2 and --items between 2 and 12", file=sys.stderr)
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
