// Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011),
// the counter-based generator behind every random function of prefcal (SPEC §1).
//
// A draw is a pure function of (key, counter): prefcal keys it by the 64-bit seed and counts
// (item, sample, row): so samples do not depend on the number of threads, the order of the work or the
// backend. The NumPy reference (prefcal/_reference.py) implements the same function, and the tests pin it
// with the known-answer vectors of the Random123 distribution.
//
// Uniform: one Philox block gives two items 52 bits each, u = (bits + 0.5) * 2^-52, in (0, 1) exclusive.
// Gumbel: -log(-log(u)), computed in float64 on every backend (the CPU's vectorised log and the device's log
// are within 2 ulp of the C library's, so the backends agree except on keys tied to the last bits).
#pragma once

#include <cmath>
#include <cstdint>

#include "prefcal/common.hpp"

namespace prefcal::philox {

struct U32x4 {
  uint32_t v[4];
};

PREFCAL_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Philox4x32 with 10 rounds: counter c, key (k0, k1).
PREFCAL_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#elif defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC unroll 10
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(kM0, c.v[0]), lo0 = kM0 * c.v[0];
    const uint32_t hi1 = mulhi32(kM1, c.v[2]), lo1 = kM1 * c.v[2];
    c = U32x4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

// One Philox block serves two items: counter (item / 2, sample, row low, row high), key (seed low, seed high);
// item 2j takes the first two output words, item 2j + 1 the last two.
PREFCAL_HD U32x4 block(uint64_t seed, uint64_t row, uint32_t sample, uint32_t pair) {
  return philox4x32_10(U32x4{{pair, sample, static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32)}},
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// 52 random bits from two words: (a << 20) | (b >> 12).
PREFCAL_HD uint64_t bits52(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 20) | (b >> 12); }

// The uniform (bits + 1/2) * 2^-52, in (0, 1) and exact in float64.
PREFCAL_HD double to_uniform(uint64_t bits) { return (static_cast<double>(bits) + 0.5) * 0x1.0p-52; }

// The uniform of item 2j + odd from the block of pair j.
PREFCAL_HD double uniform_of(const U32x4& x, bool odd) {
  return to_uniform(odd ? bits52(x.v[2], x.v[3]) : bits52(x.v[0], x.v[1]));
}

// The uniform of (seed, row, sample, item), in (0, 1).
PREFCAL_HD double uniform(uint64_t seed, uint64_t row, uint32_t sample, uint32_t item) {
  return uniform_of(block(seed, row, sample, item >> 1), (item & 1u) != 0u);
}

// Standard Gumbel noise of item 2j + odd from the block of pair j: -log(-log(u)).
PREFCAL_HD double gumbel_of(const U32x4& x, bool odd) { return -std::log(-std::log(uniform_of(x, odd))); }

// Standard Gumbel noise of (seed, row, sample, item).
PREFCAL_HD double gumbel(uint64_t seed, uint64_t row, uint32_t sample, uint32_t item) {
  return gumbel_of(block(seed, row, sample, item >> 1), (item & 1u) != 0u);
}

}  // namespace prefcal::philox
