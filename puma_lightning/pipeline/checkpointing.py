"""Crash-safe checkpoints and exact resume for the training stages.

* :class:`AtomicModelCheckpoint` writes every checkpoint to ``<name>.tmp`` and renames it onto
  ``<name>`` (Lightning writes straight into the final file), so a kill -9 mid-write leaves the
  previous good checkpoint.
* :class:`ResumeState` is a callback whose state goes into every checkpoint: the resume key (the
  stage's config hash: a ``last.ckpt`` from another config is never resumed), the torch RNG state
  (dropout), the samples and wall seconds counted so far. The RNG is put back right before the
  first training batch after a resume, so a resumed CPU run draws the same dropout masks as an
  uninterrupted one.
* Mid-epoch position: the datamodule's training loader is stateful (Lightning saves its
  ``state_dict`` in the checkpoint): it records how many batches of which epoch it yielded, and on
  resume the epoch's deterministic batch order is replayed with those batches skipped. So resuming
  continues *mid-epoch*, exactly where the checkpoint was taken.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)

LAST_NAME = "last.ckpt"


class AtomicModelCheckpoint(ModelCheckpoint):
    """A :class:`ModelCheckpoint` whose files appear atomically (temporary name, fsync, rename)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Lightning's setup, without its "directory exists and is not empty" warning for this callback's own
        directory: a stage's checkpoints live there on purpose, and a resume reads its ``last.ckpt``."""
        with warnings.catch_warnings():
            if self.dirpath:  # already the real path Lightning prints
                message = rf"Checkpoint directory {re.escape(str(self.dirpath))} exists and is not empty"
                warnings.filterwarnings("ignore", message=message)
            super().setup(trainer, pl_module, stage)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)  # rank 0 writes, then a barrier
        if trainer.is_global_zero:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, filepath)
        trainer.strategy.barrier("AtomicModelCheckpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)


class LastCheckpoint(AtomicModelCheckpoint):
    """Full-state ``last.ckpt`` every ``every_n_train_steps`` steps and after each epoch's validation."""

    def __init__(self, dirpath: Path, every_n_train_steps: int) -> None:
        super().__init__(dirpath=dirpath, filename="last-step", save_top_k=0, save_last=True,
                         every_n_train_steps=max(1, int(every_n_train_steps)), enable_version_counter=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Also save at the end of every epoch (after the best checkpoint was updated)."""
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @property
    def state_key(self) -> str:
        return "LastCheckpoint"


class ResumeState(Callback):
    """Saves what a resume needs beyond Lightning's own state; counts training samples."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.samples = 0
        self.wall_s = 0.0
        self.resumed_from_step: int | None = None
        self._rng: torch.Tensor | None = None
        self._start = time.perf_counter()

    @property
    def state_key(self) -> str:
        return "PumaResumeState"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.samples += int(batch["label"].shape[0])

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._loader_states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader", [])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put the training loader back at its checkpointed position.

        Lightning only restores loader states when it builds the loader after the restore, but it
        already built it earlier to estimate the scheduler's step count, so do it here (before the
        first batch is drawn)."""
        states, self._loader_states = getattr(self, "_loader_states", []), []
        loaders = trainer.train_dataloader
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        stateful = [dl for dl in loaders if hasattr(dl, "load_state_dict") and hasattr(dl, "state_dict")]
        for loader, state in zip(stateful, states):
            loader.load_state_dict(state)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._rng is not None:
            torch.set_rng_state(self._rng)
            self._rng = None

    def elapsed(self) -> float:
        """Wall seconds of this stage, summed over the interrupted attempts."""
        return self.wall_s + time.perf_counter() - self._start

    def state_dict(self) -> dict[str, Any]:
        return {"key": self.key, "samples": self.samples, "wall_s": self.elapsed(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("key") != self.key:  # fit_best checks this before resuming; belt and braces
            raise RuntimeError("checkpoint was made with another config")
        self.samples = int(state["samples"])
        self.wall_s = float(state["wall_s"])
        self._start = time.perf_counter()
        self._rng = state["torch_rng"]


def checkpoint_key(path: Path) -> str | None:
    """The resume key stored in a checkpoint, or None when it cannot be read (corrupt, foreign)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return ckpt["callbacks"]["PumaResumeState"]["key"]
    except Exception as exc:  # a truncated or foreign file: not resumable
        log.warning("cannot read %s (%s): not resuming from it", path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None


def resume_checkpoint(ckpt_dir: Path, key: str, resume: bool | None) -> Path | None:
    """The ``last.ckpt`` to resume from, or None to start the stage over.

    ``resume``: None resumes when a checkpoint of the same config exists (an unfinished run),
    True does the same and says so when there is nothing to resume, False starts over.
    Checkpoints that cannot be used are removed (only rank 0 removes files).
    """
    last = ckpt_dir / LAST_NAME
    if resume is False or not last.is_file():
        if resume and not last.is_file():
            log.info("resume=true but %s holds no checkpoint: starting the stage", ckpt_dir)
        if resume is False and last.is_file() and _is_rank_zero():
            last.unlink()
        return None
    found = checkpoint_key(last)
    if found != key:
        if found is not None:
            log.warning("%s was made with another config: starting the stage over", last)
        if _is_rank_zero():
            last.unlink(missing_ok=True)
        return None
    return last


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
