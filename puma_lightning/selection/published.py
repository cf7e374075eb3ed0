"""The published code's own arithmetic and random calls, in numpy: what ``allocation: faithful`` runs.

Reference: Kimagure7/Dont-Start-Over at 9d85839, ``utils/user_select.py`` (the selection functions)
and ``utils/datasets.py`` (``get_train_indices``, which calls them with the parameters of each mode).
Every function here reproduces one published step *call for call*, so that given the same inputs it
returns the same users, not only the same counts:

* pandas' ``DataFrame.sample(n, random_state=s)`` draws ``RandomState(s).choice(len, n, replace=False)``
  positions of the frame as it stands — a *fresh* ``RandomState(s)`` on every call
  (:func:`pandas_sample`); the frame is in ``sort_values`` order, i.e. numpy's quicksort of the
  non-NaN values with NaN last (:func:`pandas_sort_order`).
* ``random.sample`` and ``np.random.randint`` read the process-wide generators, which the published
  scripts seed once; here one ``random.Random(seed)`` / ``np.random.RandomState(seed)`` is created per
  selection and called in the published order (what a process seeded just before the call would draw).
* ``groupby('UserID')['rating'].var()`` is Welford's running update in row order
  (:func:`pandas_group_variance`), which differs in the last bit from a two-pass variance; those bits
  decide which side of a quantile edge a tied user falls on.

Differences left, on purpose (tests/selection/test_published_presets.py and tests/selection/test_allocation_faithful.py
pin the rest user for user):

* a strategy returns exactly the budget: where a published function returns fewer users (short
  groups, NaN scores, modes 1, 7, 4, 9, 10) the rest is a uniform ``RandomState(seed)`` draw among
  the others (``n_random_topup``); where it returns more (mode 4's at-least-one rule) the list is cut
  in order (``n_truncated``); above the number of users every user is selected (the published
  top-up raises there);
* modes 1, 2, 5, 6 and 7 draw with ``random_state=42`` whatever the run seed; here the run seed
  (identical draws at seed 42);
* mode 7's ``qcut`` has no ``duplicates='drop'`` and raises on tied edges; here they are dropped and
  ``published_raises`` says so;
* mode 9's farthest-point step never re-picks a chosen point (the published one can when the only
  points left duplicate chosen ones) and measures Euclidean distances directly rather than with
  scikit-learn's dot-product formula (near-ties could resolve differently; counts cannot differ);
* clusters come from our k-means (and mode 10's PCA from an exact eigendecomposition), not
  scikit-learn's, so on real data the clusters themselves can differ; given the same clusters the
  counts and draws are the published ones.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass

import numpy as np

WEIGHT_TYPES = ("normal", "uniform", "linear")
"""Group weights of the published functions' ``weight_type``."""


QCUT_EDGES = ("pandas2.2", "pandas2.0", "pandas3")
"""How ``pandas.qcut`` computes its edges, by pandas version (they differ in the last bit, which moves
users tied at an edge): 2.2-2.3 ``np.percentile`` at ``100 * linspace(0, 1, q + 1)`` (the default:
the pandas of the published runs, which pin ``pandas>=2.0`` and date from 2025); 2.0-2.1
``np.quantile`` at ``linspace(0, 1, q + 1)``; 3.x the same with every level that is not exact in
binary nudged up by one ulp first."""


