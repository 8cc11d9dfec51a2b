// CUDA kernels of the calibration hierarchy (prefcal.ranking, SPEC §5): the twins of cpp/src/ranking.cpp.
// Entry points and contracts: ranking.hpp. Every event probability is computed inside the binning kernel, from
// the rank keys and the worths of its row; nothing of size (rows x classes) is ever written.
//
// Row statistics (one thread per score row): w = exp(s - max) (0 for unavailable items), their total in index
// order and the "slow" flag (a score more than 660 below the max: that row is done in the log domain), exactly
// as the CPU's Row::load; for top-k levels also each row's observed top-k prefix and whether it is decided.
// (rows x n doubles: the size of the keys.)
//
// Binning (classwise, top-label over groups): the grid is flattened to gx row blocks x gy unit slices; a unit
// is a class (rank_classwise), a (subset, block of its orders) (rank_classwise_subsets) or a group (top-label
// level 0), and each thread owns one unit for the whole kernel. A block streams the rows of its row block
// through shared memory (tiles of up to 64 rows: keys, worths, flags, prefixes, copied with coalesced loads),
// and every thread adds its unit's events of each row to its own cells in shared memory: tables laid out
// [cell][thread] (conflict-free: a warp touches 32 consecutive words), a u32 word count | outcome << 16 and a
// float64 sum of p per (class, bin). There are no atomics and no contention in the event loop. Every 65535
// rows (the 16-bit halves) and at the end, each thread adds its cells to its classes' entries of the block's
// partial table (one float64 row per row block, gx rows, summed in row-block order by a last kernel; with a
// single row block the partial table is the result). Each class has one owner thread per row block, so the
// partial tables, and the result, are the same on every run.
//   Sub-k through the slot table: per (row, subset) the observed order is found once and the k! (k = 3: six)
//   order probabilities share the subset's sums, with the CPU's arithmetic (pairs and triples: the same
//   functions of prefcal/ranking.hpp; k >= 4: SubsetWalk's operations in the same order), so the same bits
//   given the same worths.
//   When a thread's cells do not fit (k! * n_bins too large even with fewer orders per thread and 32-thread
//   blocks), the same kernels add their events with float64 atomics to one global table (counts stay exact:
//   integers below 2^53 add exactly in any order; sums are then reproducible up to rounding only).
// Top-label levels 1 and 2: one thread per row (grid-stride), per-thread sort scratch in global memory (the
// set level's 2^k DP too), per-thread bins in shared memory, one partial (3, B) row per block.
// Canonical: centres sorted by label (host), one thread per evaluation point j, centres tiled through shared
// memory, two passes (the row max of log k, then the per-class sums of exp(log k - max)), classes in registers
// up to 8, else in per-thread columns; per-j values summed on the host in the CPU's order.
//
// Floor of the headline case, classwise sub-3 over N = 10^6 rows of n = 10 items (120 subsets x 6 orders =
// 720 classes, 7.2e8 events) on an H100 SXM (132 SMs, 1.98 GHz, 3.35 TB/s HBM3):
//   memory: the bytes that must move are the scores and the keys, 16 B x n per row = 160 MB -> 48 us
//     (1.5e13 events/s); the worths add a write and a read of 80 MB (~50 us). Not the limit.
//   arithmetic: per (row, subset) 4 float64 reciprocals, 9 products, 6 bins and 6 cell updates (u32 and f64
//     read-modify-write in shared memory): ~190 instructions per 6 events, ~32 per event -> 7.2e8 warp
//     instructions, 0.7 ms at the full issue rate (132 SMs x 4 per clock); float64 pipe ~11 per event ->
//     0.5 ms; shared memory ~24 B per event -> 0.5 ms.
//   So the kernel is issue-bound; at 2 blocks of 128 threads per SM (92 KB of cells + a 11 KB tile each) and
//   about a third of the issue rate it runs in ~2 ms (~3.5e11 events/s), under the 7 ms target. (Estimate,
//   written without a GPU. Measured on an H100 by time_rank_classwise_subsets: 4.92 ms, 1.46e11 events/s;
//   benchmarks/RESULTS.md.)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "prefcal/common.hpp"
#include "prefcal/ranking.hpp"
#include "ranking.hpp"
#include "reduce.cuh"
#include "runtime.cuh"

