"""Prompt-tuning study: each lever's test RMSE against the no-LLM references on the same rows.

    python benchmarks/prompt_study.py --config configs/ml100k.yaml --model source \
        --levers shipped,long,long_lazy,long_lazy_bias,long_lazy_items,shared [--seeds 0,1,2] [--out DIR] [key=value ...]

A lever is a named set of config overrides (:data:`LEVERS`) applied on top of the config; ``shared``
trains one prompt for every user (what the frozen model adds about the items), every other lever a
prompt per user. For each (lever, seed) the prompt-tuning stage runs on ``--model`` (``source`` or
``target``) in ``<out>/<lever>/seed_<s>`` (reused when finished), next to the classic references
(item bias, user bias, user + item bias, ...) fitted on the same training rows. ``study.md`` /
``study.json`` give per lever: test RMSE mean ± std over seeds, the paired 95 % bootstrap interval of
its difference from ``user_item_bias`` (and from ``item_bias`` for ``shared``) on the same test rows
pooled over seeds with its verdict, epochs run, training samples and wall seconds, under the
``machine: ...`` line. Levers are chosen on validation (``best_val_loss``); the table reports test.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from puma_lightning.cli.config_loader import load_lever_sets
from puma_lightning.machine import BackboneDtypes, describe_machine, machine_record

REPO = Path(__file__).resolve().parents[1]

LEVER_FILE = REPO / "configs" / "levers" / "prompt_study.yaml"
LEVERS: dict[str, list[str]] = load_lever_sets(LEVER_FILE)
"""Each lever: a named set of config overrides (``configs/levers/prompt_study.yaml``)."""
SHARED = {"shared", "shared_bias", "shared_residual", "shared_readout", "shared_ridge"}
REFERENCE = "user_item_bias"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, metavar="FILE", help="experiment YAML (repeatable)")
    p.add_argument("--model", choices=("source", "target"), default="source", help="which model's prompts are tuned")
    p.add_argument("--levers", default="shipped,long", help=f"comma-separated lever names: {', '.join(LEVERS)}")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, each a whole run")
    p.add_argument("--out", default=None, help="output folder (default: runs/prompt_study_<config stem>_<model>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every lever")
    return p.parse_args(argv)


def run_study(configs: Sequence[str], overrides: Sequence[str], levers: Sequence[str], seeds: Sequence[int], model: str,
              out: Path) -> dict[str, Any]:
    """Run (or reuse) every (lever, seed) stage and the references; write ``study.json`` and ``study.md``."""
    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.cli.main import setup_runtime
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.seeds import SeedRow, SeedRun, summarise, to_markdown

    unknown = [name for name in levers if name not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown levers {unknown}; available: {', '.join(LEVERS)}")
    dtypes = BackboneDtypes()
    runs: dict[int, SeedRun] = {}
    for seed in seeds:
        rows: dict[str, SeedRow] = {}
        task = "rating"
        for lever in levers:
            run_dir = out / lever / f"seed_{seed}"
            cfg = load_config(configs, [*overrides, *LEVERS[lever], f"seed={seed}", "seeds=null", f"run_dir={run_dir}",
                                        "source_dir=null"])
            setup_runtime(cfg)
            exp = dtypes.watch(Experiment(cfg))
            shared = lever in SHARED
            stage = f"shared_prompt_{model}" if shared else ("source" if model == "source" else "full_retrain")
            record = exp.pretrain(model, stage, shared=shared)
            task = exp.table.task
            refs = [REFERENCE, "item_bias"] if shared else [REFERENCE]
            rows[lever] = SeedRow({**record["metrics"], "wall_s": record["wall_s"], "train_samples": record["train_samples"],
                                   "epochs": record["epochs"], "best_val_loss": record.get("best_val_loss")},
                                  exp.stage_dir(stage), refs)
            if lever == levers[0]:  # the references: fitted on this seed's training rows, tested on the same rows
                for name, ref in exp.classic_references().items():
                    rows[name] = SeedRow({**ref["metrics"], "wall_s": ref["wall_s"]}, exp.method_dir(name))
            del exp
        runs[seed] = SeedRun(task, rows, {"machine": machine_record(dtypes.text())})
    results = summarise(runs, ("wall_s", "train_samples", "epochs", "best_val_loss"))
    results["levers"] = {name: LEVERS[name] for name in levers}
    results["model"] = model
    from puma_lightning.io.atomic import atomic_write_text

    atomic_write_text(out / "study.json", json.dumps(results, indent=1))
    md = [describe_machine(dtypes.text()), "", f"Prompt tuning on the {model} model; levers (overrides on the config):", ""]
    md += [f"- `{name}`: {' '.join(LEVERS[name]) or '(the config as shipped)'}" + (" — one prompt for all users" if name in SHARED else "")
           for name in levers]
    md += ["", to_markdown(results), _extras(results, levers)]
    atomic_write_text(out / "study.md", "\n".join(md))
    print("\n".join(md))
    return results


def _extras(results: dict[str, Any], levers: Sequence[str]) -> str:
    """Epochs run, training samples and validation loss per lever (mean over seeds)."""
    lines = ["| lever | epochs run | train samples | best val loss |", "|---|---|---|---|"]
    for name in levers:
        row = results["methods"].get(name)
        if row:
            lines.append(f"| {name} | {row['epochs']['mean']:.1f} | {row['train_samples']['mean']:,.0f} | "
                         f"{row['best_val_loss']['mean']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    levers = [name.strip() for name in args.levers.split(",") if name.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out) if args.out else REPO / "runs" / f"prompt_study_{Path(args.config[-1]).stem}_{args.model}"
    run_study(args.config, args.overrides, levers, seeds, args.model, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
