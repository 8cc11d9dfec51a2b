// Hot loops written for the compiler's vectoriser are compiled for AVX-512, AVX2 and the baseline, and the
// best one for the CPU is picked at load time (GCC function multi-versioning on Linux x86-64).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(PREFCAL_NO_CLONES)
#define PREFCAL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PREFCAL_CLONES
#endif
