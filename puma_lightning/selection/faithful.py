"""PUMA's published user allocation, reproduced user for user (``puma`` with ``allocation: faithful``).

Reference: ``select_users_with_clustering_and_variance_sampling`` (published modes 2 and 3) and
``select_users_with_embedding_and_loss`` / ``ON_based_cluster_and_*_sampling`` (modes 5, 6, 8, the
same steps on a loss or on FFN clusters) in Kimagure7/Dont-Start-Over at 9d85839, ``utils/user_select.py``.
Given the same cluster labels, the same per-user scores and the same ``random_state``,
:func:`faithful_allocation` returns the same users in the same order: every ``DataFrame.sample(n,
random_state=s)`` is a fresh ``RandomState(s).choice`` on the frame in ``sort_values`` order
(:mod:`.published`). ``tests/selection/test_allocation_faithful.py`` checks this against the published code
on the test dependency pandas.

What the published code does, and so what this module does:

1. First pass, clusters in order: ``n = min(min_per_cluster, |c|)``. The cluster's scores are cut
   with ``pandas.qcut(var, q=n_bins, labels=False, duplicates='drop')`` (:func:`quantile_bins`,
   pandas 2.2-2.3 arithmetic unless told otherwise);
   ``G`` = number of distinct labels; weights ``exp(-x^2/2) + 0.1`` over ``linspace(-2, 2, G)``
   (``weight_type='uniform'``, mode 2: ``1/G`` each; ``[1.0]`` when ``G <= 1``); per-group quotas
   ``floor(w * n)`` with the remainder on the last group; group ``g`` for ``g in range(G)`` gives
   ``min(quota_g, |group g|)`` users. A short group stays short (nothing spills to the others), yet
   the budget is charged the full ``n``.
2. Second pass (only if budget is left), clusters in order, skipping clusters with no unselected
   users: quota ``int(remaining * |c| / N)`` — truncated, and ``remaining`` shrinks inside the
   loop (the published bug), capped at the cluster's unselected users; groups are re-cut on the
   unselected users of the cluster and picked as in the first pass, always with the normal weights.
3. Random top-up: ``budget - picked`` users among all users not yet picked (ascending user order).
4. If the first pass alone picked more than the budget, the list is cut to its first ``budget``
   entries: earlier clusters (and, inside a cluster, lower groups) keep theirs, later ones lose.

qcut quirks that follow: a score shared by many users collapses groups (duplicate edges are
dropped); a cluster whose known scores are all equal gets *no* label at all, so neither pass
picks from it (its users are reachable only by the top-up); labels need not be contiguous
(``[0, 2]`` counts as ``G = 2`` and the loop visits groups 0 and 1, never 2); a user with one rating
has variance NaN (pandas' ``var`` of one value) and is never binned.

Variances: the published code bins ``groupby('UserID')['rating'].var()``, whose last bits decide
which side of an edge a tied user falls on (0.29999999999999993 and 0.30000000000000004 are
different groups to pandas). They are used unrounded; :func:`~.published.pandas_group_variance`
computes them as pandas does from the rating rows; ``build_selection_context`` puts them in
``SelectionContext.label_variance_pandas``, which the strategies bin (:func:`context_variance`). A
context without it falls back to the two-pass ``label_variance``: equal to pandas' for most users
but not bit for bit for every one, so a tied user can then land in a neighbouring group.

Budget above the number of users: the published top-up calls ``sample(n)`` with ``n`` above the
candidates and raises. Here the top-up takes every remaining user instead, the result holds all
users and ``budget_exceeds_users`` says so (``SelectionStrategy.select`` already returns all users
for ``budget >= N`` before a strategy runs, so through ``puma`` this only documents the function).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .published import QCUT_EDGES, group_quotas, group_weights, pandas_sample, pandas_sort_order, quantile_bins


def published_variance(label_variance: np.ndarray, train_counts: np.ndarray) -> np.ndarray:
    """Per-user variance as the published code sees it: NaN with fewer than 2 training rows.

    ``SelectionContext.label_variance`` holds 0 for such users; pandas' ``groupby().var()`` gives
    NaN, which ``qcut`` never bins. Other values are kept as they are (never rounded).
    """
    var = np.array(label_variance, dtype=np.float64).reshape(-1)
    var[np.asarray(train_counts).reshape(-1) < 2] = np.nan
    return var


def context_variance(label_variance: np.ndarray, train_counts: np.ndarray,
                     label_variance_pandas: np.ndarray | None = None) -> np.ndarray:
    """The variance ``allocation: faithful`` bins: pandas' own when the caller computed it, else
    :func:`published_variance` of the two-pass ``label_variance``."""
    if label_variance_pandas is not None:
        return np.asarray(label_variance_pandas, dtype=np.float64).reshape(-1)
    return published_variance(label_variance, train_counts)


@dataclass
class FaithfulAllocation:
    """Outcome of :func:`faithful_allocation`; every count is after the final cut to the budget."""

    selected: np.ndarray
    """Picked users (int64 indices) in the published order: first pass, second pass, top-up."""
    first_quota: list[int]
    """Per cluster, the first pass's ``n = min(min_per_cluster, |c|)`` (what the budget is charged)."""
    first_pass: list[int]
    """Per cluster, users the first pass actually kept (short groups and the budget cut make it < n)."""
    first_bins: list[list[int]]
    """Per cluster, users kept per variance group visited by the first pass (``[]``: none visited)."""
    second_quota: list[int]
    """Per cluster, the second pass's ``min(int(remaining * |c| / N), unselected)``."""
    second_pass: list[int]
    """Per cluster, users the second pass actually kept."""
    second_bins: list[list[int]]
    """Per cluster, users kept per variance group of the second pass's re-cut."""
    n_random_topup: int = 0
    """Users added uniformly at random to reach the budget."""
    n_truncated: int = 0
    """Users cut because the first pass alone exceeded the budget."""
    budget_exceeds_users: bool = False
    """The budget was above the number of users (the published code raises): every user is selected."""
    groups: dict[str, list[int]] = field(default_factory=dict)
    """Per pass (``"first"``, ``"second"``), the number of variance groups ``G`` per cluster."""


