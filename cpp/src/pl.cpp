// OpenMP CPU kernels of the Plackett-Luce model. Declarations: prefcal/cpu/pl.hpp; math: prefcal/pl.hpp.
#include "prefcal/cpu/pl.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "prefcal/common.hpp"
#include "prefcal/cpu/clones.hpp"
#include "prefcal/cpu/parallel.hpp"
#include "prefcal/fastmath.hpp"
#include "prefcal/philox.hpp"
#include "prefcal/pl.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PREFCAL_X86_AVX2 1
#include <immintrin.h>
#endif

namespace prefcal::cpu {


namespace {

using pl::Bits64;
using pl::BytesRef;
using pl::Strided;

constexpr int64_t kRowChunk = 2048;  // rows per chunk of the per-row kernels
constexpr int64_t kMaxSlabs = 64;     // reduction slabs: fixed for a given input, whatever the thread count

// Per-thread scratch of the row kernels.
struct Scratch {
  std::vector<double> inv;
  std::vector<uint8_t> seen;
  std::vector<int64_t> order;
  Scratch(int64_t m, int64_t n)
      : inv(static_cast<size_t>(std::max<int64_t>(m, 1))),
        seen(static_cast<size_t>(std::max<int64_t>(n, 1)), 0u),
        order(static_cast<size_t>(std::max<int64_t>(n, 1))) {}
  Strided<double> inv_view() { return {inv.data(), 1}; }
  BytesRef bits() { return BytesRef{seen.data()}; }
};

const uint8_t* mask_row(const PLRows& sh, int64_t b) {
  if (sh.mask == nullptr) return nullptr;
  return sh.global_mask ? sh.mask : sh.mask + b * sh.n;
}

// row(b, bits) for b in [lo, hi) with the register bit set when n <= 64, else the thread's memory one; stops
// at and returns the first row for which it returns false (kNoError when none).
template <class F>
int64_t for_rows(int64_t n, Scratch& sc, int64_t lo, int64_t hi, F&& row) {
  if (n <= 64) {
    Bits64 bits;
    for (int64_t b = lo; b < hi; ++b) {
      if (!row(b, bits)) return b;
    }
    return kNoError;
  }
  BytesRef bits = sc.bits();
  for (int64_t b = lo; b < hi; ++b) {
    if (!row(b, bits)) return b;
  }
  return kNoError;
}

// Slabs of a reduction whose partial result takes `bytes` per slab (at most ~256 MiB of partials in all).
int64_t slab_count(int64_t rows, int64_t bytes) {
  const int64_t by_memory = std::max<int64_t>(1, (int64_t(256) << 20) / std::max<int64_t>(bytes, 1));
  const int64_t by_rows = std::max<int64_t>(1, rows / 1024);
  return std::max<int64_t>(1, std::min({kMaxSlabs, by_memory, by_rows}));
}

int64_t min_of(const std::vector<int64_t>& v) { return v.empty() ? kNoError : *std::min_element(v.begin(), v.end()); }

// ------------------------------------------------------------------------------ log-likelihood, 16 rows at once
//
constexpr int kLanes = 16;  // rows per group of the lane kernels (one 512-bit vector of float32)

// Rows [lo, hi) of a chunk: with lanes_ok, groups of sixteen rows through group(first row), which returns the
// lanes it leaves; those, and the rows after the last whole group, through row(b, bits) (for_rows). Returns the
// first row that `row` rejects, or kNoError.
template <class F, class G>
int64_t for_lane_groups(bool lanes_ok, int64_t n, Scratch& sc, int64_t lo, int64_t hi, F&& row, G&& group) {
  int64_t start = lo;
  if (lanes_ok) {
    Bits64 bits;
    for (; start + kLanes <= hi; start += kLanes) {
      uint32_t rest = group(start);
      while (rest != 0) {
        const int64_t b = start + __builtin_ctz(rest);
        rest &= rest - 1;
        if (!row(b, bits)) return b;
      }
    }
  }
  return for_rows(n, sc, start, hi, row);
}

// The sampler's certified float32 keys (draw_lanes_f32_avx512, draw_lanes_f32_avx2): on by default; a test hook
// turns them off to compare the two paths.
std::atomic<bool> g_sample_f32{true};
std::atomic<int64_t> g_sample_f32_fallbacks{0};  // groups of draws (16 or 8) redone with the float64 keys
// The log-likelihood's explicit AVX-512 or AVX2 lanes (float32 scores, int32 / int64 rankings): on by default; a test
// hook turns them off to compare with the compiler-vectorised lanes.
std::atomic<bool> g_loglik_explicit{true};
// The temperature pass's lanes (temperature_lanes): on by default; a test hook turns them off to compare with
// the per-row code.
std::atomic<bool> g_temperature_lanes{true};
// The log-likelihood's lanes (loglik_lanes): on by default; a test hook turns them off to compare with the per-row
// code.
std::atomic<bool> g_loglik_lanes{true};
// The explicit SIMD paths may use at most: 2 AVX-512, 1 AVX2 + FMA, 0 neither (a test hook lowers it, so that a
// processor with AVX-512 tests the AVX2 paths too).
std::atomic<int> g_simd_cap{2};

// Moves the binary exponent of each lane's product into an integer (the product becomes its mantissa in
// [1, 2)): branch-free, so a product of a few bounded factors between two calls never under- or overflows.
__attribute__((always_inline)) inline void move_exponents(double* prod, int32_t* exps) {
  for (int l = 0; l < kLanes; ++l) {
    uint64_t bits;
    memcpy(&bits, &prod[l], sizeof bits);
    exps[l] += static_cast<int32_t>((bits >> 52) & 0x7FF) - 1023;
    bits = (bits & 0x800FFFFFFFFFFFFFull) | 0x3FF0000000000000ull;
    memcpy(&prod[l], &bits, sizeof bits);
  }
}

// pl::LogProduct::renormalise in each lane, branch-free: the product and exponent of the per-row code after
// every stage, so that the rows of loglik_lanes_top get its values bit for bit.
__attribute__((always_inline)) inline void renormalise_lanes(double* prod, int32_t* exps) {
  for (int l = 0; l < kLanes; ++l) {
    int32_t e;
    const double unit = pl::unit_mantissa(prod[l], e);
    const bool out = !pl::product_in_range(prod[l]);
    exps[l] += out ? e - 1023 : 0;
    prod[l] = out ? unit : prod[l];
  }
}

// Sixteen rows of per-row scores and rankings (full or top-k: -1 after the listed items) laid out [item][lane]:
// the scores S, the items by position R (0 at the padding), the available items (all without a mask) and
// their largest and smallest score (0 where none is), the items each row lists and how many (L), the item at
// the last position (the unlisted one where the row lists n - 1), and whether the row is bad (a non-finite
// score, an item out of range, repeated or not available, a listed item after the padding).
template <class T>
struct LaneRows {
  T S[32][kLanes];
  int32_t R[32][kLanes];
  T mx[kLanes], mn[kLanes];
  uint32_t avail[kLanes], seen[kLanes], bad[kLanes];
  int32_t last[kLanes], L[kLanes];
};

// Where the sixteen rows' scores and availability are: row l's scores at s + l * score_stride (0: one global
// model), its mask row at mask + l * mask_stride (0: one mask of all rows), or no mask.
struct LaneLayout {
  int64_t score_stride;
  const uint8_t* mask;
  int64_t mask_stride;
};

template <class T, class I>
__attribute__((always_inline)) inline void load_lanes(const T* s, const I* r, LaneLayout lay, int64_t n, int64_t m,
                                                      LaneRows<T>& x) {
  using C = T;
  auto& S = x.S;
  auto& R = x.R;
  auto& mx = x.mx;
  auto& mn = x.mn;
  auto& seen = x.seen;
  auto& bad = x.bad;
  const uint32_t all = n == 32 ? 0xFFFFFFFFu : (uint32_t(1) << n) - 1;
  for (int l = 0; l < kLanes; ++l) {
    x.avail[l] = all;
    mx[l] = -std::numeric_limits<C>::infinity();
    mn[l] = std::numeric_limits<C>::infinity();
    seen[l] = 0;
    bad[l] = 0;
  }
  if (lay.mask != nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      for (int l = 0; l < kLanes; ++l) {
        x.avail[l] &= ~(static_cast<uint32_t>(lay.mask[l * lay.mask_stride + i] == 0) << i);
      }
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int l = 0; l < kLanes; ++l) {
      const C v = s[l * lay.score_stride + i];
      const bool a = ((x.avail[l] >> i) & 1u) != 0;
      S[i][l] = v;
      mx[l] = a && v > mx[l] ? v : mx[l];
      mn[l] = a && v < mn[l] ? v : mn[l];
      bad[l] |= static_cast<uint32_t>(!(v - v == C(0)));  // NaN or inf
    }
  }
  for (int l = 0; l < kLanes; ++l) {
    mx[l] = x.avail[l] != 0 ? mx[l] : C(0);
    mn[l] = x.avail[l] != 0 ? mn[l] : C(0);
  }
  const int64_t listed = m < n ? m : n;  // positions that may hold items (-1 from the padding on)
  // the checks in the rankings' width: sixteen 32-bit lanes are one vector
  using V = typename std::conditional<sizeof(I) <= 4, int32_t, int64_t>::type;
  using UV = typename std::make_unsigned<V>::type;
  uint32_t ended[kLanes];  // 1 from the lane's first -1 on
  for (int l = 0; l < kLanes; ++l) {
    ended[l] = 0;
    x.L[l] = 0;
  }
  for (int64_t j = 0; j < listed; ++j) {
    for (int l = 0; l < kLanes; ++l) {
      const V v = static_cast<V>(r[l * m + j]);
      const bool ok = static_cast<UV>(v) < static_cast<UV>(n), pad = v == -1;
      const uint32_t bit = ok ? uint32_t(1) << (v & 31) : 0u;
      bad[l] |= static_cast<uint32_t>(!ok && !pad);
      bad[l] |= static_cast<uint32_t>(ended[l] != 0 && !pad);
      bad[l] |= static_cast<uint32_t>((seen[l] & bit) != 0);
      bad[l] |= static_cast<uint32_t>((bit & ~x.avail[l]) != 0);
      seen[l] |= bit;
      ended[l] |= static_cast<uint32_t>(pad);
      x.L[l] += static_cast<int32_t>(ended[l] == 0);
      R[j][l] = ok ? static_cast<int32_t>(v) : 0;
    }
  }
  for (int64_t j = listed; j < n; ++j) {
    for (int l = 0; l < kLanes; ++l) R[j][l] = 0;
  }
  for (int64_t j = listed; j < m; ++j) {
    for (int l = 0; l < kLanes; ++l) bad[l] |= static_cast<uint32_t>(r[l * m + j] != I(-1));
  }
  for (int l = 0; l < kLanes; ++l) {
    const uint32_t missing = all & ~seen[l];
    x.last[l] = (missing != 0 ? __builtin_ctz(missing | 0x80000000u) : R[n - 1][l]) & 31;
  }
}

// Each lane's bit where its row is bad: left to the per-row code.
inline uint32_t bad_lanes(const uint32_t* bad) {
  uint32_t out = 0;
  for (int l = 0; l < kLanes; ++l) out |= (bad[l] != 0 ? 1u : 0u) << l;
  return out;
}

// loglik_lanes for a group with top-k rows (some lane lists at most n - 2 items) or a mask, in pl::row_loglik's
// order: the suffix sums start from the worths of the unlisted items in item order (0 for those not available),
// the stages j < L add their item and the stages j < min(L, available - 1) count (factor 1 and no term
// elsewhere: exact), the product renormalised where the per-row code does: the per-row code's values (the
// full-ranking loop renormalises every two stages, a few ulp apart). The gradient as there, with 0 - w c at
// the unlisted items (0 at those not available).
template <bool Grad, class T>
__attribute__((always_inline)) inline uint32_t loglik_lanes_top(const LaneRows<T>& x, const T (&W)[32][kLanes],
                                                                int64_t n, T* ll, T* grad) {
  using C = T;
  const auto& S = x.S;
  const auto& R = x.R;
  C acc[kLanes];
  double lsum[kLanes], prod[kLanes];
  int32_t exps[kLanes], Lc[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    acc[l] = C(0);
    lsum[l] = 0.0;
    prod[l] = 1.0;
    exps[l] = 0;
    const int32_t last_counted = __builtin_popcount(x.avail[l]) - 1;  // choices among the available items
    Lc[l] = x.L[l] < last_counted ? x.L[l] : last_counted;
  }
  // Worths times 0 or 1 (exact), not a select of the load: GCC 12 turns `listed ? 0 : W[i][l]` into AVX2 masked
  // loads here, with the two halves' masks swapped (a miscompile caught by the tests).
  for (int64_t i = 0; i < n; ++i) {
    for (int l = 0; l < kLanes; ++l) acc[l] += W[i][l] * static_cast<C>((~x.seen[l] >> i) & 1u);
  }
  double inv[Grad ? 32 : 1][kLanes];  // 1 / D_j at the counted stages, else 0
  for (int64_t j = n - 1; j >= 0; --j) {
    for (int l = 0; l < kLanes; ++l) {
      const int32_t item = R[j][l];
      const bool add = j < x.L[l], count = j < Lc[l];
      acc[l] += W[item][l] * static_cast<C>(add);
      lsum[l] += static_cast<double>(S[item][l] - x.mx[l]) * static_cast<double>(count);
      prod[l] *= count ? static_cast<double>(acc[l]) : 1.0;
      if constexpr (Grad) inv[j][l] = count ? 1.0 / static_cast<double>(acc[l]) : 0.0;
    }
    renormalise_lanes(prod, exps);
  }
  for (int l = 0; l < kLanes; ++l) {
    const double value = lsum[l] - pl::product_log(0.0, exps[l], prod[l]);
    ll[l] = static_cast<T>(value);
  }
  const uint32_t rest = bad_lanes(x.bad);
  if constexpr (Grad) {
    double c[kLanes];
    C G[32][kLanes];  // by position
    for (int l = 0; l < kLanes; ++l) c[l] = 0.0;
    for (int64_t p = 0; p < n; ++p) {
      for (int l = 0; l < kLanes; ++l) {
        c[l] += inv[p][l];
        G[p][l] = static_cast<C>((p < Lc[l] ? 1.0 : 0.0) - static_cast<double>(W[R[p][l]][l]) * c[l]);
      }
    }
    for (int l = 0; l < kLanes; ++l) {
      if ((rest >> l) & 1u) continue;
      T* g = grad + l * n;
      for (int64_t i = 0; i < n; ++i) g[i] = static_cast<C>(0.0 - static_cast<double>(W[i][l]) * c[l]);
      for (int64_t p = 0; p < x.L[l]; ++p) g[R[p][l]] = G[p][l];
    }
  }
  return rest;
}

// The log-likelihood's common case: no mask, full rankings (every item listed, or all but one) of n <= 32 items,
// per-row scores or one global model's; a group with top-k rows or a mask goes on in loglik_lanes_top. Sixteen
// rows are laid out lane by lane ([item][lane]) so that every step (max, exp, the ranking checks, the backward
// suffix sums, the product of the normalisers, the final log) is one vector operation over the rows. The
// arithmetic is that of pl::row_loglik's fast path (same exp, same suffix order, same float64 product); a lane
// that is not this case (a bad item, a wide score range) is left to the general per-row code, which also words
// its error.
// With Grad, also each good row's gradient (n per row in grad; a bad row's is left alone), by the arithmetic of
// pl::row_loglik: g = [p < n - 1] - w c_p at the item of position p (the last: the last item, listed or not),
// c_p = sum_{j <= p, j < n - 1} 1 / D_j in float64.
template <bool Grad, class T, class I>
__attribute__((always_inline)) inline uint32_t loglik_lanes(const T* s, const I* r, LaneLayout lay, int64_t n,
                                                            int64_t m, T* ll, T* grad) {
  using C = T;
  LaneRows<T> x;
  load_lanes(s, r, lay, n, m, x);
  auto& S = x.S;
  auto& R = x.R;
  auto& mx = x.mx;
  auto& bad = x.bad;
  C W[32][kLanes];
  for (int l = 0; l < kLanes; ++l) {
    bad[l] |= static_cast<uint32_t>(static_cast<double>(mx[l]) - x.mn[l] > pl::Span<C>::value);
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int l = 0; l < kLanes; ++l) W[i][l] = fastmath::exp_neg(S[i][l] - mx[l]);
  }
  if (lay.mask != nullptr) {  // worth 0 where not available (times 0: see loglik_lanes_top)
    for (int64_t i = 0; i < n; ++i) {
      for (int l = 0; l < kLanes; ++l) W[i][l] *= static_cast<C>((x.avail[l] >> i) & 1u);
    }
    return loglik_lanes_top<Grad>(x, W, n, ll, grad);
  }
  bool full = true;  // every good lane lists n or n - 1 items
  for (int l = 0; l < kLanes; ++l) full &= x.L[l] >= n - 1 || bad[l] != 0;
  if (!full) return loglik_lanes_top<Grad>(x, W, n, ll, grad);
  // The last stage is not counted: it starts the suffix sums with the worth of the last item, listed or not.
  C acc[kLanes];
  double lsum[kLanes], prod[kLanes];
  int32_t exps[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    acc[l] = W[x.last[l]][l];
    lsum[l] = 0.0;
    prod[l] = 1.0;
    exps[l] = 0;
  }
  double inv[Grad ? 32 : 1][kLanes];  // 1 / D_j
  for (int64_t j = n - 2; j >= 0; --j) {
    for (int l = 0; l < kLanes; ++l) {
      const int32_t item = R[j][l];
      acc[l] += W[item][l];
      lsum[l] += static_cast<double>(S[item][l] - mx[l]);
      prod[l] *= static_cast<double>(acc[l]);
      if constexpr (Grad) inv[j][l] = 1.0 / static_cast<double>(acc[l]);
    }
    if ((j & 1) == 0) move_exponents(prod, exps);  // factors lie in [e^-300, 32]: every two, branch-free
  }
  for (int l = 0; l < kLanes; ++l) {
    const double value = lsum[l] - (static_cast<double>(exps[l]) * 0.6931471805599453 + fastmath::log_pos(prod[l]));
    ll[l] = static_cast<T>(value);
  }
  const uint32_t rest = bad_lanes(bad);
  if constexpr (Grad) {
    double c[kLanes];
    C G[32][kLanes];  // by position
    for (int l = 0; l < kLanes; ++l) c[l] = 0.0;
    for (int64_t p = 0; p < n - 1; ++p) {
      for (int l = 0; l < kLanes; ++l) {
        c[l] += inv[p][l];
        G[p][l] = static_cast<C>(1.0 - static_cast<double>(W[R[p][l]][l]) * c[l]);
      }
    }
    for (int l = 0; l < kLanes; ++l) G[n - 1][l] = static_cast<C>(-static_cast<double>(W[x.last[l]][l]) * c[l]);
    for (int l = 0; l < kLanes; ++l) {
      if ((rest >> l) & 1u) continue;
      T* g = grad + l * n;
      for (int64_t p = 0; p < n - 1; ++p) g[R[p][l]] = G[p][l];
      g[x.last[l]] = G[n - 1][l];
    }
  }
  return rest;
}

// Adds the moments of the good lanes (in lane order) to `out`; returns the bad lanes.
__attribute__((always_inline)) inline uint32_t add_lane_moments(const uint32_t* bad, double beta, const double* z,
                                                                const double* d1, const double* d2,
                                                                const double* prod, const int32_t* exps,
                                                                pl::Moments& out) {
  const uint32_t rest = bad_lanes(bad);
  for (int l = 0; l < kLanes; ++l) {
    if ((rest >> l) & 1u) continue;
    out.f += beta * z[l] - pl::product_log(0.0, exps[l], prod[l]);
    out.d1 += d1[l];
    out.d2 += d2[l];
  }
  return rest;
}

