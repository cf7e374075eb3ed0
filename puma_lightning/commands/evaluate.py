"""``test``: a prompt bank's metrics on a model (``model=source|target``) and split (``split=valid|test``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from puma_lightning.errors import PumaError
from puma_lightning.pipeline.bank_ops import evaluate_bank


def run(cfg: DictConfig, run_dir: Path) -> None:
    """Evaluate ``bank`` with its head and print the metrics."""
    if not cfg.bank:
        raise PumaError("test needs 'bank=PATH'")
    evaluate_bank(cfg, cfg.bank, cfg.model, cfg.split)
