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

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from puma_lightning.data.table import InteractionTable
from puma_lightning.io.atomic import atomic_write_text, atomic_write_with
from puma_lightning.io.bank import PromptBank
from puma_lightning.io.lineage import stage_lineage
from puma_lightning.io.ownership import claim_run_dir
from puma_lightning.pipeline.builders import build_datamodule, build_table, check_answer_tokens, load_frozen_lm
from puma_lightning.pipeline.distributed import check_same_on_all_ranks, on_rank_zero
from puma_lightning.pipeline.placebo import backfill_placebo, load_placebo
from puma_lightning.pipeline.results import write_results
from puma_lightning.pipeline.run_dir import RunDir
from puma_lightning.pipeline.stage import run_stage
from puma_lightning.pipeline.predictions import PREDICTIONS_FILE, load_predictions
from puma_lightning.pipeline.training import runs_on_gpu
from puma_lightning.pipeline.user_stats import build_selection_context
from puma_lightning.selection import select_users
from puma_lightning.data.templates import template_label

log = logging.getLogger(__name__)


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
        from puma_lightning.pipeline.levers.hooks import start_label

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
    def run_stage(self, name: str) -> dict[str, Any]:
        """The record of the registered one-row stage ``name`` (``source``, ``puma``, ``full_retrain``...): computed, or
        reused from the run directory (see :mod:`puma_lightning.pipeline.stage`)."""
        from puma_lightning.pipeline.stages import get_stage

        return get_stage(name).rows(self)[name]

    def pretrain(self, which: str = "source", stage: str | None = None, *, train_prompts: bool = True,
                 epochs: int | None = None, save_bank: bool = True, shared: bool = False) -> dict[str, Any]:
        """Prompts (and head) trained on one model as stage ``stage`` (default: ``source``, or ``full_retrain`` on the
        target), whatever its name: what ``pretrain`` and the prompt studies run. ``shared``: one prompt for all."""
        from puma_lightning.pipeline.stages.prompts import PromptStage

        stage = stage or ("source" if which == "source" else "full_retrain")
        return run_stage(self, PromptStage(self.cfg, stage, which, train_prompts=train_prompts, epochs=epochs,
                                           save_bank=save_bank, shared=shared))

    def migrate_stage(self) -> dict[str, Any]:
        """PUMA's row (:mod:`puma_lightning.pipeline.stages.puma`)."""
        return self.run_stage("puma")

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

    def fit(self) -> dict[str, Any]:
        """The whole experiment: every registered row family that the config enables, in order (source prompts, PUMA,
        the baselines...), then the results table."""
        from puma_lightning.pipeline.stages import get_stage, stage_names

        cfg = self.cfg
        check_answer_tokens(cfg)  # both models' tokenizers, before the source model trains for minutes
        rows: dict[str, dict[str, Any]] = {}
        for name in stage_names():
            entry = get_stage(name)
            if entry.enabled(cfg):
                made = entry.rows(self)
                if entry.shown(cfg):
                    rows.update(made)
        for name, record in rows.items():  # stages cached before placebos existed get theirs from their bank
            backfill_placebo(self, name, record)
        return write_results(self.run_dir, self.table, rows, {name: self.test_predictions(name) for name in rows},
                             {name: load_placebo(self.method_dir(name)) for name in rows}, int(cfg.placebo.resamples))

    def classic_references(self) -> dict[str, dict[str, Any]]:
        """The no-LLM references' rows (:mod:`puma_lightning.pipeline.stages.classic`)."""
        from puma_lightning.pipeline.stages.classic import classic_rows

        return classic_rows(self)

    # -- bookkeeping -----------------------------------------------------------------------------
    def bank_info(self, made_by: str, metrics: dict[str, float], source: PromptBank | None = None,
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

    def hparams(self, stage: str) -> dict[str, Any]:
        flat = {}
        for section in ("data", "prompt", "adapter", "trainer"):
            for k, v in OmegaConf.to_container(self.cfg[section], resolve=True).items():
                flat[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
        flat.update({"stage": stage, "source": self.cfg.source.name, "target": self.cfg.target.name, "seed": self.cfg.seed,
                     "selection": str(self.cfg.selection.name)})
        return flat



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
