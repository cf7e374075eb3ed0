"""The shipped Amazon, Yelp and MIND configs run ``prepare`` and ``fit`` end to end on fixture
files in the raw formats — only the models, sizes and thresholds are overridden for the CPU."""

import json
from pathlib import Path

import pytest

from puma_lightning.cli.main import main
from tests.data import test_mind_paper
from tests.data import test_raw_amazon
from tests.data import test_raw_yelp

ROOT = Path(__file__).resolve().parents[2]
TINY = ["source.name=tiny-llama", "target.name=tiny-gemma3", "prompt.epochs=1", "adapter.epochs=1", "adapter.kind=compact",
        "adapter.hidden=64", "baselines.full_retrain=false", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        "selection.budget=8", "selection.n_clusters=2", "selection.min_per_cluster=2"]
CASES = {
    "amazon": (test_raw_amazon.make_fixture, ["data.min_user_ratings=5", "data.min_item_ratings=0"], "rmse"),
    "yelp": (test_raw_yelp.make_fixture, ["data.min_user_ratings=5", "data.max_rows_per_user=8"], "rmse"),
    # mind.yaml runs the published chain (data.preprocessing=paper): a fixture whose users pass it
    "mind": (test_mind_paper.make_paper_fixture, ["data.history_titles=2", "data.max_item_tokens=12", "data.max_users=8",
                                                  "selection.budget=4"], "uauc"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_dataset_config_prepares_and_fits(name, tmp_path):
    make_fixture, sizes, metric = CASES[name]
    raw = make_fixture(tmp_path / "raw")
    config = str(ROOT / "configs" / f"{name}.yaml")
    common = [f"data.raw_dir={raw}", f"data.processed_dir={tmp_path / 'processed'}", *TINY, *sizes]
    assert main(["prepare", "--config", config, f"run_dir={tmp_path / 'prep'}", *common]) == 0
    manifest = json.loads((tmp_path / "processed" / "manifest.json").read_text())
    assert manifest and (tmp_path / "processed").is_dir()
    assert main(["fit", "--config", config, f"run_dir={tmp_path / 'run'}", *common]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    from puma_lightning.pipeline.classic import REFERENCES

    llm = set(results["methods"]) - set(REFERENCES)
    assert llm == {"source", "random_init", "puma"}
    # the references of the task that need nothing beyond it (attribute_ridge needs item attributes)
    assert {n for n, r in REFERENCES.items() if r.task == results["task"] and r.needs is None} <= set(results["methods"])
    assert all(row[metric] == row[metric] for row in results["methods"].values())  # not NaN