// temperature_lanes for a group with top-k rows or a mask (or one global model): pl::row_temperature's fast path
// in each lane, in its order (unlisted available worths in item order, then the stages j < L, the moments of
// the stages j < min(L, available - 1)), the product renormalised where it does: its values bit for bit. A
// lane's worth times 0 or 1 (see loglik_lanes_top); the stages' terms selected (a lane without a counted stage
// divides 0 by 0).
template <class T>
__attribute__((always_inline)) inline uint32_t temperature_lanes_top(const LaneRows<T>& x,
                                                                     const double (&D)[32][kLanes],
                                                                     const double (&E)[32][kLanes], int64_t n,
                                                                     double beta, pl::Moments& out) {
  double a0[kLanes], a1[kLanes], a2[kLanes], z[kLanes], d1[kLanes], d2[kLanes], prod[kLanes];
  int32_t exps[kLanes], Lc[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    a0[l] = a1[l] = a2[l] = z[l] = d1[l] = d2[l] = 0.0;
    prod[l] = 1.0;
    exps[l] = 0;
    const int32_t last_counted = __builtin_popcount(x.avail[l]) - 1;
    Lc[l] = x.L[l] < last_counted ? x.L[l] : last_counted;
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int l = 0; l < kLanes; ++l) {
      const double w = E[i][l] * static_cast<double>(((x.avail[l] & ~x.seen[l]) >> i) & 1u), d = D[i][l];
      a0[l] += w;
      a1[l] += w * d;
      a2[l] += w * d * d;
    }
  }
  for (int64_t j = n - 1; j >= 0; --j) {
    for (int l = 0; l < kLanes; ++l) {
      const int32_t item = x.R[j][l];
      const bool count = j < Lc[l];
      const double w = E[item][l] * static_cast<double>(j < x.L[l]), d = D[item][l];
      a0[l] += w;
      a1[l] += w * d;
      a2[l] += w * d * d;
      const double mean = a1[l] / a0[l], var = a2[l] / a0[l] - mean * mean;
      z[l] += count ? d : 0.0;
      d1[l] += count ? d - mean : 0.0;
      d2[l] -= count && var > 0.0 ? var : 0.0;
      prod[l] *= count ? a0[l] : 1.0;
    }
    renormalise_lanes(prod, exps);
  }
  return add_lane_moments(x.bad, beta, z, d1, d2, prod, exps, out);
}

// pl::row_temperature for sixteen rows of load_lanes' case: the moments of d = s - max s under the worths
// e = exp(beta d), accumulated from the last position back (the per-row code rescales by the running largest
// beta d instead; the same values up to rounding). A row where beta (max - min) > 300 (the worths would leave
// exp_neg's domain) is left to the per-row code. Adds the good rows' moments to `out`; returns the others.
template <class T, class I>
__attribute__((always_inline)) inline uint32_t temperature_lanes(const T* s, const I* r, LaneLayout lay, int64_t n,
                                                                 int64_t m, double beta, pl::Moments& out) {
  LaneRows<T> x;
  load_lanes(s, r, lay, n, m, x);
  double D[32][kLanes], E[32][kLanes];
  bool full = lay.mask == nullptr && lay.score_stride == n;  // the loop below: per-row scores, no mask
  for (int l = 0; l < kLanes; ++l) {
    x.bad[l] |= static_cast<uint32_t>(!(beta * (static_cast<double>(x.mx[l]) - x.mn[l]) <= 300.0));
    full &= x.L[l] >= n - 1 || x.bad[l] != 0;
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int l = 0; l < kLanes; ++l) {
      const double d = static_cast<double>(x.S[i][l]) - static_cast<double>(x.mx[l]);
      D[i][l] = d;
      E[i][l] = fastmath::exp_neg(beta * d);
    }
  }
  if (!full) return temperature_lanes_top(x, D, E, n, beta, out);
  double a0[kLanes], a1[kLanes], a2[kLanes], z[kLanes], d1[kLanes], d2[kLanes], prod[kLanes];
  int32_t exps[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const double d = D[x.last[l]][l], e = E[x.last[l]][l];
    a0[l] = e;
    a1[l] = e * d;
    a2[l] = e * d * d;
    z[l] = d1[l] = d2[l] = 0.0;
    prod[l] = 1.0;
    exps[l] = 0;
  }
  for (int64_t j = n - 2; j >= 0; --j) {
    for (int l = 0; l < kLanes; ++l) {
      const int32_t item = x.R[j][l];
      const double d = D[item][l], e = E[item][l];
      a0[l] += e;
      a1[l] += e * d;
      a2[l] += e * d * d;
      const double mean = a1[l] / a0[l], var = a2[l] / a0[l] - mean * mean;
      z[l] += d;
      d1[l] += d - mean;
      d2[l] -= var > 0.0 ? var : 0.0;
      prod[l] *= a0[l];
    }
    if ((j & 1) == 0) move_exponents(prod, exps);  // factors lie in [e^-300, 32]: every two, branch-free
  }
  return add_lane_moments(x.bad, beta, z, d1, d2, prod, exps, out);
}

constexpr int64_t kFitLanesMax = 128;  // the most items of the fit lanes (their table: 16 KiB)

// One fit pass over sixteen full rankings (no mask, every item listed, n <= kFitLanesMax; fit_lanes picks it
// for groups of full rankings only) per vector step: the worths are gathered [position][ranking], the suffix
// sums, their reciprocals, the prefix sums and the float64 product of the normalisers are vector operations
// over the rankings, and each ranking adds its denominators into its own column of `dl` ([item][lane]), so
// lanes never collide. Same arithmetic as pl::fit_row. Returns the lanes left to the per-row code: none (0),
// or all when n is out of range.
template <class I>
__attribute__((always_inline)) inline uint32_t fit_lanes_full(const I* r, int64_t n, const double* weights,
                                                              const double* w, const double* theta, double top,
                                                              bool want_ll, double* dl, double* ll_out) {
  // W is [position][lane] (vector operations over the lanes): the worths, then in place the reciprocals of
  // the suffix sums, then the weighted prefix sums of those (C); the items are read from the rankings again
  // where they are scattered (each lane in its own order), not kept.
  *ll_out = 0.0;
  if (n < 2 || n > kFitLanesMax) return 0xFFFFu;  // not here (the caller never asks): all to the per-row code
  double W[kFitLanesMax][kLanes];
  auto& C = W;
  auto item_at = [r, n](int l, int64_t j) {
    const uint64_t v = static_cast<uint64_t>(static_cast<int64_t>(r[l * n + j]));
    return v < static_cast<uint64_t>(n) ? static_cast<int64_t>(v) : int64_t(0);
  };
  double wf[kLanes];  // the lane's weight
  for (int l = 0; l < kLanes; ++l) wf[l] = weights == nullptr ? 1.0 : weights[l];
  for (int l = 0; l < kLanes; ++l) {
    for (int64_t j = 0; j < n; ++j) W[j][l] = w[item_at(l, j)];
  }
  // sum_{j < n-1} (theta[R_j] - top) of a full ranking: all of theta but its last item's.
  double theta_sum = 0.0;
  if (want_ll) {
    for (int64_t i = 0; i < n; ++i) theta_sum += theta[i];
    theta_sum -= static_cast<double>(n - 1) * top;
  }
  // Suffix sums into C (their reciprocals), then C becomes the weighted prefix sums of those reciprocals: the
  // denominator that a ranking adds to the item at position p is wf * sum_{j <= min(p, n - 2)} 1 / S_j.
  double acc[kLanes], c[kLanes], prod[kLanes];
  int32_t exps[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    acc[l] = W[n - 1][l];
    c[l] = 0.0;
    prod[l] = 1.0;
    exps[l] = 0;
  }
  for (int64_t j = n - 2; j >= 0; --j) {
    for (int l = 0; l < kLanes; ++l) {
      acc[l] += W[j][l];
      C[j][l] = 1.0 / acc[l];
    }
    if (want_ll) {
      for (int l = 0; l < kLanes; ++l) prod[l] *= acc[l];
      if ((j & 1) == 0) move_exponents(prod, exps);  // factors lie in [e^-300, 128]: every two
    }
  }
  for (int64_t p = 0; p < n - 1; ++p) {
    for (int l = 0; l < kLanes; ++l) {
      c[l] += C[p][l];
      C[p][l] = wf[l] * c[l];
    }
  }
  for (int l = 0; l < kLanes; ++l) C[n - 1][l] = C[n - 2][l];
  for (int l = 0; l < kLanes; ++l) {
    for (int64_t p = 0; p < n; ++p) dl[item_at(l, p) * kLanes + l] += C[p][l];
  }
  double ll = 0.0;
  if (want_ll) {
    for (int l = 0; l < kLanes; ++l) {
      const double lsum = theta_sum - theta[item_at(l, n - 1)];
      const double v = lsum - (static_cast<double>(exps[l]) * 0.6931471805599453 + fastmath::log_pos(prod[l]));
      ll += wf[l] != 0.0 ? wf[l] * v : 0.0;
    }
  }
  *ll_out = ll;
  return 0;
}

// One fit pass over sixteen rankings without a mask (m <= n <= kFitLanesMax; full, top-k or narrow) per vector
// step: the worths are gathered [position][ranking], the suffix sums, their reciprocals, the prefix sums and
// the float64 product of the normalisers are vector operations over the rankings (a lane's stages past its own
// length add 0 and multiply by 1), and each ranking adds its denominators into its own column of `dl`
// ([item][lane]), so lanes never collide; a top-k ranking's unlisted items (the sum of their worths is the
// last normaliser's start, their denominator the ranking's whole prefix sum) by a vector pass over the items
// with a 0/1 table of the unlisted ones. Same arithmetic as pl::fit_row (the unlisted worths added in item
// order; the product of the normalisers renormalised every two stages instead of when it leaves its range).
// Returns the lanes left to the per-row code: none (0), or all (0xFFFF) when n or m is out of range.
template <class I>
__attribute__((always_inline)) inline uint32_t fit_lanes_impl(const I* r, int64_t m, int64_t n, const double* weights,
                                                              const double* w, const double* theta, double top,
                                                              bool want_ll, double* dl, double* ll_out) {
  // W is [position][lane] (vector operations over the lanes): the worths, then in place the reciprocals of
  // the suffix sums, then the weighted prefix sums of those (C); the items are read from the rankings again
  // where they are scattered (each lane in its own order), not kept. U is [item][lane]: 1 where the item is
  // not listed in the lane's ranking, else 0.
  *ll_out = 0.0;
  if (n < 2 || n > kFitLanesMax || m < 1 || m > n) return 0xFFFFu;  // not here (the caller never asks)
  double W[kFitLanesMax][kLanes];
  double U[kFitLanesMax][kLanes];
  auto& C = W;
  auto item_at = [r, m, n](int l, int64_t j) {
    const uint64_t v = static_cast<uint64_t>(static_cast<int64_t>(r[l * m + j]));
    return v < static_cast<uint64_t>(n) ? static_cast<int64_t>(v) : int64_t(0);
  };
  // each lane's length L (its rankings are valid: the padding, if any, is a tail of -1) and counted stages
  // Lc = min(L, n - 1) as 0/1 per position; wf the lane's weight
  int64_t len[kLanes], top_len = 0;
  double lcf[kLanes], wf[kLanes];
  bool any_partial = false;
  for (int l = 0; l < kLanes; ++l) {
    int64_t L = m;  // valid rankings: a tail of -1, if any, after the listed items
    if (r[l * m + m - 1] == I(-1)) {
      L = 0;
      while (r[l * m + L] != I(-1)) ++L;
    }
    len[l] = L;
    top_len = L > top_len ? L : top_len;
    lcf[l] = static_cast<double>(L < n - 1 ? L : n - 1);
    wf[l] = weights == nullptr ? 1.0 : weights[l];
    any_partial |= L < n;
  }
  if (top_len == 0) return 0;  // no ranking lists an item: nothing to add
  // the worths of the lanes' items, times 0 past a lane's length (where item_at reads the padding as item 0;
  // a factor, not a select of the load: see loglik_lanes_top)
  for (int64_t j = 0; j < top_len; ++j) {
    for (int l = 0; l < kLanes; ++l) W[j][l] = w[item_at(l, j)] * (j < len[l] ? 1.0 : 0.0);
  }
  double acc[kLanes], c[kLanes], prod[kLanes];
  int32_t exps[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    acc[l] = 0.0;
    c[l] = 0.0;
    prod[l] = 1.0;
    exps[l] = 0;
  }
  if (any_partial) {
    // the unlisted worths, added in item order as pl::fit_row does (a listed item adds 0 * w: the same sum)
    for (int64_t i = 0; i < n; ++i) {
      for (int l = 0; l < kLanes; ++l) U[i][l] = 1.0;
    }
    for (int l = 0; l < kLanes; ++l) {
      for (int64_t j = 0; j < len[l]; ++j) U[item_at(l, j)][l] = 0.0;
    }
    for (int64_t i = 0; i < n; ++i) {
      for (int l = 0; l < kLanes; ++l) acc[l] += U[i][l] * w[i];
    }
  }
  // Suffix sums (their reciprocals into C, 0 past a lane's counted stages), then C becomes the weighted prefix
  // sums of those reciprocals: the denominator that a ranking adds to the item at position p is
  // wf * sum_{j <= min(p, Lc - 1)} 1 / S_j, and to each unlisted item the whole sum.
  // Stages below every lane's Lc count in all lanes (a full ranking's all but the last): no factor 0 / 1 there.
  double low = lcf[0];
  for (int l = 1; l < kLanes; ++l) low = lcf[l] < low ? lcf[l] : low;
  for (int64_t j = top_len - 1; j >= 0; --j) {
    const double jd = static_cast<double>(j);
    if (jd >= low) {
      double counted[kLanes];  // the stage counts in the lane: a factor 0 / 1
      for (int l = 0; l < kLanes; ++l) {
        acc[l] += W[j][l];  // 0 past the lane's length
        counted[l] = jd < lcf[l] ? 1.0 : 0.0;
        C[j][l] = counted[l] / acc[l];
      }
      if (want_ll) {
        for (int l = 0; l < kLanes; ++l) prod[l] *= counted[l] * acc[l] + (1.0 - counted[l]);
      }
    } else {
      for (int l = 0; l < kLanes; ++l) {
        acc[l] += W[j][l];
        C[j][l] = 1.0 / acc[l];
      }
      if (want_ll) {
        for (int l = 0; l < kLanes; ++l) prod[l] *= acc[l];
      }
    }
    if (want_ll && (j & 1) == 0) move_exponents(prod, exps);  // factors lie in [e^-300, 128]: every two
  }
  for (int64_t p = 0; p < top_len; ++p) {
    for (int l = 0; l < kLanes; ++l) {
      c[l] += C[p][l];
      C[p][l] = wf[l] * c[l];
    }
  }
  for (int l = 0; l < kLanes; ++l) {
    for (int64_t p = 0; p < len[l]; ++p) dl[item_at(l, p) * kLanes + l] += C[p][l];
  }
  if (any_partial) {
    double cw[kLanes];
    for (int l = 0; l < kLanes; ++l) cw[l] = wf[l] * c[l];
    for (int64_t i = 0; i < n; ++i) {
      for (int l = 0; l < kLanes; ++l) dl[i * kLanes + l] += U[i][l] * cw[l];
    }
  }
  double ll = 0.0;
  if (want_ll) {
    // sum_{j < n-1} (theta[R_j] - top) of a full ranking: all of theta but its last item's
    double theta_sum = 0.0;
    for (int64_t i = 0; i < n; ++i) theta_sum += theta[i];
    theta_sum -= static_cast<double>(n - 1) * top;
    for (int l = 0; l < kLanes; ++l) {
      if (wf[l] == 0.0 || lcf[l] <= 0.0) continue;
      double lsum = 0.0;  // a top-k ranking's: over its stages, last first (pl::fit_row's order)
      if (len[l] == n) {
        lsum = theta_sum - theta[item_at(l, n - 1)];
      } else {
        for (int64_t j = len[l] - 1; j >= 0; --j) lsum += theta[item_at(l, j)] - top;
      }
      const double v = lsum - (static_cast<double>(exps[l]) * 0.6931471805599453 + fastmath::log_pos(prod[l]));
      ll += wf[l] * v;
    }
  }
  *ll_out = ll;
  return 0;
}

PREFCAL_CLONES uint32_t fit_lanes_full_i32(const int32_t* r, int64_t n, const double* weights, const double* w,
                                           const double* theta, double top, bool want_ll, double* dl, double* ll) {
  return fit_lanes_full(r, n, weights, w, theta, top, want_ll, dl, ll);
}
PREFCAL_CLONES uint32_t fit_lanes_full_i64(const int64_t* r, int64_t n, const double* weights, const double* w,
                                           const double* theta, double top, bool want_ll, double* dl, double* ll) {
  return fit_lanes_full(r, n, weights, w, theta, top, want_ll, dl, ll);
}
PREFCAL_CLONES uint32_t fit_lanes_i32(const int32_t* r, int64_t m, int64_t n, const double* weights, const double* w,
                                      const double* theta, double top, bool want_ll, double* dl, double* ll) {
  return fit_lanes_impl(r, m, n, weights, w, theta, top, want_ll, dl, ll);
}
PREFCAL_CLONES uint32_t fit_lanes_i64(const int64_t* r, int64_t m, int64_t n, const double* weights, const double* w,
                                      const double* theta, double top, bool want_ll, double* dl, double* ll) {
  return fit_lanes_impl(r, m, n, weights, w, theta, top, want_ll, dl, ll);
}

// Whether the sixteen rankings (rows of m columns) are all full rankings of the n items: their last entry listed.
template <class I>
bool all_full(const I* r, int64_t m, int64_t n) {
  if (m != n) return false;
  for (int l = 0; l < kLanes; ++l) {
    if (r[l * m + m - 1] == I(-1)) return false;
  }
  return true;
}

// Sixteen rankings: all full (the common case) in fit_lanes_full, which GCC vectorises over the lanes; else in
// fit_lanes_impl (top-k and narrow rankings too; at n = 20 GCC left its stage loop scalar, and the full groups
// took 1.6x as long there).
uint32_t fit_lanes(const int32_t* r, int64_t m, int64_t n, const double* weights, const double* w, const double* theta,
                   double top, bool want_ll, double* dl, double* ll) {
  return all_full(r, m, n) ? fit_lanes_full_i32(r, n, weights, w, theta, top, want_ll, dl, ll)
                           : fit_lanes_i32(r, m, n, weights, w, theta, top, want_ll, dl, ll);
}
uint32_t fit_lanes(const int64_t* r, int64_t m, int64_t n, const double* weights, const double* w, const double* theta,
                   double top, bool want_ll, double* dl, double* ll) {
  return all_full(r, m, n) ? fit_lanes_full_i64(r, n, weights, w, theta, top, want_ll, dl, ll)
                           : fit_lanes_i64(r, m, n, weights, w, theta, top, want_ll, dl, ll);
}

// The temperature lanes for each scores / rankings type, compiled for AVX-512, AVX2 and the baseline.
#define PREFCAL_TEMP_LANES(T, I)                                                                         \
  PREFCAL_CLONES uint32_t temp_lanes(const T* s, const I* r, LaneLayout lay, int64_t n, int64_t m, double beta, \
                                     pl::Moments& out) {                                                        \
    return temperature_lanes(s, r, lay, n, m, beta, out);                                                       \
  }
