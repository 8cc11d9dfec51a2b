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

// The same draw for rows of n <= K items (K a power of two), in registers: all n keys (one Philox block per
// item pair), -inf for the unavailable items and the K - n slots past the row, then a bitonic sorting network
// on (key descending, item ascending), every index known at compile time. Items are distinct, so the order is
// total and the sorted prefix is gumbel_top's. Returns the number of available items.
template <int K, class T>
__device__ __forceinline__ int gumbel_sort(const T* __restrict__ sr, const uint8_t* __restrict__ mk, int n,
                                           uint64_t seed, bool noise, int64_t b, uint32_t t, double (&key)[K],
                                           int (&item)[K]) {
  static_assert(K >= 2 && (K & (K - 1)) == 0, "K is a power of two");
  int cnt = 0;
#pragma unroll
  for (int i0 = 0; i0 < K; i0 += 2) {
    philox::U32x4 blk{};
    if (noise && i0 < n) blk = philox::block(seed, static_cast<uint64_t>(b), t, static_cast<uint32_t>(i0 >> 1));
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = i0 + h;
      const bool avail = i < n && pl::available(mk, i);
      double x = -INFINITY;
      if (avail) {
        x = static_cast<double>(sr[i]);
        if (noise) x += philox::gumbel_of(blk, h != 0);
      }
      key[i] = x;
      item[i] = i;
      cnt += avail ? 1 : 0;
    }
  }
#pragma unroll
  for (int size = 2; size <= K; size <<= 1) {
#pragma unroll
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
#pragma unroll
      for (int i = 0; i < K; ++i) {
        const int j = i ^ stride;
        if (j > i) {
          // j before i in the final order; blocks with (i & size) != 0 sort the other way round
          const bool j_first = key[j] > key[i] || (key[j] == key[i] && item[j] < item[i]);
          if (j_first == ((i & size) == 0)) {
            const double tk = key[i];
            key[i] = key[j];
            key[j] = tk;
            const int ti = item[i];
            item[i] = item[j];
            item[j] = ti;
          }
        }
      }
    }
  }
  return cnt;
}

}  // namespace prefcal::cuda::device
