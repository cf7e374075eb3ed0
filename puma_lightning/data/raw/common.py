"""Shared pieces of the raw readers: gzip-by-magic opening with a sha256 computed on the fly,
line iteration with line numbers, bad-line accounting with a threshold, and the growing
integer-coded buffers readers fill.

Lines are handled as ``bytes`` (``json.loads`` takes bytes directly; TSV/CSV lines are decoded
one by one) so an undecodable line is one bad line, not a crash.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import zlib
from array import array
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from puma_lightning.errors import PumaError

GZIP_MAGIC = b"\x1f\x8b"
MAX_REPORTED = 5
"""How many bad lines are reported by file and line number (the rest are only counted)."""
EARLY_STOP_LINES = 1000
FLOAT32_MAX = float(np.finfo(np.float32).max)
"""If every one of the first this-many lines of a file is bad, stop at once (wrong file)."""


class RawFileError(PumaError):
    """A raw file that cannot be used at all (empty, truncated, not the format it should be); the message names it."""


@dataclass
class FileRecord:
    """Identity of one raw file: where it is, its size, mtime and (after a full read) sha256."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None = None
    lines: int = 0
    bad_lines: int = 0

    @classmethod
    def stat(cls, path: Path) -> "FileRecord":
        st = path.stat()
        return cls(str(path.resolve()), int(st.st_size), int(st.st_mtime_ns))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _HashingReader(io.RawIOBase):
    """A raw binary stream that feeds every byte it reads into a sha256 (the file is hashed in the
    same pass that parses it)."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._fh.readinto(buffer)
        if n:
            self.hash.update(memoryview(buffer)[:n])
        return n or 0

    def close(self) -> None:
        self._fh.close()
        super().close()


def find_file(folder: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``names`` that exists in ``folder``, else a PumaError naming them all."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise PumaError(f"{what}: none of {', '.join(names)} found in {folder}")


def require_dir(raw_dir: str | Path | None, dataset: str, expected: str) -> Path:
    """``data.raw_dir`` as an existing folder, else a PumaError saying which files belong there."""
    if not raw_dir:
        raise PumaError(f"dataset {dataset!r} is read from raw files: set data.raw_dir=PATH to a folder with {expected}")
    folder = Path(raw_dir).expanduser()
    if not folder.is_dir():
        raise PumaError(f"data.raw_dir {folder} is not a folder; {dataset!r} expects it to hold {expected}")
    return folder


class BadLines:
    """Counts lines and bad lines per file, remembers the first few, enforces ``max_fraction``."""

    def __init__(self, max_fraction: float = 0.01, max_reported: int = MAX_REPORTED, allowed: int = 0) -> None:
        """``allowed``: this many bad lines per file are always tolerated (a small file is not aborted over one)."""
        self.max_fraction = float(max_fraction)
        self.allowed = int(allowed)
        self.max_reported = max_reported
        self.examples: list[str] = []
        self.per_file: dict[str, dict[str, int]] = {}
        self._file = ""

    def start(self, path: Path, name: str | None = None) -> None:
        self._file = name or path.name
        self.per_file[self._file] = {"lines": 0, "bad": 0}

    def line(self) -> None:
        self.per_file[self._file]["lines"] += 1

    def bad(self, lineno: int | str, reason: str) -> None:
        """Record one bad line (``lineno``: its line number, or ``row N`` where a file has no lines, as Parquet);
        stops early if a file's first lines are all bad."""
        counts = self.per_file[self._file]
        counts["bad"] += 1
        if len(self.examples) < self.max_reported:
            self.examples.append(f"{self._file}:{lineno}: {reason}")
        if counts["lines"] == EARLY_STOP_LINES and counts["bad"] == EARLY_STOP_LINES:
            raise PumaError(f"{self._file}: the first {EARLY_STOP_LINES} lines are all malformed "
                            f"(first: {self.examples[0]}); is it the right file?")

    def finish(self) -> None:
        """Raise if the current file has more bad lines than allowed."""
        counts = self.per_file[self._file]
        lines, bad = counts["lines"], counts["bad"]
        if bad and bad > max(self.max_fraction * lines, self.allowed):
            first = "; ".join(e for e in self.examples if e.startswith(self._file + ":")) or self.examples[0]
            raise PumaError(f"{self._file}: {bad} of {lines} lines are malformed (more than data.max_bad_fraction="
                            f"{self.max_fraction:g} and more than data.bad_lines_allowed={self.allowed}); nothing was "
                            f"written; first: {first}")

    @property
    def total_bad(self) -> int:
        return sum(c["bad"] for c in self.per_file.values())

    def summary(self) -> dict[str, Any]:
        return {"per_file": self.per_file, "examples": list(self.examples), "max_fraction": self.max_fraction}


