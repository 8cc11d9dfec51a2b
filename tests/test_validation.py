"""Every rejection of SPEC §1 / §4, on every backend, with the same message."""

from __future__ import annotations

import re

import numpy as np
import prefcal
import pytest
from conftest import Backend

N = 3 * 65536 + 11  # crosses CPU chunks and GPU blocks


def _binary(backend: Backend, conf, correct, weights=None, **kw):
    w = None if weights is None else backend.array(weights)
    return prefcal.reliability(backend.array(conf), backend.array(correct), weights=w, **kw)


def _base(n=N):
    conf = np.linspace(0, 1, n)
    correct = (np.arange(n) % 3 == 0)
    return conf, correct


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize(
    "index, value, message",
    [
        (5, np.nan, "confidence contains NaN at index 5"),
        (70000, np.inf, "confidence contains inf at index 70000"),
        (N - 1, -np.inf, f"confidence contains -inf at index {N - 1}"),
        (131073, 1.5, "confidence[131073] = 1.5 is outside [0, 1]"),
        (0, -0.25, "confidence[0] = -0.25 is outside [0, 1]"),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bad_confidence(backend: Backend, strategy, index, value, message, dtype):
    conf, correct = _base()
    conf = conf.astype(dtype)
    conf[index] = value
    conf[index + 1 :: 9973] = 7.0  # later bad rows must not be reported first
    with pytest.raises(ValueError, match=re.escape(message)):
        _binary(backend, conf, correct, strategy=strategy)
    with pytest.raises(ValueError, match=re.escape(message)):
        prefcal.brier(backend.array(conf), backend.array(correct))


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize(
    "dtype, value, shown",
    [(np.uint8, 2, "2"), (np.int8, -1, "-1"), (np.int64, 7, "7"), (np.float64, 0.5, "0.5"), (np.float32, np.nan, "nan")],
)
def test_bad_correct(backend: Backend, strategy, dtype, value, shown):
    conf, correct = _base()
    correct = correct.astype(dtype)
    correct[65536] = value
    with pytest.raises(ValueError, match=re.escape(f"correct[65536] = {shown} is not 0 or 1")):
        _binary(backend, conf, correct, strategy=strategy)
    with pytest.raises(ValueError, match=re.escape(f"correct[65536] = {shown} is not 0 or 1")):
        prefcal.brier(backend.array(conf), backend.array(correct))


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize(
    "value, message",
    [
        (-1.0, "weights[9] = -1.0 is negative"),
        (np.nan, "weights contains NaN at index 9"),
        (np.inf, "weights contains inf at index 9"),
    ],
)
def test_bad_weights(backend: Backend, strategy, value, message):
    conf, correct = _base()
    weights = np.ones(N)
    weights[9] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        _binary(backend, conf, correct, weights, strategy=strategy)
    with pytest.raises(ValueError, match=re.escape(message)):
        prefcal.log_loss(backend.array(conf), backend.array(correct), weights=backend.array(weights))


def test_first_bad_row_wins_across_arguments(backend: Backend):
    conf, correct = _base(1000)
    weights = np.ones(1000)
    conf[600] = 2.0
    correct = correct.astype(np.int64)
    correct[400] = 3
    weights[500] = -2.0
    with pytest.raises(ValueError, match=re.escape("correct[400] = 3 is not 0 or 1")):
        _binary(backend, conf, correct, weights)
    with pytest.raises(ValueError, match=re.escape("correct[400] = 3 is not 0 or 1")):
        prefcal.log_loss(backend.array(conf), backend.array(correct), weights=backend.array(weights))


def test_zero_total_weight(backend: Backend):
    conf, correct = _base(10)
    with pytest.raises(ValueError, match="weights sum to zero"):
        prefcal.ece(backend.array(conf), backend.array(correct), weights=backend.array(np.zeros(10)))
    with pytest.raises(ValueError, match="weights sum to zero"):
        prefcal.brier(backend.array(conf), backend.array(correct), weights=backend.array(np.zeros(10)))
    # finite weights whose sum overflows float64: an error, not an ECE of 0 (inf / inf)
    huge = backend.array(np.full(10, 1e308))
    with pytest.raises(ValueError, match="weights sum to inf"):
        prefcal.ece(backend.array(conf), backend.array(correct), weights=huge)
    with pytest.raises(ValueError, match="weights sum to inf"):
        prefcal.brier(backend.array(conf), backend.array(correct), weights=huge)
    big = prefcal.ece(backend.array(conf), backend.array(correct), weights=backend.array(np.full(10, 1e300)))
    assert big == pytest.approx(prefcal.ece(backend.array(conf), backend.array(correct)), rel=1e-12)


def test_shapes(backend: Backend):
    conf, correct = _base(10)
    with pytest.raises(ValueError, match=re.escape("confidence and correct have different lengths: 10 vs 9")):
        _binary(backend, conf, correct[:9])
    with pytest.raises(ValueError, match=re.escape("confidence and weights have different lengths: 10 vs 11")):
        _binary(backend, conf, correct, np.ones(11))
    with pytest.raises(ValueError, match=re.escape("confidence must be 1-dimensional, got shape (2, 5)")):
        _binary(backend, conf.reshape(2, 5), correct)
    with pytest.raises(ValueError, match=re.escape("correct must be 1-dimensional, got shape ()")):
        _binary(backend, conf[:1], np.array(True))
    with pytest.raises(ValueError, match=re.escape("confidence is empty")):
        _binary(backend, conf[:0], correct[:0])
    with pytest.raises(ValueError, match=re.escape("confidence is empty")):
        prefcal.log_loss(backend.array(conf[:0]), backend.array(correct[:0]))


def test_options():
    conf, correct = _base(10)
    with pytest.raises(ValueError, match=re.escape("n_bins must be at least 1, got 0")):
        prefcal.ece(conf, correct, n_bins=0)
    with pytest.raises(ValueError, match=re.escape("n_bins must be at least 1, got -3")):
        prefcal.reliability(conf, correct, n_bins=-3)
    with pytest.raises(ValueError, match=re.escape("n_bins must be at most 16777216, got 16777217")):
        prefcal.reliability(conf, correct, n_bins=2**24 + 1)
    with pytest.raises(TypeError, match="n_bins must be an integer, got float"):
        prefcal.ece(conf, correct, n_bins=1.5)
    with pytest.raises(TypeError, match="n_bins must be an integer, got bool"):
        prefcal.ece(conf, correct, n_bins=True)
    with pytest.raises(ValueError, match=re.escape("strategy must be one of 'uniform', 'quantile'; got 'equal'")):
        prefcal.ece(conf, correct, strategy="equal")
    with pytest.raises(ValueError, match=re.escape("norm must be one of 'l1', 'l2', 'max'; got 'L1'")):
        prefcal.ece(conf, correct, norm="L1")
    with pytest.raises(ValueError, match=re.escape("debias=True needs norm='l2', got norm='l1'")):
        prefcal.ece(conf, correct, debias=True)
    with pytest.raises(ValueError, match="kind must be one of 'confidence', 'classwise', 'top_label'"):
        prefcal.multiclass_ece(np.eye(3), np.arange(3), kind="marginal")


def test_wrong_types(backend: Backend):
    conf, correct = _base(4)
    with pytest.raises(TypeError, match="confidence must contain real numbers, got dtype <U3"):
        prefcal.ece(np.array(["0.1", "0.2"]), np.array([0, 1]))
    with pytest.raises(TypeError, match="correct must be bool, integer or float"):
        prefcal.ece(conf, correct.astype(np.complex128))
    with pytest.raises(TypeError, match="weights must contain real numbers"):
        prefcal.ece(conf, correct, weights=np.array(["a", "b", "c", "d"]))
    with pytest.raises(TypeError, match="labels must contain integers, got dtype float64"):
        prefcal.multiclass_ece(backend.array(np.eye(3)), backend.array(np.array([0.0, 1.0, 2.0])))
    with pytest.raises(TypeError, match="labels must contain integers, got dtype bool"):
        prefcal.multiclass_ece(backend.array(np.eye(2)), backend.array(np.array([True, False])))


def test_mixed_array_libraries():
    torch = pytest.importorskip("torch")
    conf, correct = _base(4)
    with pytest.raises(TypeError, match=re.escape("confidence is numpy.ndarray but correct is torch.Tensor")):
        prefcal.ece(conf, torch.from_numpy(correct))
    with pytest.raises(TypeError, match=re.escape("confidence is torch.Tensor but weights is numpy.ndarray")):
        prefcal.ece(torch.from_numpy(conf), torch.from_numpy(correct), weights=np.ones(4))
    with pytest.raises(TypeError, match=re.escape("confidence is list (read as numpy.ndarray) but")):
        prefcal.ece([0.1, 0.2], torch.tensor([0, 1]))
    # the ranking levels too: a model and its observations from one library
    s = np.zeros((2, 3))
    r = np.array([[0, 1, 2], [2, 1, 0]])
    from prefcal import metrics, ranking

    for call in (
        lambda: ranking.subranking_ece(s, torch.from_numpy(r)),
        lambda: ranking.topk_ece(torch.from_numpy(s), r),
        lambda: ranking.marginal_ece(ranking.PL(s), torch.from_numpy(r)),
        lambda: ranking.report(s, observed_ranks=torch.from_numpy(r.astype(float))),
        lambda: metrics.RankingCalibration().update(s, torch.from_numpy(r)),
        lambda: ranking.PL(s, torch.ones(2, 3, dtype=torch.bool)),
    ):
        with pytest.raises(TypeError, match=r"(model|scores) is (numpy.ndarray|torch.Tensor) but"):
            call()
    same = ranking.subranking_ece(torch.from_numpy(s), torch.from_numpy(r)).ece
    assert same == ranking.subranking_ece(s, r).ece


def test_mixed_devices():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    conf, correct = _base(4)
    with pytest.raises(TypeError, match=re.escape("confidence is torch.Tensor on cuda:0 but correct is torch.Tensor")):
        prefcal.ece(torch.from_numpy(conf).cuda(), torch.from_numpy(correct))


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("kind", ["confidence", "classwise", "top_label"])
def test_multiclass_rejections(backend: Backend, strategy, kind):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=70001)
    labels = rng.integers(0, 4, 70001)

    def run(p, lab):
        return prefcal.multiclass_ece(backend.array(p), backend.array(lab), kind=kind, strategy=strategy)

    p = probs.copy()
    p[66000, 2] = np.nan
    p[66001, 0] = 3.0
    with pytest.raises(ValueError, match=re.escape("probs contains NaN at [66000, 2]")):
        run(p, labels)
    p = probs.copy()
    p[5, 3] = -0.5
    with pytest.raises(ValueError, match=re.escape("probs[5, 3] = -0.5 is outside [0, 1]")):
        run(p, labels)
    lab = labels.copy()
    lab[70000] = 4
    with pytest.raises(ValueError, match=re.escape("labels[70000] = 4 is out of range for n_classes=4")):
        run(probs, lab)
    lab[3] = -1
    with pytest.raises(ValueError, match=re.escape("labels[3] = -1 is out of range for n_classes=4")):
        run(probs, lab)
    with pytest.raises(ValueError, match=re.escape("probs must be 2-dimensional, got shape (70001,)")):
        run(probs[:, 0], labels)
    with pytest.raises(ValueError, match=re.escape("probs and labels have different lengths: 70001 vs 70000")):
        run(probs, labels[:-1])
    with pytest.raises(ValueError, match=re.escape("probs is empty")):
        run(probs[:0], labels[:0])
    with pytest.raises(ValueError, match=re.escape("probs has no columns")):
        run(probs[:, :0], labels)


def test_backend_override_rejections(monkeypatch):
    conf, correct = _base(4)
    monkeypatch.setenv("PREFCAL_BACKEND", "gpu")
    with pytest.raises(ValueError, match=re.escape("PREFCAL_BACKEND must be one of numpy, cpu, cuda; got 'gpu'")):
        prefcal.ece(conf, correct)
    with pytest.raises(ValueError, match="backend must be one of 'numpy', 'cpu', 'cuda'"):
        prefcal.config.set_backend("tpu")
    with pytest.raises(ValueError, match=re.escape("n must be >= 0, got -1")):
        prefcal.config.set_num_threads(-1)
    with pytest.raises(TypeError, match="n must be an integer or None"):
        prefcal.config.set_num_threads(2.0)


def test_empty_lists_report_emptiness_not_their_dtype():
    # np.asarray([]) is float64: an empty label list must not read as "labels must contain integers"
    with pytest.raises(ValueError, match="probs is empty"):
        prefcal.multiclass_ece(np.zeros((0, 3)), [])
    with pytest.raises(ValueError, match="confidence is empty"):
        prefcal.ece([], [])
    with pytest.raises(TypeError, match="labels must contain integers"):
        prefcal.multiclass_ece(np.full((1, 3), 1 / 3), [0.5])


def test_swapped_binary_arguments_get_a_hint():
    with pytest.raises(ValueError, match=re.escape("correct[0] = 0.1 is not 0 or 1 (the outcomes are the")):
        prefcal.ece(np.array([0, 1, 1]), np.array([0.1, 0.7, 0.8]))
    with pytest.raises(ValueError, match=r"correct\[1\] = 3 is not 0 or 1$"):
        prefcal.ece(np.array([0.5, 0.5]), np.array([1, 3]))


def test_pandas_nullable_dtypes_read_as_their_numpy_dtypes():
    pd = pytest.importorskip("pandas")
    s = np.array([[0.3, -1.0, 2.0], [1.0, 0.5, 0.0]])
    r = np.array([[0, 1, 2], [2, 1, 0]])
    want = prefcal.pl.log_likelihood(s, r)
    got = prefcal.pl.log_likelihood(pd.DataFrame(s).astype("Float64"), pd.DataFrame(r).astype("Int64"))
    np.testing.assert_array_equal(got, want)
    conf, correct = pd.Series([0.2, 0.9], dtype="Float64"), pd.Series([False, True], dtype="boolean")
    assert prefcal.ece(conf, correct) == prefcal.ece(np.array([0.2, 0.9]), np.array([False, True]))
    holed = pd.DataFrame(r).astype("Int64")
    holed.iloc[1, 2] = pd.NA
    with pytest.raises(ValueError, match=r"missing value \(pd.NA\) at \(1, 2\)"):
        prefcal.pl.log_likelihood(s, holed)
