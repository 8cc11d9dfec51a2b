"""CPU benchmarks of binned ECE (pytest-benchmark).

    python -m pytest benchmarks/bench_calibration.py --benchmark-only

Peers measured in the same run: the NumPy reference (prefcal._reference), a tight NumPy formulation
(integer index + three bincounts, no validation), torchmetrics (if installed) and a plain memory copy of the
same number of bytes (the bandwidth floor). Inputs: float32 confidences + bool outcomes (5 bytes per row).
Also, at 10^7 rows: the weighted ECE (float64 weights, 13 bytes per row) against the tight NumPy
formulation with weights, and the Brier score and log loss against their NumPy one-liners and
scikit-learn's brier_score_loss / log_loss.
"""

from __future__ import annotations

import numpy as np
import prefcal
import pytest
from conftest import copy_bandwidth
from prefcal import _reference

SIZES = {"1e6": 10**6, "1e7": 10**7}
B = 15


@pytest.fixture(scope="module", params=list(SIZES))
def data(request):
    n = SIZES[request.param]
    rng = np.random.default_rng(0)
    conf = rng.random(n, dtype=np.float32)
    correct = rng.random(n) < conf
    return request.param, conf, correct


def tight_numpy(conf, correct):
    idx = np.minimum((conf * B).astype(np.intp), B - 1)
    count = np.bincount(idx, minlength=B)
    s_conf = np.bincount(idx, weights=conf, minlength=B)
    s_cor = np.bincount(idx, weights=correct, minlength=B)
    nz = count > 0
    return float(np.sum(np.abs(s_cor[nz] - s_conf[nz])) / count.sum())


def test_copy_bandwidth(benchmark, recorder):
    copy_bandwidth(benchmark, recorder)


@pytest.mark.parametrize(
    "impl", ["prefcal (C++)", "prefcal reference (NumPy)", "tight NumPy", "torchmetrics", "torchmetrics (validated)"]
)
def test_ece_uniform(benchmark, recorder, data, impl):
    size, conf, correct = data
    group = f"ece-{size}"
    benchmark.group = group
    nbytes = conf.nbytes + correct.nbytes
    if impl == "prefcal (C++)":
        fn = lambda: prefcal.ece(conf, correct, n_bins=B)  # noqa: E731
    elif impl == "prefcal reference (NumPy)":
        fn = lambda: _reference.bin_uniform(conf, correct, None, B)  # noqa: E731
    elif impl == "tight NumPy":
        fn = lambda: tight_numpy(conf, correct)  # noqa: E731
    else:
        torch = pytest.importorskip("torch")
        calib = pytest.importorskip("torchmetrics.functional.classification")
        tc, ty = torch.from_numpy(conf), torch.from_numpy(correct.astype(np.int64))
        validate = impl.endswith("(validated)")
        fn = lambda: calib.binary_calibration_error(tc, ty, n_bins=B, validate_args=validate)  # noqa: E731
    benchmark.pedantic(fn, rounds=15 if size == "1e6" else 7, warmup_rounds=1)
    recorder(benchmark, group, impl, conf.size, nbytes)


@pytest.mark.parametrize("impl", ["prefcal quantile (C++)", "np.argsort", "prefcal reference quantile"])
def test_ece_quantile(benchmark, recorder, data, impl):
    size, conf, correct = data
    group = f"quantile-{size}"
    benchmark.group = group
    if impl == "prefcal quantile (C++)":
        fn = lambda: prefcal.ece(conf, correct, n_bins=B, strategy="quantile")  # noqa: E731
    elif impl == "np.argsort":
        fn = lambda: np.argsort(conf)  # noqa: E731
    else:
        fn = lambda: _reference.bin_quantile(conf, correct, None, B)  # noqa: E731
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    recorder(benchmark, group, impl, conf.size, conf.nbytes + correct.nbytes)


@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(1)
    conf = rng.random(SIZES["1e7"], dtype=np.float32)
    return conf, rng.random(conf.size) < conf, rng.random(conf.size)


@pytest.mark.parametrize("impl", ["prefcal (C++)", "tight NumPy"])
def test_ece_weighted(benchmark, recorder, big, impl):
    conf, correct, w = big
    if impl == "prefcal (C++)":
        fn = lambda: prefcal.ece(conf, correct, weights=w, n_bins=B)  # noqa: E731
    else:

        def fn():
            idx = np.minimum((conf * B).astype(np.intp), B - 1)
            count = np.bincount(idx, weights=w, minlength=B)
            s_conf = np.bincount(idx, weights=w * conf, minlength=B)
            s_cor = np.bincount(idx, weights=w * correct, minlength=B)
            return float(np.sum(np.abs(s_cor - s_conf)) / count.sum())

    benchmark.group = "ece-weighted-1e7"
    benchmark.pedantic(fn, rounds=7, warmup_rounds=1)
    recorder(benchmark, "ece-weighted-1e7", impl, conf.size, conf.nbytes + correct.nbytes + w.nbytes)


@pytest.mark.parametrize(
    "impl",
    [
        "prefcal brier (C++)",
        "prefcal log_loss (C++)",
        "NumPy brier",
        "NumPy log loss",
        "sklearn brier_score_loss",
        "sklearn log_loss",
    ],
)
def test_scores(benchmark, recorder, big, impl):
    conf, correct, _ = big
    eps = float(np.finfo(np.float32).eps)
    if impl == "prefcal brier (C++)":
        fn = lambda: prefcal.brier(conf, correct)  # noqa: E731
    elif impl == "prefcal log_loss (C++)":
        fn = lambda: prefcal.log_loss(conf, correct)  # noqa: E731
    elif impl == "NumPy brier":
        fn = lambda: float(np.mean((conf.astype(np.float64) - correct) ** 2))  # noqa: E731
    elif impl == "NumPy log loss":

        def fn():
            c = np.clip(conf.astype(np.float64), eps, 1 - eps)
            return float(-np.mean(np.where(correct, np.log(c), np.log1p(-c))))

    else:
        metrics = pytest.importorskip("sklearn.metrics")
        if impl == "sklearn brier_score_loss":
            fn = lambda: metrics.brier_score_loss(correct, conf)  # noqa: E731
        else:
            fn = lambda: metrics.log_loss(correct, conf)  # noqa: E731
    benchmark.group = "scores-1e7"
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    recorder(benchmark, "scores-1e7", impl, conf.size, conf.nbytes + correct.nbytes)
