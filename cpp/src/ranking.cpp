// CPU kernels of the calibration hierarchy (see prefcal/cpu/ranking.hpp).
//
// Classwise: with many classes each task owns a block of classes and streams every row through it (no
// private copies, no reduction); with few classes the rows are cut into fixed chunks with private tables
// summed in chunk order. Either way the result does not depend on the number of threads.
#include "prefcal/cpu/ranking.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "prefcal/cpu/clones.hpp"
#include "prefcal/cpu/parallel.hpp"
#include "prefcal/common.hpp"
#include "prefcal/fastmath.hpp"
#include "prefcal/ranking.hpp"

namespace prefcal::cpu {

namespace {

using rank::Binner;
using rank::clip01;
using rank::kInf;
using rank::log_add;
using rank::sub_prob;
using rank::sub_truth;
using rank::top_prob;

// One row of a PL model (the fields rank:: reads): worths relative to the row's max, their total, and whether
// the row needs logs.
struct Row {
  const double* s = nullptr;
  std::vector<double> w;
  double total = 0.0;
  bool slow = false;

  explicit Row(int64_t n) : w(static_cast<size_t>(n)) {}

  void load(const double* scores, int64_t n) {
    s = scores;
    slow = rank::load_row(scores, n, w.data(), total);
  }
};

// The observed top-k prefix of a row into order[0..k), and whether it (ordered) or the set is decided.
bool observed_prefix(const double* key, int64_t n, int64_t k, bool ordered, std::vector<int32_t>& order) {
  return rank::observed_prefix(key, n, k, ordered, [&](int64_t j, int32_t v) { order[j] = v; });
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
      if (t < rank::kCancel * r.total && j + 1 < k) t = rank::rest_worth(r, c, j, n);  // no cancellation
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
        const int truth = rank::top_truth(key, cl, order.data(), k);
        if (truth < 0) continue;
        const double p = clip01(prefix.prob(row, cl, k, n));
        double* t = acc + ((c - c0) * nb + bin(p)) * 3;
        t[0] += 1.0;
        t[1] += p;
        t[2] += static_cast<double>(truth);
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
  int64_t observed(const double* key) const { return rank::observed_rank(key, a.data(), static_cast<int>(k)); }
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
    if (!rank::pair_decided(ka, kb)) continue;
    const double p0 = clip01(rank::pair_prob(row, a, b));
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
    if (!rank::triple_decided(ka, kb, kc)) continue;
    rank::triple_probs(row, a, b, c, p);
    const int seen = rank::triple_seen(ka, kb, kc);
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
    do {
      subs.insert(subs.end(), a.begin(), a.end());
    } while (rank::next_combination(a.data(), k, n));
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
      if (!rank::next_combination(sw.a.data(), k, n)) break;  // next combination in lexicographic order
      ++subset;
    }
  }
}

// The first row of each distinct key row (bitwise equal), in row order, and optionally each row's index in that
// list (uid): an open-addressing hash table of row indices, each probe confirmed by comparing the rows' bytes
// (a collision never merges two rows).
std::vector<int64_t> distinct_rows(const double* keys, int64_t rows, int64_t n, int32_t* uid = nullptr) {
  int64_t cap = 16;
  while (cap < 2 * rows) cap *= 2;
  std::vector<int64_t> table(static_cast<size_t>(cap), -1);
  std::vector<int64_t> out;
  const size_t bytes = static_cast<size_t>(n) * sizeof(double);
  for (int64_t b = 0; b < rows; ++b) {
    const double* row = keys + b * n;
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (int64_t j = 0; j < n; ++j) {
      uint64_t w;
      std::memcpy(&w, row + j, sizeof w);
      h = (h ^ w) * 0xff51afd7ed558ccdull;
      h ^= h >> 32;
    }
    int64_t at = static_cast<int64_t>(h & static_cast<uint64_t>(cap - 1));
    while (true) {
      const int64_t t = table[at];
      if (t < 0) {
        table[at] = b;
        if (uid != nullptr) uid[b] = static_cast<int32_t>(out.size());
        out.push_back(b);
        break;
      }
      if (std::memcmp(keys + t * n, row, bytes) == 0) {  // a repeat of row t
        if (uid != nullptr) uid[b] = uid[t];
        break;
      }
      at = (at + 1) & (cap - 1);
    }
  }
  return out;
}

