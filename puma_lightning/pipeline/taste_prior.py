"""Start each user's prompt at what a taste prior shared by all users says of their ratings (``prompt.taste_prior``).

The item-word match term (:mod:`puma_lightning.models.item_match`) is linear in the prompt: a row's term is
``<p_u - anchor, x_i>`` with ``x_i`` the item's scaled, centred mean word embedding. Fitted user by user with an
isotropic penalty (what gradient descent with weight decay does), 16 ratings cannot tell which of those directions
carry tastes, and the term captures about half of the learnable personal signal on ``configs/personal.yaml``. Here
the directions are learned from *all* users at once: a hierarchical linear model

    label - offset = <m_u, z_i> + noise,   m_u ~ N(0, Sigma),   noise ~ N(0, s2),

in the span of the catalogue's ``x_i`` (``z_i`` its coordinates), with ``Sigma`` and ``s2`` fitted by EM
(empirical Bayes) on the training rows of up to :data:`PRIOR_USERS` users; the iteration is chosen on the
validation rows (EM keeps raising the training likelihood long after validation stops improving), and the prior
is not used at all where no iteration beats the prompts' own start there. Each user's prompt is then moved so that,
inside that span, its term equals the posterior mean ``m_u``; the prompts then train through the frozen model as
usual. The per-user state stays the prompt in the model's embedding space: the bank, migration and serving see
nothing new. Measured in ``docs/prompt_diagnosis.md`` (section 8).

On a click task the same linear model is fitted to the click logit's first-order residual: each row's target is
``(click - sigmoid(offset)) / 0.25``, the residual of the offset's click probability (a logistic residual base,
``prompt.residual=user_item_logodds``) divided by the logistic curve's slope at its centre, so that the posterior
means are in the click logit's units (the linear-probability approximation of a logistic model; exact at
probability one half, shrunk towards zero away from it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from puma_lightning.models.item_match import mean_item_embedding

PRIOR_USERS = 2000
"""Users (seeded sample) whose training rows fit the prior; every user's posterior is computed under it."""
START_PENALTIES = (0.3, 1.0, 3.0, 10.0, 30.0)
"""Isotropic penalties (``s2 / Sigma``, on unit-mean-square features) the EM may start from, chosen on validation."""
CLICK_SLOPE = 0.25
"""The logistic curve's slope at its centre: a click row's probability residual over it is in logit units."""
SHIFT_CHUNK = 65536
"""Users whose prompts are moved at once."""
RANK_TOLERANCE = 1e-6
"""Directions of the catalogue's features below this share of the largest singular value are dropped."""


@dataclass(frozen=True)
class Rows:
    """One split's rows: user index, item feature row (index into the distinct items' features) and target."""

    user: np.ndarray
    item: np.ndarray
    target: np.ndarray


@torch.no_grad()
def _split_rows(module: Any, datamodule: Any, split: str, item_index: dict[tuple, int],
                item_features: list[np.ndarray]) -> Rows:
    """Each row's user, its item's match features (computed once per distinct item text, in order of first
    appearance) and its target: ``label - offset`` (ratings) or ``(label - sigmoid(offset)) / CLICK_SLOPE`` (clicks).
    Read from the table's arrays: one encoded sample per distinct item, none per row."""
    match = module.head.item_match
    data = datamodule.dataset(split)
    table, rows = data.table, data.rows
    items = table.item[rows]
    distinct, first = np.unique(items, return_index=True)
    code = np.empty(len(distinct), np.int64)
    new: list[dict] = []
    for j in np.argsort(first, kind="stable"):
        sample = data[int(first[j])]
        key = tuple(int(t) for t in sample["item_ids"])
        if key not in item_index:
            item_index[key] = len(item_index)
            new.append(sample)
        code[j] = item_index[key]
    offset = data.row_offset[rows].astype(np.float64) if data.row_offset is not None else np.zeros(len(rows))
    label = table.label[rows].astype(np.float64)
    if getattr(module, "task", "rating") == "click":
        target = (label - 1.0 / (1.0 + np.exp(-offset))) / CLICK_SLOPE
    else:
        target = label - offset
    device = match.anchor.device
    for batch in DataLoader(new, batch_size=256, collate_fn=datamodule.collate):
        e = mean_item_embedding(module.backbone.embed, batch["item_ids"].to(device))
        x = match.scale * (e.float() - match.centre) / match.norm
        item_features.append(x.double().cpu().numpy())
    return Rows(table.user[rows].astype(np.int64), code[np.searchsorted(distinct, items)], target)


