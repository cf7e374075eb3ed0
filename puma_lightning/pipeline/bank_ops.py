"""Stand-alone bank operations behind the ``migrate`` and ``test`` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors import safe_open

from puma_lightning.errors import PumaError
from puma_lightning.io.bank import PromptBank
from puma_lightning.models.adapters import InputStandardized, build_adapter
from puma_lightning.models.heads import build_head


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
    try:
        adapter.load_state_dict({k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")})
    except RuntimeError as exc:
        raise PumaError(f"{path}: the adapter's tensors do not fit its metadata ({str(exc).splitlines()[0]})") from None
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")} or None
    return adapter.eval(), head, meta


def migrate_bank(bank_path: str | Path, adapter_path: str | Path, out: str | Path, batch_size: int | None = None) -> Any:
    """Map every prompt of a bank through a saved adapter and write the new bank, block by block.

    The source bank is read lazily and mapped ``batch_size`` rows at a time (default: the bank's
    shard size), each block written as one shard of the output before the next is read, so memory
    holds one block, not the bank. Returns the new bank, opened lazily."""
    from puma_lightning.io.bank import DEFAULT_ROWS_PER_SHARD, FORMAT_VERSION, write_bank

    bank = PromptBank.open(bank_path)
    adapter, head, meta = load_adapter(adapter_path)
    if int(meta["source_dim"]) != bank.hidden_size:
        raise PumaError(f"{adapter_path}: adapter expects hidden size {meta['source_dim']} but bank {bank_path} has {bank.hidden_size}")
    if meta.get("source_fingerprint") and meta["source_fingerprint"] != bank.model_fingerprint:
        raise PumaError(f"{adapter_path}: trained on prompts of model {meta.get('source_model')} ({meta['source_fingerprint']}) "
                        f"but bank {bank_path} is for {bank.model_name} ({bank.model_fingerprint})")
    size = int(batch_size or bank.manifest.get("rows_per_shard") or DEFAULT_ROWS_PER_SHARD)
    scale = float(meta.get("output_scale", 1.0))
    info: dict[str, Any] = {"made_by": "migrate", "adapter": str(adapter_path), "adapter_meta": meta,
                            "source": {"bank": str(bank_path), "model_name": bank.model_name, "model_fingerprint": bank.model_fingerprint},
                            **{k: v for k, v in bank.info.items() if k in ("dataset", "template", "seed")}}
    from puma_lightning.io.lineage import adapter_ref, make_lineage, source_ref

    info["lineage"] = make_lineage("migrate", model={"name": meta.get("target_model"), "fingerprint": meta.get("target_fingerprint"),
                                                     "hidden_size": int(meta["target_dim"])},
                                   dataset={k: bank.info.get(k) for k in ("dataset", "template", "seed")},
                                   sources=[source_ref(bank_path)], adapter=adapter_ref(adapter_path))
    manifest = {"format_version": FORMAT_VERSION, "model_name": meta.get("target_model", "unknown"),
                "model_fingerprint": meta.get("target_fingerprint", "unknown"), "hidden_size": int(meta["target_dim"]),
                "prompt_length": bank.prompt_length, "num_users": len(bank.user_ids), "user_ids": list(bank.user_ids),
                "info": info}

    def mapped() -> Any:
        with torch.no_grad():
            for block in bank.blocks(size):
                yield adapter(block.float()) * scale

    write_bank(out, manifest, mapped() if len(bank.user_ids) else iter([torch.zeros(0, bank.prompt_length, int(meta["target_dim"]))]),
               size, head)
    return PromptBank.open(out)


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
    head = build_head(table.task)
    if bank.head_state is None:
        raise PumaError(f"{bank_path}: bank has no trained head ({'head.safetensors'}); it cannot be evaluated alone")
    head.load_state_dict(bank.head_state)
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
