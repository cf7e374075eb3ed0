"""The shipped configs of issue 31 build the data they promise, and ``fit`` runs the new kinds end to end with the right
references and floor (tiny models and a few users: only the models and sizes are overridden). ``ml100k_full`` is
``ml100k``'s data on more rows a user with ``personal``'s prompt recipe and PUMA's shrink; ``ml100k_click`` inherits
it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from puma_lightning.cli.config_loader import load_config
from puma_lightning.cli.main import main
from puma_lightning.pipeline.builders import build_table

ROOT = Path(__file__).resolve().parents[2]
TINY = ["source.name=tiny-llama", "target.name=tiny-gemma3", "prompt.epochs=1", "adapter.epochs=1", "adapter.steps=null",
        "adapter.hidden=32", "baselines.full_retrain=false", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        "selection.budget=6", "selection.n_clusters=2", "selection.min_per_cluster=2", "seeds=[0]", "trainer.num_threads=1"]


def config(name: str, *overrides: str):
    return load_config([ROOT / "configs" / f"{name}.yaml"], list(overrides))


def test_personal_is_the_issues_synthetic_setup():
    cfg = config("personal")
    assert list(cfg.seeds) == [0, 1, 2] and cfg.prompt.residual == "user_item_bias"  # the demo's recipe, 3 seeds
    table = build_table(cfg.data, 0)
    assert (table.task, table.n_users, table.n_items, len(table)) == ("rating", 300, 200, 7200)
    assert table.meta["split"]["counts"] == {"train": 4800, "valid": 1200, "test": 1200}  # 16/4/4 a user
    assert set(table.meta["item_attributes"]) == {"genre", "mood", "decade"} and table.meta["floor_rmse"] < 0.6
    click = build_table(config("personal_click").data, 0)
    assert (click.task, click.n_users, len(click)) == ("click", 300, 7200) and 0.5 < click.meta["floor_auc"] < 1


def test_ml100k_full_keeps_up_to_64_latest_ratings_of_every_user():
    cfg = config("ml100k_full")
    assert list(cfg.seeds) == [0, 1, 2] and cfg.baselines.classic
    # personal.yaml's prompt recipe, chosen on validation (docs/prompt_diagnosis.md, section 10), and the shrink
    assert cfg.prompt.item_match > 0 and cfg.prompt.taste_prior > 0 and cfg.adapter.init == "item_map"
    assert cfg.adapter.shrink == "valid" and cfg.prompt.residual == "user_item_bias"
    assert cfg.adapter.keep_start == "valid"  # chosen by validation per seed; all 943 users: the start kept the users
    table = build_table(cfg.data, 0)
    per_user = np.bincount(table.user)
    assert table.n_users == 943 and per_user.max() == 64 and per_user.min() == 20  # ML-100k users rated >= 20
    counts = table.meta["split"]["counts"]
    assert counts["test"] == counts["valid"] and 0.09 < counts["test"] / len(table) < 0.11


def test_ml100k_click_is_every_user_as_implicit_feedback():
    cfg = config("ml100k_click")
    assert cfg.data.template == "item_first_click" and cfg.prompt.residual == "user_item_logodds"
    assert cfg.prompt.item_match > 0 and cfg.prompt.taste_prior > 0 and cfg.adapter.init == "item_map"
    assert cfg.adapter.keep_start == "none"  # as its 3-seed table was measured
    table = build_table(cfg.data, 0)
    assert table.task == "click" and table.n_users == 943 and table.label.mean() == 0.5  # one negative a positive
    assert np.bincount(table.user[table.label == 1]).max() == 64


CASES = {
    "personal": (["data.n_users=12"], {"floor", "attribute_ridge", "user_item_bias", "biased_mf"}, "rmse"),
    "personal_click": (["data.n_users=12"], {"floor_auc", "popularity", "item_item", "attribute_ridge_click"}, "uauc"),
    "ml100k_click": (["data.max_users=12", "data.max_rows_per_user=8"], {"popularity", "item_item"}, "uauc"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_config_fits_with_its_references(name, tmp_path):
    sizes, expected, metric = CASES[name]
    assert main(["fit", "--config", str(ROOT / "configs" / f"{name}.yaml"), f"run_dir={tmp_path}", *TINY, *sizes]) == 0
    results = json.loads((tmp_path / "seed_0" / "results.json").read_text()) if (tmp_path / "seed_0").is_dir() else \
        json.loads((tmp_path / "results.json").read_text())
    methods = results["methods"]
    assert {"source", "random_init", "puma"} <= set(methods)
    assert {e for e in expected if not e.startswith("floor")} <= set(methods)
    assert ("attribute_ridge" in methods) == (name == "personal")  # items with attributes: the synthetic ones
    assert ("attribute_ridge_click" in methods) == (name == "personal_click")
    if "floor" in expected:
        assert results["floor_rmse"] is not None
    if "floor_auc" in expected:
        assert results["floor_auc"] is not None
    assert all(row[metric] == row[metric] for row in methods.values())  # not NaN


def test_references_benchmark_prints_the_machine_and_the_personal_gaps(capsys):
    from benchmark_loader import load_benchmark, machine_line

    assert load_benchmark("references").main(["--config", str(ROOT / "configs" / "personal.yaml"), "--config",
                                              str(ROOT / "configs" / "ml100k_click.yaml"), "data.n_users=40",
                                              "data.max_users=40"]) == 0
    printed = capsys.readouterr().out
    assert "dtype" not in machine_line(printed)  # no model
    assert "| attribute_ridge |" in printed and "| item_item |" in printed and "| floor |" in printed
    assert "personal.yaml: personal signal, RMSE user_item_bias − attribute_ridge = +" in printed
    assert "ml100k_click.yaml: personal signal, UAUC item_item − popularity = " in printed
