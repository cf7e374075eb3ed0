"""Reference: the published selection functions, step for step on pandas, for the tests to compare against.

Source: Kimagure7/Dont-Start-Over, commit 9d85839752e3a23cfd88b47a3d69d7237e85760a,
``utils/user_select.py`` (the functions named below) and ``utils/datasets.py`` (``get_train_indices``:
which function and which parameters each ``dataset.mode`` uses). The repository is MIT-licensed
(Copyright (c) 2026 Ziyi Zhao and contributors).

Each function below is written here from the published one: the same pandas / numpy / ``random``
calls, on the same frames, in the same order, with the same arithmetic, so that given the same inputs
it returns the same users in the same order. What changed, and only that:

* the inputs are arrays instead of files: the k-means (or PCA + k-means) step is skipped and the
  cluster labels are passed in (the tests give both sides the same labels); the per-user variance
  or loss is passed in (NaN for a single rating, as ``groupby().var()`` gives);
* the logging lines are dropped; ``trace`` (optional) records the published quantities the tests
  compare (quota and number of groups per pass and cluster; pass, cluster and group of each user);
* the process-wide generators (``random.sample``, ``np.random.randint``) are seeded at the start of
  the function (``random.seed(seed)`` / ``np.random.seed(seed)``), as a script seeded just before
  the call would be.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import numpy as np
import pandas as pd


def _weights(n_groups: int, weight_type: str, span: float) -> np.ndarray:
    """The published weight block (``normal``: ``exp(-x**2/2) + 0.1`` over ``linspace(-span, span)``)."""
    weights = np.array([1.0])
    if n_groups > 1:
        if weight_type == "normal":
            x = np.linspace(-span, span, n_groups)
            weights = np.exp(-x**2/2)
            weights = weights + 0.1
            weights = weights / weights.sum()
        elif weight_type == "linear":
            weights = np.arange(1, n_groups + 1)
            weights = weights / weights.sum()
        elif weight_type == "uniform":
            weights = np.ones(n_groups)
            weights = weights / weights.sum()
    return weights


def clustering_and_score_sampling(score, clusters, num_users_to_select=2000, num_clusters=15, num_groups=5,
                                  min_users_per_cluster=50, random_state=42, weight_type="normal", trace=None):
    """``select_users_with_clustering_and_variance_sampling`` (modes 2, 3) from its step 2 on.

    The same steps are ``ON_based_cluster_and_variance_sampling`` (mode 6), and, on a loss instead of a
    variance and with the frame's index as the user id, ``select_users_with_embedding_and_loss`` (mode 8)
    and ``ON_based_cluster_and_loss_sampling`` (mode 5).
    """
    trace = {} if trace is None else trace
    trace.update(quota={}, groups={}, tag={})
    user_variance = pd.DataFrame({"UserID": np.arange(len(score)), "rating_variance": np.asarray(score, float)})
    clusters = np.asarray(clusters)
    user_variance["cluster"] = clusters
    cluster_counts = Counter(clusters)
    selected_users = []
    remaining_users = num_users_to_select

    def pick(cluster_users, n_samples, first_pass, pass_name, cluster_id):
        cluster_users = cluster_users.sort_values("rating_variance")
        try:
            cluster_users["variance_group"] = pd.qcut(cluster_users["rating_variance"], q=num_groups,
                                                      labels=False, duplicates="drop")
        except ValueError:
            cluster_users["variance_group"] = 0
        actual_groups = cluster_users["variance_group"].nunique()
        weights = _weights(actual_groups, weight_type if first_pass else "normal", 2)  # pass 2: always normal
        samples_per_group = (weights * n_samples).astype(int)
        samples_per_group[-1] = n_samples - samples_per_group[:-1].sum()
        trace["quota"][(pass_name, cluster_id)] = n_samples
        trace["groups"][(pass_name, cluster_id)] = actual_groups
        for group_num in range(actual_groups):
            group_df = cluster_users[cluster_users["variance_group"] == group_num]
            n = min(samples_per_group[group_num], len(group_df))
            selected = group_df.sample(n=n, random_state=random_state)["UserID"].tolist()
            selected_users.extend(selected)
            trace["tag"].update({u: (pass_name, cluster_id, group_num) for u in selected})

    for cluster_id in range(num_clusters):  # 6. first pass
        cluster_users = user_variance[user_variance["cluster"] == cluster_id]
        n_samples = min(min_users_per_cluster, len(cluster_users))
        if n_samples > 0:
            pick(cluster_users, n_samples, True, "first", cluster_id)
            remaining_users -= n_samples
    if remaining_users > 0:  # 7. second pass
        total_users = sum(cluster_counts.values())
        for cluster_id in range(num_clusters):
            cluster_users = user_variance[(user_variance["cluster"] == cluster_id)
                                          & (~user_variance["UserID"].isin(selected_users))]
            if len(cluster_users) == 0:
                continue
            cluster_quota = int(remaining_users * (cluster_counts[cluster_id] / total_users))
            n_samples = min(cluster_quota, len(cluster_users))
            if n_samples > 0:
                pick(cluster_users, n_samples, False, "second", cluster_id)
                remaining_users -= n_samples
    if len(selected_users) < num_users_to_select:  # 8. final adjustment
        remaining = num_users_to_select - len(selected_users)
        remaining_candidates = user_variance[~user_variance["UserID"].isin(selected_users)]
        if len(remaining_candidates) > 0:
            additional = remaining_candidates.sample(n=remaining, random_state=random_state)["UserID"].tolist()
            selected_users.extend(additional)
            trace["tag"].update({u: ("topup", -1, -1) for u in additional})
    if len(selected_users) > num_users_to_select:
        selected_users = selected_users[:num_users_to_select]
    return selected_users


def stratified_sampling(score, num_users_to_select=2000, num_groups=8, weight_type="normal", drop_duplicates=True):
    """Mode 1 ``select_users_with_stratified_variance_sampling`` (``drop_duplicates=True``: its
    ``duplicates='drop'`` and the weights recomputed for the groups left) and mode 7
    ``select_users_with_stratified_weighted_sampling`` (``False``: plain ``qcut``, weights over all
    ``num_groups``); both ``random_state=42``. Returns (selected users, users per group)."""
    variance_df = pd.DataFrame({"rating_variance": np.asarray(score, float)}).sort_values("rating_variance")
    if drop_duplicates:
        variance_df["group"] = pd.qcut(variance_df["rating_variance"], q=num_groups, labels=False, duplicates="drop")
        actual_num_groups = variance_df["group"].nunique()
        if actual_num_groups < num_groups:
            num_groups = actual_num_groups
    else:
        variance_df["group"] = pd.qcut(variance_df["rating_variance"], q=num_groups, labels=False)
    if weight_type == "normal":
        x = np.linspace(-3, 3, num_groups)
        weights = np.exp(-x**2/2)
        weights = weights + 0.1
    else:
        raise ValueError(weight_type)
    group_weights = weights / weights.sum()
    samples_per_group = (group_weights * num_users_to_select).astype(int)
    samples_per_group[-1] = num_users_to_select - samples_per_group[:-1].sum()
    selected_users, per_group = [], []
    for group_num in range(num_groups):
        group_users = variance_df[variance_df["group"] == group_num]
        n_samples = min(samples_per_group[group_num], len(group_users))
        selected = group_users.sample(n=n_samples, random_state=42)
        selected_users.extend(selected.index.tolist())
        per_group.append(len(selected))
    return selected_users, per_group


def round_and_random_sample(clusters, num_users_to_select=2000, num_clusters=15, rule="largest", seed=0):
    """Mode 10 ``select_users_with_pca_kmeans`` (``rule='largest'``) and mode 4 ``ON_based_cluster``
    (``rule='at_least_one'``) after their k-means: ``np.round`` shares, ``random.sample`` per cluster."""
    random.seed(seed)
    labels = np.asarray(clusters)
    cluster_counts = np.bincount(labels)
    total_users = len(labels)
    if rule == "largest":
        samples_per_cluster = np.round(cluster_counts / total_users * num_users_to_select).astype(int)
        diff = num_users_to_select - samples_per_cluster.sum()
        samples_per_cluster[np.argmax(cluster_counts)] += diff
    else:
        cluster_proportions = cluster_counts / sum(cluster_counts)
        samples_per_cluster = np.round(cluster_proportions * num_users_to_select).astype(int)
        samples_per_cluster = np.where(samples_per_cluster == 0, 1, samples_per_cluster)
    selected_users = []
    for cluster_id in range(num_clusters):
        cluster_indices = np.where(labels == cluster_id)[0]
        n_samples = min(samples_per_cluster[cluster_id], len(cluster_indices))
        if n_samples > 0:
            sampled = random.sample(cluster_indices.tolist(), k=int(n_samples))
            selected_users.extend(sampled)
    return selected_users


def farthest_point_sampling(embeddings, num_samples):
    """``farthest_point_sampling`` (Euclidean distances as ``sklearn.metrics.pairwise_distances``)."""
    from sklearn.metrics.pairwise import pairwise_distances

    if num_samples >= len(embeddings):
        return list(range(len(embeddings)))
    indices = [np.random.randint(len(embeddings))]
    dists = pairwise_distances(embeddings, embeddings[indices], metric="euclidean").flatten()
    for _ in range(num_samples - 1):
        farthest_idx = np.argmax(dists)
        indices.append(farthest_idx)
        new_dists = pairwise_distances(embeddings, embeddings[[farthest_idx]], metric="euclidean").flatten()
        dists = np.minimum(dists, new_dists)
    return indices


def select_users_with_fps(embeddings, clusters, num_users_to_select=2000, seed=0):
    """Mode 9 ``select_users_with_fps`` after its k-means."""
    np.random.seed(seed)
    cluster_to_indices = defaultdict(list)
    for idx, cluster_id in enumerate(clusters):
        cluster_to_indices[cluster_id].append(idx)
    total_users = len(embeddings)
    cluster_ids = sorted(cluster_to_indices.keys())
    cluster_sizes = np.array([len(cluster_to_indices[c]) for c in cluster_ids])
    sample_counts = np.round((cluster_sizes / total_users) * num_users_to_select).astype(int)
    diff = num_users_to_select - sample_counts.sum()
    if diff != 0:
        sample_counts[np.argmax(cluster_sizes)] += diff
    selected_indices = []
    for cluster_id, num_samples in zip(cluster_ids, sample_counts):
        indices_in_cluster = cluster_to_indices[cluster_id]
        local = farthest_point_sampling(embeddings[indices_in_cluster], num_samples)
        selected_indices.extend(indices_in_cluster[i] for i in local)
    return selected_indices
