"""Tokenisation of templates around the user-prompt slot, and length-bucketed batching.

Each sample's token sequence is ``[BOS?] + ids(before) + [fill] * prompt_length + ids(after)``:
the ``prompt_length`` fill positions starting at ``slot_pos`` get their input embeddings replaced
by the user's soft prompt, and the next-token logits at ``answer_pos`` (the last token) are read.
When the template depends only on the item, each item is tokenised once and cached; when it uses
``{history}`` (per-row text from ``InteractionTable.row_text``) samples are encoded per row, from
cached tokenisations of each distinct text before and after the slot.

Batching pads each batch only to its own longest sample. Training batches come from a seeded
shuffle in which chunks of about 50 batches are sorted by length (similar lengths per batch) and
the batch order is then shuffled; the shuffle changes every epoch. Evaluation batches are sorted
by length, deterministic, and cover every row exactly once — also across distributed ranks,
which receive disjoint batches (no sampler padding), so metrics stay exact. When training with
several devices, pass ``Trainer(use_distributed_sampler=False)``: the batch sampler shards itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from .table import InteractionTable
from .templates import NO_HISTORY, Template


@dataclass(frozen=True)
class EncodedItem:
    """Token ids of one item's filled template and where the slot and answer sit."""

    input_ids: tuple[int, ...]
    slot_pos: int
    """Index of the first of the ``prompt_length`` slot positions."""
    answer_pos: int
    """Index whose next-token logits are read (the last token)."""


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids the tokenizer puts before the text by itself (e.g. ``[bos]``), ``[]`` if none.

    Found by comparing the encoding of ``"a"`` with and without special tokens; anything the
    tokenizer appends (an EOS) is ignored, since the answer must be the last token.
    """
    with_special = list(tokenizer("a")["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


class TemplateEncoder:
    """Tokenises a template around the user slot for each item, once per item index."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        prompt_length: int = 1,
        max_item_tokens: int | None = 48,
    ) -> None:
        if prompt_length < 1:
            raise ValueError(f"prompt_length must be >= 1, got {prompt_length}")
        self.tokenizer = tokenizer
        self.template = template
        self.prompt_length = prompt_length
        self.max_item_tokens = max_item_tokens
        self.prefix = special_prefix(tokenizer)
        self.fill_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        """Placeholder id at the slot; its embedding is replaced by the soft prompt."""
        self._cache: dict[int, EncodedItem] = {}
        self._truncated: dict[int, str] = {}
        self._parts: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def truncate_item(self, item_text: str) -> str:
        """The item text cut to ``max_item_tokens`` tokens (decoded back to a string)."""
        if self.max_item_tokens is None:
            return item_text
        ids = self._ids(item_text)
        if len(ids) <= self.max_item_tokens:
            return item_text
        return self.tokenizer.decode(ids[: self.max_item_tokens], skip_special_tokens=True).strip()

    def encode_text(self, item_text: str, history: str = NO_HISTORY) -> EncodedItem:
        """Encode one item's text (and a row's history text, if the template uses it); no caching."""
        before, after = self.template.render(self.truncate_item(item_text), history)
        head = self.prefix + self._ids(before)
        tail = self._ids(after)
        if not tail:
            raise ValueError(f"template {self.template.name!r} has no text after the slot for the answer cue")
        ids = head + [self.fill_id] * self.prompt_length + tail
        return EncodedItem(tuple(ids), slot_pos=len(head), answer_pos=len(ids) - 1)

    def constant_head(self) -> tuple[int, ...]:
        """Tokens that every row's text before the slot starts with, whatever its item and history.

        The common start of two renderings with unrelated placeholder texts: a function of the
        template and tokenizer alone (not of the data), so every stage and split agrees on it. A real
        item whose first characters merge with the head's last token simply does not start with it.
        """
        a = self.prefix + self._ids(self.template.render("x", "x")[0])
        b = self.prefix + self._ids(self.template.render("Q9", "Q9")[0])
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return tuple(a[:n])

    def _part(self, text: str) -> list[int]:
        hit = self._parts.get(text)
        if hit is None:
            hit = self._parts[text] = self._ids(text)
        return hit

    def _row_parts(self, item_index: int, item_text: str, history: str) -> tuple[list[int], list[int]]:
        item_index = int(item_index)
        item = self._truncated.get(item_index)
        if item is None:
            item = self._truncated[item_index] = self.truncate_item(item_text)
        before, after = self.template.render(item, history)
        tail = self._part(after)
        if not tail:
            raise ValueError(f"template {self.template.name!r} has no text after the slot for the answer cue")
        return self.prefix + self._part(before), tail

    def row_length(self, item_index: int, item_text: str, history: str) -> int:
        """Token count of :meth:`encode_row` without building the ids."""
        head, tail = self._row_parts(item_index, item_text, history)
        return len(head) + self.prompt_length + len(tail)

    def encode_row(self, item_index: int, item_text: str, history: str) -> EncodedItem:
        """Encode one row of a template that uses ``{history}`` (the text parts' tokens are cached)."""
        head, tail = self._row_parts(item_index, item_text, history)
        ids = head + [self.fill_id] * self.prompt_length + tail
        return EncodedItem(tuple(ids), slot_pos=len(head), answer_pos=len(ids) - 1)

    def encode(self, item_index: int, item_text: str) -> EncodedItem:
        """Encode the template for an item, cached by item index."""
        item_index = int(item_index)
        hit = self._cache.get(item_index)
        if hit is None:
            hit = self._cache[item_index] = self.encode_text(item_text)
        return hit


