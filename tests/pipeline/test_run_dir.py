"""RunDir: the one owner of stage folders and their config-keyed records."""

from __future__ import annotations

import json

from puma_lightning.pipeline.run_dir import RECORD_FILE, RunDir


def test_records_are_reused_only_with_their_key(tmp_path):
    runs = RunDir(tmp_path / "run")
    assert runs.read_record("source", "k1") is None
    written = runs.write_record("source", "k1", {"metrics": {"rmse": 1.0}})
    assert written == {"key": "k1", "metrics": {"rmse": 1.0}}
    assert json.loads((tmp_path / "run" / "source" / RECORD_FILE).read_text()) == written
    assert runs.read_record("source", "k1") == written
    assert runs.read_record("source", "k2") is None  # made with another config: recompute


def test_source_may_live_in_another_run_and_sub_runs_are_inside(tmp_path):
    runs = RunDir(tmp_path / "cell", source_dir=tmp_path / "shared" / "source")
    assert runs.stage("source") == tmp_path / "shared" / "source" and runs.stage("puma") == tmp_path / "cell" / "puma"
    assert runs.seed(2) == tmp_path / "cell" / "seed_2" and runs.sub("hop1_x") == tmp_path / "cell" / "hop1_x"


def test_of_reads_the_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"run_dir": "/x/run", "source_dir": None})
    assert RunDir.of(cfg).stage("source") == RunDir("/x/run").stage("source")
