"""Loads the compiled modules and picks the backend of each call from its inputs.

=====================  =========================================================================
inputs                 backend
=====================  =========================================================================
NumPy / lists / torch  ``prefcal._cpu`` (C++/OpenMP); without it, ``prefcal._reference`` (NumPy)
CPU tensors            and one RuntimeWarning quoting why ``_cpu`` did not load
CuPy / torch CUDA      ``prefcal._cuda`` on the array's device and the library's current stream;
                       without it, the CPU backend on a host copy, with one RuntimeWarning
mixed                  TypeError naming both inputs
=====================  =========================================================================

``PREFCAL_BACKEND=numpy|cpu|cuda`` (or :func:`prefcal.config.set_backend`) forces a backend: host inputs
are staged on the current CUDA device for ``cuda``; device inputs are copied to the host for ``numpy`` and
``cpu``.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _arrays, _reference, _validation

BACKENDS = ("numpy", "cpu", "cuda")

_lock = threading.Lock()
_modules: dict[str, Any] = {}
_errors: dict[str, str] = {}
_warned: set[str] = set()
_forced: str | None = None


def _load(name: str) -> Any | None:
    """The compiled module `name` ("cpu" or "cuda"), or None with the reason kept for `backends()`."""
    with _lock:
        if name in _modules:
            return _modules[name]
        if name in _errors:
            return None
        try:
            mod = importlib.import_module(f"prefcal._{name}")
        except ImportError as exc:
            _errors[name] = f"{type(exc).__name__}: {exc}"
            return None
        if name == "cuda":
            count, err = mod.device_count()
            if count == 0:
                _errors[name] = f"no CUDA device ({err or 'cudaGetDeviceCount returned 0'})"
                return None
        _modules[name] = mod
        return mod


def cpu_module() -> Any | None:
    return _load("cpu")


def cuda_module() -> Any | None:
    return _load("cuda")


def load_error(name: str) -> str | None:
    return _errors.get(name)


def _warn_once(key: str, message: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=5)


def set_forced(name: str | None) -> None:
    global _forced
    if name is not None:
        _validation.option("backend", name, BACKENDS)
    _forced = name


def forced() -> str | None:
    """The backend forced by set_backend() or PREFCAL_BACKEND, if any."""
    if _forced is not None:
        return _forced
    env = os.environ.get("PREFCAL_BACKEND", "").strip().lower()
    if not env:
        return None
    if env not in BACKENDS:
        raise ValueError(f"PREFCAL_BACKEND must be one of {', '.join(BACKENDS)}; got {env!r}")
    return env


def choose(on_gpu: bool) -> str:
    """Backend for inputs on the host (on_gpu=False) or on a CUDA device: 'reference', 'cpu' or 'cuda'."""
    want = forced()
    if want == "numpy":
        return "reference"
    if want == "cuda":
        if cuda_module() is None:
            raise RuntimeError(f"PREFCAL_BACKEND=cuda but prefcal._cuda is not usable: {load_error('cuda')}")
        return "cuda"
    if want == "cpu" or not on_gpu:
        if cpu_module() is not None:
            return "cpu"
        _warn_once(
            "reference",
            f"prefcal._cpu could not be imported ({load_error('cpu')}); using the pure-NumPy reference "
            "implementation, which is much slower. Reinstall prefcal to build the C++ kernels.",
        )
        return "reference"
    if cuda_module() is not None:
        return "cuda"
    _warn_once(
        "cuda",
        f"prefcal._cuda is not usable ({load_error('cuda')}); computing on the CPU from a host copy of the "
        "inputs. Build prefcal with a CUDA compiler (PREFCAL_CUDA=ON) to run on the GPU.",
    )
    return choose(on_gpu=False)


def _target(rule: Callable[[str, np.dtype], np.dtype], name: str, x: Any) -> np.dtype:
    """The kernel dtype of an input by its rule; an empty input (an empty list reads as float64) takes any
    dtype the rule accepts, so that the emptiness is what gets reported."""
    try:
        return rule(name, _arrays.dtype_of(x))
    except TypeError:
        if int(np.prod(_arrays.shape_of(x))) != 0:
            raise
        for alt in (np.int64, np.float64, np.bool_):
            try:
                return rule(name, np.dtype(alt))
            except TypeError:
                pass
        raise


class Call:
    """The inputs of one call, checked, converted to the kernel dtypes and placed for its backend."""

    def __init__(self, named: dict[str, object], dtypes: dict[str, Callable[[str, np.dtype], np.dtype]]):
        present: dict[str, tuple[object, _arrays.Where]] = {}
        for name, x in named.items():
            if x is None:
                continue
            w = _arrays.where(x)
            if not w.on_gpu:
                x = _arrays.to_numpy_input(x)  # lists, torch CPU tensors (zero-copy through DLPack)
            present[name] = (x, w)
        place = _arrays.same_place(present)
        self.backend = choose(place.on_gpu)
        self.device: int = place.device if place.on_gpu else 0
        self.stream = 0
        self.arrays: dict[str, Any] = {}
        self._pointers: dict[str, _arrays.DevicePointer] = {}
        targets = {name: _target(dtypes[name], name, x) for name, (x, _) in present.items()}
        for name, (x, w) in present.items():
            self.arrays[name] = (x, targets[name], w)
        self.shapes = {name: _arrays.shape_of(x) for name, (x, _, _) in self.arrays.items()}
        self._on_gpu = place.on_gpu
        self.library = place.library

    def place(self) -> None:
        """Converts and moves the arrays for the chosen backend (call after the shape checks)."""
        if self.backend == "cuda" and not self._on_gpu:
            self.device = _current_cuda_device()
        for name in list(self.arrays):
            self._place(name)

    def _place(self, name: str) -> None:
        x, dtype, w = self.arrays[name]
        if self.backend == "cuda" and w.on_gpu:
            x = _arrays.device_normalise(x, dtype)
            if not self.stream:
                self.stream = _arrays.current_stream(x, self.device)
            self._pointers[name] = _arrays.device_pointer(x, cuda_module())
        elif self.backend == "cuda":
            _validation.unsigned_fits(name, x, dtype)
            host = np.ascontiguousarray(x, dtype=dtype)
            staged = cuda_module().DeviceArray(host, self.device)
            self._pointers[name] = _arrays.DevicePointer(staged.ptr, "|" + host.dtype.str[1:], (staged, host))
            x = host
        else:
            if w.on_gpu:
                x = _arrays.host_copy(x)
            _validation.unsigned_fits(name, x, dtype)
            x = np.ascontiguousarray(x, dtype=dtype)
        self.arrays[name] = (x, dtype, w)

    def canonical_bools(self, name: str, index: int) -> bool:
        """Whether element `index` of a placed bool array is stored as a byte other than 0 or 1 (a bool view
        of other bytes); if so, the array is replaced by one of 0/1 bytes (nonzero is True, as NumPy reads it)
        and True is returned, for the caller to run its kernel again."""
        x, dtype, w = self.arrays[name]
        if dtype != np.dtype(np.bool_) or int(_arrays.element(_arrays.byte_view(x), index)) <= 1:
            return False
        self.arrays[name] = (_arrays.byte_view(x) != 0, dtype, w)
        self._place(name)
        return True

    def host(self, name: str) -> np.ndarray | None:
        entry = self.arrays.get(name)
        return None if entry is None else entry[0]

    def pointer(self, name: str) -> tuple[int, str] | None:
        p = self._pointers.get(name)
        return None if p is None else p.arg()

    def weight_pointer(self, name: str) -> int | None:
        p = self._pointers.get(name)
        return None if p is None else p.ptr

    def element(self, name: str, index: int | tuple[int, ...]) -> Any:
        entry = self.arrays.get(name)
        return None if entry is None else _arrays.element(entry[0], index)

    def output(self, shape: tuple[int, ...], dtype: Any) -> _arrays.Output:
        """A new uninitialised array for a CUDA kernel to write: in the caller's library on its device, or
        staged device memory copied back to NumPy for host inputs forced onto CUDA."""
        return _arrays.Output.new(self.library if self._on_gpu else None, shape, np.dtype(dtype), self.device,
                                  cuda_module())

    def wrap(self, host: np.ndarray) -> Any:
        """A host result in the caller's array type (torch CPU tensors give tensors; NumPy otherwise)."""
        if self.library == "torch" and not self._on_gpu:
            return sys.modules["torch"].from_numpy(np.ascontiguousarray(host))
        return host

    def module(self) -> Any:
        return {"reference": _reference, "cpu": cpu_module(), "cuda": cuda_module()}[self.backend]


