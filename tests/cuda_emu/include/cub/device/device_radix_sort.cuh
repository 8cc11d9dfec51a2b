// CPU emulation of cub::DeviceRadixSort::SortPairs for unsigned integer keys (what prefcal's kernels sort):
// a stable sort by the key bits [begin_bit, end_bit), as CUB's LSD radix sort orders them.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <type_traits>
#include <vector>

namespace cub {

struct DeviceRadixSort {
  template <class K, class V, class N>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, N n, int begin_bit = 0, int end_bit = int(sizeof(K) * 8),
                               cudaStream_t = nullptr) {
    static_assert(std::is_unsigned_v<K>, "the emulation sorts unsigned keys only");
    if (temp == nullptr) {
      temp_bytes = 16;
      return cudaSuccess;
    }
    if (begin_bit < 0 || end_bit > int(sizeof(K) * 8) || begin_bit > end_bit) return cudaErrorInvalidValue;
    const size_t count = static_cast<size_t>(n);
    const int width = end_bit - begin_bit;
    const K mask = width >= int(sizeof(K) * 8) ? ~K(0) : K((K(1) << width) - 1);
    auto bits = [&](K k) { return K((k >> begin_bit) & mask); };
    std::vector<size_t> order(count);
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return bits(keys_in[a]) < bits(keys_in[b]); });
    std::vector<K> k(count);
    std::vector<V> v(count);
    for (size_t i = 0; i < count; ++i) {
      k[i] = keys_in[order[i]];
      v[i] = values_in[order[i]];
    }
    std::copy(k.begin(), k.end(), keys_out);
    std::copy(v.begin(), v.end(), values_out);
    return cudaSuccess;
  }
};

}  // namespace cub
