"""``predict``: what would each user rate each item on a model, and which candidates to show.

Reads ``pairs`` (CSV with a ``user,item`` header or Parquet with those columns, the dataset's own ids), scores every pair with the
bank's prompts and head through Lightning's predict loop (batches of many users, the prefix cache
on, the dtype chosen as everywhere else), and writes ``out`` atomically (CSV, or Parquet by extension): ``user,item,
prediction`` plus the answer distribution (``p_1..p_5`` for ratings, ``p_click`` for clicks); with
``top_k`` only each user's best ``top_k`` candidates, with their ``rank``. Rows naming a user the
bank lacks or an item the dataset lacks are skipped and counted (the summary line says how many,
with the first few ids); a malformed file or row is an error naming the file and line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
from omegaconf import DictConfig

from puma_lightning.commands.arguments import INPUT, PATH, POSITIVE, BankArgument, ModelArgument, WritesOutput
from puma_lightning.errors import PumaError

if TYPE_CHECKING:
    from puma_lightning.data.table import InteractionTable

log = logging.getLogger(__name__)


@dataclass
class PredictArguments(WritesOutput, ModelArgument, BankArgument):
    pairs: Optional[str] = field(default=None, metadata=INPUT)
    """Table with columns ``user,item`` (the dataset's own ids; ``.csv``, or ``.parquet`` with pyarrow) to score; with
    ``top_k`` they are each user's candidates."""
    top_k: Optional[int] = field(default=None, metadata=POSITIVE)
    """Keep each user's ``top_k`` best-scored candidates, ranked (None: every pair, in file order)."""
    out: Optional[str] = field(default=None, metadata=PATH)
    """The predictions to write (``.csv``, or ``.parquet`` with pyarrow; never one of the inputs)."""
    overwrite: bool = False
    """Replace an existing ``out`` file that puma_lightning did not write (or that changed since it did); without it
    such a file stops the command."""


def pairs_table(pairs: list[tuple[str, str]], bank_users: Sequence[str], table: InteractionTable) -> tuple[InteractionTable, list[int], dict]:
    """A table whose (test) rows are the known pairs and whose users are only the bank users they name (so only
    their prompts are read); the kept pairs' indices; the skips."""
    in_bank = set(bank_users)
    items = {item: i for i, item in enumerate(table.item_id_list())}
    kept, skipped = [], {"unknown_user": [], "unknown_item": []}
    for k, (user, item) in enumerate(pairs):
        if user not in in_bank:
            skipped["unknown_user"].append(user)
        elif item not in items:
            skipped["unknown_item"].append(item)
        else:
            kept.append(k)
    users = {u: i for i, u in enumerate(dict.fromkeys(pairs[k][0] for k in kept))}
    out = table.pairs_to_score(np.array([users[pairs[k][0]] for k in kept], dtype=np.int64),
                               np.array([items[pairs[k][1]] for k in kept], dtype=np.int64), user_ids=list(users), predict=True)
    return out, kept, skipped


def run_predict(cfg: DictConfig, args: PredictArguments) -> dict[str, Any]:
    """Score ``args.pairs`` with ``args.bank`` on ``args.model`` and write ``args.out``; returns a summary (counts, and
    ``predict_s``: seconds spent in the predict loop itself, without loading the model or the data)."""
    import torch

    from puma_lightning.io.bank import PromptBank
    from puma_lightning.io.pair_files import read_pairs, write_table
    from puma_lightning.models.heads import load_head
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.scoring import score_rows

    for key in ("bank", "pairs", "out"):
        if not getattr(args, key):
            raise PumaError(f"predict needs '{key}=PATH'")
    from puma_lightning.io.ownership import check_output_file

    check_output_file(args.out, args.overwrite)  # before any work
    pairs = read_pairs(args.pairs)
    bank = PromptBank.open(args.bank)  # lazily: only the shards of the users the pairs name are read
    if bank.head_state is None:
        raise PumaError(f"{args.bank}: bank has no trained head; it cannot score pairs alone")
    exp = Experiment(cfg)
    base = exp.table
    table, kept, skipped = pairs_table(pairs, bank.user_ids, base)
    from puma_lightning.data.templates import resolve_template

    template = resolve_template(cfg.data.template, str(cfg.data.task))
    if template.uses_history:
        raise PumaError(f"predict: template {template.name!r} needs each row's history, which a pairs file does not carry")
    lm = exp.backbone(args.model)
    bank.check_model(lm.hidden_size, lm.fingerprint, where=str(args.bank))
    head = load_head(table.task, bank.head_state)
    prompts = bank.rows_for(table.user_ids).float() if table.n_users else torch.zeros(0, bank.prompt_length, bank.hidden_size)
    rows: dict[int, tuple[float, list[float]]] = {}
    predict_s = 0.0
    if len(kept):
        started = time.perf_counter()
        rows = score_rows(cfg, exp.run_dir, lm, head, prompts, table, base, 2 * int(cfg.prompt.batch_size), "predict")
        predict_s = time.perf_counter() - started
    from puma_lightning.io.atomic import record_output_file
    from puma_lightning.pipeline.distributed import gather_lists, is_global_zero

    rows = dict(gather_lists(list(rows.items())))  # under DDP each rank scored its shard: rank 0 writes them all
    header, out_rows = output_rows(pairs, kept, rows, table.task, args.top_k)

    if is_global_zero():
        write_table(args.out, header, out_rows)
        record_output_file(args.out)  # ours to replace on the next run, while nobody changes it
        notes = [f"{name.replace('_', ' ')} {len(ids)} (first: {ids[:3]})" for name, ids in skipped.items() if ids]
        print(f"predicted {len(kept)} of {len(pairs)} pairs with {bank.model_name} -> {args.out}"
              + (f"; skipped: {'; '.join(notes)}" if notes else ""))
    return {"pairs": len(pairs), "scored": len(kept), "skipped": {k: len(v) for k, v in skipped.items()},
            "predict_s": predict_s}


def output_rows(pairs: list[tuple[str, str]], kept: list[int], rows: dict[int, tuple[float, list[float]]], task: str,
                top_k: int | None) -> tuple[list[str], list[list[Any]]]:
    """The output table (header, rows): every scored pair in file order, or each user's ``top_k`` best with their rank."""
    names = [f"p_{i}" for i in range(1, 6)] if task == "rating" else ["p_click"]
    scored = [(pairs[k][0], pairs[k][1], *rows[r]) for r, k in enumerate(kept) if r in rows]
    if top_k is None:
        return (["user", "item", "prediction", *names],
                [[user, item, prediction, *dist[:len(names)]] for user, item, prediction, dist in scored])
    by_user: dict[str, list] = {}
    for entry in scored:
        by_user.setdefault(entry[0], []).append(entry)
    out = []
    for user, entries in by_user.items():  # users in the order they first appear; ties keep file order
        ranked = sorted(entries, key=lambda e: -e[2])[:top_k]
        out += [[user, rank, item, prediction, *dist[:len(names)]] for rank, (_, item, prediction, dist) in enumerate(ranked, start=1)]
    return ["user", "rank", "item", "prediction", *names], out


def run(cfg: DictConfig, run_dir: Path, args: PredictArguments) -> None:
    """The command: :func:`run_predict` on the loaded config."""
    run_predict(cfg, args)
