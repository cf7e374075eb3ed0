"""Per-user statistics some selection strategies need, computed by running the source model.

These run the frozen LLM, so they live in the pipeline layer; the selection layer only reads the
arrays (:class:`~puma_lightning.selection.registry.SelectionContext`), and
:mod:`puma_lightning.pipeline.user_stats` registers, caches and decodes them.

* :func:`user_task_loss` — mean task loss of each user's source prompt on the source model over
  the user's training rows (the frozen LM and the bank's head, eval mode, no grad, rows batched by
  the project's datamodule); NaN for users without training rows.
* :func:`ffn_features` — binarised FFN activations of the last ``n_layers`` decoder layers for the
  input ``[BOS, p_u]``: each layer's gated activation ``act_fn(gate_proj(x))`` (a forward hook on
  ``mlp.act_fn``, the LLaMA/Qwen2/Gemma3 MLP; MLPs without ``act_fn`` fall back to a forward
  pre-hook on ``down_proj``/``fc2``/``c_proj``, i.e. the input of the output projection), read
  at the **last position** (the last prompt row, which attends to BOS and the whole prompt),
  ``> 0`` as 0/1, concatenated over layers and L2-normalised (an all-zero row stays zero).

For SiLU (LLaMA, Qwen2) and tanh-GELU (Gemma3) ``act_fn(z) > 0`` exactly when ``z > 0``: the
feature says which FFN neurons fire for the user's prompt.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from puma_lightning.data.batching import BucketBatchSampler
from puma_lightning.data.table import InteractionTable
from puma_lightning.models.heads import ClickHead, RatingHead, build_head, load_head
from puma_lightning.pipeline.builders import build_datamodule
from puma_lightning.selection.ffn import normalise_bits
from puma_lightning.tasks.base import scored_rows


def _heads_per_row_loss(head: nn.Module, logits: torch.Tensor, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-row loss [B] with the same definition as ``head.loss`` (which averages over the batch)."""

    if isinstance(head, RatingHead):
        target = (label.round().long() - 1).clamp(0, 4)
        ce = nn.functional.cross_entropy(logits.float(), target, reduction="none")
        return head.mse_weight * (output - label) ** 2 + head.ce_weight * ce
    if isinstance(head, ClickHead):
        return nn.functional.binary_cross_entropy_with_logits(output, label, reduction="none")
    # Unknown head: its own loss, one row at a time.
    return torch.stack([head.loss(logits[i : i + 1], output[i : i + 1], label[i : i + 1]) for i in range(len(label))])


