"""Cold-start users: held-out users served by mapping, adapter init + fine-tuning, or from scratch."""

import json
from pathlib import Path

import pytest

from puma_lightning.cli.main import main
from puma_lightning.errors import PumaError
from puma_lightning.io.bank import PromptBank
from puma_lightning.commands.cold_start import split_new_users

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "cold_start.yaml")
TINY = ["trainer.num_threads=1", "data.n_users=20", "data.rows_per_user=8", "prompt.epochs=1", "adapter.epochs=1",
        "selection.budget=8", "cold_start.finetune_epochs=1"]


def test_split_is_seeded_and_disjoint():
    users = [f"u{i}" for i in range(50)]
    old, new = split_new_users(users, 0.2, [], 0)
    assert len(new) == 10 and not set(old) & set(new) and sorted(old + new) == sorted(users)
    assert split_new_users(users, 0.2, [], 0) == (old, new)
    assert split_new_users(users, 0.2, ["u3", "u1"], 0)[1] == ["u1", "u3"]
    with pytest.raises(PumaError, match="not in the dataset"):
        split_new_users(users, 0.2, ["nobody"], 0)


@pytest.mark.slow
def test_cold_start_end_to_end(tmp_path):
    run = tmp_path / "cs"
    assert main(["cold-start", "--config", CONFIG, f"run_dir={run}", *TINY]) == 0
    doc = json.loads((run / "cold_start.json").read_text())
    assert doc["new_users"] == 4 and doc["existing_users"] == 16
    methods = doc["methods"]
    assert set(methods) == {"scratch", "map", "map_finetune", "mean_finetune"}
    for row in methods.values():
        assert 0 < row["metrics"]["rmse"] < 4
        assert row["personal_gain"]["low"] <= row["personal_gain"]["value"] <= row["personal_gain"]["high"]
    assert "retained" in methods["map"] and "retained" not in methods["scratch"]
    assert "personal gain [95 %]" in (run / "cold_start.md").read_text()
    assert methods["map"]["target_train_samples"] == 0 and methods["map"]["source_train_samples"] > 0
    assert methods["scratch"]["source_train_samples"] == 0 and methods["scratch"]["target_train_samples"] > 0
    assert methods["mean_finetune"]["source_train_samples"] == 0
    # the new users were never in the source bank the adapter was trained from
    existing = next(run.glob("existing-*"))
    source_users = set(PromptBank.load(existing / "source" / "bank").user_ids)
    assert not source_users & set(doc["new_user_ids"])
    new_dir = next(run.glob("new-*"))
    mapped = PromptBank.load(new_dir / "map" / "bank")
    assert mapped.user_ids == doc["new_user_ids"] and mapped.hidden_size == 48
    assert mapped.info["lineage"]["adapter"]["sha256"]
    assert "map_finetune" in (run / "cold_start.md").read_text()
