"""Mergeable states (SPEC §9): any split of the data, merged, gives the one-call result."""

from __future__ import annotations

import pickle

import numpy as np
import prefcal
import pytest
from prefcal import metrics, ranking


def split(rng, n, parts):
    cuts = np.sort(rng.choice(np.arange(1, n), size=parts - 1, replace=False))
    return np.split(np.arange(n), cuts)


def test_calibration_state(rng):
    conf = rng.random(1000)
    correct = rng.random(1000) < conf
    whole = prefcal.reliability(conf, correct, n_bins=12)
    states = []
    for idx in split(rng, 1000, 4):
        m = metrics.Calibration(12)
        m.update(conf[idx], correct[idx])
        states.append(pickle.loads(pickle.dumps(m)))
    merged = states[0] + states[1] + states[2] + states[3]
    got = merged.compute()
    assert got.count.tolist() == whole.count.tolist()
    np.testing.assert_allclose(got.sum_confidence, whole.sum_confidence, rtol=1e-13)
    with pytest.raises(ValueError, match="before any update"):
        metrics.Calibration().compute()
    with pytest.raises(ValueError, match="cannot merge Calibration states of 10 and 12 bins"):
        metrics.Calibration(10).merge(metrics.Calibration(12))


LEVELS = ("sub2", "sub3", "top1", "top2", "top2_set", "full", "positions")


@pytest.mark.parametrize("kind", ["classwise", "top_label"])
def test_ranking_state_equals_one_call(rng, kind):
    n_rows, n = 300, 4
    s = rng.normal(size=(n_rows, n))
    obs = np.asarray(prefcal.pl.sample(s * 1.3, seed=int(rng.integers(1 << 30))))[:, 0]
    obs[::5, 2:] = -1  # some partial rankings
    states = []
    for idx in split(rng, n_rows, 3):
        m = metrics.RankingCalibration(LEVELS, kind=kind)
        m.update(s[idx], obs[idx])
        states.append(pickle.loads(pickle.dumps(m)))
    got = (states[0] + states[1] + states[2]).compute()
    want = ranking.report(
        s, obs, levels=LEVELS, kinds={"sub2": kind, "sub3": kind, "top1": kind, "top2": kind}
    )
    for name in LEVELS:
        assert got[name].ece == pytest.approx(want[name].ece, rel=1e-12, abs=1e-15), name
        assert got[name].n_skipped == want[name].n_skipped, name
        assert got[name].n_events == want[name].n_events, name


def test_observed_classes_are_exact_across_splits(rng):
    n_rows, n = 40, 8  # n >= 8: classes="auto" keeps the observed classes; few rows leave many unobserved
    s = rng.normal(size=(n_rows, n))
    obs = np.asarray(prefcal.pl.sample(s, seed=5))[:, 0]
    a, b = (
        metrics.RankingCalibration(("sub2", "top1", "top2")),
        metrics.RankingCalibration(("sub2", "top1", "top2")),
    )
    a.update(s[:13], obs[:13])
    b.update(s[13:], obs[13:])
    got = (a + b).compute()
    assert got["top2"].n_classes <= n_rows < 56  # the observed prefixes only
    for name, fn, k in (
        ("sub2", ranking.subranking_ece, 2),
        ("top1", ranking.topk_ece, 1),
        ("top2", ranking.topk_ece, 2),
    ):
        want = fn(s, obs, k)
        assert got[name].n_classes == want.n_classes
        assert got[name].ece == pytest.approx(want.ece, rel=1e-12)
        assert [r["cls"] for r in got[name].classes] == [r["cls"] for r in want.classes]


def test_ranking_state_rejections(rng):
    with pytest.raises(ValueError, match="no mergeable state"):
        metrics.RankingCalibration(kind="canonical")
    with pytest.raises(ValueError, match="before any update"):
        metrics.RankingCalibration().compute()
    with pytest.raises(ValueError, match="does not exist"):
        metrics.RankingCalibration(("sub5",), n_items=4)
    with pytest.raises(ValueError, match="too many"):
        metrics.RankingCalibration(("top9",), n_items=12)
    a = metrics.RankingCalibration(n_items=4)
    with pytest.raises(ValueError, match="n_items=4, the update has 5"):
        a.update(np.zeros((2, 5)), np.array([[0, 1, 2, 3, 4]] * 2))
    with pytest.raises(ValueError, match="same levels"):
        a.merge(metrics.RankingCalibration(("sub2",), n_items=4))


