// CPU kernels of the calibration hierarchy (see prefcal/cpu/ranking.hpp).
//
// Classwise: with many classes each task owns a block of classes and streams every row through it (no
// private copies, no reduction); with few classes the rows are cut into fixed chunks with private tables
// summed in chunk order. Either way the result does not depend on the number of threads.
#include "prefcal/cpu/ranking.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "prefcal/cpu/clones.hpp"
#include "prefcal/cpu/parallel.hpp"
#include "prefcal/common.hpp"
#include "prefcal/fastmath.hpp"

namespace prefcal::cpu {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kSlowGap = -660.0;  // a row with a score this far below its max is done in the log domain
constexpr double kCancel = 1e-4;     // top-k tails below this share of the total are re-summed directly

// One row of a PL model: worths relative to the row's max, their total, and whether the row needs logs.
struct Row {
  const double* s = nullptr;
  std::vector<double> w;
  double max = 0.0, total = 0.0;
  bool slow = false;

  explicit Row(int64_t n) : w(static_cast<size_t>(n)) {}

  void load(const double* scores, int64_t n) {
    s = scores;
    max = -kInf;
    for (int64_t i = 0; i < n; ++i) max = std::max(max, s[i]);
    total = 0.0;
    slow = false;
    for (int64_t i = 0; i < n; ++i) {
      const double d = s[i] - max;
      w[i] = std::isinf(s[i]) ? 0.0 : std::exp(d);
      if (!std::isinf(s[i]) && d < kSlowGap) slow = true;
      total += w[i];
    }
  }
};

double log_add(double a, double b) {
  if (a == -kInf) return b;
  if (b == -kInf) return a;
  const double m = std::max(a, b);
  return m + std::log1p(std::exp(-std::fabs(a - b)));
}

// P(a_0 > a_1 > ... > a_{k-1}) under PL restricted to the items.
double sub_prob(const Row& r, const int32_t* a, int64_t k) {
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
    suf = log_add(suf, r.s[a[j]]);
    lp += r.s[a[j]] - suf;
  }
  return std::exp(lp);
}

// P(the top-k prefix is c_0, ..., c_{k-1}).
double top_prob(const Row& r, const int32_t* c, int64_t k, int64_t n) {
  if (!r.slow) {
    double tail = r.total, p = 1.0;
    for (int64_t j = 0; j < k; ++j) {
      const double wj = r.w[c[j]];
      p *= wj / tail;
      tail -= wj;
      if (tail < kCancel * r.total && j + 1 < k) {  // re-sum the rest directly: no cancellation
        tail = 0.0;
        for (int64_t i = 0; i < n; ++i) {
          bool used = false;
          for (int64_t l = 0; l <= j; ++l) used |= c[l] == i;
          if (!used) tail += r.w[i];
        }
      }
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
  return std::exp(lp);
}

struct Binner {
  int32_t bins;
  const double* edges;
  int32_t operator()(double p) const {
    if (edges == nullptr) {  // p is in [0, 1]: truncation is the floor
      const int32_t x = static_cast<int32_t>(p * bins);
      return x >= bins ? bins - 1 : x;
    }
    int32_t b = 0;
    while (b + 1 <= bins && edges[b + 1] <= p) ++b;  // the number of edges <= p, minus one
    return std::min(b, bins - 1);
  }
};

double clip01(double p) { return p > 0.0 ? (p < 1.0 ? p : 1.0) : 0.0; }  // NaN to 0

// The observed top-k of a row: items by key (stable), and whether the prefix (or set) is decided.
bool observed_prefix(const double* key, int64_t n, int64_t k, bool ordered, std::vector<int32_t>& order) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(key[i])) return false;
    order[i] = static_cast<int32_t>(i);
  }
  std::stable_sort(order.begin(), order.begin() + n, [&](int32_t a, int32_t b) { return key[a] < key[b]; });
  if (k > n || std::isinf(key[order[k - 1]])) return false;  // fewer than k available items
  if (ordered) {
    for (int64_t j = 1; j < k; ++j) {
      if (!(key[order[j]] > key[order[j - 1]])) return false;
    }
  }
  return k == n || key[order[k]] > key[order[k - 1]];
}

// Every key finite and no two equal: every sub-k event of the row is decided.
bool row_clean(const double* key, int64_t n, std::vector<double>& scratch) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(key[i])) return false;
    scratch[i] = key[i];
  }
  std::sort(scratch.begin(), scratch.begin() + n);
  for (int64_t i = 1; i < n; ++i) {
    if (scratch[i] == scratch[i - 1]) return false;
  }
  return true;
}

// Sub-k truth on a clean row: the keys increase along the class.
inline int sub_truth_clean(const double* key, const int32_t* a, int64_t k) {
  bool inc = true;
  for (int64_t j = 1; j < k; ++j) inc &= key[a[j - 1]] < key[a[j]];
  return inc ? 1 : 0;
}

