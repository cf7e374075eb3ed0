"""Amazon Reviews 2023, Movies_and_TV: the review and meta JSON Lines files (plain or gzip), or the
official benchmark CSVs (``user_id,parent_asin,rating,timestamp,history``) plus the meta file.

Item text is the meta ``title`` (whitespace collapsed). Items without a usable title (no meta
line, null/empty title) are dropped and counted. Timestamps are milliseconds in these files and
are stored as whole seconds (a value below 1e11 is taken as seconds already).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..registry import Dataset, RawFormat, register_dataset
from .common import (BadLines, Columns, FileRecord, IdMap, RawData, find_file, open_lines, parse_rating, read_json_ratings,
                     require_dir)

CATEGORY = "Movies_and_TV"
REVIEW_NAMES = (f"{CATEGORY}.jsonl", f"{CATEGORY}.jsonl.gz")
META_NAMES = (f"meta_{CATEGORY}.jsonl", f"meta_{CATEGORY}.jsonl.gz")
CSV_SPLITS = (("train", 0), ("valid", 1), ("test", 2))
CSV_HEADER = ["user_id", "parent_asin", "rating", "timestamp", "history"]


def clean_title(value: Any) -> str | None:
    """The title with whitespace collapsed, or None when it is not a usable string."""
    if not isinstance(value, str):
        return None
    title = " ".join(value.split())
    return title if any(ch.isalnum() for ch in title) else None


def to_seconds(value: Any) -> int:
    """Epoch seconds from a millisecond (or, below 1e11, second) timestamp; ValueError if invalid."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"bad timestamp {value!r}")
    ts = int(float(value)) if isinstance(value, str) else int(value)
    if ts < 0:
        raise ValueError(f"negative timestamp {value!r}")
    return ts // 1000 if ts >= 100_000_000_000 else ts


def read_meta_titles(path: Path, bad: BadLines) -> tuple[dict[str, str], FileRecord, dict[str, int]]:
    """``parent_asin -> title`` for meta lines with a usable title, the file record and counts."""
    record = FileRecord.stat(path)
    titles: dict[str, str] = {}
    untitled = 0
    for lineno, line in open_lines(path, record, bad):
        try:
            obj = json.loads(line)
            asin = obj["parent_asin"]
            if not isinstance(asin, str) or not asin:
                raise ValueError("parent_asin missing")
        except (ValueError, KeyError, TypeError) as exc:
            bad.bad(lineno, f"{type(exc).__name__}: {str(exc)[:80]}")
            continue
        title = clean_title(obj.get("title"))
        if title is None:
            untitled += 1
        else:
            titles[asin] = title
    return titles, record, {"meta_lines": record.lines - record.bad_lines, "meta_titled": len(titles), "meta_untitled": untitled}


def _finish(dataset: str, cols: Columns, users: IdMap, items: IdMap, titles: dict[str, str], files: list[FileRecord],
            bad: BadLines, read: int, no_title: int, meta_counts: dict[str, int]) -> RawData:
    arrays = cols.to_numpy()
    steps = [
        {"step": "meta", **meta_counts},
        {"step": "read", "rows": read},
        {"step": "drop_untitled_items", "rows": len(cols), "dropped_rows": no_title, "users": len(users), "items": len(items)},
    ]
    return RawData(dataset, "rating", users.ids, items.ids, [titles[i] for i in items.ids], arrays, files, steps, bad.summary())


def read_amazon_reviews(raw_dir: str | Path | None, max_bad_fraction: float = 0.01, bad_lines_allowed: int = 0) -> RawData:
    """Stream ``Movies_and_TV.jsonl[.gz]`` joined with the titles of ``meta_Movies_and_TV.jsonl[.gz]``."""
    folder = require_dir(raw_dir, "amazon-movies", f"{' or '.join(REVIEW_NAMES)} and {' or '.join(META_NAMES)}")
    meta_path = find_file(folder, META_NAMES, "amazon-movies meta")
    review_path = find_file(folder, REVIEW_NAMES, "amazon-movies reviews")
    bad = BadLines(max_bad_fraction, allowed=bad_lines_allowed)
    titles, meta_record, meta_counts = read_meta_titles(meta_path, bad)
    record = FileRecord.stat(review_path)
    users, items, cols, read, no_title = read_json_ratings(
        review_path, record, bad, ("user_id", "parent_asin", "rating", "timestamp"), to_seconds, titles)
    return _finish("amazon-movies", cols, users, items, titles, [meta_record, record], bad, read, no_title, meta_counts)


