// Binned calibration: per-element arithmetic shared by the CPU and CUDA kernels (SPEC §4, §12).
//
// Uniform bins (B bins over [0, 1]):   index(c) = min(floor(c * B), B - 1)
//   bin b is [b/B, (b+1)/B); the last bin is closed, so c = 1 lands in bin B - 1.
//   SPEC §12 pins the arithmetic: the product is taken in float64 from the input value (a float32 input
//   converted exactly). `uniform_bin` does exactly that. `uniform_bin_f32` is the GPU's fast path for
//   float32 inputs: it never leaves float32 and uses no conversion instruction, yet returns the same index
//   for every float32 c and every B <= 2^22 (the float32 product may round up across an integer; an exact
//   fused multiply-add of the residual detects that). The CPU tests compare the two near every edge, and
//   the GPU tests check the GPU's bins of edge values against exact rational arithmetic.
//
// Quantile bins (N rows, B bins): rows sorted by confidence (stable: ties by row index); bin b holds the
//   sort ranks [floor(b N / B), floor((b + 1) N / B)), so rank r is in bin ceil((r + 1) B / N) - 1.
//
// Precision policy: inputs float32 or float64; every per-bin accumulator that leaves a thread is float64
// (counts of unweighted rows are exact 64-bit integers until the final conversion).
//
// Validity: confidence in [0, 1] (NaN fails), correct exactly 0 or 1, weight finite and >= 0. Invalid
// values never cause an out-of-range bin index: the kernels clamp first and report the row afterwards.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "prefcal/common.hpp"

namespace prefcal {

// Largest n_bins accepted by every backend (keeps B exact in float32 and (r + 1) * B inside int64).
constexpr int64_t kMaxBins = int64_t(1) << 24;
// Largest n_bins for which the GPU bins float32 confidences with uniform_bin_f32 (above: uniform_bin).
constexpr int64_t kMaxBinsF32 = int64_t(1) << 22;

PREFCAL_HD int32_t uniform_bin(double c, int32_t n_bins) {
  double x = c * static_cast<double>(n_bins);
  const double top = static_cast<double>(n_bins - 1);
  x = x > 0.0 ? x : 0.0;  // NaN and negatives -> 0 (they are reported as invalid anyway)
  x = x < top ? x : top;
  return static_cast<int32_t>(x);  // truncation == floor for x >= 0
}

PREFCAL_HD int32_t uniform_bin_f32(float c, int32_t n_bins) {
  const float b = static_cast<float>(n_bins);
  const float x = fminf(fmaxf(c * b, 0.0f), b - 1.0f);  // NaN -> 0
#if defined(__CUDA_ARCH__)
  // floor(x) without a conversion instruction: adding 1.5 * 2^23 with round-toward-zero leaves floor(x) in
  // the low mantissa bits (valid for 0 <= x < 2^22, i.e. n_bins <= kMaxBinsF32).
  const float t = __fadd_rz(x, 12582912.0f);
  const float fl = t - 12582912.0f;
  int32_t i = __float_as_int(t) - 0x4B400000;
#else
  const float fl = floorf(x);
  int32_t i = static_cast<int32_t>(fl);
#endif
  // x may have been rounded up onto the integer fl although c * B < fl: the exact residual is negative then.
  i -= fmaf(c, b, -fl) < 0.0f ? 1 : 0;
  return i > 0 ? i : 0;  // only an invalid (negative) c can reach -1
}

// Rank r (0-based, in sort order) of n rows -> quantile bin.
PREFCAL_HD int64_t quantile_bin(int64_t r, int64_t n, int64_t n_bins) { return ((r + 1) * n_bins + n - 1) / n - 1; }

// First sort rank of quantile bin b.
PREFCAL_HD int64_t quantile_start(int64_t b, int64_t n, int64_t n_bins) { return (b * n) / n_bins; }

template <class T>
PREFCAL_HD bool valid_confidence(T c) {
  return (c >= T(0)) & (c <= T(1));
}

template <class T>
PREFCAL_HD bool valid_binary(T y) {
  return (y == T(0)) | (y == T(1));
}

PREFCAL_HD bool valid_weight(double w) { return (w >= 0.0) & (w <= DBL_MAX); }

// Top class of one row of probabilities (lowest index on ties) and whether the row is valid: every
// probability in [0, 1] and the label in [0, n_classes).
template <class TP, class TL>
PREFCAL_HD bool top_class(const TP* p, int32_t n_classes, TL label, TP& best, int32_t& arg) {
  bool ok = (label >= TL(0)) & (label < TL(n_classes));
  best = p[0];
  arg = 0;
  for (int32_t c = 0; c < n_classes; ++c) {
    const TP v = p[c];
    ok &= valid_confidence(v);
    if (v > best) {
      best = v;
      arg = c;
    }
  }
  return ok;
}

// 0/1 outcome of a validated `correct` value.
template <class T>
PREFCAL_HD uint32_t outcome(T y) {
  return y != T(0) ? 1u : 0u;
}

// Brier and log-loss terms of one (c, y) pair; log loss clips c to [eps, 1 - eps] (eps of the input dtype).
PREFCAL_HD double brier_term(double c, double y) { return (c - y) * (c - y); }

PREFCAL_HD double log_loss_term(double c, double y, double eps) {
  const double lo = eps, hi = 1.0 - eps;
  c = c < lo ? lo : (c > hi ? hi : c);
  return -(y * log(c) + (1.0 - y) * log1p(-c));
}

}  // namespace prefcal
