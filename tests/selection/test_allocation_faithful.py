"""``allocation: faithful`` against the published function, user for user.

Reference: ``tests/published/user_select_reference.py``, the published
``select_users_with_clustering_and_variance_sampling`` (Kimagure7/Dont-Start-Over 9d85839,
``utils/user_select.py``) step for step on pandas, after its k-means: both sides get the same cluster
labels, the same per-user variances (pandas' ``groupby().var()``, NaN for single-rating users) and the
same ``random_state``. They must return the same users in the same order, and so the same counts per
cluster, per variance group and per pass, the same random top-up and the same final cut.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pandas as pd  # a test dependency (setup.cfg [test]): missing is a failure, not a skip
import pytest
from published.user_select_reference import clustering_and_score_sampling

from puma_lightning.selection import SelectionContext, select_users
from puma_lightning.selection.faithful import faithful_allocation, published_variance
from puma_lightning.selection.published import quantile_bins
from puma_lightning.selection.published import pandas_group_variance


def _edges_of(version: str) -> str:
    """The ``qcut_edges`` variant of ``faithful_allocation`` that a pandas version uses."""
    major, minor = (int(x) for x in version.split(".")[:2])
    return "pandas3" if major >= 3 else "pandas2.2" if minor >= 2 else "pandas2.0"


PANDAS_EDGES = _edges_of(pd.__version__)


def np_qcut(values: np.ndarray, q: int) -> np.ndarray:
    """pandas 2.2's ``qcut(values, q, labels=False, duplicates='drop')`` with plain loops (NaN = no label)."""
    x = np.asarray(values, dtype=np.float64)
    out = np.full(x.size, np.nan)
    finite = x[~np.isnan(x)]
    if finite.size == 0:
        return out
    bins = list(np.percentile(finite, np.linspace(0, 1, q + 1) * 100.0))  # Series.quantile -> np.percentile
    if len(set(bins)) < len(bins) and len(bins) != 2:  # duplicates='drop'
        bins = sorted(set(bins))
    for i, v in enumerate(x):
        if np.isnan(v):
            continue
        for k in range(len(bins) - 1):  # right-closed (bins[k], bins[k+1]], lowest edge included
            if bins[k] < v <= bins[k + 1] or (k == 0 and v == bins[0]):
                out[i] = k
                break
    return out




def labels_of(sizes) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def random_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    """Scores with many ties and some NaN, like label variances of integer ratings."""
    kind = rng.integers(5)
    if kind == 0:
        v = rng.random(n) if rng.random() < 0.5 else np.round(rng.random(n), 1)
    elif kind == 1:
        v = rng.choice([0.0, 0.5, 1 / 3, 2 / 3, 1.0, 2.0, 4.5], size=n, p=[.3, .3, .1, .1, .1, .05, .05])
    elif kind == 2:
        v = rng.choice([0.0, 0.5], size=n)
    elif kind == 3:
        v = np.full(n, 0.5)
    else:  # pandas variances of integer ratings: equal in exact arithmetic, apart in the last bit
        users = np.repeat(np.arange(n), rng.integers(1, 9, size=n))
        ratings = rng.integers(1, 6, size=users.size).astype(float)
        return pd.DataFrame({"u": users, "r": ratings}).groupby("u")["r"].var().to_numpy()
    v[rng.random(n) < rng.choice([0.0, 0.2, 0.9])] = np.nan
    return v


# --------------------------------------------------------------------------- qcut semantics

QCUT_OBSERVED = [  # pd.qcut(x, 5, labels=False, duplicates='drop'), pandas 2.2.3 and 3.1.1 (NaN -> -1)
    ([1.0] * 7, [-1] * 7),  # all equal: every edge coincides, nothing is labelled
    ([2.0], [-1]),
    ([np.nan] * 3, [-1] * 3),
    ([np.nan, 1.0], [-1, -1]),
    ([0.0, 10.0], [0, 4]),  # empty middle bins: labels 0 and 4 (nunique 2)
    ([0, 0, 0, 0, 1, 1, 2, 3.0], [0, 0, 0, 0, 0, 0, 2, 2]),  # ties collapse bins; labels 0 and 2
    ([np.nan, 0.5, 1, 2, 3, 4, 5, np.nan], [-1, 0, 0, 1, 2, 3, 4, -1]),
    ([0.0] * 9 + [10.0], [0] * 10),
    ([0, 5, 10.0], [0, 2, 4]),
]


