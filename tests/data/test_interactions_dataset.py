"""``data.name=interactions``: a user's own interaction log and items file, in every accepted format, through
``prepare`` and the split table; and every bad input stopping with one line that names the file, the line (or
row) and the column, before anything is written and without touching the inputs."""

from __future__ import annotations

import csv
import gzip
import io
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from puma_lightning.config import DataConfig
from puma_lightning.data.prepare import prepare_dataset, prepare_params, processed_path, run_prepare
from puma_lightning.data.processed import read_manifest
from puma_lightning.data.prepared import build_dataset_table
from puma_lightning.data.table import TEST, TRAIN, VALID
from puma_lightning.errors import PumaError

import pyarrow as pa  # noqa: E402  (the [test] extra installs it)
import pyarrow.parquet as pq  # noqa: E402

ITEMS = [("001", "Heat, a 1995 crime film"), ("002", "Amélie — le fabuleux destin"), ("003", 'Alien: "the" original'),
         ("004", "Spirited Away 千と千尋"), ("005", "Up")]
TEXTS = dict(ITEMS)
ROWS = [("007", "001", 5, 1000), ("007", "002", 4, 1010), ("007", "003", 3, 1020), ("007", "004", 2, 1030),
        ("u2", "002", 1, 2000), ("u2", "003", 2, 2001), ("u2", "004", 3, 2002), ("u2", "005", 4, 2003),
        ("u3", "001", 4, 3000), ("u3", "003", 5, 3001), ("u3", "004", 1, 3002), ("u3", "005", 2, 3003)]
FILE_ORDER = [11, 3, 5, 0, 8, 2, 7, 10, 1, 4, 9, 6]
"""The log's rows are written out of time order: the split must follow the timestamps, not the file."""
LOG_HEADER = ["user", "item", "stars", "timestamp"]


