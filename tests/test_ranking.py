"""The calibration hierarchy (SPEC §5): every kind and option against brute-force enumeration over all
orderings (PL and explicit models), the reference code's hand-made 3-item cases, calibrated synthetic data,
undetermined events, and rejections."""

from __future__ import annotations

import itertools
import math

import numpy as np
import prefcal
import pytest
from conftest import get_backend
from prefcal import _backend, _reference, ranking

HOST = (
    "reference",
    "cpu",
    "cuda-staged",
)  # cuda-staged: host inputs through the CUDA kernels (skips without a GPU)


@pytest.fixture(params=HOST)
def host(request: pytest.FixtureRequest):
    b = get_backend(request.param)
    with b.active():
        yield b


# ------------------------------------------------------------------------------------------ brute force
def all_orders(n):
    return [tuple(p) for p in itertools.permutations(range(n))]


def pl_prob(s, order):
    w = np.exp(np.asarray(s, dtype=np.float64))
    p, rest = 1.0, w[list(order)].sum()
    for i in order:
        p *= w[i] / rest
        rest -= w[i]
    return p


def table_of(model, n):
    """(orders, probs (N, n!)) of a PL or explicit model, by enumeration."""
    orders = all_orders(n)
    if isinstance(model, ranking.Explicit):
        idx = {tuple(o): r for r, o in enumerate(model.orderings.tolist())}
        probs = np.zeros((model.n_rows, len(orders)))
        for c, o in enumerate(orders):
            if o in idx:
                probs[:, c] = model.probs[:, idx[o]]
        return orders, probs
    s = np.atleast_2d(model.scores)
    return orders, np.array([[pl_prob(row, o) for o in orders] for row in s])


def satisfies(order, cls, top):
    if top:
        return tuple(order[: len(cls)]) == tuple(cls)
    pos = [order.index(i) for i in cls]
    return pos == sorted(pos)


def binary_ece(y, p, disc="abs", spacing="linear", n_bins=10):
    """A plain loop over bins, written from SPEC §5.2."""
    eps = 1e-12
    y, p = np.asarray(y, float), np.asarray(p, float)
    if spacing == "log":
        edges = np.logspace(np.log10(eps), 0, n_bins + 1)
        edges[0], edges[-1] = 0.0, 1.0
    out = 0.0
    for b in range(n_bins):
        if spacing == "log":
            idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
        else:
            idx = np.minimum(np.floor(p * n_bins), n_bins - 1)
        m = idx == b
        if not m.any():
            continue
        ph, qh = y[m].mean(), p[m].mean()
        if disc == "abs":
            d = abs(ph - qh)
        elif disc == "rel_p":
            d = abs(ph - qh) / (ph + eps)
        elif disc == "rel_q":
            d = abs(ph - qh) / (qh + eps)
        elif disc == "log_ratio":
            d = abs(math.log((ph + eps) / (qh + eps)))
        elif disc == "kl":
            a, q = min(max(ph, eps), 1 - eps), min(max(qh, eps), 1 - eps)
            d = a * math.log(a / q) + (1 - a) * math.log((1 - a) / (1 - q))
        else:
            a = (y[m].sum() + 0.5) / (m.sum() + 1)
            q = min(max(qh, eps), 1 - eps)
            kl = a * math.log(a / q) + (1 - a) * math.log((1 - a) / (1 - q))
            lk = q * math.log(q / a) + (1 - q) * math.log((1 - q) / (1 - a))
            d = 1 - math.exp(-(kl + lk))
        out += m.sum() / len(y) * d
    return out


def brute_classwise(model, obs, k, top, weighting="uniform", disc="abs", spacing="linear"):
    n = obs.shape[1]
    orders, probs = table_of(model, n)
    classes = (
        itertools.permutations(range(n), k)
        if top
        else (p for a in itertools.combinations(range(n), k) for p in itertools.permutations(a))
    )
    eces, prev, mass = [], [], []
    for cls in classes:
        sat = np.array([satisfies(o, cls, top) for o in orders], float)
        p = np.clip(probs @ sat, 0, 1)
        y = np.array([satisfies(list(r), cls, top) for r in obs], float)
        eces.append(binary_ece(y, p, disc, spacing))
        prev.append(y.mean())
        mass.append(p.mean())
    eces, prev, mass = map(np.array, (eces, prev, mass))
    if weighting == "uniform":
        return eces.mean()
    if weighting == "top5_mass":
        return eces[np.argsort(-mass, kind="stable")[:5]].sum() / 5
    w = prev if weighting == "prevalence" else mass
    return (eces * w).sum() / w.sum()


def random_explicit(rng, n_rows, n, r=None):
    orders = np.array(all_orders(n))
    pick = orders[rng.choice(len(orders), size=r or len(orders), replace=False)]
    probs = rng.dirichlet(np.ones(len(pick)) * 0.5, size=n_rows) * rng.uniform(0.8, 1.0, size=(n_rows, 1))
    return ranking.Explicit(pick, probs)


def observations(rng, scores, temp=1.0):
    return np.asarray(prefcal.pl.sample(np.asarray(scores) * temp, size=1, seed=int(rng.integers(1 << 30))))[
        :, 0
    ]


