#!/usr/bin/env bash
# The test command: set up everything from nothing (venv, torch, ComfyUI), then run pytest.
# Usage: bash scripts/run_tests.sh [pytest args, paths relative to tests/ ...]   (see setup_env.sh for COMFYUI_PATH, CIA_CACHE)
set -euo pipefail
CIA_WITH_BROWSER=1 source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$repo/tests"  # the repo root is the node package itself: collect from inside tests/
exec "$PY" -m pytest "$@"
