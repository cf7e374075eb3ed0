"""Seeds as an axis: any command once per seed, then one table of mean ± std and paired intervals.

Each seed is a whole independent run in ``<run_dir>/seed_<s>/`` (its own data subset where the
dataset samples users, source prompts, selection and adapter): the command runs exactly as it
would with ``seed=<s>``. What each command contributes is a :class:`SeededCommand`: how to run one
seed and which rows of its result to tabulate, each with the stage folder whose
``test_predictions.npz`` holds its per-row predictions, and which rows each row is compared with.

The table compares rows by a paired bootstrap over the test rows of all seeds pooled (each seed's
rows paired with the same rows of the reference in that seed), and says ``better`` / ``worse`` /
``no difference`` at 95 %. Rows tested on other rows than their reference (e.g. a single source
evaluated on the users it has) get no interval; the table says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig

from puma_lightning.io.atomic import atomic_write_text
from puma_lightning.pipeline.predictions import load_predictions
from puma_lightning.pipeline.run_dir import RunDir
from puma_lightning.pipeline.sub_runs import metric_names, sub_config
from puma_lightning.pipeline.placebo import NOTE as PLACEBO_NOTE, captured_shares, cell, load_placebo, placebo_columns, pooled
from puma_lightning.tasks.uncertainty import mean_std, metric_on_rows, paired_comparison

log = logging.getLogger(__name__)

FIT_REFERENCES = ("full_retrain", "random_init")
"""Methods every other ``fit`` method is compared with, paired on the same rows."""


@dataclass
class SeedRow:
    """One row of one seed's result: flat values (metrics, ``wall_s``, ...) and where its predictions are."""

    values: dict[str, Any]
    stage_dir: str | Path | None = None
    references: Sequence[str] = ()
    """Names of the rows this row is compared with, paired on the same test rows."""
    full_reference: str | None = None
    """The row whose personal gain this (migrated) row's is a share of (``retained``), e.g. full retraining."""


@dataclass
class SeedRun:
    """What one seed of a command produced."""

    task: str
    rows: dict[str, SeedRow]
    info: dict[str, Any] = field(default_factory=dict)
    """Anything else to keep per seed (dataset, test row count, machine)."""


@dataclass
class SeededCommand:
    """How a command runs for one seed and what of it goes into the table over seeds."""

    name: str
    """File stem of the table over seeds (``<run_dir>/<name>.json`` and ``.md``)."""
    run: Callable[[DictConfig], SeedRun]
    extra_values: Sequence[str] = ("wall_s",)
    """Non-metric values averaged over seeds besides the metrics."""


def run_over_seeds(cfg: DictConfig, command: SeededCommand) -> dict[str, Any]:
    """Run ``command`` for each of ``cfg.seeds`` in its own folder, then write the table over seeds."""
    seeds = [int(s) for s in cfg.seeds]
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"'seeds' must be distinct integers, got {seeds}")
    run_dir = RunDir.of(cfg).path
    runs: dict[int, SeedRun] = {}
    for i, seed in enumerate(seeds):
        log.info("seed %d (%d of %d) in %s", seed, i + 1, len(seeds), RunDir.of(cfg).seed(seed))
        runs[seed] = command.run(sub_config(cfg, RunDir.of(cfg).seed(seed), seed=seed, seeds=None))
    results = summarise(runs, command.extra_values, int(cfg.placebo.resamples))
    from puma_lightning.pipeline.distributed import is_global_zero

    if is_global_zero():
        atomic_write_text(run_dir / f"{command.name}.json", json.dumps(results, indent=1))
        markdown = to_markdown(results)
        atomic_write_text(run_dir / f"{command.name}.md", markdown)
        print(markdown)
    return results


