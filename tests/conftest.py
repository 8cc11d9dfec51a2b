"""Backends under test and random data.

Every public function is run on every backend this machine has, and compared with the NumPy reference:

* ``reference``: NumPy arrays with the backend forced to the pure-NumPy reference;
* ``cpu``: NumPy arrays on the C++ kernels;
* ``torch-cpu``: torch CPU tensors (zero-copy through DLPack) on the C++ kernels;
* ``cupy``, ``torch-cuda``: device arrays on the CUDA kernels;
* ``cuda-staged``: NumPy arrays forced onto the CUDA kernels (``PREFCAL_BACKEND=cuda``).

Backends that are not available here are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import prefcal
import pytest
from prefcal import _backend

ALL_BACKENDS = ("reference", "cpu", "torch-cpu", "cupy", "torch-cuda", "cuda-staged")


def _cuda_reason() -> str | None:
    info = prefcal.backends()["cuda"]
    return None if info["available"] else f"prefcal._cuda not usable: {info['reason']}"


def _torch_cuda_ok() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def skip_reason(name: str) -> str | None:
    """Why backend `name` cannot run here, or None."""
    if name == "reference":
        return None
    if name in ("cpu", "torch-cpu") and _backend.cpu_module() is None:
        return f"prefcal._cpu not importable: {_backend.load_error('cpu')}"
    if name in ("torch-cpu", "torch-cuda") and importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    if name in ("cupy", "torch-cuda", "cuda-staged"):
        reason = _cuda_reason()
        if reason:
            return reason
        if name == "cupy" and importlib.util.find_spec("cupy") is None:
            return "cupy is not installed"
        if name == "torch-cuda" and not _torch_cuda_ok():
            return "torch has no CUDA device"
    return None


@dataclass
class Backend:
    """Makes inputs for one backend and forces the matching prefcal backend while in use."""

    name: str

    @property
    def on_gpu(self) -> bool:
        return self.name in ("cupy", "torch-cuda", "cuda-staged")

    def array(self, a: Any) -> Any:
        a = np.asarray(a)
        if self.name in ("reference", "cpu", "cuda-staged"):
            return a
        if self.name == "cupy":
            import cupy

            return cupy.asarray(a)
        import torch

        t = torch.from_numpy(np.array(a, order="C", copy=True))
        return t.cuda() if self.name == "torch-cuda" else t

    def numpy(self, x: Any) -> np.ndarray:
        """A result of this backend as a NumPy array, after checking it has the backend's array type."""
        module = type(x).__module__.split(".")[0]
        expected = {"torch-cpu": "torch", "torch-cuda": "torch", "cupy": "cupy"}.get(self.name, "numpy")
        assert module == expected, f"{self.name} returned {type(x)}"
        if module == "torch":
            assert (x.device.type == "cuda") == (self.name == "torch-cuda")
            return x.detach().cpu().numpy()
        if module == "cupy":
            return x.get()
        return np.asarray(x)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        forced = {"reference": "numpy", "cuda-staged": "cuda"}.get(self.name)
        previous = _backend._forced  # the programmatic override only, not PREFCAL_BACKEND
        prefcal.config.set_backend(forced)
        try:
            yield
        finally:
            prefcal.config.set_backend(previous)


def get_backend(name: str) -> Backend:
    reason = skip_reason(name)
    if reason:
        pytest.skip(reason)
    return Backend(name)


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    b = get_backend(request.param)
    with b.active():
        yield b


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A fresh generator per test (seeded from entropy; the seed is printed on failure)."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    request.node.user_properties.append(("seed", seed))
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)


def binary_data(rng: np.random.Generator, n: int, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Confidences and outcomes drawn from a mildly miscalibrated model."""
    conf = rng.random(n).astype(dtype)
    correct = rng.random(n) < conf.astype(np.float64) ** 1.3
    return conf, correct
