"""Distributed exactness (issue #7 item 5): under Lightning's DDP on the CPU (2 gloo processes)
evaluation covers every test row exactly once, so a bank's test metrics equal the single-process
ones; every rank selects the same users; only rank 0 writes the run's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from puma_lightning.data.batching import BucketBatchSampler

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
SMALL = ["prompt.epochs=1", "adapter.epochs=1", "baselines.full_retrain=false", "trainer.enable_progress_bar=false",
         "trainer.num_threads=1"]
DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m puma_lightning ARGS`` (DDP re-launches this command on every rank)."""
    proc = subprocess.run([sys.executable, "-m", "puma_lightning", *args], cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _metrics(stdout: str) -> dict[str, float]:
    """The JSON document the ``test`` command prints."""
    return json.loads(stdout[stdout.index("{"):stdout.rindex("}") + 1])


@pytest.mark.parametrize("n", [0, 1, 2, 3, 31, 32, 33, 65, 120, 257])
@pytest.mark.parametrize("batch", [1, 7, 32])
@pytest.mark.parametrize("world", [2, 3])
def test_eval_shards_cover_each_row_once_with_equal_batch_counts(n: int, batch: int, world: int) -> None:
    lengths = np.random.default_rng(n).integers(5, 30, n)
    samplers = [BucketBatchSampler(lengths, batch, shuffle=False, num_replicas=world, rank=r) for r in range(world)]
    shards = [list(s) for s in samplers]
    assert sorted(i for shard in shards for b in shard for i in b) == list(range(n))  # no padding duplicates
    assert [len(s) for s in samplers] == [len(shard) for shard in shards]
    assert all(0 < len(b) <= batch for shard in shards for b in shard)
    if n >= world * max(len(s) for s in shards):
        assert len({len(s) for s in shards}) == 1  # every rank runs the same number of eval steps


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("single")
    _cli("fit", "--config", SMOKE, *SMALL, f"run_dir={run_dir}")
    return run_dir


@pytest.mark.slow
def test_ddp_fit_writes_once_and_selects_the_same_users_on_every_rank(single_run: Path, tmp_path: Path) -> None:
    run_dir, dump = tmp_path / "ddp", tmp_path / "ranks"
    _cli("fit", "--config", SMOKE, *SMALL, *DDP, f"run_dir={run_dir}", env={"PUMA_RANK_DUMP_DIR": str(dump)})
    results = json.loads((run_dir / "results.json").read_text())
    from puma_lightning.pipeline.classic import REFERENCES

    llm = set(results["methods"]) - set(REFERENCES)
    assert llm == {"source", "random_init", "puma"}
    # the references of the task that need nothing beyond it (attribute_ridge needs item attributes)
    assert {n for n, r in REFERENCES.items() if r.task == results["task"] and r.needs is None} <= set(results["methods"])
    single = json.loads((single_run / "results.json").read_text())
    assert results["num_test_rows"] == single["num_test_rows"]
    for name, row in results["methods"].items():
        assert 0 < row["rmse"] < 4 and 0 < row["mae"] <= row["rmse"] + 1e-9, name
        # training samples are summed over the ranks (the training sampler pads ranks to equal length)
        assert row["train_samples"] >= single["methods"][name]["train_samples"], name
    per_rank = [json.loads((dump / f"selection.rank{r}.json").read_text()) for r in range(2)]
    assert per_rank[0] == per_rank[1]
    assert json.loads((run_dir / "selection.json").read_text())["user_ids"] == per_rank[0]
    for rel in ["config.yaml", "source/bank/manifest.json", "puma/adapter.safetensors", "puma/bank/manifest.json",
                "source/stage.json", "puma/stage.json", "random_init/stage.json"]:
        assert (run_dir / rel).is_file(), rel
    assert not list(run_dir.rglob(".*.tmp")), "temporary files left behind"
    assert not (run_dir / ".lock").exists()


@pytest.mark.slow
def test_ddp_test_metrics_equal_single_process(single_run: Path, tmp_path: Path) -> None:
    bank = single_run / "puma" / "bank"
    args = ["test", "--config", SMOKE, *SMALL, f"bank={bank}", "model=target", "split=test"]
    one = _metrics(_cli(*args, f"run_dir={tmp_path / 'one'}").stdout)
    two = _metrics(_cli(*args, *DDP, f"run_dir={tmp_path / 'two'}").stdout)
    assert set(one) == set(two) and {"rmse", "mae", "loss"} <= set(one)
    for key in ("rmse", "mae", "loss"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    # and the same numbers the fit recorded for this bank (single process, same evaluation)
    recorded = json.loads((single_run / "results.json").read_text())["methods"]["puma"]
    assert one["rmse"] == pytest.approx(recorded["rmse"], abs=1e-6)
    assert one["mae"] == pytest.approx(recorded["mae"], abs=1e-6)


def test_ddp_predict_writes_every_pair_as_one_process_does(single_run: Path, tmp_path: Path) -> None:
    """Each rank scores its shard of the pairs; the file rank 0 writes must hold all of them, in file order."""
    import csv

    from puma_lightning.cli.config_loader import load_config
    from puma_lightning.data.table import SPLIT_NAMES
    from puma_lightning.pipeline.builders import build_table

    table = build_table(load_config([SMOKE], SMALL).data, 0)
    rows = np.flatnonzero(table.split == SPLIT_NAMES["test"])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n" + "".join(f"{table.user_ids[table.user[r]]},{table.item_id_list()[table.item[r]]}\n"
                                             for r in rows), encoding="utf-8")
    args = ["predict", "--config", SMOKE, *SMALL, f"bank={single_run / 'puma' / 'bank'}", "model=target", f"pairs={pairs}"]
    _cli(*args, f"run_dir={tmp_path / 'one'}", f"out={tmp_path / 'one.csv'}")
    _cli(*args, *DDP, f"run_dir={tmp_path / 'two'}", f"out={tmp_path / 'two.csv'}")
    one, two = (list(csv.DictReader(open(tmp_path / f"{n}.csv", encoding="utf-8"))) for n in ("one", "two"))
    assert len(one) == len(rows) > 8 and [(r["user"], r["item"]) for r in two] == [(r["user"], r["item"]) for r in one]
    assert np.allclose([float(r["prediction"]) for r in two], [float(r["prediction"]) for r in one], atol=1e-5)


