// OpenMP CPU kernels of binned calibration. See prefcal/cpu/binning.hpp for the contract and
// prefcal/binning.hpp for the per-element rules shared with the CUDA kernels.
//
// Uniform binning is one streaming pass. Each chunk of rows is binned into thread-private bins; to break
// the store-to-load dependency chain when consecutive rows fall into the same bin, small bin counts use four
// interleaved sub-histograms (row j updates copy j % 4). Unweighted rows keep (count, sum_correct) packed in
// one 64-bit word per bin (low and high 32 bits; a chunk has fewer than 2^32 rows) and sum_confidence in
// float64. Each chunk's bins are written out and the chunks are added in chunk order, so results do not
// depend on the number of threads.
//
// Quantile binning never sorts all rows: a 65536-bucket value histogram (monotone in the confidence) gives
// each bucket's rank range; buckets that hold no bin boundary go straight to their bin, and only the rows of
// the at most B - 1 buckets that hold a boundary are sorted (stable, by value then row) to place them.
#include "prefcal/cpu/binning.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <new>
#include <vector>

#include "prefcal/binning.hpp"
#include "prefcal/common.hpp"
#include "prefcal/cpu/clones.hpp"
#include "prefcal/cpu/parallel.hpp"
#include "prefcal/fastmath.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PREFCAL_X86_DISPATCH 1
#include <immintrin.h>
#endif

namespace prefcal::cpu {

namespace {

int g_threads = 0;

constexpr int64_t kChunk = int64_t(1) << 16;  // rows per chunk: fixed, so results do not depend on threads
constexpr int kBlock = 256;                    // rows per vectorised block inside a chunk
constexpr int32_t kBuckets = 1 << 16;          // value buckets of the quantile selection

// Rows per chunk for kernels that keep `bins_per_chunk` float64 partial bins per chunk: large enough that the
// partial bins stay a small fraction of the input.
int64_t chunk_rows(int64_t bins_per_chunk, int64_t row_width = 1) {
  const int64_t want = std::max<int64_t>(kChunk / std::max<int64_t>(row_width, 1), 64 * bins_per_chunk / row_width);
  return std::max<int64_t>(kBlock, (want + kBlock - 1) / kBlock * kBlock);
}

// Per-thread scratch stride (elements of 8 bytes): padded so two threads never share a cache line.
size_t padded(size_t elements) { return (elements + 15) / 8 * 8 + 16; }

template <class TC, class TY>
int64_t first_invalid(const TC* c, const TY* y, const double* w, int64_t m) {
  for (int64_t j = 0; j < m; ++j) {
    if (!valid_confidence(c[j]) || !valid_binary(y[j]) || (w != nullptr && !valid_weight(w[j]))) return j;
  }
  return kNoError;
}

int64_t min_index(const std::vector<int64_t>& v) { return v.empty() ? kNoError : *std::min_element(v.begin(), v.end()); }

// ------------------------------------------------------------------------------------------- uniform

// Bins of a block of m confidences (uniform_bin), and whether all of them lie in [0, 1].
template <class TC>
unsigned index_block_generic(const TC* c, int m, int32_t B, int32_t* idx) {
  unsigned ok = 1;
  for (int j = 0; j < m; ++j) ok &= static_cast<unsigned>(valid_confidence(c[j]));
  for (int j = 0; j < m; ++j) idx[j] = uniform_bin(static_cast<double>(c[j]), B);
  return ok;
}

#ifdef PREFCAL_X86_DISPATCH
// AVX2 + FMA versions (chosen at run time). The float32 one is uniform_bin_f32 with 8 lanes: the float32
// product, clamped, truncated, and moved down by one where the exact residual fma(c, B, -i) is negative;
// it equals the float64 rule for every float32 (tested through the CUDA path's shared function).
__attribute__((target("avx2,fma"))) unsigned index_block_avx2(const float* c, int m, int32_t B, int32_t* idx) {
  const __m256 b = _mm256_set1_ps(static_cast<float>(B));
  const __m256 top = _mm256_set1_ps(static_cast<float>(B - 1));
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  int j = 0;
  for (; j + 8 <= m; j += 8) {
    const __m256 v = _mm256_loadu_ps(c + j);
    ok = _mm256_and_ps(ok, _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ), _mm256_cmp_ps(v, one, _CMP_LE_OQ)));
    const __m256 x = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, b), zero), top);  // NaN -> 0
    __m256i i = _mm256_cvttps_epi32(x);
    const __m256 residual = _mm256_fmsub_ps(v, b, _mm256_cvtepi32_ps(i));
    const __m256i down = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(residual, zero, _CMP_LT_OQ)),
                                          _mm256_cmpgt_epi32(i, _mm256_setzero_si256()));
    i = _mm256_add_epi32(i, down);  // down is -1 where the product was rounded up across an integer
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + j), i);
  }
  unsigned all = _mm256_movemask_ps(ok) == 0xff ? 1u : 0u;
  return all & index_block_generic(c + j, m - j, B, idx + j);
}