// Sub-k truth: 1 in order, 0 decided otherwise, -1 undecided (unknown or unavailable item, or a tie).
int sub_truth(const double* key, const int32_t* a, int64_t k) {
  bool inc = true;
  for (int64_t j = 0; j < k; ++j) {
    if (!std::isfinite(key[a[j]])) return -1;
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

// P(prefix) for classes met in lexicographic order: the factors of the prefix shared with the previous class
// are kept, so a sorted class list costs about one division per class.
struct PrefixCache {
  std::vector<int32_t> last;
  std::vector<double> prod, tail;  // prod[j], tail[j]: product of the first j factors, worth left after j items
  int64_t depth = 0;               // how many leading items of `last` are valid

  explicit PrefixCache(int64_t k)
      : last(static_cast<size_t>(k)), prod(static_cast<size_t>(k + 1)), tail(static_cast<size_t>(k + 1)) {}

  void reset() { depth = 0; }

  double prob(const Row& r, const int32_t* c, int64_t k, int64_t n) {
    if (r.slow) return top_prob(r, c, k, n);
    int64_t j = 0;
    while (j < depth && c[j] == last[j]) ++j;
    if (j == 0) {
      prod[0] = 1.0;
      tail[0] = r.total;
    }
    for (; j < k; ++j) {
      const double wj = r.w[c[j]];
      prod[j + 1] = prod[j] * (wj / tail[j]);
      double t = tail[j] - wj;
      if (t < kCancel * r.total && j + 1 < k) {  // re-sum the rest directly: no cancellation
        t = 0.0;
        for (int64_t i = 0; i < n; ++i) {
          bool used = false;
          for (int64_t l = 0; l <= j; ++l) used |= c[l] == i;
          if (!used) t += r.w[i];
        }
      }
      tail[j + 1] = t;
      last[j] = c[j];
    }
    depth = k;
    return prod[k];
  }
};

// Adds the events of rows [lo, hi) for classes [c0, c1) into acc laid out [class - c0][bin][3].
PREFCAL_CLONES void classwise_rows(const double* scores, int64_t score_rows, const double* keys, int64_t lo, int64_t hi, int64_t n,
                    const int32_t* classes, int64_t c0, int64_t c1, int64_t k, bool top, const Binner& bin,
                    const uint8_t* keep, double* acc, Row& row, std::vector<int32_t>& order) {
  const int64_t nb = bin.bins;
  PrefixCache prefix(k);
  std::vector<double> scratch(static_cast<size_t>(n));
  bool loaded = false;
  for (int64_t b = lo; b < hi; ++b) {
    if (keep != nullptr && !keep[b]) continue;
    if (score_rows != 1 || !loaded) {
      row.load(scores + (score_rows == 1 ? 0 : b) * n, n);
      loaded = true;
    }
    const double* key = keys + b * n;
    if (top) {
      if (!observed_prefix(key, n, k, true, order)) continue;
      prefix.reset();
      for (int64_t c = c0; c < c1; ++c) {
        const int32_t* cl = classes + c * k;
        bool avail = true, hit = true;
        for (int64_t j = 0; j < k; ++j) {
          avail &= !std::isinf(key[cl[j]]);
          hit &= cl[j] == order[j];
        }
        if (!avail) continue;
        const double p = clip01(prefix.prob(row, cl, k, n));
        double* t = acc + ((c - c0) * nb + bin(p)) * 3;
        t[0] += 1.0;
        t[1] += p;
        t[2] += hit ? 1.0 : 0.0;
      }
    } else {
      const bool clean = row_clean(key, n, scratch);
      for (int64_t c = c0; c < c1; ++c) {
        const int32_t* cl = classes + c * k;
        const int truth = clean ? sub_truth_clean(key, cl, k) : sub_truth(key, cl, k);
        if (truth < 0) continue;
        const double p = clip01(sub_prob(row, cl, k));
        double* t = acc + ((c - c0) * nb + bin(p)) * 3;
        t[0] += 1.0;
        t[1] += p;
        t[2] += static_cast<double>(truth);
      }
    }
  }
}

void transpose_into(const double* acc, int64_t c0, int64_t c1, int64_t nb, double* tables) {
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t q = 0; q < 3; ++q) tables[(c * 3 + q) * nb + b] += acc[((c - c0) * nb + b) * 3 + q];
    }
  }
}

// Sub-k with a slot table: for each subset A (combinations order) and each order of A (lexicographic in
// the positions within A), slot[subset * k! + rank] is the class index or -1. Per subset the k! order
// probabilities share the 2^k subset sums of A, and the observed order is found once.
struct SubsetWalk {
  int64_t k, kf;
  std::vector<double> wa, inv, sums_, probs;
  std::vector<int32_t> a, rel;

  SubsetWalk(int64_t k_, int64_t kf_)
      : k(k_), kf(kf_), wa(static_cast<size_t>(k_)), inv(static_cast<size_t>(int64_t{1} << k_)),
        sums_(static_cast<size_t>(int64_t{1} << k_)),
        probs(static_cast<size_t>(kf_)), a(static_cast<size_t>(k_)), rel(static_cast<size_t>(k_)) {}

  // probabilities of every order of A in lexicographic order of the positions
  void orders(const Row& r) {
    const int64_t full = (int64_t{1} << k) - 1;
    if (r.slow) {
      int64_t idx = 0;
      for (int64_t j = 0; j < k; ++j) rel[j] = static_cast<int32_t>(j);
      std::vector<int32_t> items(static_cast<size_t>(k));
      do {
        for (int64_t j = 0; j < k; ++j) items[j] = a[rel[j]];
        probs[idx++] = sub_prob(r, items.data(), k);
      } while (std::next_permutation(rel.begin(), rel.end()));
      return;
    }
    for (int64_t j = 0; j < k; ++j) wa[j] = r.w[a[j]];
    inv[0] = 0.0;
    sums_[0] = 0.0;
    for (int64_t m = 1; m <= full; ++m) {
      int64_t low = 0;
      while (!((m >> low) & 1)) ++low;
      sums_[m] = sums_[m & (m - 1)] + wa[low];
      inv[m] = (m & (m - 1)) ? 1.0 / sums_[m] : 0.0;  // one item left: its factor is 1, no inverse needed
    }
    int64_t idx = 0;
    walk(0, full, 1.0, idx);
  }

