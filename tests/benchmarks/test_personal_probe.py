"""benchmarks/personal_probe.py and benchmarks/prompt_reach.py on the tiny smoke model: the numbers they report are
the ones their rows imply, and the reach fit finds a signal where the features hold one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from benchmark_loader import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
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
    from puma_lightning.pipeline.bias_models import fit_bias_model
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


def test_the_gain_difference_of_two_runs_is_paired_on_their_rows_and_says_which_kept_more(tmp_path, capsys):
    from puma_lightning.pipeline.placebo import PLACEBO_FILE
    from puma_lightning.pipeline.predictions import PREDICTIONS_FILE

    diff = load_benchmark("personal_gain_diff")
    rng = np.random.default_rng(0)
    rows, label = np.arange(400), rng.integers(1, 6, 400).astype(float)

    def stage(run, name, own_noise, placebo_noise):  # a bank whose own prompts err own_noise, other users' placebo_noise
        for seed in (0, 1):
            folder = run / f"seed_{seed}" / name
            folder.mkdir(parents=True)
            for file, noise in ((PREDICTIONS_FILE, own_noise), (PLACEBO_FILE, placebo_noise)):
                np.savez(folder / file, row=rows, user=rows // 4, label=label,
                         prediction=label + rng.normal(0, noise, len(rows)))

    stage(tmp_path / "a", "full_retrain", 0.5, 0.8)
    stage(tmp_path / "a", "puma", 0.5, 0.8)  # keeps as much as full retraining
    stage(tmp_path / "b", "puma", 0.8, 0.8)  # keeps nothing
    assert diff.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    low = float(out["gain A - B"].split("[")[1].split(",")[0])
    assert low > 0.1 and "no difference" not in out["gain A - B"]
    assert "no difference" in diff_line(diff, tmp_path / "a", tmp_path / "a", capsys)


def diff_line(diff, a, b, capsys) -> str:
    assert diff.main([str(a), str(b)]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("| gain A - B")][0]