namespace prefcal::cuda {

namespace {

using device::report_bad;

using rank::Binner;
using rank::clip01;
using rank::dmax;
using rank::is_fin;
using rank::is_inf;
using rank::kInf;
using rank::log_add;
using rank::observed_prefix;
using rank::sub_prob;
using rank::sub_truth;
using rank::top_prob;
constexpr int kThreads = 128;        // largest block of the binning kernels
constexpr int kTileRows = 64;        // rows per shared-memory tile
constexpr size_t kSmemBudget = 110 * 1024;     // dynamic shared memory per block (2 blocks per H100 SM)
constexpr size_t kTileBudget = 16 * 1024;      // of which the row tile takes at most this much
constexpr size_t kEdgesShared = 2048;          // log edges copied to shared memory up to this many
constexpr int64_t kEpochRows = 65535;          // rows between flushes of the 16-bit counts
constexpr int64_t kMinRowsPerBlock = 64;
constexpr size_t kPartialBudget = size_t(256) << 20;  // partial tables, all row blocks together
constexpr size_t kScratchBudget = size_t(256) << 20;  // per-thread global scratch, all threads together
constexpr int kMaxSubsetK = 12;
static_assert(kMaxSubsetK <= rank::kMaxObservedK, "observed_rank's scratch holds kMaxObservedK items");
constexpr int kCanonTile = 128;                // centres per shared-memory tile (at most)
constexpr int kCanonRegs = 8;                  // canonical: classes in registers up to this many

constexpr uint8_t kSkipRow = 1;  // row flags in the tile
constexpr uint8_t kSlowRow = 2;

// ------------------------------------------------------------------------------------------- device helpers
// The per-event arithmetic is that of cpp/src/ranking.cpp through prefcal/ranking.hpp (rank::), shared
// with the CPU build.

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// fastmath::exp_neg's domain: arguments clamped to [-700, 0], NaN to -700.
__device__ __forceinline__ double exp_clamped(double x) {
  x = x >= -700.0 ? x : -700.0;
  x = x <= 0.0 ? x : 0.0;
  return exp(x);
}

// Item j of a class or group: p[j * stride].
struct Items {
  const int32_t* p;
  int64_t stride;
  __host__ __device__ __forceinline__ int32_t operator[](int64_t j) const { return p[j * stride]; }
};

// One row as the kernels see it.
struct RowRef {
  const double* w;    // worths relative to the row max, 0 for unavailable items
  const double* s;    // scores (global memory)
  const double* key;  // rank keys
  double total;       // sum of w in index order
  bool slow;
};

__device__ __forceinline__ int64_t binom(int64_t a, int64_t b) {
  if (b < 0 || b > a) return 0;
  int64_t c = 1;
  for (int64_t i = 1; i <= b; ++i) c = c * (a - b + i) / i;  // every partial value is a binomial <= C(a, b)
  return c;
}

// The s-th k-subset of range(n) in combinations (lexicographic) order.
__device__ void unrank_combination(int64_t s, int64_t n, int k, int32_t* it) {
  int64_t x = 0;
  for (int j = 0; j < k; ++j) {
    for (;;) {
      const int64_t c = binom(n - 1 - x, k - 1 - j);
      if (s < c) break;
      s -= c;
      ++x;
    }
    it[j] = static_cast<int32_t>(x++);
  }
}

// Lexicographic rank of the observed order of the subset's items, or -1 when undecided (the CPU's
// SubsetWalk::observed).
__device__ __forceinline__ int64_t observed_rank(const double* key, const int32_t* it, int k) {
  return rank::observed_rank(key, it, k);
}

// Positions of the order of lexicographic rank r of k positions.
__device__ void decode_order(int64_t r, int k, int8_t* pos) {
  int64_t f = 1;
  for (int j = 2; j < k; ++j) f *= j;  // (k - 1)!
  unsigned used = 0;
  for (int d = 0; d < k; ++d) {
    const int64_t q = d < k - 1 ? r / f : 0;
    if (d < k - 1) {
      r -= q * f;
      f /= (k - 1 - d) > 0 ? (k - 1 - d) : 1;
    }
    int64_t cnt = -1;
    for (int x = 0; x < k; ++x) {
      if ((used >> x) & 1u) continue;
      if (++cnt == q) {
        pos[d] = static_cast<int8_t>(x);
        used |= 1u << x;
        break;
      }
    }
  }
}

// P(order of rank r) from the subset's worths wa with SubsetWalk's arithmetic: the product along the walk of
// wa[j] * (1 / sums[left]), sums[m] = sums[m without its lowest item] + wa[lowest] (so: added from the
// highest position down), the last factor (1) left out.
__device__ double order_prob(const double* wa, int k, const int8_t* pos) {
  unsigned left = (1u << k) - 1u;
  double p = 1.0;
  for (int d = 0; d < k - 1; ++d) {
    double sum = 0.0;
    for (int b = k - 1; b >= 0; --b) {
      if ((left >> b) & 1u) sum += wa[b];
    }
    const int j = pos[d];
    p = p * (wa[j] * (1.0 / sum));
    left ^= 1u << j;
  }
  return p;
}

// ------------------------------------------------------------------------------------------- rows and tiles

// Inputs of the row-streaming kernels (device pointers).
struct RowsIn {
  const double* s;        // scores (score_rows, n)
  const double* w;        // worths (score_rows, n)
  const double* total;    // (score_rows,)
  const uint8_t* slow;    // (score_rows,)
  const double* keys;     // (rows, n)
  const uint8_t* keep;    // (rows,) or null
  const int32_t* pre;     // (rows, pre_k) observed top-k prefixes or null
  const uint8_t* decided; // (rows,) or null: rows whose prefix is undecided are skipped
  int64_t rows, n, score_rows, pre_k;
};

// Byte offsets of a block's dynamic shared memory (float64 sections first, then 32-bit, then bytes).
struct Layout {
  size_t edges = 0, sum = 0, wone = 0, key = 0, w = 0, tot = 0, cnt = 0, hits = 0, items = 0, pre = 0, flag = 0;
  size_t bytes = 0;
  int32_t tile_rows = 0;  // 0: rows are read from global memory
  bool has_edges = false, has_items = false;
};

// Streams rows [lo, hi) through the block (every thread calls it: it has barriers) and calls
// row_fn(RowRef, prefix) for each kept row; flush() every `epoch` rows (uniform across the block).
template <class RowFn, class Flush>
__device__ void for_rows(const RowsIn& in, const Layout& lay, unsigned char* smem, int64_t lo, int64_t hi,
                         int64_t epoch, RowFn&& row_fn, Flush&& flush) {
  const int T = blockDim.x, t = threadIdx.x;
  const int64_t n = in.n, kp = in.pre_k;
  const bool one = in.score_rows == 1;
  int64_t since = 0;
  __syncthreads();  // what the kernel staged before the call (edges, items) is visible to every thread
  if (lay.tile_rows > 0) {
    double* key = reinterpret_cast<double*>(smem + lay.key);
    double* w = reinterpret_cast<double*>(smem + (one ? lay.wone : lay.w));
    double* tot = reinterpret_cast<double*>(smem + lay.tot);
    int32_t* pre = reinterpret_cast<int32_t*>(smem + lay.pre);
    uint8_t* flag = smem + lay.flag;
    if (one) {
      for (int64_t e = t; e < n; e += T) w[e] = in.w[e];
    }
    for (int64_t base = lo; base < hi; base += lay.tile_rows) {
      const int64_t nr = imin(lay.tile_rows, hi - base);
      if (since + nr > epoch) {
        flush();
        since = 0;
      }
      __syncthreads();  // the previous tile is consumed
      for (int64_t e = t; e < nr * n; e += T) key[e] = in.keys[base * n + e];
      if (!one) {
        for (int64_t e = t; e < nr * n; e += T) w[e] = in.w[base * n + e];
      }
      if (in.pre != nullptr) {
        for (int64_t e = t; e < nr * kp; e += T) pre[e] = in.pre[base * kp + e];
      }
      for (int64_t r = t; r < nr; r += T) {
        const int64_t row = base + r, srow = one ? 0 : row;
        const bool skip = (in.keep != nullptr && !in.keep[row]) || (in.decided != nullptr && !in.decided[row]);
        flag[r] = static_cast<uint8_t>((skip ? kSkipRow : 0) | (in.slow[srow] ? kSlowRow : 0));
        tot[r] = in.total[srow];
      }
      __syncthreads();
      for (int64_t r = 0; r < nr; ++r) {
        const uint8_t f = flag[r];
        if (f & kSkipRow) continue;
        const int64_t srow = one ? 0 : base + r;
        const RowRef ref{one ? w : w + r * n, in.s + srow * n, key + r * n, tot[r], (f & kSlowRow) != 0};
        row_fn(ref, pre + r * kp);
      }
      since += nr;
    }
    return;
  }
  for (int64_t row = lo; row < hi; ++row) {
    if (since == epoch) {
      flush();
      since = 0;
    }
    ++since;
    if ((in.keep != nullptr && !in.keep[row]) || (in.decided != nullptr && !in.decided[row])) continue;
    const int64_t srow = one ? 0 : row;
    const RowRef ref{in.w + srow * n, in.s + srow * n, in.keys + row * n, in.total[srow], in.slow[srow] != 0};
    row_fn(ref, in.pre != nullptr ? in.pre + row * kp : nullptr);
  }
}

// Arguments of the unit kernels (classwise, subsets, top-label groups).
struct UnitArgs {
  RowsIn in;
  Layout lay;
  int32_t B;
  const double* edges;   // (B + 1,) or null
  const int32_t* items;  // classes (C, k) or groups (G, k); null for subsets
  const int32_t* slot;   // subsets: (C(n, k) * k!,)
  int64_t k, kf, units, n_ob, ob, gy, gx, epoch, width;
  double* out;  // private: partial tables (gx, width) (or the table when gx = 1); else the table
  unsigned long long* skipped;
};

// The block's row range and the Binner (edges copied to shared memory when they fit; the first barrier of
// for_rows orders the copy before any use).
__device__ __forceinline__ Binner block_binner(const UnitArgs& a, unsigned char* smem) {
  if (a.edges == nullptr) return Binner{a.B, nullptr};
  if (!a.lay.has_edges) return Binner{a.B, a.edges};
  double* e = reinterpret_cast<double*>(smem + a.lay.edges);
  for (int64_t i = threadIdx.x; i <= a.B; i += blockDim.x) e[i] = a.edges[i];
  return Binner{a.B, e};
}

__device__ __forceinline__ void row_block(const UnitArgs& a, int64_t rb, int64_t& lo, int64_t& hi) {
  lo = a.in.rows * rb / a.gx;
  hi = a.in.rows * (rb + 1) / a.gx;
}

// A unit's items: staged in shared memory [j][thread] when the layout has room, else read from global memory.
__device__ __forceinline__ Items unit_items(const UnitArgs& a, unsigned char* smem, int64_t unit, bool active) {
  const int64_t k = a.k;
  const int64_t u = active ? unit : 0;
  if (!a.lay.has_items) return Items{a.items + u * k, 1};
  int32_t* col = reinterpret_cast<int32_t*>(smem + a.lay.items) + threadIdx.x;
  for (int64_t j = 0; j < k; ++j) col[j * blockDim.x] = active ? a.items[u * k + j] : 0;
  return Items{col, blockDim.x};
}

// ------------------------------------------------------------------------------------------- row statistics

// One thread per score row: the CPU's Row::load.
__global__ void __launch_bounds__(kThreads)
    row_stats(const double* __restrict__ s, int64_t rows, int64_t n, double* __restrict__ w,
              double* __restrict__ total, uint8_t* __restrict__ slow) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += stride) {
    double tot = 0.0;
    const bool sl = rank::load_row(s + r * n, n, w + r * n, tot);
    total[r] = tot;
    slow[r] = sl ? 1 : 0;
  }
}

// One thread per row: the ordered observed top-k prefix and whether it is decided.
__global__ void __launch_bounds__(kThreads)
    top_prefix(const double* __restrict__ keys, int64_t rows, int64_t n, int64_t k, int32_t* __restrict__ pre,
               uint8_t* __restrict__ decided) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += stride) {
    int32_t* p = pre + r * k;
    const bool ok = observed_prefix(keys + r * n, n, k, true, [&](int64_t j, int32_t v) { p[j] = v; });
    decided[r] = ok ? 1 : 0;
  }
}

// ------------------------------------------------------------------------------------------- keys and seen

// One thread per row: the CPU's rank_keys.
__global__ void __launch_bounds__(kThreads)
    keys_kernel(const int64_t* __restrict__ rankings, int64_t rows, int64_t m, int64_t n,
                const uint8_t* __restrict__ mask, bool global, double* __restrict__ keys,
                unsigned long long* __restrict__ bad) {
  int64_t first = kNoError;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < rows; b += stride) {
    const int64_t* r = rankings + b * m;
    const uint8_t* mk = mask == nullptr ? nullptr : mask + (global ? 0 : b * n);
    if (rank::row_keys(r, m, n, mk, keys + b * n) && b < first) first = b;
  }
  report_bad(first, bad);
}

// One thread per (row, run of `per` subsets): seen[subset * k! + observed rank] = 1.
__global__ void __launch_bounds__(kThreads)
    seen_kernel(const double* __restrict__ keys, int64_t rows, int64_t n, int k, int64_t kf, int64_t count,
                int64_t per, uint8_t* __restrict__ seen) {
  const int64_t runs = (count + per - 1) / per;
  const int64_t total = rows * runs;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int32_t it[kMaxSubsetK];
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t b = e / runs, run = e - b * runs;
    const double* key = keys + b * n;
    int64_t subset = run * per;
    const int64_t end = imin(subset + per, count);
    unrank_combination(subset, n, k, it);
    for (; subset < end; ++subset) {
      const int64_t r = observed_rank(key, it, k);
      if (r >= 0) {
        uint8_t* dst = seen + subset * kf + r;
        if (*dst == 0) *dst = 1;
      }
      rank::next_combination(it, k, n);
    }
  }
}

// ------------------------------------------------------------------------------------------- classwise kernels

