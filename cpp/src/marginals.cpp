// OpenMP CPU kernels of the permutation marginals. Declarations: prefcal/cpu/marginals.hpp; per-context
// math: prefcal/marginals.hpp.
#include "prefcal/cpu/marginals.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "prefcal/common.hpp"
#include "prefcal/cpu/clones.hpp"
#include "prefcal/cpu/parallel.hpp"
#include "prefcal/cpu/pl.hpp"
#include "prefcal/fastmath.hpp"
#include "prefcal/marginals.hpp"
#include "prefcal/pl.hpp"

namespace prefcal::cpu {

namespace {

constexpr int kLanes = 16;
constexpr int64_t kLaneMax = 12;  // exact DP sixteen contexts at a time up to here (T and W': 1 MiB at n = 12)

int64_t min_of(const std::vector<int64_t>& v) { return v.empty() ? kNoError : *std::min_element(v.begin(), v.end()); }

int64_t row_chunk(int64_t rows_work, int64_t per_row) {
  return std::max<int64_t>(1, rows_work / std::max<int64_t>(per_row, 1));
}

const uint8_t* mask_of(const uint8_t* mask, bool global_mask, int64_t b, int64_t n) {
  if (mask == nullptr) return nullptr;
  return global_mask ? mask : mask + b * n;
}

// The available items of a context sorted by decreasing score (ties: lower item first) and their scores.
template <class T>
int64_t sorted_context(const T* s, int64_t n, const uint8_t* mk, int64_t* items, double* ss) {
  // Insertion sort by value (contexts are small; the exact method has n <= 20), larger scores first, stable.
  int64_t na = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!pl::available(mk, i)) continue;
    const double v = static_cast<double>(s[i]);
    int64_t q = na++;
    for (; q > 0 && ss[q - 1] < v; --q) {
      ss[q] = ss[q - 1];
      items[q] = items[q - 1];
    }
    ss[q] = v;
    items[q] = i;
  }
  return na;
}

// Context b's result from p[i * layers + j] (sorted item i, position j < layers).
void write_context(double* row, int64_t n, const int64_t* items, int64_t na, const double* p, int64_t layers,
                   int64_t topk, int64_t lane_stride = 1) {
  if (topk == 0) {
    if (na < n || layers < n) std::fill(row, row + n * n, 0.0);  // else every entry is written below
    for (int64_t i = 0; i < na; ++i) {
      for (int64_t j = 0; j < layers; ++j) row[items[i] * n + j] = p[(i * layers + j) * lane_stride];
    }
  } else {
    std::fill(row, row + n, 0.0);
    for (int64_t i = 0; i < na; ++i) {
      double sum = 0.0;
      for (int64_t j = 0; j < layers; ++j) sum += p[(i * layers + j) * lane_stride];
      row[items[i]] = sum;
    }
  }
}

// The exact DP of sixteen contexts of n items at once (no mask), [..][lane] layouts: ss [n][16] sorted
// decreasing, e [n][n][16], w and t [2^n][16], p [n][layers][16]. The same terms as marg::exact_context
// (which pushes them forward), summed in another order.
PREFCAL_CLONES void exact_lanes(const double* __restrict ss, int n, int layers, double* __restrict e,
                                double* __restrict w, double* __restrict t, double* __restrict p) {
  for (int a = 0; a < n; ++a) {  // e[a][b][l] for b >= a: one contiguous run per a
    double* ea = e + (a * n + a) * kLanes;
    const double* sb = ss + a * kLanes;
    const int count = (n - a) * kLanes;
    for (int v = 0; v < count; ++v) ea[v] = sb[v] - sb[v % kLanes];
    for (int v = 0; v < count; ++v) ea[v] = fastmath::exp_neg(ea[v]);
  }
  const uint32_t count = uint32_t(1) << n, full = count - 1;
  for (int l = 0; l < kLanes; ++l) w[l] = 0.0;
  for (uint32_t r = 1; r < count; ++r) {
    const int hb = marg::highbit32(r);
    const uint32_t low = r ^ (uint32_t(1) << hb);
    double* wr = w + r * kLanes;
    if (low == 0) {
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) wr[l] = 1.0;
    } else {
      const double* wl = w + low * kLanes;
      const double* el = e + (marg::ctz32(low) * n + hb) * kLanes;
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) wr[l] = wl[l] + el[l];
    }
  }
  // Pulled in increasing order of the sets (every S - i precedes S): T(S) = sum_{i in S} g(S - i) E[a][i]
  // with g(R) = T(R) / W'(rest of R) and a the first item of the rest of S - i; each term is also
  // P(i at position |S| - 1). Only g is stored (t holds it): one store per set, no zeroing.
  std::fill(p, p + n * layers * kLanes, 0.0);
  const double* wfull = w + full * kLanes;
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) t[l] = 1.0 / wfull[l];
  for (uint32_t s = 1; s < count; ++s) {
    const int j = marg::popcount32(s) - 1;
    if (j >= layers) continue;
    double acc[kLanes] = {};
    for (uint32_t bits = s; bits != 0; bits &= bits - 1) {
      const int i = marg::ctz32(bits);
      const uint32_t pred = s ^ (uint32_t(1) << i);
      const double* gp = t + pred * kLanes;
      const double* ei = e + (marg::ctz32(full ^ pred) * n + i) * kLanes;
      double* pij = p + (i * layers + j) * kLanes;
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        const double term = gp[l] * ei[l];
        acc[l] += term;
        pij[l] += term;
      }
    }
    if (s != full && j + 1 < layers) {
      double* gs = t + s * kLanes;
      const double* wr = w + (full ^ s) * kLanes;
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) gs[l] = acc[l] / wr[l];
    }
  }
}

