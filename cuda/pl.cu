// CUDA kernels of the Plackett-Luce model (SPEC §2, §7). Per-row math: prefcal/pl.hpp (shared with the CPU,
// so the CPU tests cover the arithmetic these kernels run); declarations: launch.hpp.
//
// Row kernels run one thread per row (grid-stride). Per-thread scratch that does not fit in registers (the
// listed-item bit set when n > 64, the 1 / D_j of the gradient, the fit's item order) lives in global memory
// laid out [entry][thread], so a warp's accesses are coalesced; its size caps the number of threads.
//
//   log-likelihood, "staged" (per-row scores, n <= 64): each block copies its tile of scores / rankings /
//     mask rows into shared memory with coalesced loads (row pitch padded to an odd number of elements:
//     no bank conflicts), one thread computes each row from there, and the per-row gradient goes back
//     through shared memory with coalesced stores. The common case (10^7 rows of 10 items).
//   log-likelihood, "tiled" (no gradient, per-row scores; off by default, set_loglik_kernel): the same staging
//     with the rows' pitch and row function given by a Row type: "flat" (n <= 32, n and m not multiples of 4:
//     unpadded tiles copied with 16-byte vectors, pl::row_loglik_fixed unrolled over K slots) and "exact"
//     (full rankings of 2 .. 16 items without a mask: one kernel per n, pl::row_loglik_exact<n>, loops over
//     exactly n items with checks of a few operations an item).
//   log-likelihood, "generic": everything else. With global scores the gradient is summed over rows:
//     each thread adds its rows' gradients to its own float64 accumulator row, and one block per item then
//     sums the threads in a fixed order (bit-for-bit reproducible on a given device).
//   temperature: per-thread float64 moments, fixed-order block sums, block partials added in block order.
//   sample: one thread per (row, sample); Gumbel keys (philox, float64). For n <= 32 all keys sit in
//     registers and each item goes straight to its rank, counted against the others (pl::draw_small, run by
//     the CPU tests through a test hook); beyond, they are inserted into a sorted top-k buffer in global
//     scratch. Either way, on equal keys the lower item comes first.
//   pairwise: one thread per output element.
//   fit: per-block float64 accumulators (shared memory when they fit, else slices of a global buffer) updated
//     with atomics, slices added in slice order; the log-likelihood by fixed-order block sums.
// Every kernel reports the first bad row through atomicMin on a flag that starts at UINT64_MAX.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "launch.hpp"
#include "pl_staging.cuh"
#include "prefcal/philox.hpp"
#include "prefcal/pl.hpp"
#include "reduce.cuh"
#include "runtime.cuh"

namespace prefcal::cuda {

namespace {

using device::block_sum;
using device::report_bad;
using device::warp_sum;

using bind::DType;
using pl::Bits64;
using pl::BitsRef;
using pl::Strided;

using plk::align16;
using plk::kSmemBudget;
using plk::kThreads;  // block size (smaller only when few threads are wanted)
using plk::Rows;
using plk::Stager;
using plk::StagedLayout;
using plk::TileKernel;
using plk::TilePlan;

constexpr int64_t kSmallN = 64;                        // register bit set (pl::Bits64) up to this many items
// fit accumulators in shared memory up to this size: 48 KiB (the limit without opt-in) less fit_pass_rows's
// static scratch (32 doubles)
constexpr size_t kSharedAccBytes = 48 * 1024 - 32 * sizeof(double);
constexpr size_t kScratchBudget = size_t(256) << 20;   // per-thread global scratch, all threads together

// ------------------------------------------------------------------------------------------- device helpers

__device__ __forceinline__ int64_t thread_index() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t thread_count() { return int64_t(gridDim.x) * blockDim.x; }


// Per-thread scratch in global memory, entry e of thread t at p[e * P + t] (P = threads of the grid).
struct Scratch {
  double* inv = nullptr;      // m entries (1 / D_j or log D_j)
  uint32_t* words = nullptr;  // n / 32 + 1 words of listed-item bits (n > 64), zero on entry and on exit
  int64_t* order = nullptr;   // n entries (fit Hessian)
  __device__ __forceinline__ Strided<double> inv_of(int64_t t, int64_t P) const {
    return {inv == nullptr ? nullptr : inv + t, P};
  }
  __device__ __forceinline__ Strided<int64_t> order_of(int64_t t, int64_t P) const {
    return {order == nullptr ? nullptr : order + t, P};
  }
};

template <bool kSmall>
__device__ __forceinline__ std::conditional_t<kSmall, Bits64, BitsRef> make_bits(const Scratch& sc, int64_t t,
                                                                                 int64_t P) {
  if constexpr (kSmall) {
    return Bits64{};
  } else {
    return BitsRef{{sc.words + t, P}};
  }
}

// Accumulator of the fit kernels: float64 atomics into shared or global memory.
struct AtomicAcc {
  double* p;
  __host__ __device__ __forceinline__ void operator()(int64_t i, double v) const {
#if defined(__CUDA_ARCH__)
    atomicAdd(p + i, v);
#else
    p[i] += v;
#endif
  }
  __host__ __device__ __forceinline__ bool active() const { return p != nullptr; }
};

// Edge (a, b) of the comparison graph: a plain store of 1 (every writer writes the same value).
struct EdgeSet {
  uint8_t* e;
  int64_t n;
  __host__ __device__ __forceinline__ void operator()(int64_t a, int64_t b) const { e[a * n + b] = 1; }
};

// ------------------------------------------------------------------------------------------- reductions

// out[j] = sum over r < rows of p[r * row_stride + j * col_stride]: one block per column, each thread summing
// a fixed set of rows, then block_sum's fixed tree, so the result is the same on every run.
template <class TO>
__global__ void __launch_bounds__(kThreads)
    reduce_columns(const double* __restrict__ p, int64_t rows, int64_t row_stride, int64_t width, int64_t col_stride,
                   TO* __restrict__ out) {
  __shared__ double scratch[32];
  for (int64_t j = blockIdx.x; j < width; j += gridDim.x) {
    double s = 0.0;
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) s += p[r * row_stride + j * col_stride];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[j] = static_cast<TO>(s);
  }
}

template <class TO>
void launch_reduce(const double* p, int64_t rows, int64_t row_stride, int64_t width, int64_t col_stride, TO* out,
                   cudaStream_t st) {
  if (width <= 0) return;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(width, 65535));
  reduce_columns<TO><<<grid, kThreads, 0, st>>>(p, rows, row_stride, width, col_stride, out);
  PREFCAL_CUDA_LAUNCHED();
}

