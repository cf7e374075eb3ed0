"""Per-user label count, mean and variance in one streaming pass over (user, label) chunks.

Selection needs each user's label variance and row count. For a product's millions of users the
ratings need not be in memory at once: :class:`UserMoments` takes them chunk by chunk (any order,
any chunk size) and merges each chunk's per-user moments into the running ones with the pairwise
update of Chan, Golub & LeVeque, which keeps the variance accurate where the textbook
``E[y^2] - E[y]^2`` loses digits. Memory is three float64 numbers per user.
"""

from __future__ import annotations

import numpy as np

__all__ = ["UserMoments"]


class UserMoments:
    """Running per-user ``count``, ``mean`` and ``m2`` (sum of squared deviations from the mean)."""

    def __init__(self, n_users: int) -> None:
        self.count = np.zeros(int(n_users), dtype=np.float64)
        self.mean = np.zeros(int(n_users), dtype=np.float64)
        self.m2 = np.zeros(int(n_users), dtype=np.float64)

    @property
    def n_users(self) -> int:
        return int(self.count.size)

    def update(self, users: np.ndarray, labels: np.ndarray) -> "UserMoments":
        """Fold one chunk of rows (user index, label) into the running moments; returns ``self``."""
        users = np.asarray(users, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.float64)
        if users.shape != labels.shape:
            raise ValueError(f"users and labels differ in shape: {users.shape} vs {labels.shape}")
        if users.size == 0:
            return self
        if users.min() < 0 or users.max() >= self.n_users:
            raise ValueError(f"user index out of range [0, {self.n_users}): {users.min()}..{users.max()}")
        n = self.n_users
        c = np.bincount(users, minlength=n).astype(np.float64)
        chunk_mean = np.bincount(users, weights=labels, minlength=n) / np.maximum(c, 1.0)
        chunk_m2 = np.bincount(users, weights=(labels - chunk_mean[users]) ** 2, minlength=n)
        total = self.count + c
        delta = chunk_mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, c / total, 0.0)
        self.m2 += chunk_m2 + delta * delta * self.count * share
        self.mean += delta * share
        self.count = total
        return self

    def variance(self, ddof: int = 1, too_few: float = 0.0) -> np.ndarray:
        """Per-user variance (``ddof=1``: the sample variance); ``too_few`` where ``count <= ddof``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            var = self.m2 / (self.count - ddof)
        var = np.clip(var, 0.0, None)
        var[self.count <= ddof] = too_few
        return var

    def counts(self) -> np.ndarray:
        """Rows seen per user (int64)."""
        return self.count.astype(np.int64)
