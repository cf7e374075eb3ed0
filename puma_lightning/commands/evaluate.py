"""``test``: a prompt bank's metrics on a model (``model=source|target``) and split (``split=valid|test``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from puma_lightning.commands.arguments import EVAL_SPLITS, BankArgument, ModelArgument
from puma_lightning.errors import PumaError


@dataclass
class EvaluateArguments(ModelArgument, BankArgument):
    split: str = field(default="test", metadata={"choices": EVAL_SPLITS})
    """Which split to evaluate, ``valid`` or ``test`` (data split with no test rows, e.g. ``data.split_by=paper``:
    ``valid``)."""


def run(cfg: DictConfig, run_dir: Path, args: EvaluateArguments) -> None:
    """Evaluate ``bank`` with its head and print the metrics."""
    from puma_lightning.pipeline.bank_ops import evaluate_bank

    if not args.bank:
        raise PumaError("test needs 'bank=PATH'")
    evaluate_bank(cfg, args.bank, args.model, args.split)
