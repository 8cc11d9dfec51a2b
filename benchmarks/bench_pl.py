"""CPU benchmarks of the Plackett-Luce engine (pytest-benchmark).

    python -m pytest benchmarks/bench_pl.py --benchmark-only

Peers measured in the same run:
* log-likelihood of 10^6 full rankings of 10 items (float32 scores, int32 rankings: 80 bytes per row): the
  NumPy formulation (gather + reverse cumulative log-sum-exp, no validation), the same in torch
  (gather + logcumsumexp), and prefcal's NumPy reference;
  and, for the value with the gradient, torch autograd of that formulation (a ListMLE forward + backward);
* sampling 10^6 x 10: NumPy and torch Gumbel-argsort;
* fitting one PL model to 10^5 full rankings of 20 items: prefcal's NumPy MM reference at the same
  tolerance, and choix.ilsr_rankings on 10^4 of the rankings (it is too slow for all of them; compare
  rows/s);
* temperature 10^6 x 10: SciPy's bounded minimize_scalar of the NumPy formulation (float64);
* pairwise probabilities of 10^5 rows of 10 float64 scores (10^7 sigmoids, 80 MB written): NumPy's
  broadcast difference and overflow-free sigmoid;
* the memory copy bandwidth.
"""

from __future__ import annotations

import numpy as np
import prefcal
import pytest
from conftest import copy_bandwidth
from prefcal import _reference, pl

N, NI = 10**6, 10
FIT_M, FIT_N, CHOIX_M = 10**5, 20, 10**4


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(N, NI)).astype(np.float32)
    rankings = pl.sample(scores, seed=1)[:, 0]
    return scores, rankings


@pytest.fixture(scope="module")
def fit_data():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=FIT_N)
    rankings = pl.sample(np.broadcast_to(truth, (FIT_M, FIT_N)).copy(), seed=2)[:, 0]
    return rankings


def numpy_loglik(scores, rankings):
    x = np.take_along_axis(scores, rankings, axis=1)
    m = x.max(axis=1, keepdims=True)
    c = np.cumsum(np.exp(x - m)[:, ::-1], axis=1)[:, ::-1]
    return (x - m - np.log(c))[:, :-1].sum(axis=1)


def test_copy_bandwidth(benchmark, recorder):
    copy_bandwidth(benchmark, recorder)


@pytest.mark.parametrize(
    "impl",
    [
        "prefcal (C++)",
        "prefcal with gradient (C++)",
        "NumPy gather+cumLSE",
        "torch gather+logcumsumexp",
        "torch ListMLE forward+backward (autograd)",
        "prefcal reference (NumPy)",
    ],
)
def test_loglik(benchmark, recorder, rows, impl):
    scores, rankings = rows
    if impl == "prefcal (C++)":
        fn = lambda: pl.log_likelihood(scores, rankings)  # noqa: E731
    elif impl == "prefcal with gradient (C++)":
        fn = lambda: pl.log_likelihood_grad(scores, rankings)  # noqa: E731
    elif impl == "torch ListMLE forward+backward (autograd)":  # the peer of the value and gradient
        torch = pytest.importorskip("torch")
        tr = torch.from_numpy(rankings.astype(np.int64))

        def fn():
            ts = torch.from_numpy(scores).requires_grad_()
            x = torch.gather(ts, 1, tr)
            ll = (x - torch.logcumsumexp(x.flip(1), 1).flip(1))[:, :-1].sum(1)
            ll.sum().backward()
            return ll, ts.grad

    elif impl == "NumPy gather+cumLSE":
        fn = lambda: numpy_loglik(scores, rankings)  # noqa: E731
    elif impl == "prefcal reference (NumPy)":
        fn = lambda: _reference.pl_loglik(scores, rankings, None, False)  # noqa: E731
    else:
        torch = pytest.importorskip("torch")
        ts, tr = torch.from_numpy(scores), torch.from_numpy(rankings.astype(np.int64))

        def fn():
            x = torch.gather(ts, 1, tr)
            return (x - torch.logcumsumexp(x.flip(1), 1).flip(1))[:, :-1].sum(1)

    benchmark.group = "pl-loglik-1e6x10"
    benchmark.pedantic(fn, rounds=7, warmup_rounds=1)
    recorder(benchmark, "pl-loglik-1e6x10", impl, N, scores.nbytes + rankings.nbytes)


