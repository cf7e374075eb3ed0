"""``seeds=[0,1,2]``: run ``fit``, ``chain``, ``aggregate`` or ``cold-start`` once per seed in ``<run_dir>/seed_<s>/``,
then one table of mean ± std with paired intervals on the same test rows (:mod:`puma_lightning.pipeline.seeds`)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from pathlib import Path
from puma_lightning.pipeline.seeds import FIT_REFERENCES, SeededCommand, SeedRow, SeedRun, run_over_seeds


def _fit_one(cfg: DictConfig) -> SeedRun:
    from puma_lightning.pipeline.experiment import Experiment

    exp = Experiment(cfg)
    result = exp.fit()
    from puma_lightning.pipeline.results import PAIRED_REFERENCE
    from puma_lightning.pipeline.stages import migrated_rows

    full = PAIRED_REFERENCE if PAIRED_REFERENCE in result["methods"] else None
    rows = {m: SeedRow(values, exp.method_dir(m), [r for r in FIT_REFERENCES if r != m and r in result["methods"]],
                       full if m in migrated_rows() else None)
            for m, values in result["methods"].items()}
    return SeedRun(result["task"], rows, {"num_test_rows": result.get("num_test_rows"), "dataset": result.get("dataset"),
                                          "machine": result.get("machine")})


def _chain_one(cfg: DictConfig) -> SeedRun:
    from puma_lightning.commands.chain import run_chain

    doc = run_chain(cfg)
    rows: dict[str, SeedRow] = {}
    for hop in doc["hops"]:
        tag = f"hop{hop['hop']} {hop['model']}"
        if hop["hop"] == 0:
            rows[f"{tag} source"] = SeedRow({**hop["migrated"], "wall_s": hop["full_wall_s"]}, Path(hop["dir"]) / "source")
            continue
        full = f"{tag} full_retrain"
        rows[f"{tag} migrated"] = SeedRow({**hop["migrated"], "wall_s": hop["migrate_wall_s"], "gain": hop["gain"]},
                                          Path(hop["dir"]) / "puma", [full] if hop["full_retrain"] else [],
                                          full if hop["full_retrain"] else None)
        if hop["full_retrain"]:
            rows[full] = SeedRow({**hop["full_retrain"], "wall_s": hop["full_wall_s"]}, Path(hop["dir"]) / "full_retrain")
    return SeedRun(doc["task"], rows)


def _aggregate_one(cfg: DictConfig) -> SeedRun:
    from puma_lightning.commands.aggregate import run_aggregate

    doc = run_aggregate(cfg)
    full = next((r["method"] for r in doc["rows"] if r["kind"] == "full_retrain"), None)
    singles = [r["method"] for r in doc["rows"] if r["kind"] == "single"]

    def references(row: dict[str, Any]) -> list[str]:
        """Every row against full retraining; the aggregated one also against each source alone (does merging beat
        the best single source?), paired where that source was tested on the same rows."""
        if row["method"] == full:
            return []
        return ([full] if full else []) + (singles if row["kind"] == "aggregated" else [])

    rows = {r["method"]: SeedRow({**r["metrics"], "wall_s": r["wall_s"], "train_samples": r["train_samples"]}, r.get("stage_dir"),
                                 references(r), full if full and r["method"] != full else None)
            for r in doc["rows"]}
    return SeedRun(doc["task"], rows)


def _cold_start_one(cfg: DictConfig) -> SeedRun:
    from puma_lightning.commands.cold_start import run_cold_start

    doc = run_cold_start(cfg)
    rows = {name: SeedRow({**r["metrics"], "wall_s": r["wall_s"], "target_train_samples": r["target_train_samples"]},
                          r.get("stage_dir"), [] if name == "scratch" else ["scratch"],
                          None if name == "scratch" else "scratch")
            for name, r in doc["methods"].items()}
    return SeedRun(doc["task"], rows)


SEEDED_COMMANDS: dict[str, SeededCommand] = {
    "fit": SeededCommand("results", _fit_one),
    "chain": SeededCommand("chain", _chain_one, ("wall_s", "gain")),
    "aggregate": SeededCommand("aggregate", _aggregate_one, ("wall_s", "train_samples")),
    "cold-start": SeededCommand("cold_start", _cold_start_one, ("wall_s", "target_train_samples")),
}
"""Commands that accept ``seeds=[...]``, by CLI name."""


def run_seeds(cfg: DictConfig, command: str = "fit") -> dict[str, Any]:
    """``command`` (a key of :data:`SEEDED_COMMANDS`) once per seed of ``cfg.seeds``, then the table over seeds."""
    return run_over_seeds(cfg, SEEDED_COMMANDS[command])
