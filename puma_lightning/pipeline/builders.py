"""Build the pieces of an experiment from its config: the interaction table, the frozen LLM with
its answer tokens, and the datamodule."""

from __future__ import annotations

from typing import Any

import numpy as np
from omegaconf import DictConfig

from puma_lightning.data.table import InteractionTable
from puma_lightning.data.templates import get_template


def build_table(dcfg: DictConfig, seed: int) -> InteractionTable:
    """The split interaction table of the configured dataset."""
    if dcfg.name == "synthetic":
        from puma_lightning.data.synthetic import make_synthetic

        return make_synthetic(seed=seed, n_users=dcfg.n_users, n_items=dcfg.n_items, rows_per_user=dcfg.rows_per_user,
                              noise_std=dcfg.noise_std, task=dcfg.task, valid_ratio=dcfg.valid_ratio,
                              test_ratio=dcfg.test_ratio, max_users=dcfg.max_users, max_rows_per_user=dcfg.max_rows_per_user)
    if dcfg.name == "movielens-100k":
        from puma_lightning.data.movielens import load_movielens_100k

        if dcfg.task != "rating":
            raise ValueError("'data.task' must be 'rating' for movielens-100k (it has star ratings, no clicks)")
        return load_movielens_100k(max_users=dcfg.max_users, seed=seed, max_rows_per_user=dcfg.max_rows_per_user,
                                   valid_ratio=dcfg.valid_ratio, test_ratio=dcfg.test_ratio)
    if dcfg.name in ("amazon-movies", "amazon-movies-csv", "yelp", "mind"):
        from puma_lightning.data.prepare import load_prepared

        return load_prepared(dcfg, seed)
    raise ValueError(f"unknown dataset {dcfg.name!r}")


def load_frozen_lm(mcfg: DictConfig, dcfg: DictConfig, cache_dir: str | None, on_gpu: bool = False) -> Any:
    """Load a model by name/folder/hub id and wrap it as a frozen LM reading the template's answers.

    ``on_gpu``: whether it will run on a CUDA GPU (what ``dtype: auto`` decides for)."""
    from puma_lightning.models.backbone import FrozenLM
    from puma_lightning.models.loading import load_backbone

    loaded = load_backbone(mcfg.name, dtype=mcfg.dtype, cache_dir=cache_dir, trust_remote_code=mcfg.trust_remote_code,
                           device="cuda" if on_gpu else "cpu")
    template = get_template(dcfg.template)
    lm = FrozenLM(loaded.model, loaded.tokenizer, template.answers, name=loaded.name, fingerprint=loaded.fingerprint)
    lm.dtype_choice = loaded.dtype_choice
    if mcfg.get("prefix_cache_mb") is not None:
        lm.enable_prefix_cache(float(mcfg.prefix_cache_mb))  # probes once; falls back with a logged reason
    if mcfg.get("compile"):
        lm.set_compiled(True)
    return lm


def build_datamodule(table: InteractionTable, tokenizer: Any, cfg: DictConfig, batch_size: int,
                     train_users: np.ndarray | None = None, eval_users: np.ndarray | None = None) -> Any:
    """The datamodule rendering ``table`` through the configured template for ``tokenizer``."""
    from puma_lightning.data.datamodule import PromptDataModule

    return PromptDataModule(table, tokenizer, get_template(cfg.data.template), prompt_length=cfg.prompt.length,
                            batch_size=batch_size, eval_batch_size=2 * batch_size, train_users=train_users,
                            eval_users=eval_users, seed=cfg.seed, max_item_tokens=cfg.data.max_item_tokens)