@pytest.mark.slow
def test_ddp_chain_finishes_with_complete_outputs(tmp_path: Path) -> None:
    run_dir = tmp_path / "chain"
    _cli("chain", "--config", str(ROOT / "configs" / "chain.yaml"), *SMALL, *DDP, f"run_dir={run_dir}",
         "chain.models=[tiny-llama,tiny-qwen2]", "data.n_users=24", "data.rows_per_user=8", "selection.budget=12")
    doc = json.loads((run_dir / "chain.json").read_text())
    assert [h["model"] for h in doc["hops"]] == ["tiny-llama", "tiny-qwen2"]
    assert 0 < doc["hops"][1]["migrated"]["rmse"] < 4
    for rel in ["chain.md", "chain.png", "hop0_tiny-llama/source/bank/manifest.json", "hop1_tiny-qwen2/puma/bank/manifest.json",
                "hop1_tiny-qwen2/puma/adapter.safetensors"]:
        assert (run_dir / rel).is_file(), rel
    assert not list(run_dir.rglob(".*.tmp")), "temporary files left behind"
    assert not (run_dir / ".lock").exists()


def test_topology_tables_and_plots_are_written_by_rank_zero_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes chain/aggregate/cold-start rank-safe: figures' writers skip every rank but 0."""
    from puma_lightning.pipeline.figures import bar_chart, line_plot, write_text

    def write_all(folder: Path) -> None:
        write_text(folder / "t.md", "x")
        line_plot(folder / "l.png", ["a", "b"], {"s": [1.0, 2.0]}, "rmse", "title")
        bar_chart(folder / "b.png", ["a", "b"], [1.0, 2.0], "rmse", "title")

    monkeypatch.setenv("RANK", "1")  # no process group: the rank comes from the environment
    (tmp_path / "r1").mkdir()
    write_all(tmp_path / "r1")
    assert list((tmp_path / "r1").iterdir()) == []
    monkeypatch.setenv("RANK", "0")
    (tmp_path / "r0").mkdir()
    write_all(tmp_path / "r0")
    assert sorted(p.name for p in (tmp_path / "r0").iterdir()) == ["b.png", "l.png", "t.md"]
