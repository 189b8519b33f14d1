"""The ``lmrec`` command line: one subcommand per pipeline stage, and the operations ones.

- ``lmrec.cli.pipeline``: ``ingest`` and the ``dvc.yaml`` stages (validate ... package);
- ``lmrec.cli.ops``: registry, serving, privacy and monitoring commands;
- ``lmrec.cli._app``: the application, its shared options and its one error handler.

Every path is an option (``dvc.yaml`` passes them all to the stages), every tunable lives in
``params.yaml`` (``--params`` picks the file). Errors the user can fix are printed as one
readable message with the exit code ``lmrec.exit_codes.ExitCode`` lists:

    1  usage or configuration error
    2  unreadable input or contract violation (file, column named)
    3  data validation failed (report written)
    4  the promotion gate refused the candidate (gate.json written; nothing registered)
    5  `lmrec drift`: the recent feedback drifted past the monitor thresholds (drift.json)
    6  `lmrec drift`: no drift, but the champion is older than monitor.max_model_age_days
    7  `lmrec online-report`: offline and online metrics disagree significantly

Stage commands (``@stage_command``) run holding the workspace's pipeline lock
(``lmrec.locking``): one stage at a time per workspace, whoever starts it.
"""

# importing the command modules registers their commands, in this order in --help
from lmrec.cli import pipeline  # noqa: F401

# isort: split
from lmrec.cli import ops  # noqa: F401
from lmrec.cli._app import app

__all__ = ["app"]
