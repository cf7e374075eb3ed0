"""The GPU optimiser must accept Lightning's gradient clipping under mixed precision (the GPU default)."""

from __future__ import annotations

import pytest
import torch

from puma_lightning.tasks.optim import build_optimizer


def test_the_cuda_adamw_accepts_gradient_clipping_under_mixed_precision():
    from lightning.pytorch.plugins.precision import MixedPrecision

    params = [torch.nn.Parameter(torch.randn(4, 3))]
    optimizer = build_optimizer("adamw", [{"params": params, "lr": 0.01, "lazy": False}], on_cuda=True)
    params[0].grad = torch.randn(4, 3) * 10
    plugin = MixedPrecision("bf16-mixed", "cpu")
    plugin.clip_gradients(optimizer, clip_val=1.0)  # fused AdamW: "does not allow for gradient clipping"
    assert float(params[0].grad.norm()) == pytest.approx(1.0, rel=1e-4)