// ------------------------------------------------------------------------------------------- log-likelihood

__host__ __device__ __forceinline__ StagedLayout staged_layout(int tile, int n, int m, size_t size_s, size_t size_i,
                                                               bool grad, int mask_kind) {
  const size_t t = static_cast<size_t>(tile), ps = static_cast<size_t>(n | 1), pm = static_cast<size_t>(m | 1);
  StagedLayout L{};
  size_t off = 0;
  L.inv = off;
  off += grad ? align16(t * static_cast<size_t>(m) * sizeof(double)) : 0;
  L.ss = off;
  off += align16(t * ps * size_s);
  L.gs = off;
  off += grad ? align16(t * ps * size_s) : 0;
  L.rs = off;
  off += align16(t * pm * size_i);
  L.ms = off;
  off += mask_kind == 2 ? align16(t * ps) : (mask_kind == 1 ? align16(static_cast<size_t>(n)) : 0);
  L.total = off;
  return L;
}

// Per-row scores, n <= 64: tiles of blockDim.x rows staged through shared memory, one thread per row
// (without a gradient, pl::row_loglik_small: the checks fused into one pass, one exp per item).
template <class T, class I, bool kGrad>
__global__ void __launch_bounds__(kThreads, (!kGrad && sizeof(T) == 4 && sizeof(I) == 4) ? 4 : 1)
    loglik_staged(Rows<T, I> a, T* __restrict__ ll, T* __restrict__ grad, unsigned long long* __restrict__ bad) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int tile = static_cast<int>(blockDim.x), t = static_cast<int>(threadIdx.x);
  const int n = static_cast<int>(a.n), m = static_cast<int>(a.m);
  const int ps = n | 1, pm = m | 1;
  const int mask_kind = a.mask == nullptr ? 0 : (a.global_mask ? 1 : 2);
  const StagedLayout lay = staged_layout(tile, n, m, sizeof(T), sizeof(I), kGrad, mask_kind);
  double* inv = reinterpret_cast<double*>(smem + lay.inv);
  T* ss = reinterpret_cast<T*>(smem + lay.ss);
  T* gs = reinterpret_cast<T*>(smem + lay.gs);
  I* rs = reinterpret_cast<I*>(smem + lay.rs);
  uint8_t* ms = smem + lay.ms;
  const Stager by_n(n, ps, 16 / int(sizeof(T))), by_m(m, pm, 16 / int(sizeof(I)));
  if (mask_kind == 1) {
    for (int i = t; i < n; i += tile) ms[i] = a.mask[i];
  }
  const int64_t step = int64_t(gridDim.x) * tile;
  for (int64_t row0 = int64_t(blockIdx.x) * tile; row0 < a.N; row0 += step) {
    const int rows = static_cast<int>(min(int64_t(tile), a.N - row0));
    by_n.load(a.s + row0 * n, rows * n, ss);
    by_m.load(a.r + row0 * m, rows * m, rs);
    if (mask_kind == 2) by_n.load(a.mask + row0 * n, rows * n, ms);
    __syncthreads();
    if (t < rows) {
      const T* sr = ss + t * ps;
      const I* rr = rs + t * pm;
      // the row under mask mk; false when it is bad. Without a mask it is inlined with a null mask the compiler
      // knows: no availability test per item (as in loglik_tiles)
      auto row = [&](const uint8_t* mk) -> bool {
        if constexpr (!kGrad) {
          double v;
          if (!pl::row_loglik_small<T, uint64_t>(sr, rr, m, n, mk, v)) return false;
          ll[row0 + t] = static_cast<T>(v);
        } else {
          Bits64 bits;
          const int64_t L = pl::parse_ranking(rr, int64_t(m), int64_t(n), mk, bits);
          if (L < 0 || !pl::finite_row(sr, int64_t(n))) return false;
          ll[row0 + t] = static_cast<T>(
              pl::row_loglik<T>(sr, rr, L, int64_t(n), mk, bits, gs + t * ps, Strided<double>{inv + t, int64_t(tile)}));
        }
        return true;
      };
      const bool ok = mask_kind == 0 ? row(nullptr) : row(mask_kind == 1 ? ms : ms + t * ps);
      // a bad row reported on the spot, as in loglik_tiles (no register held through the loop for it)
      if (!ok) atomicMin(bad, static_cast<unsigned long long>(row0 + t));
    }
    if constexpr (kGrad) {
      __syncthreads();
      by_n.store(gs, rows * n, grad + row0 * n);
    }
    __syncthreads();  // the tile is overwritten next
  }
}