// Per-thread packed cells [cell][thread] in shared memory: count | outcome << 16, and the sum of p.
struct Packed {
  uint32_t* cnt;
  double* sum;
  int T;
  __device__ __forceinline__ void add(int64_t cell, double p, bool hit) const {
    cnt[cell * T] += 1u | (hit ? 0x10000u : 0u);
    sum[cell * T] += p;
  }
};

__device__ __forceinline__ Packed packed_cells(const Layout& lay, unsigned char* smem, int64_t cells) {
  Packed c{reinterpret_cast<uint32_t*>(smem + lay.cnt) + threadIdx.x,
           reinterpret_cast<double*>(smem + lay.sum) + threadIdx.x, static_cast<int>(blockDim.x)};
  for (int64_t i = 0; i < cells; ++i) {
    c.cnt[i * c.T] = 0;
    c.sum[i * c.T] = 0.0;
  }
  return c;
}

// Adds the cells of class c (cells [cell0, cell0 + B)) to the class's entries of the table `part`.
__device__ __forceinline__ void flush_class(const Packed& cells, int64_t cell0, int32_t B, int64_t c, double* part) {
  double* t = part + c * 3 * B;
  for (int32_t b = 0; b < B; ++b) {
    const int64_t i = (cell0 + b) * cells.T;
    const uint32_t word = cells.cnt[i];
    if (word == 0) continue;
    atomicAdd(t + b, static_cast<double>(word & 0xffffu));
    atomicAdd(t + B + b, cells.sum[i]);
    if (word >> 16) atomicAdd(t + 2 * B + b, static_cast<double>(word >> 16));
    cells.cnt[i] = 0;
    cells.sum[i] = 0.0;
  }
}

__device__ __forceinline__ void add_global(double* table, int64_t c, int32_t B, int32_t b, double p, bool hit) {
  double* t = table + c * 3 * B;
  atomicAdd(t + b, 1.0);
  atomicAdd(t + B + b, p);
  if (hit) atomicAdd(t + 2 * B + b, 1.0);
}

// Classes (C, k): one thread per class, sub-k (kTop = false) or top-k.
template <bool kTop, bool kPriv>
__global__ void __launch_bounds__(kThreads) classwise_kernel(UnitArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t slice = blockIdx.x % a.gy, rb = blockIdx.x / a.gy;
  const int64_t c = slice * blockDim.x + threadIdx.x;
  const bool active = c < a.units;
  const Binner bin = block_binner(a, smem);
  const Items cl = unit_items(a, smem, c, active);
  const int64_t k = a.k, n = a.in.n;
  const int32_t B = a.B;
  Packed cells{nullptr, nullptr, 0};
  if (kPriv) cells = packed_cells(a.lay, smem, B);
  double* part = a.out + (kPriv ? rb * a.width : 0);
  int64_t lo = 0, hi = 0;
  row_block(a, rb, lo, hi);
  auto emit = [&](double p, bool hit) {
    const int32_t b = bin(p);
    if (kPriv) {
      cells.add(b, p, hit);
    } else {
      add_global(a.out, c, B, b, p, hit);
    }
  };
  auto flush = [&]() {
    if (kPriv && active) flush_class(cells, 0, B, c, part);
  };
  for_rows(a.in, a.lay, smem, lo, hi, a.epoch,
           [&](const RowRef& row, const int32_t* pre) {
             if (!active) return;
             if (kTop) {
               const int truth = rank::top_truth(row.key, cl, pre, k);
               if (truth < 0) return;
               const double p = clip01(top_prob(row, cl, k, n));
               emit(p, truth == 1);
             } else {
               const int truth = sub_truth(row.key, cl, k);
               if (truth < 0) return;
               const double p = clip01(sub_prob(row, cl, k));
               emit(p, truth == 1);
             }
           },
           flush);
  flush();
}

// Sub-k through the slot table: one thread per (subset, block of ob orders). K = 2, 3: the CPU's pair and
// triple loops; K = 0: SubsetWalk's arithmetic for any k <= 12.
template <int K, bool kPriv>
__global__ void __launch_bounds__(kThreads) subsets_kernel(UnitArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int KM = K > 0 ? K : kMaxSubsetK;
  const int64_t slice = blockIdx.x % a.gy, rb = blockIdx.x / a.gy;
  const int64_t unit = slice * blockDim.x + threadIdx.x;
  const bool active = unit < a.units;
  const Binner bin = block_binner(a, smem);
  const int k = K > 0 ? K : static_cast<int>(a.k);
  const int64_t kf = a.kf, n = a.in.n;
  const int32_t B = a.B;
  const int64_t subset = active ? unit / a.n_ob : 0;
  const int64_t r0 = active ? (unit - subset * a.n_ob) * a.ob : 0;
  const int64_t r1 = active ? imin(r0 + a.ob, kf) : 0;
  int32_t it[KM];
  if (active) {
    unrank_combination(subset, n, k, it);
  } else {
    for (int j = 0; j < KM; ++j) it[j] = 0;
  }
  // K = 2, 3: the items as scalars (registers), not the array whose address escaped to the unranking
  const int32_t ia = it[0], ib = it[KM > 1 ? 1 : 0], ic = it[KM > 2 ? 2 : 0];
  const int32_t* sl = a.slot + subset * kf;
  // K = 2, 3: the classes of the thread's orders in registers (-1: not listed or not this thread's)
  constexpr int KF = K == 2 ? 2 : 6;
  int32_t cs[KF];
#pragma unroll
  for (int r = 0; r < KF; ++r) cs[r] = (K == 2 || K == 3) && active && r >= r0 && r < r1 ? sl[r] : -1;
  Packed cells{nullptr, nullptr, 0};
  if (kPriv) cells = packed_cells(a.lay, smem, (r1 - r0) * B);
  double* part = a.out + (kPriv ? rb * a.width : 0);
  int64_t lo = 0, hi = 0;
  row_block(a, rb, lo, hi);
  // event of order r (class c >= 0) at probability p (clipped)
  auto emit = [&](int64_t r, int32_t c, double p, bool hit) {
    const int32_t b = bin(p);
    if (kPriv) {
      cells.add((r - r0) * B + b, p, hit);
    } else {
      add_global(a.out, c, B, b, p, hit);
    }
  };
  auto flush = [&]() {
    if constexpr (kPriv) {
      if (!active) return;
      for (int64_t r = r0; r < r1; ++r) {
        const int32_t c = sl[r];
        if (c >= 0) flush_class(cells, (r - r0) * B, B, c, part);
      }
    }
  };
  for_rows(a.in, a.lay, smem, lo, hi, a.epoch,
           [&](const RowRef& row, const int32_t*) {
             if (!active) return;
             const double* key = row.key;
             if constexpr (K == 2) {
               const double ka = key[ia], kb = key[ib];
               if (!rank::pair_decided(ka, kb)) return;
               const double p0 = clip01(rank::pair_prob(row, ia, ib));
               const double p1 = clip01(1.0 - p0);
               const int seen = ka < kb ? 0 : 1;
               if (cs[0] >= 0) emit(0, cs[0], p0, seen == 0);
               if (cs[1] >= 0) emit(1, cs[1], p1, seen == 1);
             } else if constexpr (K == 3) {
               const double ka = key[ia], kb = key[ib], kc = key[ic];
               if (!rank::triple_decided(ka, kb, kc)) return;
               double p[6];
               rank::triple_probs(row, ia, ib, ic, p);
               const int seen = rank::triple_seen(ka, kb, kc);
#pragma unroll
               for (int r = 0; r < 6; ++r) {
                 if (cs[r] >= 0) emit(r, cs[r], clip01(p[r]), r == seen);
               }
             } else {
               const int64_t seen = observed_rank(key, it, k);
               if (seen < 0) return;
               double wa[kMaxSubsetK];
               if (!row.slow) {
                 for (int j = 0; j < k; ++j) wa[j] = row.w[it[j]];
               }
               int8_t pos[kMaxSubsetK];
               int32_t items[kMaxSubsetK];
               for (int64_t r = r0; r < r1; ++r) {
                 const int32_t c = sl[r];
                 if (c < 0) continue;
                 decode_order(r, k, pos);
                 double p;
                 if (!row.slow) {
                   p = order_prob(wa, k, pos);
                 } else {
                   for (int j = 0; j < k; ++j) items[j] = it[pos[j]];
                   p = sub_prob(row, static_cast<const int32_t*>(items), k);
                 }
                 emit(r, c, clip01(p), r == seen);
               }
             }
           },
           flush);
  flush();
}

// ------------------------------------------------------------------------------------------- top-label

// Per-thread unpacked cells [cell][thread]: count, outcome (u32) and sum of p; summed over the block's
// threads in a fixed order at the end into the block's partial (3, B) row.
struct Cells3 {
  uint32_t* cnt;
  uint32_t* hit;
  double* sum;
  int T;
  __device__ __forceinline__ void add(int32_t b, double p, bool h) const {
    cnt[b * T] += 1u;
    hit[b * T] += h ? 1u : 0u;
    sum[b * T] += p;
  }
};

__device__ __forceinline__ Cells3 cells3(const Layout& lay, unsigned char* smem, int32_t B) {
  Cells3 c{reinterpret_cast<uint32_t*>(smem + lay.cnt) + threadIdx.x,
           reinterpret_cast<uint32_t*>(smem + lay.hits) + threadIdx.x,
           reinterpret_cast<double*>(smem + lay.sum) + threadIdx.x, static_cast<int>(blockDim.x)};
  for (int32_t b = 0; b < B; ++b) {
    c.cnt[b * c.T] = 0;
    c.hit[b * c.T] = 0;
    c.sum[b * c.T] = 0.0;
  }
  return c;
}

