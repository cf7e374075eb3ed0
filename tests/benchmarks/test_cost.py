"""Tests of the cost benchmark (benchmarks/cost.py, the paper's Table 3) on the smoke config."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from benchmark_loader import check_machine_record, load_benchmark, machine_line

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
FAST = ["prompt.epochs=1", "adapter.epochs=1", "data.n_users=30", "data.rows_per_user=10", "selection.budget=10"]



@pytest.fixture(scope="module")
def cost_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cost")
    module = load_benchmark("cost")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert module.main(["--config", SMOKE, "--out", str(out), "--project", "300,3000", *FAST]) == 0
    return module, out, printed.getvalue()


def test_cost_writes_consistent_table(cost_run):
    _, out, _ = cost_run
    doc = json.loads((out / "cost.json").read_text())
    full, puma = doc["full_retrain"], doc["puma"]
    assert doc["users"] == 30 and puma["selected_users"] == 10
    assert doc["wall_ratio"] == pytest.approx(full["wall_s"] / puma["wall_s"])
    assert doc["sample_ratio"] == pytest.approx(full["train_samples"] / puma["train_samples"])
    # full retraining trains all 30 users, PUMA's adapter only the 10 selected: 3x the samples for one epoch each
    assert full["train_samples"] == 3 * puma["train_samples"]
    assert doc["meets_bar"] == (puma["metrics"]["rmse"] <= full["metrics"]["rmse"])
    assert set(doc["projected_wall_ratio"]) == {"300", "3000"}
    assert doc["projected_wall_ratio"]["3000"] > doc["projected_wall_ratio"]["300"]
    md = (out / "cost.md").read_text()
    assert "full retraining" in md and "PUMA" in md and "wall-time ratio" in md
    assert not list(out.glob("*.tmp*"))


def test_cost_names_the_machine(cost_run):
    _, out, printed = cost_run
    line = machine_line(printed)
    assert "; dtype float32;" in line  # tiny source and target models
    assert line in (out / "cost.md").read_text().splitlines()
    check_machine_record(json.loads((out / "cost.json").read_text())["machine"], "float32")


def test_cost_rerun_reuses_stages(cost_run):
    module, out, _ = cost_run
    before = json.loads((out / "cost.json").read_text())
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert module.main(["--config", SMOKE, "--out", str(out), "--project", "300,3000", *FAST]) == 0
    machine_line(printed.getvalue())
    after = json.loads((out / "cost.json").read_text())
    assert after["machine"]["torch"] == before["machine"]["torch"]
    assert after["full_retrain"]["wall_s"] == before["full_retrain"]["wall_s"]  # stage.json reused, not retrained
    assert after["puma"]["wall_s"] == before["puma"]["wall_s"]


def test_project_ratio_by_hand():
    module = load_benchmark("cost")
    puma = {"wall_s": 12.0, "selection_s": 1.0, "migrate_s": 1.0}  # adapter training 10 s, fixed
    # 100 users: full 40 s; at 1000 users: full 400 s, PUMA 10 + 2 * 10 = 30 s
    assert module.project_ratio(40.0, puma, 100, 1000) == pytest.approx(400.0 / 30.0)
    assert module.project_ratio(40.0, puma, 100, 100) == pytest.approx(40.0 / 12.0)


def test_meets_bar_directions():
    module = load_benchmark("cost")
    assert module.meets_bar("rating", 1.00, 1.01, 0.0) is True
    assert module.meets_bar("rating", 1.02, 1.01, 0.0) is False
    assert module.meets_bar("rating", 1.02, 1.01, 0.02) is True
    assert module.meets_bar("click", 0.70, 0.71, 0.0) is False
    assert module.meets_bar("click", 0.72, 0.71, 0.0) is True
    assert module.meets_bar("rating", None, 1.0, 0.0) is None


def test_bad_config_is_one_line(capsys):
    module = load_benchmark("cost")
    assert module.main(["--config", SMOKE, "--out", "/nonexistent/never", "prompt.epochs=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "prompt.epochs" in err[0]
