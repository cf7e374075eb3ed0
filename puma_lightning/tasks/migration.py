"""PUMA migration: a trainable adapter maps frozen source prompts into the target model's space.

The source bank is a fixed buffer; each batch's prompts are ``adapter(source[users])``. The loss is
the task loss through the frozen target model, so the adapter learns what the target needs, not
a geometric alignment of the two embedding spaces. With ``teacher`` (see
:mod:`puma_lightning.pipeline.distillation`) some training rows carry the source model's soft targets instead
of observed labels, and their loss is weighted against the real rows'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from puma_lightning.tasks.base import PromptTask


@dataclass
class TeacherRows:
    """Which rows of the adapter's training table are a teacher's (distillation), and their soft targets."""

    first_row: int
    """Rows at or after this index are teacher rows."""
    distribution: torch.Tensor
    """``[R, A]`` the teacher's answer distribution for each teacher row (the click probability for clicks)."""
    weight: float
    """Weight of the teacher rows' mean loss against the real rows' mean loss."""
    seconds: float = 0.0
    """Wall seconds the teacher took (its model's load and its predict loop)."""


class Migration(PromptTask):
    """Frozen source prompts → adapter → frozen target LLM + head."""

    def __init__(self, backbone: nn.Module, head: nn.Module, task: str, source_prompts: torch.Tensor,
                 adapter: nn.Module, *, lr: float = 1e-4, head_lr: float | None = None,
                 weight_decay: float = 0.01, train_head: bool = True, output_scale: float = 1.0,
                 warmup_ratio: float = 0.0, teacher: TeacherRows | None = None) -> None:
        """``output_scale`` multiplies the adapter's output (e.g. the target's embedding std, so an
        adapter whose last layer starts near unit scale lands in the target's embedding range);
        ``teacher``: which training rows are the source model's, with their soft targets."""
        super().__init__(backbone, head, task, lr=lr, head_lr=head_lr, weight_decay=weight_decay, train_head=train_head,
                         warmup_ratio=warmup_ratio)
        self.output_scale = float(output_scale)
        # not persistent: checkpoints hold only the adapter and head; the bank lives in its own file
        self.register_buffer("source_prompts", source_prompts.detach().float(), persistent=False)
        self.adapter = adapter
        self.teacher_first_row = None if teacher is None else int(teacher.first_row)
        self.teacher_weight = 0.0 if teacher is None else float(teacher.weight)
        if teacher is not None:
            self.register_buffer("teacher_distribution", teacher.distribution.detach().float(), persistent=False)

    def training_loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Task loss on the real rows plus ``teacher_weight`` x the soft-target loss on the teacher rows (each the
        mean over its own rows of the batch; a part the batch lacks adds nothing)."""
        if self.teacher_first_row is None:
            return super().training_loss(batch, logits, output)
        taught = batch["row"] >= self.teacher_first_row
        real = ~taught
        loss = output.new_zeros(())
        if real.any():
            loss = loss + self.head.loss(logits[real], output[real], batch["label"][real])
        if taught.any():
            targets = self.teacher_distribution[batch["row"][taught] - self.teacher_first_row]
            loss = loss + self.teacher_weight * self.head.soft_loss(logits[taught], output[taught], batch["label"][taught],
                                                                    targets)
        return loss

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
