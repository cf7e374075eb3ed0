"""Embedded synthetic dataset with a known generative model, so the best achievable score is known.

Items are films with readable text built from attributes (genre, decade, mood), e.g.
``"Midnight Harbor (1987), a brooding noir thriller"``. Users have latent tastes over those
attributes (drawn around a few archetypes, so users form real clusters) plus a personal bias::

    score(u, i) = global_mean + b_u + b_i + taste_genre[u, g_i] + taste_mood[u, m_i] + taste_decade[u, d_i]

Rating task: ``y = clip(round(score + N(0, noise_std)), 1, 5)``. Because the noise is known, the
Bayes-optimal RMSE (the "floor") is computed exactly from the discrete distribution of ``y``.
Click task: ``y ~ Bernoulli(sigmoid(click_scale * (score - global_mean)))`` and the floor is the
AUC of the true click probabilities on the test rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from puma_lightning.config import TASKS

from .splits import chronological_split, keep_latest, limit_users
from .registry import Dataset, register_dataset
from .table import InteractionTable

GENRES = (
    "noir thriller",
    "romantic comedy",
    "space opera",
    "western",
    "horror film",
    "documentary",
    "animated family film",
    "period drama",
    "heist caper",
    "musical",
)
MOODS = ("brooding", "whimsical", "heartfelt", "tense", "uplifting", "melancholic", "quirky", "gritty")
DECADES = (1950, 1960, 1970, 1980, 1990, 2000, 2010)
_TITLE_A = (
    "Midnight", "Silver", "Broken", "Crimson", "Silent", "Golden", "Last", "Hidden", "Burning", "Distant",
    "Velvet", "Iron", "Paper", "Wild", "Electric", "Frozen", "Hollow", "Lucky", "Northern", "Secret",
    "Shattered", "Sunset", "Twisted", "Wandering", "Emerald", "Restless", "Forgotten", "Crooked", "Glass", "Scarlet",
)
_TITLE_B = (
    "Harbor", "Horizon", "Garden", "Echo", "Frontier", "Letters", "Orchard", "Station", "Highway", "Canyon",
    "Lantern", "River", "Empire", "Carnival", "Signal", "Island", "Kingdom", "Parade", "Shadows", "Summer",
    "Tides", "Voyage", "Waltz", "Circus", "Diary", "Engine", "Alibi", "Mirror", "Comet", "Ballad",
)

GLOBAL_MEAN = 3.5
USER_BIAS_STD = 0.6
ITEM_BIAS_STD = 0.3
GENRE_TASTE_STD = 0.5
MOOD_TASTE_STD = 0.35
DECADE_TASTE_STD = 0.25
ARCHETYPE_SHARE = 0.7
"""Fraction of each taste's variance that comes from the user's archetype (the rest is personal)."""
N_ARCHETYPES = 6
CLICK_SCALE = 1.5
_T0 = 1_500_000_000


@dataclass
class SyntheticTruth:
    """Per-row quantities of the generative model (kept out of the table and its meta)."""

    score: np.ndarray
    """Noise-free score of each row."""
    expected_label: np.ndarray
    """E[y | user, item]: the Bayes-optimal prediction for squared error."""
    label_variance: np.ndarray
    """Var[y | user, item] (the irreducible part of the squared error)."""


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF; scipy's vectorised ``ndtr`` when installed, else ``math.erf``."""
    x = np.asarray(x, dtype=np.float64)
    try:
        from scipy.special import ndtr
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        erf = np.vectorize(math.erf, otypes=[np.float64])
        return 0.5 * (1.0 + erf(x / math.sqrt(2.0)))
    return ndtr(x)


