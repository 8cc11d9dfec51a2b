"""prefcal.dask (SPEC §9, §12): the metrics on Dask arrays and DataFrames equal the in-memory calls.

One LocalCluster with two worker processes serves the module (states really travel between processes);
one test runs the default path (no client: a LocalCluster started for the call).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import prefcal
import pytest
from prefcal import ranking

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
pdk = pytest.importorskip("prefcal.dask")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={
                "dashboard_address": ":0"
            },  # no fixed port: the default path starts a second one
        ) as c,
        distributed.Client(c, set_as_default=False) as cl,
    ):
        yield cl


@pytest.fixture(scope="module")
def frames():
    """dask.dataframe, pandas and pyarrow, or a skip."""
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    return dd, pd, pa


@pytest.fixture
def no_cluster(monkeypatch):
    """Fails the test if a call starts a LocalCluster (checks must come before any task)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a LocalCluster was started")

    monkeypatch.setattr(distributed, "LocalCluster", refuse)


def uneven(rng, n, parts):
    """Random row chunks of n rows: `parts` chunks, some of one row."""
    cuts = np.sort(rng.choice(np.arange(1, n), size=parts - 1, replace=False))
    return tuple(int(v) for v in np.diff(np.concatenate([[0], cuts, [n]])))


def ranking_data(rng, n_rows=600, n=5, partial=True):
    s = rng.normal(size=(n_rows, n))
    obs = np.asarray(prefcal.pl.sample(s * 1.4, seed=int(rng.integers(1 << 30))))[:, 0].astype(np.int64)
    if partial:
        obs[::4, n - 2 :] = -1
        obs[1::9, 1:] = -1
    return s, obs


def same(got, want):
    """Same result type and numbers: counts exactly, ECE to 1e-12."""
    assert type(got) is type(want)
    assert got.ece == pytest.approx(want.ece, rel=1e-12, abs=1e-15)
    assert got.n_skipped == want.n_skipped
    assert got.n_events == want.n_events
    if isinstance(want, ranking.ClasswiseResult):
        assert [r["cls"] for r in got.classes] == [r["cls"] for r in want.classes]
        assert [r["count"] for r in got.classes] == [r["count"] for r in want.classes]
        np.testing.assert_allclose(
            [r["ece"] for r in got.classes], [r["ece"] for r in want.classes], rtol=1e-12
        )
    else:
        assert got.reliability.count.tolist() == want.reliability.count.tolist()
        assert got.accuracy == pytest.approx(want.accuracy, rel=1e-12)
        assert got.mce == pytest.approx(want.mce, rel=1e-12, abs=1e-15)


# ------------------------------------------------------------------------------------------ binary ECE
def test_reliability_and_ece_on_uneven_chunks(client, rng):
    n = 1000
    conf, y = rng.random(n), rng.random(n) < rng.random(n)
    w = rng.random(n)
    c = da.from_array(conf, chunks=(uneven(rng, n, 6),))
    yy = da.from_array(y, chunks=(uneven(rng, n, 4),))  # rechunked to conf's chunks
    ww = da.from_array(w, chunks=300)
    got = pdk.reliability(c, yy, n_bins=12, weights=ww, client=client)
    want = prefcal.reliability(conf, y, n_bins=12, weights=w)
    assert isinstance(got, prefcal.Reliability)
    np.testing.assert_array_equal(got.edges, want.edges)
    np.testing.assert_allclose(got.count, want.count, rtol=1e-13)
    np.testing.assert_allclose(got.sum_confidence, want.sum_confidence, rtol=1e-13)
    np.testing.assert_allclose(got.sum_correct, want.sum_correct, rtol=1e-13)
    unweighted = pdk.reliability(c, yy, n_bins=12, client=client)
    assert unweighted.count.tolist() == prefcal.reliability(conf, y, n_bins=12).count.tolist()
    for norm, debias in (("l1", False), ("l2", True), ("max", False)):
        got = pdk.ece(c, yy, norm=norm, debias=debias, client=client)
        assert got == pytest.approx(prefcal.ece(conf, y, norm=norm, debias=debias), rel=1e-12, abs=1e-15)


