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
the slot and the text after it run (with gradient to the prompts): that forward is
:class:`~puma_lightning.models.cached_forward.PrefixCachedForward`, the cache itself
``prefix_cache.py``, the answer tokens ``answers.py``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from puma_lightning.models.answers import resolve_answer_ids
from puma_lightning.models.cached_forward import PrefixCachedForward, as_positions
from puma_lightning.models.prefix_cache import PrefixKVCache, cache_argument, text_config
from puma_lightning.models.templated_rows import TemplatedRows

log = logging.getLogger(__name__)

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


def _is_backbone_key(module: "FrozenLM", key: str) -> bool:
    """Whether a (root-relative) missing state-dict key names a tensor of the wrapped model."""
    for inner in module._backbone_keys:
        full = "model." + inner
        if key == full or key.endswith("." + full):
            return True
    return False


class FrozenLM(PrefixCachedForward, nn.Module):
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
        cfg = text_config(model)
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
        start = as_positions(slot_pos, batch, input_ids.device)
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
        pos = as_positions(answer_pos, batch, hidden.device)
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

    def answer_logits(self, rows: TemplatedRows, prompts: Tensor) -> Tensor:
        """Answer-token logits [B, A] (float32) of ``rows`` with ``prompts`` [B, l, d] spliced at their slots.

        Differentiable with respect to ``prompts`` only; the rows are right-padded and each one's
        ``answer_pos`` is its last real token (the answer cue).
        """
        return self.project_answers(self.answer_hidden(rows, prompts))

    forward = answer_logits

    def answer_hidden(self, rows: TemplatedRows, prompts: Tensor) -> Tensor:
        """The last hidden state [B, d] at the answer position (what :meth:`project_answers` turns into the
        answer logits), through the prefix cache where it is on and the batch allows."""
        if self.prefix_cache is not None:
            hidden = self.cached_answer_hidden(rows, prompts)
            if hidden is not None:
                return hidden
            if self.prefix_cache.stats.plain_batches == 0:
                log.warning("%s: a batch has a row with no text before the slot; such batches run the plain path "
                            "(counted in prefix_cache.stats.plain_batches)", self.name or type(self.model).__name__)
            self.prefix_cache.stats.plain_batches += 1
        return self.plain_answer_hidden(rows, prompts)

    def plain_answer_hidden(self, rows: TemplatedRows, prompts: Tensor) -> Tensor:
        """:meth:`answer_hidden` over the whole template, whether or not the prefix cache is on."""
        return self.hidden_at(self.splice(rows.input_ids, rows.slot_pos, prompts), rows.attention_mask, rows.answer_pos)

    def plain_answer_logits(self, rows: TemplatedRows, prompts: Tensor) -> Tensor:
        """:meth:`answer_logits` over the whole template, whether or not the prefix cache is on."""
        return self.project_answers(self.plain_answer_hidden(rows, prompts))

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
    def extra_repr(self) -> str:
        cache = f", prefix_cache={self.prefix_cache!r}" if self.prefix_cache is not None else ""
        return f"name={self.name!r}, fingerprint={self.fingerprint!r}, answers={self.answers}, answer_ids={self.answer_ids}{cache}"
