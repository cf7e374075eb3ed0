"""A trained prompt task with its prompts dealt to other users: the placebo of :mod:`puma_lightning.tasks.placebo`.

Everything but the prompts stays with the row: the head, a per-user bias (``output_offset``), a residual
base's offset, the backbone and the batches. Only ``prompts_for`` reads another user's prompt, so the
difference from the wrapped task's own test predictions is what the prompts know about their user.
"""

from __future__ import annotations

import numpy as np
import torch

from puma_lightning.tasks.base import PromptTask


class DealtPrompts(PromptTask):
    """``inner`` evaluated with user ``u`` given the prompt of user ``dealt[u]`` (test only; trains nothing)."""

    def __init__(self, inner: PromptTask, dealt: np.ndarray | torch.Tensor) -> None:
        """``dealt``: one user index per user of ``inner`` (a derangement, see
        :func:`puma_lightning.tasks.placebo.derangement`). ``inner``'s trainable flags are left as they were."""
        flags = [p.requires_grad for p in inner.head.parameters()]
        super().__init__(inner.backbone, inner.head, inner.task, lr=inner.lr, train_head=False)
        for p, flag in zip(inner.head.parameters(), flags):
            p.requires_grad_(flag)
        self.inner = inner
        self.register_buffer("dealt", torch.as_tensor(np.asarray(dealt), dtype=torch.long), persistent=False)

    def prompts_for(self, users: torch.Tensor) -> torch.Tensor:
        return self.inner.prompts_for(self.dealt.to(users.device)[users])

    def output_offset(self, users: torch.Tensor) -> torch.Tensor | float:
        return self.inner.output_offset(users)  # a per-user bias stays with its own user

    def prompt_parameters(self) -> list[torch.nn.Parameter]:
        return []
