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
# The browser tests (tests/browser) drive Debian's Chromium with Playwright: its own browser download is
# not used. Installed when the test extra is asked for and it is missing (as root, or with sudo).
if [[ ",$extras," == *",test,"* ]] && ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
