// prefcal._cpu: NumPy buffers in, OpenMP kernels with the GIL released.
//
// The bindings take exactly the dtypes the kernels were written for, C-contiguous; the Python layer makes
// any conversion explicit (prefcal/_validation.py). Kernels return the first bad row; Python words the error.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "prefcal/dtypes.hpp"
#include "prefcal/fastmath.hpp"
#include "prefcal/binning.hpp"
#include "prefcal/cpu/binning.hpp"
#include "prefcal/cpu/marginals.hpp"
#include "prefcal/marginals.hpp"
#include "prefcal/cpu/pl.hpp"
#include "prefcal/pl.hpp"
#include "prefcal/cpu/ranking.hpp"

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

// Test hook: the integral's deflation as the GPU runs it (prefcal/marginals.hpp, marg::deflate): the product
// (n + 1 coefficients) divided by (a z + b).
py::array_t<double> marg_deflate(const py::array_t<double, py::array::c_style>& poly, double a, double b) {
  if (poly.ndim() != 1 || poly.shape(0) < 1) throw std::invalid_argument("marg_deflate: poly must be 1-D, non-empty");
  const int64_t n = poly.shape(0) - 1;
  py::array_t<double> out(n);
  prefcal::marg::deflate(poly.data(), n, a, b, out.mutable_data());
  return out;
}

// Test hook: the inline exp / log of the CPU kernels (prefcal/fastmath.hpp), element by element.
py::array fastmath(const std::string& name, const py::array& x) {
  require(x, 1, "x");
  const int64_t n = x.shape(0);
  const DType dt = dtype_of(x);
  if (name == "log_pos" && dt == DType::kF64) {
    py::array_t<double> out(n);
    const auto* v = static_cast<const double*>(x.data());
    for (int64_t i = 0; i < n; ++i) out.mutable_data()[i] = prefcal::fastmath::log_pos(v[i]);
    return out;
  }
  if (name == "exp_neg" && dt == DType::kF64) {
    py::array_t<double> out(n);
    const auto* v = static_cast<const double*>(x.data());
    for (int64_t i = 0; i < n; ++i) out.mutable_data()[i] = prefcal::fastmath::exp_neg(v[i]);
    return out;
  }
  if (name == "exp_neg" && dt == DType::kF32) {
    py::array_t<float> out(n);
    const auto* v = static_cast<const float*>(x.data());
    for (int64_t i = 0; i < n; ++i) out.mutable_data()[i] = prefcal::fastmath::exp_neg(v[i]);
    return out;
  }
  throw std::invalid_argument("fastmath: log_pos (float64) or exp_neg (float32 / float64)");
}

// Test hook: the sampler's float32 Gumbel noise of Philox words (a, b) (uint32 arrays of one length); None
// without AVX-512.
py::object gumbel_f32(const py::array& a, const py::array& b) {
  require(a, 1, "a");
  require(b, 1, "b");
  if (!py::isinstance<py::array_t<uint32_t>>(a) || !py::isinstance<py::array_t<uint32_t>>(b) ||
      a.shape(0) != b.shape(0)) {
    throw std::invalid_argument("gumbel_f32: a and b are uint32 arrays of one length");
  }
  py::array_t<float> out(a.shape(0));
  if (!prefcal::cpu::gumbel_f32(static_cast<const uint32_t*>(a.data()), static_cast<const uint32_t*>(b.data()),
                                a.shape(0), out.mutable_data())) {
    return py::none();
  }
  return std::move(out);
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

// ------------------------------------------------------------------------------ Plackett-Luce (SPEC §2, §7)

const uint8_t* mask_ptr(const py::object& mask, int64_t N, int64_t n, bool* global) {
  *global = false;
  if (mask.is_none()) return nullptr;
  auto a = mask.cast<py::array>();
  const DType d = dtype_of(a);
  if (d != DType::kBool && d != DType::kU8) throw std::invalid_argument("internal error: mask dtype");
  if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("internal error: mask is not C-contiguous");
  if (a.ndim() == 1 && a.shape(0) == n) {
    *global = true;
  } else if (a.ndim() != 2 || a.shape(0) != N || a.shape(1) != n) {
    throw std::invalid_argument("internal error: mask shape");
  }
  return static_cast<const uint8_t*>(a.data());
}

prefcal::cpu::PLRows pl_rows(const py::array& scores, const py::array& rankings, const py::object& mask) {
  require(rankings, 2, "rankings");
  if (scores.ndim() != 1 && scores.ndim() != 2) throw std::invalid_argument("internal error: scores ndim");
  if (!(scores.flags() & py::array::c_style)) throw std::invalid_argument("internal error: scores");
  prefcal::cpu::PLRows sh{};
  sh.N = rankings.shape(0);
  sh.m = rankings.shape(1);
  sh.global_scores = scores.ndim() == 1;
  sh.n = scores.shape(scores.ndim() - 1);
  if (!sh.global_scores && scores.shape(0) != sh.N) throw std::invalid_argument("internal error: scores rows");
  if (sh.m > sh.n && sh.n > 0) throw std::invalid_argument("internal error: rankings wider than n");
  sh.mask = mask_ptr(mask, sh.N, sh.n, &sh.global_mask);
  return sh;
}

// f(scores as const T*, rankings as const I*) without the GIL.
template <class F>
void with_pl_types(const py::array& scores, const py::array& rankings, F&& f) {
  const void* ps = scores.data();
  const void* pr = rankings.data();
  prefcal::bind::dispatch_float(dtype_of(scores), "scores", [&](auto ts) {
    using T = decltype(ts);
    prefcal::bind::dispatch_label(dtype_of(rankings), "rankings", [&](auto ti) {
      using I = decltype(ti);
      py::gil_scoped_release nogil;
      f(static_cast<const T*>(ps), static_cast<const I*>(pr));
    });
  });
}

py::tuple pl_loglik(const py::array& scores, const py::array& rankings, const py::object& mask, bool want_grad) {
  const auto sh = pl_rows(scores, rankings, mask);
  py::array ll(scores.dtype(), std::vector<py::ssize_t>{sh.N});
  py::object grad = py::none();
  void* g = nullptr;
  if (want_grad) {
    py::array ga = sh.global_scores ? py::array(scores.dtype(), std::vector<py::ssize_t>{sh.n}) : py::array(scores.dtype(), {sh.N, sh.n});
    g = ga.mutable_data();
    grad = ga;
  }
  void* o = ll.mutable_data();
  int64_t bad = 0;
  with_pl_types(scores, rankings, [&](const auto* s, const auto* r) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(s)>>;
    bad = prefcal::cpu::pl_loglik(s, r, sh, static_cast<T*>(o), static_cast<T*>(g));
  });
  return py::make_tuple(ll, grad, bad);
}

