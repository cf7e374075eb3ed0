"""Yelp Open Dataset: ``yelp_academic_dataset_review.json`` and ``yelp_academic_dataset_business.json``
(JSON Lines despite the extension, plain or gzip).

Item text: "{name}, which is a business with {stars} stars rating based on {review_count} reviews.
It is categorized as {first <= 10 categories}." (the second sentence is left out when
``categories`` is null or empty). Businesses without a name are dropped and counted, as are
reviews of businesses missing from the business file. Review ``date`` ("YYYY-MM-DD HH:MM:SS",
naive) is stored as UTC epoch seconds.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from ..registry import Dataset, RawFormat, register_dataset
from .common import BadLines, FileRecord, RawData, find_file, open_lines, read_json_ratings, require_dir

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


def read_businesses(path: Path, bad: BadLines) -> tuple[dict[str, str], FileRecord, int]:
    """``business_id -> item text`` for named businesses, the file record and the count without a name."""
    record = FileRecord.stat(path)
    texts: dict[str, str] = {}
    unnamed = 0
    for lineno, line in open_lines(path, record, bad):
        try:
            obj = json.loads(line)
            bid = obj["business_id"]
            if not isinstance(bid, str) or not bid:
                raise ValueError("business_id missing")
        except (ValueError, KeyError, TypeError) as exc:
            bad.bad(lineno, f"{type(exc).__name__}: {str(exc)[:80]}")
            continue
        text = business_text(obj)
        if text is None:
            unnamed += 1
        else:
            texts[bid] = text
    return texts, record, unnamed


def read_yelp(raw_dir: str | Path | None, max_bad_fraction: float = 0.01, bad_lines_allowed: int = 0) -> RawData:
    """Stream the Yelp reviews, keeping user, business, stars and date of each."""
    folder = require_dir(raw_dir, "yelp", f"{REVIEW_NAMES[0]} and {BUSINESS_NAMES[0]}")
    business_path = find_file(folder, BUSINESS_NAMES, "yelp businesses")
    review_path = find_file(folder, REVIEW_NAMES, "yelp reviews")
    bad = BadLines(max_bad_fraction, allowed=bad_lines_allowed)
    texts, business_record, unnamed = read_businesses(business_path, bad)
    record = FileRecord.stat(review_path)
    users, items, cols, read, unknown = read_json_ratings(
        review_path, record, bad, ("user_id", "business_id", "stars", "date"), parse_date, texts)
    steps = [
        {"step": "businesses", "named": len(texts), "unnamed": unnamed},
        {"step": "read", "rows": read},
        {"step": "drop_unknown_businesses", "rows": len(cols), "dropped_rows": unknown, "users": len(users), "items": len(items)},
    ]
    return RawData("yelp", "rating", users.ids, items.ids, [texts[b] for b in items.ids], cols.to_numpy(),
                   [business_record, record], steps, bad.summary())


def raw_files(raw_dir: str | Path) -> list[Path]:
    """The files a read would use (for the cheap "did the raw data change" check)."""
    folder = Path(raw_dir).expanduser()
    out = []
    for names in (BUSINESS_NAMES, REVIEW_NAMES):
        out += [p for p in (folder / n for n in names) if p.is_file()][:1]
    return out


register_dataset(Dataset("yelp", "rating", "Yelp Open Dataset reviews and businesses (raw JSON Lines files)", "business",
                         raw=RawFormat(lambda d: raw_files(d.raw_dir), lambda d: read_yelp(d.raw_dir, d.max_bad_fraction, d.bad_lines_allowed))))
