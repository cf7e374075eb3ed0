"""The protocol every results row follows, written once: key, reuse, seeding, cost, record, bank.

A stage is one row of the results table (``source``, ``puma``, ``full_retrain``...). :func:`run_stage` runs one:

1. its **key** is a hash of what decides its result (:meth:`Stage.key_parts`); a ``stage.json`` with that key is
   **reused**, nothing recomputed;
2. :meth:`Stage.prepare` does what must happen before the stage's own random streams (choosing users, loading a
   second model);
3. the stage's model is loaded and the run's seed and the stage's name **seed** every random stream, so its numbers
   do not depend on what ran before it;
4. the backbone's prefix cache is emptied and its counters read, so the stage pays for its own prefixes (**cost**);
5. :meth:`Stage.compute` trains and tests, returning an :class:`Outcome`;
6. the outcome's test predictions are saved, its prompts are scored again dealt to other users (the **placebo**), its
   **bank** is saved, and the **record** is written with its key.

Stages register in :mod:`puma_lightning.pipeline.stages`; ``fit`` runs the enabled ones in order.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from puma_lightning.pipeline.distributed import on_rank_zero
from puma_lightning.pipeline.levers.registry import lever_key
from puma_lightning.pipeline.placebo import placebo_pass
from puma_lightning.pipeline.seeding import seed_stage

log = logging.getLogger(__name__)

COSMETIC_TRAINER_KEYS = frozenset({"enable_progress_bar", "log_every_n_steps", "checkpoint_every_n_steps", "num_threads"})
"""Trainer settings that do not change a stage's result (everything else in ``trainer`` is part of its key)."""


def config_key(*nodes: Any) -> str:
    """A short hash of the config sections a stage depends on (decides whether it can be reused)."""
    blob = json.dumps([OmegaConf.to_container(n, resolve=True) if isinstance(n, DictConfig) else n for n in nodes], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def trainer_key(tcfg: DictConfig) -> dict[str, Any]:
    """The trainer settings a stage's result depends on: limits, fast_dev_run, precision, devices, clipping..."""
    return {k: v for k, v in OmegaConf.to_container(tcfg, resolve=True).items() if k not in COSMETIC_TRAINER_KEYS}


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
    from puma_lightning.machine import dtype_name, machine_info

    choice = getattr(lm, "dtype_choice", None)
    return {"dtype": dtype_name(lm.dtype), "dtype_reason": getattr(choice, "reason", None),
            "prefix_cache": getattr(lm, "prefix_cache", None) is not None, "machine": machine_info()}


@dataclass
class Outcome:
    """What a stage's :meth:`Stage.compute` hands back to the protocol."""

    metrics: dict[str, float]
    """The test metrics (the row's numbers)."""
    record: dict[str, Any] = field(default_factory=dict)
    """The stage's own record fields: what it cost (``wall_s``, ``train_samples``, ``trainable_params``...) and what it did."""
    evaluator: Any | None = None
    """The module that made the test predictions: they are saved, and scored again with its prompts dealt to other
    users (the placebo). None: the stage saves its predictions itself (``predictions``) and has no placebo."""
    datamodule: Any | None = None
    """The test rows' datamodule of ``evaluator``."""
    placebo: bool = True
    """Score ``evaluator`` again with its prompts dealt to other users (False: one prompt for all, nothing to deal)."""
    predictions: dict[str, Any] | None = None
    """Per-row test predictions of a stage without an ``evaluator`` (the classic references)."""
    bank: Callable[[], Any] | None = None
    """Builds the stage's :class:`~puma_lightning.io.bank.PromptBank` (called on rank 0 only), saved as ``<stage>/bank``."""


class Stage(ABC):
    """One results row: what it depends on (its key), and how it is computed. :func:`run_stage` does the rest."""

    name: str
    """The row's name and its folder under the run directory."""
    model: str | None = None
    """``source`` or ``target``: the backbone the stage runs on (its costs are recorded); None: no LLM."""

    @property
    def method(self) -> str:
        """The ``method`` its record names (the row's name unless the stage says otherwise)."""
        return self.name

    @abstractmethod
    def key_parts(self, exp: Any) -> Sequence[Any]:
        """Everything the stage's result depends on (config sections, seeds, the fingerprints of its inputs). It may
        load an input whose fingerprint the key needs (kept for :meth:`compute`), but never changes what the stage
        will do: that is settled when the stage is made."""

    def prepare(self, exp: Any) -> Any:
        """Work done before the stage's model is loaded and its streams seeded (choosing users, loading another model)."""
        return None

    @abstractmethod
    def compute(self, exp: Any, lm: Any, key: str, prepared: Any) -> Outcome:
        """Train and test on ``lm`` (the stage's backbone, or None), with what :meth:`prepare` returned."""


def run_stage(exp: Any, stage: Stage) -> dict[str, Any]:
    """Run ``stage`` in the run context ``exp`` (an :class:`~puma_lightning.pipeline.experiment.Experiment`), or reuse
    its record; returns the record."""
    levers = lever_key(exp.cfg)  # the sections of levers of your own: a change there recomputes every stage
    key = config_key(*stage.key_parts(exp), *([{"levers": levers}] if levers else []))
    cached = exp.read_stage(stage.name, key)
    if cached is not None:
        log.info("reusing %s from %s", stage.name, exp.stage_dir(stage.name))
        return cached
    prepared = stage.prepare(exp)
    lm = exp.backbone(stage.model) if stage.model else None
    seed_stage(exp.cfg.seed, stage.name)  # head init, dropout, anything drawn from the global streams: this stage's own
    before = start_stage_costs(lm) if lm is not None else None
    outcome = stage.compute(exp, lm, key, prepared)
    cost = stage_costs(lm, before) if lm is not None else {}
    placebo = None
    if outcome.evaluator is not None:
        exp.save_test_predictions(stage.name, outcome.evaluator.test_predictions())
        if outcome.placebo:  # its prompts dealt to other users
            placebo = placebo_pass(exp, stage.name, outcome.evaluator, outcome.datamodule)
    elif outcome.predictions is not None:
        exp.save_test_predictions(stage.name, outcome.predictions)
    if outcome.bank is not None:  # rank 0 writes; the others wait so that later stages can read it
        on_rank_zero(lambda: outcome.bank().save(exp.stage_dir(stage.name) / "bank"))
    record = {"method": stage.method, "metrics": outcome.metrics, **outcome.record, **cost,
              **({"placebo": placebo} if placebo is not None else {})}
    return exp.write_stage(stage.name, key, record)
