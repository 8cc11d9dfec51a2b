"""The inline exp and log of the CPU kernels (prefcal/fastmath.hpp), in ulp against NumPy's libm."""

import numpy as np
import pytest

cpu = pytest.importorskip("prefcal._cpu", reason="the C++ extension is not built")


def ulp_error(got, want):
    return np.abs(got - want) / np.spacing(np.abs(want))


def log_arguments(rng):
    parts = [
        np.exp(rng.uniform(-700, 700, 200_000)),  # every binade
        1.0 + rng.uniform(-1e-3, 1e-3, 50_000),  # near 1, where log is small
        1.0 + np.ldexp(rng.uniform(-1, 1, 20_000), -40),
        (np.arange(1, 20_000) + 0.5) * 2.0**-52,  # the uniforms of pl.sample: smallest ...
        1.0 - (np.arange(1, 20_000) - 0.5) * 2.0**-52,  # ... and largest
        np.sqrt([0.5, 2.0]),
        np.nextafter(np.sqrt([0.5, 2.0]), [0, 4]),
        np.nextafter(np.sqrt([0.5, 2.0]), [4, 0]),
        [np.finfo(np.float64).tiny, np.finfo(np.float64).max, 1.0, 2.0, 0.5],
    ]
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])


def test_log_pos_within_one_ulp():
    x = log_arguments(np.random.default_rng(0))
    got = cpu.fastmath("log_pos", x)
    want = np.log(x)
    exact = want == 0
    assert np.all(got[exact] == 0)
    assert ulp_error(got[~exact], want[~exact]).max() <= 1.0


def test_gumbel_chain_is_accurate():
    # -log(-log(u)) over the uniforms pl.sample draws, including both ends
    u = np.concatenate([(np.arange(1, 5000) + 0.5) * 2.0**-52, 1.0 - (np.arange(1, 5000) - 0.5) * 2.0**-52])
    u = np.concatenate([u, np.random.default_rng(1).random(100_000)])
    u = u[(u > 0) & (u < 1)]
    got = -cpu.fastmath("log_pos", -cpu.fastmath("log_pos", u))
    want = -np.log(-np.log(u))
    # absolute error in ulp of max(|G|, 1): the keys are score + G, and G near 0 is ill-conditioned relatively
    assert (np.abs(got - want) / np.spacing(np.maximum(np.abs(want), 1.0))).max() <= 4.0


@pytest.mark.parametrize("dtype, lo", [(np.float64, -300.0), (np.float32, -80.0)])
def test_exp_neg_within_two_ulp(dtype, lo):
    rng = np.random.default_rng(2)
    x = [rng.uniform(lo, 0, 200_000), -np.ldexp(rng.random(10_000), -30), [0.0, lo]]
    x = np.concatenate(x).astype(dtype)
    got = cpu.fastmath("exp_neg", x)
    assert got.dtype == dtype
    want = np.exp(x.astype(np.float64))
    assert ulp_error(got.astype(np.float64), want).max() <= 2.0 * (np.spacing(dtype(1)) / np.spacing(1.0))


def test_exp_neg_clamps_outside_its_domain():
    got = cpu.fastmath("exp_neg", np.array([-1e6, np.nan, 5.0, -np.inf]))
    assert np.all(np.isfinite(got))
    assert got[2] == 1.0  # positive arguments clamp to 0


def test_unknown_function_is_rejected():
    with pytest.raises(ValueError, match="fastmath"):
        cpu.fastmath("sqrt", np.ones(3))
