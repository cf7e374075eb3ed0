"""MIND (small or large): ``behaviors.tsv`` and ``news.tsv`` in split folders ``train``/``dev``/``test``
(``MINDsmall_train`` etc. also accepted) or directly in ``data.raw_dir``.

Both files are tab-separated without a header and read with quoting disabled (titles may start
with a bare ``"``). ``behaviors.tsv``: impression id, user id, time ("%m/%d/%Y %I:%M:%S %p", taken
as UTC), history (space-separated news ids, may be empty), impressions ("N1-1 N2-0"). A line whose
impressions all lack the ``-label`` suffix is an unlabeled (test) impression: kept apart for
prediction, never used for metrics. One labeled sample per (user, impressed news): the label is 1
if the user clicked it in any impression, time, history and split are those of the latest one.
Histories are stored once per distinct (user, history) as lists of news indices.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from puma_lightning.errors import PumaError

from ..registry import Dataset, RawFormat, register_dataset
from .common import BadLines, Columns, FileRecord, IdMap, RawData, open_lines, require_dir

SPLIT_DIRS = (("train", 0), ("dev", 2), ("test", 2))
"""MIND split folders and the official split their labeled rows belong to (dev serves as test)."""
NEWS_COLUMNS = 8
BEHAVIOR_COLUMNS = 5
_EPOCH = datetime(1970, 1, 1)


def parse_time(text: str) -> int:
    """UTC epoch seconds of "%m/%d/%Y %I:%M:%S %p" (12 AM is midnight, 12 PM noon); ValueError otherwise."""
    try:
        date, clock, ampm = text.split(" ")
        month, day, year = (int(x) for x in date.split("/"))
        hour, minute, second = (int(x) for x in clock.split(":"))
    except ValueError:
        raise ValueError(f"bad time {text!r}") from None
    if ampm not in ("AM", "PM") or not 1 <= hour <= 12:
        raise ValueError(f"bad time {text!r}")
    hour = hour % 12 + (12 if ampm == "PM" else 0)
    return int((datetime(year, month, day, hour, minute, second) - _EPOCH).total_seconds())


def parse_impressions(field: str) -> tuple[list[str], list[int] | None]:
    """News ids and labels of an impressions field; labels None when the line is unlabeled."""
    tokens = field.split()
    if not tokens:
        raise ValueError("no impressions")
    if all("-" not in t for t in tokens):
        return tokens, None
    news, labels = [], []
    for token in tokens:
        nid, sep, label = token.rpartition("-")
        if not sep or not nid or label not in ("0", "1"):
            raise ValueError(f"bad impression token {token!r}")
        news.append(nid)
        labels.append(int(label))
    return news, labels


def find_splits(raw_dir: str | Path | None) -> list[tuple[str, Path, int]]:
    """``(split name, folder, official split code)`` for each folder holding ``behaviors.tsv``."""
    expected = "behaviors.tsv and news.tsv, directly or in train/ dev/ test/ sub-folders"
    folder = require_dir(raw_dir, "mind", expected)
    found: list[tuple[str, Path, int]] = []
    if (folder / "behaviors.tsv").is_file():
        found.append(("", folder, -1))
    for split, code in SPLIT_DIRS:
        for name in (split, f"MINDsmall_{split}", f"MINDlarge_{split}"):
            if (folder / name / "behaviors.tsv").is_file():
                found.append((split, folder / name, code))
                break
    if not found:
        raise PumaError(f"mind: no behaviors.tsv in {folder}; expected {expected}")
    for split, path, _ in found:
        if not (path / "news.tsv").is_file():
            raise PumaError(f"mind: {path} has behaviors.tsv but no news.tsv (both come in each MIND split folder)")
    return found


def _label(split: str, file: str) -> str:
    return f"{split}/{file}" if split else file


def read_news(path: Path, bad: BadLines, titles: dict[str, str], name: str | None = None) -> tuple[FileRecord, int]:
    """Add ``news id -> title`` from one news.tsv; returns its record and the count without a title."""
    record = FileRecord.stat(path)
    untitled = 0
    for lineno, line in open_lines(path, record, bad, name):
        try:
            fields = line.decode("utf-8").split("\t")
            if len(fields) != NEWS_COLUMNS:
                raise ValueError(f"{len(fields)} columns, expected {NEWS_COLUMNS}")
            if not fields[0]:
                raise ValueError("empty news id")
        except (ValueError, UnicodeDecodeError) as exc:
            bad.bad(lineno, f"{type(exc).__name__}: {str(exc)[:80]}")
            continue
        title = " ".join(fields[3].split())
        if title:
            titles.setdefault(fields[0], title)
        else:
            untitled += 1
    return record, untitled


def _dedupe_latest(arrays: dict[str, np.ndarray], n_items: int) -> dict[str, np.ndarray]:
    """One row per (user, item): the latest (time, then file order), label = max over the group."""
    n = len(arrays["user"])
    if n == 0:
        return arrays
    key = arrays["user"].astype(np.int64) * max(n_items, 1) + arrays["item"]
    order = np.lexsort((np.arange(n), arrays["timestamp"], key))
    sorted_key = key[order]
    last = np.flatnonzero(np.append(sorted_key[1:] != sorted_key[:-1], True))
    first = np.concatenate([[0], last[:-1] + 1])
    label = np.maximum.reduceat(arrays["label"][order], first)
    keep = np.sort(order[last])  # back to file order
    out = {k: v[keep] for k, v in arrays.items()}
    label_by_row = np.empty(n, dtype=arrays["label"].dtype)
    label_by_row[order[last]] = label
    out["label"] = label_by_row[keep]
    return out


def read_mind(raw_dir: str | Path | None, max_bad_fraction: float = 0.01, bad_lines_allowed: int = 0) -> RawData:
    """Stream MIND behaviors into click samples, unlabeled impressions and shared histories."""
    splits = find_splits(raw_dir)
    bad = BadLines(max_bad_fraction, allowed=bad_lines_allowed)
    titles: dict[str, str] = {}
    files: list[FileRecord] = []
    untitled = 0
    for split, folder, _ in splits:
        record, missing = read_news(folder / "news.tsv", bad, titles, _label(split, "news.tsv"))
        files.append(record)
        untitled += missing
    users, items = IdMap(), IdMap()
    cols = Columns(user="i", item="i", label="f", timestamp="q", history="i", origin="b")
    unlabeled = Columns(user="i", item="i", timestamp="q", history="i", impression="q")
    hist_index: dict[tuple[int, int], int] = {}
    hist_offsets, hist_items = Columns(o="q"), Columns(i="i")
    hist_offsets.append(o=0)
    counts = {"impressions": 0, "unlabeled_impressions": 0, "samples_read": 0, "untitled_candidates": 0,
              "untitled_history_news": 0}
    for split, folder, origin in splits:
        path = folder / "behaviors.tsv"
        record = FileRecord.stat(path)
        files.append(record)
        for lineno, line in open_lines(path, record, bad, _label(split, "behaviors.tsv")):
            try:
                fields = line.decode("utf-8").split("\t")
                if len(fields) != BEHAVIOR_COLUMNS:
                    raise ValueError(f"{len(fields)} columns, expected {BEHAVIOR_COLUMNS}")
                imp_id, user_id, time_text, history, impressions = fields
                if not user_id:
                    raise ValueError("empty user id")
                impression = int(imp_id)
                ts = parse_time(time_text)
                news, labels = parse_impressions(impressions)
            except (ValueError, UnicodeDecodeError) as exc:
                bad.bad(lineno, f"{type(exc).__name__}: {str(exc)[:80]}")
                continue
            user = users.get(user_id)
            hkey = (user, hash(history))
            hist = hist_index.get(hkey)
            if hist is None:
                hist = hist_index[hkey] = len(hist_index)
                for nid in history.split():
                    if nid in titles:
                        hist_items.append(i=items.get(nid))
                    else:
                        counts["untitled_history_news"] += 1
                hist_offsets.append(o=len(hist_items))
            counts["impressions"] += 1
            if labels is None:
                counts["unlabeled_impressions"] += 1
            for k, nid in enumerate(news):
                if nid not in titles:
                    counts["untitled_candidates"] += 1
                    continue
                if labels is None:
                    unlabeled.append(user=user, item=items.get(nid), timestamp=ts, history=hist, impression=impression)
                else:
                    counts["samples_read"] += 1
                    cols.append(user=user, item=items.get(nid), label=float(labels[k]), timestamp=ts, history=hist,
                                origin=origin)
    arrays = _dedupe_latest(cols.to_numpy(), len(items))
    extra = {"history_offsets": hist_offsets.to_numpy()["o"], "history_items": hist_items.to_numpy()["i"]}
    extra.update({f"unlabeled_{k}": v for k, v in unlabeled.to_numpy().items()})
    steps = [
        {"step": "news", "titled": len(titles), "untitled": untitled},
        {"step": "read", **counts, "users": len(users)},
        {"step": "one_sample_per_user_news", "rows": int(len(arrays["user"])), "users": int(len(np.unique(arrays["user"]))),
         "clicks": int(arrays["label"].sum())},
    ]
    return RawData("mind", "click", users.ids, items.ids, [titles[i] for i in items.ids], arrays, files, steps,
                   bad.summary(), extra)


def raw_files(raw_dir: str | Path) -> list[Path]:
    """The files a read would use (for the cheap "did the raw data change" check)."""
    found = find_splits(raw_dir)
    return [f / "news.tsv" for _, f, _ in found] + [f / "behaviors.tsv" for _, f, _ in found]


register_dataset(Dataset("mind", "click", "MIND news clicks: behaviors.tsv and news.tsv of the train/dev folders", "news_click",
                         raw=RawFormat(lambda d: raw_files(d.raw_dir), lambda d: read_mind(d.raw_dir, d.max_bad_fraction, d.bad_lines_allowed))))
