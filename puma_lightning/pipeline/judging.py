"""Judging a change to PUMA's trained module on validation rows: each row's loss, and the paired difference of two
versions' losses in standard errors with the rows clustered by user (a user's rows share one prompt). The adapter's
levers that choose on validation (:mod:`~puma_lightning.pipeline.levers.aggregate_start`,
:mod:`~puma_lightning.pipeline.levers.keep_start`, :mod:`~puma_lightning.pipeline.levers.shrink`) share it, so that
none imports another (levers run in the order they register)."""

from __future__ import annotations

from typing import Hashable, Mapping, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)

MARGIN_SE = 2.0
"""A change is kept only if its mean validation loss per row is below the unchanged module's by this many standard
errors of the paired difference, the rows clustered by user: with a few dozen validation users a change can look
better by chance."""


def row_losses(task: str, prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Each row's loss under the task's metric: squared error (ratings), log loss (clicks)."""
    if task == "click":
        p = np.clip(prediction, 1e-6, 1 - 1e-6)
        return -(label * np.log(p) + (1 - label) * np.log1p(-p))
    return (prediction - label) ** 2


def paired_z(diff: np.ndarray, users: np.ndarray | None = None) -> float:
    """The mean of the per-row differences ``diff`` in standard errors, the rows clustered by ``users`` (a user's rows
    share their prompt, so they are not independent; None: rows independent). 0 for no difference, +-inf for a
    difference without spread."""
    mean = float(diff.mean())
    if users is None:
        users = np.arange(len(diff))
    _, cluster = np.unique(users, return_inverse=True)
    groups = int(cluster.max()) + 1 if len(cluster) else 0
    if groups < 2:
        return 0.0
    totals = np.bincount(cluster, weights=diff - mean, minlength=groups)
    se = float(np.sqrt((totals ** 2).sum() * groups / (groups - 1)) / len(diff))
    if se > 0:
        return mean / se
    return 0.0 if mean == 0 else float(np.sign(mean)) * np.inf


def best_against(losses: Mapping[K, np.ndarray], baseline: K, users: np.ndarray | None = None,
                 margin_se: float = MARGIN_SE) -> tuple[K, dict[K, float]]:
    """The candidate with the lowest mean loss among those better than ``baseline`` by ``margin_se`` standard errors of
    the paired per-row difference (rows clustered by ``users``); ``baseline`` if none is. ``losses``: each candidate's
    per-row loss on the same rows. Returns ``(chosen, {candidate: z})``, ``z`` each other candidate's paired difference
    from ``baseline`` in standard errors (negative: better)."""
    base = losses[baseline]
    z: dict[K, float] = {}
    best, best_loss = baseline, float(np.mean(base))
    for key, loss in losses.items():
        if key == baseline:
            continue
        if len(loss) != len(base):
            raise ValueError(f"candidate {key!r} was judged on {len(loss)} rows and the baseline on {len(base)}")
        z[key] = paired_z(loss - base, users)
        if z[key] < -margin_se and float(np.mean(loss)) < best_loss:
            best, best_loss = key, float(np.mean(loss))
    return best, z
