// CUDA kernels of binned calibration (SPEC §4). Per-element rules: prefcal/binning.hpp (shared with the CPU).
//
// Uniform binning of binary confidences, three kernels chosen by the bin count:
//   "private" (small n_bins): each thread owns its bins in shared memory, laid out [bin][thread] so a warp's
//     accesses are conflict-free; no atomics in the loop; 16-byte vector loads; per-thread (count,
//     sum_correct) packed in one 64-bit word and sum_confidence in float64 (weighted: three float64 sums).
//     At the end each block reduces its threads in a fixed order and writes one row of partial bins.
//   "shared" (medium n_bins): one float64 bin table per block in shared memory, updated with atomics.
//   "global" (n_bins too large for shared memory): float64 atomics straight into one global table.
// Partial rows are then added in block order by one small kernel, so the private path is bit-for-bit
// reproducible from run to run (the atomic paths are reproducible up to float64 rounding of the sums;
// counts are exact everywhere). Float32 confidences are binned with uniform_bin_f32, which equals the
// float64 rule for every float32 value.
//
// Quantile binning sorts (confidence bits, row) pairs with CUB's stable radix sort (and, for grouped bins,
// a second stable sort by group), then one block per bin sums its contiguous rank range in a fixed order.
#include <cub/device/device_radix_sort.cuh>

#include <math_constants.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "launch.hpp"
#include "prefcal/binning.hpp"
#include "reduce.cuh"
#include "runtime.cuh"

namespace prefcal::cuda {

namespace {

using device::block_sum;
using device::report_bad;
using device::warp_sum;

using bind::DType;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr size_t kSmemBudget = 96 * 1024;  // dynamic shared memory a block may ask for
constexpr int64_t kMaxRowsPerThread = 65000;  // < 2^16: 16-bit per-thread counters of the unweighted private kernel

// ------------------------------------------------------------------------------------------- device helpers

template <class To, class From>
__device__ __forceinline__ To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "size mismatch");
  To t;
  memcpy(&t, &v, sizeof(To));
  return t;
}

__device__ __forceinline__ int32_t bin_of(float c, int32_t B) {
  return B <= kMaxBinsF32 ? uniform_bin_f32(c, B) : uniform_bin(static_cast<double>(c), B);
}
__device__ __forceinline__ int32_t bin_of(double c, int32_t B) { return uniform_bin(c, B); }

// Four consecutive elements from a pointer aligned to 4 * sizeof(T), with the widest loads.
template <class T>
__device__ __forceinline__ void load4(const T* __restrict__ p, T (&v)[4]) {
  if constexpr (sizeof(T) == 1) {
    const unsigned int u = __ldg(reinterpret_cast<const unsigned int*>(p));
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = bit_cast<T>(static_cast<uint8_t>(u >> (8 * k)));
  } else if constexpr (sizeof(T) == 4) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    v[0] = bit_cast<T>(u.x);
    v[1] = bit_cast<T>(u.y);
    v[2] = bit_cast<T>(u.z);
    v[3] = bit_cast<T>(u.w);
  } else {
    static_assert(sizeof(T) == 8, "1-, 4- or 8-byte elements");
    const ulonglong2 a = __ldg(reinterpret_cast<const ulonglong2*>(p));
    const ulonglong2 b = __ldg(reinterpret_cast<const ulonglong2*>(p) + 1);
    v[0] = bit_cast<T>(a.x);
    v[1] = bit_cast<T>(a.y);
    v[2] = bit_cast<T>(b.x);
    v[3] = bit_cast<T>(b.y);
  }
}


template <class TC, class TY>
__device__ __forceinline__ bool row_ok(TC c, TY y, double w) {
  return valid_confidence(c) & valid_binary(y) & valid_weight(w);
}

// ------------------------------------------------------------------------------------------- uniform kernels

