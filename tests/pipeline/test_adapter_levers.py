"""Adapter levers: input standardisation and the migrated prompts' shrink saved with the adapter, a step budget, a
separate head learning rate, and validation on held-out users."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from puma_lightning.cli.config_loader import ConfigError, load_config
from puma_lightning.cli.main import main
from puma_lightning.io.bank import PromptBank
from puma_lightning.models.adapters import InputStandardized, OutputShrunk, build_adapter, with_input_norm
from puma_lightning.pipeline.bank_ops import load_adapter
from puma_lightning.pipeline.builders import build_table
from puma_lightning.pipeline.levers.shrink import SHRINK_GRID
from puma_lightning.pipeline.stages.puma import adapter_validation_users, heldout_users

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
FAST = ["prompt.epochs=1", "adapter.epochs=1", "data.n_users=20", "data.rows_per_user=8", "selection.budget=8",
        "baselines.random_init=false", "baselines.full_retrain=false", "baselines.classic=false", "trainer.num_threads=1"]


def test_standardized_input_feeds_the_inner_adapter_unit_scale_features():
    torch.manual_seed(0)
    prompts = torch.randn(50, 2, 6) * torch.tensor([0.01, 1, 5, 0.1, 2, 3]) + 7
    inner = torch.nn.Identity()
    wrapped = with_input_norm(inner, "standardize", prompts)
    out = wrapped(prompts).reshape(-1, 6)
    assert torch.allclose(out.mean(0), torch.zeros(6), atol=1e-4) and torch.allclose(out.std(0), torch.ones(6), atol=1e-4)
    assert with_input_norm(inner, "none", prompts) is inner
    with pytest.raises(ValueError, match="standardize"):
        with_input_norm(inner, "whiten", prompts)


@pytest.mark.slow
def test_standardized_adapter_is_saved_and_migrate_applies_the_same_map(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, "adapter.input_norm=standardize"]) == 0
    adapter, _, meta = load_adapter(run / "puma" / "adapter.safetensors")
    assert meta["input_norm"] == "standardize" and isinstance(adapter, InputStandardized)
    source = PromptBank.load(run / "source" / "bank")
    flat = source.prompts.float().reshape(-1, source.hidden_size)
    assert torch.allclose(adapter.mean, flat.mean(0), atol=1e-5)  # statistics over all users, not the selected ones
    assert_migrate_reproduces_the_bank(run, tmp_path / "migrated")


@pytest.mark.slow
def test_a_shrunk_adapter_is_saved_and_migrate_applies_the_same_map(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, "adapter.shrink=valid"]) == 0
    record = json.loads((run / "puma" / "stage.json").read_text())["shrink"]
    assert record["alpha"] in SHRINK_GRID and len(record["valid_loss"]) == len(SHRINK_GRID)
    assert set(record["valid_z"]) == {str(a) for a in SHRINK_GRID if a != 1.0}
    # judged on every unselected user's validation rows, not the heldout ones that chose the adapter's epoch
    table = build_table(load_config([SMOKE], [*FAST]).data, 0)
    selected = json.loads((run / "selection.json").read_text())["user_ids"]
    unselected = np.flatnonzero(~np.isin(np.asarray(table.user_ids), selected))
    assert len(selected) == 8 and record["valid_rows"] == len(table.rows("valid", unselected))
    adapter, _, meta = load_adapter(run / "puma" / "adapter.safetensors")
    assert meta["shrink"] == "valid" and isinstance(adapter, OutputShrunk) and float(adapter.alpha) == record["alpha"]
    assert_migrate_reproduces_the_bank(run, tmp_path / "migrated")


def assert_migrate_reproduces_the_bank(run: Path, out: Path) -> None:
    """``migrate`` with the run's saved adapter maps its source bank to the ``puma`` stage's bank."""
    assert main(["migrate", "--config", SMOKE, f"run_dir={run}", f"bank={run / 'source' / 'bank'}",
                 f"adapter_path={run / 'puma' / 'adapter.safetensors'}", f"out={out}"]) == 0
    assert torch.allclose(PromptBank.load(out).prompts, PromptBank.load(run / "puma" / "bank").prompts, atol=1e-5)


@pytest.mark.parametrize(("metadata", "message"), [({"input_norm": "standardize"}, "do not fit its metadata"),
                                                   ({"shrink": "valid"}, "holds no centre and alpha")])
def test_an_adapter_file_whose_tensors_do_not_fit_is_a_one_line_error(tmp_path, metadata, message):
    from safetensors.torch import save_file

    from puma_lightning.errors import PumaError

    plain = build_adapter("compact", 4, 6, hidden=8, dropout=0.0)
    path = tmp_path / "a.safetensors"
    save_file({f"adapter.{k}": v.contiguous() for k, v in plain.state_dict().items()}, str(path),
              metadata={"kind": "compact", "source_dim": "4", "target_dim": "6", "hidden": "8", **metadata})
    with pytest.raises(PumaError, match=message):
        load_adapter(path)


@pytest.mark.slow
def test_adapter_step_budget_head_lr_and_heldout_validation(tmp_path):
    run = tmp_path / "run"
    # 8 selected users x 4 training rows = 32 rows = 4 batches of 8 an epoch: 6 steps cross an epoch boundary
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, "adapter.steps=6", "adapter.batch_size=8",
                 "adapter.head_lr=0.0001", "adapter.validation=heldout", "adapter.warmup_ratio=0.2"]) == 0
    record = json.loads((run / "puma" / "stage.json").read_text())
    assert record["train_samples"] == 6 * 8


def validation_steps(run: Path, stage: str = "puma") -> list[int]:
    """The optimiser steps done when each of a stage's validations ran, from its ``val/loss`` points in TensorBoard
    (Lightning logs a validation at the step count before the batch that preceded it: hence + 1)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb" / stage))
    events.Reload()
    return [e.step + 1 for e in events.Scalars("val/loss")]


