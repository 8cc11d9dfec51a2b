// Plackett-Luce per-row arithmetic shared by the CPU and CUDA kernels (SPEC §1, §2, §7).
//
// A row: scores s (n,), a ranking r (m,) whose first L entries list items and whose tail is -1 padding,
// and optionally a mask (n,) of available items (A; default all). The L listed items are the top-L of A in
// that order; the rest of A is below them in unobserved order. With R_j = A minus {r_0 .. r_{j-1}} and
// D_j = sum_{i in R_j} exp(s_i):
//
//   log P(r) = sum_{j < Lc} s_{r_j} - log D_j,       Lc = min(L, |A| - 1)
//
// (a stage with a single remaining item has probability 1, so it is not counted: a ranking that lists every
// available item and one that lists all but one have the same likelihood). The gradient:
//
//   d log P / d s_i = [i = r_p for some p < Lc] - exp(s_i) * sum_{j < Lc, j <= P_i} 1 / D_j
//
// with P_i the position of i when listed and Lc - 1 for an unlisted available item; 0 for unavailable items.
//
// Numerics. Every D_j is a suffix sum taken from the last listed item backwards (all terms positive: no
// cancellation). Fast path, when the available scores of a row span at most Span<C> (80 in float32, 300 in
// float64): w_i = exp(s_i - max) in the compute type C, D_j accumulated in C, the logs of the D_j summed as
// the log of a float64 product renormalised before it can underflow or overflow (one log per ~100 stages
// instead of one per stage, for any n). Otherwise (scores up to +-1e4 and beyond): an online log-sum-exp in float64 per stage. The
// float32 path of the CPU and the GPU is the same code.
//
// Validation (fused): an item outside [0, n), a repeated item, a value other than -1 after the first -1, a
// listed item outside the mask, a non-finite score. The kernels report the first bad row; Python words the
// message (prefcal/_validation.py).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "prefcal/common.hpp"
#include "prefcal/fastmath.hpp"
#include "prefcal/philox.hpp"

namespace prefcal::pl {

// A strided view: element i at p[i * stride] (stride 1 on the CPU; the GPU interleaves its threads).
template <class T>
struct Strided {
  T* p;
  int64_t stride;
  PREFCAL_HD T& operator[](int64_t i) const { return p[i * stride]; }
};

// Set of listed items for n <= 64, in a register.
struct Bits64 {
  uint64_t v = 0;
  PREFCAL_HD bool test(int64_t i) const { return (v >> i) & 1u; }
  PREFCAL_HD void set(int64_t i) { v |= uint64_t(1) << i; }
};

// Set of listed items of any size, in (strided) memory; words of 32 bits (the GPU's per-thread scratch; the
// host's is BytesRef).
struct BitsRef {
  Strided<uint32_t> w;
  PREFCAL_HD bool test(int64_t i) const { return (w[i >> 5] >> (i & 31)) & 1u; }
  PREFCAL_HD void set(int64_t i) { w[i >> 5] |= uint32_t(1) << (i & 31); }
  PREFCAL_HD void clear_word(int64_t i) { w[i >> 5] = 0; }
};

// Set of listed items of any size in host memory, one byte an item: setting an item never reads what another
// item's store wrote (with 32 items a word, each parse was a chain of read-modify-writes of a few words).
struct BytesRef {
  uint8_t* b;
  PREFCAL_HD bool test(int64_t i) const { return b[i] != 0; }
  PREFCAL_HD void set(int64_t i) { b[i] = 1; }
  PREFCAL_HD void clear_word(int64_t i) { b[i] = 0; }
};

template <class C>
struct Span;
template <>
struct Span<float> {
  static constexpr double value = 80.0;
};
template <>
struct Span<double> {
  static constexpr double value = 300.0;
};

// exp of x in [-Span<C>, 0] (the fast path's only use): the device's exp, the host's inline polynomial.
PREFCAL_HD double exp_c(double x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  return fastmath::exp_neg(x);
#endif
}
PREFCAL_HD float exp_c(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);  // ~2 ulp like the host's; __expf drifts to ~95 ulp at x = -80
#else
  return fastmath::exp_neg(x);
#endif
}

// Logistic function, exact at 0 (0.5) and without overflow for any argument.
PREFCAL_HD double sigmoid(double d) {
  if (d >= 0.0) return 1.0 / (1.0 + std::exp(-d));
  const double e = std::exp(d);
  return e / (1.0 + e);
}

// Reads the ranking: returns L (the number of listed items) or -1 when the row is invalid. Sets the bit of
// every listed item; the caller clears them afterwards with clear_listed (also after an invalid row).
template <class I, class Bits>
PREFCAL_HD int64_t parse_ranking(const I* r, int64_t m, int64_t n, const uint8_t* mask, Bits& bits) {
  int64_t L = m;
  bool ended = false;
  for (int64_t j = 0; j < m; ++j) {
    const int64_t v = static_cast<int64_t>(r[j]);
    if (v == -1) {
      if (!ended) L = j;
      ended = true;
      continue;
    }
    if (ended || v < 0 || v >= n) return -1;
    if (mask != nullptr && !mask[v]) return -1;
    if (bits.test(v)) return -1;
    bits.set(v);
  }
  return L;
}

