// prefcal._cuda: device pointers + stream in, CUDA kernels (compiled separately by nvcc) with the GIL released.
//
// Compiled by the host compiler; it sees only cuda/launch.hpp, never a CUDA header. Python passes each
// array as (pointer, NumPy typestr) plus the CUDA stream and device of the call (prefcal/_arrays.py gets
// them from __cuda_array_interface__ for CuPy, from DLPack for torch tensors).
#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "launch.hpp"
#include "prefcal/binning.hpp"
#include "prefcal/dtypes.hpp"
#include "prefcal/marginals.hpp"
#include "ranking.hpp"

namespace py = pybind11;
namespace pc = prefcal::cuda;
using prefcal::bind::DType;

namespace {

struct View {
  const void* ptr;
  DType type;
};

View view(const py::tuple& t) {
  if (t.size() != 2) throw std::invalid_argument("internal error: expected (pointer, typestr)");
  return {reinterpret_cast<const void*>(t[0].cast<uintptr_t>()), prefcal::bind::parse_typestr(t[1].cast<std::string>())};
}

pc::Stream stream_of(uintptr_t s) { return reinterpret_cast<pc::Stream>(s); }

pc::Binary binary(const py::tuple& conf, const py::tuple& correct, const py::object& weights, int64_t n) {
  const View c = view(conf), y = view(correct);
  const double* w = weights.is_none() ? nullptr : reinterpret_cast<const double*>(weights.cast<uintptr_t>());
  return {c.ptr, c.type, y.ptr, y.type, w, n};
}

void check_bins(int32_t n_bins) {
  if (n_bins < 1 || n_bins > prefcal::kMaxBins) throw std::invalid_argument("internal error: n_bins");
}

py::tuple binary_bins(const py::tuple& conf, const py::tuple& correct, const py::object& weights, int64_t n,
                      int32_t n_bins, uintptr_t stream, int device, bool quantile) {
  check_bins(n_bins);
  const pc::Binary in = binary(conf, correct, weights, n);
  py::array_t<double> out({int64_t(3), int64_t(n_bins)});
  py::array_t<double> edges(int64_t(n_bins) + 1);
  double* o = out.mutable_data();
  double* e = edges.mutable_data();
  int64_t bad = 0;
  {
    py::gil_scoped_release nogil;
    pc::DeviceGuard guard(device);
    bad = quantile ? pc::bin_quantile(in, n_bins, o, e, stream_of(stream))
                   : pc::bin_uniform(in, n_bins, o, stream_of(stream));
  }
  if (quantile) return py::make_tuple(out, edges, bad);
  return py::make_tuple(out, bad);
}

py::tuple multiclass(const py::tuple& probs, const py::tuple& labels, int64_t n, int32_t n_classes, int32_t n_bins,
                     int kind, uintptr_t stream, int device, bool quantile) {
  check_bins(n_bins);
  if (n_classes < 1 || kind < 0 || kind > 2) throw std::invalid_argument("internal error: multiclass arguments");
  const View p = view(probs), l = view(labels);
  const pc::Multiclass in{p.ptr, p.type, l.ptr, l.type, n, n_classes};
  const int64_t groups = kind == 0 ? 1 : n_classes;
  py::array_t<double> out({groups, int64_t(3), int64_t(n_bins)});
  py::array_t<double> edges({groups, int64_t(n_bins) + 1});
  double* o = out.mutable_data();
  double* e = edges.mutable_data();
  int64_t bad = 0;
  {
    py::gil_scoped_release nogil;
    pc::DeviceGuard guard(device);
    bad = quantile ? pc::multiclass_quantile(in, n_bins, kind, o, e, stream_of(stream))
                   : pc::multiclass_uniform(in, n_bins, kind, o, stream_of(stream));
  }
  if (quantile) return py::make_tuple(out, edges, bad);
  return py::make_tuple(out, py::none(), bad);
}

py::tuple score_sums(const py::tuple& conf, const py::tuple& correct, const py::object& weights, int64_t n, double eps,
                     uintptr_t stream, int device) {
  const pc::Binary in = binary(conf, correct, weights, n);
  py::array_t<double> out(3);
  double* o = out.mutable_data();
  int64_t bad = 0;
  {
    py::gil_scoped_release nogil;
    pc::DeviceGuard guard(device);
    bad = pc::score_sums(in, eps, o, stream_of(stream));
  }
  return py::make_tuple(out, bad);
}

// ------------------------------------------------------------------ Plackett-Luce
const uint8_t* mask_of(const py::object& mask) {
  if (mask.is_none()) return nullptr;
  const View v = view(mask.cast<py::tuple>());
  if (v.type != DType::kBool && v.type != DType::kU8) throw std::invalid_argument("internal error: mask dtype");
  return static_cast<const uint8_t*>(v.ptr);
}

template <class P>
P* ptr_or_null(const py::object& o) {
  return o.is_none() ? nullptr : reinterpret_cast<P*>(o.cast<uintptr_t>());
}

void check_pl_shape(int64_t N, int64_t m, int64_t n) {
  if (N < 0 || m < 0 || n < 0) throw std::invalid_argument("internal error: negative PL shape");
  if (m > n && n > 0) throw std::invalid_argument("internal error: rankings wider than n");
}

pc::PLArgs pl_args(const py::tuple& scores, bool global_scores, const py::tuple& rankings, const py::object& mask,
                   bool global_mask, int64_t N, int64_t m, int64_t n) {
  check_pl_shape(N, m, n);
  const View s = view(scores), r = view(rankings);
  return {s.ptr, s.type, global_scores, r.ptr, r.type, mask_of(mask), global_mask, N, m, n};
}

pc::PLArgs fit_args(const py::tuple& rankings, const py::object& mask, bool global_mask, int64_t N, int64_t m,
                    int64_t n) {
  check_pl_shape(N, m, n);
  const View r = view(rankings);
  return {nullptr, DType::kF64, true, r.ptr, r.type, mask_of(mask), global_mask, N, m, n};
}

int64_t pl_loglik(const py::tuple& scores, bool global_scores, const py::tuple& rankings, const py::object& mask,
                  bool global_mask, int64_t N, int64_t m, int64_t n, uintptr_t ll, const py::object& grad,
                  uintptr_t stream, int device) {
  const pc::PLArgs a = pl_args(scores, global_scores, rankings, mask, global_mask, N, m, n);
  void* g = ptr_or_null<void>(grad);
  py::gil_scoped_release nogil;
  pc::DeviceGuard guard(device);
  return pc::pl_loglik(a, reinterpret_cast<void*>(ll), g, stream_of(stream));
}

double time_pl_loglik(const py::tuple& scores, bool global_scores, const py::tuple& rankings, const py::object& mask,
                      bool global_mask, int64_t N, int64_t m, int64_t n, uintptr_t ll, const py::object& grad,
                      int reps, uintptr_t stream, int device) {
  const pc::PLArgs a = pl_args(scores, global_scores, rankings, mask, global_mask, N, m, n);
  void* g = ptr_or_null<void>(grad);
  py::gil_scoped_release nogil;
  pc::DeviceGuard guard(device);
  return pc::time_pl_loglik(a, reinterpret_cast<void*>(ll), g, reps, stream_of(stream));
}

py::tuple pl_temperature(const py::tuple& scores, bool global_scores, const py::tuple& rankings,
                         const py::object& mask, bool global_mask, int64_t N, int64_t m, int64_t n, double beta,
                         uintptr_t stream, int device) {
  const pc::PLArgs a = pl_args(scores, global_scores, rankings, mask, global_mask, N, m, n);
  py::array_t<double> out(3);
  double* o = out.mutable_data();
  int64_t bad = 0;
  {
    py::gil_scoped_release nogil;
    pc::DeviceGuard guard(device);
    bad = pc::pl_temperature(a, beta, o, stream_of(stream));
  }
  return py::make_tuple(out, bad);
}

int64_t pl_sample(const py::tuple& scores, int64_t rows, int64_t n, const py::object& mask, bool global_mask,
                  int64_t size, int64_t k, uint64_t seed, bool noise, uintptr_t out, uintptr_t stream, int device) {
  if (rows < 0 || n < 0 || size < 0 || k < 0) throw std::invalid_argument("internal error: pl_sample shape");
  const View s = view(scores);
  const uint8_t* mk = mask_of(mask);
  py::gil_scoped_release nogil;
  pc::DeviceGuard guard(device);
  return pc::pl_sample(s.ptr, s.type, rows, n, mk, global_mask, size, k, seed, noise, reinterpret_cast<int32_t*>(out),
                       stream_of(stream));
}

int64_t pl_pairwise(const py::tuple& scores, int64_t rows, int64_t n, uintptr_t out, uintptr_t stream, int device) {
  if (rows < 0 || n < 0) throw std::invalid_argument("internal error: pl_pairwise shape");
  const View s = view(scores);
  py::gil_scoped_release nogil;
  pc::DeviceGuard guard(device);
  return pc::pl_pairwise(s.ptr, s.type, rows, n, reinterpret_cast<void*>(out), stream_of(stream));
}

py::tuple pl_fit_setup(const py::tuple& rankings, const py::object& mask, bool global_mask, const py::object& weights,
                       int64_t N, int64_t m, int64_t n, uintptr_t stream, int device) {
  const pc::PLArgs a = fit_args(rankings, mask, global_mask, N, m, n);
  const double* w = ptr_or_null<const double>(weights);
  py::array_t<double> wins(n);
  py::array_t<uint8_t> edges({n, n});
  double* pw = wins.mutable_data();
  uint8_t* pe = edges.mutable_data();
  int64_t bad = 0;
  {
    py::gil_scoped_release nogil;
    pc::DeviceGuard guard(device);
    bad = pc::pl_fit_setup(a, w, pw, pe, stream_of(stream));
  }
  return py::make_tuple(wins, edges, bad);
}

py::tuple pl_fit_pass(const py::tuple& rankings, const py::object& mask, bool global_mask, const py::object& weights,
                      int64_t N, int64_t m, int64_t n, const py::array_t<double, py::array::c_style>& theta,
                      bool want_q, bool want_ll, uintptr_t stream, int device) {
  const pc::PLArgs a = fit_args(rankings, mask, global_mask, N, m, n);
  if (theta.ndim() != 1 || theta.shape(0) != n) throw std::invalid_argument("internal error: theta shape");
  const double* w = ptr_or_null<const double>(weights);
  py::array_t<double> denom(n);
  py::object q = py::none();
  double* pq = nullptr;
  if (want_q) {
    py::array_t<double> qa({n, n});
    pq = qa.mutable_data();
    q = qa;
  }
  double* pd = denom.mutable_data();
  const double* pt = theta.data();
  double ll = 0.0;
  {
    py::gil_scoped_release nogil;
    pc::DeviceGuard guard(device);
    ll = pc::pl_fit_pass(a, w, pt, pd, pq, want_ll, stream_of(stream));
  }
  return py::make_tuple(denom, q, ll);
}

// ------------------------------------------------------------------ Marginals
int64_t marg_model(const py::tuple& scores, int64_t n_rows, int64_t n, const py::object& mask, bool global_mask,
                   int method, int64_t topk, int64_t n_samples, uint64_t seed, uintptr_t out, uintptr_t stream,
                   int device) {
  if (n_rows < 0 || n < 0 || topk < 0 || n_samples < 0 || method < 0 || method > 2) {
    throw std::invalid_argument("internal error: marg_model arguments");
  }
  if (method == 0 && n > prefcal::marg::kMaxExact) throw std::invalid_argument("internal error: exact with n > 30");
  const View s = view(scores);
  const uint8_t* mk = mask_of(mask);
  py::gil_scoped_release nogil;
  pc::DeviceGuard guard(device);
  return pc::marg_model(s.ptr, s.type, n_rows, n, mk, global_mask, method, topk, n_samples, seed,
                        reinterpret_cast<double*>(out), stream_of(stream));
}

int64_t marg_from_samples(const py::tuple& samples, int64_t n_rows, int64_t size, int64_t m, int64_t n, uintptr_t out,
                          uintptr_t stream, int device) {
  if (n_rows < 0 || size < 0 || m < 0 || n < 0) throw std::invalid_argument("internal error: marg_from_samples shape");
  if (m > n) throw std::invalid_argument("internal error: samples wider than n");
  const View s = view(samples);
  py::gil_scoped_release nogil;
  pc::DeviceGuard guard(device);
  return pc::marg_from_samples(s.ptr, s.type, n_rows, size, m, n, reinterpret_cast<double*>(out), stream_of(stream));
}

int64_t marg_empirical(const py::tuple& rankings, int64_t n_rows, int64_t m, int64_t n, const py::object& mask,
                       bool global_mask, const py::object& weights, bool pairwise, uintptr_t out, uintptr_t stream,
                       int device) {
  check_pl_shape(n_rows, m, n);
  const View r = view(rankings);
  const uint8_t* mk = mask_of(mask);
  const double* w = ptr_or_null<const double>(weights);
  py::gil_scoped_release nogil;
  pc::DeviceGuard guard(device);
  return pc::marg_empirical(r.ptr, r.type, n_rows, m, n, mk, global_mask, w, pairwise, reinterpret_cast<double*>(out),
                            stream_of(stream));
}

// ------------------------------------------------------------------ DLPack (consumer side, no ownership taken)
// The capsule keeps its producer's tensor alive; Python holds the capsule for the duration of the call and
// never renames it, so the producer's own capsule destructor releases the tensor.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};

py::dict dlpack_info(const py::capsule& capsule) {
  if (std::strcmp(capsule.name(), "dltensor") != 0) {
    throw std::invalid_argument(std::string("expected an unconsumed 'dltensor' capsule, got '") + capsule.name() + "'");
  }
  const auto* m = static_cast<const DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (m == nullptr) throw py::error_already_set();
  const DLTensor& t = m->dl_tensor;
  if (t.dtype.lanes != 1) throw std::invalid_argument("vector dtypes are not supported");
  char kind = '?';
  switch (t.dtype.code) {
    case 0: kind = 'i'; break;
    case 1: kind = 'u'; break;
    case 2: kind = 'f'; break;
    case 6: kind = 'b'; break;
    default: throw std::invalid_argument("unsupported DLPack dtype code " + std::to_string(t.dtype.code));
  }
  py::list shape, strides;
  for (int i = 0; i < t.ndim; ++i) shape.append(t.shape[i]);
  if (t.strides != nullptr) {
    for (int i = 0; i < t.ndim; ++i) strides.append(t.strides[i]);
  }
  py::dict d;
  d["ptr"] = reinterpret_cast<uintptr_t>(static_cast<char*>(t.data) + t.byte_offset);
  d["shape"] = py::tuple(shape);
  d["strides"] = t.strides == nullptr ? py::object(py::none()) : py::object(py::tuple(strides));  // in elements
  d["typestr"] = std::string("|") + kind + std::to_string(t.dtype.bits / 8);
  d["device_type"] = t.device.device_type;
  d["device_id"] = t.device.device_id;
  return d;
}

// ------------------------------------------------------------------ host arrays staged on a device
class DeviceArray {
 public:
  DeviceArray(const py::array& a, int device) : device_(device) {
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("internal error: array is not C-contiguous");
    bytes_ = static_cast<size_t>(a.nbytes());
    pc::DeviceGuard guard(device);
    ptr_ = pc::device_malloc(bytes_);
    pc::copy_host_to_device(ptr_, a.data(), bytes_);
  }
  ~DeviceArray() {
    if (ptr_ != nullptr) {
      try {
        pc::DeviceGuard guard(device_);
        pc::device_free(ptr_);
      } catch (...) {
      }
    }
  }
  // Uninitialised device memory of `bytes` bytes (outputs of host inputs forced onto CUDA).
  DeviceArray(size_t bytes, int device) : bytes_(bytes), device_(device) {
    pc::DeviceGuard guard(device);
    ptr_ = pc::device_malloc(bytes_);
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(ptr_); }
  int device() const { return device_; }
  size_t nbytes() const { return bytes_; }
  // Copies the device bytes into a C-contiguous writable NumPy array of the same size.
  void to_host(py::array& a) const {
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("internal error: array is not C-contiguous");
    if (static_cast<size_t>(a.nbytes()) != bytes_) throw std::invalid_argument("internal error: size mismatch");
    void* dst = a.mutable_data();  // throws when the array is read-only
    py::gil_scoped_release nogil;
    pc::DeviceGuard guard(device_);
    pc::copy_device_to_host(dst, ptr_, bytes_);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
};

py::tuple device_count() {
  std::string err;
  const int n = pc::device_count(&err);
  return py::make_tuple(n, err);
}

py::dict device_props(int device) {
  const pc::DeviceProps p = pc::device_props(device);
  py::dict d;
  d["name"] = p.name;
  d["compute_capability"] = py::make_tuple(p.major, p.minor);
  d["multiprocessors"] = p.multiprocessors;
  d["total_memory"] = p.total_memory;
  d["l2_bytes"] = p.l2_bytes;
  d["driver_version"] = p.driver_version;
  d["runtime_version"] = p.runtime_version;
  return d;
}

py::dict build_info() {
  py::dict d;
  d["architectures"] = PREFCAL_CUDA_ARCHS_INFO;
  d["nvcc"] = PREFCAL_NVCC_INFO;
  return d;
}

// ------------------------------------------------------------------ ranking (cuda/ranking.hpp)
// The twins of prefcal._cpu.rank_*: arrays as (pointer, typestr) on `device`, shapes passed explicitly; the
// tables come back as NumPy arrays (rank_keys writes its keys to the device pointer `out`).
template <class T>
const T* typed(const py::tuple& t, DType want, const char* what) {
  const View v = view(t);
  if (v.type != want) throw std::invalid_argument(std::string("internal error: dtype of ") + what);
  return static_cast<const T*>(v.ptr);
}

const double* optional_f64(const py::object& o, const char* what) {
  return o.is_none() ? nullptr : typed<double>(o.cast<py::tuple>(), DType::kF64, what);
}

const uint8_t* optional_bytes(const py::object& o, const char* what) {
  if (o.is_none()) return nullptr;
  const View v = view(o.cast<py::tuple>());
  if (v.type != DType::kBool && v.type != DType::kU8) {
    throw std::invalid_argument(std::string("internal error: dtype of ") + what);
  }
  return static_cast<const uint8_t*>(v.ptr);
}

void check_rank_rows(int64_t score_rows, int64_t rows, int64_t n) {
  if (rows < 0 || n < 1 || (score_rows != 1 && score_rows != rows)) {
    throw std::invalid_argument("internal error: ranking shapes");
  }
}

int64_t subset_slots(int64_t n, int64_t k) {
  int64_t count = 1, kf = 1;
  for (int64_t j = 0; j < k; ++j) count = count * (n - j) / (j + 1);
  for (int64_t j = 2; j <= k; ++j) kf *= j;
  return count * kf;
}

int64_t rank_keys_cuda(const py::tuple& rankings, const py::object& mask, bool global_mask, int64_t rows, int64_t m,
                       int64_t n, uintptr_t out, uintptr_t stream, int device) {
  if (rows < 0 || m < 0 || n < 0 || m > n) throw std::invalid_argument("internal error: rank_keys shapes");
  const int64_t* r = typed<int64_t>(rankings, DType::kI64, "rankings");
  const uint8_t* mk = mask_of(mask);
  py::gil_scoped_release nogil;
  pc::DeviceGuard guard(device);
  return pc::rank_keys(r, rows, m, n, mk, global_mask, reinterpret_cast<double*>(out), stream_of(stream));
}

py::array_t<uint8_t> rank_seen_subsets_cuda(const py::tuple& keys, int64_t rows, int64_t n, int64_t k,
                                            uintptr_t stream, int device) {
  if (rows < 0 || k < 2 || k > n || k > 12) throw std::invalid_argument("internal error: rank_seen_subsets k");
  const double* kk = typed<double>(keys, DType::kF64, "keys");
  py::array_t<uint8_t> out(subset_slots(n, k));
  uint8_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    pc::DeviceGuard guard(device);
    pc::rank_seen_subsets(kk, rows, n, k, o, stream_of(stream));
  }
  return out;
}

py::array_t<double> rank_classwise_cuda(const py::tuple& scores, const py::tuple& keys, const py::tuple& classes,
                                        bool top, int32_t n_bins, const py::object& edges, const py::object& keep,
                                        int64_t score_rows, int64_t rows, int64_t n, int64_t n_classes, int64_t k,
                                        uintptr_t stream, int device) {
  check_rank_rows(score_rows, rows, n);
  check_bins(n_bins);
  if (n_classes < 0 || k < 1 || k > n) throw std::invalid_argument("internal error: rank_classwise shapes");
  const double* sp = typed<double>(scores, DType::kF64, "scores");
  const double* kk = typed<double>(keys, DType::kF64, "keys");
  const int32_t* cl = typed<int32_t>(classes, DType::kI32, "classes");
  const double* ed = optional_f64(edges, "edges");
  const uint8_t* kp = optional_bytes(keep, "keep");
  py::array_t<double> out({n_classes, int64_t(3), int64_t(n_bins)});
  double* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    pc::DeviceGuard guard(device);
    pc::rank_classwise(sp, score_rows, kk, rows, n, cl, n_classes, k, top, n_bins, ed, kp, o, stream_of(stream));
  }
  return out;
}

