// prefcal._cpu: NumPy buffers in, OpenMP kernels with the GIL released.
//
// The bindings take exactly the dtypes the kernels were written for, C-contiguous; the Python layer makes
// any conversion explicit (prefcal/_validation.py). Kernels return the first bad row; Python words the error.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "prefcal/dtypes.hpp"
#include "prefcal/binning.hpp"
#include "prefcal/cpu/binning.hpp"

namespace py = pybind11;
using prefcal::bind::DType;

namespace {

DType dtype_of(const py::array& a) { return prefcal::bind::parse_dtype(a.dtype().kind(), a.dtype().itemsize()); }

void require(const py::array& a, int ndim, const char* name) {
  if (a.ndim() != ndim) throw std::invalid_argument(std::string("internal error: ") + name + " has the wrong ndim");
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string("internal error: ") + name + " is not C-contiguous");
  }
}

const double* weights_ptr(const py::object& weights, int64_t n) {
  if (weights.is_none()) return nullptr;
  auto w = weights.cast<py::array>();
  require(w, 1, "weights");
  if (dtype_of(w) != DType::kF64 || w.shape(0) != n) throw std::invalid_argument("internal error: weights");
  return static_cast<const double*>(w.data());
}

void check_binary(const py::array& conf, const py::array& correct, int32_t n_bins) {
  require(conf, 1, "confidence");
  require(correct, 1, "correct");
  if (conf.shape(0) != correct.shape(0)) throw std::invalid_argument("internal error: length mismatch");
  if (n_bins < 1 || n_bins > prefcal::kMaxBins) throw std::invalid_argument("internal error: n_bins");
}

// Runs f(conf_ptr, correct_ptr) with the pointers cast to the arrays' element types, without the GIL.
template <class F>
int64_t with_binary_types(const py::array& conf, const py::array& correct, F&& f) {
  const void* pc = conf.data();
  const void* py_ = correct.data();
  int64_t bad = 0;
  prefcal::bind::dispatch_float(dtype_of(conf), "confidence", [&](auto tc) {
    using TC = decltype(tc);
    prefcal::bind::dispatch_outcome(dtype_of(correct), "correct", [&](auto ty) {
      using TY = decltype(ty);
      py::gil_scoped_release nogil;
      bad = f(static_cast<const TC*>(pc), static_cast<const TY*>(py_));
    });
  });
  return bad;
}

py::tuple bin_uniform(const py::array& conf, const py::array& correct, const py::object& weights, int32_t n_bins) {
  check_binary(conf, correct, n_bins);
  const int64_t n = conf.shape(0);
  const double* w = weights_ptr(weights, n);
  py::array_t<double> out({int64_t(3), int64_t(n_bins)});
  double* o = out.mutable_data();
  const int64_t bad = with_binary_types(
      conf, correct, [&](const auto* c, const auto* y) { return prefcal::cpu::bin_uniform(c, y, w, n, n_bins, o); });
  return py::make_tuple(out, bad);
}

py::tuple bin_quantile(const py::array& conf, const py::array& correct, const py::object& weights, int32_t n_bins) {
  check_binary(conf, correct, n_bins);
  const int64_t n = conf.shape(0);
  const double* w = weights_ptr(weights, n);
  py::array_t<double> out({int64_t(3), int64_t(n_bins)});
  py::array_t<double> edges(int64_t(n_bins) + 1);
  double* o = out.mutable_data();
  double* e = edges.mutable_data();
  const int64_t bad = with_binary_types(
      conf, correct, [&](const auto* c, const auto* y) { return prefcal::cpu::bin_quantile(c, y, w, n, n_bins, o, e); });
  return py::make_tuple(out, edges, bad);
}

