"""What a production deployment must configure before the service answers anything.

``LMREC_PRODUCTION=1`` (the default of the Bento's image, bentofile.yaml ``envs``, of
docker/serving.Dockerfile and docker/compose.yaml) makes the service refuse to start
unless:

- ``LMREC_API_TOKEN`` is set: every API call needs ``Authorization: Bearer <token>``;
- ``LMREC_ADMIN_TOKEN`` is set, and differs from the API token: ``/admin/*`` (reloading
  the model) needs it, so a product service holding the API token cannot redeploy;
- ``LMREC_USER_ID_SALT`` is set and is not the public default: with the default, anyone
  can recompute the pseudonyms in the feedback and impression logs from raw ids.

Without the flag (the local demo, ``make demo``) an unset API token leaves the API open,
and ``/admin/*`` takes the API token when no admin token is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lmrec.data.contract import DEFAULT_SALT, SALT_ENV
from lmrec.io import LmrecError

PRODUCTION_ENV = "LMREC_PRODUCTION"
API_TOKEN_ENV = "LMREC_API_TOKEN"
ADMIN_TOKEN_ENV = "LMREC_ADMIN_TOKEN"
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def is_production(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``LMREC_PRODUCTION`` is on (1/true/yes; unset, 0/false/no: off).

    Raises:
        LmrecError: any other value (a typo must not turn the checks off).
    """
    value = environ.get(PRODUCTION_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise LmrecError(f"{PRODUCTION_ENV} must be 1 or 0 (or true/false), got {value!r}")


def problems(environ: Mapping[str, str] = os.environ) -> list[str]:
    """What keeps ``environ`` from being a production configuration (empty when none)."""
    found = []
    api, admin = environ.get(API_TOKEN_ENV, ""), environ.get(ADMIN_TOKEN_ENV, "")
    if not api.strip():
        found.append(f"{API_TOKEN_ENV} is unset or empty: the API would be open to anyone")
    if not admin.strip():
        found.append(f"{ADMIN_TOKEN_ENV} is unset or empty: /admin/reload needs its own token")
    elif admin == api:
        found.append(f"{ADMIN_TOKEN_ENV} must differ from {API_TOKEN_ENV}")
    salt = environ.get(SALT_ENV, "")
    if not salt.strip() or salt == DEFAULT_SALT:
        found.append(
            f"{SALT_ENV} is unset or the public default {DEFAULT_SALT!r}: set the secret "
            "salt `lmrec ingest` pseudonymised the user ids with"
        )
    return found


def check(environ: Mapping[str, str] = os.environ) -> None:
    """Refuse a production start (``LMREC_PRODUCTION=1``) that :func:`problems` finds fault
    with; outside production, do nothing.

    Raises:
        LmrecError: naming every missing or unsafe variable.
    """
    if not is_production(environ):
        return
    found = problems(environ)
    if found:
        raise LmrecError(
            f"{PRODUCTION_ENV}=1 and the service refuses to start: " + "; ".join(found)
        )