def _current_cuda_device() -> int:
    """Device for host inputs forced onto CUDA: the current device of CuPy or torch if loaded, else 0."""
    if "cupy" in sys.modules:
        return int(sys.modules["cupy"].cuda.runtime.getDevice())
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return int(torch.cuda.current_device())
    return 0


def backends() -> dict[str, dict[str, Any]]:
    """What this installation can run: ``{"numpy": {...}, "cpu": {...}, "cuda": {...}}``.

    Each entry has ``available`` and, when it is not, ``reason``. ``cpu`` also tells ``openmp`` and
    ``threads``; ``cuda`` lists its ``devices``.
    """
    out: dict[str, dict[str, Any]] = {"numpy": {"available": True, "numpy": np.__version__}}
    cpu = cpu_module()
    if cpu is None:
        out["cpu"] = {"available": False, "reason": load_error("cpu")}
    else:
        info = cpu.build_info()
        out["cpu"] = {
            "available": True,
            "openmp": bool(info["openmp"]),
            "threads": int(cpu.num_threads()),
            "compiler": info["compiler"],
        }
    cuda = cuda_module()
    if cuda is None:
        out["cuda"] = {"available": False, "reason": load_error("cuda")}
    else:
        count, _ = cuda.device_count()
        devices = [cuda.device_props(i) for i in range(count)]
        out["cuda"] = {"available": True, "devices": devices, **cuda.build_info()}
    return out


def array_module(device: str) -> Any:
    """NumPy for ``device="cpu"``; CuPy for ``"cuda"``, or ``ValueError`` saying why it cannot run."""
    if device == "cpu":
        return np
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - every reason CuPy cannot run is reported the same way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--device cuda needs CuPy and a CUDA device ({reason})") from exc
    return cupy
