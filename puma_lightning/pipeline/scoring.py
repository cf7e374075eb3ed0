"""Scoring fixed prompts on any (user, item) rows in Lightning's predict loop: what ``predict`` serves and what the
source model teaches the adapter with (distillation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from puma_lightning.data.table import InteractionTable


def score_rows(cfg: DictConfig, run_dir: Path, lm: Any, head: Any, prompts: torch.Tensor, pairs: InteractionTable,
               fitted_on: InteractionTable, batch_size: int, stage: str) -> dict[int, tuple[float, list[float]]]:
    """``{row: (prediction, answer distribution)}`` for this rank's test rows of ``pairs``, scored with fixed ``prompts``
    (one per user of ``pairs``) and ``head`` on ``lm`` in Lightning's predict loop; a residual base is fitted on
    ``fitted_on`` (the dataset the prompts were trained on) and read at the pairs."""
    from puma_lightning.pipeline.builders import build_datamodule
    from puma_lightning.pipeline.levers.hooks import pair_offsets
    from puma_lightning.pipeline.training import make_trainer
    from puma_lightning.tasks import PromptTuning

    module = PromptTuning(lm, head, pairs.task, prompts, train_prompts=False, train_head=False)
    dm = build_datamodule(pairs, lm.tokenizer, cfg, batch_size, row_offset=pair_offsets(cfg, fitted_on, pairs))
    outputs = make_trainer(cfg, run_dir, stage, max_epochs=1, log=False).predict(module, datamodule=dm) or []
    return {int(r): (float(p), [float(x) for x in d]) for out in outputs
            for r, p, d in zip(out["row"].tolist(), out["prediction"].tolist(), out["distribution"].tolist())}
