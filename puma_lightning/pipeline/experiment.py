"""One PUMA experiment in a run directory: each stage writes its outputs and a ``stage.json``, and
is reused when it is already on disk for the same configuration.

Layout of ``<run_dir>``::

    config.yaml                 resolved config of the last command
    source/bank/                source prompts on the source model (+ head.safetensors, stage.json)
    selection.json              the users the adapter was trained on
    puma/adapter.safetensors    the trained adapter and head (+ bank/ of migrated prompts, stage.json)
    random_init/, full_retrain/ baselines (stage.json, full_retrain/bank/)
    results.json, results.md    the comparison table
    tb/                         TensorBoard logs, one version per stage
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from puma_lightning.config import ADAPTER_VALIDATION
from puma_lightning.data.table import InteractionTable
from puma_lightning.io.atomic import atomic_write_text, atomic_write_with
from puma_lightning.io.bank import PromptBank
from puma_lightning.io.lineage import stage_lineage
from puma_lightning.io.ownership import claim_run_dir
from puma_lightning.models.adapters import adapter_metadata, build_adapter, init_as_linear, with_input_norm
from puma_lightning.models.heads import load_head
from puma_lightning.pipeline.readout_fit import adapter_items, fit_if_configured
from puma_lightning.pipeline.residual import row_offsets
from puma_lightning.pipeline.builders import (attach_item_match, build_datamodule, build_prompt_tuning, fresh_head, build_table, initial_prompts,
                                             load_frozen_lm, prompt_scale)
from puma_lightning.pipeline.distributed import check_same_on_all_ranks, on_rank_zero
from puma_lightning.pipeline.imported_source import check_imported, imported_source
from puma_lightning.pipeline.placebo import backfill_placebo, load_placebo, placebo_pass
from puma_lightning.pipeline.results import write_results
from puma_lightning.pipeline.run_dir import RunDir
from puma_lightning.pipeline.seeds import PREDICTIONS_FILE, load_predictions
from puma_lightning.pipeline.training import StageStats, fit_best, runs_on_gpu, test_metrics
from puma_lightning.pipeline.user_stats import build_selection_context
from puma_lightning.pipeline.vocab_map import adapter_start_map
from puma_lightning.selection import select_users
from puma_lightning.tasks import Migration, PromptTuning
from puma_lightning.data.templates import template_label

log = logging.getLogger(__name__)


def config_key(*nodes: Any) -> str:
    """A short hash of the config sections a stage depends on (decides whether it can be reused)."""
    blob = json.dumps([OmegaConf.to_container(n, resolve=True) if isinstance(n, DictConfig) else n for n in nodes], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]



COSMETIC_TRAINER_KEYS = frozenset({"enable_progress_bar", "log_every_n_steps", "checkpoint_every_n_steps", "num_threads"})
"""Trainer settings that do not change a stage's result (everything else in ``trainer`` is part of its key)."""


def trainer_key(tcfg: DictConfig) -> dict[str, Any]:
    """The trainer settings a stage's result depends on: limits, fast_dev_run, precision, devices, clipping..."""
    return {k: v for k, v in OmegaConf.to_container(tcfg, resolve=True).items() if k not in COSMETIC_TRAINER_KEYS}


def stage_seed(seed: int, stage: str) -> int:
    """The seed of one stage's random streams, derived from the run's seed and the stage's name."""
    return int(hashlib.sha256(f"{int(seed)}:{stage}".encode()).hexdigest()[:8], 16) % (2**31 - 1)


def seed_stage(seed: int, stage: str) -> None:
    """Seed torch, numpy and Python's RNGs for one stage, so its numbers do not depend on what ran before it."""
    import lightning as L

    L.seed_everything(stage_seed(seed, stage), workers=True, verbose=False)


def _backbone_key(mcfg: DictConfig) -> str:
    """Loaded backbones are shared by their whole load config (name, dtype, cache budget, compile...)."""
    return json.dumps(OmegaConf.to_container(mcfg, resolve=True), sort_keys=True)