__attribute__((target("avx2,fma"))) unsigned index_block_avx2(const double* c, int m, int32_t B, int32_t* idx) {
  const __m256d b = _mm256_set1_pd(static_cast<double>(B));
  const __m256d top = _mm256_set1_pd(static_cast<double>(B - 1));
  const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0);
  __m256d ok = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
  int j = 0;
  for (; j + 4 <= m; j += 4) {
    const __m256d v = _mm256_loadu_pd(c + j);
    ok = _mm256_and_pd(ok, _mm256_and_pd(_mm256_cmp_pd(v, zero, _CMP_GE_OQ), _mm256_cmp_pd(v, one, _CMP_LE_OQ)));
    const __m256d x = _mm256_min_pd(_mm256_max_pd(_mm256_mul_pd(v, b), zero), top);  // NaN -> 0
    _mm_storeu_si128(reinterpret_cast<__m128i*>(idx + j), _mm256_cvttpd_epi32(x));
  }
  unsigned all = _mm256_movemask_pd(ok) == 0xf ? 1u : 0u;
  return all & index_block_generic(c + j, m - j, B, idx + j);
}

bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

template <class TC>
unsigned index_block(const TC* c, int m, int32_t B, int32_t* idx) {
#ifdef PREFCAL_X86_DISPATCH
  if (have_avx2()) return index_block_avx2(c, m, B, idx);
#endif
  return index_block_generic(c, m, B, idx);
}

// Whether a block of outcomes are all 0 or 1 (one OR over the bytes for 1-byte types).
template <class TY>
unsigned outcomes_ok(const TY* t, int m) {
  if constexpr (sizeof(TY) == 1) {
    unsigned acc = 0;
    for (int j = 0; j < m; ++j) acc |= static_cast<uint8_t>(t[j]);
    return (acc & ~1u) == 0 ? 1u : 0u;
  } else {
    unsigned ok = 1;
    for (int j = 0; j < m; ++j) ok &= static_cast<unsigned>(valid_binary(t[j]));
    return ok;
  }
}

PREFCAL_CLONES unsigned weights_ok(const double* w, int m) {  // the baseline (SSE2) clone stays scalar
  unsigned ok = 1;
  for (int j = 0; j < m; ++j) ok &= static_cast<unsigned>(valid_weight(w[j]));
  return ok;
}

// Unweighted: cc[l * B + b] packs (count | sum_correct << 32), sc[l * B + b] sums confidences; L copies.
template <int L, class TC, class TY>
int64_t uniform_chunk(const TC* conf, const TY* y, int64_t lo, int64_t hi, int32_t B, uint64_t* cc, double* sc) {
  int32_t idx[kBlock];
  for (int64_t base = lo; base < hi; base += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, hi - base));
    const TC* c = conf + base;
    const TY* t = y + base;
    const unsigned ok = index_block(c, m, B, idx) & outcomes_ok(t, m);
    if (!ok) return base + first_invalid(c, t, static_cast<const double*>(nullptr), m);
    int j = 0;
    for (; j + L <= m; j += L) {
      for (int u = 0; u < L; ++u) {
        const int32_t b = u * B + idx[j + u];
        cc[b] += 1u + (static_cast<uint64_t>(outcome(t[j + u])) << 32);
        sc[b] += static_cast<double>(c[j + u]);
      }
    }
    for (; j < m; ++j) {
      cc[idx[j]] += 1u + (static_cast<uint64_t>(outcome(t[j])) << 32);
      sc[idx[j]] += static_cast<double>(c[j]);
    }
  }
  return kNoError;
}

