// CUDA kernels of the permutation marginals (SPEC §3). Per-context math: prefcal/marginals.hpp (shared with
// the CPU kernels of cpp/src/marginals.cpp, whose results these reproduce); declarations: launch.hpp.
//
// Parallel layouts:
//   exact: one block per context (grid-stride over contexts; 32 to 256 threads by n). The block sorts its
//     context (one thread per item computes the item's rank: the CPU's stable order), computes the worth
//     ratios E and W' (level by level of the highest bit), then runs the subset DP in pull form, layer
//     j = 1 .. layers: each thread takes a contiguous run of the C(na, j) subsets S' of size j (increasing
//     order, the first one unranked, the rest by Gosper's step) and sums
//     T(S') = sum_{i in S'} g(S' - i) E[first(rest(S' - i))][i], with g(S) = T(S) / W'(rest(S)) stored in
//     place of T. Each term is also P(sorted item i at position j - 1): it goes to the thread's own column
//     of an [item][thread] table in shared memory (no atomics), summed at the end of the layer by one warp
//     per item (a fixed order: the result does not vary between runs). g and W' (2 * 2^n doubles) live in
//     shared memory up to n = kExactSharedMax, else in a per-block slice of global scratch (kContextBudget
//     in all, which caps the grid). Per S' the terms are added in the CPU's order (decreasing i, i.e.
//     increasing S' - i), so T and g are those of marg::exact_context up to the device's exp; P(i at j) is
//     summed in another order (differences of a few ulp).
//   integral: one block per context (grid-stride), threads over items (each thread owns the items
//     i = threadIdx.x mod blockDim.x for the whole context). Every thread walks the same nodes
//     (marg::for_nodes); per node: x, a, b per item, then the product polynomial with one barrier per
//     clock (double-buffered, threads over coefficients), then each thread deflates its in-window items
//     and adds g c_j to its own column of pt [j][i] (no atomics). The small per-item arrays live in shared
//     memory (up to ~1500 items), pt too when small enough, else per-block slices of global scratch.
//   mc: one thread per (row, sample) draw (grid-stride): pl::gumbel_top (the draw of pl.sample) and a
//     float64 atomicAdd of 1 per drawn position (exact: counts), then a kernel scales by 1 / n_samples.
//   from_samples: one thread per (row, sample) (grid-stride): parse, atomicAdd of 1 per listed position,
//     then the scaling kernel (1 / size).
//   empirical: one thread per ranking (grid-stride): weighted atomicAdds into a per-block (n, n) table in
//     shared memory when it fits (flushed to out with one atomicAdd per nonzero cell), else into out.
// Every kernel reports the first bad row through atomicMin on a flag that starts at UINT64_MAX.
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "launch.hpp"
#include "prefcal/marginals.hpp"
#include "prefcal/pl.hpp"
#include "reduce.cuh"
#include "runtime.cuh"

namespace prefcal::cuda {

namespace {

using bind::DType;
using device::report_bad;

constexpr int kThreads = 256;                          // largest block
constexpr int64_t kSmallN = 64;                        // register bit set (pl::Bits64) up to this many items
constexpr size_t kSmemBudget = 96 * 1024;              // dynamic shared memory a block may ask for
constexpr size_t kSharedAccBytes = 48 * 1024;          // empirical table in shared memory up to this size
constexpr size_t kIntegralSharedPt = 20 * 1024;        // integral: pt in shared memory up to this size (with the rest)
constexpr size_t kScratchBudget = size_t(256) << 20;   // per-thread global scratch, all threads together
constexpr size_t kContextBudget = size_t(1) << 30;     // per-block context scratch (exact, integral), all blocks
constexpr int kExactSharedMax = 12;                    // exact: g and W' in shared memory up to this n

// ------------------------------------------------------------------------------------------- device helpers

__device__ __forceinline__ int64_t thread_index() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t thread_count() { return int64_t(gridDim.x) * blockDim.x; }

__host__ __device__ __forceinline__ size_t align16(size_t b) { return (b + 15) / 16 * 16; }

// The contexts of a model call: scores (rows, n), mask null, (rows, n) or (n,) when global_mask; out
// (rows, n, n) when topk = 0, else (rows, n).
template <class T>
struct Contexts {
  const T* s;
  const uint8_t* mask;
  bool global_mask;
  int64_t rows, n, topk;
  double* out;
  __host__ __device__ __forceinline__ int64_t width() const { return topk == 0 ? n * n : n; }
  __host__ __device__ __forceinline__ int64_t layers_max() const { return topk == 0 || topk > n ? n : topk; }
  __device__ __forceinline__ const uint8_t* mask_of(int64_t b) const {
    if (mask == nullptr) return nullptr;
    return global_mask ? mask : mask + b * n;
  }
};

// Whether every score of the row is finite (all n of them, as the CPU checks). All threads of the block call
// it; it is a barrier.
template <class T>
__device__ __forceinline__ bool block_finite(const T* sr, int64_t n) {
  int bad = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) bad |= pl::finite_row(sr + i, 1) ? 0 : 1;
  return __syncthreads_or(bad) == 0;
}

// The available items of a context sorted by decreasing score, ties by lower item first (the CPU's stable
// insertion sort): items[r], ss[r] for r < na, and rank_of[i] = r, or -1 for an unavailable item. Scores are
// finite (checked first), so the ranks are a permutation of 0 .. na - 1; each is < na whatever the input.
// All threads of the block call it; it ends with a barrier. Returns na.
template <class T>
__device__ __forceinline__ int64_t block_sort(const T* sr, const uint8_t* mk, int64_t n, int32_t* rank_of,
                                              int32_t* items, double* ss) {
  int64_t na = 0;
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    na += __syncthreads_count(i < n && pl::available(mk, i));
  }
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    if (!pl::available(mk, i)) {
      rank_of[i] = -1;
      continue;
    }
    const double v = static_cast<double>(sr[i]);
    int64_t r = 0;
    for (int64_t l = 0; l < n; ++l) {
      if (l == i || !pl::available(mk, l)) continue;
      const double u = static_cast<double>(sr[l]);
      r += (u > v || (u == v && l < i)) ? 1 : 0;
    }
    rank_of[i] = static_cast<int32_t>(r);
    items[r] = static_cast<int32_t>(i);
    ss[r] = v;
  }
  __syncthreads();
  return na;
}

