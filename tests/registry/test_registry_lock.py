"""Concurrent promotions and rollbacks on one real MLflow SQLite registry keep the champion
alias and the champion-history tag together.

Each round, two threads (each with its own ``Registry`` and MLflow client, as two processes
would have) promote different versions at the same moment, or one promotes while the other
rolls back; after every round the alias must be the last version of the history and the
history must list no version twice. Another process holding the lock makes a promotion
wait, and past the timeout fail with a message naming the holder. The versions' source is a
plain directory: promotion reads and writes aliases and tags only.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading

import pytest

from lmrec.locking import LockTimeout
from lmrec.registry import store as store_module
from lmrec.registry.store import CHAMPION, DIGEST_TAG, Registry, RegistryError, registry_lock_path

ROUNDS = 12


@pytest.fixture()
def store(tmp_path) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    registry = Registry(uri, "lmrec")
    for n in range(1, 5):
        source = tmp_path / f"model-{n}"
        source.mkdir()
        registry.register(str(source), None, {DIGEST_TAG: f"digest-{n}"})
    registry.promote(1)
    return uri


def consistent(registry: Registry) -> tuple[int | None, list[int]]:
    champion = registry.alias(CHAMPION)
    return (champion.number if champion else None), registry.history()


def test_concurrent_promotions_keep_alias_and_history_together(store):
    registries = [Registry(store, "lmrec"), Registry(store, "lmrec")]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(registry: Registry, index: int, round_no: int) -> None:
        try:
            barrier.wait(timeout=30)
            if index == 1 and round_no % 3 == 2:
                # nothing to roll back to is a clear refusal, not a broken registry
                with contextlib.suppress(RegistryError):
                    registry.rollback()
            else:
                registry.promote(1 + (round_no + 2 * index) % 4)
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)

    checker = Registry(store, "lmrec")
    for round_no in range(ROUNDS):
        threads = [
            threading.Thread(target=worker, args=(r, i, round_no)) for i, r in enumerate(registries)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        champion, history = consistent(checker)
        assert history and champion == history[-1], (
            f"round {round_no}: champion alias v{champion}, history {history}"
        )
        assert len(set(history)) == len(history), f"round {round_no}: history {history}"


HOLD = """import sys, time
from lmrec.locking import file_lock
with file_lock(sys.argv[1], 0, "test"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_promotion_waits_for_another_process_and_then_fails_clearly(store, monkeypatch):
    registry = Registry(store, "lmrec")
    lock = registry_lock_path(store)
    assert lock.name == "mlflow.db.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(store_module, "LOCK_TIMEOUT_S", 0.3)
        with pytest.raises(LockTimeout, match=rf"held by pid {holder.pid}: .*waited 0.3 s"):
            registry.promote(2)
    finally:
        holder.kill()
        holder.wait()
    assert registry.promote(2).after == 2  # the kernel dropped the dead holder's lock
    assert consistent(registry) == (2, [1, 2])
