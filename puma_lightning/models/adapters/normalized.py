"""Input standardisation in front of any adapter (``adapter.input_norm=standardize``).

Source prompts are their random initialisation plus a small user-specific part; per feature, that
part can be a fraction of the spread the adapter sees. Standardising every feature with its mean and
standard deviation over *all* users' source prompts (free: the bank is at hand) lets the adapter's
first layer see the user-specific part at unit scale. The statistics are buffers of the module, so
they are saved in ``adapter.safetensors`` and ``migrate`` / cold start apply exactly the same map.
"""

from __future__ import annotations

import torch
from torch import nn

from puma_lightning.models.adapters.registry import init_as_linear


class InputStandardized(nn.Module):
    """``inner((x - mean) / std)`` with per-feature ``mean`` and ``std`` ``[d_s]`` held as buffers."""

    def __init__(self, inner: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clamp(min=1e-6).clone())

    @classmethod
    def fitted(cls, inner: nn.Module, prompts: torch.Tensor) -> "InputStandardized":
        """Statistics over every user and prompt row of ``prompts`` ``[N, l, d_s]``."""
        flat = prompts.detach().float().reshape(-1, prompts.shape[-1])
        return cls(inner, flat.mean(0), flat.std(0) if len(flat) > 1 else torch.ones(flat.shape[1]))

    @classmethod
    def empty(cls, inner: nn.Module, width: int) -> "InputStandardized":
        """Placeholder statistics (0, 1), to be filled by ``load_state_dict``."""
        return cls(inner, torch.zeros(width), torch.ones(width))

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.inner((prompts - self.mean.to(prompts.dtype)) / self.std.to(prompts.dtype))

    def set_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start the whole as ``prompts @ weight + bias``: the inner adapter sees ``z = (p - mean) / std``, so it gets
        ``z @ (std[:, None] * weight) + (mean @ weight + bias)``."""
        weight = weight.float()
        init_as_linear(self.inner, self.std[:, None] * weight, self.mean @ weight + bias.float())


def with_input_norm(adapter: nn.Module, kind: str, prompts: torch.Tensor) -> nn.Module:
    """``adapter`` as is (``none``) or behind :class:`InputStandardized` fitted on ``prompts``."""
    if kind == "none":
        return adapter
    if kind == "standardize":
        return InputStandardized.fitted(adapter, prompts)
    raise ValueError(f"unknown adapter.input_norm {kind!r}; this module builds 'none' and 'standardize'")