// One (3, B) table of binary (probability, hit) events over the rows: each chunk of rows fills its own
// partial table, reduced in chunk order (the same sums for any thread count). events(lo, hi, add, skip) adds
// the events of rows [lo, hi) with add(p, hit) and counts the undecided ones in skip. Returns all undecided.
template <class Events>
int64_t binary_table(int64_t rows, int32_t n_bins, double* table, Events&& events) {
  const Binner bin{n_bins, nullptr};
  const int64_t nb = n_bins;
  const int64_t chunk = std::max<int64_t>(256, (rows + 63) / 64);
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  Slabs<double> part(n_chunks, nb * 3);
  std::vector<int64_t> skipped(static_cast<size_t>(n_chunks), 0);
  for_chunks(rows, chunk, threads_for(n_chunks), [&](int, int64_t ci, int64_t lo, int64_t hi) {
    double* acc = part.open(ci);
    auto add = [acc, &bin](double p, bool hit) {
      p = clip01(p);
      double* t = acc + bin(p) * 3;
      t[0] += 1.0;
      t[1] += p;
      t[2] += static_cast<double>(hit);  // not a select: a branch on a random outcome
    };
    int64_t skip = 0;
    events(lo, hi, add, skip);
    skipped[ci] = skip;
  });
  std::fill(table, table + 3 * nb, 0.0);
  int64_t total_skipped = 0;
  for (int64_t ci = 0; ci < n_chunks; ++ci) {
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t q = 0; q < 3; ++q) table[q * nb + b] += part[ci][b * 3 + q];
    }
    total_skipped += skipped[ci];
  }
  return total_skipped;
}

}  // namespace

// Explicit model, classes [c0, c1): a class's probability is the sum of the probabilities of the orderings
// listed for it (CSC: orderings idx[indptr[c] .. indptr[c + 1]) of the row's probs), or, with indptr null, given
// directly (probs is then (rows, C), from a matrix product). acc is laid out [class - c0][bin][3].
PREFCAL_CLONES void explicit_rows(const double* probs, int64_t stride, const int64_t* indptr, const int32_t* idx,
                                  const double* keys, int64_t rows, int64_t n, const int32_t* classes, int64_t c0,
                                  int64_t c1, int64_t k, bool top, const Binner& bin, const uint8_t* keep,
                                  double* acc) {
  const int64_t nb = bin.bins;
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::vector<double> scratch(static_cast<size_t>(n));
  for (int64_t b = 0; b < rows; ++b) {
    if (keep != nullptr && !keep[b]) continue;
    const double* key = keys + b * n;
    if (top && !observed_prefix(key, n, k, true, order)) continue;
    const bool clean = !top && row_clean(key, n, scratch);
    const double* pr = probs + b * stride;
    for (int64_t c = c0; c < c1; ++c) {
      const int32_t* cl = classes + c * k;
      const int truth = top ? rank::top_truth(key, cl, order.data(), k)
                            : (clean ? sub_truth_clean(key, cl, k) : sub_truth(key, cl, k));
      if (truth < 0) continue;
      double p = 0.0;
      if (indptr == nullptr) {
        p = pr[c];
      } else {
        for (int64_t e = indptr[c]; e < indptr[c + 1]; ++e) p += pr[idx[e]];
      }
      const double q = clip01(p);
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
    explicit_rows(pmat, n_classes, nullptr, nullptr, keys, rows, n, classes, c0, c1, k, top, bin, keep, acc.data());
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
    explicit_rows(probs, n_orders, indptr, idx, keys, rows, n, classes, c0, c1, k, top, bin, keep, acc.data());
    transpose_into(acc.data(), c0, c1, nb, tables);
  });
}

constexpr int64_t kWays = 4;  // interleaved copies of a class's table in grouped_rows
static_assert(kWays == 4, "scatter_events unrolls four copies");

