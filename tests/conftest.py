"""Fixtures shared by several test modules."""

from pathlib import Path

import pytest

from puma_lightning.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
CHAIN = str(ROOT / "configs" / "chain.yaml")
CHAIN_TINY = ["trainer.num_threads=1", "data.n_users=24", "data.rows_per_user=10", "prompt.epochs=2", "adapter.epochs=2",
              "selection.budget=12"]
"""Overrides of configs/chain.yaml for the shared chain run (tiny-llama -> tiny-qwen2 -> tiny-gemma3)."""


@pytest.fixture(scope="session")
def chain_run(tmp_path_factory) -> Path:
    """One finished chain run, shared by the chain and the lineage tests (it is the slowest fixture)."""
    run_dir = tmp_path_factory.mktemp("chain")
    assert main(["chain", "--config", CHAIN, f"run_dir={run_dir}", *CHAIN_TINY]) == 0
    return run_dir


def smoke_prompt_module(tmp_path: Path, overrides: list[str], start: float) -> tuple:
    """``(cfg, lm, table, module, datamodule)``: the source model's prompt-tuning module on the smoke data, as a stage
    builds it (its head started at ``start``, a batch size of 8), for tests that look inside one training step."""
    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.cli.main import setup_runtime
    from puma_lightning.pipeline.builders import build_datamodule, build_prompt_tuning, fresh_head, initial_prompts
    from puma_lightning.pipeline.experiment import Experiment

    cfg = load_config([str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")], [f"run_dir={tmp_path}", *overrides])
    setup_runtime(cfg)
    exp = Experiment(cfg)
    lm, table = exp.backbone("source"), exp.table
    prompts, unit = initial_prompts(cfg, lm, table)
    module = build_prompt_tuning(cfg, lm, table, fresh_head(cfg, lm, table, start, prompts), prompts, unit)
    return cfg, lm, table, module, build_datamodule(table, lm.tokenizer, cfg, 8)

