"""A run-directory lock: ``<run_dir>/.lock`` holds ``pid``, ``host`` and the command of the one
process allowed to write into the directory.

Taking the lock is atomic (``O_CREAT | O_EXCL``). A lock left by a process that is gone (same
host, pid not alive — e.g. after kill -9) is stale and taken over; a live holder, or one on
another host (cannot be checked), makes :class:`RunLock` raise a one-line :class:`LockError`
naming it. Under torch.distributed only global rank 0 takes the lock (the ranks are one run).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from types import TracebackType

from puma_lightning.errors import PumaError

LOCK_NAME = ".lock"


class LockError(PumaError):
    """Another live process holds the run directory."""


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # a zombie (killed child not yet reaped) is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def read_lock(run_dir: str | Path) -> dict | None:
    """The holder recorded in ``<run_dir>/.lock`` (None if there is no lock or it is unreadable)."""
    try:
        return json.loads((Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class RunLock:
    """Context manager holding ``<run_dir>/.lock`` for this process."""

    def __init__(self, run_dir: str | Path, command: str | None = None) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.command = command if command is not None else " ".join(sys.argv)
        self.held = False

    def acquire(self) -> "RunLock":
        """Take the lock, taking over a stale one; raise :class:`LockError` if a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.path.parent)
                if holder is None:  # being written right now, or garbage left by a crash mid-write
                    if self._garbage():
                        self.path.unlink(missing_ok=True)
                        continue
                    raise LockError(f"{self.path.parent} is locked by another process ({self.path} is being written)") from None
                same_host = holder.get("host") == me["host"]
                if same_host and not _alive(int(holder.get("pid", -1))):
                    self._take_over(holder)
                    continue
                raise LockError(
                    f"{self.path.parent} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                    f"({holder.get('command')!r}); wait for it to finish or remove {self.path} if that process is gone"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            return self
        raise LockError(f"could not take {self.path}: it keeps changing (another run is starting?)")

    def _garbage(self) -> bool:
        """An unreadable lock older than a few seconds was left by a crash mid-write."""
        import time

        try:
            return time.time() - self.path.stat().st_mtime > 5.0
        except FileNotFoundError:
            return True

    def _take_over(self, holder: dict) -> None:
        """Remove a stale lock, but only if it still is the one we judged stale."""
        if read_lock(self.path.parent) == holder:
            self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            holder = read_lock(self.path.parent)
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:  # one run, several ranks: rank 0 holds it
            return self
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