py::tuple pl_temperature(const py::array& scores, const py::array& rankings, const py::object& mask, double beta) {
  const auto sh = pl_rows(scores, rankings, mask);
  py::array_t<double> out(3);
  double* o = out.mutable_data();
  int64_t bad = 0;
  with_pl_types(scores, rankings,
                [&](const auto* s, const auto* r) { bad = prefcal::cpu::pl_temperature(s, r, sh, beta, o); });
  return py::make_tuple(out, bad);
}

py::tuple pl_sample(const py::array& scores, const py::object& mask, int64_t size, int64_t k, uint64_t seed,
                    bool noise) {
  require(scores, 2, "scores");
  const int64_t rows = scores.shape(0), n = scores.shape(1);
  if (size < 0 || k < 0) throw std::invalid_argument("internal error: size or k");
  bool global = false;
  const uint8_t* mk = mask_ptr(mask, rows, n, &global);
  py::array_t<int32_t> out({rows, size, k});
  int32_t* o = out.mutable_data();
  const void* ps = scores.data();
  int64_t bad = 0;
  // pl.sample asks for k <= n; the kernel's vector paths rely on it. Beyond n (the test hooks' comparisons)
  // the kernel draws k = n into a buffer, and the positions past n are -1.
  const int64_t kk = std::min(k, n);
  std::vector<int32_t> buf(k > n ? static_cast<size_t>(rows * size * kk) : 0);
  int32_t* dst = k > n ? buf.data() : o;
  prefcal::bind::dispatch_float(dtype_of(scores), "scores", [&](auto ts) {
    using T = decltype(ts);
    py::gil_scoped_release nogil;
    bad = prefcal::cpu::pl_sample(static_cast<const T*>(ps), rows, n, mk, global, size, kk, seed, noise, dst);
  });
  if (k > n) {
    for (int64_t d = 0; d < rows * size; ++d) {
      for (int64_t j = 0; j < k; ++j) o[d * k + j] = j < kk ? buf[static_cast<size_t>(d * kk + j)] : -1;
    }
  }
  return py::make_tuple(out, bad);
}

// Test hooks: the per-row paths of the GPU's PL kernels (prefcal/pl.hpp), run on the host row by row, so
// that the CPU tests check the arithmetic the GPU runs.
//
// pl_loglik_small: the staged log-likelihood kernels' row functions: pl::row_loglik_small with a 64-bit
// listed-item set (n <= 64), or with `fixed` pl::row_loglik_fixed at width pl::loglik_width(n) (n <= 32), for
// per-row scores (N, n). Returns (ll float64 (N,), ok bool (N,)); ll is 0 where the row is bad.
template <class T, class I>
bool loglik_row(bool fixed, int width, const T* s, const I* r, int m, int n, const uint8_t* mk, double& v) {
  namespace pl = prefcal::pl;
  if (!fixed) return pl::row_loglik_small<T, uint64_t>(s, r, m, n, mk, v);
  if (width == 4) return pl::row_loglik_fixed<4, T>(s, r, m, n, mk, v);
  if (width == 8) return pl::row_loglik_fixed<8, T>(s, r, m, n, mk, v);
  if (width == 12) return pl::row_loglik_fixed<12, T>(s, r, m, n, mk, v);
  if (width == 16) return pl::row_loglik_fixed<16, T>(s, r, m, n, mk, v);
  if (width == 24) return pl::row_loglik_fixed<24, T>(s, r, m, n, mk, v);
  return pl::row_loglik_fixed<32, T>(s, r, m, n, mk, v);
}

py::tuple pl_loglik_small(const py::array& scores, const py::array& rankings, const py::object& mask, bool fixed) {
  require(scores, 2, "scores");
  const auto sh = pl_rows(scores, rankings, mask);
  if (sh.n > (fixed ? 32 : 64)) throw std::invalid_argument(fixed ? "pl_loglik_small: n <= 32" : "pl_loglik_small: n <= 64");
  const int width = prefcal::pl::loglik_width(sh.n);
  if (sh.N > INT32_MAX) throw std::invalid_argument("pl_loglik_small: too many rows");
  py::array_t<double> ll(sh.N);
  py::array_t<bool> ok(sh.N);
  double* o = ll.mutable_data();
  bool* k = ok.mutable_data();
  with_pl_types(scores, rankings, [&](const auto* s, const auto* r) {
    const int n = static_cast<int>(sh.n), m = static_cast<int>(sh.m);
    for (int64_t b = 0; b < sh.N; ++b) {
      const uint8_t* mk = sh.mask == nullptr ? nullptr : (sh.global_mask ? sh.mask : sh.mask + b * sh.n);
      double v = 0.0;
      k[b] = loglik_row(fixed, width, s + b * sh.n, r + b * sh.m, m, n, mk, v);
      o[b] = k[b] ? v : 0.0;
    }
  });
  return py::make_tuple(ll, ok);
}

// pl_loglik_exact: the row function of the GPU's exact-width log-likelihood kernel, for full rankings (N, n) of
// n items without a mask, 2 <= n <= pl::kExactMax: pl::row_loglik_exact<n>, and for the rows it does not take
// pl::row_loglik_fixed (as the kernel does). Returns (ll float64 (N,), ok bool (N,), fast bool (N,): the rows
// row_loglik_exact took); ll is 0 where the row is bad.
template <int N, class T, class I>
void exact_rows(const T* s, const I* r, int64_t rows, double* o, bool* k, bool* f) {
  namespace pl = prefcal::pl;
  for (int64_t b = 0; b < rows; ++b) {
    double v = 0.0;
    f[b] = pl::row_loglik_exact<N, T>(s + b * N, r + b * N, v);
    k[b] = f[b] || pl::row_loglik_fixed<pl::loglik_width(N), T>(s + b * N, r + b * N, N, N, nullptr, v);
    o[b] = k[b] ? v : 0.0;
  }
}

template <class T, class I, int... Ns>
void exact_rows_of(int n, const T* s, const I* r, int64_t rows, double* o, bool* k, bool* f,
                   std::integer_sequence<int, Ns...>) {
  ((n == Ns + 2 ? exact_rows<Ns + 2>(s, r, rows, o, k, f) : void()), ...);
}