def encode_sample(
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    item_text: str,
    prompt_length: int = 1,
    max_item_tokens: int | None = 48,
) -> EncodedItem:
    """One-off encoding of a template for an item (see :class:`TemplateEncoder`)."""
    return TemplateEncoder(tokenizer, template, prompt_length, max_item_tokens).encode_text(item_text)


class PromptDataset(Dataset):
    """Rows of an :class:`InteractionTable` as encoded samples (one dict per row)."""

    def __init__(self, table: InteractionTable, rows: np.ndarray, encoder: TemplateEncoder) -> None:
        self.table = table
        self.rows = np.asarray(rows, dtype=np.int64)
        self.encoder = encoder
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
        }


class PadCollator:
    """Right-pads a list of samples to the batch's own longest sequence."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for b, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[b, :n] = torch.as_tensor(s["input_ids"], dtype=torch.long)
            attention_mask[b, :n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "slot_pos": torch.tensor([s["slot_pos"] for s in samples], dtype=torch.long),
            "answer_pos": torch.tensor([s["answer_pos"] for s in samples], dtype=torch.long),
            "user": torch.tensor([s["user"] for s in samples], dtype=torch.long),
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.float32),
            "row": torch.tensor([s["row"] for s in samples], dtype=torch.long),
        }


class BucketBatchSampler:
    """Yields lists of dataset indices grouped by similar length.

    ``shuffle=True`` (training): a permutation seeded by ``(seed, epoch)`` is cut into chunks of
    ``bucket_batches`` batches, each chunk is sorted by length and cut into batches, then the batch
    order is shuffled. ``shuffle=False`` (evaluation): indices sorted by length, deterministic.
    With ``num_replicas > 1`` each rank gets every ``num_replicas``-th batch; for training ranks are
    padded to the same batch count by repeating batches (so gradient synchronisation never waits);
    for evaluation see :meth:`eval_shards` (disjoint, each index once, equal batch counts).

    Not a ``torch.utils.data.BatchSampler`` subclass on purpose: Lightning must not replace it.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_rows: int,
        shuffle: bool,
        seed: int = 0,
        bucket_batches: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_fn: Callable[[], int] | None = None,
    ) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_rows}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_rows = batch_rows
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_batches = bucket_batches
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch_fn = epoch_fn
        self.epoch = 0
        self.position: dict[str, int] = {"epoch": -1, "yielded": 0}
        """Epoch of the current pass and how many of its batches were handed out (saved for resume)."""
        self.resume_at: dict[int, int] = {}
        """``{epoch: batches to skip}`` for the next pass, set from a checkpoint."""

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle is drawn (ignored when ``epoch_fn`` is given)."""
        self.epoch = int(epoch)

    def _current_epoch(self) -> int:
        return int(self.epoch_fn()) if self.epoch_fn is not None else self.epoch

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch, before sharding across ranks."""
        n, size = len(self.lengths), self.batch_rows
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i : i + size].tolist() for i in range(0, n, size)]
        rng = np.random.default_rng([self.seed, self._current_epoch()])
        perm = rng.permutation(n)
        chunk = size * self.bucket_batches
        out: list[list[int]] = []
        for start in range(0, n, chunk):
            part = perm[start : start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            out.extend(part[i : i + size].tolist() for i in range(0, len(part), size))
        return [out[i] for i in rng.permutation(len(out))]

    def eval_shards(self) -> list[list[list[int]]]:
        """Evaluation batches of every rank: the length-sorted indices cut into ``num_replicas`` times
        ``ceil(ceil(n / batch) / num_replicas)`` near-equal batches (none larger than the batch size),
        dealt round-robin. Every index is in exactly one batch (no padding duplicates) and every rank
        gets the same number of batches (one fewer only when there are fewer rows than batches)."""
        n, world = len(self.lengths), self.num_replicas
        per_rank = math.ceil(math.ceil(n / self.batch_rows) / world) if n else 0
        order = np.argsort(self.lengths, kind="stable")
        pieces = [p.tolist() for p in np.array_split(order, per_rank * world)] if per_rank else []
        return [[p for p in pieces[r::world] if p] for r in range(world)]

    def __iter__(self) -> Iterator[list[int]]:
        if self.num_replicas > 1 and not self.shuffle:
            yield from self.eval_shards()[self.rank]
            return
        all_batches = self.batches()
        mine = all_batches
        if self.num_replicas > 1:
            mine = all_batches[self.rank :: self.num_replicas]
            if self.shuffle and all_batches:
                per_rank = math.ceil(len(all_batches) / self.num_replicas)
                mine = mine + all_batches[: per_rank - len(mine)]
        # resume mid-epoch: replay this epoch's deterministic order without the batches already trained on
        self.position = {"epoch": self._current_epoch(), "yielded": 0}
        skip = self.resume_at.pop(self.position["epoch"], 0) if self.shuffle else 0
        self.resume_at.clear()
        self.position["yielded"] = skip
        for batch in mine[skip:]:
            self.position["yielded"] += 1
            yield batch

    def __len__(self) -> int:
        total = math.ceil(len(self.lengths) / self.batch_rows)
        if self.num_replicas == 1:
            return total
        if self.shuffle:
            return math.ceil(total / self.num_replicas) if total else 0
        return len(self.eval_shards()[self.rank])


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`BucketBatchSampler` whose position Lightning checkpoints.

    Lightning calls ``state_dict`` when it writes a checkpoint and ``load_state_dict`` before the
    first pass after a resume; the sampler then skips the batches of that epoch already trained on
    (no prefetching with a sized loader, so "handed out" equals "trained on").
    """

    def state_dict(self) -> dict[str, int]:
        return dict(self.batch_sampler.position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume_at = {int(state["epoch"]): int(state["yielded"])}


class PromptDataModule(L.LightningDataModule):
    """Batches of tokenised template samples for one :class:`InteractionTable`.

    Batches are dicts of ``input_ids`` / ``attention_mask`` ``[B, T]`` (right-padded to the batch's
    longest sample), ``slot_pos``, ``answer_pos``, ``user`` (row in the prompt bank), ``row``
    (row in the table) ``[B]`` long, and ``label`` ``[B]`` float32.
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
    ) -> None:
        super().__init__()
        self.table = table
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
            self._datasets[split] = PromptDataset(self.table, self.table.rows(split, users), self.encoder)
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
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
