"""Streaming per-user moments (issue 16 item 3): any chunking of the rows gives numpy's per-user
variance, and the table's label variance is the one-pass result."""

from __future__ import annotations

import numpy as np
import pytest

from puma_lightning.data.user_moments import UserMoments


def _reference(users: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    var = np.zeros(n)
    counts = np.bincount(users, minlength=n)
    for u in range(n):
        y = labels[users == u]
        if y.size >= 2:
            var[u] = np.var(y, ddof=1)
    return var, counts


@pytest.mark.parametrize("chunk", [1, 7, 100, 10_000])
def test_any_chunking_gives_numpys_variance(chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    n = 50
    users = rng.integers(0, n, 3_000)
    users[users == 3] = 4  # user 3 has no rows
    labels = rng.integers(1, 6, users.size).astype(np.float64)
    labels[users == 7] = 2.0  # constant labels: variance 0
    first = np.flatnonzero(users == 9)
    users[first[1:]] = 10  # user 9 has a single row
    moments = UserMoments(n)
    for start in range(0, users.size, chunk):
        moments.update(users[start:start + chunk], labels[start:start + chunk])
    var, counts = _reference(users, labels, n)
    assert np.allclose(moments.variance(), var, atol=1e-12)
    assert (moments.counts() == counts).all()
    assert moments.variance()[3] == 0.0 and moments.variance()[9] == 0.0
    assert np.isnan(moments.variance(too_few=np.nan)[9])


def test_large_offsets_keep_their_digits() -> None:
    """The pairwise update keeps the variance of labels far from zero (E[y^2]-E[y]^2 would lose it)."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(4), 1000)
    labels = 1e8 + rng.normal(0, 1, users.size)
    moments = UserMoments(4)
    for part in np.array_split(np.arange(users.size), 13):
        moments.update(users[part], labels[part])
    var, _ = _reference(users, labels, 4)
    assert np.allclose(moments.variance(), var, rtol=1e-6)


def test_out_of_range_users_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        UserMoments(3).update(np.array([0, 3]), np.array([1.0, 2.0]))


def test_table_label_variance_is_the_streamed_one() -> None:
    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.pipeline.builders import build_table
    from pathlib import Path

    cfg = load_config([Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"])
    table = build_table(cfg.data, 0)
    rows = table.rows("train")
    var, counts = _reference(table.user[rows], table.label[rows].astype(np.float64), table.n_users)
    assert np.allclose(table.label_variance(), var, atol=1e-12) and (table.train_counts() == counts).all()
