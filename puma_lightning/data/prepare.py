"""``prepare``: raw files -> filtered, integer-coded processed dataset on disk (loading it back as an
:class:`InteractionTable` is :mod:`puma_lightning.data.prepared`).

Preprocessing (all counts recorded in the manifest): the reader's own drops (untitled items,
reviews of unknown businesses, news without title, one sample per (user, news) for MIND), then
(``data.preprocessing=clean``) exact duplicate rows, then items with ``>= min_item_ratings``
interactions, then users with ``>= min_user_ratings`` (repeated until stable with ``kcore``), then
each user's ``max_rows_per_user`` latest interactions. Users and items are then re-indexed densely.

``data.preprocessing=paper`` keeps what the authors' published scripts keep (the readers say what
that is per dataset; duplicates survive; at the "latest N" cut the published tie rule of the
reader's ``rules``). The manifest records the mode, the counts after every step and ``final``:
users, items, rows and rows per split (with the split configured at prepare time).

A processed folder is reused when its manifest has the same preprocessing parameters and, if
``data.raw_dir`` is set (or what the dataset's ``RawFormat.location`` names, e.g. ``data.interactions``),
the same raw files with the same size and mtime (their sha256 is recorded but not recomputed for the
check). The user subset (``max_users``), the split and the MIND history sample depend on the run's
seed and are applied at load time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from puma_lightning.config import PREPROCESSING_MODES
from puma_lightning.errors import PumaError
from puma_lightning.io.atomic import check_replaceable

from .processed import FORMAT_VERSION, read_manifest, write_processed
from .raw.common import FileRecord, RawData
from .datasets import get_dataset, raw_dataset_names
from .splits import split_counts, split_table
from .table import InteractionTable

log = logging.getLogger(__name__)

# -- parameters and locations ---------------------------------------------------------------------
def prepare_params(dcfg: DictConfig) -> dict[str, Any]:
    """The parameters that decide the processed dataset's content (part of the manifest)."""
    if dcfg.name not in raw_dataset_names():
        raise PumaError(f"data.name={dcfg.name!r} is not read from raw files; choose one of {', '.join(raw_dataset_names())}")
    for key in ("min_item_ratings", "min_user_ratings"):
        if dcfg[key] < 0:
            raise PumaError(f"'data.{key}' must be >= 0, got {dcfg[key]}")
    if dcfg.max_rows_per_user is not None and dcfg.max_rows_per_user < 1:
        raise PumaError(f"'data.max_rows_per_user' must be >= 1 or null, got {dcfg.max_rows_per_user}")
    if not 0.0 <= dcfg.max_bad_fraction <= 1.0:
        raise PumaError(f"'data.max_bad_fraction' must be in [0, 1], got {dcfg.max_bad_fraction}")
    if dcfg.bad_lines_allowed < 0:
        raise PumaError(f"'data.bad_lines_allowed' must be >= 0, got {dcfg.bad_lines_allowed}")
    if dcfg.preprocessing not in PREPROCESSING_MODES:
        raise PumaError(f"'data.preprocessing' is {dcfg.preprocessing!r}; expected one of: {', '.join(PREPROCESSING_MODES)}")
    params = {
        "format": FORMAT_VERSION,
        "dataset": str(dcfg.name),
        "preprocessing": str(dcfg.preprocessing),
        "min_item_ratings": int(dcfg.min_item_ratings),
        "min_user_ratings": int(dcfg.min_user_ratings),
        "kcore": bool(dcfg.kcore),
        "max_rows_per_user": None if dcfg.max_rows_per_user is None else int(dcfg.max_rows_per_user),
    }
    raw = get_dataset(str(dcfg.name)).raw
    if raw is not None and raw.params is not None:  # the dataset's own (its input files, columns, ...)
        params.update(raw.params(dcfg))
    return params


def processed_path(dcfg: DictConfig) -> Path:
    """``data.processed_dir``, or ``<cache>/data/<name>-<hash of the parameters>``."""
    if dcfg.processed_dir:
        return Path(dcfg.processed_dir).expanduser()
    from puma_lightning.models.packaged import default_cache_dir

    key = hashlib.sha256(json.dumps(prepare_params(dcfg), sort_keys=True).encode()).hexdigest()[:12]
    return default_cache_dir() / "data" / f"{dcfg.name}-{key}"


