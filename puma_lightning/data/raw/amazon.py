"""Amazon Reviews 2023, Movies_and_TV: the review and meta JSON Lines files (plain or gzip), or the
official benchmark CSVs (``user_id,parent_asin,rating,timestamp,history``) plus the meta file.

Two modes (``data.preprocessing``):

- ``clean``: item text is the meta ``title`` (whitespace collapsed); items without a usable title
  (no meta line, null/empty/punctuation-only title) are dropped and counted; a ``parent_asin``
  repeated in the meta file keeps its first line (the repeats are counted); ratings outside 1..5 are
  malformed lines; timestamps are stored as whole seconds (a value below 1e11 is taken as seconds
  already). Exact duplicate reviews are dropped (and counted) by ``prepare``.
- ``paper``: what the authors' published script keeps, at the version :data:`PUBLISHED_SCRIPT` names
  (recorded as ``rules.follows`` in the manifest): the title map is built with the *last* meta line of
  a repeated ``parent_asin`` (``set_index(...).to_dict()``; repeats counted), a title is usable unless
  it is null/NaN or a string that is empty after ``str.strip()`` (``"   "``, ``"\\t"``, ``"\\u3000"`` are
  dropped; a non-string title survives as its ``str``) and is kept verbatim, every numeric rating
  survives (0.0 included) and so does every duplicate review and every negative (pre-1970) timestamp;
  timestamps stay in milliseconds, the unit the published "latest 85" ordering used.

Negative timestamps: ``paper`` keeps them (the published script never looks at the sign); ``clean``
counts them as malformed lines, as it does ratings outside 1..5: no Amazon review predates 1970, so
the value is broken, and ``clean`` drops and counts broken values rather than ordering rows by them.

Lines that do not parse are malformed in both modes (the published script would stop on them), and
so are reviews without a string ``user_id``/``parent_asin`` or a numeric rating/timestamp (the
script would carry a NaN: its item filter counts a row without ``user_id`` before the user filter
drops it, and it keeps a row without a rating with a NaN label). Timestamps outside int64 (or not
finite) are malformed too; a fractional one is truncated to an integer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..registry import Dataset, RawFormat, register_dataset
from .common import (BadLines, Columns, FileRecord, IdMap, RawData, find_file, open_lines, parse_any_rating, parse_rating,
                     read_json_ratings, require_dir)

CATEGORY = "Movies_and_TV"
REVIEW_NAMES = (f"{CATEGORY}.jsonl", f"{CATEGORY}.jsonl.gz")
META_NAMES = (f"meta_{CATEGORY}.jsonl", f"meta_{CATEGORY}.jsonl.gz")
CSV_SPLITS = (("train", 0), ("valid", 1), ("test", 2))
CSV_HEADER = ["user_id", "parent_asin", "rating", "timestamp", "history"]
PUBLISHED_SCRIPT = "https://github.com/Kimagure7/Dont-Start-Over/blob/30964e2/build_dataset/build_dataset_amazon.py"
"""The published preprocessing ``paper`` mode follows: repository, commit and path (the script at the
repository's HEAD when this was written; the first-commit notebook ``build_dataset_amazon.ipynb`` kept
whitespace-only titles). Recorded as ``rules.follows``; a processed folder made under another is prepared again.
The rules were read from the copies of this file at glimmeringlight/Dont-Start-Over c93471f and dfc1cf4, which
differ only in how they cut each user's 85 latest (``nlargest``; a (user, -time) sort then ``head``): both keep
the same rows, ties going to the earlier line (tests/data/test_preprocessing_pandas.py runs both)."""
INT64_MAX = 2**63 - 1


def clean_title(value: Any) -> str | None:
    """The title with whitespace collapsed, or None when it is not a usable string."""
    if not isinstance(value, str):
        return None
    title = " ".join(value.split())
    return title if any(ch.isalnum() for ch in title) else None


def paper_title(value: Any) -> str | None:
    """``paper`` mode: the title as the published script keeps it, verbatim; None when it is null/NaN
    (``dropna``) or a string that is empty after ``str.strip()`` (``ItemTitle.str.strip() != ''``; a
    non-string title gives NaN there, which is not ``''``, so it survives)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    return str(value)


