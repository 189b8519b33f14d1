"""Advisory file locks (``fcntl.flock``): one writer at a time, across processes and threads.

``file_lock`` is what the registry (``lmrec.registry.store``: promote, rollback, register)
and the pipeline (``lmrec.cli``: every stage command) hold while they read, modify and
write shared state. ``flock`` locks belong to an open file, so two threads that each open
the lock file exclude each other as two processes do, and the kernel drops a lock when its
holder dies: a crash leaves no stale lock behind. The lock covers the processes that share
the lock file's filesystem: every process on one machine, or several machines only when the
file lies on a volume they share (and that volume supports ``flock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lmrec.io import LmrecError

#: Seconds between two tries while waiting for a lock.
POLL_S = 0.05


class LockTimeout(LmrecError):
    """Another process held the lock for longer than the caller would wait."""


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip() or "unknown"
    return "unknown"


@contextlib.contextmanager
def file_lock(path: str | Path, timeout_s: float, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block.

    Args:
        path: the lock file; its content names the holder (pid and command line).
        timeout_s: how long to wait for another holder; 0 tries once.
        what: what the lock protects, for the error message.

    Raises:
        LockTimeout: still held by another process after ``timeout_s`` seconds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{what} is locked by another process ({path}: held by "
                        f"{_holder(path)}); waited {timeout_s:g} s, try again when it is done"
                    ) from None
                time.sleep(POLL_S)
        try:
            fh.truncate(0)
            fh.write(f"pid {os.getpid()}: {' '.join(sys.argv)}\n")
            fh.flush()
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)