# -------------------------------------------------------------------------------------- classwise vs brute
@pytest.mark.parametrize("n", [3, 4])
@pytest.mark.parametrize("model_kind", ["pl", "explicit"])
def test_classwise_matches_enumeration(host, rng, n, model_kind):
    n_rows = 40
    s = rng.normal(size=(n_rows, n)) * 1.5
    model = ranking.PL(s) if model_kind == "pl" else random_explicit(rng, n_rows, n)
    obs = observations(rng, s, 1.4)
    options = [
        ("uniform", "abs", "linear"),
        ("prevalence", "kl", "log"),
        ("pred_mass", "jeff", "linear"),
        ("uniform", "rel_p", "linear"),
        ("uniform", "rel_q", "log"),
        ("uniform", "log_ratio", "linear"),
    ]
    for k in range(2, n + 1):
        for w, d, sp in options:
            got = ranking.subranking_ece(model, obs, k, weighting=w, discrepancy=d, bin_spacing=sp)
            want = brute_classwise(model, obs, k, False, w, d, sp)
            assert got.ece == pytest.approx(want, rel=1e-9, abs=1e-12), (k, w, d, sp)
            assert got.n_classes == math.comb(n, k) * math.factorial(k)
    for k in range(1, n):
        for w, d, sp in options + [("top5_mass", "abs", "linear")]:
            got = ranking.topk_ece(model, obs, k, weighting=w, discrepancy=d, bin_spacing=sp)
            want = brute_classwise(model, obs, k, True, w, d, sp)
            assert got.ece == pytest.approx(want, rel=1e-9, abs=1e-12), (k, w, d, sp)


def test_explicit_dense_product_path_matches_reference(rng):
    """Sub-2 of an explicit model with many orderings goes through the dense (BLAS) product."""
    if _backend.cpu_module() is None:
        pytest.skip("the C++ module is not built")
    model = random_explicit(rng, 300, 6, r=260)
    assert ranking._dense_product(model.orderings, _reference.all_classes(6, 2, False), False)
    obs = np.array([model.orderings[rng.choice(260, p=p / p.sum())] for p in model.probs])
    obs[::4, 3:] = -1
    for opts in ({}, {"bin_spacing": "log", "weighting": "pred_mass"}):
        with get_backend("cpu").active():
            got = ranking.subranking_ece(model, obs, 2, **opts)
        with get_backend("reference").active():
            want = ranking.subranking_ece(model, obs, 2, **opts)
        assert got.ece == pytest.approx(want.ece, rel=1e-10, abs=1e-14)
        assert [r["count"] for r in got.classes] == [r["count"] for r in want.classes]


def test_observed_class_scan_with_repeated_and_distinct_rows(rng):
    """The scan for observed sub-k classes (one flag table per thread, or flags set directly when few distinct
    rows repeat) finds the classes the NumPy reference finds, with partial rows and ties."""
    if _backend.cpu_module() is None:
        pytest.skip("the C++ module is not built")
    n = 8
    s = rng.normal(size=(400, n))
    base = np.array([rng.permutation(n) for _ in range(12)])
    repeated = base[rng.integers(0, 12, 400)]
    repeated[::5, 5:] = -1
    distinct = np.array([rng.permutation(n) for _ in range(400)])
    for obs in (repeated, distinct):
        for k in (2, 3, 6):
            with get_backend("cpu").active():
                got = ranking.subranking_ece(s, obs, k, classes="observed")
            with get_backend("reference").active():
                want = ranking.subranking_ece(s, obs, k, classes="observed")
            assert [r["cls"] for r in got.classes] == [r["cls"] for r in want.classes]
            assert got.ece == pytest.approx(want.ece, rel=1e-10, abs=1e-14)


def test_slot_classes_decodes_the_class_list():
    for n, k in [(2, 2), (4, 2), (5, 3), (6, 4), (7, 5), (6, 6)]:
        every = _reference.all_classes(n, k, False)
        np.testing.assert_array_equal(_reference.slot_classes(np.arange(every.shape[0]), n, k), every)


def test_explicit_grouped_kernel_matches_reference_over_row_blocks(rng):
    """The explicit-model kernel streams rows in blocks of 256: more rows than a block, partial observations
    (undecided events), a row filter, log bins, all and observed classes, sub-k and top-k, against the NumPy
    reference."""
    if _backend.cpu_module() is None:
        pytest.skip("the C++ module is not built")
    n, n_rows = 5, 700
    model = random_explicit(rng, n_rows, n, r=40)
    obs = np.array([model.orderings[rng.choice(40, p=p / p.sum())] for p in model.probs])
    part = obs.copy()
    part[::3, 2:] = -1
    cases = [
        (obs, "sub", 4, {}),
        (obs, "sub", 5, {"bin_spacing": "log", "classes": "all"}),
        (part, "sub", 4, {"classes": "all", "weighting": "prevalence"}),
        (obs, "top", 2, {"filter": "top10"}),
        (part, "top", 3, {"classes": "observed", "discrepancy": "kl"}),
        (obs, "top", 1, {"weighting": "top5_mass"}),
    ]
    # mostly distinct observed rows (the kernel then finds observed orders row by row, not per distinct row)
    few = ranking.Explicit(model.orderings, model.probs[:90])
    distinct = np.array([rng.permutation(n) for _ in range(90)])
    cases += [(distinct, "sub", 4, {"classes": "all"}), (distinct, "sub", 5, {})]
    for data, level, k, opts in cases:
        fn = ranking.subranking_ece if level == "sub" else ranking.topk_ece
        m = few if data.shape[0] == 90 else model
        with get_backend("cpu").active():
            got = fn(m, data, k, **opts)
        with get_backend("reference").active():
            want = fn(m, data, k, **opts)
        assert got.ece == pytest.approx(want.ece, rel=1e-10, abs=1e-14), (level, k, opts)
        assert [r["count"] for r in got.classes] == [r["count"] for r in want.classes]
        assert got.n_skipped == want.n_skipped


def test_classwise_table_and_reliability(host, rng):
    s = rng.normal(size=(50, 4))
    obs = observations(rng, s)
    res = ranking.subranking_ece(s, obs, 2)
    assert len(res.classes) == 12 and res.n_skipped == 0
    rec = res.classes[3]
    rel = res.reliability(rec["cls"])
    assert rel.count.sum() == rec["count"] == 50
    assert rel.ece() == pytest.approx(rec["ece"])
    assert res.to_dict()["classes"][3]["cls"] == list(rec["cls"])
    with pytest.raises(KeyError):
        res.reliability((3, 3))


