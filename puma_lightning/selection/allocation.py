"""Shared allocation helpers of the selection strategies: budgets split over clusters or bins,
quantile-stratified and farthest-point picks inside a group of users, and a deterministic PCA.

Every function is a pure function of its inputs (and of the ``rng`` it is handed), so strategies
built from them are deterministic for a seed.
"""

from __future__ import annotations

import numpy as np


def bin_weights(n_bins: int, span: float = 2.0, floor: float = 0.1) -> np.ndarray:
    """Normalised ``exp(-x^2/2) + floor`` over ``x = linspace(-span, span, n_bins)``.

    With the defaults and 5 bins: [0.079, 0.237, 0.369, 0.237, 0.079], the published ``puma``
    weights; ``bin_weights(8, 3.0)`` gives ``variance_bucket``'s; ``span=0`` gives equal weights.
    """
    x = np.linspace(-span, span, n_bins)
    w = np.exp(-(x**2) / 2.0) + floor
    return w / w.sum()


def apportion(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``weights``, never above ``caps``.

    Water-filling: entries whose proportional share exceeds their cap are capped and the excess is
    shared again among the others (in proportion to their weights; uniformly if those are all 0).
    The real-valued shares are then rounded by largest remainder (ties: lower index first), so the
    result sums to exactly ``total``. Requires ``0 <= total <= caps.sum()``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    caps = np.asarray(caps, dtype=np.int64)
    total = int(total)
    if total < 0 or total > int(caps.sum()):
        raise ValueError(f"cannot apportion {total} over capacities summing to {int(caps.sum())}")
    share = np.zeros(caps.shape, dtype=np.float64)
    active = caps > 0
    remaining = float(total)
    while remaining > 0 and active.any():
        w = np.where(active, weights, 0.0)
        if w.sum() <= 0:
            w = active.astype(np.float64)
        prop = remaining * w / w.sum()
        over = active & (prop >= caps)
        if not over.any():
            share[active] = prop[active]
            break
        share[over] = caps[over]
        remaining -= float(caps[over].sum())
        active &= ~over
    counts = np.minimum(np.floor(share + 1e-9).astype(np.int64), caps)
    while (left := total - int(counts.sum())) > 0:
        frac = np.round(share - counts, 9)
        room = np.flatnonzero(counts < caps)
        order = room[np.lexsort((room, -frac[room]))]
        counts[order[:left]] += 1
    return counts


def first_pass(sizes: np.ndarray, budget: int, min_per_cluster: int) -> np.ndarray:
    """``min(min_per_cluster, |c|)`` per cluster, scaled down proportionally if over the budget."""
    floor = np.minimum(np.asarray(sizes, dtype=np.int64), int(min_per_cluster))
    if floor.sum() <= budget:
        return floor
    return apportion(budget, floor, floor)


def allocate(sizes: np.ndarray, budget: int, min_per_cluster: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster quotas: :func:`first_pass`, then the rest in proportion to cluster size.

    Returns ``(first, second)``; ``first + second`` sums to exactly ``budget`` and never exceeds a
    cluster's size (small clusters give all their users, the excess goes to the others).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    first = first_pass(sizes, budget, min_per_cluster)
    second = apportion(budget - int(first.sum()), sizes, sizes - first)
    return first, second


def stratified_pick(
    users: np.ndarray, variance: np.ndarray, quota: int, weights: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[int] | None]:
    """Pick ``quota`` of ``users`` from quantile bins of ``variance`` weighted by ``weights``.

    ``variance`` is any per-user score (label variance, task loss). Bins are equal-population
    quantile bins of the score's rank (ties broken at random), so tied values never collapse bins.
    A bin with too few users spills its share onto the other bins (:func:`apportion`). A constant
    score carries no information: uniform pick (bins = None).
    """
    m = users.size
    if quota >= m:
        return users.copy(), None
    if quota <= 0:
        return users[:0], None
    if np.ptp(variance) == 0:
        return rng.choice(users, size=quota, replace=False), None
    n_bins = weights.size
    order = np.lexsort((rng.random(m), variance))
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m)
    bins = rank * n_bins // m
    per_bin = apportion(quota, weights, np.bincount(bins, minlength=n_bins))
    picks = [rng.choice(users[bins == b], size=int(k), replace=False) for b, k in enumerate(per_bin) if k > 0]
    return np.concatenate(picks), per_bin.tolist()


def farthest_point_pick(points: np.ndarray, quota: int, rng: np.random.Generator) -> np.ndarray:
    """Local indices of ``quota`` rows of ``points`` chosen by farthest-point sampling.

    Starts from a seeded random row, then repeatedly adds the row farthest (squared Euclidean)
    from everything chosen so far; ties go to the lowest index. Duplicate rows are handled: a
    chosen row is never chosen again, even when every remaining distance is 0.
    """
    m = points.shape[0]
    quota = int(min(max(quota, 0), m))
    if quota == 0:
        return np.empty(0, dtype=np.int64)
    x = np.asarray(points, dtype=np.float64)
    chosen = np.empty(quota, dtype=np.int64)
    chosen[0] = int(rng.integers(m))
    closest = ((x - x[chosen[0]]) ** 2).sum(axis=1)
    closest[chosen[0]] = -np.inf
    for i in range(1, quota):
        nxt = int(np.argmax(closest))
        chosen[i] = nxt
        closest = np.minimum(closest, ((x - x[nxt]) ** 2).sum(axis=1))
        closest[chosen[: i + 1]] = -np.inf
    return chosen


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by their lowest member index, so cluster order does not depend on the backend."""
    uniq, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first_index, kind="stable")] = np.arange(uniq.size)
    return rank[inverse.reshape(-1)]


def pca(x: np.ndarray, n_components: int, whiten: bool = False) -> np.ndarray:
    """Project the rows of ``x`` on their top ``n_components`` principal axes (float32 [N, k]).

    Exact and deterministic: eigendecomposition of the D x D covariance (cheap for prompt widths
    up to a few thousand), axes sign-fixed so the largest-magnitude loading is positive.
    ``n_components`` is clipped to ``min(N, D)``.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    k = int(max(1, min(n_components, n, d)))
    centered = x - x.mean(axis=0, keepdims=True)
    cov = centered.T @ centered / max(n - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:k]
    vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(k)])
    vecs = vecs * np.where(signs == 0, 1.0, signs)
    out = centered @ vecs
    if whiten:
        out = out / np.sqrt(np.where(vals > 0, vals, 1.0))
    return out.astype(np.float32)


def clean_scores(values: np.ndarray) -> np.ndarray:
    """Per-user scores as float64 with NaN/inf replaced by the median of the finite ones (0 if none)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1).copy()
    bad = ~np.isfinite(v)
    if bad.any():
        v[bad] = float(np.median(v[~bad])) if (~bad).any() else 0.0
    return v