def test_ece_on_a_dataframe(client, rng, frames):
    dd, pd, _ = frames
    n = 500
    frame = pd.DataFrame({"p": rng.random(n), "y": rng.integers(0, 2, n), "w": rng.random(n)})
    df = dd.from_pandas(frame, npartitions=5)
    got = pdk.ece("p", "y", weights="w", n_bins=7, data=df, client=client)
    want = prefcal.ece(frame["p"].to_numpy(), frame["y"].to_numpy(), weights=frame["w"].to_numpy(), n_bins=7)
    assert got == pytest.approx(want, rel=1e-12)
    # nullable dtypes with a missing confidence: the in-memory message, at the global row
    frame["p"] = frame["p"].astype("Float64")
    frame.loc[321, "p"] = pd.NA
    with pytest.raises(ValueError, match=r"^confidence contains NaN at index 321$"):
        pdk.ece("p", "y", data=dd.from_pandas(frame, npartitions=5), client=client)


# ------------------------------------------------------------------------------------------ rankings
@pytest.mark.parametrize("kind", ["classwise", "top_label"])
def test_subranking_and_topk_on_uneven_chunks(client, rng, kind):
    s, obs = ranking_data(rng)
    n_rows = s.shape[0]
    scores = da.from_array(s, chunks=(uneven(rng, n_rows, 5), (2, 3)))  # column chunks are merged
    rk = da.from_array(obs, chunks=(uneven(rng, n_rows, 3), 5))
    for k in (2, 3):
        same(
            pdk.subranking_ece(scores, rk, k, kind=kind, client=client),
            ranking.subranking_ece(s, obs, k, kind=kind),
        )
    w = "top5_mass" if kind == "classwise" else "uniform"
    same(
        pdk.topk_ece(scores, rk, 2, kind=kind, weighting=w, n_bins=7, client=client),
        ranking.topk_ece(s, obs, 2, kind=kind, weighting=w, n_bins=7),
    )
    if kind == "top_label":
        same(
            pdk.topk_ece(scores, rk, 2, kind=kind, ordered=False, client=client),
            ranking.topk_ece(s, obs, 2, kind=kind, ordered=False),
        )


def test_observed_classes_and_options(client, rng):
    # n >= 8: classes="auto" means the observed classes, collected over all blocks
    s, obs = ranking_data(rng, n_rows=400, n=8)
    scores, rk = da.from_array(s, chunks=90), da.from_array(obs, chunks=(150, 8))
    for opts in ({}, {"weighting": "prevalence", "discrepancy": "kl"}, {"classes": "all", "n_bins": 5}):
        same(
            pdk.subranking_ece(scores, rk, 2, client=client, **opts),
            ranking.subranking_ece(s, obs, 2, **opts),
        )
    same(pdk.topk_ece(scores, rk, 1, client=client), ranking.topk_ece(s, obs, 1))


def test_observed_ranks_with_ties_and_unknowns(client, rng):
    n_rows, n = 500, 4
    s = rng.normal(size=(n_rows, n))
    ranks = rng.integers(0, 3, size=(n_rows, n)).astype(np.float64)
    ranks[::7, 1] = np.nan
    ranks[::11, 2] = -1
    scores, rr = da.from_array(s, chunks=(uneven(rng, n_rows, 4), n)), da.from_array(ranks, chunks=120)
    for kind in ("classwise", "top_label"):
        same(
            pdk.subranking_ece(scores, observed_ranks=rr, kind=kind, client=client),
            ranking.subranking_ece(s, observed_ranks=ranks, kind=kind),
        )
        same(
            pdk.topk_ece(scores, observed_ranks=rr, k=1, kind=kind, client=client),
            ranking.topk_ece(s, observed_ranks=ranks, k=1, kind=kind),
        )


def check_report(got, want):
    assert isinstance(got, ranking.Report)
    assert list(got.levels) == list(want.levels)
    for name in want.levels:
        same(got[name], want[name])


