"""``[core] hostname_callable`` of the cluster's Celery workers: each names itself by queue
(``$LMREC_WORKER_NAME``, e.g. ``gpu@lmrec``), so a task instance's ``hostname`` tells which
worker ran it, as it would across machines."""

import os
import socket


def hostname() -> str:
    return os.environ.get("LMREC_WORKER_NAME") or socket.getfqdn()