// Context row of out (n * n or n values) from p: P(sorted item r at position j) = p[r * ps + j * pj] for
// j < layers; zero for unavailable items and for positions >= layers; clamped at 0 (as std::max(v, 0.0))
// when `clamp`. topk >= 1: the sum over j < layers, in increasing j. All threads of the block.
__device__ __forceinline__ void write_context(double* __restrict__ row, int64_t n, int64_t topk,
                                              const int32_t* rank_of, const double* p, int64_t ps, int64_t pj,
                                              int64_t layers, bool clamp) {
  if (topk == 0) {
    const bool narrow = n * n <= int64_t(UINT32_MAX);  // a 32-bit division is several times cheaper
    for (int64_t q = threadIdx.x; q < n * n; q += blockDim.x) {
      const int64_t item = narrow ? int64_t(uint32_t(q) / uint32_t(n)) : q / n, j = q - item * n;
      const int64_t r = rank_of[item];
      double v = 0.0;
      if (r >= 0 && j < layers) {
        v = p[r * ps + j * pj];
        if (clamp) v = v < 0.0 ? 0.0 : v;
      }
      row[q] = v;
    }
  } else {
    for (int64_t item = threadIdx.x; item < n; item += blockDim.x) {
      const int64_t r = rank_of[item];
      double sum = 0.0;
      if (r >= 0) {
        for (int64_t j = 0; j < layers; ++j) {
          double v = p[r * ps + j * pj];
          if (clamp) v = v < 0.0 ? 0.0 : v;
          sum += v;
        }
      }
      row[item] = sum;
    }
  }
}

// ------------------------------------------------------------------------------------------- exact

// Shared-memory layout of the exact kernel for contexts of up to n items (byte offsets, 16-byte aligned).
struct ExactLayout {
  size_t binom, rank_of, items, ss, e, p, acc, w, g, total;
};

__host__ __device__ __forceinline__ ExactLayout exact_layout(int n, int block, bool in_shared) {
  const size_t un = static_cast<size_t>(n), count = size_t(1) << n;
  ExactLayout L{};
  size_t off = 0;
  L.binom = off;  // C(p, k) at binom[p * (n + 1) + k], p, k <= n
  off += align16((un + 1) * (un + 1) * sizeof(uint32_t));
  L.rank_of = off;
  off += align16(un * sizeof(int32_t));
  L.items = off;
  off += align16(un * sizeof(int32_t));
  L.ss = off;
  off += align16(un * sizeof(double));
  L.e = off;  // e[a * na + b], a <= b
  off += align16(un * un * sizeof(double));
  L.p = off;  // p[i * layers + j]
  off += align16(un * un * sizeof(double));
  L.acc = off;  // acc[i * block + thread]
  off += align16(un * static_cast<size_t>(block) * sizeof(double));
  L.w = off;
  off += in_shared ? count * sizeof(double) : 0;
  L.g = off;
  off += in_shared ? count * sizeof(double) : 0;
  L.total = off;
  return L;
}

// The subset of rank `rank` among the k-subsets of {0 .. na - 1} in increasing order (colex), by the
// combinatorial number system. binom: C(p, k) at binom[p * pitch + k].
__device__ __forceinline__ uint32_t unrank_subset(uint32_t rank, int k, int na, const uint32_t* binom, int pitch) {
  uint32_t s = 0;
  for (int pos = na - 1; pos >= 0 && k > 0; --pos) {
    const uint32_t c = binom[pos * pitch + k];
    if (c <= rank) {
      s |= uint32_t(1) << pos;
      rank -= c;
      --k;
    }
  }
  return s;
}

// The next larger subset with as many elements as s (s != 0; Gosper's step without a division).
__device__ __forceinline__ uint32_t next_subset(uint32_t s) {
  const uint32_t t = s | (s - 1);
  return (t + 1) | (((~t & (t + 1)) - 1) >> (marg::ctz32(s) + 1));
}