// Any shape. kGrad: 0 none, 1 per row into grad (N, n), 2 summed over rows (global scores) into acc.
template <class T, class I, bool kSmall, int kGrad>
__global__ void __launch_bounds__(kThreads)
    loglik_rows(Rows<T, I> a, Scratch sc, T* __restrict__ ll, T* __restrict__ grad, T* __restrict__ row_grad,
                double* __restrict__ acc, unsigned long long* __restrict__ bad) {
  const int64_t tid = thread_index(), P = thread_count();
  auto bits = make_bits<kSmall>(sc, tid, P);
  const Strided<double> inv = sc.inv_of(tid, P);
  T* rg = kGrad == 2 ? row_grad + tid * a.n : nullptr;
  int64_t first = kNoError;
  for (int64_t b = tid; b < a.N; b += P) {
    const T* sr = a.scores(b);
    const I* rr = a.ranking(b);
    const uint8_t* mk = a.mask_of(b);
    const int64_t L = pl::parse_ranking(rr, a.m, a.n, mk, bits);
    if (L >= 0 && (a.global_scores || pl::finite_row(sr, a.n))) {
      T* g = kGrad == 0 ? nullptr : (kGrad == 1 ? grad + b * a.n : rg);
      ll[b] = static_cast<T>(pl::row_loglik<T>(sr, rr, L, a.n, mk, bits, g, inv));
      if constexpr (kGrad == 2) {
        for (int64_t i = 0; i < a.n; ++i) acc[i * P + tid] += static_cast<double>(rg[i]);
      }
    } else if (first == kNoError) {
      first = b;
    }
    pl::clear_listed(rr, a.m, a.n, bits);
  }
  report_bad(first, bad);
}

// ------------------------------------------------------------------------------------------- temperature

template <class T, class I, bool kSmall>
__global__ void __launch_bounds__(kThreads)
    temperature_rows(Rows<T, I> a, Scratch sc, double beta, double* __restrict__ partials,
                     unsigned long long* __restrict__ bad) {
  __shared__ double scratch[32];
  const int64_t tid = thread_index(), P = thread_count();
  auto bits = make_bits<kSmall>(sc, tid, P);
  double f = 0.0, d1 = 0.0, d2 = 0.0;
  int64_t first = kNoError;
  for (int64_t b = tid; b < a.N; b += P) {
    const T* sr = a.scores(b);
    const I* rr = a.ranking(b);
    const uint8_t* mk = a.mask_of(b);
    const int64_t L = pl::parse_ranking(rr, a.m, a.n, mk, bits);
    if (L >= 0 && (a.global_scores || pl::finite_row(sr, a.n))) {
      const pl::Moments mo = pl::row_temperature(sr, rr, L, a.n, mk, bits, beta);
      f += mo.f;
      d1 += mo.d1;
      d2 += mo.d2;
    } else if (first == kNoError) {
      first = b;
    }
    pl::clear_listed(rr, a.m, a.n, bits);
  }
  report_bad(first, bad);
  f = block_sum(f, scratch);
  d1 = block_sum(d1, scratch);
  d2 = block_sum(d2, scratch);
  if (threadIdx.x == 0) {
    partials[3 * int64_t(blockIdx.x)] = f;
    partials[3 * int64_t(blockIdx.x) + 1] = d1;
    partials[3 * int64_t(blockIdx.x) + 2] = d2;
  }
}

// ------------------------------------------------------------------------------------------- sampling

// Work item w = b * per + t (per = max(size, 1)); t == 0 also checks the row's scores. keys / items: the
// thread's sorted top-kk buffer, kk = min(k, n), filled by pl::gumbel_top (prefcal/pl.hpp, shared with the
// Monte Carlo marginals; the CPU tests run it through pl_sample_insertion).
template <class T>
__global__ void __launch_bounds__(kThreads)
    sample_rows(const T* __restrict__ s, int64_t rows, int64_t n, const uint8_t* __restrict__ mask, bool global_mask,
                int64_t size, int64_t k, int64_t kk, uint64_t seed, bool noise, double* __restrict__ keys,
                int32_t* __restrict__ items, int32_t* __restrict__ out, unsigned long long* __restrict__ bad) {
  const int64_t tid = thread_index(), P = thread_count();
  const Strided<double> key{keys + tid, P};
  const Strided<int32_t> item{items + tid, P};
  const int64_t per = size > 0 ? size : 1;
  const int64_t total = rows * per;
  int64_t first = kNoError;
  for (int64_t w = tid; w < total; w += P) {
    const int64_t b = w / per, t = w - b * per;
    const T* sr = s + b * n;
    if (t == 0 && first == kNoError && !pl::finite_row(sr, n)) first = b;
    if (t >= size) continue;
    const uint8_t* mk = mask == nullptr ? nullptr : (global_mask ? mask : mask + b * n);
    const int64_t cnt = pl::gumbel_top(sr, mk, n, kk, seed, noise, b, t, key, item);
    int32_t* o = out + w * k;
    for (int64_t j = 0; j < k; ++j) o[j] = j < cnt ? item[j] : -1;
  }
  report_bad(first, bad);
}

// The same for rows of n <= K items, in registers: pl::draw_small (prefcal/pl.hpp, which the CPU tests run
// through a test hook) ranks the keys by counting and each item is stored at its rank.
template <class T, int K>
__global__ void __launch_bounds__(kThreads, K <= 16 ? 4 : 1)
    sample_rows_small(const T* __restrict__ s, int64_t rows, int n, const uint8_t* __restrict__ mask,
                      bool global_mask, int64_t size, int k, int kk, uint64_t seed, bool noise,
                      int32_t* __restrict__ out, unsigned long long* __restrict__ bad) {
  const int64_t tid = thread_index(), P = thread_count();
  const int64_t per = size > 0 ? size : 1;
  const int64_t total = rows * per;
  for (int64_t w = tid; w < total; w += P) {
    const int64_t b = per == 1 ? w : w / per, t = w - b * per;
    const T* sr = s + b * n;
    // a bad row reported by an atomic where it is found (rare; no register held through the loop for it)
    if (t == 0 && !pl::finite_row(sr, int64_t(n))) atomicMin(bad, static_cast<unsigned long long>(b));
    if (t >= size) continue;
    int32_t* o = out + w * k;
    const auto emit = [o](int rank, int item) { o[rank] = item; };
    // without a mask the draw is inlined with a null mask the compiler knows: no availability test per item
    const int avail = mask == nullptr
                          ? pl::draw_small<K>(sr, nullptr, n, kk, seed, noise, static_cast<uint64_t>(b),
                                              static_cast<uint32_t>(t), emit)
                          : pl::draw_small<K>(sr, global_mask ? mask : mask + b * n, n, kk, seed, noise,
                                              static_cast<uint64_t>(b), static_cast<uint32_t>(t), emit);
    for (int j = avail < kk ? avail : kk; j < k; ++j) o[j] = -1;
  }
}