def _raw_files(dcfg: DictConfig) -> list[Path]:
    return get_dataset(str(dcfg.name)).raw.files(dcfg)


def _read_raw(dcfg: DictConfig) -> RawData:
    return get_dataset(str(dcfg.name)).raw.read(dcfg)


def _location(dcfg: DictConfig) -> str | None:
    """Where ``dcfg``'s inputs are (``RawFormat.location``; by default ``data.raw_dir``), None when not configured."""
    raw = get_dataset(str(dcfg.name)).raw
    where = raw.location(dcfg) if raw is not None and raw.location is not None else dcfg.raw_dir
    return str(where) if where else None


def _inputs_at_hand(dcfg: DictConfig, where: str) -> bool:
    """Whether the inputs at ``where`` can be compared with the manifest (``data.raw_dir``: an existing folder)."""
    raw = get_dataset(str(dcfg.name)).raw
    path = Path(where).expanduser()
    return path.exists() if raw is not None and raw.location is not None else path.is_dir()


def _follows(dcfg: DictConfig) -> str | None:
    """The published code ``dcfg``'s reader follows (``RawFormat.follows``), or None."""
    raw = get_dataset(str(dcfg.name)).raw
    return raw.follows(dcfg) if raw is not None and raw.follows is not None else None


def manifest_mismatch(manifest: dict[str, Any] | None, dcfg: DictConfig) -> str | None:
    """Why the processed folder cannot be reused (None: it can)."""
    if manifest is None:
        return "no processed dataset yet"
    if manifest.get("params") != prepare_params(dcfg):
        return "it was made with other preprocessing parameters"
    follows = _follows(dcfg)
    if follows is not None and manifest.get("rules", {}).get("follows") != follows:
        return f"it was not made by the rules of {follows}"
    where = _location(dcfg)
    if not where:
        return None  # nothing to compare with: trust the processed copy
    if not _inputs_at_hand(dcfg, where):
        return None
    try:
        now = {str(p.resolve()): FileRecord.stat(p) for p in _raw_files(dcfg)}
    except PumaError:
        return None
    before = {f["path"]: f for f in manifest.get("files", [])}
    if set(now) != set(before):
        return "the set of raw files changed"
    for path, rec in now.items():
        if rec.size != before[path]["size"] or rec.mtime_ns != before[path]["mtime_ns"]:
            return f"{Path(path).name} changed (size or modification time)"
    return None


# -- filters --------------------------------------------------------------------------------------
def _counts(user: np.ndarray, item: np.ndarray) -> dict[str, int]:
    return {"rows": int(len(user)), "users": int(len(np.unique(user))), "items": int(len(np.unique(item)))}