def test_observed_classes_and_filters_match_enumeration(host, rng):
    n, n_rows = 4, 80
    s = rng.normal(size=(n_rows, n))
    obs = observations(rng, s)
    res = ranking.topk_ece(s, obs, 2, classes="observed")
    seen = {tuple(r[:2]) for r in obs.tolist()}
    assert {r["cls"] for r in res.classes} == seen
    # filter: rows whose ordering is among the 10 most frequent; probabilities summed over retained orderings
    uniq, first, counts = np.unique(obs, axis=0, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))[:10]
    retained = [tuple(u) for u in uniq[order]]
    keep = np.array([tuple(r) in retained for r in obs.tolist()])
    table = np.array([[pl_prob(row, o) for o in retained] for row in s[keep]])
    eces = []
    for cls in itertools.permutations(range(n), 2):
        sat = np.array([satisfies(list(o), cls, False) for o in retained], float)
        y = np.array([satisfies(list(r), cls, False) for r in obs[keep]], float)
        eces.append(binary_ece(y, table @ sat))
    got = ranking.subranking_ece(s, obs, 2, filter="top10")
    assert got.ece == pytest.approx(np.mean(eces), rel=1e-9)
    assert sum(r["count"] for r in got.classes) == keep.sum() * 12


# ----------------------------------------------------------------------------- the reference's 3-item cases
def ranks_from(orders):
    return np.argsort(orders, axis=1)


ALL3 = np.array(all_orders(3))


def test_reference_examples(host):
    # SPEC items 0..2 are the reference code's 1..3
    probs = np.array([2 / 6, 1 / 12, 1 / 12, 1 / 12, 1 / 12, 2 / 6])
    m = ranking.Explicit(ALL3, np.tile(probs, (6, 1)))
    assert ranking.subranking_ece(m, ALL3, 2).ece == pytest.approx(0.0, abs=1e-12)
    m2 = ranking.Explicit(ALL3, np.tile([1 / 3, 0, 0, 0, 0, 2 / 3], (6, 1)))
    # every pair is predicted 1/3 or 2/3 and observed half the time: each class is off by 1/6
    assert ranking.subranking_ece(m2, ALL3, 2).ece == pytest.approx(1 / 6, abs=1e-12)
    m3 = ranking.Explicit(ALL3, np.tile([1 / 3, 0, 0, 1 / 3, 0, 1 / 3], (6, 1)))
    assert ranking.topk_ece(m3, ALL3, 1).ece == pytest.approx(0.0, abs=1e-12)
    assert ranking.topk_ece(m3, ALL3, 2).ece > 1e-6
    # the same observations given as ranks per item
    assert ranking.subranking_ece(m2, observed_ranks=ranks_from(ALL3), k=2).ece == pytest.approx(
        1 / 6, abs=1e-12
    )


# ---------------------------------------------------------------------------------------- top label
def brute_top_label(model, obs, k, level, n_bins=15):
    n = obs.shape[1]
    orders, probs = table_of(model, n)
    conf, hit = [], []
    for b, r in enumerate(obs.tolist()):
        if level == "sub":
            for a in itertools.combinations(range(n), k):
                cand = list(itertools.permutations(a))
                ps = [sum(probs[b, i] for i, o in enumerate(orders) if satisfies(o, c, False)) for c in cand]
                best = int(np.argmax(ps))
                conf.append(ps[best])
                hit.append(satisfies(r, cand[best], False))
        else:
            cand = (
                list(itertools.permutations(range(n), k))
                if level == "top"
                else list(itertools.combinations(range(n), k))
            )
            if level == "top":
                ps = [sum(probs[b, i] for i, o in enumerate(orders) if o[:k] == c) for c in cand]
            else:
                ps = [
                    sum(probs[b, i] for i, o in enumerate(orders) if tuple(sorted(o[:k])) == c) for c in cand
                ]
            best = int(np.argmax(np.round(ps, 12)))
            conf.append(ps[best])
            hit.append(tuple(r[:k]) == cand[best] if level == "top" else tuple(sorted(r[:k])) == cand[best])
    conf, hit = np.array(conf), np.array(hit, float)
    return binary_ece(hit, conf, n_bins=n_bins), hit.mean(), conf.mean()