py::tuple pl_loglik_exact(const py::array& scores, const py::array& rankings) {
  require(scores, 2, "scores");
  const auto sh = pl_rows(scores, rankings, py::none());
  if (sh.n < 2 || sh.n > prefcal::pl::kExactMax || sh.m != sh.n) {
    throw std::invalid_argument("pl_loglik_exact: full rankings of 2 .. 16 items");
  }
  py::array_t<double> ll(sh.N);
  py::array_t<bool> ok(sh.N), fast(sh.N);
  double* o = ll.mutable_data();
  bool* k = ok.mutable_data();
  bool* f = fast.mutable_data();
  with_pl_types(scores, rankings, [&](const auto* s, const auto* r) {
    exact_rows_of(static_cast<int>(sh.n), s, r, sh.N, o, k, f,
                  std::make_integer_sequence<int, prefcal::pl::kExactMax - 1>{});
  });
  return py::make_tuple(ll, ok, fast);
}

// pl_sample_small: the GPU sampler's register path (pl::draw_small at width pl::draw_width(n)), n <= 32, with
// the arguments and output of pl_sample (no row check: rows with non-finite scores give unspecified orders).
template <int K, class T>
void sample_small_rows(const T* s, int64_t rows, int n, const uint8_t* mk, bool global, int64_t size, int k,
                       uint64_t seed, bool noise, int32_t* out) {
  const int kk = std::min(k, n);
  for (int64_t b = 0; b < rows; ++b) {
    const uint8_t* m = mk == nullptr ? nullptr : (global ? mk : mk + b * n);
    for (int64_t t = 0; t < size; ++t) {
      int32_t* o = out + (b * size + t) * k;
      const int avail = prefcal::pl::draw_small<K>(s + b * n, m, n, kk, seed, noise, static_cast<uint64_t>(b),
                                                   static_cast<uint32_t>(t), [o](int rank, int item) { o[rank] = item; });
      for (int j = std::min(avail, kk); j < k; ++j) o[j] = -1;
    }
  }
}

py::array_t<int32_t> pl_sample_small(const py::array& scores, const py::object& mask, int64_t size, int64_t k,
                                     uint64_t seed, bool noise) {
  require(scores, 2, "scores");
  const int64_t rows = scores.shape(0), n = scores.shape(1);
  if (size < 0 || k < 0 || k > INT32_MAX) throw std::invalid_argument("pl_sample_small: size or k");
  const int width = prefcal::pl::draw_width(n);
  if (width == 0) throw std::invalid_argument("pl_sample_small: n <= 32");
  bool global = false;
  const uint8_t* mk = mask_ptr(mask, rows, n, &global);
  py::array_t<int32_t> out({rows, size, k});
  int32_t* o = out.mutable_data();
  const void* ps = scores.data();
  prefcal::bind::dispatch_float(dtype_of(scores), "scores", [&](auto ts) {
    using T = decltype(ts);
    const T* s = static_cast<const T*>(ps);
    const int ni = static_cast<int>(n), ki = static_cast<int>(k);
    py::gil_scoped_release nogil;
    switch (width) {
      case 4: sample_small_rows<4>(s, rows, ni, mk, global, size, ki, seed, noise, o); break;
      case 8: sample_small_rows<8>(s, rows, ni, mk, global, size, ki, seed, noise, o); break;
      case 12: sample_small_rows<12>(s, rows, ni, mk, global, size, ki, seed, noise, o); break;
      case 16: sample_small_rows<16>(s, rows, ni, mk, global, size, ki, seed, noise, o); break;
      case 24: sample_small_rows<24>(s, rows, ni, mk, global, size, ki, seed, noise, o); break;
      default: sample_small_rows<32>(s, rows, ni, mk, global, size, ki, seed, noise, o); break;
    }
  });
  return out;
}

// pl_sample_insertion: the GPU sampler's path for rows of any n (pl::gumbel_top, a sorted top-kk buffer filled
// by insertion; also the draw of the Monte Carlo marginals), with the arguments and output of pl_sample (no row
// check: rows with non-finite scores give unspecified orders).
py::array_t<int32_t> pl_sample_insertion(const py::array& scores, const py::object& mask, int64_t size, int64_t k,
                                         uint64_t seed, bool noise) {
  require(scores, 2, "scores");
  const int64_t rows = scores.shape(0), n = scores.shape(1);
  if (size < 0 || k < 0 || k > INT32_MAX || n > INT32_MAX) {
    throw std::invalid_argument("pl_sample_insertion: size, k or n");
  }
  bool global = false;
  const uint8_t* mk = mask_ptr(mask, rows, n, &global);
  py::array_t<int32_t> out({rows, size, k});
  int32_t* o = out.mutable_data();
  const void* ps = scores.data();
  const int64_t kk = std::min(k, n);
  prefcal::bind::dispatch_float(dtype_of(scores), "scores", [&](auto ts) {
    using T = decltype(ts);
    const T* s = static_cast<const T*>(ps);
    py::gil_scoped_release nogil;
    std::vector<double> keys(static_cast<size_t>(std::max<int64_t>(kk, 1)));
    std::vector<int32_t> items(keys.size());
    const prefcal::pl::Strided<double> key{keys.data(), 1};
    const prefcal::pl::Strided<int32_t> item{items.data(), 1};
    for (int64_t b = 0; b < rows; ++b) {
      const uint8_t* m = mk == nullptr ? nullptr : (global ? mk : mk + b * n);
      for (int64_t t = 0; t < size; ++t) {
        const int64_t cnt = prefcal::pl::gumbel_top(s + b * n, m, n, kk, seed, noise, b, t, key, item);
        int32_t* ot = o + (b * size + t) * k;
        for (int64_t j = 0; j < k; ++j) ot[j] = j < cnt ? items[static_cast<size_t>(j)] : -1;
      }
    }
  });
  return out;
}

py::tuple pl_pairwise(const py::array& scores) {
  require(scores, 2, "scores");
  const int64_t rows = scores.shape(0), n = scores.shape(1);
  py::array out(scores.dtype(), {rows, n, n});
  void* o = out.mutable_data();
  const void* ps = scores.data();
  int64_t bad = 0;
  prefcal::bind::dispatch_float(dtype_of(scores), "scores", [&](auto ts) {
    using T = decltype(ts);
    py::gil_scoped_release nogil;
    bad = prefcal::cpu::pl_pairwise(static_cast<const T*>(ps), rows, n, static_cast<T*>(o));
  });
  return py::make_tuple(out, bad);
}

prefcal::cpu::PLRows fit_rows(const py::array& rankings, const py::object& mask, int64_t n) {
  require(rankings, 2, "rankings");
  prefcal::cpu::PLRows sh{};
  sh.N = rankings.shape(0);
  sh.m = rankings.shape(1);
  sh.n = n;
  sh.global_scores = true;
  sh.mask = mask_ptr(mask, sh.N, n, &sh.global_mask);
  return sh;
}

