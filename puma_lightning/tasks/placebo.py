"""Does a bank's prompts know its users? The placebo computations, on per-row predictions only.

A bank is scored twice on the same test rows with the same head: once with each user's own prompt,
once with its prompts *dealt to other users* by a seeded derangement (:func:`derangement`). What the
prompts know about their own user is the **personal gain**: how much better the own prompts score
(metric(placebo) - metric(own) for RMSE/MAE, metric(own) - metric(placebo) for AUC/uAUC), with a 95 %
paired bootstrap interval. An interval that contains 0 says "no measurable personalisation".

- **retained** (migrated banks): personal gain of the migrated bank / that of full retraining.
- **captured share** (with the no-LLM references ``user_item_bias`` and ``attribute_ridge``):
  (bias - row) / (bias - attribute_ridge) on the main metric, the share of the learnable personal
  signal a row captures (the formula is the same for lower- and higher-is-better metrics).

Every interval resamples the same rows jointly for all the prediction vectors involved (paired);
uAUC resamples users (each user's AUC is one unit), RMSE, MAE and AUC resample rows.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from puma_lightning.tasks.uncertainty import LOWER_IS_BETTER

LEVEL = 0.95
"""Coverage of every interval here."""
MEASURABLE = "measurable personalisation"
NONE_MEASURABLE = "no measurable personalisation"
PLACEBO_BETTER = "other users' prompts score better"


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` with no fixed point: user ``u`` is dealt the prompt of ``out[u]``.

    Sattolo's algorithm (one random ``n``-cycle), so no user ever keeps its own prompt; ``n`` < 2 has none."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 users, got {n}")
    rng = np.random.default_rng(int(seed))
    out = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: Sattolo, not Fisher-Yates
        out[i], out[j] = out[j], out[i]
    return out


def better_by(metric: str, a: float | np.ndarray, b: float | np.ndarray) -> float | np.ndarray:
    """How much ``a`` is better than ``b`` on ``metric`` (positive: ``a`` better), whatever the metric's direction."""
    return (b - a) if LOWER_IS_BETTER[metric] else (a - b)


