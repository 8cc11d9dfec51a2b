// Per-event arithmetic of the calibration hierarchy (prefcal.ranking, SPEC §5), shared by the CPU kernels
// (cpp/src/ranking.cpp) and their CUDA twins (cuda/ranking.cu), so the CPU tests cover the operations the GPU
// runs (SPEC §11) and the two agree bit for bit given the same inputs.
//
// A row of a PL model (type R below): r.w[i] = exp(s_i - max) (0 for unavailable items), r.s[i] the scores,
// r.total the sum of w in index order, r.slow whether a score lies more than 660 below the max (such a row is
// done in the log domain). Item lists (type A) are anything indexable: pointers, or the GPU's strided views.
// Nothing here allocates: scratch is passed in. No product feeds an addition, so contraction into fused
// multiply-adds cannot change a bit on either side.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "prefcal/common.hpp"
#include "prefcal/pl.hpp"

namespace prefcal::rank {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kSlowGap = -660.0;  // a row with a score this far below its max is done in the log domain
constexpr double kCancel = 1e-4;     // top-k tails below this share of the total are re-summed directly

PREFCAL_HD bool is_nan(double x) { return x != x; }
PREFCAL_HD bool is_inf(double x) { return x == kInf || x == -kInf; }
PREFCAL_HD bool is_fin(double x) { return fabs(x) < kInf; }
PREFCAL_HD double dmax(double a, double b) { return a < b ? b : a; }  // std::max(a, b)

PREFCAL_HD double clip01(double p) { return p > 0.0 ? (p < 1.0 ? p : 1.0) : 0.0; }  // NaN to 0

PREFCAL_HD double log_add(double a, double b) {
  if (a == -kInf) return b;
  if (b == -kInf) return a;
  const double m = dmax(a, b);
  return m + log1p(exp(-fabs(a - b)));
}

using pl::Strided;  // element i at p[i * stride]: the GPU interleaves its threads' scratch

// Bin of a probability p in [0, 1]: uniform bins (truncation of p * B is the floor), or, with edges (B + 1,
// sorted), the number of edges[1..B] <= p minus one (a binary search), clamped to the last bin.
struct Binner {
  int32_t bins;
  const double* edges;
  PREFCAL_HD int32_t operator()(double p) const {
    if (edges == nullptr) {
      const int32_t x = static_cast<int32_t>(p * bins);
      return x >= bins ? bins - 1 : x;
    }
    int32_t lo = 0, hi = bins;
    while (lo < hi) {
      const int32_t mid = lo + (hi - lo + 1) / 2;
      if (edges[mid] <= p) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    return lo < bins ? lo : bins - 1;
  }
};

// Row statistics of n scores s: w[i] (0 for -inf scores), total (index order); returns the slow flag.
PREFCAL_HD bool load_row(const double* s, int64_t n, double* w, double& total) {
  double mx = -kInf;
  for (int64_t i = 0; i < n; ++i) mx = dmax(mx, s[i]);
  double tot = 0.0;
  bool slow = false;
  for (int64_t i = 0; i < n; ++i) {
    const double si = s[i], d = si - mx;
    const double wi = is_inf(si) ? 0.0 : exp(d);
    if (!is_inf(si) && d < kSlowGap) slow = true;
    w[i] = wi;
    tot += wi;
  }
  total = tot;
  return slow;
}

// Rank keys of one observed ordering r (m entries, -1 padding) over n items with an optional mask mk: listed
// items get their position, unlisted available items the number listed, unavailable +inf. Returns whether
// the row is invalid (a value after padding, out of range, unavailable or repeated).
PREFCAL_HD bool row_keys(const int64_t* r, int64_t m, int64_t n, const uint8_t* mk, double* key) {
  int64_t len = 0;
  while (len < m && r[len] != -1) ++len;
  bool bad = false;
  for (int64_t j = len; j < m; ++j) bad |= r[j] != -1;  // a value after padding
  const double dl = static_cast<double>(len);
  for (int64_t i = 0; i < n; ++i) key[i] = (mk == nullptr || mk[i]) ? dl : kInf;
  for (int64_t j = 0; j < len && !bad; ++j) {
    const int64_t v = r[j];
    if (v < 0 || v >= n || (mk != nullptr && !mk[v]) || key[v] != dl) {
      bad = true;  // out of range, unavailable, or repeated
      break;
    }
    key[v] = static_cast<double>(j);
  }
  return bad;
}

// P(a_0 > a_1 > ... > a_{k-1}) under PL restricted to the items: factors w / suffix sum from the last item back.
template <class R, class A>
PREFCAL_HD double sub_prob(const R& r, const A& a, int64_t k) {
  if (!r.slow) {
    double suf = 0.0, p = 1.0;
    for (int64_t j = k - 1; j >= 0; --j) {
      const double wj = r.w[a[j]];
      suf += wj;
      p *= wj / suf;
    }
    return p;
  }
  double suf = -kInf, lp = 0.0;
  for (int64_t j = k - 1; j >= 0; --j) {
    const double sj = r.s[a[j]];
    suf = log_add(suf, sj);
    lp += sj - suf;
  }
  return exp(lp);
}

// The worth of the items outside c_0, ..., c_j, summed directly in index order (no cancellation).
template <class R, class A>
PREFCAL_HD double rest_worth(const R& r, const A& c, int64_t j, int64_t n) {
  double t = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    bool used = false;
    for (int64_t l = 0; l <= j; ++l) used |= c[l] == i;
    if (!used) t += r.w[i];
  }
  return t;
}

// P(the top-k prefix is c_0, ..., c_{k-1}): factors w / tail, the tail re-summed once it falls below kCancel
// of the total.
template <class R, class A>
PREFCAL_HD double top_prob(const R& r, const A& c, int64_t k, int64_t n) {
  if (!r.slow) {
    double tail = r.total, p = 1.0;
    for (int64_t j = 0; j < k; ++j) {
      const double wj = r.w[c[j]];
      p *= wj / tail;
      tail -= wj;
      if (tail < kCancel * r.total && j + 1 < k) tail = rest_worth(r, c, j, n);
    }
    return p;
  }
  double lp = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    double tail = -kInf;
    for (int64_t i = 0; i < n; ++i) {
      bool used = false;
      for (int64_t l = 0; l < j; ++l) used |= c[l] == i;
      if (!used) tail = log_add(tail, r.s[i]);
    }
    lp += r.s[c[j]] - tail;
  }
  return exp(lp);
}