def quantile_bins(values: np.ndarray, q: int, edges: str = "pandas2.2") -> np.ndarray:
    """``pandas.qcut(values, q, labels=False, duplicates='drop')`` as int64 labels, -1 for NaN.

    Edges are linear quantiles of the non-NaN values (``edges`` picks the pandas version's
    arithmetic, :data:`QCUT_EDGES`); duplicate edges are dropped unless there are only two;
    intervals are right-closed with the lowest edge included; a value outside every interval
    (every value, when all edges coincide) gets no label.
    """
    if edges not in QCUT_EDGES:
        raise ValueError(f"quantile_bins: edges must be one of {QCUT_EDGES}, got {edges!r}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    out = np.full(v.size, -1, dtype=np.int64)
    known = ~np.isnan(v)
    if not known.any():
        return out
    levels = np.linspace(0, 1, q + 1)
    if edges == "pandas2.2":
        cuts = np.percentile(v[known], levels * 100.0, method="linear")
    else:
        if edges == "pandas3":
            np.putmask(levels, q * levels != np.arange(q + 1), np.nextafter(levels, 1))
        cuts = np.quantile(v[known], levels, method="linear")
    unique = np.unique(cuts)
    if unique.size < cuts.size and cuts.size != 2:
        cuts = unique
    ids = np.searchsorted(cuts, v[known], side="left")
    ids[v[known] == cuts[0]] = 1
    labelled = (ids > 0) & (ids < cuts.size)
    out[np.flatnonzero(known)[labelled]] = ids[labelled] - 1
    return out



def pandas_sample(n_rows: int, n: int, random_state: int) -> np.ndarray:
    """Positions ``DataFrame.sample(n=n, random_state=random_state)`` takes from a frame of ``n_rows``."""
    if n > n_rows:
        raise ValueError(f"cannot sample {n} of {n_rows} rows without replacement")
    return np.random.RandomState(random_state).choice(n_rows, size=n, replace=False)


def pandas_sort_order(values: np.ndarray) -> np.ndarray:
    """``sort_values`` order of ``values`` (quicksort of the non-NaN values, then NaN in place order)."""
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    idx = np.arange(v.size)
    return np.concatenate([idx[~nan][v[~nan].argsort(kind="quicksort")], idx[nan]]).astype(np.int64)


def pandas_group_variance(users: np.ndarray, labels: np.ndarray, n_users: int) -> np.ndarray:
    """Per-user ``groupby(user)[label].var()`` as pandas computes it: NaN with fewer than 2 rows.

    pandas' ``group_var`` runs Welford's update over the rows in their order:
    ``mean += (x - mean_old) / k``, ``m2 += (x - mean) * (x - mean_old)``, then ``m2 / (k - 1)``.
    Vectorised over users: step ``k`` updates every user's ``k``-th row at once.
    """
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    x = np.asarray(labels, dtype=np.float64).reshape(-1)
    count = np.zeros(int(n_users), dtype=np.float64)
    mean = np.zeros(int(n_users), dtype=np.float64)
    m2 = np.zeros(int(n_users), dtype=np.float64)
    if users.size:
        order = np.argsort(users, kind="stable")
        sorted_users = users[order]
        starts = np.searchsorted(sorted_users, sorted_users, side="left")
        rank = np.empty(users.size, dtype=np.int64)
        rank[order] = np.arange(users.size) - starts
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max()) + 2))
        for k in range(int(rank.max()) + 1):
            rows = by_rank[bounds[k]:bounds[k + 1]]
            u, val = users[rows], x[rows]
            count[u] += 1.0
            old = mean[u]
            mean[u] = old + (val - old) / count[u]
            m2[u] += (val - mean[u]) * (val - old)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = m2 / (count - 1.0)
    var[count < 2] = np.nan
    return var


def group_weights(n_groups: int, weight_type: str = "normal", span: float = 2.0, floor: float = 0.1) -> np.ndarray:
    """The published group weights for ``n_groups`` groups, with its exact floating-point operations.

    ``normal``: ``exp(-x**2/2) + floor`` over ``linspace(-span, span, n)``, normalised; ``uniform``:
    ``ones(n) / n``; ``linear``: ``arange(1, n + 1)`` normalised. ``[1.0]`` when ``n <= 1``.
    """
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    if n_groups <= 1:
        return np.array([1.0])
    if weight_type == "normal":
        x = np.linspace(-span, span, n_groups)
        w = np.exp(-x**2 / 2)
        w = w + floor
    elif weight_type == "uniform":
        w = np.ones(n_groups)
    else:
        w = np.arange(1, n_groups + 1)
    return w / w.sum()


def group_quotas(weights: np.ndarray, n: int) -> np.ndarray:
    """``(weights * n).astype(int)`` with the remainder on the last group (the published rounding)."""
    quotas = (np.asarray(weights) * n).astype(int)
    quotas[-1] = n - quotas[:-1].sum()
    return quotas


