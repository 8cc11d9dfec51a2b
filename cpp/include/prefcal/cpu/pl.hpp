// OpenMP CPU kernels of the Plackett-Luce model (SPEC §2, §7). Per-row math: prefcal/pl.hpp.
//
// Common arguments: scores (N, n) per row, or (n,) shared by every row when `global_scores`; rankings (N, m)
// with -1 padding; mask null, (N, n) per row, or (n,) when `global_mask` (1 = available). Every kernel returns
// the first offending row (kNoError when all are valid). Reductions are float64, summed per fixed chunk and
// merged in chunk order: results do not depend on the number of threads.
#pragma once

#include <cstdint>

namespace prefcal::cpu {

struct PLRows {
  int64_t N, m, n;
  bool global_scores;
  const uint8_t* mask;  // may be null
  bool global_mask;
};

// ll: (N,). grad: null, (N, n), or (n,) summed over rows when global_scores.
template <class T, class I>
int64_t pl_loglik(const T* scores, const I* rankings, const PLRows& shape, T* ll, T* grad);

// out: (3,) = f, f', f'' of the summed log-likelihood of beta * scores.
template <class T, class I>
int64_t pl_temperature(const T* scores, const I* rankings, const PLRows& shape, double beta, double* out);

// Gumbel top-k orderings (noise = false: the mode) of `rows` rows of scores (rows, n), out (rows, size, k),
// -1 past the available items. Only non-finite scores make a row bad. The noise of draw t of row b is keyed
// by (row b + row0, sample t + sample0): a block of a larger draw gives what the whole draw would.
template <class T>
int64_t pl_sample(const T* scores, int64_t rows, int64_t n, const uint8_t* mask, bool global_mask, int64_t size,
                  int64_t k, uint64_t seed, bool noise, int32_t* out, int64_t row0 = 0, int64_t sample0 = 0);

// Test hooks of the sampler's certified float32 keys: set_sample_f32 turns them on / off (returns the previous
// setting); gumbel_f32 is their float32 Gumbel noise of Philox words (a, b) (false: neither AVX-512 nor AVX2
// with FMA, nothing written), within gumbel_f32_error() of the float64 noise; sample_f32_fallbacks counts the
// groups of draws redone with float64 keys since the start, sample_f32_group the draws per group on this
// processor (16 with AVX-512, 8 with AVX2, 0 without the float32 keys).
bool set_sample_f32(bool on);
// Test hook: the log-likelihood's explicit AVX-512 or AVX2 lanes (float32 scores, m == n <= 16) on / off (returns
// the previous setting); off, the compiler-vectorised lanes take those rows, gradients included.
bool set_loglik_explicit(bool on);
// Test hooks of the explicit SIMD paths: simd_level is what this processor runs (2: AVX-512 (F and CD) and AVX2
// with FMA, 1: AVX2 with FMA, 0: neither); set_simd_cap(c) lets them use at most level c (returns the previous
// cap), so that a processor with AVX-512 also runs the AVX2 paths and the portable ones.
int simd_level();
int set_simd_cap(int cap);
// Test hook: the temperature pass's sixteen-row lanes on / off (returns the previous setting); off, the per-row
// code takes every row.
bool set_temperature_lanes(bool on);
// Test hook: the log-likelihood's sixteen-row lanes on / off (returns the previous setting); off, the per-row code
// takes every row.
bool set_loglik_lanes(bool on);
int64_t sample_f32_fallbacks();
int sample_f32_group();
bool gumbel_f32(const uint32_t* a, const uint32_t* b, int64_t count, float* out);
float gumbel_f32_error();

// P(i before j) = sigmoid(s_i - s_j): out (rows, n, n). Returns the first row with a non-finite score.
template <class T>
int64_t pl_pairwise(const T* scores, int64_t rows, int64_t n, T* out);

// Fit (global model over n items): weights null or (N,) float64.
// setup: wins (n,), edges (n, n) bytes; validates rankings and weights.
template <class I>
// Also the first MM pass, at equal worths (theta = 0): denom0 (n,) and *ll0, as pl_fit_pass would give them.
int64_t pl_fit_setup(const I* rankings, const PLRows& shape, const double* weights, double* wins, uint8_t* edges,
                     double* denom0, double* ll0);
// One pass at log-worths theta (n,): denom (n,), q (n, n) or null, returns the log-likelihood when want_ll.
template <class I>
double pl_fit_pass(const I* rankings, const PLRows& shape, const double* weights, const double* theta, double* denom,
                   double* q, bool want_ll);

}  // namespace prefcal::cpu
