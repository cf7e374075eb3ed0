"""Ablation sweep of user-selection strategies (the paper's Table 4).

    python benchmarks/selection_sweep.py --config configs/X.yaml --budgets 200,600 \
        --strategies all --seeds 3 [--out DIR] [key=value ...]

Each seed is a whole independent run by default (``--seed-scope whole``): seed ``s`` trains its
own source stage in ``<out>/source_s<s>`` with ``seed=s`` (its own data subset where the dataset
samples users, its own prompt init) and selects with ``selection.seed=s``. ``--seed-scope
selection`` shares one source stage (``<out>/source``, the config's ``seed``) and varies only the
selection seed: cheaper, but its spread leaves out the source prompts' variation. Every (strategy,
budget, seed) cell is an :class:`~puma_lightning.pipeline.experiment.Experiment` with its seed's
``source_dir`` and ``run_dir=<out>/cells/<strategy>_b<budget>_s<seed>`` (``_sel<seed>`` under the
selection scope; TensorBoard logs in ``tb/``) that trains the adapter on the selected users and
evaluates on test (baselines off). A cell is finished when its ``results.json`` exists; an
interrupted sweep resumes and skips finished cells. Writes ``sweep.csv`` (one row per cell),
``sweep.md`` (rows = strategies, columns = budgets, mean ± std over seeds, best per budget in bold,
then each strategy's paired difference against ``random`` at the same budget on the same test rows,
pooled over seeds, with its 95 % bootstrap interval and verdict, under a ``machine: ...`` line naming
the machine and the compute dtype of the backbones this run loaded) and ``sweep.png`` (metric vs
budget).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from puma_lightning.machine import BackboneDtypes, describe_machine

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("selection_sweep")

BASELINES_OFF = ("baselines.source=false", "baselines.random_init=false", "baselines.full_retrain=false")
SEED_SCOPES = ("whole", "selection")
PAIRED_REFERENCE = "random"
"""Strategy every other one is compared with, paired on the same test rows, at the same budget."""
CSV_FIELDS = ("strategy", "budget", "seed", "metric", "value", "rmse", "mae", "auc", "uauc",
              "selected_users", "train_samples", "wall_s", "run_dir")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, metavar="FILE", help="experiment YAML (repeatable)")
    p.add_argument("--budgets", required=True, help="comma-separated budgets, e.g. 200,600")
    p.add_argument("--strategies", default="all", help="comma-separated strategy names, or 'all'")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per (strategy, budget)")
    p.add_argument("--seed-scope", choices=SEED_SCOPES, default="whole",
                   help="whole: each seed its own source prompts and selection; selection: one shared source, selection seed only")
    p.add_argument("--out", default=None, help="output folder (default: runs/sweep_<config stem>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every cell")
    return p.parse_args(argv)


def resolve_strategies(spec: str) -> list[str]:
    """Strategy names from ``--strategies`` (``all`` = every strategies/*.yaml, registry order)."""
    from puma_lightning.cli.config_loader import strategy_names
    from puma_lightning.selection import STRATEGIES

    presets = set(strategy_names())
    available = [n for n in STRATEGIES if n in presets]
    if spec.strip().lower() == "all":
        return available
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in presets]
    if bad:
        raise SystemExit(f"unknown strategies {bad}; available: {', '.join(available)}")
    return names


def cell_name(strategy: str, budget: int, seed: int, scope: str = "whole") -> str:
    return f"{strategy}_b{budget}_{'s' if scope == 'whole' else 'sel'}{seed}"


def source_dir(out: Path, seed: int, scope: str = "whole") -> Path:
    """The source stage a seed's cells migrate from (one per seed, or one shared)."""
    return out / (f"source_s{seed}" if scope == "whole" else "source")


def seed_overrides(seed: int, scope: str) -> list[str]:
    """Overrides that make a cell (or its source stage) the given seed's."""
    return [f"seed={seed}", f"selection.seed={seed}"] if scope == "whole" else [f"selection.seed={seed}"]


def primary_metric(task: str) -> tuple[str, bool]:
    """(metric name, higher is better) reported in the table for a task."""
    return ("rmse", False) if task == "rating" else ("auc", True)


def _seed_runtime(cfg: Any) -> None:
    import lightning as L
    import torch

    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)


def run_cell(configs: Sequence[str], overrides: Sequence[str], out: Path, strategy: str, budget: int,
             seed: int, dtypes: BackboneDtypes | None = None, scope: str = "whole") -> dict[str, Any]:
    """Train and test one cell (or read it back when finished); returns its CSV row.

    ``dtypes`` records the compute dtype of the backbones the cell loads."""
    from puma_lightning.cli.config_loader import load_config, save_config
    from puma_lightning.io.ownership import claim_run_dir
    from puma_lightning.pipeline.experiment import Experiment

    run_dir = out / "cells" / cell_name(strategy, budget, seed, scope)
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        cfg = load_config(configs, [*overrides, f"selection={strategy}", f"selection.budget={budget}",
                                    *seed_overrides(seed, scope), f"run_dir={run_dir}",
                                    f"source_dir={source_dir(out, seed, scope)}", *BASELINES_OFF])
        claim_run_dir(run_dir)  # the cell is a run directory of ours before its config is written into it
        save_config(cfg, run_dir / "config.yaml")
        _seed_runtime(cfg)
        log.info("cell %s", run_dir.name)
        exp = Experiment(cfg)
        if dtypes is not None:
            dtypes.watch(exp)
        exp.fit()
    results = json.loads(results_path.read_text(encoding="utf-8"))
    puma = results["methods"]["puma"]
    metric, _ = primary_metric(results["task"])
    row = {"strategy": strategy, "budget": budget, "seed": seed, "metric": metric, "value": puma.get(metric),
           "selected_users": puma.get("selected_users"), "train_samples": puma.get("train_samples"),
           "wall_s": puma.get("wall_s"), "run_dir": str(run_dir)}
    for m in ("rmse", "mae", "auc", "uauc"):
        row[m] = puma.get(m)
    return row


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from puma_lightning.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[float, float, int]]:
    """(strategy, budget) -> (mean, std over seeds (ddof=1; 0 for one seed), number of seeds)."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        if r.get("value") is not None:
            groups.setdefault((r["strategy"], int(r["budget"])), []).append(float(r["value"]))
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)) for k, v in groups.items()}


def to_markdown(rows: list[dict[str, Any]], strategies: Sequence[str], budgets: Sequence[int], title: str = "",
                machine: str = "") -> str:
    """Table 4 layout: rows = strategies, columns = budgets, cells mean ± std over seeds (``machine``: a
    line naming the machine, put under the title)."""
    if not rows:
        return "(no finished cells)\n"
    metric = rows[0]["metric"]
    higher = primary_metric("click" if metric == "auc" else "rating")[1]
    agg = aggregate(rows)
    best = {}
    for b in budgets:
        vals = [agg[(s, b)][0] for s in strategies if (s, b) in agg]
        if vals:
            best[b] = max(vals) if higher else min(vals)
    lines = [f"# {title}".rstrip() if title else "# Selection sweep", "", *([machine, ""] if machine else []),
             f"Test {metric.upper()} of the migrated prompts ({'higher' if higher else 'lower'} is better),"
             " mean ± std over seeds; best per budget in bold.", "",
             "| strategy | " + " | ".join(f"B = {b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for s in strategies:
        cells = []
        for b in budgets:
            if (s, b) not in agg:
                cells.append("—")
                continue
            mean, std, n = agg[(s, b)]
            text = f"{mean:.4f} ± {std:.4f}" + (f" (n={n})" if n == 1 else "")
            cells.append(f"**{text}**" if np.isclose(mean, best[b]) else text)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_against(rows: list[dict[str, Any]], reference: str = PAIRED_REFERENCE) -> list[dict[str, Any]]:
    """Each strategy minus ``reference`` at the same budget, paired on the same test rows of the same seed and
    pooled over seeds: the difference of the primary metric, its 95 % bootstrap interval and verdict."""
    from puma_lightning.pipeline.predictions import load_predictions
    from puma_lightning.tasks.uncertainty import paired_comparison

    by_cell = {(r["strategy"], int(r["budget"]), int(r["seed"])): r for r in rows}
    out = []
    for (strategy, budget), _ in aggregate(rows).items():
        if strategy == reference:
            continue
        parts = []
        for (s, b, seed), r in by_cell.items():
            if (s, b) != (strategy, budget) or (reference, budget, seed) not in by_cell:
                continue
            a = load_predictions(Path(r["run_dir"]) / "puma")
            ref = load_predictions(Path(by_cell[(reference, budget, seed)]["run_dir"]) / "puma")
            if a is None or ref is None or not np.array_equal(a["row"], ref["row"]):
                continue
            parts.append((a["prediction"], ref["prediction"], a["label"], a["user"] + 10**9 * seed))
        if not parts:
            continue
        pred, ref_pred, label, user = (np.concatenate(x) for x in zip(*parts))
        metric = rows[0]["metric"]
        out.append({"strategy": strategy, "budget": budget, "seeds": len(parts), "metric": metric,
                    **paired_comparison(metric, pred, ref_pred, label, user=user)})
    return out


def paired_markdown(pairs: list[dict[str, Any]], reference: str = PAIRED_REFERENCE) -> str:
    """The paired comparisons as a markdown table (empty when there are none)."""
    if not pairs:
        return ""
    lines = ["", f"Paired difference against {reference} at the same budget (strategy - {reference}, same test rows, pooled "
             "over seeds, 95 % bootstrap interval):", "",
             "| strategy | budget | seeds | difference | 95 % interval | verdict |", "|---|---|---|---|---|---|"]
    lines += [f"| {p['strategy']} | {p['budget']} | {p['seeds']} | {p['diff']:+.4f} | [{p['low']:+.4f}, {p['high']:+.4f}] | "
              f"{p['verdict']} |" for p in pairs]
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: list[dict[str, Any]], strategies: Sequence[str], budgets: Sequence[int]) -> None:
    """Metric vs budget, one line per strategy, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from puma_lightning.io.atomic import atomic_write_with

    agg = aggregate(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for s in strategies:
        pts = [(b, *agg[(s, b)][:2]) for b in budgets if (s, b) in agg]
        if pts:
            xs, ms, sd = zip(*pts)
            ax.errorbar(xs, ms, yerr=sd, marker="o", capsize=3, label=s)
    metric = rows[0]["metric"] if rows else "metric"
    ax.set_xlabel("budget (users)")
    ax.set_ylabel(f"test {metric.upper()}")
    ax.set_xticks(list(budgets))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def write_outputs(out: Path, rows: list[dict[str, Any]], strategies: Sequence[str], budgets: Sequence[int],
                  dtype: str | None = None) -> None:
    from puma_lightning.io.atomic import atomic_write_text

    write_csv(out / "sweep.csv", rows)
    atomic_write_text(out / "sweep.md", to_markdown(rows, strategies, budgets, f"Selection sweep ({out.name})",
                                                    describe_machine(dtype)) + paired_markdown(paired_against(rows)))
    if rows:
        plot(out / "sweep.png", rows, strategies, budgets)


def run_sweep(configs: Sequence[str], budgets: Sequence[int], strategies: Sequence[str], seeds: int,
              out: Path, overrides: Sequence[str] = (), scope: str = "whole") -> list[dict[str, Any]]:
    """Train each seed's source stage (or the shared one), then every missing cell; returns all CSV rows."""
    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.pipeline.experiment import Experiment

    if scope not in SEED_SCOPES:
        raise SystemExit(f"--seed-scope is {scope!r}; expected one of {', '.join(SEED_SCOPES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtypes = BackboneDtypes()
    for seed in (range(seeds) if scope == "whole" else [None]):
        extra = [] if seed is None else seed_overrides(seed, scope)
        base = load_config(configs, [*overrides, *extra, f"run_dir={out}", f"source_dir={source_dir(out, seed or 0, scope)}",
                                     *BASELINES_OFF])
        _seed_runtime(base)
        start = time.perf_counter()
        dtypes.watch(Experiment(base)).pretrain("source", "source")  # reused when already there
        log.info("source stage %s ready in %.1fs", base.source_dir, time.perf_counter() - start)
    rows: list[dict[str, Any]] = []
    for strategy in strategies:
        for budget in budgets:
            for seed in range(seeds):
                rows.append(run_cell(configs, overrides, out, strategy, int(budget), seed, dtypes, scope))
                write_outputs(out, rows, strategies, budgets, dtypes.text())  # partial tables survive interruptions
    write_outputs(out, rows, strategies, budgets, dtypes.text())
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    strategies = resolve_strategies(args.strategies)
    out = Path(args.out) if args.out else REPO / "runs" / f"sweep_{Path(args.config[0]).stem}"
    rows = run_sweep(args.config, budgets, strategies, args.seeds, out, args.overrides, args.seed_scope)
    print((out / "sweep.md").read_text(encoding="utf-8"))
    print(f"{len(rows)} cells; wrote {out / 'sweep.csv'}, {out / 'sweep.md'}, {out / 'sweep.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
