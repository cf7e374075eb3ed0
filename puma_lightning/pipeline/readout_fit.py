"""Fit a head's readout in closed form before a stage trains (``prompt.hidden_readout=ridge``).

The frozen model's last hidden state at the answer position says more about an item than the 5 answer logits the
head reads (on ml100k a ridge fit on it corrects a user + item bias model;
docs/results/prompt_learning_ml100k.md). Trained by SGD on each user's own hidden state (``trained``), the
readout overfits instead: its weights co-adapt with each user's prompt. Here it reads every row through one fixed
*neutral* prompt (the mean of the stage's starting prompts), so its term depends on the row's text only, and it
is fitted once, by ridge regression, on the stage's training rows to what the residual base misses; then it is
frozen while the prompts and the head's MLP train.

The fit: features ``norm(h)`` (what the readout reads) standardised per dimension; a ridge regression on their
top ``k`` principal components, ``k`` and the penalty chosen on the stage's validation rows among
:data:`COMPONENTS` x :data:`PENALTIES`, or no readout at all where none beats it there; the solution is folded
back into the readout's ``Linear`` so that serving needs nothing new. Each distinct token sequence is read
once (under ``item_first`` that is once per item) and kept in the readout's cache for the training that follows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from puma_lightning.data.table import InteractionTable
from puma_lightning.errors import PumaError
from puma_lightning.tasks.base import neutral_hidden, share_template_prefixes

COMPONENTS: tuple[int | None, ...] = (32, 128, None)
"""Principal components the ridge fit may keep (None: all of them)."""
PENALTIES: tuple[float, ...] = (100.0, 300.0, 1000.0, 3000.0, 10000.0)
"""Ridge penalties tried (on standardised features, summed squared error)."""


@dataclass(frozen=True)
class ReadoutRows:
    """A split's rows for the ridge fit, stored per distinct token sequence: ``features [m, d]`` (the normalised hidden
    state of each distinct sequence read through the neutral prompt), ``index [n]`` (each row's sequence), and per row
    ``base [n]`` (the residual base's prediction) and ``label [n]``. Memory grows with the distinct sequences (the
    items, under ``item_first``), not with the rows."""

    features: np.ndarray
    index: np.ndarray
    base: np.ndarray
    label: np.ndarray

    @classmethod
    def per_row(cls, features: np.ndarray, base: np.ndarray, label: np.ndarray) -> "ReadoutRows":
        """Rows that each have their own feature vector."""
        return cls(np.asarray(features, dtype=np.float64), np.arange(len(label)), np.asarray(base, dtype=np.float64),
                   np.asarray(label, dtype=np.float64))

    def counts(self) -> np.ndarray:
        """Rows per distinct sequence ``[m]``."""
        return np.bincount(self.index, minlength=len(self.features)).astype(np.float64)

    def sums(self, per_row: np.ndarray) -> np.ndarray:
        """``per_row [n]`` summed over each distinct sequence's rows ``[m]``."""
        return np.bincount(self.index, weights=per_row, minlength=len(self.features))


@torch.no_grad()
def neutral_rows(module: Any, datamodule: Any, split: str) -> ReadoutRows:
    """A split's :class:`ReadoutRows`: each distinct sequence read once through the readout's neutral prompt, in full
    batches (and kept in the readout's cache for the training that follows)."""
    readout = module.head.readout
    device = readout.linear.weight.device
    share_template_prefixes(module.backbone, datamodule)  # prefixes computed in their groups, as training will
    data = datamodule.dataset(split)
    size = 2 * int(datamodule.batch_size)
    distinct: dict[tuple, int] = {}
    firsts: list[dict] = []
    index, base, label = np.empty(len(data), dtype=np.int64), np.empty(len(data)), np.empty(len(data))
    for i in range(len(data)):  # each row encoded once
        sample = data[i]
        key = (tuple(int(t) for t in sample["input_ids"]), int(sample["slot_pos"]))
        if key not in distinct:
            distinct[key] = len(firsts)
            firsts.append(sample)
        index[i] = distinct[key]
        base[i], label[i] = np.float32(sample.get("offset", 0.0)), np.float32(sample["label"])  # as the batches carry them
    features = []
    for batch in DataLoader(firsts, batch_size=size, collate_fn=datamodule.collate):
        batch = {k: v.to(device) for k, v in batch.items()}
        features.append(readout.norm(neutral_hidden(module.backbone, readout, batch)).double().cpu())
    return ReadoutRows(torch.cat(features).numpy(), index, base, label)


def _rmse(prediction: np.ndarray, label: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.clip(prediction, 1.0, 5.0) - label) ** 2)))