template <class T>
using SampleSmallKernel = void (*)(const T*, int64_t, int, const uint8_t*, bool, int64_t, int, int, uint64_t, bool,
                                   int32_t*, unsigned long long*);

// The register kernel for rows of n items (width pl::draw_width(n)), or null when n is too large for one.
template <class T>
SampleSmallKernel<T> sample_small_kernel(int64_t n) {
  switch (pl::draw_width(n)) {
    case 4: return sample_rows_small<T, 4>;
    case 8: return sample_rows_small<T, 8>;
    case 12: return sample_rows_small<T, 12>;
    case 16: return sample_rows_small<T, 16>;
    case 24: return sample_rows_small<T, 24>;
    case 32: return sample_rows_small<T, 32>;
    default: return nullptr;
  }
}

// ------------------------------------------------------------------------------------------- pairwise

template <class T>
__global__ void __launch_bounds__(kThreads) pairwise_rows(const T* __restrict__ s, int64_t rows, int64_t n,
                                                          T* __restrict__ out, unsigned long long* __restrict__ bad) {
  const int64_t nn = n * n, total = rows * nn;
  int64_t first = kNoError;
  for (int64_t e = thread_index(); e < total; e += thread_count()) {
    const int64_t b = e / nn, rem = e - b * nn, i = rem / n, j = rem - i * n;
    const T* sr = s + b * n;
    if (j == 0 && first == kNoError && !pl::finite_row(sr + i, 1)) first = b;  // each score checked once
    out[e] = static_cast<T>(pl::sigmoid(static_cast<double>(sr[i]) - static_cast<double>(sr[j])));
  }
  report_bad(first, bad);
}

// ------------------------------------------------------------------------------------------- fit

// Accumulators of a block: its shared table when in_shared (copied to slice blockIdx.x at the end), else
// slice blockIdx.x % n_slices of the global buffer (zeroed by the host).
__device__ __forceinline__ double* fit_acc(double* smem_acc, double* slices, int64_t width, int64_t n_slices,
                                           bool in_shared) {
  if (!in_shared) return slices + (int64_t(blockIdx.x) % n_slices) * width;
  for (int64_t k = threadIdx.x; k < width; k += blockDim.x) smem_acc[k] = 0.0;
  __syncthreads();
  return smem_acc;
}

__device__ __forceinline__ void fit_flush(const double* acc, double* slices, int64_t width, bool in_shared) {
  if (!in_shared) return;
  __syncthreads();
  for (int64_t k = threadIdx.x; k < width; k += blockDim.x) slices[int64_t(blockIdx.x) * width + k] = acc[k];
}

template <class I, bool kSmall>
__global__ void __launch_bounds__(kThreads)
    fit_setup_rows(Rows<double, I> a, Scratch sc, const double* __restrict__ weights, double* __restrict__ slices,
                   int64_t n_slices, bool in_shared, uint8_t* __restrict__ edges, unsigned long long* __restrict__ bad) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t tid = thread_index(), P = thread_count();
  auto bits = make_bits<kSmall>(sc, tid, P);
  double* acc = fit_acc(reinterpret_cast<double*>(smem), slices, a.n, n_slices, in_shared);
  const AtomicAcc wins{acc};
  const EdgeSet edge{edges, a.n};
  int64_t first = kNoError;
  for (int64_t b = tid; b < a.N; b += P) {
    const I* rr = a.ranking(b);
    const uint8_t* mk = a.mask_of(b);
    const double wt = weights == nullptr ? 1.0 : weights[b];
    const int64_t L = pl::parse_ranking(rr, a.m, a.n, mk, bits);
    if (L >= 0 && wt >= 0.0 && wt <= DBL_MAX) {
      pl::setup_row(rr, L, a.n, mk, bits, wt, wins, edge);
    } else if (first == kNoError) {
      first = b;
    }
    pl::clear_listed(rr, a.m, a.n, bits);
  }
  report_bad(first, bad);
  fit_flush(acc, slices, a.n, in_shared);
}

template <class I, bool kSmall>
__global__ void __launch_bounds__(kThreads)
    fit_pass_rows(Rows<double, I> a, Scratch sc, const double* __restrict__ weights, const double* __restrict__ w,
                  const double* __restrict__ theta, double theta_max, bool want_q, bool want_ll,
                  double* __restrict__ slices, int64_t n_slices, bool in_shared, double* __restrict__ ll_partials) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ double scratch[32];
  const int64_t tid = thread_index(), P = thread_count();
  auto bits = make_bits<kSmall>(sc, tid, P);
  const int64_t width = a.n + (want_q ? a.n * a.n : 0);
  double* acc = fit_acc(reinterpret_cast<double*>(smem), slices, width, n_slices, in_shared);
  const AtomicAcc denom{acc};
  const AtomicAcc q{want_q ? acc + a.n : nullptr};
  const Strided<double> inv = sc.inv_of(tid, P);
  const Strided<int64_t> order = sc.order_of(tid, P);
  double ll = 0.0;
  for (int64_t b = tid; b < a.N; b += P) {
    const I* rr = a.ranking(b);
    const uint8_t* mk = a.mask_of(b);
    const double wt = weights == nullptr ? 1.0 : weights[b];
    const int64_t L = pl::parse_ranking(rr, a.m, a.n, mk, bits);  // valid: checked by the setup pass
    if (L >= 0) ll += pl::fit_row(w, theta, theta_max, rr, L, a.n, mk, bits, wt, denom, q, want_ll, inv, order);
    pl::clear_listed(rr, a.m, a.n, bits);
  }
  ll = block_sum(ll, scratch);
  if (threadIdx.x == 0) ll_partials[blockIdx.x] = ll;
  fit_flush(acc, slices, width, in_shared);
}