def _group_pick(
    users: np.ndarray, variance: np.ndarray, n_samples: int, n_bins: int, weight_type: str, span: float, floor: float,
    random_state: int, edges: str,
) -> tuple[list[np.ndarray], int]:
    """One cluster's variance-group picks of a pass, as the published loop draws them, and ``G``."""
    order = users[pandas_sort_order(variance[users])]  # cluster_users.sort_values(score)
    labels = quantile_bins(variance[order], n_bins, edges)
    n_groups = int(np.unique(labels[labels >= 0]).size)
    quotas = group_quotas(group_weights(n_groups, weight_type, span, floor), n_samples)
    chunks = []
    for g in range(n_groups):  # groups 0..G-1, even when the labels are not contiguous
        pool = order[labels == g]
        chunks.append(pool[pandas_sample(pool.size, min(int(quotas[g]), pool.size), random_state)])
    return chunks, n_groups


def faithful_allocation(
    labels: np.ndarray,
    variance: np.ndarray,
    budget: int,
    random_state: int = 42,
    *,
    n_bins: int = 5,
    min_per_cluster: int = 50,
    weight_span: float = 2.0,
    weight_floor: float = 0.1,
    weight_type: str = "normal",
    qcut_edges: str = "pandas2.2",
    n_clusters: int | None = None,
) -> FaithfulAllocation:
    """Select ``budget`` users the way the published PUMA code does (see the module docstring).

    ``labels``: int cluster of each user, 0..K-1 (clusters are visited in that order; ``n_clusters``
    visits ``0..n_clusters-1``). ``variance``: per-user score, NaN where unknown (pandas' variance,
    :func:`published_variance`). ``random_state``: the published ``random_state`` of every
    ``sample`` call. Defaults are the published ``num_variance_groups=5``,
    ``min_users_per_cluster=50`` and ``weight_type='normal'`` (``'uniform'``: mode 2, first pass
    only); ``qcut_edges`` names the pandas version whose ``qcut`` to follow.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    variance = np.asarray(variance, dtype=np.float64).reshape(-1)
    if labels.size != variance.size:
        raise ValueError(f"faithful_allocation: {labels.size} labels but {variance.size} variances")
    if isinstance(budget, bool) or int(budget) != budget or budget < 0:
        raise ValueError(f"faithful_allocation: budget must be a non-negative integer, got {budget!r}")
    if qcut_edges not in QCUT_EDGES:
        raise ValueError(f"faithful_allocation: qcut_edges must be one of {QCUT_EDGES}, got {qcut_edges!r}")
    group_weights(2, weight_type)  # validates weight_type
    budget, n = int(budget), labels.size
    if n_clusters is None:
        n_clusters = int(labels.max()) + 1 if n else 0
    pick = {"n_bins": n_bins, "span": weight_span, "floor": weight_floor, "random_state": int(random_state),
            "edges": qcut_edges}
    sizes = np.bincount(labels, minlength=n_clusters)[:n_clusters] if n else np.zeros(n_clusters, dtype=np.int64)
    members = [np.flatnonzero(labels == c) for c in range(n_clusters)]
    # Picks as (pass, cluster, group, users) chunks in the published order, cut to budget at the end.
    chunks: list[tuple[str, int, int, np.ndarray]] = []
    quota = {"first": [0] * n_clusters, "second": [0] * n_clusters}
    groups = {"first": [0] * n_clusters, "second": [0] * n_clusters}
    remaining = budget

    for c in range(n_clusters):  # first pass
        n_samples = min(min_per_cluster, int(sizes[c]))
        if n_samples > 0:
            picked, groups["first"][c] = _group_pick(members[c], variance, n_samples, weight_type=weight_type, **pick)
            chunks += [("first", c, g, p) for g, p in enumerate(picked)]
            quota["first"][c] = n_samples
            remaining -= n_samples  # charged in full, even when a group came up short

    if remaining > 0:  # second pass
        total = int(sizes.sum())
        taken = np.zeros(n, dtype=bool)
        for *_, p in chunks:
            taken[p] = True
        for c in range(n_clusters):
            free = members[c][~taken[members[c]]]
            if free.size == 0:
                continue
            n_samples = min(int(remaining * (int(sizes[c]) / total)), int(free.size))  # published int(), not round
            if n_samples > 0:
                # published: the second pass always weighs its groups "normal"
                picked, groups["second"][c] = _group_pick(free, variance, n_samples, weight_type="normal", **pick)
                chunks += [("second", c, g, p) for g, p in enumerate(picked)]
                for p in picked:
                    taken[p] = True
                quota["second"][c] = n_samples
                remaining -= n_samples  # BUG (published): later clusters share an ever-smaller rest

    n_picked = sum(p.size for *_, p in chunks)
    n_topup, exceeds = 0, budget > n
    if n_picked < budget:  # random top-up among everyone not picked, in user order
        pool = np.setdiff1d(np.arange(n), np.concatenate([p for *_, p in chunks]) if chunks else [])
        n_topup = min(budget - n_picked, pool.size)  # published: sample(budget - picked) raises if > pool
        if pool.size:
            chunks.append(("topup", -1, -1, pool[pandas_sample(pool.size, n_topup, int(random_state))]))

    kept, left = [], budget  # the published selected_users[:budget]
    for ch in chunks:
        take = min(ch[3].size, left)
        kept.append((*ch[:3], ch[3][:take]))
        left -= take
    n_truncated = n_picked + n_topup - sum(ch[3].size for ch in kept)

    def per_cluster(pass_name: str) -> tuple[list[int], list[list[int]]]:
        totals, bins = [0] * n_clusters, [[0] * groups[pass_name][c] for c in range(n_clusters)]
        for name, c, g, p in kept:
            if name == pass_name:
                totals[c] += p.size
                bins[c][g] = p.size
        return totals, bins

    first, first_bins = per_cluster("first")
    second, second_bins = per_cluster("second")
    selected = np.concatenate([p for *_, p in kept]).astype(np.int64) if kept else np.empty(0, dtype=np.int64)
    return FaithfulAllocation(
        selected=selected, first_quota=quota["first"], first_pass=first, first_bins=first_bins,
        second_quota=quota["second"], second_pass=second, second_bins=second_bins,
        n_random_topup=int(n_topup), n_truncated=int(n_truncated), budget_exceeds_users=exceeds,
        groups=groups,
    )