// Pairs (a, b): whether the order is decided (both keys finite and different), and P(a before b).
PREFCAL_HD bool pair_decided(double ka, double kb) { return is_fin(ka) && is_fin(kb) && ka != kb; }

template <class R>
PREFCAL_HD double pair_prob(const R& r, int32_t a, int32_t b) {
  if (!r.slow) return r.w[a] / (r.w[a] + r.w[b]);
  const int32_t ab[2] = {a, b};
  return sub_prob(r, ab, 2);
}

// Triples (a, b, c): whether the order is decided; the rank of the observed order (2 * position of the best
// + which of the other two is next); p[r] = P(order r) for the six orders, lexicographic in the positions
// (closed form from four reciprocals; slow rows through sub_prob).
PREFCAL_HD bool triple_decided(double ka, double kb, double kc) {
  return is_fin(ka) && is_fin(kb) && is_fin(kc) && ka != kb && ka != kc && kb != kc;
}

PREFCAL_HD int triple_seen(double ka, double kb, double kc) {
  const int first = ka < kb ? (ka < kc ? 0 : 2) : (kb < kc ? 1 : 2);
  const double k0 = first == 0 ? kb : ka, k1 = first == 2 ? kb : kc;  // the other two, in position order
  return 2 * first + (k0 < k1 ? 0 : 1);
}

template <class R>
PREFCAL_HD void triple_probs(const R& r, int32_t a, int32_t b, int32_t c, double* p) {
  if (!r.slow) {
    const double wa = r.w[a], wb = r.w[b], wc = r.w[c];
    const double is = 1.0 / (wa + wb + wc);
    const double ibc = 1.0 / (wb + wc), iac = 1.0 / (wa + wc), iab = 1.0 / (wa + wb);
    const double fa = wa * is, fb = wb * is, fc = wc * is;
    p[0] = fa * (wb * ibc);
    p[1] = fa * (wc * ibc);
    p[2] = fb * (wa * iac);
    p[3] = fb * (wc * iac);
    p[4] = fc * (wa * iab);
    p[5] = fc * (wb * iab);
    return;
  }
  const int32_t ord[6][3] = {{a, b, c}, {a, c, b}, {b, a, c}, {b, c, a}, {c, a, b}, {c, b, a}};
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int o = 0; o < 6; ++o) p[o] = sub_prob(r, ord[o], 3);
}

