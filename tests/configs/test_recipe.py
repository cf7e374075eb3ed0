"""The defaults are the tuned recipe (demo.yaml's method settings), ``configs/paper.yaml`` the published method, and the
recipe's rating-only parts resolve per task when the config loads."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from puma_lightning.cli.config_loader import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

RECIPE = {
    "prompt.init": "scaled", "prompt.lr": 0.02, "prompt.head_lr": 0.003, "prompt.batch_size": 32,
    "prompt.residual": "user_item_bias", "prompt.hidden_readout": "ridge",
    "adapter.kind": "compact", "adapter.hidden": 256, "adapter.lr": 0.001, "adapter.epochs": 4, "adapter.batch_size": 32,
    "adapter.output_scale": "embedding_std", "adapter.readout_rows": "all", "adapter.validation": "heldout",
    "selection": {"name": "puma", "budget": 100, "n_clusters": 8, "min_per_cluster": 2},
    "baselines.random_init_epochs": 1,
}
"""The recipe chosen on validation (docs/results/demo.md, prompt_learning_ml100k.md, migration_levers_ml100k.md)."""

PUBLISHED = {
    "prompt.length": 1, "prompt.init": "uniform", "prompt.lr": 8e-4, "prompt.head_lr": None, "prompt.epochs": 15,
    "prompt.batch_size": 32, "prompt.residual": "none", "prompt.hidden_readout": "none",
    "adapter.kind": "puma", "adapter.hidden": 4096, "adapter.dropout": 0.1, "adapter.lr": 1e-4, "adapter.epochs": 4,
    "adapter.batch_size": 32, "adapter.output_scale": "none", "adapter.readout_rows": "selected",
    "adapter.validation": "selected", "selection.name": "puma", "selection.n_clusters": 15, "selection.min_per_cluster": 50,
    "trainer.gradient_clip_val": 1.0,
}
"""The published settings (``/work/shared/DESIGN.md``: prompts, adapter, selection mode 3's clusters)."""

SIZE = {"prompt.epochs"}
"""The demo's method keys that say how long it runs, not how: the only ones it sets besides data and models."""


def values(cfg, keys):
    return {key: OmegaConf.to_container(v) if OmegaConf.is_config(v := OmegaConf.select(cfg, key)) else v for key in keys}


def test_the_defaults_are_the_recipe():
    assert values(load_config([]), RECIPE) == RECIPE


def test_the_demo_sets_no_method_key_of_its_own_but_its_length():
    defaults, demo = load_config([]), load_config([CONFIGS / "demo.yaml"])
    for section in ("prompt", "adapter", "selection", "baselines"):
        mine = OmegaConf.to_container(demo[section])
        assert {k: v for k, v in mine.items() if f"{section}.{k}" not in SIZE} == \
            {k: v for k, v in OmegaConf.to_container(defaults[section]).items() if f"{section}.{k}" not in SIZE}, section


def test_paper_yaml_is_the_published_method():
    assert values(load_config([CONFIGS / "paper.yaml"]), PUBLISHED) == PUBLISHED


CHOICES = ("prompt.init", "prompt.head_lr", "prompt.residual", "prompt.hidden_readout", "adapter.output_scale",
           "adapter.readout_rows", "adapter.validation")
"""The published method's choices that are not sizes (smoke.yaml keeps these and shrinks the rest to its tiny data)."""


@pytest.mark.parametrize("name", ["smoke", "amazon", "yelp", "mind"])
def test_the_configs_that_run_the_published_method_build_on_paper_yaml(name):
    cfg = values(load_config([CONFIGS / f"{name}.yaml"]), PUBLISHED)
    assert {k: cfg[k] for k in CHOICES} == {k: PUBLISHED[k] for k in CHOICES}
    if name != "smoke":
        assert cfg == {**PUBLISHED, "prompt.lr": 5e-4 if name == "amazon" else 8e-4}


def test_the_recipes_rating_only_parts_are_off_on_a_click_task_and_say_what_they_resolved_to():
    click = load_config([], ["data.task=click", "data.template=item_click"])
    assert (click.prompt.residual, click.prompt.hidden_readout, click.adapter.readout_rows) == ("user_item_logodds", "none", "selected")
    assert click.adapter.validation == "heldout" and click.prompt.init == "scaled"  # the rest of the recipe holds
    # an explicit value wins over auto; a rating-only one is still refused on clicks
    assert load_config([], ["prompt.hidden_readout=trained"]).prompt.hidden_readout == "trained"
    with pytest.raises(ConfigError, match="fits ratings"):
        load_config([], ["data.task=click", "data.template=item_click", "prompt.residual=user_item_bias"])
    # the layered pair (rating config, then a click one) now resolves
    cfg = load_config([CONFIGS / "personal.yaml", CONFIGS / "personal_click.yaml"])
    assert (cfg.data.task, cfg.prompt.residual, cfg.prompt.hidden_readout) == ("click", "user_item_logodds", "none")


def test_naming_another_strategy_starts_from_its_own_parameters_keeping_the_budget(tmp_path):
    (tmp_path / "mine.yaml").write_text("selection: {name: random, budget: 6}\n", encoding="utf-8")
    assert OmegaConf.to_container(load_config([tmp_path / "mine.yaml"]).selection) == {"name": "random", "budget": 6}
    assert OmegaConf.to_container(load_config([], ["selection.name=random"]).selection) == {"name": "random", "budget": 100}
    (tmp_path / "budget.yaml").write_text("selection: {budget: 40}\n", encoding="utf-8")
    cfg = load_config([CONFIGS / "demo.yaml", tmp_path / "budget.yaml"])  # the same strategy: its parameters merge
    assert OmegaConf.to_container(cfg.selection) == {**RECIPE["selection"], "budget": 40}
    with pytest.raises(ConfigError, match="n_clusters"):  # a parameter the new strategy lacks is still refused
        load_config([], ["selection.name=random", "selection.n_clusters=3"])


@pytest.mark.parametrize("name", ["demo_chain", "demo_aggregate", "demo_cold_start"])
def test_a_demo_overlay_alone_is_the_overlay_on_the_demo(name):
    alone = load_config([CONFIGS / f"{name}.yaml"])
    assert alone == load_config([CONFIGS / "demo.yaml", CONFIGS / f"{name}.yaml"])
    assert alone.data.name == "movielens-100k"
