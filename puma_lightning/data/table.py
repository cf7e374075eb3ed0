"""The canonical interaction table every dataset reader produces and every task consumes.

One row per (user, item) interaction. Users and items are dense integer indices; their external
ids and the items' texts live beside the arrays. The split column is filled by
:func:`puma_lightning.data.splits.chronological_split`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from puma_lightning.config import TASKS

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}
NO_SPLIT = -1
"""Split value of a row left out of every split (:meth:`InteractionTable.only_items`): no stage reads it."""


@dataclass
class InteractionTable:
    """Interactions of one dataset, as parallel numpy arrays of equal length."""

    user: np.ndarray
    """int64 user index in ``[0, len(user_ids))``."""
    item: np.ndarray
    """int64 item index in ``[0, len(item_texts))``."""
    label: np.ndarray
    """float32 rating (1..5) for the rating task, 0/1 click for the click task."""
    timestamp: np.ndarray
    """int64 seconds (any monotone clock); orders each user's history."""
    split: np.ndarray
    """int8: 0 train, 1 valid, 2 test (see :data:`SPLIT_NAMES`)."""
    user_ids: list[str]
    """External user id for each user index."""
    item_texts: list[str]
    """Human-readable item text for each item index, spliced into the template."""
    task: str = "rating"
    """``"rating"`` or ``"click"``."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Provenance: dataset name, generator parameters, how the split was made, ``floor_rmse``."""
    row_text: list[str] | None = None
    """Optional per-row context text (MIND: the sampled history titles of that impression), filling a
    template's ``{history}``; None when the template text depends on the item only."""
    item_ids: list[str] | None = None
    """The dataset's own id of each item index (what users name items by, e.g. in ``predict``); None: the index."""

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("item", "label", "timestamp", "split"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"InteractionTable.{name} has {len(getattr(self, name))} rows, expected {n}")
        if self.row_text is not None and len(self.row_text) != n:
            raise ValueError(f"InteractionTable.row_text has {len(self.row_text)} rows, expected {n}")
        if self.item_ids is not None and len(self.item_ids) != len(self.item_texts):
            raise ValueError(f"InteractionTable.item_ids has {len(self.item_ids)} ids for {len(self.item_texts)} items")
        if self.task not in TASKS:
            raise ValueError(f"InteractionTable.task must be 'rating' or 'click', got {self.task!r}")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_texts)

    def item_id_list(self) -> list[str]:
        """The external id of every item index (``item_ids``, or the index as text)."""
        return list(self.item_ids) if self.item_ids is not None else [str(i) for i in range(self.n_items)]

    def __len__(self) -> int:
        return len(self.user)

    def rows(self, split: str, users: np.ndarray | None = None) -> np.ndarray:
        """Row indices of one split, optionally only for the given user indices."""
        mask = self.split == SPLIT_NAMES[split]
        if users is not None:
            mask &= np.isin(self.user, np.asarray(users))
        return np.flatnonzero(mask)

    def only_items(self, items: np.ndarray) -> "InteractionTable":
        """This table with only the rows of ``items`` left in their splits (the others in none): every user's rows of
        those items. Users, items and row indices are unchanged, so prompts and per-row offsets still line up."""
        split = np.where(np.isin(self.item, items), self.split, np.int8(NO_SPLIT)).astype(self.split.dtype)
        return replace(self, split=split)

    def pairs_to_score(self, users: np.ndarray, items: np.ndarray, user_ids: list[str] | None = None,
                       row_text: list[str] | None = None, **meta: Any) -> "InteractionTable":
        """Unlabelled (user, item) pairs as the test rows of a table over this table's items (what a predict loop
        reads): ``users`` index ``user_ids`` (this table's users when None), ``items`` this table's items; ``meta``
        is added to the dataset's name."""
        n = len(users)
        return InteractionTable(user=np.asarray(users, dtype=np.int64), item=np.asarray(items, dtype=np.int64),
                                label=np.zeros(n, np.float32), timestamp=np.zeros(n, np.int64),
                                split=np.full(n, TEST, np.int8),
                                user_ids=list(self.user_ids if user_ids is None else user_ids),
                                item_texts=self.item_texts, task=self.task, item_ids=self.item_ids,
                                meta={"name": self.meta.get("name"), **meta}, row_text=row_text)

    def label_variance(self) -> np.ndarray:
        """Per-user sample variance (ddof=1) of training labels; 0 for users with < 2 rows."""
        from puma_lightning.data.user_moments import UserMoments

        rows = self.rows("train")
        return UserMoments(self.n_users).update(self.user[rows], self.label[rows]).variance(ddof=1, too_few=0.0)

    def train_counts(self) -> np.ndarray:
        """Number of training rows per user."""
        return np.bincount(self.user[self.rows("train")], minlength=self.n_users)
