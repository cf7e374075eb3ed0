"""Per-user prompt tuning: one trainable soft prompt per user on a frozen LLM.

Used to train the source model's prompts, for the full-retraining baseline on the target, and
(with ``train_prompts=False``) to evaluate a fixed bank or train only the head on random prompts.
"""

from __future__ import annotations

import torch
from torch import nn

from puma_lightning.tasks.base import PromptTask


def init_prompts(num_users: int, length: int, hidden: int, init: str = "uniform", embedding_std: float | None = None,
                 seed: int = 0) -> torch.Tensor:
    """Initial prompts ``[N, l, d]``: U(-0.1, 0.1), or with ``scaled`` the same shape of noise
    rescaled so its std matches the model's input embeddings (Gemma's embeddings are ~sqrt(d) larger)."""
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.empty(num_users, length, hidden).uniform_(-0.1, 0.1, generator=generator)
    if init == "scaled":
        if embedding_std is None:
            raise ValueError("init='scaled' needs the model's embedding std")
        prompts *= embedding_std / (0.1 / 3**0.5)
    elif init != "uniform":
        raise ValueError(f"unknown prompt init {init!r}; expected 'uniform' or 'scaled'")
    return prompts


class PromptTuning(PromptTask):
    """Trains (or holds fixed) one soft prompt per user."""

    def __init__(self, backbone: nn.Module, head: nn.Module, task: str, prompts: torch.Tensor, *,
                 train_prompts: bool = True, lr: float = 8e-4, head_lr: float | None = None,
                 weight_decay: float = 0.0, train_head: bool = True) -> None:
        super().__init__(backbone, head, task, lr=lr, head_lr=head_lr, weight_decay=weight_decay, train_head=train_head)
        self.prompts = nn.Parameter(prompts.detach().clone().float(), requires_grad=train_prompts)

    def prompts_for(self, users: torch.Tensor) -> torch.Tensor:
        return self.prompts[users]

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [self.prompts]