def exact_duplicates(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Rows equal to an earlier row in every per-row array (user, item, label, timestamp, ...)."""
    n = len(arrays["user"])
    if n == 0:
        return np.zeros(0, dtype=bool)
    keys = [np.asarray(arrays[k]) for k in sorted(arrays)]
    order = np.lexsort([np.arange(n)] + keys[::-1])
    same = np.ones(n - 1, dtype=bool)
    for k in keys:
        ks = k[order]
        same &= ks[1:] == ks[:-1]
    dup = np.zeros(n, dtype=bool)
    dup[order[1:][same]] = True  # every member of a group but its first row (in file order)
    return dup


def filter_rows(data: RawData, params: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Boolean mask of the rows that survive the item/user/latest filters, and a record per step."""
    user, item, ts = data.arrays["user"], data.arrays["item"], data.arrays["timestamp"]
    keep = np.ones(len(user), dtype=bool)
    steps: list[dict[str, Any]] = []
    paper = params.get("preprocessing") == "paper"
    if not paper:
        dup = exact_duplicates(data.arrays)
        keep &= ~dup
        steps.append({"step": "drop_exact_duplicates", "dropped_rows": int(dup.sum()), **_counts(user[keep], item[keep])})
    min_item, min_user = params["min_item_ratings"], params["min_user_ratings"]
    for round_ in range(1, 1000):
        before = int(keep.sum())
        if min_item > 0:
            per_item = np.bincount(item[keep], minlength=len(data.item_ids))
            keep &= per_item[item] >= min_item
            steps.append({"step": f"items_with_>={min_item}", "round": round_, **_counts(user[keep], item[keep])})
        if min_user > 0:
            per_user = np.bincount(user[keep], minlength=len(data.user_ids))
            keep &= per_user[user] >= min_user
            steps.append({"step": f"users_with_>={min_user}", "round": round_, **_counts(user[keep], item[keep])})
        if not params["kcore"] or int(keep.sum()) == before or (min_item <= 0 and min_user <= 0):
            break
    latest = params["max_rows_per_user"]
    if latest is not None:
        rows = np.flatnonzero(keep)
        # ties at the cut: the later rows win, or (the published nlargest(keep="first")) the earlier ones
        first = paper and data.rules.get("latest_ties") == "first"
        order = rows[np.lexsort((-rows if first else rows, ts[rows], user[rows]))]
        u = user[order]
        start = np.flatnonzero(np.append(True, u[1:] != u[:-1]))
        size = np.diff(np.append(start, len(u)))
        rank_from_end = np.repeat(start + size, size) - np.arange(len(u))  # 1 = the user's latest
        keep = np.zeros_like(keep)
        keep[order[rank_from_end <= latest]] = True
        steps.append({"step": f"latest_{latest}_per_user", "ties": "first rows" if first else "last rows",
                      **_counts(user[keep], item[keep])})
    return keep, steps


def _reindex(index: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Old index -> new dense index for the ``used`` ones (-1 elsewhere), keeping their order."""
    new = np.full(len(used), -1, dtype=np.int64)
    new[used] = np.arange(int(used.sum()))
    return new[index] if index is not None else new


def apply_filters(data: RawData, params: dict[str, Any]) -> RawData:
    """The filtered data with users and items re-indexed densely (order of first appearance kept)."""
    keep, steps = filter_rows(data, params)
    arrays = {k: v[keep] for k, v in data.arrays.items()}
    user_used = np.zeros(len(data.user_ids), dtype=bool)
    user_used[arrays["user"]] = True
    item_used = np.zeros(len(data.item_ids), dtype=bool)
    item_used[arrays["item"]] = True
    extra = dict(data.extra)
    if "history_offsets" in extra:  # MIND: keep histories (and their news) of kept rows / kept users' test lines
        offsets, hist_items = extra["history_offsets"], extra["history_items"]
        ul_keep = user_used[extra["unlabeled_user"]] if "unlabeled_user" in extra else np.zeros(0, bool)
        for k in [k for k in extra if k.startswith("unlabeled_")]:
            extra[k] = extra[k][ul_keep]
        hist_used = np.zeros(len(offsets) - 1, dtype=bool)
        hist_used[arrays["history"]] = True
        if "unlabeled_history" in extra:
            hist_used[extra["unlabeled_history"]] = True
            item_used[extra["unlabeled_item"]] = True
        lengths = np.diff(offsets)
        owner = np.repeat(np.arange(len(lengths)), lengths)
        kept_items = hist_items[hist_used[owner]]
        item_used[kept_items] = True
        new_hist = _reindex(None, hist_used)
        arrays["history"] = new_hist[arrays["history"]]
        extra["history_offsets"] = np.concatenate([[0], np.cumsum(lengths[hist_used])]).astype(np.int64)
        new_item = _reindex(None, item_used)
        extra["history_items"] = new_item[kept_items].astype(np.int32)
        if "unlabeled_history" in extra:
            extra["unlabeled_history"] = new_hist[extra["unlabeled_history"]]
            extra["unlabeled_item"] = new_item[extra["unlabeled_item"]]
            extra["unlabeled_user"] = _reindex(None, user_used)[extra["unlabeled_user"]]
    arrays["user"] = _reindex(arrays["user"], user_used)
    arrays["item"] = _reindex(arrays["item"], item_used)
    user_ids = [u for u, used in zip(data.user_ids, user_used) if used]
    item_ids = [i for i, used in zip(data.item_ids, item_used) if used]
    item_texts = [t for t, used in zip(data.item_texts, item_used) if used]
    final = {"step": "final", **_counts(arrays["user"], arrays["item"]), "item_texts": len(item_texts)}
    return RawData(data.dataset, data.task, user_ids, item_ids, item_texts, arrays, data.files,
                   data.steps + steps + [final], data.bad, extra, data.rules)


def final_counts(data: RawData, dcfg: DictConfig) -> dict[str, Any]:
    """``final`` of the manifest: users, items and rows, and rows per split with ``dcfg``'s split (as configured
    when the folder was prepared; ``max_users`` and another ``split_by`` at load time change them)."""
    a = data.arrays
    n = len(a["user"])
    table = InteractionTable(a["user"].astype(np.int64), a["item"].astype(np.int64), a["label"].astype(np.float32),
                             a["timestamp"].astype(np.int64), np.zeros(n, np.int8), data.user_ids, data.item_texts, data.task)
    try:
        split = split_table(table, str(dcfg.split_by), float(dcfg.valid_ratio), float(dcfg.test_ratio), a.get("origin"),
                            data.rules.get("paper_split", "floor_train"))
        per_split: dict[str, Any] = split_counts(split.split)
        method = split.meta["split"]
    except ValueError as exc:
        per_split, method = {}, {"error": str(exc)}
    return {"users": len(data.user_ids), "items": len(data.item_ids), "rows": n, "rows_per_split": per_split,
            "split": {"split_by": str(dcfg.split_by), **{k: v for k, v in method.items() if k != "counts"}}}


# -- prepare --------------------------------------------------------------------------------------
def prepare_dataset(dcfg: DictConfig, seed: int = 0, force: bool = False) -> Path:
    """Make sure the processed dataset for ``dcfg`` exists and is current; returns its folder.

    ``seed`` is accepted for symmetry with :func:`load_prepared`: nothing written here depends on it.
    """
    path = processed_path(dcfg)
    params = prepare_params(dcfg)
    reason = "forced" if force else manifest_mismatch(read_manifest(path), dcfg)
    if reason is None:
        log.info("reusing processed %s in %s", dcfg.name, path)
        return path
    where = _location(dcfg)
    if not where:
        hint = get_dataset(str(dcfg.name)).raw.location_hint
        raise PumaError(f"{dcfg.name}: no processed dataset in {path} ({reason}); {hint}")
    check_replaceable(path, "processed", "processed dataset")  # before any work: never replace what is not ours
    log.info("preparing %s from %s into %s (%s)", dcfg.name, where, path, reason)
    start = time.perf_counter()
    raw = _read_raw(dcfg)
    if len(raw) == 0:
        raise PumaError(f"{dcfg.name}: no interactions left after reading the raw files and the reader's own steps "
                        f"(data.preprocessing={dcfg.preprocessing}; {json.dumps(raw.steps[-3:])}); are they the right "
                        f"files? ({', '.join(Path(f.path).name for f in raw.files)})")
    data = apply_filters(raw, params)
    if len(data) == 0:
        raise PumaError(f"{dcfg.name}: no interactions left after the filters ({json.dumps(data.steps[-3:])}); "
                        "lower data.min_item_ratings / data.min_user_ratings")
    manifest = {
        "format": FORMAT_VERSION,
        "dataset": dcfg.name,
        "task": data.task,
        "preprocessing": params["preprocessing"],
        "params": params,
        "rules": data.rules,
        "final": final_counts(data, dcfg),
        "raw_dir": str(Path(where).expanduser().resolve()),
        "files": [f.to_dict() for f in data.files],
        "steps": data.steps,
        "bad_lines": data.bad,
        "counts": {"rows": len(data), "users": len(data.user_ids), "items": len(data.item_ids),
                   "unlabeled_rows": int(len(data.extra.get("unlabeled_user", ())))},
        "seconds": round(time.perf_counter() - start, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return write_processed(path, data, manifest)


def run_prepare(cfg: DictConfig) -> None:
    """The ``prepare`` command: prepare (or reuse) the dataset and print what it holds."""
    dcfg = cfg.data
    path = prepare_dataset(dcfg, cfg.seed)
    manifest = read_manifest(path)
    assert manifest is not None
    counts = manifest["counts"]
    print(f"{dcfg.name}: {counts['rows']:,} interactions, {counts['users']:,} users, {counts['items']:,} items"
          + (f", {counts['unlabeled_rows']:,} unlabeled test rows" if counts.get("unlabeled_rows") else "")
          + f" -> {path}")
    for step in manifest["steps"]:
        print("  " + ", ".join(f"{k}={v}" for k, v in step.items()))
    bad = manifest.get("bad_lines", {})
    for name, c in bad.get("per_file", {}).items():
        print(f"  {name}: {c['lines']:,} lines, {c['bad']:,} malformed (skipped)")
    for example in bad.get("examples", []):
        print(f"    {example}")