// Weighted: float64 (sum w, sum w c, sum w y) per bin; L copies.
template <int L, class TC, class TY>
int64_t uniform_chunk_weighted(const TC* conf, const TY* y, const double* w, int64_t lo, int64_t hi, int32_t B,
                               double* cw, double* scw, double* syw) {
  int32_t idx[kBlock];
  for (int64_t base = lo; base < hi; base += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, hi - base));
    const TC* c = conf + base;
    const TY* t = y + base;
    const double* v = w + base;
    const unsigned ok = index_block(c, m, B, idx) & outcomes_ok(t, m) & weights_ok(v, m);
    if (!ok) return base + first_invalid(c, t, v, m);
    int j = 0;
    for (; j + L <= m; j += L) {
      for (int u = 0; u < L; ++u) {
        const int32_t b = u * B + idx[j + u];
        const double wj = v[j + u];
        cw[b] += wj;
        scw[b] += wj * static_cast<double>(c[j + u]);
        syw[b] += wj * static_cast<double>(outcome(t[j + u]));  // not a select: GCC branched on the outcome
      }
    }
    for (; j < m; ++j) {
      const int32_t b = idx[j];
      cw[b] += v[j];
      scw[b] += v[j] * static_cast<double>(c[j]);
      syw[b] += v[j] * static_cast<double>(outcome(t[j]));
    }
  }
  return kNoError;
}

// Unpacks L interleaved unweighted copies into (count, sum_conf, sum_correct) rows of width B.
void unpack_lanes(const uint64_t* cc, const double* sc, int L, int64_t B, double* p) {
  for (int64_t b = 0; b < B; ++b) {
    uint64_t count = 0, correct = 0;
    double s = 0.0;
    for (int u = 0; u < L; ++u) {
      count += cc[u * B + b] & 0xffffffffu;
      correct += cc[u * B + b] >> 32;
      s += sc[u * B + b];
    }
    p[b] = static_cast<double>(count);
    p[B + b] = s;
    p[2 * B + b] = static_cast<double>(correct);
  }
}

// ------------------------------------------------------------------------------------------- quantile

struct SplitItem {
  double c;   // confidence (exact for float32 and float64 inputs)
  int64_t i;  // row
};

}  // namespace

void set_num_threads(int n) { g_threads = n > 0 ? n : 0; }

int num_threads() {
#ifdef _OPENMP
  return g_threads > 0 ? g_threads : omp_get_max_threads();
#else
  return 1;
#endif
}

bool have_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

template <class TC, class TY>
int64_t bin_uniform(const TC* conf, const TY* y, const double* w, int64_t n, int32_t B, double* out) {
  const int64_t width = 3 * int64_t(B);
  const int L = B <= 4096 ? 4 : 1;
  const int64_t chunk = chunk_rows(width * L);
  const int64_t nc = (n + chunk - 1) / chunk;
  const int nt = threads_for(nc);
  const size_t lane_bins = size_t(L) * size_t(B);
  const size_t stride = padded(3 * lane_bins);
  Slabs<double> partial(nc, width);
  std::vector<int64_t> bad(size_t(nc), kNoError);
  if (w == nullptr) {
    std::vector<uint64_t> cc(size_t(nt) * stride);
    std::vector<double> sc(size_t(nt) * stride);
    for_chunks(n, chunk, nt, [&](int tid, int64_t k, int64_t lo, int64_t hi) {
      uint64_t* c1 = cc.data() + size_t(tid) * stride;
      double* s1 = sc.data() + size_t(tid) * stride;
      std::fill(c1, c1 + lane_bins, uint64_t(0));
      std::fill(s1, s1 + lane_bins, 0.0);
      bad[size_t(k)] = L == 4 ? uniform_chunk<4>(conf, y, lo, hi, B, c1, s1) : uniform_chunk<1>(conf, y, lo, hi, B, c1, s1);
      unpack_lanes(c1, s1, L, B, partial[k]);
    });
  } else {
    std::vector<double> acc(size_t(nt) * stride);
    for_chunks(n, chunk, nt, [&](int tid, int64_t k, int64_t lo, int64_t hi) {
      double* a = acc.data() + size_t(tid) * stride;
      std::fill(a, a + 3 * lane_bins, 0.0);
      double *cw = a, *scw = a + lane_bins, *syw = a + 2 * lane_bins;
      bad[size_t(k)] = L == 4 ? uniform_chunk_weighted<4>(conf, y, w, lo, hi, B, cw, scw, syw)
                              : uniform_chunk_weighted<1>(conf, y, w, lo, hi, B, cw, scw, syw);
      double* p = partial[k];
      for (int64_t b = 0; b < B; ++b) {
        double s0 = 0.0, s1 = 0.0, s2 = 0.0;
        for (int u = 0; u < L; ++u) {
          s0 += cw[u * B + b];
          s1 += scw[u * B + b];
          s2 += syw[u * B + b];
        }
        p[b] = s0;
        p[B + b] = s1;
        p[2 * B + b] = s2;
      }
    });
  }
  const int64_t first = min_index(bad);
  if (first != kNoError) return first;
  partial.add_into(out);
  return kNoError;
}

