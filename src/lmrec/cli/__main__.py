"""``python -m lmrec.cli`` (what ``torchrun ... -m lmrec.cli train`` runs): the ``lmrec`` CLI."""

from lmrec.cli import app

app()
