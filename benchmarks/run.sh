#!/usr/bin/env bash
# Run the side-by-side benchmark (sets the environment up first; see benchmark.py for options).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/setup_env.sh"
# glibc keeps freed blocks below its (growing) mmap threshold in the heap, which would make the
# CPU's peak resident size overstate what is live; a fixed threshold returns big blocks at once
export MALLOC_MMAP_THRESHOLD_=65536
exec "$PY" "$repo/benchmarks/benchmark.py" "$@"
