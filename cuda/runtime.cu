// Runtime helpers: error reporting, device queries, prefcal's memory pool, device guard, staging memory.
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "launch.hpp"
#include "runtime.cuh"

namespace prefcal::cuda {

void throw_cuda(cudaError_t err, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(err) + " (" + what + " at " + file + ":" +
                           std::to_string(line) + ")");
}

namespace {

// One pool per device. The release threshold keeps freed memory in the pool across synchronisations, so
// the small scratch buffers of repeated calls cost no cudaMalloc.
cudaMemPool_t pool_for(int device) {
  static std::mutex mutex;
  static std::vector<cudaMemPool_t> pools;
  std::lock_guard<std::mutex> lock(mutex);
  if (pools.size() <= static_cast<size_t>(device)) pools.resize(static_cast<size_t>(device) + 1, nullptr);
  if (pools[static_cast<size_t>(device)] == nullptr) {
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t pool;
    PREFCAL_CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
    uint64_t threshold = uint64_t(1) << 30;  // keep up to 1 GiB cached
    PREFCAL_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    pools[static_cast<size_t>(device)] = pool;
  }
  return pools[static_cast<size_t>(device)];
}

}  // namespace

PoolBuffer::PoolBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
  if (bytes == 0) bytes = 256;
  PREFCAL_CUDA_CHECK(cudaMallocFromPoolAsync(&ptr_, bytes, pool_for(current_device()), stream_));
}

PoolBuffer::~PoolBuffer() {
  if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
}

int current_device() {
  int d = 0;
  PREFCAL_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

int multiprocessors(int device) {
  static std::mutex mutex;
  static std::vector<int> cache;
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() <= static_cast<size_t>(device)) cache.resize(static_cast<size_t>(device) + 1, 0);
  int& v = cache[static_cast<size_t>(device)];
  if (v == 0) PREFCAL_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
  return v;
}

int device_count(std::string* error) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (error != nullptr) *error = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error state
    return 0;
  }
  return n;
}

DeviceProps device_props(int device) {
  cudaDeviceProp p;
  PREFCAL_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  DeviceProps d;
  d.name = p.name;
  d.major = p.major;
  d.minor = p.minor;
  d.multiprocessors = p.multiProcessorCount;
  d.total_memory = p.totalGlobalMem;
  d.l2_bytes = p.l2CacheSize;
  PREFCAL_CUDA_CHECK(cudaDriverGetVersion(&d.driver_version));
  PREFCAL_CUDA_CHECK(cudaRuntimeGetVersion(&d.runtime_version));
  return d;
}

DeviceGuard::DeviceGuard(int device) {
  PREFCAL_CUDA_CHECK(cudaGetDevice(&previous_));
  if (device != previous_) PREFCAL_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int now = -1;
  if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
}

void* device_malloc(size_t bytes) {
  void* p = nullptr;
  PREFCAL_CUDA_CHECK(cudaMalloc(&p, bytes == 0 ? 1 : bytes));
  return p;
}

void device_free(void* ptr) noexcept { cudaFree(ptr); }

void copy_host_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) PREFCAL_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void copy_device_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) PREFCAL_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

}  // namespace prefcal::cuda