@torch.no_grad()
def user_task_loss(lm: Any, head_state: dict[str, torch.Tensor] | None, prompts: torch.Tensor,
                   table: InteractionTable, cfg: Any) -> np.ndarray:
    """Mean task loss of each user's prompt over the user's training rows (float64 [N], NaN if no rows).

    ``lm`` is the frozen source :class:`~puma_lightning.models.backbone.FrozenLM`, ``head_state``
    the head saved with the source bank (None: a fresh head biased to the mean training label),
    ``prompts`` the bank rows ``[N, l, d]`` in ``table`` user order, ``cfg`` the experiment config
    (template, prompt length, batch size, item truncation).
    """
    prompts = torch.as_tensor(prompts)
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(1)
    if prompts.shape[0] != table.n_users:
        raise ValueError(f"user_task_loss: {prompts.shape[0]} prompts for {table.n_users} users")
    if head_state is not None:
        head = load_head(table.task, head_state)
    else:
        head = build_head(table.task)
        from puma_lightning.pipeline.levers.hooks import start_label

        head.init_bias(start_label(cfg, table))
    device = lm.device
    head = head.to(device).eval()
    was_training = lm.training
    lm.eval()
    batch_size = 2 * int(cfg.prompt.batch_size)
    dm = build_datamodule(table, lm.tokenizer, cfg, batch_size)
    data = dm.dataset("train")
    loader = DataLoader(data, batch_sampler=BucketBatchSampler(data.lengths, batch_size, shuffle=False), collate_fn=dm.collate)
    total = np.zeros(table.n_users, dtype=np.float64)
    count = np.zeros(table.n_users, dtype=np.float64)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        users = batch["user"]
        logits, output = scored_rows(lm, head, batch, prompts[users.cpu()].to(device))  # + match term, + residual base
        loss = _heads_per_row_loss(head, logits, output, batch["label"].float()).double().cpu().numpy()
        u = users.cpu().numpy()
        total += np.bincount(u, weights=loss, minlength=table.n_users)
        count += np.bincount(u, minlength=table.n_users)
    lm.train(was_training)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _decoder_layers(body: nn.Module) -> list[nn.Module]:
    """The decoder layers of a transformer body (``body.layers`` for LLaMA/Qwen2/Gemma3)."""
    for attr in ("layers", "h", "layer", "blocks"):
        layers = getattr(body, attr, None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return list(layers)
    raise TypeError(f"cannot find the decoder layers of {type(body).__name__}")


def _hook_ffn(layer: nn.Module, store: list[torch.Tensor]) -> Any:
    """Register a hook capturing the FFN activation of ``layer`` into ``store``; returns the handle."""
    mlp = getattr(layer, "mlp", None) or getattr(layer, "feed_forward", None) or getattr(layer, "ffn", None)
    if mlp is None:
        raise TypeError(f"decoder layer {type(layer).__name__} has no 'mlp'")
    act = getattr(mlp, "act_fn", None)
    if isinstance(act, nn.Module):
        # act_fn(gate_proj(x)); the gated MLP then multiplies by up_proj(x) and applies down_proj.
        return act.register_forward_hook(lambda mod, inp, out: store.append(out.detach()))
    for name in ("down_proj", "fc2", "c_proj", "dense_4h_to_h"):
        proj = getattr(mlp, name, None)
        if isinstance(proj, nn.Module):
            return proj.register_forward_pre_hook(lambda mod, inp: store.append(inp[0].detach()))
    raise TypeError(f"cannot find the FFN activation of {type(mlp).__name__} (no act_fn or down_proj)")


@torch.no_grad()
def ffn_features(lm: Any, prompts: torch.Tensor, n_layers: int = 3, batch_size: int = 256) -> np.ndarray:
    """Binarised FFN activation features of each prompt: float32 [N, n_layers' * ffn_width].

    Input per user: ``[embed(BOS), p_u]`` when the tokenizer has a BOS token, else ``p_u`` alone.
    ``n_layers`` is clipped to the model's depth (``n_layers'``). Rows are L2-normalised 0/1 vectors.
    """
    prompts = torch.as_tensor(prompts)
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(1)
    if prompts.shape[-1] != lm.hidden_size:
        raise ValueError(f"ffn_features: prompts have width {prompts.shape[-1]}, model {lm.hidden_size}")
    body = lm.body
    layers = _decoder_layers(body)[-max(1, int(n_layers)):]
    device, dtype = lm.device, lm.dtype
    bos_id = getattr(lm.tokenizer, "bos_token_id", None)
    bos = lm.embed(torch.tensor([[bos_id]], device=device)) if bos_id is not None else None  # [1, 1, d]
    store: list[torch.Tensor] = []
    handles = [_hook_ffn(layer, store) for layer in layers]
    was_training = lm.training
    lm.eval()
    chunks: list[np.ndarray] = []
    try:
        for start in range(0, prompts.shape[0], batch_size):
            p = prompts[start : start + batch_size].to(device=device, dtype=dtype)
            embeds = p if bos is None else torch.cat([bos.expand(p.shape[0], 1, -1).to(dtype), p], dim=1)
            store.clear()
            body(inputs_embeds=embeds, use_cache=False)
            if len(store) != len(layers):
                raise RuntimeError(f"ffn_features: captured {len(store)} activations for {len(layers)} layers")
            fired = torch.cat([a[:, -1, :] > 0 for a in store], dim=1)  # last position
            chunks.append(fired.cpu().numpy())
    finally:
        for h in handles:
            h.remove()
        lm.train(was_training)
    bits = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 0), dtype=bool)
    return normalise_bits(bits)