py::tuple multiclass(const py::array& probs, const py::array& labels, int32_t n_bins, int kind, bool quantile) {
  require(probs, 2, "probs");
  require(labels, 1, "labels");
  const int64_t n = probs.shape(0);
  const int64_t c64 = probs.shape(1);
  if (labels.shape(0) != n || c64 < 1 || c64 > INT32_MAX || n_bins < 1 || kind < 0 || kind > 2) {
    throw std::invalid_argument("internal error: multiclass arguments");
  }
  const auto C = static_cast<int32_t>(c64);
  const auto k = static_cast<prefcal::cpu::MulticlassKind>(kind);
  const int64_t groups = k == prefcal::cpu::MulticlassKind::kConfidence ? 1 : C;
  py::array_t<double> out({groups, int64_t(3), int64_t(n_bins)});
  py::array_t<double> edges({groups, int64_t(n_bins) + 1});
  double* o = out.mutable_data();
  double* e = edges.mutable_data();
  const void* pp = probs.data();
  const void* pl = labels.data();
  int64_t bad = 0;
  prefcal::bind::dispatch_float(dtype_of(probs), "probs", [&](auto tp) {
    using TP = decltype(tp);
    prefcal::bind::dispatch_label(dtype_of(labels), "labels", [&](auto tl) {
      using TL = decltype(tl);
      py::gil_scoped_release nogil;
      bad = quantile ? prefcal::cpu::multiclass_quantile(static_cast<const TP*>(pp), static_cast<const TL*>(pl), n,
                                                         C, n_bins, k, o, e)
                     : prefcal::cpu::multiclass_uniform(static_cast<const TP*>(pp), static_cast<const TL*>(pl), n,
                                                        C, n_bins, k, o);
    });
  });
  if (quantile) return py::make_tuple(out, edges, bad);
  return py::make_tuple(out, py::none(), bad);
}

py::tuple score_sums(const py::array& conf, const py::array& correct, const py::object& weights, double eps) {
  check_binary(conf, correct, 1);
  const int64_t n = conf.shape(0);
  const double* w = weights_ptr(weights, n);
  py::array_t<double> out(3);
  double* o = out.mutable_data();
  const int64_t bad = with_binary_types(
      conf, correct, [&](const auto* c, const auto* y) { return prefcal::cpu::score_sums(c, y, w, n, eps, o); });
  return py::make_tuple(out, bad);
}

// Test hooks: the shared per-element bin arithmetic, including the float32 path that the GPU runs.
py::array_t<int32_t> uniform_bin_index(const py::array& conf, int32_t n_bins, bool f32_path) {
  require(conf, 1, "confidence");
  py::array_t<int32_t> out(conf.shape(0));
  int32_t* o = out.mutable_data();
  const int64_t n = conf.shape(0);
  if (f32_path) {
    if (dtype_of(conf) != DType::kF32) throw std::invalid_argument("the float32 path needs float32 input");
    const auto* c = static_cast<const float*>(conf.data());
    for (int64_t i = 0; i < n; ++i) o[i] = prefcal::uniform_bin_f32(c[i], n_bins);
  } else {
    prefcal::bind::dispatch_float(dtype_of(conf), "confidence", [&](auto tc) {
      using TC = decltype(tc);
      const auto* c = static_cast<const TC*>(conf.data());
      for (int64_t i = 0; i < n; ++i) o[i] = prefcal::uniform_bin(static_cast<double>(c[i]), n_bins);
    });
  }
  return out;
}

py::dict build_info() {
  py::dict d;
  d["version"] = PREFCAL_VERSION_INFO;
  d["compiler"] = PREFCAL_COMPILER_INFO;
  d["build_type"] = PREFCAL_BUILD_TYPE_INFO;
  d["openmp"] = prefcal::cpu::have_openmp();
  return d;
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "prefcal CPU kernels (C++17, OpenMP)";
  m.def("bin_uniform", &bin_uniform, py::arg("conf").noconvert(), py::arg("correct").noconvert(),
        py::arg("weights").none(true), py::arg("n_bins"));
  m.def("bin_quantile", &bin_quantile, py::arg("conf").noconvert(), py::arg("correct").noconvert(),
        py::arg("weights").none(true), py::arg("n_bins"));
  for (const bool quantile : {false, true}) {
    m.def(
        quantile ? "multiclass_quantile" : "multiclass_uniform",
        [quantile](const py::array& p, const py::array& l, int32_t b, int kind) {
          return multiclass(p, l, b, kind, quantile);
        },
        py::arg("probs").noconvert(), py::arg("labels").noconvert(), py::arg("n_bins"), py::arg("kind"));
  }
  m.def("score_sums", &score_sums, py::arg("conf").noconvert(), py::arg("correct").noconvert(),
        py::arg("weights").none(true), py::arg("eps"));
  m.def("uniform_bin_index", &uniform_bin_index, py::arg("conf").noconvert(), py::arg("n_bins"),
        py::arg("f32_path") = false);
  m.def("set_num_threads", &prefcal::cpu::set_num_threads, py::arg("n"));
  m.def("num_threads", &prefcal::cpu::num_threads);
  m.def("build_info", &build_info);
  m.attr("NO_ERROR") = py::int_(prefcal::kNoError);
  m.attr("MAX_BINS") = py::int_(prefcal::kMaxBins);
}