def text_table(header: list[str], rows: list[tuple], delimiter: str = ",") -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def write(path: Path, header: list[str], rows: list[tuple]) -> Path:
    """``rows`` under ``header`` in the format the name says (``.gz``: gzipped)."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith((".parquet", ".pq")):
        pq.write_table(pa.table({h: [r[k] for r in rows] for k, h in enumerate(header)}), path)
        return path
    if name.endswith((".jsonl", ".ndjson", ".json")):
        data = "".join(json.dumps(dict(zip(header, r)), ensure_ascii=False) + "\n" for r in rows)
    else:
        data = text_table(header, rows, "\t" if name.endswith(".tsv") else ",")
    raw = data.encode("utf-8")
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def log_rows(rows: list[tuple] = ROWS) -> list[tuple]:
    return [rows[k] for k in FILE_ORDER] if rows is ROWS else rows


def files(tmp_path: Path, log: str = "ratings.csv", items: str = "items.csv", rows: list[tuple] | None = None,
          header: list[str] = LOG_HEADER) -> tuple[Path, Path]:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    items_path = write(folder / items, ["item", "text"], ITEMS)
    log_path = write(folder / log, header, log_rows() if rows is None else rows)
    return log_path, items_path


def config(tmp_path: Path, log: Path, items: Path, **data) -> DictConfig:
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig),
                          {"name": "interactions", "interactions": str(log), "items": str(items), "valid_ratio": 0.25,
                           "test_ratio": 0.25, "processed_dir": str(tmp_path / "processed"), "columns": {"label": "stars"}})
    return OmegaConf.merge(cfg, data)


def as_dict(table) -> dict[tuple[str, str], tuple[float, int, int]]:
    items = table.item_ids
    return {(table.user_ids[u], items[i]): (float(y), int(t), int(s))
            for u, i, y, t, s in zip(table.user, table.item, table.label, table.timestamp, table.split)}


def expected_split(rows: list[tuple] = ROWS) -> dict[tuple[str, str], tuple[float, int, int]]:
    """Per user, by time: the two oldest rows train, then one valid, the latest test."""
    out = {}
    for user in dict.fromkeys(r[0] for r in rows):
        mine = sorted((r for r in rows if r[0] == user), key=lambda r: r[3])
        for k, (u, i, y, t) in enumerate(mine):
            out[(u, i)] = (float(y), t, (TRAIN, TRAIN, VALID, TEST)[k])
    return out


# -- every format ----------------------------------------------------------------------------------
@pytest.mark.parametrize("log,items", [("ratings.csv", "items.csv"), ("ratings.tsv", "items.tsv"),
                                       ("ratings.parquet", "items.parquet"), ("ratings.jsonl", "items.jsonl"),
                                       ("ratings.csv.gz", "items.csv.gz"), ("ratings.ndjson", "items.pq")])
def test_every_format_gives_the_same_split_table(tmp_path, log, items):
    log_path, items_path = files(tmp_path, log, items)
    table = build_dataset_table(config(tmp_path, log_path, items_path), 0)
    assert (table.n_users, table.n_items, len(table)) == (3, 5, 12)
    assert as_dict(table) == expected_split()
    assert {table.item_ids[k]: text for k, text in enumerate(table.item_texts)} == TEXTS
    assert "007" in table.user_ids and table.task == "rating" and table.meta["name"] == "interactions"


def test_a_gzipped_file_named_plain_csv_is_read(tmp_path):
    log_path, items_path = files(tmp_path)
    log_path.write_bytes(gzip.compress(log_path.read_bytes()))
    table = build_dataset_table(config(tmp_path, log_path, items_path), 0)
    assert as_dict(table) == expected_split()


def test_items_csv_with_quoted_commas_unicode_and_string_ids(tmp_path):
    log_path, items_path = files(tmp_path)
    assert '"Heat, a 1995 crime film"' in items_path.read_text(encoding="utf-8")  # a quoted comma, really
    table = build_dataset_table(config(tmp_path, log_path, items_path), 0)
    texts = {table.item_ids[k]: text for k, text in enumerate(table.item_texts)}
    assert texts["001"] == "Heat, a 1995 crime film" and texts["003"] == 'Alien: "the" original'
    assert texts["004"] == "Spirited Away 千と千尋"
    assert sorted(table.item_ids) == ["001", "002", "003", "004", "005"] and "007" in table.user_ids


def test_parquet_integer_ids_become_their_text(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    items = write(folder / "items.parquet", ["item", "text"], [(int(i), t) for i, t in ITEMS])
    rows = [({"007": 7, "u2": 2, "u3": 3}[u], int(i), y, t) for u, i, y, t in ROWS]
    log = write(folder / "ratings.parquet", LOG_HEADER, rows)
    table = build_dataset_table(config(tmp_path, log, items), 0)
    assert sorted(table.item_ids) == ["1", "2", "3", "4", "5"] and "7" in table.user_ids


@pytest.fixture
def far_from_utc(monkeypatch):
    """A local time zone far from UTC, so a naive date read as local time would show."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_timestamps_iso_epoch_floats_and_row_order(tmp_path, far_from_utc):
    rows = [("a", "001", 3, "2020-01-01T00:00:00"), ("a", "002", 4, "2020-01-01T01:00:00+01:00"),
            ("a", "003", 5, "1577836805.9"), ("a", "004", 1, "2020-01-01 00:00:03Z")]
    log, items = files(tmp_path, rows=rows)
    table = build_dataset_table(config(tmp_path, log, items), 0)
    base = int(datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp())
    got = {table.item_ids[i]: int(t) for i, t in zip(table.item, table.timestamp)}
    assert got == {"001": base, "002": base, "003": base + 5, "004": base + 3}
    # no time column: the file's row order is the time order
    log2 = write(tmp_path / "in" / "order.csv", ["user", "item", "stars"], [(u, i, y) for u, i, y, _ in log_rows()])
    table = build_dataset_table(config(tmp_path, log2, items, columns={"timestamp": None},
                                       processed_dir=str(tmp_path / "p2")), 0)
    order = {(table.user_ids[u], table.item_ids[i]): int(t) for u, i, t in zip(table.user, table.item, table.timestamp)}
    assert order == {(r[0], r[1]): k for k, r in enumerate(log_rows())}
    manifest = read_manifest(tmp_path / "p2")
    assert manifest["params"]["columns"]["timestamp"] is None
    assert [s for s in manifest["steps"] if s["step"] == "read"][0]["time"] == "row order"


