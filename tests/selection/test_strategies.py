"""Tests of every selection strategy: exact budget, determinism, edge cases, strategy YAMLs, the
shared allocation helpers, and user-defined strategies loaded through ``class:``."""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from puma_lightning.cli.config_loader import load_config, strategies_dir
from puma_lightning.selection import (
    STRATEGIES,
    SelectionContext,
    build_strategy,
    register_strategy,
    select_users,
    strategy_class,
)
from puma_lightning.selection.allocation import allocate, bin_weights, farthest_point_pick, pca, stratified_pick

ROOT = Path(__file__).resolve().parents[2]
STRATEGY_DIR = Path(str(strategies_dir()))  # the packaged presets (= top-level strategies/)
ALL = sorted(STRATEGIES)
NEW = ["variance_bucket", "loss_bucket", "kmeans_stratified", "kmeans_pca", "kmeans_fps", "kmeans_loss",
       "ffn_kmeans", "ffn_kmeans_loss", "ffn_kmeans_variance"]
FIXED = {"variance_bucket": "variance_bucket_fixed", "loss_bucket": "loss_bucket_5", "kmeans_pca": "kmeans_pca_32",
         "kmeans_fps": "kmeans_fps_fixed", "kmeans_loss": "kmeans_loss_equal", "ffn_kmeans": "ffn_kmeans_fixed",
         "ffn_kmeans_loss": "ffn_kmeans_loss_equal", "ffn_kmeans_variance": "ffn_kmeans_variance_fixed"}
"""Each published preset and our former variant of it, kept under another name (``allocation: fixed``)."""


def make_ctx(sizes=(150, 100, 50), d=8, seed=0, variance=None, loss=None, counts=None, ffn=None) -> SelectionContext:
    """Users in separated clusters of ``sizes`` (contiguous), with every optional statistic filled."""
    rng = np.random.default_rng(99)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    n = labels.size
    prompts = (rng.normal(0, 1, (len(sizes), d)) * 50)[labels] + rng.normal(0, 1, (n, d))
    if ffn is None:
        ffn = (prompts @ rng.normal(0, 1, (d, 32)) > 0).astype(np.float32)
        ffn /= np.maximum(np.linalg.norm(ffn, axis=1, keepdims=True), 1e-12)
    return SelectionContext(
        prompts=prompts,
        label_variance=rng.random(n) if variance is None else variance,
        train_counts=np.full(n, 8) if counts is None else counts,
        seed=seed,
        loss=rng.random(n) + labels if loss is None else loss,
        ffn_features=ffn,
    )


def test_every_published_strategy_registered_with_needs():
    assert set(NEW) | {"random", "puma"} <= set(STRATEGIES)
    assert STRATEGIES["loss_bucket"].needs == ("loss",)
    assert STRATEGIES["kmeans_loss"].needs == ("loss",)
    assert STRATEGIES["ffn_kmeans"].needs == ("ffn_features",)
    assert set(STRATEGIES["ffn_kmeans_loss"].needs) == {"ffn_features", "loss"}
    assert STRATEGIES["puma"].needs == () and STRATEGIES["kmeans_fps"].needs == ()


def test_published_defaults():
    vb = build_strategy({"name": "variance_bucket"}).params
    assert vb.n_bins == 8 and np.allclose(bin_weights(vb.n_bins, vb.weight_span, vb.weight_floor),
                                          (lambda w: w / w.sum())(np.exp(-np.linspace(-3, 3, 8) ** 2 / 2) + 0.1))
    assert build_strategy({"name": "loss_bucket"}).params.n_bins == 8 and build_strategy({"name": "loss_bucket_5"}).params.n_bins == 5
    assert build_strategy({"name": "kmeans_fps"}).params.n_clusters == 15
    fv = build_strategy({"name": "ffn_kmeans_variance"}).params
    assert np.allclose(bin_weights(fv.n_bins, fv.weight_span, fv.weight_floor), [0.079, 0.237, 0.369, 0.237, 0.079], atol=5e-4)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("budget", [1, 7, 120, 299])
def test_exact_budget(name, budget):
    res = select_users({"name": name, "n_clusters": 4} if "kmeans" in name else {"name": name}, make_ctx(), budget)
    assert res.users.size == budget and np.unique(res.users).size == budget
    assert res.users.min() >= 0 and res.users.max() < 300


@pytest.mark.parametrize("name", ALL)
def test_deterministic_and_seed_sensitive(name):
    a = select_users({"name": name}, make_ctx(seed=1), 50).users
    b = select_users({"name": name}, make_ctx(seed=1), 50).users
    c = select_users({"name": name, "seed": 2}, make_ctx(seed=1), 50)  # node seed overrides ctx seed
    d = select_users({"name": name}, make_ctx(seed=2), 50).users
    assert np.array_equal(a, b) and np.array_equal(c.users, d) and c.seed == 2
    assert not np.array_equal(a, d)