// The same for n <= 64 with the set in a register, branch-free except at the padding: out-of-range items
// (negative ones included), repeats and items outside the mask accumulate into one flag.
template <class I>
PREFCAL_HD int64_t parse_ranking(const I* r, int64_t m, int64_t n, const uint8_t* mask, Bits64& bits) {
  int64_t L = m;
  uint64_t seen = 0, bad = 0;
  for (int64_t j = 0; j < m; ++j) {
    const int64_t v = static_cast<int64_t>(r[j]);
    if (v == -1) {
      L = j;
      for (int64_t k = j + 1; k < m; ++k) bad |= static_cast<uint64_t>(r[k] != I(-1));
      break;
    }
    bad |= static_cast<uint64_t>(static_cast<uint64_t>(v) >= static_cast<uint64_t>(n));
    const uint64_t bit = uint64_t(1) << (v & 63);
    bad |= seen & bit;
    seen |= bit;
    if (mask != nullptr) bad |= static_cast<uint64_t>(bad == 0 && mask[v] == 0);
  }
  bits.v = seen;
  return bad != 0 ? -1 : L;
}

template <class I, class Bits>
PREFCAL_HD void clear_listed(const I* r, int64_t m, int64_t n, Bits& bits) {
  for (int64_t j = 0; j < m; ++j) {
    const int64_t v = static_cast<int64_t>(r[j]);
    if (v >= 0 && v < n) bits.clear_word(v);
  }
}

template <class I>
PREFCAL_HD void clear_listed(const I*, int64_t, int64_t, Bits64& bits) {
  bits.v = 0;
}

// Rows listing more than one item in 16 clear the whole byte set (vector stores) instead of item by item.
template <class I>
PREFCAL_HD void clear_listed(const I* r, int64_t m, int64_t n, BytesRef& bits) {
  if (m * 16 > n) {
    for (int64_t i = 0; i < n; ++i) bits.b[i] = 0;  // (a memset, whose size GCC cannot bound from a signed n)
    return;
  }
  for (int64_t j = 0; j < m; ++j) {
    const int64_t v = static_cast<int64_t>(r[j]);
    if (v >= 0 && v < n) bits.b[v] = 0;
  }
}

// The exponent field of a float or double, as an unsigned integer of its width: ExpBits<T>::kAll (all ones)
// exactly when x is NaN or +-inf. Integer operations: the loops over it vectorise.
template <class T>
struct ExpBits {
  using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  static constexpr U kAll = sizeof(T) == 4 ? U(0x7F800000u) : U(0x7FF0000000000000ull);
};

template <class T>
PREFCAL_HD typename ExpBits<T>::U exponent_bits(T x) {
  typename ExpBits<T>::U bits;
  memcpy(&bits, &x, sizeof bits);
  return bits & ExpBits<T>::kAll;
}

// Whether every score is finite (no early exit: the loop vectorises).
template <class T>
PREFCAL_HD bool finite_row(const T* s, int64_t n) {
  using U = typename ExpBits<T>::U;
  U bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    U bits;
    memcpy(&bits, s + i, sizeof bits);
    bad |= static_cast<U>((bits & ExpBits<T>::kAll) == ExpBits<T>::kAll);
  }
  return bad == 0;
}

PREFCAL_HD bool available(const uint8_t* mask, int64_t i) { return mask == nullptr || mask[i] != 0; }

// The one available item that a ranking of L listed items (set in bits) leaves out, or -1 when it leaves none or
// several: a ranking of all available items but one is a full ranking of its choice set (SPEC §1), that item last.
template <class Bits>
PREFCAL_HD int64_t implied_last(const uint8_t* mask, int64_t n, int64_t L, const Bits& bits) {
  if (mask == nullptr && L != n - 1) return -1;
  int64_t last = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (available(mask, i) && !bits.test(i)) {
      if (last >= 0) return -1;
      last = i;
    }
  }
  return last;
}

// Number of available items, and the largest and smallest available score.
template <class T>
struct RowStats {
  int64_t n_avail;
  double mx, mn;
};

template <class T>
PREFCAL_HD RowStats<T> row_stats(const T* s, int64_t n, const uint8_t* mask) {
  RowStats<T> st{0, -INFINITY, INFINITY};
  if (mask == nullptr && n > 0) {
    T hi = s[0], lo = s[0];
    for (int64_t i = 1; i < n; ++i) {
      hi = s[i] > hi ? s[i] : hi;
      lo = s[i] < lo ? s[i] : lo;
    }
    return RowStats<T>{n, static_cast<double>(hi), static_cast<double>(lo)};
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!available(mask, i)) continue;
    const double x = static_cast<double>(s[i]);
    st.n_avail += 1;
    st.mx = x > st.mx ? x : st.mx;
    st.mn = x < st.mn ? x : st.mn;
  }
  return st;
}

// logs + exps ln 2 + log(prod): the log of a product kept as a mantissa `prod` (normal, positive), a binary
// exponent and logs taken apart. One expression for every caller (LogProduct, the CPU's lanes), so that where
// the compiler contracts its multiply and add (FMA) all of them round alike.
PREFCAL_HD double product_log(double logs, int64_t exps, double prod) {
#if defined(__CUDA_ARCH__)
  const double lp = log(prod);
#else
  const double lp = fastmath::log_pos(prod);  // inline
#endif
  return logs + static_cast<double>(exps) * 0.6931471805599453 + lp;
}

// Accumulates sum_j log d_j (d_j > 0) as the log of a float64 product, with one log per row in practice:
// when the product leaves [2^-498, 2^498] its binary exponent moves to an integer (bit operations, no call in
// the loop). mul takes any positive finite factor (one outside [1e-150, 1e150] is logged on its own);
// mul_bounded a factor known to lie in [1e-150, 1e150] (the fast path's normalisers: worths >= e^-300, at most
// 2^31 items of worth <= 1).
// Whether a product needs no renormalisation (binary exponents 525 .. 1521), by a floating compare: tested on
// its bits, the product went through an integer register every stage, in its chain of multiplies.
PREFCAL_HD bool product_in_range(double prod) { return prod >= 0x1p-498 && prod < 0x1p499; }