  void walk(int64_t depth, int64_t left, double p, int64_t& idx) {
    if (depth == k - 1) {
      probs[idx++] = p;  // the last item's factor is w / w = 1
      return;
    }
    const double il = inv[left];
    for (int64_t j = 0; j < k; ++j) {
      if ((left >> j) & 1) walk(depth + 1, left ^ (int64_t{1} << j), p * (wa[j] * il), idx);
    }
  }

  // lexicographic rank of the observed order of A, or -1 when undecided
  int64_t observed(const double* key) {
    for (int64_t j = 0; j < k; ++j) {
      if (!std::isfinite(key[a[j]])) return -1;
    }
    int64_t rank = 0;
    for (int64_t j = 0; j < k; ++j) {
      // the j-th best item of A is the one with exactly j smaller keys; ties leave it undecided
      int64_t below = 0;
      for (int64_t l = 0; l < k; ++l) {
        if (l == j) continue;
        if (key[a[l]] == key[a[j]]) return -1;
        below += key[a[l]] < key[a[j]];
      }
      rel[below] = static_cast<int32_t>(j);
    }
    for (int64_t j = 0; j < k; ++j) {
      int64_t smaller = 0;
      for (int64_t l = j + 1; l < k; ++l) smaller += rel[l] < rel[j];
      rank = rank * (k - j) + smaller;
    }
    return rank;
  }
};

// Adds an event of class c (if listed) at probability p; the outcome is added by the caller.
inline void add_event(double* acc, int32_t c, double p, const Binner& bin) {
  if (c < 0) return;
  double* t = acc + (static_cast<int64_t>(c) * bin.bins + bin(p)) * 3;
  t[0] += 1.0;
  t[1] += p;
}

inline void add_outcome(double* acc, int32_t c, double p, const Binner& bin) {
  if (c >= 0) acc[(static_cast<int64_t>(c) * bin.bins + bin(p)) * 3 + 2] += 1.0;
}

// Pairs: the two orders of (a, b), a < b: rank 0 = a before b.
void pair_row(const Row& row, const double* key, const int32_t* subs, int64_t m, const int32_t* slot,
              const Binner& bin, double* acc) {
  for (int64_t g = 0; g < m; ++g) {
    const int32_t a = subs[2 * g], b = subs[2 * g + 1];
    const double ka = key[a], kb = key[b];
    if (!(std::isfinite(ka) && std::isfinite(kb)) || ka == kb) continue;
    double p0;
    if (!row.slow) {
      p0 = clip01(row.w[a] / (row.w[a] + row.w[b]));
    } else {
      const int32_t ab[2] = {a, b};
      p0 = clip01(sub_prob(row, ab, 2));
    }
    const double p1 = clip01(1.0 - p0);
    const int32_t* sl = slot + 2 * g;
    add_event(acc, sl[0], p0, bin);
    add_event(acc, sl[1], p1, bin);
    if (ka < kb) {
      add_outcome(acc, sl[0], p0, bin);
    } else {
      add_outcome(acc, sl[1], p1, bin);
    }
  }
}

// Triples: the six orders of (a, b, c), a < b < c, lexicographic in the positions.
void triple_row(const Row& row, const double* key, const int32_t* subs, int64_t m, const int32_t* slot,
                const Binner& bin, double* acc) {
  double p[6];
  for (int64_t g = 0; g < m; ++g) {
    const int32_t a = subs[3 * g], b = subs[3 * g + 1], c = subs[3 * g + 2];
    const double ka = key[a], kb = key[b], kc = key[c];
    if (!(std::isfinite(ka) && std::isfinite(kb) && std::isfinite(kc)) || ka == kb || ka == kc || kb == kc) continue;
    if (!row.slow) {
      const double wa = row.w[a], wb = row.w[b], wc = row.w[c];
      const double is = 1.0 / (wa + wb + wc);
      const double ibc = 1.0 / (wb + wc), iac = 1.0 / (wa + wc), iab = 1.0 / (wa + wb);
      const double fa = wa * is, fb = wb * is, fc = wc * is;
      p[0] = fa * (wb * ibc);
      p[1] = fa * (wc * ibc);
      p[2] = fb * (wa * iac);
      p[3] = fb * (wc * iac);
      p[4] = fc * (wa * iab);
      p[5] = fc * (wb * iab);
    } else {
      const int32_t items[3] = {a, b, c};
      int32_t rel[3] = {0, 1, 2}, ord[3];
      int idx = 0;
      do {
        for (int j = 0; j < 3; ++j) ord[j] = items[rel[j]];
        p[idx++] = sub_prob(row, ord, 3);
      } while (std::next_permutation(rel, rel + 3));
    }
    // observed order: rank = 2 * (position of the best among a, b, c) + (which of the other two is next)
    const int first = ka < kb ? (ka < kc ? 0 : 2) : (kb < kc ? 1 : 2);
    const double k0 = first == 0 ? kb : ka, k1 = first == 2 ? kb : kc;  // the other two, in position order
    const int seen = 2 * first + (k0 < k1 ? 0 : 1);
    const int32_t* sl = slot + 6 * g;
    for (int r = 0; r < 6; ++r) {
      p[r] = clip01(p[r]);
      add_event(acc, sl[r], p[r], bin);
    }
    add_outcome(acc, sl[seen], p[seen], bin);
  }
}

