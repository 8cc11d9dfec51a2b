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
    args = parser.parse_args(argv)
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
