"""Error bars for comparisons: metrics over rows, mean ± std over seeds, and paired bootstrap intervals.

Two methods evaluated on the same test rows are compared *paired*: the rows are resampled with
replacement and the metric difference recomputed on each resample, so the interval reflects how
much the difference depends on which rows happened to be in the test split. A difference whose 95 %
interval contains 0 is "no difference", whatever its sign.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

LOWER_IS_BETTER = {"rmse": True, "mae": True, "auc": False, "uauc": False}


def metric_on_rows(name: str, prediction: np.ndarray, label: np.ndarray, user: np.ndarray | None = None) -> float:
    """``rmse``, ``mae``, ``auc`` or ``uauc`` (mean per-user AUC over users with both classes) of rows."""
    prediction, label = np.asarray(prediction, dtype=np.float64), np.asarray(label, dtype=np.float64)
    if name == "rmse":
        return float(np.sqrt(np.mean((prediction - label) ** 2)))
    if name == "mae":
        return float(np.mean(np.abs(prediction - label)))
    from sklearn.metrics import roc_auc_score

    if name == "auc":
        return float(roc_auc_score(label, prediction)) if 0 < label.sum() < len(label) else float("nan")
    if name == "uauc":
        if user is None:
            raise ValueError("uauc needs the rows' users")
        scores = [roc_auc_score(label[user == u], prediction[user == u]) for u in np.unique(user)
                  if 0 < label[user == u].sum() < (user == u).sum()]
        return float(np.mean(scores)) if scores else float("nan")
    raise ValueError(f"unknown metric {name!r}; expected one of {sorted(LOWER_IS_BETTER)}")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if not len(arr):
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def paired_bootstrap(name: str, prediction: np.ndarray, reference: np.ndarray, label: np.ndarray,
                     user: np.ndarray | None = None, resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """``metric(prediction) - metric(reference)`` on the same rows, with a percentile bootstrap interval.

    Rows are resampled together (paired). RMSE and MAE are vectorised; AUC and uAUC loop.
    """
    prediction, reference, label = (np.asarray(a, dtype=np.float64) for a in (prediction, reference, label))
    if not (len(prediction) == len(reference) == len(label)) or not len(label):
        raise ValueError("paired comparison needs predictions of both methods on the same, non-empty rows")
    diff = metric_on_rows(name, prediction, label, user) - metric_on_rows(name, reference, label, user)
    index = np.random.default_rng(seed).integers(0, len(label), size=(resamples, len(label)))
    if name in ("rmse", "mae"):
        power = 2 if name == "rmse" else 1
        err_a = np.abs(prediction - label) ** power
        err_b = np.abs(reference - label) ** power
        a, b = err_a[index].mean(axis=1), err_b[index].mean(axis=1)
        samples = (np.sqrt(a) - np.sqrt(b)) if name == "rmse" else a - b
    else:
        samples = np.array([metric_on_rows(name, prediction[i], label[i], None if user is None else user[i])
                            - metric_on_rows(name, reference[i], label[i], None if user is None else user[i])
                            for i in index])
        samples = samples[~np.isnan(samples)]
    tail = (1.0 - level) / 2
    low, high = (np.quantile(samples, [tail, 1.0 - tail]) if len(samples) else (float("nan"), float("nan")))
    return {"diff": float(diff), "low": float(low), "high": float(high), "rows": int(len(label)),
            "resamples": int(resamples), "level": level}


def paired_comparison(name: str, prediction: np.ndarray, reference: np.ndarray, label: np.ndarray,
                      user: np.ndarray | None = None, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """:func:`paired_bootstrap` with its :func:`verdict` added (``"verdict"``): what every table prints."""
    interval: dict[str, Any] = paired_bootstrap(name, prediction, reference, label, user=user, resamples=resamples, seed=seed)
    interval["verdict"] = verdict(name, interval["low"], interval["high"])
    return interval


def verdict(name: str, low: float, high: float) -> str:
    """``better``, ``worse`` or ``no difference`` for an interval of ``metric(method) - metric(reference)``."""
    if math.isnan(low) or math.isnan(high) or low <= 0.0 <= high:
        return "no difference"
    improved = high < 0.0 if LOWER_IS_BETTER[name] else low > 0.0
    return "better" if improved else "worse"