// Sub-k truth: 1 in order, 0 decided otherwise, -1 undecided (unknown or unavailable item, or a tie).
template <class A>
PREFCAL_HD int sub_truth(const double* key, const A& a, int64_t k) {
  bool inc = true;
  for (int64_t j = 0; j < k; ++j) {
    if (!is_fin(key[a[j]])) return -1;
    if (j > 0) inc &= key[a[j - 1]] < key[a[j]];
  }
  if (inc) return 1;
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t l = j + 1; l < k; ++l) {
      if (key[a[j]] == key[a[l]]) return -1;
    }
  }
  return 0;
}

// Top-k truth of the class c given the row's observed prefix `order` (decided): 1 it is the prefix, 0 not,
// -1 an item of the class is unavailable.
template <class A, class O>
PREFCAL_HD int top_truth(const double* key, const A& c, const O& order, int64_t k) {
  bool avail = true, hit = true;
  for (int64_t j = 0; j < k; ++j) {
    const int32_t x = c[j];
    avail &= !is_inf(key[x]);
    hit &= x == order[j];
  }
  return avail ? (hit ? 1 : 0) : -1;
}

// The observed top-k of a row: items by selection in (key, index) order (a stable sort by key), out(j, item)
// for j < k; returns whether the prefix (ordered) or the set is decided (no NaN key, k available items, the
// k-th strictly before the next, and with `ordered` no ties inside the prefix).
template <class Out>
PREFCAL_HD bool observed_prefix(const double* key, int64_t n, int64_t k, bool ordered, Out&& out) {
  for (int64_t i = 0; i < n; ++i) {
    if (is_nan(key[i])) return false;
  }
  if (k > n) return false;
  int64_t prev = -1;
  double pk = 0.0, last = 0.0;
  const int64_t upto = k < n ? k + 1 : k;
  for (int64_t j = 0; j < upto; ++j) {
    int64_t best = -1;
    double bk = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double ki = key[i];
      if (prev >= 0 && !(ki > pk || (ki == pk && i > prev))) continue;
      if (best < 0 || ki < bk) {
        best = i;
        bk = ki;
      }
    }
    if (j < k) {
      out(j, static_cast<int32_t>(best));
      if (j == k - 1 && is_inf(bk)) return false;  // fewer than k available items
      if (ordered && j > 0 && !(bk > last)) return false;
      last = bk;
    } else if (!(bk > last)) {
      return false;
    }
    prev = best;
    pk = bk;
  }
  return true;
}

// The next k-subset of range(n) in combinations (lexicographic) order; false after the last.
template <class T, class K>
PREFCAL_HD bool next_combination(T* it, K k, int64_t n) {
  K j = k - 1;
  while (j >= 0 && it[j] == n - k + j) --j;
  if (j < 0) return false;
  ++it[j];
  for (K l = j + 1; l < k; ++l) it[l] = static_cast<T>(it[l - 1] + 1);
  return true;
}

// k! for k <= 12 (the largest subset size of the sub-k kernels).
constexpr int kMaxObservedK = 12;
PREFCAL_HD int64_t factorial(int k) {
  int64_t f = 1;
  for (int j = 2; j <= k; ++j) f *= j;
  return f;
}

// Lexicographic rank of the observed order of the items it[0..k) (positions within the list; k <= 12), or
// -1 when undecided (an unknown or unavailable item, or a tie). The observed order lists the positions
// best first; its rank is sum_j inv_j * (k - 1 - place_j)!, where place_j = #{l : key_l < key_j} is where
// position j is observed and inv_j = #{l < j : key_l > key_j}: one pass over the k(k-1)/2 pairs.
PREFCAL_HD int64_t observed_rank(const double* key, const int32_t* it, int k) {
  uint8_t place[kMaxObservedK], inv[kMaxObservedK];
  double kv[kMaxObservedK];
  bool bad = false;
  for (int j = 0; j < k; ++j) {
    kv[j] = key[it[j]];
    bad = bad || !is_fin(kv[j]);
    place[j] = 0;
    inv[j] = 0;
  }
  if (bad) return -1;
  bool tie = false;
  for (int j = 1; j < k; ++j) {
    for (int l = 0; l < j; ++l) {
      tie = tie || kv[l] == kv[j];
      const uint8_t above = kv[l] > kv[j];  // j is observed before l
      place[l] = static_cast<uint8_t>(place[l] + above);
      place[j] = static_cast<uint8_t>(place[j] + (1 - above));
      inv[j] = static_cast<uint8_t>(inv[j] + above);
    }
  }
  if (tie) return -1;
  int64_t rank = 0;
  for (int j = 0; j < k; ++j) rank += inv[j] * factorial(k - 1 - place[j]);
  return rank;
}

