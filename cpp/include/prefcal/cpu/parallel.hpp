// OpenMP helpers of the CPU kernels: fixed chunks of work, so results never depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace prefcal::cpu {

int num_threads();

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int threads_for(int64_t n_chunks) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), n_chunks)));
}

// body(thread, chunk, lo, hi) for each fixed chunk [lo, hi) of [0, n), on up to nt threads. Exceptions (only
// std::bad_alloc can occur) are carried out of the parallel region. Chunks go to whichever thread is free
// (dynamic schedule: a core slowed by other work does not hold the call back); the bodies keep their results
// per chunk, or per thread only where the order cannot matter (integer counts, minima, scratch).
template <class Body>
void for_chunks(int64_t n, int64_t chunk, int nt, Body&& body) {
  const int64_t nc = (n + chunk - 1) / chunk;
  std::atomic<bool> failed{false};
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
#else
  (void)nt;
#endif
  for (int64_t k = 0; k < nc; ++k) {
    try {
      body(thread_id(), k, k * chunk, std::min(n, (k + 1) * chunk));
    } catch (...) {
      failed = true;
    }
  }
  if (failed) throw std::bad_alloc();
}

// Partial results of fixed chunks: one slab of `width` values per chunk, each slab on cache lines of its own
// (128-byte blocks: a line and the neighbour that processors fetch with it), so the chunks that run at once on
// different cores never write to one line, however often a kernel adds into its slab (false sharing cost some
// row-by-row reductions a third of their time on two cores). A chunk's body starts with open(c), which zeroes
// the slab on the core that fills it (zeroed by the constructor alone, the empirical pairwise counts took 13%
// longer); add_into sums the slabs in chunk order, so results do not depend on the thread count.
template <class T>
class Slabs {
  static constexpr int64_t kBlock = 128;
  static_assert(kBlock % sizeof(T) == 0, "a slab holds whole values");
  static constexpr int64_t kPer = kBlock / static_cast<int64_t>(sizeof(T));

 public:
  Slabs(int64_t n_chunks, int64_t width)
      : n_chunks_(n_chunks),
        width_(width),
        stride_((width + kPer - 1) / kPer * kPer),
        data_(static_cast<size_t>(n_chunks * stride_ + kPer), T(0)) {
    const auto at = reinterpret_cast<std::uintptr_t>(data_.data());
    base_ = data_.data() + (kBlock - static_cast<int64_t>(at % kBlock)) % kBlock / static_cast<int64_t>(sizeof(T));
  }
  T* open(int64_t c) {
    T* p = (*this)[c];
    std::fill(p, p + width_, T(0));
    return p;
  }
  T* operator[](int64_t c) { return base_ + c * stride_; }
  const T* operator[](int64_t c) const { return base_ + c * stride_; }
  // out[i] = the sum over the chunks, in chunk order, of slab[c][i] (width values).
  void add_into(T* out) const {
    std::fill(out, out + width_, T(0));
    for (int64_t c = 0; c < n_chunks_; ++c) {
      const T* p = (*this)[c];
      for (int64_t i = 0; i < width_; ++i) out[i] += p[i];
    }
  }

 private:
  int64_t n_chunks_, width_, stride_;
  std::vector<T> data_;
  T* base_;
};

}  // namespace prefcal::cpu
