"""The comparison table that ends ``fit``: one row per method, as JSON and markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from puma_lightning.data.table import InteractionTable
from puma_lightning.io.atomic import atomic_write_text
from puma_lightning.pipeline.placebo import NOTE as PLACEBO_NOTE, captured_shares, cell, placebo_columns
from puma_lightning.pipeline.stages import migrated_rows, row_descriptions
from puma_lightning.tasks.uncertainty import metric_on_rows, paired_comparison

PAIRED_REFERENCE = "full_retrain"
"""The row every other row of one run's table is compared with, paired on the same test rows."""

def paired_with_reference(predictions: dict[str, dict[str, np.ndarray] | None], metric: str,
                          reference: str = PAIRED_REFERENCE) -> dict[str, dict[str, Any]]:
    """Per method, ``metric(method) - metric(reference)`` on the same test rows of one run, with its paired 95 %
    bootstrap interval and verdict: one seed's table then says which gaps its test rows can tell apart. Methods
    without per-row predictions, or tested on other rows, are left out."""
    ref = predictions.get(reference)
    if ref is None:
        return {}
    out = {}
    for name, pred in predictions.items():
        if name == reference or pred is None or not np.array_equal(pred["row"], ref["row"]):
            continue
        out[name] = {**paired_comparison(metric, pred["prediction"], ref["prediction"], ref["label"], user=ref["user"]),
                     "metric": metric, "reference": reference}
    return out


def build_results(table: InteractionTable, rows: dict[str, dict[str, Any]],
                  predictions: dict[str, dict[str, np.ndarray] | None] | None = None,
                  placebo: dict[str, dict[str, np.ndarray] | None] | None = None, resamples: int = 1000) -> dict[str, Any]:
    """The ``results.json`` document; with ``predictions`` (per method, its per-row test predictions) each row also
    carries ``vs_full_retrain``: its paired difference from full retraining on the same rows; with ``placebo`` (per
    method, the predictions with its prompts dealt to other users) the placebo columns of
    :mod:`puma_lightning.pipeline.placebo` (``placebo``, ``personal_gain``, ``retained``, ``captured_share``)."""
    metric_names = ("rmse", "mae") if table.task == "rating" else ("auc", "uauc")
    paired = paired_with_reference(predictions or {}, metric_names[0])
    gains = placebo_table(metric_names, predictions or {}, placebo or {}, resamples)
    methods = {}
    for name in row_descriptions():
        if name not in rows:
            continue
        row = rows[name]
        entry = {m: row["metrics"].get(m) for m in metric_names}
        entry.update(wall_s=row["wall_s"], train_samples=row["train_samples"], trainable_params=row["trainable_params"])
        for extra in ("selection", "selected_users", "allocation", "prefix_s", "prefixes_computed", "dtype", "dtype_reason", "prefix_cache",
                      "user_bias", "residual", "epochs", "imported"):
            if extra in row:
                entry[extra] = row[extra]
        if name in paired:
            entry[f"vs_{PAIRED_REFERENCE}"] = paired[name]
        entry.update(gains.get(name, {}))
        methods[name] = entry
    return {
        "task": table.task,
        "dataset": table.meta.get("name"),
        "floor_rmse": table.meta.get("floor_rmse"),
        "floor_auc": table.meta.get("floor_auc"),
        "num_users": table.n_users,
        "num_test_rows": int(len(table.rows("test"))),
        "methods": methods,
        "machine": next((r["machine"] for r in rows.values() if r.get("machine")), None),
    }


def placebo_table(metric_names: tuple[str, ...], predictions: dict[str, dict[str, np.ndarray] | None],
                  placebo: dict[str, dict[str, np.ndarray] | None], resamples: int = 1000) -> dict[str, dict[str, Any]]:
    """Per method, its placebo columns: ``placebo`` (metrics with other users' prompts), ``personal_gain`` and, for
    migrated rows, ``retained`` on the main metric; ``captured_share`` where the bias and ridge references exist."""
    metric = metric_names[0]
    full, full_placebo = predictions.get(PAIRED_REFERENCE), placebo.get(PAIRED_REFERENCE)
    out: dict[str, dict[str, Any]] = {}
    for name, pred in predictions.items():
        dealt = placebo.get(name)
        entry = placebo_columns(metric, pred, dealt, *((full, full_placebo) if name in migrated_rows() else ()),
                                resamples=resamples)
        if entry:
            entry["placebo"] = {m: metric_on_rows(m, dealt["prediction"], dealt["label"], dealt["user"]) for m in metric_names}
            for other in metric_names[1:]:  # the other metric's gain too (uAUC resamples users)
                entry[f"personal_gain_{other}"] = placebo_columns(other, pred, dealt, resamples=resamples)["personal_gain"]
        out[name] = entry
    for name, share in captured_shares(metric, predictions, resamples).items():
        out[name]["captured_share"] = share
    return out


