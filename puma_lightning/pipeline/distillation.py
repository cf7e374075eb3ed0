"""``adapter.distill_items``: the source model teaches the adapter on items the selected users never rated.

A selected user has only a few rated items (8 on ml100k), so the adapter sees little of what each source prompt
means. The source model can say more: for ``distill_items`` items a selected user has not rated (drawn seeded from
the items of the table), the source prompts, head and model predict a rating and an answer distribution (a click
probability for click tasks). Those pairs join the adapter's training rows as teacher rows; their loss is the
head's own mix against the soft targets (:meth:`RatingHead.soft_loss`), weighted by ``adapter.distill_weight``
against the task loss on the real rows of the same batch. The teacher's forward passes are part of PUMA's cost
(``teacher_rows``, ``teacher_s``, in its wall time).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from puma_lightning.data.table import SPLIT_NAMES, InteractionTable

log = logging.getLogger(__name__)

__all__ = ["teach", "unrated_pairs", "with_teacher_rows"]


def unrated_pairs(table: InteractionTable, users: np.ndarray, per_user: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)``: for each user, up to ``per_user`` distinct items of the table it has no row for (any split),
    drawn without replacement from a stream seeded by ``seed`` alone (users in ascending order)."""
    from puma_lightning.pipeline.seeding import stage_seed

    rng = np.random.default_rng(stage_seed(seed, "distill_pairs"))
    candidates = np.unique(table.item)
    out_users: list[np.ndarray] = []
    out_items: list[np.ndarray] = []
    for user in np.unique(np.asarray(users, dtype=np.int64)):
        free = np.setdiff1d(candidates, table.item[table.user == user], assume_unique=False)
        take = min(int(per_user), len(free))
        if take:
            out_items.append(np.sort(rng.choice(free, size=take, replace=False)))
            out_users.append(np.full(take, user, dtype=np.int64))
    if not out_users:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_users), np.concatenate(out_items).astype(np.int64)


def _latest_history(table: InteractionTable, users: np.ndarray) -> list[str] | None:
    """Per-row context for new pairs: each user's latest training row's text (None when the table has none)."""
    if table.row_text is None:
        return None
    train = table.rows("train")
    latest: dict[int, int] = {}
    for row in train[np.argsort(table.timestamp[train], kind="stable")]:
        latest[int(table.user[row])] = int(row)
    from puma_lightning.data.templates import NO_HISTORY

    return [table.row_text[latest[int(u)]] if int(u) in latest else NO_HISTORY for u in users]


def teach(exp: Any, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The source model's prediction ``[R]`` and answer distribution ``[R, A]`` for each pair (source bank, head and
    residual base, as the source stage served them), and the seconds taken. Every rank returns every pair's."""
    from puma_lightning.io.bank import PromptBank
    from puma_lightning.models.heads import build_head, load_head
    from puma_lightning.pipeline.distributed import gather_lists
    from puma_lightning.pipeline.scoring import score_rows

    start = time.perf_counter()
    table = exp.table
    bank = PromptBank.load(exp.stage_dir("source") / "bank")
    pairs = table.pairs_to_score(users, items, row_text=_latest_history(table, users))
    lm = exp.backbone("source")
    head = load_head(table.task, bank.head_state) if bank.head_state is not None else build_head(table.task)
    local = score_rows(exp.cfg, exp.run_dir, lm, head, bank.rows_for(table.user_ids).float(), pairs, table,
                       2 * int(exp.cfg.adapter.batch_size), "puma_teacher")
    by_row = dict(gather_lists(list(local.items())))
    if len(by_row) != len(users):
        raise RuntimeError(f"the teacher scored {len(by_row)} of {len(users)} pairs")
    prediction = np.array([by_row[r][0] for r in range(len(users))], dtype=np.float32)
    width = len(by_row[0][1]) if len(users) else (5 if table.task == "rating" else 1)
    distribution = np.array([by_row[r][1] for r in range(len(users))], dtype=np.float32).reshape(len(users), width)
    return prediction, distribution, time.perf_counter() - start


def with_teacher_rows(cfg: Any, table: InteractionTable, users: np.ndarray, items: np.ndarray,
                      labels: np.ndarray) -> tuple[InteractionTable, np.ndarray | None]:
    """``table`` with the pairs appended as training rows labelled by the teacher (indices from ``len(table)`` on), and
    every row's offset from the levers fitted on ``table`` alone (teacher labels never enter a residual base's fit)."""
    from puma_lightning.pipeline.levers.hooks import pair_offsets

    history = None if table.row_text is None else [*table.row_text, *_latest_history(table, users)]
    last = int(table.timestamp.max()) + 1 if len(table) else 0
    grown = InteractionTable(
        user=np.concatenate([table.user, users]), item=np.concatenate([table.item, items]),
        label=np.concatenate([table.label, labels.astype(table.label.dtype)]),
        timestamp=np.concatenate([table.timestamp, np.full(len(users), last, np.int64)]),
        split=np.concatenate([table.split, np.full(len(users), SPLIT_NAMES["train"], np.int8)]),
        user_ids=table.user_ids, item_texts=table.item_texts, task=table.task,
        meta={**table.meta, "teacher_rows": int(len(users))}, row_text=history, item_ids=table.item_ids)
    return grown, pair_offsets(cfg, table, grown)