// Every thread calls this at the end: the block's (3, B) partial row, summed over threads in order.
__device__ void block_cells3(const Layout& lay, unsigned char* smem, int32_t B, double* row) {
  __syncthreads();
  const int T = blockDim.x;
  const uint32_t* cnt = reinterpret_cast<const uint32_t*>(smem + lay.cnt);
  const uint32_t* hit = reinterpret_cast<const uint32_t*>(smem + lay.hits);
  const double* sum = reinterpret_cast<const double*>(smem + lay.sum);
  for (int64_t b = threadIdx.x; b < B; b += T) {
    double c0 = 0.0, c1 = 0.0, c2 = 0.0;
    for (int j = 0; j < T; ++j) {
      c0 += static_cast<double>(cnt[b * T + j]);
      c1 += sum[b * T + j];
      c2 += static_cast<double>(hit[b * T + j]);
    }
    row[b] = c0;
    row[B + b] = c1;
    row[2 * B + b] = c2;
  }
}

__device__ __forceinline__ void add_skipped(int64_t skip, unsigned long long* skipped) {
  if (skip > 0) atomicAdd(skipped, static_cast<unsigned long long>(skip));
}

// Mode order of a group's items: decreasing score, lower index first on ties (the CPU's insertion sort).
__device__ __forceinline__ bool mode_before(const double* s, int32_t x, int32_t y) {
  return s[x] > s[y] || (s[x] == s[y] && x < y);
}
// The first item of the group after `prev` in mode order (prev < 0: the first overall).
__device__ __forceinline__ int32_t mode_next(const double* s, const Items& g, int64_t k, int32_t prev) {
  int32_t best = -1;
  for (int64_t j = 0; j < k; ++j) {
    const int32_t x = g[j];
    if (prev >= 0 && !mode_before(s, prev, x)) continue;
    if (best < 0 || mode_before(s, x, best)) best = x;
  }
  return best;
}
// The last item of the group before `next` in mode order (next < 0: the last overall).
__device__ __forceinline__ int32_t mode_prev(const double* s, const Items& g, int64_t k, int32_t next) {
  int32_t best = -1;
  for (int64_t j = 0; j < k; ++j) {
    const int32_t x = g[j];
    if (next >= 0 && !mode_before(s, x, next)) continue;
    if (best < 0 || mode_before(s, best, x)) best = x;
  }
  return best;
}

// Level 0 (sub-k): one thread per group, its mode found by selection (no per-event storage).
template <bool kPriv>
__global__ void __launch_bounds__(kThreads) top_groups_kernel(UnitArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t slice = blockIdx.x % a.gy, rb = blockIdx.x / a.gy;
  const int64_t g = slice * blockDim.x + threadIdx.x;
  const bool active = g < a.units;
  const Items grp = unit_items(a, smem, g, active);
  const int64_t k = a.k;
  const int32_t B = a.B;
  const Binner bin{B, nullptr};
  Cells3 cells{nullptr, nullptr, nullptr, 0};
  if (kPriv) cells = cells3(a.lay, smem, B);
  int64_t lo = 0, hi = 0;
  row_block(a, rb, lo, hi);
  int64_t skip = 0;
  for_rows(a.in, a.lay, smem, lo, hi, a.epoch,
           [&](const RowRef& row, const int32_t*) {
             if (!active) return;
             const double* s = row.s;
             const double* key = row.key;
             // truth along the mode order (the CPU's sub_truth on the sorted group)
             int32_t prev = -1;
             bool inc = true, fin = true;
             double kprev = 0.0;
             for (int64_t j = 0; j < k; ++j) {
               const int32_t x = mode_next(s, grp, k, prev);
               const double kx = key[x];
               if (!is_fin(kx)) {
                 fin = false;
                 break;
               }
               if (j > 0) inc &= kprev < kx;
               kprev = kx;
               prev = x;
             }
             int truth = fin ? (inc ? 1 : 0) : -1;
             if (truth == 0) {
               for (int64_t j = 0; j < k && truth == 0; ++j) {
                 for (int64_t l = j + 1; l < k; ++l) {
                   if (key[grp[j]] == key[grp[l]]) {
                     truth = -1;
                     break;
                   }
                 }
               }
             }
             if (truth < 0) {
               ++skip;
               return;
             }
             // P(mode order): the CPU's sub_prob, from the last item of the mode back to the first
             double p;
             int32_t x = mode_prev(s, grp, k, -1);
             if (!row.slow) {
               double suf = 0.0;
               p = 1.0;
               for (int64_t j = k - 1; j >= 0; --j) {
                 const double wj = row.w[x];
                 suf += wj;
                 p *= wj / suf;
                 x = mode_prev(s, grp, k, x);
               }
             } else {
               double suf = -kInf, lp = 0.0;
               for (int64_t j = k - 1; j >= 0; --j) {
                 const double sj = s[x];
                 suf = log_add(suf, sj);
                 lp += sj - suf;
                 x = mode_prev(s, grp, k, x);
               }
               p = exp(lp);
             }
             p = clip01(p);
             const int32_t b = bin(p);
             if (kPriv) {
               cells.add(b, p, truth == 1);
             } else {
               add_global(a.out, 0, B, b, p, truth == 1);
             }
           },
           [] {});
  add_skipped(skip, a.skipped);
  if (kPriv) block_cells3(a.lay, smem, B, a.out + int64_t(blockIdx.x) * 3 * B);
}

struct TopRowsArgs {
  RowsIn in;
  int level;
  int64_t k;
  int32_t B;
  Layout lay;
  int32_t* mode;   // scratch [n][stride]
  int32_t* order;  // scratch [k][stride]
  double* tmp;     // scratch [k][stride]
  double* f;       // scratch [2^k][stride] (level 2)
  double* sums;    // scratch [2^k][stride] (level 2)
  int64_t stride;  // threads of the grid
  double* out;     // private: partial rows (grid, 3, B); else the (3, B) table
  unsigned long long* skipped;
};

// Levels 1 (ordered top-k) and 2 (top-k set): one thread per row, the CPU's per-row code.
template <bool kPriv>
__global__ void __launch_bounds__(kThreads) top_rows_kernel(TopRowsArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int32_t B = a.B;
  const Binner bin{B, nullptr};
  Cells3 cells{nullptr, nullptr, nullptr, 0};
  if (kPriv) cells = cells3(a.lay, smem, B);
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, S = a.stride;
  const int64_t n = a.in.n, k = a.k;
  int32_t* mode = a.mode + g;
  int32_t* order = a.order + g;
  double* tmp = a.tmp + g;
  int64_t skip = 0;
  for (int64_t b = g; b < a.in.rows; b += S) {
    const int64_t srow = a.in.score_rows == 1 ? 0 : b;
    const double* s = a.in.s + srow * n;
    const double* w = a.in.w + srow * n;
    const double* key = a.in.keys + b * n;
    // mode: stable sort by decreasing score (insertion sort)
    for (int64_t i = 0; i < n; ++i) {
      const int32_t x = static_cast<int32_t>(i);
      int64_t l = i - 1;
      while (l >= 0 && s[mode[l * S]] < s[x]) {
        mode[(l + 1) * S] = mode[l * S];
        --l;
      }
      mode[(l + 1) * S] = x;
    }
    const bool ok = observed_prefix(key, n, k, a.level == 1, [&](int64_t j, int32_t v) { order[j * S] = v; }) &&
                    !is_inf(s[mode[(k - 1) * S]]);
    if (!ok) {
      ++skip;
      continue;
    }
    const rank::Strided<int32_t> mode_s{mode, S};
    const bool hit = rank::mode_hit(rank::Strided<int32_t>{order, S}, mode_s, k, a.level);
    const RowRef row{w, s, key, 0.0, a.in.slow[srow] != 0};
    const rank::Strided<double> tmp_s{tmp, S}, f_s{a.f + g, S}, sums_s{a.sums + g, S};
    const double p = clip01(rank::mode_top_prob(row, mode_s, n, k, a.level, tmp_s, f_s, sums_s));
    const int32_t bb = bin(p);
    if (kPriv) {
      cells.add(bb, p, hit);
    } else {
      add_global(a.out, 0, B, bb, p, hit);
    }
  }
  add_skipped(skip, a.skipped);
  if (kPriv) block_cells3(a.lay, smem, B, a.out + int64_t(blockIdx.x) * 3 * B);
}

// out[j] = sum over r of part[r * width + j], in row order (the same bits on every run).
__global__ void __launch_bounds__(kThreads)
    sum_rows(const double* __restrict__ part, int64_t rows, int64_t width, double* __restrict__ out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < width; j += stride) {
    double s = 0.0;
#pragma unroll 8
    for (int64_t r = 0; r < rows; ++r) s += part[r * width + j];  // loads in flight, additions in order
    out[j] = s;
  }
}

// ------------------------------------------------------------------------------------------- canonical

