"""``attribute_ridge``: what a model that reads the item text could learn of each user's tastes, with no LLM.

Where a table's items carry categorical attributes (``meta["item_attributes"]``: per attribute, each item's category
index; the synthetic generator writes its genre, mood and decade), each user gets a ridge regression of the residual of
the user + item bias model on the one-hot attributes of the items they rated::

    w_u = argmin_w  sum over u's training rows (y - b(u, i) - x_i . w)^2 + lam * |w|^2,   prediction b(u, i) + x_i . w_u

with one penalty ``lam`` for every user, chosen on the validation split. The gap between it and the bias model is the
personal signal the item text carries (what a table's "captured share" divides by). ``attribute_ridge_click`` is the
same on click tables, as a linear probability model over the user + item click rates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from puma_lightning.data.table import InteractionTable
from puma_lightning.pipeline.bias_models import BIAS_REGS, RATING_RANGE, fit_bias_model, fit_biases

RIDGE_PENALTIES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
"""The penalties tried; the one with the lowest validation RMSE is kept."""
USER_BLOCK = 4096
"""Users whose normal equations are built at once (bounds memory to ``USER_BLOCK * d^2`` floats)."""


def has_item_attributes(table: InteractionTable) -> bool:
    """True when ``table.meta["item_attributes"]`` gives every item a category index for at least one attribute."""
    attributes = table.meta.get("item_attributes")
    return bool(attributes) and all(len(v) == table.n_items for v in attributes.values())


def attribute_columns(table: InteractionTable) -> tuple[np.ndarray, int]:
    """Each item's one-hot column per attribute, ``[n_items, n_attributes]``, and the number of one-hot columns."""
    columns, offset = [], 0
    for values in table.meta["item_attributes"].values():
        values = np.asarray(values, dtype=np.int64)
        columns.append(values + offset)
        offset += int(values.max()) + 1 if len(values) else 0
    return np.stack(columns, axis=1), offset


def ridge_weights(user: np.ndarray, cols: np.ndarray, target: np.ndarray, n_users: int, width: int,
                  penalties: tuple[float, ...]) -> np.ndarray:
    """Per user and penalty, the ridge weights of ``target`` on the one-hot rows ``cols``: ``[len(penalties), n_users, width]``.

    ``cols[r]`` holds the one-hot columns set in row ``r`` (one per attribute), so the normal equations are counted with
    ``bincount`` rather than built from dense outer products."""
    out = np.zeros((len(penalties), n_users, width))
    k = cols.shape[1]
    eye = np.eye(width)
    for lo in range(0, n_users, USER_BLOCK):
        hi = min(lo + USER_BLOCK, n_users)
        rows = np.flatnonzero((user >= lo) & (user < hi))
        u = user[rows] - lo
        c = cols[rows]
        pair = (u[:, None, None] * width + c[:, :, None]) * width + c[:, None, :]
        gram = np.bincount(pair.reshape(-1), minlength=(hi - lo) * width * width).reshape(hi - lo, width, width)
        rhs = np.bincount((u[:, None] * width + c).reshape(-1), weights=np.repeat(target[rows], k),
                          minlength=(hi - lo) * width).reshape(hi - lo, width)
        for p, lam in enumerate(penalties):
            out[p, lo:hi] = np.linalg.solve(gram + lam * eye, rhs[..., None])[..., 0]
    return out


def attribute_ridge(table: InteractionTable, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Every row's prediction (clipped to the rating range) and the chosen penalty with its validation RMSE."""
    mu, bu, bi, bias_chosen = fit_bias_model(table)
    return ridge_over_base(table, mu + bu[table.user] + bi[table.item], RATING_RANGE, bias_chosen["reg"])


def attribute_ridge_click(table: InteractionTable, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The same on a click table, as a linear probability model: the ridge over the user + item click-rate biases
    (each regularisation chosen on the validation split's squared error), clipped to [0, 1]; scored by AUC/uAUC."""
    valid = table.rows("valid")
    best = None
    for reg in BIAS_REGS:
        mu, bu, bi = fit_biases(table, reg)
        base = mu + bu[table.user] + bi[table.item]
        score = float(np.mean((np.clip(base[valid], 0.0, 1.0) - table.label[valid]) ** 2)) if len(valid) else 0.0
        if best is None or score < best[0]:
            best = (score, reg, base)
    return ridge_over_base(table, best[2], (0.0, 1.0), best[1])


def ridge_over_base(table: InteractionTable, base: np.ndarray, clip: tuple[float, float],
                    bias_reg: float) -> tuple[np.ndarray, dict[str, Any]]:
    """``base`` (every row's bias-model prediction) plus each user's attribute ridge on its training residual, the
    penalty chosen on the validation split's RMSE; predictions clipped to ``clip``."""
    item_cols, width = attribute_columns(table)
    cols = item_cols[table.item]
    train, valid = table.rows("train"), table.rows("valid")
    target = table.label[train].astype(np.float64) - base[train]
    weights = ridge_weights(table.user[train], cols[train], target, table.n_users, width, RIDGE_PENALTIES)

    def predict(p: int, rows: np.ndarray) -> np.ndarray:
        return np.clip(base[rows] + weights[p, table.user[rows][:, None], cols[rows]].sum(axis=1), *clip)

    label = table.label[valid].astype(np.float64)
    scores = [float(np.sqrt(np.mean((predict(p, valid) - label) ** 2))) if len(valid) else 0.0
              for p in range(len(RIDGE_PENALTIES))]
    best = int(np.argmin(scores))
    return predict(best, np.arange(len(table))), {"reg": RIDGE_PENALTIES[best], "valid_rmse": scores[best],
                                                   "bias_reg": bias_reg, "attributes": list(table.meta["item_attributes"]),
                                                   "features": width}