// x (normal, positive) as x * 2^(1023 - e) in [1, 2), e its biased binary exponent (exact: a multiply by a power
// of 2, which keeps the value in a floating register).
PREFCAL_HD double unit_mantissa(double x, int32_t& e) {
  uint64_t bits;
  memcpy(&bits, &x, sizeof bits);
  e = static_cast<int32_t>((bits >> 52) & 0x7FF);
  const uint64_t scale_bits = static_cast<uint64_t>(2046 - e) << 52;
  double scale;
  memcpy(&scale, &scale_bits, sizeof scale);
  return x * scale;
}

struct LogProduct {
  double prod = 1.0, logs = 0.0;
  int64_t exps = 0;
  PREFCAL_HD void renormalise() {  // the product is normal here: its factors are bounded
    if (product_in_range(prod)) return;
    int32_t e;
    prod = unit_mantissa(prod, e);
    exps += e - 1023;
  }
  PREFCAL_HD void mul(double d) {
    if (d < 1e-150 || d > 1e150) {
      logs += std::log(d);
      return;
    }
    prod *= d;
    renormalise();
  }
  PREFCAL_HD void mul_bounded(double d) {
    prod *= d;
    renormalise();
  }
  PREFCAL_HD double value() const { return product_log(logs, exps, prod); }
};

// Online log-sum-exp in float64 (the wide-range path).
struct OnlineLse {
  double m = -INFINITY, acc = 0.0;
  PREFCAL_HD void add(double x) {
    if (x > m) {
      acc = acc * std::exp(m - x) + 1.0;
      m = x;
    } else {
      acc += std::exp(x - m);
    }
  }
  PREFCAL_HD double value() const { return m + std::log(acc); }
};

// The float32 fast path's product of normalisers d_j in [e^-80, 2^31): after every factor the binary
// exponent moves to an integer and the mantissa stays in [1, 2), so the product is always a normal float (one
// multiply and three integer operations a factor, no branch); log at the end. Its rounding (about 2^-24
// relative a factor) is that of the float32 normalisers themselves.
struct LogProductF {
  float prod = 1.0f;
  int32_t exps = 0;
  PREFCAL_HD void mul(float d) {
    prod *= d;
    uint32_t b;
    memcpy(&b, &prod, sizeof b);
    exps += static_cast<int32_t>(b >> 23) - 127;
    b = (b & 0x007FFFFFu) | 0x3F800000u;
    memcpy(&prod, &b, sizeof prod);
  }
  PREFCAL_HD double value() const {
    return static_cast<double>(exps) * 0.6931471805599453 + static_cast<double>(std::log(prod));
  }
};

template <class C>
struct FastProduct {
  using type = LogProduct;
};
template <>
struct FastProduct<float> {
  using type = LogProductF;
};

// Rows of at most this many items keep their worths in a local buffer on the host (8 KiB at most): one loop of
// exps the compiler vectorises instead of one exp per stage (10^5 float32 rows of 100 items: 86 -> 45 ms).
constexpr int64_t kLocalItems = 1024;

