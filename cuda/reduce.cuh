// Block- and warp-level helpers shared by the CUDA kernel files (device code only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "prefcal/common.hpp"

namespace prefcal::cuda::device {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFull, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32) in a fixed order; valid in thread 0. scratch: 32 doubles.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double s = 0.0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < warps; ++w) s += scratch[w];
  }
  return s;
}

// Every thread of the block calls this: warp minimum, then one atomic per warp that saw a bad row.
__device__ __forceinline__ void report_bad(int64_t first, unsigned long long* bad) {
  long long f = first;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) f = min(f, __shfl_down_sync(kFull, f, o));
  if ((threadIdx.x & 31) == 0 && f != kNoError) atomicMin(bad, static_cast<unsigned long long>(f));
}

}  // namespace prefcal::cuda::device
