"""``FrozenLM``: a frozen causal LM that scores answer tokens with soft prompts spliced into its input.

A soft prompt ``p_u`` of shape ``[l, d]`` replaces the input embeddings at the slot positions of a
templated text; the model's decoder body runs on ``inputs_embeds`` and only the answer tokens'
rows of the LM head are applied to the last hidden state at the answer position. Full-vocabulary
logits are never computed (for Gemma's 262k vocabulary that alone would dominate the step).

Prompts live in the space the model's input-embedding *module* outputs: for Gemma that includes
the sqrt(d) scaling, so ``embed(ids)`` and ``embedding_std()`` are taken from that module.

Padding is on the right: real tokens then sit at positions 0..n-1 exactly as in an unpadded row
(the default position ids are ``arange(T)``), and causal attention never lets a real token see a
later pad, so each row's answer logits equal those of the row run alone.

With :meth:`FrozenLM.enable_prefix_cache` the template tokens before the slot are not recomputed:
their keys/values come from a :class:`~puma_lightning.models.prefix_cache.PrefixKVCache` and only
the slot and the text after it run (with gradient to the prompts); see ``prefix_cache.py``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from puma_lightning.models.prefix_cache import (
    PrefixKVCache,
    batch_cache,
    cache_argument,
    compute_key,
    compute_prefix_kv,
    static_support_reason,
)

log = logging.getLogger(__name__)

PREFIX_GROUP = 64
"""Prefixes computed together in one forward pass when fixed groups are set (``set_prefix_groups``)."""

SENTENCEPIECE_SPACE = "▁"
BYTE_LEVEL_SPACE = "Ġ"


def _tokenizer_label(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "") or ""
    return f"{type(tokenizer).__name__}({name!r})" if name else type(tokenizer).__name__


def resolve_answer_ids(tokenizer: Any, answers: Sequence[str]) -> list[int]:
    """Single token id of each answer string, checked to decode back to it.

    First ``tokenizer(ans, add_special_tokens=False)``; if that is not exactly one token (e.g.
    a tokenizer that splits "1" into [space, "1"]), the vocabulary entry of the exact string, then
    its SentencePiece / byte-level forms. Raises ``ValueError`` naming tokenizer and answer when
    none is a single token.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    vocab = tokenizer.get_vocab()
    ids: list[int] = []
    for ans in answers:
        found: int | None = None
        enc = tokenizer(ans, add_special_tokens=False)["input_ids"]
        if len(enc) == 1 and tokenizer.decode(enc) == ans:
            found = int(enc[0])
        else:
            candidates = [ans, SENTENCEPIECE_SPACE + ans, BYTE_LEVEL_SPACE + ans]
            # exact decodes first, then forms that decode to the answer after a leading space
            for strict in (True, False):
                for tok in candidates:
                    tid = vocab.get(tok)
                    if tid is None or tid == unk:
                        continue
                    text = tokenizer.decode([tid])
                    if text == ans or (not strict and text.strip() == ans):
                        found = int(tid)
                        break
                if found is not None:
                    break
        if found is None:
            raise ValueError(
                f"answer {ans!r} is not a single token of tokenizer {_tokenizer_label(tokenizer)}: "
                f"it encodes as {enc} and no vocabulary entry {candidates_repr(ans)} exists"
            )
        ids.append(found)
    if len(set(ids)) != len(ids):
        raise ValueError(f"answers {list(answers)} map to repeated token ids {ids}")
    return ids


def candidates_repr(ans: str) -> str:
    """The vocabulary forms tried for an answer, for error messages."""
    return ", ".join(repr(t) for t in (ans, SENTENCEPIECE_SPACE + ans, BYTE_LEVEL_SPACE + ans))