// log P(r) of one valid row (bits hold the listed items). With grad != nullptr also the gradient, written
// to grad[0 .. n) (which doubles as storage for the worths), using inv (m entries) as scratch.
template <class C, class T, class I, class Bits>
PREFCAL_HD double row_loglik(const T* s, const I* r, int64_t L, int64_t n, const uint8_t* mask, const Bits& bits,
                             T* grad, Strided<double> inv) {
  static_assert(std::is_same<C, T>::value, "the compute type is the scores' type");
  const RowStats<T> st = row_stats(s, n, mask);
  const int64_t Lc = L < st.n_avail - 1 ? L : st.n_avail - 1;
  if (grad != nullptr) {
    for (int64_t i = 0; i < n; ++i) grad[i] = T(0);
  }
  if (Lc <= 0) return 0.0;
  double ll = 0.0;
  if (st.mx - st.mn <= Span<C>::value) {
    const C mx = static_cast<C>(st.mx);
    // The worths, kept in the gradient row when there is one (and on the host in a local buffer for small
    // rows, in a loop the compiler vectorises); else recomputed where needed.
#if defined(__CUDA_ARCH__)
    C* w = nullptr;
#else
    C wloc[kLocalItems];
    C* w = n <= kLocalItems ? wloc : nullptr;
#endif
    if (grad != nullptr) w = reinterpret_cast<C*>(grad);  // C == T
    C acc = C(0);  // worth of the unlisted available items
    if (w != nullptr && mask == nullptr) {
      for (int64_t i = 0; i < n; ++i) w[i] = exp_c(static_cast<C>(s[i]) - mx);
      if (L < n) {  // else every item is listed: none is below the listed ones
        for (int64_t i = 0; i < n; ++i) acc += bits.test(i) ? C(0) : w[i];
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        if (!available(mask, i)) {
          if (w != nullptr) w[i] = C(0);
          continue;
        }
        const C wi = exp_c(static_cast<C>(s[i]) - mx);
        if (w != nullptr) w[i] = wi;
        if (!bits.test(i)) acc += wi;
      }
    }
    LogProduct logd;
    int64_t j = L - 1;
    for (; j >= Lc; --j) {  // the uncounted last stage (a single item left), if listed
      const int64_t item = static_cast<int64_t>(r[j]);
      acc += w != nullptr ? w[item] : exp_c(static_cast<C>(s[item]) - mx);
    }
    if (w != nullptr && grad == nullptr) {  // the common case, without per-stage branches
      for (; j >= 0; --j) {
        const int64_t item = static_cast<int64_t>(r[j]);
        acc += w[item];
        ll += static_cast<double>(static_cast<C>(s[item]) - mx);
        logd.mul_bounded(static_cast<double>(acc));
      }
    } else {
      for (; j >= 0; --j) {
        const int64_t item = static_cast<int64_t>(r[j]);
        acc += w != nullptr ? w[item] : exp_c(static_cast<C>(s[item]) - mx);
        ll += static_cast<double>(static_cast<C>(s[item]) - mx);
        logd.mul_bounded(static_cast<double>(acc));
        if (grad != nullptr) inv[j] = 1.0 / static_cast<double>(acc);
      }
    }
    ll -= logd.value();
    if (grad != nullptr) {
      double c = 0.0;  // sum_{j <= p} 1 / D_j
      for (int64_t p = 0; p < L; ++p) {
        const int64_t item = static_cast<int64_t>(r[p]);
        if (p < Lc) c += inv[p];
        grad[item] = static_cast<T>((p < Lc ? 1.0 : 0.0) - static_cast<double>(grad[item]) * c);
      }
      for (int64_t i = 0; i < n; ++i) {
        if (available(mask, i) && !bits.test(i)) grad[i] = static_cast<T>(-static_cast<double>(grad[i]) * c);
      }
    }
    return ll;
  }
  // Wide range: float64 log-sum-exp per stage; inv[j] keeps log D_j.
  OnlineLse lse;
  for (int64_t i = 0; i < n; ++i) {
    if (available(mask, i) && !bits.test(i)) lse.add(static_cast<double>(s[i]));
  }
  for (int64_t j = L - 1; j >= 0; --j) {
    const double x = static_cast<double>(s[static_cast<int64_t>(r[j])]);
    lse.add(x);
    if (j < Lc) {
      const double log_d = lse.value();
      ll += x - log_d;
      if (grad != nullptr) inv[j] = log_d;
    }
  }
  if (grad != nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      if (!available(mask, i) || bits.test(i)) continue;
      double g = 0.0;
      for (int64_t j = 0; j < Lc; ++j) g += std::exp(static_cast<double>(s[i]) - inv[j]);
      grad[i] = static_cast<T>(-g);
    }
    for (int64_t p = 0; p < L; ++p) {
      const int64_t item = static_cast<int64_t>(r[p]);
      const int64_t last = p < Lc ? p : Lc - 1;
      double g = 0.0;
      for (int64_t j = 0; j <= last; ++j) g += std::exp(static_cast<double>(s[item]) - inv[j]);
      grad[item] = static_cast<T>((p < Lc ? 1.0 : 0.0) - g);
    }
  }
  return ll;
}

// The pass of the fused row functions (row_loglik_small, row_loglik_fixed) over a row's scores: whether one is
// not finite, and the largest, the smallest and the number of the available ones.
template <class T>
struct ScoreScan {
  typename ExpBits<T>::U nonfinite = 0;
  T hi = static_cast<T>(-INFINITY), lo = static_cast<T>(INFINITY);
  int n_avail = 0;
  PREFCAL_HD void add(T x, bool avail) {
    nonfinite |= static_cast<typename ExpBits<T>::U>(exponent_bits(x) == ExpBits<T>::kAll);
    if (avail) {
      hi = x > hi ? x : hi;
      lo = x < lo ? x : lo;
      ++n_avail;
    }
  }
};

// The shared middle of the fused row functions (row_loglik_small, row_loglik_fixed), after their checks: true
// with `out` set when the row is finished here (no counted stage: 0; available scores spanning more than
// Span<C>: the stable float64 path of row_loglik), false when the fast path goes on.
template <class C, class T, class I>
PREFCAL_HD bool finish_small_row(const T* s, const I* r, int L, int Lc, int n, const uint8_t* mask, uint64_t seen,
                                 T hi, T lo, double& out) {
  if (Lc <= 0) {
    out = 0.0;
    return true;
  }
  if (static_cast<double>(hi) - static_cast<double>(lo) > Span<C>::value) {
    Bits64 bits;
    bits.v = seen;
    out = row_loglik<C>(s, r, int64_t(L), int64_t(n), mask, bits, static_cast<T*>(nullptr), Strided<double>{});
    return true;
  }
  return false;
}

// A counted stage's normaliser into the product of the fused row functions.
template <class C>
PREFCAL_HD void mul_stage(typename FastProduct<C>::type& logd, C acc) {
  if constexpr (std::is_same<C, float>::value) {
    logd.mul(acc);
  } else {
    logd.mul_bounded(acc);
  }
}