def test_undetermined_levels_raise_or_are_omitted(rng):
    s = rng.normal(size=(300, 5))
    obs = np.asarray(prefcal.pl.sample(s, seed=2))[:, 0]
    obs[:, 2:] = -1  # top-2 observations decide no event of the full ordering
    st = metrics.RankingCalibration(("sub2", "full"))
    st.update(s, obs)
    with pytest.raises(ValueError, match="undetermined"):
        st.compute()
    out = st.compute(undetermined="omit")
    assert list(out) == ["sub2"]
    assert out["sub2"].ece == pytest.approx(ranking.subranking_ece(s, obs, 2).ece, rel=1e-12)
    with pytest.raises(ValueError, match="undetermined"):
        st.compute(undetermined="skip")


def test_ranking_state_checks_level_names_at_construction_and_prints_briefly():
    with pytest.raises(ValueError, match="unknown level 'foo'"):
        metrics.RankingCalibration(levels=("sub2", "foo"))
    state = metrics.RankingCalibration(levels="top1")
    assert repr(state) == "RankingCalibration(levels=('top1',), kind='classwise', no rows yet)"
    state.update(np.zeros((2, 3)), np.array([[0, 1, 2], [2, 1, 0]]))
    assert repr(state).endswith("n_items=3)")


def test_streaming_level_that_nothing_decides_raises_like_one_call():
    s = np.random.default_rng(0).normal(size=(5, 4))
    obs = np.array([[0, -1, -1, -1]] * 5)  # top-1 observations decide no top-2 prefix
    for kind in ("classwise", "top_label"):
        with pytest.raises(ValueError, match="undetermined"):
            ranking.topk_ece(s, obs, k=2, kind=kind)
        state = metrics.RankingCalibration(("top2", "top1"), kind=kind)
        state.update(s, obs)
        with pytest.raises(ValueError, match="undetermined"):
            state.compute()
        assert list(state.compute(undetermined="omit")) == ["top1"]


def test_empty_pieces_of_a_split_are_nothing_to_add(rng):
    conf, y = rng.random(50), rng.random(50) < 0.5
    a = metrics.Calibration()
    a.update(conf[:0], y[:0])
    a.update(conf, y)
    a.update([], [])
    assert a.compute().count.tolist() == prefcal.reliability(conf, y).count.tolist()
    s = rng.normal(size=(40, 3))
    obs = np.argsort(-s, axis=1)
    b = metrics.RankingCalibration()
    b.update(s[:0], obs[:0])
    b.update(s, obs)
    b.update(np.zeros((0, 3)), observed_ranks=np.zeros((0, 3)))
    assert b.compute()["sub2"].ece == ranking.subranking_ece(s, obs, 2).ece
    # a piece is empty only when all of it is: else the mismatch is an error, as in one call
    with pytest.raises(ValueError, match="confidence and weights have different lengths: 0 vs 3"):
        a.update(conf[:0], y[:0], weights=np.ones(3))
    for model in (s[:5], s[:5].tolist(), ranking.PL(s[:5])):
        with pytest.raises(ValueError, match="the model has 5 rows but rankings has none"):
            b.update(model, obs[:0])
    with pytest.raises(ValueError, match="the model has 5 rows but observed_ranks has none"):
        b.update(s[:5], observed_ranks=np.zeros((0, 3)))
    with pytest.raises(ValueError, match="this state is for n_items=3, the update has 5 items"):
        b.update(np.zeros((0, 5)), np.zeros((0, 5), np.int64))
    b.update(s[0], obs[:0])  # global scores (n,) and no rows: nothing to add
    assert b.compute()["sub2"].ece == ranking.subranking_ece(s, obs, 2).ece


def test_states_refuse_what_they_cannot_merge():
    a = metrics.Calibration(5)
    with pytest.raises(TypeError, match="takes from 1 to 2 positional arguments"):
        metrics.Calibration(15, "quantile")  # the table is not an argument
    with pytest.raises(TypeError, match="can only merge a Calibration state, got Reliability"):
        a.merge(prefcal.reliability(np.array([0.2]), np.array([1]), n_bins=5))
    with pytest.raises(ValueError, match="cannot merge Calibration states of 5 and 6 bins"):
        a + metrics.Calibration(6)
    with pytest.raises(TypeError, match="can only merge a RankingCalibration state, got Calibration"):
        metrics.RankingCalibration().merge(a)
    with pytest.raises(ValueError, match="same levels and options"):
        metrics.RankingCalibration() + metrics.RankingCalibration(("sub3",))
