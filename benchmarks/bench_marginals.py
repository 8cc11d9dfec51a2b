"""CPU benchmarks of the permutation marginals (pytest-benchmark).

    python -m pytest benchmarks/bench_marginals.py --benchmark-only

Peers measured in the same run:
* exact, 10^4 contexts of n = 8: a lean NumPy subset DP vectorised over the rows (the issue's comparison: no
  masks, no sorting, set-major tables), prefcal's NumPy reference (the same DP with masks, sorted and rescaled
  per set), and NumPy Monte Carlo with 1000 Gumbel-argsort samples per context;
* integral, 16 contexts of n = 50: prefcal's own Monte Carlo (C++) with enough samples to reach 1e-3
  absolute error, whose error is measured and reported;
* from_samples / empirical counts: NumPy np.add.at formulations;
* the memory copy bandwidth.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import copy_bandwidth
from prefcal import _reference, marginals, pl

EXACT_N, EXACT_ITEMS = 10**4, 8
INT_N, INT_ITEMS = 16, 50
MC_SAMPLES_1E3 = 1_500_000  # enough for ~1e-3 max error over 16 x 2500 cells (reported)


@pytest.fixture(scope="module")
def exact_scores():
    return np.random.default_rng(0).normal(size=(EXACT_N, EXACT_ITEMS)) * 2


@pytest.fixture(scope="module")
def integral_scores():
    return np.random.default_rng(1).normal(size=(INT_N, INT_ITEMS))


def numpy_subset_dp(scores):
    """P(item i at position j), (N, n, n), by a subset DP vectorised over the rows: worths scaled by each row's
    largest, tables set-major (each gather copies whole rows), h(S) = T(S) / W(rest of S)."""
    n_rows, n = scores.shape
    full = (1 << n) - 1
    u = np.exp(scores - scores.max(axis=1, keepdims=True)).T.copy()  # (n, N)
    sets = np.arange(1 << n)
    member = (sets[:, None] >> np.arange(n)) & 1
    rest = member[full ^ sets] @ u  # (2^n, N): W(rest of S)
    size = member.sum(axis=1)
    h = np.zeros((1 << n, n_rows))
    h[0] = 1.0 / rest[0]
    out = np.empty((n, n, n_rows))
    for j in range(n):
        layer = sets[size == j + 1]
        t = np.zeros((len(layer), n_rows))
        for i in range(n):
            has = (layer >> i) & 1 == 1
            g = h[layer[has] ^ (1 << i)]  # h(S - i) for the sets S of this layer holding i
            t[has] += u[i] * g
            out[i, j] = u[i] * g.sum(axis=0)
        if j + 1 < n:
            h[layer] = t / rest[layer]
    return out.transpose(2, 0, 1)


def numpy_mc(scores, n_samples, rng):
    n_rows, n = scores.shape
    out = np.zeros((n_rows, n, n))
    for _ in range(n_samples):  # one sample of every row per step (memory stays O(N n))
        order = np.argsort(-(scores + rng.gumbel(size=scores.shape)), axis=1)
        np.add.at(out, (np.arange(n_rows)[:, None], order, np.arange(n)[None, :]), 1.0)
    return out / n_samples


def test_copy_bandwidth(benchmark, recorder):
    copy_bandwidth(benchmark, recorder)


@pytest.mark.parametrize(
    "impl",
    [
        "prefcal exact (C++)",
        "NumPy subset DP",
        "prefcal exact reference (NumPy DP)",
        "NumPy Monte Carlo, 1000 samples",
    ],
)
def test_exact(benchmark, recorder, exact_scores, impl):
    s = exact_scores
    if impl == "prefcal exact (C++)":
        fn = lambda: marginals.positions(s, method="exact")  # noqa: E731
        rounds = 15
    elif impl == "NumPy subset DP":
        np.testing.assert_allclose(numpy_subset_dp(s), marginals.positions(s, method="exact"), atol=1e-13)
        fn = lambda: numpy_subset_dp(s)  # noqa: E731
        rounds = 5
    elif impl.startswith("prefcal exact reference"):
        fn = lambda: _reference.marg_exact(s, None, 0)  # noqa: E731
        rounds = 3
    else:
        rng = np.random.default_rng(2)
        fn = lambda: numpy_mc(s, 1000, rng)  # noqa: E731
        rounds = 1
    benchmark.group = "marg-exact-1e4x8"
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1 if rounds > 1 else 0)
    recorder(benchmark, "marg-exact-1e4x8", impl, EXACT_N, s.nbytes + EXACT_N * EXACT_ITEMS**2 * 8)


@pytest.mark.parametrize("impl", ["prefcal integral (C++)", "prefcal Monte Carlo to 1e-3 (C++)"])
def test_integral(benchmark, recorder, integral_scores, impl):
    s = integral_scores
    if impl == "prefcal integral (C++)":
        fn = lambda: marginals.positions(s, method="integral")  # noqa: E731
        rounds = 15
    else:
        fn = lambda: marginals.positions(s, method="mc", n_samples=MC_SAMPLES_1E3, seed=7)  # noqa: E731
        rounds = 1
    benchmark.group = "marg-integral-16x50"
    result = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1 if rounds > 1 else 0)
    reference = marginals.positions(s, method="integral")
    benchmark.extra_info["max_abs_error_vs_integral"] = float(np.abs(result - reference).max())
    print(f"{impl}: max abs error against the integral {np.abs(result - reference).max():.2e}")
    recorder(benchmark, "marg-integral-16x50", impl, INT_N, s.nbytes + INT_N * INT_ITEMS**2 * 8)


@pytest.mark.parametrize("impl", ["prefcal (C++)", "NumPy np.add.at"])
def test_from_samples(benchmark, recorder, exact_scores, impl):
    samples = pl.sample(exact_scores[:1000], 1000, seed=3)  # (1000, 1000, 8) int32
    if impl == "prefcal (C++)":
        fn = lambda: marginals.from_samples(samples, EXACT_ITEMS)  # noqa: E731
    else:

        def fn():
            out = np.zeros((1000, EXACT_ITEMS, EXACT_ITEMS))
            rows = np.broadcast_to(np.arange(1000)[:, None, None], samples.shape)
            pos = np.broadcast_to(np.arange(EXACT_ITEMS)[None, None, :], samples.shape)
            np.add.at(out, (rows, samples, pos), 1.0)
            return out / 1000

    benchmark.group = "marg-from-samples-1e3x1e3x8"
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    draws = samples.shape[0] * samples.shape[1]
    recorder(benchmark, "marg-from-samples-1e3x1e3x8", impl, draws, samples.nbytes)


@pytest.mark.parametrize("impl", ["prefcal empirical_pairwise (C++)", "NumPy pairwise counts"])
def test_empirical_pairwise(benchmark, recorder, exact_scores, impl):
    rankings = pl.sample(exact_scores, seed=4)[:, 0]
    rankings = np.repeat(rankings, 100, axis=0)  # 10^6 rankings of 8
    if impl.startswith("prefcal"):
        fn = lambda: marginals.empirical_pairwise(rankings, EXACT_ITEMS)  # noqa: E731
    else:

        def fn():
            pos = np.empty_like(rankings)
            np.put_along_axis(pos, rankings, np.arange(EXACT_ITEMS)[None, :], axis=1)
            return (pos[:, :, None] < pos[:, None, :]).sum(axis=0).astype(np.float64)

    benchmark.group = "marg-empirical-pairwise-1e6x8"
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    recorder(benchmark, "marg-empirical-pairwise-1e6x8", impl, rankings.shape[0], rankings.nbytes)