// The DP of one context of na >= 1 sorted items (ss), p[i * layers + j] = P(sorted item i at position j)
// for j < layers. w and g: 2^na doubles each (shared or global); acc: na * blockDim.x, zero on entry
// and on exit. All threads of the block (a multiple of 32) call it; it ends with a barrier.
__device__ __forceinline__ void exact_context(const double* ss, int na, int layers, const uint32_t* binom,
                                              int pitch, double* e, double* w, double* g, double* acc,
                                              double* p) {
  const int B = static_cast<int>(blockDim.x), tid = static_cast<int>(threadIdx.x);
  for (int q = tid; q < na * na; q += B) {  // marg::worth_ratios
    const int a = q / na, b = q - a * na;
    if (b >= a) e[q] = exp(ss[b] - ss[a]);
  }
  if (tid == 0) w[0] = 0.0;
  __syncthreads();
  for (int hb = 0; hb < na; ++hb) {  // marg::rest_worths, the subsets of highest bit hb at once
    const uint32_t top = uint32_t(1) << hb;
    for (uint32_t r = top + static_cast<uint32_t>(tid); r < 2 * top; r += static_cast<uint32_t>(B)) {
      const uint32_t low = r ^ top;
      w[r] = low == 0 ? 1.0 : w[low] + e[marg::ctz32(low) * na + hb];
    }
    __syncthreads();
  }
  const uint32_t full = (uint32_t(1) << na) - 1;
  if (tid == 0) g[0] = 1.0 / w[full];  // T(0) / W'(all)
  __syncthreads();
  const uint32_t* c_na = binom + na * pitch;  // C(na, j)
  for (int j = 1; j <= layers; ++j) {
    const uint64_t count = c_na[j], chunk = (count + static_cast<uint64_t>(B) - 1) / static_cast<uint64_t>(B);
    const uint64_t start = static_cast<uint64_t>(tid) * chunk;
    const uint64_t lo = start < count ? start : count, hi = lo + chunk < count ? lo + chunk : count;
    if (lo < hi) {
      uint32_t sp = unrank_subset(static_cast<uint32_t>(lo), j, na, binom, pitch);
      for (uint64_t r = lo;;) {
        const uint32_t rest = full ^ sp;
        const int f0 = rest != 0 ? marg::ctz32(rest) : na;  // first(rest(S' - i)) = min(f0, i)
        double t = 0.0;
        for (uint32_t left = sp; left != 0;) {  // decreasing i: S' - i increasing, the CPU's push order
          const int i = marg::highbit32(left);
          left ^= uint32_t(1) << i;
          const double term = g[sp ^ (uint32_t(1) << i)] * e[(f0 < i ? f0 : i) * na + i];
          t += term;
          acc[i * B + tid] += term;
        }
        if (j < layers) g[sp] = t / w[rest];  // rest is not empty: j < layers <= na
        if (++r == hi) break;
        sp = next_subset(sp);
      }
    }
    __syncthreads();
    // P(sorted item i at position j - 1): the sum of the threads' columns, one warp per item (lane l adds
    // the columns l, l + 32, ..., then a fixed shuffle tree), resetting the columns to zero.
    for (int i = tid >> 5; i < na; i += B >> 5) {
      double* ai = acc + i * B;
      double sum = 0.0;
      for (int q = tid & 31; q < B; q += 32) {
        sum += ai[q];
        ai[q] = 0.0;
      }
      sum = device::warp_sum(sum);
      if ((tid & 31) == 0) p[i * layers + (j - 1)] = sum;
    }
    __syncthreads();
  }
}

// One block per context, grid-stride. w and g in shared memory (kShared) or in the block's slice of scratch,
// 2 * 2^n doubles per block.
template <class T, bool kShared>
__global__ void __launch_bounds__(kThreads)
    exact_contexts(Contexts<T> c, double* __restrict__ scratch, unsigned long long* __restrict__ bad) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int n = static_cast<int>(c.n), pitch = n + 1;
  const ExactLayout lay = exact_layout(n, static_cast<int>(blockDim.x), kShared);
  uint32_t* binom = reinterpret_cast<uint32_t*>(smem + lay.binom);
  int32_t* rank_of = reinterpret_cast<int32_t*>(smem + lay.rank_of);
  int32_t* items = reinterpret_cast<int32_t*>(smem + lay.items);
  double* ss = reinterpret_cast<double*>(smem + lay.ss);
  double* e = reinterpret_cast<double*>(smem + lay.e);
  double* p = reinterpret_cast<double*>(smem + lay.p);
  double* acc = reinterpret_cast<double*>(smem + lay.acc);
  const size_t count = size_t(1) << n;
  double* w = kShared ? reinterpret_cast<double*>(smem + lay.w) : scratch + size_t(blockIdx.x) * 2 * count;
  double* g = kShared ? reinterpret_cast<double*>(smem + lay.g) : w + count;
  if (threadIdx.x == 0) {  // Pascal's triangle; C(30, 15) < 2^32
    for (int a = 0; a <= n; ++a) {
      binom[a * pitch] = 1;
      for (int k = 1; k <= n; ++k) {
        binom[a * pitch + k] = k > a ? 0u : binom[(a - 1) * pitch + k - 1] + binom[(a - 1) * pitch + k];
      }
    }
  }
  for (int64_t q = threadIdx.x; q < int64_t(n) * blockDim.x; q += blockDim.x) acc[q] = 0.0;
  __syncthreads();
  int64_t first = kNoError;
  for (int64_t b = blockIdx.x; b < c.rows; b += gridDim.x) {
    const T* sr = c.s + b * c.n;
    if (!block_finite(sr, c.n)) {
      if (first == kNoError) first = b;
      continue;
    }
    const int na = static_cast<int>(block_sort(sr, c.mask_of(b), c.n, rank_of, items, ss));
    const int layers = static_cast<int>(c.topk == 0 || c.topk > na ? na : c.topk);
    if (na > 0) exact_context(ss, na, layers, binom, pitch, e, w, g, acc, p);
    write_context(c.out + b * c.width(), c.n, c.topk, rank_of, p, layers, 1, layers, false);
  }
  report_bad(first, bad);
}