// ------------------------------------------------------------------------------------------- host side

cudaStream_t as_stream(Stream s) { return static_cast<cudaStream_t>(s); }


int64_t blocks_for(int64_t items, int64_t per_block, int64_t cap) {
  return std::max<int64_t>(1, std::min<int64_t>(cap, ceil_div(items, per_block)));
}


Geometry geometry(int64_t items, size_t per_thread, int64_t resident_threads) {
  return prefcal::cuda::geometry(items, per_thread, resident_threads, kThreads, kScratchBudget);
}

// Device scratch holding `width` float64 results followed by the bad-row flag.
struct Result {
  PoolBuffer buf;
  int64_t width;
  Result(int64_t width_, cudaStream_t st) : buf(align_up(size_t(width_) * sizeof(double)) + 256, st), width(width_) {}
  double* values() const { return buf.as<double>(); }
  unsigned long long* bad() const { return buf.as<unsigned long long>(align_up(size_t(width) * sizeof(double))); }
  // The flag starts at all ones (UINT64_MAX) so that atomicMin finds the first bad row.
  void init(cudaStream_t st) const { PREFCAL_CUDA_CHECK(cudaMemsetAsync(bad(), 0xff, sizeof(unsigned long long), st)); }
  void zero(cudaStream_t st) const {
    if (width > 0) PREFCAL_CUDA_CHECK(cudaMemsetAsync(values(), 0, size_t(width) * sizeof(double), st));
  }
  // Copies the values (when host is not null) and the flag to the host and waits. Returns the first bad row.
  int64_t fetch(double* host, cudaStream_t st) const {
    unsigned long long b = 0;
    if (host != nullptr && width > 0) {
      PREFCAL_CUDA_CHECK(cudaMemcpyAsync(host, values(), size_t(width) * sizeof(double), cudaMemcpyDeviceToHost, st));
    }
    PREFCAL_CUDA_CHECK(cudaMemcpyAsync(&b, bad(), sizeof(b), cudaMemcpyDeviceToHost, st));
    PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
    return b == ~0ull ? kNoError : static_cast<int64_t>(b);
  }
};

template <class T, class I>
Rows<T, I> rows_of(const PLArgs& a) {
  return {static_cast<const T*>(a.scores), static_cast<const I*>(a.rankings), a.mask, a.global_scores, a.global_mask,
          a.N, a.m, a.n};
}

size_t bit_words(int64_t n) { return n > kSmallN ? size_t(n / 32 + 1) : 0; }

// ---------------------------------------------------------------- log-likelihood plan

template <class T, class I>
using StagedKernel = void (*)(Rows<T, I>, T*, T*, unsigned long long*);
template <class T, class I>
using RowsKernel = void (*)(Rows<T, I>, Scratch, T*, T*, T*, double*, unsigned long long*);

template <class T, class I>
RowsKernel<T, I> rows_kernel(bool small, int kgrad) {
  if (small) {
    if (kgrad == 0) return loglik_rows<T, I, true, 0>;
    if (kgrad == 1) return loglik_rows<T, I, true, 1>;
    return loglik_rows<T, I, true, 2>;
  }
  if (kgrad == 0) return loglik_rows<T, I, false, 0>;
  if (kgrad == 1) return loglik_rows<T, I, false, 1>;
  return loglik_rows<T, I, false, 2>;
}

// Everything a log-likelihood launch needs; built once, enqueued any number of times (the benchmark hook).
template <class T, class I>
struct LoglikRun {
  Rows<T, I> rows;
  T* ll;
  T* grad;
  int kgrad = 0;  // 0 none, 1 per row, 2 summed
  bool staged = false;
  StagedKernel<T, I> staged_kernel = nullptr;
  TileKernel<T, I> tiled = nullptr;
  RowsKernel<T, I> generic_kernel = nullptr;
  Geometry geo;
  size_t smem = 0;
  size_t off_inv = 0, off_words = 0, off_rg = 0, off_acc = 0;
  std::unique_ptr<PoolBuffer> scratch;
  Result res;

  LoglikRun(const PLArgs& a, void* ll_, void* grad_, cudaStream_t st)
      : rows(rows_of<T, I>(a)), ll(static_cast<T*>(ll_)), grad(static_cast<T*>(grad_)), res(0, st) {
    const int64_t N = a.N, m = a.m, n = a.n;
    kgrad = grad == nullptr ? 0 : (a.global_scores ? 2 : 1);
    const int mask_kind = a.mask == nullptr ? 0 : (a.global_mask ? 1 : 2);
    if (!a.global_scores && kgrad == 0) {
      const TilePlan<T, I> p = plk::loglik_tile_plan<T, I>(n, m, a.mask != nullptr);
      if (p.kernel != nullptr) {
        plan_tile(p.kernel, N, [&](int tile) {
          return p.layout(tile, int(n), int(m), int(sizeof(T)), int(sizeof(I)), mask_kind);
        });
        if (staged) tiled = p.kernel;
      }
    }
    if (!staged && !a.global_scores && n <= kSmallN && m <= kSmallN) {
      staged_kernel = kgrad == 1 ? loglik_staged<T, I, true> : loglik_staged<T, I, false>;
      plan_tile(staged_kernel, N, [&](int tile) {
        return staged_layout(tile, int(n), int(m), sizeof(T), sizeof(I), kgrad == 1, mask_kind);
      });
    }
    if (staged) return;
    generic_kernel = rows_kernel<T, I>(n <= kSmallN, kgrad);
    const size_t inv_b = kgrad != 0 ? size_t(std::max<int64_t>(m, 1)) * sizeof(double) : 0;
    const size_t words_b = bit_words(n) * sizeof(uint32_t);
    const size_t rg_b = kgrad == 2 ? size_t(n) * sizeof(T) : 0;
    const size_t acc_b = kgrad == 2 ? size_t(n) * sizeof(double) : 0;
    geo = geometry(N, inv_b + words_b + rg_b + acc_b, resident_blocks(generic_kernel, 0, kThreads, kSmemBudget) * kThreads);
    const size_t P = static_cast<size_t>(geo.threads());
    Carve c;
    off_inv = c.take(P * inv_b);
    off_words = c.take(P * words_b);
    off_rg = c.take(P * rg_b);
    off_acc = c.take(P * acc_b);
    scratch = std::make_unique<PoolBuffer>(c.bytes, st);
  }

