"""Prompt-bank lineage: where a bank's prompts came from, recorded in its manifest.

Every bank's ``manifest.json`` carries ``info.lineage``::

    {"made_by": "migrate:puma", "created": "2025-...Z",
     "model": {"name", "fingerprint", "hidden_size"},          # the model the prompts are for
     "models": {"source": ..., "target": ...},                  # the experiment's models
     "dataset": {"name", "task", "template", "seed", "num_users"},
     "selection": {"strategy", "budget", "num_selected", "seed", "users_sha256"} | null,
     "adapter": {"file", "sha256", "kind", "source_dim", "target_dim"} | null,
     "metrics": {...},                                          # test metrics at creation
     "sources": [{"path", "content_hash", "model_name", "model_fingerprint", "hidden_size",
                  "num_users", "lineage": <that bank's own lineage>}]}

Sources nest, so the full history (A → B → C, or [A, B] → C) is in the newest manifest and
survives moving or deleting the older banks; a source's ``content_hash`` (see
:func:`puma_lightning.io.bank.content_hash`) identifies its exact content.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

from puma_lightning.io.bank import MANIFEST_FILE, content_hash, read_manifest
from puma_lightning.io.ownership import file_sha256



def bank_content_hash(path: str | Path) -> str:
    """Content hash of the bank folder ``path`` (from its manifest; the tensors are not read)."""
    manifest = read_manifest(path)
    return manifest.get("content_hash") or content_hash(manifest)


def source_ref(path: str | Path) -> dict[str, Any]:
    """A lineage ``sources`` entry for the bank folder ``path``, nesting its own lineage."""
    manifest = read_manifest(path)
    return {
        "path": str(Path(path).resolve()),
        "content_hash": manifest.get("content_hash") or content_hash(manifest),
        "model_name": manifest["model_name"],
        "model_fingerprint": manifest["model_fingerprint"],
        "hidden_size": manifest.get("hidden_size"),
        "num_users": len(manifest["user_ids"]),
        "lineage": (manifest.get("info") or {}).get("lineage"),
    }


def adapter_ref(path: str | Path) -> dict[str, Any]:
    """A lineage ``adapter`` entry: the checkpoint's file hash and shape (from its metadata)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return {"file": str(path.resolve()), "sha256": file_sha256(path),
            **{k: meta.get(k) for k in ("kind", "source_dim", "target_dim", "hidden", "source_model", "target_model")}}


def make_lineage(made_by: str, *, model: dict[str, Any], dataset: dict[str, Any], metrics: dict[str, Any] | None = None,
                 sources: list[dict[str, Any]] | None = None, adapter: dict[str, Any] | None = None,
                 selection: dict[str, Any] | None = None, models: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One lineage record (see the module docstring)."""
    record = {
        "made_by": made_by,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model,
        "models": models or {},
        "dataset": dataset,
        "selection": selection,
        "adapter": adapter,
        "metrics": metrics or {},
        "sources": sources or [],
    }
    if extra:
        record.update(extra)
    return record


def selection_ref(path: str | Path) -> dict[str, Any] | None:
    """A lineage ``selection`` entry from a ``selection.json`` (None if there is none)."""
    path = Path(path)
    if not path.is_file():
        return None
    sel = json.loads(path.read_text(encoding="utf-8"))
    users = json.dumps(sel.get("user_ids", []))
    return {"strategy": sel.get("strategy"), "budget": sel.get("budget"), "num_selected": sel.get("num_selected"),
            "seed": sel.get("seed"), "allocation": (sel.get("params") or {}).get("allocation"),
            "users_sha256": hashlib.sha256(users.encode()).hexdigest()}


def stage_lineage(made_by: str, *, model: dict[str, Any], dataset: dict[str, Any], metrics: dict[str, Any],
                  models: dict[str, str], source_bank: Path | None = None, adapter_file: Path | None = None,
                  selection_file: Path | None = None) -> dict[str, Any]:
    """The lineage of a bank a stage is saving, from plain values: a pretraining bank has no sources; a
    migrated bank names its source bank (content hash, nested lineage), the adapter file and the selection
    (each only when the file exists)."""
    sources = [source_ref(source_bank)] if source_bank is not None and (Path(source_bank) / MANIFEST_FILE).is_file() else []
    adapter = adapter_ref(adapter_file) if adapter_file is not None and Path(adapter_file).is_file() else None
    selection = selection_ref(selection_file) if selection_file is not None else None
    return make_lineage(made_by, model=model, dataset=dataset, metrics=metrics, sources=sources, adapter=adapter,
                        selection=selection, models=models)


def walk(lineage: dict[str, Any] | None, depth: int = 0) -> Iterator[tuple[int, dict[str, Any], dict[str, Any] | None]]:
    """``(depth, lineage record, source entry that led here)`` for a bank and all its ancestors, newest first."""
    if not lineage:
        return
    stack: list[tuple[int, dict[str, Any], dict[str, Any] | None]] = [(depth, lineage, None)]
    while stack:
        d, rec, via = stack.pop()
        yield d, rec, via
        for src in reversed(rec.get("sources") or []):
            if src.get("lineage"):
                stack.append((d + 1, src["lineage"], src))


def ancestor_hashes(lineage: dict[str, Any] | None) -> set[str]:
    """Content hashes of every bank this lineage descends from."""
    return {src["content_hash"] for _, rec, _ in walk(lineage) for src in rec.get("sources") or [] if src.get("content_hash")}


def format_history(lineage: dict[str, Any] | None) -> str:
    """The lineage as an indented history, one block per bank (newest first)."""
    if not lineage:
        return "  (no lineage recorded: bank made before lineage tracking)"
    lines = []
    for depth, rec, via in walk(lineage):
        pad = "  " * (depth + 1)
        model = rec.get("model") or {}
        head = f"{pad}- {rec.get('made_by')} -> {model.get('name')} (hidden {model.get('hidden_size')}, fp {model.get('fingerprint')})"
        if via is not None:
            head += f"  [bank {via.get('content_hash', '')[:12]}]"
        lines.append(head)
        ds = rec.get("dataset") or {}
        lines.append(f"{pad}  dataset {ds.get('name')} ({ds.get('task')}, template {ds.get('template')}, seed {ds.get('seed')}, "
                     f"{ds.get('num_users')} users), created {rec.get('created')}")
        if rec.get("metrics"):
            lines.append(f"{pad}  metrics " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                        for k, v in rec["metrics"].items()))
        if rec.get("selection"):
            s = rec["selection"]
            lines.append(f"{pad}  selection {s.get('strategy')} ({s.get('num_selected')} of budget {s.get('budget')}, seed {s.get('seed')})")
        if rec.get("adapter"):
            a = rec["adapter"]
            lines.append(f"{pad}  adapter {a.get('kind')} {a.get('source_dim')}->{a.get('target_dim')} sha256 {str(a.get('sha256'))[:16]}")
        for key in ("aggregate", "cold_start"):
            if rec.get(key):
                lines.append(f"{pad}  {key} {json.dumps(rec[key])}")
        for src in rec.get("sources") or []:
            lines.append(f"{pad}  source {src.get('model_name')} bank {src.get('content_hash', '')[:12]} ({src.get('num_users')} users) "
                         f"at {src.get('path')}")
    return "\n".join(lines)
