"""User and item bias models (fitted in closed form, regularisation chosen on the validation split): the classic
references of that name, the base of the attribute ridge, and the residual base the prompts can learn on top of."""

from __future__ import annotations

from typing import Callable

import numpy as np

from puma_lightning.data.table import InteractionTable

RATING_RANGE = (1.0, 5.0)
"""Predicted ratings are clipped to this range."""
BIAS_REGS = (0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0)
"""The regularisations a bias model is chosen from, on the validation split."""


def rmse(pred: np.ndarray, label: np.ndarray) -> float:
    """Root mean squared error."""
    return float(np.sqrt(np.mean((pred - label) ** 2)))


def split_rows(table: InteractionTable, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(users, items, labels as float64)`` of one split's rows."""
    rows = table.rows(name)
    return table.user[rows], table.item[rows], table.label[rows].astype(np.float64)


def fit_biases(table: InteractionTable, reg: float, iterations: int = 15, users: bool = True,
               items: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Global mean, user and item biases minimising squared error + reg * (|b_u|^2 + |b_i|^2) (alternating).

    ``users=False`` / ``items=False`` keep that side's biases at zero (the item-only and user-only models)."""
    u, i, y = split_rows(table, "train")
    mu = float(y.mean()) if len(y) else 3.0
    bu, bi = np.zeros(table.n_users), np.zeros(table.n_items)
    nu = np.bincount(u, minlength=table.n_users)
    ni = np.bincount(i, minlength=table.n_items)
    for _ in range(iterations if users and items else 1):
        if users:
            bu = np.bincount(u, weights=y - mu - bi[i], minlength=table.n_users) / (reg + nu + 1e-12 * (nu == 0))
        if items:
            bi = np.bincount(i, weights=y - mu - bu[u], minlength=table.n_items) / (reg + ni + 1e-12 * (ni == 0))
    return mu, bu, bi


def fit_bias_model(table: InteractionTable, users: bool = True, items: bool = True) -> tuple[float, np.ndarray, np.ndarray, dict]:
    """``(mu, b_u, b_i, chosen)`` of the bias model (user, item or both) whose regularisation scores best on the
    validation split (the first of :data:`BIAS_REGS` without validation rows)."""
    return _chosen_on_valid(table, BIAS_REGS, lambda reg: fit_biases(table, reg, users=users, items=items),
                            lambda out, y: rmse(np.clip(out, *RATING_RANGE), y), "valid_rmse")


def _chosen_on_valid(table: InteractionTable, regs: tuple[float, ...],
                     fit: Callable[[float], tuple[float, np.ndarray, np.ndarray]],
                     score: Callable[[np.ndarray, np.ndarray], float], name: str) -> tuple[float, np.ndarray, np.ndarray, dict]:
    """``(mu, b_u, b_i, {"reg", name})``: the fit of the regularisation in ``regs`` whose validation ``score`` (of
    ``mu + b_u + b_i`` against the labels) is lowest; the first where the table has no validation rows."""
    uv, iv, yv = split_rows(table, "valid")
    best = None
    for reg in regs:
        mu, bu, bi = fit(reg)
        value = score(mu + bu[uv] + bi[iv], yv) if len(yv) else 0.0
        if best is None or value < best[0]:
            best = (value, reg, mu, bu, bi)
    value, reg, mu, bu, bi = best
    return mu, bu, bi, {"reg": reg, name: value}


CLICK_REGS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0)
"""The regularisations a click bias model is chosen from, on the validation split (log loss)."""


def log_loss(logit: np.ndarray, label: np.ndarray) -> float:
    """Mean binary cross-entropy of ``logit`` against 0/1 ``label`` (stable for any logit)."""
    return float(np.mean(np.logaddexp(0.0, logit) - label * logit))


def fit_logistic_biases(table: InteractionTable, reg: float, iterations: int = 25, users: bool = True,
                        items: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Global, user and item log-odds biases of a click table minimising log loss + reg/2 * (|b_u|^2 + |b_i|^2): one
    diagonal Newton step per side and iteration (each bias's own curvature), the global term unpenalised.

    ``users=False`` / ``items=False`` keep that side's biases at zero. A user or item without training rows keeps 0."""
    u, i, y = split_rows(table, "train")
    rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3)) if len(y) else 0.5
    mu = float(np.log(rate / (1 - rate)))
    bu, bi = np.zeros(table.n_users), np.zeros(table.n_items)
    for _ in range(iterations):
        for side, index, bias, n in ((users, u, bu, table.n_users), (items, i, bi, table.n_items)):
            if not side:
                continue
            p = 1.0 / (1.0 + np.exp(-(mu + bu[u] + bi[i])))
            grad = np.bincount(index, weights=y - p, minlength=n) - reg * bias
            curve = np.bincount(index, weights=p * (1 - p), minlength=n) + reg
            bias += grad / curve
        p = 1.0 / (1.0 + np.exp(-(mu + bu[u] + bi[i])))
        mu += float((y - p).sum() / max((p * (1 - p)).sum(), 1e-12))
    return mu, bu, bi


def fit_click_bias_model(table: InteractionTable, users: bool = True, items: bool = True) -> tuple[float, np.ndarray, np.ndarray, dict]:
    """``(mu, b_u, b_i, chosen)`` in log-odds: the logistic bias model whose regularisation scores the lowest log loss
    on the validation split (the first of :data:`CLICK_REGS` without validation rows)."""
    return _chosen_on_valid(table, CLICK_REGS, lambda reg: fit_logistic_biases(table, reg, users=users, items=items),
                            log_loss, "valid_log_loss")
