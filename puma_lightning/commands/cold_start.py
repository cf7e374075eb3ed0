"""Cold-start users: users present on the target side but absent from the source bank.

A seeded ``cold_start.new_fraction`` of the users (or ``cold_start.new_users``) is held out. The
existing users go through an ordinary Experiment (``<run_dir>/existing-<hash>``: source prompts,
selection, adapter, migration). The new users (``<run_dir>/new-<hash>``) then get their target
prompts four ways, all evaluated on the new users' test rows with the adapter's head (frozen), so
only the prompts differ:

- ``scratch``: random prompts trained on the target for ``prompt.epochs`` (the reference);
- ``map`` (a): prompts trained on the *source* model (source head frozen) for ``prompt.epochs``, then
  mapped with the existing adapter (no target training);
- ``map_finetune`` (b): the mapped prompts of (a) as initialisation, fine-tuned on the target for
  ``cold_start.finetune_epochs``;
- ``mean_finetune`` (b, no source data): every new user starts from the adapter applied to the
  mean existing source prompt, fine-tuned on the target for ``cold_start.finetune_epochs``.

Compute is reported per model (training samples and wall seconds on the source and on the target);
the adapter itself is already paid for by the existing users. Writes ``cold_start.json`` and
``cold_start.md``; each method's stage keeps a ``stage.json`` (reused) and a bank with lineage.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from puma_lightning.commands.arguments import Arguments
from puma_lightning.errors import PumaError
from puma_lightning.io.bank import PromptBank
from puma_lightning.io.lineage import adapter_ref, make_lineage, source_ref
from puma_lightning.models.heads import load_head
from puma_lightning.pipeline.builders import build_prompt_tuning, fresh_head, initial_prompts, prompt_scale
from puma_lightning.pipeline.figures import bar_chart, markdown_table, write_text
from puma_lightning.pipeline.run_dir import RunDir
from puma_lightning.pipeline.stage import Outcome, Stage, run_stage, trainer_key
from puma_lightning.pipeline.sub_runs import experiment_on, metric_names, primary_metric, sub_config, subset_users, users_hash
from puma_lightning.pipeline.training import fit_best, test_metrics
from puma_lightning.data.templates import template_label

log = logging.getLogger(__name__)


def split_new_users(user_ids: list[str], fraction: float, explicit: list[str], seed: int) -> tuple[list[str], list[str]]:
    """``(existing, new)`` user ids, both in dataset order; seeded and a pure function of its inputs."""
    if explicit:
        unknown = [u for u in explicit if u not in set(user_ids)]
        if unknown:
            raise PumaError(f"cold_start.new_users: {len(unknown)} ids are not in the dataset (first: {unknown[:3]})")
        new = set(explicit)
    else:
        if not 0.0 < fraction < 1.0:
            raise PumaError(f"cold_start.new_fraction must be in (0, 1), got {fraction}")
        count = max(1, int(round(fraction * len(user_ids))))
        rng = np.random.default_rng(seed + 7919)
        new = {user_ids[i] for i in rng.choice(len(user_ids), size=count, replace=False)}
    existing = [u for u in user_ids if u not in new]
    if not existing:
        raise PumaError("cold start needs at least one existing user")
    return existing, [u for u in user_ids if u in new]


class NewUsersStage(Stage):
    """One way to give the new users their prompts on one model: tuned (``epochs`` > 0) or only tested, from ``init``
    (None: random), with the existing system's head for that model (frozen; a fresh one where it has none)."""

    def __init__(self, name: str, model: str, init: torch.Tensor | None, epochs: int, extra_key: Any,
                 lineage: dict[str, Any], head_state: dict[str, torch.Tensor] | None) -> None:
        self.name, self.model = name, model
        self.init, self.epochs, self.extra_key, self.lineage, self.head_state = init, epochs, extra_key, lineage, head_state

    def key_parts(self, exp: Any) -> tuple[Any, ...]:
        cfg = exp.cfg
        return (cfg.data, cfg[self.model], cfg.prompt, cfg.seed, self.name, self.epochs, self.extra_key, trainer_key(cfg.trainer))

    def compute(self, exp: Any, lm: Any, key: str, prepared: Any) -> Outcome:
        cfg, table = exp.cfg, exp.table
        init, scale = initial_prompts(cfg, lm, table) if self.init is None else (self.init, prompt_scale(cfg, lm))
        if self.head_state is not None:
            head = load_head(table.task, self.head_state, lm.hidden_size)
        else:
            head = fresh_head(cfg, lm, table, exp.mean_label(), init)
        module = build_prompt_tuning(cfg, lm, table, head, init, scale, train_prompts=self.epochs > 0, train_head=False)
        dm = exp.datamodule(lm, cfg.prompt.batch_size)
        stats = {"wall_s": 0.0, "train_samples": 0, "trainable_params": 0}
        if self.epochs > 0:
            st = fit_best(module, dm, cfg, exp.run_dir, self.name, self.epochs, resume_key=key)
            stats = {"wall_s": st.wall_s, "train_samples": st.train_samples, "trainable_params": st.trainable_params}
        metrics = test_metrics(module, dm, cfg, exp.run_dir, f"{self.name}_test")
        lineage = {**self.lineage, "metrics": metrics,
                   "model": {"name": lm.name, "fingerprint": lm.fingerprint, "hidden_size": lm.hidden_size}}

        def bank() -> PromptBank:
            return PromptBank(module.model_prompts(), list(table.user_ids), lm.name, lm.fingerprint,
                              info={"made_by": f"cold_start:{self.name}", "metrics": metrics, "lineage": lineage},
                              head_state=module.head.state_dict())
        return Outcome(metrics, {"model": self.model, **stats}, evaluator=module, datamodule=dm, bank=bank)


