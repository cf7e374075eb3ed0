"""Reference recommenders that need no LLM, fitted on the same training rows in seconds.

What LLM personalisation has to beat on the same test rows: the global mean, regularised item
biases, user biases, user + item biases, and a biased matrix factorisation (Funk SVD with biases, SGD). Regularisation (and
the factorisation's size) is chosen on the validation split; predictions are clipped to the rating
range. Tables whose items carry attributes (the synthetic generator's genre, mood, decade) also get a per-user ridge on
them over the biases (:mod:`~puma_lightning.pipeline.classic_attributes`); click tables get popularity and item-item
co-occurrence scores instead (:mod:`~puma_lightning.pipeline.classic_click`). :func:`references_for` says which apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from puma_lightning.data.table import InteractionTable
from puma_lightning.pipeline.bias_models import RATING_RANGE, fit_bias_model, rmse, split_rows
from puma_lightning.pipeline.classic_attributes import attribute_ridge, attribute_ridge_click, has_item_attributes
from puma_lightning.pipeline.classic_click import item_item, popularity

MF_GRID = tuple((k, reg) for k in (8, 32) for reg in (0.02, 0.05, 0.1))
MF_EPOCHS, MF_LR = 30, 0.01


@dataclass(frozen=True)
class Reference:
    """One classic reference: a name, what it is, and how to fit it."""

    name: str
    description: str
    fit: Callable[[InteractionTable, int], tuple[np.ndarray, dict]]
    """(table, seed) -> (prediction for every row of the table, chosen parameters): a rating, or a click score."""
    task: str = "rating"
    """The table task it scores: ``rating`` (RMSE/MAE) or ``click`` (AUC/uAUC of its scores)."""
    needs: Callable[[InteractionTable], bool] | None = None
    """Whether a table of that task has what it reads (e.g. item attributes); None: every such table."""

    def applies(self, table: InteractionTable) -> bool:
        """True when this reference can be fitted on ``table``."""
        return self.task == table.task and (self.needs is None or self.needs(table))


def _bias_model(users: bool, items: bool) -> Callable[[InteractionTable, int], tuple[np.ndarray, dict]]:
    """A bias reference (user, item or both), its regularisation chosen on the validation split."""

    def fit(table: InteractionTable, seed: int) -> tuple[np.ndarray, dict]:
        mu, bu, bi, chosen = fit_bias_model(table, users=users, items=items)
        return _predict_all(table, lambda u, i: mu + bu[u] + bi[i]), chosen

    return fit


def _predict_all(table: InteractionTable, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    return np.clip(fn(table.user, table.item), *RATING_RANGE)


def global_mean(table: InteractionTable, seed: int) -> tuple[np.ndarray, dict]:
    mu = float(table.label[table.rows("train")].mean())
    return np.full(len(table), mu), {"mean": mu}


user_item_bias = _bias_model(users=True, items=True)
user_bias = _bias_model(users=True, items=False)
item_bias = _bias_model(users=False, items=True)


def fit_mf(table: InteractionTable, k: int, reg: float, seed: int, epochs: int = MF_EPOCHS,
           lr: float = MF_LR) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Biased matrix factorisation by SGD over the training rows (shuffled each epoch, seeded)."""
    u, i, y = split_rows(table, "train")
    rng = np.random.default_rng(seed)
    mu = float(y.mean())
    bu, bi = np.zeros(table.n_users), np.zeros(table.n_items)
    p = rng.normal(0, 0.1, (table.n_users, k))
    q = rng.normal(0, 0.1, (table.n_items, k))
    for _ in range(epochs):
        for r in rng.permutation(len(y)):
            a, b = u[r], i[r]
            err = y[r] - (mu + bu[a] + bi[b] + p[a] @ q[b])
            bu[a] += lr * (err - reg * bu[a])
            bi[b] += lr * (err - reg * bi[b])
            p[a], q[b] = p[a] + lr * (err * q[b] - reg * p[a]), q[b] + lr * (err * p[a] - reg * q[b])
    return lambda uu, ii: mu + bu[uu] + bi[ii] + np.einsum("nk,nk->n", p[uu], q[ii])


def biased_mf(table: InteractionTable, seed: int) -> tuple[np.ndarray, dict]:
    uv, iv, yv = split_rows(table, "valid")
    best = None
    for k, reg in MF_GRID:
        predict = fit_mf(table, k, reg, seed)
        score = rmse(np.clip(predict(uv, iv), *RATING_RANGE), yv) if len(yv) else 0.0
        if best is None or score < best[0]:
            best = (score, k, reg, predict)
    score, k, reg, predict = best
    return _predict_all(table, predict), {"factors": k, "reg": reg, "epochs": MF_EPOCHS, "lr": MF_LR, "valid_rmse": score}


REFERENCES: dict[str, Reference] = {}


def register(ref: Reference) -> None:
    """Add a reference; names are unique."""
    if ref.name in REFERENCES:
        raise ValueError(f"classic reference {ref.name!r} is already registered")
    REFERENCES[ref.name] = ref


register(Reference("global_mean", "no LLM: the training ratings' mean", global_mean))
register(Reference("item_bias", "no LLM: mean + regularised item biases (what is known of the items alone)", item_bias))
register(Reference("user_bias", "no LLM: mean + regularised user biases (a per-user average)", user_bias))
register(Reference("user_item_bias", "no LLM: mean + regularised user and item biases (reg on valid)", user_item_bias))
register(Reference("biased_mf", "no LLM: biased matrix factorisation, SGD (size and reg on valid)", biased_mf))
register(Reference("attribute_ridge", "no LLM: per-user ridge on the item attributes over the user + item biases (reg on valid)",
                   attribute_ridge, needs=has_item_attributes))
register(Reference("attribute_ridge_click", "no LLM: per-user ridge on the item attributes over user + item click rates "
                   "(a linear probability model, regs on valid)", attribute_ridge_click, task="click", needs=has_item_attributes))
register(Reference("popularity", "no LLM, not personal: the item's training positives", popularity, task="click"))
register(Reference("item_item", "no LLM: summed cosine co-occurrence of the item with the user's training positives",
                   item_item, task="click"))


def references_for(table: InteractionTable) -> dict[str, Reference]:
    """The registered references that apply to ``table`` (its task, and what each needs), in registry order."""
    return {name: ref for name, ref in REFERENCES.items() if ref.applies(table)}