PREFCAL_TEMP_LANES(float, int32_t)
PREFCAL_TEMP_LANES(float, int64_t)
PREFCAL_TEMP_LANES(double, int32_t)
PREFCAL_TEMP_LANES(double, int64_t)
#undef PREFCAL_TEMP_LANES

// The log-likelihood lanes for each scores / rankings type, compiled for AVX-512, AVX2 and the baseline.
#define PREFCAL_LOGLIK_LANES(NAME, T, I)                                                                       \
  PREFCAL_CLONES uint32_t NAME(const T* s, const I* r, LaneLayout lay, int64_t n, int64_t m, T* ll, T* grad) { \
    return grad == nullptr ? loglik_lanes<false>(s, r, lay, n, m, ll, grad)                                    \
                           : loglik_lanes<true>(s, r, lay, n, m, ll, grad);                                    \
  }
PREFCAL_LOGLIK_LANES(loglik_lanes_f32_i32, float, int32_t)
PREFCAL_LOGLIK_LANES(loglik_lanes_f32_i64, float, int64_t)
PREFCAL_LOGLIK_LANES(loglik_lanes_f64_i32, double, int32_t)
PREFCAL_LOGLIK_LANES(loglik_lanes_f64_i64, double, int64_t)
#undef PREFCAL_LOGLIK_LANES
#if defined(PREFCAL_X86_AVX2)
// What this processor has, read once; the explicit paths ask through the functions below, which also honour
// the test hook's cap (g_simd_cap).
struct CpuFeatures {
  bool avx512f = __builtin_cpu_supports("avx512f"), avx512cd = __builtin_cpu_supports("avx512cd");
  bool avx2 = __builtin_cpu_supports("avx2"), fma = __builtin_cpu_supports("fma");
};

const CpuFeatures& cpu_features() {
  static const CpuFeatures f;
  return f;
}

bool simd_allowed(int level) { return g_simd_cap.load(std::memory_order_relaxed) >= level; }

bool cpu_avx512() { return cpu_features().avx512f && simd_allowed(2); }

bool cpu_avx512_cd() { return cpu_features().avx512f && cpu_features().avx512cd && simd_allowed(2); }

bool cpu_avx2_fma() { return cpu_features().avx2 && cpu_features().fma && simd_allowed(1); }

// 0, 1, .., 15: each lane's index.
__attribute__((target("avx512f"))) inline __m512i lane_index() {
  return _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
}

// exp_neg(float) of fastmath.hpp for 16 lanes, operation for operation (x in [-80, 0] here: no clamping needed
// beyond the span check, kept for garbage lanes).
__attribute__((target("avx512f"))) inline __m512 exp_neg16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_setzero_ps());
  const __m512 k = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504f), _mm512_set1_ps(12582912.0f)),
                                 _mm512_set1_ps(12582912.0f));
  const __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.42860677e-06f),
                                    _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145752f), x));
  __m512 p = _mm512_set1_ps(1.98412698e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.38888889e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.33333333e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.16666667e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66666667e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512i scale = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(scale));
}

// The upper eight lanes of x (AVX-512F only: no AVX512DQ extract).
__attribute__((target("avx512f"))) inline __m256 upper8(__m512 x) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
}

// The sixteen lanes lo, hi (AVX-512F only: no AVX512DQ insert).
__attribute__((target("avx512f"))) inline __m512 join8(__m256 lo, __m256 hi) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}

// 16 x 16 transpose of rows[l][j] into cols[j][l] (j < n).
__attribute__((target("avx512f"))) inline void transpose16(const float (*rows)[kLanes], int64_t n,
                                                            float (*cols)[kLanes]) {
  __m512 a[16], b[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm512_load_ps(rows[i]);
  for (int i = 0; i < 16; i += 2) {
    b[i] = _mm512_unpacklo_ps(a[i], a[i + 1]);
    b[i + 1] = _mm512_unpackhi_ps(a[i], a[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    a[i] = _mm512_shuffle_ps(b[i], b[i + 2], 0x44);
    a[i + 1] = _mm512_shuffle_ps(b[i], b[i + 2], 0xEE);
    a[i + 2] = _mm512_shuffle_ps(b[i + 1], b[i + 3], 0x44);
    a[i + 3] = _mm512_shuffle_ps(b[i + 1], b[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    b[i] = _mm512_shuffle_f32x4(a[i], a[i + 4], 0x88);
    b[i + 4] = _mm512_shuffle_f32x4(a[i], a[i + 4], 0xDD);
    b[i + 8] = _mm512_shuffle_f32x4(a[i + 8], a[i + 12], 0x88);
    b[i + 12] = _mm512_shuffle_f32x4(a[i + 8], a[i + 12], 0xDD);
  }
  // b[p + 4 q]: 128-bit block g holds rows 4 g .. 4 g + 3 of columns 4 k + p for the two k that q picks; one
  // more pair of block shuffles puts column t in a[t].
  for (int i = 0; i < 8; ++i) {
    a[i] = _mm512_shuffle_f32x4(b[i], b[i + 8], 0x88);
    a[i + 8] = _mm512_shuffle_f32x4(b[i], b[i + 8], 0xDD);
  }
  for (int64_t t = 0; t < n; ++t) _mm512_store_ps(cols[t], a[t]);
}

// loglik_lanes for float32 scores, int32 / int64 full rankings (m == n <= 16), with AVX-512: each row is loaded as one
// vector, checked there (range, repeats by vpconflictd, finite scores) and permuted into position order
// (vpermps); a 16 x 16 transpose then gives the [position][row] layout, where the max, the exps, the suffix
// sums and the float64 product of the normalisers are vector operations over the sixteen rows, with the
// arithmetic of loglik_lanes. Rows whose last position is -1 make the whole group return `false` (the caller
// then runs loglik_lanes); otherwise the returned lanes are those left to the per-row code.
// With Grad, also the gradient of each good row (grad, n per row), with the arithmetic of pl::row_loglik's
// gradient: g = [p < n - 1] - w c_p, c_p = sum_{j <= p, j < n - 1} 1 / D_j in float64, computed by position
// and transposed back; each row's values are then stored at its items (a bad row's gradient is left alone).
template <bool Grad, class I>
__attribute__((target("avx512f,avx512cd"))) bool loglik_lanes_f32_avx512(const float* s, const I* r, int64_t n,
                                                                         float* ll, float* grad, uint32_t& rest) {
  const __mmask16 nm = static_cast<__mmask16>((1u << n) - 1u), last = static_cast<__mmask16>(1u << (n - 1));
  const __m512i nv = _mm512_set1_epi32(static_cast<int>(n)), minus1 = _mm512_set1_epi32(-1);
  const __m512i sentinel = _mm512_add_epi32(lane_index(), _mm512_set1_epi32(64));
  const __m512i exp_field = _mm512_set1_epi32(0x7F800000);
  alignas(64) float rows[kLanes][kLanes];
  alignas(64) int32_t items[Grad ? kLanes : 1][kLanes];  // each row's items by position
  uint32_t bad = 0;
  for (int l = 0; l < kLanes; ++l) {
    const __m512 sv = _mm512_maskz_loadu_ps(nm, s + l * n);
    __m512i rv;
    __mmask16 in, pad;  // positions holding an item (0 <= v < n); the last position holding -1
    if constexpr (sizeof(I) == 4) {
      rv = _mm512_maskz_loadu_epi32(nm, r + l * n);
      in = _mm512_mask_cmplt_epu32_mask(nm, rv, nv);
      pad = _mm512_mask_cmpeq_epi32_mask(last, rv, minus1);
    } else {  // checked in 64 bits, then narrowed (an out-of-range value never passes as an item)
      const __mmask8 lo = static_cast<__mmask8>(nm), hi = static_cast<__mmask8>(nm >> 8);
      const __m512i r0 = _mm512_maskz_loadu_epi64(lo, r + l * n), r1 = _mm512_maskz_loadu_epi64(hi, r + l * n + 8);
      const __m512i n64 = _mm512_set1_epi64(n), m64 = _mm512_set1_epi64(-1);
      in = static_cast<__mmask16>(_mm512_mask_cmplt_epu64_mask(lo, r0, n64) |
                                  (static_cast<unsigned>(_mm512_mask_cmplt_epu64_mask(hi, r1, n64)) << 8));
      pad = static_cast<__mmask16>((_mm512_cmpeq_epi64_mask(r0, m64) |
                                    (static_cast<unsigned>(_mm512_cmpeq_epi64_mask(r1, m64)) << 8)) & last);
      rv = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(r0)), _mm512_cvtepi64_epi32(r1), 1);
    }
    if (pad != 0) return false;
    const __m512i keyed = _mm512_mask_mov_epi32(sentinel, in, rv);  // out-of-range positions: distinct values
    const __m512i earlier = _mm512_conflict_epi32(keyed);  // per position: the earlier positions equal to it
    const __mmask16 repeat = _mm512_test_epi32_mask(earlier, earlier);
    const __mmask16 nonfinite =
        _mm512_mask_cmpeq_epi32_mask(nm, _mm512_and_si512(_mm512_castps_si512(sv), exp_field), exp_field);
    bad |= static_cast<uint32_t>(in != nm || (repeat | nonfinite) != 0) << l;
    _mm512_store_ps(rows[l], _mm512_permutexvar_ps(rv, sv));
    if constexpr (Grad) _mm512_store_si512(items[l], rv);
  }
  alignas(64) float P[kLanes][kLanes];  // [position][row]: the score of the item at each position
  transpose16(rows, n, P);
  __m512 mx = _mm512_load_ps(P[0]), mn = mx;
  for (int64_t j = 1; j < n; ++j) {
    const __m512 x = _mm512_load_ps(P[j]);
    mx = _mm512_max_ps(mx, x);
    mn = _mm512_min_ps(mn, x);
  }
  const __m512d span = _mm512_set1_pd(pl::Span<float>::value);
  const __m256 mx_hi = upper8(mx), mn_hi = upper8(mn);
  const __mmask8 wide0 = _mm512_cmp_pd_mask(
      _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(mx)), _mm512_cvtps_pd(_mm512_castps512_ps256(mn))), span,
      _CMP_GT_OQ);
  const __mmask8 wide1 =
      _mm512_cmp_pd_mask(_mm512_sub_pd(_mm512_cvtps_pd(mx_hi), _mm512_cvtps_pd(mn_hi)), span, _CMP_GT_OQ);
  bad |= static_cast<uint32_t>(wide0) | (static_cast<uint32_t>(wide1) << 8);
  // The last position starts the suffix sums; positions n - 2 .. 0 each add a stage.
  __m512 W[Grad ? kLanes : 1];       // the worths by position
  __m512d inv[Grad ? kLanes : 1][2];  // 1 / D_j, lanes 0-7 and 8-15
  __m512 acc = exp_neg16(_mm512_sub_ps(_mm512_load_ps(P[n - 1]), mx));
  if constexpr (Grad) W[n - 1] = acc;
  __m512d lsum0 = _mm512_setzero_pd(), lsum1 = lsum0, prod0 = _mm512_set1_pd(1.0), prod1 = prod0;
  __m512d ex0 = _mm512_setzero_pd(), ex1 = ex0;
  for (int64_t j = n - 2; j >= 0; --j) {
    const __m512 d = _mm512_sub_ps(_mm512_load_ps(P[j]), mx);
    const __m512 w = exp_neg16(d);
    acc = _mm512_add_ps(acc, w);
    if constexpr (Grad) {
      W[j] = w;
      inv[j][0] = _mm512_div_pd(_mm512_set1_pd(1.0), _mm512_cvtps_pd(_mm512_castps512_ps256(acc)));
      inv[j][1] = _mm512_div_pd(_mm512_set1_pd(1.0), _mm512_cvtps_pd(upper8(acc)));
    }
    lsum0 = _mm512_add_pd(lsum0, _mm512_cvtps_pd(_mm512_castps512_ps256(d)));
    lsum1 = _mm512_add_pd(lsum1, _mm512_cvtps_pd(upper8(d)));
    prod0 = _mm512_mul_pd(prod0, _mm512_cvtps_pd(_mm512_castps512_ps256(acc)));
    prod1 = _mm512_mul_pd(prod1, _mm512_cvtps_pd(upper8(acc)));
    if ((j & 1) == 0) {  // move the exponents out: factors lie in [e^-80, 16], every two (as move_exponents)
      ex0 = _mm512_add_pd(ex0, _mm512_getexp_pd(prod0));
      ex1 = _mm512_add_pd(ex1, _mm512_getexp_pd(prod1));
      prod0 = _mm512_getmant_pd(prod0, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
      prod1 = _mm512_getmant_pd(prod1, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
    }
  }
  alignas(64) double lsum[kLanes], prod[kLanes], ex[kLanes];
  _mm512_store_pd(lsum, lsum0);
  _mm512_store_pd(lsum + 8, lsum1);
  _mm512_store_pd(prod, prod0);
  _mm512_store_pd(prod + 8, prod1);
  _mm512_store_pd(ex, ex0);
  _mm512_store_pd(ex + 8, ex1);
  for (int l = 0; l < kLanes; ++l) {
    ll[l] = static_cast<float>(lsum[l] - (ex[l] * 0.6931471805599453 + fastmath::log_pos(prod[l])));
  }
  if constexpr (Grad) {
    alignas(64) float G[kLanes][kLanes];  // [position][row]; positions n .. 15 unused
    __m512d c0 = _mm512_setzero_pd(), c1 = c0;
    for (int64_t p = 0; p < n; ++p) {
      const __m512d one = _mm512_set1_pd(p < n - 1 ? 1.0 : 0.0);
      if (p < n - 1) {
        c0 = _mm512_add_pd(c0, inv[p][0]);
        c1 = _mm512_add_pd(c1, inv[p][1]);
      }
      const __m512d w0 = _mm512_cvtps_pd(_mm512_castps512_ps256(W[p])), w1 = _mm512_cvtps_pd(upper8(W[p]));
      const __m256 g0 = _mm512_cvtpd_ps(_mm512_sub_pd(one, _mm512_mul_pd(w0, c0)));
      const __m256 g1 = _mm512_cvtpd_ps(_mm512_sub_pd(one, _mm512_mul_pd(w1, c1)));
      _mm512_store_ps(G[p], join8(g0, g1));
    }
    for (int64_t p = n; p < kLanes; ++p) _mm512_store_ps(G[p], _mm512_setzero_ps());
    transpose16(G, kLanes, rows);  // rows[l][p]: row l's gradient by position
    for (int l = 0; l < kLanes; ++l) {
      if ((bad >> l) & 1u) continue;
      float* g = grad + l * n;
      for (int64_t p = 0; p < n; ++p) g[items[l][p]] = rows[l][p];
    }
  }
  rest = bad;
  return true;
}

// ------------------------------------------------------------------------------ the same with AVX2 and FMA
//
// loglik_lanes_f32_avx512's method for processors without AVX-512 (eight lanes per vector, each group of
// sixteen rows as two halves): the rows are loaded with masked loads, checked (range and repeats together:
// the positions' bits 1 << item, which are zero out of [0, 32), cover 0 .. n - 1 exactly when the row is a
// permutation), permuted into position order by two vpermps and a blend, and transposed by 8 x 8 blocks; the
// arithmetic is loglik_lanes_f32_avx512's, operation for operation (the same FMAs, the exponents of the
// products moved by bit operations: the values of getexp / getmant). Both should give the same numbers; that
// has not been checked on one machine (the AVX2 path was written and tested on an AMD Zen 2 without AVX-512).

__attribute__((target("avx2,fma"))) inline __m256 exp_neg8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_setzero_ps());
  const __m256 k = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504f), _mm256_set1_ps(12582912.0f)),
                                 _mm256_set1_ps(12582912.0f));
  const __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.42860677e-06f),
                                    _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693145752f), x));
  __m256 p = _mm256_set1_ps(1.98412698e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.38888889e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.33333333e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.16666667e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.66666667e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

// rows[r0 + i][c0 + j] -> cols[c0 + j][r0 + i] for an 8 x 8 block (16-wide arrays).
__attribute__((target("avx2"))) inline void transpose8(const float (*rows)[kLanes], float (*cols)[kLanes], int r0,
                                                       int c0) {
  __m256 a[8], b[8];
  for (int i = 0; i < 8; ++i) a[i] = _mm256_load_ps(rows[r0 + i] + c0);
  for (int i = 0; i < 8; i += 2) {
    b[i] = _mm256_unpacklo_ps(a[i], a[i + 1]);
    b[i + 1] = _mm256_unpackhi_ps(a[i], a[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    a[i] = _mm256_shuffle_ps(b[i], b[i + 2], 0x44);
    a[i + 1] = _mm256_shuffle_ps(b[i], b[i + 2], 0xEE);
    a[i + 2] = _mm256_shuffle_ps(b[i + 1], b[i + 3], 0x44);
    a[i + 3] = _mm256_shuffle_ps(b[i + 1], b[i + 3], 0xEE);
  }
  // a[4 h + c]: rows 4 h .. 4 h + 3 of columns c and c + 4 (128-bit halves)
  for (int c = 0; c < 4; ++c) {
    _mm256_store_ps(cols[c0 + c] + r0, _mm256_permute2f128_ps(a[c], a[4 + c], 0x20));
    _mm256_store_ps(cols[c0 + c + 4] + r0, _mm256_permute2f128_ps(a[c], a[4 + c], 0x31));
  }
}

// cols[j][i] = rows[i][j] for i < ni, j < nj, by 8 x 8 blocks (rounded up: the arrays are 16 x 16).
__attribute__((target("avx2"))) inline void transpose16_avx2(const float (*rows)[kLanes], int64_t ni, int64_t nj,
                                                             float (*cols)[kLanes]) {
  for (int r0 = 0; r0 < ni; r0 += 8) {
    for (int c0 = 0; c0 < nj; c0 += 8) transpose8(rows, cols, r0, c0);
  }
}

// The low 32 bits of the 64-bit lanes of a (lanes 0-3) and b (lanes 4-7).
__attribute__((target("avx2"))) inline __m256i narrow8(__m256i a, __m256i b) {
  const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  return _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(a, pick), _mm256_permutevar8x32_epi32(b, pick), 0x20);
}

// The scores of items v (by position) from a row's scores s0 (items 0-7) and s1 (items 8-15): s0[v] where bit 3
// of v is clear, s1[v - 8] where it is set.
__attribute__((target("avx2"))) inline __m256 by_position8(__m256 s0, __m256 s1, __m256i v) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(s0, v), _mm256_permutevar8x32_ps(s1, v),
                          _mm256_castsi256_ps(_mm256_slli_epi32(v, 28)));
}

// The float64 values of the lower / upper four lanes.
__attribute__((target("avx2"))) inline __m256d lo4(__m256 x) { return _mm256_cvtps_pd(_mm256_castps256_ps128(x)); }
__attribute__((target("avx2"))) inline __m256d hi4(__m256 x) { return _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)); }

