"""Per-user statistics for selection, computed once per source bank and cached beside it.

``<source stage dir>/user_stats.safetensors`` holds whatever statistics were computed so far
(one tensor per :data:`STATISTICS` entry: ``loss`` float64 [N]; ``ffn_features`` as uint8
bit-packed 0/1 features, restored to the L2-normalised float32 features on load). A new
statistic is one :func:`register_statistic` call plus its ``SelectionContext`` field. Its metadata records the bank's sha256 and a hash of
the data the statistics depend on (users, training rows, template, prompt length); a cache made
for another bank or data is recomputed. Writes are atomic (:mod:`puma_lightning.io.atomic`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from puma_lightning.io.atomic import atomic_write_with
from puma_lightning.io.bank import PromptBank
from puma_lightning.selection.ffn import normalise_bits
from puma_lightning.selection.published import pandas_group_variance
from puma_lightning.selection.registry import OPTIONAL_STATS, SelectionContext, strategy_class
from puma_lightning.data.templates import template_label

log = logging.getLogger(__name__)

STATS_FILE = "user_stats.safetensors"
FORMAT = "2"


def bank_sha256(bank: PromptBank) -> str:
    """sha256 of a bank's content: prompts (float32 bytes, shape), head state, model fingerprint.

    Equal banks give equal hashes whether loaded from disk or still in memory.
    """
    h = hashlib.sha256()
    prompts = bank.prompts.detach().float().cpu().contiguous()
    h.update(json.dumps([list(prompts.shape), bank.model_fingerprint, list(bank.user_ids)]).encode())
    h.update(prompts.numpy().tobytes())
    for key in sorted(bank.head_state or {}):
        h.update(key.encode())
        h.update(bank.head_state[key].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def data_sha256(experiment: Any) -> str:
    """Hash of what the statistics depend on besides the bank: users, training rows, rendering."""
    table, cfg = experiment.table, experiment.cfg
    rows = table.rows("train")
    h = hashlib.sha256()
    h.update(json.dumps([list(table.user_ids), table.task, template_label(cfg.data.template, str(cfg.data.task)), int(cfg.prompt.length),
                         cfg.data.get("max_item_tokens")]).encode())
    for arr in (table.user[rows], table.item[rows], table.label[rows]):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def stats_path(experiment: Any) -> Path:
    """Where the cache of ``experiment``'s source stage lives."""
    return Path(experiment.stage_dir("source")) / STATS_FILE