def test_report_on_arrays(client, rng):
    s, obs = ranking_data(rng, n_rows=400, n=4)
    scores, rk = da.from_array(s, chunks=(uneven(rng, 400, 7), 4)), da.from_array(obs, chunks=(100, 4))
    check_report(pdk.report(scores, rk, client=client), ranking.report(s, obs))
    levels = ("sub2", "top1", "top2_set", "full", "positions")
    kinds = {"sub2": "top_label", "full": "classwise", "top2_set": "classwise"}
    check_report(
        pdk.report(scores, rk, levels=levels, kinds=kinds, n_bins=6, client=client),
        ranking.report(s, obs, levels=levels, kinds=kinds, n_bins=6),
    )


def test_report_defaults_leave_out_undecided_levels_as_in_memory(client, rng, frames):
    s, obs = ranking_data(rng, n_rows=120, n=4)
    obs[:, 1:] = -1  # top-1 observations: the full ordering and top-2 are decided by no row
    scores, rk = da.from_array(s, chunks=(50, 4)), da.from_array(obs, chunks=(50, 4))
    want = ranking.report(s, obs)
    got = pdk.report(scores, rk, client=client)
    assert list(got.levels) == list(want.levels) == ["sub2", "top1", "positions"]
    check_report(got, want)
    with pytest.raises(ValueError, match="undetermined"):
        pdk.report(scores, rk, levels=("sub2", "full"), client=client)
    # one column per position: a column with gaps is float64 in pandas; the gaps are -1 (padding)
    dd, pd, _ = frames
    part = np.asarray(prefcal.pl.sample(s, seed=5))[:, 0, :2].astype(np.int64)
    part[::3, 1] = -1  # top-1 in every third row, top-2 in the others
    cols = {f"s{i}": s[:, i] for i in range(4)}
    cols |= {"r0": part[:, 0], "r1": np.where(part[:, 1] < 0, np.nan, part[:, 1].astype(float))}
    df = dd.from_pandas(pd.DataFrame(cols), npartitions=3)
    same(
        pdk.subranking_ece([f"s{i}" for i in range(4)], ["r0", "r1"], k=2, data=df, client=client),
        ranking.subranking_ece(s, part, 2),
    )


def test_in_memory_models(client, rng):
    s, obs = ranking_data(rng, n_rows=300, n=4)
    rk = da.from_array(obs, chunks=(uneven(rng, 300, 4), 4))
    g = rng.normal(size=4)
    # a global model, a per-row NumPy model, a PL with a mask, an Explicit and an Empirical model
    same(pdk.subranking_ece(g, rk, client=client), ranking.subranking_ece(g, obs))
    check_report(pdk.report(s, rk, client=client), ranking.report(s, obs))
    mask = np.ones((300, 4), dtype=bool)
    mask[::5, 3] = False
    obs_m = obs.copy()
    obs_m[::5] = [2, 0, 1, -1]  # item 3 is not available in these rows
    same(
        pdk.subranking_ece(ranking.PL(s, mask), da.from_array(obs_m, chunks=70), client=client),
        ranking.subranking_ece(ranking.PL(s, mask), obs_m),
    )
    orders = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 2, 3]])
    probs = rng.dirichlet(np.ones(4), size=300)[:, :3]
    same(
        pdk.subranking_ece(ranking.Explicit(orders, probs), rk, client=client),
        ranking.subranking_ece(ranking.Explicit(orders, probs), obs),
    )
    samples = np.asarray(prefcal.pl.sample(s, 6, seed=3))
    same(
        pdk.topk_ece(ranking.Empirical(samples), rk, 1, kind="top_label", client=client),
        ranking.topk_ece(ranking.Empirical(samples), obs, 1, kind="top_label"),
    )