template <class TC, class TY>
int64_t bin_quantile(const TC* conf, const TY* y, const double* w, int64_t n, int32_t B, double* out, double* edges) {
  const int64_t width = 3 * int64_t(B);
  std::fill(out, out + width, 0.0);
  edges[0] = 0.0;
  edges[B] = 1.0;
  for (int32_t b = 1; b < B; ++b) edges[b] = std::numeric_limits<double>::quiet_NaN();
  if (n == 0) return kNoError;

  // Pass 1: validate and histogram the value buckets (per-thread histograms; integer counts are exact).
  const int64_t nc1 = (n + kChunk - 1) / kChunk;
  const int nt1 = threads_for(nc1);
  const size_t hstride = padded(kBuckets);
  std::vector<uint64_t> hist(size_t(nt1) * hstride, 0);
  std::vector<int64_t> bad(size_t(nc1), kNoError);
  for_chunks(n, kChunk, nt1, [&](int tid, int64_t k, int64_t lo, int64_t hi) {
    uint64_t* h = hist.data() + size_t(tid) * hstride;
    const int64_t f = first_invalid(conf + lo, y + lo, w == nullptr ? nullptr : w + lo, hi - lo);
    if (f != kNoError) {
      bad[size_t(k)] = lo + f;
      return;
    }
    for (int64_t i = lo; i < hi; ++i) ++h[uniform_bin(static_cast<double>(conf[i]), kBuckets)];
  });
  const int64_t first = min_index(bad);
  if (first != kNoError) return first;

  // Rank range of each bucket; buckets holding the first rank of a bin b >= 1 are "split" (-1).
  std::vector<int64_t> start(size_t(kBuckets) + 1, 0);
  for (int32_t k = 0; k < kBuckets; ++k) {
    uint64_t c = 0;
    for (int t = 0; t < nt1; ++t) c += hist[size_t(t) * hstride + size_t(k)];
    start[size_t(k) + 1] = start[size_t(k)] + static_cast<int64_t>(c);
  }
  std::vector<int32_t> lut(kBuckets, 0);
  for (int32_t k = 0; k < kBuckets; ++k) {
    const int64_t s = start[size_t(k)], e = start[size_t(k) + 1];
    if (s == e) continue;
    const int64_t bstar = std::max<int64_t>(1, (s * B + n - 1) / n);  // smallest b >= 1 whose first rank >= s
    const bool split = bstar <= B - 1 && quantile_start(bstar, n, B) <= e - 1;
    lut[size_t(k)] = split ? -1 : static_cast<int32_t>(quantile_bin(s, n, B));
  }

  // Pass 2: rows of whole buckets go to their bin (chunk partials, added in chunk order); rows of split buckets
  // are collected in row order.
  const int64_t chunk = chunk_rows(width);
  const int64_t nc = (n + chunk - 1) / chunk;
  const int nt = threads_for(nc);
  Slabs<double> partial(nc, width);
  std::vector<std::vector<SplitItem>> items(static_cast<size_t>(nc));
  for_chunks(n, chunk, nt, [&](int, int64_t k, int64_t lo, int64_t hi) {
    double* p = partial.open(k);
    std::vector<SplitItem>& mine = items[size_t(k)];
    for (int64_t i = lo; i < hi; ++i) {
      const double c = static_cast<double>(conf[i]);
      const int32_t b = lut[size_t(uniform_bin(c, kBuckets))];
      if (b < 0) {
        mine.push_back({c, i});
        continue;
      }
      const double wi = w == nullptr ? 1.0 : w[i];
      p[b] += wi;
      p[B + b] += wi * c;
      p[2 * B + b] += wi * static_cast<double>(outcome(y[i]));  // not a select (a branch on the outcome)
    }
  });
  partial.add_into(out);

  // Split rows: stable sort by value gives (value, row) order, and each split bucket is contiguous in it.
  std::vector<SplitItem> all;
  size_t total = 0;
  for (const auto& v : items) total += v.size();
  all.reserve(total);
  for (auto& v : items) {
    all.insert(all.end(), v.begin(), v.end());
    std::vector<SplitItem>().swap(v);
  }
  std::stable_sort(all.begin(), all.end(), [](const SplitItem& a, const SplitItem& b) { return a.c < b.c; });
  size_t pos = 0;
  while (pos < all.size()) {
    const int32_t kb = uniform_bin(all[pos].c, kBuckets);
    const int64_t base = start[size_t(kb)];
    const int64_t cnt = start[size_t(kb) + 1] - base;
    for (int64_t j = 0; j < cnt; ++j) {
      const SplitItem& it = all[pos + size_t(j)];
      const int64_t r = base + j;
      int64_t b = quantile_bin(r, n, B);
      const double wi = w == nullptr ? 1.0 : w[it.i];
      out[b] += wi;
      out[B + b] += wi * it.c;
      out[2 * B + b] += wi * static_cast<double>(outcome(y[it.i]));
      for (; b >= 1 && quantile_start(b, n, B) == r; --b) edges[b] = it.c;
    }
    pos += size_t(cnt);
  }
  return kNoError;
}

