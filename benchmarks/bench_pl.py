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
* rankings of other shapes (test_loglik_shapes, 10^7 scores each): top-5 of 10 against a NumPy
  total-minus-cumsum formulation, row masks, full rows of 100 items against the NumPy formulation (also the
  temperature), sampling rows of 500 items against NumPy's Gumbel-argsort;
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


def numpy_topk_loglik(scores, top):
    """The NumPy formulation for top-k rankings `top` (N, k), no padding: each stage's normaliser as the total
    worth less the worths listed before it."""
    s = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(s)
    x = np.take_along_axis(s, top, axis=1)
    ex = np.take_along_axis(e, top, axis=1)
    denominators = e.sum(axis=1, keepdims=True) - np.cumsum(ex, axis=1) + ex
    return (x - np.log(denominators)).sum(axis=1)


@pytest.fixture(scope="module")
def shapes():
    """The rankings beside full rows of 10: top-5 of 10 (-1 padded and narrow), 80% of the items available
    (row masks), full rows of 100 items, and rows of 500 items to sample (10^7 scores each)."""
    rng = np.random.default_rng(4)
    s10 = rng.normal(size=(N, NI)).astype(np.float32)
    r10 = pl.sample(s10, seed=5)[:, 0]
    padded = r10.copy()
    padded[:, 5:] = -1
    mask = rng.random((N, NI)) < 0.8
    mask[:, 0] = True
    masked = pl.sample(s10, seed=6, mask=mask)[:, 0]
    s100 = rng.normal(size=(10**5, 100)).astype(np.float32)
    r100 = pl.sample(s100, seed=7)[:, 0]
    s500 = rng.normal(size=(2 * 10**4, 500)).astype(np.float32)
    return dict(
        s10=s10,
        padded=padded,
        narrow=np.ascontiguousarray(r10[:, :5]),
        mask=mask,
        masked=masked,
        s100=s100,
        r100=r100,
        s500=s500,
    )


SHAPES = [
    ("top-5 of 10 (-1 padded)", "prefcal (C++)"),
    ("top-5 of 10 (-1 padded)", "prefcal with gradient (C++)"),
    ("top-5 of 10 (narrow)", "prefcal (C++)"),
    ("top-5 of 10 (narrow)", "NumPy total-minus-cumsum"),
    ("masked 10 (80% available)", "prefcal (C++)"),
    ("masked 10 (80% available)", "prefcal with gradient (C++)"),
    ("full 100 (1e5 rows)", "prefcal (C++)"),
    ("full 100 (1e5 rows)", "prefcal with gradient (C++)"),
    ("full 100 (1e5 rows)", "NumPy gather+cumLSE"),
    ("full 100 (1e5 rows)", "prefcal temperature (C++)"),
    ("sample 500 (2e4 rows)", "prefcal (C++)"),
    ("sample 500 (2e4 rows)", "NumPy Gumbel-argsort"),
]


@pytest.mark.parametrize("case,impl", SHAPES)
def test_loglik_shapes(benchmark, recorder, shapes, case, impl):
    """10^7 scores in each case; compare with the full rows of 10 (group pl-loglik-1e6x10)."""
    d = shapes
    grad = "gradient" in impl
    call = pl.log_likelihood_grad if grad else pl.log_likelihood
    if case.startswith("top-5"):
        top = d["padded"] if "padded" in case else d["narrow"]
        scores, nbytes = d["s10"], d["s10"].nbytes + top.nbytes
        if impl.startswith("NumPy"):
            fn = lambda: numpy_topk_loglik(scores, top)  # noqa: E731
        else:
            fn = lambda: call(scores, top)  # noqa: E731
    elif case.startswith("masked"):
        scores, mask, rk = d["s10"], d["mask"], d["masked"]
        nbytes = scores.nbytes + mask.nbytes + rk.nbytes
        fn = lambda: call(scores, rk, mask=mask)  # noqa: E731
    elif case.startswith("full 100"):
        scores, rk = d["s100"], d["r100"]
        nbytes = scores.nbytes + rk.nbytes
        if impl.startswith("NumPy"):
            fn = lambda: numpy_loglik(scores, rk)  # noqa: E731
        elif "temperature" in impl:
            fn = lambda: prefcal.recalibrate.temperature(scores, rk)  # noqa: E731
        else:
            fn = lambda: call(scores, rk)  # noqa: E731
    else:
        scores = d["s500"]
        nbytes = scores.nbytes * 2
        if impl.startswith("NumPy"):
            rng = np.random.default_rng(8)
            fn = lambda: np.argsort(-(scores + rng.gumbel(size=scores.shape)), axis=1)  # noqa: E731
        else:
            fn = lambda: pl.sample(scores, seed=9)  # noqa: E731
    benchmark.group = f"pl-shapes: {case}"
    benchmark.pedantic(fn, rounds=7 if "NumPy" not in impl else 3, warmup_rounds=1)
    recorder(benchmark, f"pl-shapes: {case}", impl, scores.shape[0], nbytes)
