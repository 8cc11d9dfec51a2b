"""The CUDA ranking kernels (prefcal._ranking_cuda over prefcal._cuda) against the CPU kernels
(prefcal._cpu.rank_*) on random inputs: masks, partial rankings, ties and unknown places, slow rows (score
spreads > 700), n from 2 to 12, sub-k and top-k levels, linear and log bins, keep masks, one shared score row;
every launch path (private cells, global atomics, untiled rows, several row blocks, short epochs, order
blocks, small blocks) through the PREFCAL_CUDA_RANK_TEST hook. Counts must be equal, sums equal to float64
rounding.

Skipped when prefcal._cuda has no usable device (or was built without the ranking kernels)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from conftest import skip_reason
from prefcal import _backend, _reference, ranking

HOOKS = [
    "",
    "global",
    "untiled",
    "gx=5",
    "epoch=3",
    "ob=1",
    "ob=4",
    "threads=32",
    "untiled,epoch=2,gx=3",
    "threads=64,ob=5,gx=2",
]


@pytest.fixture
def kernels():
    reason = skip_reason("cuda-staged")
    if reason:
        pytest.skip(reason)
    cpu = _backend.cpu_module()
    from prefcal import _ranking_cuda

    return cpu, _ranking_cuda


@pytest.fixture(params=HOOKS, ids=lambda h: h or "default")
def hook(request, monkeypatch):
    if request.param:
        monkeypatch.setenv("PREFCAL_CUDA_RANK_TEST", request.param)
    else:
        monkeypatch.delenv("PREFCAL_CUDA_RANK_TEST", raising=False)
    return request.param


def assert_tables(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got[..., 0, :], want[..., 0, :], err_msg="counts")
    np.testing.assert_array_equal(got[..., 2, :], want[..., 2, :], err_msg="outcomes")
    # sums of p: two summation orders of `count` nonnegative terms differ by at most ~2 count u |sum|; and
    # a sub-k probability formed with cancellation (two formulas of it) carries an absolute error of a few u
    # per term, far beyond 1e-13 relative when p is ~1e-3 (seen: 1.5e-13 relative, 1e-16 absolute)
    tol = (1e-13 + 2.5e-16 * want[..., 0, :]) * np.abs(want[..., 1, :]) + 4e-15 * want[..., 0, :] + 1e-300
    bad = np.abs(got[..., 1, :] - want[..., 1, :]) > tol
    assert not bad.any(), f"sums of p: {got[..., 1, :][bad][:5]} vs {want[..., 1, :][bad][:5]}"


# ------------------------------------------------------------------------------------------------ inputs
def make_avail(rng, rows, n, p):
    return np.ones((rows, n), bool) if p >= 1 else rng.random((rows, n)) < p


def make_scores(rng, rows, n, avail, *, scale=1.5, slow=0.2):
    s = rng.normal(size=(rows, n)) * scale
    slow_rows = rng.random(rows) < slow
    # spreads > 700 (the log domain): one item far above the rest (their worths underflow) or far below
    s[slow_rows, rng.integers(0, n, size=int(slow_rows.sum()))] += rng.choice(
        [750.0, -750.0], size=int(slow_rows.sum())
    )
    s[rng.random(rows) < 0.05] = 0.25  # tied rows
    return np.where(avail, s, -np.inf)


def make_keys(rng, rows, n, avail, kind):
    """0: full orders; 1: partial rankings (a listed prefix, the rest tied); 2: observed ranks with ties
    and NaN. +inf where unavailable."""
    keys = np.empty((rows, n))
    for b in range(rows):
        perm = rng.permutation(n)
        if kind in (0, 1):
            length = n if kind == 0 else int(rng.integers(0, n + 1))
            keys[b] = length
            keys[b, perm[:length]] = np.arange(length)
        else:
            keys[b] = rng.integers(0, max(1, n // 2) + 1, size=n)
            keys[b, rng.random(n) < 0.1] = np.nan
    return np.where(avail, keys, np.inf)


def level_inputs(rng, rows, n, *, one_row=False, avail_p=0.85, kind=None, keep=None):
    avail = make_avail(rng, 1 if one_row else rows, n, avail_p)
    scores = make_scores(rng, avail.shape[0], n, avail)
    keys = make_keys(
        rng, rows, n, np.broadcast_to(avail, (rows, n)), rng.integers(0, 3) if kind is None else kind
    )
    keep_mask = (rng.random(rows) < 0.7) if keep else None
    return np.ascontiguousarray(scores), np.ascontiguousarray(keys), keep_mask


def some_classes(rng, n, k, top, frac):
    cls = _reference.all_classes(n, k, top)
    pick = rng.random(cls.shape[0]) < frac
    pick[rng.integers(0, cls.shape[0])] = True
    return np.ascontiguousarray(cls[pick], dtype=np.int32)


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("mask_kind", [None, "global", "row"])
@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_keys(kernels, rng, mask_kind, n):
    cpu, cu = kernels
    rows, m = 97, int(rng.integers(1, n + 1))
    mask = None
    if mask_kind == "global":
        mask = rng.random(n) < 0.7
    elif mask_kind == "row":
        mask = rng.random((rows, n)) < 0.7
    full = np.ones((rows, n), bool) if mask is None else np.broadcast_to(mask, (rows, n))
    r = np.full((rows, m), -1, dtype=np.int64)
    for b in range(rows):
        items = rng.permutation(np.flatnonzero(full[b]))
        length = int(rng.integers(0, min(m, len(items)) + 1))
        r[b, :length] = items[:length]
    want, bad_want = cpu.rank_keys(r, mask, n)
    got, bad_got = cu.rank_keys(r, mask, n)
    assert bad_got == bad_want == cpu.NO_ERROR
    assert isinstance(got, np.ndarray) and got.shape == (rows, n)
    np.testing.assert_array_equal(got, want)
    # invalid rows: the first one is reported
    for mutate in ("after padding", "out of range", "repeated"):
        bad = r.copy()
        b = int(rng.integers(rows // 3, rows))
        if mutate == "after padding" and m > 1:
            bad[b, 0], bad[b, 1] = -1, 0
        elif mutate == "out of range":
            bad[b, 0] = n + 3
        elif mutate == "repeated" and m > 1:
            bad[b, 0] = bad[b, 1] = 0
        else:
            continue
        bad[b + 1 :] = np.where(rng.random((rows - b - 1, 1)) < 0.3, n + 5, bad[b + 1 :])
        assert cu.rank_keys(bad, mask, n)[1] == cpu.rank_keys(bad, mask, n)[1] == b


@pytest.mark.parametrize("n", [2, 3, 5, 8, 12])
def test_seen_subsets(kernels, rng, n):
    cpu, cu = kernels
    for k in range(2, min(n, 5) + 1):
        for kind in range(3):
            _, keys, _ = level_inputs(rng, 61, n, kind=kind)
            got = cu.rank_seen_subsets(keys, k)
            want = cpu.rank_seen_subsets(keys, k)
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("top", [False, True], ids=["sub", "top"])
@pytest.mark.parametrize("n", [2, 5, 8])
def test_classwise(kernels, rng, hook, top, n):
    cpu, cu = kernels
    for k in range(1, min(n, 3) + 1):
        for log, keep, one_row in [(False, False, False), (True, True, False), (False, True, True)]:
            scores, keys, keep_mask = level_inputs(
                rng, int(rng.integers(20, 120)), n, one_row=one_row, keep=keep
            )
            n_bins = int(rng.choice([1, 3, 10, 15]))
            edges = _reference.log_edges(n_bins) if log else None
            cls = some_classes(rng, n, k, top, 1.0 if k < 3 else 0.5)
            want = cpu.rank_classwise(scores, keys, cls, top, n_bins, edges, keep_mask)
            got = cu.rank_classwise(scores, keys, cls, top, n_bins, edges, keep_mask)
            assert_tables(got, want)


@pytest.mark.parametrize("n", [2, 3, 4, 6, 10, 12])
def test_classwise_subsets(kernels, rng, hook, n):
    cpu, cu = kernels
    for k in range(2, min(n, 5 if n <= 6 else 3) + 1):
        for log, keep, one_row, frac in [
            (False, False, False, 1.0),
            (True, True, False, 0.5),
            (False, True, True, 0.3),
        ]:
            scores, keys, keep_mask = level_inputs(
                rng, int(rng.integers(20, 120)), n, one_row=one_row, keep=keep
            )
            n_bins = int(rng.choice([1, 3, 10, 15]))
            edges = _reference.log_edges(n_bins) if log else None
            cls = some_classes(rng, n, k, False, frac)
            slot = ranking._slots(n, cls)
            assert slot is not None
            want = cpu.rank_classwise_subsets(scores, keys, k, slot, cls.shape[0], n_bins, edges, keep_mask)
            got = cu.rank_classwise_subsets(scores, keys, k, slot, cls.shape[0], n_bins, edges, keep_mask)
            assert_tables(got, want)
            if frac == 1.0:  # the class-list kernel gives the same tables
                assert_tables(cu.rank_classwise(scores, keys, cls, False, n_bins, edges, keep_mask), want)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_probabilities_on_edges(kernels, rng, hook, n):
    """Tied scores give probabilities of exactly 1/2, 1/3, 1/6 (worths exp(0) = 1 on both sides): on edges
    placed there, both backends bin them alike."""
    cpu, cu = kernels
    edges = np.array([0.0, 1.0 / 6.0, 1.0 / 3.0, 0.5, 1.0])
    for k in range(1, min(n, 3) + 1):
        scores, keys, keep = level_inputs(rng, 60, n, keep=True)
        scores = np.where(np.isfinite(scores), 0.0, scores)
        for top in (False, True):
            cls = some_classes(rng, n, k, top, 1.0)
            want = cpu.rank_classwise(scores, keys, cls, top, 4, edges, keep)
            assert_tables(cu.rank_classwise(scores, keys, cls, top, 4, edges, keep), want)
            if k >= 2 and not top:
                slot = ranking._slots(n, cls)
                args = (scores, keys, k, slot, cls.shape[0], 4, edges, keep)
                assert_tables(cu.rank_classwise_subsets(*args), cpu.rank_classwise_subsets(*args))


@pytest.mark.parametrize("level", ["sub", "top", "set"])
@pytest.mark.parametrize("n", [1, 2, 4, 7, 12])
def test_top_label(kernels, rng, hook, level, n):
    cpu, cu = kernels
    code = ("sub", "top", "set").index(level)
    for k in range(1, min(n, 4) + 1):
        scores, keys, _ = level_inputs(rng, int(rng.integers(20, 120)), n, one_row=bool(rng.random() < 0.3))
        n_bins = int(rng.choice([1, 5, 15]))
        groups = _reference.subsets(n, k) if code == 0 else None
        want, skipped_want = cpu.rank_top_label(scores, keys, code, groups, k, n_bins)
        got, skipped_got = cu.rank_top_label(scores, keys, code, groups, k, n_bins)
        assert skipped_got == skipped_want
        assert_tables(got[None], want[None])


@pytest.mark.parametrize("n_classes", [1, 2, 3, 6, 8, 9, 12, 40])
def test_canonical(kernels, rng, n_classes):
    cpu, cu = kernels
    for rows, h, p in [
        (1, 0.3, 1.0),
        (2, 0.3, 2.0),
        (int(rng.integers(40, 300)), 0.05, 1.0),
        (250, 0.5, 2.0),
    ]:
        probs = rng.dirichlet(np.full(n_classes, 0.7), size=rows)
        probs[rng.random(rows) < 0.05, 0] = 0.0  # log f clamped
        labels = np.where(rng.random(rows) < 0.2, -1, rng.integers(0, n_classes, size=rows)).astype(np.int64)
        want = cpu.rank_canonical(probs, labels, h, p)
        got = cu.rank_canonical(probs, labels, h, p)
        assert isinstance(got, float)
        if math.isnan(want):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(want, rel=1e-11, abs=1e-13)
    assert math.isnan(cu.rank_canonical(probs, np.full(probs.shape[0], -1, np.int64), 0.1, 1.0))


def test_device_keys(kernels, rng):
    """rank_keys(..., device_keys=True) keeps the keys on the device; the other kernels take them as keys."""
    cpu, cu = kernels
    rows, n = 80, 6
    padded = np.full((rows, n), -1, dtype=np.int64)
    for b in range(rows):
        length = int(rng.integers(0, n + 1))
        padded[b, :length] = rng.permutation(n)[:length]
    dkeys, bad = cu.rank_keys(padded, None, n, device_keys=True)
    keys, _ = cpu.rank_keys(padded, None, n)
    assert bad == cpu.NO_ERROR
    np.testing.assert_array_equal(np.asarray(dkeys), keys)
    scores = rng.normal(size=(rows, n))
    cls = some_classes(rng, n, 2, False, 1.0)
    assert_tables(
        cu.rank_classwise(scores, dkeys, cls, False, 10, None, None),
        cpu.rank_classwise(scores, keys, cls, False, 10, None, None),
    )
    np.testing.assert_array_equal(cu.rank_seen_subsets(dkeys, 3), cpu.rank_seen_subsets(keys, 3))


def test_rejects_out_of_range(kernels, rng):
    _, cu = kernels
    scores, keys, _ = level_inputs(rng, 10, 4)
    with pytest.raises(ValueError):
        cu.rank_classwise(scores, keys, np.array([[0, 4]], np.int32), False, 10, None, None)
    slot = np.full(math.comb(4, 2) * 2, -1, np.int32)
    slot[0] = 3
    with pytest.raises(ValueError):
        cu.rank_classwise_subsets(scores, keys, 2, slot, 3, 10, None, None)


def test_sub3_many_rows(kernels, rng):
    """The headline shape (sub-3 over n = 10, all 720 classes) on enough rows for many row blocks."""
    cpu, cu = kernels
    rows, n = 20000, 10
    scores, keys, _ = level_inputs(rng, rows, n, avail_p=1.0, kind=0)
    cls = _reference.all_classes(n, 3, False)
    slot = ranking._slots(n, cls)
    want = cpu.rank_classwise_subsets(scores, keys, 3, slot, cls.shape[0], 10, None, None)
    got = cu.rank_classwise_subsets(scores, keys, 3, slot, cls.shape[0], 10, None, None)
    assert_tables(got, want)
    assert got[:, 0].sum() == rows * cls.shape[0]


@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="cupy is not installed")
def test_cupy_inputs(kernels, rng):
    import cupy

    cpu, cu = kernels
    rows, n = 90, 7
    scores, keys, keep = level_inputs(rng, rows, n, keep=True)
    cls = some_classes(rng, n, 3, False, 0.5)
    slot = ranking._slots(n, cls)
    edges = _reference.log_edges(10)
    want = cpu.rank_classwise_subsets(scores, keys, 3, slot, cls.shape[0], 10, edges, keep)
    got = cu.rank_classwise_subsets(
        cupy.asarray(scores), cupy.asarray(keys), 3, slot, cls.shape[0], 10, edges, cupy.asarray(keep)
    )
    assert_tables(got, want)
    want = cpu.rank_top_label(scores, keys, 1, None, 2, 15)
    got = cu.rank_top_label(cupy.asarray(scores), cupy.asarray(keys), 1, None, 2, 15)
    assert got[1] == want[1]
    assert_tables(got[0][None], want[0][None])
    r = np.full((rows, n), -1, np.int64)
    for b in range(rows):
        r[b, :3] = rng.permutation(n)[:3]
    dkeys, bad = cu.rank_keys(cupy.asarray(r), None, n, device_keys=True)
    assert isinstance(dkeys, cupy.ndarray)
    assert bad == cpu.NO_ERROR
    np.testing.assert_array_equal(dkeys.get(), cpu.rank_keys(r, None, n)[0])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_cpu_inputs(kernels, rng):
    """Host torch tensors are staged like NumPy arrays."""
    import torch

    cpu, cu = kernels
    scores, keys, keep = level_inputs(rng, 50, 5, keep=True)
    cls = some_classes(rng, 5, 2, True, 1.0)
    want = cpu.rank_classwise(scores, keys, cls, True, 10, None, keep)
    t = torch.from_numpy
    got = cu.rank_classwise(t(scores), t(keys), t(cls), True, 10, None, t(keep))
    assert_tables(got, want)