PREFCAL_CLONES void subset_rows(const double* scores, int64_t score_rows, const double* keys, int64_t lo, int64_t hi, int64_t n,
                 int64_t k, const int32_t* slot, int64_t kf, const Binner& bin, const uint8_t* keep, double* acc,
                 int64_t* undecided) {
  const int64_t nb = bin.bins;
  Row row(n);
  SubsetWalk sw(k, kf);
  // the subsets in combinations order, for the specialised pair and triple loops
  std::vector<int32_t> subs;
  if (k <= 3) {
    std::vector<int32_t> a(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) a[j] = static_cast<int32_t>(j);
    while (true) {
      subs.insert(subs.end(), a.begin(), a.end());
      int64_t j = k - 1;
      while (j >= 0 && a[j] == n - k + j) --j;
      if (j < 0) break;
      ++a[j];
      for (int64_t l = j + 1; l < k; ++l) a[l] = a[l - 1] + 1;
    }
  }
  const int64_t m = static_cast<int64_t>(subs.size()) / std::max<int64_t>(k, 1);
  bool loaded = false;
  for (int64_t b = lo; b < hi; ++b) {
    if (keep != nullptr && !keep[b]) continue;
    if (score_rows != 1 || !loaded) {
      row.load(scores + (score_rows == 1 ? 0 : b) * n, n);
      loaded = true;
    }
    const double* key = keys + b * n;
    if (k == 2) {
      pair_row(row, key, subs.data(), m, slot, bin, acc);
      continue;
    }
    if (k == 3) {
      triple_row(row, key, subs.data(), m, slot, bin, acc);
      continue;
    }
    for (int64_t j = 0; j < k; ++j) sw.a[j] = static_cast<int32_t>(j);
    int64_t subset = 0;
    while (true) {
      const int64_t seen = sw.observed(key);
      const int32_t* sl = slot + subset * kf;
      if (seen < 0) {
        for (int64_t r = 0; r < kf; ++r) undecided[0] += sl[r] >= 0;
      } else {
        sw.orders(row);
        for (int64_t r = 0; r < kf; ++r) {
          const int32_t c = sl[r];
          if (c < 0) continue;
          const double p = clip01(sw.probs[r]);
          double* t = acc + (c * nb + bin(p)) * 3;
          t[0] += 1.0;
          t[1] += p;
        }
        const int32_t c = sl[seen];
        if (c >= 0) acc[(c * nb + bin(clip01(sw.probs[seen]))) * 3 + 2] += 1.0;
      }
      // next combination in lexicographic order
      int64_t j = k - 1;
      while (j >= 0 && sw.a[j] == n - k + j) --j;
      if (j < 0) break;
      ++sw.a[j];
      for (int64_t l = j + 1; l < k; ++l) sw.a[l] = sw.a[l - 1] + 1;
      ++subset;
    }
  }
}

}  // namespace

// Explicit model, classes [c0, c1): a class's probability is the sum of the probabilities of the orderings
// listed for it (CSC: orderings idx[indptr[c] .. indptr[c + 1])). acc is laid out [class - c0][bin][3].
PREFCAL_CLONES void table_rows(const double* probs, int64_t n_orders, const int64_t* indptr, const int32_t* idx,
                               const double* keys, int64_t rows, int64_t n, const int32_t* classes, int64_t c0,
                               int64_t c1, int64_t k, bool top, const Binner& bin, const uint8_t* keep, double* acc) {
  const int64_t nb = bin.bins;
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::vector<double> scratch(static_cast<size_t>(n));
  for (int64_t b = 0; b < rows; ++b) {
    if (keep != nullptr && !keep[b]) continue;
    const double* key = keys + b * n;
    if (top && !observed_prefix(key, n, k, true, order)) continue;
    const bool clean = !top && row_clean(key, n, scratch);
    const double* pr = probs + b * n_orders;
    for (int64_t c = c0; c < c1; ++c) {
      const int32_t* cl = classes + c * k;
      int truth;
      if (top) {
        bool avail = true, hit = true;
        for (int64_t j = 0; j < k; ++j) {
          avail &= !std::isinf(key[cl[j]]);
          hit &= cl[j] == order[j];
        }
        truth = avail ? (hit ? 1 : 0) : -1;
      } else {
        truth = clean ? sub_truth_clean(key, cl, k) : sub_truth(key, cl, k);
      }
      if (truth < 0) continue;
      double p = 0.0;
      for (int64_t e = indptr[c]; e < indptr[c + 1]; ++e) p += pr[idx[e]];
      const double q = clip01(p);
      double* t = acc + ((c - c0) * nb + bin(q)) * 3;
      t[0] += 1.0;
      t[1] += q;
      t[2] += static_cast<double>(truth);
    }
  }
}

