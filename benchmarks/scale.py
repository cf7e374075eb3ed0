"""What selection, migration, banks and ``predict`` cost as the number of users grows.

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--widths 576,2048] [--shard-mb 128]
        [--config configs/ml100k.yaml] [--predict-pairs 1000] [--skip-predict] [--skip-calibration] [--out runs/scale]

For every bank size N and width d (prompt length 1) it runs each phase in a fresh process, so that
each peak RSS (``ru_maxrss``) belongs to that phase alone, on a synthetic bank of random prompts:

- ``write``   the bank written shard by shard (``io.bank.write_bank``): MB/s;
- ``read``    lazily opened (manifest only), 1,000 random users fetched, then a full block scan;
- ``stats``   per-user label variance and counts over N x 20 synthetic ratings, streamed in chunks
              (``data.user_moments.UserMoments``);
- ``select``  every prompt read into memory and the ``puma`` strategy run on it (FAISS k-means on all N
              prompts, variance-stratified picks, budget 10 % of N);
- ``migrate`` the ``compact`` adapter (random weights) applied by ``migrate`` (a Lightning predict over
              shards): prompts/s, peak RSS; ``baseline`` is the RSS of a process that only imports.

Then, on the packaged models and the ``--config`` dataset (item-first template): ``predict`` of
``--predict-pairs`` pairs (random users x 50 random candidate items, the ``top_k`` use) with the prefix
cache and without, seconds of the predict loop per 1,000 pairs; and the
per-sample cost of a prompt-tuning and of an adapter training step (marginal, from two runs of
different step counts), which calibrate a cost model of full retraining vs PUMA as N grows (the
config's epochs, rows per user, a 10 % budget). Cost-model rows are projections and say so.

Writes ``scale.json``, ``scale.md`` and ``scale.png`` under ``--out``; prints the machine first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from puma_lightning.machine import describe_machine, machine_record

ROOT = Path(__file__).resolve().parents[1]

PHASES = ("baseline", "write", "read", "stats", "select", "migrate")
RATINGS_PER_USER = 20
PREDICT_CANDIDATES = 50
"""``predict`` pairs are users x this many candidate items, as when ranking candidates (``top_k``)."""
BUDGET_FRACTION = 0.10


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- phases (each run in its own process by `--phase`) -------------------------------------------------

def _bank_path(work: Path, n: int, d: int) -> Path:
    return work / f"bank_{n}x{d}"


def phase_baseline(work: Path, n: int, d: int, rows_per_shard: int) -> dict[str, Any]:
    import torch  # noqa: F401  (what every other phase imports too)

    from puma_lightning.io import bank  # noqa: F401
    from puma_lightning.tasks import bank_mapping  # noqa: F401
    return {}


def phase_write(work: Path, n: int, d: int, rows_per_shard: int) -> dict[str, Any]:
    import torch

    from puma_lightning.io.bank import FORMAT_VERSION, write_bank

    manifest = {"format_version": FORMAT_VERSION, "model_name": "synthetic", "model_fingerprint": f"synthetic-{d}",
                "hidden_size": d, "prompt_length": 1, "num_users": n, "user_ids": [f"u{i}" for i in range(n)],
                "info": {"made_by": "benchmarks/scale.py"}}

    def blocks() -> Any:
        gen = torch.Generator().manual_seed(n + d)
        for start in range(0, n, rows_per_shard):
            yield torch.randn(min(rows_per_shard, n - start), 1, d, generator=gen)

    t0 = time.perf_counter()
    write_bank(_bank_path(work, n, d), manifest, blocks(), rows_per_shard)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "MB_per_s": n * d * 4 / 2**20 / wall}


def phase_read(work: Path, n: int, d: int, rows_per_shard: int) -> dict[str, Any]:
    from puma_lightning.io.bank import LazyPromptBank

    t0 = time.perf_counter()
    bank = LazyPromptBank(_bank_path(work, n, d))
    open_s = time.perf_counter() - t0
    users = [bank.user_ids[i] for i in np.random.default_rng(0).choice(n, size=min(1000, n), replace=False)]
    t0 = time.perf_counter()
    bank.rows_for(users)
    fetch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = sum(int(block.shape[0]) for block in bank.blocks(rows_per_shard))
    scan_s = time.perf_counter() - t0
    return {"open_s": open_s, "fetch_1000_s": fetch_s, "scan_rows_per_s": rows / scan_s, "wall_s": open_s + fetch_s + scan_s}


def phase_stats(work: Path, n: int, d: int, rows_per_shard: int) -> dict[str, Any]:
    from puma_lightning.data.user_moments import UserMoments

    rng = np.random.default_rng(1)
    moments = UserMoments(n)
    total, chunk = n * RATINGS_PER_USER, 2_000_000
    t0 = time.perf_counter()
    for start in range(0, total, chunk):
        size = min(chunk, total - start)
        moments.update(rng.integers(0, n, size), rng.integers(1, 6, size).astype(np.float64))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "ratings": total, "ratings_per_s": total / wall, "mean_variance": float(moments.variance().mean())}


def phase_select(work: Path, n: int, d: int, rows_per_shard: int) -> dict[str, Any]:
    from puma_lightning.data.user_moments import UserMoments
    from puma_lightning.io.bank import LazyPromptBank
    from puma_lightning.selection import build_strategy
    from puma_lightning.selection.registry import SelectionContext

    t0 = time.perf_counter()
    bank = LazyPromptBank(_bank_path(work, n, d))
    prompts = bank.prompts.reshape(n, -1).numpy()  # float32 already: no copy
    read_s = time.perf_counter() - t0
    rng = np.random.default_rng(2)
    moments = UserMoments(n)
    users = np.repeat(np.arange(n), RATINGS_PER_USER)
    moments.update(users, rng.integers(1, 6, users.size).astype(np.float64))
    del users
    budget = max(1, int(round(BUDGET_FRACTION * n)))
    ctx = SelectionContext(prompts=prompts, label_variance=moments.variance(), train_counts=moments.counts(), seed=0)
    strategy = build_strategy({"name": "puma", "budget": budget})
    t0 = time.perf_counter()
    chosen = strategy.select(ctx, budget)
    select_s = time.perf_counter() - t0
    return {"read_s": read_s, "select_s": select_s, "wall_s": read_s + select_s, "budget": budget, "selected": int(len(chosen))}


def phase_migrate(work: Path, n: int, d: int, rows_per_shard: int) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    from puma_lightning.models.adapters import build_adapter
    from puma_lightning.pipeline.bank_ops import migrate_bank

    torch.manual_seed(0)
    adapter = build_adapter("compact", d, d, hidden=256, dropout=0.0)
    file = work / f"adapter_{d}.safetensors"
    save_file({f"adapter.{k}": v.contiguous() for k, v in adapter.state_dict().items()}, str(file),
              metadata={"kind": "compact", "source_dim": str(d), "target_dim": str(d), "hidden": "256", "dropout": "0.0",
                        "output_scale": "1.0", "source_fingerprint": f"synthetic-{d}", "target_model": "synthetic-target",
                        "target_fingerprint": f"synthetic-target-{d}"})
    out = work / f"migrated_{n}x{d}"
    t0 = time.perf_counter()
    migrate_bank(_bank_path(work, n, d), file, out, rows_per_shard)
    wall = time.perf_counter() - t0
    import shutil

    shutil.rmtree(out)  # written by this phase a moment ago
    return {"wall_s": wall, "prompts_per_s": n / wall}


def run_phase(name: str, work: Path, n: int, d: int, rows_per_shard: int) -> dict[str, Any]:
    """Run one phase in a fresh interpreter and return its figures plus its peak RSS."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--work", str(work), "--n", str(n), "--d", str(d),
           "--rows-per-shard", str(rows_per_shard)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- packaged models: predict throughput and the per-sample training cost ----------------------------

