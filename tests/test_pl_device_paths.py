"""The per-row paths of the CUDA Plackett-Luce kernels (prefcal/pl.hpp), run on the host through test hooks of
the C++ extension: the staged log-likelihood's row function (pl::row_loglik_small) and the register sampler
(pl::draw_small). The GPU runs this same code, so these tests check its arithmetic on any machine; the GPU
tests (test_pl.py on the cupy / torch-cuda backends) then check the kernels around it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import get_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from prefcal import _backend, _reference, pl
from prefcal._validation import NO_ERROR
from test_pl import pl_data

cpu = pytest.importorskip("prefcal._cpu", reason="the C++ extension is not built")


def reference_rows(scores, rankings, mask):
    """(float64 log-likelihood of the valid rows, 0 elsewhere; per-row validity) from the NumPy reference."""
    _, _, (_, _, _, bad) = _reference._pl_rows(scores, rankings, mask)
    ll = np.zeros(len(rankings))
    good = ~bad
    if good.any():
        m = None if mask is None else (mask if mask.ndim == 1 else mask[good])
        ll[good], _, _ = _reference.pl_loglik(scores[good].astype(np.float64), rankings[good], m, False)
    return ll, good


# ----------------------------------------------------------------------------------------- log-likelihood


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 31, 32, 33, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("masked", [None, "row", "global"])
def test_loglik_small_matches_reference(rng, n, dtype, partial, masked):
    scores, rankings, mask = pl_data(rng, 300, n, partial=partial, masked=masked, dtype=dtype)
    ll, ok = cpu.pl_loglik_small(scores, rankings, mask)
    want, good = reference_rows(scores, rankings, mask)
    assert ok.all() and good.all()
    tol = 2e-6 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(ll - want) <= tol * (1 + np.abs(want)))
    if n <= 32:  # the fixed-width function: the same numbers, bit for bit
        ll_fixed, ok_fixed = cpu.pl_loglik_small(scores, rankings, mask, fixed=True)
        np.testing.assert_array_equal(ok_fixed, ok)
        np.testing.assert_array_equal(ll_fixed, ll)


@pytest.mark.parametrize("masked", [None, "row"])
def test_loglik_small_float64_agrees_with_the_cpu_kernel(rng, masked):
    """In float64 the GPU's row function and the CPU kernel (its own exp) agree to a few ulp."""
    scores, rankings, mask = pl_data(rng, 2000, 10, partial=True, masked=masked)
    ll, ok = cpu.pl_loglik_small(scores, rankings, mask)
    want, _, bad = cpu.pl_loglik(scores, rankings, mask, False)
    assert ok.all() and bad == NO_ERROR
    assert np.all(np.abs(ll - want) <= 1e-14 * (1 + np.abs(want)))


@pytest.mark.parametrize("idtype", [np.int32, np.int64])  # the kernels' label types
def test_loglik_small_ranking_dtypes(rng, idtype):
    scores, rankings, _ = pl_data(rng, 200, 12, partial=True)
    ll, ok = cpu.pl_loglik_small(scores, rankings.astype(idtype), None)
    want, _ = reference_rows(scores, rankings, None)
    assert ok.all()
    np.testing.assert_allclose(ll, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spread", [50.0, 400.0, 1e4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fixed", [False, True])
def test_loglik_small_wide_score_ranges(rng, spread, dtype, fixed):
    """Rows whose scores span more than the fast path allows take the stable float64 path."""
    scores, rankings, _ = pl_data(rng, 300, 9, partial=True, spread=spread, dtype=dtype)
    ll, ok = cpu.pl_loglik_small(scores, rankings, None, fixed=fixed)
    want, _ = reference_rows(scores, rankings, None)
    assert ok.all()
    if dtype == np.float32:
        # Rows spanning at most 80 take the float32 fast path, which rounds each s - max to the float32 grid
        # of the row's span: every listed item's term carries an absolute error of about eps32 * span (a row
        # of span 74 and 7 listed items was 5.5e-6 off, against 1.2 in all).
        listed = (rankings >= 0).sum(axis=1)
        span = scores.max(axis=1).astype(np.float64) - scores.min(axis=1)
        bound = 2e-6 * (1 + np.abs(want)) + 2 * np.finfo(np.float32).eps * listed * (span + 4)
    else:
        # each term s_i - log D is a difference of numbers of the scores' magnitude: an ulp of the largest
        # |score| an item (the reference takes the scores less the row maximum, the kernel its own order)
        listed = (rankings >= 0).sum(axis=1)
        ulp = np.finfo(np.float64).eps * np.abs(scores).max(axis=1)
        bound = 1e-12 * (1 + np.abs(want)) + 2 * listed * ulp
    assert np.all(np.abs(ll - want) <= bound)


