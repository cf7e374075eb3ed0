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
