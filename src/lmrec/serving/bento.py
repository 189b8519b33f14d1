"""What the Bento carries beside lmrec's code: the serve params it was packaged with.

``lmrec package`` copies the package into the Bento's build context and writes the params
file's ``serve`` block next to this module as ``serve_params.json``; the service, running
from the Bento, reads it from there (``carried_serve_params``) whatever its working
directory, so a Bento serves with the limits, A/B share and exposure policy it was built
with. A working tree has no such file (the service reads ``params.yaml`` there).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from lmrec.config import ServeParams
from lmrec.io import LmrecError, write_json

SERVE_PARAMS_FILE = "serve_params.json"
#: where a service running from a Bento finds its serve params
CARRIED = Path(__file__).with_name(SERVE_PARAMS_FILE)


def write_serve_params(params: ServeParams, package_dir: Path) -> Path:
    """Write ``params`` into a copy of the lmrec package (``package_dir``: its ``lmrec/``)."""
    path = package_dir / "serving" / SERVE_PARAMS_FILE
    write_json(path, params.model_dump(mode="json"))
    return path


def carried_serve_params(path: Path = CARRIED) -> ServeParams | None:
    """The serve params a Bento carries; None outside a Bento (no file)."""
    if not path.is_file():
        return None
    try:
        return ServeParams.model_validate_json(path.read_text())
    except ValidationError as err:
        raise LmrecError(f"{path}: not the serve params lmrec package writes: {err}") from err
