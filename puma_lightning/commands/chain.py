"""Chained migration A -> B -> C -> ...: each hop migrates the previous hop's migrated bank.

Prompts are trained on the first model only. Hop ``k`` is an ordinary
:class:`~puma_lightning.pipeline.experiment.Experiment` in ``<run_dir>/hop<k>_<model>`` whose
``source_dir`` is the previous hop's ``puma`` stage (a folder with ``bank/`` and ``stage.json``),
so its adapter trains on the previous hop's migrated prompts — never on A's data — through model
``k``; it saves ``puma/adapter.safetensors`` and ``puma/bank`` (with lineage back to A), evaluates
on the test split, and retrains every prompt on model ``k`` (``full_retrain``) as the reference.
Finished hops are reused. Writes ``chain.json``, ``chain.md`` and ``chain.png`` (metric per hop,
migrated vs full retraining, like the paper's Figure 5).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from puma_lightning.commands.arguments import Arguments
from puma_lightning.errors import PumaError
from puma_lightning.pipeline.figures import line_plot, markdown_table, write_text
from puma_lightning.pipeline.run_dir import RunDir
from puma_lightning.pipeline.sub_runs import metric_names, primary_metric, safe_name, sub_config

log = logging.getLogger(__name__)


def hop_dir(run_dir: Path, index: int, model: str) -> Path:
    """Folder of hop ``index`` (0 = the first model's own prompts)."""
    return run_dir / f"hop{index}_{safe_name(model)}"


def gain(task: str, full: float | None, migrated: float | None) -> float | None:
    """Generalisation gain: RMSE(full retraining) / RMSE(migrated); for clicks AUC(migrated) / AUC(full)."""
    if full is None or migrated is None or not migrated or not full:
        return None
    return full / migrated if task == "rating" else migrated / full


def run_chain(cfg: DictConfig) -> dict[str, Any]:
    """Run (or reuse) every hop of ``cfg.chain.models`` and write the chain table and plot."""
    from puma_lightning.pipeline.experiment import Experiment

    models = [str(m) for m in cfg.chain.models]
    if len(models) < 2:
        raise PumaError("chain needs 'chain.models' with at least two models, e.g. chain.models=[tiny-llama,tiny-qwen2,tiny-gemma3]")
    run_dir = RunDir.of(cfg).path
    first = Experiment(sub_config(cfg, hop_dir(run_dir, 0, models[0]), **{"source.name": models[0], "source_dir": None}))
    task = first.table.task
    record = first.pretrain("source", "source")
    hops: list[dict[str, Any]] = [{
        "hop": 0, "model": models[0], "dir": str(first.run_dir), "migrated": record["metrics"], "full_retrain": record["metrics"],
        "hidden_size": _bank_width(first.stage_dir("source") / "bank"), "migrate_wall_s": None, "migrate_train_samples": None,
        "full_wall_s": record["wall_s"], "full_train_samples": record["train_samples"],
    }]
    previous = first.stage_dir("source")
    del first
    for k in range(1, len(models)):
        hcfg = sub_config(cfg, hop_dir(run_dir, k, models[k]),
                          **{"source.name": models[k - 1], "target.name": models[k], "source_dir": str(previous),
                             "source.bank": None})  # source.bank is the first model's: later hops read the previous hop
        exp = Experiment(hcfg)
        log.info("chain hop %d: %s -> %s", k, models[k - 1], models[k])
        puma = exp.migrate_stage()
        full = exp.pretrain("target", "full_retrain") if cfg.baselines.full_retrain else None
        hops.append({
            "hop": k, "model": models[k], "dir": str(exp.run_dir), "migrated": puma["metrics"],
            "full_retrain": full["metrics"] if full else None, "hidden_size": _bank_width(exp.stage_dir("puma") / "bank"),
            "migrate_wall_s": puma["wall_s"], "migrate_train_samples": puma["train_samples"],
            "full_wall_s": full["wall_s"] if full else None, "full_train_samples": full["train_samples"] if full else None,
            "adapter": str(exp.stage_dir("puma") / "adapter.safetensors"), "bank": str(exp.stage_dir("puma") / "bank"),
        })
        previous = exp.stage_dir("puma")
        del exp
    return write_chain(run_dir, task, hops, int(cfg.placebo.resamples))


def _bank_width(path: Path) -> int | None:
    from puma_lightning.io.bank import read_manifest

    return read_manifest(path).get("hidden_size")


def write_chain(run_dir: Path, task: str, hops: list[dict[str, Any]], resamples: int = 1000) -> dict[str, Any]:
    """``chain.json``, ``chain.md`` and ``chain.png`` from the hop records (with each hop's placebo columns, see
    :mod:`puma_lightning.pipeline.placebo`: ``personal_gain`` of its migrated bank, ``full_personal_gain`` of its full
    retraining, ``retained`` their ratio)."""
    from puma_lightning.pipeline.placebo import NOTE, cell, stage_gains

    names = metric_names(task)
    main_metric, _ = primary_metric(task)
    for h in hops:
        h["gain"] = gain(task, (h["full_retrain"] or {}).get(main_metric), (h["migrated"] or {}).get(main_metric))
        own = Path(h["dir"]) / ("source" if h["hop"] == 0 else "puma")
        full = Path(h["dir"]) / "full_retrain" if h["hop"] and h["full_retrain"] else None
        h.update(stage_gains(main_metric, own, full, resamples))
        if full is not None:
            h["full_personal_gain"] = stage_gains(main_metric, full, resamples=resamples).get("personal_gain")
    doc = {"task": task, "metric": main_metric, "models": [h["model"] for h in hops], "hops": hops}
    write_text(run_dir / "chain.json", json.dumps(doc, indent=1))
    header = ["hop", "model", "hidden", *[f"migrated {m.upper()}" for m in names], *[f"full retrain {m.upper()}" for m in names],
              "gain", "personal gain, migrated [95 %]", "personal gain, full retrain [95 %]", "retained [95 %]",
              "adapter train samples", "full retrain samples", "migrate s", "full retrain s"]
    rows = [[h["hop"], h["model"], h["hidden_size"], *[(h["migrated"] or {}).get(m) for m in names],
             *[(h["full_retrain"] or {}).get(m) for m in names], h["gain"], cell(h.get("personal_gain")),
             cell(h.get("full_personal_gain")) if h["hop"] else "–", cell(h.get("retained"), 1, percent=True) if h["hop"] else "–",
             h["migrate_train_samples"], h["full_train_samples"],
             _secs(h["migrate_wall_s"]), _secs(h["full_wall_s"])] for h in hops]
    note = ("\n- hop 0 is the first model's own prompts (trained there; migrated = full retraining). Each later hop's adapter "
            "trains on the previous hop's migrated bank, never on the first model's data.\n"
            f"- gain = {'RMSE(full retraining) / RMSE(migrated)' if task == 'rating' else 'AUC(migrated) / AUC(full retraining)'}; > 1: migration wins.\n"
            f"- {NOTE}.\n")
    md = markdown_table(header, rows) + note
    write_text(run_dir / "chain.md", md)
    label = " -> ".join(doc["models"])
    line_plot(run_dir / "chain.png", [f"{h['hop']}: {h['model']}" for h in hops],
              {"migrated (chained PUMA)": [(h["migrated"] or {}).get(main_metric) for h in hops],
               "full retraining": [(h["full_retrain"] or {}).get(main_metric) for h in hops]},
              main_metric.upper(), f"chained migration {label}")
    print(md)
    return doc


def _secs(value: float | None) -> str | None:
    return None if value is None else f"{float(value):.1f}"


def run(cfg: DictConfig, run_dir: Path, args: Arguments) -> None:
    """The command: :func:`run_chain` on the loaded config."""
    run_chain(cfg)
