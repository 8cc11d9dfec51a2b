// Permutation marginals of a Plackett-Luce model, per context, shared by the CPU and CUDA kernels (SPEC §3).
//
// A context: the scores of its available items sorted decreasing (ties: lower item first), n of them. Sorted,
// the largest worth of any set of remaining items is that of its first member, so every worth ratio used
// below, E[a][b] = exp(s_b - s_a) with a before b, is at most 1, and no sum of worths under- or overflows,
// whatever the score range.
//
// Exact (subset dynamic programme, n <= 20 through the public API): T(S) = P(the first |S| positions hold
// the set S); T(0) = 1 and, for i outside S, T(S + i) += T(S) w_i / W(rest), rest = all items minus S.
// W(rest) is kept as W'(R) = sum_{b in R} E[first(R)][b] >= 1, built by additions only. The pushed term is
// also P(item i at position |S|) restricted to S, so P(i at j) = sum over |S| = j of the terms into S + i.
// O(2^n n) operations; memory 2 * 2^n doubles (T, W') + n^2 per context.
//
// Integral (any n): item l fires at an exponential time of rate w_l; P(i at j) = int_0^inf w_i e^{-w_i t}
// [z^j] prod_{l != i} (a_l z + b_l) dt with b_l = e^{-w_l t}, a_l = 1 - b_l. In y = log t the integrand is
// entire and decays at both ends, so the trapezoidal rule converges exponentially in 1/h. Nodes: y = k h,
// h = min(1/4, 1/sqrt(n)) (the count of fired items sharpens as n grows), on the union of the items' windows
// [-s_i - 27, -s_i + 4] (scores minus the largest; outside its window item i's density is below 2e-12 in
// total). Measured error against the exact method and against h/2: <= 3e-11 for n <= 200 and score spreads
// 0 to 20. The product over l != i is the full product divided by (a_i z + b_i): from the low end when
// b_i >= a_i, else from the high end, so every division is by at least 1/2. O(Q n^2) per context with
// Q ~ (31 + spread) / h nodes.
#pragma once

#include <cmath>
#include <cstdint>

#include "prefcal/common.hpp"

namespace prefcal::marg {

constexpr double kWindowBelow = 27.0;
constexpr double kWindowAbove = 4.0;
constexpr int kMaxExact = 30;  // the DP's subset index is 32-bit here; the API allows n <= 20

PREFCAL_HD int ctz32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __ffs(static_cast<int>(x)) - 1;
#else
  return __builtin_ctz(x);
#endif
}

PREFCAL_HD int popcount32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

PREFCAL_HD int highbit32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return 31 - __clz(static_cast<int>(x));
#else
  return 31 - __builtin_clz(x);
#endif
}

// Gaps between consecutive sorted scores beyond kGapCap make the worth ratios across them underflow to 0 in
// double either way (e^-745 does), so the integral caps each gap at kGapCap: the same probabilities to within
// e^-kGapCap, and every node y = -rel within kGapCap * n, where a double resolves the node spacing (a gap of
// 1e16 made k + 1 == k in the node loop, which then never ended).
constexpr double kGapCap = 1000.0;

// In place, scores sorted decreasing to scores relative to the first: s_i - s_0 up to the first gap above
// kGapCap, and from there each next one kGapCap (or its own gap, when smaller) below the previous, the gaps
// taken from the scores themselves (a tier far below keeps its own differences, which s_i - s_0 would round
// away).
PREFCAL_HD void relative_scores(double* s, int64_t n) {
  if (n <= 0) return;
  const double top = s[0];
  double prev = top;  // the previous score as given
  bool capped = false;
  s[0] = 0.0;
  for (int64_t i = 1; i < n; ++i) {
    const double cur = s[i], gap = prev - cur;
    capped = capped || gap > kGapCap;
    s[i] = capped ? s[i - 1] - (gap > kGapCap ? kGapCap : gap) : cur - top;
    prev = cur;
  }
}

PREFCAL_HD double integral_spacing(int64_t n) {
  const double h = 1.0 / sqrt(static_cast<double>(n > 1 ? n : 1));
  return h < 0.25 ? h : 0.25;
}

