"""``prepare``: read a raw-file dataset once, filter it and cache the processed copy (reused until a file changes)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from puma_lightning.commands.arguments import Arguments
from puma_lightning.data.prepare import run_prepare


def run(cfg: DictConfig, run_dir: Path, args: Arguments) -> None:
    """Prepare (or reuse) ``cfg.data``'s processed dataset and print what it holds."""
    run_prepare(cfg)