// Thread-private bins in shared memory. Unweighted: u32 (count | correct << 16)[B][T] then f64 sum_conf[B][T]
// (12 bytes per bin and thread; the host caps the rows per thread at kMaxRowsPerThread so that the 16-bit
// halves cannot overflow). Weighted: f64 sum_w[B][T], sum_wc[B][T], sum_wy[B][T].
template <class TC, class TY, bool kW, bool kVec>
__global__ void __launch_bounds__(kThreads)
    uniform_private(const TC* __restrict__ conf, const TY* __restrict__ y, const double* __restrict__ w, int64_t n,
                    int32_t B, double* __restrict__ partials, unsigned long long* __restrict__ bad) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int t = threadIdx.x;
  uint32_t* cc = reinterpret_cast<uint32_t*>(smem);
  double* s0 = reinterpret_cast<double*>(smem);
  double* s1 = reinterpret_cast<double*>(smem + size_t(B) * kThreads * (kW ? sizeof(double) : sizeof(uint32_t)));
  double* s2 = s1 + size_t(B) * kThreads;
  for (int b = 0; b < B; ++b) {
    if constexpr (kW) {
      s0[b * kThreads + t] = 0.0;
      s2[b * kThreads + t] = 0.0;
    } else {
      cc[b * kThreads + t] = 0;
    }
    s1[b * kThreads + t] = 0.0;
  }
  int64_t first = kNoError;  // this thread's first bad row (its rows come in increasing order)
  // Adds one row; returns true when it is invalid. Invalid rows still land in a (clamped) bin: the call
  // fails anyway, and nothing is read or written out of bounds.
  auto add = [&](TC c, TY v, double wi) -> bool {
    const int k = bin_of(c, B) * kThreads + t;
    if constexpr (kW) {
      s0[k] += wi;
      s1[k] += wi * static_cast<double>(c);
      s2[k] += outcome(v) ? wi : 0.0;
    } else {
      cc[k] += (outcome(v) << 16) | 1u;
      s1[k] += static_cast<double>(c);
    }
    return !row_ok(c, v, wi);
  };
  // Four rows starting at row i0: add them; on the rare bad block, find its first bad row.
  auto add4 = [&](const TC (&c)[4], const TY (&v)[4], const double (&wv)[4], int64_t i0) {
    bool bad4 = false;
#pragma unroll
    for (int k = 0; k < 4; ++k) bad4 |= add(c[k], v[k], wv[k]);
    if (bad4 && first == kNoError) {
      for (int k = 3; k >= 0; --k) {
        if (!row_ok(c[k], v[k], wv[k])) first = i0 + k;
      }
    }
  };
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const int64_t start = int64_t(blockIdx.x) * kThreads + t;
  int64_t tail = 0;
  if constexpr (kVec) {
    // U vector loads in flight per thread before any is used.
    constexpr int U = sizeof(TC) == 4 ? 4 : 2;
    const int64_t n4 = n / 4;
    int64_t v = start;
    for (; v + (U - 1) * stride < n4; v += U * stride) {
      TC c[U][4];
      TY yy[U][4];
      double ww[U][4];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        load4(conf + 4 * (v + u * stride), c[u]);
        load4(y + 4 * (v + u * stride), yy[u]);
        if constexpr (kW) {
          load4(w + 4 * (v + u * stride), ww[u]);
        } else {
#pragma unroll
          for (int k = 0; k < 4; ++k) ww[u][k] = 1.0;
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) add4(c[u], yy[u], ww[u], 4 * (v + u * stride));
    }
    for (; v < n4; v += stride) {
      TC c[4];
      TY yy[4];
      double ww[4] = {1.0, 1.0, 1.0, 1.0};
      load4(conf + 4 * v, c);
      load4(y + 4 * v, yy);
      if constexpr (kW) load4(w + 4 * v, ww);
      add4(c, yy, ww, 4 * v);
    }
    tail = n4 * 4;
  }
  for (int64_t i = tail + start; i < n; i += stride) {
    const double wi = kW ? w[i] : 1.0;
    if (add(conf[i], y[i], wi) && first == kNoError) first = i;
  }
  report_bad(first, bad);
  __syncthreads();

  // Fixed-order reduction: warp w handles (field, bin) pairs w, w + kWarps, ...
  const int warp = t >> 5, lane = t & 31;
  for (int fb = warp; fb < 3 * B; fb += kWarps) {
    const int f = fb / B, b = fb - f * B;
    double s = 0.0;
    for (int j = lane; j < kThreads; j += 32) {
      const int k = b * kThreads + j;
      if constexpr (kW) {
        s += f == 0 ? s0[k] : (f == 1 ? s1[k] : s2[k]);
      } else {
        s += f == 1 ? s1[k] : static_cast<double>(f == 0 ? (cc[k] & 0xffffu) : (cc[k] >> 16));
      }
    }
    s = warp_sum(s);
    if (lane == 0) partials[(int64_t(blockIdx.x) * 3 + f) * B + b] = s;
  }
}

// One float64 (count, sum_conf, sum_correct) table per block in shared memory, or one global table.
template <class TC, class TY, bool kW>
__global__ void __launch_bounds__(kThreads)
    uniform_atomic(const TC* __restrict__ conf, const TY* __restrict__ y, const double* __restrict__ w, int64_t n,
                   int32_t B, bool in_shared, double* __restrict__ out, unsigned long long* __restrict__ bad) {
  extern __shared__ __align__(16) unsigned char smem[];
  double* bins = in_shared ? reinterpret_cast<double*>(smem) : out;
  if (in_shared) {
    for (int k = threadIdx.x; k < 3 * B; k += kThreads) bins[k] = 0.0;
    __syncthreads();
  }
  int64_t first = kNoError;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const TC c = conf[i];
    const TY v = y[i];
    const double wi = kW ? w[i] : 1.0;
    if (!row_ok(c, v, wi)) first = i < first ? i : first;
    const int32_t b = bin_of(c, B);
    atomicAdd(bins + b, wi);
    atomicAdd(bins + B + b, wi * static_cast<double>(c));
    if (outcome(v)) atomicAdd(bins + 2 * B + b, wi);
  }
  report_bad(first, bad);
  if (in_shared) {
    __syncthreads();
    for (int k = threadIdx.x; k < 3 * B; k += kThreads) out[int64_t(blockIdx.x) * 3 * B + k] = bins[k];
  }
}

// out[j] = sum over rows r of partials[r * width + j]: one block per column, each thread summing a fixed set
// of rows, then block_sum's fixed tree, so the result is the same on every run. (A thread per column summing
// all rows in sequence took ~20 us for 528 rows: a chain of dependent L2 reads.)
__global__ void __launch_bounds__(kThreads)
    reduce_rows(const double* __restrict__ partials, int64_t rows, int64_t width, double* __restrict__ out) {
  __shared__ double scratch[kWarps];
  for (int64_t j = blockIdx.x; j < width; j += gridDim.x) {
    double s = 0.0;
    for (int64_t r = threadIdx.x; r < rows; r += kThreads) s += partials[r * width + j];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[j] = s;
  }
}

