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
    """Trains (or holds fixed) one soft prompt per user."""

    def __init__(self, backbone: nn.Module, head: nn.Module, task: str, prompts: torch.Tensor, *,
                 train_prompts: bool = True, lr: float = 8e-4, head_lr: float | None = None,
                 weight_decay: float = 0.0, train_head: bool = True, scale: float = 1.0) -> None:
        """``prompts`` are in the model's embedding units; with ``scale`` != 1 the trained
        parameter is ``prompts / scale`` (see :func:`embedding_unit`)."""
        super().__init__(backbone, head, task, lr=lr, head_lr=head_lr, weight_decay=weight_decay, train_head=train_head)
        self.scale = float(scale)
        self.prompts = nn.Parameter(prompts.detach().clone().float() / self.scale, requires_grad=train_prompts)

    def prompts_for(self, users: torch.Tensor) -> torch.Tensor:
        return self.prompts[users] * self.scale if self.scale != 1.0 else self.prompts[users]

    def model_prompts(self) -> torch.Tensor:
        """All prompts ``[N, l, d]`` in the model's embedding units (what a bank stores)."""
        return (self.prompts.detach() * self.scale).cpu()

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [self.prompts]
