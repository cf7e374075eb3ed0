"""Tables of (user, item) pairs in and predictions out, as CSV or Parquet by file extension.

CSV needs nothing beyond the standard library; Parquet goes through pyarrow, an optional
dependency (``pip install "puma_lightning[parquet]"``) that is imported only when a ``.parquet``
path is used, with a one-line error when it is missing. Writes are atomic.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterator, Sequence

from puma_lightning.errors import PumaError
from puma_lightning.io.atomic import atomic_path, atomic_write_text

__all__ = ["PARQUET_SUFFIXES", "read_pairs", "require_pyarrow", "write_table"]

PARQUET_SUFFIXES = (".parquet", ".pq")


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def require_pyarrow() -> Any:
    """pyarrow with its ``parquet`` submodule, or a one-line PumaError saying how to install it (an optional extra)."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (the submodule is what we use)
    except ImportError:
        raise PumaError('Parquet files need pyarrow: pip install "puma_lightning[parquet]" (or use a .csv file)') from None
    return pyarrow


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """``(user, item)`` id pairs from a table with ``user`` and ``item`` columns (others ignored).

    CSV: a header row, ids as text. Parquet: any column types, read as text. A row missing either id
    is an error naming the file and line (CSV) or row (Parquet)."""
    path = Path(path)
    if not path.is_file():
        raise PumaError(f"pairs file not found: {path}")
    if _is_parquet(path):
        return _read_parquet_pairs(path)
    with open(path, "rb") as fh:
        reader = csv.DictReader(_utf8_lines(fh, path))
        if not reader.fieldnames or not {"user", "item"} <= set(reader.fieldnames):
            raise PumaError(f"{path}: expected a CSV header with columns 'user' and 'item', got {reader.fieldnames}")
        pairs = []
        for line, row in enumerate(reader, start=2):
            user, item = (row.get("user") or "").strip(), (row.get("item") or "").strip()
            if not user or not item:
                raise PumaError(f"{path}:{line}: a row needs both a user and an item, got {row}")
            pairs.append((user, item))
    return pairs


def _utf8_lines(fh: Any, path: Path) -> Iterator[str]:
    """The lines of a binary file decoded as UTF-8 (a leading BOM dropped); a line that is not UTF-8 is an error naming
    the file and line."""
    for number, raw in enumerate(fh, start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise PumaError(f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                            "save the pairs file as UTF-8") from None
        yield line


def _read_parquet_pairs(path: Path) -> list[tuple[str, str]]:
    pa = require_pyarrow()
    try:
        table = pa.parquet.read_table(str(path))
    except Exception as exc:  # pyarrow's ArrowInvalid and OSError for a damaged or foreign file
        raise PumaError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    if not {"user", "item"} <= set(table.column_names):
        raise PumaError(f"{path}: expected columns 'user' and 'item', got {table.column_names}")
    users, items = table.column("user").to_pylist(), table.column("item").to_pylist()
    pairs = []
    for row, (user, item) in enumerate(zip(users, items)):
        user, item = ("" if user is None else str(user)).strip(), ("" if item is None else str(item)).strip()
        if not user or not item:
            raise PumaError(f"{path}: row {row}: a row needs both a user and an item, got user={user!r} item={item!r}")
        pairs.append((user, item))
    return pairs


def write_table(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]], float_digits: int = 6) -> None:
    """Write ``rows`` under ``header`` atomically: Parquet (typed columns) for a ``.parquet`` path, else CSV
    (floats with ``float_digits`` decimals)."""
    path = Path(path)
    if _is_parquet(path):
        pa = require_pyarrow()
        columns = {name: [row[i] for row in rows] for i, name in enumerate(header)}
        table = pa.table(columns) if rows else pa.table({name: pa.array([], pa.string()) for name in header})
        with atomic_path(path) as tmp:
            pa.parquet.write_table(table, str(tmp))
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.{float_digits}f}" if isinstance(v, float) else v for v in row])
    atomic_write_text(path, buffer.getvalue())
