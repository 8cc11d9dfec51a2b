// OpenMP helpers of the CPU kernels: fixed chunks of work, so results never depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <new>

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

}  // namespace prefcal::cpu