py::array_t<double> rank_classwise_subsets_cuda(const py::tuple& scores, const py::tuple& keys, int64_t k,
                                                const py::tuple& slot, int64_t n_classes, int32_t n_bins,
                                                const py::object& edges, const py::object& keep, int64_t score_rows,
                                                int64_t rows, int64_t n, uintptr_t stream, int device) {
  check_rank_rows(score_rows, rows, n);
  check_bins(n_bins);
  if (n_classes < 0 || k < 2 || k > n || k > 12) throw std::invalid_argument("internal error: rank_classwise_subsets k");
  const double* sp = typed<double>(scores, DType::kF64, "scores");
  const double* kk = typed<double>(keys, DType::kF64, "keys");
  const int32_t* sl = typed<int32_t>(slot, DType::kI32, "slot");
  const double* ed = optional_f64(edges, "edges");
  const uint8_t* kp = optional_bytes(keep, "keep");
  const int64_t n_slots = subset_slots(n, k);
  py::array_t<double> out({n_classes, int64_t(3), int64_t(n_bins)});
  double* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    pc::DeviceGuard guard(device);
    pc::rank_classwise_subsets(sp, score_rows, kk, rows, n, k, sl, n_slots, n_classes, n_bins, ed, kp, o,
                               stream_of(stream));
  }
  return out;
}

