"""PUMA migration: a trainable adapter maps frozen source prompts into the target model's space.

The source bank is a fixed buffer; each batch's prompts are ``adapter(source[users])``. The loss is
the task loss through the frozen target model, so the adapter learns what the target needs, not
a geometric alignment of the two embedding spaces.
"""

from __future__ import annotations

import torch
from torch import nn

from puma_lightning.tasks.base import PromptTask


class Migration(PromptTask):
    """Frozen source prompts → adapter → frozen target LLM + head."""

    def __init__(self, backbone: nn.Module, head: nn.Module, task: str, source_prompts: torch.Tensor,
                 adapter: nn.Module, *, lr: float = 1e-4, head_lr: float | None = None,
                 weight_decay: float = 0.01, train_head: bool = True, output_scale: float = 1.0,
                 warmup_ratio: float = 0.0) -> None:
        """``output_scale`` multiplies the adapter's output (e.g. the target's embedding std, so an
        adapter whose last layer starts near unit scale lands in the target's embedding range)."""
        super().__init__(backbone, head, task, lr=lr, head_lr=head_lr, weight_decay=weight_decay, train_head=train_head,
                         warmup_ratio=warmup_ratio)
        self.output_scale = float(output_scale)
        # not persistent: checkpoints hold only the adapter and head; the bank lives in its own file
        self.register_buffer("source_prompts", source_prompts.detach().float(), persistent=False)
        self.adapter = adapter

    def prompts_for(self, users: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.source_prompts[users]) * self.output_scale

    def prompt_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters())

    @torch.no_grad()
    def migrate_all(self, batch_size: int = 4096) -> torch.Tensor:
        """Map every source prompt through the adapter (eval mode): ``[N, l, d_t]`` float32 on CPU."""
        was_training = self.adapter.training
        self.adapter.eval()
        out = [(self.adapter(chunk) * self.output_scale).float().cpu() for chunk in self.source_prompts.split(batch_size)]
        self.adapter.train(was_training)
        return torch.cat(out) if out else self.source_prompts.new_zeros(0)