@pytest.mark.slow
@pytest.mark.parametrize(("steps", "validations", "expected"), [
    (6, 2, [3, 6]),  # 4 batches a pass: without the spread it validated after step 4 only
    (3, 2, [2, 3]),  # a budget shorter than one pass still validates, the last time after its final step
    (6, 4, [2, 4, 6]),  # ceil(6 / 4) = 2 steps apart: three fit, the last on the final step
])
def test_step_budget_validates_evenly_and_after_the_final_step(tmp_path, steps, validations, expected):
    run = tmp_path / "run"
    # 8 selected users x 4 training rows = 32 rows = 4 batches of 8 a pass
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, f"adapter.steps={steps}", "adapter.batch_size=8",
                 f"adapter.validations={validations}"]) == 0
    assert validation_steps(run) == expected
    record = json.loads((run / "puma" / "stage.json").read_text())
    assert record["train_samples"] == steps * 8 and record["best_val_loss"] is not None


@pytest.mark.slow
def test_heldout_all_validation_chooses_the_epoch_on_every_unselected_user(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, "adapter.validation=heldout_all"]) == 0
    record = json.loads((run / "puma" / "stage.json").read_text())
    assert (record["selected_users"], record["validation_users"]) == (8, 20 - 8)  # FAST: 20 users, budget 8
    capped = tmp_path / "capped"
    assert main(["fit", "--config", SMOKE, f"run_dir={capped}", *FAST, "adapter.validation=heldout_all",
                 "adapter.validation_max_users=5"]) == 0
    assert json.loads((capped / "puma" / "stage.json").read_text())["validation_users"] == 5


def test_adapter_validation_users_per_mode():
    selected = np.array([1, 4, 7])
    assert adapter_validation_users("selected", 20, selected, seed=0).tolist() == [1, 4, 7]
    assert adapter_validation_users("heldout", 20, selected, seed=0).tolist() == heldout_users(20, selected, seed=0).tolist()
    assert adapter_validation_users("heldout_all", 10, selected, seed=0).tolist() == [0, 2, 3, 5, 6, 8, 9]
    assert adapter_validation_users("heldout_all", 3, np.array([0, 1, 2]), seed=0).tolist() == [0, 1, 2]  # nobody left
    with pytest.raises(ValueError, match="heldout_all"):
        adapter_validation_users("all", 10, selected, seed=0)


