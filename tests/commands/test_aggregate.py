"""Aggregated migration: alignment policies, and [tiny-llama 32 + tiny-qwen2 40] -> tiny-gemma3 with a
user missing from one source, end to end."""

import json
from pathlib import Path

import pytest
import torch

from puma_lightning.cli.config_loader import load_config
from puma_lightning.cli.main import main
from puma_lightning.errors import PumaError
from puma_lightning.io.bank import PromptBank, read_manifest
from puma_lightning.io.lineage import bank_content_hash
from puma_lightning.commands.aggregate import align_banks

ROOT = Path(__file__).resolve().parents[2]
AGG = str(ROOT / "configs" / "aggregate.yaml")
TINY = ["trainer.num_threads=1", "data.n_users=16", "data.rows_per_user=8", "prompt.epochs=1", "adapter.epochs=1",
        "selection.budget=8"]


def _banks():
    a = PromptBank(torch.ones(3, 1, 2), ["u1", "u2", "u3"], "A", "fa")
    b = PromptBank(torch.full((2, 1, 3), 2.0), ["u3", "u1"], "B", "fb")  # lacks u2, other order
    return a, b


def test_error_policy_names_the_missing_users():
    with pytest.raises(PumaError, match=r"source 1 \(B\) lacks 1 .*u2.*aggregate.missing"):
        align_banks(_banks(), ["u1", "u2", "u3"], "error")


def test_drop_policy_keeps_users_in_every_bank():
    out = align_banks(_banks(), ["u1", "u2", "u3"], "drop")
    assert out.user_ids == ["u1", "u3"] and out.prompts.shape == (2, 1, 5)
    assert torch.equal(out.prompts[:, 0, 2:], torch.full((2, 3), 2.0))


def test_zero_fill_policy_fills_zeros_and_appends_a_mask():
    out = align_banks(_banks(), ["u1", "u2", "u3"], "zero_fill")
    assert out.user_ids == ["u1", "u2", "u3"] and out.prompts.shape == (3, 1, 2 + 3 + 2)
    assert torch.equal(out.prompts[1, 0], torch.tensor([1.0, 1, 0, 0, 0, 1, 0]))  # B block zero, B indicator 0
    assert torch.equal(out.prompts[0, 0], torch.tensor([1.0, 1, 2, 2, 2, 1, 1]))
    assert out.present.tolist() == [[True, True], [True, False], [True, True]]


@pytest.fixture(scope="module")
def source_banks(tmp_path_factory):
    from puma_lightning.pipeline.experiment import Experiment

    root = tmp_path_factory.mktemp("agg_sources")
    paths = []
    for name in ("tiny-llama", "tiny-qwen2"):
        cfg = load_config([AGG], [*TINY, f"run_dir={root / name}", f"source.name={name}"])
        exp = Experiment(cfg)
        exp.pretrain("source", "source")
        paths.append(exp.stage_dir("source") / "bank")
    qwen = PromptBank.load(paths[1])
    dropped = qwen.user_ids[0]
    keep = qwen.user_ids[1:]
    PromptBank(qwen.rows_for(keep), keep, qwen.model_name, qwen.model_fingerprint, qwen.info, qwen.head_state).save(root / "qwen_minus_one")
    return paths[0], root / "qwen_minus_one", dropped


@pytest.mark.slow
def test_aggregate_end_to_end_with_a_missing_user(source_banks, tmp_path):
    llama, qwen, dropped = source_banks
    run = tmp_path / "run"
    assert main(["aggregate", "--config", AGG, f"run_dir={run}", *TINY, f"aggregate.banks=[{llama},{qwen}]",
                 "aggregate.missing=zero_fill"]) == 0
    doc = json.loads((run / "aggregate.json").read_text())
    assert doc["widths"] == [32, 40] and doc["missing_per_source"] == {"tiny-llama": 0, "tiny-qwen2": 1}
    kinds = {r["kind"]: r for r in doc["rows"]}
    assert set(kinds) == {"single", "aggregated", "full_retrain"} and len(doc["rows"]) == 4
    assert kinds["aggregated"]["users"] == 16 and [r["users"] for r in doc["rows"][:2]] == [16, 15]
    for r in doc["rows"]:
        assert 0 < r["metrics"]["rmse"] < 4
        assert r["personal_gain"]["low"] <= r["personal_gain"]["value"] <= r["personal_gain"]["high"]
    assert "retained" in kinds["aggregated"] and "retained" not in kinds["full_retrain"]
    assert "retained" not in doc["rows"][1]  # tiny-qwen2 alone is tested on the 15 users it has: other rows
    agg_bank = PromptBank.load(run / "aggregated_source" / "bank")
    assert agg_bank.hidden_size == 32 + 40 + 2 and agg_bank.info["aggregate"]["policy"] == "zero_fill"
    assert float(agg_bank.rows_for([dropped])[0, 0, -1]) == 0.0  # indicator: missing from tiny-qwen2
    lin = read_manifest(run / "aggregated" / "puma" / "bank")["info"]["lineage"]
    (src,) = lin["sources"]
    assert {s["content_hash"] for s in src["lineage"]["sources"]} == {bank_content_hash(llama), bank_content_hash(qwen)}
    assert PromptBank.load(run / "aggregated" / "puma" / "bank").hidden_size == 48
    assert (run / "aggregate.png").stat().st_size > 1000 and "tiny-llama + tiny-qwen2" in (run / "aggregate.md").read_text()


