#!/usr/bin/env bash
# The second command of the README (and what CI runs): install with the test extras, run every test.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test llm image bench  # bench: `warmfleet bench --plot` is tested too
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
