"""Yelp Open Dataset: ``yelp_academic_dataset_review.json`` and ``yelp_academic_dataset_business.json``
(JSON Lines despite the extension, plain or gzip).

Item text: "{name}, which is a business with {stars} stars rating based on {review_count} reviews.
It is categorized as {first <= 10 categories}." Reviews of businesses that are not kept are
dropped and counted. Review ``date`` ("YYYY-MM-DD HH:MM:SS", naive) is stored as UTC epoch seconds.

Two modes (``data.preprocessing``):

- ``clean``: a business is kept when its name is non-blank (a ``review_count`` of 0 or null
  ``categories`` are kept: the second sentence is then left out); the name's whitespace is
  collapsed and empty categories are skipped; a ``business_id`` on several lines keeps its first
  line (the repeats are counted); stars outside 1..5 are malformed lines. Exact duplicate reviews
  are dropped (and counted) by ``prepare``.
- ``paper``: the published rule: a business counts only if its ``name`` is non-blank,
  ``review_count > 0`` and ``categories`` is non-null and non-blank; the text is built as the
  notebook builds it (name verbatim, categories split on ``,`` and stripped, numbers printed as the
  pandas column holds them: ``10`` in an integer column, ``10.0`` once one value is missing or a
  float); a repeated ``business_id`` counts when any of its lines is valid and takes the text of the
  last valid one (a dict filled in file order); every review of a kept business survives, duplicates
  and any numeric ``stars`` included.

Lines that do not parse are malformed in both modes (the published notebook would stop on them).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from ..registry import Dataset, RawFormat, register_dataset
from .common import (BadLines, FileRecord, RawData, find_file, open_lines, parse_any_rating, parse_rating, read_json_ratings,
                     require_dir)

REVIEW_NAMES = ("yelp_academic_dataset_review.json", "yelp_academic_dataset_review.json.gz")
BUSINESS_NAMES = ("yelp_academic_dataset_business.json", "yelp_academic_dataset_business.json.gz")
MAX_CATEGORIES = 10
_EPOCH = datetime(1970, 1, 1)


def parse_date(value: Any) -> int:
    """UTC epoch seconds of a "YYYY-MM-DD HH:MM:SS" string; ValueError otherwise."""
    if not isinstance(value, str) or len(value) != 19:
        raise ValueError(f"bad date {value!r}")
    return int((datetime.fromisoformat(value) - _EPOCH).total_seconds())


def business_text(obj: dict[str, Any]) -> str | None:
    """The item text of one business line, or None when it has no usable name."""
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    name = " ".join(name.split())
    text = f"{name}, which is a business with {obj.get('stars')} stars rating based on {obj.get('review_count')} reviews."
    categories = obj.get("categories")
    if isinstance(categories, str):
        cats = [c.strip() for c in categories.split(",") if c.strip()][:MAX_CATEGORIES]
        if cats:
            text += f" It is categorized as {', '.join(cats)}."
    return text


def _missing(value: Any) -> bool:
    """What pandas reads as NaN from a JSON value: null/absent or a float NaN."""
    return value is None or (isinstance(value, float) and value != value)


def _nonblank(value: Any) -> bool:
    """The published ``pd.notna(x) and str(x).strip() != ''``."""
    return not _missing(value) and str(value).strip() != ""


def paper_valid(obj: dict[str, Any]) -> dict[str, bool]:
    """The published validity of one business line: non-blank name, ``review_count > 0``, non-blank categories."""
    count = obj.get("review_count")
    if _missing(count):
        valid_count = False
    elif isinstance(count, (int, float)):
        valid_count = count > 0
    else:
        raise ValueError(f"review_count {count!r} is not a number")  # the notebook's `x > 0` would stop here
    return {"name": _nonblank(obj.get("name")), "review_count": valid_count, "categories": _nonblank(obj.get("categories"))}


def column_text(values: list[Any]) -> Callable[[Any], str]:
    """How one value prints once pandas has made a column of ``values`` (int64, float64 or object)."""
    present = [v for v in values if not _missing(v)]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if numeric and len(present) == len(values) and all(isinstance(v, int) for v in present):
        return lambda v: str(int(v))
    if numeric:
        return lambda v: "nan" if _missing(v) else str(float(v))
    return lambda v: "nan" if _missing(v) else str(v)


def paper_business_text(obj: dict[str, Any], stars_text: Callable[[Any], str], count_text: Callable[[Any], str]) -> str:
    """The published description of a (valid) business."""
    cats = [c.strip() for c in str(obj["categories"]).split(",")][:MAX_CATEGORIES]
    text = f"{obj['name']}, which is a business with {stars_text(obj.get('stars'))} stars rating based on " \
           f"{count_text(obj.get('review_count'))} reviews."
    joined = ", ".join(cats)
    return text + (f" It is categorized as {joined}." if joined else "")


def read_businesses(path: Path, bad: BadLines, paper: bool = False) -> tuple[dict[str, str], FileRecord, dict[str, Any]]:
    """``business_id -> item text`` for the kept businesses, the file record and counts."""
    record = FileRecord.stat(path)
    texts: dict[str, str] = {}
    seen: set[str] = set()
    kept: dict[str, dict[str, Any]] = {}  # paper: the last valid line of each id
    stars, review_counts = [], []
    counts = {"lines": 0, "repeated_ids": 0, "dropped": 0}
    invalid = {"name": 0, "review_count": 0, "categories": 0}
    for lineno, line in open_lines(path, record, bad):
        try:
            obj = json.loads(line)
            bid = obj["business_id"]
            if not isinstance(bid, str) or not bid:
                raise ValueError("business_id missing")
            valid = paper_valid(obj) if paper else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            bad.bad(lineno, f"{type(exc).__name__}: {str(exc)[:80]}")
            continue
        counts["lines"] += 1
        repeat = bid in seen
        seen.add(bid)
        counts["repeated_ids"] += repeat
        if paper:
            stars.append(obj.get("stars"))
            review_counts.append(obj.get("review_count"))
            for key, ok in valid.items():
                invalid[key] += not ok
            if all(valid.values()):
                kept[bid] = {k: obj.get(k) for k in ("name", "stars", "review_count", "categories")}
            else:
                counts["dropped"] += 1
            continue
        if repeat:
            continue  # clean: the first line of an id wins
        text = business_text(obj)
        if text is None:
            counts["dropped"] += 1
            invalid["name"] += 1
        else:
            texts[bid] = text
    if paper:
        stars_text, count_text = column_text(stars), column_text(review_counts)
        texts = {bid: paper_business_text(obj, stars_text, count_text) for bid, obj in kept.items()}
    summary = {"business_lines": counts["lines"], "business_ids": len(seen), "kept": len(texts),
               "dropped_lines" if paper else "dropped_ids": counts["dropped"],
               "rule": "name, review_count > 0, categories" if paper else "name",
               **{f"invalid_{k}": v for k, v in invalid.items() if paper or k == "name"},
               "repeated_ids": counts["repeated_ids"], "repeats_keep": "last valid" if paper else "first"}
    return texts, record, summary


def read_yelp(raw_dir: str | Path | None, max_bad_fraction: float = 0.01, bad_lines_allowed: int = 0,
              preprocessing: str = "clean") -> RawData:
    """Stream the Yelp reviews, keeping user, business, stars and date of each."""
    if preprocessing not in ("paper", "clean"):
        raise ValueError(f"preprocessing must be 'paper' or 'clean', got {preprocessing!r}")
    paper = preprocessing == "paper"
    folder = require_dir(raw_dir, "yelp", f"{REVIEW_NAMES[0]} and {BUSINESS_NAMES[0]}")
    business_path = find_file(folder, BUSINESS_NAMES, "yelp businesses")
    review_path = find_file(folder, REVIEW_NAMES, "yelp reviews")
    bad = BadLines(max_bad_fraction, allowed=bad_lines_allowed)
    texts, business_record, business_counts = read_businesses(business_path, bad, paper)
    record = FileRecord.stat(review_path)
    users, items, cols, read, unknown = read_json_ratings(
        review_path, record, bad, ("user_id", "business_id", "stars", "date"), parse_date, texts,
        parse_any_rating if paper else parse_rating)
    steps = [
        {"step": "businesses", **business_counts},
        {"step": "read", "rows": read, "rating_rule": "any number" if paper else "1..5"},
        {"step": "drop_unknown_businesses", "rows": len(cols), "dropped_rows": unknown, "users": len(users), "items": len(items)},
    ]
    return RawData("yelp", "rating", users.ids, items.ids, [texts[b] for b in items.ids], cols.to_numpy(),
                   [business_record, record], steps, bad.summary(),
                   rules={"paper_split": "floor_valid_min1"})


def raw_files(raw_dir: str | Path) -> list[Path]:
    """The files a read would use (for the cheap "did the raw data change" check)."""
    folder = Path(raw_dir).expanduser()
    out = []
    for names in (BUSINESS_NAMES, REVIEW_NAMES):
        out += [p for p in (folder / n for n in names) if p.is_file()][:1]
    return out


register_dataset(Dataset("yelp", "rating", "Yelp Open Dataset reviews and businesses (raw JSON Lines files)", "business",
                         raw=RawFormat(lambda d: raw_files(d.raw_dir),
                                       lambda d: read_yelp(d.raw_dir, d.max_bad_fraction, d.bad_lines_allowed, d.preprocessing))))
