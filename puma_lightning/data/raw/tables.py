"""Rows of a table file by column, streamed: CSV, TSV, JSON Lines or Parquet, by the file's extension.

Text formats may be gzipped (detected by their bytes, whatever the name says) and go through
:func:`~puma_lightning.data.raw.common.open_lines`, so every line is numbered, hashed and counted by the
bad-line policy; a CSV/TSV header is the first line (a UTF-8 BOM and CRLF line ends accepted, a quoted field
may hold the delimiter, not a line break); JSON Lines' first object names the columns. Parquet rows are named
``row N``. A missing column, an empty file and a file whose bytes contradict its name stop with one line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from puma_lightning.errors import PumaError
from puma_lightning.io.ownership import file_sha256
from puma_lightning.io.pair_files import require_pyarrow

from .common import GZIP_MAGIC, BadLines, FileRecord, RawFileError, open_lines

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl",
           ".ndjson": "jsonl"}
"""File extension (after a ``.gz``) -> format."""
PARQUET_MAGIC = b"PAR1"
COLUMN_ROLES = {"user": "user id", "item": "item id", "label": "label", "timestamp": "time", "item_text": "item text"}
"""``data.columns`` key -> what the column holds (for messages)."""


def file_format(path: Path) -> str:
    """``csv``, ``tsv``, ``parquet`` or ``jsonl``, by the name's extension after a ``.gz``; else a PumaError."""
    name = path.name.lower()
    ext = Path(name[:-3] if name.endswith(".gz") else name).suffix
    if ext not in FORMATS:
        raise PumaError(f"{path}: unknown file type {ext or '(no extension)'!r}; name the file by its format: "
                        f"{', '.join(FORMATS)} (text formats may end in .gz)")
    return FORMATS[ext]


def _check_content(path: Path, name: str, fmt: str) -> None:
    """Stop on an empty file and on a Parquet file that is not named so (or the other way round)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise RawFileError(f"{name}: the file is empty (0 bytes)")
    if fmt == "parquet" and head[:2] == GZIP_MAGIC:
        raise RawFileError(f"{name}: not a Parquet file (it is gzip-compressed; Parquet is read uncompressed)")
    if fmt == "parquet" and head != PARQUET_MAGIC:
        raise RawFileError(f"{name}: not a Parquet file (it does not start with the Parquet magic bytes PAR1)")
    if fmt != "parquet" and head == PARQUET_MAGIC:
        raise RawFileError(f"{name}: named as {fmt.upper()} but it looks like a Parquet file (it starts with PAR1); "
                           "name it .parquet")


def _missing_column(name: str, role: str, column: str, have: list[str], hint: str = "") -> RawFileError:
    return RawFileError(f"{name}: no column {column!r} (the {COLUMN_ROLES[role]}: set data.columns.{role} to the column "
                        f"that holds it); its columns are: {', '.join(map(str, have)) or '(none)'}{hint}")


def place(fmt: str, pos: int) -> int | str:
    """How a row is named in reports: its line number, or ``row N`` in a Parquet file (no lines)."""
    return f"row {pos}" if fmt == "parquet" else pos


def read_rows(path: Path, name: str, columns: dict[str, str], bad: BadLines,
              record: FileRecord) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(line or row number, {role: raw value})`` for the rows of one file.

    ``columns`` maps a role (``user``, ``item``...) to its column name. Rows that cannot be parsed are
    counted in ``bad``; the file's sha256 is recorded in ``record`` and the bad-line limit applied at the end.
    """
    fmt = file_format(path)
    _check_content(path, name, fmt)
    if fmt == "parquet":
        rows = _parquet_rows(path, name, columns, bad, record)
    elif fmt == "jsonl":
        rows = _json_rows(path, name, columns, bad, record)
    else:
        rows = _delimited_rows(path, name, columns, bad, record, "," if fmt == "csv" else "\t")
    count = 0
    for pos, values in rows:
        count += 1
        yield pos, values
    if count == 0:
        first = "; ".join(e for e in bad.examples if e.startswith(name + ":"))
        raise RawFileError(f"{name}: no rows" + (f" that can be read (first: {first})" if first else ""))


