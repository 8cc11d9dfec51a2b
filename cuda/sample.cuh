// One Gumbel top-k draw on the device, shared by pl.sample (cuda/pl.cu) and the Monte Carlo marginals
// (cuda/marginals.cu), so both see the same samples for the same seed (device code only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "prefcal/philox.hpp"
#include "prefcal/pl.hpp"

namespace prefcal::cuda::device {

// Draw (b, t) of the row sr (n scores, mask mk or null): the available items with the kk largest keys
// s_i (+ the Gumbel noise of (seed, b, t, i) when `noise`), sorted in key[0 .. cnt), item[0 .. cnt) (larger
// key first; on equal keys the lower item stays first). Returns cnt = min(kk, available items). Every item
// written is in [0, n).
template <class T>
__device__ __forceinline__ int64_t gumbel_top(const T* __restrict__ sr, const uint8_t* __restrict__ mk, int64_t n,
                                              int64_t kk, uint64_t seed, bool noise, int64_t b, int64_t t,
                                              pl::Strided<double> key, pl::Strided<int32_t> item) {
  int64_t cnt = 0;
  if (kk <= 0) return cnt;
  for (int64_t i = 0; i < n; ++i) {
    if (!pl::available(mk, i)) continue;
    double x = static_cast<double>(sr[i]);
    if (noise) {
      x += philox::gumbel(seed, static_cast<uint64_t>(b), static_cast<uint32_t>(t), static_cast<uint32_t>(i));
    }
    if (cnt == kk && !(x > key[kk - 1])) continue;
    int64_t p = cnt < kk ? cnt : kk - 1;
    while (p > 0 && x > key[p - 1]) {  // strict: an equal key keeps the lower item in front
      key[p] = key[p - 1];
      item[p] = item[p - 1];
      --p;
    }
    key[p] = x;
    item[p] = static_cast<int32_t>(i);
    if (cnt < kk) ++cnt;
  }
  return cnt;
}

}  // namespace prefcal::cuda::device
