"""The run-directory lock: one writer at a time, a clear one-line error naming the holder, stale
locks of dead processes taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from puma_lightning.cli.main import main
from puma_lightning.io.lock import LockError, RunLock, read_lock


def test_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path, command="fit x") as lock:
        holder = read_lock(tmp_path)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["command"] == "fit x"
        with pytest.raises(LockError, match=f"in use by pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
        assert lock.held
    assert not (tmp_path / ".lock").exists()


def test_stale_lock_of_dead_pid_is_taken_over(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(), "command": "old"}))
    with RunLock(tmp_path, command="new"):
        assert read_lock(tmp_path)["command"] == "new"


def test_lock_of_a_live_process_or_other_host_is_respected(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "command": "fit"}))
        with pytest.raises(LockError):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "command": "fit"}))
    with pytest.raises(LockError, match="elsewhere.example"):
        RunLock(tmp_path).acquire()


@pytest.fixture
def fresh_cli_log():
    """The CLI binds its log handler to the current stderr (capsys's): drop it after the test."""
    import logging

    yield
    logging.getLogger("puma_lightning").handlers.clear()


def test_cli_refuses_a_locked_run_dir_with_one_line(tmp_path, capsys, fresh_cli_log):
    from puma_lightning.io.ownership import claim_run_dir

    claim_run_dir(tmp_path)  # a run directory of ours, as the holder's command made it before taking the lock
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                    "command": "fit --config a.yaml"}))
        code = main(["fit", f"run_dir={tmp_path}"])
    finally:
        sleeper.kill()
        sleeper.wait()
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err and str(sleeper.pid) in err
    assert not (tmp_path / "config.yaml").exists()  # nothing written


def test_garbage_lock_left_mid_write_is_cleared(tmp_path):
    path = tmp_path / ".lock"
    path.write_text("{")
    os.utime(path, (0, 0))
    with RunLock(tmp_path):
        assert read_lock(tmp_path)["pid"] == os.getpid()