// ------------------------------------------------------------------------------------------- integral

// Per-block arrays of the integral for contexts of up to n items (byte offsets, 16-byte aligned): the small
// per-item arrays (`small` bytes in all), then pt, n * layers_max doubles (`pt` bytes).
struct IntegralLayout {
  size_t rank_of, items, rel, w, x, a, b, poly, small, pt;
};

IntegralLayout integral_layout(int64_t n, int64_t layers_max) {
  const size_t un = static_cast<size_t>(n);
  IntegralLayout L{};
  size_t off = 0;
  L.rank_of = off;
  off += align16(un * sizeof(int32_t));
  L.items = off;
  off += align16(un * sizeof(int32_t));
  L.rel = off;  // sorted scores, then relative to the largest
  off += align16(un * sizeof(double));
  L.w = off;
  off += align16(un * sizeof(double));
  L.x = off;
  off += align16(un * sizeof(double));
  L.a = off;
  off += align16(un * sizeof(double));
  L.b = off;
  off += align16(un * sizeof(double));
  L.poly = off;  // two buffers of n + 1
  off += align16(2 * (un + 1) * sizeof(double));
  L.small = off;
  L.pt = align16(un * static_cast<size_t>(layers_max) * sizeof(double));
  return L;
}

// Deflation (marg::deflate, with one reciprocal per item as the CPU's integral_node) fused with the
// accumulation: col[j * na] += g c_j for j < layers, c = poly (na + 1) / (a z + b). The accumulators are
// read kBatch at a time before any is written back (col may be in global memory: the loads overlap).
__device__ __forceinline__ void deflate_add(const double* __restrict__ poly, int64_t na, int64_t layers, double a,
                                            double b, double g, double* __restrict__ col) {
  constexpr int kBatch = 4;
  double carry = 0.0, v[kBatch];
  if (b >= 0.5) {  // b >= a: from the low end, c_j = (p_j - a c_{j-1}) / b
    const double inv = 1.0 / b;
    int64_t j = 0;
    for (; j + kBatch <= layers; j += kBatch) {
#pragma unroll
      for (int u = 0; u < kBatch; ++u) v[u] = col[(j + u) * na];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const double c = (poly[j + u] - a * carry) * inv;
        carry = c;
        v[u] += g * c;
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) col[(j + u) * na] = v[u];
    }
    for (; j < layers; ++j) {
      const double c = (poly[j] - a * carry) * inv;
      carry = c;
      col[j * na] += g * c;
    }
  } else {  // a > b: from the high end, c_j = (p_{j+1} - b c_{j+1}) / a
    const double inv = 1.0 / a;
    int64_t j = na - 1;
    for (; j >= layers; --j) carry = (poly[j + 1] - b * carry) * inv;
    for (; j >= kBatch - 1; j -= kBatch) {
#pragma unroll
      for (int u = 0; u < kBatch; ++u) v[u] = col[(j - u) * na];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const double c = (poly[j - u + 1] - b * carry) * inv;
        carry = c;
        v[u] += g * c;
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) col[(j - u) * na] = v[u];
    }
    for (; j >= 0; --j) {
      const double c = (poly[j + 1] - b * carry) * inv;
      carry = c;
      col[j * na] += g * c;
    }
  }
}