template <class TP, class TL>
int64_t multiclass_uniform(const TP* probs, const TL* labels, int64_t n, int32_t C, int32_t B, MulticlassKind kind,
                           double* out) {
  const int64_t groups = kind == MulticlassKind::kConfidence ? 1 : C;
  const int64_t gb = groups * B;
  const int64_t width = 3 * gb;
  const int64_t chunk = chunk_rows(width, C);
  const int64_t nc = (n + chunk - 1) / chunk;
  const int nt = threads_for(nc);
  Slabs<double> partial(nc, width);
  std::vector<int64_t> bad(size_t(nc), kNoError);
  const size_t stride = padded(size_t(gb));
  std::vector<uint64_t> cc(size_t(nt) * stride);
  std::vector<double> sc(size_t(nt) * stride);
  for_chunks(n, chunk, nt, [&](int tid, int64_t k, int64_t lo, int64_t hi) {
    uint64_t* c1 = cc.data() + size_t(tid) * stride;
    double* s1 = sc.data() + size_t(tid) * stride;
    std::fill(c1, c1 + gb, uint64_t(0));
    std::fill(s1, s1 + gb, 0.0);
    for (int64_t r = lo; r < hi; ++r) {
      const TP* p = probs + r * C;
      const TL lab = labels[r];
      TP best;
      int32_t arg;
      if (!top_class(p, C, lab, best, arg)) {
        bad[size_t(k)] = r;
        return;
      }
      if (kind == MulticlassKind::kClasswise) {
        for (int32_t c = 0; c < C; ++c) {
          const int64_t b = int64_t(c) * B + uniform_bin(static_cast<double>(p[c]), B);
          c1[b] += 1u + (uint64_t(TL(c) == lab) << 32);
          s1[b] += static_cast<double>(p[c]);
        }
      } else {
        const int64_t g = kind == MulticlassKind::kTopLabel ? arg : 0;
        const int64_t b = g * B + uniform_bin(static_cast<double>(best), B);
        c1[b] += 1u + (uint64_t(TL(arg) == lab) << 32);
        s1[b] += static_cast<double>(best);
      }
    }
    unpack_lanes(c1, s1, 1, gb, partial[k]);
  });
  const int64_t first = min_index(bad);
  if (first != kNoError) return first;
  // Partial rows are laid out (count[gb], sum_conf[gb], sum_correct[gb]); out is (groups, 3, B).
  std::vector<double> flat(static_cast<size_t>(width));
  partial.add_into(flat.data());
  for (int64_t g = 0; g < groups; ++g) {
    for (int f = 0; f < 3; ++f) {
      std::copy(flat.begin() + f * gb + g * B, flat.begin() + f * gb + (g + 1) * B, out + (g * 3 + f) * B);
    }
  }
  return kNoError;
}