def test_heldout_all_draws_at_most_max_users_of_the_unselected():
    selected = np.array([1, 4, 7])
    capped = adapter_validation_users("heldout_all", 20, selected, seed=0, max_users=5)
    assert len(capped) == 5 and not set(capped.tolist()) & {1, 4, 7}
    assert capped.tolist() == heldout_users(20, selected, seed=0, size=5).tolist()  # seeded: the same draw again
    assert capped.tolist() != adapter_validation_users("heldout_all", 20, selected, seed=1, max_users=5).tolist()
    # a cap at or above the unselected users changes nothing
    assert adapter_validation_users("heldout_all", 10, selected, seed=0, max_users=7).tolist() == [0, 2, 3, 5, 6, 8, 9]


def test_heldout_users_are_seeded_unselected_and_as_many_as_the_budget():
    selected = np.array([1, 4, 7])
    a = heldout_users(20, selected, seed=0)
    assert len(a) == 3 and not set(a) & set(selected) and a.tolist() == heldout_users(20, selected, seed=0).tolist()
    assert heldout_users(5, np.array([1, 2, 4]), seed=0).tolist() == [0, 3]  # only 2 unselected users left


@pytest.mark.parametrize("override", ["adapter.steps=0", "adapter.input_norm=pca", "adapter.validation=all",
                                      "adapter.warmup_ratio=-0.1", "adapter.early_stopping_patience=0",
                                      "adapter.validation_max_users=0", "adapter.validations=0"])
def test_bad_adapter_levers_name_the_key(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config([SMOKE], [override])


@pytest.mark.slow
def test_polish_and_vocab_map_rows(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, "adapter.polish_epochs=1", "baselines.vocab_map=true"]) == 0
    methods = json.loads((run / "results.json").read_text())["methods"]
    puma, polish, vocab = methods["puma"], methods["puma_polish"], methods["vocab_map"]
    # the polish pays for the adapter and for its own epoch over every user
    record = json.loads((run / "puma_polish" / "stage.json").read_text())
    assert polish["train_samples"] == puma["train_samples"] + record["polish_train_samples"] > puma["train_samples"]
    assert vocab["train_samples"] == 0 and json.loads((run / "vocab_map" / "stage.json").read_text())["shared_tokens"] > 0
    for stage in ("puma_polish", "vocab_map"):
        preds = np.load(run / stage / "test_predictions.npz")
        assert np.array_equal(preds["row"], np.load(run / "puma" / "test_predictions.npz")["row"]), stage


def test_vocab_map_recovers_a_linear_relation():
    from puma_lightning.pipeline.vocab_map import fit_vocab_map

    torch.manual_seed(0)
    x = torch.randn(400, 8)
    w = torch.randn(8, 5)
    assert torch.allclose(fit_vocab_map(x, x @ w, ridge=0.0), w, atol=1e-4)


def test_single_token_pairs_keep_only_strings_both_encode_as_one_token():
    from puma_lightning.pipeline.vocab_map import single_token_pairs

    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

        def convert_tokens_to_string(self, tokens):
            return "".join(tokens)

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[self.vocab[t]] if t in self.vocab else [self.vocab.get(c, 0) for c in t] for t in texts]}

    source = Tok({"ab": 0, "c": 1, " ": 2, "xyz": 3})
    target = Tok({"c": 7, "ab": 9, "x": 1, "y": 2, "z": 3})
    assert single_token_pairs(source, target) == ([0, 1], [9, 7])


