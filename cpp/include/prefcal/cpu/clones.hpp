// Hot loops written for the compiler's vectoriser are compiled for AVX-512, AVX2 (with FMA: x86-64-v3, every
// AVX2 processor but a few low-end ones, which take the baseline) and the baseline, and the best one for the CPU
// is picked at load time (GCC function multi-versioning on Linux x86-64). GCC before 11 knows no x86-64-v3
// clone: plain AVX2 there.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(PREFCAL_NO_CLONES)
#if __GNUC__ >= 11
#define PREFCAL_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#else
#define PREFCAL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define PREFCAL_CLONES
#endif
