"""``puma``: select users, train the adapter through the frozen target model on them, map every prompt, test.

Its cost is the selection, the adapter's training (with the teacher's forward passes when distilling, the target
readout's closed-form fit and the start map's fit where configured) and the mapping of every prompt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cache
from typing import Any, Sequence

import numpy as np
from safetensors.torch import save_file

from puma_lightning.config import ADAPTER_VALIDATION
from puma_lightning.io.atomic import atomic_write_with
from puma_lightning.io.bank import PromptBank
from puma_lightning.models.adapters import adapter_metadata, build_adapter, init_as_linear
from puma_lightning.models.heads import load_head
from puma_lightning.pipeline.builders import build_datamodule, fresh_head
from puma_lightning.pipeline.distributed import on_rank_zero
from puma_lightning.pipeline.levers.hooks import (adapter_init, adapter_rows, after_adapter_fit, before_train, choose_start,
                                                  row_offsets, start_head, wrap_adapter)
from puma_lightning.pipeline.readout_fit import adapter_items
from puma_lightning.pipeline.seeding import stage_seed
from puma_lightning.pipeline.stage import Outcome, Stage, trainer_key
from puma_lightning.pipeline.stages.registry import StageEntry, register_stage, single
from puma_lightning.pipeline.training import StageStats, fit_best, test_metrics, validation_rows
from puma_lightning.tasks import Migration, PromptTuning

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """What PUMA decides before its own streams: the users, their training rows, the adapter's start."""

    selection: dict[str, Any]
    teacher: Any
    train_table: Any
    train_offsets: np.ndarray | None
    start_map: Any


