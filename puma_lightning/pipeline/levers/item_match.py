"""``prompt.item_match``: the head's item-word match term, a user's prompt against the mean embedding of the item
text's own tokens.

The term is :class:`puma_lightning.models.item_match.ItemWordMatch` (part of the head, saved in banks); this lever
owns the option and attaches the term, anchored at the bank a stage starts from, through the ``start_head`` hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import register_lever

if TYPE_CHECKING:
    import torch

    from puma_lightning.data.table import InteractionTable


def attach_item_match(cfg: Any, head: Any, lm: Any, table: "InteractionTable", start: "torch.Tensor") -> None:
    """Give ``head`` the item-word match term of ``prompt.item_match`` on ``lm`` (``models/item_match.py``), anchored
    at the mean of the prompts ``start`` ``[N, l, d]`` the stage starts from; with ``prompt.item_match`` 0 the head has
    none. Called where a head starts on a model with a new bank (a stage's own prompts, PUMA's, a mapped bank)."""
    scale = float(cfg.prompt.get("item_match", 0.0) or 0.0)
    if scale == 0.0:
        head.item_match = None
        return
    from puma_lightning.pipeline.builders import item_embedding_centre

    centre = item_embedding_centre(lm, table, cfg.data.max_item_tokens)
    anchor = start.detach().float().reshape(-1, lm.hidden_size).mean(0)
    head.attach_item_match(lm.hidden_size).set(scale, anchor, centre, lm.embedding_std())


class ItemMatch(Lever):
    """The item-word match term in the head, the target's own wherever a head starts on a model."""

    name = "item_match"
    options = (Option("prompt.item_match"),)
    description = "the prompt scored against the item text's own token embeddings"

    def start_head(self, cfg: Any, head: Any, lm: Any, table: "InteractionTable",
                   start: Callable[[], "torch.Tensor"]) -> None:
        if float(cfg.prompt.get("item_match", 0.0) or 0.0) == 0.0:
            head.item_match = None  # a head moved from another model never keeps that model's term
            return
        attach_item_match(cfg, head, lm, table, start())


register_lever(ItemMatch())
