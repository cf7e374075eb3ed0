"""``adapter.init``: start PUMA's adapter as a closed-form map between the two models instead of from noise.

The maps' fits are :mod:`puma_lightning.pipeline.vocab_map`; this lever owns the option (its values are
``random`` and the maps of :data:`START_MAPS`), checks the adapter has a linear path to start, and gives the start
through the ``adapter_init`` hook.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from puma_lightning.pipeline.levers.lever import Lever, Option
from puma_lightning.pipeline.levers.registry import register_lever

if TYPE_CHECKING:
    from puma_lightning.pipeline.vocab_map import VocabMap

START_MAPS = {"vocab_map": "experiment_vocab_map", "match_map": "experiment_match_map", "item_map": "experiment_item_map"}
"""``adapter.init`` values that start the adapter's linear path as a closed-form map, and the function of
:mod:`puma_lightning.pipeline.vocab_map` that fits each (named, so that reading the options loads no torch: the
config loader and ``--help`` import every lever)."""
ADAPTER_INITS = ("random", *START_MAPS)
"""``adapter.init`` choices: each layer's own initialisation, or a closed-form map."""


def adapter_start_map(exp: Any, source_bank: Any) -> VocabMap | None:
    """The map ``adapter.init`` starts PUMA's adapter as (None under ``random``).

    The source bank's prompts live in the source model's input space, or, for an aggregated bank (several models'
    prompts side by side), in each source model's space block by block: :func:`aggregated_start_map`.
    """
    if exp.cfg.adapter.init not in START_MAPS:
        return None
    if "aggregate" in (source_bank.info or {}):
        return aggregated_start_map(exp, source_bank)
    return fitted_map(exp, str(exp.cfg.source.name), source_bank.hidden_size, "its bank's prompts have")


def fitted_map(exp: Any, source_name: str, width: int, what: str) -> VocabMap:
    """``adapter.init``'s map fitted between ``exp``'s source and target models, checked to take ``width`` source
    features (one line naming ``source_name`` and ``what`` has that width otherwise)."""
    from puma_lightning.errors import PumaError

    init = exp.cfg.adapter.init
    fitted = getattr(import_module("puma_lightning.pipeline.vocab_map"), START_MAPS[init])(exp)
    if fitted.weight.shape[0] != width:
        raise PumaError(f"'adapter.init' is {init!r}, but source model {source_name!r} embeds in "
                        f"{fitted.weight.shape[0]} dimensions and {what} {width}")
    return fitted


def aggregated_start_map(exp: Any, source_bank: Any) -> VocabMap:
    """The start for an aggregated bank ``[p_1, ..., p_S (, indicators)]``: each source's own map ``W_s`` (fitted
    between that source model and the target as for a single source), stacked block by block and divided by ``S``,
    so a user's migrated prompt starts as the mean of the S single-source starts, ``(p_1 W_1 + ... + p_S W_S) / S``;
    the indicator features of ``aggregate.missing=zero_fill`` start with zero weight. The source models are loaded
    one at a time (named in the bank's ``aggregate.sources``); the map names its blocks, so that
    ``adapter.aggregate_start`` can weight them (:mod:`.aggregate_start`)."""
    import torch

    from puma_lightning.errors import PumaError
    from puma_lightning.pipeline.sub_runs import experiment_on, sub_config
    from puma_lightning.pipeline.vocab_map import VocabMap

    init = exp.cfg.adapter.init
    summary = source_bank.info["aggregate"]
    names, widths = list(summary.get("sources") or []), [int(w) for w in summary["widths"]]
    if len(names) != len(widths):
        raise PumaError(f"'adapter.init' is {init!r}, but the aggregated bank ({source_bank.model_name}) does not name "
                        "its source models (made before they were recorded): run aggregate again in a new run_dir, "
                        "or use adapter.init=random")
    blocks, shared, seconds = [], [], 0.0
    for name, width in zip(names, widths):
        single = experiment_on(sub_config(exp.cfg, exp.cfg.run_dir, **{"source.name": name, "source.bank": None,
                                                                         "source_dir": None}), exp.table)
        fitted = fitted_map(single, name, width, "its block of the aggregated bank has")
        del single  # its models; only one is kept loaded at a time
        blocks.append(fitted.weight / len(names))
        shared.append(fitted.shared_tokens)
        seconds += fitted.seconds
    extra = source_bank.hidden_size - sum(widths)
    weight = torch.cat([*blocks, blocks[0].new_zeros(extra, blocks[0].shape[1])])
    return VocabMap(weight, min(shared), seconds, tuple(zip(names, widths)))


class AdapterInit(Lever):
    """The adapter's linear path starts as a closed-form map (its nonlinear correction at zero)."""

    name = "adapter_init"
    options = (Option("adapter.init", ADAPTER_INITS),)
    description = "PUMA's adapter starts as a closed-form map between the models' embeddings"

    def validate(self, cfg: Any) -> None:
        if cfg.adapter.init == "random":
            return
        from puma_lightning.models.adapters import linear_path_kinds

        if cfg.adapter.kind not in linear_path_kinds():
            raise ValueError(f"'adapter.init' is {cfg.adapter.init!r}, which sets an adapter's linear path, but 'adapter.kind' "
                             f"{cfg.adapter.kind!r} has none; use one of: {', '.join(linear_path_kinds())}")

    def adapter_init(self, exp: Any, source_bank: Any) -> VocabMap | None:
        return adapter_start_map(exp, source_bank)


register_lever(AdapterInit())
