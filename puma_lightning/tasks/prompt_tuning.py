"""Per-user prompt tuning: one trainable soft prompt per user on a frozen LLM.

Used to train the source model's prompts, for the full-retraining baseline on the target, and
(with ``train_prompts=False``) to evaluate a fixed bank or train only the head on random prompts.
"""

from __future__ import annotations

import torch
from torch import nn

from puma_lightning.tasks.base import PromptTask


def init_prompts(num_users: int, length: int, hidden: int, seed: int = 0) -> torch.Tensor:
    """Initial prompts ``[N, l, d]`` drawn from U(-0.1, 0.1), as published."""
    generator = torch.Generator().manual_seed(seed)
    return torch.empty(num_users, length, hidden).uniform_(-0.1, 0.1, generator=generator)


def embedding_unit(embedding_std: float) -> float:
    """Scale that maps the published U(-0.1, 0.1) prompt range onto a model's embedding spread.

    With ``prompt.init=scaled`` prompts are parametrised as ``scale * p`` with ``p ~ U(-0.1, 0.1)``
    so that their std equals the model's embedding std (SmolLM2 ≈ 0.14, Gemma-3 ≈ 1.0 after its
    √d scaling) and one learning rate means the same relative step on every model.
    """
    return float(embedding_std) / (0.1 / 3**0.5)


class PromptTuning(PromptTask):
    """Trains (or holds fixed) one soft prompt per user (or one shared by all users)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, task: str, prompts: torch.Tensor, *,
                 train_prompts: bool = True, lr: float = 8e-4, head_lr: float | None = None,
                 weight_decay: float = 0.0, train_head: bool = True, scale: float = 1.0, optimizer: str = "adamw",
                 warmup_ratio: float = 0.0, user_bias: bool = False, shared: bool = False) -> None:
        """``prompts`` are in the model's embedding units; with ``scale`` != 1 the trained
        parameter is ``prompts / scale`` (see :func:`embedding_unit`).

        ``user_bias``: a trainable scalar per user added to the head's output (trained at ``head_lr``),
        so that a user's average needs no prompt. ``shared``: one prompt ``prompts[:1]`` for every user
        (what the frozen model adds about the items, without personalisation)."""
        super().__init__(backbone, head, task, lr=lr, head_lr=head_lr, weight_decay=weight_decay, train_head=train_head,
                         optimizer=optimizer, warmup_ratio=warmup_ratio)
        self.scale = float(scale)
        self.shared = bool(shared)
        self.num_users = int(prompts.shape[0])
        start = prompts[:1] if shared else prompts
        self.prompts = nn.Parameter(start.detach().clone().float() / self.scale, requires_grad=train_prompts)
        self.user_bias = nn.Parameter(torch.zeros(self.num_users)) if user_bias else None

    def prompts_for(self, users: torch.Tensor) -> torch.Tensor:
        index = torch.zeros_like(users) if self.shared else users
        return self.prompts[index] * self.scale if self.scale != 1.0 else self.prompts[index]

    def model_prompts(self) -> torch.Tensor:
        """All prompts ``[N, l, d]`` in the model's embedding units (what a bank stores)."""
        prompts = (self.prompts.detach() * self.scale).cpu()
        return prompts.expand(self.num_users, -1, -1).contiguous() if self.shared else prompts

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [self.prompts]

    def per_user_parameters(self) -> list[nn.Parameter]:
        return [] if self.shared else [self.prompts]

    def output_offset(self, users: torch.Tensor) -> torch.Tensor | float:
        return 0.0 if self.user_bias is None else self.user_bias[users]

    def offset_parameters(self) -> list[nn.Parameter]:
        return [] if self.user_bias is None else [self.user_bias]