void launch_reduce_rows(const double* partials, int64_t rows, int64_t width, double* out, cudaStream_t st) {
  const unsigned grid = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(width, 65535)));
  reduce_rows<<<grid, kThreads, 0, st>>>(partials, rows, width, out);
  PREFCAL_CUDA_LAUNCHED();
}

// ------------------------------------------------------------------------------------------- multiclass kernels

// kind 0 (confidence): one table; kind 1 (classwise): one table per class over all (row, class) pairs;
// kind 2 (top_label): one table per predicted class. Tables are (group, field, bin).
template <class TP, class TL>
__global__ void __launch_bounds__(kThreads)
    multiclass_atomic(const TP* __restrict__ probs, const TL* __restrict__ labels, int64_t n, int32_t C, int32_t B,
                      int kind, bool in_shared, double* __restrict__ out, unsigned long long* __restrict__ bad) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t width = 3 * int64_t(kind == 0 ? 1 : C) * B;
  double* bins = in_shared ? reinterpret_cast<double*>(smem) : out;
  if (in_shared) {
    for (int64_t k = threadIdx.x; k < width; k += kThreads) bins[k] = 0.0;
    __syncthreads();
  }
  int64_t first = kNoError;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t r = int64_t(blockIdx.x) * kThreads + threadIdx.x; r < n; r += stride) {
    const TP* p = probs + r * C;
    const TL lab = labels[r];
    TP best;
    int32_t arg;
    const bool ok = top_class(p, C, lab, best, arg);
    if (kind == 1) {
      for (int32_t c = 0; c < C; ++c) {
        const TP v = p[c];
        const int32_t b = bin_of(v, B);
        double* g = bins + int64_t(c) * 3 * B;
        atomicAdd(g + b, 1.0);
        atomicAdd(g + B + b, static_cast<double>(v));
        if (TL(c) == lab) atomicAdd(g + 2 * B + b, 1.0);
      }
    } else {
      const int32_t b = bin_of(best, B);
      double* g = bins + (kind == 2 ? int64_t(arg) * 3 * B : 0);
      atomicAdd(g + b, 1.0);
      atomicAdd(g + B + b, static_cast<double>(best));
      if (TL(arg) == lab) atomicAdd(g + 2 * B + b, 1.0);
    }
    if (!ok) first = r < first ? r : first;
  }
  report_bad(first, bad);
  if (in_shared) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < width; k += kThreads) out[int64_t(blockIdx.x) * width + k] = bins[k];
  }
}

// Validates rows and, where the outputs are given, writes the max probability, its class and the hit flag.
template <class TP, class TL>
__global__ void __launch_bounds__(kThreads)
    multiclass_argmax(const TP* __restrict__ probs, const TL* __restrict__ labels, int64_t n, int32_t C,
                      TP* __restrict__ maxp, int32_t* __restrict__ pred, uint8_t* __restrict__ hit,
                      unsigned long long* __restrict__ bad) {
  int64_t first = kNoError;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t r = int64_t(blockIdx.x) * kThreads + threadIdx.x; r < n; r += stride) {
    const TL lab = labels[r];
    TP best;
    int32_t arg;
    if (!top_class(probs + r * C, C, lab, best, arg)) first = r < first ? r : first;
    if (maxp != nullptr) maxp[r] = best;
    if (pred != nullptr) pred[r] = arg;
    if (hit != nullptr) hit[r] = TL(arg) == lab ? 1 : 0;
  }
  report_bad(first, bad);
}

// Classwise quantile bins: the (row, class) pairs of row-major probs become rows of group `class`.
template <class TL>
__global__ void classwise_expand(const TL* __restrict__ labels, int64_t n, int32_t C, int32_t* __restrict__ seg,
                                 uint8_t* __restrict__ hit) {
  const int64_t total = n * C;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / C;
    const int32_t c = static_cast<int32_t>(e - r * C);
    seg[e] = c;
    hit[e] = labels[r] == TL(c) ? 1 : 0;
  }
}

// ------------------------------------------------------------------------------------------- quantile kernels

// Radix-sortable key of a validated confidence: its bit pattern (monotone on [0, 1]; -0 becomes +0).
__device__ __forceinline__ uint32_t sort_key(float c) { return c == 0.0f ? 0u : __float_as_uint(c); }
__device__ __forceinline__ unsigned long long sort_key(double c) {
  return c == 0.0 ? 0ull : static_cast<unsigned long long>(__double_as_longlong(c));
}
template <class TC>
using KeyOf = std::conditional_t<sizeof(TC) == 4, uint32_t, unsigned long long>;
template <class TC>
constexpr int key_end_bit() {
  return sizeof(TC) == 4 ? 30 : 62;  // 1.0f = 0x3F800000, 1.0 = 0x3FF0000000000000
}

template <class TC, class TY, bool kW>
__global__ void __launch_bounds__(kThreads)
    quantile_keys(const TC* __restrict__ conf, const TY* __restrict__ y, const double* __restrict__ w, int64_t n,
                  KeyOf<TC>* __restrict__ keys, int64_t* __restrict__ order, unsigned long long* __restrict__ bad) {
  int64_t first = kNoError;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const TC c = conf[i];
    if (!row_ok(c, y[i], kW ? w[i] : 1.0)) first = i < first ? i : first;
    keys[i] = sort_key(c);
    order[i] = i;
  }
  report_bad(first, bad);
}