def test_click_labels_accept_0_1_true_false_yes_no(tmp_path):
    rows = [("a", "001", "1", 1), ("a", "002", "false", 2), ("a", "003", "Yes", 3), ("a", "004", "0", 4),
            ("b", "001", "TRUE", 1), ("b", "002", "no", 2), ("b", "003", "1", 3)]
    log, items = files(tmp_path, rows=rows)
    table = build_dataset_table(config(tmp_path, log, items, task="click"), 0)
    got = {(table.user_ids[u], table.item_ids[i]): float(y) for u, i, y in zip(table.user, table.item, table.label)}
    assert got == {("a", "001"): 1, ("a", "002"): 0, ("a", "003"): 1, ("a", "004"): 0, ("b", "001"): 1,
                   ("b", "002"): 0, ("b", "003"): 1}
    assert table.task == "click" and read_manifest(tmp_path / "processed")["task"] == "click"


def test_bom_and_crlf_are_accepted(tmp_path):
    log, items = files(tmp_path)
    log.write_bytes(b"\xef\xbb\xbf" + log.read_bytes().replace(b"\n", b"\r\n"))
    items.write_bytes(b"\xef\xbb\xbf" + items.read_bytes().replace(b"\n", b"\r\n"))
    table = build_dataset_table(config(tmp_path, log, items), 0)
    assert as_dict(table) == expected_split()
    assert all("\r" not in t for t in table.item_texts) and "Up" in table.item_texts


def test_keep_latest_keeps_each_pairs_latest_row_and_counts_the_others(tmp_path):
    rows = log_rows() + [("007", "001", 2, 1500), ("u2", "002", 3, 2000)]  # later time; same time, later line
    log, items = files(tmp_path, rows=rows)
    cfg = config(tmp_path, log, items, duplicates="keep_latest")
    table = build_dataset_table(cfg, 0)
    got = as_dict(table)
    assert len(table) == 12 and got[("007", "001")][:2] == (2.0, 1500) and got[("u2", "002")][:2] == (3.0, 2000)
    step = [s for s in read_manifest(tmp_path / "processed")["steps"] if s["step"] == "duplicate_pairs"][0]
    assert step["policy"] == "keep_latest" and step["dropped_rows"] == 2 and step["rows"] == 12


def test_within_the_limit_bad_labels_unknown_and_untitled_items_are_dropped_and_counted(tmp_path, capsys):
    rows = log_rows() + [("u3", "002", 7, 3004), ("u3", "999", 4, 3005)]
    log, items = files(tmp_path, rows=rows)
    items.write_text(items.read_text(encoding="utf-8") + "006,\n", encoding="utf-8")
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("u3,006,4,3006\n")
    cfg = config(tmp_path, log, items)
    assert len(build_dataset_table(cfg, 0)) == 12
    manifest = read_manifest(tmp_path / "processed")
    assert manifest["bad_lines"]["per_file"]["ratings.csv"] == {"lines": 16, "bad": 1}
    assert manifest["bad_lines"]["examples"] == ["ratings.csv:14: label '7' outside 1-5 for data.task=rating (column 'stars')"]
    steps = {s["step"]: s for s in manifest["steps"]}
    assert steps["items"]["without_text"] == 1 and steps["drop_unknown_items"]["dropped_rows"] == 2
    run_prepare(OmegaConf.create({"data": cfg, "seed": 0}))
    out = capsys.readouterr().out
    assert out.startswith("interactions: 12 interactions, 3 users, 5 items") and "ratings.csv:14: label '7'" in out


