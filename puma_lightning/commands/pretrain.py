"""``pretrain``: per-user prompts on one model: the source's (``model=source``), or full retraining on the target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from puma_lightning.commands.arguments import ModelArgument


@dataclass
class PretrainArguments(ModelArgument):
    """``model``: which stage to train (``source``, or ``full_retrain`` on the target)."""


def run(cfg: DictConfig, run_dir: Path, args: PretrainArguments) -> None:
    """Train (or reuse) the ``source`` or ``full_retrain`` stage and print its metrics and bank."""
    from puma_lightning.pipeline.experiment import Experiment

    stage = "source" if args.model == "source" else "full_retrain"
    record = Experiment(cfg).run_stage(stage)
    print(f"{stage}: " + ", ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items()) + f" (bank in {run_dir / stage / 'bank'})")
