// Host-side entry points of the CUDA kernels of the calibration hierarchy (prefcal.ranking, SPEC §5): the
// twins of the CPU kernels of prefcal/cpu/ranking.hpp, with the same semantics and output layouts. Plain C++
// (no CUDA headers): the pybind11 module includes it. Kernels and design notes: cuda/ranking.cu.
//
// Every array argument is a device pointer of the current device unless marked host; every launcher runs on
// `stream`, takes its scratch from prefcal's stream-ordered pool and, where it returns host results, copies
// them and synchronises the stream. Index arguments (classes, slot, groups, labels) must be in range: the
// launchers do not read them on the host (the Python adapter checks them). CUDA failures throw
// std::runtime_error.
//
// Agreement with the CPU: counts (fields 0 and 2 of every table) and the skipped count are equal bit for bit
// whenever the device's exp / log1p give the same worths as the host's (they differ by at most an ulp or two,
// which moves an event to another bin only when its probability lies within a few ulp of a bin edge); the
// sums of probabilities agree to float64 rounding (they are added in another order). The private-table paths
// give the same bits on every run; the global-atomic fallback (very many bins) reproduces counts exactly and
// sums up to rounding.
#pragma once

#include <cstdint>
#include <string>

#include "launch.hpp"

namespace prefcal::cuda {

// keys (rows, n) float64 written on the device from rankings (rows, m) int64 with -1 padding; mask null,
// (rows, n) or (n,) when global_mask. Returns the first invalid row or kNoError (keys of invalid rows are
// partly written, as on the CPU).
int64_t rank_keys(const int64_t* rankings, int64_t rows, int64_t m, int64_t n, const uint8_t* mask, bool global_mask,
                  double* keys, Stream stream);

// seen (host, C(n, k) * k! bytes): 1 where some row decides the subset's order and it is that order.
void rank_seen_subsets(const double* keys, int64_t rows, int64_t n, int64_t k, uint8_t* seen, Stream stream);

// tables (host, (n_classes, 3, n_bins)) of the classes (n_classes, k) int32, sub-k (top = false) or top-k.
// scores (score_rows, n) with score_rows 1 or rows; edges null (uniform bins) or (n_bins + 1,); keep null or
// (rows,) bytes.
void rank_classwise(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                    const int32_t* classes, int64_t n_classes, int64_t k, bool top, int32_t n_bins,
                    const double* edges, const uint8_t* keep, double* tables, Stream stream);

// The same tables for a sub-k level through a slot table (C(n, k) * k!,) int32 (see the CPU header).
void rank_classwise_subsets(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                            int64_t k, const int32_t* slot, int64_t n_slots, int64_t n_classes, int32_t n_bins,
                            const double* edges, const uint8_t* keep, double* tables, Stream stream);

// table (host, (3, n_bins)); level 0 sub-k over groups (n_groups, k) int32, 1 ordered top-k, 2 top-k set
// (k <= 20). Returns the number of skipped (undecided) events.
int64_t rank_top_label(const double* scores, int64_t score_rows, const double* keys, int64_t rows, int64_t n,
                       int level, const int32_t* groups, int64_t n_groups, int64_t k, int32_t n_bins, double* table,
                       Stream stream);

// Dirichlet-kernel canonical calibration error (see the CPU header); probs (rows, n_classes) float64, labels
// (rows,) int64 (< n_classes; negative: unlabelled). The labels are copied to the host once to order the
// centres by class.
double rank_canonical(const double* probs, const int64_t* labels, int64_t rows, int64_t n_classes, double h, double p,
                      Stream stream);

// Benchmark hook: median milliseconds (CUDA events) of the device work of rank_classwise_subsets (row
// statistics, binning kernel, reduction; not the host copy) over `reps` runs after one warm-up.
double time_rank_classwise_subsets(const double* scores, int64_t score_rows, const double* keys, int64_t rows,
                                   int64_t n, int64_t k, const int32_t* slot, int64_t n_slots, int64_t n_classes,
                                   int32_t n_bins, const double* edges, const uint8_t* keep, int reps, Stream stream);

// The launch plan of rank_classwise_subsets / rank_classwise for these shapes (path, block, grid, shared
// memory), for tests and benchmarks.
std::string describe_rank_classwise(int64_t rows, int64_t n, int64_t k, int64_t n_classes, bool subsets, bool top,
                                    int32_t n_bins, bool log_edges, bool global_scores);

}  // namespace prefcal::cuda