def test_values_parse_or_say_why_not():
    from puma_lightning.data.raw.interactions import parse_id, parse_label, parse_time

    assert parse_id(" 007 ", "user id") == "007" and parse_id(42, "item id") == "42"
    for value in ("", "  ", None, 4.0, True):
        with pytest.raises(ValueError, match="user id"):
            parse_id(value, "user id")
    assert parse_label("1.0", "click") == 1.0 and parse_label(False, "click") == 0.0 and parse_label(" 4.5", "rating") == 4.5
    for value, task in (("2", "click"), ("", "click"), (0.5, "click"), ("0", "rating"), ("nan", "rating"), (True, "rating"),
                        ("x", "rating")):
        with pytest.raises(ValueError, match=f"data.task={task}"):
            parse_label(value, task)
    assert parse_time("-1.5") == -2 and parse_time(7.9) == 7 and parse_time("2020-01-01") == 1577836800
    assert parse_time(datetime(2020, 1, 1, 1, tzinfo=timezone.utc)) == 1577836800 + 3600
    for value in ("9" * 400, 10**400, float("nan"), "1e400", "yesterday", None, True):
        with pytest.raises(ValueError, match="time"):
            parse_time(value)


def test_a_jsonl_line_without_a_key_is_a_bad_line(tmp_path):
    log, items = files(tmp_path, "ratings.jsonl", "items.jsonl")
    with open(log, "a", encoding="utf-8") as fh:
        fh.write('{"user": "u3", "item": "002", "timestamp": 5}\n[1, 2]\n')
    table = build_dataset_table(config(tmp_path, log, items), 0)
    assert len(table) == 12
    assert read_manifest(tmp_path / "processed")["bad_lines"]["examples"] == [
        "ratings.jsonl:13: no key 'stars'", "ratings.jsonl:14: not a JSON object but list"]


# -- the cache ---------------------------------------------------------------------------------------
def test_prepare_reuses_its_folder_and_prepares_again_when_the_log_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("PUMA_CACHE", str(tmp_path / "cache"))
    log, items = files(tmp_path)
    cfg = config(tmp_path, log, items, processed_dir=None)
    path = prepare_dataset(cfg)
    assert path.parent == tmp_path / "cache" / "data" and path.name.startswith("interactions-")
    manifest = read_manifest(path)
    assert manifest["raw_dir"] == str(log.resolve()) and manifest["params"]["interactions"] == str(log.resolve())
    assert manifest["params"]["items"] == str(items.resolve()) and manifest["params"]["duplicates"] == "error"
    assert manifest["params"]["columns"] == {"user": "user", "item": "item", "label": "stars", "timestamp": "timestamp",
                                             "item_text": "text"}
    assert {Path(f["path"]).name for f in manifest["files"]} == {"ratings.csv", "items.csv"}
    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert prepare_dataset(cfg) == path and (path / "manifest.json").stat().st_mtime_ns == stamp  # reused
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("u4,001,3,4000\n")
    assert prepare_dataset(cfg) == path
    assert read_manifest(path)["counts"]["rows"] == 13 and (path / "manifest.json").stat().st_mtime_ns != stamp
    other = write(tmp_path / "in" / "other.csv", LOG_HEADER, log_rows())  # another log: its own folder
    assert processed_path(config(tmp_path, other, items, processed_dir=None)) != path
    assert processed_path(config(tmp_path, log, items, processed_dir=None, task="click")) != path


def test_the_builtin_datasets_keep_their_cache_keys(tmp_path):
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "yelp", "raw_dir": str(tmp_path)})
    assert set(prepare_params(cfg)) == {"format", "dataset", "preprocessing", "min_item_ratings", "min_user_ratings",
                                        "kcore", "max_rows_per_user"}


