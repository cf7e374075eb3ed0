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
