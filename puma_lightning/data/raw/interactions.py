"""``data.name=interactions``: your own interaction log (``data.interactions``) and items file (``data.items``).

Each file is CSV, TSV, Parquet or JSON Lines, by its extension (``.csv``, ``.tsv``, ``.parquet``/``.pq``,
``.jsonl``/``.json``/``.ndjson``; text files may be gzipped, detected by their bytes whatever the name says).
``data.columns`` says which column holds the user, the item, the label, the time (null: the file's row
order) and the item text. CSV/TSV: the first line is the header, one row per line (a quoted field may
hold the delimiter, not a line break), a UTF-8 BOM and CRLF line ends are accepted.

What is kept, and what is counted (all in the manifest's steps and bad-line report):

- ids are strings (``007`` stays ``007``; a Parquet integer becomes its decimal text), surrounding
  whitespace stripped; an empty id makes the row malformed;
- labels: ``data.task=rating`` 1..5, ``click`` 0/1 (also true/false, yes/no); any other value makes
  the row malformed, and malformed rows follow ``data.max_bad_fraction``/``data.bad_lines_allowed``;
- times: epoch seconds (int or float) or ISO 8601 (naive = UTC), stored as whole seconds;
- items: a repeated id keeps its first row; an item without text is dropped, and so are the
  interactions with it or with an item the items file does not have; either beyond the bad-line
  limit stops with one line;
- a (user, item) pair on several rows stops with one line naming both (``data.duplicates=error``) or
  keeps its latest row by time, then file order (``keep_latest``; the others are counted).

Everything is checked while reading, before ``prepare`` writes anything.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from omegaconf import DictConfig

from puma_lightning.config import DUPLICATE_POLICIES, TASKS
from puma_lightning.errors import PumaError

from ..registry import Dataset, RawFormat, register_dataset
from .common import BadLines, Columns, FileRecord, IdMap, RawData
from .tables import COLUMN_ROLES, file_format, place, read_rows

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")
_MAX_SECONDS = 2**62


def _show(value: Any) -> str:
    """A value as messages quote it, cut to 40 characters."""
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- values ---------------------------------------------------------------------------------------
def parse_id(value: Any, what: str) -> str:
    """An id as a string (integers as their decimal text), stripped; ValueError when missing or empty."""
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif value is None:
        raise ValueError(f"{what} missing")
    else:
        raise ValueError(f"{what} '{_show(value)}' is not a string or an integer")
    if not text:
        raise ValueError(f"{what} empty")
    return text


def parse_label(value: Any, task: str) -> float:
    """A rating 1..5 (``task=rating``) or 0.0/1.0 (``click``: 0/1, true/false, yes/no); ValueError otherwise."""
    if task == "click":
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, (int, float)) and value in (0, 1):
            return float(value)
        text = value.strip().lower() if isinstance(value, str) else None
        if text in _TRUE or text in _FALSE:
            return float(text in _TRUE)
        try:
            number = float(text) if text else None  # "1.0" from a column that pandas made float
        except ValueError:
            number = None
        if number in (0.0, 1.0):
            return float(number)
        raise ValueError(f"label '{_show(value)}' is not 0/1 (or true/false, yes/no) for data.task=click")
    try:
        if isinstance(value, bool) or value is None:
            raise TypeError
        rating = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"label '{_show(value)}' is not a number for data.task=rating") from None
    if not 1.0 <= rating <= 5.0:  # NaN fails too
        raise ValueError(f"label '{_show(value)}' outside 1-5 for data.task=rating")
    return rating


def _whole_seconds(number: float | int) -> int:
    if abs(number) > _MAX_SECONDS or not math.isfinite(number):  # (abs first: a huge int does not fit a float)
        raise ValueError(f"time '{_show(number)}' is out of range")
    return number if isinstance(number, int) else math.floor(number)


def parse_time(value: Any) -> int:
    """Epoch seconds from a number, a numeric string, an ISO 8601 string or a date(time) (naive = UTC)."""
    if isinstance(value, datetime):
        stamp = value
    elif isinstance(value, date):
        stamp = datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return _whole_seconds(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return _whole_seconds(int(text))
        except ValueError as exc:
            if "out of range" in str(exc):
                raise
        try:
            return _whole_seconds(float(text))
        except ValueError:
            pass
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"time '{_show(value)}' is neither epoch seconds nor an ISO 8601 date") from None
    else:
        raise ValueError(f"time '{_show(value)}' is neither epoch seconds nor an ISO 8601 date")
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return _whole_seconds(stamp.timestamp())


def _field(values: dict[str, Any], role: str, columns: dict[str, str], parse: Callable[[Any], Any]) -> Any:
    """``parse`` of one column's value; its ValueError names the column."""
    try:
        return parse(values[role])
    except ValueError as exc:
        raise ValueError(f"{exc} (column {columns[role]!r})") from None


