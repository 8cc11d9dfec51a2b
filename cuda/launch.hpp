// Host-side entry points of the CUDA kernels: plain C++ declarations (no CUDA headers), so the pybind11
// module is compiled by the host compiler and nvcc never parses pybind11.
//
// Every launcher runs on the given stream of the current device (the caller sets the device with
// DeviceGuard), allocates its scratch from prefcal's own stream-ordered memory pool, copies the small
// result to host memory, synchronises the stream and returns the first bad row index (kNoError if none).
// CUDA failures throw std::runtime_error with the CUDA error text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "prefcal/dtypes.hpp"

namespace prefcal::cuda {

using Stream = void*;  // cudaStream_t

struct Binary {
  const void* conf;
  bind::DType conf_type;
  const void* correct;
  bind::DType correct_type;
  const double* weights;  // may be null
  int64_t n;
};

struct Multiclass {
  const void* probs;  // (n, n_classes) row-major
  bind::DType probs_type;
  const void* labels;  // (n,)
  bind::DType labels_type;
  int64_t n;
  int32_t n_classes;
};

// out: (3, n_bins) host; edges: (n_bins + 1) host.
int64_t bin_uniform(const Binary& in, int32_t n_bins, double* out, Stream stream);
int64_t bin_quantile(const Binary& in, int32_t n_bins, double* out, double* edges, Stream stream);
// kind: 0 confidence, 1 classwise, 2 top_label. out: (groups, 3, n_bins); edges: (groups, n_bins + 1).
int64_t multiclass_uniform(const Multiclass& in, int32_t n_bins, int kind, double* out, Stream stream);
int64_t multiclass_quantile(const Multiclass& in, int32_t n_bins, int kind, double* out, double* edges, Stream stream);
// out: sum of weights, weighted Brier sum, weighted log-loss sum.
int64_t score_sums(const Binary& in, double eps, double* out, Stream stream);

// Benchmark hook: median milliseconds (CUDA events) of the device work of bin_uniform alone, without the
// host copy and synchronisation, over `reps` launches after one warm-up.
double time_bin_uniform(const Binary& in, int32_t n_bins, int reps, Stream stream);
// Which kernel bin_uniform uses for these arguments ("private", "shared" or "global"), and its grid.
std::string describe_bin_uniform(const Binary& in, int32_t n_bins);

// ----------------------------------------------------------------------------------------- Plackett-Luce
// Per-row math in prefcal/pl.hpp; semantics as the CPU kernels of prefcal/cpu/pl.hpp. All pointers are device
// pointers unless marked host.

// Rows of a PL call: scores (N, n) row-major, or (n,) shared by every row when global_scores (unused by the
// fit); rankings (N, m) with -1 padding; mask null, (N, n), or (n,) when global_mask (nonzero = available).
struct PLArgs {
  const void* scores;
  bind::DType scores_type;  // float32 / float64
  bool global_scores;
  const void* rankings;
  bind::DType rankings_type;  // int32 / int64
  const uint8_t* mask;
  bool global_mask;
  int64_t N, m, n;
};

// ll: (N,) and grad: null, (N, n), or (n,) summed over rows when global_scores; both in the scores dtype.
int64_t pl_loglik(const PLArgs& args, void* ll, void* grad, Stream stream);
// Benchmark hook: median milliseconds (CUDA events) of the device work of pl_loglik alone, over `reps`
// launches after one warm-up.
double time_pl_loglik(const PLArgs& args, void* ll, void* grad, int reps, Stream stream);
// Test and benchmark hook: which kernels pl_loglik may take beyond the padded staging: 0 none (the default:
// the others are not yet measured against it), 1 the flat-staged kernel where it applies, 2 also the
// exact-width kernel where it applies; returns the previous level.
int set_loglik_kernel(int level);
// out (host): f, f', f'' of the summed log-likelihood of beta * scores.
int64_t pl_temperature(const PLArgs& args, double beta, double* out, Stream stream);
// Gumbel top-k orderings of scores (rows, n): out int32 (rows, size, k), -1 past the available items.
int64_t pl_sample(const void* scores, bind::DType scores_type, int64_t rows, int64_t n, const uint8_t* mask,
                  bool global_mask, int64_t size, int64_t k, uint64_t seed, bool noise, int32_t* out, Stream stream);
// out (rows, n, n) in the scores dtype: sigmoid(s_i - s_j). Returns the first row with a non-finite score.
int64_t pl_pairwise(const void* scores, bind::DType scores_type, int64_t rows, int64_t n, void* out, Stream stream);
// Fit setup: weights null or (N,) float64; wins (n,) and edges (n, n) are host arrays.
int64_t pl_fit_setup(const PLArgs& args, const double* weights, double* wins, uint8_t* edges, Stream stream);
// Fit pass at host log-worths theta (n,): host denom (n,), host q (n, n) or null; returns the log-likelihood
// when want_ll (else 0). Rows must be valid (checked by pl_fit_setup).
double pl_fit_pass(const PLArgs& args, const double* weights, const double* theta, double* denom, double* q,
                   bool want_ll, Stream stream);

// ----------------------------------------------------------------------------------------- Marginals
// Per-context math in prefcal/marginals.hpp; semantics as the CPU kernels of prefcal/cpu/marginals.hpp. All
// pointers are device pointers; the results stay on the device (only the bad-row flag is copied back).

// Marginals of PL(scores): scores (rows, n) float32/float64; mask null, (rows, n), or (n,) when global_mask.
// method 0 exact (subset DP, n <= 30), 1 integral (any n), 2 Monte Carlo (the frequencies of n_samples draws
// of pl_sample with this seed). out float64: (rows, n, n) P(item i at position j) when topk = 0, else
// (rows, n) P(item i in the top topk); zero for unavailable items and positions past the available ones.
// Returns the first row with a non-finite score.
int64_t marg_model(const void* scores, bind::DType scores_type, int64_t rows, int64_t n, const uint8_t* mask,
                   bool global_mask, int method, int64_t topk, int64_t n_samples, uint64_t seed, double* out,
                   Stream stream);
// samples (rows, size, m) int32/int64 orderings with -1 padding: out float64 (rows, n, n), the fraction of
// the size samples of row b with item i at position j. Returns the first row holding an invalid sample.
int64_t marg_from_samples(const void* samples, bind::DType type, int64_t rows, int64_t size, int64_t m, int64_t n,
                          double* out, Stream stream);
// rankings (rows, m) int32/int64 with -1 padding, mask as above, weights null or (rows,) float64: out float64
// (n, n), the weighted counts over all rows of item i at position j (pairwise = false) or of i observed before
// j (pairwise = true: a listed item is before every later listed item and every unlisted available item).
// Returns the first row with an invalid ranking or weight.
int64_t marg_empirical(const void* rankings, bind::DType type, int64_t rows, int64_t m, int64_t n, const uint8_t* mask,
                       bool global_mask, const double* weights, bool pairwise, double* out, Stream stream);

// ----------------------------------------------------------------------------------------- runtime

// Number of CUDA devices; on failure 0 and the reason in *error.
int device_count(std::string* error);

struct DeviceProps {
  std::string name;
  int major = 0, minor = 0, multiprocessors = 0;
  size_t total_memory = 0;
  int l2_bytes = 0;
  int driver_version = 0, runtime_version = 0;
};
DeviceProps device_props(int device);

// Sets the current device for its lifetime and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// Plain device memory owned by the Python DeviceArray object (host inputs staged for PREFCAL_BACKEND=cuda).
void* device_malloc(size_t bytes);
void device_free(void* ptr) noexcept;
void copy_host_to_device(void* dst, const void* src, size_t bytes);
void copy_device_to_host(void* dst, const void* src, size_t bytes);

}  // namespace prefcal::cuda