def bad_rows():
    """(rankings (N, 4) int64, mask (N, 5), scores (N, 5), expected validity): one problem per row."""
    rows = [
        ([0, 1, 2, 3], None, True),
        ([4, -1, -1, -1], None, True),
        ([-1, -1, -1, -1], None, True),
        ([0, 5, 1, -1], None, False),  # out of range
        ([0, -2, 1, -1], None, False),  # negative
        ([0, -(2**40), 1, -1], None, False),  # negative, does not fit 32 bits
        ([0, 2**32 + 1, 2, -1], None, False),  # wraps to 1 in 32 bits
        ([0, 2, 0, -1], None, False),  # repeat
        ([0, -1, 1, -1], None, False),  # item after padding
        ([0, -1, -1, 3], None, False),
        ([0, 3, -1, -1], [1, 1, 1, 0, 1], False),  # listed item outside the mask
        ([0, 1, -1, -1], [1, 1, 0, 0, 0], True),
        ([0, 1, -1, -1], [0, 0, 0, 0, 0], False),
    ]
    rankings = np.array([r for r, _, _ in rows], dtype=np.int64)
    mask = np.array([m if m is not None else [1] * 5 for _, m, _ in rows], dtype=bool)
    valid = np.array([v for _, _, v in rows])
    return rankings, mask, valid


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fixed", [False, True])
def test_loglik_small_flags_every_invalid_row(rng, dtype, fixed):
    rankings, mask, valid = bad_rows()
    scores = rng.normal(size=(len(rankings), 5)).astype(dtype)
    ll, ok = cpu.pl_loglik_small(scores, rankings, mask, fixed=fixed)
    np.testing.assert_array_equal(ok, valid)
    _, good = reference_rows(scores, rankings, mask)
    np.testing.assert_array_equal(ok, good)
    # a non-finite score anywhere in the row (listed, unlisted or masked out) makes it bad
    for value in (np.nan, np.inf, -np.inf):
        for col in (0, 4):
            s = scores.copy()
            s[0, col] = value
            _, ok2 = cpu.pl_loglik_small(s, rankings, mask, fixed=fixed)
            assert not ok2[0] and (ok2[1:] == valid[1:]).all()


