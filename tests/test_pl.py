"""prefcal.pl on every backend: against the NumPy reference, brute-force enumeration, finite differences,
exact sampling probabilities and choix."""

from __future__ import annotations

import importlib.util
import itertools
import math

import numpy as np
import prefcal
import pytest
from conftest import ALL_BACKENDS, Backend, get_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from prefcal import _reference, pl

NO_ERROR = prefcal._validation.NO_ERROR


# ----------------------------------------------------------------------------------------- data


def pl_data(
    rng,
    n_rows,
    n,
    *,
    partial=False,
    masked=None,
    dtype=np.float64,
    idtype=np.int32,
    spread=2.0,
    global_scores=False,
):
    """Scores, rankings drawn from PL(scores) (partial: random top-L prefixes), and an optional mask
    ("row" or "global") with rankings restricted to it."""
    scores = (rng.normal(size=(n,) if global_scores else (n_rows, n)) * spread).astype(dtype)
    s = np.broadcast_to(scores, (n_rows, n)).astype(np.float64)
    mask = None
    avail = np.ones((n_rows, n), dtype=bool)
    if masked == "row":
        mask = rng.random((n_rows, n)) < 0.75
        avail = mask
    elif masked == "global":
        mask = rng.random(n) < 0.75
        mask[rng.integers(n)] = True
        avail = np.broadcast_to(mask, (n_rows, n))
    keys = np.where(avail, s + rng.gumbel(size=(n_rows, n)), -np.inf)
    order = np.argsort(-keys, axis=1, kind="stable")
    ranked = np.where(np.take_along_axis(avail, order, axis=1), order, -1)
    if partial:
        lengths = rng.integers(0, n + 1, size=n_rows)
        ranked = np.where(np.arange(n)[None, :] < lengths[:, None], ranked, -1)
    return scores, ranked.astype(idtype), mask


SIMD_LEVELS = {2: "AVX-512", 1: "AVX2 with FMA", 0: "no explicit SIMD"}


@pytest.fixture(params=sorted(SIMD_LEVELS, reverse=True), ids=["avx512", "avx2", "portable"])
def simd(request):
    """Runs a test of the C++ explicit SIMD paths once per level this processor has (AVX-512, AVX2 with FMA,
    and none: the compiler-vectorised and portable code), by capping the dispatch: a machine with AVX-512
    tests the AVX2 paths too."""
    cpu = pytest.importorskip("prefcal._cpu")
    if request.param > cpu.simd_level():
        pytest.skip(f"this processor has no {SIMD_LEVELS[request.param]}")
    previous = cpu.set_simd_cap(request.param)
    try:
        yield request.param
    finally:
        cpu.set_simd_cap(previous)


def args(backend: Backend, scores, rankings, mask):
    return (backend.array(scores), backend.array(rankings)), {
        "mask": None if mask is None else backend.array(mask)
    }