# --------------------------------------------------------------------------- modes 1 and 7


@dataclass
class StratifiedAllocation:
    """Outcome of :func:`stratified_allocation`."""

    selected: np.ndarray
    """Picked users (int64), group by group, then our top-up."""
    per_group: list[int]
    """Users picked per group ``0..G-1`` by the published loop."""
    n_groups: int
    """Groups the published loop visits."""
    n_random_topup: int = 0
    """Users added uniformly at random to reach the budget (the published function returns fewer)."""
    published_raises: bool = False
    """Duplicate quantile edges: ``qcut`` without ``duplicates='drop'`` raises in the published code."""


def stratified_allocation(
    score: np.ndarray, budget: int, n_groups: int, random_state: int = 42, *, weight_type: str = "normal",
    weight_span: float = 3.0, weight_floor: float = 0.1, drop_duplicates: bool = True, qcut_edges: str = "pandas2.2",
    top_up: bool = True,
) -> StratifiedAllocation:
    """Published modes 1 and 7: quantile groups of one per-user score over all users.

    Mode 1 (``select_users_with_stratified_variance_sampling``, ``drop_duplicates=True``): groups are
    ``qcut(..., duplicates='drop')``, the weights are recomputed for the groups that remain. Mode 7
    (``select_users_with_stratified_weighted_sampling``, ``drop_duplicates=False``): weights over all
    ``n_groups``; where edges coincide the published ``qcut`` raises, here they are dropped and
    ``published_raises`` says so. Quotas ``floor(w * budget)``, remainder on the last group, each group
    gives ``min(quota, |group|)`` drawn by :func:`pandas_sample` on the score-sorted frame. The published
    functions return fewer users when groups are short (or NaN scores are never grouped); ``top_up``
    fills the budget with a uniform draw among the others (ours: a strategy returns exactly ``budget``).
    """
    v = np.asarray(score, dtype=np.float64).reshape(-1)
    order = pandas_sort_order(v)
    labels = quantile_bins(v, n_groups, qcut_edges)
    known = v[~np.isnan(v)]
    edges = np.percentile(known, np.linspace(0, 1, n_groups + 1) * 100.0) if known.size else np.zeros(0)
    raises = not drop_duplicates and np.unique(edges).size < edges.size and edges.size != 2
    actual = int(np.unique(labels[labels >= 0]).size)
    visited = actual if drop_duplicates else n_groups
    weights = group_weights(visited, weight_type, weight_span, weight_floor) if visited else np.zeros(0)
    quotas = group_quotas(weights, budget) if visited else np.zeros(0, dtype=int)
    picks, per_group = [], []
    sorted_labels = labels[order]
    for g in range(visited):
        group = order[sorted_labels == g]
        n = min(int(quotas[g]), group.size)
        picks.append(group[pandas_sample(group.size, n, random_state)])
        per_group.append(n)
    selected = np.concatenate(picks).astype(np.int64) if picks else np.empty(0, dtype=np.int64)
    n_topup = 0
    if top_up and selected.size < budget:
        rest = np.setdiff1d(np.arange(v.size), selected)
        n_topup = min(budget - selected.size, rest.size)
        selected = np.concatenate([selected, rest[pandas_sample(rest.size, n_topup, random_state)]])
    return StratifiedAllocation(selected=selected, per_group=per_group, n_groups=visited,
                                n_random_topup=int(n_topup), published_raises=bool(raises))


# --------------------------------------------------------------------------- modes 4, 9, 10


@dataclass
class RoundedAllocation:
    """Outcome of :func:`rounded_allocation`: the published per-cluster counts, then our fix to the budget."""

    selected: np.ndarray
    """Picked users (int64), cluster by cluster in the published order, then our top-up."""
    shares: list[int]
    """Per cluster, the published ``samples_per_cluster`` (after its rounding rule)."""
    per_cluster: list[int]
    """Per cluster, users the published loop picked."""
    n_random_topup: int = 0
    """Users added uniformly to reach the budget (the published function returned fewer)."""
    n_truncated: int = 0
    """Users cut because the published function returned more than the budget (kept in order)."""