@pytest.mark.parametrize("n", [1, 2, 5, 10, 12, 13, 31, 32])
@pytest.mark.parametrize("idtype", [np.int32, np.int64])
def test_loglik_fixed_full_rankings_without_a_mask(rng, n, idtype):
    """Full-width rankings without a mask take row_loglik_fixed's short check (n entries in range setting n
    distinct bits); every other such row, padded or bad, must still be read the general way: the same
    validity and numbers as row_loglik_small and the reference, row by row."""
    N = 64
    scores = rng.normal(size=(N, n)).astype(np.float32)
    rankings = np.argsort(rng.random((N, n)), axis=1).astype(np.int64)
    cases = ["ok", "pad_tail", "pad_head", "range", "negative", "repeat", "wide", "score"]
    for b in range(N):
        case, j = cases[b % len(cases)], int(rng.integers(n))
        if case == "pad_tail":
            rankings[b, j:] = -1  # a partial ranking (valid), or no item listed
        elif case == "pad_head" and n > 1:
            rankings[b, min(j, n - 2)] = -1  # a hole: a listed item after the padding (bad)
        elif case == "range":
            rankings[b, j] = n + (b % 3)
        elif case == "negative":
            rankings[b, j] = -2 - (b % 3)
        elif case == "repeat" and n > 1:
            rankings[b, (j + 1) % n] = rankings[b, j]
        elif case == "wide" and idtype == np.int64:
            rankings[b, j] += 2**32  # narrows to a valid item: still out of range
        elif case == "score":
            scores[b, j] = np.nan
    rankings = rankings.astype(idtype)
    ll, ok = cpu.pl_loglik_small(scores, rankings, None, fixed=True)
    ll_small, ok_small = cpu.pl_loglik_small(scores, rankings, None)
    np.testing.assert_array_equal(ok, ok_small)
    np.testing.assert_array_equal(ll, ll_small)
    want, good = reference_rows(scores, rankings.astype(np.int64), None)
    np.testing.assert_array_equal(ok, good)
    assert np.all(np.abs(ll - want) <= 2e-6 * (1 + np.abs(want)))
    if n > 1:
        assert ok.sum() >= N // len(cases) and not ok.all()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 64),
    corrupt=st.sampled_from(["none", "range", "repeat", "hole", "mask", "score"]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_loglik_small_properties(seed, n, corrupt, dtype):
    """Random rows, some corrupted one way: the hook flags exactly the rows the reference rejects and agrees
    with it on the rest."""
    rng = np.random.default_rng(seed)
    scores, rankings, mask = pl_data(rng, 40, n, partial=True, masked="row", dtype=dtype)
    rankings = rankings.astype(np.int64)
    rows = rng.random(40) < 0.3
    for b in np.flatnonzero(rows):
        listed = int((rankings[b] >= 0).sum())
        if corrupt == "range" and listed:
            rankings[b, rng.integers(listed)] = rng.choice([n, n + 7, -3])
        elif corrupt == "repeat" and listed >= 2:
            rankings[b, 1] = rankings[b, 0]
        elif corrupt == "hole" and 1 <= listed < n:
            rankings[b, listed] = rankings[b, 0]
            rankings[b, 0] = -1
        elif corrupt == "mask" and listed:
            mask[b, rankings[b, 0]] = False
        elif corrupt == "score":
            scores[b, rng.integers(n)] = rng.choice([np.nan, np.inf, -np.inf])
    ll, ok = cpu.pl_loglik_small(scores, rankings, mask)
    want, good = reference_rows(scores, rankings, mask)
    np.testing.assert_array_equal(ok, good)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(ll - want) <= tol * (1 + np.abs(want)))
    if n <= 32:
        ll_fixed, ok_fixed = cpu.pl_loglik_small(scores, rankings, mask, fixed=True)
        np.testing.assert_array_equal(ok_fixed, ok)
        np.testing.assert_array_equal(ll_fixed, ll)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("k", ["full", "top2"])
def test_loglik_small_probabilities_sum_to_one(rng, n, k):
    """Over every ordering (or every top-2 prefix) of n items, the probabilities of one row sum to 1."""
    length = n if k == "full" else min(2, n)
    perms = np.array(list(itertools.permutations(range(n), length)), dtype=np.int32).reshape(-1, length)
    rankings = np.full((len(perms), n), -1, dtype=np.int32)
    rankings[:, :length] = perms
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        scores = np.broadcast_to(rng.normal(size=n) * 2, (len(perms), n)).astype(dtype)
        for fixed in (False, True):
            ll, ok = cpu.pl_loglik_small(np.ascontiguousarray(scores), rankings, None, fixed=fixed)
            assert ok.all()
            assert abs(np.exp(ll).sum() - 1.0) < tol


def test_loglik_small_rejects_wide_rows():
    with pytest.raises(ValueError, match="n <= 64"):
        cpu.pl_loglik_small(np.zeros((2, 65)), np.zeros((2, 3), dtype=np.int32), None)
    with pytest.raises(ValueError, match="n <= 32"):
        cpu.pl_loglik_small(np.zeros((2, 33)), np.zeros((2, 3), dtype=np.int32), None, fixed=True)


# The exact-width function (pl::row_loglik_exact<n>, the GPU's exact-width kernel): full rankings of exactly n
# items without a mask, every loop over exactly n items, the rows it does not take read by row_loglik_fixed.
EXACT_NS = list(range(2, 17))


