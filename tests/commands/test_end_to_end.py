"""``fit`` on the smoke config end to end: the files a run writes, their contents, stage reuse,
and that migrated prompts beat random prompts (lightning-hydra-template style)."""

import json
import shutil
from pathlib import Path

import pytest

from puma_lightning.pipeline.classic import REFERENCES

CLASSIC = {n: r for n, r in REFERENCES.items() if r.task == "rating"}  # smoke: ratings, items with attributes
from puma_lightning.cli.main import main
from puma_lightning.io.bank import PromptBank

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
LLM_METHODS = ("source", "random_init", "full_retrain", "puma")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    assert main(["fit", "--config", SMOKE, f"run_dir={run_dir}"]) == 0
    return run_dir


def test_fit_writes_every_output(smoke_run):
    for rel in ["config.yaml", "results.json", "results.md", "selection.json", "source/bank/manifest.json",
                "source/bank/prompts.safetensors", "puma/adapter.safetensors", "puma/bank/manifest.json",
                "full_retrain/bank/manifest.json", "source/stage.json", "puma/stage.json", "random_init/stage.json"]:
        assert (smoke_run / rel).is_file(), rel
    assert list((smoke_run / "tb").glob("*/events.out.tfevents.*")), "TensorBoard logs missing"
    assert not list(smoke_run.rglob(".*.tmp")), "temporary files left behind"