// The int32 / int64 items at eight positions from p (lanes of `live`; the others read as 0), as int32, and `in`:
// whether each is in [0, n) and live.
template <class I>
__attribute__((target("avx2"))) inline __m256i load_items8(const I* p, __m256i live, int64_t n, __m256i& in) {
  const __m256i nv = _mm256_set1_epi32(static_cast<int>(n));
  if constexpr (sizeof(I) == 4) {
    const __m256i v = _mm256_maskload_epi32(reinterpret_cast<const int*>(p), live);
    in = _mm256_and_si256(live, _mm256_and_si256(_mm256_cmpgt_epi32(nv, v),
                                                 _mm256_cmpgt_epi32(v, _mm256_set1_epi32(-1))));
    return v;
  } else {  // checked in 64 bits, then narrowed (an out-of-range value never passes as an item)
    const __m256i live0 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(live));
    const __m256i live1 = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(live, 1));
    const auto* q = reinterpret_cast<const long long*>(p);
    const __m256i v0 = _mm256_maskload_epi64(q, live0), v1 = _mm256_maskload_epi64(q + 4, live1);
    const __m256i n64 = _mm256_set1_epi64x(n), m64 = _mm256_set1_epi64x(-1);
    const __m256i in0 = _mm256_and_si256(_mm256_cmpgt_epi64(n64, v0), _mm256_cmpgt_epi64(v0, m64));
    const __m256i in1 = _mm256_and_si256(_mm256_cmpgt_epi64(n64, v1), _mm256_cmpgt_epi64(v1, m64));
    in = _mm256_and_si256(live, narrow8(in0, in1));
    return narrow8(v0, v1);
  }
}

// The OR of the eight 32-bit lanes.
__attribute__((target("avx2"))) inline uint32_t or_lanes(__m256i x) {
  x = _mm256_or_si256(x, _mm256_permute2x128_si256(x, x, 1));
  x = _mm256_or_si256(x, _mm256_shuffle_epi32(x, 0x4E));
  x = _mm256_or_si256(x, _mm256_shuffle_epi32(x, 0xB1));
  return static_cast<uint32_t>(_mm256_cvtsi256_si32(x));
}

// exps += the unbiased binary exponents of four positive normal doubles; prod = their mantissas in [1, 2)
// (getexp / getmant NORM_1_2 of AVX-512, by bit operations).
__attribute__((target("avx2"))) inline void move_exponents4(__m256d& prod, __m256d& exps) {
  const __m256i bits = _mm256_castpd_si256(prod);
  const __m256i field = _mm256_or_si256(_mm256_srli_epi64(bits, 52), _mm256_set1_epi64x(0x4330000000000000ll));
  exps = _mm256_add_pd(exps, _mm256_sub_pd(_mm256_castsi256_pd(field), _mm256_set1_pd(4503599627371519.0)));
  prod = _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFll)),
                                             _mm256_set1_epi64x(0x3FF0000000000000ll)));
}

template <bool Grad, class I>
__attribute__((target("avx2,fma"))) bool loglik_lanes_f32_avx2(const float* s, const I* r, int64_t n, float* ll,
                                                                float* grad, uint32_t& rest) {
  const __m256i pos = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i nv = _mm256_set1_epi32(static_cast<int>(n));
  const __m256i live0 = _mm256_cmpgt_epi32(nv, pos);
  const __m256i live1 = _mm256_cmpgt_epi32(nv, _mm256_add_epi32(pos, _mm256_set1_epi32(8)));
  const __m256i exp_field = _mm256_set1_epi32(0x7F800000), one = _mm256_set1_epi32(1);
  const uint32_t full = (uint32_t(1) << n) - 1u;
  const int64_t hi = n > 8 ? 1 : 0;  // whether positions 8 .. 15 are used
  alignas(32) float rows[kLanes][kLanes];
  alignas(32) int32_t items[Grad ? kLanes : 1][kLanes];  // each row's items by position
  uint32_t bad = 0;
  for (int l = 0; l < kLanes; ++l) {
    const float* sr = s + l * n;
    const I* rr = r + l * n;
    const __m256 s0 = _mm256_maskload_ps(sr, live0);
    const __m256 s1 = hi ? _mm256_maskload_ps(sr + 8, live1) : _mm256_setzero_ps();
    __m256i in0, in1 = _mm256_setzero_si256();
    const __m256i r0 = load_items8(rr, live0, n, in0);
    const __m256i r1 = hi ? load_items8(rr + 8, live1, n, in1) : _mm256_setzero_si256();
    if (rr[n - 1] == I(-1)) return false;  // a top-(n-1) row: the compiler-vectorised lanes take the group
    // each position's bit, zero where out of range (vpsllvd gives zero for counts beyond 31)
    const __m256i b0 = _mm256_and_si256(in0, _mm256_sllv_epi32(one, r0));
    const __m256i b1 = _mm256_and_si256(in1, _mm256_sllv_epi32(one, r1));
    const __m256 nonfinite = _mm256_castsi256_ps(_mm256_or_si256(
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(s0), exp_field), exp_field),
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(s1), exp_field), exp_field)));
    bad |= static_cast<uint32_t>(or_lanes(_mm256_or_si256(b0, b1)) != full || _mm256_movemask_ps(nonfinite) != 0)
           << l;
    _mm256_store_ps(rows[l], by_position8(s0, s1, r0));
    if (hi) _mm256_store_ps(rows[l] + 8, by_position8(s0, s1, r1));
    if constexpr (Grad) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(items[l]), r0);
      _mm256_store_si256(reinterpret_cast<__m256i*>(items[l] + 8), r1);
    }
  }
  alignas(32) float P[kLanes][kLanes];  // [position][row]: the score of the item at each position
  transpose16_avx2(rows, kLanes, n, P);
  // Rows 0-7 (h = 0) and 8-15 (h = 1), each as loglik_lanes_f32_avx512 computes its sixteen lanes.
  for (int h = 0; h < 2; ++h) {
    const int o = 8 * h;
    __m256 mx = _mm256_load_ps(P[0] + o), mn = mx;
    for (int64_t j = 1; j < n; ++j) {
      const __m256 x = _mm256_load_ps(P[j] + o);
      mx = _mm256_max_ps(mx, x);
      mn = _mm256_min_ps(mn, x);
    }
    const __m256d span = _mm256_set1_pd(pl::Span<float>::value);
    const int wide0 = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_sub_pd(lo4(mx), lo4(mn)), span, _CMP_GT_OQ));
    const int wide1 = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_sub_pd(hi4(mx), hi4(mn)), span, _CMP_GT_OQ));
    bad |= static_cast<uint32_t>(wide0 | (wide1 << 4)) << o;
    __m256 W[Grad ? kLanes : 1];       // the worths by position
    __m256d inv[Grad ? kLanes : 1][2];  // 1 / D_j, lanes 0-3 and 4-7
    __m256 acc = exp_neg8(_mm256_sub_ps(_mm256_load_ps(P[n - 1] + o), mx));
    if constexpr (Grad) W[n - 1] = acc;
    __m256d lsum0 = _mm256_setzero_pd(), lsum1 = lsum0, prod0 = _mm256_set1_pd(1.0), prod1 = prod0;
    __m256d ex0 = _mm256_setzero_pd(), ex1 = ex0;
    for (int64_t j = n - 2; j >= 0; --j) {
      const __m256 d = _mm256_sub_ps(_mm256_load_ps(P[j] + o), mx);
      const __m256 w = exp_neg8(d);
      acc = _mm256_add_ps(acc, w);
      if constexpr (Grad) {
        W[j] = w;
        inv[j][0] = _mm256_div_pd(_mm256_set1_pd(1.0), lo4(acc));
        inv[j][1] = _mm256_div_pd(_mm256_set1_pd(1.0), hi4(acc));
      }
      lsum0 = _mm256_add_pd(lsum0, lo4(d));
      lsum1 = _mm256_add_pd(lsum1, hi4(d));
      prod0 = _mm256_mul_pd(prod0, lo4(acc));
      prod1 = _mm256_mul_pd(prod1, hi4(acc));
      if ((j & 1) == 0) {  // factors lie in [e^-80, 16]: every two, as move_exponents
        move_exponents4(prod0, ex0);
        move_exponents4(prod1, ex1);
      }
    }
    alignas(32) double lsum[8], prod[8], ex[8];
    _mm256_store_pd(lsum, lsum0);
    _mm256_store_pd(lsum + 4, lsum1);
    _mm256_store_pd(prod, prod0);
    _mm256_store_pd(prod + 4, prod1);
    _mm256_store_pd(ex, ex0);
    _mm256_store_pd(ex + 4, ex1);
    for (int l = 0; l < 8; ++l) {
      ll[o + l] = static_cast<float>(lsum[l] - (ex[l] * 0.6931471805599453 + fastmath::log_pos(prod[l])));
    }
    if constexpr (Grad) {
      __m256d c0 = _mm256_setzero_pd(), c1 = c0;
      for (int64_t p = 0; p < n; ++p) {
        const __m256d first = _mm256_set1_pd(p < n - 1 ? 1.0 : 0.0);
        if (p < n - 1) {
          c0 = _mm256_add_pd(c0, inv[p][0]);
          c1 = _mm256_add_pd(c1, inv[p][1]);
        }
        const __m128 g0 = _mm256_cvtpd_ps(_mm256_sub_pd(first, _mm256_mul_pd(lo4(W[p]), c0)));
        const __m128 g1 = _mm256_cvtpd_ps(_mm256_sub_pd(first, _mm256_mul_pd(hi4(W[p]), c1)));
        _mm256_store_ps(P[p] + o, _mm256_set_m128(g1, g0));  // P[p] is read no more: the gradient by position
      }
    }
  }
  if constexpr (Grad) {
    for (int64_t p = n; p < (n + 7) / 8 * 8; ++p) {  // the block's positions past n: read by the transpose
      _mm256_store_ps(P[p], _mm256_setzero_ps());
      _mm256_store_ps(P[p] + 8, _mm256_setzero_ps());
    }
    transpose16_avx2(P, n, kLanes, rows);  // rows[l][p]: row l's gradient by position
    for (int l = 0; l < kLanes; ++l) {
      if ((bad >> l) & 1u) continue;
      float* g = grad + l * n;
      for (int64_t p = 0; p < n; ++p) g[items[l][p]] = rows[l][p];
    }
  }
  rest = bad;
  return true;
}

#endif

// float32 scores: the explicit AVX-512 or AVX2 lanes where they apply, else the compiler-vectorised ones. With
// grad != nullptr, also the gradients.
template <class I>
uint32_t f32_lanes(const float* s, const I* r, LaneLayout lay, int64_t n, int64_t m, float* ll, float* grad,
                   uint32_t (*vectorised)(const float*, const I*, LaneLayout, int64_t, int64_t, float*, float*)) {
#if defined(PREFCAL_X86_AVX2)
  uint32_t rest = 0;
  if (lay.mask == nullptr && lay.score_stride == n && m == n && n <= 16 &&
      g_loglik_explicit.load(std::memory_order_relaxed)) {
    if (cpu_avx512_cd()) {
      if (grad == nullptr ? loglik_lanes_f32_avx512<false>(s, r, n, ll, grad, rest)
                          : loglik_lanes_f32_avx512<true>(s, r, n, ll, grad, rest)) {
        return rest;
      }
    } else if (cpu_avx2_fma()) {
      if (grad == nullptr ? loglik_lanes_f32_avx2<false>(s, r, n, ll, grad, rest)
                          : loglik_lanes_f32_avx2<true>(s, r, n, ll, grad, rest)) {
        return rest;
      }
    }
  }
#endif
  return vectorised(s, r, lay, n, m, ll, grad);
}
uint32_t lanes(const float* s, const int32_t* r, LaneLayout lay, int64_t n, int64_t m, float* ll, float* grad) {
  return f32_lanes(s, r, lay, n, m, ll, grad, loglik_lanes_f32_i32);
}
uint32_t lanes(const float* s, const int64_t* r, LaneLayout lay, int64_t n, int64_t m, float* ll, float* grad) {
  return f32_lanes(s, r, lay, n, m, ll, grad, loglik_lanes_f32_i64);
}
uint32_t lanes(const double* s, const int32_t* r, LaneLayout lay, int64_t n, int64_t m, double* ll, double* grad) {
  return loglik_lanes_f64_i32(s, r, lay, n, m, ll, grad);
}
uint32_t lanes(const double* s, const int64_t* r, LaneLayout lay, int64_t n, int64_t m, double* ll, double* grad) {
  return loglik_lanes_f64_i64(s, r, lay, n, m, ll, grad);
}

// pl::row_loglik and pl::row_temperature compiled for AVX-512, AVX2 and the baseline, everything they call
// inlined into each clone (their loops over the items: the range of the scores, the worths' exps), for each
// scores, rankings and bit-set type of the per-row code. As in the lane kernels, the clones with FMA round the
// exps' polynomials differently from the baseline (a few ulp of the log-likelihood; the same on every run of one
// processor).
#define PREFCAL_ROW_LOGLIK(T, I, B)                                                                              \
  PREFCAL_CLONES __attribute__((flatten)) double row_loglik_host(const T* s, const I* r, int64_t L, int64_t n,   \
                                                                 const uint8_t* mask, const B& bits, T* grad,   \
                                                                 Strided<double> inv) {                         \
    return pl::row_loglik<T>(s, r, L, n, mask, bits, grad, inv);                                                 \
  }                                                                                                              \
  PREFCAL_CLONES __attribute__((flatten)) pl::Moments row_temperature_host(                                      \
      const T* s, const I* r, int64_t L, int64_t n, const uint8_t* mask, const B& bits, double beta) {          \
    return pl::row_temperature(s, r, L, n, mask, bits, beta);                                                    \
  }
PREFCAL_ROW_LOGLIK(float, int32_t, Bits64)
PREFCAL_ROW_LOGLIK(float, int64_t, Bits64)
PREFCAL_ROW_LOGLIK(double, int32_t, Bits64)
PREFCAL_ROW_LOGLIK(double, int64_t, Bits64)
PREFCAL_ROW_LOGLIK(float, int32_t, BytesRef)
PREFCAL_ROW_LOGLIK(float, int64_t, BytesRef)
PREFCAL_ROW_LOGLIK(double, int32_t, BytesRef)
PREFCAL_ROW_LOGLIK(double, int64_t, BytesRef)
#undef PREFCAL_ROW_LOGLIK

}  // namespace

template <class T, class I>
int64_t pl_loglik(const T* s, const I* r, const PLRows& sh, T* ll, T* grad) {
  const int64_t N = sh.N, m = sh.m, n = sh.n;
  const bool global_grad = grad != nullptr && sh.global_scores;
  // Global gradients are summed per slab (float64) and the slabs added in order.
  const int64_t slabs = global_grad ? slab_count(N, n * 8) : 1;
  const int64_t chunk = global_grad ? std::max<int64_t>(1, (N + slabs - 1) / slabs) : kRowChunk;
  const int64_t n_chunks = N == 0 ? 0 : (N + chunk - 1) / chunk;
  std::vector<int64_t> bad(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), kNoError);
  Slabs<double> partial(global_grad ? n_chunks : 0, n);
  const int nt = threads_for(n_chunks);
  const bool lanes_ok = g_loglik_lanes.load(std::memory_order_relaxed) && n >= 2 && n <= 32 && m >= 1;
  for_chunks(N, chunk, nt, [&](int, int64_t k, int64_t lo, int64_t hi) {
    Scratch sc(m, n);
    std::vector<T> row_grad(global_grad ? static_cast<size_t>(n) : 0);
    std::vector<T> lane_grad(global_grad && lanes_ok ? static_cast<size_t>(kLanes * n) : 0);
    double* acc = global_grad ? partial.open(k) : nullptr;
    const bool global_scores = sh.global_scores;
    const pl::Strided<double> inv = sc.inv_view();
    auto row = [&](int64_t b, auto& bits) {
      const T* sr = global_scores ? s : s + b * n;
      const I* rr = r + b * m;
      const uint8_t* mk = mask_row(sh, b);
      const int64_t L = pl::parse_ranking(rr, m, n, mk, bits);
      const bool good = L >= 0 && (global_scores || pl::finite_row(sr, n));
      if (good) {
        T* g = grad == nullptr ? nullptr : (global_grad ? row_grad.data() : grad + b * n);
        ll[b] = static_cast<T>(row_loglik_host(sr, rr, L, n, mk, bits, g, inv));
        if (global_grad) {
          for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<double>(row_grad[static_cast<size_t>(i)]);
        }
      }
      pl::clear_listed(rr, m, n, bits);
      return good;
    };
    bad[static_cast<size_t>(k)] = for_lane_groups(lanes_ok, n, sc, lo, hi, row, [&](int64_t b) {
      const LaneLayout lay{global_scores ? 0 : n, mask_row(sh, b), sh.global_mask ? 0 : n};
      const T* sb = global_scores ? s : s + b * n;
      if (!global_grad) return lanes(sb, r + b * m, lay, n, m, ll + b, grad == nullptr ? nullptr : grad + b * n);
      // one model's gradient: the group's rows into a buffer, then added in row order (the per-row code then
      // adds the rows the lanes leave)
      const uint32_t rest = lanes(sb, r + b * m, lay, n, m, ll + b, lane_grad.data());
      for (int l = 0; l < kLanes; ++l) {
        if ((rest >> l) & 1u) continue;
        const T* gl = lane_grad.data() + l * n;
        for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<double>(gl[i]);
      }
      return rest;
    });
  });
  const int64_t first = min_of(bad);
  if (first == kNoError && global_grad) {
    for (int64_t i = 0; i < n; ++i) {
      double t = 0.0;
      for (int64_t c = 0; c < n_chunks; ++c) t += partial[c][i];
      grad[i] = static_cast<T>(t);
    }
    if (N == 0) std::fill(grad, grad + n, T(0));
  }
  return first;
}

template <class T, class I>
int64_t pl_temperature(const T* s, const I* r, const PLRows& sh, double beta, double* out) {
  const int64_t N = sh.N, m = sh.m, n = sh.n;
  const int64_t slabs = slab_count(N, 24);
  const int64_t chunk = std::max<int64_t>(1, (N + slabs - 1) / slabs);
  const int64_t n_chunks = N == 0 ? 0 : (N + chunk - 1) / chunk;
  std::vector<int64_t> bad(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), kNoError);
  std::vector<pl::Moments> part(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)));
  const bool lanes_ok = g_temperature_lanes.load(std::memory_order_relaxed) && n >= 2 && n <= 32 && m >= 1;
  for_chunks(N, chunk, threads_for(n_chunks), [&](int, int64_t k, int64_t lo, int64_t hi) {
    Scratch sc(m, n);
    pl::Moments acc;  // the chunk's sums, stored into its slot of `part` once (neighbouring slots share lines)
    auto row = [&](int64_t b, auto& bits) {
      const T* sr = sh.global_scores ? s : s + b * n;
      const I* rr = r + b * m;
      const uint8_t* mk = mask_row(sh, b);
      const int64_t L = pl::parse_ranking(rr, m, n, mk, bits);
      const bool good = L >= 0 && (sh.global_scores || pl::finite_row(sr, n));
      if (good) {
        const pl::Moments mo = row_temperature_host(sr, rr, L, n, mk, bits, beta);
        acc.f += mo.f;
        acc.d1 += mo.d1;
        acc.d2 += mo.d2;
      }
      pl::clear_listed(rr, m, n, bits);
      return good;
    };
    bad[static_cast<size_t>(k)] = for_lane_groups(lanes_ok, n, sc, lo, hi, row, [&](int64_t b) {
      const LaneLayout lay{sh.global_scores ? 0 : n, mask_row(sh, b), sh.global_mask ? 0 : n};
      return temp_lanes(sh.global_scores ? s : s + b * n, r + b * m, lay, n, m, beta, acc);
    });
    part[static_cast<size_t>(k)] = acc;
  });
  out[0] = out[1] = out[2] = 0.0;
  for (int64_t c = 0; c < n_chunks; ++c) {
    out[0] += part[static_cast<size_t>(c)].f;
    out[1] += part[static_cast<size_t>(c)].d1;
    out[2] += part[static_cast<size_t>(c)].d2;
  }
  return min_of(bad);
}

