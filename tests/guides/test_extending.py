"""docs/extending.md: its example results row and its example lever, written as the page shows them, run through
``fit`` as plugins; the lever registry refuses duplicates, its choices are what the loader, ``--help`` and the errors
list, and a rating-only value is refused for a click task when the config loads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from puma_lightning.cli.config_loader import ConfigError, load_config
from puma_lightning.cli.main import main
from puma_lightning.pipeline.levers import LEVERS, Lever, Option, get_lever, register_lever
from puma_lightning.pipeline.levers.registry import lever_options
from puma_lightning.pipeline.stages import STAGES, StageEntry, register_stage, stage_names

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "extending.md"
SMOKE = str(ROOT / "configs" / "smoke.yaml")
FAST = ["data.n_users=16", "data.rows_per_user=10", "selection.budget=8", "baselines.classic=false", "trainer.num_threads=1",
        "prompt.epochs=2", "adapter.epochs=1", "baselines.random_init=false"]


def page_file(name: str, kind: str = "python") -> str:
    """The page's ``kind`` block that starts with ``# <name>``."""
    for body in re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S):
        if body.startswith(f"# {name}\n"):
            return body
    raise AssertionError(f"{PAGE} has no {kind} block starting with '# {name}'")


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


@pytest.fixture
def lever_plugin(tmp_path, monkeypatch):
    """The page's lever file and its YAML, written where ``fit`` imports them; the registry restored afterwards."""
    (tmp_path / "my_levers.py").write_text(page_file("my_levers.py"), encoding="utf-8")
    (tmp_path / "my_levers.yaml").write_text(page_file("my_levers.yaml", "yaml"), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "my_levers.yaml"
    LEVERS.pop("popularity", None)
    import sys

    sys.modules.pop("my_levers", None)


@pytest.mark.slow
def test_the_pages_lever_runs_through_fit_and_moves_every_row(tmp_path, lever_plugin, capsys):
    import numpy as np

    def fit(run, *more):
        code = main(["fit", "--config", SMOKE, "--config", str(lever_plugin), f"run_dir={run}", *FAST, *more])
        assert code == 0, capsys.readouterr().err
        return json.loads((run / "results.json").read_text())

    on, off = fit(tmp_path / "on"), fit(tmp_path / "off", "levers.popularity.mode=none")
    for row in ("source", "full_retrain", "puma"):
        moved = np.load(tmp_path / "on" / row / "test_predictions.npz")["prediction"]
        still = np.load(tmp_path / "off" / row / "test_predictions.npz")["prediction"]
        assert not np.allclose(moved, still), row  # the offset reached the row (same seeds otherwise)
    assert set(on["methods"]) == set(off["methods"])
    cfg = load_config([SMOKE, str(lever_plugin)], FAST)
    assert cfg.levers.popularity.mode == "log_count" and cfg.levers.popularity.scale == 0.2
    from puma_lightning.pipeline.builders import build_table
    from puma_lightning.pipeline.levers.hooks import row_offsets

    table = build_table(cfg.data, cfg.seed)
    offsets = row_offsets(cfg, table)
    assert offsets is not None and offsets.dtype == np.float32 and len(offsets) == len(table) and offsets.std() > 0
    key = json.loads((tmp_path / "on" / "full_retrain" / "stage.json").read_text())["key"]
    assert key != json.loads((tmp_path / "off" / "full_retrain" / "stage.json").read_text())["key"]


def test_the_pages_lever_is_listed_checked_and_one_of_a_kind(tmp_path, lever_plugin):
    from puma_lightning.cli.config_loader import choices
    from puma_lightning.cli.help import describe_config

    cfg = load_config([SMOKE, str(lever_plugin)], [f"run_dir={tmp_path}"])
    assert choices()["levers.popularity.mode"] == ("none", "log_count")
    assert "popularity: every row's output offset" in describe_config()
    with pytest.raises(ConfigError, match=r"'levers.popularity.mode' is 'often'; expected one of: none, log_count$"):
        load_config([SMOKE, str(lever_plugin)], ["levers.popularity.mode=often"])
    with pytest.raises(ConfigError, match=r"'levers.popularity.scale' must be >= 0"):
        load_config([SMOKE, str(lever_plugin)], ["levers.popularity.scale=-1"])
    with pytest.raises(ConfigError, match=r"'levers.popularity'.*often"):
        load_config([SMOKE, str(lever_plugin)], ["levers.popularity.often=1"])
    with pytest.raises(ConfigError, match=r"'levers.nothing' is no registered lever's section; lever sections: popularity"):
        load_config([SMOKE, str(lever_plugin)], ["levers.nothing.x=1"])
    with pytest.raises(ValueError, match="lever 'popularity' is already registered"):
        register_lever(get_lever("popularity"))
    assert cfg.levers.popularity.mode == "log_count"


def test_a_second_lever_of_one_name_or_one_key_is_refused():
    with pytest.raises(ValueError, match="lever 'residual' is already registered"):
        register_lever(get_lever("residual"))

    class Again(Lever):
        name = "residual_again"
        options = (Option("prompt.residual", ("none",)),)

    with pytest.raises(ValueError, match=r"already owned: prompt.residual \(lever 'residual'\)"):
        register_lever(Again())
    assert "residual_again" not in LEVERS
    with pytest.raises(ValueError, match="rating-only values"):
        Option("x.y", ("a",), rating_only=("b",))


def test_every_choice_list_is_the_lever_registrys():
    """The loader's choices, ``--help`` and the errors list exactly each registered lever option's values."""
    from puma_lightning.cli.config_loader import CHOICES, choices
    from puma_lightning.cli.help import describe_config

    listed = choices()
    for key, option in lever_options().items():
        if not option.values:
            continue
        assert key not in CHOICES and listed[key] == option.values  # one list, the lever's
        assert f"{key} (default " in describe_config() and f"; one of: {', '.join(option.values)})" in describe_config()
        with pytest.raises(ConfigError, match=rf"^'{re.escape(key)}' is 'bogus'; expected one of: {re.escape(', '.join(option.values))}$"):
            load_config([SMOKE], [f"{key}=bogus"])
    assert {"prompt.residual", "prompt.hidden_readout", "adapter.readout_rows", "adapter.init", "adapter.input_norm"} <= set(listed)


@pytest.mark.parametrize("key", ["prompt.residual", "prompt.hidden_readout"])
def test_a_rating_only_value_is_refused_for_a_click_task_when_the_config_loads(key):
    option = lever_options()[key]
    assert option.rating_only
    for value in option.rating_only:
        others = " or ".join(v for v in option.values if v not in option.rating_only)
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}={value} fits ratings, but data.task=click; use {re.escape(key)}={others}$"):
            load_config([SMOKE], ["data.task=click", f"{key}={value}"])
        load_config([SMOKE], [f"{key}={value}"])  # a rating task takes it


def test_a_click_only_value_is_refused_for_a_rating_task_when_the_config_loads():
    option = lever_options()["prompt.residual"]
    assert option.click_only and not set(option.click_only) & set(option.rating_only)
    for value in option.click_only:
        others = " or ".join(v for v in option.values if v not in option.click_only)
        with pytest.raises(ConfigError, match=rf"^prompt.residual={value} fits clicks, but data.task=rating; use prompt.residual={re.escape(others)}$"):
            load_config([SMOKE], [f"prompt.residual={value}"])
        load_config([SMOKE], ["data.task=click", "data.template=item_click", f"prompt.residual={value}"])  # a click task takes it
    with pytest.raises(ValueError, match="both rating-only and click-only"):
        Option("x.y", ("a", "b"), rating_only=("a",), click_only=("a",))
    with pytest.raises(ValueError, match="click-only values"):
        Option("x.y", ("a",), click_only=("b",))
