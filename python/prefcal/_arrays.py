"""Array libraries prefcal accepts: what an input is, where it lives, and how to reach its memory.

NumPy arrays (and anything ``np.asarray`` takes, such as lists) live on the host. CuPy arrays are found by
their ``__cuda_array_interface__``; PyTorch tensors by their type, and are reached through DLPack: CPU
tensors become NumPy arrays without a copy (``np.from_dlpack``), CUDA tensors hand their device pointer to
``prefcal._cuda`` through a DLPack capsule. This module never imports CuPy or torch: a library is only used
when the caller already passed one of its arrays (so it is in ``sys.modules``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

#: torch dtype name -> NumPy dtype (bfloat16 has none: it is widened to float32 first).
_TORCH_DTYPES = {
    "float16": np.float16,
    "float32": np.float32,
    "float64": np.float64,
    "bool": np.bool_,
    "uint8": np.uint8,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
}


@dataclass(frozen=True)
class Where:
    """The library of an input and its device: ``"cpu"`` or a CUDA device ordinal."""

    library: str  # "numpy", "cupy" or "torch"
    device: Any  # "cpu" or int
    label: str  # e.g. "cupy.ndarray", for messages

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"

    def describe(self) -> str:
        return self.label if not self.on_gpu else f"{self.label} on cuda:{self.device}"


def _type_label(x: object) -> str:
    return f"{type(x).__module__.split('.')[0]}.{type(x).__name__}"


def where(x: object) -> Where:
    """Classifies one input (lists and scalars count as NumPy)."""
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        dev = x.device  # type: ignore[attr-defined]
        if dev.type == "cpu":
            return Where("torch", "cpu", "torch.Tensor")
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else sys.modules["torch"].cuda.current_device()
            return Where("torch", int(index), "torch.Tensor")
        raise TypeError(f"torch tensors on device {dev} are not supported (use cpu or cuda)")
    if module == "cupy":
        return Where("cupy", int(x.device.id), _type_label(x))  # type: ignore[attr-defined]
    # (checked on the type: reading the property of a CuPy array would synchronise its stream)
    if hasattr(type(x), "__cuda_array_interface__"):
        raise TypeError(f"{_type_label(x)} is not supported; pass a CuPy array or a torch tensor")
    label = _type_label(x) if isinstance(x, np.ndarray) else f"{type(x).__name__} (read as numpy.ndarray)"
    return Where("numpy", "cpu", label)


def same_place(named: dict[str, tuple[object, Where]]) -> Where:
    """All inputs of one call must come from one library and one device (else TypeError)."""
    items = list(named.items())
    first_name, (_, first) = items[0]
    for name, (_, w) in items[1:]:
        if w.library != first.library or w.device != first.device:
            raise TypeError(f"{first_name} is {first.describe()} but {name} is {w.describe()}")
    return first


def to_numpy_input(x: object) -> np.ndarray:
    """A host input as a NumPy array, without a copy where possible (torch CPU tensors through DLPack)."""
    if type(x).__module__.split(".")[0] == "torch":
        t = x.detach()  # type: ignore[attr-defined]
        if str(t.dtype).removeprefix("torch.") not in _TORCH_DTYPES:
            t = t.float()  # bfloat16 and the like
        return np.from_dlpack(t)
    a = np.asarray(x)
    if a.dtype == object and type(x).__module__.split(".")[0] == "pandas":
        return _pandas_values(x, a)
    return a


def _pandas_values(x: Any, a: np.ndarray) -> np.ndarray:
    """The values of a pandas object of nullable extension dtypes (Int64, Float64, boolean: NumPy reads a
    DataFrame of them as objects) in the NumPy dtype they stand for; ValueError for a missing value."""
    kinds = {getattr(d, "kind", "O") for d in (x.dtypes if hasattr(x, "columns") else [x.dtype])}
    if kinds <= {"b"}:
        dtype: Any = np.bool_
    elif kinds <= {"i", "u"}:
        dtype = np.int64
    elif kinds <= {"i", "u", "f"}:
        dtype = np.float64
    else:
        return a
    if bool(x.isna().to_numpy().any()):
        at = np.argwhere(np.asarray(x.isna()))[0]
        where = tuple(int(i) for i in at)
        raise ValueError(f"the pandas input has a missing value (pd.NA) at {where}: fill it first")
    return x.to_numpy(dtype=dtype)


def dtype_of(x: object) -> np.dtype:
    if type(x).__module__.split(".")[0] == "torch":
        name = str(x.dtype).removeprefix("torch.")  # type: ignore[attr-defined]
        if name in _TORCH_DTYPES:
            return np.dtype(_TORCH_DTYPES[name])
        if name == "bfloat16":
            return np.dtype(np.float16)  # converted like a half-precision float (to float32)
        raise TypeError(f"unsupported torch dtype {x.dtype}")  # type: ignore[attr-defined]
    return np.dtype(x.dtype)  # type: ignore[attr-defined]


def shape_of(x: object) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)  # type: ignore[attr-defined]


def device_normalise(x: object, dtype: np.dtype) -> object:
    """A CuPy array or CUDA tensor with the kernel's dtype, C-contiguous (one copy at most)."""
    if type(x).__module__.split(".")[0] == "torch":
        torch = sys.modules["torch"]
        target = getattr(torch, dtype.name)  # NumPy and torch share the names of these dtypes
        x = x.detach()  # type: ignore[attr-defined]
        if x.dtype != target:
            x = x.to(dtype=target)
        return x if x.is_contiguous() else x.contiguous()
    cupy = sys.modules["cupy"]
    if x.dtype != dtype or not x.flags.c_contiguous:  # type: ignore[attr-defined]
        x = cupy.ascontiguousarray(x, dtype=dtype)
    return x


