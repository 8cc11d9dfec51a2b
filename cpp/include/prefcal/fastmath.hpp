// Inline exp and log for the CPU kernels' hot loops: no library call, branch-free, so GCC and Clang can
// vectorise the loops around them. Accuracy (checked in ulp against NumPy over their domains by
// tests/test_fastmath.py through the test hook prefcal._cpu.fastmath, and through the kernels in tests/test_pl.py):
//   exp_neg(x), x in [-300, 0] (double) / [-80, 0] (float): within 2 ulp (degree-13 / degree-7 polynomial
//     after the reduction x = k ln2 + r, |r| <= ln2 / 2); arguments are clamped to [-700, 0] / [-87, 0] (NaN to
//     the lower end) so that lanes the callers discard stay well defined;
//   log_pos(x), x normal and positive (double): within 1 ulp (x = 2^e m, m in [sqrt(1/2), sqrt(2)),
//     log m = 2 atanh((m - 1) / (m + 1)) by a near-minimax polynomial).
// The CUDA kernels use the device's own exp / log; both are within a few ulp of the float64 reference.
#pragma once

#include <cstdint>
#include <cstring>

namespace prefcal::fastmath {

inline double exp_neg(double x) {
  x = x >= -700.0 ? x : -700.0;  // also maps NaN to -700: garbage lanes stay defined behaviour
  x = x <= 0.0 ? x : 0.0;
  const double k = (x * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;  // round to nearest
  const double r = (x - k * 0.6931471803691238) - k * 1.9082149292705877e-10;
  double p = 1.6059043836821613e-10;  // 1/13!
  p = p * r + 2.08767569878681e-09;
  p = p * r + 2.505210838544172e-08;
  p = p * r + 2.755731922398589e-07;
  p = p * r + 2.7557319223985893e-06;
  p = p * r + 2.48015873015873e-05;
  p = p * r + 0.0001984126984126984;
  p = p * r + 0.001388888888888889;
  p = p * r + 0.008333333333333333;
  p = p * r + 0.041666666666666664;
  p = p * r + 0.16666666666666666;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // 2^k from the integer k in [-700, 0] without a float-to-int64 conversion (none in AVX2 / AVX-512F, which
  // would keep the loop scalar): k + 1023 + 1.5 * 2^52 holds k + 1023 in its low mantissa bits.
  const double biased = k + (6755399441055744.0 + 1023.0);
  uint64_t bits;
  std::memcpy(&bits, &biased, sizeof bits);
  bits <<= 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float exp_neg(float x) {
  x = x >= -87.0f ? x : -87.0f;  // also maps NaN to -87
  x = x <= 0.0f ? x : 0.0f;
  const float k = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - k * 0.693145752f) - k * 1.42860677e-06f;
  float p = 1.98412698e-4f;  // 1/7!
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline double log_pos(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  // x = 2^e m with m in [sqrt(1/2), sqrt(2)), in integer arithmetic only, so that the callers' loops vectorise
  // for AVX2 too: AVX2 has no conversion from 64-bit integers to double, and no select feeds a multiply (which
  // GCC if-converts only without trapping math or with AVX-512's masks). m in [1, 2) first; where
  // m > sqrt(2) (compared as bit patterns: both positive), m / 2 and e + 1.
  const uint64_t m1 = (bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull;
  const uint64_t big = static_cast<uint64_t>(static_cast<int64_t>(m1) > int64_t{0x3FF6A09E667F3BCD});  // sqrt(2)
  const uint64_t mbits = m1 - (big << 52);
  // The exponent as a double: the field (plus big) in the low mantissa bits of 2^52, then 2^52 + 1023 off.
  const uint64_t ebits = ((bits >> 52) + big) | 0x4330000000000000ull;
  double m, e;
  std::memcpy(&m, &mbits, sizeof m);
  std::memcpy(&e, &ebits, sizeof e);
  e -= 4503599627371519.0;
  // log m = 2 atanh(t), t = f / (2 + f), f = m - 1 (exact), z = t^2 <= 0.0294; 2 atanh(t) = 2t + t R(z) with
  // R(z) = 2 z Q(z), Q a degree-6 near-minimax (Chebyshev) fit of (atanh(t) / t - 1) / z (absolute error
  // 1.6e-16). Summed as f - (f^2/2 - t (f^2/2 + R)), which equals 2t + t R and keeps the rounding of the
  // division in a small correction term.
  const double f = m - 1.0, t = f / (2.0 + f), z = t * t, hfsq = 0.5 * f * f;
  double q = 0.14616449685043406;
  q = q * z + 0.15331721600556042;
  q = q * z + 0.18182889125261723;
  q = q * z + 0.2222221113479508;
  q = q * z + 0.28571428625975487;
  q = q * z + 0.39999999999899505;
  q = q * z + 0.666666666666667;
  const double r = z * q;
  // e ln 2 with ln 2 split so that e * hi is exact (hi has 21 significant bits).
  return e * 0.6931467056274414 + (f - (hfsq - (t * (hfsq + r) + e * 4.7493250390316726e-07)));
}

}  // namespace prefcal::fastmath