// The events of one class over a block of m rows: row i adds to bin slot[i] of copy i % kWays (stride bins
// per copy), count and hit (seen[i] == want) packed as 1 | hit << 32, and q[i] to the sums. The copies keep
// consecutive events of one bin from waiting on each other's additions.
inline void scatter_events(const int32_t* __restrict seen, const int32_t* __restrict slot,
                           const double* __restrict q, int64_t m, int64_t bins, int32_t want,
                           uint64_t* __restrict counts, double* __restrict sums) {
  uint64_t* c0 = counts;
  uint64_t* c1 = counts + bins;
  uint64_t* c2 = counts + 2 * bins;
  uint64_t* c3 = counts + 3 * bins;
  double* s0 = sums;
  double* s1 = sums + bins;
  double* s2 = sums + 2 * bins;
  double* s3 = sums + 3 * bins;
  auto inc = [want](int32_t o) { return uint64_t{1} | (static_cast<uint64_t>(o == want) << 32); };
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) {
    c0[slot[i]] += inc(seen[i]);
    s0[slot[i]] += q[i];
    c1[slot[i + 1]] += inc(seen[i + 1]);
    s1[slot[i + 1]] += q[i + 1];
    c2[slot[i + 2]] += inc(seen[i + 2]);
    s2[slot[i + 2]] += q[i + 2];
    c3[slot[i + 3]] += inc(seen[i + 3]);
    s3[slot[i + 3]] += q[i + 3];
  }
  for (; i < m; ++i) {  // the tail, row i in copy i % 4 as above
    uint64_t* c = counts + (i % kWays) * bins;
    double* sm = sums + (i % kWays) * bins;
    c[slot[i]] += inc(seen[i]);
    sm[slot[i]] += q[i];
  }
}

