"""The comparison table that ends ``fit``: one row per method, as JSON and markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from puma_lightning.data.table import InteractionTable
from puma_lightning.io.atomic import atomic_write_text

from puma_lightning.pipeline.classic import REFERENCES

METHOD_ORDER = ("source", "random_init", "full_retrain", "puma", "puma_polish", "vocab_map", "shared_prompt_source", "shared_prompt_target", *REFERENCES)
DESCRIPTIONS = {
    "source": "source prompts on the source model",
    "random_init": "random prompts on the target, head trained",
    "full_retrain": "every prompt retrained on the target",
    "puma": "prompts migrated with the PUMA adapter",
    "puma_polish": "migrated prompts, then fine-tuned per user on the target (cost includes puma's)",
    "vocab_map": "no training: source prompts through a least-squares map between the two embedding tables",
    "shared_prompt_source": "one prompt shared by all users, on the source model",
    "shared_prompt_target": "one prompt shared by all users, on the target model",
    **{name: ref.description for name, ref in REFERENCES.items()},
}


def build_results(table: InteractionTable, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``results.json`` document."""
    metric_names = ("rmse", "mae") if table.task == "rating" else ("auc", "uauc")
    methods = {}
    for name in METHOD_ORDER:
        if name not in rows:
            continue
        row = rows[name]
        entry = {m: row["metrics"].get(m) for m in metric_names}
        entry.update(wall_s=row["wall_s"], train_samples=row["train_samples"], trainable_params=row["trainable_params"])
        for extra in ("selection", "selected_users", "allocation", "prefix_s", "prefixes_computed", "dtype", "dtype_reason", "prefix_cache",
                      "user_bias", "residual", "epochs"):
            if extra in row:
                entry[extra] = row[extra]
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


def to_markdown(results: dict[str, Any]) -> str:
    """A markdown table of the results, with the noise floor when known."""
    metric_names = ("rmse", "mae") if results["task"] == "rating" else ("auc", "uauc")
    head = ["method", *[m.upper() for m in metric_names], "trainable params", "train samples", "wall s", "of it prefix s",
            "dtype", "what it is"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results["methods"].items():
        vals = [f"{row[m]:.4f}" if isinstance(row.get(m), float) else "n/a" for m in metric_names]
        desc = DESCRIPTIONS[name] + (" + a per-user bias" if row.get("user_bias") else "")
        desc += f" + residual on {row['residual']}" if row.get("residual") else ""
        if name == "puma":
            desc += f" ({row.get('selected_users')} users by {row.get('selection')}"
            desc += f", allocation {row['allocation']})" if row.get("allocation") else ")"
        prefix = f"{row['prefix_s']:.1f}" if isinstance(row.get("prefix_s"), (int, float)) else "n/a"
        lines.append(f"| {name} | " + " | ".join(vals) + f" | {row['trainable_params']:,} | {row['train_samples']:,} | "
                     f"{row['wall_s']:.1f} | {prefix} | {row.get('dtype') or 'n/a'} | {desc} |")
    notes = [f"dataset {results['dataset']}, {results['num_users']} users, {results['num_test_rows']} test rows"]
    if results.get("floor_rmse") is not None:
        notes.append(f"noise floor (best achievable test RMSE): {results['floor_rmse']:.4f}")
    if results.get("floor_auc") is not None:
        notes.append(f"best achievable test AUC: {results['floor_auc']:.4f}")
    notes.append("wall s: the stage's training (puma: + selection and mapping); prefix s: seconds of the stage, its "
                 "test included, spent computing template prefixes (each stage starts with an empty prefix cache)")
    if results.get("machine"):
        m = results["machine"]
        notes.append(f"machine: CPU {m['cpu']} ({m['capability']}, {m['threads']} threads), GPU {m['gpu']}, "
                     f"torch {m['torch']}, transformers {m['transformers']}")
    reasons = {r.get("dtype_reason") for r in results["methods"].values() if r.get("dtype_reason")}
    notes += [f"dtype: {r}" for r in sorted(reasons)]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write_results(run_dir: Path, table: InteractionTable, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write ``results.json`` and ``results.md`` atomically and print the table (global rank 0
    only under DDP; every rank returns the results)."""
    from puma_lightning.pipeline.distributed import is_global_zero

    results = build_results(table, rows)
    if not is_global_zero():
        return results
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
    markdown = to_markdown(results)
    atomic_write_text(run_dir / "results.md", markdown)
    print(markdown)
    return results
