"""Bank lineage through a chain, the ``bank`` commands, and the PEFT export round trip."""

import json

import pytest
import torch

from puma_lightning.cli.main import main
from puma_lightning.io.bank import PromptBank, read_manifest
from puma_lightning.io.lineage import ancestor_hashes, bank_content_hash, file_sha256

# chain_run (tiny-llama -> tiny-qwen2 -> tiny-gemma3) is the session fixture in conftest.py


def test_lineage_and_hashes_survive_a_chain(chain_run):
    a = chain_run / "hop0_tiny-llama" / "source" / "bank"
    b = chain_run / "hop1_tiny-qwen2" / "puma" / "bank"
    c = chain_run / "hop2_tiny-gemma3" / "puma" / "bank"
    lin = read_manifest(c)["info"]["lineage"]
    assert lin["made_by"] == "migrate:puma" and lin["model"]["name"] == "tiny-gemma3" and lin["model"]["hidden_size"] == 48
    assert lin["dataset"]["name"].startswith("synthetic") and lin["selection"]["strategy"] == "puma"
    assert lin["metrics"]["rmse"] > 0 and lin["models"] == {"source": "tiny-qwen2", "target": "tiny-gemma3"}
    assert lin["adapter"]["sha256"] == file_sha256(chain_run / "hop2_tiny-gemma3" / "puma" / "adapter.safetensors")
    (src,) = lin["sources"]
    assert src["content_hash"] == bank_content_hash(b) and src["model_name"] == "tiny-qwen2"
    (root,) = src["lineage"]["sources"]
    assert root["content_hash"] == bank_content_hash(a) and root["lineage"]["made_by"] == "pretrain:source"
    assert src["lineage"]["adapter"]["sha256"] == file_sha256(chain_run / "hop1_tiny-qwen2" / "puma" / "adapter.safetensors")
    assert ancestor_hashes(lin) == {bank_content_hash(a), bank_content_hash(b)}
    # the recorded hashes still verify: the banks load
    PromptBank.load(c)


def test_bank_info_prints_the_whole_history(chain_run, capsys):
    assert main(["bank", "info", str(chain_run / "hop2_tiny-gemma3" / "puma" / "bank")]) == 0
    out = capsys.readouterr().out
    for needle in ("tiny-gemma3", "tiny-qwen2", "tiny-llama", "pretrain:source", "adapter compact 40->48", "adapter compact 32->40",
                   "content hash", "selection puma"):
        assert needle in out, needle


def test_bank_diff_users_and_widths(chain_run, tmp_path, capsys):
    b = chain_run / "hop1_tiny-qwen2" / "puma" / "bank"
    c = chain_run / "hop2_tiny-gemma3" / "puma" / "bank"
    assert main(["bank", "diff", str(b), str(c), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["comparable"] is False and "different widths" in d["note"] and d["a_is_ancestor_of_b"]
    bank = PromptBank.load(c)
    changed = PromptBank(torch.cat([bank.prompts[1:], 2 * bank.prompts[:1]]), bank.user_ids[1:] + ["newbie"],
                         bank.model_name, bank.model_fingerprint)
    changed.save(tmp_path / "changed")
    assert main(["bank", "diff", str(c), str(tmp_path / "changed"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["added"] == ["newbie"] and d["removed"] == [bank.user_ids[0]] and d["shared_users"] == len(bank.user_ids) - 1
    assert d["mean_cosine"] == pytest.approx(1.0) and d["mean_l2"] == pytest.approx(0.0, abs=1e-6)
    assert main(["bank", "diff", str(c), str(tmp_path / "changed")]) == 0
    assert "mean cosine" in capsys.readouterr().out
    assert main(["bank", "info", str(tmp_path / "missing")]) == 2


def test_export_peft_round_trip(chain_run, tmp_path):
    from peft import PeftConfig, PeftModel, PromptTuningConfig
    from transformers import AutoModelForCausalLM

    from puma_lightning.models.tiny import build_tiny_model

    bank_dir = chain_run / "hop2_tiny-gemma3" / "puma" / "bank"
    bank = PromptBank.load(bank_dir)
    user = bank.user_ids[3]
    out = tmp_path / "peft"
    assert main(["bank", "export-peft", str(bank_dir), "--user", user, "--out", str(out)]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    model, _ = build_tiny_model("tiny-gemma3")
    model.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    config = PeftConfig.from_pretrained(out)
    assert isinstance(config, PromptTuningConfig) and config.num_virtual_tokens == 1 and config.token_dim == 48
    peft_model = PeftModel.from_pretrained(base, out)
    embedding = peft_model.get_prompt_embedding_to_save("default")
    assert torch.equal(embedding, bank.rows_for([user])[0])
    assert peft_model.get_prompt(batch_size=1).shape == (1, 1, 48)