def open_lines(path: Path, record: FileRecord, bad: BadLines, name: str | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, line bytes without the newline)`` for each non-empty line.

    Gzip is detected by magic bytes. The raw bytes are hashed while being read, so ``record.sha256``
    is filled when the iteration ends; ``bad.finish()`` then applies the bad-line threshold.
    ``name`` is how the file is called in reports (default: its file name).
    """
    name = name or path.name
    bad.start(path, name)
    if path.stat().st_size == 0:
        raise RawFileError(f"{name}: the file is empty (0 bytes); is the download complete?")
    raw = _HashingReader(open(path, "rb"))
    buffered = io.BufferedReader(raw, buffer_size=1 << 20)
    stream: Any = gzip.GzipFile(fileobj=buffered, mode="rb") if buffered.peek(2)[:2] == GZIP_MAGIC else buffered
    if stream is not buffered:
        stream = io.BufferedReader(stream, buffer_size=1 << 20)
    gz = stream is not buffered
    nonblank = 0
    try:
        for lineno, line in enumerate(stream, 1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            nonblank += 1
            bad.line()
            yield lineno, line
        # drain anything left (gzip trailer) so the hash covers the whole file
        while buffered.read(1 << 20):
            pass
    except (OSError, EOFError, zlib.error) as exc:
        what = "gzip stream" if gz else "file"
        raise RawFileError(f"{name}: the {what} cannot be read to the end ({' '.join(str(exc).split())}); "
                           "is the download complete?") from None
    finally:
        stream.close()
        buffered.close()
    if nonblank == 0:
        raise RawFileError(f"{name}: {'the gzip stream holds' if gz else 'the file holds'} no lines; is the download complete?")
    record.sha256 = raw.hash.hexdigest()
    counts = bad.per_file[name]
    record.lines, record.bad_lines = counts["lines"], counts["bad"]
    bad.finish()


class IdMap:
    """External string id -> dense index, assigned in order of first appearance."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.ids: list[str] = []

    def get(self, key: str) -> int:
        idx = self.index.get(key)
        if idx is None:
            idx = self.index[key] = len(self.ids)
            self.ids.append(key)
        return idx

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class RawData:
    """Integer-coded interactions read from raw files, before the filters.

    ``user``/``item`` index ``user_ids``/``item_ids``; ``item_texts[k]`` is item ``k``'s text.
    ``origin`` is the official split of each row (0 train, 1 valid, 2 test) or -1 when the raw
    files have none. MIND also fills ``history`` (a history id per row, -1 none) with
    ``history_offsets``/``history_items`` (CSR lists of item indices), and ``unlabeled``: rows of
    unlabeled test impressions (same fields, no labels).
    """

    dataset: str
    task: str
    user_ids: list[str]
    item_ids: list[str]
    item_texts: list[str]
    arrays: dict[str, np.ndarray]
    files: list[FileRecord] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    bad: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    """Arrays that are not per row (``history_offsets``, ``history_items``) and ``unlabeled_*`` rows."""
    rules: dict[str, str] = field(default_factory=dict)
    """How the published scripts did what ``prepare``/the split redo: ``latest_ties`` (``first``: the earlier
    rows win ties at the "latest N" cut, as ``nlargest(keep="first")``; default ``last``) and ``paper_split``
    (``floor_train``: ``int(n * 0.8)`` train rows; ``floor_valid_min1``: ``max(1, int(n * 0.2))`` valid rows;
    ``official``: the rows' ``origin``), and ``follows``: the published code (repository, commit and path, as a
    URL) whose rules the read followed. Recorded in the manifest."""

    def __len__(self) -> int:
        return len(self.arrays["user"])