def to_markdown(results: dict[str, Any]) -> str:
    """A markdown table of the results, with the noise floor when known."""
    metric_names = ("rmse", "mae") if results["task"] == "rating" else ("auc", "uauc")
    paired = any(f"vs_{PAIRED_REFERENCE}" in row for row in results["methods"].values())
    gains = {k for row in results["methods"].values() for k in ("personal_gain", "retained", "captured_share") if k in row}
    head = ["method", *[m.upper() for m in metric_names],
            *([f"{metric_names[0].upper()} vs {PAIRED_REFERENCE} [95 %]"] if paired else []),
            *([f"placebo {metric_names[0].upper()}", "personal gain [95 %]"] if "personal_gain" in gains else []),
            *(["retained [95 %]"] if "retained" in gains else []),
            *(["captured share [95 %]"] if "captured_share" in gains else []),
            "trainable params", "train samples", "wall s", "of it prefix s", "dtype", "what it is"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results["methods"].items():
        vals = [f"{row[m]:.4f}" if isinstance(row.get(m), float) else "n/a" for m in metric_names]
        desc = row_descriptions().get(name, name) + (" + a per-user bias" if row.get("user_bias") else "")
        desc += f" + residual on {row['residual']}" if row.get("residual") else ""
        if row.get("imported"):  # source.bank: the user's own prompts, not trained here
            desc = f"source prompts imported from {Path(row['imported']['path']).name} (source.bank), head {row['imported']['head']}"
        if name == "puma":
            desc += f" ({row.get('selected_users')} users by {row.get('selection')}"
            desc += f", allocation {row['allocation']})" if row.get("allocation") else ")"
        if paired:
            vals.append(_paired_cell(row.get(f"vs_{PAIRED_REFERENCE}"), name))
        if "personal_gain" in gains:
            dealt = (row.get("placebo") or {}).get(metric_names[0])
            vals += [f"{dealt:.4f}" if isinstance(dealt, float) else "n/a", cell(row.get("personal_gain"))]
        if "retained" in gains:
            vals.append(cell(row.get("retained"), 1, percent=True) if name in migrated_rows() else "–")
        if "captured_share" in gains:
            vals.append(cell(row.get("captured_share"), 1, percent=True))
        prefix = f"{row['prefix_s']:.1f}" if isinstance(row.get("prefix_s"), (int, float)) else "n/a"
        lines.append(f"| {name} | " + " | ".join(vals) + f" | {row['trainable_params']:,} | {row['train_samples']:,} | "
                     f"{row['wall_s']:.1f} | {prefix} | {row.get('dtype') or 'n/a'} | {desc} |")
    notes = [f"dataset {results['dataset']}, {results['num_users']} users, {results['num_test_rows']} test rows"]
    if results.get("floor_rmse") is not None:
        notes.append(f"noise floor (best achievable test RMSE): {results['floor_rmse']:.4f}")
    if results.get("floor_auc") is not None:
        notes.append(f"best achievable test AUC: {results['floor_auc']:.4f}")
    if paired:
        notes.append(f"vs {PAIRED_REFERENCE}: the method's {metric_names[0].upper()} minus {PAIRED_REFERENCE}'s on the same "
                     "test rows, with a paired bootstrap 95 % interval (one seed: it says how much these rows can tell "
                     "apart, not how another seed would move; `seeds=[0,1,2]` pools seeds)")
    if gains:
        notes.append(PLACEBO_NOTE)
    notes.append("wall s: the stage's training (puma: + selection and mapping); prefix s: seconds of the stage, its "
                 "test included, spent computing template prefixes (each stage starts with an empty prefix cache)")
    if results.get("machine"):
        m = results["machine"]
        notes.append(f"machine: CPU {m['cpu']} ({m['capability']}, {m['threads']} threads), GPU {m['gpu']}, "
                     f"torch {m['torch']}, transformers {m['transformers']}")
    reasons = {r.get("dtype_reason") for r in results["methods"].values() if r.get("dtype_reason")}
    notes += [f"dtype: {r}" for r in sorted(reasons)]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _paired_cell(comparison: dict[str, Any] | None, name: str) -> str:
    if name == PAIRED_REFERENCE:
        return "–"
    if comparison is None:
        return "n/a"
    return f"{comparison['diff']:+.4f} [{comparison['low']:+.4f}, {comparison['high']:+.4f}] {comparison['verdict']}"


def write_results(run_dir: Path, table: InteractionTable, rows: dict[str, dict[str, Any]],
                  predictions: dict[str, dict[str, np.ndarray] | None] | None = None,
                  placebo: dict[str, dict[str, np.ndarray] | None] | None = None, resamples: int = 1000) -> dict[str, Any]:
    """Write ``results.json`` and ``results.md`` atomically and print the table (global rank 0
    only under DDP; every rank returns the results)."""
    from puma_lightning.pipeline.distributed import is_global_zero

    results = build_results(table, rows, predictions, placebo, resamples)
    if not is_global_zero():
        return results
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
    markdown = to_markdown(results)
    atomic_write_text(run_dir / "results.md", markdown)
    print(markdown)
    return results