# -- bad input: one line, nothing written, inputs untouched -----------------------------------------
def fails(tmp_path: Path, cfg: DictConfig, *parts: str) -> str:
    inputs = [Path(cfg.interactions or "."), Path(cfg["items"])]  # (cfg.items is DictConfig's method)
    before = {p: p.read_bytes() for p in inputs if p.is_file()}
    with pytest.raises(PumaError) as info:
        prepare_dataset(cfg)
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    assert not (tmp_path / "processed").exists()
    assert {p: p.read_bytes() for p in inputs if p.is_file()} == before
    return message


def test_a_parquet_file_named_csv_and_a_csv_named_parquet(tmp_path):
    log, items = files(tmp_path, "ratings.csv")
    write(tmp_path / "in" / "real.parquet", LOG_HEADER, log_rows())
    log.write_bytes((tmp_path / "in" / "real.parquet").read_bytes())
    fails(tmp_path, config(tmp_path, log, items), "ratings.csv", "looks like a Parquet file", ".parquet")
    fake = tmp_path / "in" / "ratings.parquet"
    fake.write_text(text_table(LOG_HEADER, log_rows()), encoding="utf-8")
    fails(tmp_path, config(tmp_path, fake, items), "ratings.parquet", "not a Parquet file")


def test_a_missing_column_names_the_file_the_key_and_the_header(tmp_path):
    log, items = files(tmp_path)
    fails(tmp_path, config(tmp_path, log, items, columns={"label": "rating"}), "ratings.csv", "'rating'",
          "data.columns.label", "user, item, stars, timestamp")
    fails(tmp_path, config(tmp_path, log, items, columns={"item_text": "title"}), "items.csv", "'title'",
          "data.columns.item_text", "item, text")
    jlog, jitems = files(tmp_path, "ratings.jsonl", "items.jsonl")
    fails(tmp_path, config(tmp_path, jlog, jitems, columns={"user": "user_id"}), "ratings.jsonl:1", "data.columns.user")
    plog, pitems = files(tmp_path, "ratings.parquet", "items.parquet")
    fails(tmp_path, config(tmp_path, plog, pitems, columns={"timestamp": "time"}), "ratings.parquet", "'time'",
          "data.columns.timestamp")


def test_an_empty_file_and_a_header_only_file(tmp_path):
    log, items = files(tmp_path)
    log.write_bytes(b"")
    fails(tmp_path, config(tmp_path, log, items), "ratings.csv", "empty")
    log.write_text("user,item,stars,timestamp\n", encoding="utf-8")
    fails(tmp_path, config(tmp_path, log, items), "ratings.csv", "no rows")


def test_duplicate_pairs_under_error_name_both_lines(tmp_path):
    rows = log_rows() + [("007", "001", 2, 1500)]
    log, items = files(tmp_path, rows=rows)
    first = 2 + log_rows().index(("007", "001", 5, 1000))
    fails(tmp_path, config(tmp_path, log, items), "ratings.csv", f"lines {first} and 14", "user '007'", "item '001'",
          "data.duplicates=keep_latest")
    plog = write(tmp_path / "in" / "ratings.parquet", LOG_HEADER, rows)
    fails(tmp_path, config(tmp_path, plog, items), "ratings.parquet", f"rows {first - 1} and 13")


def test_rating_labels_out_of_range_beyond_the_limit(tmp_path):
    rows = log_rows()
    rows[5] = (*rows[5][:2], 7, rows[5][3])
    log, items = files(tmp_path, rows=rows)
    fails(tmp_path, config(tmp_path, log, items, bad_lines_allowed=0),
          "ratings.csv:7: label '7' outside 1-5 for data.task=rating (column 'stars')", "data.bad_lines_allowed=0")
    plog = write(tmp_path / "in" / "ratings.parquet", LOG_HEADER, rows)
    fails(tmp_path, config(tmp_path, plog, items, bad_lines_allowed=0), "ratings.parquet:row 6: label '7'")


