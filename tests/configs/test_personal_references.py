"""The references that measure how much is personal (issue 31): ``attribute_ridge`` on item attributes, and the click
references ``popularity`` and ``item_item``, on small constructed data whose right answer is known; which references
apply to which table."""

from __future__ import annotations

import numpy as np
import pytest

from puma_lightning.data.splits import chronological_split
from puma_lightning.data.synthetic import make_synthetic
from puma_lightning.data.table import InteractionTable
from puma_lightning.pipeline.classic import REFERENCES, references_for
from puma_lightning.pipeline.classic_attributes import attribute_columns, ridge_weights
from puma_lightning.pipeline.classic_click import item_item, popularity
from puma_lightning.tasks.uncertainty import metric_on_rows


def _table(user, item, label, n_users, n_items, task="rating", attributes=None, ratios=(0.2, 0.2)) -> InteractionTable:
    n = len(user)
    table = InteractionTable(user=np.asarray(user, np.int64), item=np.asarray(item, np.int64),
                             label=np.asarray(label, np.float32), timestamp=np.arange(n, dtype=np.int64),
                             split=np.zeros(n, np.int8), user_ids=[f"u{u}" for u in range(n_users)],
                             item_texts=[f"film {i}" for i in range(n_items)], task=task,
                             meta={"name": "constructed", **({"item_attributes": attributes} if attributes else {})})
    return chronological_split(table, *ratios)


