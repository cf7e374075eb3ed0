"""Tests of user-selection strategies, their registry and config files, and the k-means backends."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from puma_lightning.cli.config_loader import strategies_dir
from puma_lightning.selection import (
    STRATEGIES,
    SelectionContext,
    SelectionStrategy,
    build_strategy,
    kmeans,
    register_strategy,
    select_users,
)
from puma_lightning.selection.kmeans import faiss_module
from puma_lightning.selection.puma import apportion, bin_weights

STRATEGY_DIR = Path(str(strategies_dir()))  # the packaged presets (= top-level strategies/)
KMEANS_BACKENDS = ["sklearn"] + (["faiss-cpu"] if faiss_module() is not None else [])


def clustered_ctx(sizes, d=8, seed=0, variance=None, counts=None) -> SelectionContext:
    """Users in well-separated clusters of the given sizes, contiguous in user order."""
    rng = np.random.default_rng(1234)
    centers = rng.normal(0.0, 1.0, (len(sizes), d)) * 100.0
    labels = np.repeat(np.arange(len(sizes)), sizes)
    prompts = centers[labels] + rng.normal(0.0, 1.0, (labels.size, d))
    n = labels.size
    variance = rng.random(n) if variance is None else variance
    counts = np.full(n, 10) if counts is None else counts
    loss = rng.random(n) + labels  # per-user task loss, for the loss-based strategies
    ffn = (prompts @ rng.normal(0.0, 1.0, (d, 24)) > 0).astype(np.float32)  # binary "FFN" features
    ffn /= np.maximum(np.linalg.norm(ffn, axis=1, keepdims=True), 1e-12)
    return SelectionContext(prompts=prompts, label_variance=variance, train_counts=counts, seed=seed,
                            loss=loss, ffn_features=ffn)


def per_cluster(users: np.ndarray, sizes) -> list[int]:
    """How many of ``users`` fall in each contiguous cluster."""
    return np.bincount(np.repeat(np.arange(len(sizes)), sizes)[users], minlength=len(sizes)).tolist()


# --------------------------------------------------------------------------- every strategy


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("budget", [0, 1, 37, 299, 300, 1000])
def test_exact_budget_sorted_unique(name, budget):
    ctx = clustered_ctx([150, 100, 50])
    users = build_strategy({"name": name, "n_clusters": 3} if name == "puma" else {"name": name}).select(ctx, budget)
    assert users.dtype == np.int64
    assert users.size == min(budget, 300)
    assert np.array_equal(users, np.unique(users))
    if budget >= 300:
        assert np.array_equal(users, np.arange(300))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_deterministic_per_seed(name):
    node = {"name": name, "budget": 40}
    a = select_users(node, clustered_ctx([150, 100, 50], seed=3)).users
    b = select_users(node, clustered_ctx([150, 100, 50], seed=3)).users
    c = select_users(node, clustered_ctx([150, 100, 50], seed=4)).users
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_users_without_rows_excluded(name):
    counts = np.full(300, 5)
    counts[::3] = 0  # 100 users without training rows
    ctx = clustered_ctx([150, 100, 50], counts=counts)
    users = build_strategy({"name": name}).select(ctx, 120)
    assert np.all(counts[users] > 0)
    # Budget above the 200 users with rows: all of them, then users without rows.
    users = build_strategy({"name": name}).select(ctx, 230)
    assert users.size == 230 and np.all(np.isin(np.flatnonzero(counts > 0), users))


# --------------------------------------------------------------------------- registry and config errors


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):

        @register_strategy("random")
        class Again(SelectionStrategy):
            @dataclass
            class Params:
                pass

    with pytest.raises(ValueError, match="lowercase"):
        register_strategy("Random")


def test_register_new_strategy():
    try:

        @register_strategy("first_users_test")
        class First(SelectionStrategy):
            @dataclass
            class Params:
                offset: int = 0
                """Skip this many users."""

            def _select(self, ctx, budget):
                return np.arange(self.params.offset, self.params.offset + budget), {"offset": self.params.offset}

        res = select_users({"name": "first_users_test", "budget": 3, "offset": 2}, clustered_ctx([10]))
        assert res.users.tolist() == [2, 3, 4] and res.params == {"offset": 2} and res.info["offset"] == 2
    finally:
        STRATEGIES.pop("first_users_test", None)


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_strategy({"name": "kmeans_magic", "budget": 10})
    msg = str(err.value)
    assert "\n" not in msg and "kmeans_magic" in msg
    assert all(name in msg for name in STRATEGIES)


def test_unknown_parameter_lists_valid_parameters():
    with pytest.raises(ValueError) as err:
        build_strategy({"name": "puma", "n_cluster": 15})
    msg = str(err.value)
    assert "\n" not in msg and "'n_cluster'" in msg
    assert all(f.name in msg for f in fields(STRATEGIES["puma"].Params))
    # 'seed' is reserved (a per-selection seed override), not a parameter; it must be an integer
    with pytest.raises(ValueError, match="'seed' must be an integer"):
        build_strategy({"name": "random", "seed": "1"})


@pytest.mark.parametrize(
    "key, value, expected",
    [("n_clusters", "15", "int"), ("n_clusters", 1.5, "int"), ("n_clusters", True, "int"),
     ("weight_span", "2", "float"), ("allocation", "buggy", "'faithful'")],
)
def test_wrong_parameter_type(key, value, expected):
    with pytest.raises(ValueError) as err:
        build_strategy({"name": "puma", key: value})
    msg = str(err.value)
    assert "\n" not in msg and repr(key) in msg and expected in msg


def test_params_coerced_and_recorded():
    res = select_users({"name": "puma", "budget": 30, "weight_span": 2, "n_clusters": 3}, clustered_ctx([60, 40]))
    assert res.params["weight_span"] == 2.0 and isinstance(res.params["weight_span"], float)
    assert res.strategy == "puma" and res.budget == 30 and res.info["allocation"] == "fixed"
    with pytest.raises(ValueError, match="budget"):
        select_users({"name": "random"}, clustered_ctx([10]))
    assert select_users({"name": "random"}, clustered_ctx([10]), budget=4).users.size == 4


def test_context_requires_optional_fields():
    ctx = clustered_ctx([10])
    ctx.loss = None
    with pytest.raises(ValueError, match="loss"):
        ctx.require("loss", "loss_bucket")
    with pytest.raises(ValueError, match="rows"):
        SelectionContext(prompts=np.zeros((3, 2)), label_variance=np.zeros(2), train_counts=np.ones(3))


@pytest.mark.parametrize("path", sorted(STRATEGY_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_strategy_yaml_loads_and_builds(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("#") and "python -m puma_lightning" in first_line
    node = OmegaConf.load(path)
    assert "budget" not in node
    strategy = build_strategy(node)
    defaults = {f.name: f.default for f in fields(strategy.Params)}
    assert {k: v for k, v in node.items() if k not in ("name", "published_mode")} == defaults  # every parameter, at its default
    assert select_users(node, clustered_ctx([60, 40]), budget=20).users.size == 20


def test_all_strategy_yaml_present():
    assert {p.stem for p in STRATEGY_DIR.glob("*.yaml")} >= set(STRATEGIES)


# --------------------------------------------------------------------------- puma allocation


def test_bin_weights_match_published():
    assert np.allclose(bin_weights(5), [0.079, 0.237, 0.369, 0.237, 0.079], atol=5e-4)


def test_apportion_largest_remainder_caps_and_spill():
    assert apportion(40, [300, 140, 60], [280, 120, 40]).tolist() == [24, 11, 5]  # 24, 11.2, 4.8
    assert apportion(10, [1, 1, 1], [1, 100, 100]).tolist() == [1, 5, 4]  # capped, then tie -> lower index
    assert apportion(7, [0, 0], [3, 10]).tolist() == [3, 4]  # zero weights: uniform
    with pytest.raises(ValueError):
        apportion(11, [1, 1], [5, 5])


SIZES = [300, 140, 60]


def puma_node(**kw):
    return {"name": "puma", "n_clusters": 3, "min_per_cluster": 20, **kw}


def test_puma_fixed_is_proportional():
    res = select_users(puma_node(budget=100), clustered_ctx(SIZES))
    # By hand: first pass 20 each; remaining 40 by size/500 = 24, 11.2, 4.8 -> largest remainder 24, 11, 5.
    assert res.info["cluster_sizes"] == SIZES
    assert res.info["first_pass"] == [20, 20, 20]
    assert res.info["second_pass"] == [24, 11, 5]
    assert per_cluster(res.users, SIZES) == [44, 31, 25]
    assert res.info["allocation"] == "fixed" and res.info["n_random_topup"] == 0


def test_puma_faithful_reproduces_published_bug():
    res = select_users(puma_node(budget=100, allocation="faithful"), clustered_ctx(SIZES))
    # Hand trace of the published loop, remaining = 40, N = 500 (tests/selection/test_allocation_faithful.py
    # checks every count against a transcription of the published function):
    #   c0: int(40 * 300 / 500) = 24, remaining 16
    #   c1: int(16 * 140 / 500) = int(4.48) = 4, remaining 12
    #   c2: int(12 *  60 / 500) = int(1.44) = 1, remaining 11  -> 11 random users
    assert res.info["allocation"] == "faithful"
    assert res.info["second_pass"] == [24, 4, 1]
    assert res.info["picks_per_cluster"] == [44, 24, 21]
    assert res.info["n_random_topup"] == 11
    counts = per_cluster(res.users, SIZES)
    assert res.users.size == 100 and all(c >= p for c, p in zip(counts, [44, 24, 21]))


def test_puma_faithful_random_share_about_a_fifth():
    sizes = [200] * 15
    res = select_users({"name": "puma", "budget": 2000, "allocation": "faithful"}, clustered_ctx(sizes, d=4))
    assert res.info["n_clusters"] == 15 and 0.15 < res.info["n_random_topup"] / 2000 < 0.3


def test_puma_cluster_smaller_than_min():
    sizes = [300, 140, 10]
    res = select_users(puma_node(budget=100), clustered_ctx(sizes))
    # First pass 20, 20, 10 (all of the small cluster); remaining 50 over the two others by size
    # (300 : 140 of 440): 34.09, 15.91 -> 34, 16.
    assert res.info["first_pass"] == [20, 20, 10]
    assert per_cluster(res.users, sizes) == [54, 36, 10]


def test_puma_budget_below_minimums_scales_down():
    res = select_users(puma_node(budget=30, min_per_cluster=50), clustered_ctx(SIZES))
    assert res.info["first_pass"] == [10, 10, 10] and per_cluster(res.users, SIZES) == [10, 10, 10]


def test_puma_constant_variance_uniform():
    ctx = clustered_ctx(SIZES, variance=np.zeros(500))
    res = select_users(puma_node(budget=100), ctx)
    assert res.users.size == 100 and res.info["uniform_clusters_constant_variance"] == [0, 1, 2]
    assert per_cluster(res.users, SIZES) == [44, 31, 25]


def test_puma_variance_bins_favour_middle():
    variance = np.random.default_rng(5).permutation(1000).astype(float)  # distinct, ties-free ranks
    res = select_users({"name": "puma", "n_clusters": 1, "min_per_cluster": 0, "budget": 100},
                       clustered_ctx([1000], variance=variance))
    # 100 * weights = 7.89, 23.68, 36.87, 23.68, 7.89 -> largest remainder 8, 24, 37, 23, 8.
    assert res.info["bin_picks_per_cluster"] == [[8, 24, 37, 23, 8]]
    assert np.bincount((variance[res.users] // 200).astype(int), minlength=5).tolist() == [8, 24, 37, 23, 8]


def test_puma_tied_variance_and_tiny_clusters():
    variance = np.repeat([0.0, 1.0], 50)  # heavy ties
    res = select_users(puma_node(budget=37, n_bins=5), clustered_ctx([3, 97], variance=variance))
    assert res.users.size == 37 and per_cluster(res.users, [3, 97])[0] == 3


# --------------------------------------------------------------------------- k-means


@pytest.mark.parametrize("backend", KMEANS_BACKENDS)
def test_kmeans_recovers_separated_clusters(backend):
    x, truth = make_blobs(
        n_samples=2000, n_features=16, centers=8, cluster_std=0.5, center_box=(-50, 50), random_state=0
    )
    res = kmeans(x, 8, seed=0, backend=backend)
    assert res.backend == backend
    assert adjusted_rand_score(truth, res.labels) == 1.0
    assert res.centroids.shape == (8, 16) and res.labels.dtype == np.int64


@pytest.mark.parametrize("backend", KMEANS_BACKENDS)
def test_kmeans_inertia_close_to_sklearn(backend):
    x, _ = make_blobs(n_samples=3000, n_features=32, centers=20, cluster_std=3.0, center_box=(-10, 10), random_state=1)
    x = x.astype(np.float32)
    ref = KMeans(20, n_init=3, random_state=0).fit(x).inertia_
    res = kmeans(x, 20, seed=0, backend=backend)
    assert res.inertia <= ref * 1.01


@pytest.mark.parametrize("backend", KMEANS_BACKENDS)
def test_kmeans_uses_every_point(backend):
    # 6,000 points, k = 2: FAISS's default would subsample to 512 points; centroids must be the
    # exact means of their clusters (Lloyd fixed point on all points).
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-20, 1, (3000, 4)), rng.normal(20, 1, (3000, 4))]).astype(np.float32)
    res = kmeans(x, 2, seed=0, backend=backend)
    for c in range(2):
        assert np.allclose(res.centroids[c], x[res.labels == c].mean(0), atol=1e-4)


def test_kmeans_k_clipped_to_distinct_points():
    res = kmeans(np.arange(6, dtype=np.float32).reshape(3, 2), 10)
    assert res.centroids.shape[0] == 3 and res.inertia == 0.0 and sorted(res.labels.tolist()) == [0, 1, 2]
    x = np.repeat(np.eye(4, dtype=np.float32), 25, axis=0)  # 100 points, 4 distinct
    res = kmeans(x, 10)
    assert res.centroids.shape[0] == 4 and res.backend == "distinct"
    assert adjusted_rand_score(np.repeat(np.arange(4), 25), res.labels) == 1.0
    assert kmeans(x, 4, seed=1).inertia == pytest.approx(0.0, abs=1e-6)


def test_kmeans_deterministic_and_validates():
    x, _ = make_blobs(n_samples=500, n_features=8, centers=5, random_state=2)
    a, b = kmeans(x, 5, seed=7), kmeans(x, 5, seed=7)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.centroids, b.centroids)
    with pytest.raises(ValueError, match="backend"):
        kmeans(x, 5, backend="cuda")
    with pytest.raises(ValueError, match="NaN"):
        kmeans(np.full((4, 2), np.nan), 2)