namespace {

void noise_bits_portable(uint64_t seed, const uint64_t* row_of, const uint32_t* sample_of, const uint32_t* pair_of,
                         int64_t count, uint64_t* out) {
  for (int64_t p = 0; p < count; ++p) {
    const philox::U32x4 x = philox::block(seed, row_of[p], sample_of[p], pair_of[p]);
    out[2 * p] = philox::bits52(x.v[0], x.v[1]);
    out[2 * p + 1] = philox::bits52(x.v[2], x.v[3]);
  }
}

#if defined(PREFCAL_X86_AVX2)
// (hi, lo) 32-bit halves of m * b for eight unsigned 32-bit lanes b, m the same in every lane.
__attribute__((target("avx2"))) inline void mulhilo8(__m256i m, __m256i b, __m256i& hi, __m256i& lo) {
  // Shuffles rather than 64-bit shifts move the halves: AMD Zen 2 runs them on more ports (7 instead of 9
  // cycles a round for two interleaved groups).
  const __m256i even = _mm256_mul_epu32(m, b);                             // lanes 0, 2, .. as 64-bit products
  const __m256i oddp = _mm256_mul_epu32(m, _mm256_shuffle_epi32(b, 0xF5));  // lanes 1, 3, ..
  lo = _mm256_blend_epi32(even, _mm256_shuffle_epi32(oddp, 0xA0), 0xAA);
  hi = _mm256_blend_epi32(_mm256_shuffle_epi32(even, 0xF5), oddp, 0xAA);
}

// Philox4x32-10 of G groups of eight blocks, counters c[g][0 .. 3] in place; the groups' rounds interleaved, so
// that their dependency chains overlap (the compiler's own vectorisation of the portable loop keeps 64-bit
// lanes and is several times slower). Same function as philox::block, bit for bit.
template <int G>
__attribute__((target("avx2"))) inline void philox8(uint64_t seed, __m256i (*c)[4]) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0)), key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int g = 0; g < G; ++g) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(m0, c[g][0], hi0, lo0);
      mulhilo8(m1, c[g][2], hi1, lo1);
      c[g][0] = _mm256_xor_si256(_mm256_xor_si256(hi1, c[g][1]), key0);
      c[g][1] = lo1;
      c[g][2] = _mm256_xor_si256(_mm256_xor_si256(hi0, c[g][3]), key1);
      c[g][3] = lo0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// noise_bits with AVX2: eight blocks per step.
__attribute__((target("avx2"))) void noise_bits_avx2(uint64_t seed, const uint64_t* row_of,
                                                      const uint32_t* sample_of, const uint32_t* pair_of,
                                                      int64_t count, uint64_t* out) {
  int64_t p = 0;
  alignas(32) uint32_t w[4][8];
  for (; p + 8 <= count; p += 8) {
    alignas(32) uint32_t rl[8], rh[8];
    for (int l = 0; l < 8; ++l) {
      rl[l] = static_cast<uint32_t>(row_of[p + l]);
      rh[l] = static_cast<uint32_t>(row_of[p + l] >> 32);
    }
    __m256i c[1][4] = {{_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pair_of + p)),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sample_of + p)),
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(rl)),
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(rh))}};
    philox8<1>(seed, c);
    for (int i = 0; i < 4; ++i) _mm256_store_si256(reinterpret_cast<__m256i*>(w[i]), c[0][i]);
    for (int l = 0; l < 8; ++l) {
      out[2 * (p + l)] = philox::bits52(w[0][l], w[1][l]);
      out[2 * (p + l) + 1] = philox::bits52(w[2][l], w[3][l]);
    }
  }
  noise_bits_portable(seed, row_of + p, sample_of + p, pair_of + p, count - p, out + 2 * p);
}
#endif

#if defined(PREFCAL_X86_AVX2)
// The same with AVX-512: sixteen blocks per step.
// The products of the even lanes are the 64-bit lanes of `even`, those of the odd lanes the 64-bit lanes of
// `oddp`; one masked swap of the 32-bit halves of each 64-bit lane picks each side (_MM_PERM_CDAB).
__attribute__((target("avx512f"))) inline void mulhilo16(__m512i a, __m512i b, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, b);
  const __m512i oddp = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(b, 32));
  lo = _mm512_mask_shuffle_epi32(even, 0xAAAA, oddp, _MM_PERM_CDAB);  // odd lanes: low half of oddp
  hi = _mm512_mask_shuffle_epi32(oddp, 0x5555, even, _MM_PERM_CDAB);  // even lanes: high half of even
}

// Philox4x32-10 of sixteen blocks, counters (c0, c1, c2, c3) in place. Same function as philox::block.
__attribute__((target("avx512f"))) inline void philox16(uint64_t seed, __m512i& c0, __m512i& c1, __m512i& c2,
                                                        __m512i& c3) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    __m512i hi0, lo0, hi1, lo1;
    mulhilo16(m0, c0, hi0, lo0);
    mulhilo16(m1, c2, hi1, lo1);
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
    c1 = lo1;
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// philox::bits52(a[l], b[l]) of the lanes 8 half .. 8 half + 7, as eight 64-bit lanes.
__attribute__((target("avx512f"))) inline __m512i bits52x8(__m512i a, __m512i b, int half) {
  const __m256i wa = half == 0 ? _mm512_castsi512_si256(a) : _mm512_extracti64x4_epi64(a, 1);
  const __m256i wb = half == 0 ? _mm512_castsi512_si256(b) : _mm512_extracti64x4_epi64(b, 1);
  return _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(wa), 20),
                         _mm512_srli_epi64(_mm512_cvtepu32_epi64(wb), 12));
}

__attribute__((target("avx512f"))) void noise_bits_avx512(uint64_t seed, const uint64_t* row_of,
                                                          const uint32_t* sample_of, const uint32_t* pair_of,
                                                          int64_t count, uint64_t* out) {
  // Interleaving of bits52(c0, c1) (even item) and bits52(c2, c3) (odd item): out[2 p], out[2 p + 1].
  const __m512i first = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
  const __m512i second = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
  int64_t p = 0;
  for (; p + 16 <= count; p += 16) {
    alignas(64) uint32_t rl[16], rh[16];
    for (int l = 0; l < 16; ++l) {
      rl[l] = static_cast<uint32_t>(row_of[p + l]);
      rh[l] = static_cast<uint32_t>(row_of[p + l] >> 32);
    }
    __m512i c0 = _mm512_loadu_si512(pair_of + p), c1 = _mm512_loadu_si512(sample_of + p);
    __m512i c2 = _mm512_load_si512(rl), c3 = _mm512_load_si512(rh);
    philox16(seed, c0, c1, c2, c3);
    for (int half = 0; half < 2; ++half) {
      const __m512i even = bits52x8(c0, c1, half), odd = bits52x8(c2, c3, half);
      uint64_t* o = out + 2 * (p + 8 * half);
      _mm512_storeu_si512(o, _mm512_permutex2var_epi64(even, first, odd));
      _mm512_storeu_si512(o + 8, _mm512_permutex2var_epi64(even, second, odd));
    }
  }
  noise_bits_avx2(seed, row_of + p, sample_of + p, pair_of + p, count - p, out + 2 * p);
}
#endif

void noise_bits(uint64_t seed, const uint64_t* row_of, const uint32_t* sample_of, const uint32_t* pair_of,
                int64_t count, uint64_t* out) {
#if defined(PREFCAL_X86_AVX2)
  if (cpu_avx512()) {
    noise_bits_avx512(seed, row_of, sample_of, pair_of, count, out);
    return;
  }
  if (cpu_features().avx2 && simd_allowed(1)) {
    noise_bits_avx2(seed, row_of, sample_of, pair_of, count, out);
    return;
  }
#endif
  noise_bits_portable(seed, row_of, sample_of, pair_of, count, out);
}

// The first of `rows` rows of n scores holding a non-finite one, or -1: a flat scan of blocks of whole rows
// (vectorised: no early exit inside a block), row by row only in a block that holds one.
template <class T>
__attribute__((always_inline)) inline int64_t first_nonfinite_row_impl(const T* s, int64_t rows, int64_t n) {
  using U = typename pl::ExpBits<T>::U;
  const int64_t per = std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1));
  for (int64_t b0 = 0; b0 < rows; b0 += per) {
    const int64_t nb = std::min(per, rows - b0), count = nb * n;
    const T* p = s + b0 * n;
    U top = 0;  // the largest exponent field: all ones when some score is inf or NaN
    for (int64_t i = 0; i < count; ++i) {
      const U e = pl::exponent_bits(p[i]);
      top = e > top ? e : top;
    }
    if (top == pl::ExpBits<T>::kAll) {
      for (int64_t b = b0; b < b0 + nb; ++b) {
        if (!pl::finite_row(s + b * n, n)) return b;
      }
    }
  }
  return -1;
}

PREFCAL_CLONES int64_t first_nonfinite_row(const float* s, int64_t rows, int64_t n) {
  return first_nonfinite_row_impl(s, rows, n);
}
PREFCAL_CLONES int64_t first_nonfinite_row(const double* s, int64_t rows, int64_t n) {
  return first_nonfinite_row_impl(s, rows, n);
}

// Gumbel noise of 52 random bits: -log(-log(u)), u = philox::to_uniform(bits).
inline double gumbel_bits(uint64_t bits) {
  const uint64_t one = 0x3FF0000000000000ull | bits;  // 1 + bits * 2^-52, exactly
  double d;
  std::memcpy(&d, &one, sizeof d);
  const double u = (d - 1.0) + 0x1.0p-53;  // == philox::to_uniform(bits), exactly
  return -fastmath::log_pos(-fastmath::log_pos(u));
}

PREFCAL_CLONES void gumbel_of_bits(int64_t count, const uint64_t* bits, double* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = gumbel_bits(bits[i]);
}

// Selection of few keys by counting ranks (branch-free, vectorised): the rank of q is the number of keys before
// it in the order (larger key, or equal key and lower item; items are in increasing order here).
PREFCAL_CLONES void rank_select(const double* keys, const int32_t* items, int64_t count, int64_t take, int32_t* out) {
  // count <= 128. First with one compare a pair: rank_q = #{j : K_j >= K_q} - 1, which is the rank when no two
  // keys are equal; two equal keys get the same value, so the ranks form a permutation only without ties. Else
  // the exact order: larger keys first, equal ones by the lower index.
  int32_t rank[128];
  int64_t q = 0;
  for (; q + 4 <= count; q += 4) {  // four keys a pass over the others: each load serves four compares
    const double k0 = keys[q], k1 = keys[q + 1], k2 = keys[q + 2], k3 = keys[q + 3];
    int64_t g0 = 0, g1 = 0, g2 = 0, g3 = 0;
    for (int64_t j = 0; j < count; ++j) {
      const double v = keys[j];
      g0 += static_cast<int64_t>(v >= k0);
      g1 += static_cast<int64_t>(v >= k1);
      g2 += static_cast<int64_t>(v >= k2);
      g3 += static_cast<int64_t>(v >= k3);
    }
    rank[q] = static_cast<int32_t>(g0 - 1);
    rank[q + 1] = static_cast<int32_t>(g1 - 1);
    rank[q + 2] = static_cast<int32_t>(g2 - 1);
    rank[q + 3] = static_cast<int32_t>(g3 - 1);
  }
  for (; q < count; ++q) {
    const double key = keys[q];
    int64_t ge = 0;
    for (int64_t j = 0; j < count; ++j) ge += static_cast<int64_t>(keys[j] >= key);
    rank[q] = static_cast<int32_t>(ge - 1);
  }
  uint64_t seen0 = 0, seen1 = 0;
  for (q = 0; q < count; ++q) {
    const int32_t r = rank[q];
    const uint64_t bit = uint64_t(1) << (r & 63);
    seen0 |= r < 64 ? bit : 0;
    seen1 |= r >= 64 ? bit : 0;
  }
  const uint64_t all0 = count >= 64 ? ~uint64_t(0) : (uint64_t(1) << count) - 1;
  const uint64_t all1 = count >= 128 ? ~uint64_t(0) : count > 64 ? (uint64_t(1) << (count - 64)) - 1 : 0;
  if (seen0 != all0 || seen1 != all1) {
    for (q = 0; q < count; ++q) {
      const double key = keys[q];
      int64_t r = 0;
      for (int64_t j = 0; j < q; ++j) r += static_cast<int64_t>(keys[j] >= key);
      for (int64_t j = q + 1; j < count; ++j) r += static_cast<int64_t>(keys[j] > key);
      rank[q] = static_cast<int32_t>(r);
    }
  }
  for (q = 0; q < count; ++q) {
    if (rank[q] < take) out[rank[q]] = items[q];
  }
}

// Ranks of sixteen draws at once, keys laid out [item][draw], written to outs[draw][rank] when rank < k: the
// rank of q counts the keys before it, j < q when K[j] >= K[q] (the lower item wins a tie), j > q when
// K[j] > K[q] -- the order of rank_select. Lane-innermost, so that each compare is one vector instruction.
__attribute__((always_inline)) inline void rank_lanes(const double (*K)[kLanes], int64_t n, int64_t k,
                                                      int32_t* const* outs) {
  for (int64_t q = 0; q < n; ++q) {
    int64_t rank[kLanes] = {};
    for (int64_t j = 0; j < q; ++j) {
      for (int l = 0; l < kLanes; ++l) rank[l] += static_cast<int64_t>(K[j][l] >= K[q][l]);
    }
    for (int64_t j = q + 1; j < n; ++j) {
      for (int l = 0; l < kLanes; ++l) rank[l] += static_cast<int64_t>(K[j][l] > K[q][l]);
    }
    for (int l = 0; l < kLanes; ++l) {
      if (rank[l] < k) outs[l][rank[l]] = static_cast<int32_t>(q);
    }
  }
}

// Sixteen draws at once for rows without a mask and n <= 32 (noise [draw][item], or none for the mode).
template <class T>
__attribute__((always_inline)) inline void select_lanes_impl(const T* const* rows, const double* const* noise,
                                                             int64_t n, int64_t k, int32_t* const* outs) {
  double K[32][kLanes];
  for (int64_t i = 0; i < n; ++i) {
    for (int l = 0; l < kLanes; ++l) {
      K[i][l] = static_cast<double>(rows[l][i]) + (noise != nullptr ? noise[l][i] : 0.0);
    }
  }
  rank_lanes(K, n, k, outs);
}

PREFCAL_CLONES void select_lanes_f32(const float* const* rows, const double* const* noise, int64_t n, int64_t k,
                                     int32_t* const* outs) {
  select_lanes_impl(rows, noise, n, k, outs);
}
PREFCAL_CLONES void select_lanes_f64(const double* const* rows, const double* const* noise, int64_t n, int64_t k,
                                     int32_t* const* outs) {
  select_lanes_impl(rows, noise, n, k, outs);
}
void select_lanes(const float* const* rows, const double* const* noise, int64_t n, int64_t k, int32_t* const* outs) {
  select_lanes_f32(rows, noise, n, k, outs);
}
void select_lanes(const double* const* rows, const double* const* noise, int64_t n, int64_t k, int32_t* const* outs) {
  select_lanes_f64(rows, noise, n, k, outs);
}

#if defined(PREFCAL_X86_AVX2)
// The output of sixteen draws (16 k items, draw-major) assembled from ranks: put() writes item q at rank r of
// each lane with branch-free scalar stores (vector scatters are microcoded and slower here, AMD Zen 4); ranks
// k and beyond go to spill slots past the block. Then one copy out.
struct RankBlock {
  alignas(64) int32_t items[32 * kLanes + kLanes];
  alignas(64) int32_t at0[kLanes];  // lane * k
  int32_t k;
};

__attribute__((target("avx512f"))) inline void rank_block_init(RankBlock& b, int64_t k) {
  b.k = static_cast<int32_t>(k);
  for (int l = 0; l < kLanes; ++l) b.at0[l] = l * b.k;
}

__attribute__((target("avx512f"))) inline void rank_block_put(RankBlock& b, __m512i r, int64_t q) {
  const __m512i kk = _mm512_set1_epi32(b.k);
  const __m512i spill = _mm512_add_epi32(lane_index(), _mm512_set1_epi32(kLanes * b.k));
  alignas(64) int32_t at[kLanes];
  _mm512_store_si512(at, _mm512_mask_blend_epi32(_mm512_cmplt_epi32_mask(r, kk), spill,
                                                 _mm512_add_epi32(_mm512_load_si512(b.at0), r)));
  for (int l = 0; l < kLanes; ++l) b.items[at[l]] = static_cast<int32_t>(q);
}

inline void rank_block_copy(const RankBlock& b, int32_t* dst) {
  std::memcpy(dst, b.items, sizeof(int32_t) * static_cast<size_t>(kLanes * b.k));
}

// The Philox counters of sixteen consecutive draws d0 .. d0 + 15 of the row-major (row, sample) order: row
// (low and high words) and sample per lane, and each lane's score offset from the first draw's row. One draw
// per row (size 1) in vector arithmetic (scalar stores read back as a vector stall store forwarding).
struct LaneCounters {
  __m512i row_lo, row_hi, sample;
  alignas(64) int32_t off[kLanes];  // <= 15 * 32
  int64_t b0;
};

__attribute__((target("avx512f"))) inline void lane_counters(LaneCounters& c, int64_t d0, int64_t size, int64_t n,
                                                             int64_t row0, int64_t sample0) {
  c.b0 = d0 / size;
  if (size == 1) {
    const __m512i lane = lane_index();
    const uint64_t first = static_cast<uint64_t>(c.b0 + row0);
    c.row_lo = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first))), lane);
    const __m512i hi = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first >> 32)));
    c.row_hi = _mm512_mask_add_epi32(hi, _mm512_cmp_epu32_mask(c.row_lo, lane, _MM_CMPINT_LT), hi,
                                     _mm512_set1_epi32(1));  // carry
    c.sample = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(sample0)));
    _mm512_store_si512(c.off, _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(n))));
    return;
  }
  alignas(64) uint32_t rl[kLanes], rh[kLanes], ts[kLanes];
  int64_t b = c.b0, t = d0 - c.b0 * size;
  for (int l = 0; l < kLanes; ++l) {
    rl[l] = static_cast<uint32_t>(b + row0);
    rh[l] = static_cast<uint32_t>(static_cast<uint64_t>(b + row0) >> 32);
    ts[l] = static_cast<uint32_t>(t + sample0);
    c.off[l] = static_cast<int32_t>((b - c.b0) * n);
    if (++t == size) t = 0, ++b;
  }
  c.row_lo = _mm512_load_si512(rl);
  c.row_hi = _mm512_load_si512(rh);
  c.sample = _mm512_load_si512(ts);
}