def planted_tastes(noise: float, seed: int = 0) -> tuple[InteractionTable, np.ndarray, np.ndarray]:
    """60 users rate 30 of 40 films; rating = 3 + user bias + item bias + the user's weight on the film's genre (4
    genres) and mood (3 moods) + noise. Returns the table, the planted genre and mood weights."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 40
    genre, mood = rng.integers(4, size=n_items), rng.integers(3, size=n_items)
    w_genre, w_mood = rng.normal(0, 0.8, (n_users, 4)), rng.normal(0, 0.5, (n_users, 3))
    user = np.repeat(np.arange(n_users), 30)
    item = np.concatenate([rng.permutation(n_items)[:30] for _ in range(n_users)])
    score = 3 + rng.normal(0, 0.3, n_users)[user] + rng.normal(0, 0.2, n_items)[item]
    score += w_genre[user, genre[item]] + w_mood[user, mood[item]]
    table = _table(user, item, score + rng.normal(0, noise, len(user)), n_users, n_items,
                   attributes={"genre": genre.tolist(), "mood": mood.tolist()})
    return table, w_genre, w_mood


def test_ridge_recovers_planted_per_user_weights():
    # one attribute, no noise, a vanishing penalty: each user's weights are exactly their mean target per category
    rng = np.random.default_rng(1)
    n_users, width = 5, 3
    truth = rng.normal(size=(n_users, width))
    user = np.repeat(np.arange(n_users), 12)
    cols = rng.integers(width, size=(len(user), 1))
    cols[::4, 0] = np.arange(len(user))[::4] % width  # every user sees every category
    target = truth[user, cols[:, 0]]
    weights = ridge_weights(user, cols, target, n_users, width, (1e-9, 10.0))
    assert np.allclose(weights[0], truth, atol=1e-6)
    assert np.abs(weights[1]).sum() < np.abs(truth).sum()  # a penalty shrinks them


def test_attribute_ridge_learns_each_users_tastes_and_beats_the_bias_model():
    table, w_genre, w_mood = planted_tastes(noise=0.1)
    test = table.rows("test")
    label = table.label[test].astype(float)
    ridge, chosen = REFERENCES["attribute_ridge"].fit(table, 0)
    bias, _ = REFERENCES["user_item_bias"].fit(table, 0)
    rmse_ridge, rmse_bias = metric_on_rows("rmse", ridge[test], label), metric_on_rows("rmse", bias[test], label)
    assert rmse_ridge < 0.5 * rmse_bias  # the tastes are most of what the biases miss
    assert chosen["features"] == 7 and chosen["reg"] in (0.1, 0.3, 1.0) and chosen["valid_rmse"] < rmse_bias
    # what it adds over the biases follows each user's planted tastes
    cols, _ = attribute_columns(table)
    genre, mood = cols[:, 0], cols[:, 1] - 4
    planted = w_genre[table.user[test], genre[table.item[test]]] + w_mood[table.user[test], mood[table.item[test]]]
    assert np.corrcoef(ridge[test] - bias[test], planted)[0, 1] > 0.8


def test_attribute_ridge_finds_nothing_where_there_are_no_tastes():
    rng = np.random.default_rng(2)
    user, item = np.repeat(np.arange(60), 20), rng.integers(40, size=1200)
    table = _table(user, item, 3 + rng.normal(0, 0.3, 60)[user] + rng.normal(0, 0.5, 1200), 60, 40,
                   attributes={"genre": rng.integers(4, size=40).tolist()})
    ridge, chosen = REFERENCES["attribute_ridge"].fit(table, 0)
    bias, _ = REFERENCES["user_item_bias"].fit(table, 0)
    assert chosen["reg"] >= 10.0  # the validation split asks for strong shrinkage
    assert np.abs(ridge - bias).mean() < 0.1  # and the ridge barely moves the bias model


def test_on_the_synthetic_generator_the_ridge_opens_the_gap_to_the_floor():
    table = make_synthetic(seed=0, n_users=120, n_items=80, rows_per_user=24, valid_ratio=4 / 24, test_ratio=4 / 24)
    test = table.rows("test")
    label = table.label[test].astype(float)
    rmse = {n: metric_on_rows("rmse", REFERENCES[n].fit(table, 0)[0][test], label) for n in ("user_item_bias", "attribute_ridge")}
    assert table.meta["floor_rmse"] < rmse["attribute_ridge"] < rmse["user_item_bias"] - 0.03


def test_attribute_ridge_on_clicks_reads_the_tastes_that_popularity_and_cooccurrence_miss():
    # synthetic clicks: which of the films a user was shown they click follows their tastes, not the films' exposure
    table = make_synthetic(seed=1, n_users=300, n_items=120, rows_per_user=24, task="click", valid_ratio=4 / 24,
                           test_ratio=4 / 24)
    test = table.rows("test")
    uauc = {n: metric_on_rows("uauc", REFERENCES[n].fit(table, 0)[0][test], table.label[test], table.user[test])
            for n in ("attribute_ridge_click", "popularity", "item_item")}
    assert uauc["attribute_ridge_click"] > max(uauc["popularity"], uauc["item_item"]) + 0.04
    pred, chosen = REFERENCES["attribute_ridge_click"].fit(table, 0)
    assert pred.min() >= 0 and pred.max() <= 1 and chosen["features"] == 25


def test_which_references_apply_to_which_table():
    rating = make_synthetic(n_users=8, n_items=10, rows_per_user=5)
    click = make_synthetic(n_users=8, n_items=10, rows_per_user=5, task="click")
    assert set(references_for(rating)) == {"global_mean", "item_bias", "user_bias", "user_item_bias", "biased_mf",
                                           "attribute_ridge"}
    assert set(references_for(click)) == {"popularity", "item_item", "attribute_ridge_click"}
    rating.meta.pop("item_attributes")  # e.g. MovieLens: no attributes, no attribute_ridge (and no error)
    assert "attribute_ridge" not in references_for(rating) and "biased_mf" in references_for(rating)
    rating.meta["item_attributes"] = {"genre": [0, 1]}  # does not cover every item
    assert "attribute_ridge" not in references_for(rating)


def _brute_auc(score: np.ndarray, label: np.ndarray) -> float:
    pos, neg = score[label == 1], score[label == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_popularity_scores_each_item_by_its_training_positives():
    # training positives: film 0 three times, film 1 once, film 2 never (a training negative does not count)
    user = [0, 1, 2, 0, 3, 3, 0, 1, 2, 3]
    item = [0, 0, 0, 1, 2, 3, 2, 3, 1, 0]
    label = [1, 1, 1, 1, 0, 1, 0, 1, 0, 0]
    table = _table(user, item, label, 4, 4, task="click", ratios=(0.0, 0.0))
    test_rows = np.array([6, 7, 8, 9])
    table.split[test_rows] = 2
    score, params = popularity(table, 0)
    assert score.tolist() == [3, 3, 3, 1, 0, 1, 0, 1, 1, 3] and params["train_positives"] == 5
    # test rows: (0, film 2, 0) 0, (1, film 3, 1) 1, (2, film 1, 0) 1, (3, film 0, 0) 3: one positive, three negatives
    assert metric_on_rows("auc", score[test_rows], table.label[test_rows]) == pytest.approx(1.5 / 3)
    assert _brute_auc(score[test_rows], table.label[test_rows]) == pytest.approx(1.5 / 3)


def test_item_item_sums_cosine_cooccurrence_with_the_users_positives():
    # training positives: u0 {0, 1}, u1 {0, 1, 2}, u2 {2}; co-occurrence 0-1: 2, 0-2: 1, 1-2: 1; each film 2 users,
    # so cos(0, 1) = 1, cos(0, 2) = cos(1, 2) = 1/2
    user, item = [0, 0, 1, 1, 1, 2, 2, 0], [0, 1, 0, 1, 2, 2, 0, 2]
    table = _table(user, item, [1] * 6 + [0, 0], 3, 4, task="click", ratios=(0.0, 0.0))
    table.split[[6, 7]] = 2
    score, _ = item_item(table, 0)
    assert score[6] == pytest.approx(0.5)  # u2, film 0: cos(0, 2)
    assert score[7] == pytest.approx(1.0)  # u0, film 2: cos(2, 0) + cos(2, 1)
    assert score[0] == pytest.approx(1.0)  # u0, film 0: cos(0, 1); a film is not similar to itself


def test_item_item_beats_popularity_where_users_pick_within_their_group():
    # two groups of users with disjoint films; the larger group's films are the popular ones, so popularity ranks
    # them first for everyone, while the smaller group's users pick their own group's films
    rng = np.random.default_rng(3)
    rows = []
    for u in range(80):
        mine, other = (np.arange(0, 20), np.arange(20, 40)) if u < 60 else (np.arange(20, 40), np.arange(0, 20))
        for t, film in enumerate(rng.choice(mine, 10, replace=False)):
            rows.append((u, film, 1, 2 * t))
            rows.append((u, rng.choice(other), 0, 2 * t))
    user, item, label, _ = map(np.array, zip(*rows))
    table = _table(user, item, label, 80, 40, task="click")
    test = table.rows("test")
    y, who = table.label[test], table.user[test]
    uauc = {n: metric_on_rows("uauc", f(table, 0)[0][test], y, who) for n, f in (("popularity", popularity), ("item_item", item_item))}
    assert uauc["item_item"] > 0.95 and uauc["popularity"] < 0.85


def test_auc_and_uauc_match_sklearn_with_ties_and_one_class_users():
    # the click references (and every click row's bootstrap) use one sort for every user's AUC: the same numbers as
    # sklearn's roc_auc_score per user, tied scores counted one half, users with one class left out
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    for _ in range(20):
        n = int(rng.integers(2, 300))
        users = rng.integers(0, int(rng.integers(1, 25)), n)
        y = (rng.random(n) < rng.random()).astype(float)
        p = np.round(rng.normal(size=n), int(rng.integers(0, 3)))  # coarse scores: many ties
        per_user = [roc_auc_score(y[users == u], p[users == u]) for u in np.unique(users)
                    if 0 < y[users == u].sum() < (users == u).sum()]
        uauc = metric_on_rows("uauc", p, y, users)
        assert (np.isnan(uauc) and not per_user) or uauc == pytest.approx(np.mean(per_user), abs=1e-12)
        auc = metric_on_rows("auc", p, y)
        assert (np.isnan(auc) and not 0 < y.sum() < n) or auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
