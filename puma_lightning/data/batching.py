"""Length-bucketed batching: pad each batch only to its own longest sample.

Training batches come from a seeded shuffle in which chunks of about 50 batches are sorted by
length (similar lengths per batch) and the batch order is then shuffled; the shuffle changes every
epoch. Evaluation batches are sorted by length, deterministic, and cover every row exactly once —
also across distributed ranks, which receive disjoint batches (no sampler padding), so metrics
stay exact. When training with several devices, pass ``Trainer(use_distributed_sampler=False)``:
the batch sampler shards itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader


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
            "offset": torch.tensor([s.get("offset", 0.0) for s in samples], dtype=torch.float32),
            "item_ids": pad_item_ids([s.get("item_ids", ()) for s in samples]),
        }


def pad_item_ids(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[B, K]`` long: each row's item token ids, right-padded with ``ITEM_PAD`` (-1) to the longest (K >= 1)."""
    from puma_lightning.models.item_match import ITEM_PAD

    width = max([1, *(len(r) for r in rows)])
    out = torch.full((len(rows), width), ITEM_PAD, dtype=torch.long)
    for b, r in enumerate(rows):
        if len(r):
            out[b, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


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