  // The largest tile of rows (256 halved down to 64) whose shared-memory layout fits the budget, for a staged
  // kernel: sets staged, smem and the geometry; leaves staged false when none fits.
  template <class Kernel, class Layout>
  void plan_tile(Kernel kernel, int64_t N, Layout layout_of) {
    for (int tile = kThreads; tile >= 64 && !staged; tile /= 2) {
      const StagedLayout lay = layout_of(tile);
      if (lay.total <= kSmemBudget) {
        staged = true;
        smem = lay.total;
        geo.block = tile;
        geo.grid = blocks_for(N, tile, resident_blocks(kernel, smem, tile, kSmemBudget));
      }
    }
  }

  void enqueue(cudaStream_t st) const {
    res.init(st);
    const unsigned grid = static_cast<unsigned>(geo.grid);
    if (tiled != nullptr) {
      tiled<<<grid, geo.block, smem, st>>>(rows, ll, res.bad());
      PREFCAL_CUDA_LAUNCHED();
      return;
    }
    if (staged) {
      staged_kernel<<<grid, geo.block, smem, st>>>(rows, ll, grad, res.bad());
      PREFCAL_CUDA_LAUNCHED();
      return;
    }
    const int64_t P = geo.threads(), n = rows.n;
    Scratch sc;
    sc.inv = kgrad != 0 ? scratch->as<double>(off_inv) : nullptr;
    sc.words = n > kSmallN ? scratch->as<uint32_t>(off_words) : nullptr;
    if (sc.words != nullptr) {
      PREFCAL_CUDA_CHECK(cudaMemsetAsync(sc.words, 0, size_t(P) * bit_words(n) * sizeof(uint32_t), st));
    }
    T* rg = kgrad == 2 ? scratch->as<T>(off_rg) : nullptr;
    double* acc = kgrad == 2 ? scratch->as<double>(off_acc) : nullptr;
    if (acc != nullptr) PREFCAL_CUDA_CHECK(cudaMemsetAsync(acc, 0, size_t(P) * size_t(n) * sizeof(double), st));
    generic_kernel<<<grid, geo.block, 0, st>>>(rows, sc, ll, grad, rg, acc, res.bad());
    PREFCAL_CUDA_LAUNCHED();
    if (kgrad == 2) launch_reduce<T>(acc, P, 1, n, P, grad, st);
  }
};

template <class F>
decltype(auto) dispatch_pl(const PLArgs& a, F&& f) {
  return bind::dispatch_float(a.scores_type, "scores", [&](auto ts) -> decltype(auto) {
    return bind::dispatch_label(a.rankings_type, "rankings", [&](auto ti) -> decltype(auto) { return f(ts, ti); });
  });
}

template <class I>
Rows<double, I> fit_rows(const PLArgs& a) {
  return {nullptr, static_cast<const I*>(a.rankings), a.mask, true, a.global_mask, a.N, a.m, a.n};
}

// Launch plan of the fit kernels: accumulators of `width` doubles per block.
struct FitPlan {
  Geometry geo;
  bool in_shared = false;
  int64_t n_slices = 1;
};

template <class Kernel>
FitPlan plan_fit(Kernel kernel, int64_t N, int64_t width, size_t per_thread) {
  FitPlan p;
  const size_t table = size_t(width) * sizeof(double);
  p.in_shared = table <= kSharedAccBytes;
  const int64_t resident = resident_blocks(kernel, p.in_shared ? table : 0, kThreads, kSmemBudget) * kThreads;
  p.geo = geometry(N, per_thread, resident);
  if (p.in_shared) {
    p.n_slices = p.geo.grid;
  } else {
    const int64_t by_memory = static_cast<int64_t>(kScratchBudget / std::max<size_t>(table, 1));
    p.n_slices = std::max<int64_t>(1, std::min<int64_t>(p.geo.grid, by_memory));
  }
  return p;
}

// The global scratch of a fit launch, placed in `buf`: the per-thread bit sets (zeroed) when rows do not fit
// a register set, and the accumulator slices (zeroed unless each block starts them in shared memory; the
// launch's result itself when there is one slice).
double* fit_scratch(const FitPlan& p, const PoolBuffer& buf, bool small, size_t off_words, size_t words_bytes,
                    size_t off_slices, int64_t width, double* result, Scratch& sc, cudaStream_t st) {
  if (!small) {
    sc.words = buf.as<uint32_t>(off_words);
    PREFCAL_CUDA_CHECK(cudaMemsetAsync(sc.words, 0, words_bytes, st));
  }
  if (p.n_slices <= 1) return result;
  double* slices = buf.as<double>(off_slices);
  if (!p.in_shared) {
    PREFCAL_CUDA_CHECK(cudaMemsetAsync(slices, 0, size_t(p.n_slices) * size_t(width) * sizeof(double), st));
  }
  return slices;
}

}  // namespace

// ------------------------------------------------------------------------------------------- entry points

int64_t pl_loglik(const PLArgs& a, void* ll, void* grad, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return dispatch_pl(a, [&](auto ts, auto ti) {
    using T = decltype(ts);
    using I = decltype(ti);
    const LoglikRun<T, I> run(a, ll, grad, st);
    run.enqueue(st);
    return run.res.fetch(nullptr, st);
  });
}