def broadcast_rows(x: object, rows: int) -> object:
    """A 1-D array (n,) as (rows, n), in its own library (a view; the kernels' conversion copies it)."""
    lib = type(x).__module__.split(".")[0]
    if lib == "torch":
        return x.expand(rows, -1)  # type: ignore[attr-defined]
    if lib == "cupy":
        return sys.modules["cupy"].broadcast_to(x, (rows,) + tuple(x.shape))  # type: ignore[attr-defined]
    return np.broadcast_to(np.asarray(x), (rows,) + tuple(np.shape(x)))


def byte_view(x: object) -> object:
    """A bool array's bytes as uint8, in its own library (a view)."""
    if type(x).__module__.split(".")[0] == "torch":
        return x.view(sys.modules["torch"].uint8)  # type: ignore[attr-defined]
    return x.view(np.uint8)  # type: ignore[attr-defined]


def host_copy(x: object) -> np.ndarray:
    """A device array copied to host memory."""
    if type(x).__module__.split(".")[0] == "torch":
        return to_numpy_input(x.detach().cpu())  # type: ignore[attr-defined]
    return x.get()  # type: ignore[attr-defined]


@dataclass
class DevicePointer:
    """What the CUDA bindings need of one array: (pointer, NumPy typestr), and what keeps it alive."""

    ptr: int
    typestr: str
    owner: object

    def arg(self) -> tuple[int, str]:
        return (self.ptr, self.typestr)


def device_pointer(x: object, cuda_module: Any) -> DevicePointer:
    """Pointer of a C-contiguous CuPy array or CUDA tensor (from device_normalise)."""
    if type(x).__module__.split(".")[0] == "torch":
        # stream=-1: no synchronisation (prefcal runs on the tensor's current stream anyway).
        capsule = x.__dlpack__(stream=-1)  # type: ignore[attr-defined]
        info = cuda_module.dlpack_info(capsule)
        typestr = info["typestr"]
        return DevicePointer(int(info["ptr"]), typestr, (x, capsule))
    # CuPy: read the pointer directly (exporting __cuda_array_interface__ would synchronise the stream).
    return DevicePointer(int(x.data.ptr), "|" + x.dtype.str[1:], x)  # type: ignore[attr-defined]


def current_stream(x: object, device: int) -> int:
    """The caller's current CUDA stream for the library of `x` (the kernels run on it)."""
    if type(x).__module__.split(".")[0] == "torch":
        return int(sys.modules["torch"].cuda.current_stream(device).cuda_stream)
    return int(sys.modules["cupy"].cuda.get_current_stream().ptr)


def element(x: object, index: int | tuple[int, ...]) -> Any:
    """One element (or row) as a NumPy scalar (or array) on the host, for error messages."""
    if isinstance(x, np.ndarray):
        return x[index]
    if type(x).__module__.split(".")[0] == "torch":
        i = index if isinstance(index, tuple) else (index,)
        sub = x[i]  # type: ignore[index]
        return to_numpy_input(sub.reshape(-1).cpu()).reshape(tuple(sub.shape))[()]
    return x[index].get()[()]  # type: ignore[index]


@dataclass
class Output:
    """A kernel output on a CUDA device: ``ptr`` for the kernel, ``result()`` for the caller."""

    array: Any  # CuPy array, torch tensor, or a DeviceArray (staged)
    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @classmethod
    def new(cls, library: str | None, shape: tuple[int, ...], dtype: np.dtype, device: int,
            cuda_module: Any) -> Output:
        if library == "cupy":
            cupy = sys.modules["cupy"]
            with cupy.cuda.Device(device):
                a = cupy.empty(shape, dtype=dtype)
            return cls(a, int(a.data.ptr), shape, dtype)
        if library == "torch":
            torch = sys.modules["torch"]
            t = torch.empty(shape, dtype=getattr(torch, dtype.name), device=f"cuda:{device}")
            return cls(t, int(t.data_ptr()), shape, dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        staged = cuda_module.DeviceArray.empty(max(nbytes, 1), device)
        return cls(staged, int(staged.ptr), shape, dtype)

    def result(self) -> Any:
        if type(self.array).__module__.split(".")[0] in ("cupy", "torch"):
            return self.array
        host = np.empty(self.shape, dtype=self.dtype)
        if host.nbytes:
            self.array.to_host(host)
        return host
