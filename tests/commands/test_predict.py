"""``predict``: scores (user, item) pairs with a bank exactly as ``test`` scores them, ranks candidates,
skips unknown ids with a count, and refuses a bank made on another model."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from puma_lightning.cli.main import main
from puma_lightning.cli.config_loader import load_config
from puma_lightning.pipeline.builders import build_table

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
FAST = ["prompt.epochs=1", "adapter.epochs=1", "data.n_users=20", "data.rows_per_user=8", "selection.budget=8",
        "baselines.random_init=false", "baselines.classic=false", "trainer.num_threads=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("predict")
    assert main(["fit", "--config", SMOKE, f"run_dir={run}", *FAST]) == 0
    return run


def _test_pairs(run: Path, path: Path, extra: list[tuple[str, str]] = ()) -> tuple[list[tuple[str, str]], np.ndarray]:
    table = build_table(load_config([SMOKE], [*FAST]).data, 0)
    preds = np.load(run / "puma" / "test_predictions.npz")
    pairs = [(table.user_ids[table.user[r]], table.item_id_list()[table.item[r]]) for r in preds["row"]]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("user,item\n" + "".join(f"{u},{i}\n" for u, i in [*pairs, *extra]))
    return pairs, preds["prediction"]


def _read(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path, encoding="utf-8")))


def test_predictions_equal_the_test_stage_and_unknown_ids_are_counted(run, tmp_path, capsys):
    pairs, expected = _test_pairs(run, tmp_path / "pairs.csv")
    _test_pairs(run, tmp_path / "pairs.csv", extra=[("nobody", pairs[0][1]), (pairs[0][0], "no-such-item")])
    out = tmp_path / "pred.csv"
    assert main(["predict", "--config", SMOKE, f"run_dir={tmp_path / 'r'}", *FAST, f"bank={run / 'puma' / 'bank'}", "model=target",
                 f"pairs={tmp_path / 'pairs.csv'}", f"out={out}"]) == 0
    rows = _read(out)
    assert [(r["user"], r["item"]) for r in rows] == pairs  # the two unknown rows skipped, file order kept
    assert np.allclose([float(r["prediction"]) for r in rows], expected, atol=1e-5)  # exactly what `test` scored
    dist = np.array([[float(r[f"p_{k}"]) for k in range(1, 6)] for r in rows])
    assert np.allclose(dist.sum(1), 1.0, atol=1e-4)
    printed = capsys.readouterr().out
    assert f"predicted {len(pairs)} of {len(pairs) + 2} pairs" in printed
    assert "unknown user 1 (first: ['nobody'])" in printed and "unknown item 1 (first: ['no-such-item'])" in printed


def test_top_k_ranks_each_users_candidates(run, tmp_path):
    pairs, expected = _test_pairs(run, tmp_path / "pairs.csv")
    out = tmp_path / "top.csv"
    assert main(["predict", "--config", SMOKE, f"run_dir={tmp_path / 'r'}", *FAST, f"bank={run / 'puma' / 'bank'}",
                 f"pairs={tmp_path / 'pairs.csv'}", f"out={out}", "top_k=1"]) == 0
    rows = _read(out)
    best = {}
    for (user, item), p in zip(pairs, expected):
        if user not in best or p > best[user][1]:
            best[user] = (item, p)
    assert {r["user"]: r["item"] for r in rows} == {u: i for u, (i, _) in best.items()} and {r["rank"] for r in rows} == {"1"}


def test_a_bank_of_another_model_and_bad_files_are_one_line_errors(run, tmp_path, capsys):
    _test_pairs(run, tmp_path / "pairs.csv")
    out = tmp_path / "never.csv"
    # the source bank (tiny-llama, width 32) on the target model (tiny-gemma3)
    assert main(["predict", "--config", SMOKE, f"run_dir={tmp_path / 'r'}", *FAST, f"bank={run / 'source' / 'bank'}",
                 "model=target", f"pairs={tmp_path / 'pairs.csv'}", f"out={out}"]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\nu1,\n", encoding="utf-8")
    assert main(["predict", "--config", SMOKE, f"run_dir={tmp_path / 'r'}", *FAST, f"bank={run / 'puma' / 'bank'}",
                 f"pairs={bad}", f"out={out}"]) == 2
    (tmp_path / "nohead.csv").write_text("person,thing\na,b\n", encoding="utf-8")
    assert main(["predict", "--config", SMOKE, f"run_dir={tmp_path / 'r'}", *FAST, f"bank={run / 'puma' / 'bank'}",
                 f"pairs={tmp_path / 'nohead.csv'}", f"out={out}"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 3 and f"{bad}:2" in errors[1] and "'user' and 'item'" in errors[2]
    assert not out.exists()


def test_parquet_pairs_in_and_parquet_predictions_out_equal_the_csv_path(run, tmp_path):
    import pyarrow as pa  # a test dependency (setup.cfg [test]): missing is a failure, not a skip
    import pyarrow.parquet as pq

    pairs, expected = _test_pairs(run, tmp_path / "pairs.csv")
    pq.write_table(pa.table({"user": [u for u, _ in pairs], "item": [i for _, i in pairs], "extra": list(range(len(pairs)))}),
                   str(tmp_path / "pairs.parquet"))
    common = ["predict", "--config", SMOKE, f"run_dir={tmp_path / 'r'}", *FAST, f"bank={run / 'puma' / 'bank'}", "model=target"]
    assert main([*common, f"pairs={tmp_path / 'pairs.parquet'}", f"out={tmp_path / 'pred.parquet'}"]) == 0
    assert main([*common, f"pairs={tmp_path / 'pairs.csv'}", f"out={tmp_path / 'pred.csv'}"]) == 0
    table = pq.read_table(str(tmp_path / "pred.parquet"))
    assert table.column_names == ["user", "item", "prediction", *[f"p_{k}" for k in range(1, 6)]]
    assert pa.types.is_floating(table.schema.field("prediction").type)
    assert list(zip(table.column("user").to_pylist(), table.column("item").to_pylist())) == pairs
    assert np.allclose(table.column("prediction").to_numpy(), expected, atol=1e-5)
    csv_rows = _read(tmp_path / "pred.csv")
    assert np.allclose(table.column("prediction").to_numpy(), [float(r["prediction"]) for r in csv_rows], atol=2e-6)


def test_a_damaged_parquet_file_is_one_line_error(run, tmp_path, capsys):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    code = main(["predict", "--config", SMOKE, f"run_dir={tmp_path / 'r'}", *FAST, f"bank={run / 'puma' / 'bank'}",
                 f"pairs={tmp_path / 'bad.parquet'}", f"out={tmp_path / 'o.parquet'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("error:") and "bad.parquet" in err[-1] and "Parquet" in err[-1]
    assert not (tmp_path / "o.parquet").exists()


def test_an_out_file_we_wrote_is_replaced_one_the_user_changed_needs_overwrite(run, tmp_path, capsys):
    _test_pairs(run, tmp_path / "pairs.csv")
    out = tmp_path / "pred.csv"
    args = ["predict", "--config", SMOKE, f"run_dir={tmp_path / 'r'}", *FAST, f"bank={run / 'puma' / 'bank'}", "model=target",
            f"pairs={tmp_path / 'pairs.csv'}", f"out={out}"]
    assert main(args) == 0
    first = out.read_bytes()
    assert main([*args, "top_k=1"]) == 0  # ours, unchanged since: replaced without asking
    assert out.read_bytes() != first and "rank" in out.read_text().splitlines()[0]
    out.write_text(out.read_text() + "a line the user added\n")
    edited = out.read_bytes()
    capsys.readouterr()
    assert main(args) == 2  # changed since we wrote it: no longer ours to replace
    assert "overwrite=true" in capsys.readouterr().err and out.read_bytes() == edited
    assert main([*args, "overwrite=true"]) == 0
    assert out.read_bytes() == first
