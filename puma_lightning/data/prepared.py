"""A processed raw-file dataset loaded back as a split :class:`InteractionTable` (preparing it first when needed).

The user subset (``max_users``), the split (chronological, the raw files' own with
``split_by=official``, or the published one with ``split_by=paper``) and MIND's sampled history
titles depend on the run's settings, so they are applied here, at load time, never stored (with
``data.preprocessing=paper`` MIND's history titles were sampled by the published chain itself and
are stored per row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from puma_lightning.config import SPLIT_METHODS
from puma_lightning.errors import PumaError

from .prepare import prepare_dataset
from .processed import read_processed
from .raw.common import RawData
from .datasets import get_dataset
from .splits import limit_users, split_table
from .table import SPLIT_NAMES, InteractionTable
from .templates import NO_HISTORY

EMPTY_HISTORY = NO_HISTORY
"""``{history}`` text of a MIND sample whose user has no history."""


def history_texts(data: RawData, n_titles: int, seed: int) -> list[str]:
    """``{history}`` text per history id: up to ``n_titles`` titles sampled (seeded), in history order."""
    offsets, items = data.extra["history_offsets"], data.extra["history_items"]
    rng = np.random.default_rng([seed, 3])
    out: list[str] = []
    for h in range(len(offsets) - 1):
        hist = items[offsets[h] : offsets[h + 1]]
        if len(hist) > n_titles:
            hist = hist[np.sort(rng.choice(len(hist), size=n_titles, replace=False))]
        out.append("; ".join(data.item_texts[i] for i in hist) if len(hist) and n_titles > 0 else EMPTY_HISTORY)
    return out


def apply_split(table: InteractionTable, dcfg: DictConfig, origin: np.ndarray | None, rules: dict[str, str]) -> InteractionTable:
    """``data.split_by`` on a loaded table (``rules``: the processed manifest's published rules), ``row_text`` kept."""
    row_text = table.row_text
    try:
        out = split_table(table, str(dcfg.split_by), float(dcfg.valid_ratio), float(dcfg.test_ratio), origin,
                          rules.get("paper_split", "floor_train"))
    except ValueError as exc:
        raise PumaError(f"data.split_by={dcfg.split_by}: {table.meta.get('name')}: {exc}") from None
    out.row_text = row_text
    return out


def _subset_users(table: InteractionTable, max_users: int | None, seed: int) -> InteractionTable:
    """:func:`limit_users`, keeping ``row_text`` aligned with the kept rows."""
    if max_users is None or max_users >= table.n_users:
        return table
    row_text = table.row_text
    table.row_text = None
    small = limit_users(table, max_users, seed=seed)
    if row_text is not None:
        old = {u: i for i, u in enumerate(table.user_ids)}
        keep = np.flatnonzero(np.isin(table.user, [old[u] for u in small.user_ids]))
        small.row_text = [row_text[i] for i in keep]
        table.row_text = row_text
    return small


def _table(data: RawData, manifest: dict[str, Any], path: Path, rows: str = "") -> InteractionTable:
    a = data.arrays if not rows else {k[len(rows):]: v for k, v in data.extra.items() if k.startswith(rows)}
    n = len(a["user"])
    return InteractionTable(
        user=a["user"].astype(np.int64), item=a["item"].astype(np.int64),
        label=a["label"].astype(np.float32) if "label" in a else np.full(n, np.nan, np.float32),
        timestamp=a["timestamp"].astype(np.int64), split=np.zeros(n, np.int8),
        user_ids=data.user_ids, item_texts=data.item_texts, task=data.task, item_ids=[str(i) for i in data.item_ids],
        meta={"name": data.dataset, "processed_dir": str(path), "prepare": {"params": manifest["params"],
              "steps": manifest["steps"], "files": manifest["files"]}, "floor_rmse": None},
    )


def _check(dcfg: DictConfig) -> None:
    task = get_dataset(str(dcfg.name)).task  # None: either task, as data.task says (the manifest records it)
    if task is not None and dcfg.task != task:
        raise PumaError(f"'data.task' must be {task!r} for {dcfg.name}, got {dcfg.task!r}")
    if dcfg.split_by not in SPLIT_METHODS:
        raise PumaError(f"'data.split_by' is {dcfg.split_by!r}; expected one of: {', '.join(SPLIT_METHODS)}")
    if dcfg.history_titles < 0:
        raise PumaError(f"'data.history_titles' must be >= 0, got {dcfg.history_titles}")


def load_prepared(dcfg: DictConfig, seed: int = 0) -> InteractionTable:
    """The split interaction table of a raw-file dataset (preparing it first when needed).

    MIND rows carry ``row_text`` (sampled history titles). ``max_users`` takes a seeded user subset,
    then rows are split per ``split_by``.
    """
    _check(dcfg)
    path = prepare_dataset(dcfg, seed)
    data, manifest = read_processed(path)
    table = _table(data, manifest, path)
    if "history" in data.arrays:
        texts = history_texts(data, dcfg.history_titles, seed)
        table.row_text = [texts[h] for h in data.arrays["history"]]
        table.meta["history_titles"] = int(dcfg.history_titles)
    if dcfg.split_by in ("official", "paper"):  # the split comes with the rows: take it before the user subset
        table = apply_split(table, dcfg, data.arrays.get("origin"), manifest.get("rules", {}))
        table = _subset_users(table, dcfg.max_users, seed)
    else:
        table = _subset_users(table, dcfg.max_users, seed)
        table = apply_split(table, dcfg, None, manifest.get("rules", {}))
    table.meta["counts"] = {"users": table.n_users, "items": table.n_items, "rows": len(table)}
    return table


def load_unlabeled(dcfg: DictConfig, seed: int = 0) -> InteractionTable | None:
    """MIND's unlabeled test impressions of the kept users (label NaN, split ``test``), for prediction
    only; None when the dataset has none. User/item indices match :func:`load_prepared` without
    ``max_users``."""
    _check(dcfg)
    path = prepare_dataset(dcfg, seed)
    data, manifest = read_processed(path)
    if len(data.extra.get("unlabeled_user", ())) == 0:
        return None
    table = _table(data, manifest, path, rows="unlabeled_")
    table.split[:] = SPLIT_NAMES["test"]
    texts = history_texts(data, dcfg.history_titles, seed)
    table.row_text = [texts[h] for h in data.extra["unlabeled_history"]]
    table.meta["impression"] = data.extra["unlabeled_impression"]
    return table


def build_dataset_table(dcfg: "DictConfig", seed: int) -> "InteractionTable":
    """The split table of ``dcfg.name``: built directly, or prepared from raw files and loaded."""
    dataset = get_dataset(str(dcfg.name))
    if dataset.task is not None and dcfg.task != dataset.task:
        raise ValueError(f"'data.task' must be {dataset.task!r} for {dataset.name}, got {dcfg.task!r}")
    if dataset.build is not None:
        return dataset.build(dcfg, seed)
    return load_prepared(dcfg, seed)
