"""One writer at a time: an exclusive lock per artifact (and per data directory for a whole chain run).

`exclusive(path)` holds `flock` on a lock file named after the resolved path, in this machine's temporary
directory (so taking a lock leaves nothing beside the artifact, even when the write then fails); a second
holder in another process waits, and says whom it waits for (the holder writes its pid, host, command and
start time into the lock file). Re-entrant within a process, so a chain run holding the data directory's
lock can still take each asset's lock. Across machines sharing a volume, the run queue's limit per data
directory (configs/dagster.yaml, deploy/) is what keeps runs apart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_held: dict[str, int] = {}
_held_guard = threading.Lock()


LOCK_DIR = Path(tempfile.gettempdir()) / "sftc-locks"


def lock_file(path: Path | str) -> Path:
    """The lock file of a file or directory, named after its resolved path (the same for every process here)."""
    resolved = str(Path(path).resolve())
    return LOCK_DIR / f"{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:16]}.lock"


def holder_description(lock: Path) -> str:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on {holder['host']} ({holder['command']}, since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def exclusive(path: Path | str, what: str | None = None) -> Iterator[None]:
    """Hold the exclusive lock of `path` for the block, waiting for another holder if there is one."""
    lock = lock_file(path)
    key = str(lock)
    with _held_guard:
        if _held.get(key):
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for %s: %s is writing it", what or path, holder_description(lock))
            fcntl.flock(fd, fcntl.LOCK_EX)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv[:3]) or "python",
            "since": dt.datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                _held.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
