"""``seeds=[...]`` on chain, aggregate, cold-start and benchmarks/cost.py: each seed a whole run in
``seed_<s>/``, one table over seeds with mean ± std and paired intervals on the same test rows."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from benchmark_loader import load_benchmark

from puma_lightning.cli.main import main
from puma_lightning.pipeline.predictions import load_predictions
from puma_lightning.pipeline.seeds import SeedRow, SeedRun, summarise, to_markdown

ROOT = Path(__file__).resolve().parents[2]
CHAIN = str(ROOT / "configs" / "chain.yaml")
COLD = str(ROOT / "configs" / "cold_start.yaml")
AGG = str(ROOT / "configs" / "aggregate.yaml")
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TINY = ["trainer.num_threads=1", "data.n_users=16", "data.rows_per_user=8", "prompt.epochs=1", "adapter.epochs=1",
        "selection.budget=8"]


def _check_seeded(doc: dict, seeds: list[int], run_dir: Path) -> None:
    """Every row: per-seed values whose mean/std are the table's, and each seed folder a whole run."""
    assert doc["seeds"] == seeds
    for name, row in doc["methods"].items():
        values = [row["per_seed"][str(s)]["rmse"] for s in seeds]
        assert row["n_seeds"] == len(seeds), name
        assert row["rmse"]["mean"] == pytest.approx(np.mean(values)), name
        assert row["rmse"]["std"] == pytest.approx(np.std(values, ddof=1)), name
        for reference, by_metric in row["vs"].items():
            c = by_metric["rmse"]
            assert c["low"] <= c["high"] and c["verdict"] in ("better", "worse", "no difference"), (name, reference)
    for s in seeds:
        assert (run_dir / f"seed_{s}").is_dir()


@pytest.mark.slow
def test_chain_over_seeds(tmp_path):
    run = tmp_path / "chain"
    assert main(["chain", "--config", CHAIN, f"run_dir={run}", *TINY, "chain.models=[tiny-llama,tiny-qwen2]",
                 "seeds=[0,1]"]) == 0
    doc = json.loads((run / "chain.json").read_text())
    _check_seeded(doc, [0, 1], run)
    migrated = doc["methods"]["hop1 tiny-qwen2 migrated"]
    assert set(migrated["vs"]) == {"hop1 tiny-qwen2 full_retrain"}
    c = migrated["vs"]["hop1 tiny-qwen2 full_retrain"]["rmse"]
    # pooled over both seeds: the rows of the two seeds' test splits
    rows = sum(len(load_predictions(run / f"seed_{s}" / "hop1_tiny-qwen2" / "puma")["row"]) for s in (0, 1))
    assert c["rows"] == rows
    for s in (0, 1):  # each seed's own chain table, as a single run with seed=s writes it
        per_seed = json.loads((run / f"seed_{s}" / "chain.json").read_text())
        assert per_seed["hops"][1]["migrated"]["rmse"] == pytest.approx(migrated["per_seed"][str(s)]["rmse"])
    assert "| hop1 tiny-qwen2 migrated | hop1 tiny-qwen2 full_retrain |" in (run / "chain.md").read_text()


@pytest.mark.slow
def test_cold_start_over_seeds_compares_with_scratch(tmp_path):
    run = tmp_path / "cold"
    assert main(["cold-start", "--config", COLD, f"run_dir={run}", *TINY, "cold_start.finetune_epochs=1", "seeds=[0,1]"]) == 0
    doc = json.loads((run / "cold_start.json").read_text())
    _check_seeded(doc, [0, 1], run)
    assert set(doc["methods"]) == {"scratch", "map", "map_finetune", "mean_finetune"}
    assert doc["methods"]["scratch"]["vs"] == {}
    for name in ("map", "map_finetune", "mean_finetune"):
        assert set(doc["methods"][name]["vs"]) == {"scratch"}, name
        assert "retained" in doc["methods"][name] and "personal_gain" in doc["methods"][name], name
    assert "retained" not in doc["methods"]["scratch"]
    # the two seeds hold out other new users
    new = [json.loads((run / f"seed_{s}" / "cold_start.json").read_text())["new_user_ids"] for s in (0, 1)]
    assert new[0] != new[1]