def to_seconds(value: Any) -> int:
    """``clean``: epoch seconds from a millisecond (or, below 1e11, second) timestamp; ValueError if invalid
    or negative (a review before 1970 is a broken value)."""
    ts = to_raw_time(value)
    if ts < 0:
        raise ValueError(f"negative timestamp {value!r}")
    return ts // 1000 if ts >= 100_000_000_000 else ts


def to_raw_time(value: Any) -> int:
    """``paper``: the timestamp as the file has it (milliseconds in Amazon Reviews 2023), negative ones
    included; ValueError when it is not a finite number within int64."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"bad timestamp {value!r}")
    try:
        ts = int(float(value)) if isinstance(value, str) else int(value)
    except (OverflowError, ValueError):
        raise ValueError(f"timestamp {value!r} is not a finite number") from None
    if not -INT64_MAX - 1 <= ts <= INT64_MAX:
        raise ValueError(f"timestamp {value!r} is outside int64")
    return ts


def read_meta_titles(path: Path, bad: BadLines, paper: bool = False) -> tuple[dict[str, str], FileRecord, dict[str, Any]]:
    """``parent_asin -> title`` for meta lines with a usable title, the file record and counts.

    A ``parent_asin`` on several lines: ``clean`` keeps the first line, ``paper`` the last (as
    ``set_index("parent_asin")["title"].to_dict()`` does, even when the last one has no title); the
    repeats are counted either way."""
    record = FileRecord.stat(path)
    raw_titles: dict[str, str | None] = {}
    repeats = 0
    for lineno, line in open_lines(path, record, bad):
        try:
            obj = json.loads(line)
            asin = obj["parent_asin"]
            if not isinstance(asin, str) or not asin:
                raise ValueError("parent_asin missing")
        except (ValueError, KeyError, TypeError) as exc:
            bad.bad(lineno, f"{type(exc).__name__}: {str(exc)[:80]}")
            continue
        if asin in raw_titles:
            repeats += 1
            if not paper:
                continue
        raw_titles[asin] = (paper_title if paper else clean_title)(obj.get("title"))
    titles = {asin: title for asin, title in raw_titles.items() if title is not None}
    counts = {"meta_lines": record.lines - record.bad_lines, "meta_ids": len(raw_titles), "meta_titled": len(titles),
              "meta_untitled": len(raw_titles) - len(titles), "meta_repeated_ids": repeats,
              "meta_repeats_keep": "last" if paper else "first"}
    return titles, record, counts


def _finish(dataset: str, cols: Columns, users: IdMap, items: IdMap, titles: dict[str, str], files: list[FileRecord],
            bad: BadLines, read: int, no_title: int, meta_counts: dict[str, Any], paper: bool) -> RawData:
    arrays = cols.to_numpy()
    steps = [
        {"step": "meta", **meta_counts},
        {"step": "read", "rows": read, "rating_rule": "any number" if paper else "1..5",
         "timestamp_unit": "ms" if paper else "s"},
        {"step": "drop_untitled_items", "rows": len(cols), "dropped_rows": no_title, "users": len(users), "items": len(items)},
    ]
    rules = ({"latest_ties": "first", "paper_split": "floor_train", "follows": PUBLISHED_SCRIPT} if paper
             else {"paper_split": "floor_train"})
    return RawData(dataset, "rating", users.ids, items.ids, [titles[i] for i in items.ids], arrays, files, steps, bad.summary(),
                   rules=rules)


def read_amazon_reviews(raw_dir: str | Path | None, max_bad_fraction: float = 0.01, bad_lines_allowed: int = 0,
                        preprocessing: str = "clean") -> RawData:
    """Stream ``Movies_and_TV.jsonl[.gz]`` joined with the titles of ``meta_Movies_and_TV.jsonl[.gz]``."""
    folder = require_dir(raw_dir, "amazon-movies", f"{' or '.join(REVIEW_NAMES)} and {' or '.join(META_NAMES)}")
    meta_path = find_file(folder, META_NAMES, "amazon-movies meta")
    review_path = find_file(folder, REVIEW_NAMES, "amazon-movies reviews")
    paper = _is_paper(preprocessing)
    bad = BadLines(max_bad_fraction, allowed=bad_lines_allowed)
    titles, meta_record, meta_counts = read_meta_titles(meta_path, bad, paper)
    record = FileRecord.stat(review_path)
    users, items, cols, read, no_title = read_json_ratings(
        review_path, record, bad, ("user_id", "parent_asin", "rating", "timestamp"), to_raw_time if paper else to_seconds,
        titles, parse_any_rating if paper else parse_rating)
    return _finish("amazon-movies", cols, users, items, titles, [meta_record, record], bad, read, no_title, meta_counts, paper)


def _is_paper(preprocessing: str) -> bool:
    if preprocessing not in ("paper", "clean"):
        raise ValueError(f"preprocessing must be 'paper' or 'clean', got {preprocessing!r}")
    return preprocessing == "paper"


def read_amazon_csv(raw_dir: str | Path | None, max_bad_fraction: float = 0.01, bad_lines_allowed: int = 0,
                    preprocessing: str = "clean") -> RawData:
    """Read the official benchmark CSVs ``Movies_and_TV.{train,valid,test}.csv`` (train required) and
    the meta titles; ``origin`` keeps each row's official split. The ``history`` column is ignored
    (it is implied by the rows themselves)."""
    names = [f"{CATEGORY}.{s}.csv" for s, _ in CSV_SPLITS]
    folder = require_dir(raw_dir, "amazon-movies-csv", f"{', '.join(names)} and {' or '.join(META_NAMES)}")
    meta_path = find_file(folder, META_NAMES, "amazon-movies-csv meta")
    find_file(folder, (names[0],), "amazon-movies-csv")
    paper = _is_paper(preprocessing)
    bad = BadLines(max_bad_fraction, allowed=bad_lines_allowed)
    titles, meta_record, meta_counts = read_meta_titles(meta_path, bad, paper)
    rating_parser, time_parser = (parse_any_rating, to_raw_time) if paper else (parse_rating, to_seconds)
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
                rating = rating_parser(fields[2])
                ts = time_parser(fields[3])
            except (ValueError, UnicodeDecodeError) as exc:
                bad.bad(lineno, f"{type(exc).__name__}: {str(exc)[:80]}")
                continue
            read += 1
            if asin not in titles:
                no_title += 1
                continue
            cols.append(user=users.get(user), item=items.get(asin), label=rating, timestamp=ts, origin=code)
    return _finish("amazon-movies-csv", cols, users, items, titles, files, bad, read, no_title, meta_counts, paper)


def follows(dcfg: Any) -> str | None:
    """The published script a ``data`` config's read follows: :data:`PUBLISHED_SCRIPT` in ``paper`` mode."""
    return PUBLISHED_SCRIPT if dcfg.preprocessing == "paper" else None