py::tuple pl_fit_setup(const py::array& rankings, const py::object& mask, const py::object& weights, int64_t n) {
  const auto sh = fit_rows(rankings, mask, n);
  const double* w = weights_ptr(weights, sh.N);
  py::array_t<double> wins(n), denom0(n);
  py::array_t<uint8_t> edges({n, n});
  double* pw = wins.mutable_data();
  double* pd = denom0.mutable_data();
  uint8_t* pe = edges.mutable_data();
  const void* pr = rankings.data();
  int64_t bad = 0;
  double ll0 = 0.0;
  prefcal::bind::dispatch_label(dtype_of(rankings), "rankings", [&](auto ti) {
    using I = decltype(ti);
    py::gil_scoped_release nogil;
    bad = prefcal::cpu::pl_fit_setup(static_cast<const I*>(pr), sh, w, pw, pe, pd, &ll0);
  });
  return py::make_tuple(wins, edges, py::make_tuple(denom0, ll0), bad);
}

py::tuple pl_fit_pass(const py::array& rankings, const py::object& mask, const py::object& weights,
                      const py::array_t<double, py::array::c_style>& theta, bool want_q, bool want_ll) {
  const int64_t n = theta.shape(0);
  const auto sh = fit_rows(rankings, mask, n);
  const double* w = weights_ptr(weights, sh.N);
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
  const void* pr = rankings.data();
  double ll = 0.0;
  prefcal::bind::dispatch_label(dtype_of(rankings), "rankings", [&](auto ti) {
    using I = decltype(ti);
    py::gil_scoped_release nogil;
    ll = prefcal::cpu::pl_fit_pass(static_cast<const I*>(pr), sh, w, pt, pd, pq, want_ll);
  });
  return py::make_tuple(denom, q, ll);
}

// Marginals (SPEC §3): method 0 exact, 1 integral, 2 Monte Carlo. topk = 0: (rows, n, n) positions; else
// (rows, n) top-topk inclusion.
py::tuple marg_model(const py::array& scores, const py::object& mask, int method, int64_t topk, int64_t n_samples,
                     uint64_t seed) {
  require(scores, 2, "scores");
  const int64_t rows = scores.shape(0), n = scores.shape(1);
  if (topk < 0 || n_samples < 0 || method < 0 || method > 2) throw std::invalid_argument("internal error: marg");
  if (method == 0 && n > prefcal::marg::kMaxExact) throw std::invalid_argument("internal error: exact with n > 30");
  bool global = false;
  const uint8_t* mk = mask_ptr(mask, rows, n, &global);
  py::array_t<double> out = topk == 0 ? py::array_t<double>({rows, n, n}) : py::array_t<double>({rows, n});
  double* o = out.mutable_data();
  const void* ps = scores.data();
  int64_t bad = 0;
  prefcal::bind::dispatch_float(dtype_of(scores), "scores", [&](auto ts) {
    using T = decltype(ts);
    const T* sp = static_cast<const T*>(ps);
    py::gil_scoped_release nogil;
    if (method == 0) bad = prefcal::cpu::marg_exact(sp, rows, n, mk, global, topk, o);
    if (method == 1) bad = prefcal::cpu::marg_integral(sp, rows, n, mk, global, topk, o);
    if (method == 2) bad = prefcal::cpu::marg_mc(sp, rows, n, mk, global, topk, n_samples, seed, o);
  });
  return py::make_tuple(out, bad);
}

py::tuple marg_from_samples(const py::array& samples, int64_t n) {
  require(samples, 3, "samples");
  const int64_t rows = samples.shape(0), size = samples.shape(1), m = samples.shape(2);
  py::array_t<double> out({rows, n, n});
  double* o = out.mutable_data();
  const void* pr = samples.data();
  int64_t bad = 0;
  prefcal::bind::dispatch_label(dtype_of(samples), "samples", [&](auto ti) {
    using I = decltype(ti);
    py::gil_scoped_release nogil;
    bad = prefcal::cpu::marg_from_samples(static_cast<const I*>(pr), rows, size, m, n, o);
  });
  return py::make_tuple(out, bad);
}

py::tuple marg_empirical(const py::array& rankings, const py::object& mask, const py::object& weights, int64_t n,
                         bool pairwise) {
  require(rankings, 2, "rankings");
  const int64_t rows = rankings.shape(0), m = rankings.shape(1);
  bool global = false;
  const uint8_t* mk = mask_ptr(mask, rows, n, &global);
  const double* w = weights_ptr(weights, rows);
  py::array_t<double> out({n, n});
  double* o = out.mutable_data();
  const void* pr = rankings.data();
  int64_t bad = 0;
  prefcal::bind::dispatch_label(dtype_of(rankings), "rankings", [&](auto ti) {
    using I = decltype(ti);
    py::gil_scoped_release nogil;
    bad = prefcal::cpu::marg_empirical(static_cast<const I*>(pr), rows, m, n, mk, global, w, pairwise, o);
  });
  return py::make_tuple(out, bad);
}

py::dict build_info() {
  py::dict d;
  d["version"] = PREFCAL_VERSION_INFO;
  d["compiler"] = PREFCAL_COMPILER_INFO;
  d["build_type"] = PREFCAL_BUILD_TYPE_INFO;
  d["openmp"] = prefcal::cpu::have_openmp();
  return d;
}


// ---------------------------------------------------------------- calibration hierarchy (prefcal.ranking)
void require_dtype(const py::array& a, DType want, const char* name) {
  if (dtype_of(a) != want) throw std::invalid_argument(std::string("internal error: ") + name + " has the wrong dtype");
}

// Optional log-spacing edges (B + 1 float64) or null for uniform bins.
const double* edges_ptr(const py::object& edges, int32_t n_bins) {
  if (edges.is_none()) return nullptr;
  auto e = edges.cast<py::array>();
  require(e, 1, "edges");
  require_dtype(e, DType::kF64, "edges");
  if (e.shape(0) != n_bins + 1) throw std::invalid_argument("internal error: edges");
  return static_cast<const double*>(e.data());
}

// Optional boolean row filter of length rows.
const uint8_t* keep_ptr(const py::object& keep, int64_t rows) {
  if (keep.is_none()) return nullptr;
  auto e = keep.cast<py::array>();
  require(e, 1, "keep");
  if (e.dtype().kind() != 'b' || e.shape(0) != rows) throw std::invalid_argument("internal error: keep");
  return static_cast<const uint8_t*>(e.data());
}