def rating_distribution(score: np.ndarray, noise_std: float) -> np.ndarray:
    """P(y = k) for k = 1..5 of ``clip(round(score + N(0, noise_std)), 1, 5)``, shape ``[len(score), 5]``."""
    score = np.asarray(score, dtype=np.float64)
    cuts = np.array([1.5, 2.5, 3.5, 4.5])
    if noise_std <= 0:
        cdf = (score[:, None] >= cuts[None, :]).astype(np.float64)
        cdf = 1.0 - cdf  # P(score < cut)
    else:
        cdf = _normal_cdf((cuts[None, :] - score[:, None]) / noise_std)
    cdf = np.concatenate([np.zeros((len(score), 1)), cdf, np.ones((len(score), 1))], axis=1)
    return np.diff(cdf, axis=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _titles(rng: np.random.Generator, n_items: int) -> list[str]:
    """Unique two-word titles; beyond the 900 combinations, sequels ("Midnight Harbor 2")."""
    combos = [f"{a} {b}" for a in _TITLE_A for b in _TITLE_B]
    perm = rng.permutation(len(combos))
    return [
        combos[perm[i % len(combos)]] + ("" if i < len(combos) else f" {i // len(combos) + 1}")
        for i in range(n_items)
    ]


def _taste(rng: np.random.Generator, archetype: np.ndarray, n_values: int, std: float) -> np.ndarray:
    """Taste matrix [n_users, n_values]: archetype centre plus personal deviation, total std ``std``."""
    centres = rng.normal(0.0, std * math.sqrt(ARCHETYPE_SHARE), size=(N_ARCHETYPES, n_values))
    personal = rng.normal(0.0, std * math.sqrt(1.0 - ARCHETYPE_SHARE), size=(len(archetype), n_values))
    return centres[archetype] + personal


def _sample_items(rng: np.random.Generator, n_users: int, n_items: int, k: int) -> np.ndarray:
    """Each user's k distinct items, popularity-skewed (Zipf-like), via the Gumbel top-k trick."""
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    log_p = np.log(popularity / popularity.sum())[rng.permutation(n_items)]
    out = np.empty((n_users, k), dtype=np.int64)
    for start in range(0, n_users, 1024):  # chunks bound memory for large n_users * n_items
        stop = min(start + 1024, n_users)
        keys = log_p[None, :] + rng.gumbel(size=(stop - start, n_items))
        out[start:stop] = np.argpartition(-keys, k - 1, axis=1)[:, :k] if k < n_items else np.argsort(-keys, axis=1)
    return out


def make_synthetic_with_truth(
    seed: int = 0,
    n_users: int = 200,
    n_items: int = 300,
    rows_per_user: int = 40,
    noise_std: float = 0.5,
    task: str = "rating",
    valid_ratio: float = 0.1,
    test_ratio: float = 0.1,
    max_users: int | None = None,
    max_rows_per_user: int | None = None,
) -> tuple[InteractionTable, SyntheticTruth]:
    """As :func:`make_synthetic`, also returning the per-row ground truth (for tests and analysis)."""
    if task not in TASKS:
        raise ValueError(f"task must be 'rating' or 'click', got {task!r}")
    if n_users < 1 or n_items < 1 or rows_per_user < 1:
        raise ValueError("n_users, n_items and rows_per_user must be >= 1")
    rows_per_user = min(rows_per_user, n_items)
    rng = np.random.default_rng(seed)

    # Items: attributes, a quality bias and readable text.
    genre = rng.integers(len(GENRES), size=n_items)
    mood = rng.integers(len(MOODS), size=n_items)
    decade = rng.integers(len(DECADES), size=n_items)
    year = np.asarray(DECADES)[decade] + rng.integers(10, size=n_items)
    item_bias = rng.normal(0.0, ITEM_BIAS_STD, size=n_items)
    titles = _titles(rng, n_items)
    item_texts = [
        f"{titles[i]} ({year[i]}), {'an' if MOODS[mood[i]][0] in 'aeiou' else 'a'} {MOODS[mood[i]]} {GENRES[genre[i]]}"
        for i in range(n_items)
    ]

    # Users: archetype, bias and tastes over the attributes.
    archetype = rng.integers(N_ARCHETYPES, size=n_users)
    user_bias = rng.normal(0.0, USER_BIAS_STD, size=n_users)
    taste_genre = _taste(rng, archetype, len(GENRES), GENRE_TASTE_STD)
    taste_mood = _taste(rng, archetype, len(MOODS), MOOD_TASTE_STD)
    taste_decade = _taste(rng, archetype, len(DECADES), DECADE_TASTE_STD)

    # Interactions: each user's items, in increasing time.
    items = _sample_items(rng, n_users, n_items, rows_per_user)
    user = np.repeat(np.arange(n_users, dtype=np.int64), rows_per_user)
    item = items.reshape(-1)
    gaps = rng.integers(3_600, 10 * 86_400, size=(n_users, rows_per_user))
    start = _T0 + rng.integers(0, 365 * 86_400, size=(n_users, 1))
    timestamp = (start + np.cumsum(gaps, axis=1)).reshape(-1).astype(np.int64)

    score = (
        GLOBAL_MEAN
        + user_bias[user]
        + item_bias[item]
        + taste_genre[user, genre[item]]
        + taste_mood[user, mood[item]]
        + taste_decade[user, decade[item]]
    )
    if task == "rating":
        label = np.clip(np.rint(score + rng.normal(0.0, noise_std, size=len(score))), 1, 5)
        dist = rating_distribution(score, noise_std)
        values = np.arange(1, 6, dtype=np.float64)
        expected = dist @ values
        variance = np.clip(dist @ values**2 - expected**2, 0.0, None)
    else:
        prob = _sigmoid(CLICK_SCALE * (score - GLOBAL_MEAN))
        label = (rng.random(len(score)) < prob).astype(np.float64)
        expected, variance = prob, prob * (1.0 - prob)

    params = {
        "seed": seed, "n_users": n_users, "n_items": n_items, "rows_per_user": rows_per_user,
        "noise_std": noise_std, "global_mean": GLOBAL_MEAN, "user_bias_std": USER_BIAS_STD,
        "item_bias_std": ITEM_BIAS_STD, "genre_taste_std": GENRE_TASTE_STD, "mood_taste_std": MOOD_TASTE_STD,
        "decade_taste_std": DECADE_TASTE_STD, "n_archetypes": N_ARCHETYPES, "archetype_share": ARCHETYPE_SHARE,
        "click_scale": CLICK_SCALE if task == "click" else None,
        "genres": list(GENRES), "moods": list(MOODS), "decades": list(DECADES),
    }
    table = InteractionTable(
        user=user,
        item=item,
        label=label.astype(np.float32),
        timestamp=timestamp,
        split=np.zeros(len(user), dtype=np.int8),
        user_ids=[f"synth_u{u:05d}" for u in range(n_users)],
        item_texts=item_texts,
        task=task,
        meta={"name": f"synthetic_{task}", "source": "generated", "generator": params,
              # what the item text says, as category indices (JSON-safe): the attribute_ridge reference reads them
              "item_attributes": {"genre": genre.tolist(), "mood": mood.tolist(), "decade": decade.tolist()}},
    )
    keep = np.ones(len(user), dtype=bool)  # cut first (users, then each one's latest rows), split after
    if max_users is not None and max_users < n_users:
        table = limit_users(table, max_users, seed)
        keep &= np.isin(user, [int(u.removeprefix("synth_u")) for u in table.user_ids])
    if max_rows_per_user is not None and max_rows_per_user < rows_per_user:
        table = keep_latest(table, max_rows_per_user)
        keep &= np.tile(np.arange(rows_per_user), n_users) >= rows_per_user - max_rows_per_user  # rows are in time order
    if len(table) != int(keep.sum()):  # pragma: no cover - the cut helpers keep row order
        raise AssertionError("synthetic cut: kept rows do not line up with the ground truth")
    score, expected, variance = score[keep], expected[keep], variance[keep]
    if task == "click":
        prob = prob[keep]
    table = chronological_split(table, valid_ratio=valid_ratio, test_ratio=test_ratio)
    test = table.rows("test")  # the floor is over exactly the rows that are evaluated
    if task == "rating":
        table.meta["floor_rmse"] = float(np.sqrt(variance[test].mean())) if len(test) else None
        table.meta["floor_note"] = "sqrt(mean over test rows of Var[y | user, item]): Bayes-optimal RMSE"
    else:
        from sklearn.metrics import roc_auc_score

        y = table.label[test]
        both = len(test) and 0 < y.sum() < len(y)
        table.meta["floor_rmse"] = None
        table.meta["floor_auc"] = float(roc_auc_score(y, prob[test])) if both else None
        p = np.clip(prob[test], 1e-12, 1 - 1e-12)
        table.meta["floor_bce"] = float(-(p * np.log(p) + (1 - p) * np.log(1 - p)).mean()) if len(test) else None
        table.meta["floor_note"] = "floor_auc: AUC of the true click probabilities on the test rows"
    truth = SyntheticTruth(score=score, expected_label=expected, label_variance=variance)
    return table, truth


def make_synthetic(
    seed: int = 0,
    n_users: int = 200,
    n_items: int = 300,
    rows_per_user: int = 40,
    noise_std: float = 0.5,
    task: str = "rating",
    valid_ratio: float = 0.1,
    test_ratio: float = 0.1,
    max_users: int | None = None,
    max_rows_per_user: int | None = None,
) -> InteractionTable:
    """Generate the synthetic dataset, cut to ``max_users`` users and their ``max_rows_per_user`` latest
    rows, then split chronologically per user (so the split ratios apply to the rows kept).

    ``meta`` holds the generator parameters, the split record and the floor: ``floor_rmse`` for
    ratings (exact Bayes-optimal RMSE on the test rows), ``floor_auc`` / ``floor_bce`` for clicks.
    """
    return make_synthetic_with_truth(
        seed, n_users, n_items, rows_per_user, noise_std, task, valid_ratio, test_ratio, max_users, max_rows_per_user
    )[0]


def _build(dcfg, seed: int) -> InteractionTable:  # noqa: ANN001 - DictConfig
    return make_synthetic(seed=seed, n_users=dcfg.n_users, n_items=dcfg.n_items, rows_per_user=dcfg.rows_per_user,
                          noise_std=dcfg.noise_std, task=dcfg.task, valid_ratio=dcfg.valid_ratio, test_ratio=dcfg.test_ratio,
                          max_users=dcfg.max_users, max_rows_per_user=dcfg.max_rows_per_user)


register_dataset(Dataset("synthetic", None, "synthetic users with known tastes and a known noise floor (ratings or clicks)",
                         "movie", build=_build))