@pytest.mark.parametrize("model_kind", ["pl", "explicit"])
def test_top_label_matches_enumeration(host, rng, model_kind):
    n, n_rows = 4, 30
    s = rng.normal(size=(n_rows, n)) * 2
    model = ranking.PL(s) if model_kind == "pl" else random_explicit(rng, n_rows, n)
    obs = observations(rng, s)
    for k in (2, 3):
        got = ranking.subranking_ece(model, obs, k, kind="top_label")
        ece, acc, conf = brute_top_label(model, obs, k, "sub")
        assert (got.ece, got.accuracy, got.mean_confidence) == pytest.approx(
            (ece, acc, conf), rel=1e-9, abs=1e-12
        )
        assert got.n_events == n_rows * math.comb(n, k)
    for k in (1, 2, 3):
        got = ranking.topk_ece(model, obs, k, kind="top_label")
        assert (got.ece, got.accuracy, got.mean_confidence) == pytest.approx(
            brute_top_label(model, obs, k, "top"), rel=1e-9, abs=1e-12
        )
    for k in (1, 2):
        got = ranking.topk_ece(model, obs, k, kind="top_label", ordered=False)
        assert (got.ece, got.accuracy, got.mean_confidence) == pytest.approx(
            brute_top_label(model, obs, k, "set"), rel=1e-9, abs=1e-12
        )
    full = ranking.full_ece(model, obs)
    assert full.ece == pytest.approx(brute_top_label(model, obs, n - 1, "top")[0], rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------------------- canonical
def brute_kernel(probs, labels, h=1.0):
    n, c = probs.shape
    y = np.eye(c)[labels]
    alpha = probs / h + 1
    out = 0.0
    for j in range(n):
        logk = np.array(
            [
                math.lgamma(alpha[i].sum())
                - sum(math.lgamma(a) for a in alpha[i])
                + ((alpha[i] - 1) * np.log(np.maximum(probs[j], 1e-8))).sum()
                for i in range(n)
            ]
        )
        logk[j] = -np.inf
        w = np.exp(logk - logk.max())
        cond = w @ y / (w.sum() + 1e-8)
        out += np.abs(cond - probs[j]).sum()
    return out / n


def test_canonical_kernel_matches_loops(host, rng):
    n, n_rows = 4, 30
    s = rng.normal(size=(n_rows, n))
    obs = observations(rng, s)
    orders, probs = table_of(ranking.PL(s), n)
    per = []
    for a in itertools.combinations(range(n), 2):
        cls = list(itertools.permutations(a))
        p = np.stack([probs @ np.array([satisfies(o, c, False) for o in orders], float) for c in cls], axis=1)
        lab = np.array([[satisfies(list(r), c, False) for c in cls].index(True) for r in obs])
        per.append(brute_kernel(p, lab))
    got = ranking.subranking_ece(s, obs, 2, kind="canonical")
    assert got.ece == pytest.approx(np.mean(per), rel=1e-9)
    assert len(got.per_subset) == 6
    cls = list(itertools.permutations(range(n), 1))
    p = np.stack([probs @ np.array([o[:1] == c for o in orders], float) for c in cls], axis=1)
    lab = obs[:, 0]
    assert ranking.topk_ece(s, obs, 1, kind="canonical").ece == pytest.approx(brute_kernel(p, lab), rel=1e-9)


def test_one_model_with_per_row_choice_sets(host, rng):
    """ranking.PL(scores (n,), mask (N, n)): every level, positions included, as the scores tiled."""
    g = rng.normal(size=5)
    mask = rng.random((40, 5)) < 0.8
    mask[:, :2] = True
    obs = pl_sample_rows(g, mask, rng)
    one, tiled = ranking.PL(g, mask), ranking.PL(np.tile(g, (40, 1)), mask)
    want = ranking.marginal_ece(tiled, obs).ece
    assert ranking.marginal_ece(one, obs).ece == pytest.approx(want, rel=1e-12)
    assert ranking.marginal_ece(one, obs, k=2).ece == pytest.approx(
        ranking.marginal_ece(tiled, obs, k=2).ece, rel=1e-12
    )
    a, b = ranking.report(one, obs).to_dict(), ranking.report(tiled, obs).to_dict()
    assert a.keys() == b.keys() and "positions" in a
    for level in a:
        assert a[level]["ece"] == pytest.approx(b[level]["ece"], rel=1e-12, nan_ok=True)


def pl_sample_rows(g, mask, rng):
    seed = int(rng.integers(1 << 30))
    return np.asarray(prefcal.pl.sample(np.tile(g, (mask.shape[0], 1)), mask=mask, seed=seed)[:, 0])


def test_infinite_observed_rank_is_a_rank(host, rng):
    """+inf in observed_ranks is a rank after every finite one (ties with another +inf), not 'unavailable':
    the same results as with any finite value above the row's others."""
    s = rng.normal(size=(60, 4))
    ranks = rng.integers(0, 4, size=(60, 4)).astype(float)
    ranks[rng.random((60, 4)) < 0.1] = np.nan
    big = np.where(rng.random((60, 4)) < 0.3, np.inf, ranks)
    finite = np.where(np.isinf(big), 1e300, big)
    mask = rng.random((60, 4)) < 0.9
    for model in (s, ranking.PL(s, mask)):
        for fn in (
            lambda o, model=model: ranking.subranking_ece(model, observed_ranks=o, k=2),
            lambda o, model=model: ranking.topk_ece(model, observed_ranks=o, k=1),
            lambda o, model=model: ranking.marginal_ece(model, observed_ranks=o),
        ):
            a, b = fn(big), fn(finite)
            assert a.ece == b.ece and a.n_skipped == b.n_skipped and a.n_events == b.n_events


def test_levels_that_nothing_decides(host, rng):
    """Top-2 observations of 4 items decide no event of the full ordering: one level alone is a ValueError
    whatever its kind (classwise used to return NaN); report's and sweep's defaults leave such levels out."""
    s = rng.normal(size=(30, 4))
    top2 = np.argsort(-s + rng.gumbel(size=s.shape), axis=1)
    top2[:, 2:] = -1
    for kind in ranking.KINDS:
        with pytest.raises(ValueError, match="undetermined"):
            ranking.full_ece(s, top2, kind=kind)
    rep = ranking.report(s, top2)
    assert list(rep.levels) == ["sub2", "sub3", "top1", "top2", "positions"]
    assert rep.levels["sub2"].ece == ranking.subranking_ece(s, top2, 2).ece
    with pytest.raises(ValueError, match="undetermined"):
        ranking.report(s, top2, levels=("sub2", "full"))
    assert [(r["level"], r["k"]) for r in ranking.sweep(s, top2).records] == [
        ("sub", 2), ("sub", 3), ("top", 1), ("top", 2)
    ]
    # nothing decided at any level (every rank unknown): an error, not an empty report
    unknown = np.full((30, 4), np.nan)
    for call in (
        lambda: ranking.report(s, observed_ranks=unknown),
        lambda: ranking.sweep(s, observed_ranks=unknown),
    ):
        with pytest.raises(ValueError, match="every event of every level is undetermined"):
            call()
    # uint64 items past int64 would read as -1 (padding): refused here too
    big = np.argsort(-s, axis=1).astype(np.uint64)
    big[3, 1] = 2**64 - 1
    for call in (lambda: ranking.subranking_ece(s, big, 2), lambda: ranking.report(s, big)):
        with pytest.raises(ValueError, match=r"rankings\[3, 1\] = 18446744073709551615 is out of range"):
            call()


def test_options_are_checked_whatever_the_kind(host, rng):
    s = rng.normal(size=(20, 3))
    obs = np.argsort(-s, axis=1)
    for kind in ranking.KINDS:
        for opt, bad in (("weighting", "bogus"), ("discrepancy", "bogus"), ("bin_spacing", "bogus"),
                         ("estimator", "bogus"), ("classes", "bogus"), ("filter", "bogus")):
            with pytest.raises(ValueError, match=opt):
                ranking.subranking_ece(s, obs, 2, kind=kind, **{opt: bad})
    for kind in ("top_label", "canonical"):  # the paper's filters are defined for the classwise kind only
        with pytest.raises(ValueError, match="filter='top10' applies to kind='classwise' only"):
            ranking.full_ece(s, obs, kind=kind, filter="top10")


def test_canonical_kernel_with_one_decided_row_is_undefined(host):
    # leave-one-out of a single decided row leaves nothing to estimate E[y | f] from: NaN for that subset (the
    # paper's code gives NaN), left out of the mean; a level of only such subsets has nothing to calibrate
    with pytest.raises(ValueError, match="undetermined"):
        ranking.subranking_ece(np.array([[1.0, 0.0, -1.0]]), np.array([[0, 1, 2]]), 2, kind="canonical")
    s = np.array([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
    ranks = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 1.0]])
    got = ranking.subranking_ece(s, observed_ranks=ranks, k=2, kind="canonical")
    assert math.isnan(got.per_subset[(0, 1)])  # the tie leaves one decided row
    finite = [v for v in got.per_subset.values() if not math.isnan(v)]
    assert len(finite) == 2 and got.ece == pytest.approx(np.mean(finite), rel=1e-12)
    for a in ((0, 2), (1, 2)):
        p = 1 / (1 + np.exp(s[:, a[1]] - s[:, a[0]]))
        want = brute_kernel(np.stack([p, 1 - p], axis=1), np.zeros(2, int))
        assert got.per_subset[a] == pytest.approx(want)