def test_compact_adapter_starts_as_the_given_linear_map_behind_standardisation():
    from puma_lightning.models.adapters import init_as_linear

    torch.manual_seed(0)
    prompts = torch.randn(40, 2, 6) * torch.tensor([0.01, 1, 5, 0.1, 2, 3]) + 4
    weight, bias = torch.randn(6, 5), torch.randn(5)
    for norm in ("none", "standardize"):
        adapter = with_input_norm(build_adapter("compact", 6, 5, hidden=16, dropout=0.1), norm, prompts)
        assert not torch.allclose(adapter.eval()(prompts), prompts @ weight + bias, atol=1e-3)
        init_as_linear(adapter, weight, bias)
        assert torch.allclose(adapter.eval()(prompts), prompts @ weight + bias, atol=1e-4), norm
        # the correction still trains: its output layer has a gradient at the start
        adapter.train()(prompts).pow(2).sum().backward()
        inner = adapter.inner if norm == "standardize" else adapter
        assert inner.mlp[-1].weight.grad.abs().sum() > 0


def test_only_adapters_with_a_linear_path_accept_the_vocab_map_start():
    from puma_lightning.models.adapters import init_as_linear, linear_path_kinds

    assert "compact" in linear_path_kinds() and "puma" not in linear_path_kinds()
    with pytest.raises(ValueError, match="no linear path"):
        init_as_linear(build_adapter("puma", 6, 5, hidden=8), torch.zeros(6, 5))
    with pytest.raises(ConfigError, match=r"'adapter\.init' is 'vocab_map'.*'puma' has none; use one of: compact"):
        load_config([SMOKE], ["adapter.init=vocab_map", "adapter.kind=puma"])
    with pytest.raises(ConfigError, match=r"'adapter\.init' is 'zeros'; expected one of: random, vocab_map"):
        load_config([SMOKE], ["adapter.init=zeros"])


@pytest.mark.slow
def test_vocab_map_start_makes_the_untrained_adapter_the_training_free_map(tmp_path):
    """With a learning rate too small to move it, the PUMA bank is the source bank through the vocabulary map; under the
    default start it is not. The map's seconds are recorded with PUMA's wall."""
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.vocab_map import experiment_vocab_map

    still = [*FAST, "adapter.steps=2", "adapter.lr=1e-12", "adapter.freeze_head=true", "adapter.input_norm=standardize",
             "adapter.output_scale=embedding_std"]
    banks = {}
    for init in ("vocab_map", "random"):
        run = tmp_path / init
        assert main(["fit", "--config", SMOKE, f"run_dir={run}", *still, f"adapter.init={init}"]) == 0
        record = json.loads((run / "puma" / "stage.json").read_text())
        assert record["init"] == init
        assert record["init_s"] >= 0 if init == "vocab_map" else record["init_s"] == 0  # tiny models load in ~1 ms
        assert record["wall_s"] >= record["init_s"]
        banks[init] = PromptBank.load(run / "puma" / "bank")
    exp = Experiment(load_config([SMOKE], [f"run_dir={tmp_path / 'vocab_map'}", *still]))
    source = PromptBank.load(tmp_path / "vocab_map" / "source" / "bank")
    expected = source.rows_for(banks["vocab_map"].user_ids).float() @ experiment_vocab_map(exp).weight
    assert torch.allclose(banks["vocab_map"].rows_for(banks["vocab_map"].user_ids).float(), expected, atol=1e-4)
    assert not torch.allclose(banks["random"].rows_for(banks["random"].user_ids).float(), expected, atol=1e-2)


def test_map_start_for_an_aggregated_bank_that_does_not_name_its_sources_is_a_one_line_error():
    from types import SimpleNamespace

    from puma_lightning.errors import PumaError
    from puma_lightning.pipeline.levers.adapter_init import adapter_start_map

    exp = SimpleNamespace(cfg=load_config([SMOKE], ["adapter.init=vocab_map"]))
    merged = SimpleNamespace(info={"aggregate": {"widths": [4, 8]}}, model_name="a+b", hidden_size=12)
    with pytest.raises(PumaError, match=r"aggregated bank \(a\+b\) does not name its source models.*adapter\.init=random"):
        adapter_start_map(exp, merged)
    exp.cfg.adapter.init = "random"
    assert adapter_start_map(exp, merged) is None

