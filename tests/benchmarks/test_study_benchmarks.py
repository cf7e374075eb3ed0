"""benchmarks/prompt_study.py and benchmarks/migration_levers.py on tiny models: the tables they write
agree with the stages they ran, and every row carries its paired interval."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
import pytest
from benchmark_loader import load_benchmark, machine_line

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TINY = ["data.n_users=20", "data.rows_per_user=8", "trainer.num_threads=1"]


def test_prompt_study_rows_and_intervals(tmp_path):
    module = load_benchmark("prompt_study")
    out = tmp_path / "study"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert module.main(["--config", SMOKE, "--levers", "shipped,long_lazy_bias,shared", "--seeds", "0,1", "--out", str(out),
                            *TINY, "prompt.epochs=1"]) == 0
    doc = json.loads((out / "study.json").read_text())
    methods = doc["methods"]
    assert {"shipped", "long_lazy_bias", "shared", "user_item_bias", "item_bias", "user_bias"} <= set(methods)
    for lever in ("shipped", "long_lazy_bias"):
        assert set(methods[lever]["vs"]) == {"user_item_bias"}
        per_seed = [json.loads((out / lever / f"seed_{s}" / "source" / "stage.json").read_text())["metrics"]["rmse"] for s in (0, 1)]
        assert methods[lever]["rmse"]["mean"] == pytest.approx(np.mean(per_seed))
    assert set(methods["shared"]["vs"]) == {"user_item_bias", "item_bias"}
    stage = json.loads((out / "long_lazy_bias" / "seed_0" / "source" / "stage.json").read_text())
    assert stage["user_bias"] and not stage["shared_prompt"]
    md = (out / "study.md").read_text()
    assert machine_line(printed.getvalue()) in md.splitlines() and "| shared | item_bias |" in md
    with pytest.raises(SystemExit):
        module.run_study([SMOKE], TINY, ["nonsense"], [0], "source", tmp_path / "x")


def test_migration_levers_table_csv_and_plot(tmp_path):
    module = load_benchmark("migration_levers")
    out = tmp_path / "levers"
    with contextlib.redirect_stdout(io.StringIO()):
        assert module.main(["--config", SMOKE, "--levers", "shipped,norm,polish", "--budgets", "0.4", "--seeds", "0,1",
                            "--out", str(out), *TINY, "prompt.epochs=1", "adapter.epochs=1"]) == 0
    doc = json.loads((out / "levers.json").read_text())
    names = {"full_retrain", "shipped @ 8 users", "norm @ 8 users", "polish @ 8 users"}
    assert set(doc["methods"]) == names
    for name in names - {"full_retrain"}:
        c = doc["methods"][name]["vs"]["full_retrain"]["rmse"]
        assert c["low"] <= c["high"] and c["verdict"] in ("better", "worse", "no difference")
        gain, kept = doc["methods"][name]["personal_gain"], doc["methods"][name]["retained"]  # pooled over both seeds
        assert gain["low"] <= gain["value"] <= gain["high"] and gain["rows"] == sum(doc["num_test_rows"].values())
        assert kept["low"] <= kept["high"]
    assert "personal_gain" in doc["methods"]["full_retrain"] and "retained" not in doc["methods"]["full_retrain"]
    assert "What the prompts know about their user" in (out / "levers.md").read_text()
    rows = list(csv.DictReader(open(out / "levers.csv", encoding="utf-8")))
    assert len(rows) == 2 * 4 and {r["method"] for r in rows if r["lever"] == "polish"} == {"puma_polish"}
    # the source stage of a seed is trained once and shared by every cell of that seed
    assert not (out / "seed_0" / "norm_b8" / "source").exists() and (out / "seed_0" / "source" / "bank").is_dir()
    assert (out / "levers.png").stat().st_size > 1000
    # every bank is validated on the same rows: every user's validation rows, whatever the lever validated on
    for name in names:
        assert doc["methods"][name]["val_loss"]["mean"] > 0, name
    full = json.loads((out / "seed_0" / "full" / "full_retrain" / "val_all.json").read_text())["metrics"]
    assert full["rmse"] == pytest.approx(float(next(r["val_rmse"] for r in rows if r["method"] == "full_retrain" and r["seed"] == "0")))
    # full retraining validated on every user's rows already: its best epoch's loss is what its bank scores there
    stage = json.loads((out / "seed_0" / "full" / "full_retrain" / "stage.json").read_text())
    assert full["loss"] == pytest.approx(stage["best_val_loss"], abs=1e-4)
    assert module.choose_on_validation(doc) in names - {"full_retrain"}
    assert "Chosen on every user's validation rows" in (out / "levers.md").read_text()
    assert doc["dataset"] == "synthetic_rating" and int(doc["num_test_rows"]["0"]) > 0  # the footer names the data, not "None"
    # a cached validation measured another bank (the stage was retrained since, another key): it is measured again
    cached = out / "seed_0" / "norm_b8" / "puma" / "val_all.json"
    saved = json.loads(cached.read_text())
    cached.write_text(json.dumps({"stage_key": "stale", "metrics": {**saved["metrics"], "loss": 99.0}}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert module.main(["--config", SMOKE, "--levers", "norm", "--budgets", "0.4", "--seeds", "0",
                            "--out", str(out), *TINY, "prompt.epochs=1", "adapter.epochs=1"]) == 0
    again = json.loads(cached.read_text())
    assert again["metrics"]["loss"] == pytest.approx(saved["metrics"]["loss"]) and again["stage_key"] == saved["stage_key"]


def test_validation_picks_the_lowest_loss_unless_a_cheaper_row_is_within_its_paired_seed_spread():
    module = load_benchmark("migration_levers")

    def row(losses, samples):
        per_seed = {str(s): {"val_loss": v} for s, v in enumerate(losses)}
        mean = sum(losses) / len(losses) if losses else float("nan")
        return {"val_loss": {"mean": mean}, "train_samples": {"mean": samples}, "per_seed": per_seed}

    # b is 5x cheaper than a and its per-seed differences from a (+0.01, -0.005, +0.004) straddle their spread
    methods = {"full_retrain": row([1.0, 1.0, 1.0], 9000), "a": row([1.20, 1.10, 1.30], 5000),
               "b": row([1.21, 1.095, 1.304], 1000), "c": row([1.40, 1.30, 1.50], 10),
               "d": {"val_loss": {"mean": float("nan")}, "train_samples": {"mean": 0}}}
    assert module.choose_on_validation({"methods": methods}) == "b"
    # the same means, but b loses to a by the same amount on every seed: outside the paired spread, though far inside
    # the seeds' own spread (each seed draws other users)
    methods["b"] = row([1.2033, 1.1033, 1.3033], 1000)
    assert module.choose_on_validation({"methods": methods}) == "a"
    # one seed: no spread to be inside of, so only the best row counts
    one = {"a": row([1.20], 5000), "b": row([1.2001], 1000)}
    assert module.choose_on_validation({"methods": one}) == "a"
    assert module.choose_on_validation({"methods": {"full_retrain": row([1.0], 1)}}) is None
    assert module.budget_users(0.05, 943) == 47 and module.budget_users(94, 943) == 94


def test_random_selection_is_paired_with_the_shipped_selection_and_costs_are_shares_within_a_seed():
    module = load_benchmark("migration_levers")
    assert module.references("random_selection", 47, ["shipped", "random_selection"]) == ["full_retrain", "shipped @ 47 users"]
    assert module.references("random_selection", 47, ["random_selection"]) == ["full_retrain"]  # no shipped cell to pair
    assert module.references("cheap", 47, ["shipped", "cheap"]) == ["full_retrain"]
    per_seed = lambda *pairs: {str(s): {"train_samples": n, "wall_s": w} for s, (n, w) in enumerate(pairs)}
    results = {"methods": {"full_retrain": {"per_seed": per_seed((800, 400.0), (800, 200.0))},
                           "a": {"per_seed": per_seed((100, 50.0), (100, 40.0))}}}
    # each seed's own ratio (400/50 = 8, 200/40 = 5), averaged: 6.5, not the ratio of the means (300/45 = 6.7), with
    # the seeds' std (ddof 1) where the ratios differ: sqrt(((8 - 6.5)^2 + (5 - 6.5)^2) / 1) = 2.1
    assert module.cost_shares(results, "a") == "1/8.0 samples, 1/6.5 ± 2.1 wall"
    one = {"methods": {"full_retrain": {"per_seed": per_seed((800, 400.0))}, "a": {"per_seed": per_seed((100, 50.0))}}}
    assert module.cost_shares(one, "a") == "1/8.0 samples, 1/8.0 wall"  # one seed: no spread to print
    assert module.cost_shares(results, "full_retrain") == "-"


def test_lever_files_expand_groups_and_refuse_what_is_not_an_override(tmp_path):
    from puma_lightning.cli.config_loader import ConfigError, load_lever_sets

    good = tmp_path / "l.yaml"
    good.write_text("groups:\n  g: [a.b=1, c.d=2]\nlevers:\n  x: [+g, e.f=3]\n  y: []\n", encoding="utf-8")
    assert load_lever_sets(good) == {"x": ["a.b=1", "c.d=2", "e.f=3"], "y": []}
    for body, message in (("levers:\n  x: [+nope]\n", "names group 'nope'"), ("levers:\n  x: [plain]\n", "expected key=value"),
                          ("groups: {}\n", "expected a mapping with 'levers'")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(body, encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            load_lever_sets(bad)


@pytest.mark.parametrize("benchmark", ["prompt_study", "migration_levers"])
def test_every_lever_is_a_valid_set_of_overrides_on_the_real_data_config(benchmark):
    from puma_lightning.cli.config_loader import load_config

    module = load_benchmark(benchmark)
    for name, overrides in module.LEVERS.items():
        cfg = load_config([str(ROOT / "configs" / "ml100k.yaml")], list(overrides))
        final = dict(override.split("=", 1) for override in overrides)  # a later override of a key wins
        for key, value in final.items():  # each took effect (no key silently ignored)
            key = "selection.name" if key == "selection" else key  # selection=NAME swaps the strategy's YAML
            assert str(OmegaConf.select(cfg, key)).lower() == value.lower(), (benchmark, name, key)