def read_cache(path: Path, key: dict[str, str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Cached arrays and their per-statistic metadata when ``path`` exists and was made for ``key``; else empty."""
    if not path.is_file():
        return {}, {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            if any(meta.get(k) != v for k, v in {**key, "format": FORMAT}.items()):
                log.info("user stats in %s were made for another bank, data or format: recomputing", path)
                return {}, {}
            arrays = {name: fh.get_tensor(name) for name in fh.keys()}
            return arrays, {k[len("meta."):]: v for k, v in meta.items() if k.startswith("meta.")}
    except Exception as exc:  # a corrupt or foreign file is recomputed, never trusted
        log.warning("cannot read %s (%s): recomputing user stats", path, exc)
        return {}, {}


def _save(path: Path, arrays: dict[str, np.ndarray], key: dict[str, str], stat_meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    meta = {**key, "format": FORMAT, **{f"meta.{k}": v for k, v in stat_meta.items() if v}}
    atomic_write_with(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=meta))


@dataclass(frozen=True)
class UserStatistic:
    """One optional per-user statistic: how it is computed with the source model, stored and read back."""

    name: str
    """The :class:`SelectionContext` field it fills (a name in ``OPTIONAL_STATS``)."""
    compute: Callable[[Any, Any, PromptBank, Any], np.ndarray]
    """``(experiment, source lm, bank, prompts in table order)`` -> the per-user array."""
    encode: Callable[[np.ndarray], tuple[np.ndarray, str]] = lambda a: (np.asarray(a), "")
    """Array -> (what the cache file stores, a metadata string needed to decode it)."""
    decode: Callable[[np.ndarray, str], np.ndarray] = lambda a, meta: np.asarray(a)
    """(stored array, metadata string) -> the array strategies read."""


STATISTICS: dict[str, UserStatistic] = {}


def register_statistic(stat: UserStatistic) -> UserStatistic:
    """Add a statistic; names are unique and must be optional fields of :class:`SelectionContext`."""
    if stat.name in STATISTICS:
        raise ValueError(f"user statistic {stat.name!r} is already registered")
    if stat.name not in OPTIONAL_STATS:
        raise ValueError(f"user statistic {stat.name!r} is not an optional SelectionContext field ({', '.join(OPTIONAL_STATS)})")
    STATISTICS[stat.name] = stat
    return stat


def _task_loss(experiment: Any, lm: Any, bank: PromptBank, prompts: Any) -> np.ndarray:
    from puma_lightning.pipeline.stat_models import user_task_loss

    return user_task_loss(lm, bank.head_state, prompts, experiment.table, experiment.cfg).astype(np.float64)


def _ffn(experiment: Any, lm: Any, bank: PromptBank, prompts: Any) -> np.ndarray:
    from puma_lightning.pipeline.stat_models import ffn_features

    return ffn_features(lm, prompts)


register_statistic(UserStatistic("loss", _task_loss, decode=lambda a, meta: np.asarray(a, dtype=np.float64)))
register_statistic(UserStatistic(
    "ffn_features", _ffn,
    encode=lambda feats: (np.packbits(feats > 0, axis=1), str(int(feats.shape[1]))),  # 0/1 features: 1 bit each
    decode=lambda bits, width: normalise_bits(np.unpackbits(bits, axis=1, count=int(width)).astype(bool))))


def ensure_user_stats(experiment: Any, bank: PromptBank, needs: Iterable[str]) -> dict[str, np.ndarray]:
    """The statistics named in ``needs`` (registered in :data:`STATISTICS`) for ``bank``'s users.

    Arrays are in ``experiment.table`` user order. Missing ones are computed with the source model
    and added to the cache file; cached ones are read back.
    """
    needs = tuple(dict.fromkeys(needs))
    unknown = [n for n in needs if n not in STATISTICS]
    if unknown:
        raise ValueError(f"unknown user statistics {unknown}; valid: {', '.join(STATISTICS)}")
    if not needs:
        return {}
    path = stats_path(experiment)
    key = {"bank_sha256": bank_sha256(bank), "data_sha256": data_sha256(experiment)}
    cached, meta = read_cache(path, key)
    missing = [n for n in needs if n not in cached]
    if missing:
        table = experiment.table
        lm = experiment.backbone("source")
        bank.check_model(lm.hidden_size, lm.fingerprint, where="source bank (user stats)")
        prompts = bank.rows_for(table.user_ids)
        for name in missing:
            log.info("computing per-user %s on %s for %d users", name, lm.name, table.n_users)
            cached[name], meta[name] = STATISTICS[name].encode(STATISTICS[name].compute(experiment, lm, bank, prompts))
        _save(path, cached, key, meta)
    return {name: STATISTICS[name].decode(cached[name], meta.get(name, "")) for name in needs}


def build_selection_context(experiment: Any, bank: PromptBank) -> SelectionContext:
    """The :class:`SelectionContext` for ``experiment``'s selection node, with exactly the optional
    statistics its strategy ``needs`` (others stay None)."""
    table = experiment.table
    needs = strategy_class(experiment.cfg.selection).needs
    stats = ensure_user_stats(experiment, bank, needs)
    return SelectionContext(
        prompts=bank.rows_for(table.user_ids).reshape(table.n_users, -1).numpy().astype(np.float32),
        label_variance=table.label_variance(),
        train_counts=table.train_counts(),
        label_variance_pandas=pandas_group_variance(table.user[table.rows("train")], table.label[table.rows("train")],
                                                    table.n_users),
        seed=experiment.cfg.seed,
        loss=stats.get("loss"),
        ffn_features=stats.get("ffn_features"),
    )


__all__ = ["STATISTICS", "STATS_FILE", "UserStatistic", "bank_sha256", "register_statistic", "build_selection_context", "data_sha256", "ensure_user_stats", "stats_path"]
