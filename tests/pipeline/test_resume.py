"""Resume after kill -9: a stage killed at several points and resumed ends with exactly the metrics
of an uninterrupted run (CPU, same seed); finished stages are not redone; checkpoints are atomic
and carry their config key; ``resume=false`` starts over."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from puma_lightning.pipeline.checkpointing import checkpoint_key, resume_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# 12 users x 10 rows -> 96 train rows, 12 batches of 8 per epoch, 3 epochs = 36 steps
TINY = ["data.n_users=12", "data.rows_per_user=10", "prompt.batch_size=8", "prompt.epochs=3", "adapter.batch_size=8",
        "adapter.epochs=2", "baselines.random_init_epochs=1", "selection.budget=6", "selection.n_clusters=2",
        "selection.min_per_cluster=1", "trainer.checkpoint_every_n_steps=5", "trainer.num_threads=1",
        "trainer.log_every_n_steps=1"]

# Runs the CLI; with KILL_AT_STEP=k it SIGKILLs itself when training step k of stage KILL_STAGE starts
RUNNER = r"""
import os, signal, sys
import lightning as L
import puma_lightning.pipeline.training as training
from puma_lightning.cli.main import main

kill_at = int(os.environ.get("KILL_AT_STEP", "-1"))
kill_stage = os.environ.get("KILL_STAGE", "source")

class Killer(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    def on_validation_end(self, trainer, pl_module):
        if kill_at == -2 and trainer.current_epoch == 1:  # right after an epoch's checkpoints
            os.kill(os.getpid(), signal.SIGKILL)

_make = training.make_trainer
def make_trainer(cfg, run_dir, stage, max_epochs, callbacks=None, log=True, **kwargs):
    if stage == kill_stage:
        callbacks = list(callbacks or []) + [Killer()]
    return _make(cfg, run_dir, stage, max_epochs, callbacks=callbacks, log=log, **kwargs)
training.make_trainer = make_trainer
sys.exit(main(sys.argv[1:]))
"""


def run_cli(args: list[str], kill_at: int | None = None, stage: str = "source",
            warnings: str = "ignore") -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT_STEP": str(-1 if kill_at is None else kill_at), "KILL_STAGE": stage,
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": warnings}
    return subprocess.run([sys.executable, "-c", RUNNER, *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def stage_record(run_dir: Path, stage: str) -> dict:
    record = json.loads((run_dir / stage / "stage.json").read_text())
    for clock in ("wall_s", "prefix_s"):  # seconds measured on a shared machine, not results
        record.pop(clock, None)
    record.get("placebo", {}).pop("wall_s", None)  # the placebo pass's seconds too (its metrics stay compared)
    return record


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    proc = run_cli(["pretrain", "--config", SMOKE, f"run_dir={run_dir}", "model=source", *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_killed_at_several_points_resumes_to_identical_metrics(reference, tmp_path):
    run_dir = tmp_path / "run"
    args = ["pretrain", "--config", SMOKE, f"run_dir={run_dir}", "model=source", *TINY]
    kills = 0
    # mid-epoch (between checkpoints), right after a step checkpoint, after an epoch's validation, late
    for kill_at in (7, 11, -2, 31):
        proc = run_cli(args, kill_at=kill_at)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        kills += 1
        assert not (run_dir / "source" / "stage.json").exists()
        assert (run_dir / "source" / "checkpoints" / "last.ckpt").is_file()
        assert not list(run_dir.rglob("*.ckpt.tmp"))
    proc = run_cli(args, warnings="default")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming source" in proc.stderr
    assert "exists and is not empty" not in proc.stderr  # the stage's own directory: no warning on a resume
    assert kills == 4
    resumed, clean = stage_record(run_dir, "source"), stage_record(reference, "source")
    assert resumed == clean  # metrics, best val loss, samples, epochs: exactly equal
    assert (run_dir / "source" / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow
def test_finished_stage_is_not_redone_and_another_configs_checkpoint_is_not_resumed(reference, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(reference, run_dir)
    (run_dir / ".lock").unlink(missing_ok=True)
    before = (run_dir / "source" / "stage.json").stat().st_mtime_ns
    args = ["pretrain", "--config", SMOKE, f"run_dir={run_dir}", "model=source", *TINY]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reusing source" in proc.stderr
    assert (run_dir / "source" / "stage.json").stat().st_mtime_ns == before
    # a leftover last.ckpt of another config is never resumed
    ckpt_dir = run_dir / "source" / "checkpoints"
    assert resume_checkpoint(ckpt_dir, "another-key", None) is None
    assert not (ckpt_dir / "last.ckpt").exists()


def test_checkpoints_load_weights_only_and_carry_their_key(reference):
    last = reference / "source" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert not any(k.startswith("backbone.") for k in ckpt["state_dict"])
    key = checkpoint_key(last)
    assert key and resume_checkpoint(last.parent, key, None) == last
    assert resume_checkpoint(last.parent, key, True) == last


def test_resume_false_starts_over_removing_only_its_last_checkpoint(reference, tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    shutil.copytree(reference / "source" / "checkpoints", ckpt_dir)
    (ckpt_dir / "notes.txt").write_text("the user's")
    key = checkpoint_key(ckpt_dir / "last.ckpt")
    assert key and resume_checkpoint(ckpt_dir, key, False) is None
    assert not (ckpt_dir / "last.ckpt").exists()
    assert (ckpt_dir / "best.ckpt").is_file() and (ckpt_dir / "notes.txt").read_text() == "the user's"


def test_truncated_checkpoint_is_not_resumed(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (ckpt_dir / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    assert resume_checkpoint(ckpt_dir, "k", None) is None
    assert not (ckpt_dir / "last.ckpt").exists()
