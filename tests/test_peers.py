"""Agreement with the tools users compare prefcal with, where their conventions coincide (the `peers` extra).

Where they differ (see README, "Conventions compared with other libraries"):

* torchmetrics bins with ``bucketize(c, linspace(0, 1, B + 1), right=True) - 1``, which puts c = 1.0 in an extra
  (B+1)-th bin and compares with a ``linspace`` that can be one ulp off k/B; prefcal closes the last bin
  (c = 1 lands in bin B - 1) and bins exactly by floor(c * B). The tests draw confidences below 1 and away
  from the edges.
* scikit-learn's ``calibration_curve`` puts a value exactly on an interior edge into the lower bin and drops
  empty bins; its quantile strategy interpolates percentiles, prefcal's quantile bins are exact rank ranges.
"""

from __future__ import annotations

import numpy as np
import prefcal
import pytest
from conftest import binary_data

torch = pytest.importorskip("torch")
tm = pytest.importorskip("torchmetrics.functional.classification")


def away_from_edges(conf: np.ndarray, n_bins: int, margin: float = 1e-6) -> np.ndarray:
    x = conf * n_bins
    keep = (np.abs(x - np.round(x)) > margin) & (conf < 1.0)
    return keep


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("n_bins", [5, 15, 40])
def test_binary_calibration_error_matches_torchmetrics(rng, norm, n_bins):
    conf, correct = binary_data(rng, 20000)
    keep = away_from_edges(conf, n_bins)
    conf, correct = conf[keep], correct[keep]
    theirs = tm.binary_calibration_error(
        torch.from_numpy(conf), torch.from_numpy(correct.astype(np.int64)), n_bins=n_bins, norm=norm
    )
    assert prefcal.ece(conf, correct, n_bins=n_bins, norm=norm) == pytest.approx(float(theirs), rel=1e-9, abs=1e-12)


def test_debiased_l2_matches_torchmetrics(rng):
    from torchmetrics.functional.classification.calibration_error import _ce_compute

    conf, correct = binary_data(rng, 3000)
    keep = away_from_edges(conf, 10)
    conf, correct = conf[keep], correct[keep]
    theirs = _ce_compute(torch.from_numpy(conf), torch.from_numpy(correct.astype(np.float64)), 10, "l2", debias=True)
    assert prefcal.ece(conf, correct, n_bins=10, norm="l2", debias=True) == pytest.approx(float(theirs), rel=1e-9)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_multiclass_confidence_matches_torchmetrics(rng, norm):
    n, n_classes = 20000, 6
    logits = rng.normal(size=(n, n_classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, n_classes, n)
    keep = away_from_edges(probs.max(1), 15)
    probs, labels = probs[keep], labels[keep]
    theirs = tm.multiclass_calibration_error(
        torch.from_numpy(probs), torch.from_numpy(labels), num_classes=n_classes, n_bins=15, norm=norm
    )
    got = prefcal.multiclass_ece(probs, labels, kind="confidence", n_bins=15, norm=norm)
    # torchmetrics accumulates the multiclass bins in float32; prefcal in float64.
    assert got == pytest.approx(float(theirs), rel=1e-5, abs=1e-7)


def test_torchmetrics_extra_bin_for_one():
    """The documented difference: torchmetrics gives c = 1.0 a bin of its own."""
    conf = np.array([0.95, 1.0, 1.0, 0.97])
    correct = np.array([1, 0, 0, 1])
    theirs = float(tm.binary_calibration_error(torch.from_numpy(conf), torch.from_numpy(correct), n_bins=15))
    ours = prefcal.ece(conf, correct, n_bins=15)
    # prefcal: one bin [14/15, 1] holding all four rows; torchmetrics: bins {0.95, 0.97} and {1.0, 1.0}.
    assert ours == pytest.approx(abs(2 / 4 - (0.95 + 1 + 1 + 0.97) / 4))
    assert theirs == pytest.approx(0.5 * abs(1 - 0.96) + 0.5 * abs(0 - 1.0))


@pytest.mark.parametrize("n_bins", [4, 10, 15])
def test_reliability_matches_sklearn_calibration_curve(rng, n_bins):
    calibration = pytest.importorskip("sklearn.calibration")
    conf, correct = binary_data(rng, 5000)
    keep = away_from_edges(conf, n_bins)
    conf, correct = conf[keep], correct[keep]
    prob_true, prob_pred = calibration.calibration_curve(correct, conf, n_bins=n_bins, strategy="uniform")
    r = prefcal.reliability(conf, correct, n_bins=n_bins)
    filled = r.count > 0
    np.testing.assert_allclose(r.accuracy[filled], prob_true, rtol=1e-12)
    np.testing.assert_allclose(r.mean_confidence[filled], prob_pred, rtol=1e-12)


def test_brier_and_log_loss_match_sklearn(rng):
    metrics = pytest.importorskip("sklearn.metrics")
    conf, correct = binary_data(rng, 5000)
    conf[:2] = [0.0, 1.0]
    w = rng.random(conf.size)
    assert prefcal.brier(conf, correct) == pytest.approx(metrics.brier_score_loss(correct, conf), rel=1e-12)
    assert prefcal.brier(conf, correct, weights=w) == pytest.approx(
        metrics.brier_score_loss(correct, conf, sample_weight=w), rel=1e-12
    )
    want = metrics.log_loss(correct, np.clip(conf, np.finfo(np.float64).eps, 1 - np.finfo(np.float64).eps))
    assert prefcal.log_loss(conf, correct) == pytest.approx(want, rel=1e-9)
