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
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

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
        self.register_state_dict_post_hook(FrozenLM._drop_backbone_keys)
        self.register_load_state_dict_post_hook(FrozenLM._ignore_missing_backbone_keys)

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
        if bool((index < 0).any()) or bool((index >= length).any()):
            raise ValueError(f"slot positions {start.tolist()} + {l} fall outside sequence length {length}")
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
        embeds = self.splice(input_ids, slot_pos, prompts)
        hidden = self.hidden_at(embeds, attention_mask, answer_pos)
        return self.project_answers(hidden)

    forward = answer_logits

    def extra_repr(self) -> str:
        return f"name={self.name!r}, fingerprint={self.fingerprint!r}, answers={self.answers}, answer_ids={self.answer_ids}"