// Explicit model with classes sorted by group: a task owns a range of classes (whole groups) and streams the
// rows in blocks. Per block the orderings' probabilities are transposed (one contiguous column of the block per
// ordering) and the observed order of each of the task's groups is looked up (found once per distinct key row
// when rows repeat, else once per row); then class by class the block's probabilities are sums of whole
// columns (vectorised) and the class's bins stay in L1 while the block's events are binned. The class
// probabilities are those of a row-by-row loop; the bins' sums are added per interleaved copy
// (scatter_events), the same for any thread count.
PREFCAL_CLONES void grouped_rows(const double* probs, int64_t n_orders, const int64_t* indptr, const int32_t* idx,
                                 const double* keys, int64_t rows, int64_t n, int64_t k, bool top,
                                 const int32_t* cls_group, const int32_t* cls_rank, int64_t c0, int64_t c1,
                                 const int32_t* groups, const int32_t* row_class, const Binner& bin,
                                 const uint8_t* keep, const int32_t* uid, const int64_t* distinct, int64_t n_distinct,
                                 double* acc) {
  constexpr int64_t kBlock = 256;
  const int64_t nb = bin.bins;
  int64_t kf = 1;
  for (int64_t j = 2; j <= k; ++j) kf *= j;
  SubsetWalk sw(k, kf);
  const int64_t g0 = top ? 0 : cls_group[c0], g1 = top ? 1 : cls_group[c1 - 1] + 1;
  std::vector<double> cols(static_cast<size_t>(n_orders * kBlock)), p(kBlock);
  std::vector<int32_t> seen(static_cast<size_t>((g1 - g0) * kBlock)), slot(kBlock);
  // sub-k with uid: the observed order of each group in each distinct key row, found once (rows repeat)
  std::vector<int32_t> useen;
  if (!top && uid != nullptr) {
    useen.resize(static_cast<size_t>((g1 - g0) * n_distinct));
    for (int64_t g = g0; g < g1; ++g) {
      for (int64_t j = 0; j < k; ++j) sw.a[j] = groups[g * k + j];
      int32_t* ug = useen.data() + (g - g0) * n_distinct;
      for (int64_t u = 0; u < n_distinct; ++u) ug[u] = static_cast<int32_t>(sw.observed(keys + distinct[u] * n));
    }
  }
  std::vector<int64_t> live(kBlock);
  const int64_t zero_bin = bin(0.0);
  // per class: kWays copies of the bins; a copy's count and hits (< 2^32: rows < 2^32 per copy, checked
  // by the caller) packed as count | hits << 32
  std::vector<uint64_t> counts(static_cast<size_t>((c1 - c0) * kWays * (nb + 1)), 0);
  std::vector<double> sums(counts.size(), 0.0);
  for (int64_t b0 = 0; b0 < rows; b0 += kBlock) {
    int64_t m = 0;  // the block's rows that count
    for (int64_t b = b0; b < std::min(rows, b0 + kBlock); ++b) {
      if ((keep != nullptr && !keep[b]) || (top && row_class[b] == -2)) continue;
      live[m++] = b;
    }
    if (m == 0) continue;
    for (int64_t i = 0; i < m; ++i) {
      const double* pr = probs + live[i] * n_orders;
      for (int64_t r = 0; r < n_orders; ++r) cols[r * kBlock + i] = pr[r];
    }
    if (top) {
      for (int64_t i = 0; i < m; ++i) seen[i] = row_class[live[i]];
    } else if (!useen.empty()) {
      for (int64_t g = g0; g < g1; ++g) {
        const int32_t* ug = useen.data() + (g - g0) * n_distinct;
        int32_t* sg = seen.data() + (g - g0) * kBlock;
        for (int64_t i = 0; i < m; ++i) sg[i] = ug[uid[live[i]]];
      }
    } else {
      for (int64_t g = g0; g < g1; ++g) {
        for (int64_t j = 0; j < k; ++j) sw.a[j] = groups[g * k + j];
        int32_t* sg = seen.data() + (g - g0) * kBlock;
        for (int64_t i = 0; i < m; ++i) sg[i] = static_cast<int32_t>(sw.observed(keys + live[i] * n));
      }
    }
    for (int64_t c = c0; c < c1; ++c) {
      if (indptr[c] == indptr[c + 1]) {  // no ordering satisfies the class: every event is (q = 0, hit?)
        const int32_t* sv = seen.data() + (top ? 0 : (cls_group[c] - g0) * kBlock);
        const int32_t want = top ? static_cast<int32_t>(c) : cls_rank[c];
        uint64_t decided = 0, hits = 0;
        for (int64_t i = 0; i < m; ++i) {
          decided += static_cast<uint64_t>(top || sv[i] >= 0);
          hits += static_cast<uint64_t>(sv[i] == want);
        }
        counts[((c - c0) * kWays) * (nb + 1) + zero_bin] += decided | (hits << 32);
        continue;
      }
      double* pc = p.data();
      std::fill(pc, pc + m, 0.0);
      for (int64_t e = indptr[c]; e < indptr[c + 1]; ++e) {
        const double* col = cols.data() + static_cast<int64_t>(idx[e]) * kBlock;
        for (int64_t i = 0; i < m; ++i) pc[i] += col[i];
      }
      if (bin.edges == nullptr) {  // uniform bins: a vectorised loop
        const int32_t last = bin.bins - 1;
        const double scale = bin.bins;
        for (int64_t i = 0; i < m; ++i) {
          const double q = clip01(pc[i]);
          const int32_t x = static_cast<int32_t>(q * scale);
          pc[i] = q;
          slot[i] = x > last ? last : x;
        }
      } else {
        for (int64_t i = 0; i < m; ++i) {
          pc[i] = clip01(pc[i]);
          slot[i] = bin(pc[i]);
        }
      }
      const int32_t* sv = seen.data() + (top ? 0 : (cls_group[c] - g0) * kBlock);
      const int32_t want = top ? static_cast<int32_t>(c) : cls_rank[c];
      if (!top) {  // undecided rows (observed rank -1) go to the discard bin nb
        for (int64_t i = 0; i < m; ++i) slot[i] = sv[i] < 0 ? static_cast<int32_t>(nb) : slot[i];
      }
      scatter_events(sv, slot.data(), pc, m, nb + 1, want, counts.data() + (c - c0) * kWays * (nb + 1),
                     sums.data() + (c - c0) * kWays * (nb + 1));
    }
  }
  // the copies of each class's bins, added in order, into acc (class, bin, [count, sum, hits])
  for (int64_t c = 0; c < c1 - c0; ++c) {
    for (int64_t w = 0; w < kWays; ++w) {
      const uint64_t* ct = counts.data() + (c * kWays + w) * (nb + 1);
      const double* sm = sums.data() + (c * kWays + w) * (nb + 1);
      for (int64_t b = 0; b < nb; ++b) {
        double* t = acc + (c * nb + b) * 3;
        t[0] += static_cast<double>(ct[b] & 0xffffffffu);
        t[1] += sm[b];
        t[2] += static_cast<double>(ct[b] >> 32);
      }
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
  // sub-k: the distinct key rows of each slice, when their observed orders (a task's groups x distinct rows)
  // fit in 16 MB; each task then finds the observed orders once per distinct row instead of once per row
  constexpr int64_t kSlice = int64_t{1} << 31;
  struct Distinct {
    std::vector<int64_t> rows;
    std::vector<int32_t> uid;
    bool use = false;
  };
  std::vector<Distinct> distinct(static_cast<size_t>((rows + kSlice - 1) / kSlice));
  int64_t max_groups = 1;
  for (int64_t t = 0; t < n_tasks && !top; ++t) {
    max_groups = std::max<int64_t>(max_groups, cls_group[cuts[t + 1] - 1] - cls_group[cuts[t]] + 1);
  }
  for (int64_t r0 = 0; r0 < rows && !top; r0 += kSlice) {
    Distinct& d = distinct[static_cast<size_t>(r0 / kSlice)];
    const int64_t len = std::min(rows, r0 + kSlice) - r0;
    d.uid.resize(static_cast<size_t>(len));
    d.rows = distinct_rows(keys + r0 * n, len, n, d.uid.data());
    d.use = static_cast<int64_t>(d.rows.size()) * max_groups * 4 <= (int64_t{16} << 20) &&
            static_cast<int64_t>(d.rows.size()) * 2 <= len;  // worth it when rows repeat
  }
  for_chunks(n_tasks, 1, threads_for(n_tasks), [&](int, int64_t task, int64_t, int64_t) {
    const int64_t c0 = cuts[task], c1 = cuts[task + 1];
    std::vector<double> acc(static_cast<size_t>((c1 - c0) * nb * 3), 0.0);
    // row slices of < 2^31 rows: a copy's packed 32-bit counts cannot overflow, and uid fits int32
    for (int64_t r0 = 0; r0 < rows; r0 += kSlice) {
      const int64_t r1 = std::min(rows, r0 + kSlice);
      const Distinct& d = distinct[static_cast<size_t>(r0 / kSlice)];
      grouped_rows(probs + r0 * n_orders, n_orders, indptr, idx, keys + r0 * n, r1 - r0, n, k, top, cls_group,
                   cls_rank, c0, c1, groups, top ? row_class + r0 : row_class, bin,
                   keep == nullptr ? nullptr : keep + r0, d.use ? d.uid.data() : nullptr, d.rows.data(),
                   static_cast<int64_t>(d.rows.size()), acc.data());
    }
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
      if (rank::row_keys(r, m, n, mk, keys + b * n)) {
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
  // rows with the same keys observe the same classes: scan one row of each (repeated observations are common)
  const std::vector<int64_t> scan = distinct_rows(keys, rows, n);
  const int64_t m = static_cast<int64_t>(scan.size());
  std::fill(seen, seen + size, uint8_t{0});
  if (m * count * 8 <= size) {  // few (row, subset) pairs: set the flags directly, no table per thread
    SubsetWalk sw(k, kf);
    for (int64_t s = 0; s < m; ++s) {
      const double* key = keys + scan[s] * n;
      for (int64_t j = 0; j < k; ++j) sw.a[j] = static_cast<int32_t>(j);
      for (int64_t subset = 0;; ++subset) {
        const int64_t r = sw.observed(key);
        if (r >= 0) seen[subset * kf + r] = 1;
        if (!rank::next_combination(sw.a.data(), k, n)) break;
      }
    }
    return;
  }
  // one flag table per thread (an OR of flags does not depend on how the rows are split)
  const int64_t n_parts = std::max<int64_t>(1, std::min<int64_t>(num_threads(), m));
  const int64_t chunk = std::max<int64_t>(1, (m + n_parts - 1) / n_parts);
  const int64_t n_chunks = (m + chunk - 1) / chunk;
  std::vector<uint8_t> part(static_cast<size_t>(n_chunks * size), 0);
  for_chunks(m, chunk, threads_for(n_chunks), [&](int, int64_t ci, int64_t lo, int64_t hi) {
    SubsetWalk sw(k, kf);
    uint8_t* mine = part.data() + ci * size;
    int64_t found = 0;  // once every class is seen the rest of the chunk cannot add one
    for (int64_t s = lo; s < hi && found < size; ++s) {
      const double* key = keys + scan[s] * n;
      for (int64_t j = 0; j < k; ++j) sw.a[j] = static_cast<int32_t>(j);
      int64_t subset = 0;
      while (true) {
        const int64_t r = sw.observed(key);
        if (r >= 0 && !mine[subset * kf + r]) {
          mine[subset * kf + r] = 1;
          ++found;
        }
        if (!rank::next_combination(sw.a.data(), k, n)) break;
        ++subset;
      }
    }
  });
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

int64_t rank_top_label(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                       int level, const int32_t* groups, int64_t n_groups, int64_t k, int32_t n_bins,
                       double* table) {
  return binary_table(rows, n_bins, table, [&](int64_t lo, int64_t hi, auto&& add, int64_t& skip) {
    Row row(n);
    std::vector<int32_t> order(static_cast<size_t>(n)), mode(static_cast<size_t>(n));
    std::vector<double> tmp(static_cast<size_t>(n)), f, sums;
    if (level == 2) {
      f.resize(static_cast<size_t>(int64_t{1} << k));
      sums.resize(f.size());
    }
    for (int64_t b = lo; b < hi; ++b) {
      row.load(scores + (score_rows == 1 ? 0 : b) * n, n);
      const double* key = keys + b * n;
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
      const bool hit = rank::mode_hit(order.data(), mode.data(), k, level);
      const double p = rank::mode_top_prob(row, mode.data(), n, k, level, tmp.data(), f.data(), sums.data());
      add(p, hit);
    }
  });
}

int64_t rank_marginal_hist(const double* P, int64_t p_rows, const double* keys, int64_t rows, int64_t n, int64_t k,
                           int32_t n_bins, double* table) {
  return binary_table(rows, n_bins, table, [&](int64_t lo_row, int64_t hi_row, auto&& add, int64_t& skip) {
    for (int64_t b = lo_row; b < hi_row; ++b) {
      const double* key = keys + b * n;
      const double* pb = P + (p_rows == 1 ? 0 : b) * n * n;
      bool unknown = false;
      for (int64_t i = 0; i < n; ++i) unknown = unknown || std::isnan(key[i]);
      for (int64_t i = 0; i < n; ++i) {
        const double ki = key[i];
        if (std::isinf(ki)) continue;  // unavailable: no events
        int64_t lo = 0, hi = n - 1;
        if (!unknown) {  // ki is finite here
          int64_t less = 0, leq = 0;
          for (int64_t j = 0; j < n; ++j) {
            less += key[j] < ki;
            leq += key[j] <= ki;
          }
          lo = less;
          hi = leq - 1;
        }
        const double* pi = pb + i * n;
        if (k == 0) {
          for (int64_t j = 0; j < n; ++j) {
            if (lo == hi || j < lo || j > hi) {
              add(pi[j], lo == j && hi == j);
            } else {
              ++skip;
            }
          }
        } else if (hi < k || lo >= k) {
          double p = 0.0;
          for (int64_t j = 0; j < k; ++j) p += pi[j];
          add(p, hi < k);
        } else {
          ++skip;
        }
      }
    }
  });
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
  // one labelled row leaves no other row out of which to estimate E[y | f]: undefined (NaN), as the reference
  // and the paper's code give it
  if (m <= 1) return std::numeric_limits<double>::quiet_NaN();
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

void rank_observed_tops(const double* keys, int64_t rows, int64_t n, int64_t k, int64_t* codes) {
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(n * k, 1));
  for_chunks(rows, chunk, threads_for((rows + chunk - 1) / chunk), [&](int, int64_t, int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      int64_t code = 0;
      const bool decided = rank::observed_prefix(keys + b * n, n, k, true, [&](int64_t, int32_t item) {
        code = code * n + item;
      });
      codes[b] = decided ? code : -1;
    }
  });
}

namespace {

uint64_t items_hash(const int32_t* items, int64_t k) {  // FNV-1a over the items
  uint64_t h = 1469598103934665603ull;
  for (int64_t j = 0; j < k; ++j) {
    h ^= static_cast<uint64_t>(static_cast<uint32_t>(items[j]));
    h *= 1099511628211ull;
  }
  return h;
}

// How many of the samples put items[0..k) in that order; pos_t [item][sample] holds the positions. ok: scratch
// of `size` bytes (k > 2).
PREFCAL_CLONES int64_t count_in_order(const int32_t* __restrict pos_t, int64_t size, const int32_t* items, int64_t k,
                                      uint8_t* __restrict ok) {
  int64_t hits = 0;
  const int32_t* a = pos_t + static_cast<int64_t>(items[0]) * size;
  const int32_t* b = pos_t + static_cast<int64_t>(items[1]) * size;
  if (k == 2) {
    for (int64_t s = 0; s < size; ++s) hits += a[s] < b[s] ? 1 : 0;
    return hits;
  }
  for (int64_t s = 0; s < size; ++s) ok[s] = a[s] < b[s] ? 1 : 0;
  for (int64_t j = 2; j < k; ++j) {
    a = b;
    b = pos_t + static_cast<int64_t>(items[j]) * size;
    for (int64_t s = 0; s < size; ++s) ok[s] &= a[s] < b[s] ? 1 : 0;
  }
  for (int64_t s = 0; s < size; ++s) hits += ok[s];
  return hits;
}

}  // namespace

int64_t rank_sample_probs(const int64_t* samples, int64_t rows, int64_t size, int64_t n, const int32_t* classes,
                          int64_t n_classes, int64_t k, int mode, double* out) {
  const double total = static_cast<double>(size);  // frequencies as count / size, the reference's mean
  // top-k and sets: the classes by the hash of their items (sorted items for sets), looked up once per sample
  std::vector<int32_t> keyed;
  std::vector<std::pair<uint64_t, int32_t>> index;
  if (mode != 0) {
    keyed.assign(classes, classes + n_classes * k);
    index.resize(static_cast<size_t>(n_classes));
    for (int64_t c = 0; c < n_classes; ++c) {
      int32_t* it = keyed.data() + c * k;
      if (mode == 2) std::sort(it, it + k);
      index[static_cast<size_t>(c)] = {items_hash(it, k), static_cast<int32_t>(c)};
    }
    std::sort(index.begin(), index.end());
  }
  const int64_t per_row = size * std::max<int64_t>(n, mode == 0 ? n_classes * k : k);
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(per_row, 1));
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  std::vector<int64_t> bad(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), kNoError);
  for_chunks(rows, chunk, threads_for(n_chunks), [&](int, int64_t c, int64_t lo, int64_t hi) {
    std::vector<int32_t> pos(static_cast<size_t>(size * n)), buf(static_cast<size_t>(k));
    std::vector<int64_t> count(static_cast<size_t>(n_classes));
    std::vector<uint8_t> ok(static_cast<size_t>(size));
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t* smp = samples + b * size * n;
      // pos [item][sample]: the item's position in the sample (-1: not seen, so a repeat or a gap shows)
      std::fill(pos.begin(), pos.end(), -1);
      for (int64_t s = 0; s < size; ++s) {
        for (int64_t j = 0; j < n; ++j) {
          const int64_t item = smp[s * n + j];
          if (item < 0 || item >= n || pos[static_cast<size_t>(item * size + s)] >= 0) {
            bad[static_cast<size_t>(c)] = b;
            return;
          }
          pos[static_cast<size_t>(item * size + s)] = static_cast<int32_t>(j);
        }
      }
      double* o = out + b * n_classes;
      if (mode == 0) {
        for (int64_t cl = 0; cl < n_classes; ++cl) {
          const int64_t hits = k == 1 ? size : count_in_order(pos.data(), size, classes + cl * k, k, ok.data());
          o[cl] = static_cast<double>(hits) / total;
        }
        continue;
      }
      std::fill(count.begin(), count.end(), 0);
      for (int64_t s = 0; s < size; ++s) {
        for (int64_t j = 0; j < k; ++j) buf[static_cast<size_t>(j)] = static_cast<int32_t>(smp[s * n + j]);
        if (mode == 2) std::sort(buf.begin(), buf.end());
        const uint64_t h = items_hash(buf.data(), k);
        auto at = std::lower_bound(index.begin(), index.end(), std::make_pair(h, int32_t(-1)));
        for (; at != index.end() && at->first == h; ++at) {
          if (std::equal(buf.begin(), buf.end(), keyed.begin() + at->second * k)) {
            ++count[static_cast<size_t>(at->second)];
            break;
          }
        }
      }
      for (int64_t cl = 0; cl < n_classes; ++cl) o[cl] = static_cast<double>(count[static_cast<size_t>(cl)]) / total;
    }
  });
  int64_t first = kNoError;
  for (int64_t v : bad) first = std::min(first, v);
  return first;
}

}  // namespace prefcal::cpu
