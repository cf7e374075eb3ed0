"""Architecture grid on 2 x 2 tiny models: gain matrix as CSV, markdown and heatmap."""

import csv
import json
from pathlib import Path

import pytest
from benchmark_loader import check_machine_record, load_benchmark, machine_line

ROOT = Path(__file__).resolve().parents[2]
grid = load_benchmark("architecture_grid")


def test_two_by_two_grid(tmp_path, capsys):
    out = tmp_path / "grid"
    assert grid.main(["--config", str(ROOT / "configs" / "smoke.yaml"), "--models", "tiny-llama,tiny-qwen2", "--out", str(out),
                      "trainer.num_threads=1", "data.n_users=16", "data.rows_per_user=8", "prompt.epochs=1", "adapter.epochs=1",
                      "selection.budget=8"]) == 0
    line = machine_line(capsys.readouterr().out)
    assert "; dtype float32;" in line
    rows = list(csv.DictReader((out / "grid.csv").open()))
    assert {(r["source"], r["target"]) for r in rows} == {(s, t) for s in ("tiny-llama", "tiny-qwen2") for t in ("tiny-llama", "tiny-qwen2")}
    for r in rows:
        assert float(r["gain"]) == pytest.approx(float(r["full_retrain_rmse"]) / float(r["migrated_rmse"]))
    md = (out / "grid.md").read_text()
    assert "| tiny-llama |" in md and "source \\ target" in md
    assert line in md.splitlines()
    check_machine_record(json.loads((out / "grid.json").read_text())["machine"], "float32")
    assert (out / "grid.png").stat().st_size > 1000
    assert (out / "models" / "tiny-qwen2" / "source" / "bank" / "manifest.json").is_file()
    assert (out / "pairs" / "tiny-llama__tiny-qwen2" / "puma" / "adapter.safetensors").is_file()
