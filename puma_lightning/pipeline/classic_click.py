"""No-LLM references for click tables, scored like the LLM rows (AUC and per-user AUC of a score).

- ``popularity`` (not personal): an item's score is its number of training positives, the same for every user.
- ``item_item`` (personal): item-item co-occurrence similarity. With ``A`` the user x item matrix of training positives,
  ``cos(i, j) = (A^T A)_ij / sqrt(n_i n_j)`` (``n_i``: item i's training positives; ``cos(i, i) = 0``), and user u's
  score for item i is ``sum over u's training positives j of cos(i, j)``: how much the item is liked by the people who
  liked what u liked.

Both read only the training split, need no tuning, and score every row of the table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from puma_lightning.data.table import InteractionTable

ROW_BLOCK = 65536
"""Rows scored at once by ``item_item`` (bounds the sparse intermediates)."""


def training_positives(table: InteractionTable) -> tuple[np.ndarray, np.ndarray]:
    """``(user, item)`` of the training rows with a positive label."""
    rows = table.rows("train")
    rows = rows[table.label[rows] > 0.5]
    return table.user[rows], table.item[rows]


def popularity(table: InteractionTable, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Every row's score: its item's number of training positives."""
    _, item = training_positives(table)
    counts = np.bincount(item, minlength=table.n_items).astype(np.float64)
    return counts[table.item], {"train_positives": int(len(item)), "items_with_positives": int((counts > 0).sum())}


def cooccurrence_cosine(table: InteractionTable) -> tuple[Any, Any]:
    """``(A, cos)``: the binary user x item matrix of training positives and the items' cosine co-occurrence
    (zero diagonal), both scipy CSR."""
    from scipy import sparse

    user, item = training_positives(table)
    a = sparse.csr_matrix((np.ones(len(user)), (user, item)), shape=(table.n_users, table.n_items))
    a.data[:] = 1.0  # a repeated (user, item) positive counts once
    co = (a.T @ a).tocsr()
    norm = np.sqrt(np.asarray(co.diagonal(), dtype=np.float64))
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    cos = sparse.diags(inv) @ co @ sparse.diags(inv)
    cos = cos.tolil()
    cos.setdiag(0.0)
    return a, cos.tocsr()


def item_item(table: InteractionTable, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Every row's score: the summed cosine co-occurrence of its item with its user's training positives."""
    a, cos = cooccurrence_cosine(table)
    score = np.empty(len(table))
    for lo in range(0, len(table), ROW_BLOCK):
        u, i = table.user[lo:lo + ROW_BLOCK], table.item[lo:lo + ROW_BLOCK]
        score[lo:lo + len(u)] = np.asarray(a[u].multiply(cos[i]).sum(axis=1)).ravel()
    return score, {"train_positives": int(a.sum()), "item_pairs": int(cos.nnz)}
