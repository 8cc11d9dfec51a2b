// Element types the kernels are instantiated for, and dispatch from a run-time type to a template.
// Shared by the CPU bindings and the CUDA launchers (plain C++: no pybind11, no CUDA headers).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace prefcal::bind {

enum class DType { kBool, kU8, kI8, kI32, kI64, kF32, kF64, kOther };

// kind/itemsize as NumPy's dtype.kind / dtype.itemsize ('b' bool, 'u' unsigned, 'i' signed, 'f' float).
inline DType parse_dtype(char kind, int64_t itemsize) {
  if (kind == 'b' && itemsize == 1) return DType::kBool;
  if (kind == 'u' && itemsize == 1) return DType::kU8;
  if (kind == 'i' && itemsize == 1) return DType::kI8;
  if (kind == 'i' && itemsize == 4) return DType::kI32;
  if (kind == 'i' && itemsize == 8) return DType::kI64;
  if (kind == 'f' && itemsize == 4) return DType::kF32;
  if (kind == 'f' && itemsize == 8) return DType::kF64;
  return DType::kOther;
}

// NumPy typestr such as "<f4", "|b1", "<i8".
inline DType parse_typestr(const std::string& s) {
  if (s.size() < 3) return DType::kOther;
  return parse_dtype(s[1], std::stoll(s.substr(2)));
}

[[noreturn]] inline void bad_dtype(const char* what) {
  throw std::invalid_argument(std::string("internal error: unsupported dtype for ") + what);
}

// f(T{}) with T the confidence / probability type.
template <class F>
decltype(auto) dispatch_float(DType d, const char* what, F&& f) {
  switch (d) {
    case DType::kF32: return f(float{});
    case DType::kF64: return f(double{});
    default: bad_dtype(what);
  }
}

// f(T{}) with T the storage type of a 0/1 outcome; bool is read as its byte.
template <class F>
decltype(auto) dispatch_outcome(DType d, const char* what, F&& f) {
  switch (d) {
    case DType::kBool:
    case DType::kU8: return f(uint8_t{});
    case DType::kI8: return f(int8_t{});
    case DType::kI32: return f(int32_t{});
    case DType::kI64: return f(int64_t{});
    case DType::kF32: return f(float{});
    case DType::kF64: return f(double{});
    default: bad_dtype(what);
  }
}

template <class F>
decltype(auto) dispatch_label(DType d, const char* what, F&& f) {
  switch (d) {
    case DType::kI32: return f(int32_t{});
    case DType::kI64: return f(int64_t{});
    default: bad_dtype(what);
  }
}

}  // namespace prefcal::bind