// Given probabilities P (rows, C) of the classes (an explicit model's, computed by a matrix product), adds the
// decided events of classes [c0, c1) into acc laid out [class - c0][bin][3].
PREFCAL_CLONES void given_rows(const double* pmat, const double* keys, int64_t rows, int64_t n,
                               const int32_t* classes, int64_t n_classes, int64_t c0, int64_t c1, int64_t k, bool top,
                               const Binner& bin, const uint8_t* keep, double* acc) {
  const int64_t nb = bin.bins;
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::vector<double> scratch(static_cast<size_t>(n));
  for (int64_t b = 0; b < rows; ++b) {
    if (keep != nullptr && !keep[b]) continue;
    const double* key = keys + b * n;
    if (top && !observed_prefix(key, n, k, true, order)) continue;
    const bool clean = !top && row_clean(key, n, scratch);
    const double* pr = pmat + b * n_classes;
    for (int64_t c = c0; c < c1; ++c) {
      const int32_t* cl = classes + c * k;
      int truth;
      if (top) {
        bool avail = true, hit = true;
        for (int64_t j = 0; j < k; ++j) {
          avail &= !std::isinf(key[cl[j]]);
          hit &= cl[j] == order[j];
        }
        truth = avail ? (hit ? 1 : 0) : -1;
      } else {
        truth = clean ? sub_truth_clean(key, cl, k) : sub_truth(key, cl, k);
      }
      if (truth < 0) continue;
      const double q = clip01(pr[c]);
      double* t = acc + ((c - c0) * nb + bin(q)) * 3;
      t[0] += 1.0;
      t[1] += q;
      t[2] += static_cast<double>(truth);
    }
  }
}

void rank_classwise_given(const double* pmat, const double* keys, int64_t rows, int64_t n, const int32_t* classes,
                          int64_t n_classes, int64_t k, bool top, int32_t n_bins, const double* edges,
                          const uint8_t* keep, double* tables) {
  const Binner bin{n_bins, edges};
  const int64_t nb = n_bins;
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(512, (n_classes + 1) / 2));
  for_chunks(n_classes, block, threads_for((n_classes + block - 1) / block), [&](int, int64_t, int64_t c0, int64_t c1) {
    std::vector<double> acc(static_cast<size_t>((c1 - c0) * nb * 3), 0.0);
    given_rows(pmat, keys, rows, n, classes, n_classes, c0, c1, k, top, bin, keep, acc.data());
    transpose_into(acc.data(), c0, c1, nb, tables);  // adds: callers accumulate over row chunks
  });
}

void rank_classwise_table(const double* probs, int64_t rows, int64_t n_orders, const int64_t* indptr,
                          const int32_t* idx, const double* keys, int64_t n, const int32_t* classes, int64_t n_classes,
                          int64_t k, bool top, int32_t n_bins, const double* edges, const uint8_t* keep,
                          double* tables) {
  const Binner bin{n_bins, edges};
  const int64_t nb = n_bins;
  std::fill(tables, tables + n_classes * 3 * nb, 0.0);
  // class blocks small enough for their tables to stay in cache; each block streams every row
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(512, (n_classes + 1) / 2));
  for_chunks(n_classes, block, threads_for((n_classes + block - 1) / block), [&](int, int64_t, int64_t c0, int64_t c1) {
    std::vector<double> acc(static_cast<size_t>((c1 - c0) * nb * 3), 0.0);
    table_rows(probs, n_orders, indptr, idx, keys, rows, n, classes, c0, c1, k, top, bin, keep, acc.data());
    transpose_into(acc.data(), c0, c1, nb, tables);
  });
}

// Explicit model with classes sorted by group: a task owns a range of classes (whole groups) and streams every
// row; the observed order of each of its groups is found once per row.
PREFCAL_CLONES void grouped_rows(const double* probs, int64_t n_orders, const int64_t* indptr, const int32_t* idx,
                                 const double* keys, int64_t rows, int64_t n, int64_t k, bool top,
                                 const int32_t* cls_group, const int32_t* cls_rank, int64_t c0, int64_t c1,
                                 const int32_t* groups, const int32_t* row_class, const Binner& bin,
                                 const uint8_t* keep, double* acc) {
  const int64_t nb = bin.bins;
  int64_t kf = 1;
  for (int64_t j = 2; j <= k; ++j) kf *= j;
  SubsetWalk sw(k, kf);
  const int64_t g0 = top ? 0 : cls_group[c0], g1 = top ? 0 : cls_group[c1 - 1] + 1;
  std::vector<int64_t> seen(static_cast<size_t>(std::max<int64_t>(1, g1 - g0)));
  for (int64_t b = 0; b < rows; ++b) {
    if (keep != nullptr && !keep[b]) continue;
    const double* pr = probs + b * n_orders;
    int64_t rc = -1;
    if (top) {
      rc = row_class[b];
      if (rc == -2) continue;
    } else {
      const double* key = keys + b * n;
      for (int64_t g = g0; g < g1; ++g) {
        for (int64_t j = 0; j < k; ++j) sw.a[j] = groups[g * k + j];
        seen[g - g0] = sw.observed(key);
      }
    }
    for (int64_t c = c0; c < c1; ++c) {
      int64_t truth;
      if (top) {
        truth = c == rc;
      } else {
        const int64_t o = seen[cls_group[c] - g0];
        if (o < 0) continue;
        truth = o == cls_rank[c];
      }
      double p = 0.0;
      for (int64_t e = indptr[c]; e < indptr[c + 1]; ++e) p += pr[idx[e]];
      const double q = clip01(p);
      double* t = acc + ((c - c0) * nb + bin(q)) * 3;
      t[0] += 1.0;
      t[1] += q;
      t[2] += static_cast<double>(truth);
    }
  }
}

