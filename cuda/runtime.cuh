// CUDA-side helpers shared by the kernel files: error checks, prefcal's memory pool, launch geometry.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
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

// Rounds up to a multiple of 256 bytes (keeps every sub-buffer of a PoolBuffer aligned).
inline size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace prefcal::cuda