@pytest.mark.parametrize("values,labels", QCUT_OBSERVED)
def test_qcut_semantics_pinned(values, labels):
    assert quantile_bins(np.array(values), 5).tolist() == labels
    assert np.nan_to_num(np_qcut(np.array(values), 5), nan=-1).astype(int).tolist() == labels


QCUT_BY_VERSION = [  # inputs on which pandas versions disagree (edges one ulp apart move tied users)
    # (values, q, {variant: labels}); 2.2 and 3 observed with pandas 2.2.3 / 3.1.1, 2.0 read from its source
    ([0.1, 0.3, 0.3, 0.5], 3, {"pandas2.2": [0, 1, 1, 2], "pandas2.0": [0, 0, 0, 1], "pandas3": [0, 0, 0, 1]}),
    ([0.4, 0.5, 0.7, 0.7, 0.8, 0.8], 5,
     {"pandas2.2": [0, 0, 1, 1, 2, 2], "pandas2.0": [0, 0, 1, 1, 2, 2], "pandas3": [0, 0, 1, 1, 3, 3]}),
]


@pytest.mark.parametrize("values,q,by_version", QCUT_BY_VERSION)
def test_qcut_edges_by_pandas_version(values, q, by_version):
    for edges, labels in by_version.items():
        assert quantile_bins(np.array(values), q, edges).tolist() == labels, edges
    assert np.nan_to_num(np_qcut(np.array(values), q), nan=-1).astype(int).tolist() == by_version["pandas2.2"]
    with pytest.raises(ValueError, match="edges"):
        quantile_bins(np.array(values), q, "pandas1")


def test_qcut_matches_installed_pandas():
    pytest.importorskip("pandas")
    rng = np.random.default_rng(7)
    for _ in range(400):
        v, q = random_scores(rng, int(rng.integers(1, 60))), int(rng.integers(1, 9))
        ref = pd.qcut(pd.Series(v), q=q, labels=False, duplicates="drop").fillna(-1).astype(int).tolist()
        assert quantile_bins(v, q, PANDAS_EDGES).tolist() == ref
        if PANDAS_EDGES == "pandas2.2":
            assert np.nan_to_num(np_qcut(v, q), nan=-1).astype(int).tolist() == ref


def test_published_variance_nan_for_single_rating_and_never_rounded():
    var = published_variance(np.array([0.0, 0.5, 0.0, 1 / 3 + 1e-15]), np.array([1, 2, 5, 3]))
    assert np.isnan(var[0]) and var[1] == 0.5 and var[2] == 0.0 and var[3] == 1 / 3 + 1e-15


def test_pandas_group_variance_bit_for_bit():
    rng = np.random.default_rng(0)
    for ratings in (rng.integers(1, 6, 6000).astype(float), rng.random(6000) * 4, rng.integers(0, 2, 6000) * 1.0):
        users = rng.integers(0, 500, ratings.size)
        ref = pd.DataFrame({"u": users, "r": ratings}).groupby("u")["r"].var().reindex(range(502)).to_numpy()
        assert np.array_equal(pandas_group_variance(users, ratings, 502), ref, equal_nan=True)
    # the last bit is what moves tied users between groups: two-pass and pandas' Welford differ there
    a = pd.Series([3.0, 2.0, 2.0, 3.0, 2.0, 3.0, 1.4]).var()
    assert pandas_group_variance(np.zeros(7, int), np.array([3.0, 2.0, 2.0, 3.0, 2.0, 3.0, 1.4]), 1)[0] == a


# --------------------------------------------------------------------------- user for user against the reference


