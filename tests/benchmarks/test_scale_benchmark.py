"""``benchmarks/scale.py`` on small banks and the tiny models: every phase reports, the files are
written, the figures are consistent, and the cost model is the arithmetic it claims (issue 16 item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_loader import load_benchmark, machine_line
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_scale_benchmark_writes_its_tables_and_measures_every_phase(tmp_path, capsys):
    scale = load_benchmark("scale")
    assert scale.main(["--sizes", "600,1500", "--widths", "8", "--rows-per-shard", "500", "--config", str(ROOT / "configs" / "smoke.yaml"),
                       "--predict-pairs", "100", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    machine_line(printed)
    doc = json.loads((tmp_path / "scale.json").read_text())
    assert [(b["users"], b["width"]) for b in doc["banks"]] == [(600, 8), (1500, 8)]
    for bank in doc["banks"]:
        phases = bank["phases"]
        assert set(phases) == {"write", "read", "stats", "select", "migrate"}
        assert all("error" not in p and p["peak_rss_mb"] > 50 for p in phases.values()), phases
        assert phases["select"]["selected"] == phases["select"]["budget"] == round(0.1 * bank["users"])
        assert phases["stats"]["ratings"] == 20 * bank["users"] and phases["migrate"]["prompts_per_s"] > 0
    assert not any((tmp_path / "work").glob("bank_*")) and not any((tmp_path / "work").glob("migrated_*"))  # cleaned up
    for model in ("source", "target"):
        r = doc["predict"][model]
        assert r["prefix-cache"] > 0 and r["plain"] > 0 and r["speedup"] == pytest.approx(r["plain"] / r["prefix-cache"])
    assert [r["users"] for r in doc["cost_model"]] == [600, 1500] and all(r["projection"] for r in doc["cost_model"])
    text = (tmp_path / "scale.md").read_text()
    assert "PROJECTION" in text and "| 1,500 | 8 | 500 |" in text and (tmp_path / "scale.png").stat().st_size > 1000


def test_cost_model_is_samples_times_measured_costs():
    scale = load_benchmark("scale")
    cfg = OmegaConf.create({"data": {"max_rows_per_user": 12, "valid_ratio": 0.1667, "test_ratio": 0.1667},
                            "prompt": {"epochs": 2}, "adapter": {"epochs": 4}})
    costs = {"prompt_s_per_sample": 0.01, "adapter_s_per_sample": 0.02}
    rows = scale.cost_model(costs, cfg, [10_000, 1_000_000], migrate_per_prompt_s=1e-5)
    assert rows[0]["full_samples"] == 10_000 * 8 * 2 and rows[0]["puma_samples"] == 1_000 * 8 * 4
    assert rows[1]["full_hours"] == pytest.approx(1_000_000 * 16 * 0.01 / 3600)
    assert rows[1]["puma_hours"] == pytest.approx((100_000 * 32 * 0.02 + 1_000_000 * 1e-5) / 3600)
    assert rows[1]["time_ratio"] == pytest.approx(rows[1]["full_hours"] / rows[1]["puma_hours"])
