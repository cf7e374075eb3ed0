"""``prompt.residual``: prompts that learn what a no-LLM bias model misses.

With ``prompt.residual=user_item_bias`` every row's model output is ``head(answer logits) + b(u, i)``
where ``b(u, i) = mu + b_u + b_i`` is the regularised bias model fitted on the dataset's training
rows (regularisation chosen on valid, exactly the ``user_item_bias`` reference). The soft prompts
and the head then only have to learn the residual. The bias model is in rating units, so it is
the same on every LLM: it is refitted from the table wherever prompts are trained, migrated,
tested or served, and needs no storage in banks. ``item_bias`` keeps only the item side (the
user part is then entirely the prompt's).

On a click task the bases are logistic (``item_logodds``, ``user_item_logodds``): the log-odds
``b(u, i)`` of a regularised logistic bias model, added to the head's click logit, so the prompts
learn which items a user picks beyond how often each item is picked (an item's popularity) and how
often the user clicks.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from puma_lightning.data.table import InteractionTable
from puma_lightning.errors import PumaError

__all__ = ["CLICK_BASES", "RATING_BASES", "bias_terms", "pair_offsets", "row_offsets"]

RATING_BASES = ("item_bias", "user_item_bias")
"""Residual bases in rating units (least squares)."""
CLICK_BASES = ("item_logodds", "user_item_logodds")
"""Residual bases in log-odds units (logistic), for click tasks."""


def bias_terms(cfg: Any, table: InteractionTable) -> tuple[float, np.ndarray, np.ndarray] | None:
    """``(mu, b_u, b_i)`` of the configured residual base fitted on ``table``, or None without one."""
    base = str(cfg.prompt.get("residual", "none"))
    if base == "none":
        return None
    wanted = "click" if base in CLICK_BASES else "rating"
    if table.task != wanted:
        raise PumaError(f"prompt.residual={base!r} is for {wanted} tasks; dataset {table.meta.get('name')!r} is a {table.task} task")
    cached = _FITTED.get((id(table), base))
    if cached is not None and cached[0]() is table:
        return cached[1]
    from puma_lightning.pipeline.bias_models import fit_bias_model, fit_click_bias_model

    fit = fit_click_bias_model if base in CLICK_BASES else fit_bias_model
    mu, bu, bi, _ = fit(table, users=base.startswith("user_item"), items=True)
    _FITTED[(id(table), base)] = (weakref.ref(table, lambda _, key=(id(table), base): _FITTED.pop(key, None)), (mu, bu, bi))
    return mu, bu, bi


_FITTED: dict[tuple[int, str], tuple[weakref.ref, tuple[float, np.ndarray, np.ndarray]]] = {}
"""One fit per (table, base) while the table lives: every datamodule of a run, the head's start and ``predict``
ask for the same bias model (a table's rows and labels are not changed after it is built)."""


def row_offsets(cfg: Any, table: InteractionTable) -> np.ndarray | None:
    """float32 ``b(u, i)`` for every row of ``table`` (None without a residual base)."""
    terms = bias_terms(cfg, table)
    if terms is None:
        return None
    mu, bu, bi = terms
    return (mu + bu[table.user] + bi[table.item]).astype(np.float32)


def pair_offsets(cfg: Any, fitted_on: InteractionTable, pairs: InteractionTable) -> np.ndarray | None:
    """``b(u, i)`` for the rows of ``pairs`` (users named by id, items by index into ``fitted_on``'s items), the
    bias model fitted on ``fitted_on``'s training rows (``predict``: the dataset the bank was trained on)."""
    terms = bias_terms(cfg, fitted_on)
    if terms is None:
        return None
    mu, bu, bi = terms
    index = {u: k for k, u in enumerate(fitted_on.user_ids)}
    user_bias = np.array([bu[index[u]] if u in index else 0.0 for u in pairs.user_ids])
    return (mu + user_bias[pairs.user] + bi[pairs.item]).astype(np.float32)
