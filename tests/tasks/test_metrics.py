"""Metrics over all samples, checked against scikit-learn on random data."""

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, roc_auc_score

from puma_lightning.tasks.metrics import UserAUC, build_metrics, update_metrics


def test_rmse_and_mae_accumulate_over_uneven_batches_like_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(1, 6, 203).astype(np.float32)
    p = np.clip(y + rng.normal(0, 0.8, 203), 1, 5).astype(np.float32)
    metrics = build_metrics("rating", "test")
    for lo, hi in [(0, 7), (7, 100), (100, 203)]:  # uneven batches: a per-batch mean would differ
        update_metrics(metrics, "rating", torch.from_numpy(p[lo:hi]), torch.from_numpy(y[lo:hi]))
    out = {k: float(v) for k, v in metrics.compute().items()}
    assert out["test/rmse"] == pytest.approx(mean_squared_error(y, p) ** 0.5, rel=1e-5)
    assert out["test/mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-5)


def test_auc_and_user_auc_match_sklearn():
    rng = np.random.default_rng(1)
    n = 400
    users = rng.integers(0, 30, n)
    labels = rng.integers(0, 2, n).astype(np.float32)
    scores = np.round(rng.random(n) * 0.5 + labels * 0.3, 2).astype(np.float32)  # rounding creates ties
    users[users == 7] = 8  # make sure some user ids are absent
    single = users == 3
    labels[single] = 1.0  # user 3 has one class only: excluded from uAUC
    metrics = build_metrics("click", "val")
    uauc = UserAUC()
    for lo in range(0, n, 64):
        sl = slice(lo, lo + 64)
        update_metrics(metrics, "click", torch.from_numpy(scores[sl]), torch.from_numpy(labels[sl]))
        uauc.update(torch.from_numpy(scores[sl]), torch.from_numpy(labels[sl]), torch.from_numpy(users[sl]))
    assert float(metrics.compute()["val/auc"]) == pytest.approx(roc_auc_score(labels, scores), rel=1e-5)
    per_user = [roc_auc_score(labels[users == u], scores[users == u]) for u in np.unique(users)
                if 0 < labels[users == u].sum() < (users == u).sum()]
    assert float(uauc.compute()) == pytest.approx(np.mean(per_user), rel=1e-9)


def test_auc_keeps_the_order_of_large_logits():
    """In float32 sigmoid(17..30) are all 1.0 (ties, AUC 0.5); the head's float64 probabilities keep the ranking."""
    from puma_lightning.models.heads import ClickHead
    from puma_lightning.tasks.metrics import GlobalAUC

    logits = torch.tensor([18.0, 19.0, 20.0, 21.0, 22.0, 23.0])
    labels = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    assert torch.sigmoid(logits).unique().numel() == 1  # what float32 probabilities would give
    auc = GlobalAUC()
    auc.update(ClickHead.predict(logits), labels)
    assert float(auc.compute()) == pytest.approx(roc_auc_score(labels.numpy(), logits.numpy()))
    assert float(auc.compute()) == pytest.approx(8 / 9)
