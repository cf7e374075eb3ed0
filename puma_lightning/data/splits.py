"""Row selection on an :class:`InteractionTable`: per-user chronological splits and user/row subsets.

Everything here is pure numpy, deterministic and returns a new table (the input is never mutated).
Each function records what it did in ``table.meta`` so a saved split says how it was made.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .table import SPLIT_NAMES, TEST, TRAIN, VALID, InteractionTable


def _user_order(table: InteractionTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by (user, timestamp, original row), each row's rank inside its user, and rows per user.

    Returns ``order`` (row indices in that order), ``rank`` (aligned with ``order``: 0 = the user's
    oldest row) and ``count`` (rows per user index, length ``n_users``).
    """
    n = len(table)
    rows = np.arange(n, dtype=np.int64)
    order = np.lexsort((rows, np.asarray(table.timestamp), np.asarray(table.user)))
    sorted_user = np.asarray(table.user)[order]
    count = np.bincount(sorted_user, minlength=table.n_users).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    rank = rows - start[sorted_user]
    return order, rank, count


def with_arrays(table: InteractionTable, meta_update: dict[str, Any], **arrays: Any) -> InteractionTable:
    """A copy of ``table`` with some arrays replaced and ``meta`` updated (the input is not changed)."""
    meta = dict(table.meta)
    meta.update(meta_update)
    return dataclasses.replace(table, meta=meta, **arrays)


def chronological_split(
    table: InteractionTable, valid_ratio: float = 0.1, test_ratio: float = 0.1, min_eval: int = 1
) -> InteractionTable:
    """Split each user's history in time: oldest rows train, then valid, the latest rows test.

    Rows are ordered per user by (timestamp, original row order), so ties keep the input order.
    A user with ``n >= 3`` rows gets ``max(min_eval, round(n * ratio))`` test and valid rows, capped
    so that at least one training row remains (valid shrinks first, each keeps >= 1 while possible);
    a ratio of 0 gives that split no rows at all. Users with fewer than 3 rows are all train. Valid
    and test never overlap.
    """
    if not (0.0 <= valid_ratio < 1.0 and 0.0 <= test_ratio < 1.0 and valid_ratio + test_ratio < 1.0):
        raise ValueError(f"need 0 <= valid_ratio, test_ratio and their sum < 1; got {valid_ratio}, {test_ratio}")
    if min_eval < 0:
        raise ValueError(f"min_eval must be >= 0, got {min_eval}")
    order, rank, count = _user_order(table)

    eligible = count >= 3
    # a ratio of 0 asks for no rows at all: min_eval applies only to a split that is asked for
    n_test = np.maximum(min_eval if test_ratio > 0 else 0, np.floor(count * test_ratio + 0.5)).astype(np.int64)
    n_valid = np.maximum(min_eval if valid_ratio > 0 else 0, np.floor(count * valid_ratio + 0.5)).astype(np.int64)
    # Leave at least one training row: trim valid first (to >= 1 when it asked for any), then test.
    room = np.maximum(count - 1, 0)
    n_test = np.minimum(n_test, np.maximum(room - np.minimum(n_valid, 1), 0))
    n_valid = np.minimum(n_valid, room - n_test)
    n_test = np.where(eligible, n_test, 0)
    n_valid = np.where(eligible, n_valid, 0)

    sorted_user = np.asarray(table.user)[order]
    from_end = count[sorted_user] - rank  # 1 = the user's latest row
    sorted_split = np.full(len(order), TRAIN, dtype=np.int8)
    sorted_split[from_end <= n_test[sorted_user] + n_valid[sorted_user]] = VALID
    sorted_split[from_end <= n_test[sorted_user]] = TEST
    split = np.empty(len(order), dtype=np.int8)
    split[order] = sorted_split

    counts = split_counts(split)
    record = {
        "method": "chronological_per_user",
        "order": "timestamp, then original row order",
        "valid_ratio": float(valid_ratio),
        "test_ratio": float(test_ratio),
        "min_eval": int(min_eval),
        "rounding": "round half up, capped to keep >= 1 train row",
        "users_all_train": int((~eligible & (count > 0)).sum()),
        "counts": counts,
    }
    return with_arrays(table, {"split": record}, split=split)


def split_counts(split: np.ndarray) -> dict[str, int]:
    """Rows per split name."""
    return {name: int((np.asarray(split) == code).sum()) for name, code in SPLIT_NAMES.items()}


PAPER_VALID_RATIO = 0.2
"""The published split: the latest 20 % of each user's rows are valid, the rest train, no test."""
PAPER_RULES = {
    "floor_train": "train = int(n * (1 - 0.2)), valid = the rest (build_dataset_amazon.ipynb)",
    "floor_valid_min1": "valid = max(1, int(n * 0.2)), train = the rest (build_dataset_yelp.ipynb)",
    "official": "the rows' own split: train -> train, dev -> valid (build_dataset_mind.ipynb)",
}