def test_results_have_every_method_and_puma_beats_random_init(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["task"] == "rating"
    assert set(results["methods"]) == {"source", "random_init", "full_retrain", "puma", *CLASSIC}
    assert 0 < results["floor_rmse"] < 1
    for name, row in results["methods"].items():
        assert 0 < row["rmse"] < 4 and 0 < row["mae"] <= row["rmse"] + 1e-9, name
    for name in LLM_METHODS:
        row = results["methods"][name]
        assert row["wall_s"] > 0 and row["train_samples"] > 0 and row["trainable_params"] > 0, name
    methods = results["methods"]
    assert methods["puma"]["rmse"] < methods["random_init"]["rmse"]
    assert methods["puma"]["train_samples"] < methods["full_retrain"]["train_samples"]
    assert methods["puma"]["rmse"] >= results["floor_rmse"]
    md = (smoke_run / "results.md").read_text()
    assert "| puma |" in md and "noise floor" in md


def test_results_say_how_and_where_each_stage_computed(smoke_run):
    import torch

    results = json.loads((smoke_run / "results.json").read_text())
    for name in LLM_METHODS:
        row = results["methods"][name]
        assert row["dtype"] == "float32" and row["prefix_cache"] is True, name  # tiny models: fp32, cache on
        assert row["prefixes_computed"] > 0 and row["prefix_s"] >= 0, name  # each stage pays for its own prefix pass
    assert results["machine"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert results["machine"]["torch"] == torch.__version__
    md = (smoke_run / "results.md").read_text()
    assert "of it prefix s" in md and f"({results['machine']['capability']}," in md and "machine: CPU" in md


def test_one_run_pairs_every_row_with_full_retraining_on_the_same_test_rows(smoke_run):
    """A single seed's table carries each row's paired difference from full retraining, recomputable from the
    per-row predictions the stages left; the reference row has none."""
    import numpy as np

    from puma_lightning.tasks.uncertainty import metric_on_rows

    methods = json.loads((smoke_run / "results.json").read_text())["methods"]
    assert "vs_full_retrain" not in methods["full_retrain"]
    ref = np.load(smoke_run / "full_retrain" / "test_predictions.npz")
    for name in ("source", "random_init", "puma", "user_item_bias"):
        paired = methods[name]["vs_full_retrain"]
        folder = smoke_run / (f"classic/{name}" if name in CLASSIC else name)
        pred = np.load(folder / "test_predictions.npz")
        expected = metric_on_rows("rmse", pred["prediction"], ref["label"]) - metric_on_rows("rmse", ref["prediction"], ref["label"])
        assert paired["diff"] == pytest.approx(expected, abs=1e-9), name
        assert paired["low"] <= paired["diff"] <= paired["high"] and paired["rows"] == len(ref["label"]), name
        assert paired["verdict"] == ("no difference" if paired["low"] <= 0 <= paired["high"]
                                     else "better" if paired["high"] < 0 else "worse"), name
    md = (smoke_run / "results.md").read_text()
    puma = methods["puma"]["vs_full_retrain"]
    assert "RMSE vs full_retrain [95 %]" in md
    assert f"{puma['diff']:+.4f} [{puma['low']:+.4f}, {puma['high']:+.4f}] {puma['verdict']}" in md


def test_selection_and_banks_are_consistent(smoke_run):
    selection = json.loads((smoke_run / "selection.json").read_text())
    assert selection["strategy"] == "puma" and selection["num_selected"] == 30 == len(set(selection["user_ids"]))
    source = PromptBank.load(smoke_run / "source" / "bank")
    migrated = PromptBank.load(smoke_run / "puma" / "bank")
    assert source.hidden_size == 32 and migrated.hidden_size == 48  # tiny-llama -> tiny-gemma3
    assert migrated.user_ids == source.user_ids
    assert migrated.info["source"]["model_fingerprint"] == source.model_fingerprint
    assert migrated.head_state is not None


def test_migrate_and_test_commands_reproduce_the_fit(smoke_run, tmp_path, capsys):
    out = tmp_path / "migrated"
    assert main(["migrate", "--config", SMOKE, f"run_dir={tmp_path}", f"bank={smoke_run / 'source' / 'bank'}",
                 f"adapter_path={smoke_run / 'puma' / 'adapter.safetensors'}", f"out={out}"]) == 0
    fitted = PromptBank.load(smoke_run / "puma" / "bank")
    remigrated = PromptBank.load(out)
    assert remigrated.model_fingerprint == fitted.model_fingerprint
    assert (remigrated.prompts - fitted.prompts).abs().max() < 1e-5
    capsys.readouterr()
    assert main(["test", "--config", SMOKE, f"run_dir={tmp_path}", f"bank={out}", "model=target"]) == 0
    stdout = capsys.readouterr().out
    printed = json.loads(stdout[stdout.index("{"):stdout.rindex("}") + 1])
    results = json.loads((smoke_run / "results.json").read_text())
    assert printed["split"] == "test"
    assert printed["rmse"] == pytest.approx(results["methods"]["puma"]["rmse"], abs=1e-4)


@pytest.mark.slow
def test_second_fit_reuses_finished_stages(smoke_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(smoke_run, run_dir)
    before = (run_dir / "source" / "bank" / "manifest.json").stat().st_mtime_ns
    assert main(["fit", "--config", SMOKE, f"run_dir={run_dir}"]) == 0
    assert (run_dir / "source" / "bank" / "manifest.json").stat().st_mtime_ns == before
    assert json.loads((run_dir / "results.json").read_text()) == json.loads((smoke_run / "results.json").read_text())


def test_using_a_bank_on_the_wrong_model_is_a_one_line_error(smoke_run, tmp_path, capsys):
    code = main(["test", "--config", SMOKE, f"run_dir={tmp_path}", f"bank={smoke_run / 'source' / 'bank'}", "model=target"])
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # log lines may come first; the error is one line at the end
    assert code == 2 and last.startswith("error:") and "hidden size 32" in last and "Traceback" not in err


@pytest.mark.slow
def test_a_stage_made_with_other_trainer_settings_is_recomputed(smoke_run, tmp_path):
    """Trainer limits change a stage's result, so they are part of its key; cosmetic settings are not."""
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    stage = run_dir / "source" / "stage.json"
    before = json.loads(stage.read_text())
    assert main(["pretrain", "--config", SMOKE, f"run_dir={run_dir}", "model=source", "trainer.limit_train_batches=0.25"]) == 0
    limited = json.loads(stage.read_text())
    assert limited["key"] != before["key"] and limited["train_samples"] < before["train_samples"]
    assert main(["pretrain", "--config", SMOKE, f"run_dir={run_dir}", "model=source", "trainer.limit_train_batches=0.25",
                 "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]) == 0
    assert json.loads(stage.read_text()) == limited  # reused: progress bars and logging do not change results


def test_backbones_are_shared_by_their_whole_load_config(tmp_path):
    """A source and a target of one name but another dtype are two models, not whichever loaded first."""
    import torch

    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.pipeline.experiment import Experiment

    same = Experiment(load_config([SMOKE], [f"run_dir={tmp_path / 'a'}", "target.name=tiny-llama", "source.name=tiny-llama"]))
    assert same.backbone("source") is same.backbone("target")
    other = Experiment(load_config([SMOKE], [f"run_dir={tmp_path / 'b'}", "target.name=tiny-llama", "source.name=tiny-llama",
                                             "target.dtype=bfloat16"]))
    assert other.backbone("source").dtype == torch.float32 and other.backbone("target").dtype == torch.bfloat16
    assert other.loaded_backbone("target") is not None and other.loaded_backbone("source") is None  # one kept at a time


@pytest.mark.slow
def test_a_stage_gives_the_same_numbers_whatever_ran_before_it(smoke_run, tmp_path):
    """Each stage seeds its own streams: puma without the baselines (random_init ran before it in the
    smoke run, warming the target's prefix cache and drawing from the RNG) gives the same metrics."""
    run_dir = tmp_path / "alone"
    assert main(["fit", "--config", SMOKE, f"run_dir={run_dir}", "baselines.random_init=false",
                 "baselines.full_retrain=false", "baselines.source=false"]) == 0
    alone = json.loads((run_dir / "results.json").read_text())["methods"]
    together = json.loads((smoke_run / "results.json").read_text())["methods"]
    assert set(alone) == {"puma", *CLASSIC}
    for metric in ("rmse", "mae"):
        assert alone["puma"][metric] == pytest.approx(together["puma"][metric], abs=1e-6), metric


def test_results_say_what_each_bank_knows_about_its_users(smoke_run):
    """Every bank row carries its placebo (its prompts dealt to other users), personal gain with its interval, and
    migrated rows the share of full retraining's gain they retained; the markdown shows the columns."""
    methods = json.loads((smoke_run / "results.json").read_text())["methods"]
    for name in ("source", "full_retrain", "puma"):
        row = methods[name]
        assert (smoke_run / name / "placebo_predictions.npz").is_file()
        assert set(row["placebo"]) == {"rmse", "mae"} and row["placebo"]["rmse"] != row["rmse"]
        gain = row["personal_gain"]
        assert gain["low"] <= gain["value"] <= gain["high"] and gain["own"] == pytest.approx(row["rmse"], abs=1e-4)
        assert gain["value"] == pytest.approx(row["placebo"]["rmse"] - row["rmse"])
    assert "retained" in methods["puma"] and "retained" not in methods["full_retrain"]
    assert "personal_gain" not in methods["user_item_bias"]  # no bank, no placebo
    md = (smoke_run / "results.md").read_text()
    assert "personal gain [95 %]" in md and "retained [95 %]" in md and "placebo RMSE" in md


def test_the_placebo_command_reproduces_the_fit_placebo_of_a_bank(smoke_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["placebo", "--config", SMOKE, f"run_dir={tmp_path}", f"bank={smoke_run / 'puma' / 'bank'}",
                 "placebo.resamples=200"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("rmse:", "mae:"))]
    assert [line.split(":")[0] for line in lines] == ["rmse", "mae"]
    puma = json.loads((smoke_run / "results.json").read_text())["methods"]["puma"]
    doc = json.loads((tmp_path / "placebo.json").read_text())["personal_gain"]
    assert doc["rmse"]["own"] == pytest.approx(puma["rmse"], abs=1e-4)
    assert doc["rmse"]["placebo"] == pytest.approx(puma["placebo"]["rmse"], abs=1e-4)  # the same seeded derangement
    assert f"{doc['rmse']['value']:+.4f}" in lines[0] and "personal gain" in lines[0]


@pytest.mark.slow
def test_a_run_cached_before_placebos_gets_them_from_its_banks(smoke_run, tmp_path):
    run_dir = tmp_path / "old"
    shutil.copytree(smoke_run, run_dir)
    for name in ("source", "random_init", "full_retrain", "puma"):
        (run_dir / name / "placebo_predictions.npz").unlink()
    assert main(["fit", "--config", SMOKE, f"run_dir={run_dir}"]) == 0
    old, new = (json.loads((d / "results.json").read_text())["methods"] for d in (smoke_run, run_dir))
    for name in ("source", "full_retrain", "puma"):
        assert (run_dir / name / "placebo_predictions.npz").is_file()
        assert new[name]["personal_gain"]["value"] == pytest.approx(old[name]["personal_gain"]["value"], abs=1e-4)
    assert "personal_gain" not in new["random_init"]  # no bank to score it from
