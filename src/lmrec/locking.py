"""Advisory file locks (``fcntl.flock``): one writer at a time, across processes and threads.

``file_lock`` is what the registry (``lmrec.registry.store``: promote, rollback, register)
and the pipeline (``pipeline_lock``, taken by every stage command in ``lmrec.cli``) hold
while they read, modify and write shared state. ``flock`` locks belong to an open file, so
two threads that each open the lock file exclude each other as two processes do, and the
kernel drops a lock when its holder dies: a crash leaves no stale lock behind. The lock
covers the processes that share the lock file's filesystem: every process on one machine,
or several machines only when the file lies on a volume they share (and that volume
supports ``flock``).

The pipeline lock is the workspace's ``artifacts/.pipeline.lock`` (``$LMREC_PIPELINE_LOCK``
overrides it): each ``lmrec <stage>`` command holds it from start to exit, so a manual
``dvc repro``, the monitor DAG's ``lmrec drift`` and a retrain's task never run a stage in
one workspace at the same time. It serialises stage commands, not whole runs: between two
tasks of a retrain another command may run a stage, and DVC then reruns what its change
made stale. Under ``torchrun`` only rank 0 takes it (the other ranks write nothing).
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
#: The pipeline lock file, relative to the workspace (the working directory of a stage).
PIPELINE_LOCK = Path("artifacts") / ".pipeline.lock"
#: Environment variables: the pipeline lock's path, and how long a stage waits for it.
PIPELINE_LOCK_ENV = "LMREC_PIPELINE_LOCK"
PIPELINE_WAIT_ENV = "LMREC_PIPELINE_LOCK_WAIT_S"
#: Default wait: a short stage ends within it; a running training does not (fail, say why).
PIPELINE_WAIT_S = 30.0


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
        LmrecError: the lock file cannot be created or opened (a read-only workspace).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = path.open("a+")
    except OSError as err:
        raise LmrecError(f"{path}: cannot open the lock file of {what}: {err}") from err
    with fh:
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


def pipeline_lock() -> contextlib.AbstractContextManager[None]:
    """The workspace's pipeline lock (module docstring); a no-op on torchrun ranks above 0.

    Raises:
        LmrecError: ``$LMREC_PIPELINE_LOCK_WAIT_S`` is not a number of seconds.
    """
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return contextlib.nullcontext()
    raw = os.environ.get(PIPELINE_WAIT_ENV, str(PIPELINE_WAIT_S))
    try:
        wait_s = float(raw)
    except ValueError:
        raise LmrecError(f"${PIPELINE_WAIT_ENV}={raw!r}: expected seconds") from None
    path = Path(os.environ.get(PIPELINE_LOCK_ENV) or PIPELINE_LOCK)
    return file_lock(path, max(wait_s, 0.0), f"the pipeline workspace {Path.cwd()}")