// Centre i (sorted by label): am1 [c][m] = f_ic / h (as (f / h + 1) - 1), cst = lgamma(sum a) - sum lgamma(a),
// logf [i][c] = log max(f, 1e-8), lab [i].
__global__ void __launch_bounds__(kThreads)
    canon_prepare(const double* __restrict__ probs, const int64_t* __restrict__ labels,
                  const int64_t* __restrict__ idx, int64_t m, int64_t C, double h, double* __restrict__ am1,
                  double* __restrict__ cst, double* __restrict__ logf, int32_t* __restrict__ lab) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < m; i += stride) {
    const int64_t row = idx[i];
    const double* f = probs + row * C;
    double sa = 0.0, sl = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double a = f[c] / h + 1.0;
      am1[c * m + i] = a - 1.0;
      sa += a;
      sl += lgamma(a);
      logf[i * C + c] = log(dmax(f[c], 1e-8));
    }
    cst[i] = lgamma(sa) - sl;
    lab[i] = static_cast<int32_t>(labels[row]);
  }
}

struct CanonArgs {
  const double* am1;  // [C][m]
  const double* cst;  // [m]
  const double* logf; // [m][C]
  const int32_t* lab; // [m]
  const double* probs;
  const int64_t* idx;
  int64_t m, C;
  double p;
  int TI;             // centres per tile
  size_t tile_am1, tile_cst, tile_lab, cols;  // shared-memory offsets
  bool cols_shared;   // per-thread columns (generic path) in shared memory, else in `scratch`
  double* scratch;    // [2][C][threads of the grid]
  double* vals;       // [m]: the summand of evaluation point j
};

// One thread per evaluation point j (grid-stride over blocks of points), centres in shared-memory tiles.
// CM > 0: log f_j and the class sums in registers (C <= CM); CM = 0: in per-thread columns.
template <int CM>
__global__ void __launch_bounds__(kThreads) canon_eval(CanonArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int T = blockDim.x, t = threadIdx.x;
  const int64_t m = a.m, C = a.C;
  double* am1 = reinterpret_cast<double*>(smem + a.tile_am1);  // [C][TI]
  double* cst = reinterpret_cast<double*>(smem + a.tile_cst);
  int32_t* lab = reinterpret_cast<int32_t*>(smem + a.tile_lab);
  const int64_t G = int64_t(gridDim.x) * T, gt = int64_t(blockIdx.x) * T + t;
  // per-thread columns (generic path): lf[c * cs], num[c * cs]
  double* lfc = nullptr;
  double* numc = nullptr;
  const int64_t cs = a.cols_shared ? T : G;
  if (CM == 0) {
    lfc = a.cols_shared ? reinterpret_cast<double*>(smem + a.cols) + t : a.scratch + gt;
    numc = lfc + C * cs;
  }
  double lf[CM > 0 ? CM : 1], num[CM > 0 ? CM : 1];
  auto stage = [&](int64_t i0, int64_t ni) {
    __syncthreads();
    for (int64_t e = t; e < C * ni; e += T) {
      const int64_t c = e / ni, i = e - c * ni;
      am1[c * a.TI + i] = a.am1[c * m + i0 + i];
    }
    for (int64_t i = t; i < ni; i += T) {
      cst[i] = a.cst[i0 + i];
      lab[i] = a.lab[i0 + i];
    }
    __syncthreads();
  };
  auto logk = [&](int64_t i) {  // the CPU's out[i]: cst, then + a_ic * log f_jc class by class
    double v = cst[i];
    if constexpr (CM > 0) {
#pragma unroll
      for (int c = 0; c < CM; ++c) {
        if (c < C) v += am1[c * a.TI + i] * lf[c];
      }
    } else {
      for (int64_t c = 0; c < C; ++c) v += am1[c * a.TI + i] * lfc[c * cs];
    }
    return v;
  };
  for (int64_t jb = int64_t(blockIdx.x) * T; jb < m; jb += G) {
    const int64_t j = jb + t;
    const bool valid = j < m;
    if constexpr (CM > 0) {
#pragma unroll
      for (int c = 0; c < CM; ++c) {
        lf[c] = valid && c < C ? a.logf[j * C + c] : 0.0;
        num[c] = 0.0;
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        lfc[c * cs] = valid ? a.logf[j * C + c] : 0.0;
        numc[c * cs] = 0.0;
      }
    }
    double mx = -kInf;
    for (int64_t i0 = 0; i0 < m; i0 += a.TI) {
      const int64_t ni = imin(a.TI, m - i0);
      stage(i0, ni);
      if (!valid) continue;
      for (int64_t i = 0; i < ni; ++i) {
        const double v = i0 + i == j ? -kInf : logk(i);  // leave one out
        mx = dmax(mx, v);
      }
    }
    for (int64_t i0 = 0; i0 < m; i0 += a.TI) {
      const int64_t ni = imin(a.TI, m - i0);
      stage(i0, ni);
      if (!valid) continue;
      for (int64_t i = 0; i < ni; ++i) {
        const double v = i0 + i == j ? -kInf : logk(i);
        const double e = exp_clamped(v - mx);
        const int32_t l = lab[i];
        if constexpr (CM > 0) {
#pragma unroll
          for (int c = 0; c < CM; ++c) {
            if (c == l) num[c] += e;
          }
        } else {
          numc[l * cs] += e;
        }
      }
    }
    if (!valid) continue;
    double den = 0.0;
    if constexpr (CM > 0) {
#pragma unroll
      for (int c = 0; c < CM; ++c) {
        if (c < C) den += num[c];
      }
    } else {
      for (int64_t c = 0; c < C; ++c) den += numc[c * cs];
    }
    den += 1e-8;
    const double* f = a.probs + a.idx[j] * C;
    double norm = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      double nc;
      if constexpr (CM > 0) {
        nc = 0.0;
#pragma unroll
        for (int q = 0; q < CM; ++q) {
          if (q == c) nc = num[q];
        }
      } else {
        nc = numc[c * cs];
      }
      const double d = fabs(nc / den - f[c]);
      norm += a.p == 1.0 ? d : pow(d, a.p);
    }
    a.vals[j] = a.p == 1.0 ? norm : pow(norm, 1.0 / a.p);
  }
}

// ------------------------------------------------------------------------------------------- host side

cudaStream_t as_stream(Stream s) { return static_cast<cudaStream_t>(s); }

int64_t blocks_for(int64_t items, int64_t per_block, int64_t cap) {
  return std::max<int64_t>(1, std::min<int64_t>(cap, (items + per_block - 1) / per_block));
}

int64_t round32(int64_t x) { return std::max<int64_t>(32, (x + 31) / 32 * 32); }

// Testing aid: PREFCAL_CUDA_RANK_TEST, comma-separated: "global" (float64 atomics into one table instead of
// private cells), "untiled" (rows read from global memory), "epoch=N" (flush the 16-bit counts every N rows),
// "gx=N" (row blocks), "ob=N" (orders per thread of the subsets kernel), "threads=N" (block size, 32..128).
struct Hooks {
  bool global = false, untiled = false;
  int64_t epoch = kEpochRows, gx = 0, ob = 0, threads = 0;
};

Hooks hooks() {
  Hooks h;
  const char* v = std::getenv("PREFCAL_CUDA_RANK_TEST");
  if (v == nullptr) return h;
  std::string s(v);
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = std::min(s.find(',', start), s.size());
    const std::string tok = s.substr(start, end - start);
    const size_t eq = tok.find('=');
    const std::string name = tok.substr(0, eq);
    const long long val = eq == std::string::npos ? 0 : std::atoll(tok.c_str() + eq + 1);
    if (name == "global") h.global = true;
    if (name == "untiled") h.untiled = true;
    if (name == "epoch" && val > 0) h.epoch = std::min<int64_t>(val, kEpochRows);
    if (name == "gx" && val > 0) h.gx = val;
    if (name == "ob" && val > 0) h.ob = val;
    if (name == "threads" && val >= 32 && val <= kThreads && val % 32 == 0) h.threads = val;
    start = end + 1;
  }
  return h;
}

// Dynamic shared memory a block of these kernels may use on the current device.
size_t smem_budget() {
  static std::mutex mutex;
  static std::map<int, size_t> cache;
  const int device = current_device();
  std::lock_guard<std::mutex> lock(mutex);
  const auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  int optin = 0;
  PREFCAL_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t b = std::min(kSmemBudget, static_cast<size_t>(std::max(optin, 48 * 1024)));
  cache.emplace(device, b);
  return b;
}

