// Shared definitions for the host (C++) and device (CUDA) kernels.
//
// Everything in cpp/include/prefcal is usable from both compilers: functions that the GPU runs are
// marked PREFCAL_HD, so the CPU build (and the CPU tests) exercise the same arithmetic.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PREFCAL_HD __host__ __device__ __forceinline__
#else
#define PREFCAL_HD inline
#endif

// Fully unrolls the next loop (of a trip count known at compile time) on the device and with GCC.
#if defined(__CUDA_ARCH__)
#define PREFCAL_UNROLL _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define PREFCAL_UNROLL _Pragma("GCC unroll 64")
#else
#define PREFCAL_UNROLL
#endif

namespace prefcal {

// "No bad row found": kernels report the first offending row (or element) index, or this value.
// Python looks at that row and words the message, so every backend raises the same text.
constexpr int64_t kNoError = INT64_MAX;

}  // namespace prefcal
