"""``prompt.hidden_readout``: the head reads the answer position's hidden state as well as the answer logits.

A fresh readout changes nothing (it starts at zero); a saved one is reloaded where the width matches and
restarts at zero on a model of another width; the hidden state the backbone returns is the one the answer
logits come from, through the plain and the cached path; and a ``fit`` with it trains the readout, serves it
from the bank, and moves it to the target model at that model's width.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from puma_lightning.cli.config_loader import load_config
from puma_lightning.cli.main import main, setup_runtime
from puma_lightning.io.bank import PromptBank
from puma_lightning.models.backbone import FrozenLM
from puma_lightning.models.heads import ClickHead, RatingHead, build_head, load_head, readout_width
from puma_lightning.models.loading import load_backbone
from puma_lightning.models.templated_rows import TemplatedRows
from puma_lightning.pipeline.bank_ops import evaluate_bank
from puma_lightning.pipeline.readout_fit import ReadoutRows, ridge_readout
from puma_lightning.tasks.base import answer_outputs

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
FAST = ["prompt.epochs=2", "adapter.epochs=1", "data.n_users=20", "data.rows_per_user=8", "selection.budget=8",
        "baselines.random_init=false", "baselines.full_retrain=false", "baselines.classic=false", "trainer.num_threads=1",
        "prompt.hidden_readout=trained"]


@pytest.mark.parametrize("task", ["rating", "click"])
def test_a_fresh_readout_leaves_the_head_output_unchanged_and_needs_the_hidden_state(task):
    torch.manual_seed(0)
    plain, reading = build_head(task), build_head(task, hidden_size=8)
    reading.load_state_dict({**plain.state_dict(), **{k: v for k, v in reading.state_dict().items() if k.startswith("readout.")}})
    logits, hidden = torch.randn(4, plain.n_answers), torch.randn(4, 8)
    assert not plain.reads_hidden and reading.reads_hidden
    torch.testing.assert_close(reading(logits, hidden), plain(logits))
    with torch.no_grad():
        reading.readout.linear.weight.copy_(torch.randn(1, 8))  # (a constant weight reads 0: the norm centres h)
    assert not torch.allclose(reading(logits, hidden), plain(logits))  # once trained, it does add something
    with pytest.raises(ValueError, match="hidden"):
        reading(logits)


def test_load_head_keeps_a_readout_of_the_same_width_and_restarts_one_of_another():
    torch.manual_seed(1)
    head = RatingHead(hidden_size=6)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn_like(p))
    state = head.state_dict()
    assert readout_width(state) == 6 and readout_width(RatingHead().state_dict()) is None
    logits, hidden = torch.randn(3, 5), torch.randn(3, 6)
    same = load_head("rating", state)
    torch.testing.assert_close(same(logits, hidden), head(logits, hidden))
    torch.testing.assert_close(load_head("rating", state, hidden_size=6)(logits, hidden), head(logits, hidden))
    moved = load_head("rating", state, hidden_size=10)
    assert moved.readout.hidden_size == 10 and float(moved.readout.linear.weight.detach().abs().sum()) == 0.0
    torch.testing.assert_close(moved(logits, torch.randn(3, 10)), head.mlp(logits).squeeze(-1))  # the MLP came along
    assert not load_head("click", ClickHead().state_dict(), hidden_size=10).reads_hidden  # no readout saved: none made


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_answer_hidden_is_what_the_answer_logits_are_projected_from(name):
    from tests.models.test_prefix_cache import ITEMS, RATING, make_batch

    b = load_backbone(name)
    lm = FrozenLM(b.model, b.tokenizer, RATING, name=b.name, prefix_cache_mb=64)
    assert lm.prefix_cache is not None
    batch = make_batch(lm.tokenizer, "item_first")
    prompts = torch.randn(len(ITEMS), 1, lm.hidden_size, generator=torch.Generator().manual_seed(2))
    args = (TemplatedRows.of(batch), prompts)
    cached = lm.cached_answer_hidden(*args)
    plain = lm.plain_answer_hidden(*args)
    assert cached is not None and cached.shape == (len(ITEMS), lm.hidden_size)
    torch.testing.assert_close(cached.float(), plain.float(), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lm.project_answers(plain), lm.plain_answer_logits(*args))
    head = RatingHead(hidden_size=lm.hidden_size)
    logits, hidden = answer_outputs(lm, head, batch, prompts)
    torch.testing.assert_close(hidden.float(), cached.float(), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(logits, lm.answer_logits(*args), atol=2e-5, rtol=2e-5)
    assert answer_outputs(lm, RatingHead(), batch, prompts)[1] is None  # a head without a readout: logits only


@pytest.mark.slow
def test_fit_trains_the_readout_serves_it_from_the_bank_and_moves_it_to_the_target(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST]) == 0
    cfg = load_config([SMOKE], [f"run_dir={run}", *FAST])
    setup_runtime(cfg)
    source = PromptBank.load(run / "source" / "bank")
    puma = PromptBank.load(run / "puma" / "bank")
    assert readout_width(source.head_state) == source.hidden_size
    assert float(source.head_state["readout.linear.weight"].abs().sum()) > 0  # it trained
    assert readout_width(puma.head_state) == puma.hidden_size != source.hidden_size  # at the target's width
    # the bank serves what the stage measured: its test RMSE is the source stage's own
    stage = json.loads((run / "source" / "stage.json").read_text())
    metrics = evaluate_bank(cfg, run / "source" / "bank", "source", "test")
    assert metrics["rmse"] == pytest.approx(stage["metrics"]["rmse"], abs=1e-4)
    # and the readout is part of it: zeroed, the bank scores differently
    zeroed = PromptBank(source.prompts, source.user_ids, source.model_name, source.model_fingerprint, info=source.info,
                        head_state={k: (torch.zeros_like(v) if k.startswith("readout.") else v) for k, v in source.head_state.items()})
    zeroed.save(tmp_path / "zeroed")
    assert evaluate_bank(cfg, tmp_path / "zeroed", "source", "test")["rmse"] != pytest.approx(stage["metrics"]["rmse"], abs=1e-6)
    assert np.isfinite(json.loads((run / "puma" / "stage.json").read_text())["metrics"]["rmse"])


def test_ridge_readout_finds_a_linear_signal_and_folds_it_into_one_linear_map():
    gen = np.random.default_rng(0)
    d, n = 12, 400
    true = gen.normal(size=d)
    x, vx = gen.normal(3.0, 2.0, size=(n, d)), gen.normal(3.0, 2.0, size=(n, d))
    base, vbase = np.full(n, 3.0), np.full(n, 3.0)
    label = base + 0.1 * (x - 3.0) @ true + gen.normal(0, 0.1, n)
    vlabel = vbase + 0.1 * (vx - 3.0) @ true + gen.normal(0, 0.1, n)
    weight, bias, record = ridge_readout(ReadoutRows.per_row(x, base, label), ReadoutRows.per_row(vx, vbase, vlabel))
    assert record["val_rmse_with"] < 0.5 * record["val_rmse_without"]
    folded = np.sqrt(np.mean((np.clip(vbase + vx @ weight + bias, 1, 5) - vlabel) ** 2))
    assert folded == pytest.approx(record["val_rmse_with"], abs=1e-4)  # w·x + b is the chosen fit itself


def test_ridge_readout_on_distinct_sequences_equals_the_fit_on_every_row():
    """Rows sharing a sequence (an item read by many users) are stored once with an index; the fit must be the one on
    the rows expanded, weights and all (a fit that ignored the counts would weigh a popular item like a rare one)."""
    gen = np.random.default_rng(2)
    m, d, n = 30, 8, 500
    distinct, vdistinct = gen.normal(1.0, 2.0, size=(m, d)), gen.normal(1.0, 2.0, size=(m, d))
    index = np.minimum(gen.geometric(0.08, size=n) - 1, m - 1)  # skewed: a few sequences hold most rows
    vindex = gen.integers(0, m, size=200)
    true = gen.normal(size=d)
    base, vbase = gen.normal(3.0, 0.3, n), gen.normal(3.0, 0.3, 200)
    label = base + 0.2 * distinct[index] @ true + gen.normal(0, 0.3, n)
    vlabel = vbase + 0.2 * vdistinct[vindex] @ true + gen.normal(0, 0.3, 200)
    grouped = ridge_readout(ReadoutRows(distinct, index, base, label), ReadoutRows(vdistinct, vindex, vbase, vlabel))
    expanded = ridge_readout(ReadoutRows.per_row(distinct[index], base, label), ReadoutRows.per_row(vdistinct[vindex], vbase, vlabel))
    assert grouped[2]["penalty"] == expanded[2]["penalty"] and grouped[2]["val_rmse_with"] < grouped[2]["val_rmse_without"]
    np.testing.assert_allclose(grouped[0], expanded[0], rtol=1e-8, atol=1e-10)
    assert grouped[1] == pytest.approx(expanded[1], abs=1e-8)
    assert grouped[2]["val_rmse_with"] == expanded[2]["val_rmse_with"] and grouped[2]["train_rows"] == n


def test_ridge_readout_stays_zero_where_validation_has_nothing_to_gain():
    gen = np.random.default_rng(1)
    x, vx = gen.normal(size=(200, 6)), gen.normal(size=(100, 6))
    label = 3.0 + x[:, 0]  # a signal on the training rows only
    vlabel = np.full(100, 3.0)  # the base is already exact on validation
    weight, bias, record = ridge_readout(ReadoutRows.per_row(x, np.full(200, 3.0), label),
                                         ReadoutRows.per_row(vx, np.full(100, 3.0), vlabel))
    assert not weight.any() and bias == 0.0 and record["components"] is None


@pytest.mark.slow
def test_fit_with_a_ridge_readout_records_the_fit_and_does_not_train_it(tmp_path):
    ridge = [*FAST[:-1], "prompt.hidden_readout=ridge", "prompt.residual=user_item_bias"]
    trained = [*FAST, "prompt.residual=user_item_bias"]
    assert main(["fit", "--config", SMOKE, f"run_dir={tmp_path / 'ridge'}", *ridge]) == 0
    assert main(["fit", "--config", SMOKE, f"run_dir={tmp_path / 'trained'}", *trained]) == 0
    for stage in ("source", "puma"):
        record = json.loads((tmp_path / "ridge" / stage / "stage.json").read_text())
        fit = record["readout"]
        assert fit["val_rmse_with"] <= fit["val_rmse_without"] and fit["train_rows"] > 0 and fit["seconds"] >= 0
        other = json.loads((tmp_path / "trained" / stage / "stage.json").read_text())
        width = PromptBank.load(tmp_path / "ridge" / stage / "bank").hidden_size
        assert other["trainable_params"] - record["trainable_params"] == width + 1  # the readout is fitted, not trained
    # the source bank serves what its stage measured, neutral readout included
    cfg = load_config([SMOKE], [f"run_dir={tmp_path / 'ridge'}", *ridge])
    setup_runtime(cfg)
    source = PromptBank.load(tmp_path / "ridge" / "source" / "bank")
    assert source.head_state["readout.neutral_prompt"].shape == (1, source.hidden_size)
    metrics = evaluate_bank(cfg, tmp_path / "ridge" / "source" / "bank", "source", "test")
    stage = json.loads((tmp_path / "ridge" / "source" / "stage.json").read_text())
    assert metrics["rmse"] == pytest.approx(stage["metrics"]["rmse"], abs=1e-4)
    puma = json.loads((tmp_path / "ridge" / "puma" / "stage.json").read_text())
    selected = json.loads((tmp_path / "ridge" / "selection.json").read_text())["num_selected"]
    assert puma["readout"]["train_rows"] <= 8 * selected  # the target's readout sees only the selected users' rows


def test_a_ridge_readout_on_a_click_task_is_a_one_line_error(tmp_path, capsys):
    code = main(["fit", "--config", SMOKE, f"run_dir={tmp_path / 'r'}", *FAST[:-1], "prompt.hidden_readout=ridge",
                 "data.task=click", "data.template=item_click"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "hidden_readout=ridge" in errors[0] and "click" in errors[0]


def test_a_neutral_readout_reads_every_row_through_its_own_prompt_once_per_sequence():
    from tests.models.test_prefix_cache import ITEMS, RATING, make_batch

    b = load_backbone("tiny-llama")
    lm = FrozenLM(b.model, b.tokenizer, RATING, name=b.name, prefix_cache_mb=64)
    batch = make_batch(lm.tokenizer, "item_first")
    gen = torch.Generator().manual_seed(3)
    neutral = torch.randn(1, lm.hidden_size, generator=gen)
    head = RatingHead(hidden_size=lm.hidden_size)
    head.readout.set_neutral(neutral)
    first = torch.randn(len(ITEMS), 1, lm.hidden_size, generator=gen)
    second = torch.randn(len(ITEMS), 1, lm.hidden_size, generator=gen)
    logits_a, hidden_a = answer_outputs(lm, head, batch, first)
    logits_b, hidden_b = answer_outputs(lm, head, batch, second)
    assert not torch.allclose(logits_a, logits_b)  # the logits read the users' prompts ...
    torch.testing.assert_close(hidden_a, hidden_b)  # ... the readout the neutral one
    args = (TemplatedRows.of(batch), neutral[None].expand(len(ITEMS), -1, -1))
    torch.testing.assert_close(hidden_a, lm.plain_answer_hidden(*args).float(), atol=2e-5, rtol=2e-5)
    assert len(head.readout.neutral_cache) == len(set(ITEMS))  # one read per distinct sequence
    with torch.no_grad():
        head.readout.linear.weight.copy_(torch.randn(1, lm.hidden_size, generator=gen))
    reloaded = load_head("rating", head.state_dict())
    assert reloaded.readout.neutral
    torch.testing.assert_close(reloaded(logits_a, answer_outputs(lm, reloaded, batch, first)[1]), head(logits_a, hidden_a))


@pytest.mark.slow
def test_puma_fits_the_targets_readout_on_every_users_rows_when_asked(tmp_path):
    ridge = [*FAST[:-1], "prompt.hidden_readout=ridge", "prompt.residual=user_item_bias", "adapter.readout_rows=all"]
    assert main(["fit", "--config", SMOKE, f"run_dir={tmp_path / 'all'}", *ridge]) == 0
    cfg = load_config([SMOKE], [f"run_dir={tmp_path / 'all'}", *ridge])
    setup_runtime(cfg)
    from puma_lightning.pipeline.experiment import Experiment

    table = Experiment(cfg).table
    puma = json.loads((tmp_path / "all" / "puma" / "stage.json").read_text())
    assert puma["readout"]["train_rows"] == len(table.rows("train")) and puma["readout"]["valid_rows"] == len(table.rows("valid"))
    chosen = np.array([table.user_ids.index(u) for u in json.loads((tmp_path / "all" / "selection.json").read_text())["user_ids"]])
    assert len(chosen) < table.n_users  # the adapter still trains on the selected users' rows only (1 epoch)
    assert puma["train_samples"] == len(table.rows("train", chosen)) < puma["readout"]["train_rows"]


@pytest.mark.slow
def test_puma_can_fit_the_readout_on_every_users_rows_of_the_adapters_items(tmp_path):
    from puma_lightning.pipeline.readout_fit import adapter_items
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.stages.puma import heldout_users

    ridge = [*FAST[:-1], "prompt.hidden_readout=ridge", "prompt.residual=user_item_bias", "adapter.readout_rows=adapter_items",
             "adapter.validation=heldout"]
    assert main(["fit", "--config", SMOKE, f"run_dir={tmp_path / 'items'}", *ridge]) == 0
    cfg = load_config([SMOKE], [f"run_dir={tmp_path / 'items'}", *ridge])
    setup_runtime(cfg)
    table = Experiment(cfg).table
    chosen = np.array([table.user_ids.index(u) for u in json.loads((tmp_path / "items" / "selection.json").read_text())["user_ids"]])
    items = adapter_items(table, chosen, heldout_users(table.n_users, chosen, cfg.seed))
    kept = table.only_items(items)
    assert set(np.unique(table.item[kept.rows("train")])) <= set(items) and len(kept.rows("test")) < len(table.rows("test"))
    np.testing.assert_array_equal(kept.user, table.user)  # indices unchanged: prompts and offsets line up
    puma = json.loads((tmp_path / "items" / "puma" / "stage.json").read_text())
    assert puma["readout"]["train_rows"] == len(kept.rows("train")) and puma["readout"]["valid_rows"] == len(kept.rows("valid"))
    assert len(table.rows("train", chosen)) < puma["readout"]["train_rows"] < len(table.rows("train"))  # more than the adapter's own
    assert puma["train_samples"] == len(table.rows("train", chosen))


def test_the_ridge_fit_leaves_every_modules_train_or_eval_mode_as_it_found_it(tmp_path):
    from puma_lightning.pipeline.builders import build_datamodule, build_prompt_tuning, fresh_head, initial_prompts
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.readout_fit import fit_readout

    cfg = load_config([SMOKE], [f"run_dir={tmp_path}", *FAST[:-1], "prompt.hidden_readout=ridge", "prompt.residual=user_item_bias"])
    setup_runtime(cfg)
    exp = Experiment(cfg)
    lm, table = exp.backbone("source"), exp.table
    prompts, scale = initial_prompts(cfg, lm, table)
    module = build_prompt_tuning(cfg, lm, table, fresh_head(cfg, lm, table, 0.0, prompts), prompts, scale)
    module.train()
    lm.eval()  # as the stages hold it: the frozen model in eval mode (no dropout, no recomputation) under a training task
    before = [m.training for m in module.modules()]
    fit_readout(module, build_datamodule(table, lm.tokenizer, cfg, 8))
    assert [m.training for m in module.modules()] == before