// Shared-memory layout of a unit kernel: `cells` per thread (packed: 12 bytes each, else 16), the log edges,
// the units' items (items_k per thread; dropped first when short of room) and a row tile. False when even
// the untiled layout without items does not fit.
bool build_layout(Layout& L, int T, int64_t cells, bool packed, int32_t B, bool edges, int64_t items_k, int64_t n,
                  int64_t pre_k, bool one_w, size_t budget, bool untiled) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool with_items = attempt == 0 && items_k > 0 && size_t(items_k) * T * 4 <= 16 * 1024;
    if (attempt == 1 && !(items_k > 0)) return false;
    Layout l;
    size_t off = 0;
    l.has_edges = edges && size_t(B) + 1 <= kEdgesShared;
    l.edges = off;
    off += l.has_edges ? (size_t(B) + 1) * 8 : 0;
    l.sum = off;
    off += size_t(cells) * T * 8;
    const size_t f64_fixed = off;
    // 32-bit and byte sections come after the tile's float64 arrays; sizes first
    const size_t u32_fixed = size_t(cells) * T * 4 * (packed ? 1 : 2) + (with_items ? size_t(items_k) * T * 4 : 0);
    const size_t fixed = f64_fixed + u32_fixed;
    if (fixed > budget) continue;
    const size_t per_row = size_t(n) * 8 * (one_w ? 1 : 2) + 8 + size_t(pre_k) * 4 + 1;
    const size_t one = one_w ? size_t(n) * 8 : 0;
    int64_t tr = 0;
    if (!untiled && fixed + one + per_row + 64 <= budget) {
      const size_t room = std::min(budget - fixed - one - 64, kTileBudget);
      tr = std::min<int64_t>(kTileRows, static_cast<int64_t>(room / per_row));
    }
    l.tile_rows = static_cast<int32_t>(tr);
    if (tr > 0) {
      l.wone = off;
      off += one;
      l.key = off;
      off += size_t(tr) * n * 8;
      l.w = off;
      off += one_w ? 0 : size_t(tr) * n * 8;
      l.tot = off;
      off += size_t(tr) * 8;
    }
    l.cnt = off;
    off += size_t(cells) * T * 4;
    l.hits = off;
    off += packed ? 0 : size_t(cells) * T * 4;
    l.has_items = with_items;
    l.items = off;
    off += with_items ? size_t(items_k) * T * 4 : 0;
    if (tr > 0) {
      l.pre = off;
      off += size_t(tr) * pre_k * 4;
      l.flag = off;
      off += size_t(tr);
    }
    l.bytes = (off + 15) / 16 * 16;
    if (l.bytes > budget) continue;
    L = l;
    return true;
  }
  return false;
}

// Row statistics (and top-k prefixes) in pool memory for one call.
class Prepared {
 public:
  Prepared(const double* scores, int64_t score_rows, const double* keys, const uint8_t* keep, int64_t rows,
           int64_t n, int64_t pre_k, cudaStream_t st)
      : buf_(bytes(score_rows, rows, n, pre_k), st) {
    size_t off = 0;
    double* w = buf_.as<double>(off);
    off += align_up(size_t(score_rows) * n * 8);
    double* total = buf_.as<double>(off);
    off += align_up(size_t(score_rows) * 8);
    uint8_t* slow = buf_.as<uint8_t>(off);
    off += align_up(size_t(score_rows));
    int32_t* pre = buf_.as<int32_t>(off);
    off += align_up(size_t(rows) * pre_k * 4);
    uint8_t* decided = buf_.as<uint8_t>(off);
    const int64_t sms = multiprocessors(current_device());
    if (score_rows > 0) {
      row_stats<<<unsigned(blocks_for(score_rows, kThreads, 8 * sms)), kThreads, 0, st>>>(scores, score_rows, n, w,
                                                                                             total, slow);
      PREFCAL_CUDA_LAUNCHED();
    }
    if (pre_k > 0 && rows > 0) {
      top_prefix<<<unsigned(blocks_for(rows, kThreads, 8 * sms)), kThreads, 0, st>>>(keys, rows, n, pre_k, pre,
                                                                                        decided);
      PREFCAL_CUDA_LAUNCHED();
    }
    in = RowsIn{scores, w, total, slow, keys, keep,
                pre_k > 0 ? pre : nullptr, pre_k > 0 ? decided : nullptr, rows, n, score_rows, pre_k};
  }
  RowsIn in{};

 private:
  static size_t bytes(int64_t score_rows, int64_t rows, int64_t n, int64_t pre_k) {
    return align_up(size_t(score_rows) * n * 8) + align_up(size_t(score_rows) * 8) + align_up(size_t(score_rows)) +
           align_up(size_t(rows) * pre_k * 4) + align_up(size_t(rows));
  }
  PoolBuffer buf_;
};

using UnitKernel = void (*)(UnitArgs);

UnitKernel classwise_fn(bool top, bool priv) {
  if (top) return priv ? classwise_kernel<true, true> : classwise_kernel<true, false>;
  return priv ? classwise_kernel<false, true> : classwise_kernel<false, false>;
}

UnitKernel subsets_fn(int64_t k, bool priv) {
  if (k == 2) return priv ? subsets_kernel<2, true> : subsets_kernel<2, false>;
  if (k == 3) return priv ? subsets_kernel<3, true> : subsets_kernel<3, false>;
  return priv ? subsets_kernel<0, true> : subsets_kernel<0, false>;
}

// The launch of a unit kernel.
struct UnitPlan {
  bool priv = true;
  int T = kThreads;
  int64_t ob = 1, n_ob = 1, units = 0, gy = 1, gx = 1, width = 0;
  Layout lay;
  UnitKernel fn = nullptr;
};

// kind: 0 classwise, 1 subsets, 2 top-label groups. unit_count(ob) -> units; cells per thread = ob * B.
// Subsets: the largest ob <= k! whose cells fit (the whole k! when it does), in blocks of up to 128
// threads, else 64 or 32; classwise and groups: ob = 1. No fit: float64 atomics into one table.
UnitPlan plan_units(int kind, int64_t rows, int64_t n, int64_t k, int64_t kf, int64_t base_units, int64_t n_classes,
                    int32_t B, bool edges, bool top, bool one_w) {
  const Hooks h = hooks();
  const size_t budget = smem_budget();
  const bool packed = kind != 2;
  const size_t cell_bytes = packed ? 12 : 16;
  const int64_t items_k = kind == 1 ? 0 : k;
  const int64_t pre_k = top ? k : 0;
  UnitPlan p;
  p.width = (kind == 2 ? 1 : n_classes) * 3 * B;
  bool found = false;
  if (!h.global) {
    const int64_t max_ob = kind == 1 ? kf : 1;
    const std::vector<int> sizes = h.threads > 0 ? std::vector<int>{int(h.threads)} : std::vector<int>{128, 64, 32};
    for (int T0 : sizes) {
      // cells that fit next to the smallest tile (one row) and the edges
      const size_t reserve = (edges && size_t(B) + 1 <= kEdgesShared ? (size_t(B) + 1) * 8 : 0) +
                             size_t(n) * 16 + 64 + size_t(pre_k) * 4;
      int T = T0;
      for (int pass = 0; pass < 2; ++pass) {
        if (reserve >= budget) break;
        int64_t ob = static_cast<int64_t>((budget - reserve) / (size_t(B) * cell_bytes * T));
        ob = std::min(ob, max_ob);
        if (h.ob > 0 && kind == 1) ob = std::min(ob, h.ob);
        if (ob < 1) break;
        const int64_t n_ob = (kf + ob - 1) / ob;
        const int64_t units = kind == 1 ? base_units * n_ob : base_units;
        if (pass == 0 && h.threads == 0 && units < T) {
          T = static_cast<int>(std::min<int64_t>(T, round32(units)));  // small problems: smaller blocks, more cells
          continue;
        }
        Layout L;
        if (build_layout(L, T, ob * B, packed, B, edges, items_k, n, pre_k, one_w, budget, h.untiled)) {
          p.priv = true;
          p.T = T;
          p.ob = kind == 1 ? ob : 1;
          p.n_ob = kind == 1 ? n_ob : 1;
          p.units = units;
          p.lay = L;
          found = true;
        }
        break;
      }
      if (found) break;
    }
  }
  if (!found) {
    p.priv = false;
    p.T = h.threads > 0 ? int(h.threads) : kThreads;
    p.ob = kind == 1 ? kf : 1;
    p.n_ob = 1;
    p.units = base_units;
    if (kind != 1 && base_units < p.T) p.T = static_cast<int>(round32(base_units));
    if (!build_layout(p.lay, p.T, 0, packed, B, edges, items_k, n, pre_k, one_w, budget, h.untiled)) {
      throw std::runtime_error("prefcal: ranking kernel layout does not fit in shared memory");
    }
  }
  p.gy = std::max<int64_t>(1, (p.units + p.T - 1) / p.T);
  if (kind == 0) p.fn = classwise_fn(top, p.priv);
  if (kind == 1) p.fn = subsets_fn(k, p.priv);
  if (kind == 2) p.fn = p.priv ? top_groups_kernel<true> : top_groups_kernel<false>;
  const int64_t resident = resident_blocks(p.fn, p.lay.bytes, p.T, budget);
  int64_t gx = std::max<int64_t>(1, (resident + p.gy - 1) / p.gy);
  gx = std::min(gx, std::max<int64_t>(1, (rows + kMinRowsPerBlock - 1) / kMinRowsPerBlock));
  if (p.priv && kind != 2) {
    gx = std::min<int64_t>(gx, std::max<int64_t>(1, int64_t(kPartialBudget / (size_t(p.width) * 8))));
  }
  if (h.gx > 0) gx = std::max<int64_t>(1, std::min(h.gx, std::max<int64_t>(rows, 1)));
  p.gx = gx;
  return p;
}