class PumaStage(Stage):
    """The PUMA adapter, trained through the target on the selected users, then applied to every prompt."""

    name = "puma"
    model = "target"

    def __init__(self) -> None:
        self.source_bank: PromptBank | None = None

    def key_parts(self, exp: Any) -> Sequence[Any]:
        cfg = exp.cfg
        exp.require_test_rows(self.name)
        self.source_bank = PromptBank.load(exp.stage_dir("source") / "bank")
        return (cfg.data, cfg.source, cfg.target, cfg.prompt, cfg.adapter, cfg.selection, cfg.seed,
                self.source_bank.model_fingerprint, trainer_key(cfg.trainer))

    def prepare(self, exp: Any) -> Prepared:
        selection = exp.select(self.source_bank)
        teacher, train_table, train_offsets = adapter_rows(exp, selection["users"])  # + teacher rows when distilling
        start_map = adapter_init(exp, self.source_bank)  # adapter.init=vocab_map (loads the source model, then the target)
        return Prepared(selection, teacher, train_table, train_offsets, start_map)

    def compute(self, exp: Any, lm: Any, key: str, prepared: Prepared) -> Outcome:
        cfg, table, source_bank = exp.cfg, exp.table, self.source_bank
        users, teacher, start_map = prepared.selection["users"], prepared.teacher, prepared.start_map
        source = source_bank.rows_for(table.user_ids)
        adapter = wrap_adapter(cfg, build_adapter(cfg.adapter.kind, source_bank.hidden_size, lm.hidden_size, cfg.adapter.hidden,
                                                  cfg.adapter.dropout), source)  # adapter.input_norm
        output_scale = lm.embedding_std() if cfg.adapter.output_scale == "embedding_std" else 1.0
        if start_map is not None:  # the module multiplies the adapter's output by output_scale
            init_as_linear(adapter, start_map.weight / output_scale)
        if source_bank.head_state is not None:  # a readout of the source's hidden states restarts at zero on the target
            head = load_head(table.task, source_bank.head_state, lm.hidden_size)
        else:
            head = fresh_head(cfg, lm, table, exp.mean_label(), None)  # its match term is attached below
        module = Migration(lm, head, table.task, source, adapter, lr=cfg.adapter.lr, head_lr=cfg.adapter.head_lr,
                           weight_decay=cfg.adapter.weight_decay, train_head=not cfg.adapter.freeze_head,
                           output_scale=output_scale, warmup_ratio=cfg.adapter.warmup_ratio, teacher=teacher)
        # the target's own match term (or none), anchored where the adapter starts mapping, never the source's
        start_head(cfg, module.head, lm, table, module.migrate_all)
        eval_users = adapter_validation_users(cfg.adapter.validation, table.n_users, users, cfg.seed,
                                              cfg.adapter.validation_max_users)
        log.info("adapter validation: %d users (%s)", len(eval_users), cfg.adapter.validation)
        dm = build_datamodule(prepared.train_table, lm.tokenizer, cfg, cfg.adapter.batch_size, train_users=users,
                              eval_users=eval_users, row_offset=prepared.train_offsets)
        # levers that choose the adapter's start or adjust the trained adapter judge it on every unselected user's
        # validation rows (up to adapter.validation_max_users), whatever rows choose its epoch: a few dozen users
        # cannot tell a shrink apart. Built only when a lever asks.
        @cache
        def judge_datamodule() -> Any:
            judged = adapter_validation_users("heldout_all", table.n_users, users, cfg.seed, cfg.adapter.validation_max_users)
            return dm if np.array_equal(judged, eval_users) else build_datamodule(
                prepared.train_table, lm.tokenizer, cfg, cfg.adapter.batch_size, train_users=users, eval_users=judged,
                row_offset=prepared.train_offsets)

        def place_start(start: Any) -> None:  # the adapter at the map ``start``, the match term anchored where it maps
            init_as_linear(adapter, start.weight / output_scale)
            start_head(cfg, module.head, lm, table, module.migrate_all)

        def judge_start(start: Any) -> dict:
            place_start(start)
            return validation_rows(module, judge_datamodule(), cfg, exp.run_dir, "puma_start")

        start_map, chosen = choose_start(cfg, start_map, judge_start)  # adapter.aggregate_start
        if chosen:
            place_start(start_map)
        fitted = before_train(cfg, module, readout_datamodule(exp, lm, dm, users, eval_users))  # the target's own readout
        stats = fit_best(module, dm, cfg, exp.run_dir, self.name, cfg.adapter.epochs, hparams=exp.hparams(self.name),
                         resume_key=key, patience=cfg.adapter.early_stopping_patience, max_steps=cfg.adapter.steps,
                         validations=cfg.adapter.validations)
        adjusted = after_adapter_fit(cfg, module, lambda m: validation_rows(m, judge_datamodule(), cfg, exp.run_dir,
                                                                            "puma_shrink"))
        start = time.perf_counter()
        migrated = module.migrate_all()
        migrate_s = time.perf_counter() - start
        on_rank_zero(lambda: atomic_write_with(
            exp.stage_dir(self.name) / "adapter.safetensors",
            lambda p: save_file({k: v.contiguous() for k, v in module.trainable_state_dict().items()}, str(p),
                                metadata=adapter_metadata(cfg.adapter, source_bank, lm, output_scale))))
        evaluator = PromptTuning(lm, module.head, table.task, migrated, train_prompts=False, train_head=False)
        test_dm = exp.datamodule(lm, cfg.adapter.batch_size)
        metrics = test_metrics(evaluator, test_dm, cfg, exp.run_dir, "puma_test")
        selection = prepared.selection
        teacher_s = teacher.seconds if teacher is not None else 0.0
        levers_s = sum(record["seconds"] for record in (*chosen.values(), *fitted.values(), *adjusted.values()))
        init_s = start_map.seconds if start_map is not None else 0.0
        total = StageStats(wall_s=round(stats.wall_s + selection["seconds"] + migrate_s + teacher_s + levers_s + init_s, 2),
                           train_samples=stats.train_samples, trainable_params=stats.trainable_params, epochs=stats.epochs,
                           best_val_loss=stats.best_val_loss)

        def bank() -> PromptBank:
            return PromptBank(migrated, list(table.user_ids), lm.name, lm.fingerprint,
                              info=exp.bank_info("migrate:puma", metrics, source=source_bank),
                              head_state=module.head.state_dict())
        record = {**total.to_dict(), "selection_s": round(selection["seconds"], 2), "migrate_s": round(migrate_s, 2),
                  "selection": selection["record"]["strategy"], "selected_users": selection["record"]["num_selected"],
                  "validation_users": int(len(eval_users)), "allocation": selection["record"]["params"].get("allocation"),
                  "teacher_rows": int(len(prepared.train_table) - len(table)), "teacher_s": round(teacher_s, 2),
                  "init": str(cfg.adapter.init), "init_s": round(init_s, 2),
                  **chosen, **fitted, **adjusted}
        return Outcome(metrics, record, evaluator=evaluator, datamodule=test_dm, bank=bank)


def readout_datamodule(exp: Any, lm: Any, adapter_dm: Any, users: np.ndarray, eval_users: np.ndarray) -> Any:
    """The rows PUMA fits the target's readout on (``adapter.readout_rows``): the adapter's own (``adapter_dm``),
    every user's rows of the adapter's items, or every user's rows."""
    cfg = exp.cfg
    if cfg.adapter.readout_rows == "selected":
        return adapter_dm
    if cfg.adapter.readout_rows == "all":
        return exp.datamodule(lm, cfg.adapter.batch_size)
    table = exp.table
    offsets = row_offsets(cfg, table)  # the levers' offsets fitted on every training row, as everywhere else
    return build_datamodule(table.only_items(adapter_items(table, users, eval_users)), lm.tokenizer, cfg,
                            cfg.adapter.batch_size, row_offset=offsets)


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


register_stage(StageEntry("puma", single(lambda exp: PumaStage()), migrated=True,
                          descriptions={"puma": "prompts migrated with the PUMA adapter"}))