// The integral of one context of na >= 1 items: pt[j * na + i] = P(sorted item i at position j), j < layers
// (not yet clamped). rel: the sorted scores on entry, relative to the largest on exit; poly: two buffers of
// pitch doubles (pitch >= na + 1). All threads of the block call it; it ends with a barrier.
__device__ __forceinline__ void integral_context(double* rel, double* w, double* x, double* fa, double* fb,
                                                 double* poly, int64_t pitch, double* pt, int64_t na,
                                                 int64_t layers) {
  const int64_t B = blockDim.x, tid = threadIdx.x;
  __syncthreads();  // the sorted scores are in rel
  if (tid == 0) marg::relative_scores(rel, na);  // sequential: O(na), beside the O(na^2) of each node
  __syncthreads();
  // x_l = w_l e^y with w_l = e^{rel_l} when no worth underflows, else e^{rel_l + y} item by item (as the CPU).
  const bool scaled = rel[na - 1] > -600.0;
  for (int64_t i = tid; i < na; i += B) w[i] = exp(rel[i]);
  for (int64_t q = tid; q < na * layers; q += B) pt[q] = 0.0;
  const double h = marg::integral_spacing(na);
  double* const p0 = poly;
  double* const p1 = poly + pitch;
  __syncthreads();
  marg::for_nodes(rel, na, h, [&](double y) {
    const double ey = scaled ? exp(y) : 0.0;
    for (int64_t l = tid; l < na; l += B) {
      const double xl = scaled ? w[l] * ey : exp(rel[l] + y);
      double al, bl;
      marg::clock(xl, al, bl);
      x[l] = xl;
      fa[l] = al;
      fb[l] = bl;
    }
    if (tid == 0) p0[0] = 1.0;
    __syncthreads();
    // marg::clock_product, one clock per step: new[k] = old[k] b_l + old[k - 1] a_l (old[l + 1] = 0).
    double* cur = p0;
    double* nxt = p1;
    for (int64_t l = 0; l < na; ++l) {
      const double al = fa[l], bl = fb[l];
      for (int64_t k = tid; k <= l + 1; k += B) {
        double v;
        if (k == 0) {
          v = cur[0] * bl;
        } else if (k <= l) {
          v = cur[k] * bl + cur[k - 1] * al;
        } else {
          v = cur[l] * al;
        }
        nxt[k] = v;
      }
      __syncthreads();
      double* t = cur;
      cur = nxt;
      nxt = t;
    }
    for (int64_t i = tid; i < na; i += B) {
      if (marg::in_window(rel[i], y)) deflate_add(cur, na, layers, fa[i], fb[i], h * x[i] * fb[i], pt + i);
    }
    __syncthreads();  // x, a, b and the polynomial are rewritten at the next node
  });
}

// One block per context, grid-stride. kPlace 0: the small arrays then pt in shared memory; 1: the small
// arrays in shared memory, pt in the block's slice of scratch; 2: both in the slice (small arrays first).
template <class T, int kPlace>
__global__ void __launch_bounds__(kThreads)
    integral_contexts(Contexts<T> c, IntegralLayout lay, unsigned char* __restrict__ scratch, size_t slice,
                      unsigned long long* __restrict__ bad) {
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* own = kPlace == 0 ? nullptr : scratch + size_t(blockIdx.x) * slice;
  unsigned char* base = kPlace == 2 ? own : smem;
  int32_t* rank_of = reinterpret_cast<int32_t*>(base + lay.rank_of);
  int32_t* items = reinterpret_cast<int32_t*>(base + lay.items);
  double* rel = reinterpret_cast<double*>(base + lay.rel);
  double* w = reinterpret_cast<double*>(base + lay.w);
  double* x = reinterpret_cast<double*>(base + lay.x);
  double* fa = reinterpret_cast<double*>(base + lay.a);
  double* fb = reinterpret_cast<double*>(base + lay.b);
  double* poly = reinterpret_cast<double*>(base + lay.poly);
  double* pt = reinterpret_cast<double*>(kPlace == 0 ? smem + lay.small : (kPlace == 1 ? own : own + lay.small));
  const int64_t n = c.n;
  int64_t first = kNoError;
  for (int64_t b = blockIdx.x; b < c.rows; b += gridDim.x) {
    const T* sr = c.s + b * n;
    if (!block_finite(sr, n)) {
      if (first == kNoError) first = b;
      continue;
    }
    const int64_t na = block_sort(sr, c.mask_of(b), n, rank_of, items, rel);
    const int64_t layers = c.topk == 0 || c.topk > na ? na : c.topk;
    if (na > 0) integral_context(rel, w, x, fa, fb, poly, n + 1, pt, na, layers);
    write_context(c.out + b * c.width(), n, c.topk, rank_of, pt, 1, na, layers, true);
  }
  report_bad(first, bad);
}

// ------------------------------------------------------------------------------------------- Monte Carlo

// Draw d = b * n_samples + t per thread (grid-stride), k = min(topk or n, n) positions; counts into out.
template <class T>
__global__ void __launch_bounds__(kThreads)
    mc_draws(Contexts<T> c, int64_t n_samples, int64_t k, uint64_t seed, double* __restrict__ keys,
             int32_t* __restrict__ items, unsigned long long* __restrict__ bad) {
  const int64_t tid = thread_index(), P = thread_count();
  const pl::Strided<double> key{keys + tid, P};
  const pl::Strided<int32_t> item{items + tid, P};
  const int64_t n = c.n, total = c.rows * n_samples, width = c.width();
  int64_t first = kNoError;
  for (int64_t d = tid; d < total; d += P) {
    const int64_t b = d / n_samples, t = d - b * n_samples;
    const T* sr = c.s + b * n;
    if (t == 0 && first == kNoError && !pl::finite_row(sr, n)) first = b;
    const int64_t cnt = pl::gumbel_top(sr, c.mask_of(b), n, k, seed, true, b, t, key, item);
    double* row = c.out + b * width;
    for (int64_t j = 0; j < cnt; ++j) {
      const int64_t it = item[j];  // in [0, n)
      atomicAdd(c.topk == 0 ? row + it * n + j : row + it, 1.0);
    }
  }
  report_bad(first, bad);
}

