"""Thin helpers around Lightning's Trainer: one place that builds trainers, keeps the best epoch
by ``val/loss``, checkpoints and resumes a stage (see :mod:`puma_lightning.pipeline.checkpointing`)
and counts what a stage cost (wall seconds, training samples, both summed over resumed attempts)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from puma_lightning.pipeline.checkpointing import AtomicModelCheckpoint, LastCheckpoint, ResumeState, resume_checkpoint
from puma_lightning.tasks.base import PromptTask

log = logging.getLogger(__name__)


@dataclass
class StageStats:
    """What one training stage cost."""

    wall_s: float
    train_samples: int
    trainable_params: int
    epochs: int
    best_val_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ValidateAfterFinalStep(Callback):
    """Under a step budget, have Lightning validate after the last step as well: its step-interval validation runs
    only on multiples of the interval (a request to stop is what makes it validate off them)."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = int(max_steps)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.max_steps:
            trainer.should_stop = True


def validation_interval(max_steps: int, validations: int) -> int:
    """Steps between validations when ``validations`` of them are spread evenly over ``max_steps`` steps."""
    return max(1, math.ceil(int(max_steps) / max(1, int(validations))))


def runs_on_gpu(tcfg: DictConfig) -> bool:
    """Whether the trainer settings put the work on a CUDA GPU."""
    return tcfg.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()


def default_precision(tcfg: DictConfig) -> str:
    """bf16-mixed on a GPU that supports it, full fp32 on the CPU (the backbone's own dtype is set separately)."""
    if tcfg.precision:
        return str(tcfg.precision)
    return "bf16-mixed" if runs_on_gpu(tcfg) and torch.cuda.is_bf16_supported() else "32-true"


def make_trainer(cfg: DictConfig, run_dir: Path, stage: str, max_epochs: int, callbacks: list[Callback] | None = None,
                 log: bool = True, max_steps: int | None = None, val_every_steps: int | None = None,
                 inference_mode: bool = True) -> L.Trainer:
    """A Trainer configured from ``cfg.trainer`` that logs to ``<run_dir>/tb/<stage>`` (``max_steps``: stop after
    that many optimiser steps, however many epochs that takes; ``val_every_steps``: validate every that many steps,
    across epochs, instead of after every epoch; ``inference_mode``: evaluate under ``torch.inference_mode``, else
    under ``no_grad``)."""
    t = cfg.trainer
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version=stage, default_hp_metric=False) if log else False
    kwargs: dict[str, Any] = dict(
        inference_mode=inference_mode,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=default_precision(t),
        max_epochs=-1 if max_steps else max_epochs,
        max_steps=int(max_steps) if max_steps else -1,
        gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        logger=logger,
        callbacks=callbacks or [],
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        fast_dev_run=t.fast_dev_run,
        default_root_dir=str(run_dir),
        # the datamodule's length-bucketed batch sampler shards batches across ranks itself,
        # exactly (no duplicated evaluation samples), so Lightning must not wrap it
        use_distributed_sampler=False,
    )
    if val_every_steps:
        kwargs.update(val_check_interval=int(val_every_steps), check_val_every_n_epoch=None)
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = t.limit_train_batches
    if t.limit_val_batches is not None:
        kwargs["limit_val_batches"] = t.limit_val_batches
    return L.Trainer(**kwargs)