class _NewUsers:
    """Runs the new users' stages on one side, each a cached stage, with the existing system's heads."""

    def __init__(self, exp: Any, head_target: dict[str, torch.Tensor], head_source: dict[str, torch.Tensor] | None) -> None:
        self.exp = exp
        self.heads = {"target": head_target, "source": head_source}

    def run(self, stage: str, which: str, init: torch.Tensor | None, epochs: int, extra_key: Any,
            lineage: dict[str, Any]) -> dict[str, Any]:
        """:class:`NewUsersStage` ``stage`` on ``which``: its record, with where it lives."""
        record = run_stage(self.exp, NewUsersStage(stage, which, init, epochs, extra_key, lineage, self.heads[which]))
        return {**record, "stage_dir": str(self.exp.stage_dir(stage))}


def run_cold_start(cfg: DictConfig) -> dict[str, Any]:
    """Adapter on the existing users, then the four ways to serve the new users; table and chart."""
    from puma_lightning.pipeline.bank_ops import load_adapter
    from puma_lightning.pipeline.builders import build_table

    run_dir = RunDir.of(cfg).path
    ccfg = cfg.cold_start
    table = build_table(cfg.data, cfg.seed)
    existing, new = split_new_users(list(table.user_ids), float(ccfg.new_fraction), [str(u) for u in ccfg.new_users], int(cfg.seed))
    # 1. the existing system: source prompts and the adapter, on existing users only
    old = experiment_on(sub_config(cfg, run_dir / f"existing-{users_hash(existing)}", source_dir=None),
                        subset_users(table, existing, "cold_start_existing"))
    source_rec = old.pretrain("source", "source")
    puma_rec = old.migrate_stage()
    adapter_path = old.stage_dir("puma") / "adapter.safetensors"
    adapter, head_target, meta = load_adapter(adapter_path)
    source_bank = PromptBank.load(old.stage_dir("source") / "bank")
    scale = float(meta.get("output_scale", 1.0))
    adapter_sha = adapter_ref(adapter_path)
    del old
    # 2. the new users
    nexp = experiment_on(sub_config(cfg, run_dir / f"new-{users_hash(new)}", source_dir=None),
                         subset_users(table, new, "cold_start_new"))
    tuner = _NewUsers(nexp, head_target, source_bank.head_state)
    dataset = {"name": table.meta.get("name", cfg.data.name), "task": table.task, "template": template_label(cfg.data.template, str(cfg.data.task)),
               "seed": int(cfg.seed), "num_users": len(new)}
    base_lineage = make_lineage("cold_start", model={}, dataset=dataset, adapter=adapter_sha,
                                models={"source": str(cfg.source.name), "target": str(cfg.target.name)},
                                sources=[source_ref(nexp.run_dir.parent / f"existing-{users_hash(existing)}" / "source" / "bank")],
                                extra={"cold_start": {"new_users": len(new), "existing_users": len(existing)}})
    k = cfg.prompt.epochs
    ft = int(ccfg.finetune_epochs)
    rows: dict[str, dict[str, Any]] = {}
    rows["scratch"] = tuner.run("scratch", "target", None, k, None, {**base_lineage, "made_by": "cold_start:scratch", "sources": []})
    rows["new_source"] = tuner.run("new_source", "source", None, k, source_bank.model_fingerprint,
                                   {**base_lineage, "made_by": "cold_start:new_source", "adapter": None, "sources": []})
    new_source = PromptBank.load(nexp.stage_dir("new_source") / "bank").rows_for(new)
    start = time.perf_counter()
    with torch.no_grad():
        mapped = adapter(new_source) * scale
    map_s = time.perf_counter() - start
    map_lineage = {**base_lineage, "sources": [source_ref(nexp.stage_dir("new_source") / "bank")]}
    rows["map"] = tuner.run("map", "target", mapped, 0, adapter_sha["sha256"], {**map_lineage, "made_by": "cold_start:map"})
    rows["map_finetune"] = tuner.run("map_finetune", "target", mapped, ft, adapter_sha["sha256"],
                                     {**map_lineage, "made_by": "cold_start:map_finetune"})
    with torch.no_grad():
        mean = (adapter(source_bank.prompts.mean(dim=0, keepdim=True)) * scale).expand(len(new), -1, -1).contiguous()
    rows["mean_finetune"] = tuner.run("mean_finetune", "target", mean, ft, adapter_sha["sha256"],
                                      {**base_lineage, "made_by": "cold_start:mean_finetune"})
    return write_cold_start(run_dir, table.task, existing, new, rows, map_s, source_rec, puma_rec, int(cfg.placebo.resamples))