# -- the dataset ----------------------------------------------------------------------------------
def _input(dcfg: DictConfig, key: str) -> Path:
    """``data.<key>`` as an existing file, else a one-line PumaError."""
    value = dcfg.get(key)
    if not value:
        raise PumaError(f"data.name=interactions reads data.{key}=FILE: set it (CSV, TSV, Parquet or JSON Lines)")
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise PumaError(f"data.{key}: {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    return path


def _check_config(dcfg: DictConfig) -> None:
    if dcfg.task not in TASKS:
        raise PumaError(f"'data.task' is {dcfg.task!r}; expected one of: {', '.join(TASKS)}")
    if dcfg.duplicates not in DUPLICATE_POLICIES:
        raise PumaError(f"'data.duplicates' is {dcfg.duplicates!r}; expected one of: {', '.join(DUPLICATE_POLICIES)}")


def _limit(dcfg: DictConfig, total: int) -> float:
    """The bad-line limit applied to ``total`` rows: ``max(max_bad_fraction * total, bad_lines_allowed)``."""
    return max(float(dcfg.max_bad_fraction) * total, int(dcfg.bad_lines_allowed))


def _limits_text(dcfg: DictConfig) -> str:
    return (f"more than data.max_bad_fraction={float(dcfg.max_bad_fraction):g} and more than "
            f"data.bad_lines_allowed={int(dcfg.bad_lines_allowed)}; nothing was written")


def read_items(path: Path, name: str, dcfg: DictConfig, bad: BadLines) -> tuple[dict[str, str], FileRecord, dict[str, Any]]:
    """``item id -> text`` from the items file, its record and counts (a repeated id keeps its first row)."""
    columns = {"item": str(dcfg.columns.item), "item_text": str(dcfg.columns.item_text)}
    fmt = file_format(path)
    record = FileRecord.stat(path)
    texts: dict[str, str] = {}
    seen: set[str] = set()
    rows = repeated = 0
    untitled: list[tuple[str, int | str]] = []
    for pos, values in read_rows(path, name, columns, bad, record):
        try:
            item = _field(values, "item", columns, lambda v: parse_id(v, "item id"))
        except ValueError as exc:
            bad.bad(place(fmt, pos), str(exc))
            continue
        rows += 1
        if item in seen:
            repeated += 1
            continue
        seen.add(item)
        text = values["item_text"]
        text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text).strip()
        if text:
            texts[item] = text
        else:
            untitled.append((item, place(fmt, pos)))
    if len(untitled) > _limit(dcfg, rows):
        item, where = untitled[0]
        raise PumaError(f"{name}: {len(untitled)} of {rows} items have no text in column {columns['item_text']!r} "
                        f"(data.columns.item_text; {_limits_text(dcfg)}); first: item {item!r} at {name}:{where}")
    summary = {"file": name, "rows": rows, "items": len(texts), "without_text": len(untitled),
               "repeated_ids": repeated, "repeats_keep": "first"}
    return texts, record, summary


def _pair_text(pos: np.ndarray, a: int, b: int, fmt: str) -> str:
    first, second = sorted((int(pos[a]), int(pos[b])))
    return f"{'rows' if fmt == 'parquet' else 'lines'} {first} and {second}"


def resolve_duplicates(arrays: dict[str, np.ndarray], name: str, fmt: str, user_ids: list[str], item_ids: list[str],
                       policy: str) -> np.ndarray:
    """Mask of the rows kept under ``data.duplicates``: every row (``error``, after checking that no (user, item)
    pair repeats) or each pair's latest row by time, then file order (``keep_latest``)."""
    user, item, ts, pos = arrays["user"], arrays["item"], arrays["timestamp"], arrays["pos"]
    order = np.lexsort((pos, ts, item, user))
    u, i = user[order], item[order]
    same_as_next = (u[1:] == u[:-1]) & (i[1:] == i[:-1])
    keep = np.ones(len(user), dtype=bool)
    if not same_as_next.any():
        return keep
    if policy == "error":
        starts = np.flatnonzero(same_as_next)
        later = np.maximum(pos[order[starts]], pos[order[starts + 1]])
        j = int(starts[np.argmin(later)])  # the repeat met first when reading the file
        a, b = int(order[j]), int(order[j + 1])
        raise PumaError(f"{name}: user {user_ids[user[a]]!r} has item {item_ids[item[a]]!r} on {_pair_text(pos, a, b, fmt)} "
                        f"({int(same_as_next.sum())} repeated (user, item) rows in all; data.duplicates=error); remove the "
                        "repeats, or set data.duplicates=keep_latest to keep each pair's latest row (by time, then file order)")
    keep[order[:-1][same_as_next]] = False  # all but the last of each (user, item) group in (time, file) order
    return keep


