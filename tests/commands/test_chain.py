"""Chained migration tiny-llama (32) -> tiny-qwen2 (40) -> tiny-gemma3 (48) end to end on tiny data."""

import json
from pathlib import Path

import pytest

from puma_lightning.cli.main import main
from puma_lightning.io.bank import PromptBank

from conftest import CHAIN, CHAIN_TINY as TINY  # the chain_run fixture lives in conftest.py


def test_every_hop_saves_adapter_bank_and_reference(chain_run):
    doc = json.loads((chain_run / "chain.json").read_text())
    assert doc["models"] == ["tiny-llama", "tiny-qwen2", "tiny-gemma3"]
    assert [h["hidden_size"] for h in doc["hops"]] == [32, 40, 48]
    for hop in doc["hops"][1:]:
        assert Path(hop["adapter"]).is_file()
        bank = PromptBank.load(hop["bank"])
        assert bank.hidden_size == hop["hidden_size"] and bank.head_state is not None
        assert 0 < hop["migrated"]["rmse"] < 4 and 0 < hop["full_retrain"]["rmse"] < 4
        assert hop["gain"] == pytest.approx(hop["full_retrain"]["rmse"] / hop["migrated"]["rmse"])
        assert hop["migrate_train_samples"] < hop["full_train_samples"]  # adapter sees only the selected users
    assert (chain_run / "chain.png").stat().st_size > 1000
    md = (chain_run / "chain.md").read_text()
    assert "| 2 | tiny-gemma3 | 48 |" in md and "gain" in md


def test_every_hop_says_what_its_banks_know_about_their_users(chain_run):
    doc = json.loads((chain_run / "chain.json").read_text())
    assert "personal_gain" in doc["hops"][0] and "retained" not in doc["hops"][0]
    for hop in doc["hops"][1:]:
        gain, full = hop["personal_gain"], hop["full_personal_gain"]
        assert gain["low"] <= gain["value"] <= gain["high"] and full["low"] <= full["value"] <= full["high"]
        assert hop["retained"]["value"] == pytest.approx(gain["value"] / full["value"])
    assert "personal gain, migrated [95 %]" in (chain_run / "chain.md").read_text()


def test_later_hops_train_on_the_previous_migrated_bank(chain_run):
    hop1 = chain_run / "hop1_tiny-qwen2"
    hop2 = chain_run / "hop2_tiny-gemma3"
    assert not (hop1 / "source").exists() and not (hop2 / "source").exists()  # no retraining on A's data
    hop2_cfg = (hop2 / "puma" / "bank" / "manifest.json").read_text()
    assert json.loads(hop2_cfg)["info"]["source"]["model_name"] == "tiny-qwen2"
    assert (hop1 / "full_retrain" / "bank" / "manifest.json").is_file()


@pytest.mark.slow
def test_rerun_reuses_every_hop(chain_run):
    stamp = (chain_run / "hop2_tiny-gemma3" / "puma" / "bank" / "manifest.json").stat().st_mtime_ns
    before = json.loads((chain_run / "chain.json").read_text())
    assert main(["chain", "--config", CHAIN, f"run_dir={chain_run}", *TINY]) == 0
    assert (chain_run / "hop2_tiny-gemma3" / "puma" / "bank" / "manifest.json").stat().st_mtime_ns == stamp
    assert json.loads((chain_run / "chain.json").read_text())["hops"] == before["hops"]


@pytest.mark.slow
def test_chain_needs_two_models(tmp_path, capsys):
    assert main(["chain", "--config", CHAIN, f"run_dir={tmp_path}", "chain.models=[tiny-llama]"]) == 2
    assert "at least two models" in capsys.readouterr().err
