"""Atomic writes: write to a temporary name in the same folder, fsync, then rename.

A reader (or a run killed mid-write) sees either the previous complete file or the new complete
file, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from puma_lightning.errors import PumaError
from puma_lightning.io.ownership import NotOursError, check_replaceable, file_sha256, format_name, sidecar, write_record

__all__ = ["NotOursError", "atomic_dir", "atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_with",
           "check_replaceable", "remove_staging", "staging_dir"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    if path.is_dir():
        raise PumaError(f"cannot write {path}: it is a folder, expected a file path")
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str, what: str = "folder") -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    Nothing is deleted that we did not write: an existing ``path`` is replaced only if it is an empty folder or a
    folder of ``kind`` whose ownership record (:mod:`puma_lightning.io.ownership`) lists everything it holds; anything
    else stops with :class:`NotOursError` *before* any work is done. The new folder gets its record (the entries
    written into it). The replaced folder is moved to a fresh temporary name first and removed only after the rename."""
    path = Path(path)
    check_replaceable(path, kind, what)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        write_record(tmp, kind)
        if path.exists():
            check_replaceable(path, kind, what)  # it may have changed while we worked
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)  # onto our own empty folder
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Turn an OS error while preparing to write ``path`` into one line naming ``path`` (not a temporary name)."""
    try:
        yield
    except OSError as exc:
        raise PumaError(f"cannot write {path}: {exc.strerror or exc}") from None


STAGING_MARKER = ".puma-staging"


def staging_dir(path: str | Path, key: str) -> Path:
    """A hidden folder beside ``path`` that several processes can find by name (``key`` makes it
    unique to one job), for parts that are later moved into ``path`` by :func:`atomic_dir`.

    Created with a marker file; an existing folder of that name without the marker is not ours and
    stops with :class:`NotOursError`. Every process of the job may call this."""
    path = Path(path)
    folder = path.parent / f".{path.name}.{key}.staging"
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / STAGING_MARKER
    if not marker.is_file():
        if any(p.name != STAGING_MARKER for p in folder.iterdir()):
            raise NotOursError(f"{folder} exists and is not one of our staging folders; refusing to write into it")
        marker.touch()
    return folder


def remove_staging(folder: str | Path) -> None:
    """Remove a folder made by :func:`staging_dir` (only if it still carries the marker)."""
    folder = Path(folder)
    if (folder / STAGING_MARKER).is_file():
        shutil.rmtree(folder, ignore_errors=True)


def record_output_file(path: str | Path) -> None:
    """Write the sidecar that makes ``path`` ours to replace on a later run."""
    atomic_write_text(sidecar(path), json.dumps({"format": format_name("output"), "sha256": file_sha256(path)}))