// Sixteen consecutive draws d0 .. d0 + 15 of the row-major (row, sample) order (draw d writes out[d k ..]) of
// rows without a mask, n <= 32, in one pass with AVX-512 (noise = false: the mode). The Philox blocks of one
// item pair for the sixteen draws come out as sixteen lanes, i.e. directly in the [item][draw] layout of the
// keys; the scores are gathered, the ranks counted with vector compares (the order of rank_select: larger key
// first, lower item on ties) and scattered to the output. The same numbers as noise_bits + gumbel_of_bits +
// select_lanes, bit for bit.
template <class T>
__attribute__((target("avx512f"))) void draw_lanes_avx512(uint64_t seed, bool noise, const T* s, int64_t d0,
                                                          int64_t size, int64_t n, int64_t k, int64_t row0,
                                                          int64_t sample0, int32_t* out) {
  LaneCounters lanes;
  lane_counters(lanes, d0, size, n, row0, sample0);
  const int64_t b0 = lanes.b0;
  const int32_t* const off = lanes.off;
  alignas(64) double keys[32 * kLanes];  // [item][draw]
  if (noise) {
    const __m512i row_lo = lanes.row_lo, row_hi = lanes.row_hi, sample = lanes.sample;
    alignas(64) uint64_t bits[32 * kLanes];  // [item][draw]
    for (int64_t j = 0; 2 * j < n; ++j) {
      __m512i c0 = _mm512_set1_epi32(static_cast<int>(j)), c1 = sample, c2 = row_lo, c3 = row_hi;
      philox16(seed, c0, c1, c2, c3);
      // bits52(c0, c1) is item 2j, bits52(c2, c3) item 2j + 1 (row 2j + 1 exists: n <= 32).
      for (int half = 0; half < 2; ++half) {
        _mm512_store_si512(bits + 2 * j * kLanes + 8 * half, bits52x8(c0, c1, half));
        _mm512_store_si512(bits + (2 * j + 1) * kLanes + 8 * half, bits52x8(c2, c3, half));
      }
    }
    // One long loop over all the noise: independent iterations hide the latency of the two logs.
    for (int64_t v = 0; v < n * kLanes; ++v) keys[v] = gumbel_bits(bits[v]);
  }
  // Scores transposed to [item][draw] with scalar loads (vector gathers are slower here, AMD Zen 4), then
  // score + noise, in this order.
  const T* base = s + b0 * n;
  for (int64_t i = 0; i < n; ++i) {
    alignas(64) double sc[kLanes];
    for (int l = 0; l < kLanes; ++l) sc[l] = static_cast<double>(base[off[l] + i]);
    for (int l = 0; l < kLanes; ++l) keys[i * kLanes + l] = noise ? sc[l] + keys[i * kLanes + l] : sc[l];
  }
  const __m512i one = _mm512_set1_epi64(1);
  RankBlock block;
  rank_block_init(block, k);
  for (int64_t q = 0; q < n; ++q) {
    const __m512d q0 = _mm512_load_pd(keys + q * kLanes), q1 = _mm512_load_pd(keys + q * kLanes + 8);
    __m512i r0 = _mm512_setzero_si512(), r1 = _mm512_setzero_si512();
    for (int64_t j = 0; j < q; ++j) {  // before q on ties
      r0 = _mm512_mask_add_epi64(r0, _mm512_cmp_pd_mask(_mm512_load_pd(keys + j * kLanes), q0, _CMP_GE_OQ), r0, one);
      r1 = _mm512_mask_add_epi64(r1, _mm512_cmp_pd_mask(_mm512_load_pd(keys + j * kLanes + 8), q1, _CMP_GE_OQ), r1,
                                 one);
    }
    for (int64_t j = q + 1; j < n; ++j) {
      r0 = _mm512_mask_add_epi64(r0, _mm512_cmp_pd_mask(_mm512_load_pd(keys + j * kLanes), q0, _CMP_GT_OQ), r0, one);
      r1 = _mm512_mask_add_epi64(r1, _mm512_cmp_pd_mask(_mm512_load_pd(keys + j * kLanes + 8), q1, _CMP_GT_OQ), r1,
                                 one);
    }
    rank_block_put(block,
                   _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(r0)), _mm512_cvtepi64_epi32(r1), 1),
                   q);
  }
  rank_block_copy(block, out + d0 * k);
}

// Certified float32 keys (the fast path of the sampler, AVX-512). The samples are defined by the float64 keys
// K_i = s_i + G_i, G_i = -log(-log u_i) (gumbel_bits). Here each key is first computed in float32: the Gumbel
// noise g_i by float32 logs (log1p_f32: reciprocal estimate + one Newton step, a degree-3 series in z = t^2
// of 2 atanh t), and A_i = float(s_i) + g_i. With |g_i - G_i| <= kGumbelF32Error and M the largest |s| of the
// sixteen draws' rows, every |A_i - K_i| <= delta = kGumbelF32Error + 2^-23 (M + 38); with
// D = 2 kGumbelF32Error + 2^-21 (M + 39), fl(A_q + D) >= A_q + 2 delta and fl(A_q - D) <= A_q - 2 delta, so
//   A_j > fl(A_q + D)  implies  K_j > K_q     (j certainly before q),
//   A_j < fl(A_q - D)  implies  K_j < K_q     (j certainly after q).
// The rank of q counted with these tests equals its rank among the K when every pair is decided one way or the
// other. A group of sixteen draws where some draw has an undecided pair (about 1.3% of the groups for
// standard normal scores, n = 10) is redone by draw_lanes_avx512 with the float64 keys: the samples are the
// same either way, bit for bit.
constexpr float kGumbelF32Error = 0x1.0p-16f;  // 1.5e-5; |g32 - G| <= 1.05e-6 measured on 3.2e8 values (edges
                                               // included), ~3e-6 by analysis (mostly g32's own rounding)
constexpr float kMaxScoreF32 = 0x1.0p20f;     // rows with a larger |score| take the float64 keys

// log1p(f) for 16 lanes of f in [-0.3, 0.5) to ~3e-7 relative: 2 atanh(t), t = f / (2 + f) (reciprocal
// estimate to 2^-14, one Newton step), 2 atanh(t) = 2t (1 + z/3 + z^2/5 + z^3/7 + z^4/9 + z^5/11 ...),
// z = t^2 <= 0.04, truncated after z^3 / 7 (the next term: relative 2.8e-7).
__attribute__((target("avx512f"))) inline __m512 log1p_f32(__m512 f) {
  const __m512 two = _mm512_set1_ps(2.0f), d = _mm512_add_ps(f, two);
  __m512 r = _mm512_rcp14_ps(d);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, two));
  const __m512 t = _mm512_mul_ps(f, r), z = _mm512_mul_ps(t, t);
  __m512 p = _mm512_fmadd_ps(z, _mm512_set1_ps(1.0f / 7), _mm512_set1_ps(1.0f / 5));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f / 3));
  const __m512 t2 = _mm512_add_ps(t, t);
  return _mm512_fmadd_ps(_mm512_mul_ps(t2, z), p, t2);
}

// 2^e (1 + f) = x for 16 lanes of positive normal x, 1 + f in [3/4, 3/2) (vgetmant's interval; where it halves
// the mantissa in [3/2, 2), the exponent of vgetexp goes up by one); e as float.
__attribute__((target("avx512f"))) inline void split_f32(__m512 x, __m512& e, __m512& f) {
  const __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_src);
  const __m512 one = _mm512_set1_ps(1.0f), ex = _mm512_getexp_ps(x);
  e = _mm512_mask_add_ps(ex, _mm512_cmp_ps_mask(m, one, _CMP_LT_OQ), ex, one);
  f = _mm512_sub_ps(m, one);
}

// -(e ln 2 + log1p f): ln 2 = hi + lo, hi with 16 significant bits (e hi exact).
__attribute__((target("avx512f"))) inline __m512 neg_log_f32(__m512 e, __m512 f) {
  return _mm512_fnmadd_ps(e, _mm512_set1_ps(0.693145751953125f),
                          _mm512_fnmsub_ps(e, _mm512_set1_ps(1.428606765330187e-06f), log1p_f32(f)));
}

// (bits52(a, b) + 1/2) 2^-52, the uniform of philox::uniform_of, to ~2^-23 relative, for 16 lanes.
__attribute__((target("avx512f"))) inline __m512 uniform_f32(__m512i a, __m512i b) {
  const __m512 low = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 12)), _mm512_set1_ps(0.5f)),
                                   _mm512_set1_ps(0x1.0p-52f));
  return _mm512_fmadd_ps(_mm512_cvtepu32_ps(a), _mm512_set1_ps(0x1.0p-32f), low);
}

// float32 Gumbel noise -log(E), E = -log u, of the 16 lanes of Philox words (a, b), within kGumbelF32Error of
// gumbel_bits. Where u >= sqrt(1/2), E = -log1p(-t) keeps its relative accuracy: t = 1 - u is the uniform of
// the complemented words (2^52 - 1 - bits52(a, b) = bits52(~a, ~b)), so one uniform_f32 serves both cases.
__attribute__((target("avx512f"))) inline __m512 gumbel_f32(__m512i a, __m512i b) {
  const __mmask16 high = _mm512_cmp_epu32_mask(a, _mm512_set1_epi32(static_cast<int>(3037000500u)), _MM_CMPINT_NLT);
  const __m512i flip = _mm512_maskz_mov_epi32(high, _mm512_set1_epi32(-1));
  const __m512 v = uniform_f32(_mm512_xor_si512(a, flip), _mm512_xor_si512(b, flip));  // u, or t where high
  __m512 e, f;
  split_f32(v, e, f);
  e = _mm512_mask_mov_ps(e, high, _mm512_setzero_ps());
  f = _mm512_mask_sub_ps(f, high, _mm512_setzero_ps(), v);
  const __m512 E = neg_log_f32(e, f);
  split_f32(E, e, f);
  return neg_log_f32(e, f);
}

// gumbel_f32 over arrays (test hook), 16 lanes at a time, the tail padded.
__attribute__((target("avx512f"))) void gumbel_f32_lanes(const uint32_t* a, const uint32_t* b, int64_t count,
                                                         float* out) {
  for (int64_t p = 0; p < count; p += kLanes) {
    const int64_t m = std::min<int64_t>(kLanes, count - p);
    const __mmask16 live = static_cast<__mmask16>((1u << m) - 1u);
    const __m512i va = _mm512_maskz_loadu_epi32(live, a + p), vb = _mm512_maskz_loadu_epi32(live, b + p);
    _mm512_mask_storeu_ps(out + p, live, gumbel_f32(va, vb));
  }
}

// max |p[i]| over count values (finite), as float (rounded up for float64 input), vectorised with AVX-512.
__attribute__((target("avx512f"))) inline float max_abs_avx512(const float* p, int64_t count) {
  __m512 big = _mm512_setzero_ps();
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  for (int64_t i = 0; i < count; i += kLanes) {
    const __mmask16 live = count - i >= kLanes ? static_cast<__mmask16>(0xFFFF)
                                               : static_cast<__mmask16>((1u << (count - i)) - 1u);
    const __m512i v = _mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(live, p + i)), abs_mask);
    big = _mm512_max_ps(big, _mm512_castsi512_ps(v));
  }
  return _mm512_reduce_max_ps(big);
}
__attribute__((target("avx512f"))) inline float max_abs_avx512(const double* p, int64_t count) {
  __m512d big = _mm512_setzero_pd();
  const __m512i abs_mask = _mm512_set1_epi64(0x7FFFFFFFFFFFFFFFll);
  for (int64_t i = 0; i < count; i += 8) {
    const __mmask8 live = count - i >= 8 ? static_cast<__mmask8>(0xFF) : static_cast<__mmask8>((1u << (count - i)) - 1u);
    const __m512i v = _mm512_and_si512(_mm512_castpd_si512(_mm512_maskz_loadu_pd(live, p + i)), abs_mask);
    big = _mm512_max_pd(big, _mm512_castsi512_pd(v));
  }
  const double m = _mm512_reduce_max_pd(big);
  return m <= 0x1.0p20 ? static_cast<float>(m) * (1.0f + 0x1.0p-23f) : 0x1.0p21f;
}

// Sixteen draws as draw_lanes_avx512 (noise on), by certified float32 keys; false (nothing written) when some
// draw is undecided or a row holds a score beyond kMaxScoreF32: the caller then runs draw_lanes_avx512.
template <class T>
__attribute__((target("avx512f"))) bool draw_lanes_f32_avx512(uint64_t seed, const T* s, int64_t d0, int64_t size,
                                                               int64_t n, int64_t k, int64_t row0, int64_t sample0,
                                                               int32_t* out) {
  LaneCounters lanes;
  lane_counters(lanes, d0, size, n, row0, sample0);
  const int64_t b0 = lanes.b0;
  const int32_t* const off = lanes.off;
  // The largest |score| of the group's rows (consecutive), before any work: rows beyond kMaxScoreF32 fall back.
  const T* base = s + b0 * n;
  const float big = max_abs_avx512(base, ((d0 + kLanes - 1) / size - b0 + 1) * n);
  if (!(big <= kMaxScoreF32)) return false;
  alignas(64) float keys[32 * kLanes];  // [item][draw]
  const __m512i row_lo = lanes.row_lo, row_hi = lanes.row_hi, sample = lanes.sample;
  for (int64_t j = 0; 2 * j < n; ++j) {
    __m512i c0 = _mm512_set1_epi32(static_cast<int>(j)), c1 = sample, c2 = row_lo, c3 = row_hi;
    philox16(seed, c0, c1, c2, c3);
    _mm512_store_ps(keys + 2 * j * kLanes, gumbel_f32(c0, c1));  // item 2j
    _mm512_store_ps(keys + (2 * j + 1) * kLanes, gumbel_f32(c2, c3));  // item 2j + 1 (row exists: n <= 32)
  }
  // Scores transposed to [item][draw] with scalar loads (vector gathers are slower here, AMD Zen 4).
  for (int64_t i = 0; i < n; ++i) {
    alignas(64) float sc[kLanes];
    for (int l = 0; l < kLanes; ++l) sc[l] = static_cast<float>(base[off[l] + i]);  // |s| <= 2^20: defined
    _mm512_store_ps(keys + i * kLanes, _mm512_add_ps(_mm512_load_ps(sc), _mm512_load_ps(keys + i * kLanes)));
  }
  const __m512 D = _mm512_set1_ps(2.0f * kGumbelF32Error + 0x1.0p-21f * (big + 39.0f));
  // Each pair (j, q), j > q, once: a decided pair adds 1 to the rank of the later of the two, an undecided one
  // adds nothing, so a draw is decided when its ranks sum to n (n - 1) / 2.
  const __m512i one = _mm512_set1_epi32(1);
  alignas(64) int32_t rank[32][kLanes];
  for (int64_t q = 0; q < n; ++q) _mm512_store_si512(rank[q], _mm512_setzero_si512());
  __m512i total = _mm512_setzero_si512();
  for (int64_t q = 0; q < n; ++q) {
    const __m512 a = _mm512_load_ps(keys + q * kLanes);
    const __m512 hi = _mm512_add_ps(a, D), lo = _mm512_sub_ps(a, D);
    __m512i r = _mm512_load_si512(rank[q]);
    for (int64_t j = q + 1; j < n; ++j) {
      const __m512 x = _mm512_load_ps(keys + j * kLanes);
      r = _mm512_mask_add_epi32(r, _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), r, one);  // j before q
      const __m512i rj = _mm512_load_si512(rank[j]);
      _mm512_store_si512(rank[j], _mm512_mask_add_epi32(rj, _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), rj, one));
    }
    _mm512_store_si512(rank[q], r);
    total = _mm512_add_epi32(total, r);
  }
  if (_mm512_cmpneq_epi32_mask(total, _mm512_set1_epi32(static_cast<int>(n * (n - 1) / 2))) != 0) return false;
  RankBlock block;
  rank_block_init(block, k);
  for (int64_t q = 0; q < n; ++q) rank_block_put(block, _mm512_load_si512(rank[q]), q);
  rank_block_copy(block, out + d0 * k);
  return true;
}

// ------------------------------------------------------------------------------ the same with AVX2 and FMA
//
// The certified float32 keys for processors without AVX-512, eight draws per step: draw_lanes_f32_avx512's
// method and bound, with AVX2 stand-ins for the AVX-512 instructions (getmant / getexp by bit operations, an
// unsigned conversion in two halves, the same values) and the reciprocal estimate of AVX2 (12 bits, not 14)
// before the Newton step: t = f / (2 + f) to ~2.5e-7 relative instead of ~1.2e-7, which leaves the noise's
// error dominated by its own float32 rounding (measured: tests/test_pl.py, a quarter of kGumbelF32Error).

// The noise of N independent groups of eight lanes at once, each step over all groups, so that their long
// dependency chains (~40 operations each) interleave in program order: one group at a time leaves the core
// waiting on latency (64 cycles per eight values on AMD Zen 2; five groups: 35).

// log1p_f32 with AVX2's reciprocal estimate, in place.
template <int N>
__attribute__((target("avx2,fma"), always_inline)) inline void log1p_f32x8(__m256* f) {
  const __m256 two = _mm256_set1_ps(2.0f);
  __m256 d[N], r[N], t[N], z[N], p[N];
  for (int u = 0; u < N; ++u) d[u] = _mm256_add_ps(f[u], two);
  for (int u = 0; u < N; ++u) r[u] = _mm256_rcp_ps(d[u]);
  for (int u = 0; u < N; ++u) r[u] = _mm256_mul_ps(r[u], _mm256_fnmadd_ps(d[u], r[u], two));
  for (int u = 0; u < N; ++u) t[u] = _mm256_mul_ps(f[u], r[u]);
  for (int u = 0; u < N; ++u) z[u] = _mm256_mul_ps(t[u], t[u]);
  for (int u = 0; u < N; ++u) p[u] = _mm256_fmadd_ps(z[u], _mm256_set1_ps(1.0f / 7), _mm256_set1_ps(1.0f / 5));
  for (int u = 0; u < N; ++u) p[u] = _mm256_fmadd_ps(p[u], z[u], _mm256_set1_ps(1.0f / 3));
  for (int u = 0; u < N; ++u) {
    const __m256 t2 = _mm256_add_ps(t[u], t[u]);
    f[u] = _mm256_fmadd_ps(_mm256_mul_ps(t2, z[u]), p[u], t2);
  }
}

// split_f32 of positive normal x: the mantissa m in [1, 2), halved where m >= 3/2 (the exponent then up by one).
template <int N>
__attribute__((target("avx2"), always_inline)) inline void split_f32x8(const __m256* x, __m256* e, __m256* f) {
  for (int u = 0; u < N; ++u) {
    const __m256i bits = _mm256_castps_si256(x[u]);
    const __m256i m1 = _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)),
                                       _mm256_set1_epi32(0x3F800000));
    const __m256i big = _mm256_cmpgt_epi32(m1, _mm256_set1_epi32(0x3FBFFFFF));  // m >= 3/2: all ones
    const __m256i m = _mm256_sub_epi32(m1, _mm256_and_si256(big, _mm256_set1_epi32(0x00800000)));
    e[u] = _mm256_cvtepi32_ps(
        _mm256_sub_epi32(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)), big));
    f[u] = _mm256_sub_ps(_mm256_castsi256_ps(m), _mm256_set1_ps(1.0f));
  }
}

// neg_log_f32: f (in place) becomes -(e ln 2 + log1p f).
template <int N>
__attribute__((target("avx2,fma"), always_inline)) inline void neg_log_f32x8(const __m256* e, __m256* f) {
  log1p_f32x8<N>(f);
  for (int u = 0; u < N; ++u) {
    f[u] = _mm256_fnmadd_ps(e[u], _mm256_set1_ps(0.693145751953125f),
                            _mm256_fnmsub_ps(e[u], _mm256_set1_ps(1.428606765330187e-06f), f[u]));
  }
}