def run_reference(score, clusters, budget, **kw):
    """The reference (pandas' chained-assignment warnings silenced): (selected, trace)."""
    trace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selected = clustering_and_score_sampling(score, clusters, budget, num_clusters=int(np.max(clusters)) + 1,
                                                 trace=trace, **kw)
    return selected, trace


def reference_counts(selected, trace, n_clusters) -> dict:
    """The reference's counts after its final cut, in FaithfulAllocation's layout."""
    kept = Counter(trace["tag"][u] for u in selected)
    out: dict = {"n_random_topup": kept[("topup", -1, -1)]}
    for name in ("first", "second"):
        out[f"{name}_quota"] = [trace["quota"].get((name, c), 0) for c in range(n_clusters)]
        out[f"{name}_bins"] = [[kept[(name, c, g)] for g in range(trace["groups"].get((name, c), 0))]
                               for c in range(n_clusters)]
        out[f"{name}_pass"] = [sum(b) for b in out[f"{name}_bins"]]
    out["n_truncated"] = len(trace["tag"]) - len(selected)
    return out


def package_counts(res) -> dict:
    return {"n_random_topup": res.n_random_topup, "first_quota": res.first_quota, "first_bins": res.first_bins,
            "first_pass": res.first_pass, "second_quota": res.second_quota, "second_bins": res.second_bins,
            "second_pass": res.second_pass, "n_truncated": res.n_truncated}


