"""CPU benchmarks of the calibration hierarchy (pytest-benchmark).

    python -m pytest benchmarks/bench_ranking.py --benchmark-only

Groups (rows/s in the summary are rows of the data set; events/s are printed and kept in extra_info):
* rank-sub3-1e6x10: classwise sub-3 ECE over 10^6 PL rows of 10 items (720 classes, 7.2e8 events), one call
  end to end (keys, observed classes, the fused kernel): the issue's target is >= 3e8 events/s on 2 cores;
* rank-sub3-1e4x10: the same at 10^4 rows against prefcal's NumPy reference (the oracle);
* rank-sweep-explicit-1e4x10: the paper's sweep (sub-k k = 2..10, top-k k = 1..9) of an explicit model of 50
  orderings (the reference code's input form; benchmarks/refcode_sweep.py runs the reference code on it);
* rank-canonical-1e4x6: the Dirichlet-kernel canonical estimator, C++ against the NumPy reference;
* rank-explicit-sub3-1e4x10: sub-3 alone for that model;
* rank-empirical-sub3-2e3x10: sub-3 of an empirical model (100 sampled orderings per row), C++ against the
  NumPy reference;
* the memory copy bandwidth.
The comparison with the paper's reference code is benchmarks/refcode_sweep.py (it needs that code's path).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import copy_bandwidth
from prefcal import _reference, config, pl, ranking

N_BIG, N_SMALL, ITEMS = 10**6, 10**4, 10


@pytest.fixture(scope="module")
def big():
    s = np.random.default_rng(0).normal(size=(N_BIG, ITEMS))
    obs = np.asarray(pl.sample(s * 1.2, seed=1))[:, 0].astype(np.int64)
    return s, obs


@pytest.fixture(scope="module")
def small():
    s = np.random.default_rng(2).normal(size=(N_SMALL, ITEMS))
    obs = np.asarray(pl.sample(s * 1.2, seed=3))[:, 0].astype(np.int64)
    return s, obs


def test_copy_bandwidth(benchmark, recorder):
    copy_bandwidth(benchmark, recorder)


def _events(benchmark, events):
    median = benchmark.stats.stats.median if getattr(benchmark, "stats", None) else None
    if median:
        benchmark.extra_info["events_per_s"] = events / median
        print(f"{events:.3g} events, {events / median / 1e6:.1f} M events/s")


def _on_backend(benchmark, impl, fn, rounds):
    """Times fn on the NumPy reference when impl names it, else on the C++ kernels."""
    config.set_backend("numpy" if "NumPy" in impl else None)
    try:
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
    finally:
        config.set_backend(None)


def test_sub3_big(benchmark, recorder, big):
    s, obs = big
    benchmark.group = "rank-sub3-1e6x10"
    res = benchmark.pedantic(lambda: ranking.subranking_ece(s, obs, 3), rounds=5, warmup_rounds=1)
    assert res.n_classes == 720
    _events(benchmark, N_BIG * 720)
    recorder(benchmark, "rank-sub3-1e6x10", "prefcal (C++)", N_BIG, s.nbytes + obs.nbytes)


@pytest.mark.parametrize("impl", ["prefcal (C++)", "prefcal NumPy reference"])
def test_sub3_small(benchmark, recorder, small, impl):
    s, obs = small
    benchmark.group = "rank-sub3-1e4x10"
    _on_backend(benchmark, impl, lambda: ranking.subranking_ece(s, obs, 3), 10 if "C++" in impl else 2)
    _events(benchmark, N_SMALL * 720)
    recorder(benchmark, "rank-sub3-1e4x10", impl, N_SMALL, s.nbytes + obs.nbytes)


@pytest.fixture(scope="module")
def explicit():
    """An explicit model of 50 orderings of 10 items per row (the reference code's input form) and orderings
    drawn from it."""
    rng = np.random.default_rng(5)
    orders = np.unique(np.array([rng.permutation(ITEMS) for _ in range(50)]), axis=0)
    probs = rng.dirichlet(np.ones(len(orders)) * 0.3, size=N_SMALL)
    obs = orders[(probs.cumsum(1) > rng.random((N_SMALL, 1))).argmax(1)]
    return ranking.Explicit(orders, probs), obs


def test_sweep_explicit(benchmark, recorder, explicit):
    model, obs = explicit
    benchmark.group = "rank-sweep-explicit-1e4x10"
    table = benchmark.pedantic(lambda: ranking.sweep(model, obs), rounds=3, warmup_rounds=1)
    events = sum(r["n_events"] for r in table.records)
    _events(benchmark, events)
    recorder(
        benchmark, "rank-sweep-explicit-1e4x10", "prefcal (C++)", N_SMALL, model.probs.nbytes + obs.nbytes
    )


@pytest.mark.parametrize("impl", ["prefcal (C++)", "prefcal NumPy reference"])
def test_canonical(benchmark, recorder, impl):
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(6), size=N_SMALL)
    labels = (probs.cumsum(1) > rng.random((N_SMALL, 1))).argmax(1).astype(np.int64)
    benchmark.group = "rank-canonical-1e4x6"
    if "C++" in impl:
        from prefcal import _backend

        cpu = _backend.cpu_module()
        fn = lambda: cpu.rank_canonical(probs, labels, 1.0, 1.0)  # noqa: E731
    else:
        fn = lambda: _reference.canonical_kernel(probs, labels, 1.0, 1.0)  # noqa: E731
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    _events(benchmark, N_SMALL * N_SMALL * 6)
    recorder(benchmark, "rank-canonical-1e4x6", impl, N_SMALL, probs.nbytes)


def test_explicit_sub3(benchmark, recorder, explicit):
    model, obs = explicit
    benchmark.group = "rank-explicit-sub3-1e4x10"
    res = benchmark.pedantic(lambda: ranking.subranking_ece(model, obs, 3), rounds=5, warmup_rounds=1)
    _events(benchmark, N_SMALL * res.n_classes)
    recorder(
        benchmark, "rank-explicit-sub3-1e4x10", "prefcal (C++)", N_SMALL, model.probs.nbytes + obs.nbytes
    )


@pytest.mark.parametrize("impl", ["prefcal (C++)", "prefcal NumPy reference"])
def test_empirical_sub3(benchmark, recorder, impl):
    rows, size = 2000, 100
    s = np.random.default_rng(6).normal(size=(rows, ITEMS))
    model = ranking.Empirical(np.asarray(pl.sample(s, size=size, seed=7)))
    obs = np.asarray(pl.sample(s * 1.2, seed=8))[:, 0].astype(np.int64)
    benchmark.group = "rank-empirical-sub3-2e3x10"
    _on_backend(benchmark, impl, lambda: ranking.subranking_ece(model, obs, 3), 5 if "C++" in impl else 1)
    _events(benchmark, rows * 720)
    recorder(benchmark, "rank-empirical-sub3-2e3x10", impl, rows, model.samples.nbytes + obs.nbytes)