def ridge_readout(train: ReadoutRows, valid: ReadoutRows) -> tuple[np.ndarray, float, dict[str, Any]]:
    """``(weight [d], bias, record)`` of the readout ``w · x + b`` fitted on ``train``'s residuals (label - base) and
    chosen on ``valid``'s clipped RMSE; ``weight`` all zero (and ``bias`` 0) where no fit beats none there.

    The same fit as on one feature row per training row, computed from per-sequence sums: standardisation by the
    rows' mean and std, principal components of the row-weighted features (``sqrt(count) * z`` has the rows' Gram
    matrix), and the ridge right-hand side ``Z^T (t - centre)`` summed per sequence."""
    counts = train.counts()
    n = float(counts.sum())
    mean = counts @ train.features / n
    std = np.sqrt(counts @ (train.features - mean) ** 2 / n) + 1e-6
    z = (train.features - mean) / std
    target = train.label - train.base
    centre = float(target.mean())
    _, s, vt = np.linalg.svd(np.sqrt(counts)[:, None] * z, full_matrices=False)
    gradient = vt @ (z.T @ train.sums(target - centre))  # V^T Z^T (t - centre), per component
    vz = (valid.features - mean) / std
    before = _rmse(valid.base, valid.label)
    best = (before, None, None, np.zeros(z.shape[1]), 0.0)
    for k in COMPONENTS:
        kk = len(s) if k is None else min(k, len(s))
        for penalty in PENALTIES:
            coef = vt[:kk].T @ (gradient[:kk] / (s[:kk] ** 2 + penalty))  # in standardised units
            score = _rmse(valid.base + (vz @ coef)[valid.index] + centre, valid.label)
            if score < best[0]:
                best = (score, kk, penalty, coef, centre)
    score, kk, penalty, coef, centre = best
    weight = coef / std
    bias = centre - float(weight @ mean) if kk is not None else 0.0
    return weight, bias, {"components": kk, "penalty": penalty, "val_rmse_without": round(before, 5),
                          "val_rmse_with": round(score, 5), "train_rows": int(len(train.label)),
                          "valid_rows": int(len(valid.label))}


def adapter_items(table: InteractionTable, train_users: np.ndarray, eval_users: np.ndarray) -> np.ndarray:
    """The items of the adapter's own rows: its users' training rows and its validation users' validation rows."""
    rows = np.concatenate([table.rows("train", train_users), table.rows("valid", eval_users)])
    return np.unique(table.item[rows])


def fit_readout(module: Any, datamodule: Any) -> dict[str, Any]:
    """Fit ``module.head``'s readout by ridge (see the module docstring) on ``datamodule``'s training rows, chosen
    on its validation rows, freeze it, and return the record (chosen components and penalty, validation RMSE
    without and with it, seconds). The neutral prompt is the mean starting prompt of the training rows' users."""
    head = module.head
    if getattr(head, "readout", None) is None:
        raise PumaError("prompt.hidden_readout=ridge: the head has no readout")
    if module.task != "rating":
        raise PumaError(f"prompt.hidden_readout=ridge fits ratings; this is a {module.task} task (use 'trained')")
    start = time.perf_counter()
    datamodule.setup("fit")
    train = datamodule.dataset("train")
    users = torch.as_tensor(np.unique(train.table.user[train.rows]))
    with torch.no_grad():
        head.readout.set_neutral(module.prompts_for(users.to(head.readout.linear.weight.device)).float().mean(0))
    modes = [(m, m.training) for m in module.modules()]  # the frozen model stays in eval mode: restore each flag, not one
    module.eval()
    weight, bias, record = ridge_readout(neutral_rows(module, datamodule, "train"), neutral_rows(module, datamodule, "valid"))
    for submodule, mode in modes:
        submodule.training = mode
    with torch.no_grad():
        head.readout.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32)[None])
        head.readout.linear.bias.fill_(float(bias))
    head.readout.requires_grad_(False)
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record
