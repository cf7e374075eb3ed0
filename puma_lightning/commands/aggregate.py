"""Aggregated migration [A, B, ...] -> C: one adapter maps the concatenation of a user's prompts.

Each source bank (trained here, or given as ``aggregate.banks``) is aligned to the dataset's users
by user id and the banks are concatenated along the feature axis (``[N, l, d_A + d_B + ...]``).
Users missing from a source follow ``aggregate.missing``:

- ``error``: stop, naming how many users each bank lacks (the default: nothing is silently changed);
- ``drop``: keep only users present in every bank (every run of the command uses that user set);
- ``zero_fill``: zeros for the missing block, and one indicator feature per source appended to the
  feature axis (1 = present, 0 = filled), so the adapter can tell a missing block from a zero prompt.
  The indicators are appended under this policy whether or not anyone is missing, so the adapter's
  input width depends only on the sources.

The aggregated bank is written as a source stage (``<run_dir>/aggregated_source/bank`` +
``stage.json``) and migrated by an ordinary Experiment (``<run_dir>/aggregated``); each source alone
is migrated the same way (``<run_dir>/single_<i>_<model>``, on the users that source has), and
full retraining on the target is the reference. Under ``adapter.init`` other than ``random``, the aggregated
adapter starts as the mean of the single-source maps, each source's block mapped by its own model's
(:func:`puma_lightning.pipeline.levers.adapter_init.aggregated_start_map`). Writes ``aggregate.json``, ``aggregate.md`` and
``aggregate.png`` (the paper's Figure 6). The rating head starts from the first source's head.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from puma_lightning.commands.arguments import Arguments
from puma_lightning.config import MISSING_POLICIES
from puma_lightning.errors import PumaError
from puma_lightning.io.atomic import atomic_write_text
from puma_lightning.io.bank import PromptBank
from puma_lightning.io.lineage import make_lineage, source_ref
from puma_lightning.pipeline.distributed import on_rank_zero
from puma_lightning.pipeline.figures import bar_chart, markdown_table, write_text
from puma_lightning.pipeline.run_dir import RECORD_FILE, RunDir
from puma_lightning.pipeline.sub_runs import (experiment_on, metric_names, primary_metric, safe_name, sub_config,
                                              subset_users, users_hash)
from puma_lightning.data.templates import template_label

log = logging.getLogger(__name__)


@dataclass
class Aligned:
    """Source banks aligned by user id and concatenated along the feature axis."""

    user_ids: list[str]
    prompts: torch.Tensor
    """``[N, l, sum(d_i) (+ S indicator features under zero_fill)]``."""
    present: np.ndarray
    """``[N, S]`` bool: user ``n`` has a prompt in source ``s``."""
    widths: list[int]
    policy: str


def align_banks(banks: Sequence[Any], user_ids: Sequence[str], policy: str) -> Aligned:
    """Align ``banks`` to ``user_ids`` (the dataset's users, in order) and concatenate them.

    See the module docstring for ``policy``. Banks must share the prompt length ``l``.
    """
    if policy not in MISSING_POLICIES:
        raise PumaError(f"aggregate.missing is {policy!r}; expected one of: {', '.join(MISSING_POLICIES)}")
    if len({b.prompt_length for b in banks}) > 1:
        raise PumaError(f"source banks have different prompt lengths {[b.prompt_length for b in banks]}; they cannot be concatenated")
    present = np.stack([np.isin(np.asarray(user_ids, dtype=object), np.asarray(b.user_ids, dtype=object)) for b in banks], axis=1) \
        if len(user_ids) else np.zeros((0, len(banks)), dtype=bool)
    lacking = {i: int((~present[:, i]).sum()) for i in range(len(banks)) if (~present[:, i]).any()}
    users = list(user_ids)
    if lacking and policy == "error":
        parts = [f"source {i} ({banks[i].model_name}) lacks {n} (first: {[u for u, p in zip(users, present[:, i]) if not p][:3]})"
                 for i, n in lacking.items()]
        raise PumaError("users missing from source banks: " + "; ".join(parts) + ". Set aggregate.missing=drop or zero_fill")
    if policy == "drop":
        keep = present.all(axis=1)
        users = [u for u, k in zip(users, keep) if k]
        present = present[keep]
    length = banks[0].prompt_length
    blocks = []
    for i, bank in enumerate(banks):
        block = torch.zeros(len(users), length, bank.hidden_size)
        have = np.flatnonzero(present[:, i])
        if len(have):
            block[torch.as_tensor(have)] = bank.rows_for([users[j] for j in have]).float()
        blocks.append(block)
    if policy == "zero_fill":
        blocks.append(torch.as_tensor(present, dtype=torch.float32)[:, None, :].expand(len(users), length, len(banks)).contiguous())
    return Aligned(users, torch.cat(blocks, dim=2), present, [b.hidden_size for b in banks], policy)


def aggregated_bank(aligned: Aligned, banks: Sequence[Any], paths: Sequence[Path], dataset: dict[str, Any]) -> PromptBank:
    """The aggregated source bank, with lineage naming every source bank by content hash."""
    refs = [source_ref(p) for p in paths]
    identity = json.dumps([[r["model_fingerprint"], r["content_hash"]] for r in refs] + [aligned.policy, aligned.user_ids])
    fingerprint = "agg-" + hashlib.sha256(identity.encode()).hexdigest()[:12]
    name = "aggregate:" + "+".join(b.model_name for b in banks)
    missing = {str(i): int((~aligned.present[:, i]).sum()) for i in range(len(banks))}
    summary = {"policy": aligned.policy, "sources": [b.model_name for b in banks], "widths": aligned.widths,
               "indicator_features": len(banks) if aligned.policy == "zero_fill" else 0,
               "missing_per_source": missing, "head_from": banks[0].model_name}
    lineage = make_lineage("aggregate", model={"name": name, "fingerprint": fingerprint, "hidden_size": int(aligned.prompts.shape[2])},
                           dataset=dataset, sources=refs, extra={"aggregate": summary})
    info = {"made_by": "aggregate", "aggregate": summary, "lineage": lineage, **{k: dataset[k] for k in ("template", "seed") if k in dataset},
            "dataset": dataset.get("name")}
    return PromptBank(aligned.prompts, aligned.user_ids, name, fingerprint, info=info, head_state=banks[0].head_state)


def _expose_bank(bank_path: Path, stage_dir: Path, record: dict[str, Any]) -> Path:
    """Make ``stage_dir`` a source stage (``bank/`` + ``stage.json``) pointing at an existing bank."""

    def write() -> None:
        stage_dir.mkdir(parents=True, exist_ok=True)
        link = stage_dir / "bank"
        if link.is_symlink() and link.resolve() != bank_path.resolve():
            link.unlink()
        if not link.exists():
            os.symlink(bank_path.resolve(), link, target_is_directory=True)  # no copy: banks can be large
        atomic_write_text(stage_dir / RECORD_FILE, json.dumps({"key": "external", **record}, indent=1))

    on_rank_zero(write)
    return stage_dir


def run_aggregate(cfg: DictConfig) -> dict[str, Any]:
    """Single-source and aggregated migrations to ``cfg.target``, the comparison table and chart."""
    from puma_lightning.pipeline.experiment import Experiment
    from puma_lightning.selection import strategy_class

    acfg = cfg.aggregate
    sources, banks_given = [str(s) for s in acfg.sources], [Path(b) for b in acfg.banks]
    if banks_given and sources and len(banks_given) != len(sources):
        raise PumaError(f"aggregate.banks has {len(banks_given)} entries but aggregate.sources has {len(sources)}")
    if max(len(sources), len(banks_given)) < 2:
        raise PumaError("aggregate needs at least two sources: aggregate.sources=[A,B] (or aggregate.banks=[PATH_A,PATH_B])")
    if cfg.adapter.get("distill_items"):
        raise PumaError(f"adapter.distill_items={cfg.adapter.distill_items}: an aggregated source has no single model to "
                        "teach the adapter; use adapter.distill_items=0 with aggregate")
    if strategy_class(cfg.selection).needs:
        raise PumaError(f"selection {cfg.selection.name!r} needs per-user statistics from a source model, which an aggregated "
                        "bank does not have; use puma, random, variance_bucket or a kmeans_* strategy without loss")
    if cfg.source.get("bank"):
        raise PumaError(f"source.bank={cfg.source.bank} names one source's prompts; aggregate reads banks you already have "
                        "from aggregate.banks=[BANK_A,BANK_B] (in the order of aggregate.sources)")
    run_dir = RunDir.of(cfg).path
    base = Experiment(sub_config(cfg, run_dir / "sources" / "_dataset"))
    table = base.table
    # 1. the source banks, each exposed as a source stage folder
    stage_dirs: list[Path] = []
    for i in range(max(len(sources), len(banks_given))):
        if banks_given:
            path = banks_given[i]
            bank_model = PromptBank.open(path).model_name
            stage_dirs.append(_expose_bank(path, run_dir / "sources" / f"{i}_{safe_name(bank_model)}",
                                           {"method": "external", "bank": str(path.resolve())}))
            if len(sources) <= i:
                sources.append(bank_model)
        else:
            exp = Experiment(sub_config(cfg, run_dir / "sources" / f"{i}_{safe_name(sources[i])}",
                                        **{"source.name": sources[i], "source_dir": None}))
            exp.pretrain("source", "source")
            stage_dirs.append(exp.stage_dir("source"))
    banks = [PromptBank.load(d / "bank") for d in stage_dirs]
    # 2. align and concatenate
    aligned = align_banks(banks, table.user_ids, str(acfg.missing))
    restricted = len(aligned.user_ids) < table.n_users
    suffix = f"-users{users_hash(aligned.user_ids)}" if restricted else ""
    eval_table = subset_users(table, aligned.user_ids, "aggregate_users") if restricted else table
    dataset = {"name": table.meta.get("name", cfg.data.name), "task": table.task, "template": template_label(cfg.data.template, str(cfg.data.task)),
               "seed": int(cfg.seed), "num_users": len(aligned.user_ids)}
    agg_stage = run_dir / f"aggregated_source{suffix}"
    bank = aggregated_bank(aligned, banks, [d / "bank" for d in stage_dirs], dataset)

    def save_aggregated() -> None:  # every rank calls this (same barrier sequence); rank 0 decides and writes
        existing = agg_stage / "bank" / "manifest.json"
        if not existing.is_file() or json.loads(existing.read_text())["model_fingerprint"] != bank.model_fingerprint:
            bank.save(agg_stage / "bank")
            atomic_write_text(agg_stage / RECORD_FILE, json.dumps({"key": bank.model_fingerprint, "method": "aggregate",
                                                                     "aggregate": bank.info["aggregate"]}, indent=1))

    on_rank_zero(save_aggregated)
    # 3. migrations: aggregated, then each source alone; full retraining on the target as reference
    rows: list[dict[str, Any]] = []
    agg_exp = experiment_on(sub_config(cfg, run_dir / f"aggregated{suffix}",
                                       **{"source.name": bank.model_name, "source_dir": str(agg_stage)}), eval_table)
    agg = agg_exp.migrate_stage()
    for i, (name, stage_dir, src_bank) in enumerate(zip(sources, stage_dirs, banks)):
        have = [u for u in eval_table.user_ids if u in set(src_bank.user_ids)]
        sub_table = eval_table if len(have) == eval_table.n_users else subset_users(eval_table, have, "single_source_users")
        tag = "" if sub_table is eval_table else f"-users{users_hash(have)}"
        exp = experiment_on(sub_config(cfg, run_dir / f"single_{i}_{safe_name(name)}{suffix or tag}",
                                       **{"source.name": name, "source_dir": str(stage_dir)}), sub_table)
        rec = exp.migrate_stage()
        rows.append({"method": f"{name} alone", "kind": "single", "source": name, "users": sub_table.n_users,
                     **_row(rec, exp.stage_dir("puma"))})
    rows.append({"method": " + ".join(sources), "kind": "aggregated", "source": bank.model_name, "users": eval_table.n_users,
                 **_row(agg, agg_exp.stage_dir("puma"))})
    if cfg.baselines.full_retrain:
        full_exp = experiment_on(sub_config(cfg, run_dir / f"full_retrain{suffix}"), eval_table)
        full = full_exp.pretrain("target", "full_retrain")
        rows.append({"method": "full retraining", "kind": "full_retrain", "source": None, "users": eval_table.n_users,
                     **_row(full, full_exp.stage_dir("full_retrain"))})
    return write_aggregate(run_dir, table.task, str(cfg.target.name), str(acfg.missing), aligned, sources, rows,
                           int(cfg.placebo.resamples))


def _row(record: dict[str, Any], stage_dir: Path) -> dict[str, Any]:
    return {"metrics": record["metrics"], "wall_s": record["wall_s"], "train_samples": record["train_samples"],
            "trainable_params": record["trainable_params"], "stage_dir": str(stage_dir)}


def write_aggregate(run_dir: Path, task: str, target: str, policy: str, aligned: Aligned, sources: list[str],
                    rows: list[dict[str, Any]], resamples: int = 1000) -> dict[str, Any]:
    """``aggregate.json``, ``aggregate.md`` and ``aggregate.png``; each row with its placebo columns (see
    :mod:`puma_lightning.pipeline.placebo`: ``personal_gain``, and ``retained`` against full retraining on the same rows)."""
    from puma_lightning.pipeline.placebo import NOTE, cell, stage_gains

    names = metric_names(task)
    main_metric, _ = primary_metric(task)
    full_dir = next((r.get("stage_dir") for r in rows if r["kind"] == "full_retrain"), None)
    for r in rows:
        r.update(stage_gains(main_metric, r.get("stage_dir"), full_dir if r["kind"] != "full_retrain" else None, resamples))
    missing = {s: int((~aligned.present[:, i]).sum()) for i, s in enumerate(sources)}
    doc = {"task": task, "target": target, "sources": sources, "missing_policy": policy, "widths": aligned.widths,
           "missing_per_source": missing, "rows": rows}
    write_text(run_dir / "aggregate.json", json.dumps(doc, indent=1))
    header = ["method", *[m.upper() for m in names], "personal gain [95 %]", "retained [95 %]", "test users",
              "trainable params", "train samples", "wall s"]
    table_rows = [[r["method"], *[r["metrics"].get(m) for m in names], cell(r.get("personal_gain")),
                   cell(r.get("retained"), 1, percent=True) if r["kind"] != "full_retrain" else "–", r["users"],
                   r["trainable_params"], r["train_samples"], f"{float(r['wall_s']):.1f}"] for r in rows]
    note = (f"\n- target {target}; source widths {dict(zip(sources, aligned.widths))}; users missing per source {missing}; "
            f"missing-user policy: {policy}.\n- a single source is evaluated on the users it has; aggregated and full retraining "
            "on every aligned user.\n"
            f"- {NOTE} (a single source tested on other rows has no retained).\n")
    md = markdown_table(header, table_rows) + note
    write_text(run_dir / "aggregate.md", md)
    bar_chart(run_dir / "aggregate.png", [r["method"] for r in rows], [r["metrics"].get(main_metric) for r in rows],
              main_metric.upper(), f"aggregated migration to {target}")
    print(md)
    return doc


def run(cfg: DictConfig, run_dir: Path, args: Arguments) -> None:
    """The command: :func:`run_aggregate` on the loaded config."""
    run_aggregate(cfg)
