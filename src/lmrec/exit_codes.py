"""Every exit code of the ``lmrec`` commands, in one place.

Airflow tasks and ``dvc repro`` read them: ``dags/gate.sh`` turns 4 into a skipped run,
``lmrec_monitor`` triggers a retrain on 5, and a non-zero code fails the task.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a command's exit status means."""

    OK = 0
    #: an error the user can act on (``LmrecError``): bad params, a missing artefact...
    ERROR = 1
    #: input data is missing, unreadable or breaks the data contract (``DataError``)
    DATA = 2
    #: the data broke at least one expectation (``lmrec validate``)
    VALIDATION_FAILED = 3
    #: the gate refused the candidate (``lmrec gate``, and ``refit`` / ``register`` after it)
    REFUSED = 4
    #: ``lmrec drift`` found drift: retrain
    DRIFTED = 5
    #: ``lmrec drift``: the champion is older than ``monitor.max_model_age_days`` and the data
    #: has not drifted (drift, 5, wins: it triggers the retrain)
    STALE = 6
    #: ``lmrec online-report``: offline and online metrics order two versions differently
    DISAGREEMENT = 7