// The classes' items (C, k) int32, each checked to be an item of 0..n-1.
const int32_t* class_items(const py::array& classes, int64_t n) {
  const int32_t* cl = static_cast<const int32_t*>(classes.data());
  const int64_t count = classes.shape(0) * classes.shape(1);
  for (int64_t i = 0; i < count; ++i) {
    if (cl[i] < 0 || cl[i] >= n) throw std::invalid_argument("internal error: class item out of range");
  }
  return cl;
}

py::array_t<double> rank_classwise(const py::array& scores, const py::array& keys, const py::array& classes, bool top,
                                   int32_t n_bins, const py::object& edges, const py::object& keep) {
  require(scores, 2, "scores");
  require(keys, 2, "keys");
  require(classes, 2, "classes");
  require_dtype(scores, DType::kF64, "scores");
  require_dtype(keys, DType::kF64, "keys");
  require_dtype(classes, DType::kI32, "classes");
  const int64_t rows = keys.shape(0), n = keys.shape(1), nc = classes.shape(0), k = classes.shape(1);
  if (scores.shape(1) != n || (scores.shape(0) != 1 && scores.shape(0) != rows) || k < 1 || k > n || n_bins < 1) {
    throw std::invalid_argument("internal error: rank_classwise shapes");
  }
  const int32_t* cl = class_items(classes, n);
  const double* ed = edges_ptr(edges, n_bins);
  const uint8_t* kp = keep_ptr(keep, rows);
  py::array_t<double> out({nc, int64_t(3), int64_t(n_bins)});
  double* o = out.mutable_data();
  const double* sp = static_cast<const double*>(scores.data());
  const double* kk = static_cast<const double*>(keys.data());
  const int64_t score_rows = scores.shape(0);
  {
    py::gil_scoped_release nogil;
    prefcal::cpu::rank_classwise(sp, score_rows, kk, rows, n, cl, nc, k, top, n_bins, ed, kp, o);
  }
  return out;
}

py::array_t<double> rank_classwise_subsets(const py::array& scores, const py::array& keys, int64_t k,
                                           const py::array& slot, int64_t n_classes, int32_t n_bins,
                                           const py::object& edges, const py::object& keep) {
  require(scores, 2, "scores");
  require(keys, 2, "keys");
  require(slot, 1, "slot");
  require_dtype(scores, DType::kF64, "scores");
  require_dtype(keys, DType::kF64, "keys");
  require_dtype(slot, DType::kI32, "slot");
  const int64_t rows = keys.shape(0), n = keys.shape(1);
  if (scores.shape(1) != n || (scores.shape(0) != 1 && scores.shape(0) != rows) || k < 2 || k > n || k > 12 ||
      n_bins < 1) {
    throw std::invalid_argument("internal error: rank_classwise_subsets shapes");
  }
  int64_t count = 1, kf = 1;
  for (int64_t j = 0; j < k; ++j) count = count * (n - j) / (j + 1);
  for (int64_t j = 2; j <= k; ++j) kf *= j;
  if (slot.shape(0) != count * kf) throw std::invalid_argument("internal error: slot size");
  const int32_t* sl = static_cast<const int32_t*>(slot.data());
  for (int64_t i = 0; i < count * kf; ++i) {
    if (sl[i] < -1 || sl[i] >= n_classes) throw std::invalid_argument("internal error: slot out of range");
  }
  const double* ed = edges_ptr(edges, n_bins);
  const uint8_t* kp = keep_ptr(keep, rows);
  py::array_t<double> out({n_classes, int64_t(3), int64_t(n_bins)});
  double* o = out.mutable_data();
  const double* sp = static_cast<const double*>(scores.data());
  const double* kk = static_cast<const double*>(keys.data());
  const int64_t score_rows = scores.shape(0);
  {
    py::gil_scoped_release nogil;
    prefcal::cpu::rank_classwise_subsets(sp, score_rows, kk, rows, n, k, sl, count * kf, n_classes, n_bins, ed, kp, o);
  }
  return out;
}

py::array_t<double> rank_classwise_table(const py::array& probs, const py::array& indptr, const py::array& idx,
                                         const py::array& keys, const py::array& classes, bool top, int32_t n_bins,
                                         const py::object& edges, const py::object& keep) {
  require(probs, 2, "probs");
  require(indptr, 1, "indptr");
  require(idx, 1, "idx");
  require(keys, 2, "keys");
  require(classes, 2, "classes");
  require_dtype(probs, DType::kF64, "probs");
  require_dtype(indptr, DType::kI64, "indptr");
  require_dtype(idx, DType::kI32, "idx");
  require_dtype(keys, DType::kF64, "keys");
  require_dtype(classes, DType::kI32, "classes");
  const int64_t rows = keys.shape(0), n = keys.shape(1), nc = classes.shape(0), k = classes.shape(1);
  const int64_t n_orders = probs.shape(1);
  if (probs.shape(0) != rows || indptr.shape(0) != nc + 1 || k < 1 || k > n || n_bins < 1) {
    throw std::invalid_argument("internal error: rank_classwise_table shapes");
  }
  const int64_t* ip = static_cast<const int64_t*>(indptr.data());
  const int32_t* ix = static_cast<const int32_t*>(idx.data());
  if (ip[0] != 0 || ip[nc] != idx.shape(0)) throw std::invalid_argument("internal error: indptr");
  for (int64_t c = 0; c < nc; ++c) {
    if (ip[c + 1] < ip[c]) throw std::invalid_argument("internal error: indptr order");
  }
  for (int64_t e = 0; e < idx.shape(0); ++e) {
    if (ix[e] < 0 || ix[e] >= n_orders) throw std::invalid_argument("internal error: idx out of range");
  }
  const int32_t* cl = class_items(classes, n);
  const double* ed = edges_ptr(edges, n_bins);
  const uint8_t* kp = keep_ptr(keep, rows);
  py::array_t<double> out({nc, int64_t(3), int64_t(n_bins)});
  double* o = out.mutable_data();
  const double* pp = static_cast<const double*>(probs.data());
  const double* kk = static_cast<const double*>(keys.data());
  {
    py::gil_scoped_release nogil;
    prefcal::cpu::rank_classwise_table(pp, rows, n_orders, ip, ix, kk, n, cl, nc, k, top, n_bins, ed, kp, o);
  }
  return out;
}

