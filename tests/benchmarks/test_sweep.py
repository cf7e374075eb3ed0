"""Tests of the selection ablation sweep (benchmarks/selection_sweep.py) and the ``select`` command
on the smoke config: one shared source stage, cells resumed, Table-4 layout written."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from benchmark_loader import load_benchmark, machine_line

from puma_lightning.cli.config_loader import load_config
from puma_lightning.pipeline.experiment import Experiment

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
FAST = ["prompt.epochs=1", "adapter.epochs=1", "data.n_users=30", "data.rows_per_user=10"]  # small and quick



@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    module = load_benchmark("selection_sweep")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = module.main(["--config", SMOKE, "--budgets", "12", "--strategies", "random,kmeans_fps", "--seeds", "1",
                          "--out", str(out), *FAST])
    assert rc == 0
    return module, out, printed.getvalue()


def test_sweep_writes_table(sweep):
    _, out, printed = sweep
    rows = list(csv.DictReader(open(out / "sweep.csv", encoding="utf-8")))
    assert [(r["strategy"], r["budget"], r["seed"]) for r in rows] == [("random", "12", "0"), ("kmeans_fps", "12", "0")]
    assert all(r["metric"] == "rmse" and float(r["value"]) > 0 and r["selected_users"] == "12" for r in rows)
    md = (out / "sweep.md").read_text(encoding="utf-8")
    assert "| strategy | B = 12 |" in md and "| random |" in md and "| kmeans_fps |" in md and "±" in md
    line = machine_line(printed)
    assert "; dtype float32;" in line and line in md.splitlines()  # sweep.md (printed) names the machine
    assert (out / "sweep.png").stat().st_size > 1000
    for name in ("random_b12_s0", "kmeans_fps_b12_s0"):
        cell = out / "cells" / name
        assert (cell / "results.json").is_file() and any((cell / "tb").rglob("events.out.tfevents*"))
        selection = json.loads((cell / "selection.json").read_text())
        assert selection["num_selected"] == 12
        assert not (cell / "source").exists()  # the seed's source stage was reused
        cell_cfg = OmegaConf.load(cell / "config.yaml")
        assert cell_cfg.seed == 0 and cell_cfg.selection.seed == 0 and cell_cfg.source_dir == str(out / "source_s0")
    assert (out / "source_s0" / "bank").is_dir()  # seed 0's own source stage (whole-run seeds)
    assert "Paired difference against random" in md and "| kmeans_fps | 12 | 1 |" in md


def test_sweep_resumes_skipping_finished_cells(sweep, monkeypatch):
    module, out, _ = sweep

    def no_training(self):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(Experiment, "fit", no_training)
    monkeypatch.setattr(Experiment, "pretrain", lambda self, *a, **k: {})
    rows = module.run_sweep([SMOKE], [12], ["random", "kmeans_fps"], 1, out, FAST)
    assert len(rows) == 2 and "random" in (out / "sweep.md").read_text()


def test_seed_scopes_name_their_sources_and_cells(tmp_path):
    module = load_benchmark("selection_sweep")
    assert module.source_dir(tmp_path, 2, "whole") == tmp_path / "source_s2"
    assert module.source_dir(tmp_path, 2, "selection") == tmp_path / "source"
    assert module.cell_name("random", 10, 2, "whole") != module.cell_name("random", 10, 2, "selection")
    assert module.seed_overrides(2, "whole") == ["seed=2", "selection.seed=2"]
    assert module.seed_overrides(2, "selection") == ["selection.seed=2"]
    with pytest.raises(SystemExit):
        module.run_sweep([SMOKE], [12], ["random"], 1, tmp_path, FAST, scope="everything")


def test_markdown_layout_mean_std():
    module = load_benchmark("selection_sweep")
    rows = [{"strategy": s, "budget": b, "seed": k, "metric": "rmse", "value": v}
            for s, b, k, v in [("a", 10, 0, 1.0), ("a", 10, 1, 1.2), ("b", 10, 0, 0.9), ("b", 10, 1, 0.9), ("a", 30, 0, 0.8)]]
    md = module.to_markdown(rows, ["a", "b"], [10, 30])
    assert "| a | 1.1000 ± 0.1414 | **0.8000 ± 0.0000 (n=1)** |" in md
    assert "| b | **0.9000 ± 0.0000** | — |" in md


def test_run_select_outputs(sweep, tmp_path):
    _, out, _ = sweep
    from puma_lightning.commands.select import run_select

    cfg = load_config([SMOKE], [f"run_dir={tmp_path}", f"source_dir={out / 'source'}", *FAST,
                                "selection=kmeans_fps", "selection.n_clusters=3", "selection.budget=15"])
    run_select(cfg)
    record = json.loads((tmp_path / "selection.json").read_text())
    assert record["strategy"] == "kmeans_fps" and record["num_selected"] == 15
    summary = (tmp_path / "selection_summary.md").read_text()
    assert "## Per cluster" in summary and "| label variance | selected | 15 |" in summary
    assert (tmp_path / "selection.png").stat().st_size > 1000


def test_run_select_with_loss_strategy(sweep, tmp_path):
    _, out, _ = sweep
    from puma_lightning.commands.select import run_select

    cfg = load_config([SMOKE], [f"run_dir={tmp_path}", f"source_dir={out / 'source'}", *FAST,
                                "selection=ffn_kmeans_loss", "selection.n_clusters=3", "selection.budget=15"])
    run_select(cfg)
    assert "| task loss | selected | 15 |" in (tmp_path / "selection_summary.md").read_text()
    assert (out / "source" / "user_stats.safetensors").is_file()
