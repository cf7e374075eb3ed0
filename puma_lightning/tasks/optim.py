"""Optimisers and schedules for prompt tuning.

:class:`LazyAdamW` is AdamW in which a *row* of a parameter (one user's prompt) moves only on the
steps where it received a gradient: its moments, its step count (for bias correction) and its
weight decay advance only then. With plain AdamW every user's prompt keeps drifting on every step
through its momentum and its weight decay, although the user was not in the batch; with thousands
of users a prompt sees a gradient on a few percent of the steps, so most of its updates are drift.
Groups with ``lazy=False`` (the head) are ordinary AdamW.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from puma_lightning.config import PROMPT_OPTIMIZERS


class LazyAdamW(torch.optim.Optimizer):
    """AdamW with row-wise lazy updates for groups marked ``lazy=True`` (rows = the first dimension)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, lazy=False))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                rows = p.shape[0] if group["lazy"] and p.dim() > 1 else 1
                if not state:
                    state["step"] = torch.zeros(rows, dtype=torch.float64, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                if group["lazy"] and p.dim() > 1:
                    active = grad.reshape(rows, -1).ne(0).any(dim=1).nonzero().squeeze(1)
                    if not len(active):
                        continue
                    self._update(p, grad, state, active, group, beta1, beta2)
                else:
                    self._update_dense(p, grad, state, group, beta1, beta2)
        return loss

    @staticmethod
    def _update(p: torch.Tensor, grad: torch.Tensor, state: dict, active: torch.Tensor, group: dict, beta1: float,
                beta2: float) -> None:
        g = grad.index_select(0, active)
        m = state["exp_avg"].index_select(0, active).mul_(beta1).add_(g, alpha=1 - beta1)
        v = state["exp_avg_sq"].index_select(0, active).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        steps = state["step"].index_select(0, active) + 1
        state["exp_avg"].index_copy_(0, active, m)
        state["exp_avg_sq"].index_copy_(0, active, v)
        state["step"].index_copy_(0, active, steps)
        shape = (-1,) + (1,) * (p.dim() - 1)
        bias1 = (1 - beta1 ** steps).to(p.dtype).view(shape)
        bias2 = (1 - beta2 ** steps).to(p.dtype).view(shape)
        rows = p.index_select(0, active)
        rows.mul_(1 - group["lr"] * group["weight_decay"])
        rows.sub_(group["lr"] * (m / bias1) / ((v / bias2).sqrt() + group["eps"]))
        p.index_copy_(0, active, rows)

    @staticmethod
    def _update_dense(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict, beta1: float, beta2: float) -> None:
        state["step"] += 1
        step = float(state["step"][0])
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        denom = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1 ** step))


def build_optimizer(name: str, groups: list[dict], on_cuda: bool = False) -> torch.optim.Optimizer:
    """``adamw`` (torch's, multi-tensor ``foreach`` on CUDA) or ``lazy_adamw`` (groups with ``lazy=True`` update row-wise).

    Not ``fused``: Lightning's mixed-precision plugin (``bf16-mixed``, the GPU default) refuses gradient clipping
    (``trainer.gradient_clip_val``, 1.0 by default) with an optimiser that unscales its own gradients, so every
    ``adamw`` stage failed at its first step on a GPU (seen on an H200, docs/prompt_diagnosis.md)."""
    if name == "adamw":
        plain = [{k: v for k, v in g.items() if k != "lazy"} for g in groups]
        return torch.optim.AdamW(plain, foreach=True) if on_cuda else torch.optim.AdamW(plain)
    if name == "lazy_adamw":
        return LazyAdamW(groups)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(PROMPT_OPTIMIZERS)}")


def warmup_cosine(total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """Learning-rate factor: linear warmup over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    total = max(1, int(total_steps))
    warm = max(0, min(int(warmup_steps), total - 1))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(step - warm, total - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