def catalogue_coordinates(x: np.ndarray, train_items: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The items' features ``x`` ``[items, d]`` in the span of the training catalogue's (``train_items``: each
    training row's item), scaled to unit mean square over the training rows so that :data:`START_PENALTIES` mean the
    same everywhere. Returns ``(z [items, k], basis [k, d], rms)`` with ``z = x @ basis.T / rms``."""
    _, singular, vt = np.linalg.svd(x[np.unique(train_items)], full_matrices=False)
    basis = vt[singular > RANK_TOLERANCE * singular[0]]
    z = x @ basis.T
    rms = float(np.sqrt((z[train_items] ** 2).sum(1).mean())) or 1.0
    return z / rms, basis, rms


def _posterior_means(z: np.ndarray, rows: Rows, users: np.ndarray, sigma: np.ndarray, s2: float,
                     covariances: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Posterior mean ``m_u`` ``[len(users), k]`` of each of ``users`` under the prior, and with ``covariances`` (an EM
    step) the summed second moment ``sum_u (m_u m_u^T + S_u)`` and the expected squared residual of their rows."""
    k = z.shape[1]
    order = np.argsort(rows.user, kind="stable")
    starts = np.searchsorted(rows.user[order], users)
    ends = np.searchsorted(rows.user[order], users, side="right")
    means = np.zeros((len(users), k))
    acc = np.zeros((k, k)) if covariances else None  # sum_u (sigma - S_u): the posterior covariances, less the means
    res = 0.0
    for j, (lo, hi) in enumerate(zip(starts, ends)):
        if hi == lo:
            continue
        idx = order[lo:hi]
        x, y = z[rows.item[idx]], rows.target[idx]
        xs = x @ sigma  # [n, k]
        prior_gram = xs @ x.T  # [n, n]: x sigma x^T
        solve = np.linalg.solve(prior_gram + s2 * np.eye(len(idx)), np.concatenate([y[:, None], xs], 1))
        means[j] = xs.T @ solve[:, 0]
        if covariances:  # S_u = sigma - xs^T gram^-1 xs, never formed user by user (k x k each)
            acc -= xs.T @ solve[:, 1:]
            r = y - x @ means[j]
            # sum over the user's rows of x S_u x^T = tr(x sigma x^T) - tr(x sigma x^T gram^-1 x sigma x^T)
            res += float(r @ r + np.trace(prior_gram) - np.sum(prior_gram * (solve[:, 1:] @ x.T)))
    if covariances:
        acc += len(users) * sigma + means.T @ means
    return means, (acc, res) if covariances else None


def fit_taste_prior(module: Any, datamodule: Any, iterations: int, seed: int) -> dict[str, Any]:
    """Fit the prior (see the module docstring), move every training user's prompt to its posterior mean inside the
    catalogue's span, and return the record (chosen start penalty and iteration, validation RMSE of the term before
    and after, rank, seconds). Nothing is moved where no iteration beats the prompts' start on validation."""
    start = time.perf_counter()
    datamodule.setup("fit")
    item_index: dict[tuple, int] = {}
    pieces: list[np.ndarray] = []
    train = _split_rows(module, datamodule, "train", item_index, pieces)
    valid = _split_rows(module, datamodule, "valid", item_index, pieces)
    z, basis, rms = catalogue_coordinates(np.concatenate(pieces), train.item)  # basis [k, d]: the catalogue's span
    k = z.shape[1]
    n_users = int(module.prompts.shape[0])
    current = np.zeros((n_users, k))  # each user's (prompt - anchor) in the span's coordinates
    with torch.no_grad():
        for lo in range(0, n_users, SHIFT_CHUNK):
            users = torch.arange(lo, min(lo + SHIFT_CHUNK, n_users), device=module.prompts.device)
            offset = module.prompts_for(users).float().mean(1) - module.head.item_match.anchor
            current[lo:lo + len(users)] = offset.double().cpu().numpy() @ basis.T
    start_means = current * rms  # each user's term today, in the features' coordinates
    fitted = fit_prior(z, train, valid, start_means, iterations, seed)
    record = {**fitted.record, "rank": k}
    if fitted.means is not None:
        for lo in range(0, n_users, SHIFT_CHUNK):  # [chunk, d] at a time: a million users never hold [N, d] in float64
            hi = min(lo + SHIFT_CHUNK, n_users)
            shift = (fitted.means[lo:hi] / rms - current[lo:hi]) @ basis  # inside the span only
            with torch.no_grad():
                module.prompts[lo:hi].add_(torch.as_tensor(shift, dtype=module.prompts.dtype,
                                                           device=module.prompts.device)[:, None, :] / module.scale)
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


@dataclass(frozen=True)
class FittedPrior:
    """What :func:`fit_prior` chose: every user's posterior mean ``[N, k]`` (None: the start was best) and its record."""

    means: np.ndarray | None
    record: dict[str, Any]


def fit_prior(z: np.ndarray, train: Rows, valid: Rows, start_means: np.ndarray, iterations: int,
              seed: int) -> FittedPrior:
    """The hierarchical model of the module docstring on features ``z`` ``[items, k]``: the start penalty, then up to
    ``iterations`` EM steps on the training rows of up to :data:`PRIOR_USERS` users, each scored on ``valid``; the best
    of them, or none where ``start_means`` ``[N, k]`` (each user's term today) does better on ``valid``."""
    n_users, k = start_means.shape
    all_users = np.arange(n_users)
    baseline = _valid_rmse(z, valid, start_means)
    fit_users = np.unique(train.user)
    if len(fit_users) > PRIOR_USERS:
        fit_users = np.sort(np.random.default_rng(seed).choice(fit_users, PRIOR_USERS, replace=False))
    fit_rows = int(np.isin(train.user, fit_users).sum())
    s2 = float(np.mean(train.target ** 2))
    starts = {penalty: _valid_rmse(z, valid, _posterior_means(z, train, all_users, np.eye(k) * (s2 / penalty), s2)[0])
              for penalty in START_PENALTIES}
    penalty = min(starts, key=starts.get)
    sigma, noise = np.eye(k) * (s2 / penalty), s2
    best: tuple[float, int | None, np.ndarray | None] = (baseline, None, None)
    every_user = len(fit_users) == n_users  # then one pass gives both the means to score and the EM statistics
    for iteration in range(iterations + 1):
        last = iteration == iterations
        means, stats = _posterior_means(z, train, all_users, sigma, noise, covariances=every_user and not last)
        score = _valid_rmse(z, valid, means)
        if score < best[0]:
            best = (score, iteration, means)
        if not last:  # one EM step: the posterior moments under this prior give the next one
            if not every_user:
                _, stats = _posterior_means(z, train, fit_users, sigma, noise, covariances=True)
            acc, res = stats
            sigma = acc / len(fit_users) + 1e-9 * np.eye(k)
            noise = max(res / fit_rows, 1e-6)
    record = {"valid_rmse_start": round(baseline, 5), "valid_rmse_isotropic": round(starts[penalty], 5),
              "valid_rmse": round(best[0], 5), "start_penalty": penalty, "iteration": best[1], "iterations": iterations,
              "prior_users": len(fit_users), "used": best[2] is not None}
    return FittedPrior(best[2], record)


def _valid_rmse(z: np.ndarray, rows: Rows, means: np.ndarray) -> float:
    """RMSE of the term alone (``<m_u, z_i>``) against the validation rows' ``label - offset``."""
    pred = np.einsum("rk,rk->r", z[rows.item], means[rows.user])
    return float(np.sqrt(np.mean((pred - rows.target) ** 2)))
