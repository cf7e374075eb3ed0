"""prepare_dataset / load_prepared: manifest contents, reuse, re-preparation, atomicity, run_prepare."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from omegaconf import OmegaConf

from puma_lightning.config import ExperimentConfig
from puma_lightning.data.prepare import prepare_dataset, processed_path, run_prepare
from puma_lightning.data.prepared import load_prepared
from puma_lightning.errors import PumaError
from tests.data.test_raw_amazon import make_fixture


def config(tmp_path, **data):
    cfg = OmegaConf.structured(ExperimentConfig)
    cfg.data = OmegaConf.merge(cfg.data, {"name": "amazon-movies", "raw_dir": str(tmp_path / "raw"),
                                          "processed_dir": str(tmp_path / "p"), "template": "movie_tv", **data})
    return cfg


def test_manifest_reuse_and_reprepare(tmp_path):
    make_fixture(tmp_path / "raw")
    cfg = config(tmp_path, min_user_ratings=5)
    path = prepare_dataset(cfg.data)
    manifest = json.loads((path / "manifest.json").read_text())
    files = {os.path.basename(f["path"]): f for f in manifest["files"]}
    raw = tmp_path / "raw" / "Movies_and_TV.jsonl"
    assert files["Movies_and_TV.jsonl"]["sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert files["Movies_and_TV.jsonl"]["size"] == raw.stat().st_size
    assert manifest["params"]["min_user_ratings"] == 5 and manifest["counts"]["users"] == 24
    assert [s["step"] for s in manifest["steps"]] == ["meta", "read", "drop_untitled_items", "drop_exact_duplicates",
                                                         "users_with_>=5", "final"]
    assert manifest["bad_lines"]["per_file"]["Movies_and_TV.jsonl"]["bad"] == 1
    stamp = (path / "manifest.json").stat().st_mtime_ns
    prepare_dataset(cfg.data)  # reused: nothing rewritten
    assert (path / "manifest.json").stat().st_mtime_ns == stamp
    cfg.data.min_user_ratings = 10  # other parameters: prepared again
    assert json.loads((prepare_dataset(cfg.data) / "manifest.json").read_text())["params"]["min_user_ratings"] == 10
    cfg.data.min_user_ratings = 5
    prepare_dataset(cfg.data)
    with open(raw, "a") as fh:  # the raw file changed: prepared again
        fh.write(json.dumps({"rating": 4.0, "parent_asin": "B001", "user_id": "NEW", "timestamp": 1}) + "\n")
    prepare_dataset(cfg.data)
    assert json.loads((path / "manifest.json").read_text())["steps"][1]["rows"] == manifest["steps"][1]["rows"] + 1
    cfg.data.raw_dir = None  # no raw files at hand: the processed copy is trusted
    assert len(load_prepared(cfg.data, 0)) == 24 * 10


def test_no_partial_output_and_errors(tmp_path):
    make_fixture(tmp_path / "raw")
    cfg = config(tmp_path, min_user_ratings=50)
    with pytest.raises(PumaError, match="no interactions left"):
        prepare_dataset(cfg.data)
    assert sorted(os.listdir(tmp_path)) == ["raw"]
    with pytest.raises(PumaError, match="'data.task' must be 'rating'"):
        load_prepared(config(tmp_path, task="click").data, 0)
    cfg = config(tmp_path, raw_dir=None)
    with pytest.raises(PumaError, match="set data.raw_dir"):
        prepare_dataset(cfg.data)


def test_default_location_and_split_and_subset(tmp_path, monkeypatch):
    make_fixture(tmp_path / "raw")
    monkeypatch.setenv("PUMA_CACHE", str(tmp_path / "cache"))
    cfg = config(tmp_path, processed_dir=None, max_users=10, max_rows_per_user=6)
    assert processed_path(cfg.data).parent == tmp_path / "cache" / "data"
    assert processed_path(cfg.data).name.startswith("amazon-movies-")
    table = load_prepared(cfg.data, seed=3)
    assert table.n_users == 10 and len(table) == 60
    assert set(table.meta["split"]["counts"]) == {"train", "valid", "test"}
    assert table.meta["split"]["counts"]["test"] == 10
    again = load_prepared(cfg.data, seed=3)
    assert again.user_ids == table.user_ids and (again.split == table.split).all()


def test_run_prepare_prints_summary(tmp_path, capsys):
    make_fixture(tmp_path / "raw")
    run_prepare(config(tmp_path))
    out = capsys.readouterr().out
    assert out.startswith("amazon-movies: 240 interactions, 24 users, 14 items")
    assert "Movies_and_TV.jsonl: 265 lines, 1 malformed (skipped)" in out
    assert "Movies_and_TV.jsonl:6: JSONDecodeError" in out


def test_a_few_bad_lines_in_a_small_file_are_tolerated_up_to_the_allowance():
    from pathlib import Path

    from puma_lightning.data.raw.common import BadLines

    for allowed, survives in ((0, False), (1, True)):
        bad = BadLines(0.01, allowed=allowed)
        bad.start(Path("small.jsonl"))
        for _ in range(20):  # 20 lines, 1 malformed: 5 % > 1 %
            bad.line()
        bad.bad(3, "not JSON")
        if survives:
            bad.finish()
        else:
            with pytest.raises(PumaError, match="bad_lines_allowed=0"):
                bad.finish()