void rank_classwise_grouped(const double* probs, int64_t rows, int64_t n_orders, const int64_t* indptr,
                            const int32_t* idx, const double* keys, int64_t n, int64_t k, bool top,
                            const int32_t* cls_group, const int32_t* cls_rank, int64_t n_classes, const int32_t* groups,
                            const int32_t* row_class, int32_t n_bins, const double* edges, const uint8_t* keep,
                            double* tables) {
  const Binner bin{n_bins, edges};
  const int64_t nb = n_bins;
  std::fill(tables, tables + n_classes * 3 * nb, 0.0);
  // class ranges of about 512 classes, cut at group boundaries
  std::vector<int64_t> cuts{0};
  const int64_t target = std::max<int64_t>(1, std::min<int64_t>(512, (n_classes + 1) / 2));
  for (int64_t c = 1; c < n_classes; ++c) {
    if (c - cuts.back() >= target && (top || cls_group[c] != cls_group[c - 1])) cuts.push_back(c);
  }
  cuts.push_back(n_classes);
  const int64_t n_tasks = static_cast<int64_t>(cuts.size()) - 1;
  for_chunks(n_tasks, 1, threads_for(n_tasks), [&](int, int64_t task, int64_t, int64_t) {
    const int64_t c0 = cuts[task], c1 = cuts[task + 1];
    std::vector<double> acc(static_cast<size_t>((c1 - c0) * nb * 3), 0.0);
    grouped_rows(probs, n_orders, indptr, idx, keys, rows, n, k, top, cls_group, cls_rank, c0, c1, groups, row_class,
                 bin, keep, acc.data());
    transpose_into(acc.data(), c0, c1, nb, tables);
  });
}

int64_t rank_keys(const int64_t* rankings, int64_t rows, int64_t m, int64_t n, const uint8_t* mask, bool global,
                  double* keys) {
  std::vector<int64_t> first_bad(static_cast<size_t>(std::max<int64_t>(1, num_threads())), kNoError);
  const int64_t chunk = 4096;
  for_chunks(rows, chunk, threads_for((rows + chunk - 1) / chunk), [&](int t, int64_t, int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t* r = rankings + b * m;
      const uint8_t* mk = mask == nullptr ? nullptr : mask + (global ? 0 : b * n);
      double* key = keys + b * n;
      int64_t len = 0;
      while (len < m && r[len] != -1) ++len;
      bool bad = false;
      for (int64_t j = len; j < m; ++j) bad |= r[j] != -1;  // a value after padding
      for (int64_t i = 0; i < n; ++i) key[i] = (mk == nullptr || mk[i]) ? static_cast<double>(len) : kInf;
      for (int64_t j = 0; j < len && !bad; ++j) {
        const int64_t v = r[j];
        if (v < 0 || v >= n || (mk != nullptr && !mk[v]) || key[v] != static_cast<double>(len)) {
          bad = true;  // out of range, unavailable, or repeated
          break;
        }
        key[v] = static_cast<double>(j);
      }
      if (bad) {
        first_bad[t] = std::min(first_bad[t], b);
        break;
      }
    }
  });
  return *std::min_element(first_bad.begin(), first_bad.end());
}

void rank_seen_subsets(const double* keys, int64_t rows, int64_t n, int64_t k, uint8_t* seen) {
  int64_t kf = 1, count = 1;
  for (int64_t j = 2; j <= k; ++j) kf *= j;
  for (int64_t j = 0; j < k; ++j) count = count * (n - j) / (j + 1);
  const int64_t size = count * kf;
  constexpr int64_t kChunks = 16;
  const int64_t chunk = std::max<int64_t>(1, (rows + kChunks - 1) / kChunks);
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  std::vector<uint8_t> part(static_cast<size_t>(n_chunks * size), 0);
  for_chunks(rows, chunk, threads_for(n_chunks), [&](int, int64_t ci, int64_t lo, int64_t hi) {
    SubsetWalk sw(k, kf);
    uint8_t* mine = part.data() + ci * size;
    int64_t found = 0;  // once every class is seen the rest of the chunk cannot add one
    for (int64_t b = lo; b < hi && found < size; ++b) {
      const double* key = keys + b * n;
      for (int64_t j = 0; j < k; ++j) sw.a[j] = static_cast<int32_t>(j);
      int64_t subset = 0;
      while (true) {
        const int64_t r = sw.observed(key);
        if (r >= 0 && !mine[subset * kf + r]) {
          mine[subset * kf + r] = 1;
          ++found;
        }
        int64_t j = k - 1;
        while (j >= 0 && sw.a[j] == n - k + j) --j;
        if (j < 0) break;
        ++sw.a[j];
        for (int64_t l = j + 1; l < k; ++l) sw.a[l] = sw.a[l - 1] + 1;
        ++subset;
      }
    }
  });
  std::fill(seen, seen + size, uint8_t{0});
  for (int64_t ci = 0; ci < n_chunks; ++ci) {
    for (int64_t i = 0; i < size; ++i) seen[i] |= part[ci * size + i];
  }
}

void rank_classwise_subsets(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                            int64_t k, const int32_t* slot, int64_t n_slots, int64_t n_classes, int32_t n_bins,
                            const double* edges, const uint8_t* keep, double* tables) {
  const Binner bin{n_bins, edges};
  const int64_t nb = n_bins;
  int64_t kf = 1;
  for (int64_t j = 2; j <= k; ++j) kf *= j;
  (void)n_slots;
  constexpr int64_t kChunks = 16;  // fixed: the sums do not depend on the thread count
  const int64_t chunk = std::max<int64_t>(1, (rows + kChunks - 1) / kChunks);
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  std::vector<double> part(static_cast<size_t>(n_chunks * n_classes * nb * 3), 0.0);
  std::vector<int64_t> undecided(static_cast<size_t>(n_chunks), 0);
  for_chunks(rows, chunk, threads_for(n_chunks), [&](int, int64_t ci, int64_t lo, int64_t hi) {
    subset_rows(scores, score_rows, keys, lo, hi, n, k, slot, kf, bin, keep, part.data() + ci * n_classes * nb * 3,
                undecided.data() + ci);
  });
  std::fill(tables, tables + n_classes * 3 * nb, 0.0);
  for (int64_t ci = 0; ci < n_chunks; ++ci) transpose_into(part.data() + ci * n_classes * nb * 3, 0, n_classes, nb, tables);
}