void rank_classwise_given(const py::array& pmat, const py::array& keys, const py::array& classes, bool top,
                          const py::object& edges, const py::object& keep, py::array& tables) {
  require(pmat, 2, "pmat");
  require(keys, 2, "keys");
  require(classes, 2, "classes");
  require(tables, 3, "tables");
  require_dtype(pmat, DType::kF64, "pmat");
  require_dtype(keys, DType::kF64, "keys");
  require_dtype(classes, DType::kI32, "classes");
  require_dtype(tables, DType::kF64, "tables");
  const int64_t rows = keys.shape(0), n = keys.shape(1), nc = classes.shape(0), k = classes.shape(1);
  const int32_t n_bins = static_cast<int32_t>(tables.shape(2));
  if (pmat.shape(0) != rows || pmat.shape(1) != nc || tables.shape(0) != nc || tables.shape(1) != 3 || k < 1 ||
      k > n || n_bins < 1 || !tables.writeable()) {
    throw std::invalid_argument("internal error: rank_classwise_given shapes");
  }
  const int32_t* cl = class_items(classes, n);
  const double* ed = edges_ptr(edges, n_bins);
  const uint8_t* kp = keep_ptr(keep, rows);
  double* o = static_cast<double*>(tables.mutable_data());
  const double* pp = static_cast<const double*>(pmat.data());
  const double* kk = static_cast<const double*>(keys.data());
  py::gil_scoped_release nogil;
  prefcal::cpu::rank_classwise_given(pp, kk, rows, n, cl, nc, k, top, n_bins, ed, kp, o);
}

py::array_t<double> rank_classwise_grouped(const py::array& probs, const py::array& indptr, const py::array& idx,
                                           const py::array& keys, int64_t k, bool top, const py::array& cls_group,
                                           const py::array& cls_rank, const py::array& groups,
                                           const py::array& row_class, int32_t n_bins, const py::object& edges,
                                           const py::object& keep) {
  require(probs, 2, "probs");
  require(indptr, 1, "indptr");
  require(idx, 1, "idx");
  require(keys, 2, "keys");
  require(cls_group, 1, "cls_group");
  require(cls_rank, 1, "cls_rank");
  require(groups, 2, "groups");
  require(row_class, 1, "row_class");
  require_dtype(probs, DType::kF64, "probs");
  require_dtype(indptr, DType::kI64, "indptr");
  require_dtype(idx, DType::kI32, "idx");
  require_dtype(keys, DType::kF64, "keys");
  require_dtype(cls_group, DType::kI32, "cls_group");
  require_dtype(cls_rank, DType::kI32, "cls_rank");
  require_dtype(groups, DType::kI32, "groups");
  require_dtype(row_class, DType::kI32, "row_class");
  const int64_t rows = keys.shape(0), n = keys.shape(1), nc = cls_group.shape(0), n_orders = probs.shape(1);
  const int64_t ng = groups.shape(0);
  int64_t kf = 1;
  for (int64_t j = 2; j <= k; ++j) kf *= j;
  if (probs.shape(0) != rows || indptr.shape(0) != nc + 1 || cls_rank.shape(0) != nc || k < 1 || k > n ||
      k > 12 || n_bins < 1 || (top && row_class.shape(0) != rows) || (!top && groups.shape(1) != k) || nc < 1) {
    throw std::invalid_argument("internal error: rank_classwise_grouped shapes");
  }
  const int64_t* ip = static_cast<const int64_t*>(indptr.data());
  const int32_t* ix = static_cast<const int32_t*>(idx.data());
  const int32_t* cg = static_cast<const int32_t*>(cls_group.data());
  const int32_t* cr = static_cast<const int32_t*>(cls_rank.data());
  const int32_t* gp = static_cast<const int32_t*>(groups.data());
  const int32_t* rc = static_cast<const int32_t*>(row_class.data());
  if (ip[0] != 0 || ip[nc] != idx.shape(0)) throw std::invalid_argument("internal error: indptr");
  for (int64_t c = 0; c < nc; ++c) {
    if (ip[c + 1] < ip[c]) throw std::invalid_argument("internal error: indptr order");
    if (!top && (cg[c] < 0 || cg[c] >= ng || (c > 0 && cg[c] < cg[c - 1]) || cr[c] < 0 || cr[c] >= kf)) {
      throw std::invalid_argument("internal error: class groups");
    }
  }
  for (int64_t e = 0; e < idx.shape(0); ++e) {
    if (ix[e] < 0 || ix[e] >= n_orders) throw std::invalid_argument("internal error: idx out of range");
  }
  if (!top) {
    for (int64_t i = 0; i < ng * k; ++i) {
      if (gp[i] < 0 || gp[i] >= n) throw std::invalid_argument("internal error: group item out of range");
    }
  } else {
    for (int64_t b = 0; b < rows; ++b) {
      if (rc[b] < -2 || rc[b] >= nc) throw std::invalid_argument("internal error: row class");
    }
  }
  const double* ed = edges_ptr(edges, n_bins);
  const uint8_t* kp = keep_ptr(keep, rows);
  py::array_t<double> out({nc, int64_t(3), int64_t(n_bins)});
  double* o = out.mutable_data();
  const double* pp = static_cast<const double*>(probs.data());
  const double* kk = static_cast<const double*>(keys.data());
  {
    py::gil_scoped_release nogil;
    prefcal::cpu::rank_classwise_grouped(pp, rows, n_orders, ip, ix, kk, n, k, top, cg, cr, nc, gp, rc, n_bins, ed, kp,
                                         o);
  }
  return out;
}

py::tuple rank_keys(const py::array& rankings, const py::object& mask, int64_t n) {
  require(rankings, 2, "rankings");
  require_dtype(rankings, DType::kI64, "rankings");
  const int64_t rows = rankings.shape(0), m = rankings.shape(1);
  if (m > n) throw std::invalid_argument("internal error: rank_keys shapes");
  bool global = false;
  const uint8_t* mk = mask_ptr(mask, rows, n, &global);
  py::array_t<double> out({rows, n});
  double* o = out.mutable_data();
  const int64_t* r = static_cast<const int64_t*>(rankings.data());
  int64_t bad = 0;
  {
    py::gil_scoped_release nogil;
    bad = prefcal::cpu::rank_keys(r, rows, m, n, mk, global, o);
  }
  return py::make_tuple(out, bad);
}