__global__ void gather_groups(const int32_t* __restrict__ seg, const int64_t* __restrict__ order, int64_t n,
                              uint32_t* __restrict__ keys) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < n; r += int64_t(gridDim.x) * blockDim.x) {
    keys[r] = static_cast<uint32_t>(seg[order[r]]);
  }
}

__global__ void count_groups(const int32_t* __restrict__ seg, int64_t n, unsigned long long* __restrict__ counts) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    atomicAdd(counts + seg[i], 1ull);
  }
}

// One block per (group, bin): sums the bin's contiguous rank range in a fixed order; writes its lower edge.
template <class TC, class TY, bool kW>
__global__ void __launch_bounds__(kThreads)
    quantile_bins(const TC* __restrict__ conf, const TY* __restrict__ y, const double* __restrict__ w,
                  const int64_t* __restrict__ order, const int64_t* __restrict__ starts, int64_t groups, int32_t B,
                  double* __restrict__ out, double* __restrict__ edges) {
  __shared__ double scratch[kWarps];
  for (int64_t sb = blockIdx.x; sb < groups * B; sb += gridDim.x) {
    const int64_t s = sb / B;
    const int32_t b = static_cast<int32_t>(sb - s * B);
    const int64_t base = starts[s], ns = starts[s + 1] - base;
    const int64_t lo = base + quantile_start(b, ns, B), hi = base + quantile_start(b + 1, ns, B);
    double a0 = 0.0, a1 = 0.0, a2 = 0.0;
    for (int64_t r = lo + threadIdx.x; r < hi; r += kThreads) {
      const int64_t i = order[r];
      const double wi = kW ? w[i] : 1.0;
      a0 += wi;
      a1 += wi * static_cast<double>(conf[i]);
      a2 += outcome(y[i]) ? wi : 0.0;
    }
    a0 = block_sum(a0, scratch);
    a1 = block_sum(a1, scratch);
    a2 = block_sum(a2, scratch);
    if (threadIdx.x == 0) {
      double* o = out + s * 3 * B;
      o[b] = a0;
      o[B + b] = a1;
      o[2 * B + b] = a2;
      double* e = edges + s * (B + 1);
      if (b == 0) {
        e[0] = 0.0;
        e[B] = 1.0;
      } else {
        e[b] = ns > 0 ? static_cast<double>(conf[order[lo]]) : CUDART_NAN;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------- scores

template <class TC, class TY, bool kW>
__global__ void __launch_bounds__(kThreads)
    score_kernel(const TC* __restrict__ conf, const TY* __restrict__ y, const double* __restrict__ w, int64_t n,
                 double eps, double* __restrict__ partials, unsigned long long* __restrict__ bad) {
  __shared__ double scratch[kWarps];
  int64_t first = kNoError;
  double sw = 0.0, sb = 0.0, sl = 0.0;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const TC c = conf[i];
    const TY v = y[i];
    const double wi = kW ? w[i] : 1.0;
    if (!row_ok(c, v, wi)) first = i < first ? i : first;
    const double t = outcome(v) ? 1.0 : 0.0;
    sw += wi;
    sb += wi * brier_term(static_cast<double>(c), t);
    sl += wi * log_loss_term(static_cast<double>(c), t, eps);
  }
  report_bad(first, bad);
  sw = block_sum(sw, scratch);
  sb = block_sum(sb, scratch);
  sl = block_sum(sl, scratch);
  if (threadIdx.x == 0) {
    partials[3 * int64_t(blockIdx.x)] = sw;
    partials[3 * int64_t(blockIdx.x) + 1] = sb;
    partials[3 * int64_t(blockIdx.x) + 2] = sl;
  }
}

// ------------------------------------------------------------------------------------------- host side

cudaStream_t as_stream(Stream s) { return static_cast<cudaStream_t>(s); }

int64_t blocks_for(int64_t items, int64_t per_block, int64_t cap) {
  return std::max<int64_t>(1, std::min<int64_t>(cap, (items + per_block - 1) / per_block));
}


// Testing aid: PREFCAL_CUDA_GRID_CAP limits the resident grid of the private kernel (to exercise the
// rows-per-thread limit on small inputs).
int64_t grid_cap() {
  const char* v = std::getenv("PREFCAL_CUDA_GRID_CAP");
  const long long cap = v != nullptr ? std::atoll(v) : 0;
  return cap > 0 ? cap : std::numeric_limits<int64_t>::max();
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Result of a launch: device scratch holding the final bins (width doubles) followed by the bad-row flag.
struct Result {
  PoolBuffer buf;
  int64_t width;
  Result(int64_t width_, cudaStream_t st)
      : buf(align_up(size_t(width_) * sizeof(double)) + 256, st), width(width_) {}
  double* bins() const { return buf.as<double>(); }
  unsigned long long* bad() const { return buf.as<unsigned long long>(align_up(size_t(width) * sizeof(double))); }
  // The device flag starts at all ones (UINT64_MAX) so that atomicMin finds the first bad row.
  void init(cudaStream_t st) const { PREFCAL_CUDA_CHECK(cudaMemsetAsync(bad(), 0xff, sizeof(unsigned long long), st)); }
  static int64_t first_bad(unsigned long long flag) {
    return flag == ~0ull ? kNoError : static_cast<int64_t>(flag);
  }
  // Copies bins and flag to the host and waits. Returns the first bad row.
  int64_t fetch(double* host, cudaStream_t st) const {
    std::vector<unsigned char> tmp(align_up(size_t(width) * sizeof(double)) + sizeof(unsigned long long));
    PREFCAL_CUDA_CHECK(cudaMemcpyAsync(tmp.data(), bins(), tmp.size(), cudaMemcpyDeviceToHost, st));
    PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
    unsigned long long b;
    std::memcpy(&b, tmp.data() + align_up(size_t(width) * sizeof(double)), sizeof(b));
    if (host != nullptr) std::memcpy(host, tmp.data(), size_t(width) * sizeof(double));
    return first_bad(b);
  }
  int64_t fetch_bad(cudaStream_t st) const {
    unsigned long long b;
    PREFCAL_CUDA_CHECK(cudaMemcpyAsync(&b, bad(), sizeof(b), cudaMemcpyDeviceToHost, st));
    PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
    return first_bad(b);
  }
};

// The launch plan of bin_uniform for given inputs.
struct UniformPlan {
  enum Path { kPrivate, kShared, kGlobal } path;
  bool vec = false;  // every input aligned for 4-row vector loads
  int64_t grid = 1;
  size_t smem = 0;
  int64_t rows = 1;  // partial rows to reduce
};

template <class TC, class TY>
UniformPlan plan_uniform(const Binary& in, int32_t B) {
  UniformPlan p;
  const bool weighted = in.weights != nullptr;
  const size_t private_bytes = size_t(B) * kThreads * (weighted ? 24 : 12);
  const size_t shared_bytes = size_t(3) * B * sizeof(double);
  const bool vec = aligned(in.conf, 4 * sizeof(TC)) && aligned(in.correct, 4 * sizeof(TY)) &&
                   (!weighted || aligned(in.weights, 32));
  p.vec = vec;
  if (private_bytes <= kSmemBudget) {
    p.path = UniformPlan::kPrivate;
    p.smem = private_bytes;
    int64_t cap = 0;
    if (weighted) {
      cap = vec ? resident_blocks(uniform_private<TC, TY, true, true>, p.smem, kThreads, kSmemBudget)
                : resident_blocks(uniform_private<TC, TY, true, false>, p.smem, kThreads, kSmemBudget);
    } else {
      cap = vec ? resident_blocks(uniform_private<TC, TY, false, true>, p.smem, kThreads, kSmemBudget)
                : resident_blocks(uniform_private<TC, TY, false, false>, p.smem, kThreads, kSmemBudget);
    }
    // At least enough blocks that no thread bins more than kMaxRowsPerThread rows (extra blocks run in waves).
    const int64_t min_blocks = (in.n + int64_t(kThreads) * kMaxRowsPerThread - 1) / (int64_t(kThreads) * kMaxRowsPerThread);
    p.grid = std::max(blocks_for(in.n, int64_t(kThreads) * 4, std::min(cap, grid_cap())), min_blocks);
    p.rows = p.grid;
  } else if (shared_bytes <= kSmemBudget) {
    p.path = UniformPlan::kShared;
    p.smem = shared_bytes;
    const int64_t cap = weighted ? resident_blocks(uniform_atomic<TC, TY, true>, p.smem, kThreads, kSmemBudget)
                                 : resident_blocks(uniform_atomic<TC, TY, false>, p.smem, kThreads, kSmemBudget);
    p.grid = blocks_for(in.n, int64_t(kThreads) * 16, cap);
    p.rows = p.grid;
  } else {
    p.path = UniformPlan::kGlobal;
    p.grid = blocks_for(in.n, int64_t(kThreads) * 16, int64_t(4) * multiprocessors(current_device()) * 8);
    p.rows = 1;
  }
  return p;
}

// Enqueues the uniform binning of `in` into res (bins and bad flag), using `partials` (p.rows * 3B doubles).
template <class TC, class TY>
void enqueue_uniform(const Binary& in, int32_t B, const UniformPlan& p, double* partials, const Result& res,
                     cudaStream_t st) {
  const auto* conf = static_cast<const TC*>(in.conf);
  const auto* y = static_cast<const TY*>(in.correct);
  const double* w = in.weights;
  const bool weighted = w != nullptr;
  const bool vec = p.vec;
  const unsigned grid = static_cast<unsigned>(p.grid);
  res.init(st);
  if (p.path == UniformPlan::kPrivate) {
    if (weighted && vec) {
      uniform_private<TC, TY, true, true><<<grid, kThreads, p.smem, st>>>(conf, y, w, in.n, B, partials, res.bad());
    } else if (weighted) {
      uniform_private<TC, TY, true, false><<<grid, kThreads, p.smem, st>>>(conf, y, w, in.n, B, partials, res.bad());
    } else if (vec) {
      uniform_private<TC, TY, false, true><<<grid, kThreads, p.smem, st>>>(conf, y, w, in.n, B, partials, res.bad());
    } else {
      uniform_private<TC, TY, false, false><<<grid, kThreads, p.smem, st>>>(conf, y, w, in.n, B, partials, res.bad());
    }
  } else {
    const bool in_shared = p.path == UniformPlan::kShared;
    if (!in_shared) PREFCAL_CUDA_CHECK(cudaMemsetAsync(partials, 0, size_t(3) * B * sizeof(double), st));
    if (weighted) {
      uniform_atomic<TC, TY, true><<<grid, kThreads, p.smem, st>>>(conf, y, w, in.n, B, in_shared, partials, res.bad());
    } else {
      uniform_atomic<TC, TY, false><<<grid, kThreads, p.smem, st>>>(conf, y, w, in.n, B, in_shared, partials, res.bad());
    }
  }
  PREFCAL_CUDA_LAUNCHED();
  const int64_t width = 3 * int64_t(B);
  launch_reduce_rows(partials, p.rows, width, res.bins(), st);
}

template <class F>
decltype(auto) dispatch_binary(const Binary& in, F&& f) {
  return bind::dispatch_float(in.conf_type, "confidence", [&](auto tc) -> decltype(auto) {
    return bind::dispatch_outcome(in.correct_type, "correct", [&](auto ty) -> decltype(auto) {
      return f(tc, ty);
    });
  });
}

// Quantile bins of (conf, y, w) grouped by seg (null: one group). Fills host out (groups, 3, B) and edges.
template <class TC, class TY>
int64_t quantile_impl(const TC* conf, const TY* y, const double* w, const int32_t* seg, int64_t groups, int64_t n,
                      int32_t B, double* out, double* edges, cudaStream_t st) {
  using K = KeyOf<TC>;
  const int64_t width = groups * 3 * B;
  if (n == 0) {
    std::fill(out, out + width, 0.0);
    for (int64_t s = 0; s < groups; ++s) {
      double* e = edges + s * (B + 1);
      e[0] = 0.0;
      e[B] = 1.0;
      for (int32_t b = 1; b < B; ++b) e[b] = std::numeric_limits<double>::quiet_NaN();
    }
    return kNoError;
  }
  Result flag(1, st);
  flag.init(st);
  PoolBuffer keys(align_up(size_t(n) * sizeof(K)) * 2, st);
  PoolBuffer order(align_up(size_t(n) * sizeof(int64_t)) * 2, st);
  K* k0 = keys.as<K>();
  K* k1 = keys.as<K>(align_up(size_t(n) * sizeof(K)));
  int64_t* o0 = order.as<int64_t>();
  int64_t* o1 = order.as<int64_t>(align_up(size_t(n) * sizeof(int64_t)));
  const unsigned grid = static_cast<unsigned>(blocks_for(n, kThreads, int64_t(32) * multiprocessors(current_device())));
  if (w != nullptr) {
    quantile_keys<TC, TY, true><<<grid, kThreads, 0, st>>>(conf, y, w, n, k0, o0, flag.bad());
  } else {
    quantile_keys<TC, TY, false><<<grid, kThreads, 0, st>>>(conf, y, w, n, k0, o0, flag.bad());
  }
  PREFCAL_CUDA_LAUNCHED();
  const int64_t first = flag.fetch_bad(st);
  if (first != kNoError) return first;

  size_t temp_bytes = 0;
  PREFCAL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, k0, k1, o0, o1, n, 0, key_end_bit<TC>(), st));
  int group_bits = 1;
  while ((int64_t(1) << group_bits) < groups) ++group_bits;
  if (seg != nullptr) {
    size_t t2 = 0;
    const uint32_t* dummy_in = nullptr;
    uint32_t* dummy_out = nullptr;
    PREFCAL_CUDA_CHECK(
        cub::DeviceRadixSort::SortPairs(nullptr, t2, dummy_in, dummy_out, o1, o0, n, 0, group_bits, st));
    temp_bytes = std::max(temp_bytes, t2);
  }
  PoolBuffer temp(temp_bytes, st);
  PREFCAL_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(temp.as<void>(), temp_bytes, k0, k1, o0, o1, n, 0, key_end_bit<TC>(), st));
  const int64_t* sorted = o1;

  std::vector<int64_t> starts(size_t(groups) + 1, 0);
  starts[1] = n;
  std::unique_ptr<PoolBuffer> gkeys;
  if (seg != nullptr) {
    // Stable sort of the value order by group: (group, value, row) order.
    gkeys = std::make_unique<PoolBuffer>(align_up(size_t(n) * sizeof(uint32_t)) * 2, st);
    uint32_t* g0 = gkeys->as<uint32_t>();
    uint32_t* g1 = gkeys->as<uint32_t>(align_up(size_t(n) * sizeof(uint32_t)));
    gather_groups<<<grid, kThreads, 0, st>>>(seg, o1, n, g0);
    PREFCAL_CUDA_LAUNCHED();
    PREFCAL_CUDA_CHECK(
        cub::DeviceRadixSort::SortPairs(temp.as<void>(), temp_bytes, g0, g1, o1, o0, n, 0, group_bits, st));
    sorted = o0;
    PoolBuffer counts(size_t(groups) * sizeof(unsigned long long), st);
    PREFCAL_CUDA_CHECK(cudaMemsetAsync(counts.as<void>(), 0, size_t(groups) * sizeof(unsigned long long), st));
    count_groups<<<grid, kThreads, 0, st>>>(seg, n, counts.as<unsigned long long>());
    PREFCAL_CUDA_LAUNCHED();
    std::vector<unsigned long long> host_counts(static_cast<size_t>(groups));
    PREFCAL_CUDA_CHECK(cudaMemcpyAsync(host_counts.data(), counts.as<void>(), host_counts.size() * sizeof(unsigned long long),
                                       cudaMemcpyDeviceToHost, st));
    PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
    for (int64_t s = 0; s < groups; ++s) starts[size_t(s) + 1] = starts[size_t(s)] + int64_t(host_counts[size_t(s)]);
  }
  const size_t out_bytes = align_up(size_t(width) * sizeof(double));
  const size_t edge_bytes = align_up(size_t(groups) * (B + 1) * sizeof(double));
  PoolBuffer res(out_bytes + edge_bytes + align_up(starts.size() * sizeof(int64_t)), st);
  int64_t* dstarts = res.as<int64_t>(out_bytes + edge_bytes);
  PREFCAL_CUDA_CHECK(cudaMemcpyAsync(dstarts, starts.data(), starts.size() * sizeof(int64_t), cudaMemcpyHostToDevice, st));
  const unsigned bgrid = static_cast<unsigned>(std::min<int64_t>(groups * B, 65535));
  if (w != nullptr) {
    quantile_bins<TC, TY, true><<<bgrid, kThreads, 0, st>>>(conf, y, w, sorted, dstarts, groups, B, res.as<double>(),
                                                           res.as<double>(out_bytes));
  } else {
    quantile_bins<TC, TY, false><<<bgrid, kThreads, 0, st>>>(conf, y, w, sorted, dstarts, groups, B, res.as<double>(),
                                                            res.as<double>(out_bytes));
  }
  PREFCAL_CUDA_LAUNCHED();
  PREFCAL_CUDA_CHECK(cudaMemcpyAsync(out, res.as<void>(), size_t(width) * sizeof(double), cudaMemcpyDeviceToHost, st));
  PREFCAL_CUDA_CHECK(cudaMemcpyAsync(edges, res.as<void>(out_bytes), size_t(groups) * (B + 1) * sizeof(double),
                                     cudaMemcpyDeviceToHost, st));
  PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
  return kNoError;
}

}  // namespace