def test_missing_users_under_the_error_policy_is_a_one_line_error(source_banks, tmp_path, capsys):
    llama, qwen, dropped = source_banks
    code = main(["aggregate", "--config", AGG, f"run_dir={tmp_path}", *TINY, f"aggregate.banks=[{llama},{qwen}]",
                 "aggregate.missing=error"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "lacks 1" in err and dropped in err and "\n" not in err


def test_bad_policy_is_rejected_by_the_config():
    with pytest.raises(PumaError, match="aggregate.missing"):
        load_config([AGG], ["aggregate.missing=ignore"])


def test_distillation_with_an_aggregated_source_is_a_one_line_error(tmp_path, capsys):
    code = main(["aggregate", "--config", AGG, f"run_dir={tmp_path / 'run'}", *TINY, "adapter.distill_items=4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "adapter.distill_items" in err and "\n" not in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.slow
def test_a_map_start_maps_each_source_block_with_its_own_model(source_banks, tmp_path):
    """``adapter.init=vocab_map`` on an aggregated bank: the adapter starts as the mean of the single-source maps,
    block by block (the indicator features at zero weight), so an adapter that cannot move (lr 1e-12) migrates every
    user's prompts to ``(p_llama W_llama + p_qwen W_qwen) / 2``; from a random start it does not."""
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.vocab_map import experiment_vocab_map

    llama, qwen, _ = source_banks
    still = ["adapter.steps=2", "adapter.lr=1e-12", "adapter.freeze_head=true", "adapter.input_norm=none",
             "adapter.output_scale=embedding_std", "baselines.full_retrain=false", "aggregate.missing=zero_fill",
             f"aggregate.banks=[{llama},{qwen}]"]
    migrated = {}
    for init in ("vocab_map", "random"):
        run = tmp_path / init
        assert main(["aggregate", "--config", AGG, f"run_dir={run}", *TINY, *still, f"adapter.init={init}"]) == 0
        assert json.loads((run / "aggregated" / "puma" / "stage.json").read_text())["init"] == init
        migrated[init] = PromptBank.load(run / "aggregated" / "puma" / "bank")
    agg = PromptBank.load(tmp_path / "vocab_map" / "aggregated_source" / "bank")
    assert agg.info["aggregate"]["sources"] == ["tiny-llama", "tiny-qwen2"]
    weights = [experiment_vocab_map(Experiment(load_config([AGG], [*TINY, f"run_dir={tmp_path / name}",
                                                                   f"source.name={name}"]))).weight
               for name in ("tiny-llama", "tiny-qwen2")]
    start = torch.cat([weights[0] / 2, weights[1] / 2, torch.zeros(2, weights[0].shape[1])])
    users = migrated["vocab_map"].user_ids
    expected = agg.rows_for(users).float() @ start
    assert torch.allclose(migrated["vocab_map"].rows_for(users).float(), expected, atol=1e-4)
    assert not torch.allclose(migrated["random"].rows_for(users).float(), expected, atol=1e-2)


@pytest.mark.slow
def test_a_validation_chosen_start_is_the_one_the_adapter_starts_from(source_banks, tmp_path):
    """``adapter.aggregate_start=valid``: the mean map and each source's block alone are judged on the unselected users'
    validation rows before training; an adapter that cannot move (lr 1e-12) migrates every prompt with the chosen
    start, and a source replaces the mean only with the lowest validation loss."""
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.vocab_map import experiment_vocab_map

    llama, qwen, _ = source_banks
    run = tmp_path / "valid"
    assert main(["aggregate", "--config", AGG, f"run_dir={run}", *TINY, "adapter.steps=2", "adapter.lr=1e-12",
                 "adapter.freeze_head=true", "adapter.input_norm=none", "baselines.full_retrain=false",
                 "aggregate.missing=zero_fill", f"aggregate.banks=[{llama},{qwen}]", "adapter.init=vocab_map",
                 "adapter.aggregate_start=valid"]) == 0
    record = json.loads((run / "aggregated" / "puma" / "stage.json").read_text())["aggregate_start"]
    losses = record["valid_loss"]
    assert set(losses) == {"mean", "tiny-llama", "tiny-qwen2"} and record["valid_rows"] > 0
    if record["chosen"] != "mean":
        assert losses[record["chosen"]] == min(losses.values()) and record["valid_z"][record["chosen"]] < -2
    weights = [experiment_vocab_map(Experiment(load_config([AGG], [*TINY, f"run_dir={tmp_path / name}",
                                                                   f"source.name={name}"]))).weight
               for name in ("tiny-llama", "tiny-qwen2")]
    scale = {"mean": (0.5, 0.5), "tiny-llama": (1.0, 0.0), "tiny-qwen2": (0.0, 1.0)}[record["chosen"]]
    start = torch.cat([weights[0] * scale[0], weights[1] * scale[1], torch.zeros(2, weights[0].shape[1])])
    agg = PromptBank.load(run / "aggregated_source" / "bank")
    migrated = PromptBank.load(run / "aggregated" / "puma" / "bank")
    users = migrated.user_ids
    assert torch.allclose(migrated.rows_for(users).float(), agg.rows_for(users).float() @ start, atol=1e-4)