@pytest.mark.slow
def test_aggregate_over_seeds_compares_with_full_retraining_and_each_source_alone(tmp_path):
    run = tmp_path / "agg"
    assert main(["aggregate", "--config", AGG, f"run_dir={run}", *TINY, "seeds=[0,1]"]) == 0
    doc = json.loads((run / "aggregate.json").read_text())
    _check_seeded(doc, [0, 1], run)
    rows = doc["methods"]
    assert "full retraining" in rows and rows["full retraining"]["vs"] == {}
    aggregated = next(name for name in rows if "+" in name)
    singles = sorted(name for name in rows if name.endswith(" alone"))
    assert len(singles) == 2
    assert set(rows[aggregated]["vs"]) == {"full retraining", *singles}  # merging against each source alone
    for single in singles:
        assert set(rows[single]["vs"]) == {"full retraining"}
    assert "retained" in rows[aggregated] and "personal_gain" in rows["full retraining"]
    # the difference to a single source is the pooled RMSE difference of the two stages' own predictions
    own = {name: [load_predictions(run / f"seed_{s}" / folder / "puma") for s in (0, 1)]
           for name, folder in ((aggregated, "aggregated"), (singles[0], f"single_0_{singles[0].split()[0]}"))}

    def pooled_rmse(parts: list) -> float:
        return float(np.sqrt(np.mean(np.concatenate([(p["prediction"] - p["label"]) ** 2 for p in parts]))))

    expected = pooled_rmse(own[aggregated]) - pooled_rmse(own[singles[0]])
    assert rows[aggregated]["vs"][singles[0]]["rmse"]["diff"] == pytest.approx(expected, abs=1e-9)


def test_cost_over_seeds(tmp_path):
    module = load_benchmark("cost")
    out = tmp_path / "cost"
    with contextlib.redirect_stdout(io.StringIO()):
        assert module.main(["--config", SMOKE, "--out", str(out), "--project", "", "prompt.epochs=1", "adapter.epochs=1",
                            "data.n_users=20", "data.rows_per_user=8", "selection.budget=8", "seeds=[0,1]"]) == 0
    doc = json.loads((out / "cost_seeds.json").read_text())
    _check_seeded(doc, [0, 1], out)
    puma = doc["methods"]["puma"]
    ratios = [json.loads((out / f"seed_{s}" / "cost.json").read_text())["wall_ratio"] for s in (0, 1)]
    assert puma["wall_ratio"]["mean"] == pytest.approx(np.mean(ratios))
    assert set(puma["vs"]) == {"full_retrain"}
    md = (out / "cost_seeds.md").read_text()
    assert "wall-time ratio (full / PUMA) over 2 seeds" in md and "| puma | full_retrain |" in md


@pytest.mark.slow
def test_seeds_on_a_command_without_them_is_a_one_line_error(tmp_path, capsys):
    assert main(["pretrain", "--config", SMOKE, f"run_dir={tmp_path}", "seeds=[0,1]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 'seeds' applies to fit") and "\n" not in err


def _rows_run(tmp_path: Path, seed: int, rows: np.ndarray, shift: float) -> SeedRun:
    """A hand-made seed: reference predicts the label + noise, ``better`` is closer by ``shift``."""
    rng = np.random.default_rng(seed)
    label = rng.integers(1, 6, size=len(rows)).astype(float)
    noise = rng.normal(0, 1, size=len(rows))
    out = {}
    for name, pred in (("ref", label + noise), ("better", label + noise * (1 - shift))):
        folder = tmp_path / f"s{seed}" / name
        folder.mkdir(parents=True)
        np.savez(folder / "test_predictions.npz", row=rows, user=rows % 7, prediction=pred, label=label)
        out[name] = folder
    return SeedRun("rating", {"ref": SeedRow({"rmse": 1.0, "mae": 1.0}, out["ref"]),
                              "better": SeedRow({"rmse": 0.5, "mae": 0.5}, out["better"], ["ref"])})


def test_a_clearly_better_row_is_better_and_unpaired_rows_say_so(tmp_path):
    runs = {s: _rows_run(tmp_path, s, np.arange(300), 0.5) for s in (0, 1)}
    doc = summarise(runs)
    assert doc["methods"]["better"]["vs"]["ref"]["rmse"]["verdict"] == "better"
    assert doc["methods"]["better"]["vs"]["ref"]["rmse"]["rows"] == 600
    # the same row tested on other rows in one seed: no interval, and the table says why
    other = tmp_path / "s0" / "better" / "test_predictions.npz"
    with np.load(other) as d:
        arrays = {k: d[k] for k in d.files}
    arrays["row"] = arrays["row"] + 1
    np.savez(other, **arrays)
    doc = summarise(runs)
    assert doc["methods"]["better"]["vs"] == {} and "other rows" in doc["methods"]["better"]["not_compared"]["ref"]
    assert "not paired: tested on other rows" in to_markdown(doc)
