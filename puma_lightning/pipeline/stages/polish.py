"""``puma_polish`` (``adapter.polish_epochs`` > 0): every migrated prompt, with the adapter's head, fine-tuned per
user on the target for a few epochs; its cost is the mapping's plus its own."""

from __future__ import annotations

from typing import Any, Sequence

from puma_lightning.io.bank import PromptBank
from puma_lightning.models.heads import load_head
from puma_lightning.pipeline.builders import build_prompt_tuning, prompt_scale
from puma_lightning.pipeline.stage import Outcome, Stage, trainer_key
from puma_lightning.pipeline.stages.registry import StageEntry, register_stage, single
from puma_lightning.pipeline.training import fit_best, test_metrics


class PolishStage(Stage):
    """The migrated bank fine-tuned per user on the target for ``adapter.polish_epochs``."""

    name = "puma_polish"
    model = "target"

    def __init__(self) -> None:
        self.puma: dict[str, Any] = {}

    def key_parts(self, exp: Any) -> Sequence[Any]:
        cfg = exp.cfg
        self.puma = exp.run_stage("puma")
        return (cfg.data, cfg.target, cfg.prompt, cfg.seed, int(cfg.adapter.polish_epochs), self.puma["key"],
                trainer_key(cfg.trainer))

    def compute(self, exp: Any, lm: Any, key: str, prepared: Any) -> Outcome:
        cfg, table, puma = exp.cfg, exp.table, self.puma
        bank = PromptBank.load(exp.stage_dir("puma") / "bank")
        head = load_head(table.task, bank.head_state, lm.hidden_size)
        module = build_prompt_tuning(cfg, lm, table, head, bank.rows_for(table.user_ids).float(), prompt_scale(cfg, lm),
                                     train_head=False)
        dm = exp.datamodule(lm, cfg.prompt.batch_size)
        stats = fit_best(module, dm, cfg, exp.run_dir, self.name, int(cfg.adapter.polish_epochs), resume_key=key)
        metrics = test_metrics(module, dm, cfg, exp.run_dir, self.name)

        def polished() -> PromptBank:
            return PromptBank(module.model_prompts(), list(table.user_ids), lm.name, lm.fingerprint,
                              info={"made_by": f"migrate:{self.name}", "metrics": metrics}, head_state=module.head.state_dict())
        record = stats.to_dict()
        record.update(wall_s=round(stats.wall_s + puma["wall_s"], 2), train_samples=stats.train_samples + puma["train_samples"],
                      polish_wall_s=stats.wall_s, polish_train_samples=stats.train_samples)
        return Outcome(metrics, record, evaluator=module, datamodule=dm, bank=polished)


register_stage(StageEntry("puma_polish", single(lambda exp: PolishStage()), enabled=lambda cfg: bool(cfg.adapter.polish_epochs),
                          migrated=True, descriptions={
                              "puma_polish": "migrated prompts, then fine-tuned per user on the target (cost includes puma's)"}))