int64_t bin_uniform(const Binary& in, int32_t B, double* out, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return dispatch_binary(in, [&](auto tc, auto ty) {
    using TC = decltype(tc);
    using TY = decltype(ty);
    const UniformPlan p = plan_uniform<TC, TY>(in, B);
    const int64_t width = 3 * int64_t(B);
    PoolBuffer partials(size_t(p.rows) * size_t(width) * sizeof(double), st);
    Result res(width, st);
    enqueue_uniform<TC, TY>(in, B, p, partials.as<double>(), res, st);
    return res.fetch(out, st);
  });
}

double time_bin_uniform(const Binary& in, int32_t B, int reps, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return dispatch_binary(in, [&](auto tc, auto ty) {
    using TC = decltype(tc);
    using TY = decltype(ty);
    const UniformPlan p = plan_uniform<TC, TY>(in, B);
    const int64_t width = 3 * int64_t(B);
    PoolBuffer partials(size_t(p.rows) * size_t(width) * sizeof(double), st);
    Result res(width, st);
    cudaEvent_t a, b;
    PREFCAL_CUDA_CHECK(cudaEventCreate(&a));
    PREFCAL_CUDA_CHECK(cudaEventCreate(&b));
    enqueue_uniform<TC, TY>(in, B, p, partials.as<double>(), res, st);  // warm-up
    std::vector<float> ms;
    for (int r = 0; r < reps; ++r) {
      PREFCAL_CUDA_CHECK(cudaEventRecord(a, st));
      enqueue_uniform<TC, TY>(in, B, p, partials.as<double>(), res, st);
      PREFCAL_CUDA_CHECK(cudaEventRecord(b, st));
      PREFCAL_CUDA_CHECK(cudaEventSynchronize(b));
      float t = 0.f;
      PREFCAL_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
      ms.push_back(t);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    res.fetch(nullptr, st);
    std::sort(ms.begin(), ms.end());
    return ms.empty() ? 0.0 : double(ms[ms.size() / 2]);
  });
}

std::string describe_bin_uniform(const Binary& in, int32_t B) {
  return dispatch_binary(in, [&](auto tc, auto ty) {
    using TC = decltype(tc);
    using TY = decltype(ty);
    const UniformPlan p = plan_uniform<TC, TY>(in, B);
    const char* name = p.path == UniformPlan::kPrivate ? "private" : (p.path == UniformPlan::kShared ? "shared" : "global");
    return std::string(name) + " grid=" + std::to_string(p.grid) + " smem=" + std::to_string(p.smem);
  });
}

int64_t bin_quantile(const Binary& in, int32_t B, double* out, double* edges, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return dispatch_binary(in, [&](auto tc, auto ty) {
    using TC = decltype(tc);
    using TY = decltype(ty);
    return quantile_impl(static_cast<const TC*>(in.conf), static_cast<const TY*>(in.correct), in.weights, nullptr, 1,
                         in.n, B, out, edges, st);
  });
}

int64_t score_sums(const Binary& in, double eps, double* out, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return dispatch_binary(in, [&](auto tc, auto ty) {
    using TC = decltype(tc);
    using TY = decltype(ty);
    const auto* conf = static_cast<const TC*>(in.conf);
    const auto* y = static_cast<const TY*>(in.correct);
    const int64_t grid = blocks_for(in.n, kThreads * 8, int64_t(4) * multiprocessors(current_device()));
    PoolBuffer partials(size_t(grid) * 3 * sizeof(double), st);
    Result res(3, st);
    res.init(st);
    if (in.weights != nullptr) {
      score_kernel<TC, TY, true><<<unsigned(grid), kThreads, 0, st>>>(conf, y, in.weights, in.n, eps,
                                                                     partials.as<double>(), res.bad());
    } else {
      score_kernel<TC, TY, false><<<unsigned(grid), kThreads, 0, st>>>(conf, y, in.weights, in.n, eps,
                                                                      partials.as<double>(), res.bad());
    }
    PREFCAL_CUDA_LAUNCHED();
    launch_reduce_rows(partials.as<double>(), grid, 3, res.bins(), st);
    return res.fetch(out, st);
  });
}

int64_t multiclass_uniform(const Multiclass& in, int32_t B, int kind, double* out, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return bind::dispatch_float(in.probs_type, "probs", [&](auto tp) {
    using TP = decltype(tp);
    return bind::dispatch_label(in.labels_type, "labels", [&](auto tl) {
      using TL = decltype(tl);
      const int64_t groups = kind == 0 ? 1 : in.n_classes;
      const int64_t width = groups * 3 * B;
      const size_t table = size_t(width) * sizeof(double);
      const bool in_shared = table <= kSmemBudget;
      int64_t grid = 0;
      if (in_shared) {
        grid = blocks_for(in.n, kThreads * 4, resident_blocks(multiclass_atomic<TP, TL>, table, kThreads, kSmemBudget));
      } else {
        grid = blocks_for(in.n, kThreads * 4, int64_t(4) * multiprocessors(current_device()));
      }
      const int64_t rows = in_shared ? grid : 1;
      PoolBuffer partials(size_t(rows) * table, st);
      if (!in_shared) PREFCAL_CUDA_CHECK(cudaMemsetAsync(partials.as<void>(), 0, table, st));
      Result res(width, st);
      res.init(st);
      multiclass_atomic<TP, TL><<<unsigned(grid), kThreads, in_shared ? table : 0, st>>>(
          static_cast<const TP*>(in.probs), static_cast<const TL*>(in.labels), in.n, in.n_classes, B, kind, in_shared,
          partials.as<double>(), res.bad());
      PREFCAL_CUDA_LAUNCHED();
      launch_reduce_rows(partials.as<double>(), rows, width, res.bins(), st);
      return res.fetch(out, st);
    });
  });
}

int64_t multiclass_quantile(const Multiclass& in, int32_t B, int kind, double* out, double* edges, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return bind::dispatch_float(in.probs_type, "probs", [&](auto tp) {
    using TP = decltype(tp);
    return bind::dispatch_label(in.labels_type, "labels", [&](auto tl) {
      using TL = decltype(tl);
      const auto* probs = static_cast<const TP*>(in.probs);
      const auto* labels = static_cast<const TL*>(in.labels);
      const int64_t n = in.n;
      const int32_t C = in.n_classes;
      const unsigned grid =
          static_cast<unsigned>(blocks_for(n, kThreads, int64_t(32) * multiprocessors(current_device())));
      Result flag(1, st);
      flag.init(st);
      if (kind == 1) {
        multiclass_argmax<TP, TL><<<grid, kThreads, 0, st>>>(probs, labels, n, C, nullptr, nullptr, nullptr, flag.bad());
        PREFCAL_CUDA_LAUNCHED();
        const int64_t first = flag.fetch_bad(st);
        if (first != kNoError) return first;
        const int64_t total = n * C;
        PoolBuffer seg(align_up(size_t(total) * sizeof(int32_t)) + size_t(total), st);
        int32_t* s = seg.as<int32_t>();
        uint8_t* hit = seg.as<uint8_t>(align_up(size_t(total) * sizeof(int32_t)));
        classwise_expand<TL><<<unsigned(blocks_for(total, kThreads, 4096)), kThreads, 0, st>>>(labels, n, C, s, hit);
        PREFCAL_CUDA_LAUNCHED();
        return quantile_impl(probs, hit, nullptr, s, C, total, B, out, edges, st);
      }
      PoolBuffer tmp(align_up(size_t(n) * sizeof(TP)) + align_up(size_t(n) * sizeof(int32_t)) + size_t(n), st);
      TP* maxp = tmp.as<TP>();
      int32_t* pred = tmp.as<int32_t>(align_up(size_t(n) * sizeof(TP)));
      uint8_t* hit = tmp.as<uint8_t>(align_up(size_t(n) * sizeof(TP)) + align_up(size_t(n) * sizeof(int32_t)));
      multiclass_argmax<TP, TL><<<grid, kThreads, 0, st>>>(probs, labels, n, C, maxp, pred, hit, flag.bad());
      PREFCAL_CUDA_LAUNCHED();
      const int64_t first = flag.fetch_bad(st);
      if (first != kNoError) return first;
      if (kind == 0) return quantile_impl(maxp, hit, nullptr, nullptr, 1, n, B, out, edges, st);
      return quantile_impl(maxp, hit, nullptr, pred, C, n, B, out, edges, st);
    });
  });
}

}  // namespace prefcal::cuda
