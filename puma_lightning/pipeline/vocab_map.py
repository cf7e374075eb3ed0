"""The training-free map between two models' input embedding spaces (``vocab_map``).

Strings that both tokenizers encode as exactly one token give pairs of input embeddings (source row,
target row). A ridge least-squares map ``W`` ``[d_s, d_t]`` fitted on those pairs sends a source
prompt ``p`` to ``p @ W``. It is used twice: as a migration row of its own with no training at all
(``baselines.vocab_map``), and as the starting point of PUMA's adapter (``adapter.init=vocab_map``),
so that the adapter's first step already maps every prompt where the two vocabularies say it belongs.

``adapter.init=match_map`` starts the adapter as the map that carries the item-word match term instead
(``prompt.item_match``, :mod:`puma_lightning.models.item_match`). A source prompt scores an item by
``<p, e_s>``; its image ``p @ A`` scores it on the target by ``<p @ A, e_t>``. With ``M`` the least-squares map
*from the target's* token embeddings *to the source's* (``e_t @ M ~ e_s``), ``A = k * M^T`` gives
``<p @ A, e_t> = k <p, e_t @ M> ~ k <p, e_s>``, and ``k`` the ratio of the two terms' normalisations makes the
scores equal. ``vocab_map``'s ``W`` (``e_s @ W ~ e_t``) does not: ``<p @ W, e_t> ~ <p, e_s @ W W^T>``, equal only
where ``W W^T`` is a multiple of the identity.

``adapter.init=item_map`` is ``match_map`` corrected on the catalogue: the match term reads items through the *mean*
embedding of their text's tokens, and a map fitted on some 30k single tokens carries those means only
approximately. ``item_map`` keeps ``M`` for every direction the catalogue does not use and adds the ridge
least-squares correction ``D`` that sends the target's centred item embeddings onto the source's
(``E_t (M + D) ~ E_s``), so the term is carried on the catalogue's own items. It reads item texts, never a user's
rows, and needs no training.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
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
    blocks: tuple[tuple[str, int], ...] = ()
    """For an aggregated source bank: ``(source model, width)`` of each source's block of rows of ``weight``, in order
    (rows past them, the missing-source indicators, are not a block); empty for a single source."""


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
    pairs = experiment_token_pairs(exp)
    return VocabMap(fit_vocab_map(pairs.source, pairs.target), pairs.count, pairs.seconds)


def experiment_match_map(exp: Any) -> VocabMap:
    """The map ``k * M^T`` that carries the item-word match term from ``exp``'s source model to its target (module
    docstring); leaves the target loaded."""
    pairs = experiment_token_pairs(exp)
    start = time.perf_counter()
    weight = match_map_weight(pairs.source, pairs.target, pairs.source_std, pairs.target_std)
    return VocabMap(weight, pairs.count, pairs.seconds + time.perf_counter() - start)


def match_map_weight(source_rows: torch.Tensor, target_rows: torch.Tensor, source_std: float, target_std: float,
                     ridge: float = VOCAB_RIDGE) -> torch.Tensor:
    """``[d_s, d_t]``: ``k * M^T``, ``M`` the ridge least-squares map from ``target_rows`` to ``source_rows`` (paired
    embeddings ``[n, d]``), ``k`` the ratio of the match term's normalisations ``sigma^2 sqrt(d)`` (target over
    source), so that ``<p @ A, e_t>`` normalised on the target equals ``<p, e_s>`` normalised on the source."""
    to_source = fit_vocab_map(target_rows, source_rows, ridge)  # [d_t, d_s]
    k = term_ratio(source_std, target_std, source_rows.shape[1], target_rows.shape[1])
    return (k * to_source.T).contiguous()


def term_ratio(source_std: float, target_std: float, d_s: int, d_t: int) -> float:
    """``k``: the target's match-term normalisation ``sigma^2 sqrt(d)`` over the source's, so a map scaled by it
    gives a migrated prompt the source's item scores."""
    import math

    return (target_std ** 2 * math.sqrt(d_t)) / (source_std ** 2 * math.sqrt(d_s))


@dataclass
class TokenPairs:
    """Both models' input embeddings of the strings both tokenizers encode as one token."""

    source: torch.Tensor
    """``[n, d_s]``."""
    target: torch.Tensor
    """``[n, d_t]``."""
    source_std: float
    """The source model's embedding std over its whole vocabulary."""
    target_std: float
    """The target model's."""
    seconds: float
    """Wall seconds, loading the source model included (the target's load is every method's, not counted)."""

    @property
    def count(self) -> int:
        return int(self.source.shape[0])


def experiment_token_pairs(exp: Any) -> TokenPairs:
    """The shared single-token strings' embeddings in ``exp``'s source and target models; leaves the target loaded."""
    start = time.perf_counter()
    source_lm = exp.backbone("source")
    source_tok = source_lm.tokenizer
    with torch.no_grad():
        source_table = source_lm.embed(torch.arange(len(source_tok.get_vocab()), device=source_lm.device)).float().cpu()
    source_std = source_lm.embedding_std()
    loading = time.perf_counter()
    lm = exp.backbone("target")
    target_load_s = time.perf_counter() - loading
    source_ids, target_ids = single_token_pairs(source_tok, lm.tokenizer)
    if len(source_ids) < 2 * source_table.shape[1]:
        log.warning("vocab_map: only %d shared single-token strings for a %d-wide map",
                    len(source_ids), source_table.shape[1])
    with torch.no_grad():
        target_rows = lm.embed(torch.as_tensor(target_ids, device=lm.device)).float().cpu()
    return TokenPairs(source_table[torch.as_tensor(source_ids)], target_rows, source_std, lm.embedding_std(),
                      time.perf_counter() - start - target_load_s)


def experiment_item_map(exp: Any) -> VocabMap:
    """``match_map`` corrected so it carries the match term on the catalogue's items (module docstring); leaves the
    target loaded."""
    from puma_lightning.pipeline.builders import item_text_embeddings

    start = time.perf_counter()
    texts = [exp.table.item_texts[int(i)] for i in np.unique(exp.table.item)]
    max_tokens = exp.cfg.data.max_item_tokens
    source_items = item_text_embeddings(exp.backbone("source"), texts, max_tokens)
    own_s = time.perf_counter() - start
    pairs = experiment_token_pairs(exp)  # the source model is still loaded; this loads the target
    start = time.perf_counter()
    target_items = item_text_embeddings(exp.backbone("target"), texts, max_tokens)
    weight = item_map_weight(pairs, source_items, target_items)
    return VocabMap(weight, pairs.count, pairs.seconds + own_s + time.perf_counter() - start)


def item_map_weight(pairs: TokenPairs, source_items: torch.Tensor, target_items: torch.Tensor,
                    ridge: float = VOCAB_RIDGE) -> torch.Tensor:
    """``[d_s, d_t]``: ``k * (M + D)^T``, ``M`` the token map of :func:`match_map_weight` and ``D`` the ridge fit of
    what ``M`` misses on the centred item embeddings ``[n_items, d]`` (``E_s - E_t M`` regressed on ``E_t``)."""
    to_source = fit_vocab_map(pairs.target, pairs.source, ridge).double()  # [d_t, d_s]
    e_t = (target_items - target_items.mean(0)).double()
    e_s = (source_items - source_items.mean(0)).double()
    correction = fit_vocab_map(e_t, e_s - e_t @ to_source, ridge).double()
    k = term_ratio(pairs.source_std, pairs.target_std, pairs.source.shape[1], pairs.target.shape[1])
    return (k * (to_source + correction).T).float().contiguous()