// One node y of the integral for a context of na sorted items: adds g_i c^(i)_j to pt[j * na + i] (items
// contiguous, so the loops below run across items in vector lanes) for j < layers and the items [lo, hi) whose
// window holds y. The product is marg::clock_product; the deflations are marg::deflate's, with the divisions
// replaced by one reciprocal per item. Along the sorted items x falls and b = e^{-x} grows, so the items that deflate from
// the low end (b >= a, i.e. b >= 1/2) are a suffix [f0, hi) of the range.
PREFCAL_CLONES void integral_node(const double* __restrict x, const double* __restrict a,
                                  const double* __restrict b, int64_t na, int64_t layers, int64_t lo, int64_t hi,
                                  double h, double* __restrict poly, double* __restrict carry, double* __restrict inv, double* __restrict g,
                                  double* __restrict pt) {
  marg::clock_product(a, b, na, poly);  // the GPU's code, so that the CPU tests cover it
  const double* cur = poly;
  int64_t f0 = lo;
  while (f0 < hi && b[f0] < 0.5) ++f0;
  for (int64_t i = lo; i < hi; ++i) {
    inv[i] = 1.0 / (i < f0 ? a[i] : b[i]);
    g[i] = h * x[i] * b[i];
    carry[i] = 0.0;
  }
  for (int64_t j = na - 1; j >= 0; --j) {  // from the high end: c_j = (p_{j+1} - b c_{j+1}) / a
    const double pj = cur[j + 1];
    double* row = pt + j * na;
    if (j < layers) {
      for (int64_t i = lo; i < f0; ++i) {
        const double c = (pj - b[i] * carry[i]) * inv[i];
        carry[i] = c;
        row[i] += g[i] * c;
      }
    } else {
      for (int64_t i = lo; i < f0; ++i) carry[i] = (pj - b[i] * carry[i]) * inv[i];
    }
  }
  for (int64_t j = 0; j < layers; ++j) {  // from the low end: c_j = (p_j - a c_{j-1}) / b
    const double pj = cur[j];
    double* row = pt + j * na;
    for (int64_t i = f0; i < hi; ++i) {
      const double c = (pj - a[i] * carry[i]) * inv[i];
      carry[i] = c;
      row[i] += g[i] * c;
    }
  }
}

}  // namespace

