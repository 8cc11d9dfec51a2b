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

}  // namespace prefcal::cuda