def fit_best(module: PromptTask, datamodule: L.LightningDataModule, cfg: DictConfig, run_dir: Path, stage: str,
             epochs: int, hparams: dict[str, Any] | None = None, resume_key: str | None = None,
             patience: int | None = None, max_steps: int | None = None, validations: int | None = None) -> StageStats:
    """Train ``module`` and leave it holding the weights of its best epoch by ``val/loss``.

    A full-state ``<run_dir>/<stage>/checkpoints/last.ckpt`` is written atomically every
    ``trainer.checkpoint_every_n_steps`` steps and after every validation; a stage that was killed
    resumes from it (``resume``: null = automatically, true, false = start over) when it was made
    with the same ``resume_key`` (the stage's config hash). ``best.ckpt`` (by ``val/loss``) and its
    score survive the resume through the checkpoint callback's saved state. ``patience``: stop once
    ``val/loss`` has not improved for that many validations (Lightning's ``EarlyStopping``). With ``max_steps``,
    ``validations`` spreads that many validations evenly over the steps, the last after the final step (None: after
    every epoch, as without ``max_steps``).
    """
    ckpt_dir = run_dir / stage / "checkpoints"
    key = resume_key or hashlib.sha256(json.dumps([hparams, epochs], sort_keys=True, default=str).encode()).hexdigest()[:16]
    ckpt_path = resume_checkpoint(ckpt_dir, key, cfg.get("resume"))
    checkpoint = AtomicModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                                       save_weights_only=True, enable_version_counter=False)
    every = cfg.trainer.get("checkpoint_every_n_steps") or 50
    last = LastCheckpoint(ckpt_dir, every)
    state = ResumeState(key)
    callbacks: list[Callback] = [checkpoint, last, state]
    if patience is not None:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=int(patience)))
    val_every = validation_interval(max_steps, validations) if max_steps and validations else None
    if val_every:
        callbacks.append(ValidateAfterFinalStep(max_steps))
    trainer = make_trainer(cfg, run_dir, stage, epochs, callbacks=callbacks, max_steps=max_steps, val_every_steps=val_every)
    if hparams and trainer.logger is not None and ckpt_path is None:
        trainer.logger.log_hyperparams(hparams)
    if ckpt_path is not None:
        log.info("resuming %s from %s", stage, ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    _check_finished(trainer, stage)
    best = checkpoint.best_model_path
    if best:
        loaded = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_trainable_state_dict(loaded)
    best_loss = checkpoint.best_model_score
    samples = state.samples
    if trainer.world_size > 1:  # each rank counted its own batches
        samples = int(trainer.strategy.reduce(torch.tensor(float(samples)), reduce_op="sum").item())
    return StageStats(
        wall_s=round(state.elapsed(), 2),
        train_samples=samples,
        trainable_params=module.trainable_parameter_count(),
        epochs=trainer.current_epoch,
        best_val_loss=None if best_loss is None else float(best_loss),
    )


def _check_finished(trainer: L.Trainer, stage: str) -> None:
    """Lightning swallows KeyboardInterrupt/SIGTERM and returns: do not record a stopped stage as done."""
    if trainer.interrupted:
        raise KeyboardInterrupt(f"stage {stage} was interrupted; rerun the command to resume it")


def test_metrics(module: PromptTask, datamodule: L.LightningDataModule, cfg: DictConfig, run_dir: Path, stage: str) -> dict[str, float]:
    """Evaluate ``module`` on the datamodule's test split; returns ``{"rmse": ..., ...}``.

    Under DDP each rank evaluates a disjoint share of the rows (see ``BucketBatchSampler.eval_shards``)
    and the metrics are synced (torchmetrics states, ``sync_dist`` loss), so every rank returns the
    global values, equal to a single-process evaluation."""
    trainer = make_trainer(cfg, run_dir, stage, max_epochs=1)
    out = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = out[0] if out else {}
    return {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("test/")}


def validation_rows(module: PromptTask, datamodule: L.LightningDataModule, cfg: DictConfig, run_dir: Path,
                    stage: str) -> dict[str, Any]:
    """``module``'s ``row``, ``user``, ``prediction`` and ``label`` per row of the datamodule's validation split.

    Runs under ``no_grad``, not inference mode: a module judged before it trains (``adapter.aggregate_start``) would
    otherwise keep inference tensors in its metrics, which its training's validation cannot update."""
    trainer = make_trainer(cfg, run_dir, stage, max_epochs=1, inference_mode=False)
    module.keep_validation_rows = True
    try:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    finally:
        module.keep_validation_rows = False
    return module.validation_predictions()