def _counts(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    return {"rows": int(len(arrays["user"])), "users": int(len(np.unique(arrays["user"]))),
            "items": int(len(np.unique(arrays["item"])))}


def read_interactions(dcfg: DictConfig) -> RawData:
    """Read ``data.items`` then ``data.interactions`` into integer-coded rows (before the common filters)."""
    _check_config(dcfg)
    items_path, log_path = _input(dcfg, "items"), _input(dcfg, "interactions")
    same_name = items_path.name == log_path.name
    items_name = str(items_path) if same_name else items_path.name
    log_name = str(log_path) if same_name else log_path.name
    fmt = file_format(log_path)
    file_format(items_path)  # an unknown extension stops before anything is read
    task = str(dcfg.task)
    bad = BadLines(dcfg.max_bad_fraction, allowed=dcfg.bad_lines_allowed)
    texts, items_record, items_summary = read_items(items_path, items_name, dcfg, bad)

    c = dcfg.columns
    columns = {"user": str(c.user), "item": str(c.item), "label": str(c.label)}
    if c.timestamp is not None:
        columns["timestamp"] = str(c.timestamp)
    record = FileRecord.stat(log_path)
    users, items = IdMap(), IdMap()
    cols = Columns(user="i", item="i", label="f", timestamp="q", pos="q")
    read = index = unknown = 0
    first_unknown: tuple[str, int | str] = ("", 0)
    for pos, values in read_rows(log_path, log_name, columns, bad, record):
        index += 1
        try:
            user = _field(values, "user", columns, lambda v: parse_id(v, "user id"))
            item = _field(values, "item", columns, lambda v: parse_id(v, "item id"))
            label = _field(values, "label", columns, lambda v: parse_label(v, task))
            ts = _field(values, "timestamp", columns, parse_time) if "timestamp" in columns else index - 1
        except ValueError as exc:
            bad.bad(place(fmt, pos), str(exc))
            continue
        read += 1
        if item not in texts:
            first_unknown = first_unknown if unknown else (item, place(fmt, pos))
            unknown += 1
            continue
        cols.append(user=users.get(user), item=items.get(item), label=label, timestamp=ts, pos=pos)
    if read == 0:
        first = "; ".join(e for e in bad.examples if e.startswith(log_name + ":"))
        raise PumaError(f"{log_name}: no row can be read ({bad.per_file[log_name]['bad']} malformed; first: {first})")
    if unknown > _limit(dcfg, read):
        item, where = first_unknown
        raise PumaError(f"{log_name}: {unknown} of {read} rows name an item that {items_name} does not have or gives "
                        f"no text ({_limits_text(dcfg)}); first: item {item!r} at {log_name}:{where}; is it the right "
                        f"items file, and data.columns.item the right column?")
    arrays = cols.to_numpy()
    steps: list[dict[str, Any]] = [
        {"step": "items", **items_summary},
        {"step": "read", "file": log_name, "format": fmt, "rows": read, "task": task,
         "time": columns.get("timestamp", "row order")},
        {"step": "drop_unknown_items", "dropped_rows": unknown, **_counts(arrays)},
    ]
    keep = resolve_duplicates(arrays, log_name, fmt, users.ids, items.ids, str(dcfg.duplicates))
    arrays = {k: v[keep] for k, v in arrays.items() if k != "pos"}
    steps.append({"step": "duplicate_pairs", "policy": str(dcfg.duplicates), "dropped_rows": int((~keep).sum()),
                  **_counts(arrays)})
    return RawData("interactions", task, users.ids, items.ids, [texts[i] for i in items.ids], arrays,
                   [items_record, record], steps, bad.summary())


# -- registration ---------------------------------------------------------------------------------
def _resolved(value: Any) -> str | None:
    return str(Path(str(value)).expanduser().resolve()) if value else None


def interactions_params(dcfg: DictConfig) -> dict[str, Any]:
    """What decides the processed content beyond the common filters: both files (absolute), the columns, the task and
    the duplicates policy, so two logs (or two readings of one) never share a cache folder."""
    _check_config(dcfg)
    return {"interactions": _resolved(dcfg.get("interactions")), "items": _resolved(dcfg.get("items")),
            "columns": {key: dcfg.columns[key] for key in COLUMN_ROLES}, "task": str(dcfg.task),
            "duplicates": str(dcfg.duplicates)}


def interactions_files(dcfg: DictConfig) -> list[Path]:
    """Both input files (for the "did they change" check); a PumaError when one is not set or missing."""
    return [_input(dcfg, "items"), _input(dcfg, "interactions")]


def interactions_location(dcfg: DictConfig) -> str | None:
    """The interaction log, when both files are configured (None: prepare says to set them)."""
    return str(dcfg.interactions) if dcfg.get("interactions") and dcfg.get("items") else None


register_dataset(Dataset(
    "interactions", None,
    "your own interaction log (data.interactions) and items file (data.items): CSV, TSV, Parquet or JSON Lines",
    "item",
    raw=RawFormat(interactions_files, read_interactions, location=interactions_location,
                  location_hint="set data.interactions=FILE (the interaction log) and data.items=FILE (the item texts)",
                  params=interactions_params),
))
