"""prefcal.reward (SPEC §6): pairwise and best-of-K metrics, accuracy variants, the best-of-n curve.

Every value is checked against an independent, loop-based reference written here (plain Python over rows,
pairs and subsets), against brute-force enumeration or Monte Carlo, or against an invariance.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import prefcal
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from prefcal import reward

# ----------------------------------------------------------------------------------------- references


def ref_bins(events, n_bins):
    """(count, sum_conf, sum_correct) per uniform bin of weighted (confidence, correct, weight) events."""
    count = [0.0] * n_bins
    s_conf = [0.0] * n_bins
    s_hit = [0.0] * n_bins
    for c, y, w in events:
        b = min(math.floor(c * n_bins), n_bins - 1)
        count[b] += w
        s_conf[b] += w * c
        s_hit[b] += w * y
    return count, s_conf, s_hit


def ref_errors(count, s_conf, s_hit):
    """(ECE, RMSCE, MCE) of a table of bins."""
    total = sum(count)
    l1 = l2 = mx = 0.0
    for n, c, h in zip(count, s_conf, s_hit, strict=True):
        if n > 0:
            gap = abs(h / n - c / n)
            l1 += n / total * gap
            l2 += n / total * gap**2
            mx = max(mx, gap)
    return l1, math.sqrt(l2), mx


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def ref_pairwise(chosen, rejected, beta, n_bins):
    events, acc, nll, brier = [], 0.0, 0.0, 0.0
    for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True):
        d = c - r
        conf = sig(beta * abs(d))
        if d > 0:
            events.append((conf, 1.0, 1.0))
            acc += 1
        elif d < 0:
            events.append((conf, 0.0, 1.0))
        else:
            events += [(0.5, 1.0, 0.5), (0.5, 0.0, 0.5)]
            acc += 0.5
        nll += math.log1p(math.exp(-beta * d))
        brier += (sig(beta * d) - 1.0) ** 2
    n = len(chosen)
    bins = ref_bins(events, n_bins)
    return acc / n, ref_errors(*bins), nll / n, brier / n, bins


def ties_data(rng, n):
    """Half-integer rewards in a small range: plenty of ties."""
    return rng.integers(-4, 5, n) * 0.5, rng.integers(-4, 5, n) * 0.5


# ----------------------------------------------------------------------------------------- pairwise_metrics


@pytest.mark.parametrize("beta", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("n_bins", [1, 7, 15])
def test_pairwise_matches_reference_with_ties(rng, beta, n_bins):
    chosen, rejected = ties_data(rng, 300)
    m = reward.pairwise_metrics(chosen, rejected, beta=beta, n_bins=n_bins)
    acc, (l1, l2, mx), nll, brier, (count, s_conf, s_hit) = ref_pairwise(chosen, rejected, beta, n_bins)
    assert m.n == 300
    assert m.accuracy == pytest.approx(acc, abs=1e-15)
    assert (m.ece, m.rmsce, m.mce) == pytest.approx((l1, l2, mx), abs=1e-12)
    assert m.nll == pytest.approx(nll, rel=1e-12)
    assert m.brier == pytest.approx(brier, rel=1e-12)
    np.testing.assert_allclose(m.reliability.count, count, rtol=1e-12)
    np.testing.assert_allclose(m.reliability.sum_confidence, s_conf, rtol=1e-12)
    np.testing.assert_allclose(m.reliability.sum_correct, s_hit, rtol=1e-12)
    assert m.reliability.total == pytest.approx(300.0)  # a tie still counts as one pair


def test_pairwise_without_ties_is_plain_binary_calibration(rng):
    chosen, rejected = rng.normal(size=2000), rng.normal(size=2000)
    delta = chosen - rejected
    conf = 1.0 / (1.0 + np.exp(-1.7 * np.abs(delta)))
    for strategy in ("uniform", "quantile"):
        m = reward.pairwise_metrics(chosen, rejected, beta=1.7, n_bins=12, strategy=strategy)
        assert m.reliability.strategy == strategy
        for norm, value in (("l1", m.ece), ("l2", m.rmsce), ("max", m.mce)):
            expect = prefcal.ece(conf, delta > 0, n_bins=12, strategy=strategy, norm=norm)
            assert value == pytest.approx(expect, rel=1e-12, abs=1e-15)
    assert m.accuracy == np.mean(delta > 0)
    assert m.brier == pytest.approx(prefcal.brier(conf, delta > 0), rel=1e-10)
    assert m.nll == pytest.approx(prefcal.log_loss(conf, delta > 0), rel=1e-10)


def test_pairwise_calibrated_data_has_small_ece(rng):
    # labels drawn from the BT model itself: ECE near 0; an over-confident beta is visibly worse
    delta = rng.normal(0, 2, 40000)
    chosen_first = rng.random(40000) < 1 / (1 + np.exp(-delta))
    chosen = np.where(chosen_first, delta, 0.0)
    rejected = np.where(chosen_first, 0.0, delta)
    good = reward.pairwise_metrics(chosen, rejected)
    bad = reward.pairwise_metrics(chosen, rejected, beta=3.0)
    assert good.ece < 0.02 < 0.05 < bad.ece
    assert good.nll < bad.nll and good.brier < bad.brier


pair_arrays = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.float64, n, elements=st.integers(-20, 20).map(lambda v: v / 4)),
        hnp.arrays(np.float64, n, elements=st.integers(-20, 20).map(lambda v: v / 4)),
    )
)


@settings(max_examples=60, deadline=None)
@given(pair_arrays, st.sampled_from([0.5, 1.0, 4.0]), st.integers(1, 20))
def test_pairwise_properties(pair, beta, n_bins):
    chosen, rejected = pair
    m = reward.pairwise_metrics(chosen, rejected, beta=beta, n_bins=n_bins)
    assert 0.0 <= m.accuracy <= 1.0
    assert 0.0 <= m.ece <= m.rmsce + 1e-12 <= m.mce + 2e-12 <= 1.0 + 2e-12
    assert m.nll >= 0.0 and 0.0 <= m.brier <= 1.0
    # swapping the roles flips every outcome and keeps every confidence
    s = reward.pairwise_metrics(rejected, chosen, beta=beta, n_bins=n_bins)
    assert s.accuracy == pytest.approx(1.0 - m.accuracy, abs=1e-15)
    np.testing.assert_array_equal(s.reliability.count, m.reliability.count)
    np.testing.assert_allclose(s.reliability.sum_correct, m.reliability.count - m.reliability.sum_correct)
    # a common shift changes nothing; beta is a scale of the rewards
    t = reward.pairwise_metrics(chosen + 3.25, rejected + 3.25, beta=beta, n_bins=n_bins)
    assert t.to_dict() == m.to_dict()
    u = reward.pairwise_metrics(2 * chosen, 2 * rejected, beta=beta / 2, n_bins=n_bins)
    assert u.to_dict() == m.to_dict()
    # row order is irrelevant
    perm = np.arange(len(chosen))[::-1]
    v = reward.pairwise_metrics(chosen[perm], rejected[perm], beta=beta, n_bins=n_bins)
    assert v.ece == pytest.approx(m.ece, abs=1e-12) and v.nll == pytest.approx(m.nll, rel=1e-12)


def test_pairwise_extreme_rewards_are_stable():
    chosen = np.array([1e6, -1e6, 1e308, 0.0])
    rejected = np.array([0.0, 0.0, -1e308, 0.0])
    m = reward.pairwise_metrics(chosen, rejected)  # warnings are errors in this test suite
    assert m.accuracy == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert m.nll == pytest.approx((0 + 1e6 + 0 + math.log(2)) / 4)
    assert m.brier == pytest.approx((0 + 1 + 0 + 0.25) / 4)
    assert math.isfinite(m.ece)


def test_pairwise_dtypes_lists_and_to_dict(rng):
    chosen, rejected = ties_data(rng, 50)
    m = reward.pairwise_metrics(chosen, rejected)
    assert (
        reward.pairwise_metrics(chosen.astype(np.float32), rejected.astype(np.float32)).to_dict()
        == m.to_dict()
    )
    assert reward.pairwise_metrics(chosen.tolist(), rejected.tolist()).to_dict() == m.to_dict()
    ints = reward.pairwise_metrics(np.array([3, 1]), np.array([1, 1]))
    assert ints.accuracy == 0.75
    d = m.to_dict()
    assert set(d) == {"accuracy", "ece", "rmsce", "mce", "nll", "brier", "n", "reliability"}
    assert d["reliability"]["count"] == m.reliability.count.tolist()


def test_torch_tensors_are_accepted(rng):
    torch = pytest.importorskip("torch")
    chosen, rejected = ties_data(rng, 64)
    m = reward.pairwise_metrics(torch.from_numpy(chosen), torch.from_numpy(rejected))
    assert m.to_dict() == reward.pairwise_metrics(chosen, rejected).to_dict()
    k = reward.best_of_k_metrics(torch.from_numpy(chosen), torch.from_numpy(np.stack([rejected, chosen], 1)))
    assert k.to_dict() == reward.best_of_k_metrics(chosen, np.stack([rejected, chosen], 1)).to_dict()
    g = rng.normal(size=(10, 4))
    curve = reward.best_of_n(torch.from_numpy(g * 2), torch.from_numpy(g), ns=(1, 4))
    np.testing.assert_allclose(curve.proxy, reward.best_of_n(g * 2, g, ns=(1, 4)).proxy)
    v = reward.accuracy_variants(torch.from_numpy(g), torch.from_numpy(g))
    assert v.all_pairs == 1.0
    with pytest.raises(TypeError, match="chosen is torch.Tensor but rejected is numpy.ndarray"):
        reward.pairwise_metrics(torch.from_numpy(chosen), rejected)


def ref_quantile_table(chosen, rejected, beta, n_bins):
    """Quantile table of the pairs (one row each, a tie half correct): stable sort by confidence, bin b
    holds sort ranks [floor(b N / B), floor((b + 1) N / B))."""
    rows = []
    for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True):
        d = c - r
        rows.append((sig(beta * abs(d)), 1.0 if d > 0 else (0.5 if d == 0 else 0.0)))
    order = sorted(range(len(rows)), key=lambda i: rows[i][0])
    count, s_conf, s_hit = [0.0] * n_bins, [0.0] * n_bins, [0.0] * n_bins
    for rank, i in enumerate(order):
        b = max(j for j in range(n_bins) if (j * len(rows)) // n_bins <= rank)
        count[b] += 1
        s_conf[b] += rows[i][0]
        s_hit[b] += rows[i][1]
    return count, s_conf, s_hit


@pytest.mark.parametrize("n_bins", [2, 5, 16])
def test_pairwise_quantile_bins_count_a_tie_once(rng, n_bins):
    chosen, rejected = ties_data(rng, 97)
    m = reward.pairwise_metrics(chosen, rejected, beta=0.8, n_bins=n_bins, strategy="quantile")
    count, s_conf, s_hit = ref_quantile_table(chosen, rejected, 0.8, n_bins)
    np.testing.assert_allclose(m.reliability.count, count, rtol=1e-12)
    np.testing.assert_allclose(m.reliability.sum_confidence, s_conf, rtol=1e-12)
    np.testing.assert_allclose(m.reliability.sum_correct, s_hit, rtol=1e-12)
    assert (m.ece, m.rmsce, m.mce) == pytest.approx(ref_errors(count, s_conf, s_hit), abs=1e-12)
    # a tie is calibrated at confidence 1/2 in either strategy (two half events split by a quantile edge
    # gave 0.5)
    for strategy in ("uniform", "quantile"):
        assert reward.pairwise_metrics([0.0], [0.0], n_bins=2, strategy=strategy).mce == 0.0


def test_pairwise_small_beta_brings_overflowing_differences_back():
    # beta (chosen - rejected) = 2 although chosen - rejected overflows
    m = reward.pairwise_metrics([1e308], [-1e308], beta=1e-308)
    assert m.nll == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-12)
    assert m.reliability.sum_confidence.sum() == pytest.approx(sig(2.0), rel=1e-12)
    k = reward.best_of_k_metrics(np.array([1e308]), np.array([[-1e308]]), beta=1e-308)
    assert k.mean_p_chosen == pytest.approx(sig(2.0), rel=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [  # the first offending row over all inputs, whichever input it is in
        (
            lambda: reward.pairwise_metrics([0.0, 0.0, np.nan], [0.0, np.inf, 0.0]),
            r"rejected contains inf at index 1$",
        ),
        (
            lambda: reward.best_of_k_metrics(
                np.array([0.0, 0.0, np.nan]), np.array([[0.0], [-np.inf], [0.0]])
            ),
            r"rejected contains -inf at \[1, 0\]$",
        ),
        (
            lambda: reward.accuracy_variants(
                np.array([[0.0, 0.0], [0.0, np.inf]]), np.array([[0.0, -np.inf], [0.0, 1.0]])
            ),
            r"gold contains -inf at \[0, 1\]$",
        ),
        (
            lambda: reward.best_of_n(
                np.array([[0.0, 0.0], [0.0, np.nan]]), np.array([[0.0, np.nan], [0.0, 1.0]])
            ),
            r"gold contains NaN at \[0, 1\]$",
        ),
        (
            lambda: reward.best_of_n(
                np.array([[0.0, np.nan], [0.0, 0.0]]), np.array([[0.0, np.nan], [0.0, 1.0]])
            ),
            r"proxy contains NaN at \[0, 1\]$",  # same row: the inputs in argument order
        ),
    ],
)
def test_errors_name_the_first_offending_row_over_all_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("chosen", "rejected", "kwargs", "error", "match"),
    [
        ([1.0, np.nan, 2.0], [0.0, 0.0, 0.0], {}, ValueError, r"chosen contains NaN at index 1"),
        ([1.0, 2.0], [0.0, -np.inf], {}, ValueError, r"rejected contains -inf at index 1"),
        ([1.0, 2.0], [0.0, np.inf], {}, ValueError, r"rejected contains inf at index 1"),
        ([1.0, 2.0], [0.0], {}, ValueError, r"chosen and rejected have different lengths: 2 vs 1"),
        ([], [], {}, ValueError, r"chosen is empty"),
        ([[1.0]], [[0.0]], {}, ValueError, r"chosen must be 1-dimensional"),
        ([1.0], [[0.0]], {}, ValueError, r"rejected must be 1-dimensional"),
        (["a"], ["b"], {}, TypeError, r"chosen must contain real numbers"),
        ([1.0], [0.0], {"beta": 0.0}, ValueError, r"beta must be positive"),
        ([1.0], [0.0], {"beta": -1.0}, ValueError, r"beta must be positive"),
        ([1.0], [0.0], {"beta": math.inf}, ValueError, r"beta must be finite"),
        ([1.0], [0.0], {"beta": "1"}, TypeError, r"beta must be a real number"),
        ([1.0], [0.0], {"n_bins": 2.0}, TypeError, r"n_bins must be an integer"),
        ([1.0], [0.0], {"n_bins": 0}, ValueError, r"n_bins must be at least 1"),
        ([1.0], [0.0], {"strategy": "equal"}, ValueError, r"strategy must be one of 'uniform', 'quantile'"),
    ],
)
def test_pairwise_rejects_bad_input(chosen, rejected, kwargs, error, match):
    with pytest.raises(error, match=match):
        reward.pairwise_metrics(np.array(chosen), np.array(rejected), **kwargs)


# ----------------------------------------------------------------------------------------- best_of_k_metrics


def ref_best_of_k(chosen, rejected, beta, n_bins):
    top1_events, class_events, acc, ps = [], [], 0.0, []
    for c, rs in zip(chosen.tolist(), rejected.tolist(), strict=True):
        scores = [c, *rs]
        m = max(scores)
        z = [math.exp(beta * (s - m)) for s in scores]
        probs = [v / sum(z) for v in z]
        ps.append(probs[0])
        acc += c > max(rs)
        top1_events.append((probs[0], 1.0, 1.0))
        class_events += [(p, float(j == 0), 1.0) for j, p in enumerate(probs)]
    top1 = ref_errors(*ref_bins(top1_events, n_bins))[0]
    classwise = ref_errors(*ref_bins(class_events, n_bins))[0]
    return acc / len(chosen), top1, classwise, sum(ps) / len(ps)


@pytest.mark.parametrize("k", [2, 3, 6])
@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_best_of_k_matches_reference(rng, k, beta):
    chosen = rng.integers(-3, 4, 200) * 0.5
    rejected = rng.integers(-3, 4, (200, k - 1)) * 0.5
    m = reward.best_of_k_metrics(chosen, rejected, beta=beta, n_bins=8)
    acc, top1, classwise, mean_p = ref_best_of_k(chosen, rejected, beta, 8)
    assert (m.n, m.k) == (200, k)
    assert m.accuracy == pytest.approx(acc, abs=1e-15)
    assert m.top1_ece == pytest.approx(top1, abs=1e-12)
    assert m.classwise_top1_ece == pytest.approx(classwise, abs=1e-12)
    assert m.mean_p_chosen == pytest.approx(mean_p, rel=1e-12)
    assert m.top1_ece == pytest.approx(1.0 - m.mean_p_chosen, abs=1e-12)  # the paper's identity


def test_best_of_k_two_candidates_is_bradley_terry(rng):
    chosen, rejected = rng.normal(size=500), rng.normal(size=500)
    m = reward.best_of_k_metrics(chosen, rejected, beta=1.3)  # (N,) rejected: K = 2
    assert m.k == 2
    assert m.mean_p_chosen == pytest.approx(np.mean(1 / (1 + np.exp(-1.3 * (chosen - rejected)))), rel=1e-12)
    assert m.accuracy == reward.pairwise_metrics(chosen, rejected).accuracy  # no ties in continuous data
    assert m.to_dict() == reward.best_of_k_metrics(chosen, rejected[:, None], beta=1.3).to_dict()


def test_best_of_k_ties_are_misses_and_columns_are_exchangeable(rng):
    m = reward.best_of_k_metrics(np.array([1.0, 1.0, 2.0]), np.array([[1.0, 0.0], [0.0, 0.5], [3.0, 2.0]]))
    assert m.accuracy == pytest.approx(1 / 3)
    chosen, rejected = rng.normal(size=300), rng.normal(size=(300, 4))
    a = reward.best_of_k_metrics(chosen, rejected)
    b = reward.best_of_k_metrics(chosen + 5.0, rejected[:, ::-1] + 5.0)
    for key, value in a.to_dict().items():
        assert b.to_dict()[key] == pytest.approx(value, abs=1e-12)


def test_classwise_top1_tells_calibration_from_confidence(rng):
    # the chosen answer is drawn from softmax(s): beta = 1 is calibrated, beta = 3 over-confident
    n, k = 20000, 4
    s = rng.normal(0, 1.5, (n, k))
    p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    winner = np.minimum((rng.random((n, 1)) > np.cumsum(p, 1)).sum(1), k - 1)
    others = np.array([[j for j in range(k) if j != w] for w in range(k)])[winner]
    chosen, rejected = s[np.arange(n), winner], np.take_along_axis(s, others, 1)
    calibrated = reward.best_of_k_metrics(chosen, rejected, beta=1.0)
    sharp = reward.best_of_k_metrics(chosen, rejected, beta=3.0)
    assert calibrated.classwise_top1_ece < 0.02 < 0.05 < sharp.classwise_top1_ece
    assert sharp.top1_ece < calibrated.top1_ece  # the paper's measure prefers the over-confident model


def test_best_of_k_extreme_scores_are_stable():
    m = reward.best_of_k_metrics(np.array([1e300, -1e300]), np.array([[-1e300, 0.0], [1e300, 0.0]]))
    assert m.mean_p_chosen == pytest.approx(0.5) and m.accuracy == 0.5
    assert m.top1_ece == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("chosen", "rejected", "kwargs", "error", "match"),
    [
        ([1.0, 2.0], [[0.0, 0.0], [0.0, np.nan]], {}, ValueError, r"rejected contains NaN at \[1, 1\]"),
        ([1.0, np.inf], [[0.0], [0.0]], {}, ValueError, r"chosen contains inf at index 1"),
        ([1.0, 2.0], [[0.0, 0.0]], {}, ValueError, r"different numbers of rows: 2 vs 1"),
        ([1.0], np.zeros((1, 0)), {}, ValueError, r"rejected has no columns"),
        ([], np.zeros((0, 2)), {}, ValueError, r"chosen is empty"),
        ([1.0], np.zeros((1, 2, 2)), {}, ValueError, r"rejected must be 2-dimensional"),
        ([1.0], [[0.0]], {"beta": 0}, ValueError, r"beta must be positive"),
        ([1.0], [[0.0]], {"n_bins": 1.5}, TypeError, r"n_bins must be an integer"),
    ],
)
def test_best_of_k_rejects_bad_input(chosen, rejected, kwargs, error, match):
    with pytest.raises(error, match=match):
        reward.best_of_k_metrics(np.array(chosen), np.array(rejected), **kwargs)


# ----------------------------------------------------------------------------------------- accuracy_variants


def ref_variants(rewards, gold, n_bins):
    """Loops over prompts and pairs; None when no prompt is informative."""
    pairs, top1, bvw = [], [], []
    for r_row, g_row in zip(rewards.tolist(), gold.tolist(), strict=True):
        items = [(r, g) for r, g in zip(r_row, g_row, strict=True) if not (math.isnan(r) or math.isnan(g))]

        def score(a, b):  # a is gold-better
            return 1.0 if a[0] > b[0] else (0.5 if a[0] == b[0] else 0.0)

        for i, j in itertools.combinations(range(len(items)), 2):
            a, b = items[i], items[j]
            if a[1] != b[1]:
                pairs.append((abs(a[1] - b[1]), score(a, b) if a[1] > b[1] else score(b, a)))
        golds = [g for _, g in items]
        if len(set(golds)) < 2:
            continue
        r_top = max(r for r, _ in items)
        picked = [g for r, g in items if r == r_top]
        top1.append(sum(g == max(golds) for g in picked) / len(picked))
        best = [it for it in items if it[1] == max(golds)]
        worst = [it for it in items if it[1] == min(golds)]
        bvw.append(sum(score(a, b) for a in best for b in worst) / (len(best) * len(worst)))
    if not top1:
        return None
    m = len(pairs)
    ordered = sorted(pairs, key=lambda t: t[0])  # stable: (prompt, a, b) order among equal gaps
    starts = [b * m // n_bins for b in range(n_bins + 1)]
    acc = [
        (sum(s for _, s in ordered[starts[b] : starts[b + 1]]) / (starts[b + 1] - starts[b]))
        if starts[b + 1] > starts[b]
        else math.nan
        for b in range(n_bins)
    ]
    edges = [ordered[min(starts[b], m - 1)][0] for b in range(n_bins)] + [ordered[-1][0]]
    return {
        "all_pairs": sum(s for _, s in pairs) / m,
        "top1": sum(top1) / len(top1),
        "best_vs_worst": sum(bvw) / len(bvw),
        "by_gap": {
            "edges": edges,
            "accuracy": acc,
            "count": [starts[b + 1] - starts[b] for b in range(n_bins)],
        },
        "n_pairs": m,
        "n_prompts": len(top1),
    }


def assert_variants_equal(got, expect):
    for key in ("all_pairs", "top1", "best_vs_worst"):
        assert getattr(got, key) == pytest.approx(expect[key], abs=1e-12), key
    assert (got.n_pairs, got.n_prompts) == (expect["n_pairs"], expect["n_prompts"])
    np.testing.assert_array_equal(got.by_gap.count, expect["by_gap"]["count"])
    np.testing.assert_allclose(got.by_gap.accuracy, expect["by_gap"]["accuracy"], atol=1e-12)
    np.testing.assert_array_equal(got.by_gap.edges, expect["by_gap"]["edges"])


def ragged(rng, n, k, hole=0.2):
    rewards = rng.integers(0, 4, (n, k)).astype(np.float64)
    gold = rng.integers(0, 5, (n, k)).astype(np.float64)
    rewards[rng.random((n, k)) < hole / 2] = np.nan
    gold[rng.random((n, k)) < hole / 2] = np.nan
    return rewards, gold


@pytest.mark.parametrize(("n", "k", "bins"), [(40, 2, 1), (60, 5, 4), (30, 9, 7)])
def test_accuracy_variants_match_reference(rng, n, k, bins):
    rewards, gold = ragged(rng, n, k)
    got = reward.accuracy_variants(rewards, gold, n_gap_bins=bins)
    assert_variants_equal(got, ref_variants(rewards, gold, bins))
    assert got.to_dict()["by_gap"]["count"] == got.by_gap.count.tolist()


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_accuracy_variants_property(n, k, bins, seed):
    rewards, gold = ragged(np.random.default_rng(seed), n, k, hole=0.4)
    expect = ref_variants(rewards, gold, bins)
    if expect is None:
        with pytest.raises(ValueError, match="no prompt has two present responses with different gold"):
            reward.accuracy_variants(rewards, gold, n_gap_bins=bins)
        return
    got = reward.accuracy_variants(rewards, gold, n_gap_bins=bins)
    assert_variants_equal(got, expect)
    # the gap bins partition the pairs
    assert got.by_gap.count.sum() == got.n_pairs
    filled = got.by_gap.count > 0
    pooled = np.sum(got.by_gap.accuracy[filled] * got.by_gap.count[filled]) / got.n_pairs
    assert pooled == pytest.approx(got.all_pairs, abs=1e-12)
    assert np.all(np.diff(got.by_gap.edges) >= 0)


def test_accuracy_variants_perfect_and_reversed_models(rng):
    gold = rng.normal(size=(50, 6))
    perfect = reward.accuracy_variants(np.exp(gold), gold)  # any increasing map of gold is perfect
    reversed_ = reward.accuracy_variants(-gold, gold, n_gap_bins=3)
    for key in ("all_pairs", "top1", "best_vs_worst"):
        assert getattr(perfect, key) == 1.0
        assert getattr(reversed_, key) == 0.0
    assert perfect.n_pairs == 50 * 15 and perfect.n_prompts == 50
    np.testing.assert_array_equal(perfect.by_gap.count, [187, 188, 187, 188])
    constant = reward.accuracy_variants(np.zeros((50, 6)), gold)  # the RM ties everything
    assert (constant.all_pairs, constant.best_vs_worst) == (0.5, 0.5)
    assert constant.top1 == pytest.approx(1 / 6)


def test_accuracy_by_gap_grows_with_the_gap(rng):
    # a noisy RM: pairs far apart in gold are ordered right more often
    gold = rng.normal(size=(3000, 4))
    rm = gold + rng.normal(size=gold.shape)
    gap = reward.accuracy_variants(rm, gold, n_gap_bins=4).by_gap
    assert np.all(np.diff(gap.accuracy) > 0)


@pytest.mark.parametrize(
    ("rewards", "gold", "kwargs", "error", "match"),
    [
        ([[0.0, np.inf]], [[0.0, 1.0]], {}, ValueError, r"rewards contains inf at \[0, 1\]"),
        (
            [[0.0, 1.0], [0.0, 1.0]],
            [[0.0, 1.0], [-np.inf, 1.0]],
            {},
            ValueError,
            r"gold contains -inf at \[1, 0\]",
        ),
        ([[0.0, 1.0]], [[0.0, 1.0, 2.0]], {}, ValueError, r"rewards and gold have different shapes"),
        ([0.0, 1.0], [0.0, 1.0], {}, ValueError, r"rewards must be 2-dimensional"),
        (np.zeros((0, 3)), np.zeros((0, 3)), {}, ValueError, r"rewards is empty"),
        ([[0.0, 1.0]], [[2.0, 2.0]], {}, ValueError, r"no prompt has two present responses"),
        ([[0.0, np.nan]], [[1.0, 2.0]], {}, ValueError, r"no prompt has two present responses"),
        ([[0.0, 1.0]], [[0.0, 1.0]], {"n_gap_bins": 0}, ValueError, r"n_gap_bins must be between 1"),
        ([[0.0, 1.0]], [[0.0, 1.0]], {"n_gap_bins": 2.0}, TypeError, r"n_gap_bins must be an integer"),
        ([["a", "b"]], [[0.0, 1.0]], {}, TypeError, r"rewards must contain real numbers"),
    ],
)
def test_accuracy_variants_rejects_bad_input(rewards, gold, kwargs, error, match):
    with pytest.raises(error, match=match):
        reward.accuracy_variants(np.array(rewards), np.array(gold), **kwargs)


# ----------------------------------------------------------------------------------------- best_of_n


def brute_best_of_n(proxy, gold, n):
    """Mean over prompts of the mean over all n-subsets of the gold of the proxy's pick (ties: mean gold)."""
    per_prompt = []
    for p_row, g_row in zip(proxy.tolist(), gold.tolist(), strict=True):
        total, count = Fraction(0), 0
        for subset in itertools.combinations(range(len(p_row)), n):
            top = max(p_row[i] for i in subset)
            tied = [Fraction(g_row[i]) for i in subset if p_row[i] == top]
            total += sum(tied) / len(tied)
            count += 1
        per_prompt.append(total / count)
    return float(sum(per_prompt) / len(per_prompt))


