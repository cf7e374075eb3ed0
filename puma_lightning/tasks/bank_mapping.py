"""Map a prompt bank through an adapter as a Lightning predict loop, one output shard per step.

Each predict step reads one block of rows from the (lazily opened) source bank, maps it through
the adapter and writes it straight to a staging folder as one shard file, returning only the
shard's record. Blocks are dealt to ranks round-robin by the module's own dataloader, so
``trainer.devices`` / ``strategy=ddp`` spread the work; every rank holds one block at a time, so
peak memory is bounded by the block size, not by the number of users. Assembling the shards into
a bank is the caller's job (:func:`puma_lightning.io.bank.assemble_bank`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from puma_lightning.io.bank import LazyPromptBank, shard_count, shard_name, write_shard

__all__ = ["BankMapping", "rank_blocks"]


def rank_blocks(count: int, rank: int, world: int) -> list[int]:
    """The block indices rank ``rank`` of ``world`` maps: ``rank, rank + world, ...`` (each block once)."""
    return list(range(rank, count, world))


class BankMapping(L.LightningModule):
    """``adapter(prompt) * scale`` for every row of ``bank_path``, written as shards of ``block_rows`` rows."""

    def __init__(self, adapter: torch.nn.Module, bank_path: str | Path, staging: str | Path, block_rows: int,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.adapter = adapter.eval().requires_grad_(False)
        self.bank_path, self.staging = Path(bank_path), Path(staging)
        self.block_rows, self.scale = int(block_rows), float(scale)
        self._bank: LazyPromptBank | None = None

    @property
    def bank(self) -> LazyPromptBank:
        """The source bank, opened lazily once per process (only the manifest is read up front)."""
        if self._bank is None:
            self._bank = LazyPromptBank(self.bank_path)
        return self._bank

    @property
    def n_blocks(self) -> int:
        return shard_count(len(self.bank), self.block_rows)

    def staged_file(self, block: int) -> Path:
        """Where block ``block``'s shard is written before assembly."""
        return self.staging / shard_name(block, self.n_blocks)

    def predict_dataloader(self) -> DataLoader:
        blocks = rank_blocks(self.n_blocks, self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(blocks, batch_size=None, shuffle=False, num_workers=0)

    def predict_step(self, block: Any, batch_idx: int = 0) -> dict[str, Any]:
        block = int(block)
        start = block * self.block_rows
        rows = np.arange(start, min(start + self.block_rows, len(self.bank)))
        prompts = self.bank.rows(rows).to(self.device)
        if len(rows):
            mapped = self.adapter(prompts.float()) * self.scale
        else:  # an empty bank still gets its one (empty) tensor file
            mapped = torch.zeros(0, self.bank.prompt_length, self.target_width())
        return {"block": block, **write_shard(self.staged_file(block), mapped)}

    def target_width(self) -> int:
        """Output width of the adapter (read from a one-row forward pass)."""
        with torch.no_grad():
            return int(self.adapter(torch.zeros(1, 1, self.bank.hidden_size, device=self.device)).shape[-1])
