"""``migrate``: apply a saved adapter to a prompt bank (``bank=``, or the imported ``source.bank=``), streaming it in
blocks (one process, or every rank of a DDP run), and write the migrated bank."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from puma_lightning.errors import PumaError
from puma_lightning.pipeline.bank_ops import migrate_bank
from puma_lightning.pipeline.distributed import is_global_zero
from puma_lightning.pipeline.training import make_trainer


def run(cfg: DictConfig, run_dir: Path) -> None:
    """Map every prompt of the bank with the adapter and write ``out``."""
    if not cfg.bank and cfg.source.get("bank"):  # the bank you imported, as fit reads it
        cfg.bank = cfg.source.bank
    for key in ("bank", "adapter_path", "out"):
        if not cfg[key]:
            raise PumaError(f"migrate needs '{key}=PATH'" + (" (or source.bank=PATH)" if key == "bank" else ""))
    trainer = make_trainer(cfg, run_dir, "migrate", max_epochs=1, log=False)
    bank = migrate_bank(cfg.bank, cfg.adapter_path, cfg.out, cfg.get("rows_per_shard"), trainer=trainer)
    if is_global_zero():
        print(f"migrated {len(bank.user_ids)} prompts to {bank.model_name} (hidden {bank.hidden_size}) -> {cfg.out}")
