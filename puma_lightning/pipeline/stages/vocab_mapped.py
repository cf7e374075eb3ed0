"""``vocab_map`` (``baselines.vocab_map``): no training at all. Every source prompt goes through the least-squares map
between the two models' embeddings of shared single-token strings (:mod:`puma_lightning.pipeline.vocab_map`), and is
tested with the source head on the target: do the two embedding spaces align well enough that the prompts carry over
without the target model in the loop?"""

from __future__ import annotations

from typing import Any, Sequence

from puma_lightning.io.bank import PromptBank
from puma_lightning.models.heads import load_head
from puma_lightning.pipeline.levers.hooks import start_head
from puma_lightning.pipeline.stage import Outcome, Stage
from puma_lightning.pipeline.stages.registry import StageEntry, register_stage, single
from puma_lightning.pipeline.training import test_metrics
from puma_lightning.pipeline.vocab_map import VOCAB_RIDGE, experiment_vocab_map
from puma_lightning.tasks import PromptTuning


class VocabMapStage(Stage):
    """The source bank mapped by the embedding-space least-squares map, tested on the target."""

    name = "vocab_map"
    model = "target"

    def __init__(self) -> None:
        self.bank: PromptBank | None = None

    def key_parts(self, exp: Any) -> Sequence[Any]:
        cfg = exp.cfg
        self.bank = PromptBank.load(exp.stage_dir("source") / "bank")
        # cfg.prompt: the source bank it maps and the target's match term both follow it (a run with another prompt recipe
        # must not reuse a row mapped from the old bank)
        return (cfg.data, cfg.source, cfg.target, cfg.prompt, cfg.seed, self.bank.model_fingerprint, VOCAB_RIDGE)

    def prepare(self, exp: Any) -> Any:
        return experiment_vocab_map(exp)  # loads the source model, then the target

    def compute(self, exp: Any, lm: Any, key: str, fitted: Any) -> Outcome:
        cfg, table, bank = exp.cfg, exp.table, self.bank
        mapped = bank.rows_for(table.user_ids).float() @ fitted.weight
        head = load_head(table.task, bank.head_state, lm.hidden_size)  # a readout restarts at zero: nothing trains here
        start_head(cfg, head, lm, table, lambda: mapped)  # the target's own match term, anchored at the mapped bank
        evaluator = PromptTuning(lm, head, table.task, mapped, train_prompts=False, train_head=False)
        dm = exp.datamodule(lm, cfg.prompt.batch_size)
        metrics = test_metrics(evaluator, dm, cfg, exp.run_dir, self.name)
        record = {"wall_s": round(fitted.seconds, 2), "train_samples": 0, "trainable_params": 0,
                  "shared_tokens": fitted.shared_tokens}
        return Outcome(metrics, record, evaluator=evaluator, datamodule=dm)


register_stage(StageEntry("vocab_map", single(lambda exp: VocabMapStage()), enabled=lambda cfg: bool(cfg.baselines.vocab_map),
                          migrated=True, descriptions={
                              "vocab_map": "no training: source prompts through a least-squares map between the two embedding tables"}))
