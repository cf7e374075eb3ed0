"""benchmarks/personal_probe.py and benchmarks/prompt_reach.py on the tiny smoke model: the numbers they report are
the ones their rows imply, and the reach fit finds a signal where the features hold one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from benchmark_loader import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TINY = ["data.n_users=12", "data.rows_per_user=12", "trainer.num_threads=1", "prompt.residual=user_item_bias",
        "prompt.hidden_readout=ridge"]


def test_the_probe_scores_every_split_every_epoch_against_the_references(tmp_path):
    probe = load_benchmark("personal_probe")
    assert probe.main(["--config", SMOKE, "--levers", "shipped,ridge_own", "--epochs", "2", "--out", str(tmp_path), *TINY]) == 0
    record = json.loads((tmp_path / "probe.json").read_text())
    assert record["machine"]["dtype"] == "float32"
    for result in record["results"]:
        assert [e["epoch"] for e in result["curve"]] == [0, 1, 2]
        chosen = result["chosen"]
        assert chosen["valid"]["rmse"] == min(e["valid"]["rmse"] for e in result["curve"][1:])  # chosen on valid
        for split in ("train", "valid", "test"):
            s = chosen[split]
            share = (s["bias"] - s["rmse"]) / (s["bias"] - s["attribute_ridge"])
            assert abs(s["captured"] - share) < 1e-3
            assert s["bias"] == result["references"][split]["user_item_bias"]
        assert set(result["placebo_final"]) == {"train", "valid", "test"}
    readouts = {r["lever"]: r["readout"] for r in record["results"]}
    assert readouts["ridge_own"]["reads"] == "own prompt" and "reads" not in readouts["shipped"]


def test_the_derangement_moves_every_user():
    probe = load_benchmark("personal_probe")
    perm = probe.derangement(7, 0)
    assert sorted(perm) == list(range(7)) and not np.any(perm == np.arange(7))


def test_the_reach_fit_finds_the_attributes_and_reports_every_channel(tmp_path, capsys):
    reach = load_benchmark("prompt_reach")
    assert reach.main(["--config", SMOKE, "--directions", "2", "--out", str(tmp_path), *TINY]) == 0
    rows = {r["channel"]: r for r in json.loads((tmp_path / "reach.json").read_text())["rows"]}
    assert {"expected_rating", "logits_union", "hidden_pcs", "hidden_state", "attributes"} <= set(rows)
    attributes = rows["attributes"]
    assert attributes["decodes"]["genre"] == 1.0  # the one-hot attributes decode themselves
    assert attributes["valid"] < json.loads((tmp_path / "reach.json").read_text())["references"]["user_item_bias"]["valid"]
    assert "machine:" in capsys.readouterr().out


def test_the_item_match_term_learns_tastes_from_item_features_that_hold_them():
    from puma_lightning.data.synthetic import make_synthetic
    from puma_lightning.pipeline.classic import fit_bias_model
    from puma_lightning.pipeline.classic_attributes import attribute_columns

    match = load_benchmark("item_match_probe")
    table = make_synthetic(seed=0, n_users=60, n_items=80, rows_per_user=20, noise_std=0.3, valid_ratio=0.2, test_ratio=0.2)
    mu, bu, bi, _ = fit_bias_model(table)
    base = mu + bu[table.user] + bi[table.item]
    cols, width = attribute_columns(table)
    onehot = np.zeros((table.n_items, width))
    onehot[np.arange(table.n_items)[:, None], cols] = 1.0
    label, valid = table.label.astype(float), table.rows("valid")
    bias_valid = float(np.sqrt(np.mean((np.clip(base[valid], 1, 5) - label[valid]) ** 2)))
    learned = match.train_match(table, base, onehot, 1.0, 0.02, 0.3, 0.0, 8)
    assert learned["epoch"] > 0 and learned["valid"] < bias_valid - 0.02
    frozen = match.train_match(table, base, onehot, 1.0, 0.0, 0.3, 0.0, 2)  # lr 0: the prompts' random start only
    assert frozen["valid"] >= learned["valid"]
