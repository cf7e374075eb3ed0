"""Rows that train prompts (and a head) on one model: ``source``, ``random_init``, ``full_retrain`` and the shared prompts.

- ``source``: every user's prompt trained on the source model (or, with ``source.bank``, the user's own imported
  prompts, frozen, with a head fitted on them where the bank has none: :mod:`puma_lightning.pipeline.imported_source`);
- ``random_init``: random prompts on the target, only the head trained (what the target gives without prompts);
- ``full_retrain``: every prompt retrained on the target (the expensive reference);
- ``shared_prompt_<model>``: one prompt for every user (what the model adds through the items' text, without
  personalisation; no bank).
"""

from __future__ import annotations

from typing import Any, Sequence

from puma_lightning.io.bank import PromptBank
from puma_lightning.models.heads import load_head
from puma_lightning.pipeline.builders import build_prompt_tuning, fresh_head, initial_prompts, prompt_scale
from puma_lightning.pipeline.imported_source import check_imported, imported_source
from puma_lightning.pipeline.levers.hooks import before_train
from puma_lightning.pipeline.stage import Outcome, Stage, trainer_key
from puma_lightning.pipeline.stages.registry import StageEntry, register_stage, single
from puma_lightning.pipeline.training import StageStats, fit_best, test_metrics


class PromptStage(Stage):
    """Per-user prompts and a head trained on ``model`` (``train_prompts=False``: the head only; ``shared``: one prompt)."""

    def __init__(self, cfg: Any, name: str, model: str, *, train_prompts: bool = True, epochs: int | None = None,
                 save_bank: bool = True, shared: bool = False) -> None:
        """Everything the stage will do is settled here, from ``cfg``: its key and its computation only read it."""
        self.name, self.model, self.save_bank, self.shared = name, model, save_bank, shared
        self.epochs = epochs or cfg.prompt.epochs
        self.imported = imported_source(cfg) if name == "source" else None  # source.bank: the user's own prompts
        self.train_prompts = train_prompts and self.imported is None  # imported prompts stay as they are

    def key_parts(self, exp: Any) -> Sequence[Any]:
        cfg = exp.cfg
        exp.require_test_rows(self.name)
        return (cfg.data, cfg[self.model], cfg.prompt, cfg.seed, self.train_prompts, self.epochs, trainer_key(cfg.trainer),
                *(["shared"] if self.shared else []), *(["imported", self.imported.content_hash] if self.imported else []))

    def compute(self, exp: Any, lm: Any, key: str, prepared: Any) -> Outcome:
        cfg, table, imported = exp.cfg, exp.table, self.imported
        if imported is None:
            prompts, scale = initial_prompts(cfg, lm, table)
        else:
            check_imported(imported, list(table.user_ids), lm.hidden_size, lm.fingerprint)
            prompts, scale = imported.bank.rows_for(table.user_ids).float(), prompt_scale(cfg, lm)
        if imported is not None and imported.has_head:
            head = load_head(table.task, imported.bank.head_state, lm.hidden_size)
        else:
            head = fresh_head(cfg, lm, table, exp.mean_label(), prompts)
        train_head = imported is None or not imported.has_head
        module = build_prompt_tuning(cfg, lm, table, head, prompts, scale, train_prompts=self.train_prompts,
                                     shared=self.shared, train_head=train_head)
        dm = exp.datamodule(lm, cfg.prompt.batch_size)
        fitted = before_train(cfg, module, dm) if train_head else {}  # closed-form fits (prompt.hidden_readout=ridge)
        if train_head:
            stats = fit_best(module, dm, cfg, exp.run_dir, self.name, self.epochs, hparams=exp.hparams(self.name),
                             resume_key=key,
                             patience=cfg.prompt.early_stopping_patience if self.train_prompts or imported else None)
        else:  # an imported bank with its head: nothing to train
            stats = StageStats(wall_s=0.0, train_samples=0, trainable_params=0, epochs=0)
        metrics = test_metrics(module, dm, cfg, exp.run_dir, self.name)
        if fitted:
            stats.wall_s = round(stats.wall_s + sum(record["seconds"] for record in fitted.values()), 2)
        bank = None
        if self.save_bank and not self.shared:
            made_by = f"pretrain:{self.name}" if imported is None else "import:source"
            parent = imported.path if imported is not None else None

            def bank() -> PromptBank:
                return PromptBank(module.model_prompts(), list(table.user_ids), lm.name, lm.fingerprint,
                                  info=exp.bank_info(made_by, metrics, parent=parent), head_state=module.head.state_dict())
        record = {**stats.to_dict(), **({"imported": imported.record()} if imported is not None else {}),
                  "user_bias": module.user_bias is not None, "shared_prompt": self.shared,
                  **fitted}
        return Outcome(metrics, record, evaluator=module, datamodule=dm, bank=bank, placebo=not self.shared)


def source_stage(exp: Any) -> PromptStage:
    return PromptStage(exp.cfg, "source", "source")


def random_init_stage(exp: Any) -> PromptStage:
    return PromptStage(exp.cfg, "random_init", "target", train_prompts=False, epochs=exp.cfg.baselines.random_init_epochs,
                       save_bank=False)


def full_retrain_stage(exp: Any) -> PromptStage:
    return PromptStage(exp.cfg, "full_retrain", "target")


def shared_prompt_stage(model: str) -> Any:
    return lambda exp: PromptStage(exp.cfg, f"shared_prompt_{model}", model, shared=True)


register_stage(StageEntry("source", single(source_stage), shown=lambda cfg: bool(cfg.baselines.source),
                          descriptions={"source": "source prompts on the source model"}))
register_stage(StageEntry("random_init", single(random_init_stage), enabled=lambda cfg: bool(cfg.baselines.random_init),
                          descriptions={"random_init": "random prompts on the target, head trained"}))
register_stage(StageEntry("full_retrain", single(full_retrain_stage), enabled=lambda cfg: bool(cfg.baselines.full_retrain),
                          descriptions={"full_retrain": "every prompt retrained on the target"}))
for _model in ("source", "target"):
    register_stage(StageEntry(f"shared_prompt_{_model}", single(shared_prompt_stage(_model)),
                              enabled=lambda cfg, m=_model: m in cfg.baselines.shared_prompt,
                              descriptions={f"shared_prompt_{_model}": f"one prompt shared by all users, on the {_model} model"}))