def raw_files(raw_dir: str | Path, csv: bool = False) -> list[Path]:
    """The files a read would use (for the cheap "did the raw data change" check)."""
    folder = Path(raw_dir).expanduser()
    meta = [p for p in (folder / n for n in META_NAMES) if p.is_file()][:1]
    if csv:
        return meta + [folder / f"{CATEGORY}.{s}.csv" for s, _ in CSV_SPLITS if (folder / f"{CATEGORY}.{s}.csv").is_file()]
    return meta + [p for p in (folder / n for n in REVIEW_NAMES) if p.is_file()][:1]


register_dataset(Dataset("amazon-movies", "rating", "Amazon Reviews 2023 Movies_and_TV reviews + metadata (JSON Lines)", "movie_tv",
                         raw=RawFormat(lambda d: raw_files(d.raw_dir),
                                       lambda d: read_amazon_reviews(d.raw_dir, d.max_bad_fraction, d.bad_lines_allowed,
                                                                     d.preprocessing), follows)))
register_dataset(Dataset("amazon-movies-csv", "rating", "Amazon Reviews 2023 Movies_and_TV benchmark CSV splits + metadata",
                         "movie_tv",
                         raw=RawFormat(lambda d: raw_files(d.raw_dir, csv=True),
                                       lambda d: read_amazon_csv(d.raw_dir, d.max_bad_fraction, d.bad_lines_allowed,
                                                                 d.preprocessing), follows)))
