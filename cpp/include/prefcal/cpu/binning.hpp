// OpenMP CPU kernels of binned calibration (SPEC §4). Formulas, bin rules and precision: prefcal/binning.hpp.
//
// Every kernel returns the first offending row index (kNoError when all rows are valid); Python words the
// message. Bin outputs are float64 arrays laid out (groups, 3, n_bins): count, sum_confidence, sum_correct
// (weighted when weights are given). Results do not depend on the number of threads: the data is cut into
// fixed chunks whose partial bins are added in chunk order.
#pragma once

#include <cstdint>

namespace prefcal::cpu {

void set_num_threads(int n);  // 0: OpenMP's default
int num_threads();
bool have_openmp();

// Binary confidences, uniform bins. weights may be null. out: (3, n_bins).
template <class TC, class TY>
int64_t bin_uniform(const TC* conf, const TY* correct, const double* weights, int64_t n, int32_t n_bins, double* out);

// Binary confidences, quantile bins (stable sort order). out: (3, n_bins); edges: (n_bins + 1).
template <class TC, class TY>
int64_t bin_quantile(const TC* conf, const TY* correct, const double* weights, int64_t n, int32_t n_bins, double* out,
                     double* edges);

// Multiclass probabilities (n, n_classes) row-major, integer labels (n,).
enum class MulticlassKind : int { kConfidence = 0, kClasswise = 1, kTopLabel = 2 };

// Uniform bins. out: (groups, 3, n_bins) with groups = 1 (confidence) or n_classes (classwise, top_label).
// Returns the first offending row.
template <class TP, class TL>
int64_t multiclass_uniform(const TP* probs, const TL* labels, int64_t n, int32_t n_classes, int32_t n_bins,
                           MulticlassKind kind, double* out);

// Quantile bins, each group (class) binned on its own rows. out: (groups, 3, n_bins); edges: (groups, n_bins + 1).
template <class TP, class TL>
int64_t multiclass_quantile(const TP* probs, const TL* labels, int64_t n, int32_t n_classes, int32_t n_bins,
                            MulticlassKind kind, double* out, double* edges);

// out[0] = sum of weights, out[1] = weighted sum of (c - y)^2, out[2] = weighted sum of log-loss terms
// (confidence clipped to [eps, 1 - eps]).
template <class TC, class TY>
int64_t score_sums(const TC* conf, const TY* correct, const double* weights, int64_t n, double eps, double* out);

}  // namespace prefcal::cpu
