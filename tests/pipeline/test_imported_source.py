"""``source.bank``: a bank the user already has replaces training source prompts in fit, migrate and the topologies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from puma_lightning.cli.config_loader import ConfigError, load_config
from puma_lightning.cli.main import main, setup_runtime
from puma_lightning.io.bank import PromptBank
from puma_lightning.pipeline.experiment import Experiment

ROOT = Path(__file__).resolve().parents[2]


def errors(stderr: str) -> list[str]:
    """The ``error:`` lines of a command's stderr (its log lines aside); a traceback fails the test."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
FAST = ["data.n_users=16", "data.rows_per_user=10", "selection.budget=8", "baselines.classic=false", "trainer.num_threads=1",
        "prompt.epochs=2", "adapter.epochs=1", "baselines.random_init=false", "baselines.full_retrain=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A source bank (with its head) and its stage record, from our own pretraining."""
    run = tmp_path_factory.mktemp("own")
    cfg = load_config([SMOKE], [f"run_dir={run}", *FAST])
    setup_runtime(cfg)
    record = Experiment(cfg).pretrain("source", "source")
    return run / "source" / "bank", record


def _headless_copy(bank_dir: Path, out: Path, drop_users: int = 0) -> PromptBank:
    """The bank's prompts without a head, as a user's own system would hand them over."""
    bank = PromptBank.load(bank_dir)
    keep = len(bank.user_ids) - drop_users
    copy = PromptBank(bank.prompts[:keep].clone(), bank.user_ids[:keep], bank.model_name, bank.model_fingerprint,
                      info={"made_by": "import:tensor"})
    copy.save(out)
    return copy


def test_a_bank_with_its_head_is_tested_as_it_is(tmp_path, trained):
    bank_dir, own = trained
    cfg = load_config([SMOKE], [f"run_dir={tmp_path}", *FAST, f"source.bank={bank_dir}"])
    setup_runtime(cfg)
    record = Experiment(cfg).pretrain("source", "source")
    assert record["imported"]["head"] == "from the bank" and record["imported"]["path"] == str(bank_dir.resolve())
    assert record["train_samples"] == 0 and record["trainable_params"] == 0
    assert record["metrics"] == own["metrics"]  # the same prompts and head on the same rows
    saved = PromptBank.load(tmp_path / "source" / "bank")
    assert torch.equal(saved.prompts, PromptBank.load(bank_dir).prompts)


@pytest.mark.slow
def test_a_headless_bank_gets_a_head_fitted_on_its_frozen_prompts_and_fit_says_imported(tmp_path, trained, capsys):
    bank_dir, _ = trained
    imported = _headless_copy(bank_dir, tmp_path / "mine")
    run = tmp_path / "run"
    code = main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, f"source.bank={tmp_path / 'mine'}"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((run / "source" / "stage.json").read_text())
    assert record["imported"]["head"] == "fitted on the frozen imported prompts"
    assert record["trainable_params"] > 0 and record["train_samples"] > 0
    saved = PromptBank.load(run / "source" / "bank")
    assert torch.equal(saved.prompts, imported.prompts) and saved.head_state is not None
    lineage = saved.info["lineage"]
    assert lineage["made_by"] == "import:source" and lineage["sources"][0]["path"] == str((tmp_path / "mine").resolve())
    results = json.loads((run / "results.json").read_text())
    assert results["methods"]["source"]["imported"]["content_hash"] == record["imported"]["content_hash"]
    assert "personal_gain" in results["methods"]["puma"]  # the placebo columns apply to the imported bank's rows too
    assert "source prompts imported from mine (source.bank)" in (run / "results.md").read_text()
    # migrate reads the same bank through source.bank
    out = tmp_path / "migrated"
    code = main(["migrate", f"run_dir={tmp_path / 'm'}", f"source.bank={tmp_path / 'mine'}",
                 f"adapter_path={run / 'puma' / 'adapter.safetensors'}", f"out={out}", "trainer.num_threads=1"])
    assert code == 0, capsys.readouterr().err
    assert PromptBank.load(out).user_ids == imported.user_ids


def test_refusals_are_one_line(tmp_path, trained, capsys):
    bank_dir, _ = trained
    _headless_copy(bank_dir, tmp_path / "short", drop_users=3)
    cases = {
        "users have no prompt": [f"source.bank={tmp_path / 'short'}"],
        "no such folder": [f"source.bank={tmp_path / 'absent'}"],
        "hidden": [f"source.bank={bank_dir}", "source.name=tiny-gemma3", "target.name=tiny-llama"],
    }
    for message, overrides in cases.items():
        run = tmp_path / f"run-{len(message)}"
        code = main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, *overrides])
        err = errors(capsys.readouterr().err)
        assert code == 2 and len(err) == 1 and message in err[0], (message, err)
        assert not (run / "source" / "stage.json").exists()
    with pytest.raises(ConfigError, match="target.bank"):
        load_config([SMOKE], [f"target.bank={bank_dir}"])
    code = main(["aggregate", "--config", SMOKE, f"run_dir={tmp_path / 'agg'}", *FAST, f"source.bank={bank_dir}",
                 "aggregate.sources=[tiny-llama,tiny-qwen2]"])
    err = errors(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and "aggregate.banks" in err[0]