class Experiment:
    """Runs and caches the stages of a PUMA experiment described by a config."""

    def __init__(self, cfg: DictConfig, table: InteractionTable | None = None) -> None:
        """``table``: run on this table (e.g. restricted to some users) instead of building ``cfg.data``'s."""
        self.cfg = cfg
        self.runs = RunDir.of(cfg)
        self.run_dir = self.runs.path
        claim_run_dir(self.run_dir)  # a sub-run's folder is made ours; a folder we did not make is refused
        self._table: InteractionTable | None = table
        self._backbones: dict[str, Any] = {}

    # -- shared resources ------------------------------------------------------------------------
    @property
    def table(self) -> InteractionTable:
        if self._table is None:
            self._table = build_table(self.cfg.data, self.cfg.seed)
        return self._table

    def backbone(self, which: str) -> Any:
        """The frozen LM for ``source`` or ``target`` (loaded once; only one real model kept at a time)."""
        mcfg = self.cfg[which]
        key = _backbone_key(mcfg)
        if key not in self._backbones:
            self._backbones.clear()
            self._backbones[key] = load_frozen_lm(mcfg, self.cfg.data, self.cfg.cache_dir,
                                                  on_gpu=runs_on_gpu(self.cfg.trainer))
        return self._backbones[key]

    def loaded_backbone(self, which: str) -> Any | None:
        """The frozen LM for ``source`` or ``target`` if it is loaded now (None otherwise; never loads)."""
        return self._backbones.get(_backbone_key(self.cfg[which]))

    def datamodule(self, lm: Any, batch_size: int, train_users: np.ndarray | None = None,
                    eval_users: np.ndarray | None = None) -> Any:
        """The datamodule of this run's table for ``lm``'s tokenizer (optionally restricted to some users)."""
        return build_datamodule(self.table, lm.tokenizer, self.cfg, batch_size, train_users, eval_users)

    def mean_label(self) -> float:
        """Where a fresh rating head starts: the mean training label (the mean residual with ``prompt.residual``)."""
        from puma_lightning.pipeline.residual import start_label

        return start_label(self.cfg, self.table)

    def stage_dir(self, name: str) -> Path:
        """The folder of stage ``name`` (``source`` may live elsewhere: ``source_dir``)."""
        return self.runs.stage(name)

    def read_stage(self, name: str, key: str) -> dict[str, Any] | None:
        """The stage's saved record if it was made with ``key`` (its config hash), else None (recompute)."""
        return self.runs.read_record(name, key)

    def save_test_predictions(self, stage: str, predictions: dict[str, np.ndarray]) -> None:
        """``<stage>/test_predictions.npz``: each test row's prediction and label, for paired comparisons."""
        path = self.stage_dir(stage) / PREDICTIONS_FILE
        on_rank_zero(lambda: atomic_write_with(path, lambda tmp: _write_npz(tmp, predictions)))

    def method_dir(self, method: str) -> Path:
        """The stage folder of a row of the results table (classic references live under ``classic/``)."""
        from puma_lightning.pipeline.classic import REFERENCES

        return self.stage_dir(f"classic/{method}" if method in REFERENCES else method)

    def test_predictions(self, method: str) -> dict[str, np.ndarray] | None:
        """What :meth:`save_test_predictions` wrote for a method's stage (None if it has none)."""
        return load_predictions(self.method_dir(method))

    def write_stage(self, name: str, key: str, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``stage.json`` (global rank 0 only; every rank returns the record). LLM stages trained on a residual
        base say which (``residual``)."""
        from puma_lightning.pipeline.classic import REFERENCES

        if self.cfg.prompt.get("residual", "none") != "none" and record.get("method") not in REFERENCES:
            record = {**record, "residual": str(self.cfg.prompt.residual)}
        return self.runs.write_record(name, key, record)

    def require_test_rows(self, stage: str) -> None:
        """Stop before any training when the data has no test rows: every stage ends by testing."""
        if self.table.n_users and not len(self.table.rows("test")):
            from puma_lightning.errors import PumaError

            raise PumaError(f"stage {stage!r} tests on the test split, but data {self.cfg.data.name!r} has no test rows "
                            f"(data.split_by={self.cfg.data.get('split_by')!r}, data.test_ratio={self.cfg.data.get('test_ratio')}); "
                            "use data.split_by=chronological with data.test_ratio > 0")

    # -- stages ----------------------------------------------------------------------------------
    def pretrain(self, which: str = "source", stage: str | None = None, *, train_prompts: bool = True,
                 epochs: int | None = None, save_bank: bool = True, shared: bool = False) -> dict[str, Any]:
        """Train per-user prompts (and head) on one model, evaluate on test, save the bank.

        ``shared``: one prompt for every user instead (no bank saved)."""
        stage = stage or ("source" if which == "source" else "full_retrain")
        self.require_test_rows(stage)
        cfg = self.cfg
        epochs = epochs or cfg.prompt.epochs
        imported = imported_source(cfg) if stage == "source" else None  # source.bank: the user's own prompts
        if imported is not None:
            train_prompts = False
        key = config_key(cfg.data, cfg[which], cfg.prompt, cfg.seed, train_prompts, epochs, trainer_key(cfg.trainer),
                          *(["shared"] if shared else []), *(["imported", imported.content_hash] if imported else []))
        cached = self.read_stage(stage, key)
        if cached is not None:
            log.info("reusing %s from %s", stage, self.stage_dir(stage))
            return cached
        lm = self.backbone(which)
        table = self.table
        seed_stage(cfg.seed, stage)  # head init, dropout, anything drawn from the global streams: this stage's own
        if imported is None:
            prompts, scale = initial_prompts(cfg, lm, table)
        else:
            check_imported(imported, list(table.user_ids), lm.hidden_size, lm.fingerprint)
            prompts, scale = imported.bank.rows_for(table.user_ids).float(), prompt_scale(cfg, lm)
        if imported is not None and imported.has_head:
            head = load_head(table.task, imported.bank.head_state, lm.hidden_size)
        else:
            head = fresh_head(cfg, lm, table, self.mean_label(), prompts)
        train_head = imported is None or not imported.has_head
        module = build_prompt_tuning(cfg, lm, table, head, prompts, scale, train_prompts=train_prompts, shared=shared,
                                     train_head=train_head)
        dm = self.datamodule(lm, cfg.prompt.batch_size)
        before = start_stage_costs(lm)
        readout = fit_if_configured(cfg, module, dm) if train_head else None
        if train_head:
            stats = fit_best(module, dm, cfg, self.run_dir, stage, epochs, hparams=self._hparams(stage), resume_key=key,
                             patience=cfg.prompt.early_stopping_patience if train_prompts or imported else None)
        else:  # an imported bank with its head: nothing to train
            stats = StageStats(wall_s=0.0, train_samples=0, trainable_params=0, epochs=0)
        metrics = test_metrics(module, dm, cfg, self.run_dir, stage)
        cost = stage_costs(lm, before)
        self.save_test_predictions(stage, module.test_predictions())
        placebo = None if shared else placebo_pass(self, stage, module, dm)  # its prompts dealt to other users
        if save_bank and not shared:  # rank 0 writes; the others wait so that later stages can read it
            made_by = f"pretrain:{stage}" if imported is None else "import:source"
            on_rank_zero(lambda: PromptBank(module.model_prompts(), list(table.user_ids), lm.name, lm.fingerprint,
                                            info=self._bank_info(made_by, metrics, parent=imported.path if imported else None),
                                            head_state=module.head.state_dict()).save(self.stage_dir(stage) / "bank"))
        if readout is not None:
            stats.wall_s = round(stats.wall_s + readout["seconds"], 2)
        return self.write_stage(stage, key, {"method": stage, "metrics": metrics, **stats.to_dict(), **cost,
                                              **({"imported": imported.record()} if imported is not None else {}),
                                              "user_bias": module.user_bias is not None, "shared_prompt": shared,
                                              **({"placebo": placebo} if placebo is not None else {}),
                                              **({"readout": readout} if readout is not None else {})})

    def select(self, bank: PromptBank) -> dict[str, Any]:
        """Choose the users the adapter trains on; writes ``selection.json``."""
        table = self.table
        start = time.perf_counter()
        ctx = build_selection_context(self, bank)  # loss / FFN features only when the strategy needs them
        result = select_users(OmegaConf.to_container(self.cfg.selection, resolve=True), ctx)
        seconds = time.perf_counter() - start
        record = {
            "strategy": result.strategy,
            "params": result.params,
            "budget": int(self.cfg.selection.budget),
            "seed": result.seed,
            "num_selected": int(len(result.users)),
            "user_ids": [table.user_ids[i] for i in result.users],
            "seconds": round(seconds, 3),
            "info": _jsonable(result.info),
        }
        # every rank selects (same seed, same inputs); the adapter's data must match across ranks
        check_same_on_all_ranks(record["user_ids"], "selection")
        on_rank_zero(lambda: atomic_write_text(self.run_dir / "selection.json", json.dumps(record, indent=1)))
        return {"users": result.users, "seconds": seconds, "record": record}

    def migrate_stage(self) -> dict[str, Any]:
        """PUMA: select users, train the adapter through the target model, map every prompt, test."""
        from puma_lightning.pipeline.distillation import adapter_training_rows

        self.require_test_rows("puma")
        cfg = self.cfg
        source_bank = PromptBank.load(self.stage_dir("source") / "bank")
        key = config_key(cfg.data, cfg.source, cfg.target, cfg.prompt, cfg.adapter, cfg.selection, cfg.seed,
                          source_bank.model_fingerprint, trainer_key(cfg.trainer))
        cached = self.read_stage("puma", key)
        if cached is not None:
            log.info("reusing puma from %s", self.stage_dir("puma"))
            return cached
        table = self.table
        selection = self.select(source_bank)
        users = selection["users"]
        teacher, train_table, train_offsets = adapter_training_rows(self, users)  # + teacher rows when distilling
        start_map = adapter_start_map(self, source_bank)  # adapter.init=vocab_map (loads the source model, then the target)
        lm = self.backbone("target")
        source = source_bank.rows_for(table.user_ids)
        seed_stage(cfg.seed, "puma")  # adapter init and its dropout masks: this stage's own streams
        adapter = with_input_norm(build_adapter(cfg.adapter.kind, source_bank.hidden_size, lm.hidden_size, cfg.adapter.hidden,
                                                cfg.adapter.dropout), cfg.adapter.input_norm, source)
        output_scale = lm.embedding_std() if cfg.adapter.output_scale == "embedding_std" else 1.0
        if start_map is not None:  # the module multiplies the adapter's output by output_scale
            init_as_linear(adapter, start_map.weight / output_scale)
        if source_bank.head_state is not None:  # a readout of the source's hidden states restarts at zero on the target
            head = load_head(table.task, source_bank.head_state, lm.hidden_size)
        else:
            head = fresh_head(cfg, lm, table, self.mean_label(), None)  # its match term is attached below
        module = Migration(lm, head, table.task, source, adapter, lr=cfg.adapter.lr, head_lr=cfg.adapter.head_lr,
                           weight_decay=cfg.adapter.weight_decay, train_head=not cfg.adapter.freeze_head,
                           output_scale=output_scale, warmup_ratio=cfg.adapter.warmup_ratio, teacher=teacher)
        # the target's own match term (or none), anchored where the adapter starts mapping, never the source's
        if cfg.prompt.get("item_match"):
            attach_item_match(cfg, module.head, lm, table, module.migrate_all())
        else:
            module.head.item_match = None
        eval_users = adapter_validation_users(cfg.adapter.validation, table.n_users, users, cfg.seed,
                                              cfg.adapter.validation_max_users)
        log.info("adapter validation: %d users (%s)", len(eval_users), cfg.adapter.validation)
        dm = build_datamodule(train_table, lm.tokenizer, cfg, cfg.adapter.batch_size, train_users=users, eval_users=eval_users,
                              row_offset=train_offsets)
        before = start_stage_costs(lm)
        readout_dm = self.readout_datamodule(lm, dm, users, eval_users)
        readout = fit_if_configured(cfg, module, readout_dm)  # the target's own readout (closed form)
        stats = fit_best(module, dm, cfg, self.run_dir, "puma", cfg.adapter.epochs, hparams=self._hparams("puma"), resume_key=key,
                         patience=cfg.adapter.early_stopping_patience, max_steps=cfg.adapter.steps,
                         validations=cfg.adapter.validations)
        start = time.perf_counter()
        migrated = module.migrate_all()
        migrate_s = time.perf_counter() - start
        out_dir = self.stage_dir("puma")
        on_rank_zero(lambda: atomic_write_with(
            out_dir / "adapter.safetensors",
            lambda p: save_file({k: v.contiguous() for k, v in module.trainable_state_dict().items()}, str(p),
                                metadata=adapter_metadata(cfg.adapter, source_bank, lm, output_scale))))
        evaluator = PromptTuning(lm, module.head, table.task, migrated, train_prompts=False, train_head=False)
        test_dm = self.datamodule(lm, cfg.adapter.batch_size)
        metrics = test_metrics(evaluator, test_dm, cfg, self.run_dir, "puma_test")
        cost = stage_costs(lm, before)
        self.save_test_predictions("puma", evaluator.test_predictions())
        placebo = placebo_pass(self, "puma", evaluator, test_dm)
        on_rank_zero(lambda: PromptBank(migrated, list(table.user_ids), lm.name, lm.fingerprint,
                                        info=self._bank_info("migrate:puma", metrics, source=source_bank),
                                        head_state=module.head.state_dict()).save(out_dir / "bank"))
        teacher_s = teacher.seconds if teacher is not None else 0.0
        readout_s = readout["seconds"] if readout is not None else 0.0
        init_s = start_map.seconds if start_map is not None else 0.0
        total = StageStats(wall_s=round(stats.wall_s + selection["seconds"] + migrate_s + teacher_s + readout_s + init_s, 2),
                           train_samples=stats.train_samples,
                           trainable_params=stats.trainable_params, epochs=stats.epochs, best_val_loss=stats.best_val_loss)
        return self.write_stage("puma", key, {"method": "puma", "metrics": metrics, **total.to_dict(),
                                               "selection_s": round(selection["seconds"], 2), "migrate_s": round(migrate_s, 2),
                                               "selection": selection["record"]["strategy"],
                                               "selected_users": selection["record"]["num_selected"],
                                               "validation_users": int(len(eval_users)),
                                               "allocation": selection["record"]["params"].get("allocation"),
                                               "teacher_rows": int(len(train_table) - len(table)), "teacher_s": round(teacher_s, 2),
                                               "init": str(cfg.adapter.init), "init_s": round(init_s, 2),
                                               **({"readout": readout} if readout is not None else {}),
                                               **({"placebo": placebo} if placebo is not None else {}),
                                               **cost})

    def readout_datamodule(self, lm: Any, adapter_dm: Any, users: np.ndarray, eval_users: np.ndarray) -> Any:
        """The rows PUMA fits the target's readout on (``adapter.readout_rows``): the adapter's own (``adapter_dm``),
        every user's rows of the adapter's items, or every user's rows."""
        cfg = self.cfg
        if cfg.adapter.readout_rows == "selected":
            return adapter_dm
        if cfg.adapter.readout_rows == "all":
            return self.datamodule(lm, cfg.adapter.batch_size)
        table = self.table
        offsets = row_offsets(cfg, table)  # the residual base fitted on every training row, as everywhere else
        return build_datamodule(table.only_items(adapter_items(table, users, eval_users)), lm.tokenizer, cfg,
                                cfg.adapter.batch_size, row_offset=offsets)

    def fit(self) -> dict[str, Any]:
        """The whole experiment: source prompts, PUMA, the enabled baselines, then the results table."""
        cfg = self.cfg
        rows: dict[str, dict[str, Any]] = {}
        source = self.pretrain("source", "source")
        if cfg.baselines.source:
            rows["source"] = source
        if cfg.baselines.random_init:
            rows["random_init"] = self.pretrain("target", "random_init", train_prompts=False,
                                                epochs=cfg.baselines.random_init_epochs, save_bank=False)
        rows["puma"] = self.migrate_stage()
        if cfg.adapter.polish_epochs or cfg.baselines.vocab_map:
            from puma_lightning.pipeline.migration_levers import polish_stage, vocab_map_stage

            if cfg.adapter.polish_epochs:
                rows["puma_polish"] = polish_stage(self)
            if cfg.baselines.vocab_map:
                rows["vocab_map"] = vocab_map_stage(self)
        if cfg.baselines.full_retrain:
            rows["full_retrain"] = self.pretrain("target", "full_retrain")
        for which in cfg.baselines.shared_prompt:
            rows[f"shared_prompt_{which}"] = self.pretrain(which, f"shared_prompt_{which}", shared=True)
        if cfg.baselines.classic:
            rows.update(self.classic_references())
        for name, record in rows.items():  # stages cached before placebos existed get theirs from their bank
            backfill_placebo(self, name, record)
        return write_results(self.run_dir, self.table, rows, {name: self.test_predictions(name) for name in rows},
                             {name: load_placebo(self.method_dir(name)) for name in rows}, int(cfg.placebo.resamples))

    def classic_references(self) -> dict[str, dict[str, Any]]:
        """The no-LLM references that apply to the table (its task, what each reads), fitted on the training split
        (tuned on valid), tested on the same rows: RMSE/MAE of ratings, AUC/uAUC of click scores."""
        from puma_lightning.pipeline.classic import references_for
        from puma_lightning.tasks.uncertainty import metric_on_rows

        table, out = self.table, {}
        test = table.rows("test")
        names = ("rmse", "mae") if table.task == "rating" else ("auc", "uauc")
        for name, ref in references_for(table).items():
            stage = f"classic/{name}"
            key = config_key(self.cfg.data, self.cfg.seed, name)
            cached = self.read_stage(stage, key)
            if cached is not None:
                out[name] = cached
                continue
            start = time.perf_counter()
            prediction, params = ref.fit(table, int(self.cfg.seed))
            wall = time.perf_counter() - start
            label = table.label[test].astype(np.float64)
            metrics = {m: metric_on_rows(m, prediction[test], label, table.user[test]) for m in names}
            self.save_test_predictions(stage, {"row": test.astype(np.int64), "user": table.user[test].astype(np.int64),
                                               "prediction": prediction[test], "label": label})
            out[name] = self.write_stage(stage, key, {"method": name, "metrics": metrics, "wall_s": round(wall, 2),
                                                       "train_samples": int(len(table.rows("train"))),
                                                       "trainable_params": 0, "params": params})
        return out

    # -- bookkeeping -----------------------------------------------------------------------------
    def _bank_info(self, made_by: str, metrics: dict[str, float], source: PromptBank | None = None,
                   parent: Path | None = None) -> dict[str, Any]:
        """A bank's ``info``: how it was made and its lineage (``source``: the bank it was migrated from; ``parent``: the
        imported bank a source stage read)."""
        info: dict[str, Any] = {
            "made_by": made_by,
            "dataset": self.table.meta.get("name", self.cfg.data.name),
            "template": template_label(self.cfg.data.template, str(self.cfg.data.task)),
            "seed": int(self.cfg.seed),
            "metrics": metrics,
        }
        if source is not None:
            info["source"] = {"model_name": source.model_name, "model_fingerprint": source.model_fingerprint}
        cfg, table = self.cfg, self.table
        which = "source" if made_by in ("pretrain:source", "import:source") else "target"
        lm = self.loaded_backbone(which)
        migrated = source is not None
        info["lineage"] = stage_lineage(  # the full history, see io/lineage.py
            made_by, metrics=metrics, models={"source": str(cfg.source.name), "target": str(cfg.target.name)},
            model={"name": str(cfg[which].name), "fingerprint": getattr(lm, "fingerprint", None),
                   "hidden_size": getattr(lm, "hidden_size", None)},
            dataset={"name": table.meta.get("name", cfg.data.name), "task": table.task, "template": template_label(cfg.data.template, str(cfg.data.task)),
                     "seed": int(cfg.seed), "num_users": int(table.n_users)},
            source_bank=self.stage_dir("source") / "bank" if migrated else parent,
            adapter_file=self.stage_dir("puma") / "adapter.safetensors" if migrated else None,
            selection_file=self.run_dir / "selection.json" if migrated else None)
        return info

    def _hparams(self, stage: str) -> dict[str, Any]:
        flat = {}
        for section in ("data", "prompt", "adapter", "trainer"):
            for k, v in OmegaConf.to_container(self.cfg[section], resolve=True).items():
                flat[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
        flat.update({"stage": stage, "source": self.cfg.source.name, "target": self.cfg.target.name, "seed": self.cfg.seed,
                     "selection": str(self.cfg.selection.name)})
        return flat


def adapter_validation_users(mode: str, n_users: int, selected: np.ndarray, seed: int,
                             max_users: int | None = None) -> np.ndarray:
    """The users whose validation rows choose the adapter's best epoch (``adapter.validation``): the selected users
    themselves, :func:`heldout_users`, or (``heldout_all``) every unselected user, or a seeded draw of ``max_users`` of
    them where there are more (the selected ones if none is left)."""
    if mode == "selected":
        return np.asarray(selected)
    if mode == "heldout":
        return heldout_users(n_users, selected, seed)
    if mode == "heldout_all":
        others = unselected_users(n_users, selected)
        if not len(others):
            return np.asarray(selected)
        return others if max_users is None or len(others) <= max_users else heldout_users(n_users, selected, seed, max_users)
    raise ValueError(f"adapter.validation must be one of {', '.join(ADAPTER_VALIDATION)}; got {mode!r}")


def unselected_users(n_users: int, selected: np.ndarray) -> np.ndarray:
    """The users (row indices, sorted) that are not in ``selected``."""
    return np.setdiff1d(np.arange(n_users), np.asarray(selected))


def heldout_users(n_users: int, selected: np.ndarray, seed: int, size: int | None = None) -> np.ndarray:
    """``size`` users (default: as many as ``selected``; all the others, if fewer), drawn seeded from the unselected
    ones: the adapter's validation users under ``adapter.validation=heldout``."""
    others = unselected_users(n_users, selected)
    if not len(others):
        return np.asarray(selected)
    rng = np.random.default_rng(stage_seed(seed, "adapter_validation"))
    size = len(selected) if size is None else int(size)
    return np.sort(rng.choice(others, size=min(size, len(others)), replace=False))


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def start_stage_costs(lm: Any) -> tuple[float, int]:
    """Empty the backbone's prefix cache, so that the stage pays for its own prefix pass (its wall time is then
    what running that method alone costs, and its numbers cannot depend on what an earlier stage cached);
    returns the cache's (seconds, prefixes computed) counters to subtract at the end."""
    cache = getattr(lm, "prefix_cache", None)
    if cache is None:
        return 0.0, 0
    lm.clear_prefix_cache()
    return float(cache.stats.compute_s), int(cache.stats.misses)


def stage_costs(lm: Any, before: tuple[float, int]) -> dict[str, Any]:
    """The stage's prefix seconds and prefixes computed (since :func:`start_stage_costs`), plus :func:`compute_record`."""
    cache = getattr(lm, "prefix_cache", None)
    seconds, computed = (float(cache.stats.compute_s), int(cache.stats.misses)) if cache is not None else before
    return {"prefix_s": round(seconds - before[0], 2), "prefixes_computed": computed - before[1], **compute_record(lm)}


def compute_record(lm: Any) -> dict[str, Any]:
    """How a stage computed: backbone dtype (and why), prefix cache on or off, and the machine."""
    from puma_lightning.machine import machine_info

    choice = getattr(lm, "dtype_choice", None)
    return {"dtype": str(lm.dtype).replace("torch.", ""), "dtype_reason": getattr(choice, "reason", None),
            "prefix_cache": getattr(lm, "prefix_cache", None) is not None, "machine": machine_info()}
