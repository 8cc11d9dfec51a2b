// CPU kernels of the calibration hierarchy (prefcal.ranking, SPEC §5) for Plackett-Luce models.
//
// Observations arrive as rank keys (rows, n) float64: smaller is better, equal keys tie, NaN = unknown place,
// +inf = not in the row's choice set. Scores are (score_rows, n) float64 with -inf for unavailable items;
// score_rows is 1 (one shared model) or rows. Every event probability is computed inside the binning loop.
#pragma once

#include <cstdint>

namespace prefcal::cpu {

// Per-class binary tables (C, 3, B) = (count, sum p, sum outcome) of the classes (C, k) of a sub-k (top=false)
// or top-k (top=true) level over the kept rows (keep may be null) and decided events. edges: B + 1 bin edges
// (log spacing) or null for uniform bins.
void rank_classwise(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                    const int32_t* classes, int64_t n_classes, int64_t k, bool top, int32_t n_bins,
                    const double* edges, const uint8_t* keep, double* tables);

// The same tables for a sub-k level through a slot table: slot[subset * k! + rank] (subsets in combinations
// order, orders of a subset in lexicographic order of the positions within it) is the class index or -1.
void rank_classwise_subsets(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                            int64_t k, const int32_t* slot, int64_t n_slots, int64_t n_classes, int32_t n_bins,
                            const double* edges, const uint8_t* keep, double* tables);

// The same tables for an explicit model: probs (rows, R) of R orderings; class c is satisfied by the orderings
// idx[indptr[c] .. indptr[c + 1]) (CSC); its probability is the sum of theirs.
void rank_classwise_table(const double* probs, int64_t rows, int64_t n_orders, const int64_t* indptr,
                          const int32_t* idx, const double* keys, int64_t n, const int32_t* classes, int64_t n_classes,
                          int64_t k, bool top, int32_t n_bins, const double* edges, const uint8_t* keep,
                          double* tables);

// The same with the classes sorted by group: sub-k, class c is order cls_rank[c] (lexicographic in the positions)
// of the subset groups[cls_group[c]] (sorted items); top-k, row_class[b] is the class of row b's observed prefix
// (-1: none of the classes, -2: undecided).
void rank_classwise_grouped(const double* probs, int64_t rows, int64_t n_orders, const int64_t* indptr,
                            const int32_t* idx, const double* keys, int64_t n, int64_t k, bool top,
                            const int32_t* cls_group, const int32_t* cls_rank, int64_t n_classes, const int32_t* groups,
                            const int32_t* row_class, int32_t n_bins, const double* edges, const uint8_t* keep,
                            double* tables);

// Adds to tables (C, 3, B) the decided events of rows with given class probabilities pmat (rows, C).
void rank_classwise_given(const double* pmat, const double* keys, int64_t rows, int64_t n, const int32_t* classes,
                          int64_t n_classes, int64_t k, bool top, int32_t n_bins, const double* edges,
                          const uint8_t* keep, double* tables);

// Rank keys of observed orderings (rows, m) (-1 padding) with an optional mask ((n,) when global, else
// (rows, n)): listed items get their position, unlisted available items the number listed, unavailable +inf.
// Returns the first invalid row (a value after padding, out of range, unavailable or repeated) or kNoError.
int64_t rank_keys(const int64_t* rankings, int64_t rows, int64_t m, int64_t n, const uint8_t* mask, bool global,
                  double* keys);

// seen[subset * k! + rank] = 1 when some row decides subset's order and it is that order (slot layout above).
void rank_seen_subsets(const double* keys, int64_t rows, int64_t n, int64_t k, uint8_t* seen);

// One table (3, B) of (mode probability, observation == mode) events. level 0: sub-k, one event per (row,
// subset) over groups (M, k); level 1: the ordered top-k prefix; level 2: the top-k set (k <= 20). Returns the
// number of skipped (undecided) events.
int64_t rank_top_label(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                       int level, const int32_t* groups, int64_t n_groups, int64_t k, int32_t n_bins,
                       double* table);

// One table (3, B) of the binary marginal events of every (row, item): k == 0: "item i is at position j" with
// probability P[b, i, j], for every j; k >= 1: "item i is in the top k" with probability sum_{j<k} P[b, i, j].
// P is (p_rows, n, n) with p_rows 1 (one model for every row) or rows. An event counts when the keys decide it
// (an item's place lies in [lo, hi]: [less, less_or_tied - 1] when its key is finite and no key of the row is
// NaN, else [0, n - 1]); items with key +inf (unavailable) have no events. Returns the undecided events.
int64_t rank_marginal_hist(const double* P, int64_t p_rows, const double* keys, int64_t rows, int64_t n, int64_t k,
                           int32_t n_bins, double* table);

// codes[b]: row b's decided ordered top-k prefix as sum_j item_j n^(k-1-j) (the caller keeps n^k < 2^62), or -1
// when the row does not decide it (rank::observed_prefix).
void rank_observed_tops(const double* keys, int64_t rows, int64_t n, int64_t k, int64_t* codes);

// Event probabilities of an empirical model: out (rows, C) is the fraction of the `size` sampled orderings of
// each row (samples (rows, size, n), permutations of 0..n-1) that satisfy each class's event. mode 0: the
// class's k items in the class's order (sub-k); 1: the ordering's first k items are the class (top-k);
// 2: they are the class's items in any order (top-k set). Returns the first row holding a sample that is not
// a permutation, or kNoError.
int64_t rank_sample_probs(const int64_t* samples, int64_t rows, int64_t size, int64_t n, const int32_t* classes,
                          int64_t n_classes, int64_t k, int mode, double* out);

// Dirichlet-kernel canonical calibration error with leave-one-out over the rows with label >= 0: mean over
// those rows of || sum_i k(f_j; a_i) y_i / (sum_i k(f_j; a_i) + 1e-8) - f_j ||_p, a_i = f_i / h + 1,
// log f clamped at log(1e-8). NaN when no row has a label.
double rank_canonical(const double* probs, const int64_t* labels, int64_t rows, int64_t n_classes, double h,
                      double p);

}  // namespace prefcal::cpu
