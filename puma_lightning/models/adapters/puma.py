"""The PUMA adapter as published: residual SiLU MLP blocks with pre-LayerNorm.

    x1 = x + MLP(LN(x))            (in d_s)
    x1 = MLP_up(LN(x1))            (d_s → d_t)
    x2 = x1 + MLP(LN(x1))          (in d_t)
    y  = MLP_out(LN(x2))           (in d_t)

Each MLP is Linear → SiLU → Dropout → Linear with a configurable hidden width. For 2048 → 3072
with hidden 4096 this is 88,128,512 parameters (the paper's "88.1 M").
"""

from __future__ import annotations

import torch
from torch import nn

from puma_lightning.models.adapters.registry import register_adapter


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


@register_adapter("puma")
class PumaAdapter(nn.Module):
    """Four residual/pre-norm MLP blocks mapping source prompts to the target width."""

    def __init__(self, source_dim: int, target_dim: int, hidden: int = 4096, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(source_dim)
        self.block_in = _mlp(source_dim, hidden, source_dim, dropout)
        self.norm_up = nn.LayerNorm(source_dim)
        self.up = _mlp(source_dim, hidden, target_dim, dropout)
        self.norm_mid = nn.LayerNorm(target_dim)
        self.block_mid = _mlp(target_dim, hidden, target_dim, dropout)
        self.norm_out = nn.LayerNorm(target_dim)
        self.out = _mlp(target_dim, hidden, target_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.block_in(self.norm_in(x))
        x = self.up(self.norm_up(x))
        x = x + self.block_mid(self.norm_mid(x))
        return self.out(self.norm_out(x))