// log P(r) of one row of at most 8 sizeof(W) items with the validation fused in (the staged GPU kernel's
// path): false when the row is invalid (a bad ranking as parse_ranking reads it, or a non-finite score), else
// true and the log-likelihood in `out`. The arithmetic of row_loglik without a gradient, in the same order,
// with 32-bit indices, one pass over the scores for the checks and the range, one exp per available item (none
// for the unlisted ones when every available item is listed); in float32 the product of the normalisers is a
// LogProductF (row_loglik's float64 product differs from it by rounding: about 1e-7 of each log).
template <class C, class W, class T, class I>
PREFCAL_HD bool row_loglik_small(const T* s, const I* r, int m, int n, const uint8_t* mask, double& out) {
  static_assert(std::is_same<C, T>::value, "the compute type is the scores' type");
  constexpr int kBits = 8 * sizeof(W);  // the listed items' set: n <= kBits
  int L = m;
  W seen = 0, bad = 0;
  for (int j = 0; j < m; ++j) {
    const int v = static_cast<int>(r[j]);
    if (r[j] == I(-1)) {
      L = j;
      for (int k = j + 1; k < m; ++k) bad |= static_cast<W>(r[k] != I(-1));
      break;
    }
    // out of range (negative included: I(v) != r[j] when r[j] does not fit in an int)
    bad |= static_cast<W>(static_cast<unsigned>(v) >= static_cast<unsigned>(n) || I(v) != r[j]);
    const W bit = W(1) << (v & (kBits - 1));
    bad |= seen & bit;
    seen |= bit;
    if (mask != nullptr) bad |= static_cast<W>(bad == 0 && mask[v] == 0);
  }
  ScoreScan<T> sc;
  for (int i = 0; i < n; ++i) sc.add(s[i], available(mask, i));
  if ((static_cast<uint64_t>(bad) | static_cast<uint64_t>(sc.nonfinite)) != 0) return false;
  const int n_avail = sc.n_avail;
  const int Lc = L < n_avail - 1 ? L : n_avail - 1;
  if (finish_small_row<C>(s, r, L, Lc, n, mask, static_cast<uint64_t>(seen), sc.hi, sc.lo, out)) return true;
  const C mx = static_cast<C>(sc.hi);
  C acc = C(0);  // worth of the unlisted available items
  if (L < n_avail) {
    for (int i = 0; i < n; ++i) {
      if (available(mask, i) && ((seen >> i) & 1u) == 0) acc += exp_c(static_cast<C>(s[i]) - mx);
    }
  }
  int j = L - 1;
  for (; j >= Lc; --j) acc += exp_c(static_cast<C>(s[static_cast<int>(r[j])]) - mx);
  double ll = 0.0;
  typename FastProduct<C>::type logd;
  for (; j >= 0; --j) {
    const C x = static_cast<C>(s[static_cast<int>(r[j])]) - mx;
    acc += exp_c(x);
    ll += static_cast<double>(x);
    mul_stage<C>(logd, acc);
  }
  out = ll - logd.value();
  return true;
}

// The register width K of draw_small for rows of n items: the smallest of 4, 8, 12, 16, 24, 32 that holds
// them; 0 when n > 32 (the GPU then keeps a top-k buffer per draw).
PREFCAL_HD constexpr int draw_width(int64_t n) {
  return n <= 4 ? 4 : n <= 8 ? 8 : n <= 12 ? 12 : n <= 16 ? 16 : n <= 24 ? 24 : n <= 32 ? 32 : 0;
}

// The width K of row_loglik_fixed for rows of n items (m <= n listed): the same steps as draw_width.
PREFCAL_HD constexpr int loglik_width(int64_t n) { return draw_width(n); }

// One Gumbel top-k draw (b, t) of a row of n <= K items, in registers (every index known at compile time):
// the GPU sampler's path for small rows, run on the host by a test hook. Keys: s_i + the Gumbel noise of
// (seed, b, t, i) (one Philox block per item pair; no noise for the mode), -inf for the unavailable items and
// the K - n slots past the row. Each available item's rank is the number of keys before it: larger, or equal
// with a lower item -- the order of the CPU kernel (rank_select) and of pl.sample everywhere. emit(rank, i)
// for each available item of rank < kk; returns the number of available items. With finite scores the ranks
// 0 .. min(kk, available) - 1 are each emitted once; with others (a bad row) ranks may repeat, but every one
// emitted is below kk.
template <int K, class T, class Emit>
PREFCAL_HD int draw_small(const T* s, const uint8_t* mask, int n, int kk, uint64_t seed, bool noise, uint64_t b,
                          uint32_t t, Emit emit) {
  static_assert(K >= 2 && K % 2 == 0, "K holds whole item pairs");
  double key[K];
  int avail = 0;
  PREFCAL_UNROLL
  for (int i0 = 0; i0 < K; i0 += 2) {
    philox::U32x4 blk{};
    if (noise && i0 < n) blk = philox::block(seed, b, t, static_cast<uint32_t>(i0 >> 1));
    PREFCAL_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int i = i0 + h;
      const bool ok = i < n && available(mask, i);
      double x = -INFINITY;
      if (ok) {
        x = static_cast<double>(s[i]);
        if (noise) x += philox::gumbel_of(blk, h != 0);
      }
      key[i] = x;
      avail += ok ? 1 : 0;
    }
  }
  PREFCAL_UNROLL
  for (int q = 0; q < K; ++q) {
    if (q < n && available(mask, q)) {
      int rank = 0;
      PREFCAL_UNROLL
      for (int j = 0; j < K; ++j) {
        if (j < q) {
          rank += key[j] >= key[q] ? 1 : 0;  // the lower item wins a tie
        } else if (j > q) {
          rank += key[j] > key[q] ? 1 : 0;
        }
      }
      if (rank < kk) emit(rank, q);
    }
  }
  return avail;
}