// e[a * n + b] = exp(ss[b] - ss[a]) for a <= b (ss sorted decreasing; the rest is not used).
PREFCAL_HD void worth_ratios(const double* ss, int n, double* e) {
  for (int a = 0; a < n; ++a) {
    for (int b = a; b < n; ++b) e[a * n + b] = exp(ss[b] - ss[a]);
  }
}

// W'(R) for every nonempty R (w_rest[0] is unused).
PREFCAL_HD void rest_worths(const double* e, int n, double* w_rest) {
  const uint32_t count = uint32_t(1) << n;
  w_rest[0] = 0.0;
  for (uint32_t r = 1; r < count; ++r) {
    const int hb = highbit32(r);
    const uint32_t low = r ^ (uint32_t(1) << hb);
    w_rest[r] = low == 0 ? 1.0 : w_rest[low] + e[ctz32(low) * n + hb];
  }
}

// The exact DP of one context: p[i * layers + j] = P(sorted item i at position j) for j < layers (p zeroed
// by the caller). e: worth_ratios; w_rest: rest_worths; t: 2^n doubles of scratch.
PREFCAL_HD void exact_context(const double* e, const double* w_rest, int n, int layers, double* t, double* p) {
  const uint32_t count = uint32_t(1) << n, full = count - 1;
  for (uint32_t s = 0; s < count; ++s) t[s] = 0.0;
  t[0] = 1.0;
  for (uint32_t s = 0; s < count; ++s) {
    const int j = popcount32(s);
    if (j >= layers || t[s] == 0.0) continue;
    const uint32_t rest = full ^ s;
    const double f = t[s] / w_rest[rest];
    const double* ea = e + ctz32(rest) * n;
    for (uint32_t free = rest; free != 0; free &= free - 1) {
      const int i = ctz32(free);
      const double term = f * ea[i];
      p[i * layers + j] += term;
      t[s | (uint32_t(1) << i)] += term;
    }
  }
}

// The integral's nodes: calls node(y) for every y = k h in the union of the windows, in increasing order.
// ss: sorted decreasing, relative to the largest (ss[0] = 0), so window starts and ends are nondecreasing.
template <class Node>
PREFCAL_HD void for_nodes(const double* ss, int64_t n, double h, Node&& node) {
  double next = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    const double lo = ceil((-ss[i] - kWindowBelow) / h), hi = floor((-ss[i] + kWindowAbove) / h);
    for (double k = lo > next ? lo : next; k <= hi; k += 1.0) node(k * h);
    if (hi + 1.0 > next) next = hi + 1.0;
  }
}

PREFCAL_HD bool in_window(double s, double y) { return y >= -s - kWindowBelow && y <= -s + kWindowAbove; }

// The survival b = e^{-x} and fired a = 1 - b of a clock with x = w t (accurate for small x).
PREFCAL_HD void clock(double x, double& a, double& b) {
  b = exp(-x);
  a = b > 0.5 ? -expm1(-x) : 1.0 - b;
}

// poly (n + 1) = prod_l (a_l z + b_l), low degree first.
PREFCAL_HD void clock_product(const double* a, const double* b, int64_t n, double* poly) {
  poly[0] = 1.0;
  for (int64_t l = 0; l < n; ++l) {
    poly[l + 1] = poly[l] * a[l];
    for (int64_t k = l; k >= 1; --k) poly[k] = poly[k] * b[l] + poly[k - 1] * a[l];
    poly[0] *= b[l];
  }
}

// c (n) = poly (n + 1) / (a z + b), the product without one clock; every division is by max(a, b) >= 1/2.
PREFCAL_HD void deflate(const double* poly, int64_t n, double a, double b, double* c) {
  if (b >= a) {
    double prev = 0.0;
    for (int64_t j = 0; j < n; ++j) c[j] = prev = (poly[j] - a * prev) / b;
  } else {
    double next = 0.0;
    for (int64_t j = n - 1; j >= 0; --j) c[j] = next = (poly[j + 1] - b * next) / a;
  }
}

}  // namespace prefcal::marg
