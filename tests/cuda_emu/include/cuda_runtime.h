// A CPU emulation of the part of the CUDA runtime and device language that prefcal's kernels use, for
// running cuda/*.cu with the host compiler on a machine without a GPU (PREFCAL_CUDA=EMULATE; see
// tests/cuda_emu/README.md). Not a simulator of the hardware: it checks the kernels' logic, not their speed.
//
// Each block runs as blockDim.x fibers on one OS thread (blocks one after another): __syncthreads is a
// barrier, a warp shuffle an exchange through a per-warp slot array between two warp barriers, atomics
// std::atomic_ref, __shared__ arrays static (one block at a time); dynamic shared memory is a buffer of
// exactly the requested bytes (so AddressSanitizer sees an overrun), device memory host memory of exactly the
// requested bytes, both filled with 0xcd.
// Launches run to completion before they return (every stream is synchronous). A launch is written
// `kernel << emu::Config(grid, block, smem, stream) << emu::args(...)`: tests/cuda_emu/rewrite.py turns
// `kernel<<<grid, block, smem, stream>>>(...)` into that.
#pragma once

#include <math.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

// ------------------------------------------------------------------------------------------ types
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) ulonglong2 {
  unsigned long long x, y;
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorLaunchOutOfResources = 701,
};
using cudaStream_t = struct CUstream_st*;
using cudaEvent_t = struct CUevent_st*;
using cudaMemPool_t = struct CUmemPoolHandle_st*;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaMemAllocationType { cudaMemAllocationTypeInvalid = 0, cudaMemAllocationTypePinned = 1 };
enum cudaMemAllocationHandleType { cudaMemHandleTypeNone = 0 };
enum cudaMemLocationType { cudaMemLocationTypeInvalid = 0, cudaMemLocationTypeDevice = 1 };
enum cudaMemPoolAttr { cudaMemPoolAttrReleaseThreshold = 4 };
struct cudaMemLocation {
  cudaMemLocationType type;
  int id;
};
struct cudaMemPoolProps {
  cudaMemAllocationType allocType;
  cudaMemAllocationHandleType handleTypes;
  cudaMemLocation location;
};
struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount, l2CacheSize;
  size_t totalGlobalMem;
};

// --------------------------------------------------------------------------------- the emulation
namespace emu {

// A block's threads are fibers run by one OS thread, each until it waits at a barrier or exits;
// a barrier opens when every thread of its group that has not exited waits at it (an exited thread drops out,
// as on the GPU). A group whose live threads all wait, but not at one barrier, is a divergent barrier: the
// emulation reports it and aborts, where the GPU would hang or misbehave.
struct Barrier {
  int live = 0;     // threads of the group that have not exited
  int arrived = 0;  // of them, waiting here
  void arrive_and_wait();
};

struct Warp {
  explicit Warp(int size_) : size(static_cast<unsigned>(size_)) { bar.live = size_; }
  Barrier bar;
  unsigned size;
  uint64_t slot[32] = {};
};
struct Block {
  explicit Block(unsigned threads) { bar.live = static_cast<int>(threads); }
  Barrier bar;
  std::vector<std::unique_ptr<Warp>> warps;
  unsigned char* smem = nullptr;
  int counts[3] = {0, 0, 0};  // of __syncthreads_count, in turn
  std::vector<unsigned> count_calls;  // calls of __syncthreads_count, a thread
};
inline thread_local Block* tl_block = nullptr;

inline unsigned char* dynamic_smem() { return tl_block->smem; }

struct Config {
  dim3 grid, block;
  size_t smem = 0;
  cudaStream_t stream = nullptr;
  template <class G, class B>
  Config(G g, B b, size_t s = 0, cudaStream_t st = nullptr)
      : grid(to_dim3(g)), block(to_dim3(b)), smem(s), stream(st) {}
  template <class D>
  static dim3 to_dim3(D d) {
    if constexpr (std::is_same_v<D, dim3>) {
      return d;
    } else {
      // an out-of-range count becomes 0 or more than the limit, which the launch rejects
      return dim3(d < D(0) || static_cast<unsigned long long>(d) > 0xffffffffull ? 0u : static_cast<unsigned>(d));
    }
  }
};

// Runs `body` as the threads of every block of the grid; false (and the last error set) for a configuration
// the GPU would refuse.
bool run_grid(const void* kernel, const Config& c, const std::function<void()>& body);

template <class... P>
struct Launch {
  void (*kernel)(P...);
  Config config;
};
template <class... P>
Launch<P...> operator<<(void (*kernel)(P...), const Config& c) {
  return {kernel, c};
}
template <class... A>
std::tuple<std::decay_t<A>...> args(A&&... a) {
  return std::tuple<std::decay_t<A>...>(std::forward<A>(a)...);
}
template <class... P, class... A>
void operator<<(const Launch<P...>& l, std::tuple<A...> a) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  // the kernel's parameters, converted as a call would convert them, shared read-only by its threads
  const std::tuple<P...> params = std::apply([](auto&&... x) { return std::tuple<P...>(x...); }, a);
  run_grid(reinterpret_cast<const void*>(l.kernel), l.config, [&] { std::apply(l.kernel, params); });
}

