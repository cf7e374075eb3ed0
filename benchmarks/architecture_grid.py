"""Architecture grid: migrate every source -> target pair of a model list (the paper's Figure 4).

    python benchmarks/architecture_grid.py --config configs/smoke.yaml \
        --models tiny-llama,tiny-qwen2,tiny-gemma3 [--no-diagonal] [--out DIR] [key=value ...]

Each model's prompts are trained once (``<out>/models/<model>``: its ``source`` stage); that same
stage is the model's full-retraining reference (prompt tuning from scratch on the model, with the
config's ``prompt`` settings). Every pair is an Experiment in ``<out>/pairs/<source>__<target>``
with ``source_dir`` at the source model's stage: adapter training through the target, migration,
test. Finished stages are reused. Writes ``grid.csv`` (one row per pair), ``grid.md`` and
``grid.png`` (heatmap) of the generalisation gain = RMSE(full retraining on the target) /
RMSE(migrated prompts) (> 1: migration beats retraining); for click data AUC(migrated) / AUC(full).
``grid.md`` and ``grid.json`` (``machine`` key) name the machine and the backbones' compute dtype.

Works with tiny random models on a CPU, the packaged small models (``smollm2-135m``, ``gemma3-270m``)
and any local folder or hub id (set ``trainer.accelerator=gpu`` on a GPU).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from puma_lightning.machine import BackboneDtypes, describe_machine, machine_record
from puma_lightning.commands.chain import gain
from puma_lightning.pipeline.figures import heatmap, markdown_table, write_text
from puma_lightning.pipeline.sub_runs import metric_names, primary_metric, safe_name, sub_config

REPO = Path(__file__).resolve().parents[1]

DEFAULT_MODELS = "tiny-llama,tiny-qwen2,tiny-gemma3"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=None, metavar="FILE", help="experiment YAML (repeatable; default configs/smoke.yaml)")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated model names/folders/hub ids (default {DEFAULT_MODELS})")
    p.add_argument("--no-diagonal", action="store_true", help="skip source == target pairs")
    p.add_argument("--out", default=None, help="output folder (default runs/architecture_grid)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    return p.parse_args(argv)


def run_grid(cfg: Any, models: list[str], out: Path, diagonal: bool = True) -> dict[str, Any]:
    """Train each model's prompts, migrate every pair, write the gain matrix; returns the grid document."""
    from puma_lightning.pipeline.experiment import Experiment

    if len(set(models)) != len(models) or len(models) < 1:
        raise ValueError(f"--models must list distinct models, got {models}")
    own: dict[str, dict[str, Any]] = {}
    stage_dirs: dict[str, Path] = {}
    task = "rating"
    dtypes = BackboneDtypes()
    for m in models:
        exp = dtypes.watch(Experiment(sub_config(cfg, out / "models" / safe_name(m), **{"source.name": m, "source_dir": None})))
        task = exp.table.task
        own[m] = exp.pretrain("source", "source")
        stage_dirs[m] = exp.stage_dir("source")
        del exp
    pairs = []
    for s in models:
        for t in models:
            if s == t and not diagonal:
                continue
            exp = dtypes.watch(Experiment(sub_config(cfg, out / "pairs" / f"{safe_name(s)}__{safe_name(t)}",
                                                     **{"source.name": s, "target.name": t, "source_dir": str(stage_dirs[s])})))
            rec = exp.migrate_stage()
            del exp
            pairs.append({"source": s, "target": t, "migrated": rec["metrics"], "full_retrain": own[t]["metrics"],
                          "adapter_train_samples": rec["train_samples"], "full_train_samples": own[t]["train_samples"],
                          "migrate_wall_s": rec["wall_s"], "full_wall_s": own[t]["wall_s"]})
    return write_grid(out, task, models, pairs, dtypes.text())


def write_grid(out: Path, task: str, models: list[str], pairs: list[dict[str, Any]],
               dtype: str | None = None) -> dict[str, Any]:
    """``grid.csv``, ``grid.md``, ``grid.json`` and ``grid.png`` (``dtype``: the backbones' compute dtype)."""
    main_metric, _ = primary_metric(task)
    names = metric_names(task)
    for p in pairs:
        p["gain"] = gain(task, p["full_retrain"].get(main_metric), p["migrated"].get(main_metric))
    buf = io.StringIO()
    fields = ["source", "target", *[f"migrated_{m}" for m in names], *[f"full_retrain_{m}" for m in names], "gain",
              "adapter_train_samples", "full_train_samples", "migrate_wall_s", "full_wall_s"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for p in pairs:
        writer.writerow({"source": p["source"], "target": p["target"], "gain": p["gain"],
                         **{f"migrated_{m}": p["migrated"].get(m) for m in names},
                         **{f"full_retrain_{m}": p["full_retrain"].get(m) for m in names},
                         **{k: p[k] for k in ("adapter_train_samples", "full_train_samples", "migrate_wall_s", "full_wall_s")}})
    write_text(out / "grid.csv", buf.getvalue())
    lookup = {(p["source"], p["target"]): p["gain"] for p in pairs}
    matrix = [[lookup.get((s, t)) for t in models] for s in models]
    what = "RMSE(full retraining on target) / RMSE(migrated)" if task == "rating" else "AUC(migrated) / AUC(full retraining)"
    md = (describe_machine(dtype) + "\n\n"
          + "Generalisation gain (rows: source, columns: target): " + what + "\n\n"
          + markdown_table(["source \\ target", *models], [[s, *row] for s, row in zip(models, matrix)])
          + "\n" + markdown_table(["source", "target", f"migrated {main_metric.upper()}", f"full retrain {main_metric.upper()}", "gain"],
                                  [[p["source"], p["target"], p["migrated"].get(main_metric), p["full_retrain"].get(main_metric), p["gain"]]
                                   for p in pairs]))
    write_text(out / "grid.md", md)
    heatmap(out / "grid.png", models, models, matrix, f"generalisation gain ({main_metric.upper()})")
    doc = {"task": task, "models": models, "gain_matrix": matrix, "pairs": pairs, "machine": machine_record(dtype)}
    write_text(out / "grid.json", json.dumps(doc, indent=1))
    print(md)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.cli.main import setup_runtime

    cfg = load_config(args.config or [str(REPO / "configs" / "smoke.yaml")], args.overrides)
    setup_runtime(cfg)
    logging.getLogger("puma_lightning").setLevel(logging.WARNING)
    out = Path(args.out or "runs/architecture_grid")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    run_grid(cfg, models, out, diagonal=not args.no_diagonal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