def _pooled(runs: Mapping[int, SeedRun], row: str, reference: str) -> tuple[np.ndarray, ...] | str:
    """Pooled (prediction, reference prediction, label, user) over seeds, or why there is none."""
    parts = []
    for seed, run in runs.items():
        if row not in run.rows or reference not in run.rows:
            return f"seed {seed} lacks {row if row not in run.rows else reference}"
        a, b = load_predictions(run.rows[row].stage_dir), load_predictions(run.rows[reference].stage_dir)
        if a is None or b is None:
            return f"seed {seed}: no per-row predictions for {row if a is None else reference}"
        if not np.array_equal(a["row"], b["row"]):
            return "tested on other rows"
        parts.append((a["prediction"], b["prediction"], a["label"], a["user"] + 10**9 * seed))
    return tuple(np.concatenate(x) for x in zip(*parts))


def _pooled_of(runs: Mapping[int, SeedRun], row: str, load: Callable[[Any], dict[str, np.ndarray] | None]
               ) -> dict[str, np.ndarray] | None:
    """``load`` (own or placebo predictions) of ``row``'s stage in every seed, pooled; None if a seed lacks them."""
    if any(row not in run.rows for run in runs.values()):
        return None
    return pooled([(seed, load(run.rows[row].stage_dir)) for seed, run in runs.items()])


def _placebo_entry(runs: Mapping[int, SeedRun], row: str, names: Sequence[str], resamples: int) -> dict[str, Any]:
    """The placebo columns of one row over seeds: placebo metrics (mean ± std over seeds) and, pooled over seeds,
    the personal gain on each metric and ``retained`` against the row's ``full_reference``."""
    own, dealt = _pooled_of(runs, row, load_predictions), _pooled_of(runs, row, load_placebo)
    if own is None or dealt is None:
        return {}
    full_name = next(run.rows[row].full_reference for run in runs.values())
    full = (_pooled_of(runs, full_name, load_predictions), _pooled_of(runs, full_name, load_placebo)) if full_name else ()
    entry: dict[str, Any] = placebo_columns(names[0], own, dealt, *full, resamples=resamples)
    if not entry:
        return {}
    per_seed = [load_placebo(run.rows[row].stage_dir) for run in runs.values()]
    entry["placebo"] = {m: dict(zip(("mean", "std"), mean_std([metric_on_rows(m, p["prediction"], p["label"], p["user"])
                                                                for p in per_seed]))) for m in names}
    for other in names[1:]:
        entry[f"personal_gain_{other}"] = placebo_columns(other, own, dealt, resamples=resamples)["personal_gain"]
    return entry


def summarise(runs: Mapping[int, SeedRun], extra_values: Sequence[str] = ("wall_s",), resamples: int = 1000) -> dict[str, Any]:
    """The document over seeds: per-seed values, mean ± std, paired intervals and verdicts per row, and the placebo
    columns (:mod:`puma_lightning.pipeline.placebo`) pooled over seeds."""
    first = next(iter(runs.values()))
    names = metric_names(first.task)
    order = list(dict.fromkeys(name for run in runs.values() for name in run.rows))
    rows: dict[str, Any] = {}
    for row in order:
        values = {seed: run.rows[row].values for seed, run in runs.items() if row in run.rows}
        entry: dict[str, Any] = {"n_seeds": len(values), "per_seed": {str(s): v for s, v in values.items()}}
        for name in (*names, *extra_values):
            entry[name] = dict(zip(("mean", "std"), mean_std([v.get(name) for v in values.values()])))
        comparisons, unpaired = {}, {}
        references = next(run.rows[row].references for run in runs.values() if row in run.rows)
        for reference in references:
            pooled = _pooled(runs, row, reference)
            if isinstance(pooled, str):
                unpaired[reference] = pooled
                continue
            pred, ref, label, user = pooled
            comparisons[reference] = {name: paired_comparison(name, pred, ref, label, user=user) for name in names}
        entry["vs"] = comparisons
        if unpaired:
            entry["not_compared"] = unpaired
        entry.update(_placebo_entry(runs, row, names, resamples))
        rows[row] = entry
    for row, share in captured_shares(names[0], {r: _pooled_of(runs, r, load_predictions) for r in order}, resamples).items():
        rows[row]["captured_share"] = share
    return {"task": first.task, "seeds": [int(s) for s in runs], "methods": rows,
            **{k: {str(s): run.info.get(k) for s, run in runs.items()} for k in ("num_test_rows",)},
            "dataset": first.info.get("dataset"), "machine": first.info.get("machine")}