template <class TP, class TL>
int64_t multiclass_quantile(const TP* probs, const TL* labels, int64_t n, int32_t C, int32_t B, MulticlassKind kind,
                            double* out, double* edges) {
  const int64_t width = 3 * int64_t(B);
  // One validating pass that also extracts (max probability, predicted class, hit).
  std::vector<TP> maxp(kind == MulticlassKind::kClasswise ? 0 : size_t(n));
  std::vector<int32_t> pred(kind == MulticlassKind::kClasswise ? 0 : size_t(n));
  std::vector<uint8_t> hit(kind == MulticlassKind::kClasswise ? 0 : size_t(n));
  const int64_t chunk = chunk_rows(0, C);
  const int64_t nc = (n + chunk - 1) / chunk;
  std::vector<int64_t> bad(size_t(nc), kNoError);
  for_chunks(n, chunk, threads_for(nc), [&](int, int64_t k, int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const TL lab = labels[r];
      TP best;
      int32_t arg;
      if (!top_class(probs + r * C, C, lab, best, arg)) {
        bad[size_t(k)] = r;
        return;
      }
      if (kind != MulticlassKind::kClasswise) {
        maxp[size_t(r)] = best;
        pred[size_t(r)] = arg;
        hit[size_t(r)] = TL(arg) == lab ? 1 : 0;
      }
    }
  });
  const int64_t first = min_index(bad);
  if (first != kNoError) return first;

  if (kind == MulticlassKind::kConfidence) return bin_quantile(maxp.data(), hit.data(), nullptr, n, B, out, edges);

  std::vector<TP> col(static_cast<size_t>(n));
  std::vector<uint8_t> y(static_cast<size_t>(n));
  if (kind == MulticlassKind::kClasswise) {
    for (int32_t c = 0; c < C; ++c) {
      for (int64_t r = 0; r < n; ++r) {
        col[size_t(r)] = probs[r * C + c];
        y[size_t(r)] = labels[r] == TL(c) ? 1 : 0;
      }
      bin_quantile(col.data(), y.data(), nullptr, n, B, out + c * width, edges + int64_t(c) * (B + 1));
    }
    return kNoError;
  }
  // Top label: a stable counting sort by predicted class, then each class is binned on its own rows.
  std::vector<int64_t> offset(size_t(C) + 1, 0);
  for (int64_t r = 0; r < n; ++r) ++offset[size_t(pred[size_t(r)]) + 1];
  for (int32_t c = 0; c < C; ++c) offset[size_t(c) + 1] += offset[size_t(c)];
  std::vector<int64_t> fill(offset.begin(), offset.end() - 1);
  for (int64_t r = 0; r < n; ++r) {
    const size_t dst = size_t(fill[size_t(pred[size_t(r)])]++);
    col[dst] = maxp[size_t(r)];
    y[dst] = hit[size_t(r)];
  }
  for (int32_t c = 0; c < C; ++c) {
    const int64_t lo = offset[size_t(c)];
    bin_quantile(col.data() + lo, y.data() + lo, nullptr, offset[size_t(c) + 1] - lo, B, out + c * width,
                 edges + int64_t(c) * (B + 1));
  }
  return kNoError;
}

