"""MIND (small or large): ``behaviors.tsv`` and ``news.tsv`` in split folders ``train``/``dev``/``test``
(``MINDsmall_train`` etc. also accepted) or directly in ``data.raw_dir``.

Both files are tab-separated without a header and read with quoting disabled (titles may start
with a bare ``"``). ``behaviors.tsv``: impression id, user id, time ("%m/%d/%Y %I:%M:%S %p", taken
as UTC), history (space-separated news ids, may be empty), impressions ("N1-1 N2-0"). A line whose
impressions all lack the ``-label`` suffix is an unlabeled (test) impression: kept apart for
prediction, never used for metrics. One labeled sample per (user, impressed news): the label is 1
if the user clicked it in any impression, time, history and split are those of the latest one.
Histories are stored once per distinct (user, history) as lists of news indices.

The ``news.tsv`` files of all given split folders are pooled (the first title of an id wins), so a
split folder without its own ``news.tsv`` works when its ids resolve through the others; an impressed
news id that resolves to no title is a dropped, counted row, and more of them in a behaviors file
than the bad-line limits allow (``data.max_bad_fraction`` of its impressed ids and more than
``data.bad_lines_allowed``) stops ``prepare`` with an error naming the file.

``data.preprocessing=paper`` runs the authors' published chain instead (:func:`read_mind_paper`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from puma_lightning.errors import PumaError

from ..registry import Dataset, RawFormat, register_dataset
from .common import BadLines, Columns, FileRecord, IdMap, RawData, RawFileError, open_lines, require_dir

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
    if not any((path / "news.tsv").is_file() for _, path, _ in found):
        raise PumaError(f"mind: no news.tsv in {', '.join(str(p) for _, p, _ in found)}; the titles come from the "
                        "news.tsv files of the split folders (pooled)")
    return found


def _news_files(splits: list[tuple[str, Path, int]]) -> list[tuple[str, Path]]:
    """``(report name, path)`` of the news.tsv files that exist, in split order (the pool's precedence)."""
    return [(_label(split, "news.tsv"), folder / "news.tsv") for split, folder, _ in splits if (folder / "news.tsv").is_file()]


def check_unresolved(name: str, unresolved: int, total: int, bad: BadLines, news_names: list[str]) -> None:
    """Stop when more impressed ids of one behaviors file resolve to no title than the bad-line limits allow."""
    if unresolved and unresolved > max(bad.max_fraction * total, bad.allowed):
        raise RawFileError(f"{name}: {unresolved} of {total} impressed news ids have no title in the pooled "
                           f"{', '.join(news_names)} (more than data.max_bad_fraction={bad.max_fraction:g} and more "
                           f"than data.bad_lines_allowed={bad.allowed}); is a news.tsv missing?")


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
    news_files = _news_files(splits)
    for name, path in news_files:
        record, missing = read_news(path, bad, titles, name)
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
        file_candidates = file_unresolved = 0
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
            file_candidates += len(news)
            for k, nid in enumerate(news):
                if nid not in titles:
                    counts["untitled_candidates"] += 1
                    file_unresolved += 1
                    continue
                if labels is None:
                    unlabeled.append(user=user, item=items.get(nid), timestamp=ts, history=hist, impression=impression)
                else:
                    counts["samples_read"] += 1
                    cols.append(user=user, item=items.get(nid), label=float(labels[k]), timestamp=ts, history=hist,
                                origin=origin)
        check_unresolved(_label(split, "behaviors.tsv"), file_unresolved, file_candidates, bad, [n for n, _ in news_files])
    arrays = _dedupe_latest(cols.to_numpy(), len(items))
    extra = {"history_offsets": hist_offsets.to_numpy()["o"], "history_items": hist_items.to_numpy()["i"]}
    extra.update({f"unlabeled_{k}": v for k, v in unlabeled.to_numpy().items()})
    steps = [
        {"step": "news", "files": [n for n, _ in news_files], "pooled": True, "titled": len(titles), "untitled": untitled},
        {"step": "read", **counts, "users": len(users)},
        {"step": "one_sample_per_user_news", "rows": int(len(arrays["user"])), "users": int(len(np.unique(arrays["user"]))),
         "clicks": int(arrays["label"].sum())},
    ]
    return RawData("mind", "click", users.ids, items.ids, [titles[i] for i in items.ids], arrays, files, steps,
                   bad.summary(), extra, rules={"paper_split": "official"})


# -- data.preprocessing=paper: the authors' published chain ---------------------------------------
PANDAS_NA = frozenset(["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                       "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"])
"""Field values ``pandas.read_csv`` turns into NaN by default (a news title ``None`` has no title there)."""


@dataclass(frozen=True)
class PaperChain:
    """The constants of the published MIND chain (``build_dataset_mind.ipynb``)."""

    min_history: int = 7
    """Keep users with a history of at least this many ids in some impression of *both* splits."""
    min_train_rows: int = 20
    """... then users with at least this many train rows (one per impressed news) ..."""
    min_train_clicks: int = 4
    """... and at least this many train clicks."""
    train_cap: int = 60
    """At most this many train rows per user, at most half of them clicks (``n_pos = min(pos, cap // 2)``)."""
    valid_cap: int = 20
    """The same cap on the valid (dev) rows."""
    history_titles: int = 5
    """Up to this many history titles sampled per row (``random.sample`` after ``random.seed(seed)``)."""
    max_history_chars: int = 512
    """Drop rows whose sampled titles, joined by a space, are longer than this."""
    min_valid_rows: int = 10
    """Keep users with at least this many valid rows left."""
    max_users: int = 50_000
    """Then sample at most this many users (``random.sample`` after ``random.seed(seed)``)."""
    seed: int = 42
    """The published seed of every draw (pandas ``sample(random_state=seed)``, ``random.seed(seed)``)."""


def pandas_tsv_records(lines: Iterator[tuple[int, bytes]], bad: BadLines) -> Iterator[tuple[int, list[str]]]:
    """Tab-separated records split as ``pandas.read_csv(sep="\t")`` splits them with its default quoting:
    a field that *starts* with ``"`` is quoted (tabs and newlines inside it are kept, ``""`` is one
    quote, characters after the closing quote are appended), a ``"`` anywhere else is literal. MIND's
    ``news.tsv`` has titles starting with a quote, and the published notebook reads it this way."""
    fields: list[str] = []
    field: list[str] = []
    state = "start"  # start | field | quoted | quote_in_quoted
    first = 0
    for lineno, raw in lines:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.bad(lineno, f"UnicodeDecodeError: {str(exc)[:80]}")
            continue
        if state == "start" and not fields and '"' not in text:
            yield lineno, text.split("\t")  # the fast path: no quote at all
            continue
        if state == "quoted":
            field.append("\n")  # a quoted field spans the line break
        else:
            first = lineno
        for ch in text:
            if state == "quoted":
                if ch == '"':
                    state = "quote_in_quoted"
                else:
                    field.append(ch)
            elif state == "quote_in_quoted":
                if ch == '"':
                    field.append('"')
                    state = "quoted"
                elif ch == "\t":
                    fields.append("".join(field))
                    field, state = [], "start"
                else:
                    field.append(ch)
                    state = "field"
            elif ch == "\t":
                fields.append("".join(field))
                field, state = [], "start"
            elif state == "start" and ch == '"':
                state = "quoted"
            else:
                field.append(ch)
                state = "field"
        if state != "quoted":
            fields.append("".join(field))
            yield first, fields
            fields, field, state = [], [], "start"
    if state == "quoted" or fields:
        fields.append("".join(field))
        yield first, fields


def read_news_paper(path: Path, bad: BadLines, titles: dict[str, str | None], name: str) -> tuple[FileRecord, dict[str, int]]:
    """Add ``news id -> title`` (None: pandas would read NaN) from one news.tsv, parsed as pandas parses it;
    the first line of an id wins (``drop_duplicates(keep="first")`` over the pooled files)."""
    record = FileRecord.stat(path)
    counts = {"lines": 0, "repeated_ids": 0, "nan_titles": 0}
    for lineno, fields in pandas_tsv_records(open_lines(path, record, bad, name), bad):
        if len(fields) > NEWS_COLUMNS or not fields[0] or fields[0] in PANDAS_NA:
            bad.bad(lineno, f"ValueError: {len(fields)} fields, expected at most {NEWS_COLUMNS} and a news id"
                    if len(fields) > NEWS_COLUMNS else "ValueError: empty news id")
            continue
        counts["lines"] += 1
        title = fields[3] if len(fields) > 3 and fields[3] not in PANDAS_NA else None
        counts["nan_titles"] += title is None
        if fields[0] in titles:
            counts["repeated_ids"] += 1
        else:
            titles[fields[0]] = title
    return record, counts


def _paper_splits(raw_dir: str | Path | None) -> tuple[list[tuple[str, Path, int]], list[str]]:
    """The train and dev folders (both required; test is not used by the published chain)."""
    found = find_splits(raw_dir)
    by_name = {split: (split, folder, code) for split, folder, code in found}
    missing = [s for s in ("train", "dev") if s not in by_name]
    if missing:
        raise PumaError(f"mind: data.preprocessing=paper needs train/ and dev/ split folders with behaviors.tsv "
                        f"(missing: {', '.join(missing)}); use data.preprocessing=clean for other layouts")
    return [(s, by_name[s][1], o) for s, o in (("train", 0), ("dev", 1))], [s or "." for s in by_name if s not in ("train", "dev")]


def _parse_behavior(fields: list[str]) -> tuple[str, int, list[str], list[str], list[int]]:
    if len(fields) != BEHAVIOR_COLUMNS:
        raise ValueError(f"{len(fields)} columns, expected {BEHAVIOR_COLUMNS}")
    _, user_id, time_text, history, impressions = fields
    if not user_id:
        raise ValueError("empty user id")
    news, labels = parse_impressions(impressions)
    if labels is None:
        raise ValueError("unlabeled impressions (the published chain reads labeled train/dev lines)")
    return user_id, parse_time(time_text), ([] if history in PANDAS_NA else history.split()), news, labels


def sample_positions(n: int, k: int, seed: int) -> np.ndarray:
    """The positions ``DataFrame.sample(k, random_state=seed)`` takes from ``n`` rows (legacy RandomState)."""
    return np.random.RandomState(seed).permutation(n)[:k]


def _cap_rows(rows: np.ndarray, label: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """The published per-user cap: all rows when ``len <= cap``, else up to ``cap // 2`` sampled clicks first,
    then ``cap - n_pos`` sampled non-clicks (all of them when there are fewer)."""
    if len(rows) <= cap:
        return rows
    pos, neg = rows[label[rows] == 1], rows[label[rows] == 0]
    n_pos = min(len(pos), int(cap * 0.5))
    n_neg = cap - n_pos
    if len(pos) > n_pos:
        pos = pos[sample_positions(len(pos), n_pos, seed)]
    if len(neg) > n_neg:
        neg = neg[sample_positions(len(neg), n_neg, seed)]
    return np.concatenate([pos, neg])


def read_mind_paper(raw_dir: str | Path | None, max_bad_fraction: float = 0.01, bad_lines_allowed: int = 0,
                    chain: PaperChain = PaperChain()) -> RawData:
    """MIND through the published chain (``data.preprocessing=paper``), every step counted.

    train/ and dev/ ``behaviors.tsv`` (dev is the published "valid"; test/ is not used); titles from the
    pooled ``news.tsv`` files read as pandas reads them. Steps, in the published order: users in both
    splits; users with a history of >= ``min_history`` ids in some impression of both; one row per
    impressed news (no de-duplication); users with >= ``min_train_rows`` train rows and
    >= ``min_train_clicks`` train clicks; the per-user caps (``train_cap``/``valid_cap``, at most half
    clicks, pandas' seeded ``sample``); ``history_titles`` sampled history titles per row
    (``random.sample``, train rows then valid rows); rows whose joined titles exceed
    ``max_history_chars`` dropped; users with >= ``min_valid_rows`` valid rows; at most ``max_users``
    users sampled. Rows keep their split in ``origin`` (0 train, 1 valid) and their sampled history
    (one history per row). One step is ours: an impressed news without a title (the notebook keeps it
    with a null title) is dropped, counted, after the chain.
    """
    splits, unused = _paper_splits(raw_dir)
    bad = BadLines(max_bad_fraction, allowed=bad_lines_allowed)
    titles: dict[str, str | None] = {}
    files: list[FileRecord] = []
    news_counts: dict[str, dict[str, int]] = {}
    news_files = _news_files(splits)
    for name, path in news_files:
        record, c = read_news_paper(path, bad, titles, name)
        files.append(record)
        news_counts[name] = c
    steps: list[dict[str, Any]] = [{"step": "news", "files": [n for n, _ in news_files], "pooled": True,
                                    "ids": len(titles), "titled": sum(t is not None for t in titles.values()),
                                    "per_file": news_counts}]
    if unused:
        steps[0]["unused_split_folders"] = unused

    # pass 1: per-user statistics of both splits (the user-level filters need nothing else)
    records = [FileRecord.stat(folder / "behaviors.tsv") for _, folder, _ in splits]
    files += records
    stats: dict[str, list[int]] = {}  # user -> [imps, rows, clicks, has_long_history] for train, then dev
    for k, (split, folder, _) in enumerate(splits):
        for lineno, line in open_lines(folder / "behaviors.tsv", records[k], bad, _label(split, "behaviors.tsv")):
            try:
                user_id, _, history, news, labels = _parse_behavior(line.decode("utf-8").split("\t"))
            except (ValueError, UnicodeDecodeError) as exc:
                bad.bad(lineno, f"{type(exc).__name__}: {str(exc)[:80]}")
                continue
            st = stats.setdefault(user_id, [0] * 8)
            st[4 * k] += 1
            st[4 * k + 1] += len(news)
            st[4 * k + 2] += sum(labels)
            st[4 * k + 3] |= len(history) >= chain.min_history

    def count(users: list[str], what: str) -> dict[str, int]:
        out = {"users": len(users)}
        for k, split in enumerate(("train", "valid")):
            out[f"{split}_{what}"] = sum(stats[u][4 * k + (0 if what == "impressions" else 1)] for u in users)
        return out

    n_imp = [sum(st[4 * k] for st in stats.values()) for k in (0, 1)]
    steps.append({"step": "read", "train_impressions": n_imp[0], "valid_impressions": n_imp[1],
                  "train_users": sum(st[0] > 0 for st in stats.values()), "valid_users": sum(st[4] > 0 for st in stats.values())})
    users = [u for u, st in stats.items() if st[0] and st[4]]
    steps.append({"step": "users_in_train_and_valid", **count(users, "impressions")})
    steps.append({"step": "one_row_per_impressed_news", **count(users, "rows")})
    users = [u for u in users if stats[u][3] and stats[u][7]]
    steps.append({"step": f"history_>={chain.min_history}_in_both_splits", **count(users, "rows")})
    users = [u for u in users if stats[u][1] >= chain.min_train_rows and stats[u][2] >= chain.min_train_clicks]
    steps.append({"step": f"train_rows_>={chain.min_train_rows}_and_clicks_>={chain.min_train_clicks}",
                  **count(users, "rows")})
    keep_users = set(users)

    # pass 2: the rows of the kept users, in file order
    user_map, news_map = IdMap(), IdMap()
    for u in sorted(keep_users):  # groupby order: users sorted by id
        user_map.get(u)
    rows = Columns(user="i", item="i", label="b", timestamp="q", impression="i", origin="b")
    hist_offsets, hist_items = Columns(o="q"), Columns(i="i")  # per impression: the ids with a title entry
    hist_offsets.append(o=0)
    n_imps = 0
    for k, (split, folder, _) in enumerate(splits):
        for line in _lines_again(folder / "behaviors.tsv"):
            try:
                user_id, ts, history, news, labels = _parse_behavior(line.decode("utf-8").split("\t"))
            except (ValueError, UnicodeDecodeError):
                continue  # counted in pass 1
            if user_id not in keep_users:
                continue
            for nid in history:
                if titles.get(nid) is not None:
                    hist_items.append(i=news_map.get(nid))
            hist_offsets.append(o=len(hist_items))
            u = user_map.index[user_id]
            for nid, y in zip(news, labels):
                rows.append(user=u, item=news_map.get(nid), label=y, timestamp=ts, impression=n_imps, origin=k)
            n_imps += 1
    a = rows.to_numpy()
    h_off, h_items = hist_offsets.to_numpy()["o"], hist_items.to_numpy()["i"]

    # the caps, per split, users in id order
    order_parts = []
    for k, cap in ((0, chain.train_cap), (1, chain.valid_cap)):
        idx = np.flatnonzero(a["origin"] == k)
        by_user = idx[np.argsort(a["user"][idx], kind="stable")]
        starts = np.flatnonzero(np.append(True, a["user"][by_user][1:] != a["user"][by_user][:-1]))
        for s, e in zip(starts, np.append(starts[1:], len(by_user))):
            order_parts.append(_cap_rows(by_user[s:e], a["label"], cap, chain.seed))
    order = np.concatenate(order_parts) if order_parts else np.zeros(0, np.int64)
    steps.append({"step": f"cap_{chain.train_cap}_train_{chain.valid_cap}_valid_at_most_half_clicks",
                  **_split_counts(a, order)})

    # history titles: sampled per row (train rows, then valid rows), then the length filter
    rng = random.Random(chain.seed)
    sampled: list[list[int]] = []
    keep = np.zeros(len(order), dtype=bool)
    for j, r in enumerate(order):
        imp = a["impression"][r]
        hist = h_items[h_off[imp]:h_off[imp + 1]].tolist()
        if len(hist) > chain.history_titles:
            hist = rng.sample(hist, chain.history_titles)
        sampled.append(hist)
        keep[j] = len(" ".join(titles[news_map.ids[i]] for i in hist)) <= chain.max_history_chars
    steps.append({"step": f"sample_{chain.history_titles}_history_titles", "seed": chain.seed, **_split_counts(a, order)})
    order, sampled = order[keep], [h for h, ok in zip(sampled, keep) if ok]
    steps.append({"step": f"history_chars_<={chain.max_history_chars}", **_split_counts(a, order)})

    valid_rows = np.bincount(a["user"][order[a["origin"][order] == 1]], minlength=len(user_map))
    ok = valid_rows[a["user"][order]] >= chain.min_valid_rows
    order, sampled = order[ok], [h for h, o in zip(sampled, ok) if o]
    steps.append({"step": f"valid_rows_>={chain.min_valid_rows}", **_split_counts(a, order)})

    train_users = [user_map.ids[u] for u in dict.fromkeys(a["user"][order[a["origin"][order] == 0]].tolist())]
    if len(train_users) > chain.max_users:
        chosen = set(random.Random(chain.seed).sample(train_users, chain.max_users))
    else:
        chosen = set(train_users)
    ok = np.array([user_map.ids[u] in chosen for u in a["user"][order]], dtype=bool)
    order, sampled = order[ok], [h for h, o in zip(sampled, ok) if o]
    steps.append({"step": f"sample_at_most_{chain.max_users}_users", "seed": chain.seed, **_split_counts(a, order)})

    titled = np.array([titles.get(news_map.ids[i]) is not None for i in a["item"][order]], dtype=bool)
    order, sampled = order[titled], [h for h, o in zip(sampled, titled) if o]
    steps.append({"step": "drop_untitled_candidates", "note": "ours: the published notebook keeps them with a null title",
                  "dropped_rows": int((~titled).sum()), **_split_counts(a, order)})

    # re-index users and news densely (order of first appearance in the kept rows, histories included)
    out_users, out_items = IdMap(), IdMap()
    user_idx = np.array([out_users.get(user_map.ids[u]) for u in a["user"][order]], dtype=np.int32)
    item_idx = np.empty(len(order), dtype=np.int32)
    offsets = np.zeros(len(order) + 1, dtype=np.int64)
    flat: list[int] = []
    for j, r in enumerate(order):
        item_idx[j] = out_items.get(news_map.ids[a["item"][r]])
        flat.extend(out_items.get(news_map.ids[i]) for i in sampled[j])
        offsets[j + 1] = len(flat)
    arrays = {"user": user_idx, "item": item_idx, "label": a["label"][order].astype(np.float32),
              "timestamp": a["timestamp"][order], "history": np.arange(len(order), dtype=np.int32),
              "origin": a["origin"][order].astype(np.int8)}
    extra = {"history_offsets": offsets, "history_items": np.asarray(flat, dtype=np.int32)}
    steps.append({"step": "paper_chain", **asdict(chain)})
    return RawData("mind", "click", out_users.ids, out_items.ids, [titles[i] or "" for i in out_items.ids], arrays, files,
                   steps, bad.summary(), extra, rules={"paper_split": "official", "history": "sampled by the published chain"})


def _split_counts(a: dict[str, np.ndarray], order: np.ndarray) -> dict[str, int]:
    origin = a["origin"][order]
    return {"users": int(len(np.unique(a["user"][order]))), "train_rows": int((origin == 0).sum()),
            "valid_rows": int((origin == 1).sum()), "train_clicks": int(a["label"][order][origin == 0].sum()),
            "valid_clicks": int(a["label"][order][origin == 1].sum())}


def _lines_again(path: Path) -> Iterator[bytes]:
    """The non-blank lines of a raw file once more (a second pass; they were judged and hashed in the first)."""
    for _, line in open_lines(path, FileRecord.stat(path), BadLines(1.0)):
        yield line


def raw_files(raw_dir: str | Path) -> list[Path]:
    """The files a read would use (for the cheap "did the raw data change" check)."""
    found = find_splits(raw_dir)
    return [p for _, p in _news_files(found)] + [f / "behaviors.tsv" for _, f, _ in found]


def _read(d: Any) -> RawData:
    if d.preprocessing == "paper":
        return read_mind_paper(d.raw_dir, d.max_bad_fraction, d.bad_lines_allowed)
    return read_mind(d.raw_dir, d.max_bad_fraction, d.bad_lines_allowed)


register_dataset(Dataset("mind", "click", "MIND news clicks: behaviors.tsv and news.tsv of the train/dev folders", "news_click",
                         raw=RawFormat(lambda d: raw_files(d.raw_dir), _read)))