void rank_classwise(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                    const int32_t* classes, int64_t n_classes, int64_t k, bool top, int32_t n_bins,
                    const double* edges, const uint8_t* keep, double* tables) {
  const Binner bin{n_bins, edges};
  const int64_t nb = n_bins;
  std::fill(tables, tables + n_classes * 3 * nb, 0.0);
  constexpr int64_t kClassBlock = 32;
  const int nt = num_threads();
  if (n_classes >= kClassBlock * 2 * nt || nt == 1) {
    // class blocks: each task streams all rows (in tiles, so a tile's rows stay in cache) through its classes
    const int64_t block = std::max<int64_t>(kClassBlock, (n_classes + 4 * nt - 1) / (4 * nt));
    for_chunks(n_classes, block, threads_for((n_classes + block - 1) / block),
               [&](int, int64_t, int64_t c0, int64_t c1) {
                 std::vector<double> acc(static_cast<size_t>((c1 - c0) * nb * 3), 0.0);
                 Row row(n);
                 std::vector<int32_t> order(static_cast<size_t>(n));
                 classwise_rows(scores, score_rows, keys, 0, rows, n, classes, c0, c1, k, top, bin, keep,
                                acc.data(), row, order);
                 transpose_into(acc.data(), c0, c1, nb, tables);
               });
    return;
  }
  // row chunks with private tables, summed in chunk order
  const int64_t chunk = std::max<int64_t>(1024, (rows + 63) / 64);
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  std::vector<double> part(static_cast<size_t>(n_chunks * n_classes * nb * 3), 0.0);
  for_chunks(rows, chunk, threads_for(n_chunks), [&](int, int64_t ci, int64_t lo, int64_t hi) {
    Row row(n);
    std::vector<int32_t> order(static_cast<size_t>(n));
    classwise_rows(scores, score_rows, keys, lo, hi, n, classes, 0, n_classes, k, top, bin, keep,
                   part.data() + ci * n_classes * nb * 3, row, order);
  });
  for (int64_t ci = 0; ci < n_chunks; ++ci) transpose_into(part.data() + ci * n_classes * nb * 3, 0, n_classes, nb, tables);
}

namespace {

// P(the items of s (k of them, worths ws) fill the top k in any order), rest = total worth of the others.
double set_prob(const double* ws, int64_t k, double rest, std::vector<double>& f, std::vector<double>& sums) {
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

double log_set_prob(const double* ls, int64_t k, double log_rest, std::vector<double>& f, std::vector<double>& sums) {
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
  return std::exp(f[full]);
}

}  // namespace

int64_t rank_top_label(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                       int level, const int32_t* groups, int64_t n_groups, int64_t k, int32_t n_bins,
                       double* table) {
  const Binner bin{n_bins, nullptr};
  const int64_t nb = n_bins;
  const int64_t chunk = std::max<int64_t>(256, (rows + 63) / 64);
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  std::vector<double> part(static_cast<size_t>(n_chunks * nb * 3), 0.0);
  std::vector<int64_t> skipped(static_cast<size_t>(n_chunks), 0);
  for_chunks(rows, chunk, threads_for(n_chunks), [&](int, int64_t ci, int64_t lo, int64_t hi) {
    Row row(n);
    std::vector<int32_t> order(static_cast<size_t>(n)), mode(static_cast<size_t>(n));
    std::vector<double> tmp(static_cast<size_t>(n)), f, sums;
    if (level == 2) {
      f.resize(static_cast<size_t>(int64_t{1} << k));
      sums.resize(f.size());
    }
    double* acc = part.data() + ci * nb * 3;
    int64_t skip = 0;
    for (int64_t b = lo; b < hi; ++b) {
      row.load(scores + (score_rows == 1 ? 0 : b) * n, n);
      const double* key = keys + b * n;
      auto add = [&](double p, bool hit) {
        p = clip01(p);
        double* t = acc + bin(p) * 3;
        t[0] += 1.0;
        t[1] += p;
        t[2] += hit ? 1.0 : 0.0;
      };
      if (level == 0) {
        for (int64_t g = 0; g < n_groups; ++g) {
          const int32_t* a = groups + g * k;
          for (int64_t j = 0; j < k; ++j) mode[j] = a[j];
          // mode order: decreasing score, lower index first on ties (insertion sort, k is small)
          for (int64_t j = 1; j < k; ++j) {
            const int32_t x = mode[j];
            int64_t l = j - 1;
            while (l >= 0 && (row.s[mode[l]] < row.s[x] || (row.s[mode[l]] == row.s[x] && mode[l] > x))) {
              mode[l + 1] = mode[l];
              --l;
            }
            mode[l + 1] = x;
          }
          const int truth = sub_truth(key, mode.data(), k);
          if (truth < 0) {
            ++skip;
            continue;
          }
          add(sub_prob(row, mode.data(), k), truth == 1);
        }
        continue;
      }
      // top-k: the mode is the k best available items by score
      for (int64_t i = 0; i < n; ++i) mode[i] = static_cast<int32_t>(i);
      std::stable_sort(mode.begin(), mode.end(), [&](int32_t x, int32_t y) { return row.s[x] > row.s[y]; });
      const bool ok = observed_prefix(key, n, k, level == 1, order) && !std::isinf(row.s[mode[k - 1]]);
      if (!ok) {
        ++skip;
        continue;
      }
      bool hit = true;
      if (level == 1) {
        for (int64_t j = 0; j < k; ++j) hit &= order[j] == mode[j];
      } else {
        std::vector<int32_t> a(mode.begin(), mode.begin() + k), o(order.begin(), order.begin() + k);
        std::sort(a.begin(), a.end());
        std::sort(o.begin(), o.end());
        hit = a == o;
      }
      double p;
      if (level == 1) {
        if (!row.slow) {
          double suf = 0.0;
          for (int64_t j = n - 1; j >= 0; --j) {
            suf += row.w[mode[j]];
            tmp[j] = suf;
          }
          p = 1.0;
          for (int64_t j = 0; j < k; ++j) p *= row.w[mode[j]] / tmp[j];
        } else {
          double suf = -kInf;
          for (int64_t j = n - 1; j >= 0; --j) {
            suf = log_add(suf, row.s[mode[j]]);
            tmp[j] = suf;
          }
          double lp = 0.0;
          for (int64_t j = 0; j < k; ++j) lp += row.s[mode[j]] - tmp[j];
          p = std::exp(lp);
        }
      } else if (!row.slow) {
        double rest = 0.0;
        for (int64_t j = k; j < n; ++j) rest += row.w[mode[j]];
        for (int64_t j = 0; j < k; ++j) tmp[j] = row.w[mode[j]];
        p = set_prob(tmp.data(), k, rest, f, sums);
      } else {
        double rest = -kInf;
        for (int64_t j = k; j < n; ++j) rest = log_add(rest, row.s[mode[j]]);
        for (int64_t j = 0; j < k; ++j) tmp[j] = row.s[mode[j]];
        p = log_set_prob(tmp.data(), k, rest, f, sums);
      }
      add(p, hit);
    }
    skipped[ci] = skip;
  });
  std::fill(table, table + 3 * nb, 0.0);
  int64_t total_skipped = 0;
  for (int64_t ci = 0; ci < n_chunks; ++ci) {
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t q = 0; q < 3; ++q) table[q * nb + b] += part[(ci * nb + b) * 3 + q];
    }
    total_skipped += skipped[ci];
  }
  return total_skipped;
}

