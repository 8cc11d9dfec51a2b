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

namespace prefcal {

// "No bad row found": kernels report the first offending row (or element) index, or this value.
// Python looks at that row and words the message, so every backend raises the same text.
constexpr int64_t kNoError = INT64_MAX;

}  // namespace prefcal