// gumbel_f32 of Philox words (a[u], b[u]): uniform_f32 with the unsigned a converted as 2^16 hi + lo (one
// rounding, as vcvtudq2ps), then the two logs.
template <int N>
__attribute__((target("avx2,fma"), always_inline)) inline void gumbel_f32x8(const __m256i* a, const __m256i* b,
                                                                          __m256* out) {
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  __m256 v[N], high[N], e[N], f[N];
  for (int u = 0; u < N; ++u) {
    const __m256i hi = _mm256_cmpgt_epi32(_mm256_xor_si256(a[u], sign),  // a >= 3037000500 (unsigned)
                                          _mm256_set1_epi32(static_cast<int>(3037000499u ^ 0x80000000u)));
    high[u] = _mm256_castsi256_ps(hi);
    const __m256i wa = _mm256_xor_si256(a[u], hi), wb = _mm256_xor_si256(b[u], hi);  // u, or t where high
    const __m256 low = _mm256_mul_ps(
        _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(wb, 12)), _mm256_set1_ps(0.5f)), _mm256_set1_ps(0x1.0p-52f));
    const __m256 av = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(wa, 16)), _mm256_set1_ps(65536.0f),
                                      _mm256_cvtepi32_ps(_mm256_and_si256(wa, _mm256_set1_epi32(0xFFFF))));
    v[u] = _mm256_fmadd_ps(av, _mm256_set1_ps(0x1.0p-32f), low);
  }
  split_f32x8<N>(v, e, f);
  for (int u = 0; u < N; ++u) {
    e[u] = _mm256_andnot_ps(high[u], e[u]);
    f[u] = _mm256_blendv_ps(f[u], _mm256_sub_ps(_mm256_setzero_ps(), v[u]), high[u]);
  }
  neg_log_f32x8<N>(e, f);  // E = -log u
  split_f32x8<N>(f, e, out);
  neg_log_f32x8<N>(e, out);
}

// gumbel_f32x8 of N groups of eight lanes ([group][lane] words).
template <int N>
__attribute__((target("avx2,fma"), always_inline)) inline void gumbel_groups_n(const uint32_t (*a)[8],
                                                                             const uint32_t (*b)[8],
                                                                             float (*out)[8]) {
  __m256i wa[N], wb[N];
  __m256 r[N];
  for (int u = 0; u < N; ++u) {
    wa[u] = _mm256_load_si256(reinterpret_cast<const __m256i*>(a[u]));
    wb[u] = _mm256_load_si256(reinterpret_cast<const __m256i*>(b[u]));
  }
  gumbel_f32x8<N>(wa, wb, r);
  for (int u = 0; u < N; ++u) _mm256_store_ps(out[u], r[u]);
}

// The same for count groups, five at a time.
__attribute__((target("avx2,fma"), always_inline)) inline void gumbel_groups(const uint32_t (*a)[8],
                                                                           const uint32_t (*b)[8], int64_t count,
                                                                           float (*out)[8]) {
  int64_t g = 0;
  for (; g + 5 <= count; g += 5) gumbel_groups_n<5>(a + g, b + g, out + g);
  switch (count - g) {
    case 4: gumbel_groups_n<4>(a + g, b + g, out + g); break;
    case 3: gumbel_groups_n<3>(a + g, b + g, out + g); break;
    case 2: gumbel_groups_n<2>(a + g, b + g, out + g); break;
    case 1: gumbel_groups_n<1>(a + g, b + g, out + g); break;
    default: break;
  }
}

// gumbel_f32x8 over arrays (test hook), the tail padded.
__attribute__((target("avx2,fma"))) void gumbel_f32_lanes_avx2(const uint32_t* a, const uint32_t* b, int64_t count,
                                                                float* out) {
  for (int64_t p = 0; p < count; p += 8) {
    const int64_t m = std::min<int64_t>(8, count - p);
    alignas(32) uint32_t wa[1][8] = {}, wb[1][8] = {};
    alignas(32) float g[1][8];
    std::memcpy(wa[0], a + p, sizeof(uint32_t) * static_cast<size_t>(m));
    std::memcpy(wb[0], b + p, sizeof(uint32_t) * static_cast<size_t>(m));
    gumbel_groups(wa, wb, 1, g);
    std::memcpy(out + p, g[0], sizeof(float) * static_cast<size_t>(m));
  }
}

// max |p[i]| over count finite values, as float (rounded up for float64 input; beyond 2^20: 2^21).
__attribute__((target("avx2"))) inline float max_abs_avx2(const float* p, int64_t count) {
  __m256 big = _mm256_setzero_ps();
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) big = _mm256_max_ps(big, _mm256_and_ps(_mm256_loadu_ps(p + i), abs_mask));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, big);
  float m = 0.0f;
  for (int l = 0; l < 8; ++l) m = std::max(m, lanes[l]);
  for (; i < count; ++i) m = std::max(m, std::fabs(p[i]));
  return m;
}
__attribute__((target("avx2"))) inline float max_abs_avx2(const double* p, int64_t count) {
  __m256d big = _mm256_setzero_pd();
  const __m256d abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFll));
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) big = _mm256_max_pd(big, _mm256_and_pd(_mm256_loadu_pd(p + i), abs_mask));
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, big);
  double m = 0.0;
  for (int l = 0; l < 4; ++l) m = std::max(m, lanes[l]);
  for (; i < count; ++i) m = std::max(m, std::fabs(p[i]));
  return m <= 0x1.0p20 ? static_cast<float>(m) * (1.0f + 0x1.0p-23f) : 0x1.0p21f;
}

// The Philox counters of eight consecutive draws d0 .. d0 + 7 of the row-major (row, sample) order, as
// lane_counters (one draw per row in vector arithmetic).
struct LaneCounters8 {
  __m256i row_lo, row_hi, sample;
  alignas(32) int32_t off[8];  // each draw's score offset from the first draw's row
  int64_t b0;
};

__attribute__((target("avx2"))) inline void lane_counters8(LaneCounters8& c, int64_t d0, int64_t size, int64_t n,
                                                            int64_t row0, int64_t sample0) {
  c.b0 = d0 / size;
  if (size == 1) {
    const __m256i first = _mm256_set1_epi64x(static_cast<long long>(c.b0 + row0));
    const __m256i r0 = _mm256_add_epi64(first, _mm256_setr_epi64x(0, 1, 2, 3));
    const __m256i r1 = _mm256_add_epi64(first, _mm256_setr_epi64x(4, 5, 6, 7));
    c.row_lo = narrow8(r0, r1);
    c.row_hi = narrow8(_mm256_srli_epi64(r0, 32), _mm256_srli_epi64(r1, 32));
    c.sample = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(sample0)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(c.off),
                       _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                          _mm256_set1_epi32(static_cast<int>(n))));
    return;
  }
  alignas(32) uint32_t rl[8], rh[8], ts[8];
  int64_t b = c.b0, t = d0 - c.b0 * size;
  for (int l = 0; l < 8; ++l) {
    rl[l] = static_cast<uint32_t>(b + row0);
    rh[l] = static_cast<uint32_t>(static_cast<uint64_t>(b + row0) >> 32);
    ts[l] = static_cast<uint32_t>(t + sample0);
    c.off[l] = static_cast<int32_t>((b - c.b0) * n);
    if (++t == size) t = 0, ++b;
  }
  c.row_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(rl));
  c.row_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(rh));
  c.sample = _mm256_load_si256(reinterpret_cast<const __m256i*>(ts));
}

// The Philox words (a, b) of items 2 j' and 2 j' + 1, j' = j .. j + G - 1, of eight draws ([item][draw]).
template <int G>
__attribute__((target("avx2"))) inline void philox_items(uint64_t seed, const LaneCounters8& lanes, int64_t j,
                                                          uint32_t (*wa)[8], uint32_t (*wb)[8]) {
  __m256i c[G][4];
  for (int g = 0; g < G; ++g) {
    c[g][0] = _mm256_set1_epi32(static_cast<int>(j + g));
    c[g][1] = lanes.sample;
    c[g][2] = lanes.row_lo;
    c[g][3] = lanes.row_hi;
  }
  philox8<G>(seed, c);
  for (int g = 0; g < G; ++g) {
    const int64_t i = 2 * (j + g);  // item i + 1 < 32 exists in the arrays: n <= 32
    _mm256_store_si256(reinterpret_cast<__m256i*>(wa[i]), c[g][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(wb[i]), c[g][1]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(wa[i + 1]), c[g][2]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(wb[i + 1]), c[g][3]);
  }
}

// Eight draws d0 .. d0 + 7 as draw_lanes_f32_avx512 (rows without a mask, n <= 32, noise on); false (nothing
// written) when some draw is undecided or a row holds a score beyond kMaxScoreF32: the caller then draws
// them with the float64 keys.
template <class T>
__attribute__((target("avx2,fma"))) bool draw_lanes_f32_avx2(uint64_t seed, const T* s, int64_t d0, int64_t size,
                                                              int64_t n, int64_t k, int64_t row0, int64_t sample0,
                                                              int32_t* out) {
  LaneCounters8 lanes;
  lane_counters8(lanes, d0, size, n, row0, sample0);
  const T* base = s + lanes.b0 * n;
  const float big = max_abs_avx2(base, ((d0 + 7) / size - lanes.b0 + 1) * n);
  if (!(big <= kMaxScoreF32)) return false;
  // The Philox words of items 2j, 2j + 1 (two blocks at a time: their chains overlap), then the noise.
  alignas(32) float keys[32][8];  // [item][draw]
  {
    alignas(32) uint32_t wa[32][8], wb[32][8];  // [item][draw]
    const int64_t pairs = (n + 1) / 2;
    int64_t j = 0;
    for (; j + 2 <= pairs; j += 2) philox_items<2>(seed, lanes, j, wa, wb);
    if (j < pairs) philox_items<1>(seed, lanes, j, wa, wb);
    gumbel_groups(wa, wb, n, keys);
  }
  for (int64_t i = 0; i < n; ++i) {
    alignas(32) float sc[8];
    for (int l = 0; l < 8; ++l) sc[l] = static_cast<float>(base[lanes.off[l] + i]);  // |s| <= 2^20: defined
    _mm256_store_ps(keys[i], _mm256_add_ps(_mm256_load_ps(sc), _mm256_load_ps(keys[i])));
  }
  const __m256 D = _mm256_set1_ps(2.0f * kGumbelF32Error + 0x1.0p-21f * (big + 39.0f));
  // The rank of q counts the j certainly before it (A_j > fl(A_q + D): K_j > K_q); a pair is counted at most
  // once, and exactly once when decided, so the draw is decided when its ranks sum to n (n - 1) / 2. j runs
  // over whole groups of four, q itself (never counted: D > 0) and keys of -inf past n (never counted) included,
  // so that the inner loop is straight-line code. (A compare's all-ones mask subtracted adds one.)
  const int64_t n4 = (n + 3) / 4 * 4;
  const __m256 below = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = n; i < n4; ++i) _mm256_store_ps(keys[i], below);
  alignas(32) int32_t rank[32][8];
  __m256i total = _mm256_setzero_si256();
  for (int64_t q = 0; q < n; ++q) {
    const __m256 hi = _mm256_add_ps(_mm256_load_ps(keys[q]), D);
    __m256i r[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int64_t j = 0; j < n4; j += 4) {
      for (int u = 0; u < 4; ++u) {
        const __m256 before = _mm256_cmp_ps(_mm256_load_ps(keys[j + u]), hi, _CMP_GT_OQ);
        r[u] = _mm256_sub_epi32(r[u], _mm256_castps_si256(before));
      }
    }
    const __m256i rq = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
    _mm256_store_si256(reinterpret_cast<__m256i*>(rank[q]), rq);
    total = _mm256_add_epi32(total, rq);
  }
  const __m256i pairs = _mm256_set1_epi32(static_cast<int>(n * (n - 1) / 2));
  if (_mm256_movemask_epi8(_mm256_cmpeq_epi32(total, pairs)) != -1) return false;
  // Item q at rank r of each draw (ranks k and beyond to spill slots past the block), then one copy out.
  alignas(32) int32_t items[32 * 8 + 8];
  const __m256i pos = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), kk = _mm256_set1_epi32(static_cast<int>(k));
  const __m256i at0 = _mm256_mullo_epi32(pos, kk);
  const __m256i spill = _mm256_add_epi32(pos, _mm256_set1_epi32(static_cast<int>(8 * k)));
  for (int64_t q = 0; q < n; ++q) {
    const __m256i r = _mm256_load_si256(reinterpret_cast<const __m256i*>(rank[q]));
    alignas(32) int32_t at[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(at),
                       _mm256_blendv_epi8(spill, _mm256_add_epi32(at0, r), _mm256_cmpgt_epi32(kk, r)));
    for (int l = 0; l < 8; ++l) items[at[l]] = static_cast<int32_t>(q);
  }
  std::memcpy(out + d0 * k, items, sizeof(int32_t) * static_cast<size_t>(8 * k));
  return true;
}
#endif

// Buffers of the selection of more than 128 keys, kept by each thread.
struct SortScratch {
  std::vector<std::pair<double, int32_t>> pairs;
  std::vector<uint64_t> a, b;
};

// The order of all `count` keys (larger key first, equal keys by the lower index) by a radix sort: each key's
// order-reversing 64-bit image (so that ascending images are descending keys), its upper half beside the key's
// index, sorted by the upper halves in at most four stable byte passes (indices stay in increasing order among
// equal halves; a pass whose byte is the same everywhere is skipped), then runs of equal upper halves ordered by
// the whole image and the index (rare: the upper half holds sign, exponent and 20 bits of mantissa). No
// comparison branches: std::sort of the keys mispredicted about half its compares. Returns the sorted words,
// the index in the lower half of each.
const uint64_t* radix_order(const double* keys, int64_t count, SortScratch& sc) {
  sc.a.resize(static_cast<size_t>(count));
  sc.b.resize(static_cast<size_t>(count));
  uint64_t* src = sc.a.data();
  uint64_t* dst = sc.b.data();
  const auto image = [](double key) {
    key += 0.0;  // -0 -> +0: the two compare equal
    uint64_t bits;
    std::memcpy(&bits, &key, sizeof bits);
    const uint64_t flip = (bits >> 63) != 0 ? ~uint64_t(0) : 0x8000000000000000ull;
    return ~(bits ^ flip);  // ascending in -key
  };
  uint32_t hist[4][256] = {};
  for (int64_t q = 0; q < count; ++q) {
    const uint64_t hi = image(keys[q]) >> 32;
    src[q] = (hi << 32) | static_cast<uint64_t>(q);
    for (int d = 0; d < 4; ++d) hist[d][(hi >> (8 * d)) & 0xFF] += 1;
  }
  for (int d = 0; d < 4; ++d) {
    const int shift = 32 + 8 * d;
    if (hist[d][(src[0] >> shift) & 0xFF] == static_cast<uint32_t>(count)) continue;  // one value: in order
    uint32_t offset[256];
    uint32_t sum = 0;
    for (int v = 0; v < 256; ++v) {
      offset[v] = sum;
      sum += hist[d][v];
    }
    for (int64_t q = 0; q < count; ++q) dst[offset[(src[q] >> shift) & 0xFF]++] = src[q];
    std::swap(src, dst);
  }
  for (int64_t lo = 0; lo < count;) {  // runs of equal upper halves
    int64_t hi = lo + 1;
    while (hi < count && (src[hi] >> 32) == (src[lo] >> 32)) ++hi;
    if (hi - lo > 1) {
      std::sort(src + lo, src + hi, [&](uint64_t x, uint64_t y) {
        const uint64_t ix = image(keys[static_cast<uint32_t>(x)]), iy = image(keys[static_cast<uint32_t>(y)]);
        return ix < iy || (ix == iy && static_cast<uint32_t>(x) < static_cast<uint32_t>(y));
      });
    }
    lo = hi;
  }
  return src;
}

// The k largest (key, item) of keys[0 .. count) in decreasing key order, lower item first on ties (items are in
// increasing order), -1 past the count: ranks by counting (O(count^2) vectorised compares) for up to 128 keys;
// beyond, the radix order of all of them, or for few of many (k < count / 8) a partial selection (nth_element)
// of the top k, then a sort of those k.
void top_k(const double* keys, const int32_t* items, int64_t count, int64_t k, int32_t* out, SortScratch& sc) {
  const int64_t take = std::min(k, count);
  if (count <= 128) {
    rank_select(keys, items, count, take, out);
  } else if (take * 8 >= count) {
    const uint64_t* order = radix_order(keys, count, sc);
    for (int64_t j = 0; j < take; ++j) out[j] = items[static_cast<uint32_t>(order[j])];
  } else {  // few of many: partial selection, then a sort of those
    auto& pairs = sc.pairs;
    pairs.resize(static_cast<size_t>(count));
    for (int64_t q = 0; q < count; ++q) pairs[static_cast<size_t>(q)] = {keys[q], items[q]};
    const auto before = [](const std::pair<double, int32_t>& a, const std::pair<double, int32_t>& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    const auto mid = pairs.begin() + take;
    std::nth_element(pairs.begin(), mid, pairs.end(), before);
    std::sort(pairs.begin(), mid, before);
    for (int64_t j = 0; j < take; ++j) out[j] = pairs[static_cast<size_t>(j)].second;
  }
  for (int64_t j = take; j < k; ++j) out[j] = -1;
}

}  // namespace

