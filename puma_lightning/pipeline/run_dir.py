"""The run directory: where each stage of a run lives and its ``stage.json`` record.

Every command writes under ``run_dir``; a stage ``NAME`` owns ``run_dir/NAME/`` (checkpoints,
bank, per-row test predictions) and its record ``run_dir/NAME/stage.json``, which carries the hash
of the config the stage was made with (``key``): a stage is reused only when its key matches.
``source`` may live in another run (``source_dir``). Sub-runs (seeds, hops, cells) are run
directories of their own inside this one.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from puma_lightning.io.atomic import atomic_write_bytes, atomic_write_text
from puma_lightning.pipeline.distributed import on_rank_zero

log = logging.getLogger(__name__)

RECORD_FILE = "stage.json"


class RunDir:
    """One run directory: stage folders and their records."""

    def __init__(self, path: str | Path, source_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.source_dir = Path(source_dir) if source_dir else None

    @classmethod
    def of(cls, cfg: Any) -> "RunDir":
        """The run directory a config names (``run_dir``, and ``source_dir`` when set)."""
        return cls(cfg.run_dir, cfg.get("source_dir"))

    def stage(self, name: str) -> Path:
        """The folder of stage ``name`` (``source`` lives in ``source_dir`` when one is set)."""
        if name == "source" and self.source_dir is not None:
            return self.source_dir
        return self.path / name

    def sub(self, name: str) -> Path:
        """The folder of a sub-run (a seed, a hop, a cell): a run directory of its own."""
        return self.path / name

    def seed(self, seed: int) -> Path:
        """The sub-run of one seed of a seeded command."""
        return self.sub(f"seed_{int(seed)}")

    def read_record(self, name: str, key: str) -> dict[str, Any] | None:
        """Stage ``name``'s record if it was made with ``key``, else None (the stage must be recomputed)."""
        path = self.stage(name) / RECORD_FILE
        if not path.is_file():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("key") != key:
            log.warning("stage %s in %s was made with another config: recomputing it", name, self.path)
            return None
        return record

    def write_record(self, name: str, key: str, record: dict[str, Any]) -> dict[str, Any]:
        """Write stage ``name``'s record with its ``key`` (global rank 0 only; every rank returns it)."""
        record = {"key": key, **record}
        on_rank_zero(lambda: atomic_write_text(self.stage(name) / RECORD_FILE, json.dumps(record, indent=1)))
        return record


@contextlib.contextmanager
def as_it_was_on_failure(path: str | Path, files: Sequence[str] = ("config.yaml",)) -> Iterator[None]:
    """Leave the run directory ``path`` as it was when the body raises: each of ``files`` gets its
    earlier content back (or is removed if it is new), and the folder, with any parents created for
    it, is removed again if it was new and is empty. Nothing else is deleted: finished stages were
    written atomically and stay, so a rerun resumes from them."""
    path = Path(path)
    created = [p for p in [path, *path.parents] if not p.exists()]
    before = {name: (path / name).read_bytes() if (path / name).is_file() else None for name in files}
    try:
        yield
    except BaseException:
        for name, content in before.items():
            target = path / name
            if content is None:
                target.unlink(missing_ok=True)
            elif not target.is_file() or target.read_bytes() != content:
                atomic_write_bytes(target, content)
        for folder in created:  # innermost first
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break
        raise