def test_canonical_binning(host, rng):
    s = rng.normal(size=(200, 3))
    obs = observations(rng, s)
    got = ranking.subranking_ece(s, obs, 2, kind="canonical", estimator="binning")
    # sub-2 of items (a, b): classes (a, b), (b, a); bin by the first probability's tenth
    per = []
    for a, b in itertools.combinations(range(3), 2):
        p = 1 / (1 + np.exp(s[:, b] - s[:, a]))
        y = (np.argsort(obs, axis=1)[:, a] < np.argsort(obs, axis=1)[:, b]).astype(float)
        idx = np.minimum((p * 10).astype(int), 9)
        tot = 0.0
        for i in range(10):
            m = idx == i
            if m.any():
                tot += m.sum() / len(p) * 2 * abs(p[m].mean() - y[m].mean())
        per.append(tot)
    assert got.ece == pytest.approx(np.mean(per), rel=1e-9)
    with pytest.raises(ValueError, match="2 or 3 classes"):
        ranking.subranking_ece(s, obs, 3, kind="canonical", estimator="binning")
    # decimal probabilities on bin edges: floor(p B) (0.3 in bin 3, as the reference code's float32 p / 0.1;
    # p / 0.1 in float64 put it in bin 2, with 0.25, and gave 0.45): bins {0.3}, {0.25}, each |p - y| = 0.7, 0.25
    two = ranking.Explicit(np.array([[0, 1], [1, 0]]), np.array([[0.3, 0.7], [0.25, 0.75]]))
    got = ranking.subranking_ece(two, np.array([[0, 1], [1, 0]]), 2, kind="canonical", estimator="binning")
    assert got.ece == pytest.approx(0.5 * 2 * 0.7 + 0.5 * 2 * 0.25, rel=1e-12)


# ------------------------------------------------------------------------- calibrated vs sharpened data
def test_calibrated_data_gives_small_errors_and_sharpening_larger(host, rng):
    n, n_rows = 4, 20000
    s = rng.normal(size=(n_rows, n))
    obs = observations(rng, s)
    for fn, k in ((ranking.subranking_ece, 2), (ranking.topk_ece, 1), (ranking.topk_ece, 2)):
        cal = fn(s, obs, k)
        sharp = fn(s * 2.5, obs, k)
        for rec in cal.classes:
            t = cal.reliability(rec["cls"])
            nb = np.maximum(t.count, 1)
            q = t.sum_confidence / nb
            bound = (t.count / t.count.sum() * 4 * np.sqrt(q * (1 - q) / nb)).sum()
            assert rec["ece"] <= bound + 1e-3, (fn.__name__, k, rec)
        assert sharp.ece > 2 * cal.ece
    tl = ranking.topk_ece(s, obs, 1, kind="top_label")
    assert tl.ece < 0.02
    assert ranking.topk_ece(s * 2.5, obs, 1, kind="top_label").ece > 0.05


# ------------------------------------------------------------------------------- undetermined events
def test_partial_orderings_skip_undetermined_events(host):
    s = np.zeros((2, 3))
    obs = np.array([[0, -1, -1], [2, 1, 0]])
    res = ranking.subranking_ece(s, obs, 2)
    counts = {r["cls"]: r["count"] for r in res.classes}
    # row 0 only says 0 is first: pair (1, 2) is undetermined there
    assert counts[(1, 2)] == counts[(2, 1)] == 1
    assert counts[(0, 1)] == counts[(2, 0)] == 2
    assert res.n_skipped == 2
    top = ranking.topk_ece(s, obs, 2)
    assert top.n_skipped == 6  # row 0's top-2 is unknown for every one of the 6 classes
    assert ranking.topk_ece(s, obs, 1).n_skipped == 0