# ------------------------------------------------------------------------------------------ DataFrames
def ranking_frame(frames, s, obs, npartitions):
    """A Dask DataFrame with list columns (pyarrow list dtypes; rankings of different lengths) and one column
    per item / position."""
    dd, pd, pa = frames
    lists = [row[row >= 0].tolist() for row in obs]
    frame = pd.DataFrame(
        {
            "scores": pd.Series(pa.array(s.tolist()), dtype=pd.ArrowDtype(pa.list_(pa.float64()))),
            "rankings": pd.Series(pa.array(lists), dtype=pd.ArrowDtype(pa.list_(pa.int64()))),
            "other": np.arange(len(obs)),
        }
    )
    for i in range(s.shape[1]):
        frame[f"s{i}"] = s[:, i]
        frame[f"r{i}"] = pd.array(np.where(obs[:, i] >= 0, obs[:, i], 0), dtype="Int64")
        frame.loc[obs[:, i] < 0, f"r{i}"] = pd.NA  # missing positions: padding
    return dd.from_pandas(frame, npartitions=npartitions)


def test_dataframe_list_and_item_columns(client, rng, frames):
    s, obs = ranking_data(rng, n_rows=400, n=4)
    df = ranking_frame(frames, s, obs, npartitions=6)
    items, positions = [f"s{i}" for i in range(4)], [f"r{i}" for i in range(4)]
    same(
        pdk.subranking_ece("scores", "rankings", 2, data=df, client=client), ranking.subranking_ece(s, obs, 2)
    )
    same(
        pdk.topk_ece(items, positions, 2, kind="top_label", data=df, client=client),
        ranking.topk_ece(s, obs, 2, kind="top_label"),
    )
    check_report(pdk.report(items, "rankings", data=df, client=client), ranking.report(s, obs))
    g = rng.normal(size=4)  # an in-memory model with a rankings column; then per-row, sliced by partitions
    same(pdk.subranking_ece(g, "rankings", data=df, client=client), ranking.subranking_ece(g, obs))
    same(pdk.topk_ece(s, positions, data=df, client=client), ranking.topk_ece(s, obs))
    # after a row filter the first partition is empty: it contributes no state
    kept = df[df["other"] >= 100]
    same(
        pdk.subranking_ece("scores", "rankings", data=kept, client=client),
        ranking.subranking_ece(s[100:], obs[100:]),
    )
    same(pdk.topk_ece(s[100:], "rankings", data=kept, client=client), ranking.topk_ece(s[100:], obs[100:]))


def test_dataframe_object_columns_and_observed_ranks(client, rng, frames):
    dd, pd, _ = frames
    n_rows, n = 300, 5
    s = rng.normal(size=(n_rows, n))
    ranks = rng.integers(0, 4, size=(n_rows, n)).astype(np.float64)
    ranks[::6, 0] = np.nan
    with dask.config.set({"dataframe.convert-string": False}):  # object cells holding NumPy arrays
        df = dd.from_pandas(pd.DataFrame({"s": list(s), "ranks": list(ranks)}), npartitions=4)
    same(
        pdk.subranking_ece("s", observed_ranks="ranks", k=3, kind="top_label", data=df, client=client),
        ranking.subranking_ece(s, observed_ranks=ranks, k=3, kind="top_label"),
    )
    # without that setting Dask turns the object column into strings: a TypeError that says so
    df_str = dd.from_pandas(pd.DataFrame({"s": list(s), "ranks": list(ranks)}), npartitions=4)
    with pytest.raises(TypeError, match="convert-string"):
        pdk.subranking_ece("s", observed_ranks="ranks", data=df_str, client=client)