double time_rank_classwise_subsets_cuda(const py::tuple& scores, const py::tuple& keys, int64_t k,
                                        const py::tuple& slot, int64_t n_classes, int32_t n_bins,
                                        const py::object& edges, const py::object& keep, int64_t score_rows,
                                        int64_t rows, int64_t n, int reps, uintptr_t stream, int device) {
  check_rank_rows(score_rows, rows, n);
  check_bins(n_bins);
  if (n_classes < 0 || k < 2 || k > n || k > 12) throw std::invalid_argument("internal error: rank_classwise_subsets k");
  const double* sp = typed<double>(scores, DType::kF64, "scores");
  const double* kk = typed<double>(keys, DType::kF64, "keys");
  const int32_t* sl = typed<int32_t>(slot, DType::kI32, "slot");
  const double* ed = optional_f64(edges, "edges");
  const uint8_t* kp = optional_bytes(keep, "keep");
  const int64_t n_slots = subset_slots(n, k);
  py::gil_scoped_release nogil;
  pc::DeviceGuard guard(device);
  return pc::time_rank_classwise_subsets(sp, score_rows, kk, rows, n, k, sl, n_slots, n_classes, n_bins, ed, kp, reps,
                                         stream_of(stream));
}

py::tuple rank_top_label_cuda(const py::tuple& scores, const py::tuple& keys, int level, const py::object& groups,
                              int64_t k, int32_t n_bins, int64_t score_rows, int64_t rows, int64_t n,
                              int64_t n_groups, uintptr_t stream, int device) {
  check_rank_rows(score_rows, rows, n);
  check_bins(n_bins);
  if (k < 1 || k > n || level < 0 || level > 2 || (level == 2 && k > 20) || n_groups < 0) {
    throw std::invalid_argument("internal error: rank_top_label arguments");
  }
  const double* sp = typed<double>(scores, DType::kF64, "scores");
  const double* kk = typed<double>(keys, DType::kF64, "keys");
  const int32_t* gp = nullptr;
  if (level == 0) {
    if (groups.is_none()) throw std::invalid_argument("internal error: rank_top_label groups");
    gp = typed<int32_t>(groups.cast<py::tuple>(), DType::kI32, "groups");
  }
  py::array_t<double> out({int64_t(3), int64_t(n_bins)});
  double* o = out.mutable_data();
  int64_t skipped = 0;
  {
    py::gil_scoped_release nogil;
    pc::DeviceGuard guard(device);
    skipped = pc::rank_top_label(sp, score_rows, kk, rows, n, level, gp, level == 0 ? n_groups : 0, k, n_bins, o,
                                 stream_of(stream));
  }
  return py::make_tuple(out, skipped);
}