template <class T>
int64_t marg_exact(const T* s, int64_t rows, int64_t n, const uint8_t* mask, bool global_mask, int64_t topk,
                   double* out) {
  const int64_t width = topk == 0 ? n * n : n;
  const int64_t chunk = (row_chunk(int64_t(1) << 18, (int64_t(1) << n) * n) + kLanes - 1) / kLanes * kLanes;
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  std::vector<int64_t> bad(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), kNoError);
  // Scratch per thread, allocated once (chunks are small: a fresh 2^n table per chunk costs page faults).
  struct Scratch {
    std::vector<int64_t> items;
    std::vector<double> ss, e, p, w, t, one;
  };
  const int nt = threads_for(n_chunks);
  std::vector<Scratch> scratch(static_cast<size_t>(nt));
  for_chunks(rows, chunk, nt, [&](int tid, int64_t c, int64_t lo, int64_t hi) {
    const size_t un = static_cast<size_t>(std::max<int64_t>(n, 1));
    Scratch& sc = scratch[static_cast<size_t>(tid)];
    if (sc.items.empty()) {
      sc.items.resize(un * kLanes);
      sc.ss.resize(un * kLanes);
      sc.e.resize(un * un * kLanes);
      sc.p.resize(un * un * kLanes);
      sc.one.resize(un);
    }
    std::vector<int64_t>& items = sc.items;
    std::vector<double>&ss = sc.ss, &e = sc.e, &p = sc.p, &w = sc.w, &t = sc.t, &one = sc.one;
    int64_t b = lo;
    if (mask == nullptr && n >= 1 && n <= kLaneMax && hi - lo >= kLanes) {
      const int layers = static_cast<int>(topk == 0 ? n : std::min(topk, n));
      w.resize((size_t(1) << n) * kLanes);
      t.resize((size_t(1) << n) * kLanes);
      for (; b + kLanes <= hi; b += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          if (!pl::finite_row(s + (b + l) * n, n)) {
            bad[static_cast<size_t>(c)] = b + l;
            return;
          }
          sorted_context(s + (b + l) * n, n, nullptr, items.data() + l * n, one.data());
          for (int64_t k = 0; k < n; ++k) ss[static_cast<size_t>(k * kLanes + l)] = one[static_cast<size_t>(k)];
        }
        exact_lanes(ss.data(), static_cast<int>(n), layers, e.data(), w.data(), t.data(), p.data());
        for (int l = 0; l < kLanes; ++l) {
          write_context(out + (b + l) * width, n, items.data() + l * n, n, p.data() + l, layers, topk, kLanes);
        }
      }
    }
    for (; b < hi; ++b) {
      if (!pl::finite_row(s + b * n, n)) {
        bad[static_cast<size_t>(c)] = b;
        return;
      }
      const int64_t na = sorted_context(s + b * n, n, mask_of(mask, global_mask, b, n), items.data(), ss.data());
      const int64_t layers = topk == 0 ? na : std::min(topk, na);
      if (na > 0) {
        marg::worth_ratios(ss.data(), static_cast<int>(na), e.data());
        w.resize(size_t(1) << na);
        t.resize(size_t(1) << na);
        marg::rest_worths(e.data(), static_cast<int>(na), w.data());
        std::fill(p.begin(), p.begin() + na * layers, 0.0);
        marg::exact_context(e.data(), w.data(), static_cast<int>(na), static_cast<int>(layers), t.data(), p.data());
      }
      write_context(out + b * width, n, items.data(), na, p.data(), layers, topk);
    }
  });
  return min_of(bad);
}

template <class T>
int64_t marg_integral(const T* s, int64_t rows, int64_t n, const uint8_t* mask, bool global_mask, int64_t topk,
                      double* out) {
  const int64_t width = topk == 0 ? n * n : n;
  const int64_t chunk = row_chunk(int64_t(1) << 16, n * n * 16);
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  std::vector<int64_t> bad(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), kNoError);
  for_chunks(rows, chunk, threads_for(n_chunks), [&](int, int64_t c, int64_t lo, int64_t hi) {
    const size_t un = static_cast<size_t>(std::max<int64_t>(n, 1));
    std::vector<int64_t> items(un);
    std::vector<double> ss(un), rel(un), w(un), x(un), a(un), bv(un), poly(un + 1), carry(un), inv(un), g(un),
        pt(un * un), p(un * un);
    for (int64_t b = lo; b < hi; ++b) {
      if (!pl::finite_row(s + b * n, n)) {
        bad[static_cast<size_t>(c)] = b;
        return;
      }
      const int64_t na = sorted_context(s + b * n, n, mask_of(mask, global_mask, b, n), items.data(), ss.data());
      const int64_t layers = topk == 0 ? na : std::min(topk, na);
      std::fill(pt.begin(), pt.begin() + na * layers, 0.0);
      if (na > 0) {
        for (int64_t i = 0; i < na; ++i) rel[i] = ss[i] - ss[0];
        // x_l = w_l e^y with w_l = e^{rel_l} when no worth underflows, else e^{rel_l + y} item by item.
        const bool scaled = rel[na - 1] > -600.0;
        for (int64_t i = 0; i < na; ++i) w[i] = std::exp(rel[i]);
        const double h = marg::integral_spacing(na);
        marg::for_nodes(rel.data(), na, h, [&](double y) {
          const double ey = scaled ? std::exp(y) : 0.0;
          for (int64_t l = 0; l < na; ++l) {
            x[l] = scaled ? w[l] * ey : std::exp(rel[l] + y);
            marg::clock(x[l], a[l], bv[l]);
          }
          // the items whose window holds y: a contiguous range (window ends grow along the sorted items)
          int64_t from = 0, to = na;
          while (from < na && !marg::in_window(rel[from], y)) ++from;
          while (to > from && !marg::in_window(rel[to - 1], y)) --to;
          integral_node(x.data(), a.data(), bv.data(), na, layers, from, to, h, poly.data(), carry.data(),
                        inv.data(), g.data(), pt.data());
        });
      }
      // [j][i] to [i][j]; rounding can leave ~1e-17 below zero where the probability is ~0: clamp.
      for (int64_t i = 0; i < na; ++i) {
        for (int64_t j = 0; j < layers; ++j) p[i * layers + j] = std::max(pt[j * na + i], 0.0);
      }
      write_context(out + b * width, n, items.data(), na, p.data(), layers, topk);
    }
  });
  return min_of(bad);
}

