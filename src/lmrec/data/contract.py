"""The data contract every source is brought to (docs/design.md, "Data contract").

interactions: user_id (str), item_id (str), timestamp (int64, unix s), event (str), value (float)
items:        item_id (str), title (str), text (str), categories (str, ``|``-separated)

Sources only rename and convert; they never drop rows. Judging whether the data is
good is the validate stage's job, so a broken file still reaches it and is reported there.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import warnings

import pandas as pd

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "event", "value")
ITEM_COLUMNS = ("item_id", "title", "text", "categories")

SALT_ENV = "LMREC_USER_ID_SALT"
DEFAULT_SALT = "lmrec-public-default-salt"


def user_id_salt() -> str:
    """The pseudonymisation salt: ``$LMREC_USER_ID_SALT`` or the public default.

    The default keeps the demo reproducible (the same data hash on every machine) but
    protects nothing: production deployments set the variable to a secret.
    """
    return os.environ.get(SALT_ENV) or DEFAULT_SALT


def pseudonymise_id(raw: object, salt: str | None = None) -> str:
    """One raw user id as ``u_`` + 16 hex chars of HMAC-SHA256(salt, id)."""
    key = (salt if salt is not None else user_id_salt()).encode()
    return "u_" + hmac.new(key, str(raw).encode(), hashlib.sha256).hexdigest()[:16]


def pseudonymise(user_ids: pd.Series, salt: str | None = None) -> pd.Series:
    """Replace raw user ids by their ``pseudonymise_id``."""
    salt = salt if salt is not None else user_id_salt()
    mapping = {raw: pseudonymise_id(raw, salt) for raw in pd.unique(user_ids.dropna())}
    return user_ids.map(mapping).astype(object).where(user_ids.notna(), None)


def _as_str(col: pd.Series) -> pd.Series:
    """Strings with missing values kept as None (never the text "nan")."""
    return (
        col.astype(object)
        .where(col.notna(), None)
        .map(lambda v: v if v is None or isinstance(v, str) else str(v))
    )


def interactions_frame(
    user_id: pd.Series,
    item_id: pd.Series,
    timestamp: pd.Series,
    event: pd.Series | str,
    value: pd.Series | None,
    pseudonymised: bool = False,
) -> pd.DataFrame:
    """Assemble a contract interactions table, pseudonymising user ids (unless
    ``pseudonymised``: the ids are already ``pseudonymise_id``'s, as in the feedback log).

    Ids become strings; timestamps and values keep their dtype when it is already
    numeric (so a wrongly typed column reaches validation as it is, to be reported).
    """
    n = len(user_id)
    frame = pd.DataFrame(
        {
            "user_id": _as_str(user_id) if pseudonymised else pseudonymise(_as_str(user_id)),
            "item_id": _as_str(item_id),
            "timestamp": timestamp.to_numpy() if n else pd.Series([], dtype="int64"),
            "event": _as_str(event) if isinstance(event, pd.Series) else [event] * n,
            "value": (value if value is not None else pd.Series([float("nan")] * n)).to_numpy(),
        }
    )
    if pd.api.types.is_integer_dtype(frame["value"]):
        frame["value"] = frame["value"].astype("float64")
    return frame


def items_frame(
    item_id: pd.Series, title: pd.Series, text: pd.Series | None, categories: pd.Series | None
) -> pd.DataFrame:
    """Assemble a contract items table; absent optional text columns become ""."""
    n = len(item_id)
    empty = pd.Series([""] * n, dtype=object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return pd.DataFrame(
            {
                "item_id": _as_str(item_id).to_numpy(),
                "title": _as_str(title).to_numpy(),
                "text": (_as_str(text).fillna("") if text is not None else empty).to_numpy(),
                "categories": (
                    _as_str(categories).fillna("") if categories is not None else empty
                ).to_numpy(),
            }
        )
