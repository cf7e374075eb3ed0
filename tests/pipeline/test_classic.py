"""The no-LLM references: fitted on the training split, tuned on valid, tested on the same rows as the
LLM methods, in ``fit``'s table and its paired comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from puma_lightning.cli.main import main
from puma_lightning.data.synthetic import make_synthetic_with_truth
from puma_lightning.pipeline.bias_models import fit_biases
from puma_lightning.pipeline.classic import REFERENCES, Reference, references_for, register
from puma_lightning.tasks.uncertainty import metric_on_rows

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def table():
    t, _ = make_synthetic_with_truth(seed=0, n_users=60, n_items=40, rows_per_user=20, noise_std=0.3)
    return t


def test_biases_recover_the_training_means(table):
    mu, bu, bi = fit_biases(table, reg=0.0, iterations=50)
    rows = table.rows("train")
    resid = table.label[rows] - (mu + bu[table.user[rows]] + bi[table.item[rows]])
    # unregularised least squares: residuals sum to zero for every user and every item
    assert np.abs(np.bincount(table.user[rows], weights=resid)).max() < 1e-6
    assert np.abs(np.bincount(table.item[rows], weights=resid)).max() < 1e-3


def test_references_rank_as_expected_on_data_with_user_and_item_effects(table):
    test = table.rows("test")
    label = table.label[test].astype(float)
    rmse = {}
    for name, ref in references_for(table).items():
        pred, params = ref.fit(table, 0)
        assert pred.shape == (len(table),) and pred.min() >= 1 and pred.max() <= 5, name
        rmse[name] = metric_on_rows("rmse", pred[test], label)
    assert rmse["user_item_bias"] < rmse["global_mean"] and rmse["biased_mf"] < rmse["global_mean"]
    # the decomposition's references: each side alone helps, both together help more
    assert rmse["user_item_bias"] < min(rmse["user_bias"], rmse["item_bias"])
    assert max(rmse["user_bias"], rmse["item_bias"]) < rmse["global_mean"]
    assert REFERENCES["biased_mf"].fit(table, 0)[0].tolist() == REFERENCES["biased_mf"].fit(table, 0)[0].tolist()  # seeded


def test_one_sided_biases_leave_the_other_side_at_zero(table):
    rows = table.rows("train")
    mu, bu, bi = fit_biases(table, reg=0.0, items=False)
    assert not bi.any() and np.abs(np.bincount(table.user[rows], weights=table.label[rows] - mu - bu[table.user[rows]])).max() < 1e-4
    mu, bu, bi = fit_biases(table, reg=0.0, users=False)
    assert not bu.any() and np.abs(np.bincount(table.item[rows], weights=table.label[rows] - mu - bi[table.item[rows]])).max() < 1e-4


def test_reference_names_are_unique():
    with pytest.raises(ValueError, match="already registered"):
        register(Reference("global_mean", "again", REFERENCES["global_mean"].fit))


@pytest.mark.slow
def test_fit_reports_the_references_on_the_same_test_rows(tmp_path):
    assert main(["fit", "--config", SMOKE, f"run_dir={tmp_path}", "baselines.random_init=false",
                 "baselines.full_retrain=false"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"global_mean", "user_item_bias", "biased_mf"} <= set(results["methods"])
    puma = np.load(tmp_path / "puma" / "test_predictions.npz")
    for name in (n for n, r in REFERENCES.items() if r.task == "rating"):  # smoke: ratings, items with attributes
        ref = np.load(tmp_path / "classic" / name / "test_predictions.npz")
        assert np.array_equal(ref["row"], puma["row"]) and np.allclose(ref["label"], puma["label"]), name
        assert results["methods"][name]["rmse"] == pytest.approx(metric_on_rows("rmse", ref["prediction"], ref["label"]))
    assert "| biased_mf |" in (tmp_path / "results.md").read_text()
