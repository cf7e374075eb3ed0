"""Fault benchmark: run a small ``pretrain`` (or ``fit``) N times, SIGKILL it at random moments,
resume each time until it finishes, then report kills survived, runs finished, outputs corrupted
(every bank must load and verify its hash, every JSON must parse) and metric drift against an
uninterrupted run. The JSON report is printed under a ``machine: ...`` line and carries the same
machine under its ``machine`` key.

    python benchmarks/faults.py --runs 3 --kills 3 [--command fit]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from puma_lightning.machine import describe_machine, machine_record

ROOT = Path(__file__).resolve().parents[1]

TINY = ["data.n_users=12", "data.rows_per_user=10", "prompt.batch_size=8", "prompt.epochs=3", "adapter.batch_size=8",
        "adapter.epochs=2", "baselines.random_init_epochs=1", "baselines.full_retrain=false", "selection.budget=6",
        "selection.n_clusters=2", "selection.min_per_cluster=1", "trainer.checkpoint_every_n_steps=5",
        "trainer.num_threads=1"]


def command(name: str, run_dir: Path) -> list[str]:
    """The CLI call of one attempt."""
    extra = ["model=source"] if name == "pretrain" else []
    return [sys.executable, "-m", "puma_lightning", name, "--config", str(ROOT / "configs" / "smoke.yaml"),
            f"run_dir={run_dir}", *extra, *TINY]


def attempt(cmd: list[str], kill_after: float | None) -> tuple[int, float]:
    """Run once; SIGKILL after ``kill_after`` seconds (None: let it finish). Returns (exit code, seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode, time.perf_counter() - start


def verify(run_dir: Path) -> list[str]:
    """Problems with the outputs: banks that do not load/verify, JSON that does not parse, temp files."""
    from puma_lightning.io.bank import PromptBank

    problems = []
    for manifest in run_dir.rglob("manifest.json"):
        try:
            PromptBank.load(manifest.parent)
        except Exception as exc:  # noqa: BLE001 - any failure is a corrupted output
            problems.append(f"{manifest.parent}: {exc}")
    for path in run_dir.rglob("*.json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{path}: {exc}")
    return problems


def metrics(run_dir: Path, name: str) -> dict[str, float]:
    """Test metrics of every finished stage, ``{stage/metric: value}``."""
    out = {}
    for stage_json in sorted(run_dir.glob("*/stage.json")):
        record = json.loads(stage_json.read_text())
        for k, v in record.get("metrics", {}).items():
            out[f"{stage_json.parent.name}/{k}"] = v
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kills", type=int, default=3, help="kills per run (at random moments)")
    parser.add_argument("--command", choices=["pretrain", "fit"], default="pretrain")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="puma-faults-"))
    try:
        ref_dir = work / "reference"
        code, ref_s = attempt(command(args.command, ref_dir), None)
        assert code == 0, "the uninterrupted run failed"
        reference = metrics(ref_dir, args.command)
        kills = finished = corrupted = 0
        drift = 0.0
        for run in range(args.runs):
            run_dir = work / f"run{run}"
            for _ in range(args.kills):
                code, _ = attempt(command(args.command, run_dir), rng.uniform(3.0, ref_s))
                kills += code == -signal.SIGKILL
                corrupted += len(verify(run_dir))
            code, _ = attempt(command(args.command, run_dir), None)
            finished += code == 0
            corrupted += len(verify(run_dir))
            got = metrics(run_dir, args.command)
            drift = max([drift] + [abs(got.get(k, float("inf")) - v) for k, v in reference.items()])
        report = {"command": args.command, "runs": args.runs, "kills_survived": kills, "runs_finished": finished,
                  "outputs_corrupted": corrupted, "max_metric_drift": drift, "uninterrupted_s": round(ref_s, 1),
                  "machine": machine_record(None)}
        print(describe_machine(None))
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
