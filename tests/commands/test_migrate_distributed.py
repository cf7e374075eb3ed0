"""Issue 16 item 2: ``migrate`` is a Lightning predict over output shards; two DDP processes on the
CPU write the same bank as one process, and a bank of another model is refused before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from puma_lightning.io.bank import PromptBank
from puma_lightning.models.adapters import build_adapter
from puma_lightning.tasks.bank_mapping import rank_blocks

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PUMA_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "puma_lightning", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, env=env, timeout=600)


def _source_and_adapter(tmp_path: Path, n: int = 23, fingerprint: str = "fp-src") -> tuple[PromptBank, torch.nn.Module]:
    torch.manual_seed(0)
    source = PromptBank(torch.randn(n, 2, 8), [f"u{i}" for i in range(n)], "src", fingerprint, {"dataset": "synthetic"})
    source.save(tmp_path / "src", rows_per_shard=4)
    adapter = build_adapter("compact", 8, 6, hidden=16, dropout=0.0).eval()
    save_file({f"adapter.{k}": v.contiguous() for k, v in adapter.state_dict().items()}, str(tmp_path / "a.safetensors"),
              metadata={"kind": "compact", "source_dim": "8", "target_dim": "6", "hidden": "16", "dropout": "0.0",
                        "output_scale": "1.5", "source_fingerprint": "fp-src", "target_model": "tgt", "target_fingerprint": "fp-t"})
    return source, adapter


@pytest.mark.parametrize("count,world", [(0, 2), (1, 2), (5, 2), (6, 3), (7, 4)])
def test_blocks_are_dealt_to_ranks_once_each(count: int, world: int) -> None:
    dealt = [rank_blocks(count, r, world) for r in range(world)]
    assert sorted(b for part in dealt for b in part) == list(range(count))
    assert max(map(len, dealt)) - min(map(len, dealt)) <= 1


@pytest.mark.slow
def test_ddp_migration_writes_the_same_bank_as_one_process(tmp_path: Path) -> None:
    source, adapter = _source_and_adapter(tmp_path)
    common = ["migrate", "--config", SMOKE, f"bank={tmp_path / 'src'}", f"adapter_path={tmp_path / 'a.safetensors'}",
              "rows_per_shard=5", "trainer.enable_progress_bar=false", "trainer.num_threads=1"]
    one = _cli(*common, f"out={tmp_path / 'one'}", f"run_dir={tmp_path / 'run1'}")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli(*common, f"out={tmp_path / 'two'}", f"run_dir={tmp_path / 'run2'}", "trainer.strategy=ddp", "trainer.devices=2",
               "trainer.accelerator=cpu")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("migrated 23 prompts") == 1  # printed by rank 0 only
    a, b = PromptBank.open(tmp_path / "one"), PromptBank.open(tmp_path / "two")
    assert [s["file"] for s in a.shards] == [s["file"] for s in b.shards] and len(a.shards) == 5
    assert [s["sha256"] for s in a.shards] == [s["sha256"] for s in b.shards]  # byte-identical shards
    assert a.manifest["content_hash"] == b.manifest["content_hash"]
    with torch.no_grad():
        expected = adapter(source.prompts) * 1.5
    assert torch.allclose(b.prompts, expected, atol=1e-6) and b.user_ids == source.user_ids
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no staging folder or temporary file is left behind


def test_a_bank_of_another_model_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    _source_and_adapter(tmp_path)
    PromptBank(torch.randn(3, 2, 8), ["a", "b", "c"], "other", "fp-other").save(tmp_path / "other")
    proc = _cli("migrate", "--config", SMOKE, f"bank={tmp_path / 'other'}", f"adapter_path={tmp_path / 'a.safetensors'}",
                f"out={tmp_path / 'out'}", f"run_dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "fp-other" in lines[-1] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_migrate_keeps_a_users_folder_at_out(tmp_path: Path) -> None:
    _source_and_adapter(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    proc = _cli("migrate", "--config", SMOKE, f"bank={tmp_path / 'src'}", f"adapter_path={tmp_path / 'a.safetensors'}",
                f"out={tmp_path / 'out'}", f"run_dir={tmp_path / 'run'}")
    assert proc.returncode != 0 and "refusing" in proc.stderr.splitlines()[-1]
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
