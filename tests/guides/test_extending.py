"""docs/extending.md: its example results row, written as the page shows it, runs through ``fit`` as a plugin."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from puma_lightning.cli.config_loader import ConfigError, load_config
from puma_lightning.cli.main import main
from puma_lightning.pipeline.stages import STAGES, StageEntry, register_stage, stage_names

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "extending.md"
SMOKE = str(ROOT / "configs" / "smoke.yaml")
FAST = ["data.n_users=16", "data.rows_per_user=10", "selection.budget=8", "baselines.classic=false", "trainer.num_threads=1",
        "prompt.epochs=2", "adapter.epochs=1", "baselines.random_init=false"]


def page_file(name: str) -> str:
    """The page's python block that starts with ``# <name>``."""
    for body in re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S):
        if body.startswith(f"# {name}\n"):
            return body
    raise AssertionError(f"{PAGE} has no python block starting with '# {name}'")


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_rows.py").write_text(page_file("my_rows.py"), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rows"
    STAGES.pop("item_text_prompts", None)  # the registry is the process's: leave it as the other tests expect
    import sys

    sys.modules.pop("my_rows", None)


@pytest.mark.slow
def test_the_pages_row_runs_through_fit_after_the_built_in_rows(tmp_path, plugin, capsys):
    run = tmp_path / "run"
    code = main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, f"plugins=[{plugin}]"])
    assert code == 0, capsys.readouterr().err
    assert stage_names()[-1] == "item_text_prompts"
    results = json.loads((run / "results.json").read_text())
    row = results["methods"]["item_text_prompts"]
    assert row["trainable_params"] > 0 and row["train_samples"] > 0
    assert "vs_full_retrain" in row and "personal_gain" in row  # paired with full retraining, and its placebo
    assert "each user's mean item-text embedding" in (run / "results.md").read_text()
    record = json.loads((run / "item_text_prompts" / "stage.json").read_text())
    assert record["method"] == "item_text_prompts" and len(record["key"]) == 16
    # the key decides reuse: the same config reuses the row, another prompt recipe recomputes it
    main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, f"plugins=[{plugin}]"])
    assert json.loads((run / "item_text_prompts" / "stage.json").read_text()) == record
    main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST, f"plugins=[{plugin}]", "prompt.lr=0.01"])
    assert json.loads((run / "item_text_prompts" / "stage.json").read_text())["key"] != record["key"]


def test_a_second_row_of_one_name_is_refused_and_a_missing_plugin_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="already registered"):
        register_stage(StageEntry("puma", lambda exp: {}))
    with pytest.raises(ConfigError, match=r"'plugins\[0\]' is 'no_such_module'"):
        load_config([SMOKE], [f"run_dir={tmp_path}", "plugins=[no_such_module]"])
