"""Prompt banks: round trip, atomic folder, hash check, model mismatch errors."""

import json

import pytest
import torch

from puma_lightning.io.bank import BankError, PromptBank


def _bank(n=5, length=2, hidden=8):
    return PromptBank(torch.randn(n, length, hidden), [f"u{i}" for i in range(n)], "tiny-llama", "abc123",
                      info={"made_by": "test"}, head_state={"w": torch.ones(3)})


def test_round_trip_keeps_everything(tmp_path):
    bank = _bank()
    bank.save(tmp_path / "bank")
    loaded = PromptBank.load(tmp_path / "bank")
    assert torch.equal(loaded.prompts, bank.prompts)
    assert loaded.user_ids == bank.user_ids and loaded.model_fingerprint == "abc123"
    assert loaded.info["made_by"] == "test" and torch.equal(loaded.head_state["w"], torch.ones(3))
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert manifest["hidden_size"] == 8 and manifest["prompt_length"] == 2 and manifest["num_users"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_overwrite_replaces_the_whole_folder(tmp_path):
    _bank(n=5).save(tmp_path / "bank")
    _bank(n=3).save(tmp_path / "bank")
    assert len(PromptBank.load(tmp_path / "bank").user_ids) == 3


def test_corrupted_tensor_is_refused(tmp_path):
    _bank().save(tmp_path / "bank")
    path = tmp_path / "bank" / "prompts.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BankError, match="hash does not match"):
        PromptBank.load(tmp_path / "bank")


def test_not_a_bank(tmp_path):
    with pytest.raises(BankError, match="not a prompt bank"):
        PromptBank.load(tmp_path)


def test_model_mismatch_errors_name_both_sides():
    bank = _bank(hidden=8)
    with pytest.raises(BankError, match="hidden size 8 .* has 16"):
        bank.check_model(16)
    with pytest.raises(BankError, match=r"fingerprint abc123\) but used with fingerprint zzz"):
        bank.check_model(8, "zzz")
    bank.check_model(8, "abc123")


def test_rows_for_aligns_by_user_id_and_reports_missing():
    bank = _bank()
    rows = bank.rows_for(["u3", "u0"])
    assert torch.equal(rows[0], bank.prompts[3]) and torch.equal(rows[1], bank.prompts[0])
    with pytest.raises(BankError, match="not in the bank"):
        bank.rows_for(["u9"])


def test_invalid_banks_are_rejected_at_construction():
    with pytest.raises(BankError):
        PromptBank(torch.randn(3, 8), ["a", "b", "c"], "m", "f")
    with pytest.raises(BankError):
        PromptBank(torch.randn(2, 1, 8), ["a", "a"], "m", "f")