@pytest.mark.parametrize("n", EXACT_NS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("idtype", [np.int32, np.int64])
def test_loglik_exact_equals_row_loglik_small(rng, n, dtype, idtype):
    """Valid full rankings: the exact-width function takes every row and gives row_loglik_small's numbers bit
    for bit (scores of several scales, ties, signed zeros), within 2e-6 of the float64 reference."""
    N = 400
    scores = rng.normal(size=(N, n)) * rng.choice([0.1, 1.0, 3.0, 6.0], size=(N, 1))  # spans < 80
    scores[::7, :2] = 0.0
    scores[::11, 0] = -0.0  # signed zeros at the top of the range
    scores[::13] = np.round(scores[::13])  # ties
    scores = scores.astype(dtype)
    rankings = np.argsort(rng.random((N, n)), axis=1).astype(idtype)
    ll, ok, fast = cpu.pl_loglik_exact(scores, rankings)
    assert ok.all() and fast.all()
    ll_small, ok_small = cpu.pl_loglik_small(scores, rankings, None)
    assert ok_small.all()
    np.testing.assert_array_equal(ll, ll_small)
    want, _ = reference_rows(scores, rankings.astype(np.int64), None)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(ll - want) <= tol * (1 + np.abs(want)))


@pytest.mark.parametrize("n", [2, 3, 5, 8, 10, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("idtype", [np.int32, np.int64])
def test_loglik_exact_leaves_every_other_row_to_the_general_path(rng, n, dtype, idtype):
    """Padded, bad, non-finite and wide-ranged rows are not taken by the exact-width function, and the
    kernel's result for them (row_loglik_fixed's) has row_loglik_small's validity and numbers; a non-finite
    score is caught in every column, first or last in the ranking."""
    span = 80.0 if dtype == np.float32 else 300.0
    cases = "ok pad_tail hole range negative repeat wide nan inf -inf span edge".split()
    N = 12 * len(cases)
    scores = rng.normal(size=(N, n))
    rankings = np.argsort(rng.random((N, n)), axis=1).astype(np.int64)
    expect_fast = np.zeros(N, dtype=bool)
    for b in range(N):
        case, j = cases[b % len(cases)], int(rng.integers(n))
        if case == "ok":
            expect_fast[b] = True
        elif case == "pad_tail":
            rankings[b, j:] = -1
        elif case == "hole":
            rankings[b, min(j, n - 2)] = -1
        elif case == "range":
            rankings[b, j] = n + (b % 3)
        elif case == "negative":
            rankings[b, j] = -2 - (b % 3)
        elif case == "repeat":
            rankings[b, (j + 1) % n] = rankings[b, j]
        elif case == "wide" and idtype == np.int64:
            rankings[b, j] += 2**32  # narrows to a valid item: still out of range
        elif case == "wide":
            expect_fast[b] = True
        elif case in ("nan", "inf", "-inf"):
            # the column of the first, the last or any ranked item, or column 0 (the start of the min / max)
            col = [0, int(rankings[b, 0]), int(rankings[b, n - 1]), j][(b // len(cases)) % 4]
            scores[b, col] = float(case)
        elif case == "span":
            scores[b, j] = scores[b].max() + span + 1.0  # beyond the fast path's range: the float64 path
        elif case == "edge":
            scores[b] = np.where(np.arange(n) == j, span / 2, -span / 2)  # a span of exactly Span: taken
            expect_fast[b] = True
    scores = scores.astype(dtype)
    rankings = rankings.astype(idtype)
    ll, ok, fast = cpu.pl_loglik_exact(scores, rankings)
    np.testing.assert_array_equal(fast, expect_fast)
    ll_small, ok_small = cpu.pl_loglik_small(scores, rankings, None)
    np.testing.assert_array_equal(ok, ok_small)
    np.testing.assert_array_equal(ll, ll_small)
    want, good = reference_rows(scores, rankings.astype(np.int64), None)
    np.testing.assert_array_equal(ok, good)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(ll - want) <= tol * (1 + np.abs(want)))


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_loglik_exact_probabilities_sum_to_one(rng, n):
    """Over every ordering of n items the exact-width function's probabilities of one row sum to 1."""
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int32)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        scores = np.ascontiguousarray(np.broadcast_to(rng.normal(size=n) * 2, (len(perms), n)).astype(dtype))
        ll, ok, fast = cpu.pl_loglik_exact(scores, perms)
        assert ok.all() and fast.all()
        assert abs(np.exp(ll).sum() - 1.0) < tol


def test_loglik_exact_rejects_other_shapes():
    for n, m in ((1, 1), (17, 17), (5, 4)):
        with pytest.raises(ValueError, match="full rankings of 2 .. 16 items"):
            cpu.pl_loglik_exact(np.zeros((2, n)), np.zeros((2, m), dtype=np.int32))


# ----------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 12, 13, 16, 17, 24, 25, 32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [None, "row", "global"])
def test_draw_small_matches_the_cpu_sampler(rng, n, dtype, masked):
    """Every register width (4, 8, 12, 16, 24, 32) and the sizes around each; ties; masks; top-k; the mode."""
    scores = rng.normal(size=(41, n)).astype(dtype)
    scores[::5, : min(n, 4)] = 0.25  # ties
    mask = None
    if masked == "row":
        mask = rng.random((41, n)) < 0.8
        mask[3] = False  # a row with nothing available
    elif masked == "global":
        mask = rng.random(n) < 0.8
    for k in sorted({1, min(3, n), n}):
        for noise, size, seed in ((True, 3, 2**40 + 3), (False, 1, 0)):
            got = cpu.pl_sample_small(scores, mask, size, k, seed, noise)
            want, bad = cpu.pl_sample(scores, mask, size, k, seed, noise)
            assert bad == NO_ERROR
            np.testing.assert_array_equal(got, want)
    ref, _ = _reference.pl_sample(scores, mask, 2, n, 11, True)
    np.testing.assert_array_equal(cpu.pl_sample_small(scores, mask, 2, n, 11, True), ref)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    n=st.integers(1, 32),
    k=st.integers(0, 40),
    ties=st.booleans(),
    p_avail=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_draw_small_properties(seed, n, k, ties, p_avail):
    """Any seed, any k (beyond n too: -1 padding), tied scores, sparse masks: the samples of the CPU sampler,
    each a list of distinct available items followed by -1."""
    rng = np.random.default_rng(seed % 2**32)
    scores = rng.integers(0, 3, size=(7, n)).astype(np.float64) if ties else rng.normal(size=(7, n)) * 3
    mask = rng.random((7, n)) < p_avail if p_avail < 1 else None
    got = cpu.pl_sample_small(scores, mask, 2, k, seed, True)
    want, _ = cpu.pl_sample(scores, mask, 2, k, seed, True)
    np.testing.assert_array_equal(got, want)
    avail = np.ones((7, n), bool) if mask is None else mask
    for b, t in itertools.product(range(7), range(2)):
        row = got[b, t]
        listed = row[row >= 0]
        assert len(listed) == min(k, int(avail[b].sum()))
        assert (row[len(listed) :] == -1).all() and len(set(listed)) == len(listed)
        assert avail[b, listed].all()


@pytest.mark.parametrize("n", [1, 2, 5, 31, 32, 33, 40, 64, 100, 257])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [None, "row", "global"])
def test_gumbel_top_matches_the_cpu_sampler(rng, n, dtype, masked):
    """pl::gumbel_top, the GPU's draw for rows of more than 32 items and of the Monte Carlo marginals, run on
    the host: the samples of the CPU sampler and of the reference for every k (beyond n too), ties, masks
    (a row with nothing available), seeds that use the high bits, and the mode."""
    rows = 23
    scores = rng.normal(size=(rows, n)).astype(dtype) * 2
    scores[::4, : min(n, 6)] = 0.5  # ties
    mask = None
    if masked == "row":
        mask = rng.random((rows, n)) < 0.7
        mask[2] = False
    elif masked == "global":
        mask = rng.random(n) < 0.7
    for k in sorted({0, 1, min(3, n), n // 2, n, n + 2}):
        for noise, size, seed in ((True, 3, 2**63 + 2**40 + 5), (False, 1, 0)):
            got = cpu.pl_sample_insertion(scores, mask, size, k, seed, noise)
            want, bad = cpu.pl_sample(scores, mask, size, k, seed, noise)
            assert bad == NO_ERROR and got.shape == want.shape == (rows, size, k)
            np.testing.assert_array_equal(got, want)
    ref, _ = _reference.pl_sample(scores, mask, 2, n, 11, True)
    np.testing.assert_array_equal(cpu.pl_sample_insertion(scores, mask, 2, n, 11, True), ref)


def test_gumbel_top_equals_draw_small_where_both_apply(rng):
    """For n <= 32 the GPU has two draws (registers, and the insertion buffer); they give the same samples."""
    for n in (3, 12, 32):
        scores = rng.normal(size=(50, n))
        mask = rng.random((50, n)) < 0.8
        for k in (1, n):
            np.testing.assert_array_equal(
                cpu.pl_sample_insertion(scores, mask, 4, k, 99, True),
                cpu.pl_sample_small(scores, mask, 4, k, 99, True),
            )


def test_draw_small_rejects_wide_rows():
    with pytest.raises(ValueError, match="n <= 32"):
        cpu.pl_sample_small(np.zeros((2, 33)), None, 1, 3, 0, True)


# ----------------------------------------------------------------------------------------- the flat kernel

# Shapes the flat-staged log-likelihood kernel takes (n <= 32, n and m not multiples of 4). It is off by
# default (prefcal._cuda.set_loglik_kernel); these tests turn it on, on the GPU backends. On the CPU they
# check the same numbers against the CPU kernel, so the test logic itself runs everywhere.
FLAT_BACKENDS = ("cpu", "cupy", "torch-cuda", "cuda-staged")


def kernel_backend(name, kernel):
    """The backend `name`, active, with the GPU's log-likelihood kernels set to `kernel` while it is used."""
    b = get_backend(name)
    cuda = _backend.cuda_module() if b.on_gpu else None
    previous = cuda.set_loglik_kernel(kernel) if cuda is not None else None
    try:
        with b.active():
            yield b
    finally:
        if cuda is not None:
            cuda.set_loglik_kernel(previous)


@pytest.fixture(params=FLAT_BACKENDS)
def flat_backend(request):
    yield from kernel_backend(request.param, "flat")


@pytest.fixture(params=FLAT_BACKENDS)
def exact_backend(request):
    yield from kernel_backend(request.param, "exact")


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 17, 23, 25, 30, 31])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [None, "row", "global"])
def test_flat_loglik_matches_reference(flat_backend, rng, n, dtype, masked):
    b = flat_backend
    n_rows = 700  # several tiles, the last one partial
    for partial, idtype in ((False, np.int32), (True, np.int64)):
        scores, rankings, mask = pl_data(
            rng, n_rows, n, partial=partial, masked=masked, dtype=dtype, idtype=idtype
        )
        kw = {"mask": None if mask is None else b.array(mask)}
        got = b.numpy(pl.log_likelihood(b.array(scores), b.array(rankings), **kw))
        want, good = reference_rows(scores, rankings, mask)
        assert good.all() and got.dtype == dtype
        tol = 2e-6 if dtype == np.float32 else 1e-12
        assert np.all(np.abs(got - want) <= tol * (1 + np.abs(want)))