@pytest.mark.parametrize("k", [1, 2, 5, 7])
def test_best_of_n_matches_enumeration_with_ties(rng, k):
    proxy = rng.integers(0, 3, (12, k)).astype(np.float64)  # many ties
    gold = rng.normal(size=(12, k))
    ns = tuple(range(1, k + 1))
    curve = reward.best_of_n(proxy, gold, ns=ns)
    np.testing.assert_array_equal(curve.ns, ns)
    assert (curve.n_prompts, curve.k) == (12, k)
    for i, n in enumerate(ns):
        assert curve.proxy[i] == pytest.approx(brute_best_of_n(proxy, gold, n), rel=1e-12, abs=1e-12)
        assert curve.oracle[i] == pytest.approx(brute_best_of_n(gold, gold, n), rel=1e-12, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_best_of_n_property(n_prompts, k, seed):
    rng = np.random.default_rng(seed)
    proxy = rng.integers(0, 3, (n_prompts, k)) * 0.5
    gold = rng.integers(-3, 4, (n_prompts, k)) * 0.25
    ns = sorted(set(rng.integers(1, k + 1, 3).tolist()))
    curve = reward.best_of_n(proxy, gold, ns=ns)
    for i, n in enumerate(ns):
        assert curve.proxy[i] == pytest.approx(brute_best_of_n(proxy, gold, n), abs=1e-12)
    assert np.all(curve.oracle >= curve.proxy - 1e-12)
    assert np.all(np.diff(curve.oracle) >= -1e-12)


def test_best_of_n_pick_probabilities_are_the_binomial_ratio():
    # gold = indicator of the j-th best proxy response: the curve is P(pick = j)
    k = 40
    proxy = np.tile(np.arange(k, 0, -1, dtype=np.float64), (k, 1))
    gold = np.eye(k)
    ns = (1, 2, 3, 10, 39, 40)
    curve = reward.best_of_n(proxy, gold, ns=ns)
    for i, n in enumerate(ns):
        expect = sum(Fraction(math.comb(k - 1 - j, n - 1), math.comb(k, n)) for j in range(k)) / k
        assert curve.proxy[i] == pytest.approx(float(expect), rel=1e-13)
    one = reward.best_of_n(proxy[:1], gold[3:4], ns=ns)  # the 4th best only
    for i, n in enumerate(ns):
        assert one.proxy[i] == pytest.approx(math.comb(k - 4, n - 1) / math.comb(k, n), rel=1e-12, abs=1e-300)


def test_best_of_n_matches_monte_carlo(rng):
    n_prompts, k, draws = 30, 12, 3000
    proxy = rng.normal(size=(n_prompts, k))
    gold = proxy + rng.normal(size=(n_prompts, k))
    ns = (1, 3, 8, 12)
    curve = reward.best_of_n(proxy, gold, ns=ns)
    keys = rng.random((draws, n_prompts, k)).argsort(axis=2)  # random orders: the first n form a subset
    for i, n in enumerate(ns):
        subset = keys[:, :, :n]
        p_sub = np.take_along_axis(np.broadcast_to(proxy, keys.shape), subset, 2)
        g_sub = np.take_along_axis(np.broadcast_to(gold, keys.shape), subset, 2)
        picked = np.take_along_axis(g_sub, p_sub.argmax(2)[..., None], 2)[..., 0].mean(axis=1)
        se = picked.std() / math.sqrt(draws)
        assert abs(picked.mean() - curve.proxy[i]) <= 5 * se + 1e-12


def test_best_of_n_endpoints(rng):
    proxy, gold = rng.normal(size=(25, 9)), rng.normal(size=(25, 9))
    curve = reward.best_of_n(proxy, gold, ns=[1, 9])
    assert curve.proxy[0] == pytest.approx(gold.mean()) and curve.oracle[0] == pytest.approx(gold.mean())
    assert curve.proxy[1] == pytest.approx(gold[np.arange(25), proxy.argmax(1)].mean())
    assert curve.oracle[1] == pytest.approx(gold.max(1).mean())
    big = reward.best_of_n(rng.normal(size=(3, 3000)), np.ones((3, 3000)), ns=(1, 100, 2048, 3000))
    np.testing.assert_allclose(big.proxy, 1.0, rtol=1e-12)  # the pick probabilities sum to 1
    assert reward.best_of_n(proxy, gold, ns=4).ns.tolist() == [4]
    assert set(curve.to_dict()) == {"ns", "proxy", "oracle", "n_prompts", "k"}


@pytest.mark.parametrize(
    ("shape", "ns", "error", "match"),
    [
        (
            (3, 16),
            (1, 2, 4, 8, 16, 32),
            ValueError,
            r"ns\[5\] = 32 is larger than the number of responses .*K=16",
        ),
        ((3, 4), (0, 2), ValueError, r"ns\[0\] = 0 is less than 1"),
        ((3, 4), (), ValueError, r"ns is empty"),
        ((3, 4), [[1, 2]], ValueError, r"ns must be 1-dimensional"),
        ((3, 4), (1.0, 2.0), TypeError, r"ns must contain integers"),
        ((3, 4), 2.0, TypeError, r"ns must contain integers"),
        ((3, 4), True, TypeError, r"ns must contain integers"),
        ((3, 4), "12", TypeError, r"ns must be a sequence of integers"),
    ],
)
def test_best_of_n_rejects_bad_ns(shape, ns, error, match):
    with pytest.raises(error, match=match):
        reward.best_of_n(np.zeros(shape), np.zeros(shape), ns=ns)


def test_best_of_n_rejects_bad_scores():
    with pytest.raises(ValueError, match=r"proxy contains NaN at \[1, 2\]"):
        reward.best_of_n(np.array([[0.0, 1, 2], [0, 1, np.nan]]), np.zeros((2, 3)), ns=(1,))
    with pytest.raises(ValueError, match=r"gold contains inf at \[0, 0\]"):
        reward.best_of_n(np.zeros((2, 3)), np.array([[np.inf, 1, 2], [0, 1, 2]]), ns=(1,))
    with pytest.raises(ValueError, match=r"proxy and gold have different shapes"):
        reward.best_of_n(np.zeros((2, 3)), np.zeros((3, 2)), ns=(1,))
    with pytest.raises(ValueError, match=r"proxy is empty"):
        reward.best_of_n(np.zeros((0, 3)), np.zeros((0, 3)), ns=(1,))
    with pytest.raises(ValueError, match=r"proxy has no columns"):
        reward.best_of_n(np.zeros((2, 0)), np.zeros((2, 0)), ns=(1,))
    with pytest.raises(ValueError, match=r"gold must be 2-dimensional"):
        reward.best_of_n(np.zeros((2, 3)), np.zeros(6), ns=(1,))


def test_best_of_n_default_ns_keep_those_that_fit():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    res = reward.best_of_n(proxy, gold)
    assert np.asarray(res.ns).tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match="K=5"):
        reward.best_of_n(proxy, gold, ns=(1, 8))