def test_ties_and_unknown_ranks(host):
    s = np.zeros((3, 3))
    ranks = np.array([[1.0, 1.0, 2.0], [0.0, np.nan, 1.0], [2.0, 1.0, 0.0]])
    res = ranking.subranking_ece(s, observed_ranks=ranks, k=2)
    counts = {r["cls"]: r["count"] for r in res.classes}
    assert counts[(0, 1)] == 1  # tied in row 0, unknown in row 1
    assert counts[(0, 2)] == 3
    assert counts[(1, 2)] == 2
    top = ranking.topk_ece(s, observed_ranks=ranks, k=1, kind="top_label")
    assert top.n_skipped == 2 and top.n_events == 1  # a tie at the top, an unknown item
    assert ranking.topk_ece(s, observed_ranks=ranks, k=2, kind="top_label", ordered=False).n_events == 2


def test_mask_leaves_unavailable_items_out(host, rng):
    s = rng.normal(size=(30, 4))
    mask = np.ones((30, 4), bool)
    mask[:, 3] = False
    obs = observations(rng, np.where(mask, s, -50.0))[:, :3]
    got = ranking.subranking_ece(ranking.PL(s, mask), obs, 2)
    want = ranking.subranking_ece(s[:, :3], obs, 2)
    by = {r["cls"]: r for r in got.classes}
    for r in want.classes:
        assert by[r["cls"]]["ece"] == pytest.approx(r["ece"], rel=1e-12)
    assert all(by[c]["count"] == 0 for c in by if 3 in c)


def test_empirical_equals_explicit_frequencies(host, rng):
    n, n_rows, size = 3, 25, 37  # 37 draws: no frequency lands on a bin edge
    s = rng.normal(size=(n_rows, n))
    samples = np.asarray(prefcal.pl.sample(s, size=size, seed=3))
    orders = np.array(all_orders(n))
    freq = np.stack([(samples == o).all(axis=2).mean(axis=1) for o in orders], axis=1)
    obs = observations(rng, s)
    a = ranking.subranking_ece(ranking.Empirical(samples), obs, 2)
    b = ranking.subranking_ece(ranking.Explicit(orders, freq), obs, 2)
    assert a.ece == pytest.approx(b.ece, rel=1e-12)
    c = ranking.topk_ece(ranking.Empirical(samples), obs, 1, kind="top_label")
    d = ranking.topk_ece(ranking.Explicit(orders, freq), obs, 1, kind="top_label")
    assert c.ece == pytest.approx(d.ece, rel=1e-12)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_sample_counting_kernel_equals_the_reference(rng, mode):
    """The C++ event probabilities of an empirical model (the fractions of its samples) against the
    reference's."""
    cpu = _backend.cpu_module()
    if cpu is None:
        pytest.skip("the C++ module is not built")
    n, rows, size = 6, 40, 23
    samples = np.asarray(prefcal.pl.sample(rng.normal(size=(rows, n)), size=size, seed=5), dtype=np.int64)
    for k in (1, 2, 3, n):
        if mode == 0 and k == 1:
            continue
        classes = _reference.all_classes(n, k, mode != 0)
        if mode == 2:
            classes = np.unique(np.sort(classes, axis=1), axis=0).astype(np.int32)
        classes = classes[rng.permutation(len(classes))[:50]]  # any subset, in any order
        want = _reference._event_or_set_probs(("empirical", samples), classes.astype(np.intp), mode)
        got = cpu.rank_sample_probs(samples, np.ascontiguousarray(classes, dtype=np.int32), mode)
        np.testing.assert_array_equal(got, want)
    bad = samples.copy()
    bad[7, 3, 1] = bad[7, 3, 0]
    with pytest.raises(ValueError, match="row 7 are not permutations"):
        cpu.rank_sample_probs(bad, np.zeros((1, 2), np.int32), 0)


def test_observed_top_prefixes_in_cpp_equal_the_reference(rng):
    """The C++ scan for the observed top-k classes (a code per row, -1 undecided) against the reference's
    observed_prefix, with ties, unavailable (+inf) and unknown (NaN) keys."""
    cpu = _backend.cpu_module()
    if cpu is None:
        pytest.skip("the C++ module is not built")
    n, rows = 7, 600
    keys = rng.integers(0, 5, size=(rows, n)).astype(np.float64)
    keys[rng.random((rows, n)) < 0.15] = np.inf
    keys[rng.random((rows, n)) < 0.03] = np.nan
    keys[:200] = np.argsort(rng.random((200, n)), axis=1)  # no ties
    for k in range(1, n + 1):
        prefix, ok = _reference.observed_prefix(keys, k)
        base = np.int64(n) ** np.arange(k - 1, -1, -1, dtype=np.int64)
        np.testing.assert_array_equal(cpu.rank_observed_tops(keys, k), np.where(ok, prefix @ base, -1))
    obs = np.argsort(keys[:200], axis=1)
    got = ranking.topk_ece(rng.normal(size=(200, n)), obs[:, :3], 2, classes="observed")
    assert [c["cls"] for c in got.classes] == sorted({tuple(int(v) for v in o[:2]) for o in obs})