// One Gumbel top-k draw (b, t) of a row of any n (sr: its scores, mask: its availability or null): the GPU
// sampler's path for rows of more than 32 items and the draw of the Monte Carlo marginals, run on the host by
// a test hook. The available items with the kk largest keys s_i (+ the Gumbel noise of (seed, b, t, i) when
// `noise`) go into key[0 .. cnt), item[0 .. cnt) by insertion, larger key first; on equal keys the lower item
// stays first (the order of draw_small and of the CPU kernel). Returns cnt = min(kk, available items). Every
// item written is in [0, n).
template <class T>
PREFCAL_HD int64_t gumbel_top(const T* sr, const uint8_t* mask, int64_t n, int64_t kk, uint64_t seed, bool noise,
                              int64_t b, int64_t t, Strided<double> key, Strided<int32_t> item) {
  int64_t cnt = 0;
  if (kk <= 0) return cnt;
  for (int64_t i = 0; i < n; ++i) {
    if (!available(mask, i)) continue;
    double x = static_cast<double>(sr[i]);
    if (noise) {
      x += philox::gumbel(seed, static_cast<uint64_t>(b), static_cast<uint32_t>(t), static_cast<uint32_t>(i));
    }
    if (cnt == kk && !(x > key[kk - 1])) continue;
    int64_t p = cnt < kk ? cnt : kk - 1;
    while (p > 0 && x > key[p - 1]) {  // strict: an equal key keeps the lower item in front
      key[p] = key[p - 1];
      item[p] = item[p - 1];
      --p;
    }
    key[p] = x;
    item[p] = static_cast<int32_t>(i);
    if (cnt < kk) ++cnt;
  }
  return cnt;
}

// The common row of row_loglik_fixed: no mask and a full ranking (m == n <= K) of n distinct items. Such a
// ranking is valid exactly when its n entries lie in [0, n) and set n distinct bits, so the check is a compare
// and two bit operations an entry (no padding, repeat or mask logic). True with item[j] = r[j] for j < n (0
// past them) and `seen` the set of the n items; false otherwise, `seen` untouched (r not read when mask or m
// rules the row out), and the caller reads the ranking the general way, which finds its padding or its fault.
template <int K, class I>
PREFCAL_HD bool full_ranking_fixed(const I* r, int m, int n, const uint8_t* mask, int (&item)[K], uint32_t& seen) {
  if (mask != nullptr || m != n) return false;
  unsigned top = 0;  // the largest entry as unsigned: negative ones (the -1 padding too) are huge
  bool narrow = true;
  uint32_t set = 0;
  PREFCAL_UNROLL
  for (int j = 0; j < K; ++j) {
    item[j] = 0;
    if (j < n) {
      const I x = r[j];
      const int v = static_cast<int>(x);
      const unsigned u = static_cast<unsigned>(v);
      top = u > top ? u : top;
      narrow &= I(v) == x;  // false when x does not fit in an int (never for 32-bit rankings)
      set |= uint32_t(1) << (v & 31);
      item[j] = v & 31;
    }
  }
  const uint32_t all = n >= 32 ? ~uint32_t(0) : (uint32_t(1) << n) - 1u;
  if (top >= static_cast<unsigned>(n) || !narrow || set != all) return false;
  seen = set;
  return true;
}

// row_loglik_small for rows of m <= n <= K <= 32 items, K known at compile time (the GPU's flat-staged
// kernel): every loop unrolled over K slots with uniform guards (j < m, i < n), the ranking read once into
// registers, the listed-item set in 32 bits, the checks order-free (the padding is valid when no listed item
// follows a -1). The same arithmetic in the same order as row_loglik_small: the same result, bit for bit.
// The two are alternatives for the GPU until it has measured them side by side (benchmarks/gpu_pl.py); the
// slower one then goes.
template <int K, class C, class T, class I>
PREFCAL_HD bool row_loglik_fixed(const T* s, const I* r, int m, int n, const uint8_t* mask, double& out) {
  static_assert(std::is_same<C, T>::value, "the compute type is the scores' type");
  static_assert(K >= 1 && K <= 32, "the listed items' set has 32 bits");
  int item[K];
  int L = m;
  bool padded = false, bad = false;
  uint32_t seen = 0;
  // a full ranking without a mask: what the general reading would find (L = m = n), without its checks
  if (!full_ranking_fixed<K>(r, m, n, mask, item, seen)) {
    PREFCAL_UNROLL
    for (int j = 0; j < K; ++j) {
      item[j] = 0;
      if (j < m) {
        const I x = r[j];
        const int v = static_cast<int>(x);
        const bool pad = x == I(-1);
        bad |= padded && !pad;  // a listed item after the padding
        L = pad && !padded ? j : L;
        padded |= pad;
        if (!pad) {
          // out of range (negative included: I(v) != x when x does not fit in an int)
          bad |= static_cast<unsigned>(v) >= static_cast<unsigned>(n) || I(v) != x;
          const uint32_t bit = uint32_t(1) << (v & 31);
          bad |= (seen & bit) != 0;
          seen |= bit;
          if (mask != nullptr && !bad) bad = mask[v] == 0;
          item[j] = v & 31;
        }
      }
    }
  }
  ScoreScan<T> sc;
  PREFCAL_UNROLL
  for (int i = 0; i < K; ++i) {
    if (i < n) sc.add(s[i], available(mask, i));
  }
  if (bad || sc.nonfinite != 0) return false;
  const int n_avail = sc.n_avail;
  const int Lc = L < n_avail - 1 ? L : n_avail - 1;
  if (finish_small_row<C>(s, r, L, Lc, n, mask, static_cast<uint64_t>(seen), sc.hi, sc.lo, out)) return true;
  const C mx = static_cast<C>(sc.hi);
  C acc = C(0);  // worth of the unlisted available items
  if (L < n_avail) {
    PREFCAL_UNROLL
    for (int i = 0; i < K; ++i) {
      if (i < n && available(mask, i) && ((seen >> i) & 1u) == 0) acc += exp_c(static_cast<C>(s[i]) - mx);
    }
  }
  double ll = 0.0;
  typename FastProduct<C>::type logd;
  PREFCAL_UNROLL
  for (int j = K - 1; j >= 0; --j) {
    if (j < L) {
      const C x = static_cast<C>(s[item[j]]) - mx;
      acc += exp_c(x);
      if (j < Lc) {
        ll += static_cast<double>(x);
        mul_stage<C>(logd, acc);
      }
    }
  }
  out = ll - logd.value();
  return true;
}

