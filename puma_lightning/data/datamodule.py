"""The datamodule: an interaction table rendered through a template, batched by length.

Encoding lives in :mod:`puma_lightning.data.encoding`, batching in
:mod:`puma_lightning.data.batching`; this module holds the per-split dataset and the
LightningDataModule that ties them to a table, a tokenizer and a set of users.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from puma_lightning.errors import PumaError

from .batching import BucketBatchSampler, PadCollator, ResumableDataLoader
from .encoding import TemplateEncoder
from .table import InteractionTable
from .templates import NO_HISTORY, Template


class EmptySplitError(PumaError):
    """A stage needs rows of a split that has none (e.g. the test split of ``data.split_by=paper``)."""


class PromptDataset(Dataset):
    """Rows of an :class:`InteractionTable` as encoded samples (one dict per row)."""

    def __init__(self, table: InteractionTable, rows: np.ndarray, encoder: TemplateEncoder,
                 row_offset: np.ndarray | None = None) -> None:
        self.table = table
        self.rows = np.asarray(rows, dtype=np.int64)
        self.encoder = encoder
        self.row_offset = row_offset
        self.per_row = encoder.template.uses_history
        items = table.item[self.rows]
        if self.per_row:
            self.lengths = np.fromiter(
                (encoder.row_length(i, table.item_texts[i], self._history(r)) for i, r in zip(items, self.rows)),
                dtype=np.int64, count=len(items),
            )
        else:
            self.lengths = np.fromiter(
                (len(encoder.encode(i, table.item_texts[i]).input_ids) for i in items), dtype=np.int64, count=len(items)
            )

    def _history(self, row: int) -> str:
        return self.table.row_text[row] if self.table.row_text is not None else NO_HISTORY

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = int(self.rows[index])
        item = int(self.table.item[row])
        if self.per_row:
            enc = self.encoder.encode_row(item, self.table.item_texts[item], self._history(row))
        else:
            enc = self.encoder.encode(item, self.table.item_texts[item])
        return {
            "input_ids": enc.input_ids,
            "slot_pos": enc.slot_pos,
            "answer_pos": enc.answer_pos,
            "user": int(self.table.user[row]),
            "label": float(self.table.label[row]),
            "row": row,
            "offset": float(self.row_offset[row]) if self.row_offset is not None else 0.0,
            "item_ids": self.encoder.item_token_ids(item, self.table.item_texts[item]),
        }


class PromptDataModule(L.LightningDataModule):
    """Batches of tokenised template samples for one :class:`InteractionTable`.

    Batches are dicts of ``input_ids`` / ``attention_mask`` ``[B, T]`` (right-padded to the batch's
    longest sample), ``slot_pos``, ``answer_pos``, ``user`` (row in the prompt bank), ``row``
    (row in the table) ``[B]`` long, ``label`` and ``offset`` ``[B]`` float32 (``offset``: added to the
    model's output, ``row_offset[row]``, 0 without one — a residual base, see ``prompt.residual``), and
    ``item_ids`` ``[B, K]`` long, the item text's own tokens padded with -1 (``prompt.item_match``).
    """

    def __init__(
        self,
        table: InteractionTable,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        prompt_length: int = 1,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        train_users: np.ndarray | Sequence[int] | None = None,
        eval_users: np.ndarray | Sequence[int] | None = None,
        seed: int = 0,
        num_workers: int = 0,
        max_item_tokens: int | None = 48,
        row_offset: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.table = table
        if row_offset is not None and len(row_offset) != len(table):
            raise ValueError(f"row_offset has {len(row_offset)} values for a table of {len(table)} rows")
        self.row_offset = row_offset
        self.tokenizer = tokenizer
        self.template = template
        self.prompt_length = prompt_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.train_users = None if train_users is None else np.asarray(train_users, dtype=np.int64)
        self.eval_users = None if eval_users is None else np.asarray(eval_users, dtype=np.int64)
        self.seed = seed
        self.num_workers = num_workers
        self.encoder = TemplateEncoder(tokenizer, template, prompt_length, max_item_tokens)
        pad = tokenizer.pad_token_id
        self.collate = PadCollator(pad if pad is not None else self.encoder.fill_id)
        self._datasets: dict[str, PromptDataset] = {}
        self._epoch = 0
        self._universe: list[tuple[int, ...]] | None = None

    def dataset(self, split: str) -> PromptDataset:
        """The encoded dataset of one split (``"train"``, ``"valid"``, ``"test"``), built on first use."""
        if split not in self._datasets:
            users = self.train_users if split == "train" else self.eval_users
            self._datasets[split] = PromptDataset(self.table, self.table.rows(split, users), self.encoder,
                                                  self.row_offset)
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        """Encode the splits the stage needs (each item is tokenised once across splits)."""
        needed = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage or "", ("train", "valid", "test")):
            self.dataset(split)

    def prefix_universe(self) -> list[tuple[int, ...]] | None:
        """The text before the slot of every item in the table's rows (all splits and users), or None when the
        template's prefix depends on the row (``{history}``). Lets the prefix cache fix, from the data
        alone, which prefixes are computed together (see ``FrozenLM.set_prefix_groups``)."""
        if self.template.uses_history:
            return None
        if self._universe is None:  # the items of the table's rows (a table may keep texts of items nobody rated)
            items = np.unique(self.table.item)
            encoded = (self.encoder.encode(int(i), self.table.item_texts[int(i)]) for i in items)
            self._universe = [e.input_ids[: e.slot_pos] for e in encoded]
        return self._universe

    def set_epoch(self, epoch: int) -> None:
        """Epoch for the training shuffle when no trainer is attached (the trainer's epoch wins)."""
        self._epoch = int(epoch)

    def _current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else self._epoch

    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.world_size), int(trainer.global_rank)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.dataset(split)
        world, rank = self._replicas()
        sampler = BucketBatchSampler(
            data.lengths,
            self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            epoch_fn=self._current_epoch if shuffle else None,
        )
        return ResumableDataLoader(
            data,
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # its own generator: creating a loader's iterator must not draw from the global torch RNG
            # (the dropout stream), so a resumed run draws the same masks as an uninterrupted one
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if len(self.dataset("test")) == 0:
            split = self.table.meta.get("split", {})
            raise EmptySplitError(
                f"the test split is empty (split {split.get('method', '?')}, test_ratio={split.get('test_ratio', '?')}); "
                "stages that test need test rows: use data.split_by=chronological with data.test_ratio > 0, or the "
                "'test' command with split=valid")
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