double rank_canonical(const double* probs, const int64_t* labels, int64_t rows, int64_t n_classes, double h,
                      double p) {
  const int64_t C = n_classes;
  // keep the labelled rows, sorted by label (stable) so that each class's kernel weights are one contiguous run
  std::vector<int64_t> idx;
  for (int64_t b = 0; b < rows; ++b) {
    if (labels[b] >= 0) idx.push_back(b);
  }
  const int64_t m = static_cast<int64_t>(idx.size());
  if (m == 0) return std::numeric_limits<double>::quiet_NaN();
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return labels[a] < labels[b]; });
  std::vector<int64_t> start(static_cast<size_t>(C + 1), 0);
  for (int64_t i = 0; i < m; ++i) start[labels[idx[i]] + 1] += 1;
  for (int64_t c = 0; c < C; ++c) start[c + 1] += start[c];
  // kernel centres i: a_ic - 1 = f_ic / h, stored class-major; constants lgamma(sum a) - sum lgamma(a)
  std::vector<double> am1(static_cast<size_t>(C * m)), cst(static_cast<size_t>(m)), logf(static_cast<size_t>(m * C));
  for (int64_t i = 0; i < m; ++i) {
    const double* f = probs + idx[i] * C;
    double sa = 0.0, sl = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double a = f[c] / h + 1.0;
      am1[c * m + i] = a - 1.0;
      sa += a;
      sl += std::lgamma(a);
      logf[i * C + c] = std::log(std::max(f[c], 1e-8));
    }
    cst[i] = std::lgamma(sa) - sl;
  }
  const int64_t chunk = 64;
  const int64_t n_chunks = (m + chunk - 1) / chunk;
  std::vector<double> part(static_cast<size_t>(n_chunks), 0.0);
  for_chunks(m, chunk, threads_for(n_chunks), [&](int, int64_t ci, int64_t lo, int64_t hi) {
    std::vector<double> lk(static_cast<size_t>(m)), num(static_cast<size_t>(C));
    double total = 0.0;
    for (int64_t j = lo; j < hi; ++j) {
      const double* lf = logf.data() + j * C;
      double* out = lk.data();
      const double* cs = cst.data();
      for (int64_t i = 0; i < m; ++i) out[i] = cs[i];
      for (int64_t c = 0; c < C; ++c) {
        const double l = lf[c];
        const double* a = am1.data() + c * m;
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) out[i] += a[i] * l;
      }
      out[j] = -kInf;  // leave one out (exp_neg gives it 1e-304: nothing next to the max's 1)
      double mx = -kInf;
      for (int64_t i = 0; i < m; ++i) mx = std::max(mx, out[i]);
      double den = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = start[c]; i < start[c + 1]; ++i) s += fastmath::exp_neg(out[i] - mx);
        num[c] = s;
        den += s;
      }
      den += 1e-8;
      const double* f = probs + idx[j] * C;
      double norm = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        const double d = std::fabs(num[c] / den - f[c]);
        norm += p == 1.0 ? d : std::pow(d, p);
      }
      total += p == 1.0 ? norm : std::pow(norm, 1.0 / p);
    }
    part[ci] = total;
  });
  double total = 0.0;
  for (double v : part) total += v;
  return total / static_cast<double>(m);
}

}  // namespace prefcal::cpu