// Runs a classwise / subsets plan and leaves the (C, 3, B) table in `table` (device).
void run_units(const UnitPlan& p, const RowsIn& in, int32_t B, const double* edges, const int32_t* items,
               const int32_t* slot, int64_t k, int64_t kf, double* table, cudaStream_t st) {
  const Hooks h = hooks();
  const int64_t width = p.width;
  const bool partials = p.priv && p.gx > 1;
  std::unique_ptr<PoolBuffer> part;
  double* out = table;
  if (partials) {
    part = std::make_unique<PoolBuffer>(size_t(p.gx) * width * 8, st);
    out = part->as<double>();
    PREFCAL_CUDA_CHECK(cudaMemsetAsync(out, 0, size_t(p.gx) * width * 8, st));
  } else {
    PREFCAL_CUDA_CHECK(cudaMemsetAsync(table, 0, size_t(width) * 8, st));
  }
  UnitArgs a{in, p.lay, B, edges, items, slot, k, kf, p.units, p.n_ob, p.ob, p.gy, p.gx, h.epoch, width, out, nullptr};
  const int64_t grid = p.gx * p.gy;
  if (grid > 0 && in.rows > 0) {
    const UnitKernel fn = p.fn;
    fn<<<unsigned(grid), p.T, p.lay.bytes, st>>>(a);
    PREFCAL_CUDA_LAUNCHED();
  }
  if (partials) {
    sum_rows<<<unsigned(blocks_for(width, kThreads, 8 * multiprocessors(current_device()))), kThreads, 0, st>>>(
        out, p.gx, width, table);
    PREFCAL_CUDA_LAUNCHED();
  }
}

void copy_out(double* host, const double* dev, int64_t count, cudaStream_t st) {
  if (count > 0) {
    PREFCAL_CUDA_CHECK(cudaMemcpyAsync(host, dev, size_t(count) * 8, cudaMemcpyDeviceToHost, st));
  }
  PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
}

int64_t count_subsets(int64_t n, int64_t k) {
  int64_t count = 1;
  for (int64_t j = 0; j < k; ++j) count = count * (n - j) / (j + 1);
  return count;
}

int64_t factorial(int64_t k) {
  int64_t kf = 1;
  for (int64_t j = 2; j <= k; ++j) kf *= j;
  return kf;
}

// The subsets call up to the device table (shared by the launcher and the timing hook).
void enqueue_subsets(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                     int64_t k, const int32_t* slot, int64_t n_classes, int32_t n_bins, const double* edges,
                     const uint8_t* keep, double* table, cudaStream_t st) {
  const int64_t kf = factorial(k), count = count_subsets(n, k);
  const UnitPlan p = plan_units(1, rows, n, k, kf, count, n_classes, n_bins, edges != nullptr, false, score_rows == 1);
  Prepared prep(scores, score_rows, keys, keep, rows, n, 0, st);
  run_units(p, prep.in, n_bins, edges, nullptr, slot, k, kf, table, st);
}

}  // namespace

// ------------------------------------------------------------------------------------------- entry points

int64_t rank_keys(const int64_t* rankings, int64_t rows, int64_t m, int64_t n, const uint8_t* mask, bool global_mask,
                  double* keys, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  if (rows == 0) return kNoError;
  PoolBuffer flag(sizeof(unsigned long long), st);
  PREFCAL_CUDA_CHECK(cudaMemsetAsync(flag.as<void>(), 0xff, sizeof(unsigned long long), st));
  const int64_t grid = blocks_for(rows, kThreads, 32 * multiprocessors(current_device()));
  keys_kernel<<<unsigned(grid), kThreads, 0, st>>>(rankings, rows, m, n, mask, global_mask, keys,
                                                   flag.as<unsigned long long>());
  PREFCAL_CUDA_LAUNCHED();
  unsigned long long bad = 0;
  PREFCAL_CUDA_CHECK(cudaMemcpyAsync(&bad, flag.as<void>(), sizeof(bad), cudaMemcpyDeviceToHost, st));
  PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
  return bad == ~0ull ? kNoError : static_cast<int64_t>(bad);
}

void rank_seen_subsets(const double* keys, int64_t rows, int64_t n, int64_t k, uint8_t* seen, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  const int64_t kf = factorial(k), count = count_subsets(n, k), size = count * kf;
  PoolBuffer out(size_t(size), st);
  PREFCAL_CUDA_CHECK(cudaMemsetAsync(out.as<void>(), 0, size_t(size), st));
  const int64_t per = 16;
  const int64_t items = rows * ((count + per - 1) / per);
  if (items > 0) {
    const int64_t grid = blocks_for(items, kThreads, 32 * multiprocessors(current_device()));
    seen_kernel<<<unsigned(grid), kThreads, 0, st>>>(keys, rows, n, static_cast<int>(k), kf, count, per,
                                                     out.as<uint8_t>());
    PREFCAL_CUDA_LAUNCHED();
  }
  PREFCAL_CUDA_CHECK(cudaMemcpyAsync(seen, out.as<void>(), size_t(size), cudaMemcpyDeviceToHost, st));
  PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
}

void rank_classwise(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                    const int32_t* classes, int64_t n_classes, int64_t k, bool top, int32_t n_bins,
                    const double* edges, const uint8_t* keep, double* tables, Stream stream) {
  const cudaStream_t st = as_stream(stream);
  const int64_t width = n_classes * 3 * n_bins;
  if (n_classes == 0) return;
  const UnitPlan p = plan_units(0, rows, n, k, 1, n_classes, n_classes, n_bins, edges != nullptr, top,
                                score_rows == 1);
  PoolBuffer table(size_t(width) * 8, st);
  {
    Prepared prep(scores, score_rows, keys, keep, rows, n, top ? k : 0, st);
    run_units(p, prep.in, n_bins, edges, classes, nullptr, k, 1, table.as<double>(), st);
  }
  copy_out(tables, table.as<double>(), width, st);
}

void rank_classwise_subsets(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                            int64_t k, const int32_t* slot, int64_t n_slots, int64_t n_classes, int32_t n_bins,
                            const double* edges, const uint8_t* keep, double* tables, Stream stream) {
  (void)n_slots;
  const cudaStream_t st = as_stream(stream);
  const int64_t width = n_classes * 3 * n_bins;
  if (n_classes == 0) return;
  PoolBuffer table(size_t(width) * 8, st);
  enqueue_subsets(scores, score_rows, keys, rows, n, k, slot, n_classes, n_bins, edges, keep, table.as<double>(), st);
  copy_out(tables, table.as<double>(), width, st);
}

double time_rank_classwise_subsets(const double* scores, int64_t score_rows, const double* keys, int64_t rows,
                                   int64_t n, int64_t k, const int32_t* slot, int64_t n_slots, int64_t n_classes,
                                   int32_t n_bins, const double* edges, const uint8_t* keep, int reps, Stream stream) {
  (void)n_slots;
  const cudaStream_t st = as_stream(stream);
  const int64_t width = n_classes * 3 * n_bins;
  if (n_classes == 0) return 0.0;
  PoolBuffer table(size_t(width) * 8, st);
  enqueue_subsets(scores, score_rows, keys, rows, n, k, slot, n_classes, n_bins, edges, keep, table.as<double>(), st);
  cudaEvent_t a, b;
  PREFCAL_CUDA_CHECK(cudaEventCreate(&a));
  PREFCAL_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int r = 0; r < reps; ++r) {
    PREFCAL_CUDA_CHECK(cudaEventRecord(a, st));
    enqueue_subsets(scores, score_rows, keys, rows, n, k, slot, n_classes, n_bins, edges, keep, table.as<double>(),
                    st);
    PREFCAL_CUDA_CHECK(cudaEventRecord(b, st));
    PREFCAL_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0.f;
    PREFCAL_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
  std::sort(ms.begin(), ms.end());
  return ms.empty() ? 0.0 : double(ms[ms.size() / 2]);
}

std::string describe_rank_classwise(int64_t rows, int64_t n, int64_t k, int64_t n_classes, bool subsets, bool top,
                                    int32_t n_bins, bool log_edges, bool global_scores) {
  const int64_t kf = subsets ? factorial(k) : 1;
  const UnitPlan p = subsets ? plan_units(1, rows, n, k, kf, count_subsets(n, k), n_classes, n_bins, log_edges, false,
                                          global_scores)
                             : plan_units(0, rows, n, k, 1, n_classes, n_classes, n_bins, log_edges, top,
                                          global_scores);
  return std::string(p.priv ? "private" : "global") + " threads=" + std::to_string(p.T) +
         " orders=" + std::to_string(p.ob) + " units=" + std::to_string(p.units) + " gx=" + std::to_string(p.gx) +
         " gy=" + std::to_string(p.gy) + " tile_rows=" + std::to_string(p.lay.tile_rows) +
         " smem=" + std::to_string(p.lay.bytes);
}

