"""How much personal signal a dataset holds, measured with the no-LLM references alone (seconds, no model).

    python benchmarks/references.py [--config configs/personal.yaml] [--config configs/ml100k_click.yaml] [key=value ...]

For each config: its table built exactly as ``fit`` builds it (seed ``seed``), and every reference that applies to it
fitted on the training split (tuned on valid) and scored on the test rows: RMSE/MAE for ratings (with the noise floor
where the data is generated), AUC/uAUC for clicks. ``personal`` is the gap a personal reference opens over the
non-personal one (ratings: user_item_bias − attribute_ridge, RMSE; clicks: item_item − popularity, uAUC; positive: personal). The
overrides apply to every config. The table is printed under a ``machine: ...`` line.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from puma_lightning.machine import describe_machine

DEFAULT_CONFIGS = ("configs/personal.yaml", "configs/ml100k_click.yaml")
PERSONAL_GAP = {"rating": ("user_item_bias", "attribute_ridge", "rmse"), "click": ("popularity", "item_item", "uauc")}


def measure(config: str, overrides: Sequence[str], seed: int) -> list[dict]:
    """One row per reference on the config's table: its metrics on the test rows, chosen parameters and seconds."""
    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.pipeline.builders import build_table
    from puma_lightning.pipeline.classic import references_for
    from puma_lightning.tasks.uncertainty import metric_on_rows

    cfg = load_config([config], list(overrides))
    table = build_table(cfg.data, seed)
    test = table.rows("test")
    label, user = table.label[test].astype(float), table.user[test]
    names = ("rmse", "mae") if table.task == "rating" else ("auc", "uauc")
    rows = []
    if table.meta.get("floor_rmse") is not None or table.meta.get("floor_auc") is not None:
        rows.append({"config": config, "reference": "floor", "rmse": table.meta.get("floor_rmse"),
                     "auc": table.meta.get("floor_auc"), "seconds": 0.0, "params": {}})
    for name, ref in references_for(table).items():
        start = time.perf_counter()
        prediction, params = ref.fit(table, seed)
        seconds = time.perf_counter() - start
        rows.append({"config": config, "reference": name, "seconds": seconds, "params": params,
                     **{m: metric_on_rows(m, prediction[test], label, user) for m in names}})
    for row in rows:
        row.update(task=table.task, users=table.n_users, test_rows=len(test))
    return rows


def to_markdown(rows: list[dict]) -> str:
    """The references' table and, per config, the personal gap."""
    lines = ["| config | task | users | test rows | reference | RMSE | MAE | AUC | uAUC | chosen | s |", "|" + "---|" * 11]
    for r in rows:
        cell = {k: f"{r[k]:.4f}" if isinstance(r.get(k), float) else "" for k in ("rmse", "mae", "auc", "uauc")}.get
        chosen = ", ".join(f"{k} {v}" for k, v in r["params"].items() if k in ("reg", "factors"))
        lines.append(f"| {r['config']} | {r['task']} | {r['users']} | {r['test_rows']:,} | {r['reference']} | {cell('rmse')} | "
                     f"{cell('mae')} | {cell('auc')} | {cell('uauc')} | {chosen} | {r['seconds']:.2f} |")
    notes = []
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = {r["reference"]: r for r in rows if r["config"] == config}
        task = next(iter(mine.values()))["task"]
        base, personal, metric = PERSONAL_GAP[task]
        if base in mine and personal in mine:
            gap = mine[base][metric] - mine[personal][metric] if task == "rating" else mine[personal][metric] - mine[base][metric]
            order = f"{base} − {personal}" if task == "rating" else f"{personal} − {base}"
            notes.append(f"{config}: personal signal, {metric.upper()} {order} = {gap:+.4f}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[], help="a config (repeatable; default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="key=value applied to every config")
    args = parser.parse_args(argv)
    rows = [row for config in (args.config or DEFAULT_CONFIGS) for row in measure(config, args.overrides, args.seed)]
    print(describe_machine(None))
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
