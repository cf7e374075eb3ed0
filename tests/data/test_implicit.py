"""Ratings as implicit feedback (``movielens-100k-click``): positives are the films a user rated, negatives films they
never rated, seeded, ``negatives_per_positive`` per positive, split per user in time with each negative beside its
positive."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from puma_lightning.data.implicit import implicit_feedback
from puma_lightning.data.prepared import build_dataset_table
from puma_lightning.data.table import InteractionTable
from puma_lightning.errors import PumaError


def rated_table(seed: int = 0) -> InteractionTable:
    """12 users who each rated 6..20 of 60 films at distinct times."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(12):
        films = rng.choice(60, int(rng.integers(6, 21)), replace=False)
        users += [u] * len(films)
        items += films.tolist()
    n = len(users)
    return InteractionTable(user=np.array(users), item=np.array(items), label=rng.integers(1, 6, n).astype(np.float32),
                            timestamp=rng.permutation(n).astype(np.int64) * 10, split=np.zeros(n, np.int8),
                            user_ids=[f"u{u}" for u in range(12)], item_texts=[f"film {i}" for i in range(60)])


def check_implicit(rated: InteractionTable, table: InteractionTable, negatives: int, cap: int | None) -> None:
    """Every property the click table promises, against the ratings it was made from."""
    assert table.task == "click" and set(np.unique(table.label)) == {0.0, 1.0}
    pos, neg = table.label == 1, table.label == 0
    for u in range(rated.n_users):
        mine = rated.user == u
        rated_films = set(rated.item[mine].tolist())
        kept = np.sort(rated.timestamp[mine])[-cap:] if cap else np.sort(rated.timestamp[mine])
        p, n = pos & (table.user == u), neg & (table.user == u)
        assert sorted(table.timestamp[p].tolist()) == kept.tolist()  # the user's latest ratings are the positives
        assert set(table.item[p].tolist()) <= rated_films
        assert not set(table.item[n].tolist()) & rated_films  # never a film the user rated, kept or not
        assert len(np.unique(table.item[n])) == n.sum() == negatives * p.sum()  # distinct, per positive
        for split in (0, 1, 2):  # negatives_per_positive per positive in every split
            assert (n & (table.split == split)).sum() == negatives * (p & (table.split == split)).sum()
        ts = {s: table.timestamp[p & (table.split == s)] for s in (0, 1, 2)}  # in time (MovieLens has ties)
        assert all(ts[a].max() <= ts[b].min() for a, b in ((0, 1), (1, 2), (0, 2)) if len(ts[a]) and len(ts[b]))
        pairs = {(t, s) for t, s in zip(table.timestamp[p].tolist(), table.split[p].tolist())}
        assert {(t, s) for t, s in zip(table.timestamp[n].tolist(), table.split[n].tolist())} <= pairs  # beside its positive


@pytest.mark.parametrize("negatives,cap", [(1, None), (2, 8)])
def test_click_table_from_ratings(negatives, cap):
    rated = rated_table()
    table = implicit_feedback(rated, cap, negatives, seed=0, valid_ratio=0.2, test_ratio=0.2)
    check_implicit(rated, table, negatives, cap)
    assert table.meta["implicit"]["negatives_per_positive"] == negatives
    assert table.meta["split"]["counts"]["test"] == int((table.split == 2).sum()) > 0


def test_negatives_are_seeded():
    rated = rated_table()
    a, b = (implicit_feedback(rated, None, 1, seed=s, valid_ratio=0.1, test_ratio=0.2) for s in (0, 0))
    c = implicit_feedback(rated, None, 1, seed=1, valid_ratio=0.1, test_ratio=0.2)
    assert np.array_equal(a.item, b.item) and np.array_equal(a.split, b.split)
    assert not np.array_equal(a.item, c.item) and np.array_equal(a.item[a.label == 1], c.item[c.label == 1])


def test_bad_negative_counts_are_one_line_errors():
    with pytest.raises(PumaError, match="negatives_per_positive.*>= 1"):
        implicit_feedback(rated_table(), None, 0, 0, 0.1, 0.1)
    with pytest.raises(PumaError, match="negatives_per_positive' is 9.*unrated items"):
        implicit_feedback(rated_table(), None, 9, 0, 0.1, 0.1)  # up to 20 positives, only 40 unrated films


def test_movielens_click_dataset():
    dcfg = OmegaConf.create({"name": "movielens-100k-click", "task": "click", "max_users": 30, "max_rows_per_user": 20,
                             "negatives_per_positive": 1, "valid_ratio": 0.1, "test_ratio": 0.1})
    table = build_dataset_table(dcfg, 3)
    from puma_lightning.data.movielens import load_movielens_100k

    rated = load_movielens_100k(max_users=30, seed=3)  # the same users, every rating they made
    assert table.user_ids == rated.user_ids and table.meta["name"] == "movielens-100k-click"
    check_implicit(rated, table, 1, 20)
    with pytest.raises(ValueError, match="'data.task' must be 'click'"):
        build_dataset_table(OmegaConf.merge(dcfg, {"task": "rating"}), 3)