def predict_throughput(config: str, which: str, n_pairs: int, work: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Seconds per 1,000 ``predict`` pairs on the ``which`` model, with the prefix cache and without."""
    import torch

    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.io.bank import PromptBank
    from puma_lightning.models.heads import build_head
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.commands.predict import PredictArguments, run_predict

    out: dict[str, Any] = {}
    for way, cache in (("prefix-cache", 4096.0), ("plain", None)):
        cfg = load_config([config], [*overrides, f"run_dir={work / 'predict_run'}", "trainer.enable_progress_bar=false"])
        cfg[which].prefix_cache_mb = cache
        exp = Experiment(cfg)
        lm = exp.backbone(which)
        table = exp.table
        bank_dir = work / f"predict_bank_{which}"
        if not bank_dir.exists():
            torch.manual_seed(0)
            prompts = torch.randn(table.n_users, int(cfg.prompt.length), lm.hidden_size) * 0.02
            PromptBank(prompts, list(table.user_ids), lm.name, lm.fingerprint, {}, build_head(table.task).state_dict()).save(bank_dir)
            rng = np.random.default_rng(0)
            items = table.item_id_list()
            candidates = rng.choice(table.n_items, size=min(PREDICT_CANDIDATES, table.n_items), replace=False)
            users = rng.choice(table.n_users, size=-(-n_pairs // candidates.size), replace=table.n_users * candidates.size < n_pairs)
            pairs = [(table.user_ids[u], items[i]) for u in users for i in candidates][:n_pairs]
            (work / "pairs.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in pairs), encoding="utf-8")
        args = PredictArguments(bank=str(bank_dir), pairs=str(work / "pairs.csv"), model=which,
                                out=str(work / f"pred_{which}_{way}.csv"))
        out[way] = run_predict(cfg, args)["predict_s"] * 1000.0 / n_pairs  # the predict loop only, not model loading
        out["dtype"] = str(lm.dtype).replace("torch.", "")
    out["speedup"] = out["plain"] / out["prefix-cache"]
    return out


def per_sample_costs(config: str, overrides: Sequence[str], work: Path, steps: tuple[int, int] = (2, 6)) -> dict[str, float]:
    """Marginal seconds per training sample of prompt tuning and of adapter training on the target model:
    (time of ``steps[1]`` steps - time of ``steps[0]`` steps) / samples in between, so start-up is excluded."""
    import torch

    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.models.adapters import build_adapter
    from puma_lightning.models.heads import build_head
    from puma_lightning.pipeline.builders import build_prompt_tuning, initial_prompts
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.pipeline.training import make_trainer
    from puma_lightning.tasks import Migration

    cfg = load_config([config], [*overrides, f"run_dir={work / 'calib_run'}", "trainer.enable_progress_bar=false",
                                 "trainer.limit_val_batches=0"])
    exp = Experiment(cfg)
    lm = exp.backbone("target")
    table = exp.table
    costs: dict[str, float] = {}
    for kind in ("prompt", "adapter"):
        times = []
        for n_steps in steps:
            torch.manual_seed(0)
            if kind == "prompt":
                prompts, scale = initial_prompts(cfg, lm, table)
                module = build_prompt_tuning(cfg, lm, table, build_head(table.task), prompts, scale)
                batch = int(cfg.prompt.batch_size)
            else:
                source = torch.randn(table.n_users, int(cfg.prompt.length), 576) * 0.02
                adapter = build_adapter(cfg.adapter.kind, 576, lm.hidden_size, int(cfg.adapter.hidden), 0.0)
                module = Migration(lm, build_head(table.task), table.task, source, adapter, lr=float(cfg.adapter.lr))
                batch = int(cfg.adapter.batch_size)
            trainer = make_trainer(cfg, exp.run_dir, f"calib_{kind}", max_epochs=1, log=False, max_steps=n_steps)
            t0 = time.perf_counter()
            trainer.fit(module, datamodule=exp.datamodule(lm, batch))
            times.append(time.perf_counter() - t0)
        costs[f"{kind}_s_per_sample"] = (times[1] - times[0]) / ((steps[1] - steps[0]) * batch)
    costs["dtype"] = str(lm.dtype).replace("torch.", "")
    return costs


def cost_model(costs: dict[str, float], cfg: Any, sizes: Sequence[int], migrate_per_prompt_s: float) -> list[dict[str, Any]]:
    """Projected training samples and wall time of full retraining vs PUMA at each N (labelled projections)."""
    train_rows = max(1, int(round(int(cfg.data.max_rows_per_user or 12) * (1 - cfg.data.valid_ratio - cfg.data.test_ratio))))
    rows = []
    for n in sizes:
        budget = max(1, int(round(BUDGET_FRACTION * n)))
        full = n * train_rows * int(cfg.prompt.epochs)
        puma = budget * train_rows * int(cfg.adapter.epochs)
        full_s = full * costs["prompt_s_per_sample"]
        puma_s = puma * costs["adapter_s_per_sample"] + n * migrate_per_prompt_s
        rows.append({"users": n, "budget": budget, "full_samples": full, "puma_samples": puma, "full_hours": full_s / 3600,
                     "puma_hours": puma_s / 3600, "time_ratio": full_s / puma_s, "projection": True})
    return rows


# -- driver ------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--widths", default="576,2048")
    ap.add_argument("--shard-mb", type=float, default=128.0, help="shard size (and migration block) in MiB of float32 prompts")
    ap.add_argument("--rows-per-shard", type=int, default=None, help="rows per shard (overrides --shard-mb)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "ml100k.yaml"))
    ap.add_argument("--predict-pairs", type=int, default=1000)
    ap.add_argument("--skip-predict", action="store_true")
    ap.add_argument("--skip-calibration", action="store_true")
    ap.add_argument("--out", default="runs/scale")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--d", type=int, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for the packaged-model figures")
    return ap.parse_args(argv)


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [doc["machine_line"], "", "## Banks, selection and migration (measured; synthetic prompts, l = 1)", "",
             "| users | width | shard rows | write MB/s | write peak MiB | open s | fetch 1,000 s | scan rows/s | stats ratings/s | "
             "select s | select peak MiB | migrate prompts/s | migrate peak MiB |", "|" + "---|" * 13]
    for r in doc["banks"]:
        p = r["phases"]

        def g(phase: str, key: str, fmt: str = "{:.3g}") -> str:
            value = p.get(phase, {}).get(key)
            return p[phase]["error"][:40] if "error" in p.get(phase, {}) else ("—" if value is None else fmt.format(value))

        lines.append(f"| {r['users']:,} | {r['width']} | {r.get('rows_per_shard', '—'):,} | {g('write', 'MB_per_s')} | {g('write', 'peak_rss_mb', '{:.0f}')} | "
                     f"{g('read', 'open_s')} | {g('read', 'fetch_1000_s')} | {g('read', 'scan_rows_per_s')} | "
                     f"{g('stats', 'ratings_per_s')} | {g('select', 'select_s')} | {g('select', 'peak_rss_mb', '{:.0f}')} | "
                     f"{g('migrate', 'prompts_per_s')} | {g('migrate', 'peak_rss_mb', '{:.0f}')} |")
    lines += ["", f"baseline RSS of a process that only imports: {doc.get('baseline_rss_mb', float('nan')):.0f} MiB", ""]
    if doc.get("predict"):
        lines += [f"## predict, seconds per 1,000 pairs (measured; users x {PREDICT_CANDIDATES} candidate items)", "", "| model | dtype | prefix cache | plain | speed-up |",
                  "|---|---|---|---|---|"]
        for model, r in doc["predict"].items():
            lines.append(f"| {model} | {r['dtype']} | {r['prefix-cache']:.2f} | {r['plain']:.2f} | {r['speedup']:.2f}x |")
        lines.append("")
    if doc.get("cost_model"):
        c = doc["calibration"]
        lines += ["## Full retraining vs PUMA as N grows (PROJECTION from per-sample costs measured in this run)", "",
                  f"calibration ({c['dtype']}): prompt tuning {c['prompt_s_per_sample'] * 1e3:.2f} ms/sample, adapter training "
                  f"{c['adapter_s_per_sample'] * 1e3:.2f} ms/sample, migration {doc['migrate_s_per_prompt'] * 1e6:.2f} µs/prompt; "
                  f"budget {BUDGET_FRACTION:.0%} of N", "",
                  "| users | budget | full samples | PUMA samples | full h (proj.) | PUMA h (proj.) | time ratio |", "|---|---|---|---|---|---|---|"]
        for r in doc["cost_model"]:
            lines.append(f"| {r['users']:,} | {r['budget']:,} | {r['full_samples']:,} | {r['puma_samples']:,} | {r['full_hours']:.2f} | "
                         f"{r['puma_hours']:.2f} | {r['time_ratio']:.1f}x |")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for width in sorted({r["width"] for r in doc["banks"]}):
        rows = [r for r in doc["banks"] if r["width"] == width]
        xs = [r["users"] for r in rows]
        for phase, style in (("select", "-o"), ("migrate", "--s")):
            ys = [r["phases"].get(phase, {}).get("wall_s") for r in rows]
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if pts:
                axes[0].plot(*zip(*pts), style, label=f"{phase}, d={width}")
    axes[0].set(xscale="log", yscale="log", xlabel="users", ylabel="wall s (measured)", title="selection and migration")
    axes[0].legend(fontsize=8)
    if doc.get("cost_model"):
        xs = [r["users"] for r in doc["cost_model"]]
        axes[1].plot(xs, [r["full_hours"] for r in doc["cost_model"]], "-o", label="full retraining (projection)")
        axes[1].plot(xs, [r["puma_hours"] for r in doc["cost_model"]], "-s", label="PUMA (projection)")
        axes[1].set(xscale="log", yscale="log", xlabel="users", ylabel="hours", title="training cost (projection)")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase:
        figures = globals()[f"phase_{args.phase}"](Path(args.work), args.n, args.d, args.rows_per_shard)
        print(json.dumps({**figures, "peak_rss_mb": peak_rss_mb()}))
        return 0
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    line = describe_machine()
    print(line, flush=True)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    widths = [int(w) for w in args.widths.split(",")]
    doc: dict[str, Any] = {"machine": machine_record(None), "machine_line": line, "banks": []}
    doc["baseline_rss_mb"] = run_phase("baseline", work, 1, 1, 1).get("peak_rss_mb")
    for d in widths:
        for n in sizes:
            phases: dict[str, Any] = {}
            rows_per_shard = args.rows_per_shard or max(1, int(args.shard_mb * 2**20) // (4 * d))
            for name in PHASES[1:]:
                phases[name] = run_phase(name, work, n, d, rows_per_shard)
                print(f"{n:>9,} x {d:<5} {name:<8} {json.dumps(phases[name])}", flush=True)
            bank = _bank_path(work, n, d)
            if bank.is_dir() and (bank / "manifest.json").is_file():
                import shutil

                shutil.rmtree(bank)  # written by the write phase of this run
            doc["banks"].append({"users": n, "width": d, "rows_per_shard": rows_per_shard, "phases": phases})
    migrate_rates = [r["phases"]["migrate"].get("prompts_per_s") for r in doc["banks"] if r["width"] == min(widths)]
    doc["migrate_s_per_prompt"] = 1.0 / max([m for m in migrate_rates if m] or [float("inf")])
    from puma_lightning.cli.config_loader import load_config

    if not args.skip_predict:
        doc["predict"] = {}
        for which in ("source", "target"):
            doc["predict"][which] = predict_throughput(args.config, which, args.predict_pairs, work, args.overrides)
            print(f"predict {which}: {json.dumps(doc['predict'][which])}", flush=True)
    if not args.skip_calibration:
        doc["calibration"] = per_sample_costs(args.config, args.overrides, work)
        doc["cost_model"] = cost_model(doc["calibration"], load_config([args.config], args.overrides), sizes, doc["migrate_s_per_prompt"])
    (out / "scale.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    text = to_markdown(doc)
    (out / "scale.md").write_text(text, encoding="utf-8")
    plot(doc, out / "scale.png")
    print(text.split("\n", 1)[1])  # the machine line was printed first
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