void set_max_dynamic_smem(const void* kernel, int bytes);
int occupancy(int block, size_t smem);
int multiprocessors();

}  // namespace emu

// ---------------------------------------------------------------------------------- device functions
inline void __syncthreads() { emu::tl_block->bar.arrive_and_wait(); }
inline int __syncthreads_count(int predicate) {
  emu::Block& b = *emu::tl_block;
  const unsigned k = b.count_calls[threadIdx.x]++ % 3;
  // the slot of the call after this one was last read before the previous call's barrier: clear it now
  b.counts[(k + 1) % 3] = 0;
  b.counts[k] += predicate != 0 ? 1 : 0;
  b.bar.arrive_and_wait();
  return b.counts[k];
}
inline int __syncthreads_or(int predicate) { return __syncthreads_count(predicate) != 0 ? 1 : 0; }

template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  emu::Warp& w = *emu::tl_block->warps[threadIdx.x / 32];
  const unsigned lane = threadIdx.x % 32;
  std::memcpy(&w.slot[lane], &v, sizeof v);
  w.bar.arrive_and_wait();
  T r = v;
  const unsigned segment = lane / unsigned(width) * unsigned(width);
  if (lane + delta < segment + unsigned(width) && lane + delta < w.size) std::memcpy(&r, &w.slot[lane + delta], sizeof r);
  w.bar.arrive_and_wait();
  return r;
}
template <class T>
T __ldg(const T* p) {
  return *p;
}

template <class T>
T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
template <class T>
T atomicMin(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}

// CUDA's integer min / max of any two integer or floating types, as in device code
template <class A, class B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(b) < C(a) ? C(b) : C(a);
}
template <class A, class B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(b) : C(a);
}

inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned>(x)) + 1; }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
// float addition rounded toward zero (the double sum of two floats is exact unless their exponents differ
// by more than 29; then it is within one float ulp of the exact sum, on the correct side of it)
inline float __fadd_rz(float a, float b) {
  const double d = static_cast<double>(a) + static_cast<double>(b);
  float f = static_cast<float>(d);
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
  return f;
}
inline float __expf(float x) { return std::exp(x); }

// -------------------------------------------------------------------------------------- host runtime
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int device);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaRuntimeGetVersion(int* v);

cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMemPoolCreate(cudaMemPool_t* pool, const cudaMemPoolProps* props);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);
cudaError_t cudaMallocFromPoolAsync(void** p, size_t bytes, cudaMemPool_t pool, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* p, cudaStream_t stream);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = nullptr);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);

cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

template <class F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0) return cudaErrorInvalidValue;
  emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}
template <class F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F*, int block, size_t smem) {
  *blocks = emu::occupancy(block, smem);
  return cudaSuccess;
}