def metric_samples(metric: str, predictions: Sequence[np.ndarray], label: np.ndarray, user: np.ndarray | None = None,
                   resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``metric`` of each prediction vector on all rows (``[k]``) and on ``resamples`` joint bootstrap resamples
    (``[resamples, k]``): the same resample of rows (users for uAUC) for every vector, so differences and ratios
    of them are paired."""
    preds = np.stack([np.asarray(p, dtype=np.float64) for p in predictions])
    label = np.asarray(label, dtype=np.float64)
    if preds.shape[1] != len(label) or not len(label):
        raise ValueError("the predictions must cover the same, non-empty rows as the labels")
    rng = np.random.default_rng(seed)
    if metric in ("rmse", "mae"):
        err = np.abs(preds - label) ** (2 if metric == "rmse" else 1)
        index = rng.integers(0, len(label), size=(resamples, len(label)))
        point, samples = err.mean(axis=1), np.stack([e[index].mean(axis=1) for e in err], axis=1)
        return (np.sqrt(point), np.sqrt(samples)) if metric == "rmse" else (point, samples)
    if metric == "uauc":
        if user is None:
            raise ValueError("uauc needs the rows' users")
        per_user = _per_user_auc(preds, label, np.asarray(user))
        if not per_user.shape[1]:
            nan = np.full(len(preds), np.nan)
            return nan, np.full((resamples, len(preds)), np.nan)
        index = rng.integers(0, per_user.shape[1], size=(resamples, per_user.shape[1]))
        return per_user.mean(axis=1), np.stack([u[index].mean(axis=1) for u in per_user], axis=1)
    if metric == "auc":
        index = rng.integers(0, len(label), size=(resamples, len(label)))
        weights = [np.ones(len(label))] + [np.bincount(i, minlength=len(label)).astype(np.float64) for i in index]
        values = np.array([[weighted_auc(p, label, w) for p in preds] for w in weights])
        return values[0], values[1:]
    raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(LOWER_IS_BETTER)}")


def weighted_auc(prediction: np.ndarray, label: np.ndarray, weight: np.ndarray) -> float:
    """ROC AUC of rows counted ``weight`` times each (a bootstrap resample as counts; ties count half): one pass
    over the rows, so a thousand resamples of a large test split stay cheap. NaN without both classes."""
    _, group = np.unique(prediction, return_inverse=True)
    pos = np.bincount(group, weights=weight * label)
    neg = np.bincount(group, weights=weight * (1.0 - label))
    total = pos.sum() * neg.sum()
    if not total:
        return math.nan
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / total)


def _per_user_auc(preds: np.ndarray, label: np.ndarray, user: np.ndarray) -> np.ndarray:
    """``[k, U]``: each vector's AUC within each user that has both classes (the terms of uAUC)."""
    from sklearn.metrics import roc_auc_score

    columns = []
    for u in np.unique(user):
        rows = user == u
        if 0 < label[rows].sum() < rows.sum():
            columns.append([roc_auc_score(label[rows], p[rows]) for p in preds])
    return np.asarray(columns, dtype=np.float64).T.reshape(len(preds), len(columns))


def interval(value: float, samples: np.ndarray, level: float = LEVEL) -> dict[str, float]:
    """``value`` with the percentile interval of its finite bootstrap ``samples`` (nan where none is finite)."""
    finite = samples[np.isfinite(samples)]
    tail = (1.0 - level) / 2
    low, high = np.quantile(finite, [tail, 1.0 - tail]) if len(finite) else (math.nan, math.nan)
    return {"value": float(value), "low": float(low), "high": float(high)}


def _statistic(metric: str, predictions: Sequence[np.ndarray], label: np.ndarray, user: np.ndarray | None,
               resamples: int, seed: int, of: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
    """A statistic ``of`` the metric values (last axis: one per prediction vector), with its joint bootstrap interval."""
    point, samples = metric_samples(metric, predictions, label, user, resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        return interval(float(of(point)), np.asarray(of(samples), dtype=np.float64))


def gain_verdict(low: float, high: float) -> str:
    """What a personal-gain interval says: measurable personalisation, none, or the placebo scores better."""
    if math.isnan(low) or math.isnan(high) or low <= 0.0 <= high:
        return NONE_MEASURABLE
    return MEASURABLE if low > 0.0 else PLACEBO_BETTER


def personal_gain(metric: str, own: np.ndarray, placebo: np.ndarray, label: np.ndarray, user: np.ndarray | None = None,
                  resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """How much better own prompts score than other users' on the same rows (positive: own better), its 95 %
    paired bootstrap interval, the two metric values and the verdict."""
    point, samples = metric_samples(metric, [own, placebo], label, user, resamples, seed)
    out: dict[str, Any] = interval(better_by(metric, point[0], point[1]), better_by(metric, samples[:, 0], samples[:, 1]))
    out.update(metric=metric, own=float(point[0]), placebo=float(point[1]), verdict=gain_verdict(out["low"], out["high"]),
               rows=int(len(label)), resamples=int(resamples))
    return out


def retained(metric: str, own: np.ndarray, placebo: np.ndarray, full_own: np.ndarray, full_placebo: np.ndarray,
             label: np.ndarray, user: np.ndarray | None = None, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Personal gain of a migrated bank ÷ that of full retraining's bank, on the same rows, with a bootstrap interval
    (the four vectors resampled jointly). ``full_gain_measurable`` says whether the denominator's own interval
    excludes 0; where it does not, the ratio means little."""
    def ratio(values: np.ndarray) -> np.ndarray:
        return better_by(metric, values[..., 0], values[..., 1]) / better_by(metric, values[..., 2], values[..., 3])

    out: dict[str, Any] = _statistic(metric, [own, placebo, full_own, full_placebo], label, user, resamples, seed, ratio)
    full = personal_gain(metric, full_own, full_placebo, label, user, resamples, seed)
    out.update(metric=metric, full_gain_measurable=full["verdict"] == MEASURABLE)
    return out


def captured_share(metric: str, row: np.ndarray, bias: np.ndarray, ridge: np.ndarray, label: np.ndarray,
                   user: np.ndarray | None = None, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """(bias - row) ÷ (bias - attribute_ridge) on ``metric``: the share of the learnable personal signal (what the
    per-user attribute ridge gains over the user + item bias model) that ``row`` captures; 1 = all, 0 = none."""
    def share(values: np.ndarray) -> np.ndarray:
        return (values[..., 1] - values[..., 0]) / (values[..., 1] - values[..., 2])

    out: dict[str, Any] = _statistic(metric, [row, bias, ridge], label, user, resamples, seed, share)
    out["metric"] = metric
    return out
