"""Seeds as an axis: ``fit`` once per seed, then one table of mean ± std and paired intervals.

Each seed is a whole independent run in ``<run_dir>/seed_<s>/`` (its own data subset where the
dataset samples users, source prompts, selection and adapter). The table compares every method
with ``full_retrain`` and with ``random_init`` by a paired bootstrap over the test rows of all seeds
pooled (each seed's rows paired with the same rows of the other method in that seed), and says
``better`` / ``worse`` / ``no difference`` at 95 %.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from puma_lightning.io.atomic import atomic_write_text
from puma_lightning.pipeline.results import METHOD_ORDER
from puma_lightning.pipeline.sub_runs import metric_names, sub_config
from puma_lightning.tasks.uncertainty import mean_std, paired_bootstrap, verdict

log = logging.getLogger(__name__)

REFERENCES = ("full_retrain", "random_init")
"""Methods every other method is compared with, paired on the same rows."""


def run_seeds(cfg: DictConfig) -> dict[str, Any]:
    """Run ``fit`` for each of ``cfg.seeds`` in its own folder, then write the table over seeds."""
    from puma_lightning.pipeline.experiment import Experiment

    seeds = [int(s) for s in cfg.seeds]
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"'seeds' must be distinct integers, got {seeds}")
    run_dir = Path(cfg.run_dir)
    per_seed: dict[int, dict[str, Any]] = {}
    predictions: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for i, seed in enumerate(seeds):
        log.info("seed %d (%d of %d) in %s", seed, i + 1, len(seeds), run_dir / f"seed_{seed}")
        exp = Experiment(sub_config(cfg, run_dir / f"seed_{seed}", seed=seed, seeds=None))
        per_seed[seed] = exp.fit()
        predictions[seed] = {m: p for m in per_seed[seed]["methods"] if (p := exp.test_predictions(m)) is not None}
    results = summarise(per_seed, predictions)
    from puma_lightning.pipeline.distributed import is_global_zero

    if is_global_zero():
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
        markdown = to_markdown(results)
        atomic_write_text(run_dir / "results.md", markdown)
        print(markdown)
    return results


def _pooled(predictions: dict[int, dict[str, dict[str, np.ndarray]]], method: str, reference: str):
    """Pooled (prediction, reference prediction, label, user) over seeds, rows paired within each seed."""
    parts = []
    for seed, by_method in predictions.items():
        a, b = by_method.get(method), by_method.get(reference)
        if a is None or b is None:
            return None
        if not np.array_equal(a["row"], b["row"]):
            raise ValueError(f"seed {seed}: {method} and {reference} were tested on different rows")
        parts.append((a["prediction"], b["prediction"], a["label"], a["user"] + 10**9 * seed))
    return tuple(np.concatenate(x) for x in zip(*parts)) if parts else None


def summarise(per_seed: dict[int, dict[str, Any]], predictions: dict[int, dict[str, dict[str, np.ndarray]]]) -> dict[str, Any]:
    """The ``results.json`` document over seeds: per-seed values, mean ± std, paired intervals and verdicts."""
    first = next(iter(per_seed.values()))
    task = first["task"]
    names = metric_names(task)
    methods: dict[str, Any] = {}
    for method in METHOD_ORDER:
        rows = {seed: r["methods"][method] for seed, r in per_seed.items() if method in r["methods"]}
        if not rows:
            continue
        entry: dict[str, Any] = {"n_seeds": len(rows), "per_seed": {str(s): v for s, v in rows.items()}}
        for name in (*names, "wall_s"):
            entry[name] = dict(zip(("mean", "std"), mean_std([v.get(name) for v in rows.values()])))
        comparisons = {}
        for reference in REFERENCES:
            if reference == method:
                continue
            pooled = _pooled(predictions, method, reference)
            if pooled is None:
                continue
            pred, ref, label, user = pooled
            comparisons[reference] = {}
            for name in names:
                interval = paired_bootstrap(name, pred, ref, label, user=user)
                interval["verdict"] = verdict(name, interval["low"], interval["high"])
                comparisons[reference][name] = interval
        entry["vs"] = comparisons
        methods[method] = entry
    return {"task": task, "dataset": first.get("dataset"), "seeds": [int(s) for s in per_seed],
            "num_test_rows": {str(s): r.get("num_test_rows") for s, r in per_seed.items()},
            "methods": methods, "machine": first.get("machine")}


def to_markdown(results: dict[str, Any]) -> str:
    """Mean ± std over seeds per method, then the paired differences with their intervals and verdicts."""
    names = metric_names(results["task"])
    n = len(results["seeds"])
    head = ["method", *[f"{m.upper()} (mean ± std)" for m in names], "wall s", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in results["methods"].items():
        vals = [f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}" for m in names]
        lines.append(f"| {method} | " + " | ".join(vals) + f" | {row['wall_s']['mean']:.1f} | {row['n_seeds']} |")
    primary = names[0]
    lines += ["", f"Paired differences in {primary.upper()} (method - reference) on the same test rows, pooled over "
              f"{n} seed{'s' if n > 1 else ''}, 95 % bootstrap interval:", "",
              "| method | vs | difference | 95 % interval | verdict |", "|---|---|---|---|---|"]
    for method, row in results["methods"].items():
        for reference, by_metric in row["vs"].items():
            c = by_metric[primary]
            lines.append(f"| {method} | {reference} | {c['diff']:+.4f} | [{c['low']:+.4f}, {c['high']:+.4f}] | {c['verdict']} |")
    rows = ", ".join(f"seed {s}: {r}" for s, r in results["num_test_rows"].items())
    notes = [f"dataset {results['dataset']}; test rows {rows}; seeds {results['seeds']} (per-seed values in results.json)"]
    if results.get("machine"):
        m = results["machine"]
        notes.append(f"machine: CPU {m['cpu']} ({m['capability']}, {m['threads']} threads), GPU {m['gpu']}, "
                     f"torch {m['torch']}, transformers {m['transformers']}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in notes) + "\n"
