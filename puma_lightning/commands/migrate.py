"""``migrate``: apply a saved adapter to a prompt bank (``bank=``, or the imported ``source.bank=``), streaming it in
blocks (one process, or every rank of a DDP run), and write the migrated bank."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from puma_lightning.commands.arguments import INPUT, PATH, POSITIVE, BankArgument, WritesOutput
from puma_lightning.errors import PumaError


@dataclass
class MigrateArguments(WritesOutput, BankArgument):
    adapter_path: Optional[str] = field(default=None, metadata=INPUT)
    """Path of the adapter checkpoint to apply (a run's ``puma/adapter.safetensors``)."""
    out: Optional[str] = field(default=None, metadata=PATH)
    """Path of the migrated bank to write (never one of the inputs)."""
    rows_per_shard: Optional[int] = field(default=None, metadata=POSITIVE)
    """Rows per output shard, which is also the block one process maps at a time and so bounds its memory (None: the
    source bank's shard size)."""


def run(cfg: DictConfig, run_dir: Path, args: MigrateArguments) -> None:
    """Map every prompt of the bank with the adapter and write ``out``."""
    from puma_lightning.pipeline.bank_ops import migrate_bank
    from puma_lightning.pipeline.distributed import is_global_zero
    from puma_lightning.pipeline.training import make_trainer

    bank = args.bank or cfg.source.get("bank")  # else the bank you imported, as fit reads it
    for key, value in (("bank", bank), ("adapter_path", args.adapter_path), ("out", args.out)):
        if not value:
            raise PumaError(f"migrate needs '{key}=PATH'" + (" (or source.bank=PATH)" if key == "bank" else ""))
    trainer = make_trainer(cfg, run_dir, "migrate", max_epochs=1, log=False)
    migrated = migrate_bank(bank, args.adapter_path, args.out, args.rows_per_shard, trainer=trainer)
    if is_global_zero():
        print(f"migrated {len(migrated.user_ids)} prompts to {migrated.model_name} (hidden {migrated.hidden_size}) -> {args.out}")