def paper_split(table: InteractionTable, rule: str = "floor_train", origin: np.ndarray | None = None) -> InteractionTable:
    """The published split: per user chronological train/valid (80/20 with the published rounding, see
    :data:`PAPER_RULES`), no test rows; ``official`` takes each row's ``origin`` (0 train, else valid).

    Rows are ordered per user by (timestamp, original row order). The published notebooks sort with
    pandas' default (unstable) quicksort, so which of several rows with the *same* timestamp falls on
    each side of the cut is not reproducible; the number of rows on each side is."""
    if rule not in PAPER_RULES:
        raise ValueError(f"unknown paper split rule {rule!r}; expected one of {', '.join(PAPER_RULES)}")
    if rule == "official":
        if origin is None or (np.asarray(origin) < 0).any():
            raise ValueError("the 'official' paper split needs every row's origin (MIND train/ and dev/ folders)")
        split = np.where(np.asarray(origin) == TRAIN, TRAIN, VALID).astype(np.int8)
    else:
        order, rank, count = _user_order(table)
        n = count.astype(np.int64)
        if rule == "floor_train":  # int(n * (1 - 0.2)) exactly as Python computes it
            n_train = np.array([int(k * (1 - PAPER_VALID_RATIO)) for k in n.tolist()], dtype=np.int64)
        else:
            n_train = n - np.array([max(1, int(k * PAPER_VALID_RATIO)) for k in n.tolist()], dtype=np.int64)
        sorted_user = np.asarray(table.user)[order]
        sorted_split = np.where(rank < n_train[sorted_user], TRAIN, VALID).astype(np.int8)
        split = np.empty(len(order), dtype=np.int8)
        split[order] = sorted_split
    record = {"method": "paper", "rule": rule, "description": PAPER_RULES[rule], "valid_ratio": PAPER_VALID_RATIO,
              "test_ratio": 0.0, "counts": split_counts(split)}
    return with_arrays(table, {"split": record}, split=split)


def official_split(table: InteractionTable, origin: np.ndarray, valid_ratio: float) -> InteractionTable:
    """The raw files' own split (``origin``: 0 train, 1 valid, 2 test); when they have no valid part, the
    rows marked train are split into train/valid by time (``valid_ratio``, no test)."""
    origin = np.asarray(origin)
    if (origin < 0).any():
        raise ValueError("rows without an official split (MIND needs train/ and dev/ folders, Amazon the benchmark CSVs)")
    split = origin.astype(np.int8).copy()
    if not (origin == VALID).any():
        rows = np.flatnonzero(origin == TRAIN)
        sub = InteractionTable(table.user[rows], table.item[rows], table.label[rows], table.timestamp[rows],
                               np.zeros(len(rows), np.int8), table.user_ids, table.item_texts, table.task)
        split[rows] = chronological_split(sub, valid_ratio=valid_ratio, test_ratio=0.0, min_eval=0).split
    record = {"method": "official", "valid_ratio": float(valid_ratio), "counts": split_counts(split)}
    return with_arrays(table, {"split": record}, split=split)


def split_table(table: InteractionTable, split_by: str, valid_ratio: float, test_ratio: float,
                origin: np.ndarray | None = None, paper_rule: str = "floor_train") -> InteractionTable:
    """``data.split_by``: ``chronological`` (ratios), ``official`` (``origin``) or ``paper`` (``paper_rule``)."""
    if split_by == "chronological":
        return chronological_split(table, valid_ratio=valid_ratio, test_ratio=test_ratio)
    if split_by == "official":
        return official_split(table, np.full(len(table), -1) if origin is None else origin, valid_ratio)
    if split_by == "paper":
        return paper_split(table, paper_rule, origin)
    raise ValueError(f"unknown split {split_by!r}; expected chronological, official or paper")


def limit_users(
    table: InteractionTable, max_users: int | None, seed: int = 0, min_rows: int = 1
) -> InteractionTable:
    """Keep a seeded random subset of at most ``max_users`` users having ``>= min_rows`` rows.

    Kept users are re-indexed densely in their original index order; item indices and texts are
    unchanged (items nobody kept still have their text). Row order is preserved.
    """
    count = np.bincount(np.asarray(table.user), minlength=table.n_users)
    eligible = np.flatnonzero(count >= min_rows)
    if max_users is not None and max_users < len(eligible):
        if max_users < 0:
            raise ValueError(f"max_users must be >= 0, got {max_users}")
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(eligible, size=max_users, replace=False))
    else:
        chosen = eligible
    new_index = np.full(table.n_users, -1, dtype=np.int64)
    new_index[chosen] = np.arange(len(chosen), dtype=np.int64)
    keep = new_index[np.asarray(table.user)] >= 0
    record = {
        "max_users": None if max_users is None else int(max_users),
        "seed": int(seed),
        "min_rows": int(min_rows),
        "users_before": int(table.n_users),
        "users_after": int(len(chosen)),
        "rows_after": int(keep.sum()),
    }
    return with_arrays(
        table,
        {"limit_users": record},
        user=new_index[np.asarray(table.user)[keep]],
        item=np.asarray(table.item)[keep],
        label=np.asarray(table.label)[keep],
        timestamp=np.asarray(table.timestamp)[keep],
        split=np.asarray(table.split)[keep],
        user_ids=[table.user_ids[u] for u in chosen],
    )


def keep_latest(table: InteractionTable, max_rows_per_user: int | None) -> InteractionTable:
    """Keep each user's ``max_rows_per_user`` latest rows (by timestamp, then row order); None keeps all."""
    if max_rows_per_user is None:
        return table
    if max_rows_per_user < 1:
        raise ValueError(f"max_rows_per_user must be >= 1, got {max_rows_per_user}")
    order, rank, count = _user_order(table)
    from_end = count[np.asarray(table.user)[order]] - rank
    keep = np.zeros(len(table), dtype=bool)
    keep[order[from_end <= max_rows_per_user]] = True
    record = {"max_rows_per_user": int(max_rows_per_user), "rows_before": len(table), "rows_after": int(keep.sum())}
    return with_arrays(
        table,
        {"keep_latest": record},
        user=np.asarray(table.user)[keep],
        item=np.asarray(table.item)[keep],
        label=np.asarray(table.label)[keep],
        timestamp=np.asarray(table.timestamp)[keep],
        split=np.asarray(table.split)[keep],
    )