def test_empirical_models_on_the_cpu_equal_the_reference(rng):
    """Every measure of an empirical model: the C++ route (samples counted in C++, binned by the classwise
    kernel) against the pure-NumPy reference."""
    if _backend.cpu_module() is None:
        pytest.skip("the C++ module is not built")
    n, rows, size = 5, 60, 31
    s = rng.normal(size=(rows, n))
    model = ranking.Empirical(np.asarray(prefcal.pl.sample(s, size=size, seed=11)))
    full = observations(rng, s)
    obs = full.copy()
    obs[::7, 2:] = -1  # partial observations

    def measures():
        return [
            ranking.subranking_ece(model, obs, 2).ece,
            ranking.subranking_ece(model, obs, 3, classes="observed", weighting="prevalence").ece,
            ranking.subranking_ece(model, obs, 2, kind="top_label").ece,
            ranking.subranking_ece(model, obs, 2, kind="canonical").ece,
            ranking.topk_ece(model, obs, 1).ece,
            ranking.topk_ece(model, obs, 2, kind="top_label").ece,
            ranking.topk_ece(model, obs, 2, kind="top_label", ordered=False).ece,
            ranking.topk_ece(model, obs[:, :2], 2, discrepancy="kl", bin_spacing="log").ece,
            ranking.full_ece(model, full).ece,
            ranking.subranking_ece(model, full, 2, filter="mass95").ece,
            ranking.topk_ece(model, full, 1, filter="top10").ece,
        ]

    got = measures()
    with get_backend("reference").active():
        want = measures()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------- marginal events
def test_marginal_ece_matches_loops(host, rng):
    n, n_rows = 4, 50
    s = rng.normal(size=(n_rows, n))
    obs = observations(rng, s)
    orders, probs = table_of(ranking.PL(s), n)
    pos = np.zeros((n_rows, n, n))
    for c, o in enumerate(orders):
        for j, i in enumerate(o):
            pos[:, i, j] += probs[:, c]
    truth = np.zeros((n_rows, n, n))
    for b, r in enumerate(obs):
        truth[b, r, np.arange(n)] = 1
    got = ranking.marginal_ece(s, obs)
    assert got.n_events == n_rows * n * n
    assert got.ece == pytest.approx(binary_ece(truth.ravel(), pos.ravel(), n_bins=15), rel=1e-7)
    top2 = ranking.marginal_ece(s, obs, event="topk", k=2)
    assert top2.ece == pytest.approx(
        binary_ece(truth[:, :, :2].sum(2).ravel(), pos[:, :, :2].sum(2).ravel(), n_bins=15), rel=1e-7
    )