def write_cold_start(run_dir: Path, task: str, existing: list[str], new: list[str], rows: dict[str, dict[str, Any]],
                     map_s: float, source_rec: dict[str, Any], puma_rec: dict[str, Any], resamples: int = 1000) -> dict[str, Any]:
    """``cold_start.json``, ``cold_start.md`` and ``cold_start.png``: quality and compute of each method, with its
    placebo columns (``personal_gain``; ``retained``: as a share of ``scratch``'s, see :mod:`puma_lightning.pipeline.placebo`)."""
    from puma_lightning.pipeline.placebo import NOTE, cell, stage_gains

    names = metric_names(task)
    main_metric, _ = primary_metric(task)
    src = rows["new_source"]
    methods = {
        "scratch": ("random prompts trained on the target", 0, 0.0, rows["scratch"]),
        "map": ("(a) trained on the source, mapped by the adapter", src["train_samples"], src["wall_s"] + map_s, rows["map"]),
        "map_finetune": ("(b) adapter-mapped init, fine-tuned on the target", src["train_samples"], src["wall_s"] + map_s,
                         rows["map_finetune"]),
        "mean_finetune": ("(b) adapter(mean source prompt) init, fine-tuned on the target", 0, 0.0, rows["mean_finetune"]),
    }
    out = {}
    for name, (desc, s_samples, s_wall, rec) in methods.items():
        out[name] = {"what": desc, "metrics": rec["metrics"], "source_train_samples": int(s_samples),
                     "target_train_samples": int(rec["train_samples"]), "wall_s": round(float(s_wall) + float(rec["wall_s"]), 2),
                     "stage_dir": rec.get("stage_dir")}
        out[name].update(stage_gains(main_metric, rec.get("stage_dir"), None if name == "scratch" else rows["scratch"].get("stage_dir"),
                                     resamples))
    doc = {"task": task, "existing_users": len(existing), "new_users": len(new), "new_user_ids": new, "methods": out,
           "existing_system": {"source_metrics": source_rec["metrics"], "puma_metrics": puma_rec["metrics"],
                               "adapter_train_samples": puma_rec["train_samples"]}}
    write_text(run_dir / "cold_start.json", json.dumps(doc, indent=1))
    header = ["method", *[m.upper() for m in names], "personal gain [95 %]", "retained of scratch's [95 %]",
              "source train samples", "target train samples", "wall s", "what it is"]
    table_rows = [[n, *[r["metrics"].get(m) for m in names], cell(r.get("personal_gain")),
                   cell(r.get("retained"), 1, percent=True) if n != "scratch" else "–", r["source_train_samples"],
                   r["target_train_samples"], f"{r['wall_s']:.1f}", r["what"]] for n, r in out.items()]
    note = (f"\n- {len(new)} new users (absent from the source bank and from the adapter's training), {len(existing)} existing; "
            f"metrics on the new users' test rows, all with the adapter's head.\n- the adapter was trained once on the existing "
            f"users ({puma_rec['train_samples']:,} samples); its cost is not charged to the new users.\n"
            f"- {NOTE}; here retained is a share of scratch's (training the new users from scratch on the target).\n")
    md = markdown_table(header, table_rows) + note
    write_text(run_dir / "cold_start.md", md)
    bar_chart(run_dir / "cold_start.png", list(out), [r["metrics"].get(main_metric) for r in out.values()], main_metric.upper(),
              "cold-start users")
    print(md)
    return doc


def run(cfg: DictConfig, run_dir: Path, args: Arguments) -> None:
    """The command: :func:`run_cold_start` on the loaded config."""
    run_cold_start(cfg)
