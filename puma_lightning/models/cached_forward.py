"""The cached forward of :class:`~puma_lightning.models.backbone.FrozenLM`: template prefixes from a KV cache.

The tokens before the user slot are the same for every user of an item, so their keys and values
are computed once (in fixed groups of :data:`PREFIX_GROUP`, so a prefix's cache entry does not
depend on which other prefixes missed with it) and kept in a
:class:`~puma_lightning.models.prefix_cache.PrefixKVCache`; each step then runs only the slot and
the text after it. This mixin holds that path; ``FrozenLM`` holds the model, the splice and the
plain forward it falls back to.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import torch
from torch import Tensor

from puma_lightning.models.prefix_cache import (
    PrefixKVCache,
    batch_cache,
    compute_key,
    compute_prefix_kv,
    static_support_reason,
)
from puma_lightning.models.templated_rows import TemplatedRows

log = logging.getLogger("puma_lightning.models.backbone")

PREFIX_GROUP = 64
"""Prefixes computed together in one forward pass when fixed groups are set (``set_prefix_groups``)."""


def as_positions(pos: int | Tensor, batch: int, device: torch.device) -> Tensor:
    """Per-row positions [B] (long) from an int or a tensor."""
    if isinstance(pos, Tensor):
        pos = pos.to(device=device, dtype=torch.long)
        return pos.expand(batch) if pos.dim() == 0 else pos.reshape(batch)
    return torch.full((batch,), int(pos), dtype=torch.long, device=device)


class PrefixCachedForward:
    """Prefix-KV-cache methods of ``FrozenLM`` (mixed in; they use its model, body, splice and plain path)."""

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

    def cached_answer_logits(self, rows: TemplatedRows, prompts: Tensor, cache: PrefixKVCache | None = None) -> Tensor | None:
        """:meth:`answer_logits` through :meth:`cached_answer_hidden` (None where a batch cannot use the cache)."""
        hidden = self.cached_answer_hidden(rows, prompts, cache=cache)
        return None if hidden is None else self.project_answers(hidden)

    def cached_answer_hidden(self, rows: TemplatedRows, prompts: Tensor, cache: PrefixKVCache | None = None) -> Tensor | None:
        """:meth:`answer_hidden` running only [slot + rest] on cached prefix keys/values.

        Same result as the plain path (rows grouped by their prefix ``input_ids[:slot_pos]``,
        left-padded in the cache, real positions via ``position_ids``). Returns None when a batch
        cannot use it (a row without a prefix, or an answer before its slot). Costs one small
        device-to-host copy per batch (token ids and positions, to key the cache).
        """
        input_ids, attention_mask, slot_pos, answer_pos = rows
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
        slot = as_positions(slot_pos, batch, device)
        answer = as_positions(answer_pos, batch, device)
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
        return hidden[torch.arange(batch, device=device), answer - slot]

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
            rows = TemplatedRows(ids, mask, slot, answer)
            plain = self.plain_answer_logits(rows, prompts)
            cached = self.cached_answer_logits(rows, prompts, cache=PrefixKVCache(64))
        except Exception as err:  # an architecture the cached path cannot drive
            return f"probe batch failed on the cached path ({type(err).__name__}: {err})"
        assert cached is not None
        scale = max(1.0, float(plain.abs().max()))
        tol = 1e-3 if self.dtype == torch.float32 else 0.1
        diff = float((plain - cached).abs().max()) / scale
        if not diff <= tol:  # also catches NaN
            return f"probe batch: cached answer logits differ from the plain path by {diff:.3g} (relative, > {tol})"
        return None