@pytest.mark.parametrize("name", NEW)
def test_small_clusters_ties_constant_and_missing_rows(name):
    counts = np.full(300, 8)
    counts[::4] = 0  # 75 users without training rows
    ctx = make_ctx(sizes=(3, 2, 295), variance=np.zeros(300), loss=np.repeat([1.0, 2.0], 150), counts=counts)
    clustered = "kmeans" in name
    for variant in (name, FIXED.get(name, name)):
        users = build_strategy({"name": variant, "n_clusters": 3} if clustered else {"name": variant}).select(ctx, 60)
        assert users.size == 60 and np.all(counts[users] > 0)
    if clustered:  # fixed: clusters smaller than their minimum give all their users (those with rows)
        res = select_users({"name": FIXED.get(name, name), "n_clusters": 3, "min_per_cluster": 5}, ctx, 200)
        assert res.users.size == 200 and np.all(counts[res.users] > 0)
        assert sorted(res.info["cluster_sizes"])[:2] == sorted(res.info["selected_per_cluster"])[:2]
    # above the users with rows: all of them, then others
    assert build_strategy({"name": name}).select(ctx, 250).size == 250


def test_constant_score_buckets_uniform():
    ctx = make_ctx(variance=np.full(300, 0.5), loss=np.full(300, 3.0))
    assert select_users({"name": "variance_bucket_fixed"}, ctx, 40).info["uniform"] is True
    assert select_users({"name": "loss_bucket_5"}, ctx, 40).info["uniform"] is True
    # published: every qcut edge is equal, so no user gets a group and nobody is picked; the top-up fills it
    res = select_users({"name": "variance_bucket"}, ctx, 40)
    assert res.info["n_groups"] == 0 and res.info["n_random_topup"] == 40 and res.users.size == 40


