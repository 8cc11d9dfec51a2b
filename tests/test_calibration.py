"""prefcal.calibration on every backend against the NumPy reference, brute force and exact arithmetic."""

from __future__ import annotations

import math
import sys
from fractions import Fraction

import numpy as np
import prefcal
import pytest
from conftest import ALL_BACKENDS, Backend, binary_data, get_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from prefcal import _backend, _reference, calibration

# Sizes: one row, two, odd, not a multiple of any block (256), chunk (65536) or GPU vector width (4).
SIZES = (1, 2, 7, 1001, 3 * 65536 + 5)
OUTCOME_DTYPES = (np.bool_, np.uint8, np.int8, np.int32, np.int64, np.float32, np.float64)


def reference_table(conf, correct, n_bins, strategy="uniform", weights=None):
    conf, correct = np.asarray(conf), np.asarray(correct)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if strategy == "uniform":
        table, bad = _reference.bin_uniform(conf, correct, w, n_bins)
        edges = np.arange(n_bins + 1) / n_bins
    else:
        table, edges, bad = _reference.bin_quantile(conf, correct, w, n_bins)
    assert bad == prefcal._validation.NO_ERROR
    return table, edges


def assert_matches(r: prefcal.Reliability, table, edges, weighted=False):
    if weighted:
        np.testing.assert_allclose(r.count, table[0], rtol=1e-12)
    else:
        np.testing.assert_array_equal(r.count, table[0])  # counts are exact
        np.testing.assert_array_equal(r.sum_correct, table[2])
    np.testing.assert_allclose(r.sum_confidence, table[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r.sum_correct, table[2], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(r.edges, edges)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("weighted", [False, True])
def test_reliability_matches_reference(backend: Backend, rng, n, dtype, strategy, weighted):
    conf, correct = binary_data(rng, n, dtype)
    weights = rng.random(n) * 3 if weighted else None
    r = prefcal.reliability(
        backend.array(conf), backend.array(correct), n_bins=15, strategy=strategy,
        weights=None if weights is None else backend.array(weights),
    )
    assert_matches(r, *reference_table(conf, correct, 15, strategy, weights), weighted)
    assert r.strategy == strategy and r.n_bins == 15


@pytest.mark.parametrize("outcome_dtype", OUTCOME_DTYPES)
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_outcome_dtypes_read_natively(backend: Backend, rng, outcome_dtype, strategy):
    conf, correct = binary_data(rng, 4099, np.float32)
    r = prefcal.reliability(backend.array(conf), backend.array(correct.astype(outcome_dtype)), strategy=strategy)
    assert_matches(r, *reference_table(conf, correct, 15, strategy))


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_million_rows(backend: Backend, rng, strategy):
    conf, correct = binary_data(rng, 10**6, np.float32)
    r = prefcal.reliability(backend.array(conf), backend.array(correct), strategy=strategy)
    assert_matches(r, *reference_table(conf, correct, 15, strategy))
    assert r.total == 10**6


@pytest.mark.parametrize("n_bins", [1, 2, 3, 10, 24, 25, 100, 3000, 20000])
def test_bin_counts_of_every_kernel_path(backend: Backend, rng, n_bins):
    """Small, medium and huge bin counts take different kernels (private / shared / global on the GPU)."""
    conf, correct = binary_data(rng, 50001, np.float64)
    for weights in (None, rng.random(50001)):
        r = prefcal.reliability(
            backend.array(conf), backend.array(correct), n_bins=n_bins,
            weights=None if weights is None else backend.array(weights),
        )
        assert_matches(r, *reference_table(conf, correct, n_bins, weights=weights), weights is not None)


def _edge_values(n_bins: int, dtype) -> np.ndarray:
    """0, 1, every k/B and its neighbours one and two ulps away, in `dtype`."""
    k = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    vals = [k.astype(dtype)]
    v = k.astype(dtype)
    for _ in range(2):
        v_up, v_down = np.nextafter(v, dtype(2)), np.nextafter(v, dtype(-1))
        vals += [v_up, v_down]
        v = v_up
    out = np.concatenate(vals)
    return out[(out >= 0) & (out <= 1)]


@pytest.mark.parametrize("n_bins", [1, 3, 7, 10, 15, 49, 100])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_on_edges(backend: Backend, n_bins, dtype):
    """Edges 0, k/B and 1 land in the bins of SPEC §12 on every backend."""
    conf = _edge_values(n_bins, dtype)
    correct = np.arange(conf.size) % 2 == 0
    r = prefcal.reliability(backend.array(conf), backend.array(correct), n_bins=n_bins)
    assert_matches(r, *reference_table(conf, correct, n_bins))
    # Independent oracle: exact rational arithmetic. For float32 the float64 product is exact, so the rule is
    # floor(c * B) on the exact value; for float64 the rule takes the rounded float64 product (§12).
    expected = np.zeros(n_bins)
    for c in conf:
        if dtype == np.float32:
            b = math.floor(Fraction(float(c)) * n_bins)
        else:
            b = math.floor(float(c) * n_bins)
        expected[min(b, n_bins - 1)] += 1
    np.testing.assert_array_equal(r.count, expected)


def test_one_lands_in_the_last_bin(backend: Backend):
    r = prefcal.reliability(backend.array(np.array([1.0, 0.0])), backend.array(np.array([1, 0])), n_bins=4)
    assert r.count.tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize("n_bins", [1, 2, 3, 5, 7, 10, 15, 16, 100, 997, 1000, 2**20 + 3, 2**24])
def test_float32_bin_path_equals_float64_rule(n_bins):
    """The GPU's float32 bin arithmetic (shared header, run here on the CPU) equals the float64 rule."""
    cpu = _backend.cpu_module()
    if cpu is None:
        pytest.skip("prefcal._cpu is not importable")
    k = np.unique(np.linspace(0, n_bins, min(n_bins + 1, 20001)).round()) / n_bins
    base = k.astype(np.float32)
    around = [base]
    lo = hi = base
    for _ in range(64):
        lo, hi = np.nextafter(lo, np.float32(-1)), np.nextafter(hi, np.float32(2))
        around += [lo, hi]
    rng = np.random.default_rng(0)
    around.append(rng.random(10**6, dtype=np.float32))
    c = np.concatenate(around)
    c = c[(c >= 0) & (c <= 1)]
    np.testing.assert_array_equal(cpu.uniform_bin_index(c, n_bins, True), cpu.uniform_bin_index(c, n_bins, False))


def test_ties_keep_row_order_in_quantile_bins(backend: Backend, rng):
    """Rows with equal confidence are split between quantile bins by row index (stable sort)."""
    conf = rng.choice(np.array([0.0, 0.2, 0.5, 1.0]), size=1003)
    conf[::7] = -0.0  # -0.0 equals 0.0 and must not sort first
    correct = rng.random(1003) < 0.5
    r = prefcal.reliability(backend.array(conf), backend.array(correct), n_bins=10, strategy="quantile")
    assert_matches(r, *reference_table(conf, correct, 10, "quantile"))
    # brute force: bin b holds sorted ranks [floor(b n / B), floor((b+1) n / B))
    order = sorted(range(conf.size), key=lambda i: (conf[i], i))
    hits = [sum(bool(correct[i]) for i in order[(b * 1003) // 10 : ((b + 1) * 1003) // 10]) for b in range(10)]
    assert r.sum_correct.tolist() == hits


def test_more_quantile_bins_than_rows(backend: Backend):
    conf = np.array([0.3, 0.1, 0.9])
    r = prefcal.reliability(backend.array(conf), backend.array(np.array([1, 0, 1])), n_bins=7, strategy="quantile")
    assert_matches(r, *reference_table(conf, np.array([1, 0, 1]), 7, "quantile"))
    assert r.total == 3 and (r.count > 0).sum() == 3


def brute_force_errors(conf, correct, n_bins, weights=None):
    """ECE, RMSCE, debiased RMSCE and MCE by explicit loops over rows and bins."""
    w = [1.0] * len(conf) if weights is None else list(weights)
    bins: dict[int, list[tuple[float, float, float]]] = {}
    for c, y, wi in zip(conf, correct, w, strict=True):
        b = min(int(math.floor(float(c) * n_bins)), n_bins - 1)
        bins.setdefault(b, []).append((float(c), float(y), wi))
    total = sum(w)
    l1 = l2 = deb = mce = 0.0
    for rows in bins.values():
        nb = sum(r[2] for r in rows)
        if nb == 0:
            continue
        acc = sum(r[1] * r[2] for r in rows) / nb
        cf = sum(r[0] * r[2] for r in rows) / nb
        l1 += nb / total * abs(acc - cf)
        l2 += nb / total * (acc - cf) ** 2
        deb += nb / total * ((acc - cf) ** 2 - (acc * (1 - acc) / (nb - 1) if nb >= 2 else 0.0))
        mce = max(mce, abs(acc - cf))
    return l1, math.sqrt(l2), math.sqrt(max(deb, 0.0)), mce


@pytest.mark.parametrize("weighted", [False, True])
def test_norms_against_brute_force(backend: Backend, rng, weighted):
    conf, correct = binary_data(rng, 257, np.float64)
    weights = rng.random(257) if weighted else None
    kw = {"weights": None if weights is None else backend.array(weights)}
    l1, l2, deb, mce = brute_force_errors(conf, correct, 10, weights)
    c, y = backend.array(conf), backend.array(correct)
    assert prefcal.ece(c, y, n_bins=10, **kw) == pytest.approx(l1, rel=1e-12)
    assert prefcal.ece(c, y, n_bins=10, norm="l2", **kw) == pytest.approx(l2, rel=1e-12)
    assert prefcal.ece(c, y, n_bins=10, norm="l2", debias=True, **kw) == pytest.approx(deb, rel=1e-10, abs=1e-14)
    assert prefcal.ece(c, y, n_bins=10, norm="max", **kw) == pytest.approx(mce, rel=1e-12)


def test_debias_clips_at_zero():
    # A perfectly calibrated bin: the debiasing term exceeds the squared gap, so the value clips to 0.
    conf = np.full(10, 0.5)
    correct = np.array([1, 0] * 5)
    assert prefcal.ece(conf, correct, norm="l2", debias=True) == 0.0


# ----------------------------------------------------------------------------------------- multiclass

MULTICLASS_KINDS = ("confidence", "classwise", "top_label")


def brute_force_multiclass(probs, labels, kind, n_bins, norm):
    n, n_classes = probs.shape

    def binary(conf, hit):
        table, _ = _reference.bin_uniform(np.asarray(conf, dtype=np.float64), np.asarray(hit), None, n_bins)
        return prefcal.calibration.calibration_error(*table, norm)

    pred = [min(range(n_classes), key=lambda j: (-probs[i, j], j)) for i in range(n)]
    top = [probs[i, pred[i]] for i in range(n)]
    hit = [pred[i] == labels[i] for i in range(n)]
    if kind == "confidence":
        return binary(top, hit)
    if kind == "classwise":
        return sum(binary(probs[:, c], labels == c) for c in range(n_classes)) / n_classes
    total = 0.0
    for c in range(n_classes):
        rows = [i for i in range(n) if pred[i] == c]
        if rows:
            total += len(rows) / n * binary([top[i] for i in rows], [hit[i] for i in rows])
    return total


@pytest.mark.parametrize("kind", MULTICLASS_KINDS)
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multiclass_against_brute_force(backend: Backend, rng, kind, norm, dtype):
    n, n_classes = 301, 5
    probs = rng.dirichlet(np.ones(n_classes) * 0.7, size=n).astype(dtype)
    probs[:20] = np.round(probs[:20], 1)  # ties for the argmax: the lowest index wins
    labels = rng.integers(0, n_classes, n)
    got = prefcal.multiclass_ece(backend.array(probs), backend.array(labels), kind=kind, n_bins=10, norm=norm)
    assert got == pytest.approx(brute_force_multiclass(probs, labels, kind, 10, norm), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("kind", MULTICLASS_KINDS)
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64, np.uint8])
def test_multiclass_matches_reference(backend: Backend, rng, kind, strategy, label_dtype):
    n, n_classes = 20011, 7
    probs = rng.dirichlet(np.ones(n_classes), size=n)
    labels = rng.integers(0, n_classes, n).astype(label_dtype)
    got = prefcal.multiclass_ece(backend.array(probs), backend.array(labels), kind=kind, strategy=strategy)
    code = MULTICLASS_KINDS.index(kind)
    fn = _reference.multiclass_uniform if strategy == "uniform" else _reference.multiclass_quantile
    tables, _, _ = fn(probs, labels.astype(np.int64), 15, code)
    if kind == "confidence":
        want = prefcal.calibration.calibration_error(*tables[0])
    elif kind == "classwise":
        want = np.mean([prefcal.calibration.calibration_error(*t) for t in tables])
    else:
        rows = tables[:, 0].sum(axis=1)
        error = prefcal.calibration.calibration_error
        want = sum(r / n * error(*t) for r, t in zip(rows, tables, strict=True) if r > 0)
    assert got == pytest.approx(want, rel=1e-11, abs=1e-14)


def test_multiclass_many_classes(backend: Backend, rng):
    """Class tables too large for GPU shared memory take the global-memory path."""
    n, n_classes = 3000, 400
    probs = rng.dirichlet(np.ones(n_classes), size=n).astype(np.float32)
    labels = rng.integers(0, n_classes, n)
    for kind in MULTICLASS_KINDS:
        got = prefcal.multiclass_ece(backend.array(probs), backend.array(labels), kind=kind)
        with Backend("reference").active():
            want = prefcal.multiclass_ece(probs, labels, kind=kind)
        assert got == pytest.approx(want, rel=1e-10, abs=1e-14)


# ----------------------------------------------------------------------------------------- scores


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_brier_and_log_loss(backend: Backend, rng, dtype, weighted):
    conf, correct = binary_data(rng, 10007, dtype)
    conf[:3] = [0.0, 1.0, 0.5]  # clipping of the log loss at 0 and 1
    weights = rng.random(conf.size) if weighted else None
    w = np.ones(conf.size) if weights is None else weights
    c64, y = conf.astype(np.float64), correct.astype(np.float64)
    eps = np.finfo(dtype).eps
    cl = np.clip(c64, eps, 1 - eps)
    want_brier = float(np.sum(w * (c64 - y) ** 2) / w.sum())
    want_ll = float(np.sum(-w * (y * np.log(cl) + (1 - y) * np.log(1 - cl))) / w.sum())
    kw = {"weights": None if weights is None else backend.array(weights)}
    assert prefcal.brier(backend.array(conf), backend.array(correct), **kw) == pytest.approx(want_brier, rel=1e-12)
    assert prefcal.log_loss(backend.array(conf), backend.array(correct), **kw) == pytest.approx(want_ll, rel=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_loss_is_accurate_where_its_terms_are_tiny(backend: Backend, rng, dtype):
    """Outcome 0 at confidences near 0 and outcome 1 near 1: terms of ~c and ~1 - c, summed to full relative
    precision (log(1 - c) with 1 - c rounded would be off by ~1e-6 relative here in float64)."""
    eps = np.finfo(dtype).eps
    small = (eps * (1 + rng.random(5003) * 1e4)).astype(dtype)  # above the clip, below 1e-3 or 1e-12
    conf = np.concatenate([small, (1 - small.astype(np.float64)).astype(dtype)])
    correct = np.concatenate([np.zeros(small.size, bool), np.ones(small.size, bool)])
    cl = np.clip(conf.astype(np.float64), eps, 1 - eps)
    terms = [-math.log1p(-c) if not y else -math.log(c) for c, y in zip(cl.tolist(), correct.tolist(), strict=True)]
    want = math.fsum(terms) / conf.size
    got = prefcal.log_loss(backend.array(conf), backend.array(correct))
    assert got == pytest.approx(want, rel=1e-13)


# ----------------------------------------------------------------------------------------- Reliability


def test_reliability_merge_and_sum(rng):
    conf, correct = binary_data(rng, 1000)
    whole = prefcal.reliability(conf, correct)
    parts = [prefcal.reliability(conf[a:b], correct[a:b]) for a, b in [(0, 1), (1, 400), (400, 1000)]]
    merged = parts[0].merge(parts[1]) + parts[2]
    np.testing.assert_array_equal(merged.count, whole.count)
    np.testing.assert_allclose(merged.sum_confidence, whole.sum_confidence, rtol=1e-13)
    assert sum(parts).count.tolist() == whole.count.tolist()
    assert merged.ece() == pytest.approx(whole.ece(), rel=1e-12)


def test_reliability_merge_rejections(rng):
    conf, correct = binary_data(rng, 100)
    q = prefcal.reliability(conf, correct, strategy="quantile")
    u = prefcal.reliability(conf, correct)
    with pytest.raises(ValueError, match="quantile bins are not mergeable"):
        q.merge(q)
    with pytest.raises(ValueError, match="cannot merge tables of 15 and 10 bins"):
        u.merge(prefcal.reliability(conf, correct, n_bins=10))
    with pytest.raises(TypeError, match="can only merge a Reliability"):
        u.merge(3)


def test_reliability_derived_values():
    r = prefcal.reliability(np.array([0.1, 0.2, 0.9, 0.95]), np.array([0, 1, 1, 1]), n_bins=4)
    assert r.count.tolist() == [2, 0, 0, 2]
    np.testing.assert_allclose(r.mean_confidence[[0, 3]], [0.15, 0.925])
    assert np.isnan(r.mean_confidence[1]) and np.isnan(r.accuracy[2])
    np.testing.assert_allclose(r.accuracy[[0, 3]], [0.5, 1.0])
    np.testing.assert_allclose(r.fraction, [0.5, 0, 0, 0.5])
    d = r.to_dict()
    assert d["count"] == [2, 0, 0, 2] and d["edges"] == [0, 0.25, 0.5, 0.75, 1.0] and d["strategy"] == "uniform"
    assert not r.count.flags.writeable


def test_quantile_edges(rng):
    conf = rng.random(1000)
    r = prefcal.reliability(conf, conf > 0.5, n_bins=4, strategy="quantile")
    s = np.sort(conf)
    assert r.edges.tolist() == [0.0, s[250], s[500], s[750], 1.0]
    assert r.count.tolist() == [250, 250, 250, 250]


def test_plot(rng):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf, correct = binary_data(rng, 5000)
    r = prefcal.reliability(conf, correct, n_bins=10)
    ax = r.plot()
    assert ax.get_xlabel() == "confidence" and "ECE" in ax.get_title()
    assert len(ax.patches) == 2 * int((r.count > 0).sum())  # accuracy and gap bars per non-empty bin
    labels = [t.get_text() for t in ax.texts]  # the bin counts, one per non-empty bin
    assert labels == [calibration._short_count(c) for c in r.count[r.count > 0]]
    assert calibration._short_count(87) == "87" and calibration._short_count(1234) == "1.2k"
    assert calibration._short_count(45_600) == "46k" and calibration._short_count(3.14e6) == "3.1M"
    plt.close("all")


# ----------------------------------------------------------------------------------------- properties

valid_conf = hnp.arrays(np.float64, st.integers(1, 300), elements=st.floats(0, 1, allow_subnormal=True))


@pytest.mark.parametrize("name", ALL_BACKENDS)
@settings(max_examples=40, deadline=None)
@given(conf=valid_conf, data=st.data())
def test_properties(name, conf, data):
    b = get_backend(name)
    n = conf.size
    correct = data.draw(hnp.arrays(np.bool_, n))
    n_bins = data.draw(st.integers(1, 40))
    cut = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
    perm = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).permutation(n)
    with b.active():
        whole = prefcal.reliability(b.array(conf), b.array(correct), n_bins=n_bins)
        for norm in ("l1", "l2", "max"):
            assert 0.0 <= whole.ece(norm) <= 1.0
        assert 0.0 <= whole.ece("l2", debias=True) <= 1.0
        # merge of any split equals the whole
        bounds = [0, *cut, n]
        parts = [
            prefcal.reliability(b.array(conf[lo:hi]), b.array(correct[lo:hi]), n_bins=n_bins)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
            if hi > lo
        ]
        merged = sum(parts)
        np.testing.assert_array_equal(merged.count, whole.count)
        np.testing.assert_allclose(merged.sum_confidence, whole.sum_confidence, rtol=1e-12, atol=1e-12)
        # row order is irrelevant
        shuffled = prefcal.reliability(b.array(conf[perm]), b.array(correct[perm]), n_bins=n_bins)
        np.testing.assert_array_equal(shuffled.count, whole.count)
        np.testing.assert_allclose(shuffled.sum_confidence, whole.sum_confidence, rtol=1e-12, atol=1e-12)
        # quantile bins: permutation-invariant when the confidences are distinct
        if np.unique(conf).size == n:
            qa = prefcal.reliability(b.array(conf), b.array(correct), n_bins=n_bins, strategy="quantile")
            qb = prefcal.reliability(b.array(conf[perm]), b.array(correct[perm]), n_bins=n_bins, strategy="quantile")
            np.testing.assert_array_equal(qa.count, qb.count)
            np.testing.assert_array_equal(qa.sum_correct, qb.sum_correct)


# ----------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("weighted", [False, True])
def test_cpu_results_do_not_depend_on_thread_count(rng, strategy, weighted):
    if _backend.cpu_module() is None:
        pytest.skip("prefcal._cpu is not importable")
    conf, correct = binary_data(rng, 5 * 65536 + 17, np.float32)
    weights = rng.random(conf.size) if weighted else None
    tables, multiclass = set(), set()
    try:
        for threads in (1, 2, 3, 8):
            prefcal.config.set_num_threads(threads)
            assert prefcal.config.get_num_threads() == (threads if prefcal.backends()["cpu"]["openmp"] else 1)
            r = prefcal.reliability(conf, correct, strategy=strategy, weights=weights)
            tables.add((r.count.tobytes(), r.sum_confidence.tobytes(), r.sum_correct.tobytes()))
            probs = np.stack([conf, 1 - conf], 1)
            multiclass.add(prefcal.multiclass_ece(probs, correct.astype(np.int64), kind="classwise", strategy=strategy))
    finally:
        prefcal.config.set_num_threads(None)
    assert len(tables) == 1 and len(multiclass) == 1


@pytest.mark.parametrize("name", ["cupy", "torch-cuda"])
def test_gpu_results_are_reproducible(name, rng):
    b = get_backend(name)
    conf, correct = binary_data(rng, 10**6 + 3, np.float32)
    c, y = b.array(conf), b.array(correct)
    runs = [prefcal.reliability(c, y) for _ in range(3)]
    assert all(r.sum_confidence.tobytes() == runs[0].sum_confidence.tobytes() for r in runs)


@pytest.mark.parametrize("name", ["cupy", "torch-cuda"])
def test_gpu_rows_per_thread_limit(name, rng, monkeypatch):
    """With the grid capped at one block, 256 threads would each bin 70000 rows and overflow their 16-bit
    counters; the launcher adds blocks so that no thread bins more than 65000 rows."""
    b = get_backend(name)
    monkeypatch.setenv("PREFCAL_CUDA_GRID_CAP", "1")
    n = 256 * 70000
    conf, correct = binary_data(rng, n, np.float32)
    r = prefcal.reliability(b.array(conf), b.array(correct))
    assert_matches(r, *reference_table(conf, correct, 15))
    plan = _backend.cuda_module().describe_bin_uniform((0, "|f4"), (0, "|u1"), None, n, 15, 0)
    assert "grid=2 " in plan


# ----------------------------------------------------------------------------------------- layouts


def test_non_contiguous_and_byte_swapped(backend: Backend, rng):
    conf, correct = binary_data(rng, 2001)
    if backend.name in ("reference", "cpu", "cuda-staged"):
        c = conf.astype(">f8")[::2]
        y = correct[::2]
    else:
        c = backend.array(conf)[::2]
        y = backend.array(correct)[::2]
    r = prefcal.reliability(c, y)
    assert_matches(r, *reference_table(conf[::2], correct[::2], 15))


def test_python_lists_and_integer_confidences(backend: Backend):
    if backend.on_gpu and backend.name != "cuda-staged":
        pytest.skip("lists are host inputs")
    r = prefcal.reliability([0, 1, 1, 0.5], [0, 1, 0, 1], n_bins=2)
    assert r.count.tolist() == [1, 3]
    assert prefcal.ece(np.array([0, 1, 1]), np.array([0, 1, 1])) == 0.0


def test_bool_outcomes_stored_as_other_bytes_read_as_numpy_reads_them(backend: Backend):
    # a bool view of uint8 data may hold bytes other than 0 and 1: nonzero is True, on every backend
    conf = np.array([0.1, 0.5, 0.9, 0.3, 0.7])
    raw = np.array([0, 2, 1, 0, 255], np.uint8)
    stored = backend.array(raw)
    y = stored.view(sys.modules["torch"].bool) if backend.name.startswith("torch") else stored.view(np.bool_)
    c = backend.array(conf)
    want = raw != 0
    for strategy in ("uniform", "quantile"):
        assert_matches(
            prefcal.reliability(c, y, n_bins=3, strategy=strategy), *reference_table(conf, want, 3, strategy)
        )
    assert prefcal.brier(c, y) == pytest.approx(float(np.mean((conf - want) ** 2)), rel=1e-12)
    log_loss = float(-np.mean(np.log(np.where(want, conf, 1 - conf))))
    assert prefcal.log_loss(c, y) == pytest.approx(log_loss, rel=1e-12)
    assert backend.numpy(stored).tolist() == [0, 2, 1, 0, 255]  # the caller's array is left as it was