def test_click_labels_that_are_not_0_1(tmp_path):
    rows = [(u, i, 1 if y > 3 else 0, t) for u, i, y, t in log_rows()]
    rows[2] = (*rows[2][:2], 2, rows[2][3])
    log, items = files(tmp_path, rows=rows)
    fails(tmp_path, config(tmp_path, log, items, task="click", bad_lines_allowed=0),
          "ratings.csv:4: label '2' is not 0/1", "data.task=click", "(column 'stars')")


def test_unknown_items_beyond_the_limit(tmp_path):
    rows = log_rows() + [("u9", "999", 3, 9000 + k) for k in range(3)]
    log, items = files(tmp_path, rows=rows)
    fails(tmp_path, config(tmp_path, log, items, bad_lines_allowed=2), "ratings.csv", "3 of 15 rows",
          "item '999' at ratings.csv:14", "items.csv")


def test_items_without_text_beyond_the_limit(tmp_path):
    log, items = files(tmp_path)
    items.write_text("item,text\n001,Heat\n002,\n003,  \n004,Up\n005,Alien\n", encoding="utf-8")
    fails(tmp_path, config(tmp_path, log, items, bad_lines_allowed=1), "items.csv", "2 of 5 items have no text",
          "item '002' at items.csv:3", "data.columns.item_text")


def test_an_unknown_extension_and_unset_files(tmp_path):
    log, items = files(tmp_path)
    xlsx = tmp_path / "in" / "ratings.xlsx"
    xlsx.write_bytes(log.read_bytes())
    fails(tmp_path, config(tmp_path, xlsx, items), "ratings.xlsx", "'.xlsx'", ".csv", ".parquet", ".jsonl")
    fails(tmp_path, config(tmp_path, log, items, interactions=None), "set data.interactions=FILE")
    fails(tmp_path, config(tmp_path, tmp_path / "in" / "nope.csv", items), "nope.csv", "does not exist")


def test_a_csv_with_a_bad_field_count_or_bytes_is_a_bad_line(tmp_path):
    log, items = files(tmp_path)
    with open(log, "ab") as fh:
        fh.write(b"u3,001,4\n" + b"u3,\xff\xfe,4,5\n")
    fails(tmp_path, config(tmp_path, log, items, bad_lines_allowed=1), "ratings.csv:14: 3 fields where the header has 4",
          "ratings.csv:15: not UTF-8")


def test_cli_prepare_reuses_and_a_bad_file_is_one_error_line(tmp_path, capsys, monkeypatch):
    from puma_lightning.cli.main import main

    monkeypatch.setenv("PUMA_CACHE", str(tmp_path / "cache"))
    log, items = files(tmp_path)
    yaml = tmp_path / "mine.yaml"
    yaml.write_text(f"data:\n  name: interactions\n  interactions: {log}\n  items: {items}\n  template: movie\n"
                    f"  processed_dir: {tmp_path / 'processed'}\n  columns:\n    label: stars\n", encoding="utf-8")
    assert main(["prepare", "--config", str(yaml)]) == 0
    assert capsys.readouterr().out.startswith("interactions: 12 interactions, 3 users, 5 items")
    stamp = (tmp_path / "processed" / "manifest.json").stat().st_mtime_ns
    assert main(["prepare", "--config", str(yaml)]) == 0
    assert (tmp_path / "processed" / "manifest.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    write(log, LOG_HEADER, log_rows() + [("007", "001", 2, 1500)])
    assert main(["prepare", "--config", str(yaml), f"data.processed_dir={tmp_path / 'p2'}"]) == 2
    err = capsys.readouterr().err  # (the CLI's log lines may come before it)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: ratings.csv: user '007' has item '001'")
    assert "Traceback" not in err and not (tmp_path / "p2").exists()
