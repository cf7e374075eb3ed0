"""The migrated prompts pulled towards their mean (``adapter.shrink``), as part of the saved adapter.

Trained on a few users, PUMA's adapter can spread the migrated prompts further apart than the users' data supports: on
``configs/ml100k_full.yaml`` its banks knew their users *more* than full retraining's (a personal gain of 150 %) and
scored worse. ``centre + alpha * (inner(p) - centre)`` keeps each user's direction and scales how far it reaches;
``centre`` (the mean migrated prompt, ``[l, d_t]``) and ``alpha`` are buffers, saved in ``adapter.safetensors``, so
``migrate`` and cold start apply exactly the map the ``puma`` stage tested.
"""

from __future__ import annotations

import torch
from torch import nn


class OutputShrunk(nn.Module):
    """``centre + alpha * (inner(p) - centre)`` with ``centre`` ``[l, d_t]`` and the scalar ``alpha`` held as buffers."""

    def __init__(self, inner: nn.Module, centre: torch.Tensor, alpha: float | torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("centre", torch.as_tensor(centre).detach().float().clone())
        self.register_buffer("alpha", torch.as_tensor(alpha, dtype=torch.float32).detach().clone().reshape(()))

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        out = self.inner(prompts)
        centre = self.centre.to(out.dtype)
        return centre + self.alpha.to(out.dtype) * (out - centre)