def rounded_shares(sizes: np.ndarray, budget: int, rule: str) -> np.ndarray:
    """Published per-cluster shares: ``np.round(|c| / N * budget)``, then ``rule``.

    ``"largest"`` (modes 9, 10): the difference to the budget goes to the first largest cluster;
    ``"at_least_one"`` (mode 4): zero shares become 1 (the total may then exceed the budget).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if rule == "largest":
        shares = np.round(sizes / total * budget).astype(int)
        shares[np.argmax(sizes)] += budget - shares.sum()
        return shares
    if rule == "at_least_one":
        shares = np.round(sizes / total * budget).astype(int)
        return np.where(shares == 0, 1, shares)
    raise ValueError(f"rounded_shares: rule must be 'largest' or 'at_least_one', got {rule!r}")


def published_fps(points: np.ndarray, n: int, rng: np.random.RandomState) -> list[int]:
    """The published ``farthest_point_sampling``: all points if ``n >= len``; else a random start
    (``rng.randint``) and ``n - 1`` argmax steps of the Euclidean distance to the chosen set.

    As published, ``n <= 0`` still returns the start point. Unlike the published code, a point
    already chosen is never chosen again (it could be when every distance left is 0, i.e. duplicates).
    """
    m = len(points)
    if n >= m:
        return list(range(m))
    x = np.asarray(points, dtype=np.float64)
    chosen = [int(rng.randint(m))]
    dists = np.sqrt(((x - x[chosen[0]]) ** 2).sum(axis=1))
    dists[chosen[0]] = -np.inf
    for _ in range(n - 1):
        nxt = int(np.argmax(dists))
        chosen.append(nxt)
        dists = np.minimum(dists, np.sqrt(((x - x[nxt]) ** 2).sum(axis=1)))
        dists[chosen] = -np.inf
    return chosen


def rounded_allocation(
    labels: np.ndarray, budget: int, seed: int, *, rule: str, within: str = "random", points: np.ndarray | None = None,
    n_clusters: int | None = None,
) -> RoundedAllocation:
    """Published modes 4 (``ON_based_cluster``), 9 (``select_users_with_fps``), 10 (``select_users_with_pca_kmeans``).

    Shares by :func:`rounded_shares`; clusters in order ``0..K-1``. ``within="random"`` (4, 10):
    ``random.sample(members, k=min(share, |c|))`` from one ``random.Random(seed)``; ``within="fps"``
    (9): :func:`published_fps` with one ``np.random.RandomState(seed)``. The published functions may
    return fewer or (mode 4) more users than the budget: here the list is then cut to the budget in
    order, or topped up uniformly (``RandomState(seed)`` draw among the others).
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    k = int(labels.max()) + 1 if n_clusters is None else int(n_clusters)
    sizes = np.bincount(labels, minlength=k)
    shares = rounded_shares(sizes, budget, rule)
    py_rng, np_rng = _random.Random(seed), np.random.RandomState(seed)
    picks, per_cluster = [], []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if within == "fps":
            if members.size == 0:
                per_cluster.append(0)
                continue
            local = published_fps(points[members], int(shares[c]), np_rng)
            chosen = members[local]
        else:
            n = min(int(shares[c]), members.size)
            chosen = np.array(py_rng.sample(members.tolist(), k=n) if n > 0 else [], dtype=np.int64)
        picks.append(chosen)
        per_cluster.append(int(chosen.size))
    selected = np.concatenate(picks).astype(np.int64) if picks else np.empty(0, dtype=np.int64)
    n_truncated = max(selected.size - budget, 0)
    selected = selected[:budget]
    n_topup = 0
    if selected.size < budget:
        rest = np.setdiff1d(np.arange(labels.size), selected)
        n_topup = min(budget - selected.size, rest.size)
        selected = np.concatenate([selected, rest[pandas_sample(rest.size, n_topup, seed)]])
    return RoundedAllocation(selected=selected, shares=[int(s) for s in shares], per_cluster=per_cluster,
                             n_random_topup=int(n_topup), n_truncated=int(n_truncated))