class Columns:
    """Growing typed buffers (``array.array``) for streamed rows; a few bytes per kept row."""

    def __init__(self, **typecodes: str) -> None:
        self._cols = {name: array(code) for name, code in typecodes.items()}

    def append(self, **values: Any) -> None:
        for name, value in values.items():
            self._cols[name].append(value)

    def __len__(self) -> int:
        return len(next(iter(self._cols.values())))

    def to_numpy(self) -> dict[str, np.ndarray]:
        dtypes = {"q": np.int64, "i": np.int32, "b": np.int8, "f": np.float32, "d": np.float64}
        return {name: np.frombuffer(col, dtype=dtypes[col.typecode]).copy() for name, col in self._cols.items()}


def parse_rating(value: Any) -> float:
    """A 1..5 rating from a JSON/CSV value; ValueError otherwise."""
    rating = float(value)
    if not 1.0 <= rating <= 5.0:
        raise ValueError(f"rating {value!r} outside 1-5")
    return rating


def parse_any_rating(value: Any) -> float:
    """Any finite number as a rating (``paper`` mode: the published scripts keep 0.0 and other out-of-range
    values); ValueError for what is not a number (they would carry a NaN or stop) and for what the float32
    label column cannot hold (it would become inf)."""
    if value is None or isinstance(value, bool):
        raise ValueError(f"rating {value!r} is not a number")
    rating = float(value)
    if not math.isfinite(rating) or abs(rating) > FLOAT32_MAX:
        raise ValueError(f"rating {value!r} is not finite as a float32")
    return rating


def read_json_ratings(path: Path, record: "FileRecord", bad: "BadLines", keys: tuple[str, str, str, str],
                      parse_time: Callable[[Any], int], known: Container[str],
                      rating_parser: Callable[[Any], float] = parse_rating) -> tuple["IdMap", "IdMap", "Columns", int, int]:
    """Stream a JSON Lines review file into (user, item, rating, time) columns.

    ``keys`` names the user, item, rating and time fields. Malformed lines are counted in ``bad``;
    rows whose item is not in ``known`` (no usable item text) are dropped and counted. Returns the
    user and item id maps, the columns, the rows read and the rows dropped for an unknown item.
    ``rating_parser`` decides which ratings are valid (:func:`parse_rating`: 1..5; :func:`parse_any_rating`:
    any number, as the published scripts).
    """
    user_key, item_key, rating_key, time_key = keys
    users, items = IdMap(), IdMap()
    cols = Columns(user="i", item="i", label="f", timestamp="q")
    read = unknown = 0
    for lineno, line in open_lines(path, record, bad):
        try:
            obj = json.loads(line)
            user, item = obj[user_key], obj[item_key]
            if not (isinstance(user, str) and user and isinstance(item, str) and item):
                raise ValueError(f"{user_key} or {item_key} missing")
            rating = rating_parser(obj[rating_key])
            ts = parse_time(obj[time_key])
        except (ValueError, KeyError, TypeError) as exc:
            bad.bad(lineno, f"{type(exc).__name__}: {str(exc)[:80]}")
            continue
        read += 1
        if item not in known:
            unknown += 1
            continue
        cols.append(user=users.get(user), item=items.get(item), label=rating, timestamp=ts)
    return users, items, cols, read, unknown
