"""Run-time settings: CPU threads and the backend override."""

from __future__ import annotations

import numbers

from . import _backend

__all__ = ["set_num_threads", "get_num_threads", "set_backend", "get_backend"]


def set_num_threads(n: int | None) -> None:
    """Number of threads of the C++ kernels (``None`` or 0: OpenMP's default, e.g. ``OMP_NUM_THREADS``).

    Results do not depend on it: the kernels cut the data into fixed chunks and add them in order.
    """
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an integer or None, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cpu = _backend.cpu_module()
    if cpu is not None:
        cpu.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads the C++ kernels use (1 when they are built without OpenMP or not available)."""
    cpu = _backend.cpu_module()
    return int(cpu.num_threads()) if cpu is not None else 1


def set_backend(name: str | None) -> None:
    """Force a backend for every call: ``"numpy"`` (the reference), ``"cpu"`` or ``"cuda"``; ``None`` clears.

    Takes precedence over the ``PREFCAL_BACKEND`` environment variable.
    """
    _backend.set_forced(name)


def get_backend() -> str | None:
    """The forced backend (from :func:`set_backend` or ``PREFCAL_BACKEND``), or None for automatic choice."""
    return _backend.forced()
