"""prefcal.noise (SPEC §8): EM estimation of preference-label flip rates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from prefcal import noise


def noisy_labels(rng, eps_per_row):
    """p_model of recorded labels: the model is calibrated for the clean label, which is then flipped.

    q = the model's P(a preferred to b); the clean label is "a over b" with probability q; the recorded
    label is the clean one flipped with probability eps; p_model is the model's probability of the
    recorded direction.
    """
    n = eps_per_row.shape[0]
    q = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 2.5, n)))
    clean_a = rng.random(n) < q
    recorded_a = clean_a ^ (rng.random(n) < eps_per_row)
    return np.where(recorded_a, q, 1.0 - q)


def log_lik(p, eps):
    return float(np.sum(np.log((1 - eps) * p + eps * (1 - p))))


def standard_error(p, eps):
    """1 / sqrt(Fisher information) of the flip rate at eps (>= the binomial sqrt(eps (1 - eps) / N))."""
    info = np.sum(((1 - 2 * p) / (p + eps * (1 - 2 * p))) ** 2)
    return 1.0 / math.sqrt(info)


def posterior_formula(p, eps):
    return (1 - eps) * p / ((1 - eps) * p + eps * (1 - p))


@pytest.mark.parametrize("true_eps", [0.03, 0.15, 0.3])
def test_recovers_one_flip_rate(rng, true_eps):
    p = noisy_labels(rng, np.full(40000, true_eps))
    fit = noise.em(p)
    assert isinstance(fit.rate, float)
    assert fit.converged and fit.n_iter < 200
    se = standard_error(p, true_eps)
    assert se >= math.sqrt(true_eps * (1 - true_eps) / p.shape[0])
    assert abs(fit.rate - true_eps) < 4 * se
    # the result is a fixed point of the EM map, and the posterior is the E-step at the rate
    np.testing.assert_allclose(fit.posterior, posterior_formula(p, fit.rate), rtol=1e-12)
    assert np.mean(1 - fit.posterior) == pytest.approx(fit.rate, abs=1e-9)


def test_recovers_per_annotator_rates(rng):
    true = np.array([0.05, 0.2, np.nan, 0.35])  # annotator 2 has no rows
    annotators = rng.choice([0, 1, 3], size=90000)
    p = noisy_labels(rng, true[annotators])
    fit = noise.em(p, annotators=annotators, init=0.25)
    assert fit.converged
    assert fit.rate.shape == (4,) and math.isnan(fit.rate[2])
    for a in (0, 1, 3):
        rows = annotators == a
        assert abs(fit.rate[a] - true[a]) < 4 * standard_error(p[rows], true[a])
        assert np.mean(1 - fit.posterior[rows]) == pytest.approx(fit.rate[a], abs=1e-9)
    np.testing.assert_allclose(fit.posterior, posterior_formula(p, fit.rate[annotators]), rtol=1e-12)
    # each annotator's EM is independent of the others' rows
    alone = noise.em(p[annotators == 1], init=0.25)
    assert alone.rate == pytest.approx(fit.rate[1], abs=1e-8)


def test_likelihood_never_decreases(rng):
    p = noisy_labels(rng, np.full(5000, 0.2))
    a = rng.integers(0, 3, 5000)
    values = [log_lik(p, 0.45)]
    per_annotator = [sum(log_lik(p[a == i], 0.45) for i in range(3))]
    for t in range(1, 25):
        fit = noise.em(p, init=0.45, max_iter=t)
        assert fit.n_iter == t or fit.converged
        values.append(log_lik(p, fit.rate))
        multi = noise.em(p, annotators=a, init=0.45, max_iter=t)
        per_annotator.append(sum(log_lik(p[a == i], multi.rate[i]) for i in range(3)))
    assert np.all(np.diff(values) >= -1e-9 * abs(values[0]))
    assert np.all(np.diff(per_annotator) >= -1e-9 * abs(per_annotator[0]))
    assert values[-1] > values[0]


def test_convergence_flag_and_iteration_count(rng):
    p = noisy_labels(rng, np.full(3000, 0.1))
    one = noise.em(p, max_iter=1)
    assert one.n_iter == 1 and not one.converged
    assert one.rate == pytest.approx(np.mean(1 - posterior_formula(p, 0.1)), rel=1e-12)  # one EM step
    loose = noise.em(p, tol=1.0)
    assert loose.n_iter == 1 and loose.converged
    full = noise.em(p)
    assert full.converged and 1 < full.n_iter < 200
    warm = noise.em(p, init=full.rate)  # starting at the fixed point: converged at once
    assert warm.converged and warm.n_iter == 1 and warm.rate == pytest.approx(full.rate, abs=1e-10)


def test_degenerate_models():
    perfect = noise.em(np.ones(10))  # a model certain of every label: no flips
    assert perfect.rate == 0.0 and perfect.converged
    np.testing.assert_array_equal(perfect.posterior, 1.0)
    wrong = noise.em(np.zeros(10))  # certain every label is wrong
    assert wrong.rate == 1.0 and wrong.converged
    np.testing.assert_array_equal(wrong.posterior, 0.0)
    flat = noise.em(np.full(7, 0.5), init=0.3)  # no information: the rate stays where it started
    assert flat.rate == pytest.approx(0.3) and flat.converged
    mixed = noise.em(np.array([1.0, 0.0, 1.0, 1.0]))  # one sure flip among four
    assert mixed.rate == pytest.approx(0.25)
    np.testing.assert_allclose(mixed.posterior, [1.0, 0.0, 1.0, 1.0])


def test_init_per_annotator_and_warm_start(rng):
    a = np.array([0, 0, 2, 2, 2, 0, 2])
    p = np.array([0.9, 0.2, 0.8, 0.7, 0.4, 0.95, 0.85])
    fit = noise.em(p, annotators=a, init=np.array([0.2, 0.0, 0.3]))  # id 1 has no rows: its init is ignored
    assert fit.rate.shape == (3,) and math.isnan(fit.rate[1])
    again = noise.em(p, annotators=a, init=fit.rate)  # NaN for the id without rows is fine
    assert again.n_iter == 1 and again.converged
    np.testing.assert_allclose(again.rate, fit.rate, atol=1e-10)
    longer = noise.em(p, annotators=a, init=[0.1, 0.1, 0.1, 0.1, 0.1])
    assert longer.rate.shape == (5,) and np.isnan(longer.rate[[1, 3, 4]]).all()
    np.testing.assert_allclose(longer.rate[[0, 2]], fit.rate[[0, 2]], atol=1e-8)
    scalar = noise.em(p, annotators=a)
    assert scalar.rate.shape == (3,)
    np.testing.assert_allclose(scalar.rate[[0, 2]], fit.rate[[0, 2]], atol=1e-8)


def test_dtypes_and_array_types(rng):
    p = noisy_labels(rng, np.full(200, 0.1))
    ref = noise.em(p)
    p32 = noise.em(p.astype(np.float32))
    assert p32.posterior.dtype == np.float32
    assert p32.rate == pytest.approx(ref.rate, rel=1e-5)
    assert noise.em(p.tolist()).rate == ref.rate
    assert noise.em(np.array([1, 0, 1])).posterior.dtype == np.float64
    d = ref.to_dict()
    assert set(d) == {"rate", "posterior", "n_iter", "converged"} and len(d["posterior"]) == 200
    multi = noise.em(p, annotators=np.arange(200) % 3)
    assert isinstance(multi.to_dict()["rate"], list)


def test_torch_in_torch_out(rng):
    torch = pytest.importorskip("torch")
    p = noisy_labels(rng, np.full(300, 0.2))
    a = rng.integers(0, 2, 300)
    fit = noise.em(torch.from_numpy(p.astype(np.float32)), annotators=torch.from_numpy(a))
    assert isinstance(fit.posterior, torch.Tensor) and fit.posterior.dtype == torch.float32
    ref = noise.em(p.astype(np.float32), annotators=a)
    np.testing.assert_array_equal(fit.posterior.numpy(), ref.posterior)
    np.testing.assert_array_equal(fit.rate, ref.rate)
    assert len(fit.to_dict()["posterior"]) == 300
    with pytest.raises(TypeError, match="p_model is torch.Tensor but annotators is numpy.ndarray"):
        noise.em(torch.from_numpy(p), annotators=a)


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(0.0, 1.0)),
    st.floats(0.01, 0.99),
)
def test_em_property(p, init):
    fit = noise.em(p, init=init, max_iter=50)
    assert 0.0 <= fit.rate <= 1.0
    assert np.all((fit.posterior >= 0.0) & (fit.posterior <= 1.0))
    assert log_lik(p, fit.rate) >= log_lik(p, init) - 1e-9 * (1 + abs(log_lik(p, init)))
    assert fit.n_iter <= 50 and (fit.converged or fit.n_iter == 50)


@pytest.mark.parametrize(
    ("p", "kwargs", "error", "match"),
    [
        ([0.5, 1.5], {}, ValueError, r"p_model\[1\] = 1.5 is outside \[0, 1\]"),
        ([0.5, -0.1, 2.0], {}, ValueError, r"p_model\[1\] = -0.1 is outside \[0, 1\]"),
        ([0.5, np.nan], {}, ValueError, r"p_model contains NaN at index 1"),
        ([np.inf], {}, ValueError, r"p_model contains inf at index 0"),
        ([], {}, ValueError, r"p_model is empty"),
        ([[0.5]], {}, ValueError, r"p_model must be 1-dimensional"),
        (["x"], {}, TypeError, r"p_model must contain real numbers"),
        ([0.5, 0.5], {"annotators": np.array([0, -1])}, ValueError, r"annotators\[1\] = -1 is negative"),
        (
            [0.5, 0.5],
            {"annotators": np.array([0, 10**12])},
            ValueError,
            r"annotators\[1\] = 1000000000000 is too large",
        ),
        (
            [0.5, 0.5],
            {"annotators": np.array([0, 2**64 - 1], dtype=np.uint64)},
            ValueError,
            r"annotators\[1\] = 18446744073709551615 is too large",
        ),
        ([0.5, 0.5], {"annotators": np.array([0, 1, 2])}, ValueError, r"different lengths: 2 vs 3"),
        ([0.5, 0.5], {"annotators": np.array([0.0, 1.0])}, TypeError, r"annotators must contain integers"),
        ([0.5, 0.5], {"annotators": np.array([True, False])}, TypeError, r"annotators must contain integers"),
        ([0.5, 0.5], {"annotators": np.array([[0, 1]])}, ValueError, r"annotators must be 1-dimensional"),
        ([0.5], {"init": 0.0}, ValueError, r"init must lie strictly between 0 and 1"),
        ([0.5], {"init": 1.0}, ValueError, r"init must lie strictly between 0 and 1"),
        ([0.5], {"init": math.nan}, ValueError, r"init must be finite"),
        ([0.5], {"init": True}, TypeError, r"init must be a real number"),
        ([0.5], {"init": [0.1]}, ValueError, r"init is an array, which needs annotators"),
        ([0.5], {"init": "0.1"}, TypeError, r"init must contain real numbers"),
        (
            [0.5, 0.5],
            {"annotators": np.array([0, 2]), "init": [0.1, 0.1]},
            ValueError,
            r"init has 2 entries but annotator ids go up to 2",
        ),
        (
            [0.5, 0.5],
            {"annotators": np.array([0, 2]), "init": [0.1, 0.5, 1.0]},
            ValueError,
            r"init\[2\] = 1.0 must lie strictly between 0 and 1 \(annotator 2 has rows\)",
        ),
        ([0.5], {"max_iter": 0}, ValueError, r"max_iter must be at least 1"),
        ([0.5], {"max_iter": 10.0}, TypeError, r"max_iter must be an integer"),
        ([0.5], {"tol": 0.0}, ValueError, r"tol must be positive"),
    ],
)
def test_em_rejects_bad_input(p, kwargs, error, match):
    with pytest.raises(error, match=match):
        noise.em(np.array(p), **kwargs)