template <class T>
int64_t pl_sample(const T* s, int64_t rows, int64_t n, const uint8_t* mask, bool global_mask, int64_t size,
                  int64_t k, uint64_t seed, bool noise, int32_t* out, int64_t row0, int64_t sample0) {
  const int64_t pairs = (n + 1) / 2, n2 = 2 * pairs;
  // Draws are batched (across rows and samples) so that the vectorised noise loops run over thousands of values.
  // a multiple of the sixteen lanes, so that no batch leaves draws to the one-draw path
  const int64_t batch = std::max<int64_t>(kLanes, 4096 / n2 / kLanes * kLanes);
  // Chunks of draws (row, sample) in row-major order, so that one row with many samples is parallel too.
  const int64_t draws_total = rows * size;
  const int64_t chunk = std::max<int64_t>(kLanes, 65536 / std::max<int64_t>(n, 1) / kLanes * kLanes);
  const int64_t n_chunks = draws_total == 0 ? 0 : (draws_total + chunk - 1) / chunk;
  std::vector<int64_t> bad(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), kNoError);
  for_chunks(draws_total, chunk, threads_for(n_chunks), [&](int, int64_t c, int64_t lo, int64_t hi) {
    // The buffers of the general path, allocated on its first use (the fused AVX-512 path needs none).
    const size_t values = static_cast<size_t>(batch * n2), blocks = static_cast<size_t>(batch * pairs);
    std::vector<uint64_t> bits, row_of;
    std::vector<uint32_t> sample_of, pair_of;
    std::vector<double> g, keys;
    std::vector<int32_t> items;
    SortScratch scratch;
    // Draws [d0, d0 + count) of the row-major (row, sample) order; draw d writes out[d * k ..].
    // Draws [d0, d0 + count) with float64 keys: the noise of all of them in vectorised loops, then the selection.
    auto general = [&](int64_t d0, int64_t count) {
      if (count == 0) return;
      if (keys.size() != static_cast<size_t>(n)) {
        bits.resize(values);
        row_of.resize(blocks);
        sample_of.resize(blocks);
        pair_of.resize(blocks);
        g.assign(values, 0.0);  // stays 0 without noise (the mode)
        keys.resize(static_cast<size_t>(n));
        items.resize(static_cast<size_t>(n));
      }
      if (noise) {
        const int64_t np = pairs, ns = size;  // locals: the stores below cannot alias them
        uint64_t* ro = row_of.data();
        uint32_t *so = sample_of.data(), *po = pair_of.data();
        int64_t b = d0 / ns, t = d0 - b * ns;
        for (int64_t q = 0; q < count; ++q) {
          for (int64_t j = 0; j < np; ++j) {
            ro[q * np + j] = static_cast<uint64_t>(b + row0);
            so[q * np + j] = static_cast<uint32_t>(t + sample0);
            po[q * np + j] = static_cast<uint32_t>(j);
          }
          if (++t == ns) t = 0, ++b;
        }
        noise_bits(seed, row_of.data(), sample_of.data(), pair_of.data(), count * pairs, bits.data());
        gumbel_of_bits(count * n2, bits.data(), g.data());
      }
      int64_t q0 = 0;
      if (mask == nullptr && n <= 32) {  // sixteen draws per vector step
        const T* srows[kLanes];
        const double* nz[kLanes];
        int32_t* outs[kLanes];
        for (; q0 + kLanes <= count; q0 += kLanes) {
          for (int l = 0; l < kLanes; ++l) {
            const int64_t d = d0 + q0 + l;
            srows[l] = s + d / size * n;
            nz[l] = g.data() + (q0 + l) * n2;
            outs[l] = out + d * k;
          }
          select_lanes(srows, noise ? nz : nullptr, n, k, outs);
        }
      }
      for (int64_t q = q0; q < count; ++q) {
        const int64_t d = d0 + q, b = d / size;
        const T* sr = s + b * n;
        const uint8_t* mk = mask == nullptr ? nullptr : (global_mask ? mask : mask + b * n);
        const double* gt = g.data() + q * n2;
        int64_t avail = 0;
        for (int64_t i = 0; i < n; ++i) {
          if (!pl::available(mk, i)) continue;
          keys[static_cast<size_t>(avail)] = static_cast<double>(sr[i]) + gt[i];
          items[static_cast<size_t>(avail++)] = static_cast<int32_t>(i);
        }
        top_k(keys.data(), items.data(), avail, k, out + d * k, scratch);
      }
    };
    auto batch_of = [&](int64_t d0, int64_t count) {
#if defined(PREFCAL_X86_AVX2)
      if (mask == nullptr && n <= 32 && cpu_avx512()) {  // fused, sixteen draws per step
        const int64_t whole = count / kLanes * kLanes;
        for (int64_t q = 0; q < whole; q += kLanes) {
          if (noise && g_sample_f32.load(std::memory_order_relaxed)) {
            if (draw_lanes_f32_avx512(seed, s, d0 + q, size, n, k, row0, sample0, out)) continue;
            g_sample_f32_fallbacks.fetch_add(1, std::memory_order_relaxed);
          }
          draw_lanes_avx512(seed, noise, s, d0 + q, size, n, k, row0, sample0, out);
        }
        d0 += whole, count -= whole;
      } else if (mask == nullptr && n <= 32 && noise && g_sample_f32.load(std::memory_order_relaxed) &&
                 cpu_avx2_fma()) {  // certified float32 keys, eight draws per step; float64 keys where undecided
        const int64_t whole = count / 8 * 8;
        for (int64_t q = 0; q < whole; q += 8) {
          if (draw_lanes_f32_avx2(seed, s, d0 + q, size, n, k, row0, sample0, out)) continue;
          g_sample_f32_fallbacks.fetch_add(1, std::memory_order_relaxed);
          general(d0 + q, 8);
        }
        d0 += whole, count -= whole;
      }
#endif
      general(d0, count);
    };
    // Every row is checked by the chunk that holds its first draw (or by the chunk a row continues into).
    const int64_t b_lo = lo / size, b_hi = (hi + size - 1) / size;
    const int64_t f = first_nonfinite_row(s + b_lo * n, b_hi - b_lo, n);
    if (f >= 0) {
      bad[static_cast<size_t>(c)] = b_lo + f;
      return;
    }
    for (int64_t d0 = lo; d0 < hi; d0 += batch) batch_of(d0, std::min(batch, hi - d0));
  });
  return min_of(bad);
}

// P(i before j) of one row whose scores span at most 300: sigmoid(d) = 1 / (1 + e) or e / (1 + e) with
// e = exp(-|d|) by fastmath::exp_neg (within 2 ulp there), a vectorised loop; the same e for (i, j) and (j, i),
// so the two add up to 1 within rounding, and exactly 0.5 on the diagonal.
template <class T>
__attribute__((always_inline)) inline void pairwise_row_impl(const T* sr, int64_t n, T* o) {
  for (int64_t i = 0; i < n; ++i) {
    const double si = static_cast<double>(sr[i]);
    T* oi = o + i * n;
    for (int64_t j = 0; j < n; ++j) {
      const double d = si - static_cast<double>(sr[j]);
      const double e = fastmath::exp_neg(-std::fabs(d));
      oi[j] = static_cast<T>((d >= 0.0 ? 1.0 : e) / (1.0 + e));
    }
  }
}
PREFCAL_CLONES void pairwise_row(const float* sr, int64_t n, float* o) { pairwise_row_impl(sr, n, o); }
PREFCAL_CLONES void pairwise_row(const double* sr, int64_t n, double* o) { pairwise_row_impl(sr, n, o); }

template <class T>
int64_t pl_pairwise(const T* s, int64_t rows, int64_t n, T* out) {
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(n * n, 1));
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  std::vector<int64_t> bad(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), kNoError);
  for_chunks(rows, chunk, threads_for(n_chunks), [&](int, int64_t c, int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const T* sr = s + b * n;
      if (!pl::finite_row(sr, n)) {
        bad[static_cast<size_t>(c)] = b;
        return;
      }
      T* o = out + b * n * n;
      const auto [lo_s, hi_s] = std::minmax_element(sr, sr + n);
      if (n > 0 && static_cast<double>(*hi_s) - static_cast<double>(*lo_s) <= 300.0) {
        pairwise_row(sr, n, o);
        continue;
      }
      for (int64_t i = 0; i < n; ++i) {  // wider rows: the exact sigmoid (probabilities down to subnormals)
        for (int64_t j = 0; j < n; ++j) o[i * n + j] = static_cast<T>(pl::sigmoid(static_cast<double>(sr[i]) - sr[j]));
      }
    }
  });
  return min_of(bad);
}

template <class I>
int64_t pl_fit_setup(const I* r, const PLRows& sh, const double* weights, double* wins, uint8_t* edges,
                     double* denom0, double* ll0) {
  const int64_t N = sh.N, m = sh.m, n = sh.n;
  const int64_t slabs = slab_count(N, n * 16 + n * n);
  const int64_t chunk = std::max<int64_t>(1, (N + slabs - 1) / slabs);
  const int64_t n_chunks = N == 0 ? 0 : (N + chunk - 1) / chunk;
  std::vector<int64_t> bad(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), kNoError);
  Slabs<double> part(n_chunks, 2 * n);
  Slabs<uint8_t> part_edges(n_chunks, n * n);
  std::vector<double> part_ll(static_cast<size_t>(n_chunks), 0.0);
  for_chunks(N, chunk, threads_for(n_chunks), [&](int, int64_t c, int64_t lo, int64_t hi) {
    Scratch sc(m, n);
    double* w = part.open(c);
    uint8_t* e = part_edges.open(c);
    const pl::AddTo add{w};
    auto edge = [e, n](int64_t a, int64_t b) { e[a * n + b] = 1; };
    // The first MM pass at equal worths: stage j of a row with |A| available items has |A| - j of them, so
    // an item's denominator is the prefix sum H[min(P_i, Lc - 1)] of 1 / (|A| - j), and the log-likelihood
    // -sum_{j < Lc} log(|A| - j); both tabulated for the last |A| seen (one value for unmasked data).
    double* d0 = w + n;
    std::vector<double> harmonic(static_cast<size_t>(n + 1)), log_sum(static_cast<size_t>(n + 1));
    int64_t tabulated = -1;
    auto tabulate = [&](int64_t n_avail) {
      if (tabulated == n_avail) return;
      double h = 0.0, l = 0.0;
      for (int64_t j = 0; j < n_avail; ++j) {
        h += 1.0 / static_cast<double>(n_avail - j);
        l += std::log(static_cast<double>(n_avail - j));
        harmonic[static_cast<size_t>(j)] = h;
        log_sum[static_cast<size_t>(j)] = l;
      }
      tabulated = n_avail;
    };
    double ll = 0.0;
    auto general = [&](int64_t b, auto& bits) {
      const I* rr = r + b * m;
      const uint8_t* mk = mask_row(sh, b);
      const double wt = weights == nullptr ? 1.0 : weights[b];
      const int64_t L = pl::parse_ranking(rr, m, n, mk, bits);
      const bool good = L >= 0 && wt >= 0.0 && wt <= 1.7976931348623157e308;
      if (good) {
        pl::setup_row(rr, L, n, mk, bits, wt, add, edge);
        int64_t n_avail = n;
        if (mk != nullptr) {
          n_avail = 0;
          for (int64_t i = 0; i < n; ++i) n_avail += mk[i] != 0 ? 1 : 0;
        }
        const int64_t lc = std::min(L, n_avail - 1);
        if (lc > 0 && wt != 0.0) {
          tabulate(n_avail);
          for (int64_t p = 0; p < L; ++p) d0[static_cast<int64_t>(rr[p])] += wt * harmonic[static_cast<size_t>(std::min(p, lc - 1))];
          if (L < n_avail) {
            const double last = wt * harmonic[static_cast<size_t>(lc - 1)];
            for (int64_t i = 0; i < n; ++i) {
              if (pl::available(mk, i) && !bits.test(i)) d0[i] += last;
            }
          }
          ll -= wt * log_sum[static_cast<size_t>(lc - 1)];
        }
      }
      pl::clear_listed(rr, m, n, bits);
      return good;
    };
    // Full rankings of up to 128 items without a mask: checked by the bits of their items, then the same
    // additions as `general` in the same order (wins and edges as pl::setup_row, then the denominators), with
    // no per-row count of the available items. A row that fails either check goes to `general`, which
    // reports it.
    const bool fast = sh.mask == nullptr && m == n && n >= 2 && n <= 128;
    if (!fast) {
      bad[static_cast<size_t>(c)] = for_rows(n, sc, lo, hi, general);
    } else {
      tabulate(n);
      auto ones = [](int64_t k) { return k <= 0 ? uint64_t(0) : k >= 64 ? ~uint64_t(0) : (uint64_t(1) << k) - 1; };
      const uint64_t all0 = ones(n), all1 = ones(n - 64);
      const double* H = harmonic.data();
      const double lsn = log_sum[static_cast<size_t>(n - 2)];
      const int64_t nn = n;  // locals: the byte stores of the edges could alias what the lambda refers to
      double* const dw = w;
      double* const dd = d0;
      uint8_t* const de = e;
      // Two: items 64-127 too (a second word of bits)
      auto rows = [&](auto two) {
        constexpr bool Two = decltype(two)::value;
        for (int64_t b = lo; b < hi; ++b) {
          const I* rr = r + b * nn;
          const double wt = weights == nullptr ? 1.0 : weights[b];
          uint64_t seen0 = 0, seen1 = 0;  // items 0-63, 64-127
          bool in_range = true;
          for (int64_t p = 0; p < nn; ++p) {
            const uint64_t v = static_cast<uint64_t>(static_cast<int64_t>(rr[p]));
            in_range &= v < static_cast<uint64_t>(nn);
            const uint64_t bit = uint64_t(1) << (v & 63u);
            if constexpr (Two) {
              const uint64_t high = uint64_t(0) - ((v >> 6) & 1u);  // all ones for items 64-127 (no branch)
              seen0 |= bit & ~high;
              seen1 |= bit & high;
            } else {
              seen0 |= bit;
            }
          }
          if (!(in_range && seen0 == all0 && seen1 == all1 && wt >= 0.0 && wt <= 1.7976931348623157e308)) {
            if (for_rows(nn, sc, b, b + 1, general) != kNoError) {  // the bit set for n (see for_rows)
              bad[static_cast<size_t>(c)] = b;
              break;
            }
            continue;
          }
          if (wt == 0.0) continue;
          for (int64_t p = 0; p + 1 < nn; ++p) {
            const int64_t v = static_cast<int64_t>(rr[p]);
            dw[v] += wt;
            de[v * nn + static_cast<int64_t>(rr[p + 1])] = 1;
          }
          for (int64_t p = 0; p + 1 < nn; ++p) dd[static_cast<int64_t>(rr[p])] += wt * H[p];
          dd[static_cast<int64_t>(rr[nn - 1])] += wt * H[nn - 2];
          ll -= wt * lsn;
        }
      };
      if (n <= 64) {
        rows(std::false_type{});
      } else {
        rows(std::true_type{});
      }
    }
    part_ll[static_cast<size_t>(c)] = ll;
  });
  std::fill(wins, wins + n, 0.0);
  std::fill(denom0, denom0 + n, 0.0);
  std::fill(edges, edges + n * n, uint8_t(0));
  *ll0 = 0.0;
  for (int64_t c = 0; c < n_chunks; ++c) {
    for (int64_t i = 0; i < n; ++i) wins[i] += part[c][i];
    for (int64_t i = 0; i < n; ++i) denom0[i] += part[c][n + i];
    for (int64_t i = 0; i < n * n; ++i) edges[i] |= part_edges[c][i];
    *ll0 += part_ll[static_cast<size_t>(c)];
  }
  return min_of(bad);
}

template <class I>
double pl_fit_pass(const I* r, const PLRows& sh, const double* weights, const double* theta, double* denom, double* q,
                   bool want_ll) {
  const int64_t N = sh.N, m = sh.m, n = sh.n;
  const bool want_q = q != nullptr;
  const int64_t slabs = slab_count(N, n * 8 + (want_q ? n * n * 8 : 0));
  const int64_t chunk = std::max<int64_t>(1, (N + slabs - 1) / slabs);
  const int64_t n_chunks = N == 0 ? 0 : (N + chunk - 1) / chunk;
  const int64_t qn = want_q ? n * n : 0;
  Slabs<double> part(n_chunks, n + qn);
  std::vector<double> part_ll(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), 0.0);
  const double top = *std::max_element(theta, theta + n);
  std::vector<double> w(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) w[static_cast<size_t>(i)] = std::exp(theta[i] - top);
  const double bottom = n > 0 ? *std::min_element(theta, theta + n) : 0.0;
  const bool lanes_ok = !want_q && sh.mask == nullptr && m <= n && n >= 2 && n <= kFitLanesMax && top - bottom <= 300.0;
  for_chunks(N, chunk, threads_for(n_chunks), [&](int, int64_t c, int64_t lo, int64_t hi) {
    Scratch sc(m, n);
    double* base = part.open(c);
    const pl::AddTo add_d{base};
    const pl::AddTo add_q{want_q ? base + n : nullptr};
    double ll = 0.0;
    const pl::Strided<double> inv = sc.inv_view();
    const Strided<int64_t> order{sc.order.data(), 1};
    auto row = [&](int64_t b, auto& bits) {
      const I* rr = r + b * m;
      const uint8_t* mk = mask_row(sh, b);
      const double wt = weights == nullptr ? 1.0 : weights[b];
      const int64_t L = pl::parse_ranking(rr, m, n, mk, bits);  // valid: checked by the setup pass
      ll += pl::fit_row(w.data(), theta, top, rr, L, n, mk, bits, wt, add_d, add_q, want_ll, inv, order);
      pl::clear_listed(rr, m, n, bits);
      return true;
    };
    int64_t start = lo;
    if (lanes_ok) {
      std::vector<double> dl(static_cast<size_t>(n * kLanes), 0.0);
      for (; start + kLanes <= hi; start += kLanes) {
        double block_ll = 0.0;
        uint32_t rest = fit_lanes(r + start * m, m, n, weights == nullptr ? nullptr : weights + start, w.data(),
                                  theta, top, want_ll, dl.data(), &block_ll);
        ll += block_ll;
        while (rest != 0) {  // with the bit set for_rows picks (a register's 64 bits hold too few items past 64)
          const int64_t b = start + __builtin_ctz(rest);
          for_rows(n, sc, b, b + 1, row);
          rest &= rest - 1;
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        double t = 0.0;
        for (int l = 0; l < kLanes; ++l) t += dl[static_cast<size_t>(i * kLanes + l)];
        base[i] += t;
      }
    }
    for_rows(n, sc, start, hi, row);
    part_ll[static_cast<size_t>(c)] = ll;
  });
  std::fill(denom, denom + n, 0.0);
  if (want_q) std::fill(q, q + qn, 0.0);
  double ll = 0.0;
  for (int64_t c = 0; c < n_chunks; ++c) {
    const double* base = part[c];
    for (int64_t i = 0; i < n; ++i) denom[i] += base[i];
    for (int64_t i = 0; i < qn; ++i) q[i] += base[n + i];
    ll += part_ll[static_cast<size_t>(c)];
  }
  return ll;
}

#define PREFCAL_PL_TI(T, I)                                                                                  \
  template int64_t pl_loglik<T, I>(const T*, const I*, const PLRows&, T*, T*);                            \
  template int64_t pl_temperature<T, I>(const T*, const I*, const PLRows&, double, double*);
PREFCAL_PL_TI(float, int32_t)
PREFCAL_PL_TI(float, int64_t)
PREFCAL_PL_TI(double, int32_t)
PREFCAL_PL_TI(double, int64_t)
#undef PREFCAL_PL_TI

bool set_sample_f32(bool on) { return g_sample_f32.exchange(on); }

bool gumbel_f32(const uint32_t* a, const uint32_t* b, int64_t count, float* out) {
#if defined(PREFCAL_X86_AVX2)
  if (cpu_avx512()) {
    gumbel_f32_lanes(a, b, count, out);
  } else if (cpu_avx2_fma()) {
    gumbel_f32_lanes_avx2(a, b, count, out);
  } else {
    return false;
  }
  return true;
#else
  (void)a, (void)b, (void)count, (void)out;
  return false;
#endif
}

float gumbel_f32_error() { return kGumbelF32Error; }

int64_t sample_f32_fallbacks() { return g_sample_f32_fallbacks.load(); }

int simd_level() {
#if defined(PREFCAL_X86_AVX2)
  const CpuFeatures& f = cpu_features();
  return f.avx512f && f.avx512cd ? 2 : f.avx2 && f.fma ? 1 : 0;
#else
  return 0;
#endif
}

int set_simd_cap(int cap) { return g_simd_cap.exchange(cap); }

int sample_f32_group() {
#if defined(PREFCAL_X86_AVX2)
  return cpu_avx512() ? kLanes : cpu_avx2_fma() ? 8 : 0;
#else
  return 0;
#endif
}

bool set_loglik_explicit(bool on) { return g_loglik_explicit.exchange(on); }
bool set_temperature_lanes(bool on) { return g_temperature_lanes.exchange(on); }
bool set_loglik_lanes(bool on) { return g_loglik_lanes.exchange(on); }

template int64_t pl_sample<float>(const float*, int64_t, int64_t, const uint8_t*, bool, int64_t, int64_t, uint64_t,
                                  bool, int32_t*, int64_t, int64_t);
template int64_t pl_sample<double>(const double*, int64_t, int64_t, const uint8_t*, bool, int64_t, int64_t, uint64_t,
                                   bool, int32_t*, int64_t, int64_t);
template int64_t pl_pairwise<float>(const float*, int64_t, int64_t, float*);
template int64_t pl_pairwise<double>(const double*, int64_t, int64_t, double*);
template int64_t pl_fit_setup<int32_t>(const int32_t*, const PLRows&, const double*, double*, uint8_t*, double*, double*);
template int64_t pl_fit_setup<int64_t>(const int64_t*, const PLRows&, const double*, double*, uint8_t*, double*, double*);
template double pl_fit_pass<int32_t>(const int32_t*, const PLRows&, const double*, const double*, double*, double*,
                                     bool);
template double pl_fit_pass<int64_t>(const int64_t*, const PLRows&, const double*, const double*, double*, double*,
                                     bool);

}  // namespace prefcal::cpu
