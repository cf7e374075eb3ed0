"""Task heads on the answer-token logits read at the answer position.

* :class:`RatingHead` — logits of "1".."5" feed a 5-class cross-entropy and a small MLP
  (5→32→12→1, ReLU) that regresses the rating; loss = 0.8·MSE + 0.2·CE, as published.
* :class:`ClickHead` — binary cross-entropy on the "Yes" logit, with a learnable scale and bias so
  that the raw logit (often large) can be calibrated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RatingHead(nn.Module):
    """Hybrid regression + classification head for 1..5 ratings."""

    n_answers = 5

    def __init__(self, mse_weight: float = 0.8, ce_weight: float = 0.2) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 12), nn.ReLU(), nn.Linear(12, 1))
        self.mse_weight = mse_weight
        self.ce_weight = ce_weight

    def init_bias(self, mean_label: float) -> None:
        """Start the regressor at the training mean so early predictions are sensible."""
        with torch.no_grad():
            self.mlp[-1].bias.fill_(float(mean_label))

    def forward(self, answer_logits: torch.Tensor) -> torch.Tensor:
        """Unclamped rating prediction [B] from the 5 answer logits [B, 5]."""
        return self.mlp(answer_logits.float()).squeeze(-1)

    def loss(self, answer_logits: torch.Tensor, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """0.8·MSE(prediction, rating) + 0.2·CE(logits, rating class)."""
        target_class = (label.round().long() - 1).clamp(0, 4)
        mse = F.mse_loss(output, label)
        ce = F.cross_entropy(answer_logits.float(), target_class)
        return self.mse_weight * mse + self.ce_weight * ce

    def soft_loss(self, answer_logits: torch.Tensor, output: torch.Tensor, target: torch.Tensor,
                  target_distribution: torch.Tensor) -> torch.Tensor:
        """The same mix against a teacher (distillation): MSE to its predicted rating, cross-entropy to its
        answer distribution ``[B, 5]`` (a soft target instead of the rounded class)."""
        mse = F.mse_loss(output, target)
        ce = F.cross_entropy(answer_logits.float(), target_distribution.float())
        return self.mse_weight * mse + self.ce_weight * ce

    @staticmethod
    def predict(output: torch.Tensor) -> torch.Tensor:
        """Rating prediction clamped to the valid range [1, 5]."""
        return output.clamp(1.0, 5.0)


class ClickHead(nn.Module):
    """Binary click head on the logit of the "Yes" token."""

    n_answers = 1

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))

    def init_bias(self, mean_label: float) -> None:
        """Nothing to do: the bias is fitted from the first steps (kept for a uniform interface)."""

    def forward(self, answer_logits: torch.Tensor) -> torch.Tensor:
        """Click logit [B] from the "Yes" logit [B, 1]."""
        return answer_logits.float()[:, 0] * self.scale + self.bias

    def loss(self, answer_logits: torch.Tensor, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy with logits."""
        return F.binary_cross_entropy_with_logits(output, label)

    def soft_loss(self, answer_logits: torch.Tensor, output: torch.Tensor, target: torch.Tensor,
                  target_distribution: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy to a teacher's click probability ``target`` (its distribution is that same number)."""
        return F.binary_cross_entropy_with_logits(output, target.float())

    @staticmethod
    def predict(output: torch.Tensor) -> torch.Tensor:
        """Click probability, in float64: in float32 every logit above about 17 rounds to 1.0 and ties."""
        return torch.sigmoid(output.double())


def build_head(task: str) -> nn.Module:
    """The head for a task name (``rating`` or ``click``)."""
    if task == "rating":
        return RatingHead()
    if task == "click":
        return ClickHead()
    raise ValueError(f"unknown task {task!r}; expected 'rating' or 'click'")
