// CUDA-side helpers shared by the kernel files: error checks, prefcal's memory pool, launch geometry.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <map>
#include <mutex>
#include <tuple>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace prefcal::cuda {

[[noreturn]] void throw_cuda(cudaError_t err, const char* what, const char* file, int line);

#define PREFCAL_CUDA_CHECK(expr)                                                 \
  do {                                                                           \
    const cudaError_t prefcal_err_ = (expr);                                     \
    if (prefcal_err_ != cudaSuccess) {                                           \
      ::prefcal::cuda::throw_cuda(prefcal_err_, #expr, __FILE__, __LINE__);      \
    }                                                                            \
  } while (0)

// After every launch.
#define PREFCAL_CUDA_LAUNCHED() PREFCAL_CUDA_CHECK(cudaGetLastError())

// Device memory from prefcal's stream-ordered pool (one pool per device, kept warm between calls);
// freed on the same stream when the buffer goes out of scope.
class PoolBuffer {
 public:
  PoolBuffer(size_t bytes, cudaStream_t stream);
  ~PoolBuffer();
  PoolBuffer(const PoolBuffer&) = delete;
  PoolBuffer& operator=(const PoolBuffer&) = delete;
  template <class T>
  T* as(size_t byte_offset = 0) const {
    return reinterpret_cast<T*>(static_cast<unsigned char*>(ptr_) + byte_offset);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

int current_device();
int multiprocessors(int device);

// Resident blocks of `block` threads on the current device for `kernel` with `smem` bytes of dynamic shared
// memory, raising the kernel's dynamic shared-memory limit to `smem_budget` when more than 48 KiB are asked
// (cached per kernel, device, size and block: the queries cost more than a small launch).
template <class Kernel>
int64_t resident_blocks(Kernel kernel, size_t smem, int block, size_t smem_budget) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, size_t, int>, int64_t> cache;
  const int device = current_device();
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), device, smem, block);
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (smem > 48 * 1024) {
    // The attribute is per kernel, not per launch size: always raise it to the whole budget.
    PREFCAL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_budget)));
  }
  int per_sm = 0;
  PREFCAL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block, smem));
  const int64_t blocks = int64_t(per_sm > 1 ? per_sm : 1) * multiprocessors(device);
  cache.emplace(key, blocks);
  return blocks;
}

// Rounds up to a multiple of 256 bytes (keeps every sub-buffer of a PoolBuffer aligned).
inline size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Offsets of aligned sub-buffers carved out of one PoolBuffer: take(n) returns the next offset; bytes is the
// total to allocate.
struct Carve {
  size_t bytes = 0;
  size_t take(size_t n) {
    const size_t at = bytes;
    bytes += align_up(n);
    return at;
  }
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid of a one-thread-per-item kernel whose threads each need `per_thread` bytes of global scratch
// (`scratch_budget` for all threads together): at most the resident threads, whole warps, blocks of up to
// `max_block` threads.
struct Geometry {
  int block = 256;
  int64_t grid = 1;
  int64_t threads() const { return int64_t(block) * grid; }
};

inline Geometry geometry(int64_t items, size_t per_thread, int64_t resident_threads, int max_block,
                         size_t scratch_budget) {
  int64_t want = std::min<int64_t>(resident_threads, ceil_div(std::max<int64_t>(items, 1), 32) * 32);
  if (per_thread > 0) want = std::min<int64_t>(want, static_cast<int64_t>(scratch_budget / per_thread));
  want = std::max<int64_t>(want, 32);
  Geometry g;
  g.block = static_cast<int>(std::min<int64_t>(max_block, ceil_div(want, 32) * 32));
  g.grid = ceil_div(want, g.block);
  return g;
}

}  // namespace prefcal::cuda
