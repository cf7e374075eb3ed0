"""The item-word match term: a user's prompt scores an item by the words of the item's text, directly.

``prompt.item_match=s`` adds ``s * <p_u - anchor, e_i - centre> / (sigma^2 * sqrt(d))`` to a row's output, where
``p_u`` is the user's prompt (its rows averaged) in the model's embedding space, ``e_i`` the mean *input* embedding
of item ``i``'s text tokens from the frozen model's own embedding table, ``centre`` the mean of ``e_i`` over the
items of the training data, ``anchor`` the mean prompt the stage started from, and ``sigma`` the model's embedding
std (so ``s`` means the same on every model: for unit-variance vectors the scaled product has std ``s``).

Why: per-user prompts read only through the answer position learn next to none of a user's tastes. The frozen model
keeps the item's genre and mood there, but in directions that 16 ratings cannot single out, while in the words' own
embeddings they are the dominant axes (docs/prompt_diagnosis.md). The per-user state stays the bank's ``[l, d]``
prompt, in the model's embedding space, and still goes through the frozen model for the answer logits; this term
gives it a second, short path to the output. The module belongs to the head (saved with it in every bank), so every
scorer of a bank — test, placebo, predict, selection — computes the same function.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

ITEM_PAD = -1
"""Padding id of a batch's ``item_ids`` (never a token id)."""


def mean_item_embedding(embed: Callable[[torch.Tensor], torch.Tensor], item_ids: torch.Tensor) -> torch.Tensor:
    """``[B, d]`` float32: the mean input embedding of each row's item tokens ``item_ids`` ``[B, K]`` (padded with
    :data:`ITEM_PAD`; a row without tokens gives zeros). ``embed`` maps token ids to input embeddings."""
    mask = (item_ids != ITEM_PAD).float()
    with torch.no_grad():
        emb = embed(item_ids.clamp(min=0)).float() * mask[..., None]
    return emb.sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)


class ItemWordMatch(nn.Module):
    """``scale * <mean_l(p_u) - anchor, e_i - centre> / norm`` per row; see the module docstring.

    Everything it computes with is a buffer saved with the head: ``anchor`` and ``centre`` ``[d]``, ``scale`` and
    ``norm`` (``sigma^2 * sqrt(d)``) scalars. It has no trainable parameter: the prompts carry what it learns."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(hidden_size))
        self.register_buffer("centre", torch.zeros(hidden_size))
        self.register_buffer("scale", torch.zeros(()))
        self.register_buffer("norm", torch.ones(()))

    @property
    def hidden_size(self) -> int:
        return int(self.anchor.shape[0])

    def set(self, scale: float, anchor: torch.Tensor, centre: torch.Tensor, embedding_std: float) -> None:
        """Fix the term for one model and one starting bank: ``anchor`` the mean starting prompt ``[d]``, ``centre``
        the mean item embedding ``[d]``, ``embedding_std`` the model's (``sigma``)."""
        d = self.hidden_size
        if anchor.numel() != d or centre.numel() != d:
            raise ValueError(f"item match on width {d}: anchor {tuple(anchor.shape)} and centre {tuple(centre.shape)}")
        if not embedding_std > 0:
            raise ValueError(f"item match needs a positive embedding std, got {embedding_std}")
        device = self.anchor.device
        self.anchor.copy_(anchor.detach().reshape(d).float().to(device))
        self.centre.copy_(centre.detach().reshape(d).float().to(device))
        self.scale.fill_(float(scale))
        self.norm.fill_(float(embedding_std) ** 2 * math.sqrt(d))

    def forward(self, prompts: torch.Tensor, item_embedding: torch.Tensor) -> torch.Tensor:
        """``[B]``: the term for prompts ``[B, l, d]`` (or ``[B, d]``) and the rows' mean item embeddings ``[B, d]``."""
        user = prompts.float().mean(1) if prompts.dim() == 3 else prompts.float()
        return self.scale * ((user - self.anchor) * (item_embedding.float() - self.centre)).sum(-1) / self.norm
