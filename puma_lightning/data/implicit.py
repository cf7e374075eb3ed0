"""Ratings as implicit feedback: which items a user chose (positives) against items they never rated (negatives).

The paper's MIND setting on data we ship: every kept rating becomes a positive click row (label 1, whatever the stars);
each positive gets ``negatives`` items the user never rated at all (not only among the kept rows), drawn uniformly,
seeded, without repetition within a user, each stamped with its positive's time. The split is made on the positives,
per user and chronologically, and every negative follows its positive, so a test positive and its negatives are
scored together and no user's later choices leak into training.
"""

from __future__ import annotations

import numpy as np

from puma_lightning.errors import PumaError

from .splits import chronological_split, keep_latest
from .table import InteractionTable


def implicit_feedback(rated: InteractionTable, max_rows_per_user: int | None, negatives: int, seed: int,
                      valid_ratio: float, test_ratio: float) -> InteractionTable:
    """The click table of ``rated`` (every rating the users made): each user's ``max_rows_per_user`` latest ratings as
    positives, ``negatives`` never-rated items per positive, split per user in time on the positives."""
    if negatives < 1:
        raise PumaError(f"'data.negatives_per_positive' must be >= 1, got {negatives}")
    positives = chronological_split(keep_latest(rated, max_rows_per_user), valid_ratio=valid_ratio, test_ratio=test_ratio)
    seen = np.zeros((rated.n_users, rated.n_items), dtype=bool)  # every film each user rated, kept or not
    seen[rated.user, rated.item] = True
    n_pos = np.bincount(positives.user, minlength=rated.n_users)
    short = np.flatnonzero(n_pos * negatives > rated.n_items - seen.sum(axis=1))
    if len(short):
        raise PumaError(f"'data.negatives_per_positive' is {negatives}, but user {rated.user_ids[short[0]]} has "
                        f"{int(n_pos[short[0]])} positives and only {int(rated.n_items - seen[short[0]].sum())} unrated items")
    rng = np.random.default_rng(seed)
    order = np.argsort(positives.user, kind="stable")  # each user's positives, in row order
    neg_item = np.empty(len(order) * negatives, dtype=np.int64)
    neg_of = np.repeat(order, negatives)  # the positive row each negative belongs to
    start = 0
    for u in range(rated.n_users):
        k = int(n_pos[u]) * negatives
        if k:
            neg_item[start:start + k] = rng.choice(np.flatnonzero(~seen[u]), size=k, replace=False)
            start += k
    n = len(positives)
    table = InteractionTable(
        user=np.concatenate([positives.user, positives.user[neg_of]]),
        item=np.concatenate([positives.item, neg_item]),
        label=np.concatenate([np.ones(n, np.float32), np.zeros(len(neg_item), np.float32)]),
        timestamp=np.concatenate([positives.timestamp, positives.timestamp[neg_of]]),
        split=np.concatenate([positives.split, positives.split[neg_of]]),
        user_ids=list(rated.user_ids), item_texts=rated.item_texts, task="click", item_ids=rated.item_ids,
        meta={**positives.meta, "floor_rmse": None,
              "implicit": {"positives": "every kept rating, whatever its stars", "negatives_per_positive": int(negatives),
                           "negatives": "uniform over the items the user never rated, no repeats within a user, seeded",
                           "seed": int(seed), "split": "per user chronological on the positives; negatives follow theirs",
                           "positive_rows": int(n), "negative_rows": int(len(neg_item))}},
    )
    table.meta["split"] = {**positives.meta["split"], "counts": {name: int((table.split == code).sum())
                                                                 for name, code in (("train", 0), ("valid", 1), ("test", 2))}}
    return table
