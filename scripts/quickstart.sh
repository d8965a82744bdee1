#!/usr/bin/env bash
# The first command of the README: install, bring the cluster up with the built-in models, predict once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh llm image
.venv/bin/warmfleet up
.venv/bin/warmfleet predict warmfleet/echo -i text="hello, warmfleet"
