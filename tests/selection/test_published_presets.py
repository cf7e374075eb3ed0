"""Every published preset against its published function (``tests/published/user_select_reference.py``).

``get_train_indices`` at Kimagure7/Dont-Start-Over 9d85839 (``utils/datasets.py``) runs, per
``dataset.mode``, one function of ``utils/user_select.py`` with fixed parameters. Each preset that
says ``published_mode: M`` must (1) have mode M's parameters by default and (2) pick the same
number of users per cluster and per group as mode M's function, given the same clusters: the users
form well-separated blobs numbered in order, so our k-means finds exactly the clusters handed to
the reference. Where the allocation draws with the published generators, the users themselves
must match too.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict

import numpy as np
import pytest
from omegaconf import OmegaConf
from published.user_select_reference import (
    clustering_and_score_sampling,
    round_and_random_sample,
    select_users_with_fps,
    stratified_sampling,
)

from puma_lightning.cli.config_loader import strategies_dir
from puma_lightning.selection import STRATEGIES, SelectionContext, build_strategy, select_users

PUBLISHED = {  # mode: (preset, the published parameters, in our parameter names)
    1: ("variance_bucket", {"n_bins": 8, "weight_span": 3.0, "weight_floor": 0.1, "allocation": "faithful"}),
    2: ("puma_uniform", {"n_clusters": 15, "n_bins": 5, "min_per_cluster": 50, "weight_type": "uniform",
                         "allocation": "faithful"}),
    3: ("puma_faithful", {"n_clusters": 15, "n_bins": 5, "min_per_cluster": 50, "weight_type": "normal",
                          "weight_span": 2.0, "weight_floor": 0.1, "allocation": "faithful"}),
    4: ("ffn_kmeans", {"n_clusters": 15, "allocation": "faithful"}),
    5: ("ffn_kmeans_loss", {"n_clusters": 15, "n_bins": 5, "min_per_cluster": 50, "weight_span": 2.0,
                            "weight_floor": 0.1, "allocation": "faithful"}),
    6: ("ffn_kmeans_variance", {"n_clusters": 15, "n_bins": 5, "min_per_cluster": 50, "weight_span": 2.0,
                                "weight_floor": 0.1, "allocation": "faithful"}),
    7: ("loss_bucket", {"n_bins": 8, "weight_span": 3.0, "weight_floor": 0.1, "allocation": "faithful"}),
    8: ("kmeans_loss", {"n_clusters": 15, "n_bins": 5, "min_per_cluster": 50, "weight_span": 2.0,
                        "weight_floor": 0.1, "allocation": "faithful"}),
    9: ("kmeans_fps", {"n_clusters": 15, "allocation": "faithful"}),
    10: ("kmeans_pca", {"n_clusters": 15, "n_components": 256, "allocation": "faithful"}),
}

PRESETS = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in sorted(strategies_dir().iterdir())
           if p.name.endswith(".yaml")}


def test_every_mode_has_one_preset_with_its_parameters():
    by_mode = Counter(node.get("published_mode") for node in PRESETS.values())
    assert {m: by_mode[m] for m in PUBLISHED} == {m: 1 for m in PUBLISHED}
    assert all("published_mode" in node for node in PRESETS.values())
    for mode, (name, params) in PUBLISHED.items():
        assert PRESETS[name]["published_mode"] == mode and STRATEGIES[name].published_mode == mode
        defaults = asdict(build_strategy({"name": name}).params)
        assert {k: defaults[k] for k in params} == params, name


# --------------------------------------------------------------------------- counts against the reference

SIZES = (260, 150, 90, 40, 1)
BUDGET = 220


def blobs(seed: int, sizes=SIZES, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated blobs in order (cluster c = the c-th block of users) and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centers = rng.normal(0.0, 1.0, (len(sizes), d)) * 200.0
    return (centers[labels] + rng.normal(0.0, 1.0, (labels.size, d))).astype(np.float32), labels


def context(seed: int) -> tuple[SelectionContext, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    prompts, labels = blobs(seed)
    n = labels.size
    counts = rng.integers(2, 12, size=n)
    counts[rng.random(n) < 0.15] = 1  # single-rating users: variance NaN to the published code
    variance = rng.choice([0.0, 0.25, 0.5, 1 / 3, 2 / 3, 1.0, 2.0], size=n)  # ties collapse groups
    variance[counts < 2] = 0.0
    loss = rng.random(n) * 3.0
    ctx = SelectionContext(prompts=prompts, label_variance=variance, train_counts=counts, seed=seed,
                           loss=loss, ffn_features=prompts)
    return ctx, labels


def run(name: str, ctx: SelectionContext):
    node = {"name": name, "kmeans_backend": "sklearn"} if "kmeans" in name or "puma" in name else {"name": name}
    if "n_clusters" in asdict(build_strategy({"name": name}).params):
        node["n_clusters"] = len(SIZES)
    return select_users(node, ctx, BUDGET)


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


@pytest.mark.parametrize("seed", [0, 1, 42])
@pytest.mark.parametrize("mode", [2, 3, 5, 6, 8])
def test_two_pass_modes_user_for_user(mode, seed):
    name = PUBLISHED[mode][0]
    ctx, labels = context(seed)
    res = run(name, ctx)
    score = ctx.loss if mode in (5, 8) else np.where(ctx.train_counts < 2, np.nan, ctx.label_variance)
    trace: dict = {}
    expected = quiet(clustering_and_score_sampling, score, labels, BUDGET, num_clusters=len(SIZES), num_groups=5,
                     min_users_per_cluster=50, random_state=seed,
                     weight_type="uniform" if mode == 2 else "normal", trace=trace)
    assert res.info["cluster_sizes"] == list(SIZES)
    kept = Counter(trace["tag"][u] for u in expected)
    for pass_name in ("first", "second"):
        bins = [[kept[(pass_name, c, g)] for g in range(trace["groups"].get((pass_name, c), 0))]
                for c in range(len(SIZES))]
        assert res.info[f"{pass_name}_pass_bins"] == bins, pass_name
    assert res.info["n_random_topup"] == kept[("topup", -1, -1)]
    assert res.users.tolist() == sorted(expected)  # the same users


@pytest.mark.parametrize("seed", [0, 1, 42])
@pytest.mark.parametrize("mode", [1, 7])
def test_stratified_modes(mode, seed):
    name = PUBLISHED[mode][0]
    ctx, _ = context(seed)
    res = run(name, ctx)
    score = np.where(ctx.train_counts < 2, np.nan, ctx.label_variance) if mode == 1 else ctx.loss
    expected, per_group = quiet(stratified_sampling, score, BUDGET, num_groups=8, drop_duplicates=mode == 1)
    assert res.info["bin_picks"] == per_group
    assert res.info["n_random_topup"] == BUDGET - len(expected)
    if seed == 42:  # the published draws use random_state=42 whatever the run seed
        assert set(expected) <= set(res.users.tolist())
    if mode == 1:
        assert res.info["n_random_topup"] > 0  # ties and single-rating users leave published groups short


@pytest.mark.parametrize("seed", [0, 1, 42])
@pytest.mark.parametrize("mode", [4, 9, 10])
def test_rounded_modes(mode, seed):
    name = PUBLISHED[mode][0]
    ctx, labels = context(seed)
    res = run(name, ctx)
    if mode == 9:
        expected = select_users_with_fps(ctx.prompts, labels, BUDGET, seed=seed)
    else:
        expected = round_and_random_sample(labels, BUDGET, num_clusters=len(SIZES),
                                           rule="at_least_one" if mode == 4 else "largest", seed=seed)
    per_cluster = np.bincount(labels[expected], minlength=len(SIZES)).tolist()
    assert res.info["picks_per_cluster"] == per_cluster
    kept = expected[:BUDGET]
    assert set(kept) <= set(res.users.tolist())  # the same users (the published generators, same order)
    assert res.info["n_truncated"] == max(len(expected) - BUDGET, 0)


def test_mode_4_at_least_one_can_exceed_the_budget():
    # Five clusters, budget 3: np.round gives [2, 1, 1, 0, 0] -> [2, 1, 1, 1, 1]: 6 > 3, cut in order.
    prompts, labels = blobs(0)
    ctx = SelectionContext(prompts=prompts, label_variance=np.zeros(labels.size),
                           train_counts=np.full(labels.size, 3), ffn_features=prompts, seed=0)
    res = select_users({"name": "ffn_kmeans", "n_clusters": len(SIZES), "kmeans_backend": "sklearn"}, ctx, 3)
    expected = round_and_random_sample(labels, 3, num_clusters=len(SIZES), rule="at_least_one", seed=0)
    assert len(expected) > 3 and res.info["n_truncated"] == len(expected) - 3
    assert res.users.tolist() == sorted(expected[:3])
