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
import torch

from puma_lightning.data.table import SPLIT_NAMES, InteractionTable
from puma_lightning.tasks import TeacherRows

log = logging.getLogger(__name__)

__all__ = ["adapter_training_rows", "teach", "unrated_pairs", "with_teacher_rows"]


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
    every row's residual offset from the bias model fitted on ``table`` alone (teacher labels never enter that fit)."""
    from puma_lightning.pipeline.residual import bias_terms, row_offsets

    history = None if table.row_text is None else [*table.row_text, *_latest_history(table, users)]
    last = int(table.timestamp.max()) + 1 if len(table) else 0
    grown = InteractionTable(
        user=np.concatenate([table.user, users]), item=np.concatenate([table.item, items]),
        label=np.concatenate([table.label, labels.astype(table.label.dtype)]),
        timestamp=np.concatenate([table.timestamp, np.full(len(users), last, np.int64)]),
        split=np.concatenate([table.split, np.full(len(users), SPLIT_NAMES["train"], np.int8)]),
        user_ids=table.user_ids, item_texts=table.item_texts, task=table.task,
        meta={**table.meta, "teacher_rows": int(len(users))}, row_text=history, item_ids=table.item_ids)
    base = row_offsets(cfg, table)
    if base is None:
        return grown, None
    mu, bu, bi = bias_terms(cfg, table)
    return grown, np.concatenate([base, (mu + bu[users] + bi[items]).astype(np.float32)])


def adapter_training_rows(exp: Any, users: np.ndarray) -> tuple[TeacherRows | None, InteractionTable, np.ndarray | None]:
    """The adapter's training table and its rows' residual offsets: the experiment's own, or with
    ``adapter.distill_items`` the same plus the source model's teacher rows for the selected ``users`` (and what the
    task needs to weight them)."""
    from puma_lightning.pipeline.residual import row_offsets

    cfg, table = exp.cfg, exp.table
    if not cfg.adapter.distill_items:
        return None, table, row_offsets(cfg, table)
    pair_users, pair_items = unrated_pairs(table, users, int(cfg.adapter.distill_items), int(cfg.seed))
    prediction, distribution, seconds = teach(exp, pair_users, pair_items)
    grown, offsets = with_teacher_rows(cfg, table, pair_users, pair_items, prediction)
    log.info("distillation: %d teacher rows from %s for %d selected users (%.1f s)", len(pair_users), cfg.source.name,
             len(users), seconds)
    return TeacherRows(len(table), torch.from_numpy(distribution), float(cfg.adapter.distill_weight), seconds), grown, offsets
