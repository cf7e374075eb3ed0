"""Build the pieces of an experiment from its config: the interaction table, the frozen LLM with
its answer tokens, and the datamodule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

from puma_lightning.data.table import InteractionTable
from puma_lightning.data.templates import resolve_template
from puma_lightning.errors import PumaError

if TYPE_CHECKING:
    import torch


def build_table(dcfg: DictConfig, seed: int) -> InteractionTable:
    """The split interaction table of the configured dataset (with ``data.rated_history`` rows' history)."""
    table = _dataset_table(dcfg, seed)
    if dcfg.get("rated_history"):
        from puma_lightning.data.history import rated_history

        if table.task != "rating":
            raise ValueError("'data.rated_history' needs a rating dataset")
        table.row_text = rated_history(table, int(dcfg.rated_history))
        table.meta["rated_history"] = int(dcfg.rated_history)
    return table


def _dataset_table(dcfg: DictConfig, seed: int) -> InteractionTable:
    from puma_lightning.data.prepared import build_dataset_table

    return build_dataset_table(dcfg, seed)


def load_frozen_lm(mcfg: DictConfig, dcfg: DictConfig, cache_dir: str | None, on_gpu: bool = False) -> Any:
    """Load a model by name/folder/hub id and wrap it as a frozen LM reading the template's answers.

    ``on_gpu``: whether it will run on a CUDA GPU (what ``dtype: auto`` decides for)."""
    from puma_lightning.models.backbone import FrozenLM
    from puma_lightning.models.loading import load_backbone

    loaded = load_backbone(mcfg.name, dtype=mcfg.dtype, cache_dir=cache_dir, trust_remote_code=mcfg.trust_remote_code,
                           device="cuda" if on_gpu else "cpu")
    template = resolve_template(dcfg.template, str(dcfg.get("task") or "rating"))  # the task matters for inline templates only
    try:
        lm = FrozenLM(loaded.model, loaded.tokenizer, template.answers, name=loaded.name, fingerprint=loaded.fingerprint)
    except ValueError as exc:  # an answer that is not one token of this model's tokenizer
        raise PumaError(f"data.template {template.name!r} on model {loaded.name!r}: {exc}") from None
    lm.dtype_choice = loaded.dtype_choice
    if mcfg.get("prefix_cache_mb") is not None:
        lm.enable_prefix_cache(float(mcfg.prefix_cache_mb))  # probes once; falls back with a logged reason
    if mcfg.get("compile"):
        lm.set_compiled(True)
    return lm


def check_answer_tokens(cfg: DictConfig, models: tuple[str, ...] = ("source", "target")) -> None:
    """Refuse, before any model is loaded or trained, a template whose answers are not single tokens of every model's
    tokenizer the command will use (one line naming the answer, the model and the pieces it splits into)."""
    from puma_lightning.models.answers import resolve_answer_ids
    from puma_lightning.models.loading import load_tokenizer

    template = resolve_template(cfg.data.template, str(cfg.data.task))
    for which in models:
        mcfg = cfg[which]
        tokenizer = load_tokenizer(mcfg.name, cfg.cache_dir, bool(mcfg.trust_remote_code))
        try:
            resolve_answer_ids(tokenizer, template.answers)
        except ValueError as exc:
            raise PumaError(f"data.template {template.name!r} on model {str(mcfg.name)!r} ({which}): {exc}") from None


def build_datamodule(table: InteractionTable, tokenizer: Any, cfg: DictConfig, batch_size: int,
                     train_users: np.ndarray | None = None, eval_users: np.ndarray | None = None,
                     row_offset: np.ndarray | None = None) -> Any:
    """The datamodule rendering ``table`` through the configured template for ``tokenizer``; each row's output
    offset is ``row_offset``, else the levers' offsets fitted on ``table`` (a residual base, ``prompt.residual``)."""
    from puma_lightning.data.datamodule import PromptDataModule
    from puma_lightning.pipeline.levers.hooks import row_offsets

    return PromptDataModule(table, tokenizer, resolve_template(cfg.data.template, str(cfg.data.task)), prompt_length=cfg.prompt.length,
                            batch_size=batch_size, eval_batch_size=2 * batch_size, train_users=train_users,
                            eval_users=eval_users, seed=cfg.seed, max_item_tokens=cfg.data.max_item_tokens,
                            row_offset=row_offset if row_offset is not None else row_offsets(cfg, table))


def item_text_embeddings(lm: Any, item_texts: list[str], max_tokens: int | None, chunk: int = 1024) -> "torch.Tensor":
    """``[n_items, d]`` fp32: the mean input embedding of each item text's own tokens, the first ``max_tokens`` of them
    (all when None), cut as the batches cut them (``item_ids``, the item-word match term)."""
    import torch

    from puma_lightning.data.batching import pad_item_ids
    from puma_lightning.data.encoding import item_text_token_ids
    from puma_lightning.models.item_match import mean_item_embedding

    out = []
    for start in range(0, len(item_texts), chunk):
        ids = pad_item_ids([item_text_token_ids(lm.tokenizer, text, max_tokens) for text in item_texts[start:start + chunk]])
        out.append(mean_item_embedding(lm.embed, ids.to(lm.device)).cpu())
    return torch.cat(out) if out else torch.zeros(0, lm.hidden_size)


def item_embedding_centre(lm: Any, table: InteractionTable, max_tokens: int | None) -> "torch.Tensor":
    """``[d]``: the mean of :func:`item_text_embeddings` over the table's rated items: the ``centre`` of the item-word
    match term."""
    texts = [table.item_texts[int(i)] for i in np.unique(table.item)]
    return item_text_embeddings(lm, texts, max_tokens).double().mean(0).float()


def fresh_head(cfg: DictConfig, lm: Any, table: InteractionTable, start: float, prompts: "torch.Tensor | None") -> Any:
    """A new head for ``table``'s task on ``lm``, its output starting at ``start``, for the bank ``prompts``
    ``[N, l, d]`` (on ``lm``) a stage starts from: it reads ``lm``'s hidden state too where a lever asks
    (``prompt.hidden_readout``), and the levers set it up for ``prompts`` (the item-word match term anchored there,
    ``prompt.item_match``). ``prompts=None``: the stage has no such bank yet and sets the head up itself (PUMA, where its
    adapter starts)."""
    from puma_lightning.models.heads import build_head
    from puma_lightning.pipeline.levers.hooks import reads_hidden, start_head

    head = build_head(table.task, lm.hidden_size if reads_hidden(cfg) else None)
    head.init_bias(start)
    if cfg.prompt.get("head_start", "random") == "flat":
        head.start_flat()
    if prompts is not None:
        start_head(cfg, head, lm, table, lambda: prompts)
    return head


def prompt_scale(cfg: DictConfig, lm: Any) -> float:
    """The parametrisation scale of prompts on ``lm``: its embedding unit under ``prompt.init=scaled``, else 1."""
    from puma_lightning.tasks import embedding_unit

    return embedding_unit(lm.embedding_std()) if cfg.prompt.init == "scaled" else 1.0


def initial_prompts(cfg: DictConfig, lm: Any, table: InteractionTable) -> tuple["torch.Tensor", float]:
    """Start prompts ``[N, l, d]`` in the model's embedding units and the parametrisation scale.

    ``prompt.init_from=random``: U(-0.1, 0.1) (times the embedding unit under ``prompt.init=scaled``);
    ``item_text``: that draw plus, on every row, the mean of the user's training items' text embeddings."""

    from puma_lightning.tasks import init_prompts

    scale = prompt_scale(cfg, lm)
    prompts = init_prompts(table.n_users, cfg.prompt.length, lm.hidden_size, seed=cfg.seed) * scale
    if cfg.prompt.init_from == "item_text":
        prompts = prompts + user_item_text_means(lm, table, int(cfg.data.max_item_tokens or 32))[:, None, :]
    return prompts, scale


def user_item_text_means(lm: Any, table: InteractionTable, max_tokens: int | None) -> "torch.Tensor":
    """``[n_users, d]``: each user's mean, over its training rows, of the mean input embedding of the item's text
    (what the user watched, in the model's embedding space; zeros for a user without training rows)."""
    import torch

    items = item_text_embeddings(lm, table.item_texts, max_tokens)
    train = table.rows("train")
    users = torch.as_tensor(table.user[train])
    sums = torch.zeros(table.n_users, lm.hidden_size).index_add_(0, users, items[torch.as_tensor(table.item[train])])
    counts = torch.bincount(users, minlength=table.n_users).clamp(min=1).float()[:, None]
    return sums / counts


def build_prompt_tuning(cfg: DictConfig, lm: Any, table: InteractionTable, head: Any, prompts: "torch.Tensor", scale: float,
                        *, train_prompts: bool = True, train_head: bool = True, shared: bool = False) -> Any:
    """A :class:`~puma_lightning.tasks.PromptTuning` with the optimiser settings of ``cfg.prompt``."""
    from puma_lightning.tasks import PromptTuning

    p = cfg.prompt
    return PromptTuning(lm, head, table.task, prompts, train_prompts=train_prompts, lr=p.lr, head_lr=p.head_lr,
                        weight_decay=p.weight_decay, train_head=train_head, scale=scale, optimizer=p.optimizer,
                        warmup_ratio=p.warmup_ratio, user_bias=bool(p.user_bias) and train_prompts, shared=shared)