py::array_t<uint8_t> rank_seen_subsets(const py::array& keys, int64_t k) {
  require(keys, 2, "keys");
  require_dtype(keys, DType::kF64, "keys");
  const int64_t rows = keys.shape(0), n = keys.shape(1);
  if (k < 2 || k > n || k > 12) throw std::invalid_argument("internal error: rank_seen_subsets k");
  int64_t count = 1, kf = 1;
  for (int64_t j = 0; j < k; ++j) count = count * (n - j) / (j + 1);
  for (int64_t j = 2; j <= k; ++j) kf *= j;
  py::array_t<uint8_t> out(count * kf);
  uint8_t* o = out.mutable_data();
  const double* kk = static_cast<const double*>(keys.data());
  {
    py::gil_scoped_release nogil;
    prefcal::cpu::rank_seen_subsets(kk, rows, n, k, o);
  }
  return out;
}

py::array_t<int64_t> rank_observed_tops(const py::array& keys, int64_t k) {
  require(keys, 2, "keys");
  require_dtype(keys, DType::kF64, "keys");
  const int64_t rows = keys.shape(0), n = keys.shape(1);
  if (k < 1 || k > n || static_cast<double>(k) * std::log2(static_cast<double>(std::max<int64_t>(n, 2))) >= 62.0) {
    throw std::invalid_argument("internal error: rank_observed_tops k");
  }
  py::array_t<int64_t> out(rows);
  int64_t* o = out.mutable_data();
  const double* kk = static_cast<const double*>(keys.data());
  {
    py::gil_scoped_release nogil;
    prefcal::cpu::rank_observed_tops(kk, rows, n, k, o);
  }
  return out;
}

py::array_t<double> rank_sample_probs(const py::array& samples, const py::array& classes, int mode) {
  require(samples, 3, "samples");
  require(classes, 2, "classes");
  require_dtype(samples, DType::kI64, "samples");
  require_dtype(classes, DType::kI32, "classes");
  const int64_t rows = samples.shape(0), size = samples.shape(1), n = samples.shape(2);
  const int64_t nc = classes.shape(0), k = classes.shape(1);
  if (mode < 0 || mode > 2 || size < 1 || k < 1 || k > n) {
    throw std::invalid_argument("internal error: rank_sample_probs arguments");
  }
  const int32_t* cl = class_items(classes, n);
  py::array_t<double> out({rows, nc});
  double* o = out.mutable_data();
  const int64_t* sp = static_cast<const int64_t*>(samples.data());
  int64_t bad;
  {
    py::gil_scoped_release nogil;
    bad = prefcal::cpu::rank_sample_probs(sp, rows, size, n, cl, nc, k, mode, o);
  }
  if (bad != prefcal::kNoError) {
    throw std::invalid_argument("internal error: samples of row " + std::to_string(bad) + " are not permutations");
  }
  return out;
}

py::tuple rank_top_label(const py::array& scores, const py::array& keys, int level, const py::object& groups,
                         int64_t k, int32_t n_bins) {
  require(scores, 2, "scores");
  require(keys, 2, "keys");
  require_dtype(scores, DType::kF64, "scores");
  require_dtype(keys, DType::kF64, "keys");
  const int64_t rows = keys.shape(0), n = keys.shape(1);
  if (scores.shape(1) != n || (scores.shape(0) != 1 && scores.shape(0) != rows) || k < 1 || k > n || n_bins < 1 ||
      level < 0 || level > 2 || (level == 2 && k > 20)) {
    throw std::invalid_argument("internal error: rank_top_label arguments");
  }
  const int32_t* gp = nullptr;
  int64_t ng = 0;
  if (level == 0) {
    auto g = groups.cast<py::array>();
    require(g, 2, "groups");
    require_dtype(g, DType::kI32, "groups");
    if (g.shape(1) != k) throw std::invalid_argument("internal error: groups");
    gp = static_cast<const int32_t*>(g.data());
    ng = g.shape(0);
    for (int64_t i = 0; i < ng * k; ++i) {
      if (gp[i] < 0 || gp[i] >= n) throw std::invalid_argument("internal error: group item out of range");
    }
  }
  py::array_t<double> out({int64_t(3), int64_t(n_bins)});
  double* o = out.mutable_data();
  const double* sp = static_cast<const double*>(scores.data());
  const double* kk = static_cast<const double*>(keys.data());
  const int64_t score_rows = scores.shape(0);
  int64_t skipped = 0;
  {
    py::gil_scoped_release nogil;
    skipped = prefcal::cpu::rank_top_label(sp, score_rows, kk, rows, n, level, gp, ng, k, n_bins, o);
  }
  return py::make_tuple(out, skipped);
}

py::tuple rank_marginal_hist(const py::array& P, const py::array& keys, int64_t k, int32_t n_bins) {
  require(P, 3, "P");
  require(keys, 2, "keys");
  require_dtype(P, DType::kF64, "P");
  require_dtype(keys, DType::kF64, "keys");
  const int64_t rows = keys.shape(0), n = keys.shape(1);
  if (P.shape(1) != n || P.shape(2) != n || (P.shape(0) != 1 && P.shape(0) != rows) || k < 0 || k > n ||
      n_bins < 1) {
    throw std::invalid_argument("internal error: rank_marginal_hist arguments");
  }
  py::array_t<double> out({int64_t(3), int64_t(n_bins)});
  double* o = out.mutable_data();
  const double* pp = static_cast<const double*>(P.data());
  const double* kk = static_cast<const double*>(keys.data());
  const int64_t p_rows = P.shape(0);
  int64_t skipped = 0;
  {
    py::gil_scoped_release nogil;
    skipped = prefcal::cpu::rank_marginal_hist(pp, p_rows, kk, rows, n, k, n_bins, o);
  }
  return py::make_tuple(out, skipped);
}