def test_marginal_hist_kernel_matches_reference(rng):
    """The C++ binning of marginal events against the NumPy reference: partial orderings, ties, unknown
    ranks, unavailable items, one shared model and one per row, both events."""
    cpu = _backend.cpu_module()
    if cpu is None:
        pytest.skip("the C++ module is not built")
    for n in (2, 3, 5, 9):
        rows = 300
        keys = rng.integers(0, n, size=(rows, n)).astype(np.float64)  # ties
        keys[rng.random((rows, n)) < 0.1] = np.nan
        keys[rng.random((rows, n)) < 0.1] = np.inf
        keys[::4] = np.argsort(rng.random((rows // 4 + (rows % 4 > 0), n)), axis=1)  # strict orders
        for p_rows in (1, rows):
            pos = rng.dirichlet(np.ones(n), size=(p_rows, n))
            pos[0, 0, 0] = 1.0  # the top edge: the last bin
            for k in range(0, n + 1):
                got, skip = cpu.rank_marginal_hist(pos, keys, k, 7)
                want, wskip = _reference.marginal_hist(pos, keys, k, 7)
                assert skip == wskip
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_allclose(got[1:], want[1:], rtol=1e-12, atol=1e-12)


def test_marginal_ece_blocks_and_mask(host, rng, monkeypatch):
    """Row blocks give the one-block result; a per-row mask and a shared one agree with the explicit table."""
    s = rng.normal(size=(200, 5))
    obs = observations(rng, s)
    whole = ranking.marginal_ece(s, obs)
    monkeypatch.setattr(ranking, "MARGINAL_BLOCK_EVENTS", 7 * 25)  # blocks of 7 rows
    blocks = ranking.marginal_ece(s, obs)
    assert blocks.reliability.count.tolist() == whole.reliability.count.tolist()
    assert blocks.ece == pytest.approx(whole.ece, rel=1e-12, abs=1e-15)
    mask = np.ones(5, dtype=bool)
    mask[3] = False
    obs2 = np.array([[i for i in o if i != 3] + [-1] for o in np.asarray(prefcal.pl.sample(s, seed=4))[:, 0]])
    a = ranking.marginal_ece(ranking.PL(s, mask), obs2)
    b = ranking.marginal_ece(ranking.PL(s, np.broadcast_to(mask, s.shape).copy()), obs2)
    assert a.reliability.count.tolist() == b.reliability.count.tolist()
    assert a.ece == pytest.approx(b.ece, rel=1e-12, abs=1e-15)


# ------------------------------------------------------------------------------------- sweep and report
def test_sweep_and_report(host, rng):
    s = rng.normal(size=(40, 4))
    obs = observations(rng, s)
    t = ranking.sweep(s, obs)
    assert [(r["level"], r["k"]) for r in t.records] == [
        ("sub", 2),
        ("sub", 3),
        ("sub", 4),
        ("top", 1),
        ("top", 2),
        ("top", 3),
    ]
    assert t.records[0]["ece"] == ranking.subranking_ece(s, obs, 2).ece
    assert "| sub | 2 |" in t.to_markdown()
    rep = ranking.report(s, obs)
    assert set(rep.levels) == {"sub2", "sub3", "top1", "top2", "full", "positions"}
    d = rep.to_dict()
    assert d["full"]["kind"] == "top_label" and d["sub2"]["kind"] == "classwise"
    assert "sub2" in rep.to_markdown()
    rep2 = ranking.report(s, obs, levels=("top2_set", "sub2"), kinds={"sub2": "top_label"})
    assert rep2["sub2"].ece == ranking.subranking_ece(s, obs, 2, kind="top_label").ece


# ------------------------------------------------------------------------------------------ rejections
def test_rejections(host):
    s = np.zeros((2, 3))
    obs = np.array([[0, 1, 2], [2, 1, 0]])
    with pytest.raises(ValueError, match="k must be"):
        ranking.subranking_ece(s, obs, 1)
    with pytest.raises(ValueError, match="k must be"):
        ranking.topk_ece(s, obs, 3)
    with pytest.raises(ValueError, match="weighting.*uniform"):
        ranking.subranking_ece(s, obs, 2, weighting="mass")
    with pytest.raises(ValueError, match="discrepancy.*jeff"):
        ranking.subranking_ece(s, obs, 2, discrepancy="l2")
    with pytest.raises(ValueError, match="kind.*canonical"):
        ranking.subranking_ece(s, obs, 2, kind="strong")
    with pytest.raises(ValueError, match="top5_mass"):
        ranking.subranking_ece(s, obs, 2, weighting="top5_mass")
    with pytest.raises(ValueError, match="ordered=False"):
        ranking.topk_ece(s, obs, 1, ordered=False)
    with pytest.raises(ValueError, match=r"rankings\[1\] repeats item 1"):
        ranking.subranking_ece(s, np.array([[0, 1, 2], [1, 1, 0]]), 2)
    with pytest.raises(ValueError, match=r"rankings\[0, 1\] = 5 is out of range"):
        ranking.subranking_ece(s, np.array([[0, 5, 2], [1, 2, 0]]), 2)
    with pytest.raises(TypeError, match="integer"):
        ranking.subranking_ece(s, obs.astype(float), 2)
    with pytest.raises(ValueError, match="3 rows but the observations have 2"):
        ranking.subranking_ece(np.zeros((3, 3)), obs, 2)
    with pytest.raises(ValueError, match="not both"):
        ranking.subranking_ece(s, obs, 2, observed_ranks=obs.astype(float))
    with pytest.raises(ValueError, match="no observations: pass rankings="):
        ranking.subranking_ece(s)
    with pytest.raises(ValueError, match=r"scores contains inf at \[1, 2\]"):
        ranking.subranking_ece(np.array([[0, 0, 0], [0, 0, np.inf]]), obs, 2)
    with pytest.raises(ValueError, match=r"probs\[0, 1\] = 1.5"):
        ranking.Explicit(ALL3[:2], [[0.1, 1.5]])
    with pytest.raises(ValueError, match=r"probs\[1\] sums to"):
        ranking.Explicit(ALL3[:2], [[0.5, 0.5], [0.6, 0.5]])
    with pytest.raises(ValueError, match=r"orderings\[1\] repeats item 0"):
        ranking.Explicit([[0, 1, 2], [0, 0, 1]], [[0.5, 0.5]])
    with pytest.raises(ValueError, match=r"samples\[0, 1\] repeats"):
        ranking.Empirical(np.array([[[0, 1, 2], [2, 2, 0]]]))
    with pytest.raises(ValueError, match=r"samples\[0, 0, 2\] = 7 is out of range"):
        ranking.Empirical(np.array([[[0, 1, 7]]]))
    with pytest.raises(ValueError, match="filter"):
        ranking.subranking_ece(s, obs, 2, filter="top5")
    with pytest.raises(ValueError, match="complete observed orderings"):
        ranking.subranking_ece(s, np.array([[0, -1, -1], [2, 1, 0]]), 2, filter="mass95")
    with pytest.raises(ValueError, match="2 or 3 classes"):
        ranking.topk_ece(
            np.zeros((2, 4)), np.array([[0, 1, 2, 3]] * 2), 1, kind="canonical", estimator="binning"
        )
    with pytest.raises(ValueError, match="level"):
        ranking.report(s, obs, levels=("sub9",))
    with pytest.raises(ValueError, match="undetermined"):
        ranking.topk_ece(s, np.array([[-1, -1, -1], [-1, -1, -1]]), 1, kind="top_label")
    with pytest.raises(TypeError, match="dict"):
        ranking.subranking_ece({(0, 1, 2): [1.0, 1.0]}, obs, 2)


def test_pairs_and_top1_calibration_are_different_properties(host, rng):
    """Observed orderings are uniform over the 6 orderings of 3 items. A model with all its mass on 012 and
    210 gets every pair right (1/2) and the winner wrong (1/2, 0, 1/2 vs 1/3); one uniform over the cyclic
    rotations gets the winner right (1/3 each) and every pair wrong (2/3 or 1/3 vs 1/2): sub-2 and top-1
    calibration do not imply each other (Thies et al.)."""
    n_rows = 6000
    obs = np.array([rng.permutation(3) for _ in range(n_rows)])
    ends = ranking.Explicit([[0, 1, 2], [2, 1, 0]], np.full((n_rows, 2), 0.5))
    cycles = ranking.Explicit([[0, 1, 2], [1, 2, 0], [2, 0, 1]], np.full((n_rows, 3), 1 / 3))
    se = 4 * math.sqrt(0.25 / n_rows)  # four binomial standard errors of a frequency near 1/2
    assert ranking.subranking_ece(ends, obs, 2).ece < se
    assert ranking.topk_ece(ends, obs, 1).ece == pytest.approx(2 / 9, abs=se)
    assert ranking.topk_ece(cycles, obs, 1).ece < se
    assert ranking.subranking_ece(cycles, obs, 2).ece == pytest.approx(1 / 6, abs=se)


def test_results_print_in_a_line_and_a_report_as_a_table():
    s = np.array([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
    rep = ranking.report(s, np.array([[0, 1, 2], [2, 1, 0]]))
    assert repr(rep).startswith("Report(sub2=") and "\n" not in repr(rep) and "array" not in repr(rep)
    assert str(rep) == rep.to_markdown()
    rel = rep.levels["full"].reliability
    assert repr(rel) == f"Reliability(15 uniform bins, total 2, ece={rel.ece():.6g})"
    assert "array" not in repr(rep.levels["full"])
