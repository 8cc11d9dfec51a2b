// The staging of the PL log-likelihood kernels, shared by cuda/pl.cu (the padded staging, loglik_staged) and
// cuda/pl_tiles.cu (the tiled kernels of set_loglik_kernel, in their own translation unit: nvcc compiles it
// beside pl.cu, not after it). Device code only; a named namespace, so that both units see one TilePlan.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace prefcal::cuda::plk {

inline constexpr int kThreads = 256;              // block size (smaller only when few threads are wanted)
inline constexpr size_t kSmemBudget = 96 * 1024;  // dynamic shared memory a block may ask for

// The rows of a call: scores (N, n) or (n,), rankings (N, m), mask null, (N, n) or (n,).
template <class T, class I>
struct Rows {
  const T* s;
  const I* r;
  const uint8_t* mask;
  bool global_scores, global_mask;
  int64_t N, m, n;
  __device__ __forceinline__ const T* scores(int64_t b) const { return global_scores ? s : s + b * n; }
  __device__ __forceinline__ const I* ranking(int64_t b) const { return r + b * m; }
  __device__ __forceinline__ const uint8_t* mask_of(int64_t b) const {
    if (mask == nullptr) return nullptr;
    return global_mask ? mask : mask + b * n;
  }
};

// Shared-memory layout of the staged kernel for a tile of `tile` rows (byte offsets, 16-byte aligned).
// mask_kind: 0 none, 1 global (n bytes), 2 per row.
struct StagedLayout {
  size_t inv, ss, gs, rs, ms, total;
};

__host__ __device__ __forceinline__ size_t align16(size_t b) { return (b + 15) / 16 * 16; }

// Copies `count` consecutive elements (rows of `width`) between global memory and a shared tile whose rows
// have `pitch` elements; element k of the block's range goes to thread k % blockDim.x (coalesced), or 16-byte
// vector k to thread k % blockDim.x when the range allows. Scalar loads are issued kBatch at a time before any
// is stored, to keep enough bytes in flight.
struct Stager {
  static constexpr int kBatch = 4;
  int width, pitch, step_r, step_c, row0, col0;
  // the 16-byte path's start and step, for vectors of `vec` elements (the divisions done once, not per tile)
  int vec, vstep_r, vstep_c, vrow0, vcol0;
  __device__ __forceinline__ Stager(int w, int p, int vector_elems)
      : width(w), pitch(p), step_r(0), step_c(0), row0(0), col0(0), vec(vector_elems), vstep_r(0), vstep_c(0),
        vrow0(0), vcol0(0) {
    if (w > 0) {
      const int nt = static_cast<int>(blockDim.x), t = static_cast<int>(threadIdx.x);
      step_r = nt / w;
      step_c = nt - step_r * w;
      row0 = t / w;
      col0 = t - row0 * w;
      vstep_r = vec * nt / w;
      vstep_c = vec * nt - vstep_r * w;
      vrow0 = vec * t / w;
      vcol0 = vec * t - vrow0 * w;
    }
  }
  __device__ __forceinline__ void advance(int& row, int& col) const {
    row += step_r;
    col += step_c;
    if (col >= width) {
      col -= width;
      ++row;
    }
  }
  template <class V>
  __device__ __forceinline__ void load(const V* __restrict__ src, int count, V* dst) const {
    const int nt = static_cast<int>(blockDim.x);
    if constexpr (sizeof(V) == 4 || sizeof(V) == 8) {
      // 16-byte loads when the range is aligned and whole (every tile but the last, usually): vector v of the
      // range holds elements 16 / sizeof(V) * v + u
      constexpr int kPer = 16 / static_cast<int>(sizeof(V));
      if (vec == kPer && count > 0 && count % kPer == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0) {
        const int4* src4 = reinterpret_cast<const int4*>(src);
        const int vcount = count / kPer;
        // thread t takes vectors t, t + nt, ...: element kPer * t first; kBatch vectors in flight
        int row = vrow0, col = vcol0;
        for (int v0 = static_cast<int>(threadIdx.x); v0 < vcount; v0 += kBatch * nt) {
          int4 q[kBatch];
#pragma unroll
          for (int b = 0; b < kBatch; ++b) {
            if (v0 + b * nt < vcount) q[b] = __ldg(src4 + v0 + b * nt);
          }
#pragma unroll
          for (int b = 0; b < kBatch; ++b) {
            if (v0 + b * nt >= vcount) break;
            V e[kPer];
            memcpy(e, &q[b], sizeof q[b]);
            int r = row, c = col;
#pragma unroll
            for (int u = 0; u < kPer; ++u) {
              dst[r * pitch + c] = e[u];
              if (++c == width) {
                c = 0;
                ++r;
              }
            }
            row += vstep_r;
            col += vstep_c;
            if (col >= width) {
              col -= width;
              ++row;
            }
          }
        }
        return;
      }
    }
    int row = row0, col = col0;
    for (int k = static_cast<int>(threadIdx.x); k < count; k += kBatch * nt) {
      V v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (k + u * nt < count) v[u] = src[k + u * nt];
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (k + u * nt < count) {
          dst[row * pitch + col] = v[u];
          advance(row, col);
        }
      }
    }
  }
  template <class V>
  __device__ __forceinline__ void store(const V* src, int count, V* __restrict__ dst) const {
    int row = row0, col = col0;
    for (int k = static_cast<int>(threadIdx.x); k < count; k += static_cast<int>(blockDim.x)) {
      dst[k] = src[row * pitch + col];
      advance(row, col);
    }
  }
};

template <class T, class I>
using TileKernel = void (*)(Rows<T, I>, T*, unsigned long long*);

// A tiled kernel and its shared-memory layout for a tile of rows.
template <class T, class I>
struct TilePlan {
  TileKernel<T, I> kernel = nullptr;
  StagedLayout (*layout)(int tile, int n, int m, int size_s, int size_i, int mask_kind) = nullptr;
};

// The tiled kernel for per-row scores without a gradient of n items ranked in m columns (masked: with a
// mask), as set_loglik_kernel allows: the exact-width one (full rankings of 2 .. 16 items without a mask), else
// the flat one (n <= 32, n and m not multiples of 4); an empty plan when neither applies or is allowed.
template <class T, class I>
TilePlan<T, I> loglik_tile_plan(int64_t n, int64_t m, bool masked);

extern template TilePlan<float, int32_t> loglik_tile_plan<float, int32_t>(int64_t, int64_t, bool);
extern template TilePlan<float, int64_t> loglik_tile_plan<float, int64_t>(int64_t, int64_t, bool);
extern template TilePlan<double, int32_t> loglik_tile_plan<double, int32_t>(int64_t, int64_t, bool);
extern template TilePlan<double, int64_t> loglik_tile_plan<double, int64_t>(int64_t, int64_t, bool);

}  // namespace prefcal::cuda::plk
