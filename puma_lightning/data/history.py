"""Per-row rating history for templates with ``{history}``: the user's latest earlier rated items.

For a row of user ``u`` at time ``t`` the history is the ``k`` latest of ``u``'s *training* rows that
come before it (by timestamp, ties by row order), newest last, each as ``"<item text>: <rating>"``.
Only training rows are shown, so validation and test labels never reach any prompt, and a row never
sees itself or a later row. Rows with no earlier training row get ``NO_HISTORY``.
"""

from __future__ import annotations

import numpy as np

from puma_lightning.data.table import SPLIT_NAMES, InteractionTable
from puma_lightning.data.templates import NO_HISTORY


def _short(text: str, max_chars: int) -> str:
    """The item text up to its first comma (MovieLens: title and year, no genres), at most ``max_chars``."""
    head = text.split(", ", 1)[0]
    return head if len(head) <= max_chars else head[: max_chars - 1].rstrip() + "…"


def rated_history(table: InteractionTable, k: int, max_chars: int = 48) -> list[str]:
    """``row_text`` for every row: the user's ``k`` latest earlier training rows as ``"title: rating; ..."``."""
    if k < 1:
        raise ValueError(f"history length must be >= 1, got {k}")
    n = len(table)
    texts = [NO_HISTORY] * n
    order = np.lexsort((np.arange(n), np.asarray(table.timestamp), np.asarray(table.user)))
    train = np.asarray(table.split) == SPLIT_NAMES["train"]
    labels = np.asarray(table.label)
    shown: dict[int, str] = {}
    users = np.asarray(table.user)
    recent: list[int] = []
    current = -1
    for row in order:
        if users[row] != current:
            current, recent = int(users[row]), []
        if recent:
            texts[row] = "; ".join(shown.setdefault(r, f"{_short(table.item_texts[table.item[r]], max_chars)}: "
                                                       f"{labels[r]:g}") for r in recent[-k:])
        if train[row]:
            recent.append(int(row))
    return texts