double rank_canonical_cuda(const py::tuple& probs, const py::tuple& labels, int64_t rows, int64_t n_classes, double h,
                           double p, uintptr_t stream, int device) {
  if (rows < 0 || n_classes < 1 || !(h > 0) || !(p > 0)) throw std::invalid_argument("internal error: rank_canonical");
  const double* pp = typed<double>(probs, DType::kF64, "probs");
  const int64_t* lb = typed<int64_t>(labels, DType::kI64, "labels");
  py::gil_scoped_release nogil;
  pc::DeviceGuard guard(device);
  return pc::rank_canonical(pp, lb, rows, n_classes, h, p, stream_of(stream));
}

void def_ranking(py::module_& m) {
  m.def("rank_keys", &rank_keys_cuda, py::arg("rankings"), py::arg("mask").none(true), py::arg("global_mask"),
        py::arg("rows"), py::arg("m"), py::arg("n"), py::arg("out"), py::arg("stream"), py::arg("device"));
  m.def("rank_seen_subsets", &rank_seen_subsets_cuda, py::arg("keys"), py::arg("rows"), py::arg("n"), py::arg("k"),
        py::arg("stream"), py::arg("device"));
  m.def("rank_classwise", &rank_classwise_cuda, py::arg("scores"), py::arg("keys"), py::arg("classes"), py::arg("top"),
        py::arg("n_bins"), py::arg("edges").none(true), py::arg("keep").none(true), py::arg("score_rows"),
        py::arg("rows"), py::arg("n"), py::arg("n_classes"), py::arg("k"), py::arg("stream"), py::arg("device"));
  m.def("rank_classwise_subsets", &rank_classwise_subsets_cuda, py::arg("scores"), py::arg("keys"), py::arg("k"),
        py::arg("slot"), py::arg("n_classes"), py::arg("n_bins"), py::arg("edges").none(true),
        py::arg("keep").none(true), py::arg("score_rows"), py::arg("rows"), py::arg("n"), py::arg("stream"),
        py::arg("device"));
  m.def("time_rank_classwise_subsets", &time_rank_classwise_subsets_cuda, py::arg("scores"), py::arg("keys"),
        py::arg("k"), py::arg("slot"), py::arg("n_classes"), py::arg("n_bins"), py::arg("edges").none(true),
        py::arg("keep").none(true), py::arg("score_rows"), py::arg("rows"), py::arg("n"), py::arg("reps"),
        py::arg("stream"), py::arg("device"));
  m.def(
      "describe_rank_classwise",
      [](int64_t rows, int64_t n, int64_t k, int64_t n_classes, bool subsets, bool top, int32_t n_bins, bool log_edges,
         bool global_scores, int device) {
        check_bins(n_bins);
        pc::DeviceGuard guard(device);
        return pc::describe_rank_classwise(rows, n, k, n_classes, subsets, top, n_bins, log_edges, global_scores);
      },
      py::arg("rows"), py::arg("n"), py::arg("k"), py::arg("n_classes"), py::arg("subsets"), py::arg("top"),
      py::arg("n_bins"), py::arg("log_edges"), py::arg("global_scores"), py::arg("device"));
  m.def("rank_top_label", &rank_top_label_cuda, py::arg("scores"), py::arg("keys"), py::arg("level"),
        py::arg("groups").none(true), py::arg("k"), py::arg("n_bins"), py::arg("score_rows"), py::arg("rows"),
        py::arg("n"), py::arg("n_groups"), py::arg("stream"), py::arg("device"));
  m.def("rank_canonical", &rank_canonical_cuda, py::arg("probs"), py::arg("labels"), py::arg("rows"),
        py::arg("n_classes"), py::arg("h"), py::arg("p"), py::arg("stream"), py::arg("device"));
}

