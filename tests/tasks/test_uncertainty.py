"""Error bars: metrics over rows equal scikit-learn's, paired bootstrap intervals and verdicts, and
``fit seeds=[...]`` writing mean ± std with paired comparisons on the same test rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, roc_auc_score

from puma_lightning.pipeline.classic import REFERENCES

CLASSIC = {n: r for n, r in REFERENCES.items() if r.task == "rating"}  # smoke: ratings, items with attributes
from puma_lightning.cli.main import main
from puma_lightning.tasks.uncertainty import mean_std, metric_on_rows, paired_bootstrap, paired_comparison, verdict

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")


def test_metrics_on_rows_match_sklearn():
    rng = np.random.default_rng(0)
    label = rng.integers(1, 6, 200).astype(float)
    pred = label + rng.normal(0, 0.7, 200)
    assert metric_on_rows("rmse", pred, label) == pytest.approx(mean_squared_error(label, pred) ** 0.5)
    assert metric_on_rows("mae", pred, label) == pytest.approx(mean_absolute_error(label, pred))
    clicks = (rng.random(200) < 0.3).astype(float)
    score = clicks + rng.normal(0, 1, 200)
    assert metric_on_rows("auc", score, clicks) == pytest.approx(roc_auc_score(clicks, score))
    user = np.repeat(np.arange(20), 10)
    per_user = [roc_auc_score(clicks[user == u], score[user == u]) for u in range(20) if 0 < clicks[user == u].sum() < 10]
    assert metric_on_rows("uauc", score, clicks, user) == pytest.approx(np.mean(per_user))
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([4.0]) == (4.0, 0.0)


def test_paired_bootstrap_sees_a_real_difference_and_none_where_there_is_none():
    rng = np.random.default_rng(1)
    label = rng.integers(1, 6, 400).astype(float)
    good, bad = label + rng.normal(0, 0.5, 400), label + rng.normal(0, 1.0, 400)
    c = paired_bootstrap("rmse", good, bad, label)
    assert c["low"] <= c["diff"] <= c["high"] < 0 and verdict("rmse", c["low"], c["high"]) == "better"
    worse = paired_bootstrap("rmse", bad, good, label)
    assert worse["diff"] == pytest.approx(-c["diff"]) and verdict("rmse", worse["low"], worse["high"]) == "worse"
    same = paired_bootstrap("rmse", good, good, label)
    assert same["diff"] == same["low"] == same["high"] == 0.0 and verdict("rmse", same["low"], same["high"]) == "no difference"
    noise = paired_bootstrap("mae", good, good + rng.normal(0, 0.01, 400), label)
    assert noise["low"] < 0 < noise["high"] and verdict("mae", noise["low"], noise["high"]) == "no difference"
    clicks = (rng.random(400) < 0.4).astype(float)
    auc = paired_bootstrap("auc", clicks + rng.normal(0, 0.5, 400), clicks + rng.normal(0, 3, 400), clicks, resamples=200)
    assert auc["low"] > 0 and verdict("auc", auc["low"], auc["high"]) == "better"  # higher AUC is better
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap("rmse", good[:10], bad, label)
    # the tables' one call: the same interval, with the verdict it implies
    assert paired_comparison("rmse", good, bad, label) == {**c, "verdict": "better"}
    assert paired_comparison("rmse", bad, good, label)["verdict"] == "worse"


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("seeds")
    assert main(["fit", "--config", SMOKE, f"run_dir={run_dir}", "seeds=[0,1]"]) == 0
    return run_dir


def test_fit_over_seeds_writes_mean_std_and_paired_intervals(seeds_run):
    results = json.loads((seeds_run / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    methods = results["methods"]
    assert set(methods) == {"source", "random_init", "full_retrain", "puma", *CLASSIC}
    for name, row in methods.items():
        values = [row["per_seed"][s]["rmse"] for s in ("0", "1")]
        assert row["n_seeds"] == 2 and row["rmse"]["mean"] == pytest.approx(np.mean(values))
        assert row["rmse"]["std"] == pytest.approx(np.std(values, ddof=1))
    puma = methods["puma"]["vs"]
    assert set(puma) == {"full_retrain", "random_init"} and "full_retrain" not in methods["full_retrain"]["vs"]
    c = puma["full_retrain"]["rmse"]
    assert c["low"] <= c["diff"] <= c["high"] and c["verdict"] in ("better", "worse", "no difference")
    assert c["rows"] == sum(results["num_test_rows"].values())  # pooled over both seeds
    md = (seeds_run / "results.md").read_text()
    assert "±" in md and "95 % interval" in md and "| puma | full_retrain |" in md


@pytest.mark.slow
def test_each_seed_is_a_whole_independent_run_equal_to_a_single_fit(seeds_run, tmp_path):
    for seed in (0, 1):
        assert (seeds_run / f"seed_{seed}" / "results.json").is_file()
        assert (seeds_run / f"seed_{seed}" / "puma" / "test_predictions.npz").is_file()
    assert main(["fit", "--config", SMOKE, f"run_dir={tmp_path}", "seed=1"]) == 0
    single = json.loads((tmp_path / "results.json").read_text())["methods"]
    seeded = json.loads((seeds_run / "seed_1" / "results.json").read_text())["methods"]
    for method in single:
        assert single[method]["rmse"] == pytest.approx(seeded[method]["rmse"], abs=1e-6), method
