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

#include "prefcal/cpu/parallel.hpp"
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
    if (edges == nullptr) {
      const double x = std::floor(p * bins);
      return x >= bins ? bins - 1 : static_cast<int32_t>(x);
    }
    int32_t b = 0;
    while (b + 1 <= bins && edges[b + 1] <= p) ++b;  // the number of edges <= p, minus one
    return std::min(b, bins - 1);
  }
};

double clip01(double p) { return p < 0.0 ? 0.0 : (p > 1.0 ? 1.0 : p); }

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

// Adds the events of rows [lo, hi) for classes [c0, c1) into acc laid out [class - c0][bin][3].
void classwise_rows(const double* scores, int64_t score_rows, const double* keys, int64_t lo, int64_t hi, int64_t n,
                    const int32_t* classes, int64_t c0, int64_t c1, int64_t k, bool top, const Binner& bin,
                    const uint8_t* keep, double* acc, Row& row, std::vector<int32_t>& order) {
  const int64_t nb = bin.bins;
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
      for (int64_t c = c0; c < c1; ++c) {
        const int32_t* cl = classes + c * k;
        bool avail = true, hit = true;
        for (int64_t j = 0; j < k; ++j) {
          avail &= !std::isinf(key[cl[j]]);
          hit &= cl[j] == order[j];
        }
        if (!avail) continue;
        const double p = clip01(top_prob(row, cl, k, n));
        double* t = acc + ((c - c0) * nb + bin(p)) * 3;
        t[0] += 1.0;
        t[1] += p;
        t[2] += hit ? 1.0 : 0.0;
      }
    } else {
      for (int64_t c = c0; c < c1; ++c) {
        const int32_t* cl = classes + c * k;
        const int truth = sub_truth(key, cl, k);
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

}  // namespace

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
