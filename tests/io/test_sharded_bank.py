"""Sharded prompt banks: 100,000 x 64 prompts in shards, opened lazily (only the shards asked for)."""

import json
from unittest import mock

import pytest
import numpy as np
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


def test_migrate_streams_shard_by_shard_and_equals_mapping_in_memory(tmp_path, monkeypatch):
    """The adapter sees one shard-sized block at a time, and the migrated bank equals mapping all rows at once."""
    from safetensors.torch import save_file

    from puma_lightning.io.bank import PromptBank
    from puma_lightning.models.adapters import build_adapter
    from puma_lightning.pipeline import bank_ops

    torch.manual_seed(0)
    source = PromptBank(torch.randn(23, 1, 8), [f"u{i}" for i in range(23)], "src", "fp-src")
    source.save(tmp_path / "src", rows_per_shard=5)
    adapter = build_adapter("compact", 8, 6, hidden=16, dropout=0.0).eval()
    save_file({f"adapter.{k}": v.contiguous() for k, v in adapter.state_dict().items()}, str(tmp_path / "a.safetensors"),
              metadata={"kind": "compact", "source_dim": "8", "target_dim": "6", "hidden": "16", "dropout": "0.0",
                        "output_scale": "2.0", "source_fingerprint": "fp-src", "target_model": "tgt", "target_fingerprint": "fp-t"})
    seen = []
    real = bank_ops.load_adapter

    def spying(path):
        module, head, meta = real(path)
        module.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
        return module, head, meta

    monkeypatch.setattr(bank_ops, "load_adapter", spying)
    out = bank_ops.migrate_bank(tmp_path / "src", tmp_path / "a.safetensors", tmp_path / "out")
    assert seen == [5, 5, 5, 5, 3]  # one shard at a time, never the whole bank
    migrated = PromptBank.load(tmp_path / "out")
    with torch.no_grad():
        expected = adapter(source.prompts) * 2.0
    assert torch.allclose(migrated.prompts, expected, atol=1e-6) and migrated.user_ids == source.user_ids
    assert migrated.model_fingerprint == "fp-t" and len(out.shards) == 5 and migrated.info["lineage"]["sources"]


def test_scattered_lazy_reads_return_exactly_the_rows_asked_for(tmp_path):
    """Rows in any order, repeated, clustered or far apart (read in separate runs) equal the full tensor's."""
    from puma_lightning.io.bank import READ_GAP_ROWS, LazyPromptBank, PromptBank

    torch.manual_seed(1)
    full = torch.randn(1000, 1, 4)
    PromptBank(full, [f"u{i}" for i in range(1000)], "m", "fp").save(tmp_path / "b", rows_per_shard=400)
    lazy = LazyPromptBank(tmp_path / "b")
    rng = np.random.default_rng(0)
    for rows in (rng.integers(0, 1000, 50), np.array([999, 0, 0, 399, 400, 5 + READ_GAP_ROWS, 5, 6]), np.arange(1000)[::-1].copy(),
                 np.array([3 * READ_GAP_ROWS])):
        assert torch.equal(lazy.rows(rows), full[torch.as_tensor(rows)])