double rank_canonical(const py::array& probs, const py::array& labels, double h, double p) {
  require(probs, 2, "probs");
  require(labels, 1, "labels");
  require_dtype(probs, DType::kF64, "probs");
  require_dtype(labels, DType::kI64, "labels");
  const int64_t rows = probs.shape(0), c = probs.shape(1);
  if (labels.shape(0) != rows || !(h > 0) || !(p > 0)) throw std::invalid_argument("internal error: rank_canonical");
  const int64_t* lb = static_cast<const int64_t*>(labels.data());
  for (int64_t i = 0; i < rows; ++i) {
    if (lb[i] >= c) throw std::invalid_argument("internal error: label out of range");
  }
  const double* pp = static_cast<const double*>(probs.data());
  py::gil_scoped_release nogil;
  return prefcal::cpu::rank_canonical(pp, lb, rows, c, h, p);
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
  m.def("pl_loglik", &pl_loglik, py::arg("scores").noconvert(), py::arg("rankings").noconvert(),
        py::arg("mask").none(true), py::arg("want_grad"));
  m.def("pl_temperature", &pl_temperature, py::arg("scores").noconvert(), py::arg("rankings").noconvert(),
        py::arg("mask").none(true), py::arg("beta"));
  m.def("pl_sample", &pl_sample, py::arg("scores").noconvert(), py::arg("mask").none(true), py::arg("size"),
        py::arg("k"), py::arg("seed"), py::arg("noise"));
  m.def("pl_pairwise", &pl_pairwise, py::arg("scores").noconvert());
  m.def("pl_fit_setup", &pl_fit_setup, py::arg("rankings").noconvert(), py::arg("mask").none(true),
        py::arg("weights").none(true), py::arg("n"));
  m.def("pl_fit_pass", &pl_fit_pass, py::arg("rankings").noconvert(), py::arg("mask").none(true),
        py::arg("weights").none(true), py::arg("theta").noconvert(), py::arg("want_q"), py::arg("want_ll"));
  m.def("marg_model", &marg_model, py::arg("scores").noconvert(), py::arg("mask").none(true), py::arg("method"),
        py::arg("topk"), py::arg("n_samples"), py::arg("seed"));
  m.def("marg_from_samples", &marg_from_samples, py::arg("samples").noconvert(), py::arg("n"));
  m.def("marg_empirical", &marg_empirical, py::arg("rankings").noconvert(), py::arg("mask").none(true),
        py::arg("weights").none(true), py::arg("n"), py::arg("pairwise"));
  m.def("marg_deflate", &marg_deflate, py::arg("poly"), py::arg("a"), py::arg("b"));
  m.def("rank_classwise", &rank_classwise, py::arg("scores").noconvert(), py::arg("keys").noconvert(),
        py::arg("classes").noconvert(), py::arg("top"), py::arg("n_bins"), py::arg("edges").none(true),
        py::arg("keep").none(true));
  m.def("rank_classwise_subsets", &rank_classwise_subsets, py::arg("scores").noconvert(), py::arg("keys").noconvert(),
        py::arg("k"), py::arg("slot").noconvert(), py::arg("n_classes"), py::arg("n_bins"), py::arg("edges").none(true),
        py::arg("keep").none(true));
  m.def("rank_classwise_table", &rank_classwise_table, py::arg("probs").noconvert(), py::arg("indptr").noconvert(),
        py::arg("idx").noconvert(), py::arg("keys").noconvert(), py::arg("classes").noconvert(), py::arg("top"),
        py::arg("n_bins"), py::arg("edges").none(true), py::arg("keep").none(true));
  m.def("rank_classwise_given", &rank_classwise_given, py::arg("pmat").noconvert(), py::arg("keys").noconvert(),
        py::arg("classes").noconvert(), py::arg("top"), py::arg("edges").none(true), py::arg("keep").none(true),
        py::arg("tables").noconvert());
  m.def("rank_classwise_grouped", &rank_classwise_grouped, py::arg("probs").noconvert(),
        py::arg("indptr").noconvert(), py::arg("idx").noconvert(), py::arg("keys").noconvert(), py::arg("k"),
        py::arg("top"), py::arg("cls_group").noconvert(), py::arg("cls_rank").noconvert(), py::arg("groups").noconvert(),
        py::arg("row_class").noconvert(), py::arg("n_bins"), py::arg("edges").none(true), py::arg("keep").none(true));
  m.def("rank_keys", &rank_keys, py::arg("rankings").noconvert(), py::arg("mask").none(true), py::arg("n"));
  m.def("rank_seen_subsets", &rank_seen_subsets, py::arg("keys").noconvert(), py::arg("k"));
  m.def("rank_observed_tops", &rank_observed_tops, py::arg("keys").noconvert(), py::arg("k"));
  m.def("rank_sample_probs", &rank_sample_probs, py::arg("samples").noconvert(), py::arg("classes").noconvert(),
        py::arg("mode"));
  m.def("rank_top_label", &rank_top_label, py::arg("scores").noconvert(), py::arg("keys").noconvert(),
        py::arg("level"), py::arg("groups").none(true), py::arg("k"), py::arg("n_bins"));
  m.def("rank_marginal_hist", &rank_marginal_hist, py::arg("P").noconvert(), py::arg("keys").noconvert(), py::arg("k"),
        py::arg("n_bins"));
  m.def("rank_canonical", &rank_canonical, py::arg("probs").noconvert(), py::arg("labels").noconvert(), py::arg("h"),
        py::arg("p"));
  m.def("fastmath", &fastmath, py::arg("name"), py::arg("x").noconvert());
  m.def("pl_loglik_exact", &pl_loglik_exact, py::arg("scores").noconvert(), py::arg("rankings").noconvert());
  m.def("pl_loglik_small", &pl_loglik_small, py::arg("scores").noconvert(), py::arg("rankings").noconvert(),
        py::arg("mask").none(true), py::arg("fixed") = false);
  m.def("pl_sample_small", &pl_sample_small, py::arg("scores").noconvert(), py::arg("mask").none(true),
        py::arg("size"), py::arg("k"), py::arg("seed"), py::arg("noise"));
  m.def("pl_sample_insertion", &pl_sample_insertion, py::arg("scores").noconvert(),
        py::arg("mask").none(true), py::arg("size"), py::arg("k"), py::arg("seed"), py::arg("noise"));
  m.def("gumbel_f32", &gumbel_f32, py::arg("a").noconvert(), py::arg("b").noconvert());
  m.def("set_sample_f32", &prefcal::cpu::set_sample_f32, py::arg("on"));
  m.def("sample_f32_fallbacks", &prefcal::cpu::sample_f32_fallbacks);
  m.def("sample_f32_group", &prefcal::cpu::sample_f32_group);
  m.def("simd_level", &prefcal::cpu::simd_level);
  m.def("set_simd_cap", &prefcal::cpu::set_simd_cap, py::arg("cap"));
  m.def("set_loglik_explicit", &prefcal::cpu::set_loglik_explicit, py::arg("on"));
  m.def("set_temperature_lanes", &prefcal::cpu::set_temperature_lanes, py::arg("on"));
  m.def("set_loglik_lanes", &prefcal::cpu::set_loglik_lanes, py::arg("on"));
  m.attr("GUMBEL_F32_ERROR") = py::float_(prefcal::cpu::gumbel_f32_error());
  m.def("set_num_threads", &prefcal::cpu::set_num_threads, py::arg("n"));
  m.def("num_threads", &prefcal::cpu::num_threads);
  m.def("build_info", &build_info);
  m.attr("NO_ERROR") = py::int_(prefcal::kNoError);
  m.attr("MAX_BINS") = py::int_(prefcal::kMaxBins);
}
