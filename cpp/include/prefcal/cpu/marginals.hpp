// OpenMP CPU kernels of the permutation marginals (SPEC §3). Per-context math: prefcal/marginals.hpp.
//
// scores (rows, n) float32/float64; mask null, (rows, n), or (n,) when `global_mask`. topk = 0: out is
// (rows, n, n), P(item i at position j); topk >= 1: out is (rows, n), P(item i in the top topk). Zero for
// unavailable items and for positions past the available ones. Every kernel returns the first bad row
// (a non-finite score, an invalid sample, ranking or weight) or kNoError. Rows are independent and every
// count is exact or summed in a fixed order: results do not depend on the number of threads.
#pragma once

#include <cstdint>

namespace prefcal::cpu {

template <class T>
int64_t marg_exact(const T* scores, int64_t rows, int64_t n, const uint8_t* mask, bool global_mask, int64_t topk,
                   double* out);

template <class T>
int64_t marg_integral(const T* scores, int64_t rows, int64_t n, const uint8_t* mask, bool global_mask,
                      int64_t topk, double* out);

// Frequencies over n_samples draws of pl_sample (the same samples as pl.sample with this seed).
template <class T>
int64_t marg_mc(const T* scores, int64_t rows, int64_t n, const uint8_t* mask, bool global_mask, int64_t topk,
                int64_t n_samples, uint64_t seed, double* out);

// samples (rows, size, m) orderings with -1 padding: out (rows, n, n) frequencies of item i at position j.
template <class I>
int64_t marg_from_samples(const I* samples, int64_t rows, int64_t size, int64_t m, int64_t n, double* out);

// rankings (rows, m): out (n, n) weighted counts of item i at position j (pairwise = false), or of i observed
// before j (pairwise = true; a listed item is before every unlisted available item). weights null or (rows,).
template <class I>
int64_t marg_empirical(const I* rankings, int64_t rows, int64_t m, int64_t n, const uint8_t* mask,
                       bool global_mask, const double* weights, bool pairwise, double* out);

}  // namespace prefcal::cpu