// P(the items of the set (k of them, worths ws) fill the top k in any order), rest = the total worth of the
// others: the subset DP over 2^k states. f, sums: 2^k entries of scratch each.
template <class W, class S>
PREFCAL_HD double set_prob(const W& ws, int64_t k, double rest, const S& f, const S& sums) {
  const int64_t full = (int64_t{1} << k) - 1;
  sums[0] = 0.0;
  for (int64_t t = 1; t <= full; ++t) {
    int64_t low = 0;
    while (!((t >> low) & 1)) ++low;
    sums[t] = sums[t & (t - 1)] + ws[low];
  }
  f[0] = 1.0;
  for (int64_t t = 1; t <= full; ++t) {
    double acc = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      if (!((t >> i) & 1)) continue;
      const int64_t prev = t ^ (int64_t{1} << i);
      acc += f[prev] * ws[i] / (rest + sums[full ^ prev]);
    }
    f[t] = acc;
  }
  return f[full];
}

// The same in the log domain: ls the items' scores, log_rest the log of the others' total worth.
template <class W, class S>
PREFCAL_HD double log_set_prob(const W& ls, int64_t k, double log_rest, const S& f, const S& sums) {
  const int64_t full = (int64_t{1} << k) - 1;
  sums[0] = -kInf;
  for (int64_t t = 1; t <= full; ++t) {
    int64_t low = 0;
    while (!((t >> low) & 1)) ++low;
    sums[t] = log_add(sums[t & (t - 1)], ls[low]);
  }
  f[0] = 0.0;
  for (int64_t t = 1; t <= full; ++t) {
    double acc = -kInf;
    for (int64_t i = 0; i < k; ++i) {
      if (!((t >> i) & 1)) continue;
      const int64_t prev = t ^ (int64_t{1} << i);
      acc = log_add(acc, f[prev] + ls[i] - log_add(log_rest, sums[full ^ prev]));
    }
    f[t] = acc;
  }
  return exp(f[full]);
}

// Top-label levels 1 and 2: whether the observed prefix `order` (k distinct items) is the mode's, in order
// (level 1) or as a set (level 2).
template <class O, class M>
PREFCAL_HD bool mode_hit(const O& order, const M& mode, int64_t k, int level) {
  bool hit = true;
  if (level == 1) {
    for (int64_t j = 0; j < k; ++j) hit &= order[j] == mode[j];
    return hit;
  }
  for (int64_t j = 0; j < k && hit; ++j) {
    bool found = false;
    for (int64_t l = 0; l < k; ++l) found |= order[l] == mode[j];
    hit = found;
  }
  return hit;
}

// Top-label levels 1 and 2: P(the k best items by score, mode[0..k) of the n items sorted by decreasing score,
// fill the top k in that order (level 1) or in any order (level 2)). tmp: k entries; f, sums: 2^k (level 2).
template <class R, class M, class S>
PREFCAL_HD double mode_top_prob(const R& r, const M& mode, int64_t n, int64_t k, int level, const S& tmp,
                                const S& f, const S& sums) {
  if (level == 1) {
    if (!r.slow) {
      double suf = 0.0;
      for (int64_t j = n - 1; j >= 0; --j) {
        suf += r.w[mode[j]];
        if (j < k) tmp[j] = suf;
      }
      double p = 1.0;
      for (int64_t j = 0; j < k; ++j) p *= r.w[mode[j]] / tmp[j];
      return p;
    }
    double suf = -kInf;
    for (int64_t j = n - 1; j >= 0; --j) {
      suf = log_add(suf, r.s[mode[j]]);
      if (j < k) tmp[j] = suf;
    }
    double lp = 0.0;
    for (int64_t j = 0; j < k; ++j) lp += r.s[mode[j]] - tmp[j];
    return exp(lp);
  }
  if (!r.slow) {
    double rest = 0.0;
    for (int64_t j = k; j < n; ++j) rest += r.w[mode[j]];
    for (int64_t j = 0; j < k; ++j) tmp[j] = r.w[mode[j]];
    return set_prob(tmp, k, rest, f, sums);
  }
  double rest = -kInf;
  for (int64_t j = k; j < n; ++j) rest = log_add(rest, r.s[mode[j]]);
  for (int64_t j = 0; j < k; ++j) tmp[j] = r.s[mode[j]];
  return log_set_prob(tmp, k, rest, f, sums);
}

}  // namespace prefcal::rank
