"""Shared-prefix key/value cache: template tokens before the user-prompt slot are computed once.

Everything before the slot of a templated row is independent of the soft prompt, so its keys and
values (per layer, RoPE already applied at the real positions 0..n-1) are computed once per distinct
prefix, without gradient, and reused as ``past_key_values`` for every row that shares it; only the
slot and the text after it (the "suffix") run with autograd. With the paper's templates the prefix
is the constant question head; with an item-first template it is one prefix per item, kept across
batches and epochs in an LRU cache with a byte budget.

Batch assembly: rows with different prefix lengths are *left*-padded inside the cache (zeros,
attention mask 0 there), so all cached prefixes end at index ``P`` and the suffix starts at the same
index for every row. The suffix gets explicit ``position_ids`` (``n_b + j``, the positions it has in
the plain path) and a full-length 2-D attention mask ``[B, P + S]``. transformers builds causal and
sliding-window masks in cache-index space (``q_idx = P + j``, ``kv_idx``), where the distance between
a query and a key equals their real distance (padding shifts both by ``P - n_b``), so Gemma-3's
sliding-window layers see exactly the keys they see in the plain path. The cache therefore stores
the full prefix for every layer (plain ``DynamicLayer``s, never window-truncated ones).

Checked against transformers 5.x sources: ``DynamicCache``/``DynamicLayer`` (``keys``/``values``
``[B, H, T, hd]``, ``update`` concatenates), ``masking_utils._preprocess_mask_arguments`` (``q_offset``
= cached length, kv sizes from the cache layer), LLaMA/Qwen2/Gemma3 text models (``position_ids``
only feed RoPE). Other layouts are checked by a numerical probe when the cache is enabled (see
``FrozenLM.enable_prefix_cache``).
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

SUPPORTED_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})
CACHE_ARGUMENTS: tuple[str, ...] = ("cache", "past_key_values")
"""Names a decoder ``forward`` may give its key/value cache argument, newest first: transformers 5.24
renamed ``past_key_values`` to ``cache`` (the old name is a deprecated alias until 5.40)."""
SUPPORTED_ATTENTION = frozenset({"eager", "sdpa"})


@dataclass
class PrefixCacheStats:
    """Counters of a :class:`PrefixKVCache` (hits and misses count distinct prefixes per batch)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    uncached: int = 0
    """Prefixes computed but not stored because they alone exceed the budget."""
    compute_s: float = 0.0
    """Wall seconds spent computing missing prefixes (the prefix pass), summed."""
    plain_batches: int = 0
    """Batches that could not use the cache (a row without a prefix) and ran the plain path."""


class PrefixKVCache:
    """LRU store of per-prefix key/value tensors within a byte budget.

    Each entry is one tensor ``[L, 2, H, n, hd]`` (layers, key/value, heads, prefix tokens, head
    dim) keyed by a hashable key (the prefix's token ids plus the compute dtype/device). Entries
    never require grad: nothing is backpropagated into the prefix.
    """

    def __init__(self, max_mb: float) -> None:
        if max_mb < 0:
            raise ValueError(f"prefix cache budget must be >= 0 MB, got {max_mb}")
        self.max_bytes = int(max_mb * 2**20)
        self._entries: OrderedDict[Hashable, Tensor] = OrderedDict()
        self.bytes = 0
        self.stats = PrefixCacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    @property
    def max_mb(self) -> float:
        """The budget in MiB."""
        return self.max_bytes / 2**20

    def get(self, key: Hashable) -> Tensor | None:
        """The entry for ``key`` (marked most recently used), or None."""
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    def put(self, key: Hashable, kv: Tensor) -> bool:
        """Store ``kv`` under ``key``, evicting least recently used entries; False if it cannot fit."""
        size = kv.numel() * kv.element_size()
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.numel() * old.element_size()
        if size > self.max_bytes:
            self.stats.uncached += 1
            return False
        while self._entries and self.bytes + size > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()
            self.stats.evictions += 1
        self._entries[key] = kv
        self.bytes += size
        return True

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        self._entries.clear()
        self.bytes = 0

    def __repr__(self) -> str:
        s = self.stats
        return (f"PrefixKVCache({len(self)} prefixes, {self.bytes / 2**20:.1f}/{self.max_mb:.1f} MiB, "
                f"hits={s.hits}, misses={s.misses}, evictions={s.evictions})")


def text_config(model: Any) -> Any:
    """The text part of a model's config, or of a config itself (multimodal configs nest it; plain ones are it)."""
    cfg = getattr(model, "config", model)
    getter = getattr(cfg, "get_text_config", None)
    return getter() if callable(getter) else cfg