def to_markdown(results: dict[str, Any]) -> str:
    """Mean ± std over seeds per row, then the paired differences with their intervals and verdicts."""
    names = metric_names(results["task"])
    n = len(results["seeds"])
    head = ["method", *[f"{m.upper()} (mean ± std)" for m in names], "wall s", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in results["methods"].items():
        vals = [f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}" for m in names]
        wall = row.get("wall_s", {}).get("mean")
        wall_text = "n/a" if wall is None or wall != wall else f"{wall:.1f}"
        lines.append(f"| {method} | " + " | ".join(vals) + f" | {wall_text} | {row['n_seeds']} |")
    primary = names[0]
    lines += ["", f"Paired differences in {primary.upper()} (method - reference) on the same test rows, pooled over "
              f"{n} seed{'s' if n > 1 else ''}, 95 % bootstrap interval:", "",
              "| method | vs | difference | 95 % interval | verdict |", "|---|---|---|---|---|"]
    for method, row in results["methods"].items():
        for reference, by_metric in row["vs"].items():
            c = by_metric[primary]
            lines.append(f"| {method} | {reference} | {c['diff']:+.4f} | [{c['low']:+.4f}, {c['high']:+.4f}] | {c['verdict']} |")
        for reference, why in row.get("not_compared", {}).items():
            lines.append(f"| {method} | {reference} | n/a | n/a | not paired: {why} |")
    lines += _placebo_markdown(results, primary, n)
    notes = []
    if any("personal_gain" in row for row in results["methods"].values()):
        notes.append(PLACEBO_NOTE)
    counts = results.get("num_test_rows") or {}
    if any(v is not None for v in counts.values()):
        notes.append(f"test rows {', '.join(f'seed {s}: {r}' for s, r in counts.items())}")
    notes.append(f"dataset {results.get('dataset')}; seeds {results['seeds']} (per-seed values in the .json)")
    if results.get("machine"):
        m = results["machine"]
        notes.append(f"machine: CPU {m['cpu']} ({m['capability']}, {m['threads']} threads), GPU {m['gpu']}, "
                     f"torch {m['torch']}, transformers {m['transformers']}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in notes) + "\n"


def _placebo_markdown(results: dict[str, Any], primary: str, n: int) -> list[str]:
    """The personalisation table over seeds (none when no row has a placebo)."""
    rows = {m: r for m, r in results["methods"].items()
            if any(k in r for k in ("personal_gain", "captured_share"))}
    if not rows:
        return []
    lines = ["", f"What the prompts know about their user ({primary.upper()}, pooled over {n} seed{'s' if n > 1 else ''}, "
             "95 % bootstrap interval):", "",
             f"| method | placebo {primary.upper()} (mean ± std) | personal gain | retained | captured share |",
             "|---|---|---|---|---|"]
    for method, row in rows.items():
        dealt = (row.get("placebo") or {}).get(primary)
        dealt_text = f"{dealt['mean']:.4f} ± {dealt['std']:.4f}" if dealt else "n/a"
        lines.append(f"| {method} | {dealt_text} | {cell(row.get('personal_gain'))} | "
                     f"{cell(row.get('retained'), 1, percent=True) if 'retained' in row else '–'} | "
                     f"{cell(row.get('captured_share'), 1, percent=True) if 'captured_share' in row else '–'} |")
    return lines


# -- the commands that take ``seeds`` -------------------------------------------------------------