__global__ void __launch_bounds__(kThreads) scale_values(double* __restrict__ p, int64_t count, double scale) {
  for (int64_t q = thread_index(); q < count; q += thread_count()) p[q] *= scale;
}

// ------------------------------------------------------------------------------------------- observed orderings

// Listed-item set of thread t: in a register (n <= 64) or words [entry][thread] of a zeroed global buffer.
template <bool kSmall>
__device__ __forceinline__ std::conditional_t<kSmall, pl::Bits64, pl::BitsRef> make_bits(uint32_t* words, int64_t t,
                                                                                         int64_t P) {
  if constexpr (kSmall) {
    return pl::Bits64{};
  } else {
    return pl::BitsRef{{words + t, P}};
  }
}

// Sample d = b * size + t per thread (grid-stride): counts of item r[p] at position p into out (rows, n, n).
template <class I, bool kSmall>
__global__ void __launch_bounds__(kThreads)
    sample_counts(const I* __restrict__ smp, int64_t rows, int64_t size, int64_t m, int64_t n,
                  uint32_t* __restrict__ words, double* __restrict__ out, unsigned long long* __restrict__ bad) {
  const int64_t tid = thread_index(), P = thread_count();
  auto bits = make_bits<kSmall>(words, tid, P);
  const int64_t total = rows * size;
  int64_t first = kNoError;
  for (int64_t d = tid; d < total; d += P) {
    const int64_t b = d / size;
    const I* r = smp + d * m;
    const int64_t L = pl::parse_ranking(r, m, n, nullptr, bits);
    pl::clear_listed(r, m, n, bits);
    if (L < 0) {
      if (first == kNoError) first = b;
      continue;
    }
    double* row = out + b * n * n;
    for (int64_t p = 0; p < L && p < n; ++p) atomicAdd(row + static_cast<int64_t>(r[p]) * n + p, 1.0);
  }
  report_bad(first, bad);
}

// Ranking b per thread (grid-stride): weighted counts into a per-block (n, n) table in shared memory
// (kShared; added to out at the end) or straight into out.
template <class I, bool kSmall, bool kShared>
__global__ void __launch_bounds__(kThreads)
    empirical_rows(const I* __restrict__ r, int64_t rows, int64_t m, int64_t n, const uint8_t* __restrict__ mask,
                   bool global_mask, const double* __restrict__ weights, bool pairwise, uint32_t* __restrict__ words,
                   double* __restrict__ out, unsigned long long* __restrict__ bad) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t tid = thread_index(), P = thread_count();
  auto bits = make_bits<kSmall>(words, tid, P);
  double* acc = out;
  if constexpr (kShared) {
    acc = reinterpret_cast<double*>(smem);
    for (int64_t q = threadIdx.x; q < n * n; q += blockDim.x) acc[q] = 0.0;
    __syncthreads();
  }
  int64_t first = kNoError;
  for (int64_t b = tid; b < rows; b += P) {
    const I* rr = r + b * m;
    const uint8_t* mk = mask == nullptr ? nullptr : (global_mask ? mask : mask + b * n);
    const double wt = weights == nullptr ? 1.0 : weights[b];
    const int64_t L = pl::parse_ranking(rr, m, n, mk, bits);
    if (L < 0 || !(wt >= 0.0 && wt <= DBL_MAX)) {
      pl::clear_listed(rr, m, n, bits);
      if (first == kNoError) first = b;
      continue;
    }
    for (int64_t p = 0; p < L && p < n; ++p) {
      double* ai = acc + static_cast<int64_t>(rr[p]) * n;
      if (!pairwise) {
        atomicAdd(ai + p, wt);
        continue;
      }
      for (int64_t q = p + 1; q < L; ++q) atomicAdd(ai + static_cast<int64_t>(rr[q]), wt);
      for (int64_t i = 0; i < n; ++i) {
        if (pl::available(mk, i) && !bits.test(i)) atomicAdd(ai + i, wt);
      }
    }
    if (!pairwise) {
      const int64_t last = pl::implied_last(mk, n, L, bits);
      if (last >= 0) atomicAdd(acc + last * n + L, wt);
    }
    pl::clear_listed(rr, m, n, bits);
  }
  report_bad(first, bad);
  if constexpr (kShared) {
    __syncthreads();
    for (int64_t q = threadIdx.x; q < n * n; q += blockDim.x) {
      if (acc[q] != 0.0) atomicAdd(out + q, acc[q]);
    }
  }
}

// ------------------------------------------------------------------------------------------- host side

cudaStream_t as_stream(Stream s) { return static_cast<cudaStream_t>(s); }


Geometry geometry(int64_t items, size_t per_thread, int64_t resident_threads) {
  return prefcal::cuda::geometry(items, per_thread, resident_threads, kThreads, kScratchBudget);
}

