"""Metrics computed over all samples of a split (never averaged per batch).

Rating: RMSE and MAE (torchmetrics). Click: AUC and uAUC — the unweighted mean of per-user AUC over
users whose samples contain both classes — both rank-based on float64 scores (equal to scikit-learn).
"""

from __future__ import annotations

import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat


def _binary_auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AUC by the rank-sum formula, with average ranks for ties."""
    n = scores.numel()
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty(n, dtype=torch.float64, device=scores.device)
    # average ranks of tied groups
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    pos = labels > 0.5
    n_pos = pos.sum().double()
    n_neg = n - n_pos
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class GlobalAUC(Metric):
    """AUC over every sample, on float64 scores (rank-sum, average ranks for ties).

    Click probabilities of large logits all round to 1.0 in float32 (beyond a logit of about 17), which
    would make them ties; the head's float64 probabilities (or the logits) keep their order."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        self.scores.append(scores.detach().double())
        self.labels.append(labels.detach().double())

    def compute(self) -> torch.Tensor:
        scores, labels = dim_zero_cat(self.scores), dim_zero_cat(self.labels)
        if not 0 < labels.sum() < labels.numel():
            return torch.tensor(float("nan"), dtype=torch.float64)
        return _binary_auc(scores, labels)


class UserAUC(Metric):
    """Mean per-user AUC over users with both a positive and a negative sample."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("users", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor, users: torch.Tensor) -> None:
        self.scores.append(scores.detach().double())
        self.labels.append(labels.detach().double())
        self.users.append(users.detach().long())

    def compute(self) -> torch.Tensor:
        scores, labels, users = dim_zero_cat(self.scores), dim_zero_cat(self.labels), dim_zero_cat(self.users)
        aucs = []
        for user in torch.unique(users):
            mask = users == user
            y = labels[mask]
            if 0 < y.sum() < y.numel():
                aucs.append(_binary_auc(scores[mask], y))
        if not aucs:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return torch.stack(aucs).mean()


def build_metrics(task: str, prefix: str) -> MetricCollection:
    """The metric collection for a task, logged as ``{prefix}/rmse`` etc."""
    if task == "rating":
        metrics = {"rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError()}
    else:
        metrics = {"auc": GlobalAUC()}
    return MetricCollection(metrics, prefix=f"{prefix}/")


def update_metrics(metrics: MetricCollection, task: str, prediction: torch.Tensor, label: torch.Tensor) -> None:
    """Feed one batch of predictions (ratings or probabilities) into the collection."""
    if task == "rating":
        metrics.update(prediction, label)
    else:
        metrics.update(prediction, label.long())