template <class T>
int64_t marg_mc(const T* s, int64_t rows, int64_t n, const uint8_t* mask, bool global_mask, int64_t topk,
                int64_t n_samples, uint64_t seed, double* out) {
  const int64_t k = topk == 0 ? n : std::min(topk, n);
  const int64_t width = topk == 0 ? n * n : n;
  std::fill(out, out + rows * width, 0.0);
  if (rows == 0 || n == 0 || n_samples == 0) return kNoError;
  constexpr int64_t kBudget = int64_t(1) << 22;  // sampled items held at once
  std::vector<int32_t> buf;
  // Draws of rows [b0, b0 + nb), samples [t0, t0 + ns), counted into out (a single row when ns < n_samples).
  auto block = [&](int64_t b0, int64_t nb, int64_t t0, int64_t ns) -> int64_t {
    buf.resize(static_cast<size_t>(nb * ns * k));
    const uint8_t* mk = mask == nullptr ? nullptr : (global_mask ? mask : mask + b0 * n);
    const int64_t bad = pl_sample(s + b0 * n, nb, n, mk, global_mask, ns, k, seed, true, buf.data(), b0, t0);
    if (bad != kNoError) return b0 + bad;
    for_chunks(nb, 64, threads_for((nb + 63) / 64), [&](int, int64_t, int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        double* row = out + (b0 + b) * width;
        const int32_t* d = buf.data() + b * ns * k;
        for (int64_t q = 0; q < ns * k; ++q) {
          const int32_t item = d[q];
          if (item < 0) continue;
          row[topk == 0 ? item * n + q % k : item] += 1.0;
        }
      }
    });
    return kNoError;
  };
  if (n_samples * k <= kBudget) {
    const int64_t per = std::max<int64_t>(1, kBudget / (n_samples * k));
    for (int64_t b0 = 0; b0 < rows; b0 += per) {
      const int64_t bad = block(b0, std::min(per, rows - b0), 0, n_samples);
      if (bad != kNoError) return bad;
    }
  } else {
    const int64_t per = std::max<int64_t>(1, kBudget / k);
    for (int64_t b = 0; b < rows; ++b) {
      for (int64_t t0 = 0; t0 < n_samples; t0 += per) {
        const int64_t bad = block(b, 1, t0, std::min(per, n_samples - t0));
        if (bad != kNoError) return bad;
      }
    }
  }
  const double scale = 1.0 / static_cast<double>(n_samples);
  for (int64_t q = 0; q < rows * width; ++q) out[q] *= scale;
  return kNoError;
}