# ----------------------------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("n_rows,n", [(1, 1), (1, 2), (3, 5), (257, 10), (2100, 7), (64, 70), (9, 400)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("masked", [None, "row", "global"])
def test_loglik_and_grad_match_reference(backend: Backend, rng, n_rows, n, dtype, partial, masked):
    scores, rankings, mask = pl_data(rng, n_rows, n, partial=partial, masked=masked, dtype=dtype)
    a, kw = args(backend, scores, rankings, mask)
    ll, grad = pl.log_likelihood_grad(*a, **kw)
    ll2 = pl.log_likelihood(*a, **kw)
    ref_ll, ref_grad, bad = _reference.pl_loglik(scores, rankings, None if mask is None else mask, True)
    assert bad == NO_ERROR
    ll, grad, ll2 = backend.numpy(ll), backend.numpy(grad), backend.numpy(ll2)
    assert ll.dtype == dtype and grad.dtype == dtype and grad.shape == (n_rows, n)
    tol = 1e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(ll, ref_ll, rtol=tol, atol=tol)
    np.testing.assert_allclose(ll2, ll, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, ref_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("masked", [None, "global"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_scores_grad_is_summed(backend: Backend, rng, masked, dtype):
    scores, rankings, mask = pl_data(
        rng, 3000, 9, partial=True, masked=masked, global_scores=True, dtype=dtype
    )
    a, kw = args(backend, scores, rankings, mask)
    ll, grad = pl.log_likelihood_grad(*a, **kw)
    per_row = np.broadcast_to(scores, (3000, 9)).copy()
    ref_ll, ref_grad, _ = _reference.pl_loglik(per_row, rankings, None if mask is None else mask, True)
    assert backend.numpy(grad).shape == (9,)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(backend.numpy(ll), ref_ll, rtol=tol, atol=tol)
    np.testing.assert_allclose(backend.numpy(grad), ref_grad.sum(axis=0), rtol=tol, atol=tol * 3000)
    total = pl.log_likelihood(*a, **kw, reduction="sum")
    assert isinstance(total, float)
    assert total == pytest.approx(float(ref_ll.sum()), rel=tol)
    assert pl.log_likelihood(*a, **kw, reduction="mean") == pytest.approx(float(ref_ll.mean()), rel=tol)


@pytest.mark.parametrize("idtype", [np.int8, np.int16, np.int32, np.int64, np.uint8])
def test_ranking_dtypes(backend: Backend, rng, idtype):
    scores, rankings, _ = pl_data(rng, 50, 6, partial=True)
    if np.dtype(idtype).kind == "u":
        rankings = np.where(rankings < 0, 0, rankings)[:, :1]  # unsigned: no padding
    ll = backend.numpy(pl.log_likelihood(backend.array(scores), backend.array(rankings.astype(idtype))))
    ref, _, _ = _reference.pl_loglik(scores, rankings.astype(np.int64), None, False)
    np.testing.assert_allclose(ll, ref, rtol=1e-12, atol=1e-12)


def test_many_items_do_not_overflow(backend: Backend, rng):
    """400 nearly equal scores: the product of the normalisers (about 400!) must not overflow."""
    scores = rng.normal(size=(4, 400)) * 1e-3
    rankings = np.argsort(rng.random((4, 400)), axis=1)
    ll = backend.numpy(pl.log_likelihood(backend.array(scores), backend.array(rankings)))
    ref, _, _ = _reference.pl_loglik(scores, rankings, None, False)
    assert np.isfinite(ll).all()
    np.testing.assert_allclose(ll, ref, rtol=1e-12)
    f = pl.fit(backend.array(rankings), 400, alpha=1.0, max_iter=3)
    assert np.isfinite(f.log_likelihood)


@pytest.mark.parametrize("n", [65, 300, 1024, 1025])  # the per-row path; its local worth buffer holds 1024
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_rows_match_reference(rng, n, dtype):
    scores, rankings, _ = pl_data(rng, 30, n, partial=True, dtype=dtype)
    rankings[::4, n - 1] = -1  # full rankings of all but one item too
    ref, ref_grad, _ = _reference.pl_loglik(scores.astype(np.float64), rankings, None, True)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(pl.log_likelihood(scores, rankings), ref, rtol=tol, atol=tol)
    ll, grad = pl.log_likelihood_grad(scores, rankings)
    np.testing.assert_allclose(ll, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, ref_grad, rtol=tol, atol=tol)


def test_float32_close_to_float64(rng):
    scores, rankings, _ = pl_data(rng, 5000, 10, partial=True, dtype=np.float64)
    ref, _, _ = _reference.pl_loglik(scores, rankings, None, False)
    ll32 = pl.log_likelihood(scores.astype(np.float32), rankings)
    np.testing.assert_allclose(ll32, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spread", [50.0, 400.0, 1e4])
def test_wide_score_ranges_are_exact(backend: Backend, rng, spread):
    scores, rankings, mask = pl_data(rng, 300, 8, partial=True, masked="row", spread=spread)
    a, kw = args(backend, scores, rankings, mask)
    ll, grad = pl.log_likelihood_grad(*a, **kw)
    ref_ll, ref_grad, _ = _reference.pl_loglik(scores, rankings, mask, True)
    assert np.isfinite(backend.numpy(ll)).all()
    np.testing.assert_allclose(backend.numpy(ll), ref_ll, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(backend.numpy(grad), ref_grad, atol=1e-9)


def _orderings(items, length):
    return [list(p) for p in itertools.permutations(items, length)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_probabilities_sum_to_one_by_enumeration(backend: Backend, rng, n):
    scores = rng.normal(size=(3, n)) * 1.5
    for b in range(3):
        prob = {}  # prefix (tuple) -> its probability, for every length
        for length in range(1, n + 1):
            orders = _orderings(range(n), length)
            r = np.full((len(orders), n), -1, dtype=np.int32)
            for i, o in enumerate(orders):
                r[i, :length] = o
            s = np.repeat(scores[b : b + 1], len(orders), axis=0)
            p = np.exp(backend.numpy(pl.log_likelihood(backend.array(s), backend.array(r))))
            assert p.sum() == pytest.approx(1.0, abs=1e-12)
            prob.update({tuple(o): p[i] for i, o in enumerate(orders)})
        # a top-k prefix has the probability of all its completions by one more item (so, by induction, of
        # all the full orderings that start with it)
        for o, q in prob.items():
            if len(o) < n:
                ext = sum(prob[o + (x,)] for x in range(n) if x not in o)
                assert ext == pytest.approx(q, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("per_row", [False, True])
def test_masked_probabilities_sum_to_one_by_enumeration(backend: Backend, rng, per_row):
    n = 6
    masks = np.array(
        [
            [True, False, True, True, False, True],
            [True, True, True, True, True, True],
            [False, True, False, False, True, False],
        ]
    )
    scores = rng.normal(size=(len(masks), n))
    for b in range(len(masks)) if per_row else [0]:
        items = np.nonzero(masks[b])[0]
        for length in range(1, len(items) + 1):
            orders = _orderings(items, length)
            r = np.full((len(orders), n), -1, dtype=np.int64)
            for i, o in enumerate(orders):
                r[i, :length] = o
            if per_row:  # (N, n) scores and masks, the row's model and choice set repeated
                s = np.repeat(scores[b : b + 1], len(orders), axis=0)
                mk = np.repeat(masks[b : b + 1], len(orders), axis=0)
            else:  # one global model and choice set
                s, mk = scores[b], masks[b]
            p = np.exp(
                backend.numpy(pl.log_likelihood(backend.array(s), backend.array(r), mask=backend.array(mk)))
            )
            assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_brute_force_probability_of_one_ordering():
    w = np.array([4.0, 1.0, 2.0, 3.0])
    s = np.log(w)
    expected = (2 / 10) * (4 / 8) * (3 / 4)  # 2, 0, 3, then 1
    ll = pl.log_likelihood(s[None], np.array([[2, 0, 3, 1]]))
    assert math.exp(float(ll[0])) == pytest.approx(expected, rel=1e-14)
    top2 = pl.log_likelihood(s[None], np.array([[2, 0, -1, -1]]))
    assert math.exp(float(top2[0])) == pytest.approx((2 / 10) * (4 / 8), rel=1e-14)
    # listing all items or all but one gives the same likelihood
    assert pl.log_likelihood(s[None], np.array([[2, 0, 3, -1]]))[0] == pytest.approx(ll[0], rel=1e-14)


@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
def test_gradient_against_finite_differences(rng, backend_name):
    b = get_backend(backend_name)
    scores, rankings, mask = pl_data(rng, 20, 7, partial=True, masked="row")
    with b.active():
        _, grad = pl.log_likelihood_grad(scores, rankings, mask=mask)
        h = 1e-6
        for i in range(7):
            up, down = scores.copy(), scores.copy()
            up[:, i] += h
            down[:, i] -= h
            fd = (
                pl.log_likelihood(up, rankings, mask=mask) - pl.log_likelihood(down, rankings, mask=mask)
            ) / (2 * h)
            np.testing.assert_allclose(grad[:, i], fd, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 9), shift=st.floats(-50, 50))
def test_properties_nonpositive_and_shift_invariant(seed, n, shift):
    rng = np.random.default_rng(seed)
    scores, rankings, mask = pl_data(rng, 30, n, partial=True, masked="row")
    ll = pl.log_likelihood(scores, rankings, mask=mask)
    assert (ll <= 1e-12).all()
    np.testing.assert_allclose(pl.log_likelihood(scores + shift, rankings, mask=mask), ll, atol=1e-9)
    perm = rng.permutation(30)
    np.testing.assert_array_equal(pl.log_likelihood(scores[perm], rankings[perm], mask=mask[perm]), ll[perm])


def test_thread_count_does_not_change_results(simd, rng):
    if prefcal.backends()["cpu"]["available"] is False:
        pytest.skip("no C++ module")
    scores, rankings, _ = pl_data(rng, 20000, 8, partial=True, global_scores=True)
    out = []
    for threads in (1, 2, 3):
        prefcal.config.set_num_threads(threads)
        try:
            ll, g = pl.log_likelihood_grad(scores, rankings)
            out.append((ll, g, pl.fit(rankings, 8, max_iter=5).scores, pl.sample(scores, 3, seed=7)))
        finally:
            prefcal.config.set_num_threads(0)
    for other in out[1:]:
        for a, b in zip(out[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def _both_ways(hook, call):
    """call() with the code path that the test hook `hook` switches on, then with it off."""
    previous = hook(True)
    try:
        fast = call()
        hook(False)
        slow = call()
    finally:
        hook(previous)
    return fast, slow


def spoil_ranking(rankings: np.ndarray, b: int, kind: str, at: int) -> bool:
    """Makes row b of full rankings invalid at position ``at`` by ``kind``: an item out of range ("range"), a
    negative one ("negative"), a repeat of the item before it ("repeat"), or padding just before it
    ("early_pad", "hole"). False for any other kind (the row unchanged)."""
    if kind == "range":
        rankings[b, at] = rankings.shape[1]
    elif kind == "negative":
        rankings[b, at] = -2
    elif kind == "repeat":
        rankings[b, at] = rankings[b, at - 1]
    elif kind in ("early_pad", "hole"):
        rankings[b, at - 1] = -1
    else:
        return False
    return True


def _loglik_both_ways(cpu, scores, rankings, want_grad=False):
    """The CPU kernel's (ll, grad, first bad row) with the explicit AVX-512 or AVX2 lanes (as the `simd`
    fixture caps them) and without them (the compiler-vectorised lanes)."""
    return _both_ways(cpu.set_loglik_explicit, lambda: cpu.pl_loglik(scores, rankings, None, want_grad))


@pytest.mark.parametrize("want_grad", [False, True])
@pytest.mark.parametrize("n", [2, 3, 7, 10, 15, 16, 17, 25, 32, 33])
@pytest.mark.parametrize("idtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loglik_lanes_match_the_other_paths(simd, rng, n, idtype, dtype, want_grad):
    """The sixteen-row lanes (n <= 32; the explicit AVX-512 or AVX2 ones for float32 per-row scores, full
    rankings, no mask and n <= 16), with and without the gradient: the values of the other lanes, of the
    per-row code (the lanes switched off) and of the reference; top-(n-1) rows (-1 last) in a group, top-k
    rows of every k, narrow rankings (m < n - 1), one global model, row masks and one mask of all rows (rows
    with no or one available item among them); wide score ranges (per-row code); the first bad row for each
    kind of bad row, wherever it falls in a group of sixteen."""
    cpu = pytest.importorskip("prefcal._cpu")
    rows = 16 * 40 + 5
    scores, rankings, _ = pl_data(rng, rows, n, dtype=dtype)
    rankings = rankings.astype(idtype)
    # float32: the lanes' exps are FMA-contracted and the per-row code's are not (a few ulp apart)
    close = 1e-6 if dtype == np.float32 else 1e-12
    tol = 1e-5 if dtype == np.float32 else 1e-12

    def per_row_code(s, r, mask=None):
        previous = cpu.set_loglik_lanes(False)
        try:
            return cpu.pl_loglik(s, r, mask, want_grad)
        finally:
            cpu.set_loglik_lanes(previous)

    def check(s, r, mask=None):
        fast, slow = _both_ways(cpu.set_loglik_explicit, lambda: cpu.pl_loglik(s, r, mask, want_grad))
        per_row = per_row_code(s, r, mask)
        assert fast[2] == slow[2] == per_row[2] == NO_ERROR
        if mask is not None:  # every group takes the top-k loop: the per-row code's values bit for bit
            np.testing.assert_array_equal(fast[0], per_row[0])
            if want_grad:
                np.testing.assert_array_equal(fast[1], per_row[1])
        ref, ref_grad, _ = _reference.pl_loglik(s.astype(np.float64), r, mask, want_grad)
        np.testing.assert_allclose(fast[0], ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(fast[0], slow[0], rtol=1e-7, atol=1e-7)  # bit for bit with GCC 12
        np.testing.assert_allclose(fast[0], per_row[0], rtol=close, atol=close)
        if want_grad:
            many = len(r) if s.ndim == 1 else 1  # a global model's gradient: a sum of the rows' (cancelling)
            np.testing.assert_allclose(fast[1], slow[1], rtol=close, atol=close * many)
            np.testing.assert_allclose(fast[1], per_row[1], rtol=close, atol=close * many)
            np.testing.assert_allclose(fast[1], ref_grad, rtol=tol, atol=tol * many)
            # the same log-likelihood as without the gradient
            np.testing.assert_array_equal(fast[0], cpu.pl_loglik(s, r, mask, False)[0])

    check(scores, rankings)
    top = rankings.copy()
    top[5::37, n - 1] = -1
    check(scores, top)
    listed = rng.integers(0, n + 1, size=rows)  # top-k rows of every k (0 included) in every group
    top[np.arange(n)[None, :] >= listed[:, None]] = -1
    check(scores, top)
    check(scores, np.ascontiguousarray(rankings[:, : max(1, n // 2)]))  # narrow: top-(n/2) without padding
    check(scores[0].copy(), rankings)  # one global model (its gradient summed over the rows)
    check(scores[0].copy(), top)
    for mask in (rng.random((rows, n)) < 0.7, rng.random(n) < 0.7):
        mask[..., :1] = True
        if mask.ndim == 2:
            mask[7::41] = False  # nothing available
            mask[8::41, 1:] = False  # one item
        r = pl.sample(scores, seed=int(rng.integers(2**31)), mask=mask)[:, 0].astype(idtype)
        check(scores, r, mask)
        r[np.arange(n)[None, :] >= rng.integers(0, n + 1, size=rows)[:, None]] = -1
        check(scores, r, mask)
    wide = scores.copy()
    wide[3::29, 0] = wide[3::29, 1] + 200.0
    check(wide, rankings)
    kinds = ["range", "negative", "repeat", "early_pad", "nan", "inf"]
    if idtype == np.int64:
        kinds.append("beyond_int32")  # an item plus 2^40: must not pass as the item once narrowed
    for kind in kinds:
        for b in (0, 15, 16, int(rng.integers(rows)), rows - 1):
            s, r = scores.copy(), rankings.copy()
            if spoil_ranking(r, b, kind, n // 2 if kind == "range" else 1):
                pass  # a bad ranking
            elif kind == "beyond_int32":
                r[b, 1] += 2**40  # narrowed to 32 bits it is the same item
            elif kind == "nan":
                s[b, n - 1] = np.nan
            else:
                s[b, 0] = -np.inf
            fast, slow = _loglik_both_ways(cpu, s, r, want_grad)
            assert fast[2] == slow[2] == per_row_code(s, r)[2] == b, (kind, b)
    for b in (0, 15, 16, int(rng.integers(rows)), rows - 1):  # a listed item that is not available
        mask = np.ones((rows, n), dtype=bool)
        mask[b, rankings[b, n // 2]] = False
        call = lambda mask=mask: cpu.pl_loglik(scores, rankings, mask, want_grad)  # noqa: E731
        fast, slow = _both_ways(cpu.set_loglik_explicit, call)
        assert fast[2] == slow[2] == per_row_code(scores, rankings, mask)[2] == b


# ----------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("masked", [None, "row", "global"])
@pytest.mark.parametrize("k", [None, 1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_samples_are_the_same_on_every_backend(backend: Backend, rng, masked, k, dtype):
    scores, _, mask = pl_data(rng, 300, 6, masked=masked, dtype=dtype)
    got = backend.numpy(
        pl.sample(
            backend.array(scores), 4, k=k, mask=None if mask is None else backend.array(mask), seed=12345
        )
    )
    ref, bad = _reference.pl_sample(scores, mask, 4, 6 if k is None else k, 12345, True)
    assert bad == NO_ERROR and got.dtype == np.int32
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("n,k", [(40, None), (40, 5), (300, None), (300, 7), (300, 37), (300, 38)])
def test_many_draws_of_one_model_match_reference_on_any_thread_count(simd, rng, n, k):
    """One global model, many draws (parallel over draws); rank selection (n <= 128); beyond, the radix order
    of all keys (k >= n / 8) or nth_element (fewer)."""
    scores = rng.normal(size=n)
    scores[:4] = 1.0  # ties: the lower item first
    ref, _ = _reference.pl_sample(scores[None], None, 700, n if k is None else k, 99, True)
    for threads in (1, 2):
        prefcal.config.set_num_threads(threads)
        try:
            np.testing.assert_array_equal(pl.sample(scores, 700, k=k, seed=99), ref[0])
        finally:
            prefcal.config.set_num_threads(0)
    np.testing.assert_array_equal(
        pl.mode(scores, k=k), np.argsort(-scores, kind="stable")[: n if k is None else k]
    )


@pytest.mark.parametrize("n", [1, 2, 3, 9, 16, 17, 31, 32, 33])
@pytest.mark.parametrize("size", [1, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [None, "row", "global"])
def test_vector_sampling_paths_match_reference(simd, rng, n, size, dtype, masked):
    """Row counts that are not multiples of the 16 vector lanes, every n of the vector paths (n <= 32) and
    beyond, ties, several draws per row; row masks (rows with no available item among them, unavailable
    items scored above the others) and one mask of all rows: the same samples and modes as the NumPy
    reference."""
    scores = rng.normal(size=(53, n)).astype(dtype)
    scores[::7, : min(n, 3)] = 0.5  # ties
    mask = None
    if masked == "row":
        mask = rng.random((53, n)) < 0.6
        mask[::11] = False
        scores[~mask] = 100.0
    elif masked == "global":
        mask = rng.random(n) < 0.6
    for k in sorted({n, min(2, n)}):
        ref, _ = _reference.pl_sample(scores, mask, size, k, 2**40 + 7, True)
        np.testing.assert_array_equal(pl.sample(scores, size, k=k, seed=2**40 + 7, mask=mask), ref)
        mode, _ = _reference.pl_sample(scores, mask, 1, k, 0, False)
        np.testing.assert_array_equal(pl.mode(scores, k=k, mask=mask), mode[:, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,size", [(3, 1), (10, 3), (1, 2), (40, 1)])
def test_sampler_reports_the_first_nonfinite_row(simd, rng, dtype, n, size):
    """The CPU sampler's scan for non-finite scores (blocks of rows, chunks of draws): the first bad row,
    wherever it lies (first row, a block boundary, the last row), for NaN and both infinities."""
    cpu = pytest.importorskip("prefcal._cpu")
    rows = 9000
    for bad_rows, value in (([0], np.nan), ([4095 // n, 7000], np.inf), ([rows - 1], -np.inf), ([], 0.0)):
        scores = rng.normal(size=(rows, n)).astype(dtype)
        for b in bad_rows:
            scores[b, rng.integers(n)] = value
        _, first = cpu.pl_sample(scores, None, size, n, 1, True)
        assert first == (bad_rows[0] if bad_rows else NO_ERROR)


@pytest.mark.parametrize("n", [9, 17, 33, 40])
def test_selection_buffers_on_every_backend(backend: Backend, rng, n):
    """Every size of top-k buffer (the CUDA sampler keeps up to 4, 8, 16 or 32 keys in registers, more in
    memory), ties, masks and several draws per row: the samples and modes of the NumPy reference."""
    scores = rng.normal(size=(53, n))
    scores[::7, : min(n, 5)] = 0.5  # ties
    mask = rng.random((53, n)) < 0.9
    for k in (2, 5, n):
        for m in (None, mask):
            ref, _ = _reference.pl_sample(scores, m, 3, k, 77, True)
            arr = None if m is None else backend.array(m)
            np.testing.assert_array_equal(
                backend.numpy(pl.sample(backend.array(scores), 3, k=k, mask=arr, seed=77)), ref
            )
            mode, _ = _reference.pl_sample(scores, m, 1, k, 0, False)
            np.testing.assert_array_equal(
                backend.numpy(pl.mode(backend.array(scores), k=k, mask=arr)), mode[:, 0]
            )


def _f32_keys_hooks():
    """The C++ extension's hooks of the sampler's certified float32 keys (sixteen draws per group with
    AVX-512, eight with AVX2); skip without them or either instruction set."""
    cpu = pytest.importorskip("prefcal._cpu")
    if cpu.gumbel_f32(np.zeros(1, np.uint32), np.zeros(1, np.uint32)) is None:
        pytest.skip("the float32 keys need AVX-512 or AVX2 with FMA")
    assert cpu.sample_f32_group() in (8, 16)
    return cpu


def _gumbel_of_words(a, b):
    """float64 Gumbel noise -log(-log u) of Philox words (a, b): u = (bits52 + 1/2) 2^-52 (philox.hpp)."""
    bits = (a.astype(np.uint64) << np.uint64(20)) | (b.astype(np.uint64) >> np.uint64(12))
    u = (bits.astype(np.float64) + 0.5) * 2.0**-52
    return -np.log(-np.log(u))


def _check_gumbel_f32(cpu, a, b):
    a, b = np.asarray(a, np.uint32), np.asarray(b, np.uint32)
    err = np.abs(cpu.gumbel_f32(a, b).astype(np.float64) - _gumbel_of_words(a, b))
    # a quarter of the bound the sampler's certificate assumes (measured worst: 1.1e-6 of 1.5e-5)
    assert err.max() <= cpu.GUMBEL_F32_ERROR / 4, (err.max(), a[err.argmax()], b[err.argmax()])


def test_float32_gumbel_noise_is_within_its_bound(simd, rng):
    """The float32 noise behind the sampler's fast keys, against the float64 noise it certifies: random
    words, u near 0 and 1 (the log1p branch), both sides of the branch point sqrt(1/2) and of 1/2, extreme
    low words."""
    cpu = _f32_keys_hooks()
    top = 2**32 - 1
    edges = np.concatenate(
        [
            np.arange(0, 5000),
            top - np.arange(0, 5000),
            3037000500 + np.arange(-3000, 3000),
            2**31 + np.arange(-3000, 3000),
            2 ** np.arange(32) - 1,
            2 ** np.arange(32),
        ]
    ).astype(np.uint32)
    for low in (np.zeros(len(edges)), np.full(len(edges), top), rng.integers(0, 2**32, len(edges))):
        _check_gumbel_f32(cpu, edges, low.astype(np.uint32))
    _check_gumbel_f32(cpu, rng.integers(0, 2**32, 2**18), rng.integers(0, 2**32, 2**18))
    # the tail of a call that is not a multiple of the lanes
    _check_gumbel_f32(cpu, rng.integers(0, 2**32, 37), rng.integers(0, 2**32, 37))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), min_size=1, max_size=40))
def test_float32_gumbel_noise_is_within_its_bound_hypothesis(words):
    cpu = _f32_keys_hooks()
    a, b = zip(*words, strict=True)
    _check_gumbel_f32(cpu, a, b)


def _draw_both_ways(cpu, scores, size, k, seed):
    """pl.sample with the certified float32 keys and with float64 keys only; the float32 path's fallbacks."""
    before = cpu.sample_f32_fallbacks()
    fast = pl.sample(scores, size, k=k, seed=seed)
    fallbacks = cpu.sample_f32_fallbacks() - before
    previous = cpu.set_sample_f32(False)
    try:
        exact = pl.sample(scores, size, k=k, seed=seed)
    finally:
        cpu.set_sample_f32(previous)
    return fast, exact, fallbacks


@pytest.mark.parametrize("n", [1, 2, 3, 10, 16, 17, 31, 32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_keys_give_the_float64_samples(simd, rng, n, dtype):
    """The sampler's fast path decides the order of the float64 keys from float32 ones where their gap is
    certain and redoes a group of draws with float64 keys otherwise: the same samples either way, for plain,
    tied, wide-range and huge scores, float64 scores that differ below float32 precision, every k."""
    cpu = _f32_keys_hooks()
    rows = 1000
    cases = {
        "normal": rng.normal(size=(rows, n)),
        "tied": np.round(rng.normal(size=(rows, n)), 1),
        "wide": rng.normal(size=(rows, n)) * 1e4,
        # |s| >= 3e6 > 2^20 everywhere: every group of draws takes the float64 keys
        "huge": rng.choice([-1.0, 1.0], size=(rows, n)) * (np.abs(rng.normal(size=(rows, n))) + 0.3) * 1e7,
        "close": 1000.0 + 1e-9 * rng.integers(0, 5, size=(rows, n)),
    }
    for name, scores in cases.items():
        scores = scores.astype(dtype)
        for k in sorted({1, min(3, n), n}):
            for size in (1, 3):
                fast, exact, fallbacks = _draw_both_ways(cpu, scores, size, k, 2**33 + 5)
                np.testing.assert_array_equal(fast, exact, err_msg=f"{name} k={k} size={size}")
                groups = rows * size // cpu.sample_f32_group()
                if name == "huge":
                    assert fallbacks == groups
                elif name == "normal" and n <= 10:
                    assert fallbacks < groups / 5  # the float32 keys decide most groups
    ref, _ = _reference.pl_sample(cases["normal"].astype(dtype), None, 2, n, 2**33 + 5, True)
    np.testing.assert_array_equal(pl.sample(cases["normal"].astype(dtype), 2, seed=2**33 + 5), ref)


def test_float32_keys_fall_back_where_keys_are_close(simd, rng):
    """Many items per row make close keys common: some groups take the float64 keys, most do not, and the
    samples equal those of the float64 keys and of the NumPy reference."""
    cpu = _f32_keys_hooks()
    scores = rng.normal(size=(4000, 32)).astype(np.float32)
    fast, exact, fallbacks = _draw_both_ways(cpu, scores, 1, 32, 11)
    np.testing.assert_array_equal(fast, exact)
    assert 0 < fallbacks < 4000 // cpu.sample_f32_group()
    ref, _ = _reference.pl_sample(scores, None, 1, 32, 11, True)
    np.testing.assert_array_equal(fast, ref)


@pytest.mark.parametrize("gap", [1e-7, 1e-6, 1e-5, 1e-4, 1e-3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_keys_on_engineered_near_ties(simd, rng, gap, dtype):
    """Scores that cancel the noise, so that the float64 keys of a draw lie `gap` apart in a random order:
    below the float32 keys' resolution the draws must fall back, above it they must be decided right; the
    samples equal the float64 keys' and the NumPy reference's."""
    cpu = _f32_keys_hooks()
    rows, n, seed = 2000, 10, 2024
    rows_, items = np.arange(rows)[:, None], np.arange(n)[None, :]
    noise = _reference.gumbel(seed, rows_, np.zeros((1, 1), np.int64), items)
    order = np.argsort(rng.random((rows, n)), axis=1)
    scores = (-noise + gap * order).astype(dtype)
    fast, exact, fallbacks = _draw_both_ways(cpu, scores, 1, n, seed)
    np.testing.assert_array_equal(fast, exact)
    ref, _ = _reference.pl_sample(scores, None, 1, n, seed, True)
    np.testing.assert_array_equal(fast, ref)
    if gap <= 1e-5:
        assert fallbacks == rows // cpu.sample_f32_group()
    elif gap >= 1e-3:
        assert fallbacks == 0


def test_sample_shapes_seeds_and_masks(rng):
    s = rng.normal(size=(5, 6))
    a = pl.sample(s, 3, seed=1)
    assert a.shape == (5, 3, 6)
    np.testing.assert_array_equal(np.sort(a, axis=2), np.broadcast_to(np.arange(6), (5, 3, 6)))
    np.testing.assert_array_equal(pl.sample(s, 3, seed=1), a)
    assert not np.array_equal(pl.sample(s, 3, seed=2), a)
    assert pl.sample(s[0], 3, seed=1).shape == (3, 6)
    assert pl.sample(s, 3, k=2, seed=1).shape == (5, 3, 2)
    np.testing.assert_array_equal(pl.sample(s, 3, k=2, seed=1), a[:, :, :2])  # a prefix of the full draw
    mask = np.zeros(6, dtype=bool)
    mask[[1, 4]] = True
    m = pl.sample(s, 2, k=4, mask=mask, seed=3)
    assert set(m[:, :, :2].ravel()) == {1, 4} and (m[:, :, 2:] == -1).all()
    fresh = [pl.sample(s, 1) for _ in range(3)]
    assert not all(np.array_equal(fresh[0], f) for f in fresh[1:])  # seed=None draws fresh entropy


def test_sampling_frequencies_match_exact_probabilities(backend: Backend):
    """Chi-square test of 4! orderings (and top-2 prefixes) against the exact PL probabilities."""
    scores = np.array([1.0, 0.2, -0.5, 0.6])
    draws = backend.numpy(pl.sample(backend.array(scores[None]), 40000, seed=2024))[0]
    orders = _orderings(range(4), 4)
    probs = np.exp(pl.log_likelihood(np.repeat(scores[None], 24, 0), np.array(orders)))
    codes = draws @ np.array([64, 16, 4, 1])
    counts = np.array([(codes == np.dot(o, [64, 16, 4, 1])).sum() for o in orders])
    expected = probs * len(draws)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 49.7  # 23 degrees of freedom: P(chi2 > 49.7) ~ 0.001
    top2 = backend.numpy(pl.sample(backend.array(scores[None]), 40000, k=2, seed=99))[0]
    pairs = _orderings(range(4), 2)
    p2 = np.exp(
        pl.log_likelihood(np.repeat(scores[None], 12, 0), np.array([list(p) + [-1, -1] for p in pairs]))
    )
    c2 = np.array([((top2[:, 0] == a) & (top2[:, 1] == b)).sum() for a, b in pairs])
    chi2 = float(((c2 - p2 * 40000) ** 2 / (p2 * 40000)).sum())
    assert chi2 < 31.3  # 11 degrees of freedom, P ~ 0.001


def test_philox_known_answers():
    """Random123's known-answer vectors for Philox4x32-10."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        out = _reference.philox4x32_10(np.array([counter], dtype=np.uint32), key)[0]
        assert tuple(int(x) for x in out) == expected


# ----------------------------------------------------------------------------------------- mode, pairwise


def test_mode_and_mode_log_prob(backend: Backend, rng):
    scores = np.round(rng.normal(size=(40, 5)), 1)  # rounding makes ties
    scores[0] = [1.0, 2.0, 1.0, 2.0, 0.0]
    m = backend.numpy(pl.mode(backend.array(scores)))
    np.testing.assert_array_equal(m, np.argsort(-scores, axis=1, kind="stable"))
    assert m[0].tolist() == [1, 3, 0, 2, 4]
    for k in (1, 2, 5):
        lp = backend.numpy(pl.mode_log_prob(backend.array(scores), k=k))
        orders = _orderings(range(5), k)
        for b in range(0, 40, 7):
            r = np.full((len(orders), 5), -1)
            r[:, :k] = orders
            best = pl.log_likelihood(np.repeat(scores[b : b + 1], len(orders), 0), r).max()
            assert lp[b] == pytest.approx(best, abs=1e-12)


def test_mode_and_mode_log_prob_with_row_masks(backend: Backend, rng):
    """Per-row choice sets: the mode lists the row's available items by score and mode_log_prob is the
    largest log-probability over all top-k orderings of the row's choice set (enumerated)."""
    n = 5
    scores = np.round(rng.normal(size=(12, n)), 1)
    mask = rng.random((12, n)) < 0.6
    mask[:, 0] = True
    mask[1] = False
    mask[1, 3] = True  # one available item
    for k in (1, 2, n):
        m = backend.numpy(pl.mode(backend.array(scores), k=k, mask=backend.array(mask)))
        lp = backend.numpy(pl.mode_log_prob(backend.array(scores), k=k, mask=backend.array(mask)))
        for b in range(12):
            items = np.nonzero(mask[b])[0]
            want = items[np.argsort(-scores[b, items], kind="stable")][:k]
            assert m[b, : len(want)].tolist() == want.tolist() and (m[b, len(want) :] == -1).all()
            orders = _orderings(items, min(k, len(items)))
            r = np.full((len(orders), n), -1)
            r[:, : len(orders[0])] = orders
            s = np.repeat(scores[b : b + 1], len(orders), 0)
            mk = np.repeat(mask[b : b + 1], len(orders), 0)
            best = pl.log_likelihood(s, r, mask=mk).max()
            assert lp[b] == pytest.approx(best, abs=1e-12)


def test_mode_with_mask_pads_with_minus_one():
    s = np.array([[3.0, 1.0, 2.0, 0.0]])
    mask = np.array([[False, True, True, False]])
    assert pl.mode(s, mask=mask).tolist() == [[2, 1, -1, -1]]
    assert pl.mode(s[0], k=2).tolist() == [0, 2]
    assert isinstance(pl.mode_log_prob(s[0], k=2), float)


@pytest.mark.parametrize("n", [33, 100, 128, 129, 300, 2000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mode_of_wide_rows_with_ties(rng, n, dtype):
    """Many equal scores: the rank counting of rows of up to 128 items detects the ties and orders them by
    the lower item first (beyond 128 the radix order and the partial selection do), as the stable argsort;
    -0 and +0 are equal; keys equal in their upper 32 bits but not in all 64 are told apart."""
    scores = rng.integers(0, 5, size=(60, n)).astype(dtype)
    scores[::3] += rng.normal(size=(20, n)).astype(dtype)  # and rows without ties
    scores[1::3] *= np.where(rng.random((20, n)) < 0.5, -1, 1).astype(dtype)  # -0.0 beside 0.0
    if dtype == np.float64:  # nearly equal: the same upper half, different lower halves
        scores[2::3] = 1.0 + rng.integers(0, 3, size=(20, n)) * 2.0**-40
    want = np.argsort(-scores, axis=1, kind="stable")
    np.testing.assert_array_equal(pl.mode(scores), want)
    for k in (7, n // 8, n // 4):
        np.testing.assert_array_equal(pl.mode(scores, k=k), want[:, :k])


def test_pairwise(backend: Backend, rng):
    scores = rng.normal(size=(6, 5)) * 30  # rows spanning less than 300: the vectorised exp
    scores[4] *= 20  # wider: the exact path, probabilities down to e^-700 and below
    scores[5] = [0.0, 710.0, -40.0, 745.5, 300.0]  # subnormal and zero probabilities
    p = backend.numpy(pl.pairwise(backend.array(scores)))
    with np.errstate(over="ignore"):  # exp(745) is inf: 1 / (1 + inf) = 0
        ref = 1.0 / (1.0 + np.exp(-(scores[:, :, None] - scores[:, None, :])))
    np.testing.assert_allclose(p, ref, rtol=1e-12, atol=1e-300)
    tiny = p[5][p[5] < np.finfo(np.float64).tiny]
    assert (tiny == 0).sum() == 3 and (tiny > 0).sum() == 1  # e^-750 and below round to 0; e^-710 is subnormal
    assert (np.diagonal(p, axis1=1, axis2=2) == 0.5).all()
    np.testing.assert_allclose(p + p.transpose(0, 2, 1), 1.0, rtol=1e-15)
    assert backend.numpy(pl.pairwise(backend.array(scores[0]))).shape == (5, 5)


# ----------------------------------------------------------------------------------------- fitting


def _sum_ll(theta, rankings, mask=None, weights=None):
    ll = pl.log_likelihood(theta, rankings, mask=mask)
    return float(np.sum(ll if weights is None else ll * weights))


@pytest.mark.parametrize("method", ["mm", "newton"])
@pytest.mark.parametrize("masked", [None, "row"])
def test_fit_reaches_the_mle(backend: Backend, rng, method, masked):
    _, rankings, mask = pl_data(rng, 600, 8, partial=True, masked=masked)
    weights = rng.random(600) + 0.5
    f = pl.fit(
        backend.array(rankings),
        8,
        mask=None if mask is None else backend.array(mask),
        weights=backend.array(weights),
        method=method,
        tol=1e-10,
    )
    assert f.converged and abs(f.scores.mean()) < 1e-12
    # stationarity: the gradient of the weighted log-likelihood vanishes at the estimate
    ll, g = _reference.pl_loglik(np.broadcast_to(f.scores, (600, 8)).copy(), rankings, mask, True)[:2]
    np.testing.assert_allclose((g * weights[:, None]).sum(axis=0), 0.0, atol=1e-6)
    assert f.log_likelihood == pytest.approx(float((ll * weights).sum()), rel=1e-10)


def test_mm_and_newton_agree_and_weights_mean_repetition(rng):
    _, rankings, _ = pl_data(rng, 400, 6, partial=True)
    a = pl.fit(rankings, 6, method="mm", tol=1e-11)
    b = pl.fit(rankings, 6, method="newton", tol=1e-11)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-8)
    assert b.n_iter < a.n_iter
    w = rng.integers(0, 3, size=400).astype(float)
    rep = np.repeat(rankings, w.astype(int), axis=0)
    np.testing.assert_allclose(
        pl.fit(rankings, 6, weights=w, tol=1e-11).scores, pl.fit(rep, 6, tol=1e-11).scores, atol=1e-8
    )


@pytest.mark.parametrize("seed", [7, 11])
def test_newton_never_accepts_a_step_whose_worths_underflow(seed):
    """Newton's first steps on full rankings of many items can land far out (one item ~10^3 above the rest),
    where exp(theta - max theta) underflows to 0 for the items below it and the pass's log-likelihood is log 0
    = +inf: such a step must count as a loss (halved), not as a gain. Same MLE as MM, a finite
    log-likelihood <= 0, the one of the returned scores."""
    rng = np.random.default_rng(seed)
    n, N = 30, 50
    rankings = np.argsort(-(rng.normal(size=n) * 2 + rng.gumbel(size=(N, n))), axis=1)
    a = pl.fit(rankings, n, method="mm", tol=1e-10)
    b = pl.fit(rankings, n, method="newton", tol=1e-10)
    assert b.converged and np.isfinite(b.log_likelihood) and b.log_likelihood < 0
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-7)
    assert b.log_likelihood == pytest.approx(float(pl.log_likelihood(b.scores, rankings).sum()), rel=1e-10)


def test_fit_reports_iterations_and_non_convergence(rng):
    _, rankings, _ = pl_data(rng, 300, 6, partial=True)
    for method in ("mm", "newton"):
        short = pl.fit(rankings, 6, method=method, max_iter=1, tol=1e-14)
        assert short.n_iter == 1 and not short.converged
        full = pl.fit(rankings, 6, method=method, tol=1e-12)
        assert full.converged and full.n_iter <= 1000
        assert full.log_likelihood >= short.log_likelihood
        assert full.to_dict()["method"] == method


def test_newton_stall_is_not_reported_as_convergence(rng, monkeypatch):
    """When no halving of the Newton step keeps the likelihood (here: every pass after the first returns a
    NaN likelihood), the fit stops at the last accepted point with converged=False, not with a zero change
    mistaken for convergence."""
    _, rankings, _ = pl_data(rng, 200, 5, partial=True)
    real = pl._FitData.run
    calls = []

    def run(self, theta, want_q, want_ll):
        denom, q, ll = real(self, theta, want_q, want_ll)
        calls.append(ll)
        return denom, q, (ll if len(calls) <= 3 else float("nan"))

    monkeypatch.setattr(pl._FitData, "run", run)
    f = pl.fit(rankings, 5, method="newton", tol=1e-12)
    assert not f.converged and f.n_iter >= 1 and np.isfinite(f.log_likelihood)
    assert len(calls) >= 3 + 60  # the stalled step tried all its halvings
    monkeypatch.setattr(pl._FitData, "run", real)
    assert pl.fit(rankings, 5, method="newton", tol=1e-12).converged


@pytest.mark.parametrize(
    "case,n",
    [
        ("partial-masked", 7),
        ("full", 20),
        ("full-and-partial", 20),
        # the widths around the fast paths' limits: the setup's one and two words of item bits (64, 128), the
        # vector passes (up to 128 items)
        ("full", 64),
        ("full-and-partial", 65),
        ("full", 128),
        ("full-and-partial", 129),
        ("top-k", 20),  # groups of sixteen with no full ranking and some with one
        ("top-k", 65),
        ("narrow", 20),  # top-5 rankings in m = 5 columns, some listing fewer or no items
        ("narrow", 128),
        ("partial", 9),  # every length 0 .. n in one group
    ],
)
def test_fit_passes_match_reference(rng, case, n):
    """Per-row passes and the sixteen-rankings vector passes (no mask: full, top-k and narrow rankings)
    against the oracle."""
    _, rankings, mask = pl_data(
        rng, 500, n, partial=case == "partial-masked", masked="row" if case == "partial-masked" else None
    )
    if case == "full-and-partial":
        rankings[::5, 12:] = -1
    elif case == "top-k":
        full = rankings[::37].copy()
        rankings[:, 5:] = -1
        rankings[::37] = full
    elif case == "narrow":
        rankings = np.ascontiguousarray(rankings[:, :5])
        rankings[::3, 4:] = -1
        rankings[::11, 1:] = -1
        rankings[::29] = -1
    elif case == "partial":
        for b in range(len(rankings)):
            rankings[b, b % (n + 1) :] = -1
    theta = rng.normal(size=n)
    weights = rng.random(500)
    weights[::7] = 0.0
    cpu = prefcal._backend.cpu_module()
    if cpu is None:
        pytest.skip("no C++ module")
    for q in (False, True):
        d1, q1, l1 = cpu.pl_fit_pass(rankings, mask, weights, theta, q, True)
        d2, q2, l2 = _reference.pl_fit_pass(rankings, mask, weights, theta, q, True)
        np.testing.assert_allclose(d1, d2, rtol=1e-12)
        assert l1 == pytest.approx(l2, rel=1e-12)
        if q:
            sym = lambda x: x + x.T - np.diag(np.diag(x))  # noqa: E731
            np.testing.assert_allclose(sym(q1), sym(q2), rtol=1e-12)
    w1, e1, (d1, l1), _ = cpu.pl_fit_setup(rankings, mask, weights, n)
    w2, e2, (d2, l2), _ = _reference.pl_fit_setup(rankings, mask, weights, n)
    np.testing.assert_allclose(w1, w2, rtol=1e-12)
    np.testing.assert_array_equal(e1, e2)
    # the setup's fused first MM pass equals a pass at equal worths
    d0, _, l0 = cpu.pl_fit_pass(rankings, mask, weights, np.zeros(n), False, True)
    np.testing.assert_allclose(d1, d0, rtol=1e-12)
    np.testing.assert_allclose(d2, d0, rtol=1e-12)
    assert l1 == pytest.approx(l0, rel=1e-12) and l2 == pytest.approx(l0, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 40),
    width=st.floats(0.2, 1.0),
    spread=st.sampled_from([0.1, 2.0, 30.0]),
    idtype=st.sampled_from([np.int32, np.int64]),
)
def test_fit_pass_properties(seed, n, width, spread, idtype):
    """Random rankings of every length in m <= n columns (full, top-k, narrow, empty), weights with
    zeros, log-worths of several spreads: the C++ pass (its vector passes where it takes them) equals the
    oracle's."""
    rng = np.random.default_rng(seed)
    m = max(1, int(round(width * n)))
    _, rankings, _ = pl_data(rng, 150, n, partial=True)
    rankings = np.ascontiguousarray(rankings[:, :m]).astype(idtype)
    rankings[rng.random(150) < 0.3] = np.argsort(rng.random(n))[:m]  # some full-width rows
    weights = rng.random(150)
    weights[rng.random(150) < 0.2] = 0.0
    theta = rng.normal(size=n) * spread
    cpu = prefcal._backend.cpu_module()
    if cpu is None:
        pytest.skip("no C++ module")
    d1, _, l1 = cpu.pl_fit_pass(rankings, None, weights, theta, False, True)
    d2, _, l2 = _reference.pl_fit_pass(rankings.astype(np.int64), None, weights, theta, False, True)
    np.testing.assert_allclose(d1, d2, rtol=1e-11)
    assert l1 == pytest.approx(l2, rel=1e-11, abs=1e-9)


@pytest.mark.skipif(importlib.util.find_spec("choix") is None, reason="choix is not installed")
@pytest.mark.parametrize("method", ["mm", "newton"])
def test_fit_matches_choix(rng, method):
    import choix

    n = 6
    truth = rng.normal(size=n)
    mask = rng.random((300, n)) < 0.7
    mask[:, :2] = True
    _, rankings, _ = pl_data(rng, 300, n)
    keys = np.where(mask, truth + rng.gumbel(size=(300, n)), -np.inf)
    order = np.argsort(-keys, axis=1)
    rankings = np.where(np.take_along_axis(mask, order, 1), order, -1)
    data = [[int(x) for x in r if x >= 0] for r in rankings]
    ours = pl.fit(rankings, n, mask=mask, method=method, tol=1e-12).scores
    theirs = choix.ilsr_rankings(n, data, tol=1e-14, max_iter=10000)
    np.testing.assert_allclose(ours, theirs - theirs.mean(), atol=1e-6)


def test_fit_disconnected_needs_alpha():
    # items {0, 1} always beat {2, 3}: no maximum-likelihood estimate
    rankings = np.array([[0, 1, 2, 3], [1, 0, 3, 2], [0, 1, 3, 2]])
    with pytest.raises(ValueError, match="items 0, 1 are never ranked below items 2, 3.*alpha > 0"):
        pl.fit(rankings, 4)
    with pytest.raises(ValueError, match="item 0 is never ranked below items 1, 2 "):
        pl.fit(np.array([[0, 1, 2], [0, 2, 1]]), 3)
    with pytest.raises(ValueError, match="items 0, 1 are never ranked above items 2, 3 "):
        pl.fit(np.array([[2, 3, 0, 1], [3, 2, 1, 0]]), 4)
    f = pl.fit(rankings, 4, alpha=0.5)
    assert f.converged and f.scores[:2].min() > f.scores[2:].max()
    g = pl.fit(rankings, 4, alpha=0.5, method="newton")
    np.testing.assert_allclose(f.scores, g.scores, atol=1e-7)
    with pytest.raises(ValueError, match="items 0, 1 are never ranked below item 2 "):  # 2 is last in both
        pl.fit(np.array([[0, 1], [1, 0]]), 3)
    with pytest.raises(ValueError, match="items 0, 1 are never ranked above item 2 "):  # 2 never available
        pl.fit(np.array([[0, 1, -1], [1, 0, -1]]), 3, mask=np.array([True, True, False]))


def test_fit_alpha_is_npseudo():
    """With alpha, the estimate maximises the data log-likelihood plus the pseudo-comparisons' one."""
    rankings = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2]])
    alpha = 0.7
    f = pl.fit(rankings, 3, alpha=alpha, tol=1e-12)

    def penalised(theta):
        return _sum_ll(theta, rankings) + np.sum(alpha * theta - 2 * alpha * np.logaddexp(0, theta))

    # the returned scores are centred: find the shift that restores the virtual item's scale, then perturb
    minimize_scalar = pytest.importorskip("scipy.optimize").minimize_scalar

    c = minimize_scalar(lambda t: -penalised(f.scores + t)).x
    best = penalised(f.scores + c)
    for i in range(3):
        e = np.zeros(3)
        e[i] = 1e-4
        assert penalised(f.scores + c + e) <= best + 1e-12
        assert penalised(f.scores + c - e) <= best + 1e-12


# ----------------------------------------------------------------------------------------- temperature


@pytest.mark.parametrize("beta", [0.3, 1.0, 2.5])
def test_temperature_recovers_known_beta(backend: Backend, rng, beta):
    scores = rng.normal(size=(30000, 5))
    rankings = pl.sample(beta * scores, seed=int(rng.integers(2**32)))[:, 0]
    rankings[::3, 2:] = -1
    got = prefcal.recalibrate.temperature(backend.array(scores), backend.array(rankings))
    assert got == pytest.approx(beta, rel=0.05)
    # the maximiser: the derivative from the reference pass vanishes there
    _, bad = _reference.pl_temperature(scores, rankings, None, got)
    d1 = _reference.pl_temperature(scores, rankings, None, got)[0][1]
    assert bad == NO_ERROR and abs(d1) < 1e-6 * len(scores)


@pytest.mark.parametrize("n", [6, 65, 300, 1025])
def test_temperature_pass_matches_reference(rng, n):
    """Partial rankings with row masks; rows past 64 items (the memory set of listed items) and past 1024
    (worths recomputed where needed, the GPU's way); some rows spanning more than 300 / beta (the online
    log-sum-exp)."""
    scores, rankings, mask = pl_data(rng, {6: 700, 65: 300, 300: 40}.get(n, 8), n, partial=True, masked="row")
    scores[::5, 0] = scores[::5, 1] + 50.0  # beta * span > 300 at beta = 7
    cpu = prefcal._backend.cpu_module()
    if cpu is None:
        pytest.skip("no C++ module")
    for beta in (0.1, 1.0, 7.0):
        a, _ = cpu.pl_temperature(scores, rankings, mask, beta)
        b, _ = _reference.pl_temperature(scores, rankings, mask, beta)
        np.testing.assert_allclose(a, b, rtol=1e-10)
    # f is the summed log-likelihood of beta * scores; f' its derivative
    f = pl.log_likelihood(2.0 * scores, rankings, mask=mask, reduction="sum")
    assert a is not None and cpu.pl_temperature(scores, rankings, mask, 2.0)[0][0] == pytest.approx(
        f, rel=1e-12
    )
    h = 1e-5
    fd = (
        pl.log_likelihood((2 + h) * scores, rankings, mask=mask, reduction="sum")
        - pl.log_likelihood((2 - h) * scores, rankings, mask=mask, reduction="sum")
    ) / (2 * h)
    assert cpu.pl_temperature(scores, rankings, mask, 2.0)[0][1] == pytest.approx(fd, rel=1e-6)


def _temperature_both_ways(cpu, scores, rankings, beta):
    """The CPU temperature pass ((f, f', f''), first bad row) with the sixteen-row lanes and without them."""
    return _both_ways(cpu.set_temperature_lanes, lambda: cpu.pl_temperature(scores, rankings, None, beta))


@pytest.mark.parametrize("n", [2, 3, 10, 16, 32, 33])
@pytest.mark.parametrize("dtype,idtype", [(np.float32, np.int32), (np.float64, np.int64)])
def test_temperature_lanes_match_the_per_row_code(rng, n, dtype, idtype):
    """The temperature pass's lanes (n <= 32): the moments of the per-row code and of the reference, top-(n-1)
    rows among full ones, wide rows (beta * span > 300: per-row code), f against the log-likelihood of
    beta * scores, top-k rows, masks and a global model, and the first bad row of each kind wherever it
    falls."""
    cpu = pytest.importorskip("prefcal._cpu")
    rows = 16 * 30 + 7
    scores, rankings, _ = pl_data(rng, rows, n, dtype=dtype, idtype=idtype)
    rankings[4::23, n - 1] = -1
    scores[9::31, 0] = scores[9::31, 1] + 20.0  # wide at beta = 40
    for beta in (0.05, 1.0, 40.0):
        fast, slow = _temperature_both_ways(cpu, scores, rankings, beta)
        assert fast[1] == slow[1] == NO_ERROR
        ref, _ = _reference.pl_temperature(scores, rankings, None, beta)
        np.testing.assert_allclose(fast[0], slow[0], rtol=1e-10)
        np.testing.assert_allclose(fast[0], ref, rtol=1e-10)
        f = pl.log_likelihood((beta * scores.astype(np.float64)), rankings, reduction="sum")
        assert fast[0][0] == pytest.approx(f, rel=1e-12)
    # top-k rows of every k, row masks, one mask of all rows, one global model: the top-k loop, whose rows get
    # the per-row code's moments bit for bit (and so the same sums: no row left to the per-row code here)
    for mask in (None, rng.random((rows, n)) < 0.7, rng.random(n) < 0.7):
        if mask is not None:
            mask[..., :1] = True
        r = pl.sample(scores, seed=int(rng.integers(2**31)), mask=mask)[:, 0].astype(idtype)
        r[np.arange(n)[None, :] >= rng.integers(0, n + 1, size=rows)[:, None]] = -1
        for s in (scores, scores[0].copy()):
            for beta in (0.05, 1.0):
                call = lambda s=s, r=r, mask=mask, beta=beta: cpu.pl_temperature(s, r, mask, beta)  # noqa: E731
                fast, slow = _both_ways(cpu.set_temperature_lanes, call)
                assert fast[1] == slow[1] == NO_ERROR
                np.testing.assert_array_equal(fast[0], slow[0])
                ref, _ = _reference.pl_temperature(s, r, mask, beta)
                np.testing.assert_allclose(fast[0], ref, rtol=1e-10)
    for kind in ("range", "repeat", "early_pad", "nan", "inf"):
        for b in (0, 15, 16, int(rng.integers(rows)), rows - 1):
            s, r = scores.copy(), rankings.copy()
            if kind == "range":
                r[b, n // 2] = n
            elif kind == "repeat":
                r[b, 1] = r[b, 0]
            elif kind == "early_pad":  # a hole: padding before a listed item (row b may be top-(n-1))
                if r[b, 1] < 0:
                    r[b, 1] = r[b, 0]
                r[b, 0] = -1
            elif kind == "nan":
                s[b, n - 1] = np.nan
            else:
                s[b, 0] = np.inf
            fast, slow = _temperature_both_ways(cpu, s, r, 1.0)
            assert fast[1] == slow[1] == b, (kind, b)


def test_temperature_rejects_unidentifiable_data():
    with pytest.raises(ValueError, match="does not depend on the temperature"):
        prefcal.recalibrate.temperature(np.zeros((3, 3)), np.array([[0, 1, 2]] * 3))
    with pytest.raises(ValueError, match="no finite beta is best"):
        prefcal.recalibrate.temperature(np.array([[3.0, 2.0, 1.0]] * 4), np.array([[0, 1, 2]] * 4))
    # rankings in the scores' order everywhere, small gaps: the likelihood creeps up to 0 (a pass may round
    # it above 0) and its slope underflows to 0 at a large beta; no finite beta either
    s = np.array([[0.36457239618607573, 0.294132496655526, 0.02842224131579679], [0.5467, -0.7365, -0.1629]])
    with pytest.raises(ValueError, match="no finite beta is best"):
        prefcal.recalibrate.temperature(s, np.argsort(-s, axis=1))
    # rankings against the scores' order on balance: best as beta -> 0, no beta > 0
    with pytest.raises(ValueError, match="temperature goes to 0"):
        prefcal.recalibrate.temperature(-s, np.argsort(-s, axis=1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_temperature_with_curvature_that_underflows(dtype):
    """Score gaps of 10^3 in every choice set: at beta = 1 the variances (f'') underflow to 0 and Newton has
    no step; the bracket by the sign of f' must still walk down to the maximiser (~2.5e-4 here)."""
    d = np.array([800.0, 1000.0, 1200.0, 1500.0, 2000.0, 900.0, 1100.0, 1300.0])
    s = np.stack([d, np.zeros_like(d)], axis=1).astype(dtype)
    r = np.array([[0, 1], [1, 0], [0, 1], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1]])
    beta = prefcal.recalibrate.temperature(s, r)
    assert 1e-4 < beta < 1e-3

    def slope(b):  # f'(b) = sum over rows of s_chosen - E_b[s]; bisection to the root for comparison
        x = s.astype(np.float64)
        p = 1 / (1 + np.exp(-b * (x[:, 0] - x[:, 1])))
        return float(np.sum(x[np.arange(8), r[:, 0]] - (p * x[:, 0] + (1 - p) * x[:, 1])))

    lo, hi = 1e-6, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
    assert beta == pytest.approx(lo, rel=1e-9)


def test_apply_temperature_keeps_type():
    x = np.array([1.0, -2.0], dtype=np.float32)
    y = prefcal.recalibrate.apply_temperature(x, 2.0)
    assert y.dtype == np.float32 and y.tolist() == [2.0, -4.0]
    assert prefcal.recalibrate.apply_temperature([1, 2], 0.5).tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="beta must be positive"):
        prefcal.recalibrate.apply_temperature(x, 0.0)


# ----------------------------------------------------------------------------------------- rejections


REJECTIONS = [
    (np.array([[0, 5, 1]]), None, ValueError, r"rankings\[0, 1\] = 5 is out of range for n_items=4"),
    (np.array([[0, -2, 1]]), None, ValueError, r"rankings\[0, 1\] = -2 is out of range"),
    (np.array([[0, 2, 0]]), None, ValueError, r"rankings\[0\] repeats item 0 \(positions 0 and 2\)"),
    (np.array([[0, -1, 1]]), None, ValueError, r"rankings\[0, 2\] = 1 follows padding \(-1\) at position 1"),
    (
        np.array([[0, 3, -1]]),
        np.array([[True, True, True, False]]),
        ValueError,
        r"rankings\[0, 1\] = 3 is not available in row 0",
    ),
]


@pytest.mark.parametrize("rankings,mask,exc,match", REJECTIONS)
def test_bad_rankings_are_rejected_with_the_row(backend: Backend, rankings, mask, exc, match):
    good = np.array([[0, 1, 2], [3, 2, 1], [1, 0, -1]])
    r = np.concatenate([good, rankings])
    m = None if mask is None else np.concatenate([np.ones((3, 4), bool), mask])
    scores = np.zeros((4, 4))
    match = match.replace("[0", "[3").replace("row 0", "row 3")
    kw = {"mask": None if m is None else backend.array(m)}
    with pytest.raises(exc, match=match):
        pl.log_likelihood(backend.array(scores), backend.array(r), **kw)
    with pytest.raises(exc, match=match):
        pl.log_likelihood_grad(backend.array(scores[0]), backend.array(r), **kw)
    with pytest.raises(exc, match=match):
        prefcal.recalibrate.temperature(backend.array(scores), backend.array(r), **kw)
    with pytest.raises(exc, match=match):
        pl.fit(backend.array(r), 4, **kw)


@pytest.mark.parametrize("n", [5, 64, 65, 128])
@pytest.mark.parametrize("kind", ["range", "negative", "repeat", "hole", "weight"])
def test_fit_rejects_the_first_bad_full_ranking(rng, n, kind):
    """Full rankings without a mask take the fit setup's fast check; a bad one among thousands of good ones
    (in two chunks, the later one first in the data's order of chunks) is reported with its row."""
    rankings = np.argsort(rng.random((6000, n)), axis=1)
    weights = np.ones(6000)
    for b in (4100, 2300):
        if not spoil_ranking(rankings, b, kind, 4 if kind in ("repeat", "hole") else 3):
            weights[b] = -1.0
    match = {
        "range": rf"rankings\[2300, 3\] = {n} is out of range",
        "negative": r"rankings\[2300, 3\] = -2 is out of range",
        "repeat": r"rankings\[2300\] repeats item \d+ \(positions 3 and 4\)",
        "hole": r"rankings\[2300, 4\] = \d+ follows padding \(-1\) at position 3",
        "weight": r"weights\[2300\] = -1.0 is negative",
    }[kind]
    with pytest.raises(ValueError, match=match):
        pl.fit(rankings, n, weights=weights)
    rankings[2300] = np.arange(n)  # the row fixed: the later bad one is reported
    weights[2300] = 1.0
    with pytest.raises(ValueError, match=match.replace("2300", "4100")):
        pl.fit(rankings, n, weights=weights)


def test_bad_scores_and_weights_are_rejected(backend: Backend):
    scores = np.zeros((3, 4))
    scores[2, 1] = np.nan
    r = np.array([[0, 1, 2, 3]] * 3)
    with pytest.raises(ValueError, match=r"scores contains NaN at \[2, 1\]"):
        pl.log_likelihood(backend.array(scores), backend.array(r))
    with pytest.raises(ValueError, match=r"scores contains NaN at \[2, 1\]"):
        pl.sample(backend.array(scores), seed=0)
    with pytest.raises(ValueError, match=r"scores contains NaN at \[2, 1\]"):
        pl.pairwise(backend.array(scores))
    with pytest.raises(ValueError, match=r"scores contains inf at index 3"):
        pl.log_likelihood(backend.array(np.array([0, 0, 0, np.inf])), backend.array(r))
    with pytest.raises(ValueError, match=r"weights\[1\] = -1.0 is negative"):
        pl.fit(backend.array(r), 4, weights=backend.array(np.array([1.0, -1.0, 1.0])))


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (
            lambda: pl.log_likelihood(np.zeros((2, 3)), np.zeros((3, 3), int)),
            ValueError,
            "different numbers of rows",
        ),
        (lambda: pl.log_likelihood(np.zeros((2, 3)), np.zeros((2, 4), int)), ValueError, "only n_items=3"),
        (lambda: pl.log_likelihood(np.zeros((2, 3)), np.zeros(3, int)), ValueError, "must be 2-dimensional"),
        (lambda: pl.log_likelihood(np.zeros((2, 2, 3)), np.zeros((2, 3), int)), ValueError, "scores must be"),
        (lambda: pl.log_likelihood(np.zeros((2, 0)), np.zeros((2, 0), int)), ValueError, "no items"),
        (lambda: pl.log_likelihood(np.zeros((2, 3)), np.zeros((2, 3))), TypeError, "must contain integers"),
        (
            lambda: pl.log_likelihood(np.zeros((2, 3)), np.zeros((2, 3), int), mask=np.ones(3)),
            TypeError,
            "bool",
        ),
        (
            lambda: pl.log_likelihood(np.zeros((2, 3)), np.zeros((2, 3), int), mask=np.ones(2, bool)),
            ValueError,
            "mask must have shape",
        ),
        (
            lambda: pl.log_likelihood(np.zeros(3), np.zeros((1, 3), int), reduction="max"),
            ValueError,
            "reduction",
        ),
        (
            lambda: pl.log_likelihood(np.zeros(3), np.zeros((0, 3), int), reduction="mean"),
            ValueError,
            "empty",
        ),
        (lambda: pl.sample(np.zeros(3), 0), ValueError, "size must be at least 1"),
        (lambda: pl.sample(np.zeros(3), k=4), ValueError, "k must be between 1 and 3"),
        (lambda: pl.sample(np.zeros(3), seed=-1), ValueError, "seed must be between"),
        (lambda: pl.sample(np.zeros(3), seed=1.5), TypeError, "seed must be an integer"),
        (lambda: pl.fit(np.zeros((2, 3), int), 3, method="lbfgs"), ValueError, "method must be one of"),
        (lambda: pl.fit(np.zeros((2, 3), int), 3, alpha=-1), ValueError, "alpha must be non-negative"),
        (lambda: pl.fit(np.zeros((0, 3), int), 3), ValueError, "empty"),
        (lambda: pl.fit(np.zeros((2, 3), int), 3, weights=np.ones(3)), ValueError, "different lengths"),
        (lambda: pl.fit(np.zeros((2, 3), int), 0), ValueError, "n_items must be at least 1"),
        (
            lambda: prefcal.recalibrate.temperature(np.zeros(3), np.zeros((1, 3), int), max_iter=0),
            ValueError,
            "max_iter",
        ),
    ],
)
def test_argument_rejections(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_mixed_array_libraries_are_rejected():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="scores is torch.Tensor but rankings is numpy.ndarray"):
        pl.log_likelihood(torch.zeros(2, 3), np.zeros((2, 3), dtype=np.int64))


def test_empty_rankings_give_empty_results(backend: Backend):
    ll = backend.numpy(
        pl.log_likelihood(backend.array(np.zeros(3)), backend.array(np.zeros((0, 3), np.int32)))
    )
    assert ll.shape == (0,)
    assert pl.log_likelihood(np.zeros(3), np.zeros((0, 3), np.int32), reduction="sum") == 0.0


assert ALL_BACKENDS  # the backend fixture comes from conftest


def test_scores_of_no_dimension_are_rejected():
    for fn in (pl.sample, pl.mode, pl.mode_log_prob, pl.pairwise):
        with pytest.raises(ValueError, match=r"scores must be 1-dimensional .* got shape \(\)"):
            fn(np.array(1.0))


def test_unsigned_rankings_that_do_not_fit_an_index_are_rejected():
    """uint64 item 2**64 - 1 would wrap to -1 (padding) in int64 and be silently accepted."""
    s = np.array([[0.5, 1.0, -1.0]])
    for big in (2**64 - 1, 2**63):
        r = np.array([[0, 1], [2, big]], dtype=np.uint64)
        for call in (lambda r=r: pl.log_likelihood(s[[0, 0]], r), lambda r=r: pl.fit(r, 3, alpha=0.1)):
            with pytest.raises(ValueError, match=rf"rankings\[1, 1\] = {big} is out of range"):
                call()
    ok = np.array([[0, 1, 2]], dtype=np.uint64)
    assert pl.log_likelihood(s, ok)[0] == pl.log_likelihood(s, ok.astype(np.int64))[0]
    with pytest.raises(ValueError, match=rf"labels\[2\] = {2**63} is out of range"):
        prefcal.multiclass_ece(np.full((3, 2), 0.5), np.array([0, 1, 2**63], dtype=np.uint64))


def test_non_native_byte_order_keeps_the_float_dtype(rng):
    s = rng.normal(size=(5, 4))
    r = np.argsort(rng.random((5, 4)), axis=1)
    for dt in (">f4", ">f8"):
        big = s.astype(dt)
        native = s.astype(np.dtype(dt).newbyteorder("="))
        ll = pl.log_likelihood(big, r)
        assert ll.dtype == native.dtype and np.array_equal(ll, pl.log_likelihood(native, r))
        assert pl.log_likelihood_grad(big, r)[1].dtype == native.dtype
        assert pl.pairwise(big).dtype == native.dtype


def test_fit_of_rankings_that_list_nothing(backend: Backend):
    """Rows of padding only (or no positions at all) carry no comparison: alpha > 0 gives equal worths,
    alpha = 0 no estimate; the same on every backend (the reference used to fail on NumPy's casting)."""
    for r in (np.full((3, 3), -1), np.zeros((2, 0), dtype=np.int64)):
        f = pl.fit(backend.array(r), 3, alpha=0.5)
        assert f.converged and np.array_equal(f.scores, np.zeros(3))
        with pytest.raises(ValueError, match="not strongly connected"):
            pl.fit(backend.array(r), 3)


def test_one_model_with_per_row_choice_sets_is_the_tiled_model(backend: Backend, rng):
    """Scores (n,) with a mask (N, n) (SPEC §1 allows both shapes) mean one context per mask row."""
    g = rng.normal(size=5)
    mask = rng.random((7, 5)) < 0.7
    mask[:, 0] = True
    tiled = np.tile(g, (7, 1))
    G, T, M = backend.array(g), backend.array(tiled), backend.array(mask)
    for f in (lambda s: pl.sample(s, 3, mask=M, seed=4), lambda s: pl.mode(s, mask=M, k=3)):
        np.testing.assert_array_equal(backend.numpy(f(G)), backend.numpy(f(T)))
    np.testing.assert_allclose(
        backend.numpy(pl.mode_log_prob(G, mask=M)), backend.numpy(pl.mode_log_prob(T, mask=M)), rtol=1e-12
    )
    np.testing.assert_allclose(
        backend.numpy(prefcal.marginals.positions(G, mask=M)),
        backend.numpy(prefcal.marginals.positions(T, mask=M)),
        rtol=1e-12,
    )


def test_temperature_with_scores_of_mixed_scales_and_any_scale(rng):
    """Rows whose rankings follow scores of 1e4 beside rows drawn from PL(2000 * s) with s ~ 1e-3: the large
    rows' curvature vanishes long before the small rows' does, and a finite beta (~2e3) is best; and scaling
    the scores by c scales the temperature by 1 / c (no cap on beta)."""
    big = np.array([[1e4, 0.0, -1e4]] * 20)
    small = rng.normal(size=(200, 3)) * 1e-3
    r_small = np.argsort(-(2000.0 * small + rng.gumbel(size=small.shape)), axis=1)
    s, r = np.vstack([big, small]), np.vstack([np.argsort(-big, axis=1), r_small])
    beta = prefcal.recalibrate.temperature(s, r)
    _, d1, d2 = _reference.pl_temperature(s, r, None, beta)[0]
    assert abs(d1) < 1e-6 * abs(d2) * beta and d2 < 0  # the stationary point of a concave function
    s2 = rng.normal(size=(2000, 4))
    r2 = pl.sample(2.0 * s2, seed=1)[:, 0]
    b1 = prefcal.recalibrate.temperature(s2, r2)
    for c in (1e-8, 1e-3, 1e3):
        assert prefcal.recalibrate.temperature(c * s2, r2) * c == pytest.approx(b1, rel=1e-9)
    # max_iter ends the search with its last estimate (not a claim that no beta is best)
    assert 1.0 < prefcal.recalibrate.temperature(s2, r2, max_iter=2) < 2.5


def test_fit_with_huge_weights(rng):
    r = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])
    for w in (1e150, 1e200):  # the pseudo-comparisons' curvature rounds away next to the data's
        for method in ("mm", "newton"):
            got = pl.fit(r, 3, weights=np.full(3, w), alpha=0.5, method=method).scores
            np.testing.assert_allclose(got, pl.fit(r, 3, alpha=0.5 / w, method="mm").scores, atol=1e-7)
    with pytest.raises(ValueError, match="weighted counts of the rankings sum to inf"):
        pl.fit(r, 3, weights=np.full(3, 1e308))


@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
def test_log_likelihood_is_shift_invariant_at_large_offsets(backend_name):
    # scores c + x, one offset c up to 1e16 for the whole row: every quantity depends on the differences only
    # (exactly representable here), on the reference as on the kernels (the reference once summed log-add-exp
    # of raw scores: 0 at 1e16)
    x = np.array([[0.0, 2.0], [4.0, -2.0]])
    r = np.array([[1, 0], [0, 1]])
    want = pl.log_likelihood(x, r)
    want_grad = pl.log_likelihood_grad(x, r)[1]
    with get_backend(backend_name).active():
        for c in (1e8, 1e12, 1e16):
            np.testing.assert_allclose(pl.log_likelihood(x + c, r), want, rtol=1e-12)
            np.testing.assert_allclose(pl.log_likelihood_grad(x + c, r)[1], want_grad, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(pl.mode_log_prob(x + c), pl.mode_log_prob(x), rtol=1e-12)
    assert want[0] == pytest.approx(-math.log1p(math.exp(-2.0)), rel=1e-14)


def test_reference_rows_spanning_more_than_the_float_range_stay_finite():
    # centred, such a row's lowest scores would be -inf (NaN likelihoods on the reference): it is left as it
    # is, finite and without warnings (errors here), as the kernels compute it
    scores = np.array([[1e308, -1e308, -1e308], [1.7e308, -1.7e308, 0.0], [0.5, -0.2, 1.0]])
    rankings = np.array([[0, 1, 2], [0, 1, 2], [2, 0, 1]])
    want = pl.log_likelihood_grad(scores, rankings)
    with get_backend("reference").active():
        got = pl.log_likelihood_grad(scores, rankings)
        assert np.isfinite(pl.mode_log_prob(scores)).all()
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-15)
