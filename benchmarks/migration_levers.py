"""Migration levers: PUMA's quality and cost per lever and budget, against full retraining on the same rows.

    python benchmarks/migration_levers.py --config configs/ml100k.yaml \
        --levers shipped,steps,norm,steps_norm,polish --budgets 0.05,0.1,0.25 [--seeds 0,1,2] [--out DIR] [key=value ...]

Per seed (each a whole run): the source prompts are trained once (``<out>/seed_<s>/source``) and full
retraining on the target once (``<out>/seed_<s>/full``, the reference); then every (lever, budget)
cell migrates those prompts in ``<out>/seed_<s>/<lever>_b<budget>`` (reused when finished). A lever
is a named set of overrides (:data:`LEVERS`); a budget below 1 is a fraction of the users. Writes
``levers.json``, ``levers.md`` (test RMSE mean ± std over seeds, the paired 95 % interval of
PUMA − full retraining on the same test rows pooled over seeds with its verdict, training samples and
wall seconds, each method paying its own prefix work; then each row's placebo: personal gain, own prompts against
the same bank's prompts dealt to other users, and ``retained``, that gain ÷ full retraining's, pooled over seeds), ``levers.csv`` (one row per cell and seed) and
``levers.png`` (RMSE against training samples), under the ``machine: ...`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from puma_lightning.cli.config_loader import load_lever_sets
from puma_lightning.machine import BackboneDtypes, describe_machine, machine_record

REPO = Path(__file__).resolve().parents[1]

LEVER_FILE = REPO / "configs" / "levers" / "migration_levers.yaml"
LEVERS: dict[str, list[str]] = load_lever_sets(LEVER_FILE)
"""Each lever: a named set of config overrides (``configs/levers/migration_levers.yaml``)."""
"""Named override sets (each on top of the config, so ``shipped`` follows the config's defaults; ``selected`` and ``heldout``
pin the adapter's validation rows either way); ``polish`` levers report the polished row, ``vocab_map`` the training-free row. ``*readout_all`` and
``*readout_items`` matter under ``prompt.hidden_readout=ridge`` (shipped by ``ml100k`` and ``demo``): the target's readout is
fitted on every user's rows, or on every user's rows of the adapter's items, or (``*_selected``)
on the adapter's own rows; the others keep the config's ``adapter.readout_rows``. ``vocab_init*`` start the adapter as the
training-free vocabulary map (``adapter.init=vocab_map``; needs a ``compact`` adapter, as ``ml100k`` ships), the
``_half`` one with half of ``ml100k``'s 94 steps."""
BASELINES_OFF = ["baselines.source=false", "baselines.random_init=false", "baselines.full_retrain=false",
                 "baselines.classic=false"]
CSV_FIELDS = ("lever", "budget", "seed", "method", "rmse", "mae", "auc", "uauc", "val_loss", "val_rmse", "val_auc", "train_samples",
              "wall_s", "run_dir")
VALIDATION_FILE = "val_all.json"
"""Per stage folder: its bank's metrics on every user's validation rows (the criterion defaults are chosen by)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, metavar="FILE", help="experiment YAML (repeatable)")
    p.add_argument("--levers", default="shipped,steps_norm", help=f"comma-separated lever names: {', '.join(LEVERS)}")
    p.add_argument("--budgets", default="0.1", help="comma-separated budgets: user counts, or fractions of the users if < 1")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, each a whole run")
    p.add_argument("--out", default=None, help="output folder (default: runs/migration_levers_<config stem>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every cell")
    return p.parse_args(argv)


def budget_users(budget: float, n_users: int) -> int:
    """A budget as a user count (fractions of ``n_users`` below 1, at least one user)."""
    return max(1, int(round(budget * n_users))) if budget < 1 else int(budget)


def lever_row(lever: str) -> str:
    """Which row of a cell's results is the lever's migrated prompts."""
    overrides = " ".join(LEVERS[lever])
    if "baselines.vocab_map=true" in overrides:
        return "vocab_map"
    return "puma_polish" if "adapter.polish_epochs=" in overrides and "polish_epochs=0" not in overrides else "puma"


def references(lever: str, users: int, levers: Sequence[str]) -> list[str]:
    """The rows a cell is paired with: full retraining, and for ``random_selection`` the ``shipped`` cell of the same
    budget (when it is run too), so that the table says whether the shipped selection beats random users."""
    refs = ["full_retrain"]
    if lever == "random_selection" and "shipped" in levers:
        refs.append(f"shipped @ {users} users")
    return refs


def all_user_validation(exp: Any, stage: str) -> dict[str, float]:
    """``val/*`` metrics of the bank a stage wrote, on the validation rows of every user: the same rows for every lever
    and for full retraining (a PUMA stage's own best epoch is chosen on its selected or held-out users only). Cached
    in ``<stage>/val_all.json`` with the key of the stage record it measured, and measured again when the stage was
    retrained since (another key: a config default changed under a lever); empty when the stage wrote no bank
    (``vocab_map``)."""
    from puma_lightning.io.atomic import atomic_write_text
    from puma_lightning.pipeline.bank_ops import evaluate_bank

    folder = exp.method_dir(stage)
    if not (folder / "bank").is_dir():
        return {}
    key = json.loads((folder / "stage.json").read_text(encoding="utf-8")).get("key")
    cached = folder / VALIDATION_FILE
    if cached.is_file():
        saved = json.loads(cached.read_text(encoding="utf-8"))
        if saved.get("stage_key") == key:  # the bank it measured is the one there now (a retrained stage has another key)
            return saved["metrics"]
    with contextlib.redirect_stdout(io.StringIO()):  # evaluate_bank prints its metrics for the CLI
        metrics = evaluate_bank(exp.cfg, folder / "bank", "target", "valid")
    atomic_write_text(cached, json.dumps({"stage_key": key, "metrics": metrics}, indent=1))
    return metrics


def validation_values(metrics: dict[str, float]) -> dict[str, float]:
    """``val_loss``, ``val_rmse`` / ``val_auc`` of :func:`all_user_validation`'s metrics (those it has)."""
    return {f"val_{k}": float(v) for k, v in metrics.items() if k in ("loss", "rmse", "auc")}


def run_levers(configs: Sequence[str], overrides: Sequence[str], levers: Sequence[str], budgets: Sequence[float],
               seeds: Sequence[int], out: Path) -> dict[str, Any]:
    """Every seed's source and full retraining, every (lever, budget) cell, then the tables and the plot."""
    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.cli.main import setup_runtime
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.seeds import SeedRow, SeedRun, summarise, to_markdown

    unknown = [name for name in levers if name not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown levers {unknown}; available: {', '.join(LEVERS)}")
    dtypes = BackboneDtypes()
    runs: dict[int, SeedRun] = {}
    csv_rows: list[dict[str, Any]] = []
    for seed in seeds:
        base = out / f"seed_{seed}"
        common = [*overrides, f"seed={seed}", "seeds=null"]
        cfg = load_config(configs, [*common, f"run_dir={base / 'full'}", f"source_dir={base / 'source'}"])
        setup_runtime(cfg)
        ref = dtypes.watch(Experiment(cfg))
        ref.pretrain("source", "source")
        full = ref.pretrain("target", "full_retrain")
        n_users = ref.table.n_users
        task = ref.table.task
        about = {"dataset": ref.table.meta.get("name"), "num_test_rows": int(len(ref.table.rows("test")))}
        full_val = validation_values(all_user_validation(ref, "full_retrain"))
        rows = {"full_retrain": SeedRow({**full["metrics"], "wall_s": full["wall_s"], "train_samples": full["train_samples"],
                                         **full_val}, ref.stage_dir("full_retrain"))}
        csv_rows.append({"lever": "-", "budget": n_users, "seed": seed, "method": "full_retrain", **full["metrics"], **full_val,
                         "train_samples": full["train_samples"], "wall_s": full["wall_s"], "run_dir": str(ref.run_dir)})
        del ref
        for lever in levers:
            for budget in budgets:
                users = budget_users(budget, n_users)
                run_dir = base / f"{lever}_b{users}"
                cfg = load_config(configs, [*common, *LEVERS[lever], *BASELINES_OFF, f"selection.budget={users}",
                                            f"run_dir={run_dir}", f"source_dir={base / 'source'}"])
                setup_runtime(cfg)
                exp = dtypes.watch(Experiment(cfg))
                result = exp.fit()
                which = lever_row(lever)
                rec = result["methods"][which]
                name = f"{lever} @ {users} users"
                val = validation_values(all_user_validation(exp, which))
                rows[name] = SeedRow({m: rec.get(m) for m in ("rmse", "mae", "auc", "uauc") if m in rec} |
                                     {"wall_s": rec["wall_s"], "train_samples": rec["train_samples"], **val},
                                     exp.method_dir(which), references(lever, users, levers), "full_retrain")
                csv_rows.append({"lever": lever, "budget": users, "seed": seed, "method": which, **val,
                                 **{m: rec.get(m) for m in ("rmse", "mae", "auc", "uauc")},
                                 "train_samples": rec["train_samples"], "wall_s": rec["wall_s"], "run_dir": str(run_dir)})
                del exp
        runs[seed] = SeedRun(task, rows, {"machine": machine_record(dtypes.text()), **about})
    results = summarise(runs, ("wall_s", "train_samples", "val_loss", "val_rmse", "val_auc"))
    results["levers"] = {name: LEVERS[name] for name in levers}
    write_outputs(out, results, csv_rows, dtypes.text(), levers, to_markdown(results))
    return results


def cost_shares(results: dict[str, Any], name: str) -> str:
    """``1/a samples, 1/b ± s wall``: full retraining's training samples and wall seconds over the row's, each ratio
    taken within a seed (the two ran in the same run on the same machine) and averaged over the seeds, with the seeds'
    std (ddof 1) where the ratios differ (wall seconds move with the machine's load; sample counts do not); ``-`` for
    full retraining itself or where a seed lacks either."""
    from puma_lightning.tasks.uncertainty import mean_std

    if name == "full_retrain":
        return "-"
    per_seed, full = results["methods"][name]["per_seed"], results["methods"]["full_retrain"]["per_seed"]
    parts = []
    for key, label in (("train_samples", "samples"), ("wall_s", "wall")):
        ratios = [float(full[s][key]) / float(v[key]) for s, v in per_seed.items()
                  if s in full and v.get(key) and full[s].get(key)]
        if not ratios:
            parts.append(f"- {label}")
            continue
        mean, std = mean_std(ratios)
        spread = f" ± {std:.1f}" if std > 0 else ""
        parts.append(f"1/{mean:.1f}{spread} {label}")
    return ", ".join(parts)


def write_outputs(out: Path, results: dict[str, Any], csv_rows: list[dict[str, Any]], dtype: str | None,
                  levers: Sequence[str], table_md: str) -> None:
    """``levers.json``, ``levers.md``, ``levers.csv`` and ``levers.png``."""
    from puma_lightning.io.atomic import atomic_path, atomic_write_text, atomic_write_with

    atomic_write_text(out / "levers.json", json.dumps(results, indent=1))
    lines = [describe_machine(dtype), "", "Levers (overrides on the config):", ""]
    lines += [f"- `{name}`: {' '.join(LEVERS[name]) or '(the config as shipped)'}" for name in levers]
    val = "val_rmse" if results["task"] == "rating" else "val_auc"
    cost = ["", f"| row | train samples (mean) | wall s (mean) | share of full retraining's samples / wall (per-seed ratios, "
            f"mean ± std) | validation loss, all users | validation {val[4:].upper()} |", "|---|---|---|---|---|---|"]
    cost += [f"| {name} | {row['train_samples']['mean']:,.0f} | {row['wall_s']['mean']:.1f} | {cost_shares(results, name)} | "
             f"{_mean(row, 'val_loss')} | {_mean(row, val)} |" for name, row in results["methods"].items()]
    chosen = choose_on_validation(results)
    if chosen:
        cost += ["", "Chosen on every user's validation rows (never on test): the lowest mean validation loss, or the cheapest row "
                 f"whose per-seed difference from it is within those differences' std: {chosen}"]
    atomic_write_text(out / "levers.md", "\n".join([*lines, "", table_md, *cost]) + "\n")
    with atomic_path(out / "levers.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in csv_rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    metric = "rmse" if results["task"] == "rating" else "auc"
    for name, row in results["methods"].items():
        ax.errorbar(row["train_samples"]["mean"], row[metric]["mean"], yerr=row[metric]["std"], marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training samples through the target (log)")
    ax.set_ylabel(f"test {metric.upper()}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_with(out / "levers.png", lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    print((out / "levers.md").read_text(encoding="utf-8"))


def _mean(row: dict[str, Any], key: str) -> str:
    value = row.get(key, {}).get("mean")
    return "-" if value is None or value != value else f"{value:.4f}"


def choose_on_validation(results: dict[str, Any]) -> str | None:
    """The migrated row (not full retraining) that validation picks, or None if none was validated: the lowest mean
    all-user validation loss, except that a row needing fewer training samples wins if its validation loss is within
    the seeds' spread of that best row's, judged paired: per seed, its loss minus the best row's on the same users, and
    a mean of those differences no larger than their std (ddof 1) is inside the spread. Paired, because where each
    seed draws its own users (the demo) the loss moves more between seeds than between rows of one seed."""
    methods = results["methods"]
    scored = {name: row["val_loss"]["mean"] for name, row in methods.items()
              if name != "full_retrain" and row.get("val_loss", {}).get("mean") is not None
              and row["val_loss"]["mean"] == row["val_loss"]["mean"]}
    if not scored:
        return None
    best = min(scored, key=lambda n: scored[n])
    close = [n for n in scored if n == best or _within_paired_spread(methods[n], methods[best])]
    return min(close, key=lambda n: (methods[n]["train_samples"]["mean"], scored[n]))


def _within_paired_spread(row: dict[str, Any], best: dict[str, Any]) -> bool:
    """Whether ``row``'s per-seed validation losses minus ``best``'s have a mean no larger than their std (ddof 1)."""
    from puma_lightning.tasks.uncertainty import mean_std

    mine, theirs = row.get("per_seed", {}), best.get("per_seed", {})
    diffs = [mine[s]["val_loss"] - theirs[s]["val_loss"] for s in mine
             if s in theirs and mine[s].get("val_loss") is not None and theirs[s].get("val_loss") is not None]
    if not diffs:
        return False
    mean, std = mean_std(diffs)
    return mean <= std


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    levers = [name.strip() for name in args.levers.split(",") if name.strip()]
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out) if args.out else REPO / "runs" / f"migration_levers_{Path(args.config[-1]).stem}"
    run_levers(args.config, args.overrides, levers, budgets, seeds, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
