"""What puma_lightning wrote, recorded so that nothing else is ever replaced or deleted.

A folder we write whole (a bank, a processed dataset, a converted model, a PEFT export) carries
``.puma_lightning.json``: ``{"format": "puma_lightning.<kind>/1", "files": [...]}``, the entries we
put there. A folder is ours to replace only when that record parses, names the kind we are about to
write, and the folder holds nothing beyond the entries it lists: a stray ``manifest.json`` or a
record of another kind does not make a folder ours, and a file a user added to our folder stops the
command (one line naming it) instead of being deleted with the folder.

A run directory carries the same record with kind ``run``: commands write into a folder only when it
is new, empty, or holds that record.

A single output file (``predict``'s ``out``) carries a hidden sidecar ``.<name>.puma_lightning.json``
with its sha256: an existing file is ours to replace only while its content still matches, otherwise
only with ``overwrite=true``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from puma_lightning.errors import PumaError

RECORD_FILE = ".puma_lightning.json"
FORMAT_PREFIX = "puma_lightning."
RECORD_VERSION = 1


class NotOursError(PumaError):
    """A path we were asked to replace or write into holds something puma_lightning did not write."""


def format_name(kind: str) -> str:
    """The versioned format string of a folder ``kind`` (``puma_lightning.bank/1``)."""
    return f"{FORMAT_PREFIX}{kind}/{RECORD_VERSION}"


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """The parsed ownership record of ``folder``, or None when it has none we can read as ours."""
    file = Path(folder) / RECORD_FILE
    if not file.is_file() or file.is_symlink():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("format"), str) or not isinstance(record.get("files", []), list):
        return None
    if not record["format"].startswith(FORMAT_PREFIX):
        return None
    return record


def record_kind(record: dict[str, Any]) -> str:
    """The kind a record names (``bank`` for ``puma_lightning.bank/1``)."""
    return record["format"][len(FORMAT_PREFIX):].split("/", 1)[0]


def write_record(folder: str | Path, kind: str, files: Iterable[str] | None = None) -> None:
    """Write ``folder``'s ownership record (``files``: the entries we put there; default: what it holds now)."""
    folder = Path(folder)
    names = sorted(files) if files is not None else sorted(p.name for p in folder.iterdir() if p.name != RECORD_FILE)
    fd, tmp = tempfile.mkstemp(prefix=f"{RECORD_FILE}.", suffix=".tmp", dir=folder)  # atomic: ranks may read it meanwhile
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"format": format_name(kind), "files": names}, indent=1))
    os.replace(tmp, folder / RECORD_FILE)


def foreign_entries(folder: str | Path, record: dict[str, Any]) -> list[str]:
    """The entries of ``folder`` that its record does not list (what someone else put there)."""
    ours = {*record.get("files", []), RECORD_FILE}
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in ours)


def check_replaceable(path: str | Path, kind: str, what: str = "folder") -> None:
    """Raise :class:`NotOursError` unless ``path`` is absent, an empty folder, or a folder of ``kind`` that we wrote
    and that holds nothing else."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise NotOursError(f"{path} exists and is not a folder; refusing to replace it with a {what} (move it or choose another path)")
    if not any(path.iterdir()):
        return
    record = read_record(path)
    if record is None:
        raise NotOursError(f"{path} is a folder that puma_lightning did not write (no {RECORD_FILE} record); refusing to "
                           f"replace it with a {what} (move it or choose another path)")
    if record_kind(record) != kind:
        raise NotOursError(f"{path} holds a puma_lightning {record_kind(record)}, not a {what}; refusing to replace it "
                           "(choose another path)")
    foreign = foreign_entries(path, record)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise NotOursError(f"{path} is a {what} we wrote, but it now also holds {shown}, which we did not write; refusing "
                           "to replace the folder (move those out, or choose another path)")


def claim_run_dir(path: str | Path) -> bool:
    """Make ``path`` a run directory (or check that it is one): a new or empty folder gets our run record, a folder
    holding it is ours; a file, or a non-empty folder without it, stops with :class:`NotOursError` before anything is
    written. Returns whether the record was written now."""
    path = Path(path)
    check_run_dir_path(path)
    if path.is_dir() and any(path.iterdir()):
        record = read_record(path)
        if record is None or record_kind(record) != "run":
            raise NotOursError(f"run_dir {path} is a folder that is not a puma_lightning run directory (not empty, no "
                               f"{RECORD_FILE} run record); refusing to write into it (choose a new or empty folder)")
        return False
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_record(path, "run", files=[])
    except OSError as exc:
        raise PumaError(f"run_dir {path}: cannot create it or write into it ({exc.strerror or exc})") from None
    return True


def check_run_dir_path(path: str | Path) -> None:
    """One line when ``run_dir`` names a file (or lies under one) instead of a folder."""
    path = Path(path)
    for p in [path, *path.parents]:
        if p.exists() and not p.is_dir():
            raise NotOursError(f"run_dir {path}: {p} is a file, expected a folder (choose another run_dir)")
        if p.exists():
            return


def sidecar(path: str | Path) -> Path:
    """The hidden record beside an output file we wrote (``.<name>.puma_lightning.json``)."""
    path = Path(path)
    return path.parent / f".{path.name}{RECORD_FILE}"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_our_file(path: str | Path) -> bool:
    """Whether ``path`` is an output file we wrote and nobody changed since (its sidecar's sha256 matches)."""
    path = Path(path)
    side = sidecar(path)
    if not path.is_file() or not side.is_file():
        return False
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return False
    return (isinstance(record, dict) and record.get("format") == format_name("output")
            and record.get("sha256") == file_sha256(path))


def check_output_file(path: str | Path, overwrite: bool = False, key: str = "out") -> None:
    """Stop before any work when ``path`` cannot take an output file: it is a folder, or an existing file we did not
    write (or that changed since) and ``overwrite`` is off."""
    path = Path(path)
    if path.is_dir():
        raise NotOursError(f"{key}={path} is a folder; expected a file path to write")
    if path.exists() and not overwrite and not is_our_file(path):
        raise NotOursError(f"{key}={path} already exists and was not written by puma_lightning (or changed since); "
                           "refusing to replace it (pass overwrite=true, or choose another path)")


def check_not_an_input(out: str | Path, inputs: dict[str, str | Path | None], key: str = "out") -> None:
    """Refuse an output path that is one of the inputs, lies inside one, or holds one."""
    target = Path(out).resolve()
    for name, value in inputs.items():
        if not value:
            continue
        source = Path(value).resolve()
        if target == source or source in target.parents or target in source.parents:
            relation = "is" if target == source else ("lies inside" if source in target.parents else "holds")
            raise PumaError(f"{key}={out} {relation} the input {name}={value}; refusing to write an output over an input "
                            "(choose another path)")
