"""Stand-alone bank operations behind the ``migrate`` and ``test`` commands."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from safetensors import safe_open

from puma_lightning.errors import PumaError
from puma_lightning.io.bank import PromptBank
from puma_lightning.models.adapters import InputStandardized, OutputShrunk, build_adapter
from puma_lightning.models.heads import load_head


def load_adapter(path: str | Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None, dict[str, str]]:
    """Rebuild an adapter saved by ``fit`` (and the head trained with it) from its safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise PumaError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise PumaError(f"{path}: not a readable safetensors adapter ({exc})") from None
    for key in ("kind", "source_dim", "target_dim", "hidden"):
        if key not in meta:
            raise PumaError(f"{path}: adapter metadata lacks {key!r}")
    adapter = build_adapter(meta["kind"], int(meta["source_dim"]), int(meta["target_dim"]), int(meta["hidden"]),
                            float(meta.get("dropout", 0.0)))
    norm = meta.get("input_norm", "none")
    if norm == "standardize":
        adapter = InputStandardized.empty(adapter, int(meta["source_dim"]))
    elif norm != "none":
        raise PumaError(f"{path}: unknown input_norm {norm!r} in the adapter's metadata")
    if meta.get("shrink", "none") != "none":  # adapter.shrink: the centre and alpha it chose are in the file
        if "adapter.centre" not in tensors or "adapter.alpha" not in tensors:
            raise PumaError(f"{path}: the adapter's metadata says shrink={meta['shrink']!r} but it holds no centre and alpha")
        adapter = OutputShrunk(adapter, tensors["adapter.centre"], tensors["adapter.alpha"])
    try:
        adapter.load_state_dict({k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")})
    except RuntimeError as exc:
        raise PumaError(f"{path}: the adapter's tensors do not fit its metadata ({str(exc).splitlines()[0]})") from None
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")} or None
    return adapter.eval(), head, meta


def migrate_bank(bank_path: str | Path, adapter_path: str | Path, out: str | Path, batch_size: int | None = None,
                 trainer: L.Trainer | None = None) -> Any:
    """Map every prompt of a bank through a saved adapter and write the new bank, shard by shard.

    Runs as a Lightning predict loop (:class:`~puma_lightning.tasks.bank_mapping.BankMapping`): each
    step reads one block of ``batch_size`` rows (default: the bank's shard size) from the lazily
    opened source, maps it and writes it as one output shard to a staging folder, so memory holds one
    block per process, not the bank. ``trainer`` (default: one CPU process) decides how many
    processes share the blocks; under DDP every rank maps its own blocks and rank 0 assembles the
    bank, which is the same as one process writes. Returns the new bank, opened lazily."""
    from puma_lightning.io.atomic import check_replaceable, remove_staging, staging_dir
    from puma_lightning.io.bank import DEFAULT_ROWS_PER_SHARD, assemble_bank
    from puma_lightning.pipeline.distributed import barrier, gather_lists, is_global_zero
    from puma_lightning.tasks.bank_mapping import BankMapping

    out = Path(out)
    check_replaceable(out, "bank", "prompt bank")  # before any work
    bank = PromptBank.open(bank_path)
    adapter, head, meta = load_adapter(adapter_path)
    if int(meta["source_dim"]) != bank.hidden_size:
        raise PumaError(f"{adapter_path}: adapter expects hidden size {meta['source_dim']} but bank {bank_path} has {bank.hidden_size}")
    if meta.get("source_fingerprint") and meta["source_fingerprint"] != bank.model_fingerprint:
        raise PumaError(f"{adapter_path}: trained on prompts of model {meta.get('source_model')} ({meta['source_fingerprint']}) "
                        f"but bank {bank_path} is for {bank.model_name} ({bank.model_fingerprint})")
    size = int(batch_size or bank.manifest.get("rows_per_shard") or DEFAULT_ROWS_PER_SHARD)
    manifest = _migrated_manifest(bank, bank_path, adapter_path, meta)
    key = hashlib.sha256(json.dumps([bank.manifest.get("content_hash"), hashlib.sha256(Path(adapter_path).read_bytes()).hexdigest(),
                                     size, str(out.resolve())]).encode()).hexdigest()[:16]
    staging = staging_dir(out, key)
    module = BankMapping(adapter, bank_path, staging, size, float(meta.get("output_scale", 1.0)))
    if trainer is None:
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False)
    records = gather_lists(trainer.predict(module, return_predictions=True) or [])
    if is_global_zero():
        by_block = {int(r["block"]): r for r in records}
        missing = sorted(set(range(module.n_blocks)) - set(by_block))
        if missing:
            raise PumaError(f"migrate: blocks {missing[:5]} were not mapped by any process")
        assemble_bank(out, manifest, [(module.staged_file(b), by_block[b]) for b in range(module.n_blocks)], size, head)
        remove_staging(staging)
    barrier()
    return PromptBank.open(out)


def _migrated_manifest(bank: Any, bank_path: str | Path, adapter_path: str | Path, meta: dict[str, str]) -> dict[str, Any]:
    """The output bank's manifest (model, users, how it was made and its lineage), without tensor hashes."""
    from puma_lightning.io.bank import FORMAT_VERSION
    from puma_lightning.io.lineage import adapter_ref, make_lineage, source_ref

    info: dict[str, Any] = {"made_by": "migrate", "adapter": str(adapter_path), "adapter_meta": meta,
                            "source": {"bank": str(bank_path), "model_name": bank.model_name, "model_fingerprint": bank.model_fingerprint},
                            **{k: v for k, v in bank.info.items() if k in ("dataset", "template", "seed")}}
    info["lineage"] = make_lineage("migrate", model={"name": meta.get("target_model"), "fingerprint": meta.get("target_fingerprint"),
                                                     "hidden_size": int(meta["target_dim"])},
                                   dataset={k: bank.info.get(k) for k in ("dataset", "template", "seed")},
                                   sources=[source_ref(bank_path)], adapter=adapter_ref(adapter_path))
    return {"format_version": FORMAT_VERSION, "model_name": meta.get("target_model", "unknown"),
            "model_fingerprint": meta.get("target_fingerprint", "unknown"), "hidden_size": int(meta["target_dim"]),
            "prompt_length": bank.prompt_length, "num_users": len(bank.user_ids), "user_ids": list(bank.user_ids),
            "info": info}


def evaluate_bank(cfg: DictConfig, bank_path: str | Path, which: str, split: str) -> dict[str, float]:
    """Metrics of a bank's prompts on the configured model and split."""
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.training import make_trainer
    from puma_lightning.tasks import PromptTuning

    bank = PromptBank.load(bank_path)
    exp = Experiment(cfg)
    lm = exp.backbone(which)
    bank.check_model(lm.hidden_size, lm.fingerprint, where=str(bank_path))
    table = exp.table
    if bank.head_state is None:
        raise PumaError(f"{bank_path}: bank has no trained head ({'head.safetensors'}); it cannot be evaluated alone")
    head = load_head(table.task, bank.head_state)
    module = PromptTuning(lm, head, table.task, bank.rows_for(table.user_ids), train_prompts=False, train_head=False)
    dm = exp.datamodule(lm, cfg.prompt.batch_size)
    trainer = make_trainer(cfg, exp.run_dir, f"test_{split}", max_epochs=1)
    out = trainer.test(module, datamodule=dm, verbose=False) if split == "test" else trainer.validate(module, datamodule=dm, verbose=False)
    prefix = "test/" if split == "test" else "val/"
    metrics = {k[len(prefix):]: float(v) for k, v in (out[0] if out else {}).items() if k.startswith(prefix)}
    from puma_lightning.pipeline.distributed import is_global_zero

    if is_global_zero():  # the metrics are synced across ranks; print them once
        print(json.dumps({"bank": str(bank_path), "model": lm.name, "split": split, **metrics}, indent=1))
    return metrics