@pytest.mark.parametrize("name", ["variance_bucket", "variance_bucket_fixed"])
def test_variance_bucket_weights_favour_middle(name):
    variance = np.random.default_rng(3).permutation(800).astype(float)
    res = select_users({"name": name}, make_ctx(sizes=(800,), variance=variance), 100)
    picks = np.bincount((variance[res.users] // 100).astype(int), minlength=8)
    assert picks.tolist() == res.info["bin_picks"] and picks[3] > picks[0] and picks[4] > picks[7]


def test_loss_bucket_equal_bins():
    loss = np.random.default_rng(4).permutation(500).astype(float)
    res = select_users({"name": "loss_bucket_5"}, make_ctx(sizes=(500,), loss=loss), 50)
    assert np.bincount((loss[res.users] // 100).astype(int), minlength=5).tolist() == [10] * 5


def test_loss_bucket_published_normal_weights():
    loss = np.random.default_rng(4).permutation(800).astype(float)
    res = select_users({"name": "loss_bucket"}, make_ctx(sizes=(800,), loss=loss), 100)
    picks = np.bincount((loss[res.users] // 100).astype(int), minlength=8).tolist()
    # floor(w * 100) with w = exp(-x^2/2) + 0.1 over linspace(-3, 3, 8), normalised; the rest on the last group
    w = np.exp(-np.linspace(-3, 3, 8) ** 2 / 2) + 0.1
    quotas = (w / w.sum() * 100).astype(int)
    quotas[-1] = 100 - quotas[:-1].sum()
    assert picks == res.info["bin_picks"] == quotas.tolist() and res.info["n_random_topup"] == 0


def test_cluster_strategies_proportional():
    for name in ("kmeans_stratified", "kmeans_pca_32", "kmeans_fps_fixed", "kmeans_loss_equal", "ffn_kmeans_fixed"):
        res = select_users({"name": name, "n_clusters": 3}, make_ctx(sizes=(300, 140, 60)), 100)
        assert sorted(res.info["selected_per_cluster"]) == [12, 28, 60], name  # 60, 28, 12 by size


def test_kmeans_fps_spreads_out():
    rng = np.random.default_rng(0)
    x = rng.random((400, 2))
    ctx = SelectionContext(prompts=x, label_variance=np.zeros(400), train_counts=np.ones(400))
    fps = select_users({"name": "kmeans_fps", "n_clusters": 1}, ctx, 20).users
    rnd = select_users({"name": "random"}, ctx, 20).users

    def min_gap(u):
        d = ((x[u][:, None] - x[u][None]) ** 2).sum(-1) + np.eye(len(u)) * 9
        return d.min()

    assert min_gap(fps) > min_gap(rnd)


def test_missing_statistic_is_a_clear_error():
    ctx = make_ctx()
    ctx.loss = None
    with pytest.raises(ValueError, match="kmeans_loss.*needs SelectionContext.loss"):
        select_users({"name": "kmeans_loss"}, ctx, 10)
    assert select_users({"name": "kmeans_loss"}, ctx, 300).users.size == 300  # all users: nothing needed


def test_allocation_helpers():
    first, second = allocate(np.array([300, 140, 10]), 100, 20)
    assert first.tolist() == [20, 20, 10] and (first + second).tolist() == [54, 36, 10]
    rng = np.random.default_rng(0)
    x = np.repeat(np.eye(3), 4, axis=0)  # duplicates
    chosen = farthest_point_pick(x, 5, rng)
    assert np.unique(chosen).size == 5 and len({tuple(r) for r in x[chosen[:3]]}) == 3
    users, bins = stratified_pick(np.arange(10), np.repeat([0.0, 1.0], 5), 4, bin_weights(5), rng)
    assert users.size == 4 and sum(bins) == 4
    z = pca(np.random.default_rng(1).normal(size=(50, 6)), 2)
    assert z.shape == (50, 2) and np.allclose(z.mean(0), 0, atol=1e-5) and z[:, 0].var() >= z[:, 1].var()
    assert np.array_equal(pca(z, 2), pca(z, 2))


@pytest.mark.parametrize("path", sorted(STRATEGY_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_strategy_yaml_matches_defaults_and_config_loader(path):
    assert re.match(r"#.*python -m puma_lightning .*selection=" + path.stem + r"\b", path.read_text().splitlines()[0])
    node = OmegaConf.load(path)
    strategy = build_strategy(node)
    params = {k: v for k, v in node.items() if k not in ("name", "published_mode")}
    assert params == {f.name: f.default for f in fields(strategy.Params)}
    assert "published_mode" in node and node.published_mode == type(strategy).published_mode
    cfg = load_config([ROOT / "configs" / "smoke.yaml"], [f"selection={path.stem}", "selection.budget=7"])
    assert cfg.selection.name == path.stem and cfg.selection.budget == 7
    assert select_users(OmegaConf.to_container(cfg.selection), make_ctx()).users.size == 7


def test_published_mode_key_is_checked():
    assert STRATEGIES["puma"].published_mode is None and STRATEGIES["puma_faithful"].published_mode == 3
    assert build_strategy({"name": "kmeans_pca", "published_mode": 10}).params.n_components == 256
    assert build_strategy({"name": "kmeans_pca_32", "published_mode": None}).params.n_components == 32
    for bad, match in ((11, "one of 1..10"), (True, "one of 1..10"), ("7", "one of 1..10"),
                       (9, "reproduces mode 10"), (None, "reproduces mode 10")):
        with pytest.raises(ValueError, match=match):
            build_strategy({"name": "kmeans_pca", "published_mode": bad})
    with pytest.raises(ValueError, match="reproduces none"):
        build_strategy({"name": "puma", "published_mode": 3})
    with pytest.raises(ValueError, match="unknown parameter 'published_mod'"):  # unknown keys stay errors
        build_strategy({"name": "puma", "published_mod": 3})


def test_param_and_seed_overrides_through_config_loader():
    cfg = load_config([ROOT / "configs" / "smoke.yaml"], ["selection=kmeans_fps", "selection.n_clusters=7", "selection.seed=3"])
    res = select_users(OmegaConf.to_container(cfg.selection), make_ctx())
    assert res.params["n_clusters"] == 7 and res.seed == 3


# --------------------------------------------------------------------------- user-defined strategy


def _doc_blocks() -> tuple[str, str]:
    text = (ROOT / "docs" / "custom_strategy.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)[0], re.findall(r"```yaml\n(.*?)```", text, re.S)[0]


def test_custom_strategy_example_from_docs(tmp_path, monkeypatch):
    code, yaml = _doc_blocks()
    assert len(code.splitlines()) <= 15
    (tmp_path / "my_strategies.py").write_text(code, encoding="utf-8")
    (tmp_path / "high_variance.yaml").write_text(yaml, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        node = OmegaConf.load(tmp_path / "high_variance.yaml")
        variance = np.random.default_rng(0).permutation(300).astype(float)
        res = select_users(node, make_ctx(variance=variance), 10)
        assert res.strategy == "high_variance" and res.params == {"min_rows": 2}
        assert sorted(res.users.tolist()) == sorted(np.argsort(-variance)[:10].tolist())
        # loading again (same class) is fine; the same class under another name, or another class under a taken name, is not
        assert strategy_class(node) is STRATEGIES["high_variance"]
        with pytest.raises(ValueError, match="registered as 'high_variance'"):
            strategy_class({"name": "other", "class": "my_strategies.HighVariance"})
        with pytest.raises(ValueError, match="already registered"):
            register_strategy("high_variance")(type("Other", (STRATEGIES["random"],), {}))
        # an experiment config can name the class directly (selection.class=...)
        (tmp_path / "exp.yaml").write_text("selection:\n  name: high_variance\n  class: my_strategies.HighVariance\n"
                                           "  budget: 5\n", encoding="utf-8")
        cfg = load_config([tmp_path / "exp.yaml"], ["selection.min_rows=3"])
        assert select_users(OmegaConf.to_container(cfg.selection), make_ctx(), 5).params == {"min_rows": 3}
    finally:
        STRATEGIES.pop("high_variance", None)
        sys.modules.pop("my_strategies", None)


def test_class_key_errors():
    with pytest.raises(ValueError, match="cannot import module"):
        strategy_class({"name": "x", "class": "no_such_module_xyz.Cls"})
    with pytest.raises(ValueError, match="not a SelectionStrategy"):
        strategy_class({"name": "x", "class": "numpy.ndarray"})
    with pytest.raises(ValueError, match="module.ClassName"):
        strategy_class({"name": "x", "class": "nodots"})