int64_t rank_top_label(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                       int level, const int32_t* groups, int64_t n_groups, int64_t k, int32_t n_bins, double* table,
                       Stream stream) {
  const cudaStream_t st = as_stream(stream);
  const int64_t width = 3 * int64_t(n_bins);
  const Hooks h = hooks();
  const size_t budget = smem_budget();
  PoolBuffer res(align_up(size_t(width) * 8) + 256, st);
  double* dtab = res.as<double>();
  unsigned long long* dskip = res.as<unsigned long long>(align_up(size_t(width) * 8));
  PREFCAL_CUDA_CHECK(cudaMemsetAsync(res.as<void>(), 0, align_up(size_t(width) * 8) + 256, st));
  if (rows > 0 && (level != 0 || n_groups > 0)) {
    Prepared prep(scores, score_rows, keys, nullptr, rows, n, 0, st);
    std::unique_ptr<PoolBuffer> part;
    int64_t blocks = 1;
    bool priv = true;
    if (level == 0) {
      const UnitPlan p = plan_units(2, rows, n, k, 1, n_groups, 1, n_bins, false, false, score_rows == 1);
      priv = p.priv;
      blocks = p.gx * p.gy;
      double* out = dtab;
      if (priv) {
        part = std::make_unique<PoolBuffer>(size_t(blocks) * width * 8, st);
        out = part->as<double>();
      }
      UnitArgs a{prep.in, p.lay, n_bins, nullptr, groups, nullptr, k, 1, p.units, 1, 1, p.gy, p.gx, h.epoch, width,
                 out, dskip};
      const UnitKernel fn = p.fn;
      fn<<<unsigned(blocks), p.T, p.lay.bytes, st>>>(a);
      PREFCAL_CUDA_LAUNCHED();
    } else {
      // per-thread scratch: mode (n), order (k), tmp (k), and for the set level f and sums (2^k each)
      const size_t per_thread = size_t(n) * 4 + size_t(k) * 4 + size_t(k) * 8 +
                                (level == 2 ? 2 * (size_t(1) << k) * 8 : 0);
      Layout L;
      int T = h.threads > 0 ? int(h.threads) : kThreads;
      priv = !h.global && size_t(n_bins) * 16 * T + 64 <= budget;
      if (priv) {
        L.sum = 0;
        L.cnt = size_t(n_bins) * T * 8;
        L.hits = L.cnt + size_t(n_bins) * T * 4;
        L.bytes = (L.hits + size_t(n_bins) * T * 4 + 15) / 16 * 16;
      }
      auto fn = priv ? top_rows_kernel<true> : top_rows_kernel<false>;
      const int64_t resident = resident_blocks(fn, L.bytes, T, budget) * T;
      const Geometry geo = geometry(rows, per_thread, resident, T, kScratchBudget);
      T = geo.block;
      if (priv) {  // the block may have shrunk: lay the cells out for it
        L.cnt = size_t(n_bins) * T * 8;
        L.hits = L.cnt + size_t(n_bins) * T * 4;
        L.bytes = (L.hits + size_t(n_bins) * T * 4 + 15) / 16 * 16;
      }
      blocks = geo.grid;
      const int64_t S = geo.threads();
      PoolBuffer scratch(std::max<size_t>(per_thread, 8) * size_t(S), st);
      size_t off = 0;
      double* tmp = scratch.as<double>(off);
      off += size_t(k) * S * 8;
      double* f = scratch.as<double>(off);
      double* sums = f;
      if (level == 2) {
        sums = scratch.as<double>(off + (size_t(1) << k) * S * 8);
        off += 2 * (size_t(1) << k) * S * 8;
      }
      int32_t* mode = scratch.as<int32_t>(off);
      off += size_t(n) * S * 4;
      int32_t* order = scratch.as<int32_t>(off);
      double* out = dtab;
      if (priv) {
        part = std::make_unique<PoolBuffer>(size_t(blocks) * width * 8, st);
        out = part->as<double>();
      }
      TopRowsArgs a{prep.in, level, k, n_bins, L, mode, order, tmp, f, sums, S, out, dskip};
      fn<<<unsigned(blocks), T, L.bytes, st>>>(a);
      PREFCAL_CUDA_LAUNCHED();
    }
    if (priv) {
      sum_rows<<<unsigned(blocks_for(width, kThreads, 1024)), kThreads, 0, st>>>(part->as<double>(), blocks, width,
                                                                                 dtab);
      PREFCAL_CUDA_LAUNCHED();
    }
  }
  std::vector<unsigned char> host(align_up(size_t(width) * 8) + sizeof(unsigned long long));
  PREFCAL_CUDA_CHECK(cudaMemcpyAsync(host.data(), res.as<void>(), host.size(), cudaMemcpyDeviceToHost, st));
  PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
  std::memcpy(table, host.data(), size_t(width) * 8);
  unsigned long long skipped = 0;
  std::memcpy(&skipped, host.data() + align_up(size_t(width) * 8), sizeof(skipped));
  return static_cast<int64_t>(skipped);
}

double rank_canonical(const double* probs, const int64_t* labels, int64_t rows, int64_t n_classes, double h, double p,
                      Stream stream) {
  const cudaStream_t st = as_stream(stream);
  const int64_t C = n_classes;
  // the labelled rows, stably sorted by label (on the host: one copy of the labels)
  std::vector<int64_t> lab(static_cast<size_t>(rows));
  if (rows > 0) {
    PREFCAL_CUDA_CHECK(cudaMemcpyAsync(lab.data(), labels, size_t(rows) * 8, cudaMemcpyDeviceToHost, st));
    PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
  }
  std::vector<int64_t> start(static_cast<size_t>(C + 1), 0);
  for (int64_t b = 0; b < rows; ++b) {
    if (lab[b] >= 0) start[lab[b] + 1] += 1;
  }
  for (int64_t c = 0; c < C; ++c) start[c + 1] += start[c];
  const int64_t m = C > 0 ? start[C] : 0;
  if (m <= 1) return std::numeric_limits<double>::quiet_NaN();  // leave-one-out of one row: undefined
  std::vector<int64_t> idx(static_cast<size_t>(m));
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t b = 0; b < rows; ++b) {
      if (lab[b] >= 0) idx[next[lab[b]]++] = b;
    }
  }
  const size_t b_idx = align_up(size_t(m) * 8), b_am1 = align_up(size_t(C) * m * 8), b_cst = align_up(size_t(m) * 8),
               b_logf = align_up(size_t(C) * m * 8), b_lab = align_up(size_t(m) * 4), b_vals = align_up(size_t(m) * 8);
  PoolBuffer buf(b_idx + b_am1 + b_cst + b_logf + b_lab + b_vals, st);
  int64_t* didx = buf.as<int64_t>();
  double* am1 = buf.as<double>(b_idx);
  double* cst = buf.as<double>(b_idx + b_am1);
  double* logf = buf.as<double>(b_idx + b_am1 + b_cst);
  int32_t* dlab = buf.as<int32_t>(b_idx + b_am1 + b_cst + b_logf);
  double* vals = buf.as<double>(b_idx + b_am1 + b_cst + b_logf + b_lab);
  PREFCAL_CUDA_CHECK(cudaMemcpyAsync(didx, idx.data(), size_t(m) * 8, cudaMemcpyHostToDevice, st));
  const int64_t sms = multiprocessors(current_device());
  canon_prepare<<<unsigned(blocks_for(m, kThreads, 8 * sms)), kThreads, 0, st>>>(probs, labels, didx, m, C, h, am1, cst,
                                                                                 logf, dlab);
  PREFCAL_CUDA_LAUNCHED();

  const size_t budget = smem_budget();
  const int T = kThreads;
  CanonArgs a{};
  a.am1 = am1;
  a.cst = cst;
  a.logf = logf;
  a.lab = dlab;
  a.probs = probs;
  a.idx = didx;
  a.m = m;
  a.C = C;
  a.p = p;
  const bool regs = C <= kCanonRegs;
  const size_t cols_bytes = regs ? 0 : 2 * size_t(C) * T * 8;
  a.cols_shared = !regs && cols_bytes <= budget / 2;
  const size_t room = budget - (a.cols_shared ? cols_bytes : 0) - 64;
  a.TI = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kCanonTile, int64_t(room / (size_t(C) * 8 + 12)))));
  a.tile_am1 = 0;
  a.tile_cst = size_t(C) * a.TI * 8;
  a.cols = a.tile_cst + size_t(a.TI) * 8;
  a.tile_lab = a.cols + (a.cols_shared ? cols_bytes : 0);
  const size_t smem = (a.tile_lab + size_t(a.TI) * 4 + 15) / 16 * 16;
  auto fn = regs ? canon_eval<kCanonRegs> : canon_eval<0>;
  const int64_t resident = resident_blocks(fn, smem, T, budget);
  int64_t grid = blocks_for(m, T, resident);
  std::unique_ptr<PoolBuffer> scratch;
  if (!regs && !a.cols_shared) {
    grid = std::min<int64_t>(grid, std::max<int64_t>(1, int64_t(kScratchBudget / (2 * size_t(C) * T * 8))));
    scratch = std::make_unique<PoolBuffer>(2 * size_t(C) * T * size_t(grid) * 8, st);
    a.scratch = scratch->as<double>();
  }
  a.vals = vals;
  fn<<<unsigned(grid), T, smem, st>>>(a);
  PREFCAL_CUDA_LAUNCHED();
  std::vector<double> host(static_cast<size_t>(m));
  PREFCAL_CUDA_CHECK(cudaMemcpyAsync(host.data(), vals, size_t(m) * 8, cudaMemcpyDeviceToHost, st));
  PREFCAL_CUDA_CHECK(cudaStreamSynchronize(st));
  // the CPU's order: chunks of 64 evaluation points, each summed in order, then the chunks in order
  double total = 0.0;
  for (int64_t lo = 0; lo < m; lo += 64) {
    double part = 0.0;
    for (int64_t j = lo; j < std::min<int64_t>(m, lo + 64); ++j) part += host[size_t(j)];
    total += part;
  }
  return total / static_cast<double>(m);
}

}  // namespace prefcal::cuda
