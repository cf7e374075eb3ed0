"""Migration rows beside PUMA's adapter: a short per-user polish after mapping, and a training-free map.

- ``puma_polish`` (``adapter.polish_epochs`` > 0): every migrated prompt, with the adapter's head,
  fine-tuned per user on the target for a few epochs; its cost is the mapping's plus its own.
- ``vocab_map`` (``baselines.vocab_map``): no training at all. Strings that both tokenizers encode as
  one token give pairs of input embeddings (source row, target row); a ridge least-squares map
  ``W`` [d_s, d_t] fitted on them sends every source prompt to ``prompt @ W``, evaluated with the
  source head on the target. It asks whether the two embedding spaces align well enough that the
  prompts carry over without the target model in the loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from puma_lightning.io.bank import PromptBank
from puma_lightning.models.heads import load_head
from puma_lightning.pipeline.distributed import on_rank_zero
from puma_lightning.pipeline.experiment import config_key, seed_stage, start_stage_costs, stage_costs, trainer_key
from puma_lightning.pipeline.training import fit_best, test_metrics

log = logging.getLogger(__name__)

VOCAB_RIDGE = 1e-2
"""Ridge strength of the vocabulary map, relative to the mean squared source embedding."""


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
    on_rank_zero(lambda: PromptBank(module.model_prompts(), list(table.user_ids), lm.name, lm.fingerprint,
                                    info={"made_by": f"migrate:{stage}", "metrics": metrics},
                                    head_state=module.head.state_dict()).save(exp.stage_dir(stage) / "bank"))
    record = stats.to_dict()
    record.update(wall_s=round(stats.wall_s + puma["wall_s"], 2), train_samples=stats.train_samples + puma["train_samples"],
                  polish_wall_s=stats.wall_s, polish_train_samples=stats.train_samples)
    return exp.write_stage(stage, key, {"method": stage, "metrics": metrics, **record, **cost})


def single_token_pairs(source_tokenizer: Any, target_tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids ``(source, target)`` of the strings each tokenizer encodes as exactly one token."""
    pairs = [(int(sid), source_tokenizer.convert_tokens_to_string([token])) for token, sid in source_tokenizer.get_vocab().items()]
    pairs = [(sid, text) for sid, text in pairs if text.strip()]
    encoded = target_tokenizer([text for _, text in pairs], add_special_tokens=False)["input_ids"] if pairs else []
    kept = [(sid, ids[0]) for (sid, _), ids in zip(pairs, encoded) if len(ids) == 1]
    return [s for s, _ in kept], [int(t) for _, t in kept]


def fit_vocab_map(source_emb: torch.Tensor, target_emb: torch.Tensor, ridge: float = VOCAB_RIDGE) -> torch.Tensor:
    """Ridge least squares ``W`` minimising ``|source_emb @ W - target_emb|^2 + ridge * mean(|x|^2) * |W|^2``."""
    x, y = source_emb.double(), target_emb.double()
    lam = ridge * float((x * x).sum(1).mean())
    gram = x.T @ x + lam * torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(gram, x.T @ y).float()


def vocab_map_stage(exp: Any) -> dict[str, Any]:
    """``vocab_map``: the source bank mapped by the embedding-space least-squares map, tested on the target."""
    from puma_lightning.tasks import PromptTuning

    cfg = exp.cfg
    stage = "vocab_map"
    bank = PromptBank.load(exp.stage_dir("source") / "bank")
    key = config_key(cfg.data, cfg.source, cfg.target, cfg.seed, bank.model_fingerprint, VOCAB_RIDGE)
    cached = exp.read_stage(stage, key)
    if cached is not None:
        return cached
    start = time.perf_counter()
    source_lm = exp.backbone("source")
    source_tok = source_lm.tokenizer
    with torch.no_grad():
        source_table = source_lm.embed(torch.arange(len(source_tok.get_vocab()), device=source_lm.device)).float().cpu()
    lm = exp.backbone("target")  # loads the target (only one real model is kept at a time)
    source_ids, target_ids = single_token_pairs(source_tok, lm.tokenizer)
    if len(source_ids) < 2 * source_table.shape[1]:
        log.warning("vocab_map: only %d shared single-token strings for a %d-wide map", len(source_ids), source_table.shape[1])
    with torch.no_grad():
        target_rows = lm.embed(torch.as_tensor(target_ids, device=lm.device)).float().cpu()
    weight = fit_vocab_map(source_table[torch.as_tensor(source_ids)], target_rows)
    mapped = bank.rows_for(exp.table.user_ids).float() @ weight
    fit_s = time.perf_counter() - start
    head = load_head(exp.table.task, bank.head_state, lm.hidden_size)  # a readout restarts at zero: nothing trains here
    evaluator = PromptTuning(lm, head, exp.table.task, mapped, train_prompts=False, train_head=False)
    before = start_stage_costs(lm)
    metrics = test_metrics(evaluator, exp.datamodule(lm, cfg.prompt.batch_size), cfg, exp.run_dir, stage)
    cost = stage_costs(lm, before)
    exp.save_test_predictions(stage, evaluator.test_predictions())
    return exp.write_stage(stage, key, {"method": stage, "metrics": metrics, "wall_s": round(fit_s, 2), "train_samples": 0,
                                        "trainable_params": 0, "shared_tokens": len(source_ids), **cost})