def test_best_of_n_gold_near_the_float_maximum():
    tiny = reward.best_of_n(np.zeros((3, 1)), [[1e300], [-1e300], [3e-300]], ns=[1])  # no scaling down here
    np.testing.assert_allclose(tiny.proxy, [1e-300], rtol=1e-12)
    curve = reward.best_of_n([[0.0, 0.0], [1.0, 0.0]], [[1e308, 1e308], [1.5e308, -1e308]], ns=[1, 2])
    np.testing.assert_allclose(curve.proxy, [0.5e308 + 0.125e308, 0.5e308 + 0.75e308], rtol=1e-12)
    np.testing.assert_allclose(curve.oracle, curve.proxy, rtol=1e-12)


# ----------------------------------------------------------------------------------------- ranking_metrics


def _ranking_data(rng, n=40, k=4):
    rewards = rng.normal(size=(n, k))
    rankings = np.argsort(-(rewards + rng.gumbel(size=(n, k))), axis=1)
    return rewards, rankings


def test_ranking_metrics_is_the_report_of_the_scaled_model(rng):
    from prefcal import ranking

    rewards, rankings = _ranking_data(rng)
    got = reward.ranking_metrics(rewards, rankings, beta=1.7, levels=("sub2", "top1", "full"))
    want = ranking.report(ranking.PL(rewards * 1.7), rankings, levels=("sub2", "top1", "full"))
    assert got.to_dict() == want.to_dict()
    ranks = np.argsort(rankings, axis=1).astype(np.float64)
    got = reward.ranking_metrics(rewards, observed_ranks=ranks, levels=("sub2",))
    assert (
        got.to_dict() == ranking.report(ranking.PL(rewards), observed_ranks=ranks, levels=("sub2",)).to_dict()
    )


