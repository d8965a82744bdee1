#!/usr/bin/env bash
# Create .venv (if missing) and install warmfleet into it, editable, with the extras named as arguments.
# Every dependency comes from the project's own files (pyproject.toml); nothing is assumed installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extras="$(IFS=,; echo "$*")"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e "$spec"