@pytest.mark.parametrize("n", [10, 7])
def test_flat_loglik_unaligned_rows(flat_backend, rng, n):
    """Arrays that start one row into an allocation (not 16-byte aligned): the element-wise copy."""
    b = flat_backend
    scores, rankings, _ = pl_data(rng, 601, n, partial=True, dtype=np.float32)
    got = b.numpy(pl.log_likelihood(b.array(scores)[1:], b.array(rankings)[1:]))
    want, _ = reference_rows(scores[1:], rankings[1:], None)
    assert np.all(np.abs(got - want) <= 2e-6 * (1 + np.abs(want)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_loglik_names_the_first_bad_row(flat_backend, rng, dtype):
    """Each kind of bad row, placed after a tile of good rows: the error names it."""
    b = flat_backend
    rankings, mask, valid = bad_rows()
    rankings = np.pad(rankings, ((0, 0), (0, 1)), constant_values=-1)  # m = n = 5
    good_s, good_r, _ = pl_data(rng, 300, 5, partial=True, dtype=dtype, idtype=np.int64)
    for row in np.flatnonzero(~valid):
        s = np.concatenate([good_s, rng.normal(size=(1, 5)).astype(dtype)])
        r = np.concatenate([good_r, rankings[row : row + 1]])
        m = np.concatenate([np.ones((300, 5), bool), mask[row : row + 1]])
        with pytest.raises(ValueError, match=r"rankings\[300"):
            pl.log_likelihood(b.array(s), b.array(r), mask=b.array(m))
    s = np.concatenate([good_s, good_s[:1]])
    s[300, 3] = np.nan
    r = np.concatenate([good_r, good_r[:1]])
    with pytest.raises(ValueError, match="300"):
        pl.log_likelihood(b.array(s), b.array(r))


# ------------------------------------------------------------------------------------- the exact-width kernel

# Full rankings of 2 .. 16 items without a mask (per-row scores, no gradient): one kernel per n, each row by
# pl::row_loglik_exact<n> and the rows it does not take by row_loglik_fixed. Off by default
# (set_loglik_kernel("exact")); on the CPU these tests check the same numbers against the CPU kernel.


def exact_data(rng, n_rows, n, dtype, idtype, mixed):
    """Full rankings of n items; with `mixed`, also rows the exact-width function leaves to the general one:
    padded rankings and scores spanning beyond its range."""
    scores = (rng.normal(size=(n_rows, n)) * 3).astype(dtype)
    rankings = np.argsort(rng.random((n_rows, n)), axis=1).astype(idtype)
    if mixed:
        rankings[::5, n // 2 :] = -1
        scores[3::7, 0] = scores[3::7].max(axis=1) + (90.0 if dtype == np.float32 else 310.0)
    return scores, rankings


@pytest.mark.parametrize("n", EXACT_NS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("idtype", [np.int32, np.int64])
def test_exact_loglik_matches_reference(exact_backend, rng, n, dtype, idtype):
    b = exact_backend
    tol = 2e-6 if dtype == np.float32 else 1e-12
    for mixed in (False, True):
        scores, rankings = exact_data(rng, 700, n, dtype, idtype, mixed)  # several tiles, the last partial
        got = b.numpy(pl.log_likelihood(b.array(scores), b.array(rankings)))
        want, good = reference_rows(scores, rankings.astype(np.int64), None)
        assert good.all() and got.dtype == dtype
        assert np.all(np.abs(got - want) <= tol * (1 + np.abs(want)))


@pytest.mark.parametrize("n", [10, 8, 7, 16])
@pytest.mark.parametrize("idtype", [np.int32, np.int64])
def test_exact_loglik_unaligned_rows(exact_backend, rng, n, idtype):
    """Arrays that start one row into an allocation (not 16-byte aligned for these n): the element-wise copy,
    into unpadded tiles (n = 7, 10) and padded ones (n = 8, 16)."""
    b = exact_backend
    scores, rankings = exact_data(rng, 601, n, np.float32, idtype, True)
    got = b.numpy(pl.log_likelihood(b.array(scores)[1:], b.array(rankings)[1:]))
    want, _ = reference_rows(scores[1:], rankings[1:].astype(np.int64), None)
    assert np.all(np.abs(got - want) <= 2e-6 * (1 + np.abs(want)))


@pytest.mark.parametrize("n", [10, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_loglik_names_the_first_bad_row(exact_backend, rng, n, dtype):
    """Each kind of bad row at row 300, another one later: the error names row 300 (bad rows are reported by
    atomics as they are found, in any order)."""
    b = exact_backend
    kinds = ["range", "negative", "repeat", "hole", "nan_first", "nan_last", "inf", "-inf"]
    for kind in kinds:
        scores, rankings = exact_data(rng, 900, n, dtype, np.int64, False)
        for row in (300, 777):
            r, s = rankings[row], scores[row]
            if kind == "range":
                r[n - 1] = n
            elif kind == "negative":
                r[0] = -3
            elif kind == "repeat":
                r[1] = r[0]
            elif kind == "hole":
                r[0] = -1
            elif kind == "nan_first":
                s[r[0]] = np.nan
            elif kind == "nan_last":
                s[r[n - 1]] = np.nan
            else:
                s[r[n // 2]] = float(kind)
        with pytest.raises(ValueError, match="300"):
            pl.log_likelihood(b.array(scores), b.array(rankings))
    # and the first row and the last
    scores, rankings = exact_data(rng, 513, n, dtype, np.int32, True)
    for row in (0, 512):
        r = rankings.copy()
        r[row, 1] = r[row, 0]
        with pytest.raises(ValueError, match=rf"rankings\[{row}"):
            pl.log_likelihood(b.array(scores), b.array(r))


def test_set_loglik_kernel_names():
    cuda = _backend.cuda_module()
    if cuda is None:
        pytest.skip("no CUDA extension")
    previous = cuda.set_loglik_kernel("exact")
    try:
        assert cuda.set_loglik_kernel("flat") == "exact"
        assert cuda.set_loglik_kernel("staged") == "flat"
        with pytest.raises(ValueError, match="'staged', 'flat' or 'exact'"):
            cuda.set_loglik_kernel("fast")
    finally:
        cuda.set_loglik_kernel(previous)