def compare(score, clusters, budget, random_state=42, num_groups=5, min_users_per_cluster=50, weight_type="normal"):
    """Assert the package and the reference agree user for user and on every count; return the counts."""
    clusters = np.asarray(clusters)
    kw = {"num_groups": num_groups, "min_users_per_cluster": min_users_per_cluster, "weight_type": weight_type,
          "random_state": random_state}
    res = faithful_allocation(clusters, score, budget, random_state, n_bins=num_groups, weight_type=weight_type,
                              min_per_cluster=min_users_per_cluster, qcut_edges=PANDAS_EDGES)
    if budget > clusters.size:  # the published top-up samples more users than are left and raises
        assert res.budget_exceeds_users and np.array_equal(np.sort(res.selected), np.arange(clusters.size))
        trace: dict = {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clustering_and_score_sampling(score, clusters, budget, num_clusters=int(clusters.max()) + 1,
                                              trace=trace, **kw)
        except ValueError as exc:  # the crash, unless the passes already took every user
            assert "larger sample" in str(exc)
        passes = [u for u, t in trace["tag"].items() if t[0] != "topup"]
        assert res.selected[:len(passes)].tolist() == passes  # identical up to the published crash
        return {"over_n": True}
    selected, trace = run_reference(score, clusters, budget, **kw)
    expected = reference_counts(selected, trace, int(clusters.max()) + 1)
    assert res.selected.tolist() == [int(u) for u in selected]
    assert package_counts(res) == expected
    return expected


@pytest.mark.parametrize("weight_type", ["normal", "uniform"])
def test_hand_traced_small_case(weight_type):
    # Sizes 300/140/60, min 20, budget 100, distinct variances (5 bins of equal size everywhere).
    # First pass ("normal"): floor(w * 20) = [1, 4, 7, 4] + rest 4 -> [1, 4, 7, 4, 4] per cluster, remaining 40
    # ("uniform": [4] * 5). Second (always "normal"): int(40*.6) = 24 -> [1, 5, 8, 5] + 5;
    # int(16*.28) = 4 -> [0, 0, 1, 0] + 3; int(12*.12) = 1 -> [0, 0, 0, 0, 1]; 100 - 89 = 11 random users.
    var = np.random.default_rng(1).random(500)
    got = compare(var, labels_of([300, 140, 60]), 100, min_users_per_cluster=20, weight_type=weight_type)
    assert got["first_bins"] == [[1, 4, 7, 4, 4] if weight_type == "normal" else [4] * 5] * 3
    assert got["second_bins"] == [[1, 5, 8, 5, 5], [0, 0, 1, 0, 3], [0, 0, 0, 0, 1]]
    assert got["second_quota"] == [24, 4, 1] and got["n_random_topup"] == 11


def test_equal_clusters_fifth_random():
    got = compare(np.random.default_rng(2).random(3000), labels_of([200] * 15), 2000)
    assert 0.15 < got["n_random_topup"] / 2000 < 0.3  # the published ~fifth of random users


def test_clusters_under_fifty_and_single_user():
    got = compare(np.random.default_rng(4).random(379), labels_of([40, 25, 10, 3, 1, 300]), 200)
    # A small cluster is charged all its users but short groups leave some behind; one user alone
    # has every qcut edge equal, so the published code picks nobody from it in either pass.
    assert got["first_quota"][:5] == [40, 25, 10, 3, 1] and got["first_pass"][4] == 0
    assert got["first_pass"][2] < 10


def test_tied_variances_collapse_groups():
    rng = np.random.default_rng(5)
    var = rng.choice([0.0, 0.5, 1 / 3, 1.0, 2.0], size=900, p=[.4, .35, .1, .1, .05])
    var[600:700] = 0.5  # a cluster of one variance: no qcut label, no picks
    got = compare(var, labels_of([300, 300, 100, 200]), 400)
    assert got["first_pass"][2] == 0 and got["first_bins"][2] == []
    assert any(len(b) < 5 for b in got["first_bins"])


def test_last_bit_apart_variances_are_different_groups():
    # 0.29999999999999993 and 0.30000000000000004 are two groups to pandas (rounding merged them).
    lo, hi = 0.29999999999999993, 0.30000000000000004
    var = np.array([0.1] * 20 + [lo] * 20 + [hi] * 20 + [0.5] * 20 + [0.7] * 20)
    got = compare(var, np.zeros(100, int), 30, min_users_per_cluster=30)
    assert len(got["first_bins"][0]) == 5


def test_minimum_pass_over_budget_truncates_in_cluster_order():
    got = compare(np.random.default_rng(8).random(1500), labels_of([100] * 15), 500)  # 15 * 50 = 750 > 500
    assert got["first_pass"] == [50] * 10 + [0] * 5 and got["n_truncated"] == 250
    assert got["second_pass"] == [0] * 15 and got["n_random_topup"] == 0


def test_single_rating_users_never_binned():
    rng = np.random.default_rng(6)
    var = rng.random(800)
    var[rng.random(800) < 0.3] = np.nan
    var[700:] = np.nan  # a cluster of single-rating users only
    got = compare(var, labels_of([400, 300, 100]), 500)
    assert got["first_pass"][2] == 0


def test_random_configurations():
    """At least 200 random configurations: clusters under 50 and of one user, ties, NaN, budgets near and above N."""
    rng = np.random.default_rng(12)
    n_cases, seen = 0, Counter()
    for _ in range(240):
        k = int(rng.integers(1, 10))
        sizes = rng.integers(1, 200, size=k) if rng.random() < 0.6 else rng.integers(1, 50, size=k)
        if rng.random() < 0.3:
            sizes[rng.integers(k)] = 1
        clusters = labels_of(sizes)
        n = clusters.size
        budget = int(rng.choice([rng.integers(0, n + 1), n - 1, n, n + int(rng.integers(1, 5)), max(n - 3, 0)]))
        score = random_scores(rng, n)
        got = compare(score, clusters, max(budget, 0), random_state=int(rng.integers(0, 100)),
                      num_groups=int(rng.integers(1, 8)), min_users_per_cluster=int(rng.choice([0, 1, 10, 50])),
                      weight_type=str(rng.choice(["normal", "uniform"])))
        n_cases += 1
        seen["over_n"] += budget > n
        seen["single"] += bool((sizes == 1).any())
        seen["nan"] += bool(np.isnan(score).any())
        seen["topup"] += bool(got.get("n_random_topup"))
    assert n_cases >= 200 and min(seen.values()) >= 10, seen


# --------------------------------------------------------------------------- through the strategy


def test_strategy_info_reports_published_counts():
    sizes = [300, 140, 60, 20]
    rng = np.random.default_rng(13)
    labels = labels_of(sizes)
    centers = rng.normal(0.0, 1.0, (len(sizes), 8)) * 100.0
    prompts = centers[labels] + rng.normal(0.0, 1.0, (labels.size, 8))
    variance = rng.random(labels.size) * 2.0
    counts = rng.integers(2, 20, size=labels.size)
    counts[rng.random(labels.size) < 0.2] = 1  # single-rating users (label_variance 0 in the context)
    variance[counts < 2] = 0.0
    counts[::50] = 0  # users without rows: the base class keeps them out of the strategy
    ctx = SelectionContext(prompts=prompts, label_variance=variance, train_counts=counts, seed=3)
    node = {"name": "puma", "n_clusters": 4, "min_per_cluster": 50, "allocation": "faithful", "kmeans_backend": "sklearn"}
    res = select_users(node, ctx, budget=300)

    eligible = np.flatnonzero(counts > 0)
    expected_var = np.where(counts[eligible] < 2, np.nan, variance[eligible])
    cluster_of = labels[eligible]  # well-separated clusters: k-means finds them, numbered by lowest member
    selected, trace = run_reference(expected_var, cluster_of, 300, random_state=3)
    expected = reference_counts(selected, trace, len(sizes))
    info = res.info
    assert info["allocation"] == "faithful" and info["cluster_sizes"] == np.bincount(cluster_of).tolist()
    assert info["first_pass_quota"] == expected["first_quota"] and info["first_pass_bins"] == expected["first_bins"]
    assert info["second_pass_quota"] == expected["second_quota"] and info["second_pass_bins"] == expected["second_bins"]
    assert info["n_random_topup"] == expected["n_random_topup"] > 0 and info["n_truncated"] == 0
    assert info["n_unbinned_single_rating"] == int((counts[eligible] == 1).sum())
    assert res.users.tolist() == sorted(eligible[selected].tolist())  # the same users
    assert np.array_equal(select_users(node, ctx, budget=300).users, res.users)  # seeded


def test_strategy_faithful_budget_over_users_selects_all():
    ctx = SelectionContext(prompts=np.random.default_rng(0).normal(size=(30, 4)), label_variance=np.ones(30),
                           train_counts=np.full(30, 3))
    res = select_users({"name": "puma", "n_clusters": 3, "allocation": "faithful"}, ctx, budget=40)
    assert res.users.tolist() == list(range(30)) and res.info["all_users"] is True


def test_strategy_bins_pandas_variance_of_the_rows():
    """The context's two-pass variance and pandas' differ in the last bit for many users; faithful bins pandas'."""
    from puma_lightning.data.user_moments import UserMoments

    rng = np.random.default_rng(14)
    sizes = [400, 250, 150]
    labels = labels_of(sizes)
    n = labels.size
    row_user = rng.integers(0, n, 6 * n)
    rating = rng.integers(1, 6, row_user.size).astype(float)
    counts = np.bincount(row_user, minlength=n)
    keep = counts > 0
    two_pass = UserMoments(n).update(row_user, rating).variance(ddof=1, too_few=0.0)
    pandas_var = pd.DataFrame({"u": row_user, "r": rating}).groupby("u")["r"].var().reindex(range(n)).to_numpy()
    assert np.array_equal(pandas_group_variance(row_user, rating, n), pandas_var, equal_nan=True)
    assert (two_pass[counts > 1] != pandas_var[counts > 1]).mean() > 0.1  # last bits apart for many users
    centers = rng.normal(0.0, 1.0, (len(sizes), 8)) * 100.0
    prompts = centers[labels] + rng.normal(0.0, 1.0, (n, 8))
    ctx = SelectionContext(prompts=prompts, label_variance=two_pass, train_counts=counts, seed=7,
                           label_variance_pandas=pandas_var)
    node = {"name": "puma_faithful", "n_clusters": 3, "kmeans_backend": "sklearn"}
    res = select_users(node, ctx, budget=400)
    eligible = np.flatnonzero(keep)
    selected, _ = run_reference(pandas_var[eligible], labels[eligible], 400, random_state=7)
    assert res.users.tolist() == sorted(eligible[selected].tolist())