def cache_argument(body: nn.Module) -> str | None:
    """The name under which ``body.forward`` takes a key/value cache (``cache`` or ``past_key_values``).

    Read from the signature (which ``inspect`` follows through deprecation wrappers), never from a
    version string; None when it takes neither.
    """
    try:
        params = inspect.signature(body.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return None
    return next((name for name in CACHE_ARGUMENTS if name in params), None)


def static_support_reason(model: nn.Module, body: nn.Module) -> str | None:
    """Why the cached path cannot be used with ``model`` (None when nothing rules it out).

    Checks what the numerical probe cannot: the decoder body accepts a key/value cache (under either
    of :data:`CACHE_ARGUMENTS`) and ``position_ids``; every layer is full or sliding-window softmax attention (no linear-attention
    / recurrent / chunked layers, whose state is not a key/value list); the attention kernel builds
    its mask from the 2-D attention mask (``eager``/``sdpa``; flash kernels window by positions).
    """
    try:
        params = inspect.signature(body.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return f"cannot inspect {type(body).__name__}.forward"
    has_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if cache_argument(body) is None:
        return f"{type(body).__name__}.forward takes no key/value cache argument (none of {list(CACHE_ARGUMENTS)})"
    for name in ("position_ids", "inputs_embeds", "attention_mask"):
        if name not in params and not (has_kwargs and name == "position_ids"):
            return f"{type(body).__name__}.forward takes no {name!r}"
    cfg = text_config(model)
    if getattr(cfg, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types:
        other = sorted(set(layer_types) - SUPPORTED_LAYER_TYPES)
        if other:
            return f"layer types {other} keep state other than keys/values"
    impl = getattr(cfg, "_attn_implementation", None) or getattr(model.config, "_attn_implementation", None)
    if impl is not None and impl not in SUPPORTED_ATTENTION:
        return f"attention implementation {impl!r} is not one of {sorted(SUPPORTED_ATTENTION)}"
    return None


def compute_prefix_kv(body: nn.Module, prefixes: Sequence[Sequence[int]], device: torch.device,
                      pad_id: int = 0, chunk: int = 64, cache_arg: str | None = None,
                      stem_kv: Tensor | None = None) -> list[Tensor]:
    """Keys/values ``[L, 2, H, n_i, hd]`` of each prefix (token ids), no gradient, full length.

    Prefixes run right-padded in chunks of similar length (causal attention: a real token never sees
    a later pad, so its keys/values equal those of the unpadded prefix). A cache without a config
    gives every layer a plain ``DynamicLayer``, so sliding-window layers keep all prefix tokens too.
    Runs outside inference mode, so entries computed during validation can be reused in training.

    ``stem_kv`` ``[L, 2, H, s, hd]``: the keys/values of a stem of ``s`` tokens that every prefix
    continues (the template's constant head); ``prefixes`` then hold only the tokens after it, they
    run at positions ``s..`` on top of the stem, and each returned entry is the whole stem + rest.
    ``cache_arg`` is the body's cache argument name (default: read with :func:`cache_argument`).
    """
    cache_arg = cache_arg or cache_argument(body)
    if cache_arg is None:
        raise TypeError(f"{type(body).__name__}.forward takes no key/value cache argument")
    from transformers import DynamicCache

    stem = 0 if stem_kv is None else int(stem_kv.shape[-2])
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))  # similar lengths together: less padding
    out: list[Tensor | None] = [None] * len(prefixes)
    with torch.inference_mode(False), torch.no_grad():
        for start in range(0, len(order), chunk):
            members = order[start : start + chunk]
            part = [prefixes[i] for i in members]
            width = max(len(p) for p in part)
            ids = torch.full((len(part), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(part), stem + width), dtype=torch.long)
            mask[:, :stem] = 1
            for i, p in enumerate(part):
                ids[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
                mask[i, stem : stem + len(p)] = 1
            full = all(len(p) == width for p in part)  # decided on the host: no device sync
            ids, mask = ids.to(device), mask.to(device)
            if stem_kv is None:
                cache, extra = DynamicCache(), {}
            else:
                cache = batch_cache([stem_kv], [stem], None, len(part))
                extra = {"position_ids": torch.arange(stem, stem + width, device=device)[None, :].expand(len(part), -1)}
            body(input_ids=ids, attention_mask=None if full else mask, use_cache=True, **extra, **{cache_arg: cache})
            kv = torch.stack([torch.stack([layer.keys, layer.values]) for layer in cache.layers])  # [L,2,G,H,T,hd]
            for row, (i, p) in enumerate(zip(members, part)):
                out[i] = kv[:, :, row, :, : stem + len(p)].clone()
    return out  # type: ignore[return-value]


def batch_cache(entries: Sequence[Tensor], lengths: Sequence[int], inverse: Tensor | None, batch: int) -> Any:
    """A ``DynamicCache`` holding each row's prefix, left-padded with zeros to the longest prefix.

    ``entries[g]`` ``[L, 2, H, n_g, hd]`` is the prefix of group ``g``; ``inverse`` ``[B]`` maps rows to
    groups (None when there is one group for every row, which is expanded without a copy).
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    longest = max(lengths)
    padded = [e if n == longest else F.pad(e, (0, 0, longest - n, 0)) for e, n in zip(entries, lengths)]
    if len(padded) == 1 and inverse is None:
        kv = padded[0].unsqueeze(2).expand(-1, -1, batch, -1, -1, -1)
    else:
        kv = torch.stack(padded, dim=2).index_select(2, inverse)
    cache = DynamicCache()
    for layer_kv in kv.unbind(0):
        layer = DynamicLayer()
        keys, values = layer_kv.unbind(0)
        _initialise_layer(layer, keys, values)
        cache.layers.append(layer)
    return cache


@lru_cache(maxsize=None)
def _lazy_init_takes_values(layer_type: type) -> bool:
    """Whether ``layer_type.lazy_initialization`` takes (keys, values) (transformers 5.x) or keys only (4.5x)."""
    params = [p for p in inspect.signature(layer_type.lazy_initialization).parameters if p != "self"]
    return len(params) >= 2


def _initialise_layer(layer: Any, keys: Tensor, values: Tensor) -> None:
    """Give an empty cache layer ``keys``/``values`` as its content, setting dtype/device/flags as a first
    ``update`` would, without copying the prefix into an empty tensor."""
    if _lazy_init_takes_values(type(layer)):
        layer.lazy_initialization(keys, values)
    else:
        layer.lazy_initialization(keys)
    layer.keys, layer.values = keys, values


def compute_key(device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    """The part of a cache key that says how entries were computed (device, and autocast or model dtype)."""
    kind = device.type
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
    return str(device), str(dtype)
