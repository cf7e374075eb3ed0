"""Sharded prompt banks: 100,000 x 64 prompts in shards, opened lazily (only the shards asked for)."""

import json
from unittest import mock

import pytest
import torch

from puma_lightning.io import bank as bank_module
from puma_lightning.io.bank import BankError, PromptBank, content_hash

N, D, ROWS = 100_000, 64, 10_000


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    path = tmp_path_factory.mktemp("sharded") / "bank"
    prompts = torch.arange(N * D, dtype=torch.float32).reshape(N, 1, D) / (N * D)
    users = [f"u{i:06d}" for i in range(N)]
    PromptBank(prompts, users, "m", "fp", info={"made_by": "test"}).save(path, rows_per_shard=ROWS)
    return path, prompts, users


def test_manifest_lists_shards_with_hashes(sharded):
    path, _, _ = sharded
    manifest = json.loads((path / "manifest.json").read_text())
    assert len(manifest["shards"]) == 10 and manifest["shards"][3]["file"] == "prompts-00003-of-00010.safetensors"
    assert all(len(s["sha256"]) == 64 and s["rows"] == ROWS for s in manifest["shards"])
    assert manifest["content_hash"] == content_hash(manifest)
    assert not (path / "prompts.safetensors").exists()


def test_lazy_rows_open_only_the_shards_that_hold_them(sharded):
    path, prompts, users = sharded
    real_safe_open = bank_module.safe_open
    with mock.patch.object(bank_module, "safe_open", side_effect=real_safe_open) as opened, \
            mock.patch.object(bank_module, "load_file", side_effect=AssertionError("eager load")):
        lazy = PromptBank.open(path)
        assert opened.call_count == 0  # the manifest alone
        rows = lazy.rows_for(["u000005", "u095000", "u000017"])
    files = sorted({call.args[0].rsplit("/", 1)[1] for call in opened.call_args_list})
    assert files == ["prompts-00000-of-00010.safetensors", "prompts-00009-of-00010.safetensors"]
    assert sorted(set(lazy.shards_opened)) == files
    assert torch.equal(rows, prompts[[5, 95000, 17]])
    assert lazy.hidden_size == D and len(lazy) == N


def test_eager_load_still_works_and_matches(sharded):
    path, prompts, users = sharded
    bank = PromptBank.load(path)
    assert torch.equal(bank.prompts, prompts) and bank.user_ids == users
    assert torch.equal(bank.rows_for(["u099999"]), prompts[[99999]])


def test_a_corrupted_shard_is_caught_when_it_is_opened(tmp_path):
    path = tmp_path / "bank"
    PromptBank(torch.randn(30, 1, 4), [str(i) for i in range(30)], "m", "fp").save(path, rows_per_shard=10)
    shard = path / "prompts-00002-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    lazy = PromptBank.open(path)
    lazy.rows_for(["0", "15"])  # shards 0 and 1 are fine
    with pytest.raises(BankError, match="hash does not match"):
        lazy.rows_for(["25"])
    with pytest.raises(BankError, match="hash does not match"):
        PromptBank.load(path)


def test_single_file_banks_open_lazily_too(tmp_path):
    prompts = torch.randn(5, 2, 3)
    PromptBank(prompts, list("abcde"), "m", "fp").save(tmp_path / "b")
    assert (tmp_path / "b" / "prompts.safetensors").is_file()
    lazy = PromptBank.open(tmp_path / "b")
    assert torch.equal(lazy.rows_for(["e", "a"]), prompts[[4, 0]])
    assert torch.equal(lazy.materialize().prompts, prompts)
    with pytest.raises(BankError, match="not in the bank"):
        lazy.rows_for(["zz"])
