"""Helpers for topologies made of several experiments: per-step configs, user subsets, metric names.

A topology (chain, aggregate, cold start, architecture grid) runs ordinary
:class:`~puma_lightning.pipeline.experiment.Experiment` stages in sub-folders of its run
directory, each with its own copy of the config (models, ``source_dir``), so every stage keeps its
``stage.json`` reuse and its checkpoints.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from puma_lightning.data.table import InteractionTable
from puma_lightning.errors import PumaError


def sub_config(cfg: DictConfig, run_dir: str | Path, **updates: Any) -> DictConfig:
    """A copy of ``cfg`` writing into ``run_dir``, with dotted-key updates (``{"source.name": "x"}``)."""
    new = copy.deepcopy(cfg)  # keeps the structured schema (types are still checked)
    OmegaConf.update(new, "run_dir", str(run_dir), merge=False)
    for key, value in updates.items():
        OmegaConf.update(new, key.replace("__", "."), value, merge=False)
    return new


def safe_name(name: str) -> str:
    """A model name or path as a folder name (``/`` and odd characters replaced)."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name).rstrip("/"))
    return keep[-60:] or "model"


def primary_metric(task: str) -> tuple[str, bool]:
    """The headline metric of a task and whether lower is better (RMSE for ratings, AUC for clicks)."""
    return ("rmse", True) if task == "rating" else ("auc", False)


def metric_names(task: str) -> tuple[str, ...]:
    """The metrics reported for a task."""
    return ("rmse", "mae") if task == "rating" else ("auc", "uauc")


def users_hash(user_ids: Sequence[str]) -> str:
    """Short hash of a user list (names sub-folders whose stages depend on the user set)."""
    return hashlib.sha256(json.dumps(list(user_ids)).encode()).hexdigest()[:10]


def subset_users(table: InteractionTable, user_ids: Sequence[str], note: str = "subset") -> InteractionTable:
    """The table restricted to ``user_ids`` (in that order), users re-indexed densely; items unchanged."""
    from puma_lightning.data.splits import with_arrays

    position = {u: i for i, u in enumerate(table.user_ids)}
    missing = [u for u in user_ids if u not in position]
    if missing:
        raise PumaError(f"{len(missing)} users are not in the dataset (first: {missing[:3]})")
    new_index = np.full(table.n_users, -1, dtype=np.int64)
    new_index[[position[u] for u in user_ids]] = np.arange(len(user_ids), dtype=np.int64)
    keep = new_index[np.asarray(table.user)] >= 0
    row_text = None if table.row_text is None else [t for t, k in zip(table.row_text, keep) if k]
    return with_arrays(table, {note: {"users": len(user_ids), "users_sha": users_hash(user_ids)}},
                 user=new_index[np.asarray(table.user)[keep]], item=np.asarray(table.item)[keep],
                 label=np.asarray(table.label)[keep], timestamp=np.asarray(table.timestamp)[keep],
                 split=np.asarray(table.split)[keep], user_ids=list(user_ids), row_text=row_text)


def experiment_on(cfg: DictConfig, table: InteractionTable | None = None) -> Any:
    """An :class:`Experiment` for ``cfg``, optionally on a given (e.g. user-restricted) table."""
    from puma_lightning.pipeline.experiment import Experiment

    return Experiment(cfg, table)  # the stages read ``exp.table``; sub-folders are named by the user set's hash
