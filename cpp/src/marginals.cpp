// OpenMP CPU kernels of the permutation marginals. Declarations: prefcal/cpu/marginals.hpp; per-context
// math: prefcal/marginals.hpp.
#include "prefcal/cpu/marginals.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
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

constexpr int kGroup = 8;             // contexts per step of the grouped exact DP
constexpr int64_t kGroupMax = 15;     // grouped up to here (wsub and h: 2 x 2 MiB at n = 15)
constexpr double kTiny = 1e-300;      // below any sum of available worths of a grouped context (>= e^-300)
constexpr double kGroupSpread = 300;  // largest score spread of a grouped context (exp_neg's accurate range)

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

// v grown to hold `count` doubles from a 64-byte boundary, which is returned: a 64-byte access on a cache
// line boundary does not straddle two lines.
double* aligned64(std::vector<double>& v, size_t count) {
  if (v.size() < count + 8) v.resize(count + 8);
  const uintptr_t a = reinterpret_cast<uintptr_t>(v.data());
  return v.data() + ((64 - a % 64) % 64) / sizeof(double);
}

int64_t binomial(int64_t n, int64_t k) {
  int64_t c = 1;
  for (int64_t q = 1; q <= k; ++q) c = c * (n - k + q) / q;
  return c;
}

// The nonempty subsets of n items ordered by size, then by value.
std::vector<uint32_t> sets_by_size(int64_t n) {
  std::vector<uint32_t> order;
  order.reserve(size_t(1) << n);
  for (int64_t k = 1; k <= n; ++k) {
    for (uint32_t s = 1; s < (uint32_t(1) << n); ++s) {
      if (marg::popcount32(s) == k) order.push_back(s);
    }
  }
  return order;
}

// Context b's result from p[i * layers + j] (sorted item i, position j < layers).
void write_context(double* row, int64_t n, const int64_t* items, int64_t na, const double* p, int64_t layers,
                   int64_t topk) {
  if (topk == 0) {
    if (na < n || layers < n) std::fill(row, row + n * n, 0.0);  // else every entry is written below
    for (int64_t i = 0; i < na; ++i) {
      for (int64_t j = 0; j < layers; ++j) row[items[i] * n + j] = p[i * layers + j];
    }
  } else {
    std::fill(row, row + n, 0.0);
    for (int64_t i = 0; i < na; ++i) {
      double sum = 0.0;
      for (int64_t j = 0; j < layers; ++j) sum += p[i * layers + j];
      row[items[i]] = sum;
    }
  }
}

// Eight doubles: one AVX-512 register (two AVX2 ones), the contexts of a step of the grouped exact DP.
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"  // v8 by value between inlined helpers: no ABI is crossed
using v8 = double __attribute__((vector_size(64)));
#else
struct v8 {
  double x[8];
  v8& operator+=(const v8& o) {
    for (int l = 0; l < 8; ++l) x[l] += o.x[l];
    return *this;
  }
  friend v8 operator+(v8 a, const v8& b) { return a += b; }
  friend v8 operator*(v8 a, const v8& b) {
    for (int l = 0; l < 8; ++l) a.x[l] *= b.x[l];
    return a;
  }
  friend v8 operator/(v8 a, const v8& b) {
    for (int l = 0; l < 8; ++l) a.x[l] /= b.x[l];
    return a;
  }
  friend v8 operator/(double a, const v8& b) {
    v8 r;
    for (int l = 0; l < 8; ++l) r.x[l] = a / b.x[l];
    return r;
  }
};
#endif