@pytest.mark.slow
@pytest.mark.parametrize(("lr", "kept"), [("30", "start"), ("1e-12", "trained")])
def test_keep_start_restores_the_map_when_training_wrecks_it_on_validation(tmp_path, lr, kept):
    """``adapter.keep_start=valid`` with the vocabulary-map start: an adapter trained at an absurd lr scores far worse
    on the unselected users' validation rows, so the start is kept and the bank is the map's image of the source bank
    (and ``migrate`` reproduces it from the saved adapter); an adapter that cannot move is no better than its start by
    any margin, so the trained one is kept."""
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.vocab_map import experiment_vocab_map

    run = tmp_path / "run"
    settings = [*FAST, "adapter.init=vocab_map", "adapter.input_norm=none", "adapter.output_scale=embedding_std",
                "adapter.keep_start=valid", f"adapter.lr={lr}", f"adapter.head_lr={lr}",
                "data.n_users=48", "data.rows_per_user=12"]  # validation rows enough to tell the two apart
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *settings]) == 0
    record = json.loads((run / "puma" / "stage.json").read_text())["keep_start"]
    assert record["kept"] == kept and record["valid_rows"] > 0
    if kept == "start":
        assert record["valid_loss"]["start"] < record["valid_loss"]["trained"] and record["valid_z"] < -2
    bank = PromptBank.load(run / "puma" / "bank")
    source = PromptBank.load(run / "source" / "bank")
    start = source.rows_for(bank.user_ids).float() @ experiment_vocab_map(
        Experiment(load_config([SMOKE], [f"run_dir={run}", *settings]))).weight
    assert torch.allclose(bank.rows_for(bank.user_ids).float(), start, atol=1e-4) == (kept == "start" or lr == "1e-12")
    assert_migrate_reproduces_the_bank(run, tmp_path / "migrated")


def test_keep_start_runs_before_the_shrink_that_judges_what_it_kept():
    from puma_lightning.pipeline.levers import LEVERS

    names = list(LEVERS)
    assert names.index("keep_start") < names.index("shrink")


@pytest.mark.slow
def test_keep_start_and_shrink_together_save_one_adapter_migrate_reproduces(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, "adapter.init=vocab_map", "adapter.input_norm=none",
                 "adapter.keep_start=valid", "adapter.shrink=valid", "adapter.lr=30", "adapter.head_lr=30",
                 "data.n_users=48", "data.rows_per_user=12"]) == 0
    record = json.loads((run / "puma" / "stage.json").read_text())
    assert record["keep_start"]["kept"] == "start" and record["shrink"]["alpha"] in SHRINK_GRID
    adapter, _, meta = load_adapter(run / "puma" / "adapter.safetensors")
    assert meta["shrink"] == "valid" and isinstance(adapter, OutputShrunk)
    assert_migrate_reproduces_the_bank(run, tmp_path / "migrated")


def test_a_start_map_whose_width_does_not_fit_the_bank_is_a_one_line_error(monkeypatch):
    from types import SimpleNamespace

    from puma_lightning.errors import PumaError
    from puma_lightning.pipeline import vocab_map
    from puma_lightning.pipeline.levers.adapter_init import adapter_start_map, fitted_map

    monkeypatch.setattr(vocab_map, "experiment_vocab_map", lambda exp: vocab_map.VocabMap(torch.zeros(5, 3), 1, 0.0))
    exp = SimpleNamespace(cfg=load_config([SMOKE], ["adapter.init=vocab_map"]))
    bank = SimpleNamespace(info={}, model_name="m", hidden_size=7)
    with pytest.raises(PumaError, match=r"'adapter.init' is 'vocab_map', but source model .* embeds in 5 dimensions "
                                        r"and its bank's prompts have 7") as raised:
        adapter_start_map(exp, bank)
    assert "\n" not in str(raised.value)
    assert fitted_map(exp, "m", 5, "it").weight.shape == (5, 3)  # the same map at the width it fits