def read_amazon_csv(raw_dir: str | Path | None, max_bad_fraction: float = 0.01, bad_lines_allowed: int = 0) -> RawData:
    """Read the official benchmark CSVs ``Movies_and_TV.{train,valid,test}.csv`` (train required) and
    the meta titles; ``origin`` keeps each row's official split. The ``history`` column is ignored
    (it is implied by the rows themselves)."""
    names = [f"{CATEGORY}.{s}.csv" for s, _ in CSV_SPLITS]
    folder = require_dir(raw_dir, "amazon-movies-csv", f"{', '.join(names)} and {' or '.join(META_NAMES)}")
    meta_path = find_file(folder, META_NAMES, "amazon-movies-csv meta")
    find_file(folder, (names[0],), "amazon-movies-csv")
    bad = BadLines(max_bad_fraction, allowed=bad_lines_allowed)
    titles, meta_record, meta_counts = read_meta_titles(meta_path, bad)
    files = [meta_record]
    users, items = IdMap(), IdMap()
    cols = Columns(user="i", item="i", label="f", timestamp="q", origin="b")
    read = no_title = 0
    for split, code in CSV_SPLITS:
        path = folder / f"{CATEGORY}.{split}.csv"
        if not path.is_file():
            continue
        record = FileRecord.stat(path)
        files.append(record)
        for lineno, line in open_lines(path, record, bad):
            try:
                fields = line.decode("utf-8").split(",")
                if lineno == 1 and fields[:4] == CSV_HEADER[:4]:
                    bad.per_file[path.name]["lines"] -= 1  # the header is not a data line
                    continue
                if len(fields) != len(CSV_HEADER):
                    raise ValueError(f"{len(fields)} columns, expected {len(CSV_HEADER)}")
                user, asin = fields[0], fields[1]
                if not user or not asin:
                    raise ValueError("empty user_id or parent_asin")
                rating = parse_rating(fields[2])
                ts = to_seconds(fields[3])
            except (ValueError, UnicodeDecodeError) as exc:
                bad.bad(lineno, f"{type(exc).__name__}: {str(exc)[:80]}")
                continue
            read += 1
            if asin not in titles:
                no_title += 1
                continue
            cols.append(user=users.get(user), item=items.get(asin), label=rating, timestamp=ts, origin=code)
    return _finish("amazon-movies-csv", cols, users, items, titles, files, bad, read, no_title, meta_counts)


def raw_files(raw_dir: str | Path, csv: bool = False) -> list[Path]:
    """The files a read would use (for the cheap "did the raw data change" check)."""
    folder = Path(raw_dir).expanduser()
    meta = [p for p in (folder / n for n in META_NAMES) if p.is_file()][:1]
    if csv:
        return meta + [folder / f"{CATEGORY}.{s}.csv" for s, _ in CSV_SPLITS if (folder / f"{CATEGORY}.{s}.csv").is_file()]
    return meta + [p for p in (folder / n for n in REVIEW_NAMES) if p.is_file()][:1]


register_dataset(Dataset("amazon-movies", "rating", "Amazon Reviews 2023 Movies_and_TV reviews + metadata (JSON Lines)", "movie_tv",
                         raw=RawFormat(lambda d: raw_files(d.raw_dir),
                                       lambda d: read_amazon_reviews(d.raw_dir, d.max_bad_fraction, d.bad_lines_allowed))))
register_dataset(Dataset("amazon-movies-csv", "rating", "Amazon Reviews 2023 Movies_and_TV benchmark CSV splits + metadata",
                         "movie_tv",
                         raw=RawFormat(lambda d: raw_files(d.raw_dir, csv=True),
                                       lambda d: read_amazon_csv(d.raw_dir, d.max_bad_fraction, d.bad_lines_allowed))))