double time_pl_loglik(const PLArgs& a, void* ll, void* grad, int reps, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return dispatch_pl(a, [&](auto ts, auto ti) {
    using T = decltype(ts);
    using I = decltype(ti);
    const LoglikRun<T, I> run(a, ll, grad, st);
    cudaEvent_t e0, e1;
    PREFCAL_CUDA_CHECK(cudaEventCreate(&e0));
    PREFCAL_CUDA_CHECK(cudaEventCreate(&e1));
    std::vector<float> ms;
    try {
      run.enqueue(st);  // warm-up
      for (int r = 0; r < reps; ++r) {
        PREFCAL_CUDA_CHECK(cudaEventRecord(e0, st));
        run.enqueue(st);
        PREFCAL_CUDA_CHECK(cudaEventRecord(e1, st));
        PREFCAL_CUDA_CHECK(cudaEventSynchronize(e1));
        float t = 0.f;
        PREFCAL_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
        ms.push_back(t);
      }
    } catch (...) {
      cudaEventDestroy(e0);
      cudaEventDestroy(e1);
      throw;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    run.res.fetch(nullptr, st);
    std::sort(ms.begin(), ms.end());
    return ms.empty() ? 0.0 : double(ms[ms.size() / 2]);
  });
}

int64_t pl_temperature(const PLArgs& a, double beta, double* out, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return dispatch_pl(a, [&](auto ts, auto ti) {
    using T = decltype(ts);
    using I = decltype(ti);
    const bool small = a.n <= kSmallN;
    auto kernel = small ? temperature_rows<T, I, true> : temperature_rows<T, I, false>;
    const size_t words_b = bit_words(a.n) * sizeof(uint32_t);
    const Geometry geo = geometry(a.N, words_b, resident_blocks(kernel, 0, kThreads, kSmemBudget) * kThreads);
    const size_t P = static_cast<size_t>(geo.threads());
    Carve c;
    const size_t off_words = c.take(P * words_b);
    const size_t off_part = c.take(size_t(geo.grid) * 3 * sizeof(double));
    PoolBuffer buf(c.bytes, st);
    Scratch sc;
    if (!small) {
      sc.words = buf.as<uint32_t>(off_words);
      PREFCAL_CUDA_CHECK(cudaMemsetAsync(sc.words, 0, P * words_b, st));
    }
    Result res(3, st);
    res.init(st);
    double* part = buf.as<double>(off_part);
    kernel<<<unsigned(geo.grid), geo.block, 0, st>>>(rows_of<T, I>(a), sc, beta, part, res.bad());
    PREFCAL_CUDA_LAUNCHED();
    launch_reduce<double>(part, geo.grid, 3, 3, 1, res.values(), st);
    return res.fetch(out, st);
  });
}

int64_t pl_sample(const void* scores, DType scores_type, int64_t rows, int64_t n, const uint8_t* mask,
                  bool global_mask, int64_t size, int64_t k, uint64_t seed, bool noise, int32_t* out, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return bind::dispatch_float(scores_type, "scores", [&](auto ts) {
    using T = decltype(ts);
    const int64_t kk = std::min(k, n);
    const int64_t total = rows * std::max<int64_t>(size, 1);
    const SampleSmallKernel<T> reg = sample_small_kernel<T>(n);
    if (reg != nullptr && k <= INT32_MAX) {
      const Geometry geo = geometry(total, 0, resident_blocks(reg, 0, kThreads, kSmemBudget) * kThreads);
      Result res(0, st);
      res.init(st);
      reg<<<unsigned(geo.grid), geo.block, 0, st>>>(static_cast<const T*>(scores), rows, int(n), mask, global_mask,
                                                     size, int(k), int(kk), seed, noise, out, res.bad());
      PREFCAL_CUDA_LAUNCHED();
      return res.fetch(nullptr, st);
    }
    const size_t per_thread = size_t(std::max<int64_t>(kk, 1)) * (sizeof(double) + sizeof(int32_t));
    const Geometry geo = geometry(total, per_thread, resident_blocks(sample_rows<T>, 0, kThreads, kSmemBudget) * kThreads);
    const size_t P = static_cast<size_t>(geo.threads());
    Carve c;
    const size_t off_keys = c.take(P * size_t(std::max<int64_t>(kk, 1)) * sizeof(double));
    const size_t off_items = c.take(P * size_t(std::max<int64_t>(kk, 1)) * sizeof(int32_t));
    PoolBuffer buf(c.bytes, st);
    Result res(0, st);
    res.init(st);
    sample_rows<T><<<unsigned(geo.grid), geo.block, 0, st>>>(static_cast<const T*>(scores), rows, n, mask,
                                                              global_mask, size, k, kk, seed, noise,
                                                              buf.as<double>(off_keys), buf.as<int32_t>(off_items),
                                                              out, res.bad());
    PREFCAL_CUDA_LAUNCHED();
    return res.fetch(nullptr, st);
  });
}

int64_t pl_pairwise(const void* scores, DType scores_type, int64_t rows, int64_t n, void* out, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return bind::dispatch_float(scores_type, "scores", [&](auto ts) {
    using T = decltype(ts);
    const int64_t total = rows * n * n;
    Result res(0, st);
    res.init(st);
    if (total > 0) {
      const unsigned grid =
          static_cast<unsigned>(blocks_for(total, kThreads, int64_t(32) * multiprocessors(current_device())));
      pairwise_rows<T><<<grid, kThreads, 0, st>>>(static_cast<const T*>(scores), rows, n, static_cast<T*>(out),
                                                  res.bad());
      PREFCAL_CUDA_LAUNCHED();
    }
    return res.fetch(nullptr, st);
  });
}

int64_t pl_fit_setup(const PLArgs& a, const double* weights, double* wins, uint8_t* edges, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return bind::dispatch_label(a.rankings_type, "rankings", [&](auto ti) {
    using I = decltype(ti);
    const int64_t n = a.n;
    const bool small = n <= kSmallN;
    auto kernel = small ? fit_setup_rows<I, true> : fit_setup_rows<I, false>;
    const size_t words_b = bit_words(n) * sizeof(uint32_t);
    const FitPlan p = plan_fit(kernel, a.N, n, words_b);
    const size_t P = static_cast<size_t>(p.geo.threads());
    Result res(n, st);
    res.init(st);
    res.zero(st);
    Carve c;
    const size_t off_words = c.take(P * words_b);
    const size_t off_slices = c.take(p.n_slices > 1 ? size_t(p.n_slices) * size_t(n) * sizeof(double) : 0);
    const size_t off_edges = c.take(size_t(n) * size_t(n));
    PoolBuffer buf(c.bytes, st);
    Scratch sc;
    double* slices = fit_scratch(p, buf, small, off_words, P * words_b, off_slices, n, res.values(), sc, st);
    uint8_t* dedges = buf.as<uint8_t>(off_edges);
    if (n > 0) PREFCAL_CUDA_CHECK(cudaMemsetAsync(dedges, 0, size_t(n) * size_t(n), st));
    const size_t smem = p.in_shared ? size_t(n) * sizeof(double) : 0;
    kernel<<<unsigned(p.geo.grid), p.geo.block, smem, st>>>(fit_rows<I>(a), sc, weights, slices, p.n_slices,
                                                             p.in_shared, dedges, res.bad());
    PREFCAL_CUDA_LAUNCHED();
    if (p.n_slices > 1) launch_reduce<double>(slices, p.n_slices, n, n, 1, res.values(), st);
    if (n > 0) {
      PREFCAL_CUDA_CHECK(cudaMemcpyAsync(edges, dedges, size_t(n) * size_t(n), cudaMemcpyDeviceToHost, st));
    }
    return res.fetch(wins, st);
  });
}

double pl_fit_pass(const PLArgs& a, const double* weights, const double* theta, double* denom, double* q,
                   bool want_ll, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  return bind::dispatch_label(a.rankings_type, "rankings", [&](auto ti) {
    using I = decltype(ti);
    const int64_t n = a.n, m = a.m;
    const bool want_q = q != nullptr;
    const bool small = n <= kSmallN;
    auto kernel = small ? fit_pass_rows<I, true> : fit_pass_rows<I, false>;
    const int64_t width = n + (want_q ? n * n : 0);
    const size_t words_b = bit_words(n) * sizeof(uint32_t);
    const size_t inv_b = size_t(std::max<int64_t>(m, 1)) * sizeof(double);
    const size_t order_b = want_q ? size_t(std::max<int64_t>(n, 1)) * sizeof(int64_t) : 0;
    const FitPlan p = plan_fit(kernel, a.N, width, words_b + inv_b + order_b);
    const size_t P = static_cast<size_t>(p.geo.threads());

    // Worths on the host, as the CPU computes them: w = exp(theta - max theta).
    const double top = n > 0 ? *std::max_element(theta, theta + n) : 0.0;
    std::vector<double> host(size_t(2) * size_t(n));
    for (int64_t i = 0; i < n; ++i) {
      host[size_t(i)] = std::exp(theta[i] - top);
      host[size_t(n + i)] = theta[i];
    }

    Result res(width + 1, st);  // [denom | q | ll]
    res.init(st);
    res.zero(st);
    Carve c;
    const size_t off_words = c.take(P * words_b);
    const size_t off_inv = c.take(P * inv_b);
    const size_t off_order = c.take(P * order_b);
    const size_t off_slices = c.take(p.n_slices > 1 ? size_t(p.n_slices) * size_t(width) * sizeof(double) : 0);
    const size_t off_ll = c.take(size_t(p.geo.grid) * sizeof(double));
    const size_t off_w = c.take(host.size() * sizeof(double));
    PoolBuffer buf(c.bytes, st);
    Scratch sc;
    sc.inv = buf.as<double>(off_inv);
    sc.order = want_q ? buf.as<int64_t>(off_order) : nullptr;
    double* slices = fit_scratch(p, buf, small, off_words, P * words_b, off_slices, width, res.values(), sc, st);
    double* dw = buf.as<double>(off_w);
    if (!host.empty()) {
      PREFCAL_CUDA_CHECK(
          cudaMemcpyAsync(dw, host.data(), host.size() * sizeof(double), cudaMemcpyHostToDevice, st));
    }
    double* ll_part = buf.as<double>(off_ll);
    const size_t smem = p.in_shared ? size_t(width) * sizeof(double) : 0;
    kernel<<<unsigned(p.geo.grid), p.geo.block, smem, st>>>(fit_rows<I>(a), sc, weights, dw, dw + n, top, want_q,
                                                             want_ll, slices, p.n_slices, p.in_shared, ll_part);
    PREFCAL_CUDA_LAUNCHED();
    if (p.n_slices > 1) launch_reduce<double>(slices, p.n_slices, width, width, 1, res.values(), st);
    launch_reduce<double>(ll_part, p.geo.grid, 1, 1, 1, res.values() + width, st);
    PREFCAL_CUDA_CHECK(cudaMemcpyAsync(denom, res.values(), size_t(n) * sizeof(double), cudaMemcpyDeviceToHost, st));
    if (want_q) {
      PREFCAL_CUDA_CHECK(
          cudaMemcpyAsync(q, res.values() + n, size_t(n) * size_t(n) * sizeof(double), cudaMemcpyDeviceToHost, st));
    }
    double ll = 0.0;
    PREFCAL_CUDA_CHECK(cudaMemcpyAsync(&ll, res.values() + width, sizeof(double), cudaMemcpyDeviceToHost, st));
    PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
    return ll;
  });
}

}  // namespace prefcal::cuda