// Test and benchmark hook: the log-likelihood kernels pl_loglik may take beyond the padded staging, by name:
// "staged" (none: the default), "flat" (the flat-staged kernel where it applies), "exact" (also the
// exact-width kernel where it applies). Returns the previous name.
std::string set_loglik_kernel(const std::string& name) {
  static const char* const kNames[] = {"staged", "flat", "exact"};
  int level = -1;
  for (int i = 0; i < 3; ++i) {
    if (name == kNames[i]) level = i;
  }
  if (level < 0) throw std::invalid_argument("set_loglik_kernel: 'staged', 'flat' or 'exact', not '" + name + "'");
  return kNames[pc::set_loglik_kernel(level)];
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "prefcal CUDA kernels";
  py::register_exception<std::runtime_error>(m, "CudaError", PyExc_RuntimeError);
  for (const bool quantile : {false, true}) {
    m.def(
        quantile ? "bin_quantile" : "bin_uniform",
        [quantile](const py::tuple& c, const py::tuple& y, const py::object& w, int64_t n, int32_t b, uintptr_t s,
                   int d) { return binary_bins(c, y, w, n, b, s, d, quantile); },
        py::arg("conf"), py::arg("correct"), py::arg("weights").none(true), py::arg("n"), py::arg("n_bins"),
        py::arg("stream"), py::arg("device"));
  }
  for (const bool quantile : {false, true}) {
    m.def(
        quantile ? "multiclass_quantile" : "multiclass_uniform",
        [quantile](const py::tuple& p, const py::tuple& l, int64_t n, int32_t c, int32_t b, int kind, uintptr_t s,
                   int d) { return multiclass(p, l, n, c, b, kind, s, d, quantile); },
        py::arg("probs"), py::arg("labels"), py::arg("n"), py::arg("n_classes"), py::arg("n_bins"), py::arg("kind"),
        py::arg("stream"), py::arg("device"));
  }
  m.def("score_sums", &score_sums, py::arg("conf"), py::arg("correct"), py::arg("weights").none(true), py::arg("n"),
        py::arg("eps"), py::arg("stream"), py::arg("device"));
  m.def(
      "time_bin_uniform",
      [](const py::tuple& conf, const py::tuple& correct, const py::object& weights, int64_t n, int32_t n_bins,
         int reps, uintptr_t stream, int device) {
        check_bins(n_bins);
        const pc::Binary in = binary(conf, correct, weights, n);
        py::gil_scoped_release nogil;
        pc::DeviceGuard guard(device);
        return pc::time_bin_uniform(in, n_bins, reps, stream_of(stream));
      },
      py::arg("conf"), py::arg("correct"), py::arg("weights").none(true), py::arg("n"), py::arg("n_bins"),
      py::arg("reps"), py::arg("stream"), py::arg("device"));
  m.def(
      "describe_bin_uniform",
      [](const py::tuple& conf, const py::tuple& correct, const py::object& weights, int64_t n, int32_t n_bins,
         int device) {
        check_bins(n_bins);
        pc::DeviceGuard guard(device);
        return pc::describe_bin_uniform(binary(conf, correct, weights, n), n_bins);
      },
      py::arg("conf"), py::arg("correct"), py::arg("weights").none(true), py::arg("n"), py::arg("n_bins"),
      py::arg("device"));
  m.def("pl_loglik", &pl_loglik, py::arg("scores"), py::arg("global_scores"), py::arg("rankings"),
        py::arg("mask").none(true), py::arg("global_mask"), py::arg("N"), py::arg("m"), py::arg("n"), py::arg("ll"),
        py::arg("grad").none(true), py::arg("stream"), py::arg("device"));
  m.def("pl_temperature", &pl_temperature, py::arg("scores"), py::arg("global_scores"), py::arg("rankings"),
        py::arg("mask").none(true), py::arg("global_mask"), py::arg("N"), py::arg("m"), py::arg("n"), py::arg("beta"),
        py::arg("stream"), py::arg("device"));
  m.def("pl_sample", &pl_sample, py::arg("scores"), py::arg("rows"), py::arg("n"), py::arg("mask").none(true),
        py::arg("global_mask"), py::arg("size"), py::arg("k"), py::arg("seed"), py::arg("noise"), py::arg("out"),
        py::arg("stream"), py::arg("device"));
  m.def("pl_pairwise", &pl_pairwise, py::arg("scores"), py::arg("rows"), py::arg("n"), py::arg("out"),
        py::arg("stream"), py::arg("device"));
  m.def("pl_fit_setup", &pl_fit_setup, py::arg("rankings"), py::arg("mask").none(true), py::arg("global_mask"),
        py::arg("weights").none(true), py::arg("N"), py::arg("m"), py::arg("n"), py::arg("stream"), py::arg("device"));
  m.def("pl_fit_pass", &pl_fit_pass, py::arg("rankings"), py::arg("mask").none(true), py::arg("global_mask"),
        py::arg("weights").none(true), py::arg("N"), py::arg("m"), py::arg("n"), py::arg("theta").noconvert(),
        py::arg("want_q"), py::arg("want_ll"), py::arg("stream"), py::arg("device"));
  m.def("marg_model", &marg_model, py::arg("scores"), py::arg("n_rows"), py::arg("n"), py::arg("mask").none(true),
        py::arg("global_mask"), py::arg("method"), py::arg("topk"), py::arg("n_samples"), py::arg("seed"),
        py::arg("out"), py::arg("stream"), py::arg("device"));
  m.def("marg_from_samples", &marg_from_samples, py::arg("samples"), py::arg("n_rows"), py::arg("size"), py::arg("m"),
        py::arg("n"), py::arg("out"), py::arg("stream"), py::arg("device"));
  m.def("marg_empirical", &marg_empirical, py::arg("rankings"), py::arg("n_rows"), py::arg("m"), py::arg("n"),
        py::arg("mask").none(true), py::arg("global_mask"), py::arg("weights").none(true), py::arg("pairwise"),
        py::arg("out"), py::arg("stream"), py::arg("device"));
  m.def("set_loglik_kernel", &set_loglik_kernel, py::arg("name"));
  m.def("time_pl_loglik", &time_pl_loglik, py::arg("scores"), py::arg("global_scores"), py::arg("rankings"),
        py::arg("mask").none(true), py::arg("global_mask"), py::arg("N"), py::arg("m"), py::arg("n"), py::arg("ll"),
        py::arg("grad").none(true), py::arg("reps"), py::arg("stream"), py::arg("device"));
  m.def("dlpack_info", &dlpack_info, py::arg("capsule"));
  m.def("device_count", &device_count);
  m.def("device_props", &device_props, py::arg("device"));
  m.def("build_info", &build_info);
  def_ranking(m);
  py::class_<DeviceArray>(m, "DeviceArray")
      .def(py::init<const py::array&, int>(), py::arg("array"), py::arg("device"))
      .def_static(
          "empty",
          [](int64_t nbytes, int device) {
            if (nbytes < 0) throw std::invalid_argument("internal error: negative nbytes");
            return std::make_unique<DeviceArray>(static_cast<size_t>(nbytes), device);
          },
          py::arg("nbytes"), py::arg("device"))
      .def("to_host", &DeviceArray::to_host, py::arg("array").noconvert())
      .def_property_readonly("ptr", &DeviceArray::ptr)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("device", &DeviceArray::device);
}
