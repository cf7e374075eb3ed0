"""``adapter.distill_items`` and ``adapter.distill_weight``: the source model teaches PUMA's adapter on items the
selected users never rated.

The teacher's pass and the grown table are :mod:`puma_lightning.pipeline.distillation`; this lever owns the
options, checks their ranges, and adds the teacher rows through the ``extra_rows`` hook.
"""

from __future__ import annotations

import logging
from typing import Any

from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import register_lever

log = logging.getLogger(__name__)


class Distillation(Lever):
    """Teacher rows scored by the source model, added to the adapter's training rows with soft targets."""

    name = "distillation"
    options = (Option("adapter.distill_items"), Option("adapter.distill_weight"))
    description = "the source model's scores on unrated items as extra adapter rows"

    def validate(self, cfg: Any) -> None:
        if cfg.adapter.distill_items < 0:
            raise ValueError(f"'adapter.distill_items' must be >= 0, got {cfg.adapter.distill_items}")
        if not cfg.adapter.distill_weight >= 0:
            raise ValueError(f"'adapter.distill_weight' must be >= 0, got {cfg.adapter.distill_weight}")

    def extra_rows(self, exp: Any, users: Any) -> Any:
        """With ``adapter.distill_items``, the experiment's table plus the source model's teacher rows for the selected
        ``users`` (and what the task needs to weight them); else None."""
        cfg = exp.cfg
        if not cfg.adapter.distill_items:
            return None
        import torch

        from puma_lightning.pipeline.distillation import teach, unrated_pairs, with_teacher_rows
        from puma_lightning.tasks import TeacherRows

        table = exp.table
        pair_users, pair_items = unrated_pairs(table, users, int(cfg.adapter.distill_items), int(cfg.seed))
        prediction, distribution, seconds = teach(exp, pair_users, pair_items)
        grown, offsets = with_teacher_rows(cfg, table, pair_users, pair_items, prediction)
        log.info("distillation: %d teacher rows from %s for %d selected users (%.1f s)", len(pair_users), cfg.source.name,
                 len(users), seconds)
        teacher = TeacherRows(len(table), torch.from_numpy(distribution), float(cfg.adapter.distill_weight), seconds)
        return teacher, grown, offsets


register_lever(Distillation())