def _decoder_body(model: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (no LM head): ``get_decoder()`` or ``.model``."""
    getter = getattr(model, "get_decoder", None)
    if callable(getter):
        try:
            body = getter()
        except Exception:  # pragma: no cover - models without a decoder accessor
            body = None
        if isinstance(body, nn.Module) and body is not model:
            return body
    for attr in ("model", "transformer", "gpt_neox", "base_model"):
        body = getattr(model, attr, None)
        if isinstance(body, nn.Module) and body is not model:
            return body
    raise TypeError(f"cannot find the decoder body of {type(model).__name__}")


def _text_config(model: nn.Module) -> Any:
    cfg = model.config
    getter = getattr(cfg, "get_text_config", None)
    return getter() if callable(getter) else cfg


def _as_positions(pos: int | Tensor, batch: int, device: torch.device) -> Tensor:
    """Per-row positions [B] (long) from an int or a tensor."""
    if isinstance(pos, Tensor):
        pos = pos.to(device=device, dtype=torch.long)
        return pos.expand(batch) if pos.dim() == 0 else pos.reshape(batch)
    return torch.full((batch,), int(pos), dtype=torch.long, device=device)


def _is_backbone_key(module: "FrozenLM", key: str) -> bool:
    """Whether a (root-relative) missing state-dict key names a tensor of the wrapped model."""
    for inner in module._backbone_keys:
        full = "model." + inner
        if key == full or key.endswith("." + full):
            return True
    return False


class FrozenLM(nn.Module):
    """A frozen causal LM that returns answer-token logits given soft prompts at a slot.

    The wrapped model stays in eval mode with no trainable parameter, whatever ``train()`` is
    called on a parent module. Its weights are kept out of ``state_dict()`` (and ignored when
    loading one): the backbone is identified by ``name`` and ``fingerprint`` and reloaded from
    its source, so Lightning checkpoints hold only the trainable parts.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        answers: Sequence[str],
        name: str = "",
        fingerprint: str = "",
        prefix_cache_mb: float | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.answers: tuple[str, ...] = tuple(answers)
        self.name = name
        self.fingerprint = fingerprint
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self._backbone_keys = frozenset(model.state_dict().keys())
        _decoder_body(model)  # fail early if the architecture has no separable body
        head = model.get_output_embeddings()
        if head is None:
            raise TypeError(f"{type(model).__name__} has no output embeddings (LM head)")
        self.answer_ids: list[int] = resolve_answer_ids(tokenizer, self.answers)
        self.register_buffer("_answer_index", torch.tensor(self.answer_ids, dtype=torch.long), persistent=False)
        cfg = _text_config(model)
        cap = getattr(cfg, "final_logit_softcapping", None)
        self.final_logit_softcapping: float | None = float(cap) if cap else None
        self._embedding_std: float | None = None
        self._cache_arg: str = cache_argument(self.body) or "past_key_values"
        """The decoder's key/value cache argument name (``cache`` from transformers 5.24, else ``past_key_values``)."""
        self.register_state_dict_post_hook(FrozenLM._drop_backbone_keys)
        self.register_load_state_dict_post_hook(FrozenLM._ignore_missing_backbone_keys)
        self.dtype_choice: Any = None
        """How the compute dtype was chosen (a ``DtypeChoice`` from the loader), when known."""
        self.prefix_cache: PrefixKVCache | None = None
        """Shared-prefix key/value cache; None runs the plain path (see :meth:`enable_prefix_cache`)."""
        self.prefix_cache_reason: str | None = None
        """Why the last :meth:`enable_prefix_cache` fell back to the plain path (None if it did not)."""
        self._prefix_tag: tuple[str, str] | None = None
        self._prefix_stem: tuple[int, ...] | None = None
        self._prefix_groups: list[list[tuple[int, ...]]] = []
        self._group_of: dict[tuple[int, ...], int] = {}
        self._groups_from: Sequence[Sequence[int]] | None = None
        self._stem_kv: tuple[tuple[str, str], Tensor] | None = None
        if prefix_cache_mb is not None:
            self.enable_prefix_cache(prefix_cache_mb)

    # -- checkpoints: the backbone weights are not part of the state ---------------------------
    @staticmethod
    def _drop_backbone_keys(module: "FrozenLM", state_dict: dict, prefix: str, local_metadata: Any) -> None:
        for key in [k for k in state_dict if k.startswith(prefix + "model.")]:
            del state_dict[key]

    @staticmethod
    def _ignore_missing_backbone_keys(module: "FrozenLM", incompatible_keys: Any) -> None:
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if not _is_backbone_key(module, k)]

    @property
    def body(self) -> nn.Module:
        """The decoder body (``model.model`` for LLaMA/Qwen2/Gemma3): everything but the LM head."""
        return _decoder_body(self.model)

    # -- frozen mode -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "FrozenLM":
        """Keep the backbone in eval mode (no dropout) even when a parent module trains."""
        super().train(mode)
        self.model.eval()
        return self

    # -- properties --------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        """Width ``d`` of the input embeddings (and of a soft-prompt row)."""
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the backbone."""
        return self.model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the backbone."""
        return self.model.get_input_embeddings().weight.device

    @property
    def num_answers(self) -> int:
        """Number of answer tokens scored (5 for ratings, 1 for clicks)."""
        return len(self.answer_ids)

    def embed(self, input_ids: Tensor) -> Tensor:
        """Input embeddings exactly as the model computes them (Gemma's sqrt(d) scaling included)."""
        return self.model.get_input_embeddings()(input_ids)

    @torch.no_grad()
    def embedding_std(self, chunk: int = 8192) -> float:
        """Standard deviation of the embedding module's outputs over the whole vocabulary.

        Used to scale soft-prompt initialisation to the model's embedding space. Computed in
        chunks (float64 sums) and cached.
        """
        if self._embedding_std is None:
            emb = self.model.get_input_embeddings()
            vocab = emb.weight.shape[0]
            total = 0.0
            total_sq = 0.0
            count = 0
            for start in range(0, vocab, chunk):
                ids = torch.arange(start, min(start + chunk, vocab), device=emb.weight.device)
                out = emb(ids).double()
                total += float(out.sum())
                total_sq += float((out * out).sum())
                count += out.numel()
            mean = total / count
            var = max(total_sq / count - mean * mean, 0.0) * count / max(count - 1, 1)
            self._embedding_std = var**0.5
        return self._embedding_std

    def splice(self, input_ids: Tensor, slot_pos: int | Tensor, prompts: Tensor) -> Tensor:
        """Embed ``input_ids`` [B, T] and put ``prompts`` [B, l, d] at slot_pos..slot_pos+l-1 of each row."""
        batch, length = input_ids.shape
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(1)
        if prompts.shape[0] != batch or prompts.shape[2] != self.hidden_size:
            raise ValueError(
                f"prompts must be [B={batch}, l, d={self.hidden_size}], got {tuple(prompts.shape)}"
            )
        l = prompts.shape[1]
        embeds = self.embed(input_ids)
        start = _as_positions(slot_pos, batch, input_ids.device)
        index = start[:, None] + torch.arange(l, device=input_ids.device)[None, :]  # [B, l]
        if isinstance(slot_pos, int):
            if slot_pos < 0 or slot_pos + l > length:
                raise ValueError(f"slot position {slot_pos} + {l} falls outside sequence length {length}")
        elif index.device.type == "cpu":  # reading a CPU tensor costs no device sync
            if bool((index < 0).any()) or bool((index >= length).any()):
                raise ValueError(f"slot positions {start.tolist()} + {l} fall outside sequence length {length}")
        else:  # on an accelerator: checked on the device, without a per-step host sync
            torch._assert_async(((index >= 0) & (index < length)).all(), "slot positions fall outside the sequence")
        index = index[:, :, None].expand(batch, l, embeds.shape[-1])
        return embeds.scatter(1, index, prompts.to(embeds.dtype))

    def hidden_at(self, inputs_embeds: Tensor, attention_mask: Tensor | None, answer_pos: int | Tensor) -> Tensor:
        """Last hidden state [B, d] of the decoder body at ``answer_pos`` of each row."""
        out = self.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        batch = hidden.shape[0]
        pos = _as_positions(answer_pos, batch, hidden.device)
        return hidden[torch.arange(batch, device=hidden.device), pos]

    def project_answers(self, hidden: Tensor) -> Tensor:
        """Logits [B, A] (float32) of the answer tokens only: hidden @ W[answer_ids]^T (+ bias, soft-cap)."""
        head = self.model.get_output_embeddings()
        idx = self._answer_index.to(head.weight.device)
        weight = head.weight.index_select(0, idx)  # [A, d]: a few rows, never the vocabulary
        logits = hidden.float() @ weight.float().t()
        bias = getattr(head, "bias", None)
        if bias is not None:
            logits = logits + bias.index_select(0, idx).float()
        if self.final_logit_softcapping is not None:
            cap = self.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits

    def answer_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        slot_pos: int | Tensor,
        prompts: Tensor,
        answer_pos: int | Tensor,
    ) -> Tensor:
        """Answer-token logits [B, A] (float32) with ``prompts`` [B, l, d] spliced at ``slot_pos``.

        Differentiable with respect to ``prompts`` only; inputs are right-padded, ``answer_pos``
        is each row's last real token (the answer cue).
        """
        if self.prefix_cache is not None:
            logits = self.cached_answer_logits(input_ids, attention_mask, slot_pos, prompts, answer_pos)
            if logits is not None:
                return logits
            if self.prefix_cache.stats.plain_batches == 0:
                log.warning("%s: a batch has a row with no text before the slot; such batches run the plain path "
                            "(counted in prefix_cache.stats.plain_batches)", self.name or type(self.model).__name__)
            self.prefix_cache.stats.plain_batches += 1
        return self.plain_answer_logits(input_ids, attention_mask, slot_pos, prompts, answer_pos)

    forward = answer_logits

    def plain_answer_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        slot_pos: int | Tensor,
        prompts: Tensor,
        answer_pos: int | Tensor,
    ) -> Tensor:
        """:meth:`answer_logits` over the whole template, whether or not the prefix cache is on."""
        embeds = self.splice(input_ids, slot_pos, prompts)
        hidden = self.hidden_at(embeds, attention_mask, answer_pos)
        return self.project_answers(hidden)

    # -- torch.compile ---------------------------------------------------------------------------
    def set_compiled(self, on: bool = True) -> None:
        """Run each decoder layer through ``torch.compile`` (dynamic shapes), or back to eager.

        Layers rather than the whole body: the key/value cache object and the mask building stay
        eager, so only tensor code is traced and the prefix cache keeps working. Each layer is
        compiled once, on its first call; switching off keeps the compiled code for a later switch on.
        """
        layers = list(getattr(self.body, "layers", []))
        if on:  # the cached path specialises each layer on its index (key/value cache lookup): one graph per layer
            import torch._dynamo

            limit = 2 * len(layers) + 8
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
            torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4 * limit)
        for layer in layers:
            if on and getattr(layer, "_puma_compiled", None) is None:
                layer.compile(dynamic=True)  # nn.Module.compile stores the compiled call in _compiled_call_impl
                layer._puma_compiled = layer._compiled_call_impl
            layer._compiled_call_impl = getattr(layer, "_puma_compiled", None) if on else None

    @property
    def compiled(self) -> bool:
        """Whether the decoder layers currently run compiled."""
        return any(getattr(layer, "_compiled_call_impl", None) is not None for layer in getattr(self.body, "layers", []))

    # -- shared-prefix key/value cache -------------------------------------------------------------
    def enable_prefix_cache(self, max_mb: float = 1024.0, verify: bool = True) -> bool:
        """Reuse the keys/values of the template tokens before the slot (LRU within ``max_mb`` MiB).

        Returns True when the cached path is on. It stays off, with the reason logged and kept in
        :attr:`prefix_cache_reason`, when the architecture rules it out or when ``verify`` runs a
        small probe batch both ways and the answer logits differ.
        """
        reason = static_support_reason(self.model, self.body)
        if reason is None and verify:
            reason = self._probe_prefix_cache()
        if reason is not None:
            log.warning("prefix KV cache not used for %s: %s; running the plain path",
                        self.name or type(self.model).__name__, reason)
            self.prefix_cache, self.prefix_cache_reason = None, reason
            return False
        self.prefix_cache, self.prefix_cache_reason = PrefixKVCache(max_mb), None
        self._prefix_tag = None
        log.info("prefix KV cache on for %s (%.0f MiB)", self.name or type(self.model).__name__, max_mb)
        return True

    def clear_prefix_cache(self) -> None:
        """Drop every cached prefix (and the stem's keys/values); the counters are kept."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        self._stem_kv = None

    def disable_prefix_cache(self) -> None:
        """Back to the plain path; frees the cached keys/values."""
        self.prefix_cache = None
        self._prefix_tag = None
        self._stem_kv = None

    def _prefix_entries(self, prefixes: list[tuple[int, ...]], cache: PrefixKVCache) -> list[Tensor]:
        """Cached keys/values of each distinct prefix, computing (and storing) the missing ones."""
        tag = compute_key(self.device, self.dtype)
        if tag != self._prefix_tag and cache is self.prefix_cache:
            if self._prefix_tag is not None:
                cache.clear()  # moved to another device or dtype: old entries cannot be used
            self._prefix_tag = tag
        entries: list[Tensor | None] = []
        missing: list[int] = []
        for i, ids in enumerate(prefixes):
            hit = cache.get((tag, ids))
            entries.append(hit)
            if hit is None:
                missing.append(i)
        cache.stats.hits += len(prefixes) - len(missing)
        cache.stats.misses += len(missing)
        if missing:
            compiled = self.compiled
            if compiled:  # prefixes grow their cache layer by layer: eager, or every layer would recompile
                self.set_compiled(False)
            start = time.perf_counter()
            try:
                computed = self._compute_missing([prefixes[i] for i in missing], tag)
            finally:
                cache.stats.compute_s += time.perf_counter() - start
                if compiled:
                    self.set_compiled(True)
            wanted = {prefixes[i] for i in missing}
            for ids, kv in computed.items():  # group-mates computed alongside are stored too
                if ids in wanted or (tag, ids) not in cache:
                    cache.put((tag, ids), kv)
            for i in missing:
                entries[i] = computed[prefixes[i]]
        return entries  # type: ignore[return-value]

    def set_prefix_stem(self, stem: Sequence[int] | None) -> None:
        """Tokens that every prefix of the current data starts with (the template's constant head), or None.

        Their keys/values are computed once and each missing prefix runs only the tokens after them,
        on top (the result is the same as computing the whole prefix, up to float rounding). A prefix
        that does not start with the stem is computed whole. Set by the tasks from the datamodule.
        """
        stem = tuple(int(t) for t in stem) if stem else None
        if stem != self._prefix_stem:
            self._prefix_stem, self._stem_kv = stem, None

    def set_prefix_groups(self, prefixes: Sequence[Sequence[int]] | None) -> None:
        """Fix which prefixes are computed together: all of them, sorted by (length, tokens), in groups of
        :data:`PREFIX_GROUP`. A missing prefix is then always computed with the same group-mates, padded
        the same way, so its keys/values are a function of the data alone: a cold, warm or evicted cache
        gives bit-identical numbers, in bf16 too. Prefixes outside the set are computed with the other
        misses of their batch. None: no fixed groups."""
        if prefixes is self._groups_from:  # the same list again (every fit/validation/test start): nothing to do
            return
        self._groups_from = prefixes
        if not prefixes:
            self._prefix_groups, self._group_of = [], {}
            return
        canonical = sorted({tuple(int(t) for t in p) for p in prefixes}, key=lambda p: (len(p), p))
        groups = [canonical[i : i + PREFIX_GROUP] for i in range(0, len(canonical), PREFIX_GROUP)]
        if groups != self._prefix_groups:
            self._prefix_groups = groups
            self._group_of = {p: g for g, members in enumerate(groups) for p in members}

    def _compute_missing(self, missing: list[tuple[int, ...]], tag: tuple[str, str]) -> dict[tuple[int, ...], Tensor]:
        """Keys/values of the missing prefixes, each computed with its whole fixed group where it has one."""
        out: dict[tuple[int, ...], Tensor] = {}
        loose = [p for p in missing if p not in self._group_of]
        for g in sorted({self._group_of[p] for p in missing if p in self._group_of}):
            members = self._prefix_groups[g]
            out.update(zip(members, self._compute_prefixes(members, tag)))
        if loose:
            out.update(zip(loose, self._compute_prefixes(loose, tag)))
        return out

    def _compute_prefixes(self, prefixes: list[tuple[int, ...]], tag: tuple[str, str]) -> list[Tensor]:
        """Keys/values of ``prefixes``, those continuing the stem (if any) on top of its cached keys/values."""
        pad = self.tokenizer.pad_token_id if getattr(self.tokenizer, "pad_token_id", None) is not None else 0
        stem = self._prefix_stem
        run = lambda ps, **kw: compute_prefix_kv(self.body, ps, self.device, pad_id=pad, cache_arg=self._cache_arg, **kw)
        on_stem = [i for i, p in enumerate(prefixes) if stem and len(p) > len(stem) and p[: len(stem)] == stem]
        if not on_stem:
            return run(prefixes)
        if self._stem_kv is None or self._stem_kv[0] != tag:
            self._stem_kv = (tag, run([stem])[0])
        out: list[Tensor | None] = [None] * len(prefixes)
        for i, kv in zip(on_stem, run([prefixes[i][len(stem):] for i in on_stem], stem_kv=self._stem_kv[1])):
            out[i] = kv
        rest = [i for i in range(len(prefixes)) if out[i] is None]
        for i, kv in zip(rest, run([prefixes[i] for i in rest]) if rest else []):
            out[i] = kv
        return out  # type: ignore[return-value]

    def cached_answer_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        slot_pos: int | Tensor,
        prompts: Tensor,
        answer_pos: int | Tensor,
        cache: PrefixKVCache | None = None,
    ) -> Tensor | None:
        """:meth:`answer_logits` running only [slot + rest] on cached prefix keys/values.

        Same result as the plain path (rows grouped by their prefix ``input_ids[:slot_pos]``,
        left-padded in the cache, real positions via ``position_ids``). Returns None when a batch
        cannot use it (a row without a prefix, or an answer before its slot). Costs one small
        device-to-host copy per batch (token ids and positions, to key the cache).
        """
        cache = cache if cache is not None else self.prefix_cache
        if cache is None:
            raise RuntimeError("no prefix cache: call enable_prefix_cache() first")
        batch, length = input_ids.shape
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(1)
        if prompts.shape[0] != batch or prompts.shape[2] != self.hidden_size:
            raise ValueError(f"prompts must be [B={batch}, l, d={self.hidden_size}], got {tuple(prompts.shape)}")
        l = prompts.shape[1]
        device = input_ids.device
        slot = _as_positions(slot_pos, batch, device)
        answer = _as_positions(answer_pos, batch, device)
        host = torch.cat([input_ids, slot[:, None], answer[:, None]], dim=1).cpu().tolist()  # the one sync
        slots = [row[length] for row in host]
        answers = [row[length + 1] for row in host]
        if any(s < 0 or s + l > length for s in slots):
            raise ValueError(f"slot positions {slots} + {l} fall outside sequence length {length}")
        if min(slots) == 0 or any(a < s + l - 1 for a, s in zip(answers, slots)):
            return None
        groups: dict[tuple[int, ...], int] = {}
        inverse: list[int] = []
        for row, s in zip(host, slots):
            inverse.append(groups.setdefault(tuple(row[:s]), len(groups)))
        prefixes = list(groups)
        entries = self._prefix_entries(prefixes, cache)
        lengths = [len(p) for p in prefixes]
        longest = max(lengths)
        rows_to_groups = None if len(prefixes) == 1 else torch.tensor(inverse, dtype=torch.long).to(device, non_blocking=True)
        past = batch_cache(entries, lengths, rows_to_groups, batch)

        width = max(a - s for a, s in zip(answers, slots)) + 1  # slot .. answer of the longest row
        offsets = torch.arange(width, device=device)
        positions = slot[:, None] + offsets[None, :]  # real positions, as in the plain path
        valid = offsets[None, :] <= (answer - slot)[:, None]
        index = positions.clamp(max=length - 1)
        suffix_ids = input_ids.gather(1, index)
        suffix_mask = valid if attention_mask is None else valid & attention_mask.gather(1, index).bool()
        prefix_mask = torch.arange(longest, device=device)[None, :] >= (longest - slot)[:, None]
        mask = torch.cat([prefix_mask, suffix_mask], dim=1).long()
        embeds = self.embed(suffix_ids)
        embeds = torch.cat([prompts.to(embeds.dtype), embeds[:, l:]], dim=1)
        out = self.body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                        use_cache=True, **{self._cache_arg: past})
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        hidden = hidden[torch.arange(batch, device=device), answer - slot]
        return self.project_answers(hidden)

    @torch.no_grad()
    def _probe_prefix_cache(self) -> str | None:
        """Run a small padded batch (shared and distinct prefixes) both ways; the reason if they differ."""
        vocab = self.model.get_input_embeddings().weight.shape[0]
        gen = torch.Generator().manual_seed(0)
        shapes = [(6, 5), (11, 3), (6, 4)]  # (prefix, slot + rest); rows 0 and 2 share a prefix
        prefix_a = torch.randint(0, vocab, (6,), generator=gen)
        width = max(p + s for p, s in shapes)
        ids = torch.zeros(len(shapes), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, s) in enumerate(shapes):
            ids[i, : p + s] = torch.randint(0, vocab, (p + s,), generator=gen)
            if p == 6:
                ids[i, :6] = prefix_a
            mask[i, : p + s] = 1
        slot = torch.tensor([p for p, _ in shapes])
        answer = torch.tensor([p + s - 1 for p, s in shapes])
        device = self.device
        ids, mask, slot, answer = ids.to(device), mask.to(device), slot.to(device), answer.to(device)
        prompts = self.embed(torch.randint(0, vocab, (len(shapes), 2), generator=gen).to(device))
        try:
            plain = self.plain_answer_logits(ids, mask, slot, prompts, answer)
            cached = self.cached_answer_logits(ids, mask, slot, prompts, answer, cache=PrefixKVCache(64))
        except Exception as err:  # an architecture the cached path cannot drive
            return f"probe batch failed on the cached path ({type(err).__name__}: {err})"
        assert cached is not None
        scale = max(1.0, float(plain.abs().max()))
        tol = 1e-3 if self.dtype == torch.float32 else 0.1
        diff = float((plain - cached).abs().max()) / scale
        if not diff <= tol:  # also catches NaN
            return f"probe batch: cached answer logits differ from the plain path by {diff:.3g} (relative, > {tol})"
        return None

    def extra_repr(self) -> str:
        cache = f", prefix_cache={self.prefix_cache!r}" if self.prefix_cache is not None else ""
        return f"name={self.name!r}, fingerprint={self.fingerprint!r}, answers={self.answers}, answer_ids={self.answer_ids}{cache}"
