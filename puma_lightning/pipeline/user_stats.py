"""Per-user statistics for selection, computed once per source bank and cached beside it.

``<source stage dir>/user_stats.safetensors`` holds whatever statistics were computed so far
(``loss`` float64 [N]; ``ffn_bits`` uint8, the bit-packed 0/1 FFN features, restored to the
L2-normalised float32 features on load). Its metadata records the bank's sha256 and a hash of
the data the statistics depend on (users, training rows, template, prompt length); a cache made
for another bank or data is recomputed. Writes are atomic (:mod:`puma_lightning.io.atomic`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


from puma_lightning.io.atomic import atomic_write_with
from puma_lightning.io.bank import PromptBank
from puma_lightning.selection.registry import OPTIONAL_STATS, SelectionContext, strategy_class

log = logging.getLogger(__name__)

STATS_FILE = "user_stats.safetensors"
FORMAT = "1"


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
    h.update(json.dumps([list(table.user_ids), table.task, str(cfg.data.template), int(cfg.prompt.length),
                         cfg.data.get("max_item_tokens")]).encode())
    for arr in (table.user[rows], table.item[rows], table.label[rows]):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def stats_path(experiment: Any) -> Path:
    """Where the cache of ``experiment``'s source stage lives."""
    return Path(experiment.stage_dir("source")) / STATS_FILE


def _load(path: Path, key: dict[str, str]) -> dict[str, np.ndarray]:
    """Cached arrays when ``path`` exists and was made for ``key``; else an empty dict."""
    if not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            if any(meta.get(k) != v for k, v in key.items()):
                log.info("user stats in %s were made for another bank or data: recomputing", path)
                return {}
            return {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as exc:  # a corrupt or foreign file is recomputed, never trusted
        log.warning("cannot read %s (%s): recomputing user stats", path, exc)
        return {}


def _save(path: Path, arrays: dict[str, np.ndarray], key: dict[str, str], ffn_dim: int | None) -> None:
    from safetensors.numpy import save_file

    meta = {**key, "format": FORMAT}
    if ffn_dim is not None:
        meta["ffn_dim"] = str(ffn_dim)
    atomic_write_with(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=meta))


def ensure_user_stats(experiment: Any, bank: PromptBank, needs: Iterable[str]) -> dict[str, np.ndarray]:
    """The statistics named in ``needs`` (subset of ``loss``, ``ffn_features``) for ``bank``'s users.

    Arrays are in ``experiment.table`` user order. Missing ones are computed with the source model
    (:func:`~puma_lightning.selection.stats.user_task_loss`, :func:`~puma_lightning.selection.stats.ffn_features`)
    and added to the cache; cached ones are read back.
    """
    needs = tuple(dict.fromkeys(needs))
    unknown = [n for n in needs if n not in OPTIONAL_STATS]
    if unknown:
        raise ValueError(f"unknown user statistics {unknown}; valid: {', '.join(OPTIONAL_STATS)}")
    if not needs:
        return {}
    from safetensors import safe_open

    path = stats_path(experiment)
    key = {"bank_sha256": bank_sha256(bank), "data_sha256": data_sha256(experiment)}
    cached = _load(path, key)
    ffn_dim: int | None = None
    if "ffn_bits" in cached:
        with safe_open(str(path), framework="np") as fh:
            ffn_dim = int((fh.metadata() or {}).get("ffn_dim", 0)) or None
    table = experiment.table
    missing = [n for n in needs if (n == "loss" and "loss" not in cached) or (n == "ffn_features" and "ffn_bits" not in cached)]
    if missing:
        from puma_lightning.selection.stats import ffn_features, user_task_loss

        lm = experiment.backbone("source")
        bank.check_model(lm.hidden_size, lm.fingerprint, where="source bank (user stats)")
        prompts = bank.rows_for(table.user_ids)
        for name in missing:
            log.info("computing per-user %s on %s for %d users", name, lm.name, table.n_users)
            if name == "loss":
                cached["loss"] = user_task_loss(lm, bank.head_state, prompts, table, experiment.cfg).astype(np.float64)
            else:
                feats = ffn_features(lm, prompts)
                ffn_dim = int(feats.shape[1])
                cached["ffn_bits"] = np.packbits(feats > 0, axis=1)
        _save(path, cached, key, ffn_dim)
    out: dict[str, np.ndarray] = {}
    for name in needs:
        if name == "loss":
            out["loss"] = np.asarray(cached["loss"], dtype=np.float64)
        else:
            from puma_lightning.selection.stats import normalise_bits

            bits = np.unpackbits(cached["ffn_bits"], axis=1, count=ffn_dim).astype(bool)
            out["ffn_features"] = normalise_bits(bits)
    return out


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
        seed=experiment.cfg.seed,
        loss=stats.get("loss"),
        ffn_features=stats.get("ffn_features"),
    )


__all__ = ["STATS_FILE", "bank_sha256", "build_selection_context", "data_sha256", "ensure_user_stats", "stats_path"]