# ------------------------------------------------------------------------------------------ rejections
def test_options_without_a_mergeable_state_are_refused(rng, no_cluster):
    s, obs = ranking_data(rng, n_rows=50, n=4)
    scores, rk = da.from_array(s, chunks=20), da.from_array(obs, chunks=20)
    c = da.from_array(rng.random(50), chunks=20)
    with pytest.raises(ValueError, match=r"strategy='quantile' is not mergeable.*strategy='uniform'"):
        pdk.ece(c, c > 0.5, strategy="quantile")
    with pytest.raises(ValueError, match="strategy must be one of"):
        pdk.reliability(c, c > 0.5, strategy="equal")
    with pytest.raises(ValueError, match=r"kind='canonical' is not available.*no mergeable state"):
        pdk.subranking_ece(scores, rk, kind="canonical")
    with pytest.raises(ValueError, match=r"kinds\['sub2'\]='canonical' is not available"):
        pdk.report(scores, rk, kinds={"sub2": "canonical"})
    with pytest.raises(ValueError, match=r"filter='mass95' is not available.*filter=None"):
        pdk.topk_ece(scores, rk, filter="mass95")
    with pytest.raises(ValueError, match=r"bin_spacing='log' is not available"):
        pdk.subranking_ece(scores, rk, bin_spacing="log")
    with pytest.raises(ValueError, match="ordered=False"):
        pdk.topk_ece(scores, rk, ordered=False)
    with pytest.raises(ValueError, match="top5_mass"):
        pdk.subranking_ece(scores, rk, weighting="top5_mass")
    with pytest.raises(ValueError, match="k must be between 2 and 4, got 5"):
        pdk.subranking_ece(scores, rk, k=5)
    with pytest.raises(ValueError, match="discrepancy must be one of"):
        pdk.subranking_ece(scores, rk, discrepancy="l2")


def test_bad_inputs_are_refused_before_any_task(rng, frames, no_cluster):
    dd, pd, _ = frames
    s, obs = ranking_data(rng, n_rows=50, n=4)
    scores, rk = da.from_array(s, chunks=20), da.from_array(obs, chunks=20)
    with pytest.raises(ValueError, match="the model has 50 rows but the observations have 49"):
        pdk.subranking_ece(scores, rk[:49])
    with pytest.raises(ValueError, match="confidence and correct have different lengths: 50 vs 40"):
        pdk.ece(scores[:, 0], rk[:40, 0] >= 0)
    with pytest.raises(TypeError, match=r"rankings must be a Dask array .* prefcal.ranking.subranking_ece"):
        pdk.subranking_ece(scores, obs)
    with pytest.raises(TypeError, match="rankings must be an integer array, got dtype float64"):
        pdk.subranking_ece(scores, rk.astype(float))
    with pytest.raises(TypeError, match="confidence must contain real numbers"):
        pdk.ece(da.from_array(np.array(["a", "b"])), rk[:2, 0])
    with pytest.raises(ValueError, match="confidence must be 1-dimensional"):
        pdk.ece(scores, rk[:, 0] >= 0)
    with pytest.raises(ValueError, match="rankings have 5 positions but there are only n_items=4"):
        pdk.subranking_ece(scores, da.concatenate([rk, rk[:, :1]], axis=1))
    with pytest.raises(ValueError, match="no observations: pass rankings="):
        pdk.subranking_ece(scores)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        pdk.subranking_ece(scores, rk, client="tcp://localhost:8786")
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        pdk.subranking_ece(scores, rk[rk[:, 0] >= 0])
    df = dd.from_pandas(pd.DataFrame({"p": rng.random(50), "y": rng.integers(0, 2, 50)}), npartitions=2)
    with pytest.raises(TypeError, match="pass it as data="):
        pdk.ece(df, "y")
    with pytest.raises(TypeError, match="data= .* is not given"):
        pdk.ece("p", "y")
    with pytest.raises(TypeError, match="data must be a Dask DataFrame"):
        pdk.ece("p", "y", data=df.compute())
    with pytest.raises(ValueError, match=r"correct='z': data has no such column"):
        pdk.ece("p", "z", data=df)
    with pytest.raises(TypeError, match=r"data\['p'\] \(model\) holds one float64 per row"):
        pdk.subranking_ece("p", ["y"], data=df)


