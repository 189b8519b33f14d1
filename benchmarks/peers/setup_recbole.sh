#!/usr/bin/env bash
# Build .venv-recbole: the separate environment the RecBole peers (SASRec, GRU4Rec) run in.
#
# RecBole 1.2.1 needs numpy<2 and older pandas/scipy/pyarrow/setuptools, which clash with the
# project's own .venv, so benchmarks/peers/recbole_runner.py runs in this venv as a subprocess.
# Torch is the CPU wheel of the same version as the project's (2.13.0, from /opt/wheels or
# PIP_FIND_LINKS); any other torch version would pull in the CUDA stack.
#
# Idempotent: a stamp file records the requirement set; a rerun with an intact venv and the
# same requirements does nothing. Usage (from anywhere):
#     bash benchmarks/peers/setup_recbole.sh            # build or verify
#     FORCE=1 bash benchmarks/peers/setup_recbole.sh    # rebuild from scratch
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${RECBOLE_VENV:-$REPO/.venv-recbole}"
PYTHON="${RECBOLE_PYTHON:-python3.11}"
WHEELS="${TORCH_WHEELS:-/opt/wheels}"
TORCH_VERSION="2.13.0"

REQUIREMENTS=(
  "recbole==1.2.1"
  "numpy>=1.26,<2"
  "pandas>=2.0,<2.3"
  "scipy>=1.11,<1.14"
  "pyarrow>=15,<19"
  "setuptools>=77.0.3,<81"
)
STAMP="$VENV/.lmrec-recbole-stamp"
WANT="torch==$TORCH_VERSION ${REQUIREMENTS[*]}"

check() {
  "$VENV/bin/python" - "$TORCH_VERSION" <<'EOF'
import sys

import numpy, pandas, pyarrow, recbole, torch  # noqa: F401

assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
assert numpy.__version__.startswith("1."), numpy.__version__
assert recbole.__version__ == "1.2.1", recbole.__version__
print(f"recbole {recbole.__version__} torch {torch.__version__} numpy {numpy.__version__}")
EOF
}

if [[ "${FORCE:-0}" != "1" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && check; then
  echo "setup_recbole: $VENV is up to date"
  exit 0
fi

if [[ "${FORCE:-0}" == "1" ]]; then
  rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" install --disable-pip-version-check)
if [[ -d "$WHEELS" ]]; then
  PIP+=(--find-links "$WHEELS")
fi

# Torch first, alone, from the CPU wheel; then pin it so nothing below can swap it.
"${PIP[@]}" "torch==$TORCH_VERSION"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__)" >"$CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" "${REQUIREMENTS[@]}"

check
echo "$WANT" >"$STAMP"
echo "setup_recbole: built $VENV"
