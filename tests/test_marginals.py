"""Permutation marginals (SPEC §3): every method on every backend against brute-force enumeration, the
integral's accuracy contract, Monte Carlo against exact, empirical counts against plain loops, rejections."""

from __future__ import annotations

import itertools

import numpy as np
import prefcal
import pytest
from conftest import Backend, get_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from prefcal import _reference, marginals, pl


def brute_positions(s: np.ndarray, avail: np.ndarray) -> np.ndarray:
    """P(item i at position j) by enumerating every ordering of the available items."""
    n = len(s)
    items = np.flatnonzero(avail)
    w = np.exp(s - s[items].max()) if len(items) else np.zeros(n)
    out = np.zeros((n, n))
    for perm in itertools.permutations(items):
        p, rest = 1.0, w[items].sum()
        for i in perm:
            p *= w[i] / rest
            rest -= w[i]
        for j, i in enumerate(perm):
            out[i, j] += p
    return out


def brute(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    n_rows, n = scores.shape
    avail = np.ones((n_rows, n), bool) if mask is None else np.broadcast_to(mask, (n_rows, n))
    return np.stack([brute_positions(scores[b].astype(np.float64), avail[b]) for b in range(n_rows)])


def make_mask(rng, kind, n_rows, n):
    if kind is None:
        return None
    if kind == "global":
        m = rng.random(n) < 0.7
        m[0] = True
        return m
    m = rng.random((n_rows, n)) < 0.7
    m[:2] = True
    m[2] = False  # a row with no available item: all zeros
    return m


@pytest.mark.parametrize("method", ["exact", "integral", "auto"])
@pytest.mark.parametrize("masked", [None, "row", "global"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_positions_match_enumeration(backend: Backend, rng, method, masked, dtype):
    for n in (1, 2, 4, 7):
        scores = (rng.normal(size=(21, n)) * 2).astype(dtype)
        scores[3] = 0.25  # ties
        mask = make_mask(rng, masked, 21, n)
        want = brute(scores, mask)
        got = backend.numpy(
            marginals.positions(
                backend.array(scores), mask=None if mask is None else backend.array(mask), method=method
            )
        )
        assert got.dtype == np.float64 and got.shape == (21, n, n)
        np.testing.assert_allclose(got, want, atol=1e-9 if method != "exact" else 1e-12)
        for k in sorted({1, min(3, n), n}):
            inc = backend.numpy(
                marginals.topk_inclusion(
                    backend.array(scores),
                    k,
                    mask=None if mask is None else backend.array(mask),
                    method=method,
                )
            )
            np.testing.assert_allclose(inc, want[:, :, :k].sum(axis=2), atol=1e-9)


def test_rows_and_columns_sum_to_one_over_available(rng):
    n = 9
    scores = rng.normal(size=(50, n)) * 3
    mask = make_mask(rng, "row", 50, n)
    for method in ("exact", "integral"):
        p = marginals.positions(scores, mask=mask, method=method)
        avail = mask.sum(axis=1)
        np.testing.assert_allclose(p.sum(axis=2), mask.astype(float), atol=1e-10)
        cols = np.arange(n)[None, :] < avail[:, None]
        np.testing.assert_allclose(p.sum(axis=1), cols.astype(float), atol=1e-10)
        assert (p[~mask] == 0).all()


@pytest.mark.parametrize("n", range(1, 16))
@pytest.mark.parametrize("masked", [None, "row", "global"])
def test_grouped_exact_dp_matches_the_sorted_reference(rng, n, masked):
    """Up to 15 items the exact DP runs eight contexts at once on unsorted worths (the last group padded);
    the reference sorts every context and rescales per set. They agree to a few ulp relative, also for a group
    holding a context whose available scores spread wider than the grouped DP takes (it falls back to the
    sorted per-context DP), with masks, and for rows with one or no available item."""
    rows = 19 if n < 13 else 9
    scores = rng.normal(size=(rows, n)) * 3
    scores[5, 0] += 800.0  # the first group falls back
    scores[rows - 2] *= 20.0  # spread ~100, in the padded last group
    mask = make_mask(rng, masked, rows, n)
    if masked == "row":
        mask[4] = np.arange(n) == 0  # one available item
        mask[5, 0] = True
    for k in (0, 1, max(1, n // 2)):
        got = (
            marginals.positions(scores, mask=mask, method="exact")
            if k == 0
            else marginals.topk_inclusion(scores, k, mask=mask, method="exact")
        )
        want, bad = _reference.marg_exact(scores, mask, k)
        assert bad == _reference.NO_ERROR
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)
        assert (got[want < 1e-250] <= 1e-250).all()
        if mask is not None:
            assert (got[~np.broadcast_to(mask, scores.shape)] == 0).all()
    f32 = scores.astype(np.float32)
    np.testing.assert_allclose(
        marginals.positions(f32, mask=mask, method="exact"),
        _reference.marg_exact(f32.astype(np.float64), mask, 0)[0],
        atol=1e-13,
    )


def test_auto_is_exact_up_to_14_items_on_the_cpu(rng):
    for n, method in ((14, "exact"), (15, "integral")):
        scores = rng.normal(size=(3, n))
        np.testing.assert_array_equal(
            marginals.positions(scores, method="auto"), marginals.positions(scores, method=method)
        )


@pytest.mark.parametrize("n", [6, 10, 16])
@pytest.mark.parametrize("spread", [0.1, 1.0, 5.0, 20.0])
def test_integral_within_1e6_of_exact(rng, n, spread):
    scores = rng.uniform(0.0, spread, size=(6 if n == 16 else 40, n))
    scores[:, 0], scores[:, 1] = 0.0, spread  # the full spread in every row
    exact = marginals.positions(scores, method="exact")
    integral = marginals.positions(scores, method="integral")
    assert np.abs(integral - exact).max() <= 1e-6
    assert np.abs(integral - exact).max() <= 1e-9  # the measured margin (documented: <= 3e-11)


def test_integral_with_huge_score_gaps(backend: Backend, rng):
    """Tiers of items 1e3 .. 1e16 apart (worth ratios across them are 0 in float64): the integral equals the
    exact DP (the node loop never ended at a gap of 1e16: k + 1 == k), and stays fast for wide score ranges."""
    tiers = np.array([0.0, 0.4, -1.3, -1e3 - 5.0, -1e3 - 5.2, -1e9, -1e9 + 0.7, -3e12, -1e16, -1e16 - 4.0])
    scores = np.stack([rng.permutation(tiers) for _ in range(3)])
    scores[2, :2] = [1e16, -1e16]
    got = backend.numpy(marginals.positions(backend.array(scores), method="integral"))
    np.testing.assert_allclose(got, marginals.positions(scores, method="exact"), atol=1e-9)
    wide = np.linspace(0.0, -2e5, 40)[None]
    np.testing.assert_allclose(backend.numpy(marginals.positions(backend.array(wide), method="auto"))[0],
                               np.eye(40), atol=1e-9)


def test_reference_integral_and_exact_agree_with_the_kernels(rng):
    scores = rng.normal(size=(13, 11)) * 4
    mask = make_mask(rng, "row", 13, 11)
    for method, code in (("exact", 0), ("integral", 1)):
        ref, _ = _reference.marg_model(scores, mask, code, 0, 0, 0)
        np.testing.assert_allclose(marginals.positions(scores, mask=mask, method=method), ref, atol=1e-12)


def test_integral_for_many_items_is_doubly_stochastic_and_matches_monte_carlo(rng):
    n = 60
    scores = rng.normal(size=(2, n)) * 2
    p = marginals.positions(scores, method="integral")
    np.testing.assert_allclose(p.sum(axis=2), 1.0, atol=1e-10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-10)
    mc = marginals.positions(scores, method="mc", n_samples=4000, seed=3)
    se = np.sqrt((p * (1 - p) + 1 / 4000) / 4000)  # floored: a cell of probability ~0 may be hit once
    assert (np.abs(mc - p) / se).max() < 6.0  # 7200 cells: a few standard errors at most


def test_extreme_score_ranges_are_deterministic_orders():
    scores = np.array([[0.0, 800.0, -900.0, 50.0, 100.0, 1e4]])
    order = np.argsort(-scores[0])
    want = np.zeros((6, 6))
    want[order, np.arange(6)] = 1.0
    for method in ("exact", "integral"):
        np.testing.assert_allclose(marginals.positions(scores, method=method)[0], want, atol=1e-12)
    # within a chain of close scores spanning far more than exp's range, the order is still right
    chain = np.arange(12) * 45.0
    p = marginals.positions(chain, method="integral")
    np.testing.assert_allclose(p, np.eye(12)[::-1], atol=1e-12)


@pytest.mark.parametrize("k", [None, 2])
def test_monte_carlo_is_the_frequency_of_pl_sample(backend: Backend, rng, k):
    scores = rng.normal(size=(9, 5))
    mask = make_mask(rng, "row", 9, 5)
    kw = {"mask": None if mask is None else backend.array(mask), "method": "mc", "n_samples": 700, "seed": 11}
    draws = pl.sample(scores, 700, mask=mask, seed=11)
    freq = marginals.from_samples(draws, 5)
    if k is None:
        got = backend.numpy(marginals.positions(backend.array(scores), **kw))
        np.testing.assert_allclose(got, freq, atol=1e-15)
    else:
        got = backend.numpy(marginals.topk_inclusion(backend.array(scores), k, **kw))
        np.testing.assert_allclose(got, freq[:, :, :k].sum(axis=2), atol=1e-15)


def test_monte_carlo_within_five_standard_errors_and_many_samples_of_one_row(rng):
    scores = rng.normal(size=(3, 6))
    exact = marginals.positions(scores, method="exact")
    mc = marginals.positions(scores, method="mc", n_samples=20_000, seed=5)
    se = np.sqrt((exact * (1 - exact) + 1 / 20_000) / 20_000)
    assert (np.abs(mc - exact) / se).max() < 5.0
    # more draws than one sampling block holds (several sample blocks of a single row)
    big = marginals.positions(np.linspace(0, 1, 40), method="mc", n_samples=120_000, seed=2)
    ref = marginals.positions(np.linspace(0, 1, 40), method="integral")
    assert np.abs(big - ref).max() < 0.01


def test_from_samples_of_pl_sample_converges_to_positions(rng):
    scores = rng.normal(size=(4, 5))
    freq = marginals.from_samples(pl.sample(scores, 50_000, seed=9), 5)
    assert np.abs(freq - marginals.positions(scores)).max() < 0.015


def test_from_samples_counts_like_a_loop(backend: Backend, rng):
    """Frequencies of the listed items of padded draws, counted in a loop (a draw of all items but one implies
    nothing: the item left out may be outside the choice set, as in masked draws of pl.sample)."""
    n, size = 5, 6
    samples = np.stack([np.stack([rng.permutation(n) for _ in range(size)]) for _ in range(3)])
    lengths = rng.integers(0, n + 1, (3, size))
    for b, t in np.ndindex(3, size):
        samples[b, t, lengths[b, t] :] = -1
    want = np.zeros((3, n, n))
    for b, t in np.ndindex(3, size):
        for j, i in enumerate(int(v) for v in samples[b, t] if v >= 0):
            want[b, i, j] += 1 / size
    got = backend.numpy(marginals.from_samples(backend.array(samples), n))
    np.testing.assert_allclose(got, want, atol=1e-15)
    with pytest.raises(ValueError, match=r"samples has no draws \(S = 0\)"):
        marginals.from_samples(backend.array(np.zeros((2, 0, 3), np.int64)), 3)
    none = marginals.from_samples(backend.array(np.zeros((0, 0, 3), np.int64)), 3)
    assert backend.numpy(none).shape == (0, 3, 3)


def test_one_model_over_per_row_masks_checks_its_scores_once():
    # the n values of a global model are checked even with no rows, and named as given (1-D)
    for call in (
        lambda s, m: marginals.positions(s, mask=m),
        lambda s, m: marginals.topk_inclusion(s, 1, mask=m),
        lambda s, m: pl.sample(s, mask=m),
        lambda s, m: pl.mode(s, mask=m),
    ):
        for rows in (0, 2):
            with pytest.raises(ValueError, match=r"^scores contains NaN at index 1$"):
                call(np.array([0.0, np.nan, 1.0]), np.ones((rows, 3), bool))


def test_reference_marginals_of_extreme_scores_warn_of_nothing(rng):
    # under -W error a harmless overflow in the reference's unused entries was an exception
    with get_backend("reference").active():
        ref = [
            marginals.positions(np.r_[20.0, np.zeros(20)]),  # auto: the integral
            marginals.positions(np.array([1.7e308, -1.7e308, 0.0]), method="exact"),
            marginals.positions(np.array([1.7e308, -1.7e308, 0.0]), method="integral"),
        ]
    np.testing.assert_allclose(ref[0], marginals.positions(np.r_[20.0, np.zeros(20)]), atol=1e-12)
    np.testing.assert_allclose(ref[1], np.eye(3)[[0, 2, 1]], atol=1e-12)
    np.testing.assert_allclose(ref[2], ref[1], atol=1e-9)


def test_results_do_not_depend_on_the_thread_count(rng):
    scores = rng.normal(size=(300, 9))
    rankings = pl.sample(scores, seed=1)[:, 0]
    rankings[::4, 5:] = -1
    weights = rng.random(300)
    outs = []
    for threads in (1, 2):
        prefcal.config.set_num_threads(threads)
        try:
            outs.append(
                [
                    marginals.positions(scores, method="exact"),
                    marginals.positions(scores[:20], method="integral"),
                    marginals.positions(scores[:30], method="mc", n_samples=200, seed=4),
                    marginals.empirical_positions(rankings, 9, weights=weights),
                    marginals.empirical_pairwise(rankings, 9, weights=weights),
                ]
            )
        finally:
            prefcal.config.set_num_threads(0)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


def loop_empirical(rankings, n, mask, weights):
    pos, pair = np.zeros((n, n)), np.zeros((n, n))
    for b, row in enumerate(rankings):
        w = 1.0 if weights is None else weights[b]
        avail = np.ones(n, bool) if mask is None else (mask if mask.ndim == 1 else mask[b])
        listed = [int(v) for v in row if v >= 0]
        for j, i in enumerate(listed):
            pos[i, j] += w
            for later in listed[j + 1 :]:
                pair[i, later] += w
            for u in range(n):
                if avail[u] and u not in listed:
                    pair[i, u] += w
        left = [u for u in range(n) if avail[u] and u not in listed]
        if len(left) == 1:  # all available items but one listed: a full ranking, that one last (SPEC §1)
            pos[left[0], len(listed)] += w
    return pos, pair


@pytest.mark.parametrize("masked", [None, "row", "global"])
def test_empirical_counts_match_a_loop(backend: Backend, rng, masked):
    n = 7
    scores = rng.normal(size=(120, n))
    mask = make_mask(rng, masked, 120, n)
    if mask is not None and mask.ndim == 2:
        mask[2, 0] = True
    rankings = pl.sample(scores, mask=mask, seed=3)[:, 0]
    rankings[::3, 3:] = -1
    rankings[1::3, n - 1 :] = -1  # all but one (of the unmasked rows): the last one implied
    weights = rng.random(120)
    want_pos, want_pair = loop_empirical(rankings, n, mask, weights)
    kw = {"mask": None if mask is None else backend.array(mask), "weights": backend.array(weights)}
    got_pos = backend.numpy(marginals.empirical_positions(backend.array(rankings), n, **kw))
    got_pair = backend.numpy(marginals.empirical_pairwise(backend.array(rankings), n, **kw))
    np.testing.assert_allclose(got_pos, want_pos, rtol=1e-12)
    np.testing.assert_allclose(got_pair, want_pair, rtol=1e-12)
    np.testing.assert_allclose(
        backend.numpy(marginals.empirical_positions(backend.array(rankings), n)),
        loop_empirical(rankings, n, None, None)[0],
    )


def test_one_context_shapes_and_the_pairwise_alias():
    s = np.array([1.0, 0.0, -1.0])
    assert marginals.positions(s).shape == (3, 3)
    assert marginals.topk_inclusion(s, 1).shape == (3,)
    np.testing.assert_allclose(marginals.topk_inclusion(s, 1), np.exp(s) / np.exp(s).sum())
    assert marginals.from_samples(pl.sample(s, 10, seed=0), 3).shape == (3, 3)
    assert marginals.pairwise is pl.pairwise


def test_torch_cpu_tensors_give_tensors():
    torch = pytest.importorskip("torch")
    out = marginals.positions(torch.zeros(2, 3, dtype=torch.float64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 3)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-8, 8, allow_nan=False), min_size=1, max_size=9),
    st.integers(1, 9),
)
def test_property_exact_and_integral_are_consistent_distributions(values, k):
    s = np.array(values)
    n = len(s)
    k = min(k, n)
    exact = marginals.positions(s, method="exact")
    np.testing.assert_allclose(exact.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(exact.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(marginals.positions(s, method="integral"), exact, atol=1e-9)
    np.testing.assert_allclose(
        marginals.topk_inclusion(s, k, method="exact"), exact[:, :k].sum(axis=1), atol=1e-12
    )
    # a higher score is never less likely to be first
    order = np.argsort(-s, kind="stable")
    assert np.all(np.diff(exact[order, 0]) <= 1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(1, 20),
    st.sampled_from([0.0, 1.0, 30.0, 200.0, 600.0]),
    st.sampled_from([None, "row", "global"]),
    st.integers(0, 2**32 - 1),
)
def test_property_exact_equals_the_sorted_reference(n, rows, scale, masked, seed):
    """The exact DP (eight unsorted contexts at once, a sorted per-context fallback for wide spreads) against
    the sorted NumPy reference, for score scales from ties to hundreds apart, with masks."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(rows, n)) * scale
    mask = make_mask(rng, masked, rows, n) if rows >= 3 else None
    got = marginals.positions(scores, mask=mask, method="exact")
    want, _ = _reference.marg_exact(scores, mask, 0)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_gpu_deflation_divides_the_clock_product(rng):
    """marg::deflate (the CUDA integral's arithmetic; the CPU kernel runs a vectorised twin) undoes one clock
    of the product, from either end."""
    cpu = pytest.importorskip("prefcal._cpu")
    n = 30
    b = np.sort(rng.random(n))
    a = 1.0 - b
    full = np.array([1.0])
    for al, bl in zip(a, b, strict=True):
        full = np.convolve(full, [bl, al])  # low degree first
    for i in (0, n // 2, n - 1):  # b < a, b ~ a, b > a
        rest = np.array([1.0])
        for al, bl in zip(np.delete(a, i), np.delete(b, i), strict=True):
            rest = np.convolve(rest, [bl, al])
        np.testing.assert_allclose(cpu.marg_deflate(full, a[i], b[i]), rest, atol=1e-14)


# ----------------------------------------------------------------------------------------- rejections


def test_rejections():
    s = np.zeros((2, 3))
    with pytest.raises(ValueError, match="method='integral'"):
        marginals.positions(np.zeros(21), method="exact")
    with pytest.raises(ValueError, match="method must be one of"):
        marginals.positions(s, method="dp")
    with pytest.raises(ValueError, match="k must be between 1 and 3"):
        marginals.topk_inclusion(s, 0)
    with pytest.raises(ValueError, match="k must be between 1 and 3"):
        marginals.topk_inclusion(s, 4)
    with pytest.raises(TypeError, match="k must be an integer"):
        marginals.topk_inclusion(s, 1.5)
    with pytest.raises(ValueError, match="n_samples must be at least 1"):
        marginals.positions(s, method="mc", n_samples=0)
    with pytest.raises(ValueError, match=r"seed must be between"):
        marginals.positions(s, method="mc", seed=-1)
    bad = np.zeros((3, 3))
    bad[1, 2] = np.inf
    for method in ("exact", "integral", "mc"):
        with pytest.raises(ValueError, match=r"scores contains inf at \[1, 2\]"):
            marginals.positions(bad, method=method)
    with pytest.raises(ValueError, match=r"scores contains NaN at index 0"):
        marginals.positions(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="mask must have shape"):
        marginals.positions(s, mask=np.ones(4, bool))
    with pytest.raises(ValueError, match="no items"):
        marginals.positions(np.zeros((2, 0)))
    np.testing.assert_allclose(marginals.positions(np.zeros((2, 3), dtype=np.int64)), 1 / 3)  # integer scores


def test_sample_and_ranking_rejections():
    samples = np.array([[[0, 1, 2], [1, 1, 0]], [[0, 1, 2], [2, 1, 0]]])
    with pytest.raises(ValueError, match=r"samples\[0, 1\] repeats item 1"):
        marginals.from_samples(samples, 3)
    samples[0, 1] = [0, -1, 2]
    with pytest.raises(ValueError, match=r"samples\[0, 1, 2\] = 2 follows padding"):
        marginals.from_samples(samples, 3)
    samples[0, 1] = [0, 1, 5]
    with pytest.raises(ValueError, match=r"samples\[0, 1, 2\] = 5 is out of range"):
        marginals.from_samples(samples, 3)
    with pytest.raises(ValueError, match="samples have 3 positions but there are only n_items=2"):
        marginals.from_samples(np.zeros((1, 1, 3), dtype=np.int32), 2)
    with pytest.raises(ValueError, match="3-dimensional"):
        marginals.from_samples(np.zeros(3, dtype=np.int32), 3)
    with pytest.raises(TypeError, match="integers"):
        marginals.from_samples(np.zeros((1, 2, 2)), 2)
    r = np.array([[0, 1, 2], [1, 1, -1]])
    for fn in (marginals.empirical_positions, marginals.empirical_pairwise):
        with pytest.raises(ValueError, match=r"rankings\[1\] repeats item 1"):
            fn(r, 3)
        with pytest.raises(ValueError, match=r"rankings\[0, 2\] = 2 is not available in row 0"):
            fn(np.array([[0, 1, 2]]), 3, mask=np.array([True, True, False]))
        with pytest.raises(ValueError, match=r"weights\[1\]"):
            fn(np.array([[0, 1], [1, 0]]), 3, weights=np.array([1.0, -1.0]))
        with pytest.raises(ValueError, match="rankings and weights have different lengths: 2 vs 3"):
            fn(np.array([[0, 1], [1, 0]]), 3, weights=np.ones(3))
        with pytest.raises(ValueError, match="rankings have 4 positions"):
            fn(np.zeros((1, 4), dtype=np.int32), 3)
        with pytest.raises(ValueError, match="n_items must be at least 1"):
            fn(r, 0)