// The bad-row flag of a launch, in device memory: starts at all ones (UINT64_MAX) so that atomicMin finds
// the first bad row.
struct BadFlag {
  PoolBuffer buf;
  explicit BadFlag(cudaStream_t st) : buf(sizeof(unsigned long long), st) {
    PREFCAL_CUDA_CHECK(cudaMemsetAsync(ptr(), 0xff, sizeof(unsigned long long), st));
  }
  unsigned long long* ptr() const { return buf.as<unsigned long long>(); }
  // Copies the flag to the host and waits for the stream. Returns the first bad row or kNoError.
  int64_t fetch(cudaStream_t st) const {
    unsigned long long b = 0;
    PREFCAL_CUDA_CHECK(cudaMemcpyAsync(&b, ptr(), sizeof(b), cudaMemcpyDeviceToHost, st));
    PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
    return b == ~0ull ? kNoError : static_cast<int64_t>(b);
  }
};

void zero(double* p, int64_t count, cudaStream_t st) {
  if (count > 0) PREFCAL_CUDA_CHECK(cudaMemsetAsync(p, 0, size_t(count) * sizeof(double), st));
}

void launch_scale(double* p, int64_t count, double scale, cudaStream_t st) {
  if (count <= 0) return;
  const int64_t cap = int64_t(32) * multiprocessors(current_device());
  const unsigned grid = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(cap, ceil_div(count, kThreads))));
  scale_values<<<grid, kThreads, 0, st>>>(p, count, scale);
  PREFCAL_CUDA_LAUNCHED();
}

// Threads per block of the exact kernel: about a quarter of the largest layer (C(n, n / 2) subsets) per thread.
int exact_block(int64_t n) {
  if (n <= 8) return 32;
  if (n <= 10) return 64;
  if (n <= 12) return 128;
  return kThreads;
}

template <class T>
int64_t launch_exact(const Contexts<T>& c, cudaStream_t st) {
  if (c.n > marg::kMaxExact) throw std::invalid_argument("internal error: exact with n > 30");
  if (c.rows == 0 || c.n == 0) return kNoError;
  const int n = static_cast<int>(c.n), block = exact_block(n);
  const bool in_shared = n <= kExactSharedMax;
  const ExactLayout lay = exact_layout(n, block, in_shared);
  if (lay.total > kSmemBudget) throw std::logic_error("internal error: exact shared memory layout");
  auto kernel = in_shared ? exact_contexts<T, true> : exact_contexts<T, false>;
  int64_t grid = std::min<int64_t>(c.rows, resident_blocks(kernel, lay.total, block, kSmemBudget));
  const size_t slice = in_shared ? 0 : 2 * (size_t(1) << n) * sizeof(double);
  if (!in_shared) grid = std::max<int64_t>(1, std::min<int64_t>(grid, static_cast<int64_t>(kContextBudget / slice)));
  PoolBuffer scratch(size_t(grid) * slice, st);
  const BadFlag flag(st);
  kernel<<<unsigned(grid), block, lay.total, st>>>(c, in_shared ? nullptr : scratch.as<double>(), flag.ptr());
  PREFCAL_CUDA_LAUNCHED();
  return flag.fetch(st);
}

template <class T>
int64_t launch_integral(const Contexts<T>& c, cudaStream_t st) {
  if (c.rows == 0 || c.n == 0) return kNoError;
  const int64_t n = c.n;
  const int block = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(n, 32) * 32));
  const IntegralLayout lay = integral_layout(n, c.layers_max());
  const bool small_shared = lay.small <= kSmemBudget;
  const bool pt_shared = small_shared && lay.small + lay.pt <= std::min(kIntegralSharedPt, kSmemBudget);
  const size_t smem = small_shared ? lay.small + (pt_shared ? lay.pt : 0) : 0;
  const size_t slice = align_up((small_shared ? 0 : lay.small) + (pt_shared ? 0 : lay.pt));
  auto kernel = pt_shared ? integral_contexts<T, 0>
                          : (small_shared ? integral_contexts<T, 1> : integral_contexts<T, 2>);
  int64_t grid = std::min<int64_t>(c.rows, resident_blocks(kernel, smem, block, kSmemBudget));
  if (slice > 0) grid = std::max<int64_t>(1, std::min<int64_t>(grid, static_cast<int64_t>(kContextBudget / slice)));
  PoolBuffer scratch(size_t(grid) * slice, st);
  const BadFlag flag(st);
  kernel<<<unsigned(grid), block, smem, st>>>(c, lay, slice > 0 ? scratch.as<unsigned char>() : nullptr, slice,
                                              flag.ptr());
  PREFCAL_CUDA_LAUNCHED();
  return flag.fetch(st);
}

template <class T>
int64_t launch_mc(const Contexts<T>& c, int64_t n_samples, uint64_t seed, cudaStream_t st) {
  const int64_t k = c.layers_max(), count = c.rows * c.width();
  zero(c.out, count, st);
  if (c.rows == 0 || c.n == 0 || n_samples == 0) return kNoError;  // as the CPU: nothing drawn, nothing checked
  const int64_t total = c.rows * n_samples;
  const size_t kk = size_t(std::max<int64_t>(k, 1));
  const int64_t resident = resident_blocks(mc_draws<T>, 0, kThreads, kSmemBudget) * kThreads;
  const Geometry geo = geometry(total, kk * (sizeof(double) + sizeof(int32_t)), resident);
  const size_t P = static_cast<size_t>(geo.threads());
  Carve cv;
  const size_t off_keys = cv.take(P * kk * sizeof(double));
  const size_t off_items = cv.take(P * kk * sizeof(int32_t));
  PoolBuffer buf(cv.bytes, st);
  const BadFlag flag(st);
  mc_draws<T><<<unsigned(geo.grid), geo.block, 0, st>>>(c, n_samples, k, seed, buf.as<double>(off_keys),
                                                       buf.as<int32_t>(off_items), flag.ptr());
  PREFCAL_CUDA_LAUNCHED();
  launch_scale(c.out, count, 1.0 / static_cast<double>(n_samples), st);
  return flag.fetch(st);
}