def test_ranking_metrics_takes_torch_tensors(rng):
    torch = pytest.importorskip("torch")
    rewards, rankings = _ranking_data(rng)
    want = reward.ranking_metrics(rewards, rankings, levels=("sub2", "top1")).to_dict()
    got = reward.ranking_metrics(
        torch.from_numpy(rewards), torch.from_numpy(rankings), levels=("sub2", "top1")
    )
    assert got.to_dict() == want
    mask = torch.ones(rewards.shape, dtype=torch.bool)
    got = reward.ranking_metrics(
        torch.from_numpy(rewards), torch.from_numpy(rankings), mask=mask, levels=("sub2", "top1")
    )
    assert got.to_dict() == want
    with pytest.raises(TypeError, match="rewards is torch.Tensor but rankings is numpy.ndarray"):
        reward.ranking_metrics(torch.from_numpy(rewards), rankings)


@pytest.mark.parametrize(
    ("rewards", "kwargs", "error", "match"),
    [
        (np.array([["1", "0"]]), {}, TypeError, r"rewards must contain real numbers"),
        (np.array([[1 + 5j, 0j]]), {}, TypeError, r"rewards must contain real numbers"),
        (np.array([[0.0, 1.0], [np.nan, 0.0]]), {}, ValueError, r"rewards contains NaN at \[1, 0\]"),
        (
            np.array([[1e308, 0.0], [0.0, 1.0]]),
            {"beta": 4.0},
            ValueError,
            r"beta \* rewards contains inf at \[0, 0\]",
        ),
        (np.array([[1.0, 0.0], [0.0, 1.0]]), {"beta": 0.0}, ValueError, r"beta must be positive"),
        (np.float64(np.inf), {}, ValueError, r"rewards must be 1-dimensional \(K,\) or 2-dimensional"),
        (None, {}, TypeError, r"rewards must be an array of shape \(N, K\) or \(K,\), got None"),
    ],
)
def test_ranking_metrics_rejects_bad_rewards(rewards, kwargs, error, match):
    with pytest.raises(error, match=match):
        reward.ranking_metrics(rewards, np.array([[0, 1], [1, 0]]), levels=("sub2",), **kwargs)
