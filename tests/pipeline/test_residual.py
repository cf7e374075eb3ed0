"""``prompt.residual``: the model output is head + a no-LLM bias model's prediction, wired through
training, testing, migration and ``predict`` (the LLM learns what the bias model misses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from puma_lightning.cli.config_loader import load_config
from puma_lightning.cli.main import main
from puma_lightning.pipeline.builders import build_datamodule, build_table
from puma_lightning.pipeline.classic import REFERENCES
from puma_lightning.pipeline.levers.hooks import start_label
from puma_lightning.pipeline.residual import pair_offsets, row_offsets

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
FAST = ["prompt.epochs=1", "adapter.epochs=1", "data.n_users=20", "data.rows_per_user=8", "selection.budget=8",
        "baselines.random_init=false", "trainer.num_threads=1", "prompt.residual=user_item_bias"]


def test_offsets_are_the_bias_reference_before_clipping():
    cfg = load_config([SMOKE], FAST)
    table = build_table(cfg.data, 0)
    offsets = row_offsets(cfg, table)
    reference, _ = REFERENCES["user_item_bias"].fit(table, 0)
    assert offsets.shape == (len(table),) and np.allclose(np.clip(offsets, 1, 5), reference, atol=1e-5)
    cfg.prompt.residual = "item_bias"
    item_only, _ = REFERENCES["item_bias"].fit(table, 0)
    assert np.allclose(np.clip(row_offsets(cfg, table), 1, 5), item_only, atol=1e-5)
    assert abs(start_label(cfg, table)) < 0.5  # the mean training residual, not the mean rating (about 3)
    cfg.prompt.residual = "none"
    assert row_offsets(cfg, table) is None and start_label(cfg, table) == pytest.approx(float(table.label[table.rows("train")].mean()))


def test_pair_offsets_read_the_bias_model_of_the_training_table():
    cfg = load_config([SMOKE], FAST)
    table = build_table(cfg.data, 0)
    from puma_lightning.commands.predict import pairs_table

    rows = table.rows("test")[:7]
    pairs = [(table.user_ids[table.user[r]], table.item_id_list()[table.item[r]]) for r in rows]
    ptable, kept, _ = pairs_table(pairs, table.user_ids, table)
    assert len(kept) == 7
    assert np.allclose(pair_offsets(cfg, table, ptable), row_offsets(cfg, table)[rows], atol=1e-6)


def test_a_head_that_outputs_zero_predicts_exactly_the_bias_model(tmp_path):
    """The residual reaches the output: a zeroed head + offsets scores the reference's test RMSE."""
    import lightning as L

    from puma_lightning.models.heads import build_head
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.tasks import PromptTuning

    cfg = load_config([SMOKE], [*FAST, f"run_dir={tmp_path}"])
    exp = Experiment(cfg)
    table, lm = exp.table, exp.backbone("source")
    head = build_head("rating")
    with torch.no_grad():
        head.mlp[-1].weight.zero_()
        head.mlp[-1].bias.zero_()
    module = PromptTuning(lm, head, "rating", torch.zeros(table.n_users, 1, lm.hidden_size), train_prompts=False, train_head=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.test(module, datamodule=build_datamodule(table, lm.tokenizer, cfg, 16), verbose=False)[0]
    reference, _ = REFERENCES["user_item_bias"].fit(table, 0)
    rows = table.rows("test")
    expected = float(np.sqrt(np.mean((reference[rows] - table.label[rows]) ** 2)))
    assert out["test/rmse"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_fit_with_a_residual_base_says_so_and_predict_serves_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST]) == 0
    results = json.loads((run / "results.json").read_text())
    for name in ("source", "puma", "full_retrain"):
        assert results["methods"][name]["residual"] == "user_item_bias", name
    assert "residual" not in results["methods"]["user_item_bias"]
    assert "+ residual on user_item_bias" in (run / "results.md").read_text()
    cfg = load_config([SMOKE], FAST)
    table = build_table(cfg.data, 0)
    preds = np.load(run / "puma" / "test_predictions.npz")
    pairs = [(table.user_ids[table.user[r]], table.item_id_list()[table.item[r]]) for r in preds["row"]]
    (tmp_path / "pairs.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in pairs))
    out = tmp_path / "pred.csv"
    assert main(["predict", "--config", SMOKE, f"run_dir={tmp_path / 'p'}", *FAST, f"bank={run / 'puma' / 'bank'}", "model=target",
                 f"pairs={tmp_path / 'pairs.csv'}", f"out={out}"]) == 0
    served = np.array([float(line.split(",")[2]) for line in out.read_text().splitlines()[1:]])
    assert np.allclose(served, preds["prediction"], atol=1e-5)  # what `fit` tested, offsets included


@pytest.mark.slow
def test_residual_needs_a_rating_task_and_a_known_base(tmp_path, capsys):
    assert main(["fit", "--config", SMOKE, f"run_dir={tmp_path / 'a'}", "prompt.residual=mf"]) == 2
    assert "'prompt.residual'" in capsys.readouterr().err
    from puma_lightning.cli.config_loader import ConfigError
    from puma_lightning.errors import PumaError

    with pytest.raises(ConfigError, match="prompt.residual=user_item_bias fits ratings, but data.task=click"):
        load_config([SMOKE], ["data.task=click", "data.template=item_click", "prompt.residual=user_item_bias"])
    cfg = load_config([SMOKE], ["data.task=click", "data.template=item_click"])
    cfg.prompt.residual = "user_item_bias"  # past the config check (the API): the fit still refuses, in one line
    with pytest.raises(PumaError, match="rating tasks"):
        row_offsets(cfg, build_table(cfg.data, 0))


def test_the_bias_model_is_fitted_once_per_table(monkeypatch):
    import puma_lightning.pipeline.bias_models as bias_models

    calls = []
    real = bias_models.fit_bias_model
    monkeypatch.setattr(bias_models, "fit_bias_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = load_config([SMOKE], FAST)
    table = build_table(cfg.data, 0)
    first = row_offsets(cfg, table)
    assert np.array_equal(row_offsets(cfg, table), first) and start_label(cfg, table) is not None
    assert len(calls) == 1
    row_offsets(cfg, build_table(cfg.data, 0))  # another table: fitted again
    assert len(calls) == 2


def _click_table(users: int = 300, items: int = 60, per_user: int = 30, seed: int = 0):
    """A click table whose clicks follow known user and item log-odds biases (valid: each user's last 5 rows)."""
    from puma_lightning.data.table import InteractionTable

    rng = np.random.default_rng(seed)
    bu, bi = rng.normal(scale=0.5, size=users), rng.normal(scale=1.5, size=items)
    user = np.repeat(np.arange(users), per_user)
    item = rng.integers(0, items, size=len(user))
    label = (rng.random(len(user)) < 1 / (1 + np.exp(-(0.3 + bu[user] + bi[item])))).astype(np.float32)
    split = np.tile(np.r_[np.zeros(per_user - 5), np.ones(5)].astype(np.int8), users)
    table = InteractionTable(user=user, item=item, label=label, timestamp=np.arange(len(user)), split=split, user_ids=[f"u{k}" for k in range(users)],
                             item_texts=[f"item {k}" for k in range(items)], task="click", meta={"name": "generated"})
    return table, bu, bi


def test_a_logistic_base_recovers_the_click_biases_and_reaches_the_output_in_logit_units():
    from puma_lightning.pipeline.bias_models import fit_click_bias_model, log_loss

    table, bu, bi = _click_table()
    mu, fu, fi, chosen = fit_click_bias_model(table)
    assert np.corrcoef(fi, bi)[0, 1] > 0.9 and np.corrcoef(fu, bu)[0, 1] > 0.5, chosen
    items_only = fit_click_bias_model(table, users=False)
    assert not items_only[1].any() and np.corrcoef(items_only[2], bi)[0, 1] > 0.9
    valid = table.rows("valid")
    y = table.label[valid].astype(float)
    rate = float(table.label[table.rows("train")].mean())
    constant = log_loss(np.full(len(valid), np.log(rate / (1 - rate))), y)
    assert chosen["valid_log_loss"] < constant - 0.05  # the biases predict clicks
    cfg = load_config([SMOKE], ["data.task=click", "data.template=item_click", "prompt.residual=user_item_logodds"])
    offsets = row_offsets(cfg, table)
    assert offsets.dtype == np.float32 and np.allclose(offsets, mu + fu[table.user] + fi[table.item], atol=1e-5)
    cfg.prompt.residual = "user_item_bias"  # a least-squares base on a click table is one clear error
    from puma_lightning.errors import PumaError

    with pytest.raises(PumaError, match="is for rating tasks"):
        row_offsets(cfg, table)
