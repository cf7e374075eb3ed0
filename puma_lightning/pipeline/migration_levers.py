"""Migration rows beside PUMA's adapter: a short per-user polish after mapping, and a training-free map.

- ``puma_polish`` (``adapter.polish_epochs`` > 0): every migrated prompt, with the adapter's head,
  fine-tuned per user on the target for a few epochs; its cost is the mapping's plus its own.
- ``vocab_map`` (``baselines.vocab_map``): no training at all. Every source prompt goes through the
  least-squares map between the two models' embeddings of shared single-token strings
  (:mod:`puma_lightning.pipeline.vocab_map`), evaluated with the source head on the target. It asks
  whether the two embedding spaces align well enough that the prompts carry over without the target
  model in the loop.
"""

from __future__ import annotations

import logging
from typing import Any

from puma_lightning.io.bank import PromptBank
from puma_lightning.models.heads import load_head
from puma_lightning.pipeline.distributed import on_rank_zero
from puma_lightning.pipeline.experiment import config_key, seed_stage, start_stage_costs, stage_costs, trainer_key
from puma_lightning.pipeline.placebo import placebo_pass
from puma_lightning.pipeline.training import fit_best, test_metrics
from puma_lightning.pipeline.vocab_map import VOCAB_RIDGE, experiment_vocab_map

log = logging.getLogger(__name__)


def polish_stage(exp: Any) -> dict[str, Any]:
    """``puma_polish``: the migrated bank fine-tuned per user on the target for ``adapter.polish_epochs``."""
    from puma_lightning.pipeline.builders import build_prompt_tuning, prompt_scale

    cfg = exp.cfg
    stage, epochs = "puma_polish", int(cfg.adapter.polish_epochs)
    puma = exp.migrate_stage()
    bank = PromptBank.load(exp.stage_dir("puma") / "bank")
    key = config_key(cfg.data, cfg.target, cfg.prompt, cfg.seed, epochs, puma["key"], trainer_key(cfg.trainer))
    cached = exp.read_stage(stage, key)
    if cached is not None:
        return cached
    lm, table = exp.backbone("target"), exp.table
    seed_stage(cfg.seed, stage)
    head = load_head(table.task, bank.head_state, lm.hidden_size)
    module = build_prompt_tuning(cfg, lm, table, head, bank.rows_for(table.user_ids).float(), prompt_scale(cfg, lm),
                                 train_head=False)
    dm = exp.datamodule(lm, cfg.prompt.batch_size)
    before = start_stage_costs(lm)
    stats = fit_best(module, dm, cfg, exp.run_dir, stage, epochs, resume_key=key)
    metrics = test_metrics(module, dm, cfg, exp.run_dir, stage)
    cost = stage_costs(lm, before)
    exp.save_test_predictions(stage, module.test_predictions())
    placebo = placebo_pass(exp, stage, module, dm)
    on_rank_zero(lambda: PromptBank(module.model_prompts(), list(table.user_ids), lm.name, lm.fingerprint,
                                    info={"made_by": f"migrate:{stage}", "metrics": metrics},
                                    head_state=module.head.state_dict()).save(exp.stage_dir(stage) / "bank"))
    record = stats.to_dict()
    record.update(wall_s=round(stats.wall_s + puma["wall_s"], 2), train_samples=stats.train_samples + puma["train_samples"],
                  polish_wall_s=stats.wall_s, polish_train_samples=stats.train_samples)
    return exp.write_stage(stage, key, {"method": stage, "metrics": metrics, **record, **cost,
                                        **({"placebo": placebo} if placebo is not None else {})})


def vocab_map_stage(exp: Any) -> dict[str, Any]:
    """``vocab_map``: the source bank mapped by the embedding-space least-squares map, tested on the target."""
    from puma_lightning.pipeline.builders import attach_item_match
    from puma_lightning.tasks import PromptTuning

    cfg = exp.cfg
    stage = "vocab_map"
    bank = PromptBank.load(exp.stage_dir("source") / "bank")
    # cfg.prompt: the source bank it maps and the target's match term both follow it (a run with another prompt recipe
    # must not reuse a row mapped from the old bank)
    key = config_key(cfg.data, cfg.source, cfg.target, cfg.prompt, cfg.seed, bank.model_fingerprint, VOCAB_RIDGE)
    cached = exp.read_stage(stage, key)
    if cached is not None:
        return cached
    fitted = experiment_vocab_map(exp)
    lm = exp.backbone("target")
    mapped = bank.rows_for(exp.table.user_ids).float() @ fitted.weight
    head = load_head(exp.table.task, bank.head_state, lm.hidden_size)  # a readout restarts at zero: nothing trains here
    attach_item_match(cfg, head, lm, exp.table, mapped)  # the target's own term, anchored at the mapped bank
    evaluator = PromptTuning(lm, head, exp.table.task, mapped, train_prompts=False, train_head=False)
    before = start_stage_costs(lm)
    dm = exp.datamodule(lm, cfg.prompt.batch_size)
    metrics = test_metrics(evaluator, dm, cfg, exp.run_dir, stage)
    cost = stage_costs(lm, before)
    exp.save_test_predictions(stage, evaluator.test_predictions())
    placebo = placebo_pass(exp, stage, evaluator, dm)
    return exp.write_stage(stage, key, {"method": stage, "metrics": metrics, "wall_s": round(fitted.seconds, 2), "train_samples": 0,
                                        "trainable_params": 0, "shared_tokens": fitted.shared_tokens, **cost,
                                        **({"placebo": placebo} if placebo is not None else {})})