// The widths of row_loglik_exact the GPU instantiates: rows of 2 .. kExactMax items.
constexpr int kExactMax = 16;

// row_loglik_small for the commonest row, of exactly N items (N known at compile time: the GPU's exact-width
// kernel) ranked in full, without a mask: true with `out` set when the ranking is a permutation of the N items
// and the scores are finite and span at most Span<C> -- row_loglik_small's result, bit for bit (the same
// arithmetic in the same order); false for any other row, a bad one included, which the caller then reads the
// general way (row_loglik_fixed). Every loop runs over exactly N items with no guard; the checks are a compare
// and two bit operations an entry of the ranking and a min and a max an item of the scores (fmin / fmax: one
// instruction each on the GPU; the sign they give a zero extreme changes no sum). A non-finite score shows as
// a span that is not <= Span<C> (an infinity) or as a NaN in the sums (a NaN, which fmin and fmax pass over:
// every item's score enters `last` or `ll`).
template <int N, class C, class T, class I>
PREFCAL_HD bool row_loglik_exact(const T* s, const I* r, double& out) {
  static_assert(std::is_same<C, T>::value, "the compute type is the scores' type");
  static_assert(N >= 2 && N <= 32, "the listed items' set has 32 bits; one item has nothing to rank");
  int item[N];
  uint32_t seen = 0;
  if (!full_ranking_fixed<N>(r, N, N, static_cast<const uint8_t*>(nullptr), item, seen)) return false;
  T hi = s[0], lo = s[0];
  PREFCAL_UNROLL
  for (int i = 1; i < N; ++i) {
    hi = std::fmax(hi, s[i]);
    lo = std::fmin(lo, s[i]);
  }
  if (!(static_cast<double>(hi) - static_cast<double>(lo) <= Span<C>::value)) return false;
  const C mx = static_cast<C>(hi);
  const C last = static_cast<C>(s[item[N - 1]]) - mx;  // the last stage has one item: its worth only
  C acc = C(0);
  acc += exp_c(last);
  double ll = 0.0;
  typename FastProduct<C>::type logd;
  PREFCAL_UNROLL
  for (int j = N - 2; j >= 0; --j) {
    const C x = static_cast<C>(s[item[j]]) - mx;
    acc += exp_c(x);
    ll += static_cast<double>(x);
    mul_stage<C>(logd, acc);
  }
  if (!(last == last) || !(ll == ll)) return false;  // a NaN score past the first item
  out = ll - logd.value();
  return true;
}

// Accumulator of the fit pass on the host: p[i] += v.
struct AddTo {
  double* p;
  PREFCAL_HD void operator()(int64_t i, double v) const { p[i] += v; }
  PREFCAL_HD bool active() const { return p != nullptr; }
};

// Setup pass of the fit over one weighted ranking: weighted wins (choices at stages with two or more items)
// and the edges of the comparison graph that keep its reachability (r_p beats r_{p+1}; the last listed item
// beats every unlisted available item); edge(a, b) means "a was ranked above b".
template <class I, class Bits, class Acc, class Edge>
PREFCAL_HD void setup_row(const I* r, int64_t L, int64_t n, const uint8_t* mask, const Bits& bits, double weight,
                          Acc wins, Edge edge) {
  int64_t n_avail = 0;
  for (int64_t i = 0; i < n; ++i) n_avail += available(mask, i) ? 1 : 0;
  const int64_t Lc = L < n_avail - 1 ? L : n_avail - 1;
  if (Lc <= 0 || weight == 0.0) return;
  for (int64_t p = 0; p < Lc; ++p) wins(static_cast<int64_t>(r[p]), weight);
  for (int64_t p = 0; p + 1 < L; ++p) edge(static_cast<int64_t>(r[p]), static_cast<int64_t>(r[p + 1]));
  const int64_t last = static_cast<int64_t>(r[L - 1]);
  for (int64_t i = 0; i < n; ++i) {
    if (available(mask, i) && !bits.test(i)) edge(last, i);
  }
}

// Temperature: f(beta) = log P(r | beta * s) and its first two derivatives in beta,
//   f' = sum_j s_{r_j} - E_j[s],  f'' = -sum_j Var_j[s]  (moments under softmax(beta * s) over R_j),
// in float64 with an online (rescaled) accumulation of the three moments per stage.
struct Moments {
  double f = 0.0, d1 = 0.0, d2 = 0.0;
};

