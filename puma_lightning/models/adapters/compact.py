"""A compact 2-layer adapter: Linear(d_s→2·d_t) → LayerNorm → GELU → Linear(2·d_t→d_t), plus a
linear residual projection d_s→d_t. ``hidden`` overrides the 2·d_t width when it is set lower.
"""

from __future__ import annotations

import torch
from torch import nn

from puma_lightning.models.adapters.registry import register_adapter


@register_adapter("compact")
class CompactAdapter(nn.Module):
    """Small residual adapter: a projection plus one GELU MLP correction."""

    def __init__(self, source_dim: int, target_dim: int, hidden: int = 4096, dropout: float = 0.1) -> None:
        super().__init__()
        width = min(hidden, 2 * target_dim)
        self.mlp = nn.Sequential(
            nn.Linear(source_dim, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, target_dim)
        )
        self.residual = nn.Linear(source_dim, target_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.mlp(x)

    @torch.no_grad()
    def set_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start as ``x @ weight + bias``: the projection takes the map, the MLP's output layer starts at zero (its
        gradient is not zero, so the correction trains from the first step)."""
        self.residual.weight.copy_(weight.T)
        self.residual.bias.copy_(bias)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
