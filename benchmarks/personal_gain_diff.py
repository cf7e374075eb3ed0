"""Paired difference of two runs' personal gains (or retained shares) on the same test rows, pooled over seeds.

    python benchmarks/personal_gain_diff.py RUN_A RUN_B [--stage puma] [--full full_retrain] [--metric rmse]

Two runs of one config that differ in one setting (e.g. ``selection=random`` against ``puma``) test the same rows
with the same seeds. For each, the stage's personal gain is its placebo metric minus its own (a seeded derangement
of the prompts; ``placebo_predictions.npz`` beside ``test_predictions.npz``). This prints both runs' gains and
retained shares (÷ full retraining's gain, ``--full``, from RUN_A), and the difference A − B of each, with 95 %
intervals from one joint bootstrap of the rows: an interval holding 0 reads "no difference". Seeds are the
``seed_<s>`` folders both runs have (a single-seed run: the run folder itself).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np


def seed_dirs(run: Path) -> dict[int, Path]:
    """``{seed: folder}`` of a run (``{0: run}`` when it has no ``seed_<s>`` folders)."""
    found = {int(p.name.split("_", 1)[1]): p for p in run.glob("seed_*") if p.name.split("_", 1)[1].isdigit()}
    return found or {0: run}


def pooled_vectors(runs: Sequence[Path], stage: str, full: str) -> dict[str, np.ndarray]:
    """Own and placebo predictions of ``stage`` in each run and of ``full`` in the first, on rows every one shares,
    pooled over the seeds all runs have (rows of different seeds kept apart)."""
    from puma_lightning.pipeline.placebo import load_placebo
    from puma_lightning.pipeline.predictions import load_predictions

    seeds = sorted(set.intersection(*(set(seed_dirs(r)) for r in runs)))
    if not seeds:
        raise SystemExit(f"error: {', '.join(map(str, runs))} share no seed folder")
    parts: dict[str, list[np.ndarray]] = {}
    for s in seeds:
        sources = {f"own{i}": load_predictions(seed_dirs(r)[s] / stage) for i, r in enumerate(runs)}
        sources |= {f"placebo{i}": load_placebo(seed_dirs(r)[s] / stage) for i, r in enumerate(runs)}
        sources |= {"full_own": load_predictions(seed_dirs(runs[0])[s] / full),
                    "full_placebo": load_placebo(seed_dirs(runs[0])[s] / full)}
        missing = [k for k, v in sources.items() if v is None]
        if missing:
            raise SystemExit(f"error: seed {s}: no predictions for {missing} (stage {stage!r}, full {full!r})")
        first = sources["own0"]
        if any(not np.array_equal(v["row"], first["row"]) for v in sources.values()):
            raise SystemExit(f"error: seed {s}: the runs did not test the same rows")
        for key, value in sources.items():
            parts.setdefault(key, []).append(np.asarray(value["prediction"], dtype=np.float64))
        parts.setdefault("label", []).append(np.asarray(first["label"], dtype=np.float64))
        parts.setdefault("user", []).append(np.asarray(first["user"]) + 10**9 * s)
    return {k: np.concatenate(v) for k, v in parts.items()} | {"seeds": np.asarray(seeds)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--stage", default="puma")
    p.add_argument("--full", default="full_retrain", help="the stage whose gain 'retained' divides by (from RUN_A)")
    p.add_argument("--metric", default="rmse", choices=("rmse", "mae", "auc", "uauc"))
    p.add_argument("--resamples", type=int, default=1000)
    args = p.parse_args(argv)

    from puma_lightning.tasks.placebo import better_by, interval, metric_samples

    v = pooled_vectors([args.run_a, args.run_b], args.stage, args.full)
    names = ["own0", "placebo0", "own1", "placebo1", "full_own", "full_placebo"]
    point, samples = metric_samples(args.metric, [v[n] for n in names], v["label"], v["user"], args.resamples)

    def stats(values: np.ndarray) -> dict[str, np.ndarray]:
        gain_a, gain_b = (better_by(args.metric, values[..., i], values[..., i + 1]) for i in (0, 2))
        full = better_by(args.metric, values[..., 4], values[..., 5])
        return {"gain A": gain_a, "gain B": gain_b, "gain A - B": gain_a - gain_b,
                "retained A": gain_a / full, "retained B": gain_b / full, "retained A - B": (gain_a - gain_b) / full}

    at, over = stats(point), stats(samples)
    print(f"{args.stage}: A = {args.run_a}, B = {args.run_b}; seeds {v['seeds'].tolist()}, {len(v['label'])} test rows "
          f"pooled; {args.metric}; 95 % joint bootstrap ({args.resamples} resamples of the rows)")
    print("| statistic | value | 95 % interval |\n|---|---|---|")
    for name in at:
        ci = interval(float(at[name]), np.asarray(over[name]))
        scale, unit = (100.0, " %") if name.startswith("retained") else (1.0, "")
        verdict = "  no difference" if name.endswith("A - B") and ci["low"] <= 0 <= ci["high"] else ""
        print(f"| {name} | {scale * ci['value']:+.4g}{unit} | [{scale * ci['low']:+.4g}, {scale * ci['high']:+.4g}]{unit}{verdict} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