template <class T, class I, class Bits>
PREFCAL_HD Moments row_temperature(const T* s, const I* r, int64_t L, int64_t n, const uint8_t* mask, const Bits& bits,
                                   double beta) {
  Moments out;
  const RowStats<T> st = row_stats(s, n, mask);
  const int64_t Lc = L < st.n_avail - 1 ? L : st.n_avail - 1;
  if (Lc <= 0) return out;
  const double ref = st.mx;  // moments of d = s - ref, shift-invariant variance
  if (beta * (st.mx - st.mn) <= 300.0) {
    // The worths e = exp(beta d) lie in [e^-300, 1]: suffix sums without rescaling, the logs of the
    // normalisers as one product (the arithmetic of the CPU's lane kernel); the worths kept in a local buffer
    // on the host for rows of up to kLocalItems (one loop of exps the compiler vectorises), else recomputed.
#if defined(__CUDA_ARCH__)
    double* e = nullptr;
#else
    double eloc[kLocalItems];
    double* e = n <= kLocalItems ? eloc : nullptr;
    if (e != nullptr) {
      for (int64_t i = 0; i < n; ++i) e[i] = exp_c(beta * (static_cast<double>(s[i]) - ref));
    }
#endif
    const auto worth = [&](int64_t i, double d) { return e != nullptr ? e[i] : exp_c(beta * d); };
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, z = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      if (!available(mask, i) || bits.test(i)) continue;
      const double d = static_cast<double>(s[i]) - ref, w = worth(i, d);
      a0 += w;
      a1 += w * d;
      a2 += w * d * d;
    }
    LogProduct logd;
    for (int64_t j = L - 1; j >= 0; --j) {
      const int64_t item = static_cast<int64_t>(r[j]);
      const double d = static_cast<double>(s[item]) - ref, w = worth(item, d);
      a0 += w;
      a1 += w * d;
      a2 += w * d * d;
      if (j < Lc) {
        const double mean = a1 / a0, var = a2 / a0 - mean * mean;
        z += d;
        out.d1 += d - mean;
        out.d2 -= var > 0.0 ? var : 0.0;
        logd.mul_bounded(a0);
      }
    }
    out.f = beta * z - logd.value();
    return out;
  }
  // Wide range: an online log-sum-exp in float64.
  double m = -INFINITY, a0 = 0.0, a1 = 0.0, a2 = 0.0;
  auto add = [&](double x) {
    const double d = x - ref, z = beta * d;
    if (z > m) {
      const double scale = std::exp(m - z);
      a0 *= scale;
      a1 *= scale;
      a2 *= scale;
      m = z;
    }
    const double e = std::exp(z - m);
    a0 += e;
    a1 += e * d;
    a2 += e * d * d;
  };
  for (int64_t i = 0; i < n; ++i) {
    if (available(mask, i) && !bits.test(i)) add(static_cast<double>(s[i]));
  }
  for (int64_t j = L - 1; j >= 0; --j) {
    const double x = static_cast<double>(s[static_cast<int64_t>(r[j])]);
    add(x);
    if (j < Lc) {
      const double mean = a1 / a0;
      double var = a2 / a0 - mean * mean;
      var = var > 0.0 ? var : 0.0;
      out.f += beta * (x - ref) - (m + std::log(a0));
      out.d1 += (x - ref) - mean;
      out.d2 -= var;
    }
  }
  return out;
}

// One pass of the global fit (SPEC §2 fit) over one weighted ranking, with worths w = exp(theta - max theta):
// adds weight * sum_{j <= P_i} 1 / D_j to denom[i] (the MM denominator; the gradient is wins - w * denom) and,
// with q != nullptr, weight * sum_{j <= min(P_i, P_k)} 1 / D_j^2 to q[i * n + k] for one orientation of
// every pair (the caller symmetrises; Hessian = w w^T * Q - diag(w * denom)). Returns the weighted log-likelihood
// when want_ll (else 0). `inv` (m entries) and `order` (n entries) are scratch.
template <class I, class Bits, class Acc>
PREFCAL_HD double fit_row(const double* w, const double* theta, double theta_max, const I* r, int64_t L, int64_t n,
                          const uint8_t* mask, const Bits& bits, double weight, Acc denom, Acc q, bool want_ll,
                          Strided<double> inv, Strided<int64_t> order) {
  // A full ranking without a mask (the common case) has no unlisted items: skip the scans over all items.
  const bool all_listed = mask == nullptr && L == n;
  int64_t n_avail = all_listed ? n : 0;
  double acc = 0.0;
  for (int64_t i = 0; i < n && !all_listed; ++i) {
    if (!available(mask, i)) continue;
    n_avail += 1;
    if (!bits.test(i)) acc += w[i];
  }
  const int64_t Lc = L < n_avail - 1 ? L : n_avail - 1;
  if (Lc <= 0 || weight == 0.0) return 0.0;
  double ll = 0.0;
  LogProduct logd;
  for (int64_t j = L - 1; j >= 0; --j) {
    const int64_t item = static_cast<int64_t>(r[j]);
    acc += w[item];
    if (j < Lc) {
      inv[j] = 1.0 / acc;
      if (want_ll) {
        ll += theta[item] - theta_max;
        logd.mul(acc);
      }
    }
  }
  if (want_ll) ll -= logd.value();
  double c = 0.0;
  for (int64_t p = 0; p < L; ++p) {
    if (p < Lc) c += inv[p];
    denom(static_cast<int64_t>(r[p]), weight * c);
  }
  for (int64_t i = 0; i < n && !all_listed; ++i) {
    if (available(mask, i) && !bits.test(i)) denom(i, weight * c);
  }
  if (q.active()) {
    // Items in order of P (listed by position, then the unlisted), E_p = sum_{j <= p} 1 / D_j^2.
    int64_t k = 0;
    for (int64_t p = 0; p < L; ++p) order[k++] = static_cast<int64_t>(r[p]);
    for (int64_t i = 0; i < n && !all_listed; ++i) {
      if (available(mask, i) && !bits.test(i)) order[k++] = i;
    }
    double e = 0.0;
    for (int64_t a = 0; a < k; ++a) {
      if (a < Lc) e += inv[a] * inv[a];
      const int64_t ia = order[a];
      for (int64_t b = a; b < k; ++b) q(ia * n + order[b], weight * e);
    }
  }
  return weight * ll;
}

}  // namespace prefcal::pl