size_t bit_words(int64_t n) { return n > kSmallN ? size_t(n / 32 + 1) : 0; }

}  // namespace

// ------------------------------------------------------------------------------------------- entry points

int64_t marg_model(const void* scores, DType scores_type, int64_t rows, int64_t n, const uint8_t* mask,
                   bool global_mask, int method, int64_t topk, int64_t n_samples, uint64_t seed, double* out,
                   Stream stream) {
  if (rows < 0 || n < 0 || topk < 0 || n_samples < 0 || method < 0 || method > 2) {
    throw std::invalid_argument("internal error: marg_model arguments");
  }
  const cudaStream_t st = as_stream(stream);
  return bind::dispatch_float(scores_type, "scores", [&](auto ts) {
    using T = decltype(ts);
    const Contexts<T> c{static_cast<const T*>(scores), mask, global_mask, rows, n, topk, out};
    if (method == 0) return launch_exact(c, st);
    if (method == 1) return launch_integral(c, st);
    return launch_mc(c, n_samples, seed, st);
  });
}

int64_t marg_from_samples(const void* samples, DType type, int64_t rows, int64_t size, int64_t m, int64_t n,
                          double* out, Stream stream) {
  if (rows < 0 || size < 0 || m < 0 || n < 0) throw std::invalid_argument("internal error: marg_from_samples shape");
  const cudaStream_t st = as_stream(stream);
  return bind::dispatch_label(type, "samples", [&](auto ti) {
    using I = decltype(ti);
    zero(out, rows * n * n, st);
    const int64_t total = rows * size;
    if (total == 0) return kNoError;
    const bool small = n <= kSmallN;
    auto kernel = small ? sample_counts<I, true> : sample_counts<I, false>;
    const size_t words_b = bit_words(n) * sizeof(uint32_t);
    const Geometry geo = geometry(total, words_b, resident_blocks(kernel, 0, kThreads, kSmemBudget) * kThreads);
    const size_t P = static_cast<size_t>(geo.threads());
    PoolBuffer words(P * words_b, st);
    if (!small) PREFCAL_CUDA_CHECK(cudaMemsetAsync(words.as<uint32_t>(), 0, P * words_b, st));
    const BadFlag flag(st);
    kernel<<<unsigned(geo.grid), geo.block, 0, st>>>(static_cast<const I*>(samples), rows, size, m, n,
                                                     small ? nullptr : words.as<uint32_t>(), out, flag.ptr());
    PREFCAL_CUDA_LAUNCHED();
    launch_scale(out, rows * n * n, 1.0 / static_cast<double>(size), st);
    return flag.fetch(st);
  });
}

int64_t marg_empirical(const void* rankings, DType type, int64_t rows, int64_t m, int64_t n, const uint8_t* mask,
                       bool global_mask, const double* weights, bool pairwise, double* out, Stream stream) {
  if (rows < 0 || m < 0 || n < 0) throw std::invalid_argument("internal error: marg_empirical shape");
  const cudaStream_t st = as_stream(stream);
  return bind::dispatch_label(type, "rankings", [&](auto ti) {
    using I = decltype(ti);
    zero(out, n * n, st);
    if (rows == 0) return kNoError;
    const bool small = n <= kSmallN;
    const size_t table = size_t(n) * size_t(n) * sizeof(double);
    const bool in_shared = table <= kSharedAccBytes;
    auto kernel = small ? (in_shared ? empirical_rows<I, true, true> : empirical_rows<I, true, false>)
                        : (in_shared ? empirical_rows<I, false, true> : empirical_rows<I, false, false>);
    const size_t smem = in_shared ? table : 0;
    const size_t words_b = bit_words(n) * sizeof(uint32_t);
    const Geometry geo = geometry(rows, words_b, resident_blocks(kernel, smem, kThreads, kSmemBudget) * kThreads);
    const size_t P = static_cast<size_t>(geo.threads());
    PoolBuffer words(P * words_b, st);
    if (!small) PREFCAL_CUDA_CHECK(cudaMemsetAsync(words.as<uint32_t>(), 0, P * words_b, st));
    const BadFlag flag(st);
    kernel<<<unsigned(geo.grid), geo.block, smem, st>>>(static_cast<const I*>(rankings), rows, m, n, mask,
                                                        global_mask, weights, pairwise,
                                                        small ? nullptr : words.as<uint32_t>(), out, flag.ptr());
    PREFCAL_CUDA_LAUNCHED();
    return flag.fetch(st);
  });
}

}  // namespace prefcal::cuda
