#!/usr/bin/env bash
# Run the side-by-side benchmark (sets the environment up first; see benchmark.py for options).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/setup_env.sh"
# the reference, the tiny models and the node graph (tests/), the headless runner (scripts/)
export PYTHONPATH="$repo/tests:$repo/scripts:$repo/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$repo/benchmarks/benchmark.py" "$@"
