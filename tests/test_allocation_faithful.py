"""``puma`` with ``allocation: faithful`` against our own transcriptions of the published function.

Reference: ``select_users_with_clustering_and_variance_sampling`` in Kimagure7/Dont-Start-Over,
``utils/user_select.py``. The transcriptions below start after its k-means (both sides get the same
cluster labels and the same per-user variances, NaN for single-rating users) and record, beside
the selected list, which pass / cluster / variance group each user came from, so the counts can be
compared with :func:`puma_lightning.selection.faithful.faithful_allocation`: per cluster, per group,
per pass, the random top-up and the final cut. Random *users* differ (pandas' ``sample`` against a
numpy Generator); counts must not.

Two transcriptions: ``published_numpy`` (plain loops; ``qcut`` re-implemented below from the pandas
2.2 source and pinned to outputs observed with pandas 2.2.3 and 3.1.1) and ``published_pandas`` (the
code nearly verbatim, on the test dependency pandas, against the package told to follow that
pandas' ``qcut``). The package itself does not need pandas.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest

from puma_lightning.selection import SelectionContext, select_users
from puma_lightning.selection.faithful import faithful_allocation, published_variance, quantile_bins

import pandas as pd  # a test dependency (setup.cfg [test]): missing is a failure, not a skip


def _edges_of(version: str) -> str:
    """The ``qcut_edges`` variant of ``faithful_allocation`` that a pandas version uses."""
    major, minor = (int(x) for x in version.split(".")[:2])
    return "pandas3" if major >= 3 else "pandas2.2" if minor >= 2 else "pandas2.0"


PANDAS_EDGES = _edges_of(pd.__version__)


# --------------------------------------------------------------------------- transcriptions


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


def _weights(actual_variance_groups: int, weight_type: str, first_pass: bool) -> np.ndarray:
    weights = np.array([1.0])
    if actual_variance_groups > 1:
        if weight_type == "normal" or not first_pass:  # the second pass is always "normal"
            x = np.linspace(-2, 2, actual_variance_groups)
            weights = np.exp(-x**2/2)
            weights = weights + 0.1
            weights = weights / weights.sum()
        elif weight_type == "linear":
            weights = np.arange(1, actual_variance_groups + 1)
            weights = weights / weights.sum()
        elif weight_type == "uniform":
            weights = np.ones(actual_variance_groups)
            weights = weights / weights.sum()
    return weights


def published_numpy(variance, clusters, num_users_to_select, num_clusters=None, num_variance_groups=5,
                    min_users_per_cluster=50, random_state=42, weight_type="normal", trace=None, sample=None):
    """The published function from its step 4 on, with arrays for the DataFrame columns.

    ``trace`` (a dict) receives ``quota[(pass, cluster)]`` (the n_samples the budget is charged),
    ``groups[(pass, cluster)]`` (G) and ``tag[user] = (pass, cluster, group)``; ``"topup"``.
    ``sample(ids, n)`` replaces the random draw (default: as ``DataFrame.sample(random_state=42)``).
    """
    variance = np.asarray(variance, dtype=np.float64)
    clusters = np.asarray(clusters)
    UserID = np.arange(variance.size)
    num_clusters = int(clusters.max()) + 1 if num_clusters is None else num_clusters
    trace = {} if trace is None else trace
    trace.update(quota={}, groups={}, tag={}, topup=0)

    if sample is None:
        def sample(ids, n):  # DataFrame.sample(n=n, random_state=random_state); raises when n > len(ids)
            return np.random.RandomState(random_state).choice(ids, size=n, replace=False).tolist()

    # 4. Calculate actual cluster sizes
    cluster_counts = Counter(clusters.tolist())
    # 5. Initialize selection
    selected_users = []
    remaining_users = num_users_to_select
    # 6. First pass: select minimum users from each cluster
    for cluster_id in range(num_clusters):
        in_cluster = clusters == cluster_id
        cu_id, cu_var = UserID[in_cluster], variance[in_cluster]
        n_samples = min(min_users_per_cluster, len(cu_id))
        if n_samples > 0:
            order = np.argsort(cu_var, kind="stable")  # sort_values('rating_variance')
            cu_id, cu_var = cu_id[order], cu_var[order]
            try:
                variance_group = np_qcut(cu_var, num_variance_groups)
            except ValueError:
                variance_group = np.zeros(len(cu_id))
            actual_variance_groups = len(set(variance_group[~np.isnan(variance_group)].tolist()))  # nunique
            weights = _weights(actual_variance_groups, weight_type, first_pass=True)
            samples_per_group = (weights * n_samples).astype(int)
            samples_per_group[-1] = n_samples - samples_per_group[:-1].sum()
            trace["quota"][("first", cluster_id)] = n_samples
            trace["groups"][("first", cluster_id)] = actual_variance_groups
            for group_num in range(actual_variance_groups):
                group_ids = cu_id[variance_group == group_num]
                n = min(samples_per_group[group_num], len(group_ids))
                selected = sample(group_ids, n)
                selected_users.extend(selected)
                trace["tag"].update({u: ("first", cluster_id, group_num) for u in selected})
            remaining_users -= n_samples
    # 7. Second pass: distribute remaining users proportionally to cluster sizes
    if remaining_users > 0:
        total_users = sum(cluster_counts.values())
        for cluster_id in range(num_clusters):
            keep = (clusters == cluster_id) & ~np.isin(UserID, selected_users)
            cu_id, cu_var = UserID[keep], variance[keep]
            if len(cu_id) == 0:
                continue
            cluster_quota = int(remaining_users * (cluster_counts[cluster_id] / total_users))
            n_samples = min(cluster_quota, len(cu_id))
            if n_samples > 0:
                order = np.argsort(cu_var, kind="stable")
                cu_id, cu_var = cu_id[order], cu_var[order]
                try:
                    variance_group = np_qcut(cu_var, num_variance_groups)
                except ValueError:
                    variance_group = np.zeros(len(cu_id))
                actual_variance_groups = len(set(variance_group[~np.isnan(variance_group)].tolist()))
                weights = _weights(actual_variance_groups, weight_type, first_pass=False)
                samples_per_group = (weights * n_samples).astype(int)
                samples_per_group[-1] = n_samples - samples_per_group[:-1].sum()
                trace["quota"][("second", cluster_id)] = n_samples
                trace["groups"][("second", cluster_id)] = actual_variance_groups
                for group_num in range(actual_variance_groups):
                    group_ids = cu_id[variance_group == group_num]
                    n = min(samples_per_group[group_num], len(group_ids))
                    selected = sample(group_ids, n)
                    selected_users.extend(selected)
                    trace["tag"].update({u: ("second", cluster_id, group_num) for u in selected})
                remaining_users -= n_samples
    # 8. Final adjustment if we didn't get exactly num_users_to_select due to rounding
    if len(selected_users) < num_users_to_select:
        remaining = num_users_to_select - len(selected_users)
        remaining_candidates = UserID[~np.isin(UserID, selected_users)]
        if len(remaining_candidates) > 0:
            additional = sample(remaining_candidates, remaining)
            selected_users.extend(additional)
            trace["topup"] = len(additional)
            trace["tag"].update({u: ("topup", -1, -1) for u in additional})
    if len(selected_users) > num_users_to_select:
        selected_users = selected_users[:num_users_to_select]
    return selected_users


def published_pandas(variance, clusters, num_users_to_select, num_clusters=None, num_variance_groups=5,
                     min_users_per_cluster=50, random_state=42, weight_type="normal", trace=None, sample=None):
    """The published function from its step 4 on, nearly verbatim (DataFrames; needs pandas).

    ``sample(df, n)`` replaces ``df.sample(n=n, random_state=random_state)`` when given."""
    if sample is None:
        def sample(df, n):
            return df.sample(n=n, random_state=random_state)
    user_variance = pd.DataFrame({"UserID": np.arange(len(variance)), "rating_variance": np.asarray(variance, float)})
    clusters = np.asarray(clusters)
    user_variance["cluster"] = clusters
    num_clusters = int(clusters.max()) + 1 if num_clusters is None else num_clusters
    trace = {} if trace is None else trace
    trace.update(quota={}, groups={}, tag={}, topup=0)
    cluster_counts = Counter(clusters)
    selected_users = []
    remaining_users = num_users_to_select
    for cluster_id in range(num_clusters):
        cluster_users = user_variance[user_variance["cluster"] == cluster_id]
        n_samples = min(min_users_per_cluster, len(cluster_users))
        if n_samples > 0:
            cluster_users = cluster_users.sort_values("rating_variance")
            try:
                cluster_users["variance_group"] = pd.qcut(cluster_users["rating_variance"], q=num_variance_groups,
                                                          labels=False, duplicates="drop")
            except ValueError:
                cluster_users["variance_group"] = 0
            actual_variance_groups = cluster_users["variance_group"].nunique()
            weights = _weights(actual_variance_groups, weight_type, first_pass=True)
            samples_per_group = (weights * n_samples).astype(int)
            samples_per_group[-1] = n_samples - samples_per_group[:-1].sum()
            trace["quota"][("first", cluster_id)] = n_samples
            trace["groups"][("first", cluster_id)] = actual_variance_groups
            for group_num in range(actual_variance_groups):
                group_df = cluster_users[cluster_users["variance_group"] == group_num]
                n = min(samples_per_group[group_num], len(group_df))
                selected = sample(group_df, n)
                selected_users.extend(selected["UserID"].tolist())
                trace["tag"].update({u: ("first", cluster_id, group_num) for u in selected["UserID"].tolist()})
            remaining_users -= n_samples
    if remaining_users > 0:
        total_users = sum(cluster_counts.values())
        for cluster_id in range(num_clusters):
            cluster_users = user_variance[(user_variance["cluster"] == cluster_id)
                                          & (~user_variance["UserID"].isin(selected_users))]
            if len(cluster_users) == 0:
                continue
            cluster_quota = int(remaining_users * (cluster_counts[cluster_id] / total_users))
            n_samples = min(cluster_quota, len(cluster_users))
            if n_samples > 0:
                cluster_users = cluster_users.sort_values("rating_variance")
                try:
                    cluster_users["variance_group"] = pd.qcut(cluster_users["rating_variance"], q=num_variance_groups,
                                                              labels=False, duplicates="drop")
                except ValueError:
                    cluster_users["variance_group"] = 0
                actual_variance_groups = cluster_users["variance_group"].nunique()
                weights = _weights(actual_variance_groups, weight_type, first_pass=False)
                samples_per_group = (weights * n_samples).astype(int)
                samples_per_group[-1] = n_samples - samples_per_group[:-1].sum()
                trace["quota"][("second", cluster_id)] = n_samples
                trace["groups"][("second", cluster_id)] = actual_variance_groups
                for group_num in range(actual_variance_groups):
                    group_df = cluster_users[cluster_users["variance_group"] == group_num]
                    n = min(samples_per_group[group_num], len(group_df))
                    selected = sample(group_df, n)
                    selected_users.extend(selected["UserID"].tolist())
                    trace["tag"].update({u: ("second", cluster_id, group_num) for u in selected["UserID"].tolist()})
                remaining_users -= n_samples
    if len(selected_users) < num_users_to_select:
        remaining = num_users_to_select - len(selected_users)
        remaining_candidates = user_variance[~user_variance["UserID"].isin(selected_users)]
        if len(remaining_candidates) > 0:
            additional = sample(remaining_candidates, remaining)
            selected_users.extend(additional["UserID"].tolist())
            trace["topup"] = len(additional)
            trace["tag"].update({u: ("topup", -1, -1) for u in additional["UserID"].tolist()})
    if len(selected_users) > num_users_to_select:
        selected_users = selected_users[:num_users_to_select]
    return selected_users


TRANSCRIPTIONS = [published_numpy, published_pandas]


def _too_many(n: int, available: int) -> None:
    if n > available:  # what pandas' DataFrame.sample says
        raise ValueError("Cannot take a larger sample than population when 'replace=False'")


def lowest_ids(ids_or_df, n):
    """Deterministic draw for the transcriptions: the ``n`` lowest user ids (raises like ``sample``)."""
    if isinstance(ids_or_df, pd.DataFrame):
        _too_many(n, len(ids_or_df))
        return ids_or_df.sort_values("UserID").iloc[:n]
    _too_many(n, len(ids_or_df))
    return sorted(int(u) for u in ids_or_df)[:n]


class LowestFirst:
    """Stands in for the ``np.random.Generator`` of ``faithful_allocation``: the lowest indices."""

    def choice(self, a, size, replace=False):
        a = np.asarray(a)
        assert not replace
        _too_many(size, a.size)
        return np.sort(a)[:size]


def run_published(fn, variance, clusters, budget, **kw):
    """Run a transcription (pandas' chained-assignment warnings silenced); returns (selected, trace)."""
    trace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selected = fn(variance, clusters, budget, trace=trace, **kw)
    return selected, trace


def published_counts(selected, trace, n_clusters) -> dict:
    """The counts of a transcription's run, after its final cut, in FaithfulAllocation's layout."""
    kept = Counter(trace["tag"][u] for u in selected)
    out: dict = {"n_selected": len(selected), "n_unique": len(set(selected)),
                 "n_random_topup": kept[("topup", -1, -1)]}
    for name in ("first", "second"):
        out[f"{name}_quota"] = [trace["quota"].get((name, c), 0) for c in range(n_clusters)]
        out[f"{name}_bins"] = [[kept[(name, c, g)] for g in range(trace["groups"].get((name, c), 0))]
                               for c in range(n_clusters)]
        out[f"{name}_pass"] = [sum(b) for b in out[f"{name}_bins"]]
    out["n_truncated"] = len(trace["tag"]) - len(selected)
    return out


def package_counts(res) -> dict:
    return {"n_selected": res.selected.size, "n_unique": np.unique(res.selected).size,
            "n_random_topup": res.n_random_topup, "first_quota": res.first_quota, "first_bins": res.first_bins,
            "first_pass": res.first_pass, "second_quota": res.second_quota, "second_bins": res.second_bins,
            "second_pass": res.second_pass, "n_truncated": res.n_truncated}


def compare(variance, clusters, budget, fn=published_numpy, random=False, **kw) -> dict:
    """Assert that the package and the transcription ``fn`` agree on every count; return the counts.

    By default both draw the lowest ids instead of random users, so the runs must agree user for
    user: with tied variances the second pass re-cuts whatever the first pass left, so its counts
    depend on *which* users were drawn, in the published code too (see
    ``test_tied_second_pass_depends_on_the_draw``). ``random=True`` keeps both real random draws
    (numpy Generator against ``sample(random_state=42)``): counts only, for cases where they are
    determined by the inputs (distinct variances).
    """
    clusters = np.asarray(clusters)
    pub_kw = {} if random else {"sample": lowest_ids}
    selected, trace = run_published(fn, variance, clusters, budget, **pub_kw, **kw)
    expected = published_counts(selected, trace, int(clusters.max()) + 1)
    pkg_kw = {"n_bins": kw.get("num_variance_groups", 5), "min_per_cluster": kw.get("min_users_per_cluster", 50),
              "qcut_edges": PANDAS_EDGES if fn is published_pandas else "pandas2.2"}
    rng = np.random.default_rng(0) if random else LowestFirst()
    res = faithful_allocation(clusters, variance, budget, rng, **pkg_kw)
    assert package_counts(res) == expected
    if not random:
        assert res.selected.tolist() == [int(u) for u in selected]
    return expected


def labels_of(sizes) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


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


def random_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    """Scores with many ties and some NaN, like label variances of integer ratings."""
    kind = rng.integers(4)
    if kind == 0:
        v = rng.random(n) if rng.random() < 0.5 else np.round(rng.random(n), 1)
    elif kind == 1:
        v = rng.choice([0.0, 0.5, 1 / 3, 2 / 3, 1.0, 2.0, 4.5], size=n, p=[.3, .3, .1, .1, .1, .05, .05])
    elif kind == 2:
        v = rng.choice([0.0, 0.5], size=n)
    else:
        v = np.full(n, 0.5)
    v[rng.random(n) < rng.choice([0.0, 0.2, 0.9])] = np.nan
    return v


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


def test_published_variance_nan_for_single_rating():
    var = published_variance(np.array([0.0, 0.5, 0.0, 1 / 3 + 1e-15]), np.array([1, 2, 5, 3]))
    assert np.isnan(var[0]) and var[1] == 0.5 and var[2] == 0.0 and var[3] == np.round(1 / 3, 10)


# --------------------------------------------------------------------------- counts against the transcription


@pytest.mark.parametrize("random", [False, True], ids=["same-draws", "random-draws"])
@pytest.mark.parametrize("fn", TRANSCRIPTIONS, ids=lambda f: f.__name__)
def test_hand_traced_small_case(fn, random):
    # Sizes 300/140/60, min 20, budget 100, distinct variances (5 bins of equal size everywhere).
    # First pass: floor(w * 20) = [1, 4, 7, 4] + rest 4 -> [1, 4, 7, 4, 4] per cluster, remaining 40.
    # Second: int(40*.6) = 24 -> [1, 5, 8, 5] + 5; int(16*.28) = 4 -> [0, 0, 1, 0] + 3;
    # int(12*.12) = 1 -> [0, 0, 0, 0, 1]; 100 - 89 = 11 random users.
    var = np.random.default_rng(1).random(500)
    got = compare(var, labels_of([300, 140, 60]), 100, fn=fn, random=random, min_users_per_cluster=20)
    assert got["first_bins"] == [[1, 4, 7, 4, 4]] * 3
    assert got["second_bins"] == [[1, 5, 8, 5, 5], [0, 0, 1, 0, 3], [0, 0, 0, 0, 1]]
    assert got["second_quota"] == [24, 4, 1] and got["n_random_topup"] == 11 and got["n_selected"] == 100


@pytest.mark.parametrize("random", [False, True], ids=["same-draws", "random-draws"])
@pytest.mark.parametrize("fn", TRANSCRIPTIONS, ids=lambda f: f.__name__)
def test_equal_clusters(fn, random):
    var = np.random.default_rng(2).random(3000)
    got = compare(var, labels_of([200] * 15), 2000, fn=fn, random=random)
    assert 0.15 < got["n_random_topup"] / 2000 < 0.3  # the published ~fifth of random users


@pytest.mark.parametrize("random", [False, True], ids=["same-draws", "random-draws"])
@pytest.mark.parametrize("fn", TRANSCRIPTIONS, ids=lambda f: f.__name__)
def test_very_unequal_clusters(fn, random):
    var = np.random.default_rng(3).random(2635)
    got = compare(var, labels_of([2000, 500, 100, 30, 5]), 800, fn=fn, random=random)
    assert got["first_quota"] == [50, 50, 50, 30, 5]


@pytest.mark.parametrize("random", [False, True], ids=["same-draws", "random-draws"])
@pytest.mark.parametrize("fn", TRANSCRIPTIONS, ids=lambda f: f.__name__)
def test_clusters_under_fifty(fn, random):
    var = np.random.default_rng(4).random(379)
    got = compare(var, labels_of([40, 25, 10, 3, 1, 300]), 200, fn=fn, random=random)
    # A small cluster is charged all its users but short groups leave some behind; one user alone
    # has every qcut edge equal, so the published code picks nobody from it in either pass.
    assert got["first_quota"][:5] == [40, 25, 10, 3, 1] and got["first_pass"][4] == 0
    assert got["first_pass"][2] < 10


@pytest.mark.parametrize("fn", TRANSCRIPTIONS, ids=lambda f: f.__name__)
def test_tied_variances(fn):
    rng = np.random.default_rng(5)
    var = rng.choice([0.0, 0.5, 1 / 3, 1.0, 2.0], size=900, p=[.4, .35, .1, .1, .05])
    var[600:700] = 0.5  # a cluster of one variance: no qcut label, no picks
    got = compare(var, labels_of([300, 300, 100, 200]), 400, fn=fn)
    assert got["first_pass"][2] == 0 and got["first_bins"][2] == []
    assert any(len(b) < 5 for b in got["first_bins"])  # collapsed groups


@pytest.mark.parametrize("random", [False, True], ids=["same-draws", "random-draws"])
@pytest.mark.parametrize("fn", TRANSCRIPTIONS, ids=lambda f: f.__name__)
def test_single_rating_users_never_binned(fn, random):
    rng = np.random.default_rng(6)
    var = rng.random(800)
    var[rng.random(800) < 0.3] = np.nan
    var[700:] = np.nan  # a cluster of single-rating users only
    got = compare(var, labels_of([400, 300, 100]), 500, fn=fn, random=random)
    sel = faithful_allocation(labels_of([400, 300, 100]), var, 500, np.random.default_rng(0))
    n_binned = sel.selected.size - sel.n_random_topup
    assert not np.isnan(var[sel.selected[:n_binned]]).any()  # the passes never pick a NaN variance
    assert got["first_pass"][2] == 0


@pytest.mark.parametrize("random", [False, True], ids=["same-draws", "random-draws"])
@pytest.mark.parametrize("fn", TRANSCRIPTIONS, ids=lambda f: f.__name__)
def test_minimum_pass_over_budget_truncates_in_cluster_order(fn, random):
    var = np.random.default_rng(8).random(1500)
    got = compare(var, labels_of([100] * 15), 500, fn=fn, random=random)  # minimums 15 * 50 = 750 > 500
    assert got["first_pass"] == [50] * 10 + [0] * 5 and got["n_truncated"] == 250
    assert got["second_pass"] == [0] * 15 and got["n_random_topup"] == 0


@pytest.mark.parametrize("fn", TRANSCRIPTIONS, ids=lambda f: f.__name__)
def test_minimum_pass_over_budget_but_short_groups(fn):
    # Charged 15 * 50 = 750 > 700, but tied variances leave groups short: fewer than 700 picked,
    # no second pass (remaining < 0), the rest is random.
    rng = np.random.default_rng(9)
    var = rng.choice([0.0, 0.5, 1.0], size=1500, p=[.6, .3, .1])
    got = compare(var, labels_of([100] * 15), 700, fn=fn)
    assert sum(got["first_pass"]) < 700 and got["n_random_topup"] > 0 and got["n_truncated"] == 0


@pytest.mark.parametrize("fn", TRANSCRIPTIONS, ids=lambda f: f.__name__)
def test_budget_over_users(fn):
    var = np.random.default_rng(10).random(120)
    clusters = labels_of([60, 40, 20])
    trace: dict = {}
    with warnings.catch_warnings(), pytest.raises(ValueError):  # the top-up samples more users than are left
        warnings.simplefilter("ignore")
        fn(var, clusters, 150, trace=trace)
    res = faithful_allocation(clusters, var, 150, np.random.default_rng(0))
    assert res.budget_exceeds_users and np.array_equal(np.sort(res.selected), np.arange(120))
    # Up to its crash the published run agrees with ours.
    assert res.first_quota == [trace["quota"].get(("first", c), 0) for c in range(3)]
    assert res.second_quota == [trace["quota"].get(("second", c), 0) for c in range(3)]
    assert res.n_random_topup == 120 - len(trace["tag"])


@pytest.mark.parametrize("random", [False, True], ids=["same-draws", "random-draws"])
@pytest.mark.parametrize("fn", TRANSCRIPTIONS, ids=lambda f: f.__name__)
def test_budget_equal_to_users(fn, random):
    var = np.random.default_rng(11).random(120)
    got = compare(var, labels_of([60, 40, 20]), 120, fn=fn, random=random)
    assert got["n_selected"] == 120 and got["n_random_topup"] > 0


def test_tied_second_pass_depends_on_the_draw():
    # Why compare() defaults to the same draws: with tied variances the published second pass
    # re-cuts the users its first pass left, so its per-group counts change with random_state.
    rng = np.random.default_rng(5)
    var = rng.choice([0.0, 0.5, 1 / 3, 1.0, 2.0], size=900, p=[.4, .35, .1, .1, .05])
    seen = set()
    for seed in range(10):
        selected, trace = run_published(published_numpy, var, labels_of([300, 300, 100, 200]), 400, random_state=seed)
        got = published_counts(selected, trace, 4)
        seen.add(str(got["second_bins"]))
        assert got["first_bins"] == compare(var, labels_of([300, 300, 100, 200]), 400)["first_bins"]  # pass 1: fixed
    assert len(seen) > 1


def test_random_cases():
    rng = np.random.default_rng(12)
    for _ in range(60):
        k = int(rng.integers(1, 12))
        sizes = rng.integers(1, 250, size=k) if rng.random() < 0.7 else rng.integers(1, 40, size=k)
        clusters = labels_of(sizes)
        n = clusters.size
        budget = int(rng.integers(0, n + 1))
        q, m = int(rng.integers(1, 8)), int(rng.choice([0, 1, 10, 50]))
        for fn in TRANSCRIPTIONS:
            compare(random_scores(np.random.default_rng(int(rng.integers(1 << 30))), n), clusters, budget, fn=fn,
                    num_variance_groups=q, min_users_per_cluster=m)


# --------------------------------------------------------------------------- through the strategy


def test_strategy_info_reports_faithful_counts():
    sizes = [300, 140, 60, 20]
    rng = np.random.default_rng(13)
    labels = labels_of(sizes)
    centers = rng.normal(0.0, 1.0, (len(sizes), 8)) * 100.0
    prompts = centers[labels] + rng.normal(0.0, 1.0, (labels.size, 8))
    variance = rng.random(labels.size) * 2.0  # distinct: the counts do not depend on the draws
    counts = rng.integers(2, 20, size=labels.size)
    counts[rng.random(labels.size) < 0.2] = 1  # single-rating users (label_variance 0 in the context)
    variance[counts < 2] = 0.0
    counts[::50] = 0  # users without rows: the base class keeps them out of the strategy
    ctx = SelectionContext(prompts=prompts, label_variance=variance, train_counts=counts, seed=3)
    node = {"name": "puma", "n_clusters": 4, "min_per_cluster": 50, "allocation": "faithful", "kmeans_backend": "sklearn"}
    res = select_users(node, ctx, budget=300)

    eligible = np.flatnonzero(counts > 0)
    expected_var = np.where(counts[eligible] < 2, np.nan, variance[eligible])
    selected, trace = run_published(published_numpy, expected_var, labels[eligible], 300)
    expected = published_counts(selected, trace, len(sizes))
    info = res.info
    assert info["allocation"] == "faithful" and info["cluster_sizes"] == np.bincount(labels[eligible]).tolist()
    assert info["first_pass_quota"] == expected["first_quota"] and info["first_pass_bins"] == expected["first_bins"]
    assert info["second_pass_quota"] == expected["second_quota"] and info["second_pass_bins"] == expected["second_bins"]
    assert info["first_pass"] == expected["first_pass"] and info["second_pass"] == expected["second_pass"]
    assert info["n_random_topup"] == expected["n_random_topup"] > 0 and info["n_truncated"] == 0
    assert info["n_unbinned_single_rating"] == int((counts[eligible] == 1).sum())
    assert res.users.size == 300 and np.unique(res.users).size == 300 and np.all(counts[res.users] > 0)
    assert sum(info["selected_per_cluster"]) == 300
    assert np.array_equal(select_users(node, ctx, budget=300).users, res.users)  # seeded


def test_strategy_faithful_budget_over_users_selects_all():
    ctx = SelectionContext(prompts=np.random.default_rng(0).normal(size=(30, 4)), label_variance=np.ones(30),
                           train_counts=np.full(30, 3))
    res = select_users({"name": "puma", "n_clusters": 3, "allocation": "faithful"}, ctx, budget=40)
    assert res.users.tolist() == list(range(30)) and res.info["all_users"] is True
