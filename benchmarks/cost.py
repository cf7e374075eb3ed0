"""Cost of PUMA vs full retraining on the target model (the paper's Table 3).

    python benchmarks/cost.py --config configs/demo.yaml [--out DIR] [--tolerance 0.0] \
        [--project 10000,100000,1000000] [seeds=[0,1,2]] [key=value ...]

Both methods start from the same deployed system: every user's prompt trained on the source model
(the ``source`` stage, trained once and not counted). Then, in one process on the same data:

- **full retraining**: every user's prompt (and the head) trained from scratch on the target model
  (``prompt.epochs`` epochs over all users' training rows);
- **PUMA**: user selection (including the source-model statistics it needs) + adapter training
  through the target on the selected users + mapping every user's prompt.

Wall times are the training stages' own clocks (model loading and the final test pass excluded for
both). The table reports test RMSE/MAE (AUC for clicks), wall seconds, training samples pushed
through the target model, and the two ratios: wall time and samples (the latter does not depend on
how busy the machine is). PUMA "meets the quality bar" when its test RMSE is at most full
retraining's + ``--tolerance``.

At a fixed budget the adapter's cost does not grow with the number of users, while full retraining
grows linearly, so the ratio depends on the user count. ``--project`` prints the ratio this run's
measured costs give at other user counts (full retraining and the selection/migration parts scaled
by N, the adapter training kept fixed); it is a projection from one measurement, labelled as such.

With ``seeds=[0,1,2]`` each seed is a whole run in ``<out>/seed_<s>`` (its own source prompts,
selection and adapter) and ``<out>/cost_seeds.md`` gives mean ± std over seeds, the paired 95 %
interval of PUMA's metric minus full retraining's on the same test rows, and the ratios' mean ± std.

Writes ``<out>/cost.json`` and ``<out>/cost.md``; stages are reused when rerun (``stage.json``). Both
name the machine and the backbones' compute dtype (``machine`` key; the ``machine: ...`` line).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from puma_lightning.machine import BackboneDtypes, describe_machine, machine_record
from puma_lightning.pipeline.figures import markdown_table, write_text
from puma_lightning.pipeline.sub_runs import metric_names, primary_metric


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, metavar="FILE", help="experiment YAML (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default: runs/cost_<config stem>)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="PUMA meets the bar when its RMSE <= full retraining's + this (AUC >= full - this for clicks)")
    p.add_argument("--project", default="10000,100000,1000000",
                   help="comma-separated user counts to project the wall-time ratio to ('' = none)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p.parse_args(argv)


def meets_bar(task: str, puma: float | None, full: float | None, tolerance: float) -> bool | None:
    """Whether PUMA's headline metric is equal or better than full retraining's (within ``tolerance``)."""
    if puma is None or full is None:
        return None
    return puma <= full + tolerance if task == "rating" else puma >= full - tolerance


def project_ratio(full_wall_s: float, puma: dict[str, Any], n_users: int, n_target: int) -> float:
    """Wall-time ratio at ``n_target`` users from one run on ``n_users`` users with the same budget.

    Full retraining, the selection (its statistics pass every user through the source model) and the
    migration of every prompt scale with the user count; adapter training on the fixed budget does not.
    """
    scale = n_target / n_users
    selection_s = float(puma.get("selection_s") or 0.0)
    migrate_s = float(puma.get("migrate_s") or 0.0)
    adapter_s = max(float(puma["wall_s"]) - selection_s - migrate_s, 0.0)
    return (full_wall_s * scale) / (adapter_s + (selection_s + migrate_s) * scale)


def cost_table(task: str, n_users: int, full: dict[str, Any], puma: dict[str, Any], tolerance: float,
               project: Sequence[int], dtype: str | None = None) -> dict[str, Any]:
    """The comparison as a dict (``cost.json``) plus its markdown (``markdown``), both naming the machine
    and ``dtype`` (the backbones' compute dtype)."""
    main, _ = primary_metric(task)
    names = metric_names(task)
    wall_ratio = full["wall_s"] / puma["wall_s"] if puma["wall_s"] else None
    sample_ratio = full["train_samples"] / puma["train_samples"] if puma["train_samples"] else None
    ok = meets_bar(task, puma["metrics"].get(main), full["metrics"].get(main), tolerance)
    rows = [["full retraining", *[full["metrics"].get(m) for m in names], f"{full['wall_s']:.1f}", full["train_samples"],
             full["trainable_params"], "all " + f"{n_users:,}"],
            ["PUMA", *[puma["metrics"].get(m) for m in names], f"{puma['wall_s']:.1f}", puma["train_samples"],
             puma["trainable_params"], f"{puma.get('selected_users', '?')} selected"]]
    md = describe_machine(dtype) + "\n\n"
    md += markdown_table(["method", *[m.upper() for m in names], "wall s", "train samples", "trainable params", "users trained on"], rows)
    md += (f"\nwall-time ratio (full / PUMA): {wall_ratio:.2f}x; training-sample ratio: {sample_ratio:.2f}x\n"
           f"PUMA {main.upper()} {'meets' if ok else 'does NOT meet'} the bar of full retraining "
           f"(tolerance {tolerance}): {puma['metrics'].get(main):.4f} vs {full['metrics'].get(main):.4f}\n"
           f"PUMA wall time split: selection {puma.get('selection_s', 'n/a')} s, migration of all prompts "
           f"{puma.get('migrate_s', 'n/a')} s, adapter training the rest\n")
    projected = {int(n): project_ratio(full["wall_s"], puma, n_users, int(n)) for n in project}
    if projected:
        md += ("\nProjected wall-time ratio at other user counts (same budget, same rows per user; "
               "a projection from this run, not a measurement):\n\n"
               + markdown_table(["users", "full / PUMA"], [[f"{n:,}", f"{r:.1f}x"] for n, r in projected.items()]))
    return {"task": task, "users": n_users, "full_retrain": full, "puma": puma, "wall_ratio": wall_ratio,
            "sample_ratio": sample_ratio, "meets_bar": ok, "tolerance": tolerance,
            "projected_wall_ratio": {str(n): r for n, r in projected.items()}, "machine": machine_record(dtype),
            "markdown": md}


def run_cost(cfg: Any, out: Path, tolerance: float, project: Sequence[int]) -> dict[str, Any]:
    """Train (or reuse) source, full retraining and PUMA in ``out`` and write the cost table."""
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.sub_runs import sub_config

    dtypes = BackboneDtypes()
    exp = dtypes.watch(Experiment(sub_config(cfg, out, source_dir=None)))  # source trained here, in the same run
    exp.pretrain("source", "source")
    full = exp.pretrain("target", "full_retrain")
    puma = exp.migrate_stage()
    doc = cost_table(exp.table.task, exp.table.n_users, full, puma, tolerance, project, dtypes.text())
    write_text(out / "cost.md", doc["markdown"])
    write_text(out / "cost.json", json.dumps({k: v for k, v in doc.items() if k != "markdown"}, indent=1))
    print(doc["markdown"])
    return doc


def run_cost_seeds(cfg: Any, out: Path, tolerance: float, project: Sequence[int]) -> dict[str, Any]:
    """:func:`run_cost` once per seed of ``cfg.seeds`` (``<out>/seed_<s>``), then mean ± std and the paired
    interval of PUMA against full retraining on the same test rows (``cost_seeds.json`` / ``.md``)."""
    from puma_lightning.pipeline.seeds import SeededCommand, SeedRow, SeedRun, run_over_seeds

    def one(scfg: Any) -> SeedRun:
        seed_out = Path(scfg.run_dir)
        doc = run_cost(scfg, seed_out, tolerance, project)
        values = {name: {**doc[name]["metrics"], "wall_s": doc[name]["wall_s"], "train_samples": doc[name]["train_samples"]}
                  for name in ("full_retrain", "puma")}
        values["puma"].update(wall_ratio=doc["wall_ratio"], sample_ratio=doc["sample_ratio"])
        rows = {"full_retrain": SeedRow(values["full_retrain"], seed_out / "full_retrain"),
                "puma": SeedRow(values["puma"], seed_out / "puma", ["full_retrain"])}
        return SeedRun(doc["task"], rows, {"machine": doc["machine"]})

    from puma_lightning.pipeline.sub_runs import sub_config

    results = run_over_seeds(sub_config(cfg, out), SeededCommand("cost_seeds", one, ("wall_s", "train_samples", "wall_ratio",
                                                                                       "sample_ratio")))
    puma = results["methods"]["puma"]
    ratio, samples = puma["wall_ratio"], puma["sample_ratio"]
    line = (f"wall-time ratio (full / PUMA) over {puma['n_seeds']} seeds: {ratio['mean']:.2f}x ± {ratio['std']:.2f}; "
            f"training-sample ratio {samples['mean']:.2f}x ± {samples['std']:.2f}\n")
    write_text(out / "cost_seeds.md", (out / "cost_seeds.md").read_text(encoding="utf-8") + "\n" + line)
    print(line)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.cli.main import setup_runtime
    from puma_lightning.errors import PumaError

    try:
        cfg = load_config(args.config, args.overrides)
        project = [int(n) for n in args.project.split(",") if n.strip()]
    except (PumaError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_runtime(cfg)
    logging.getLogger("puma_lightning").setLevel(logging.WARNING)
    out = Path(args.out or f"runs/cost_{Path(args.config[-1]).stem}")
    if cfg.seeds:
        run_cost_seeds(cfg, out, args.tolerance, project)
    else:
        run_cost(cfg, out, args.tolerance, project)
    return 0


if __name__ == "__main__":
    sys.exit(main())