def test_a_bad_row_is_reported_with_its_global_number(client, rng, frames):
    s, obs = ranking_data(rng, n_rows=400, n=4, partial=False)
    chunks = (uneven(rng, 400, 5), 4)
    bad = obs.copy()
    row = chunks[0][0] + chunks[0][1] + 3  # past the first two blocks
    bad[row, 2] = bad[row, 0]
    with pytest.raises(ValueError) as in_memory:
        ranking.subranking_ece(s, bad)
    with pytest.raises(ValueError) as distributed_:
        pdk.subranking_ece(da.from_array(s, chunks=chunks), da.from_array(bad, chunks=chunks), client=client)
    assert (
        str(distributed_.value)
        == str(in_memory.value)
        == f"rankings[{row}] repeats item {bad[row, 0]} (positions 0 and 2)"
    )
    # a DataFrame (five partitions of 80 rows): partition lengths are counted when the error comes back
    bad = obs.copy()
    bad[333, 2] = 7
    df = ranking_frame(frames, s, bad, npartitions=5)
    with pytest.raises(ValueError, match=r"^rankings\[333, 2\] = 7 is out of range for n_items=4$"):
        pdk.report("scores", "rankings", data=df, client=client)
    # scores of one row, and a message without a row number
    s_bad = s.copy()
    s_bad[row, 1] = np.inf
    with pytest.raises(ValueError, match=rf"^scores contains inf at \[{row}, 1\]$"):
        pdk.topk_ece(da.from_array(s_bad, chunks=chunks), da.from_array(obs, chunks=chunks), client=client)
    short = ranking_frame(frames, s[:, :3], obs[:, :3], npartitions=4)
    with pytest.raises(
        ValueError, match=r"^rankings have 4 positions .* \(in the block of rows \d+ to \d+\)$"
    ) as e:
        pdk.subranking_ece("scores", ["r0", "r1", "r2", "r0"], data=short, client=client)
    start, stop = (int(v) for v in str(e.value).rstrip(")").split("rows ")[1].split(" to "))
    assert start % 100 == 0 and stop == start + 99  # one of the four partitions of 100 rows


def test_different_item_counts_across_partitions(client, frames):
    dd, pd, pa = frames
    s = [[0.0, 1.0, 2.0]] * 3 + [[0.0, 1.0]] * 3
    frame = pd.DataFrame(
        {
            "s": pd.Series(pa.array(s), dtype=pd.ArrowDtype(pa.list_(pa.float64()))),
            "r": pd.Series(pa.array([[0, 1]] * 6), dtype=pd.ArrowDtype(pa.list_(pa.int64()))),
        }
    )
    with pytest.raises(ValueError, match="different numbers of items: 3 in some blocks, 2 in others"):
        pdk.subranking_ece("s", "r", data=dd.from_pandas(frame, npartitions=2), client=client)
    with pytest.raises(ValueError, match=r"^data\['s'\] has 2 values in row 3 but 3 in row 0"):
        pdk.subranking_ece("s", "r", data=dd.from_pandas(frame, npartitions=1), client=client)


# ------------------------------------------------------------------------------------------ clients
def test_the_current_client_is_used(client, rng, no_cluster):
    conf = rng.random(200)
    with client.as_current():
        got = pdk.ece(da.from_array(conf, chunks=64), da.from_array(conf > 0.5, chunks=64))
    assert got == pytest.approx(prefcal.ece(conf, conf > 0.5), rel=1e-12)


@pytest.mark.slow
def test_default_path_starts_a_cluster_for_the_call(rng, monkeypatch):
    started = []
    real = distributed.LocalCluster

    def spy(*args, **kwargs):
        cluster = real(*args, **kwargs)
        started.append(cluster)
        return cluster

    monkeypatch.setattr(distributed, "LocalCluster", spy)
    s, obs = ranking_data(rng, n_rows=200, n=4)
    got = pdk.subranking_ece(da.from_array(s, chunks=64), da.from_array(obs, chunks=64))
    same(got, ranking.subranking_ece(s, obs))
    assert len(started) == 1 and started[0].status.name == "closed"


def test_doctests(client):
    import doctest

    with client.as_current():
        result = doctest.testmod(pdk, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_import_prefcal_does_not_import_dask():
    code = (
        "import sys, prefcal; assert not any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
