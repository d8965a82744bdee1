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
# Debian tools the tests use, installed when the test extra is asked for and they are missing (as root,
# or with sudo): the browser tests (tests/browser) drive Debian's Chromium with Playwright (its own
# browser download is not used), and Replicate's model-creation guide is run with the real curl.
if [[ ",$extras," == *",test,"* ]]; then
  missing=()
  for tool in chromium curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
