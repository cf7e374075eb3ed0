"""Rank helpers for runs under Lightning's DDP strategy.

Lightning's subprocess launcher re-runs the whole command in child processes (``LOCAL_RANK`` set
in their environment), so pipeline code outside ``trainer.fit/test`` runs on every rank. The
process group only exists from the first ``trainer.fit/test`` on (and stays for later Trainers);
before that the rank is read from the environment. Files are written by global rank 0 only; the
other ranks wait at a barrier and then read them, or compute the same values themselves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

RANK_DUMP_ENV = "PUMA_RANK_DUMP_DIR"
"""Debug/test hook: when set, each rank writes ``<dir>/<name>.rank<r>.json`` of values it computed."""


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def global_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    if _initialised():
        return int(torch.distributed.get_rank())
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def world_size() -> int:
    """Number of ranks once the process group exists (1 before, or when not distributed)."""
    return int(torch.distributed.get_world_size()) if _initialised() else 1


def is_global_zero() -> bool:
    """Whether this process is the one that writes files."""
    return global_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if _initialised() and world_size() > 1:
        torch.distributed.barrier()


def on_rank_zero(write: Callable[[], T]) -> T | None:
    """Run ``write`` on global rank 0 only, then make every rank wait until it is done (so the
    others may read what it wrote)."""
    result = write() if is_global_zero() else None
    barrier()
    return result


def check_same_on_all_ranks(value: Any, what: str) -> None:
    """Raise when ranks computed different ``value``s (e.g. the selected users); a no-op alone.

    Also writes the value per rank under ``$PUMA_RANK_DUMP_DIR`` when set (used by the tests)."""
    dump = os.environ.get(RANK_DUMP_ENV)
    if dump:
        path = Path(dump) / f"{what}.rank{global_rank()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, sort_keys=True), encoding="utf-8")
    if not _initialised() or world_size() == 1:
        return
    gathered: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(gathered, value)
    if any(g != gathered[0] for g in gathered[1:]):
        raise RuntimeError(f"{what} differs between ranks: the ranks would train on different data")


def gather_lists(local: list[Any]) -> list[Any]:
    """Every rank's ``local`` list, concatenated in rank order (``local`` itself when alone)."""
    if not _initialised() or world_size() == 1:
        return list(local)
    gathered: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(gathered, list(local))
    return [x for part in gathered for x in part]
