"""The training-free map between two models' input embedding spaces (``vocab_map``).

Strings that both tokenizers encode as exactly one token give pairs of input embeddings (source row,
target row). A ridge least-squares map ``W`` ``[d_s, d_t]`` fitted on those pairs sends a source
prompt ``p`` to ``p @ W``. It is used twice: as a migration row of its own with no training at all
(``baselines.vocab_map``), and as the starting point of PUMA's adapter (``adapter.init=vocab_map``),
so that the adapter's first step already maps every prompt where the two vocabularies say it belongs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

VOCAB_RIDGE = 1e-2
"""Ridge strength of the vocabulary map, relative to the mean squared source embedding."""


@dataclass
class VocabMap:
    """A fitted map and what it cost."""

    weight: torch.Tensor
    """``[d_s, d_t]``: a source prompt ``p`` maps to ``p @ weight``."""
    shared_tokens: int
    """How many single-token strings the two tokenizers share (the pairs it was fitted on)."""
    seconds: float
    """Wall seconds of the fit, loading the source model for its embedding table included (loading the target is not:
    every method on the target pays that, and no stage counts it)."""


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


def experiment_vocab_map(exp: Any) -> VocabMap:
    """The map from ``exp``'s source model to its target model; leaves the target loaded (one model at a time)."""
    start = time.perf_counter()
    source_lm = exp.backbone("source")
    source_tok = source_lm.tokenizer
    with torch.no_grad():
        source_table = source_lm.embed(torch.arange(len(source_tok.get_vocab()), device=source_lm.device)).float().cpu()
    loading = time.perf_counter()
    lm = exp.backbone("target")
    target_load_s = time.perf_counter() - loading
    source_ids, target_ids = single_token_pairs(source_tok, lm.tokenizer)
    if len(source_ids) < 2 * source_table.shape[1]:
        log.warning("vocab_map: only %d shared single-token strings for a %d-wide map",
                    len(source_ids), source_table.shape[1])
    with torch.no_grad():
        target_rows = lm.embed(torch.as_tensor(target_ids, device=lm.device)).float().cpu()
    weight = fit_vocab_map(source_table[torch.as_tensor(source_ids)], target_rows)
    return VocabMap(weight, len(source_ids), time.perf_counter() - start - target_load_s)


def adapter_start_map(exp: Any, source_bank: Any) -> VocabMap | None:
    """The map ``adapter.init=vocab_map`` starts PUMA's adapter as (None under ``random``).

    The source bank's prompts must live in the source model's input space: an aggregated bank (several models'
    prompts side by side) has no one vocabulary to map from, and is refused in one line.
    """
    from puma_lightning.errors import PumaError

    if exp.cfg.adapter.init != "vocab_map":
        return None
    if "aggregate" in (source_bank.info or {}):
        raise PumaError("'adapter.init' is 'vocab_map', but the source bank aggregates several models' prompts "
                        f"({source_bank.model_name}); no one vocabulary maps them: use adapter.init=random")
    fitted = experiment_vocab_map(exp)
    if fitted.weight.shape[0] != source_bank.hidden_size:
        raise PumaError(f"'adapter.init' is 'vocab_map', but source model {exp.cfg.source.name!r} embeds in "
                        f"{fitted.weight.shape[0]} dimensions and its bank's prompts have {source_bank.hidden_size}")
    return fitted
