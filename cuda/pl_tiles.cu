// The tiled log-likelihood kernels of the Plackett-Luce engine (off by default: set_loglik_kernel): the flat
// kernel (FlatRow) and the exact-width kernel (ExactRow), one kernel template over a Row type. In their own
// translation unit so that nvcc compiles their ~80 instantiations beside cuda/pl.cu. Staging shared with
// pl.cu: pl_staging.cuh; per-row math: prefcal/pl.hpp.
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "launch.hpp"
#include "pl_staging.cuh"
#include "prefcal/pl.hpp"

namespace prefcal::cuda {

namespace plk {

namespace {

// Copies `count` consecutive elements from global memory to a shared buffer in the same layout (dst 16-byte
// aligned): 16-byte vectors when src is aligned, kBatch per thread in flight, the tail element by element.
template <class V>
__device__ __forceinline__ void copy_flat(const V* __restrict__ src, int count, V* __restrict__ dst) {
  constexpr int kBatch = 4, kPer = 16 / static_cast<int>(sizeof(V));
  const int nt = static_cast<int>(blockDim.x), t = static_cast<int>(threadIdx.x);
  int done = 0;
  if (reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    const int vcount = count / kPer;
    const int4* __restrict__ s4 = reinterpret_cast<const int4*>(src);
    int4* d4 = reinterpret_cast<int4*>(dst);
    for (int v0 = t; v0 < vcount; v0 += kBatch * nt) {
      int4 q[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (v0 + b * nt < vcount) q[b] = __ldg(s4 + v0 + b * nt);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (v0 + b * nt < vcount) d4[v0 + b * nt] = q[b];
      }
    }
    done = vcount * kPer;
  }
  for (int k0 = done + t; k0 < count; k0 += kBatch * nt) {
    V q[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (k0 + b * nt < count) q[b] = src[k0 + b * nt];
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (k0 + b * nt < count) dst[k0 + b * nt] = q[b];
    }
  }
}

// The general row function of the exact-width kernel, for the rows pl::row_loglik_exact does not take (a bad
// row, a partial ranking, scores spanning more than Span): pl::row_loglik_fixed, out of line. Inlined, its
// registers raised the kernel's above the 64 of four blocks an SM and ptxas spilled on the fast path (float32
// scores, n >= 11: ~30 local stores a row at n = 16); called, the fast path keeps everything in registers at
// every n (the rare path pays the call). Returns the log-likelihood, NaN for a bad row (a valid row's is finite).
template <int K, class T, class I>
__device__ __noinline__ double loglik_general(const T* s, const I* r, int n) {
  double v = 0.0;
  return pl::row_loglik_fixed<K, T>(s, r, n, n, nullptr, v) ? v : static_cast<double>(NAN);
}

// The rows of the tiled kernel (loglik_tiles): their shared-memory pitch and their row function.
//
// FlatRow<K>: m <= n <= K <= 32, n and m not multiples of 4, any mask; rows unpadded, as in global memory (a
// row of n % 4 != 0 elements puts a warp's reads on at most two accesses per bank); pl::row_loglik_fixed<K>
// (every loop unrolled over K slots, the ranking in registers, a 32-bit listed-item set).
template <int K>
struct FlatRow {
  static constexpr bool kMasks = true;
  template <class T, class I>
  static constexpr int min_blocks() {
    return (sizeof(T) == 4 && sizeof(I) == 4 && K <= 16) ? 3 : 1;
  }
  __host__ __device__ static constexpr int width(int w) { return w; }
  __host__ __device__ static constexpr int pitch(int width, int) { return width; }
  template <class V>
  static constexpr bool padded() {
    return false;
  }
  template <class T, class I>
  __device__ static bool row(const T* s, const I* r, int m, int n, const uint8_t* mask, double& v) {
    return pl::row_loglik_fixed<K, T>(s, r, m, n, mask, v);
  }
};

// ExactRow<N>: full rankings of exactly N items (2 <= N <= pl::kExactMax, m = N) without a mask; rows padded by
// one element where N elements span a multiple of 4 words (else a warp's reads would pile onto a few banks);
// pl::row_loglik_exact<N> (every loop over exactly N items, checks of a few operations an item: the probe of
// shared/probes/pl_floor.cu runs ~10 instructions an item without validation), the other rows by
// loglik_general.
template <int N>
struct ExactRow {
  static constexpr bool kMasks = false;
  template <class T, class I>
  static constexpr int min_blocks() {
    return (sizeof(T) == 4 && sizeof(I) == 4) ? 4 : 2;
  }
  __host__ __device__ static constexpr int width(int) { return N; }  // n = m = N, known to the compiler
  __host__ __device__ static constexpr int pitch(int, int bytes) { return (N * bytes / 4) % 4 != 0 ? N : N + 1; }
  template <class V>
  static constexpr bool padded() {
    return pitch(N, int(sizeof(V))) != N;
  }
  template <class T, class I>
  __device__ static bool row(const T* s, const I* r, int, int, const uint8_t*, double& v) {
    if (pl::row_loglik_exact<N, T>(s, r, v)) return true;
    v = loglik_general<pl::loglik_width(N), T>(s, r, N);
    return v == v;
  }
};

// Shared-memory layout of the tiled kernel (byte offsets, 16-byte aligned): rows of scores, rankings and mask
// at the pitches of Row. mask_kind: 0 none, 1 global (n bytes), 2 per row.
template <class Row>
__host__ __device__ __forceinline__ StagedLayout tile_layout(int tile, int n, int m, int size_s, int size_i,
                                                             int mask_kind) {
  const size_t t = static_cast<size_t>(tile);
  const size_t ps = static_cast<size_t>(Row::pitch(n, size_s)), pr = static_cast<size_t>(Row::pitch(m, size_i));
  StagedLayout L{};
  L.ss = 0;
  L.rs = align16(t * ps * static_cast<size_t>(size_s));
  L.ms = L.rs + align16(t * pr * static_cast<size_t>(size_i));
  const size_t pb = static_cast<size_t>(Row::pitch(n, 1));
  L.total = L.ms + (mask_kind == 2 ? align16(t * pb) : (mask_kind == 1 ? align16(static_cast<size_t>(n)) : 0));
  return L;
}

// The copier of a tile of rows into shared memory: copy_flat for unpadded rows (nothing to hold), a Stager (its
// start and steps, made once) for padded ones; known at compile time, so that no unused state stays live.
struct FlatCopy {
  __device__ FlatCopy(int, int, int) {}
  template <class V>
  __device__ __forceinline__ void load(const V* src, int count, V* dst) const {
    copy_flat(src, count, dst);
  }
};
template <bool kPadded>
using TileCopy = std::conditional_t<kPadded, Stager, FlatCopy>;

// Log-likelihood without a gradient, per-row scores, the rows Row takes (off by default: set_loglik_kernel):
// each block copies its tile of rows into shared memory, one thread computes each row with Row::row. Without a
// mask the row function is inlined with a null mask the compiler knows (no availability test per item). A bad
// row is reported by an atomic where it is found: bad rows are rare, the smallest wins whatever the order of the
// atomics, and no register holds the first bad row through the loop.
template <class T, class I, class Row>
__global__ void __launch_bounds__(kThreads, Row::template min_blocks<T, I>())
    loglik_tiles(Rows<T, I> a, T* __restrict__ ll, unsigned long long* __restrict__ bad) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int tile = static_cast<int>(blockDim.x), t = static_cast<int>(threadIdx.x);
  const int n = Row::width(static_cast<int>(a.n)), m = Row::width(static_cast<int>(a.m));
  const int ps = Row::pitch(n, int(sizeof(T))), pr = Row::pitch(m, int(sizeof(I))), pb = Row::pitch(n, 1);
  const int mask_kind = !Row::kMasks || a.mask == nullptr ? 0 : (a.global_mask ? 1 : 2);
  const StagedLayout lay = tile_layout<Row>(tile, n, m, int(sizeof(T)), int(sizeof(I)), mask_kind);
  T* ss = reinterpret_cast<T*>(smem + lay.ss);
  I* rs = reinterpret_cast<I*>(smem + lay.rs);
  uint8_t* ms = smem + lay.ms;
  const TileCopy<Row::template padded<T>()> by_s(n, ps, 16 / int(sizeof(T)));
  const TileCopy<Row::template padded<I>()> by_r(m, pr, 16 / int(sizeof(I)));
  const TileCopy<Row::kMasks && Row::template padded<uint8_t>()> by_b(n, pb, 16);
  if (mask_kind == 1) {
    for (int i = t; i < n; i += tile) ms[i] = a.mask[i];
  }
  const int64_t step = int64_t(gridDim.x) * tile;
  for (int64_t row0 = int64_t(blockIdx.x) * tile; row0 < a.N; row0 += step) {
    const int rows = static_cast<int>(min(int64_t(tile), a.N - row0));
    by_s.load(a.s + row0 * n, rows * n, ss);
    by_r.load(a.r + row0 * m, rows * m, rs);
    if (mask_kind == 2) by_b.load(a.mask + row0 * n, rows * n, ms);
    __syncthreads();
    if (t < rows) {
      const T* sr = ss + t * ps;
      const I* rr = rs + t * pr;
      double v;
      const bool ok = mask_kind == 0
                          ? Row::template row<T, I>(sr, rr, m, n, nullptr, v)
                          : Row::template row<T, I>(sr, rr, m, n, mask_kind == 1 ? ms : ms + t * pb, v);
      if (ok) {
        ll[row0 + t] = static_cast<T>(v);
      } else {
        atomicMin(bad, static_cast<unsigned long long>(row0 + t));
      }
    }
    __syncthreads();  // the tile is overwritten next
  }
}

template <class T, class I, class Row>
TilePlan<T, I> tile_plan() {
  return {loglik_tiles<T, I, Row>, tile_layout<Row>};
}

// Which kernels pl_loglik may take beyond the padded staging (loglik_staged): 0 none, 1 the flat kernel where
// it applies, 2 also the exact-width kernel where it applies. 0 until a GPU run shows them faster than the
// staging they would replace; the test and benchmark hook set_loglik_kernel sets it.
std::atomic<int> g_loglik_kernel{0};

// The exact-width kernel for full rankings of n = m items without a mask (per-row scores, no gradient), or an
// empty plan.
template <class T, class I, int... Ns>
TilePlan<T, I> exact_plan_of(int64_t n, std::integer_sequence<int, Ns...>) {
  TilePlan<T, I> p;
  ((p = n == Ns + 2 ? tile_plan<T, I, ExactRow<Ns + 2>>() : p), ...);
  return p;
}
template <class T, class I>
TilePlan<T, I> exact_plan(int64_t n, int64_t m, bool masked) {
  if (g_loglik_kernel.load() < 2 || masked || m != n || n < 2 || n > pl::kExactMax) return {};
  return exact_plan_of<T, I>(n, std::make_integer_sequence<int, pl::kExactMax - 1>{});
}

// The flat kernel for per-row rows of n items ranked in m columns without a gradient, or an empty plan.
template <class T, class I>
TilePlan<T, I> flat_plan(int64_t n, int64_t m) {
  if (g_loglik_kernel.load() < 1 || n % 4 == 0 || m % 4 == 0 || m > n) return {};
  switch (pl::loglik_width(n)) {
    case 4: return tile_plan<T, I, FlatRow<4>>();
    case 8: return tile_plan<T, I, FlatRow<8>>();
    case 12: return tile_plan<T, I, FlatRow<12>>();
    case 16: return tile_plan<T, I, FlatRow<16>>();
    case 24: return tile_plan<T, I, FlatRow<24>>();
    case 32: return tile_plan<T, I, FlatRow<32>>();
    default: return {};
  }
}

}  // namespace

template <class T, class I>
TilePlan<T, I> loglik_tile_plan(int64_t n, int64_t m, bool masked) {
  const TilePlan<T, I> exact = exact_plan<T, I>(n, m, masked);
  return exact.kernel != nullptr ? exact : flat_plan<T, I>(n, m);
}

template TilePlan<float, int32_t> loglik_tile_plan<float, int32_t>(int64_t, int64_t, bool);
template TilePlan<float, int64_t> loglik_tile_plan<float, int64_t>(int64_t, int64_t, bool);
template TilePlan<double, int32_t> loglik_tile_plan<double, int32_t>(int64_t, int64_t, bool);
template TilePlan<double, int64_t> loglik_tile_plan<double, int64_t>(int64_t, int64_t, bool);

}  // namespace plk

int set_loglik_kernel(int level) { return plk::g_loglik_kernel.exchange(level); }

}  // namespace prefcal::cuda
