"""The references that need no LLM (``baselines.classic``), one row each (``classic/<name>``): those that apply to the
table's task and data (:func:`puma_lightning.pipeline.classic.references_for`), fitted on the training split (tuned on
valid) and tested on the same rows as every other row."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from puma_lightning.pipeline.classic import REFERENCES, references_for
from puma_lightning.pipeline.stage import Outcome, Stage, run_stage
from puma_lightning.pipeline.stages.registry import StageEntry, register_stage
from puma_lightning.tasks.uncertainty import metric_on_rows


class ClassicStage(Stage):
    """One no-LLM reference: RMSE/MAE of ratings, AUC/uAUC of click scores."""

    def __init__(self, name: str, reference: Any) -> None:
        self.reference_name, self.reference = name, reference
        self.name = f"classic/{name}"

    @property
    def method(self) -> str:
        return self.reference_name

    def key_parts(self, exp: Any) -> Sequence[Any]:
        return (exp.cfg.data, exp.cfg.seed, self.reference_name)

    def compute(self, exp: Any, lm: Any, key: str, prepared: Any) -> Outcome:
        table = exp.table
        test = table.rows("test")
        names = ("rmse", "mae") if table.task == "rating" else ("auc", "uauc")
        start = time.perf_counter()
        prediction, params = self.reference.fit(table, int(exp.cfg.seed))
        wall = time.perf_counter() - start
        label = table.label[test].astype(np.float64)
        metrics = {m: metric_on_rows(m, prediction[test], label, table.user[test]) for m in names}
        predictions = {"row": test.astype(np.int64), "user": table.user[test].astype(np.int64), "prediction": prediction[test],
                       "label": label}
        record = {"wall_s": round(wall, 2), "train_samples": int(len(table.rows("train"))), "trainable_params": 0,
                  "params": params}
        return Outcome(metrics, record, predictions=predictions)


def classic_rows(exp: Any) -> dict[str, dict[str, Any]]:
    """Every reference that applies to the run's table, each its own row."""
    return {name: run_stage(exp, ClassicStage(name, ref)) for name, ref in references_for(exp.table).items()}


register_stage(StageEntry("classic", classic_rows, enabled=lambda cfg: bool(cfg.baselines.classic),
                          descriptions={name: ref.description for name, ref in REFERENCES.items()}))