@pytest.mark.parametrize("impl", ["prefcal (C++)", "NumPy Gumbel-argsort", "torch Gumbel-argsort"])
def test_sample(benchmark, recorder, rows, impl):
    scores, _ = rows
    if impl == "prefcal (C++)":
        fn = lambda: pl.sample(scores, seed=3)  # noqa: E731
    elif impl == "NumPy Gumbel-argsort":
        rng = np.random.default_rng(3)
        fn = lambda: np.argsort(-(scores + rng.gumbel(size=scores.shape)), axis=1)  # noqa: E731
    else:
        torch = pytest.importorskip("torch")
        ts = torch.from_numpy(scores)

        def fn():
            g = -torch.log(-torch.log(torch.rand_like(ts)))
            return torch.argsort(ts + g, dim=1, descending=True)

    benchmark.group = "pl-sample-1e6x10"
    benchmark.pedantic(fn, rounds=11, warmup_rounds=1)
    recorder(benchmark, "pl-sample-1e6x10", impl, N, scores.nbytes + N * NI * 4)


@pytest.mark.parametrize(
    "impl",
    [
        "prefcal MM (C++)",
        "prefcal Newton (C++)",
        "prefcal MM reference (NumPy)",
        "choix.ilsr_rankings (1e4 rows)",
    ],
)
def test_fit(benchmark, recorder, fit_data, impl):
    rankings = fit_data
    m = FIT_M
    if impl == "prefcal MM (C++)":
        fn = lambda: pl.fit(rankings, FIT_N, method="mm", tol=1e-8)  # noqa: E731
    elif impl == "prefcal Newton (C++)":
        fn = lambda: pl.fit(rankings, FIT_N, method="newton", tol=1e-8)  # noqa: E731
    elif impl == "prefcal MM reference (NumPy)":

        def fn():
            prefcal.config.set_backend("numpy")
            try:
                return pl.fit(rankings, FIT_N, method="mm", tol=1e-8)
            finally:
                prefcal.config.set_backend(None)
    else:
        choix = pytest.importorskip("choix")
        m = CHOIX_M
        data = [list(map(int, r)) for r in rankings[:CHOIX_M]]
        fn = lambda: choix.ilsr_rankings(FIT_N, data, tol=1e-8)  # noqa: E731
    benchmark.group = "pl-fit-1e5x20"
    benchmark.pedantic(fn, rounds=3 if "C++" in impl else 1, warmup_rounds=0)
    recorder(benchmark, "pl-fit-1e5x20", impl, m, m * FIT_N * 4)


@pytest.mark.parametrize(
    "impl", ["prefcal temperature (C++)", "SciPy minimize_scalar of the NumPy log-likelihood"]
)
def test_temperature(benchmark, recorder, rows, impl):
    scores, rankings = rows
    benchmark.group = "pl-temperature-1e6x10"
    if impl == "prefcal temperature (C++)":
        fn = lambda: prefcal.recalibrate.temperature(scores, rankings)  # noqa: E731
    else:  # what a user writes today: a bounded 1-D search over the NumPy formulation (float64)
        optimize = pytest.importorskip("scipy.optimize")
        s64 = scores.astype(np.float64)

        def fn():
            res = optimize.minimize_scalar(
                lambda b: -numpy_loglik(b * s64, rankings).sum(),
                bounds=(1e-3, 10.0),
                method="bounded",
                options={"xatol": 1e-8},
            )
            return res.x

    benchmark.pedantic(fn, rounds=3 if "C++" in impl else 1, warmup_rounds=0)
    recorder(benchmark, "pl-temperature-1e6x10", impl, N, scores.nbytes + rankings.nbytes)


@pytest.mark.parametrize("impl", ["prefcal (C++)", "NumPy broadcast sigmoid"])
def test_pairwise(benchmark, recorder, rows, impl):
    scores = rows[0][: 10**5].astype(np.float64)
    if impl == "prefcal (C++)":
        fn = lambda: pl.pairwise(scores)  # noqa: E731
    else:

        def fn():
            d = scores[:, :, None] - scores[:, None, :]
            e = np.exp(-np.abs(d))
            return np.where(d >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    benchmark.group = "pl-pairwise-1e5x10"
    benchmark.pedantic(fn, rounds=7, warmup_rounds=1)
    recorder(benchmark, "pl-pairwise-1e5x10", impl, scores.shape[0], scores.nbytes + scores.size * NI * 8)