// Brier and log-loss sums of a block of valid pairs. Each pair's terms first (a vectorised loop into two small
// buffers; the outcome as a 0/1 double, which GCC turns into vector selects where a bool would keep the loop
// scalar), then added into eight partial sums per quantity (pair j into sum j mod 8, the eight added in a fixed
// tree): vector arithmetic with the same result on every processor and thread count. The log loss of an
// outcome 0 is -log1p(-c), computed as -log(u) c / (1 - u) with u = 1 - c rounded (Goldberg's log1p: within a
// few ulp; u is exact where c >= 1/2), the logs by fastmath::log_pos.
template <class TC, class TY>
__attribute__((always_inline)) inline void score_terms(const TC* c, const TY* y, int64_t m, double eps,
                                                       double* __restrict tb, double* __restrict tl) {
  const double lo = eps, hi = 1.0 - eps;
  for (int64_t j = 0; j < m; ++j) {
    const double cd = static_cast<double>(c[j]);
    const double t = static_cast<double>(outcome(y[j]));
    const double d = cd - t;
    const double cc = std::min(std::max(cd, lo), hi);
    const double u = 1.0 - cc, den = 1.0 - u;  // den = cc where u is exact
    const double lg = fastmath::log_pos(t != 0.0 ? cc : u);
    tb[j] = d * d;
    if constexpr (sizeof(TC) <= 4) {
      tl[j] = -lg;  // a float32 c >= its eps = 2^-23 has no bit below 2^-46: u = 1 - c is exact, log(u) = log1p(-c)
    } else {
      tl[j] = t != 0.0 ? -lg : (den != 0.0 ? -lg * (cc / den) : cc);
    }
  }
}

// s[j mod 8] += t[j] for j in [0, m) (m a multiple of 8 but for the last block).
__attribute__((always_inline)) inline void add_lanes(const double* t, int64_t m, double* s) {
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    for (int l = 0; l < 8; ++l) s[l] += t[j + l];
  }
  for (int l = 0; j + l < m; ++l) s[l] += t[j + l];
}

template <bool Weighted, class TC, class TY>
__attribute__((always_inline)) inline void score_block(const TC* c, const TY* y, const double* w, int64_t m,
                                                       double eps, double* acc) {
  constexpr int64_t kTerms = 256;
  alignas(64) double tb[kTerms], tl[kTerms];
  double sw[8] = {}, sb[8] = {}, sl[8] = {};
  for (int64_t j = 0; j < m; j += kTerms) {
    const int64_t b = std::min(kTerms, m - j);
    score_terms(c + j, y + j, b, eps, tb, tl);
    if constexpr (Weighted) {
      const double* wj = w + j;
      for (int64_t i = 0; i < b; ++i) {
        tb[i] *= wj[i];
        tl[i] *= wj[i];
      }
      add_lanes(wj, b, sw);
    } else {
      sw[0] += static_cast<double>(b);  // a count: exact in any order
    }
    add_lanes(tb, b, sb);
    add_lanes(tl, b, sl);
  }
  auto tree = [](const double* v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); };
  acc[0] += tree(sw);
  acc[1] += tree(sb);
  acc[2] += tree(sl);
}

// Whether all m pairs (and weights) are valid: flags over the block, no early exit (vector compares; the
// outcomes and weights as the binned kernels check them).
template <class TC, class TY>
__attribute__((always_inline)) inline bool block_valid(const TC* c, const TY* y, const double* w, int m) {
  uint32_t ok = 1;  // an integer flag: GCC does not vectorise a bool reduction
  for (int j = 0; j < m; ++j) ok &= static_cast<uint32_t>(valid_confidence(c[j]));
  return (ok & outcomes_ok(y, m) & (w == nullptr ? 1u : weights_ok(w, m))) != 0;
}

// Sums of pairs [0, m) into out[3] (weights, Brier terms, log-loss terms) in blocks of 4096 pairs, each checked
// and then summed while it is in the cache; returns the first invalid pair (the sums are then meaningless) or
// kNoError.
template <class TC, class TY>
__attribute__((always_inline)) inline int64_t score_chunk_impl(const TC* c, const TY* y, const double* w,
                                                               int64_t m, double eps, double* out) {
  constexpr int64_t kSumBlock = 4096;
  out[0] = out[1] = out[2] = 0.0;
  for (int64_t j = 0; j < m; j += kSumBlock) {
    const int b = static_cast<int>(std::min(kSumBlock, m - j));
    if (!block_valid(c + j, y + j, w == nullptr ? nullptr : w + j, b)) {
      return j + first_invalid(c + j, y + j, w == nullptr ? nullptr : w + j, b);
    }
    if (w == nullptr) {
      score_block<false>(c + j, y + j, nullptr, b, eps, out);
    } else {
      score_block<true>(c + j, y + j, w + j, b, eps, out);
    }
  }
  return kNoError;
}

