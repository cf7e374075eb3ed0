"""Configs: every shipped YAML loads and validates; bad keys and values give one-line errors."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from puma_lightning.cli.config_loader import ConfigError, load_config, strategies_dir

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
STRATEGIES = sorted(Path(str(strategies_dir())).glob("*.yaml"))  # the packaged presets (= top-level strategies/)


def test_there_are_shipped_configs_and_strategies():
    assert {"smoke", "demo", "synthetic"} <= {p.stem for p in CONFIGS}
    assert {"random", "puma"} <= {p.stem for p in STRATEGIES}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_starts_with_its_command(path):
    cfg = load_config([path])
    assert cfg.run_dir
    first = path.read_text().splitlines()[0]
    assert first.startswith("#")
    assert f"--config configs/{path.name}" in path.read_text()


@pytest.mark.parametrize("path", STRATEGIES, ids=lambda p: p.name)
def test_every_strategy_swaps_in_by_name(path):
    cfg = load_config([ROOT / "configs" / "smoke.yaml"], [f"selection={path.stem}"])
    assert cfg.selection.name == path.stem
    assert cfg.selection.budget == 30  # the experiment's budget is kept
    params = OmegaConf.to_container(OmegaConf.load(path))
    for key, value in params.items():
        assert cfg.selection[key] == value


def test_overrides_apply_in_order_and_types_are_checked():
    cfg = load_config([ROOT / "configs" / "smoke.yaml"], ["prompt.epochs=2", "run_dir=/tmp/x", "selection.budget=7"])
    assert cfg.prompt.epochs == 2 and cfg.run_dir == "/tmp/x" and cfg.selection.budget == 7
    with pytest.raises(ConfigError, match=r"prompt\.epochs"):
        load_config([], ["prompt.epochs=many"])


def test_unknown_key_names_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config([], ["prompt.epoch=2"])
    msg = str(err.value)
    assert "prompt.epoch" in msg and "epochs" in msg and "\n" not in msg


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  nmae: synthetic\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*data\.nmae"):
        load_config([bad])


def test_bad_choices_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="adapter.kind.*puma, compact"):
        load_config([], ["adapter.kind=huge"])
    with pytest.raises(ConfigError, match="data.template"):
        load_config([], ["data.template=nope"])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config([tmp_path / "broken.yaml"])
    with pytest.raises(ConfigError, match="available strategies"):
        load_config([], ["selection=nope"])
    with pytest.raises(ConfigError, match="selection"):
        load_config([], ["selection.n_clustres=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["justaword"])


def test_a_config_builds_on_its_base_and_overrides_it(tmp_path):
    (tmp_path / "a.yaml").write_text("run_dir: runs/a\nprompt:\n  lr: 0.01\n  epochs: 3\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nprompt:\n  lr: 0.02\n", encoding="utf-8")
    cfg = load_config([tmp_path / "sub" / "b.yaml"], ["prompt.batch_size=8"])
    assert (cfg.run_dir, cfg.prompt.lr, cfg.prompt.epochs, cfg.prompt.batch_size) == ("runs/a", 0.02, 3, 8)
    assert "base" not in cfg


def test_a_base_that_is_missing_or_builds_on_itself_is_one_line(tmp_path):
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n", encoding="utf-8")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="builds on itself"):
        load_config([tmp_path / "loop.yaml"])
    (tmp_path / "lost.yaml").write_text("base: nowhere.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config file not found: .*nowhere.yaml \(the base of"):
        load_config([tmp_path / "lost.yaml"])


def test_a_later_files_base_may_not_undo_what_an_earlier_file_set(tmp_path):
    """``--config mine.yaml --config overlay.yaml`` where overlay.yaml builds on another config: its base would silently
    put back that config's data and sizes; it is one line naming the keys. The overlay's own keys still win, and after
    its own base (or on keys the earlier file left alone) it loads."""
    (tmp_path / "demo.yaml").write_text("data:\n  name: movielens-100k\nprompt:\n  epochs: 2\n", encoding="utf-8")
    (tmp_path / "overlay.yaml").write_text("base: demo.yaml\nprompt:\n  epochs: 5\nchain:\n  models: [a, b]\n",
                                           encoding="utf-8")
    (tmp_path / "mine.yaml").write_text("data:\n  name: synthetic\nprompt:\n  epochs: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config([tmp_path / "mine.yaml", tmp_path / "overlay.yaml"])
    message = str(info.value)
    assert "\n" not in message and "overlay.yaml builds on" in message and "data.name" in message
    assert "prompt.epochs" not in message and "mine.yaml" in message
    cfg = load_config([tmp_path / "demo.yaml", tmp_path / "overlay.yaml"])
    assert (cfg.data.name, cfg.prompt.epochs, list(cfg.chain.models)) == ("movielens-100k", 5, ["a", "b"])
    (tmp_path / "epochs.yaml").write_text("prompt:\n  epochs: 4\n", encoding="utf-8")
    cfg = load_config([tmp_path / "epochs.yaml", tmp_path / "overlay.yaml"])  # the overlay's own key: it wins
    assert (cfg.data.name, cfg.prompt.epochs) == ("movielens-100k", 5)


@pytest.mark.parametrize("overlay", ["demo_chain", "demo_aggregate", "demo_cold_start"])
def test_the_demo_topology_overlays_refuse_to_undo_another_benchmark(overlay):
    with pytest.raises(ConfigError, match=rf"{overlay}.yaml builds on .*demo.yaml, which would change .*data.name"):
        load_config([ROOT / "configs" / "personal.yaml", ROOT / "configs" / f"{overlay}.yaml"])
