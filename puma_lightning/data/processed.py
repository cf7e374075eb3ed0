"""The processed-dataset folder: what ``prepare`` writes and every later run reads.

Layout (all written into a temporary folder that is renamed into place only when complete)::

    manifest.json      format, dataset, preprocessing parameters, raw files (size, mtime, sha256),
                       counts after every step, bad-line report
    user.npy item.npy label.npy timestamp.npy [origin.npy history.npy]   one entry per interaction
    history_offsets.npy history_items.npy unlabeled_*.npy                MIND only
    user_ids.json item_ids.json item_texts.jsonl                         id maps and item texts

``manifest.json`` is written last, so a folder without it is never taken for a finished one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from puma_lightning.io.atomic import atomic_dir

from .raw.common import RawData

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_ROW_ARRAYS = ("user", "item", "label", "timestamp", "origin", "history")


def write_processed(path: str | Path, data: RawData, manifest: dict[str, Any]) -> Path:
    """Write ``data`` and its manifest as a processed folder at ``path`` (atomically replaced)."""
    path = Path(path)
    with atomic_dir(path, "processed", "processed dataset") as tmp:
        for name, arr in {**data.arrays, **data.extra}.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
        (tmp / "user_ids.json").write_text(json.dumps(data.user_ids), encoding="utf-8")
        (tmp / "item_ids.json").write_text(json.dumps(data.item_ids), encoding="utf-8")
        with open(tmp / "item_texts.jsonl", "w", encoding="utf-8") as fh:
            for text in data.item_texts:
                fh.write(json.dumps(text, ensure_ascii=False) + "\n")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return path


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest of a processed folder, or None when there is no finished one."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError:
        return None


def read_processed(path: str | Path) -> tuple[RawData, dict[str, Any]]:
    """Load a processed folder back as :class:`RawData` plus its manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(f"{path} is not a processed dataset (no {MANIFEST})")
    arrays, extra = {}, {}
    for file in sorted(path.glob("*.npy")):
        (arrays if file.stem in _ROW_ARRAYS else extra)[file.stem] = np.load(file)
    with open(path / "item_texts.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line) for line in fh]
    data = RawData(
        dataset=manifest["dataset"],
        task=manifest["task"],
        user_ids=json.loads((path / "user_ids.json").read_text(encoding="utf-8")),
        item_ids=json.loads((path / "item_ids.json").read_text(encoding="utf-8")),
        item_texts=texts,
        arrays=arrays,
        steps=manifest.get("steps", []),
        bad=manifest.get("bad_lines", {}),
        extra=extra,
        rules=manifest.get("rules", {}),
    )
    return data, manifest