inline v8 load8(const double* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store8(double* p, const v8& v) { std::memcpy(p, &v, sizeof v); }

#if defined(__GNUC__)
inline v8 at_least(const v8& v, double x) {
  const v8 xs = v8{} + x;
  return v > xs ? v : xs;
}
#else
inline v8 at_least(v8 v, double x) {
  for (int l = 0; l < 8; ++l) v.x[l] = v.x[l] > x ? v.x[l] : x;
  return v;
}
#endif

// The exact DP of eight contexts of N items at once, [..][lane] layouts: u [N][8] the worths exp(s - max) of
// each context (0 for an unavailable item), wsub and h [2^N][8], p [N][layers][8]. The worths are the
// context's own (not sorted, not rescaled per set): the caller keeps the spread of the available scores within
// kGroupSpread, so every nonzero worth, sum of worths and h below is a normal number. A set holding an
// unavailable item has T = 0; so do all the sets past the available ones, whose rest has no worth: there the
// divisor is kTiny instead of 0, h stays finite, and 0 times it is 0.
//
// Pulled layer by layer (`order` lists the sets by size): T(S) = sum_{i in S} u_i h(S - i) with h(R) =
// T(R) / W(rest of R), and P(i at position |S| - 1) = u_i sum of h(S - i) over the S of the layer holding i.
// The loop over i runs over all N items with every u_i and sum in a register: for i outside S, S + i is in a
// later layer, whose h is still zero. That doubles the multiply-adds and leaves one load per term, no
// index arithmetic past an XOR and no store but h(S).
template <int N>
__attribute__((always_inline)) inline void exact_group_n(const double* __restrict u, int layers,
                                                         const uint32_t* __restrict order, double* __restrict wsub,
                                                         double* __restrict h, double* __restrict p) {
  constexpr uint32_t count = uint32_t(1) << N, full = count - 1;
  v8 uu[N];
  for (int i = 0; i < N; ++i) uu[i] = load8(u + i * 8);
  store8(wsub, v8{});
  for (int k = 0; k < N; ++k) {  // W(R) for R in [2^k, 2^(k+1)): W(R - k) + u_k; sums of positive worths
    const size_t base = (size_t(1) << k) * 8;
    for (size_t r = 0; r < base; r += 8) store8(wsub + base + r, load8(wsub + r) + uu[k]);
  }
  // the loop over layer j reads h of layer j + 1 as zero: clear the sets of sizes 2 to layers + 1
  const uint32_t* end_read = order;
  for (int k = 1; k <= layers + 1 && k <= N; ++k) end_read += binomial(N, k);
  for (const uint32_t* it = order + N; it < end_read; ++it) store8(h + size_t(*it) * 8, v8{});
  store8(h, 1.0 / at_least(load8(wsub + size_t(full) * 8), kTiny));
  const uint32_t* layer = order;
  for (int j = 0; j < layers; ++j) {
    v8 c[N];
    for (int i = 0; i < N; ++i) c[i] = v8{};
    const uint32_t* end = layer + binomial(N, j + 1);
    const bool keep = j + 1 < layers;  // h of this layer is pulled by the next one
    for (; layer != end; ++layer) {
      const uint32_t s = *layer;
      const size_t s8 = size_t(s) * 8;
      v8 acc = {};
#pragma GCC unroll 16
      for (int i = 0; i < N; ++i) {
        const v8 x = load8(h + (s8 ^ (size_t(8) << i)));
        acc += uu[i] * x;
        c[i] += x;
      }
      if (keep) store8(h + s8, acc / at_least(load8(wsub + size_t(full ^ s) * 8), kTiny));
    }
    for (int i = 0; i < N; ++i) store8(p + (size_t(i) * layers + j) * 8, uu[i] * c[i]);
  }
}

// Eight contexts: u [n][8] holds their scores minus each context's largest available one on entry (worths on
// exit), on [n][8] 1 for an available item and 0 for the others; the results of the first `lanes` go to out
// (rows of `width`, as in marg_exact).
PREFCAL_CLONES void exact_group(int n, double* __restrict u, const double* __restrict on, int layers, int64_t topk,
                                const uint32_t* __restrict order, double* __restrict wsub, double* __restrict h,
                                double* __restrict p, int lanes, double* __restrict out) {
  for (int v = 0; v < n * kGroup; ++v) u[v] = on[v] != 0.0 ? fastmath::exp_neg(u[v]) : 0.0;
  switch (n) {
#define PREFCAL_GROUP_CASE(N)                       \
  case N:                                          \
    exact_group_n<N>(u, layers, order, wsub, h, p); \
    break;
    PREFCAL_GROUP_CASE(1)
    PREFCAL_GROUP_CASE(2)
    PREFCAL_GROUP_CASE(3)
    PREFCAL_GROUP_CASE(4)
    PREFCAL_GROUP_CASE(5)
    PREFCAL_GROUP_CASE(6)
    PREFCAL_GROUP_CASE(7)
    PREFCAL_GROUP_CASE(8)
    PREFCAL_GROUP_CASE(9)
    PREFCAL_GROUP_CASE(10)
    PREFCAL_GROUP_CASE(11)
    PREFCAL_GROUP_CASE(12)
    PREFCAL_GROUP_CASE(13)
    PREFCAL_GROUP_CASE(14)
    PREFCAL_GROUP_CASE(15)
#undef PREFCAL_GROUP_CASE
    default:
      break;
  }
  if (topk == 0) {  // layers == n
    const int nn = n * n;
    for (int l = 0; l < lanes; ++l) {
      for (int q = 0; q < nn; ++q) out[l * nn + q] = p[q * kGroup + l];
    }
  } else {
    for (int l = 0; l < lanes; ++l) {
      for (int i = 0; i < n; ++i) {
        double sum = 0.0;
        for (int j = 0; j < layers; ++j) sum += p[(i * layers + j) * kGroup + l];
        out[l * n + i] = sum;
      }
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
  const int64_t chunk = (row_chunk(int64_t(1) << 18, (int64_t(1) << n) * n) + kGroup - 1) / kGroup * kGroup;
  const int64_t n_chunks = (rows + chunk - 1) / chunk;
  std::vector<int64_t> bad(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)), kNoError);
  const bool grouped = n >= 1 && n <= kGroupMax;
  const std::vector<uint32_t> order = grouped ? sets_by_size(n) : std::vector<uint32_t>();
  // Scratch per thread, allocated once (chunks are small: a fresh 2^n table per chunk costs page faults).
  struct Scratch {
    std::vector<int64_t> items;
    std::vector<double> ss, e, p, w, t, u, on, pg;
  };
  const int nt = threads_for(n_chunks);
  std::vector<Scratch> scratch(static_cast<size_t>(nt));
  for_chunks(rows, chunk, nt, [&](int tid, int64_t c, int64_t lo, int64_t hi) {
    const size_t un = static_cast<size_t>(std::max<int64_t>(n, 1));
    Scratch& sc = scratch[static_cast<size_t>(tid)];
    if (sc.items.empty()) {
      sc.items.resize(un);
      sc.ss.resize(un);
      sc.e.resize(un * un);
      sc.p.resize(un * un);
    }
    std::vector<int64_t>& items = sc.items;
    std::vector<double>&ss = sc.ss, &e = sc.e, &p = sc.p, &w = sc.w, &t = sc.t;
    // One context through the sorted, rescaled DP of marg::exact_context: any mask, any score spread.
    auto one = [&](int64_t b) {
      const int64_t na = sorted_context(s + b * n, n, mask_of(mask, global_mask, b, n), items.data(), ss.data());
      const int64_t layers = topk == 0 ? na : std::min(topk, na);
      if (na > 0) {
        marg::worth_ratios(ss.data(), static_cast<int>(na), e.data());
        w.resize(std::max(w.size(), size_t(1) << na));
        t.resize(std::max(t.size(), size_t(1) << na));
        marg::rest_worths(e.data(), static_cast<int>(na), w.data());
        std::fill(p.begin(), p.begin() + na * layers, 0.0);
        marg::exact_context(e.data(), w.data(), static_cast<int>(na), static_cast<int>(layers), t.data(), p.data());
      }
      write_context(out + b * width, n, items.data(), na, p.data(), layers, topk);
    };
    if (!grouped) {
      for (int64_t b = lo; b < hi; ++b) {
        if (!pl::finite_row(s + b * n, n)) {
          bad[static_cast<size_t>(c)] = b;
          return;
        }
        one(b);
      }
      return;
    }
    const int layers = static_cast<int>(topk == 0 ? n : std::min(topk, n));
    double* wsub = aligned64(w, (size_t(1) << n) * kGroup);
    double* h = aligned64(t, (size_t(1) << n) * kGroup);
    double* u = aligned64(sc.u, static_cast<size_t>(n) * kGroup);
    double* on = aligned64(sc.on, static_cast<size_t>(n) * kGroup);
    double* pg = aligned64(sc.pg, static_cast<size_t>(n * n) * kGroup);
    for (int64_t b = lo; b < hi; b += kGroup) {
      const int lanes = static_cast<int>(std::min<int64_t>(kGroup, hi - b));  // the last group is padded
      bool spread_ok = true;
      for (int l = 0; l < kGroup; ++l) {
        const int64_t r = b + std::min(l, lanes - 1);
        const T* row = s + r * n;
        const uint8_t* mk = mask_of(mask, global_mask, r, n);
        if (l < lanes && !pl::finite_row(row, n)) {
          bad[static_cast<size_t>(c)] = r;
          return;
        }
        double top = 0.0, bottom = 0.0;
        bool any = false;
        for (int64_t k = 0; k < n; ++k) {
          if (!pl::available(mk, k)) continue;
          const double v = static_cast<double>(row[k]);
          top = any ? std::max(top, v) : v;
          bottom = any ? std::min(bottom, v) : v;
          any = true;
        }
        spread_ok = spread_ok && top - bottom <= kGroupSpread;
        for (int64_t k = 0; k < n; ++k) {
          u[k * kGroup + l] = static_cast<double>(row[k]) - top;
          on[k * kGroup + l] = pl::available(mk, k) ? 1.0 : 0.0;
        }
      }
      if (spread_ok) {
        exact_group(static_cast<int>(n), u, on, layers, topk, order.data(), wsub, h, pg, lanes, out + b * width);
      } else {  // rare: scores hundreds apart
        for (int l = 0; l < lanes; ++l) one(b + l);
      }
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
        std::copy(ss.begin(), ss.begin() + na, rel.begin());
        marg::relative_scores(rel.data(), na);
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
    std::vector<uint8_t> seen(static_cast<size_t>(std::max<int64_t>(n, 1)), 0u);
    pl::BytesRef bits{seen.data()};
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
  Slabs<double> part(n_chunks, n * n);
  for_chunks(rows, chunk, threads_for(n_chunks), [&](int, int64_t c, int64_t lo, int64_t hi) {
    std::vector<uint8_t> seen(static_cast<size_t>(std::max<int64_t>(n, 1)), 0u);
    pl::BytesRef bits{seen.data()};
    double* acc = part.open(c);
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
      if (!pairwise) {
        const int64_t last = pl::implied_last(mk, n, L, bits);
        if (last >= 0) acc[last * n + L] += wt;
      }
      pl::clear_listed(rr, m, n, bits);
    }
  });
  const int64_t first = min_of(bad);
  part.add_into(out);
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
