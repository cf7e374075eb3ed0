"""``adapter.aggregate_start``: weight the source blocks of an aggregated bank's start map, chosen on validation.

For an aggregated source bank ``adapter.init`` starts the adapter as the mean of the single-source maps,
``(p_1 W_1 + ... + p_S W_S) / S`` (:func:`~puma_lightning.pipeline.levers.adapter_init.aggregated_start_map`). Where
one source's prompts know their users and another's do not, the mean halves the good one's part: on
``configs/personal.yaml`` (SmolLM2 + a tiny random Qwen2 into Gemma-3, seed 0) the aggregate kept 72 % of full
retraining's personal gain and SmolLM2 alone 104 % (docs/prompt_diagnosis.md, section 8). Under ``valid`` the
adapter's start is chosen, before it trains, among the mean and each source's block alone (``p_s W_s``), on the
validation rows of every unselected user (as :mod:`.shrink` judges): a single source replaces the mean only where it
is better by :data:`~puma_lightning.pipeline.judging.MARGIN_SE` standard errors of the paired per-row loss, rows
clustered by user. Cost: one validation pass per candidate (S + 1), counted in PUMA's. Measured there, it kept the
mean: validation could not tell it from SmolLM2's block alone (z +0.16; the head absorbs the halved scale) and
rejected the tiny Qwen2's (z +7.2), so it ships off (``mean``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from puma_lightning.pipeline.judging import best_against, row_losses
from puma_lightning.pipeline.levers.adapter_init import START_MAPS
from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import register_lever

if TYPE_CHECKING:
    from puma_lightning.pipeline.vocab_map import VocabMap

AGGREGATE_STARTS = ("mean", "valid")
"""``adapter.aggregate_start`` choices."""
MEAN = "mean"
"""The candidate that leaves the map as ``adapter.init`` fitted it (every block at ``1/S``)."""


def block_alone(start: "VocabMap", index: int) -> "VocabMap":
    """``start`` (every source block at ``1/S``) with block ``index`` at full weight and every other row at zero: a
    user's prompt then starts as that source's own single-source start, ``p_s W_s``."""
    weight = start.weight.new_zeros(start.weight.shape)
    offset = sum(width for _, width in start.blocks[:index])
    width = start.blocks[index][1]
    weight[offset:offset + width] = start.weight[offset:offset + width] * len(start.blocks)
    return replace(start, weight=weight)


def candidate_starts(start: "VocabMap") -> dict[str, "VocabMap"]:
    """The starts :func:`choose_block_start` judges: ``mean`` (the map as fitted), then each source's block alone, keyed
    by the source model's name."""
    candidates = {MEAN: start}
    for index, (name, _) in enumerate(start.blocks):
        if name in candidates:
            raise ValueError(f"adapter.aggregate_start: the aggregated bank names source {name!r} twice")
        candidates[name] = block_alone(start, index)
    return candidates


def choose_block_start(task: str, start: "VocabMap", judge: Callable[["VocabMap"], dict]) -> tuple["VocabMap", dict[str, Any]]:
    """The candidate of :func:`candidate_starts` with the lowest validation loss among those better than ``mean`` by the
    judging margin (``mean`` if none is), and the record. ``judge(map)``: the adapter's ``user``, ``prediction`` and
    ``label`` per validation row when it starts at ``map``."""
    begin = time.perf_counter()
    candidates = candidate_starts(start)
    losses, users = {}, None
    for key, candidate in candidates.items():
        rows = judge(candidate)
        losses[key], users = row_losses(task, rows["prediction"], rows["label"]), rows["user"]
    chosen, z = best_against(losses, MEAN, users)
    start_map = replace(candidates[chosen], seconds=start.seconds)
    return start_map, {"chosen": chosen, "valid_loss": {k: round(float(v.mean()), 6) for k, v in losses.items()},
                       "valid_z": {k: round(v, 2) for k, v in z.items()}, "valid_rows": int(len(losses[MEAN])),
                       "seconds": round(time.perf_counter() - begin, 2)}


class AggregateStart(Lever):
    """An aggregated bank's start map: the mean of its sources' maps, or one source's alone where validation prefers it."""

    name = "aggregate_start"
    options = (Option("adapter.aggregate_start", AGGREGATE_STARTS),)
    description = "an aggregated bank's adapter starts from the mean of its sources' maps or the best one, chosen on validation"

    def validate(self, cfg: Any) -> None:
        if str(cfg.adapter.get("aggregate_start", MEAN)) == "valid" and cfg.adapter.init == "random":
            raise ValueError("'adapter.aggregate_start' is 'valid', which weights the blocks of adapter.init's map, but "
                             f"'adapter.init' is 'random'; set adapter.init to a map ({', '.join(START_MAPS)})")

    def choose_start(self, cfg: Any, start_map: Any, judge: Callable[[Any], dict]) -> tuple[Any, dict[str, Any]] | None:
        if str(cfg.adapter.get("aggregate_start", MEAN)) == MEAN or start_map is None or len(start_map.blocks) < 2:
            return None  # off, a random start, or a single source: nothing to weight
        return choose_block_start(str(cfg.data.task), start_map, judge)


register_lever(AggregateStart())