def _delimited_rows(path: Path, name: str, columns: dict[str, str], bad: BadLines, record: FileRecord,
                    delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    kind = "CSV" if delimiter == "," else "TSV"
    index: dict[str, int] | None = None
    width = 0
    for lineno, raw in open_lines(path, record, bad, name):
        if index is None:  # the header
            try:
                text = raw.decode("utf-8").removeprefix("\ufeff")
                header = [h.strip() for h in next(csv.reader([text], delimiter=delimiter))]
            except (UnicodeDecodeError, csv.Error) as exc:
                raise RawFileError(f"{name}:{lineno}: the header cannot be read as {kind} ({exc}); is it a {kind} file?") from None
            for role, column in columns.items():
                if column not in header:
                    hint = "; is it tab-separated? name it .tsv" if delimiter == "," and "\t" in text else ""
                    raise _missing_column(name, role, column, header, hint)
            index = {role: header.index(column) for role, column in columns.items()}
            width = len(header)
            continue
        try:
            fields = next(csv.reader([raw.decode("utf-8")], delimiter=delimiter))
        except UnicodeDecodeError as exc:
            bad.bad(lineno, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
            continue
        except csv.Error as exc:
            bad.bad(lineno, f"not {kind}: {exc}")
            continue
        if len(fields) != width:
            bad.bad(lineno, f"{len(fields)} fields where the header has {width}")
            continue
        yield lineno, {role: fields[i] for role, i in index.items()}


def _json_rows(path: Path, name: str, columns: dict[str, str], bad: BadLines,
               record: FileRecord) -> Iterator[tuple[int, dict[str, Any]]]:
    first = True
    for lineno, raw in open_lines(path, record, bad, name):
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            bad.bad(lineno, f"not a JSON object: {' '.join(str(exc).split())[:80]}")
            continue
        if not isinstance(obj, dict):
            bad.bad(lineno, f"not a JSON object but {type(obj).__name__}")
            continue
        if first:  # the first object names the columns, as a header does
            for role, column in columns.items():
                if column not in obj:
                    raise _missing_column(f"{name}:{lineno}", role, column, list(obj))
            first = False
        missing = [c for c in columns.values() if c not in obj]
        if missing:
            bad.bad(lineno, f"no key {missing[0]!r}")
            continue
        yield lineno, {role: obj[column] for role, column in columns.items()}


def _parquet_rows(path: Path, name: str, columns: dict[str, str], bad: BadLines,
                  record: FileRecord) -> Iterator[tuple[int, dict[str, Any]]]:
    pq = require_pyarrow().parquet
    bad.start(path, name)
    try:
        parquet = pq.ParquetFile(path)
        have = list(parquet.schema_arrow.names)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... on what is not Parquet
        raise RawFileError(f"{name}: not a Parquet file ({' '.join(str(exc).split())[:200]})") from None
    for role, column in columns.items():
        if column not in have:
            raise _missing_column(name, role, column, have)
    wanted = list(dict.fromkeys(columns.values()))
    batches = parquet.iter_batches(columns=wanted, batch_size=65536)
    pos = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except Exception as exc:
            raise RawFileError(f"{name}: the Parquet file cannot be read to the end ({' '.join(str(exc).split())[:200]}); "
                               "is it complete?") from None
        data = batch.to_pydict()
        for k in range(batch.num_rows):
            pos += 1
            bad.line()
            yield pos, {role: data[column][k] for role, column in columns.items()}
    record.sha256 = file_sha256(path)
    record.lines, record.bad_lines = bad.per_file[name]["lines"], bad.per_file[name]["bad"]
    bad.finish()