template <class I>
int64_t marg_from_samples(const I* smp, int64_t rows, int64_t size, int64_t m, int64_t n, double* out) {
  const int64_t chunk = row_chunk(int64_t(1) << 16, size * std::max<int64_t>(m, 1));
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  std::vector<int64_t> bad(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), kNoError);
  const double scale = size > 0 ? 1.0 / static_cast<double>(size) : 0.0;
  for_chunks(rows, chunk, threads_for(n_chunks), [&](int, int64_t c, int64_t lo, int64_t hi) {
    std::vector<uint32_t> words(static_cast<size_t>(n / 32 + 1), 0u);
    pl::BitsRef bits{{words.data(), 1}};
    for (int64_t b = lo; b < hi; ++b) {
      double* row = out + b * n * n;
      std::fill(row, row + n * n, 0.0);
      for (int64_t t = 0; t < size; ++t) {
        const I* r = smp + (b * size + t) * m;
        const int64_t L = pl::parse_ranking(r, m, n, nullptr, bits);
        pl::clear_listed(r, m, n, bits);
        if (L < 0) {
          bad[static_cast<size_t>(c)] = b;
          return;
        }
        for (int64_t p = 0; p < L; ++p) row[static_cast<int64_t>(r[p]) * n + p] += 1.0;
      }
      for (int64_t q = 0; q < n * n; ++q) row[q] *= scale;
    }
  });
  return min_of(bad);
}

template <class I>
int64_t marg_empirical(const I* r, int64_t rows, int64_t m, int64_t n, const uint8_t* mask, bool global_mask,
                       const double* weights, bool pairwise, double* out) {
  const int64_t slabs = std::max<int64_t>(1, std::min<int64_t>({64, rows / 1024, (int64_t(256) << 20) / (8 * n * n + 1)}));
  const int64_t chunk = std::max<int64_t>(1, (rows + slabs - 1) / slabs);
  const int64_t n_chunks = rows == 0 ? 0 : (rows + chunk - 1) / chunk;
  std::vector<int64_t> bad(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), kNoError);
  std::vector<double> part(static_cast<size_t>(n_chunks * n * n), 0.0);
  for_chunks(rows, chunk, threads_for(n_chunks), [&](int, int64_t c, int64_t lo, int64_t hi) {
    std::vector<uint32_t> words(static_cast<size_t>(n / 32 + 1), 0u);
    pl::BitsRef bits{{words.data(), 1}};
    double* acc = part.data() + c * n * n;
    for (int64_t b = lo; b < hi; ++b) {
      const I* rr = r + b * m;
      const uint8_t* mk = mask_of(mask, global_mask, b, n);
      const double wt = weights == nullptr ? 1.0 : weights[b];
      const int64_t L = pl::parse_ranking(rr, m, n, mk, bits);
      if (L < 0 || !(wt >= 0.0 && wt <= 1.7976931348623157e308)) {
        pl::clear_listed(rr, m, n, bits);
        bad[static_cast<size_t>(c)] = b;
        return;
      }
      for (int64_t p = 0; p < L; ++p) {
        const int64_t item = static_cast<int64_t>(rr[p]);
        if (!pairwise) {
          acc[item * n + p] += wt;
          continue;
        }
        for (int64_t q = p + 1; q < L; ++q) acc[item * n + static_cast<int64_t>(rr[q])] += wt;
        for (int64_t i = 0; i < n; ++i) {
          if (pl::available(mk, i) && !bits.test(i)) acc[item * n + i] += wt;
        }
      }
      pl::clear_listed(rr, m, n, bits);
    }
  });
  const int64_t first = min_of(bad);
  std::fill(out, out + n * n, 0.0);
  for (int64_t c = 0; c < n_chunks; ++c) {
    for (int64_t q = 0; q < n * n; ++q) out[q] += part[static_cast<size_t>(c * n * n + q)];
  }
  return first;
}

#define PREFCAL_MARG_T(T)                                                                                   \
  template int64_t marg_exact<T>(const T*, int64_t, int64_t, const uint8_t*, bool, int64_t, double*);      \
  template int64_t marg_integral<T>(const T*, int64_t, int64_t, const uint8_t*, bool, int64_t, double*);   \
  template int64_t marg_mc<T>(const T*, int64_t, int64_t, const uint8_t*, bool, int64_t, int64_t, uint64_t, \
                              double*);
PREFCAL_MARG_T(float)
PREFCAL_MARG_T(double)
#undef PREFCAL_MARG_T

#define PREFCAL_MARG_I(I)                                                                                  \
  template int64_t marg_from_samples<I>(const I*, int64_t, int64_t, int64_t, int64_t, double*);            \
  template int64_t marg_empirical<I>(const I*, int64_t, int64_t, int64_t, const uint8_t*, bool, const double*, \
                                     bool, double*);
PREFCAL_MARG_I(int32_t)
PREFCAL_MARG_I(int64_t)
#undef PREFCAL_MARG_I

}  // namespace prefcal::cpu