// One compiled (multi-versioned) function per type pair; target_clones does not apply to templates.
#define PREFCAL_SCORE_CHUNK(TC, TY)                                                                        \
  PREFCAL_CLONES int64_t score_chunk(const TC* c, const TY* y, const double* w, int64_t m, double eps,    \
                                     double* out) {                                                        \
    return score_chunk_impl(c, y, w, m, eps, out);                                                        \
  }
#define PREFCAL_SCORE_CHUNK_ALL(TC) \
  PREFCAL_SCORE_CHUNK(TC, uint8_t)  \
  PREFCAL_SCORE_CHUNK(TC, int8_t)   \
  PREFCAL_SCORE_CHUNK(TC, int32_t)  \
  PREFCAL_SCORE_CHUNK(TC, int64_t)  \
  PREFCAL_SCORE_CHUNK(TC, float)    \
  PREFCAL_SCORE_CHUNK(TC, double)
PREFCAL_SCORE_CHUNK_ALL(float)
PREFCAL_SCORE_CHUNK_ALL(double)
#undef PREFCAL_SCORE_CHUNK_ALL
#undef PREFCAL_SCORE_CHUNK

template <class TC, class TY>
int64_t score_sums(const TC* conf, const TY* y, const double* w, int64_t n, double eps, double* out) {
  const int64_t nc = (n + kChunk - 1) / kChunk;
  Slabs<double> partial(nc, 3);
  std::vector<int64_t> bad(size_t(nc), kNoError);
  for_chunks(n, kChunk, threads_for(nc), [&](int, int64_t k, int64_t lo, int64_t hi) {
    double sums[3];
    const int64_t f = score_chunk(conf + lo, y + lo, w == nullptr ? nullptr : w + lo, hi - lo, eps, sums);
    if (f != kNoError) {
      bad[size_t(k)] = lo + f;
      return;
    }
    std::copy(sums, sums + 3, partial[k]);
  });
  const int64_t first = min_index(bad);
  if (first != kNoError) return first;
  partial.add_into(out);
  return kNoError;
}

// ------------------------------------------------------------------------------------------- instantiations

#define PREFCAL_BINARY(TC, TY)                                                                                  \
  template int64_t bin_uniform<TC, TY>(const TC*, const TY*, const double*, int64_t, int32_t, double*);        \
  template int64_t bin_quantile<TC, TY>(const TC*, const TY*, const double*, int64_t, int32_t, double*, double*); \
  template int64_t score_sums<TC, TY>(const TC*, const TY*, const double*, int64_t, double, double*);

#define PREFCAL_BINARY_ALL(TC) \
  PREFCAL_BINARY(TC, uint8_t)  \
  PREFCAL_BINARY(TC, int8_t)   \
  PREFCAL_BINARY(TC, int32_t)  \
  PREFCAL_BINARY(TC, int64_t)  \
  PREFCAL_BINARY(TC, float)    \
  PREFCAL_BINARY(TC, double)

PREFCAL_BINARY_ALL(float)
PREFCAL_BINARY_ALL(double)

#define PREFCAL_MULTICLASS(TP, TL)                                                                               \
  template int64_t multiclass_uniform<TP, TL>(const TP*, const TL*, int64_t, int32_t, int32_t, MulticlassKind,  \
                                              double*);                                                          \
  template int64_t multiclass_quantile<TP, TL>(const TP*, const TL*, int64_t, int32_t, int32_t, MulticlassKind, \
                                               double*, double*);

PREFCAL_MULTICLASS(float, int32_t)
PREFCAL_MULTICLASS(float, int64_t)
PREFCAL_MULTICLASS(double, int32_t)
PREFCAL_MULTICLASS(double, int64_t)

}  // namespace prefcal::cpu
