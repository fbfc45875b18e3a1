#!/usr/bin/env bash
# Run an appearance transfer headless through ComfyUI's engine (sets the environment up first).
# Usage: bash scripts/transfer.sh [--checkpoint FILE] [--structure IMG] [--appearance IMG] [--out FILE] [--demo]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec "$PY" "$repo/scripts/transfer.py" "$@"
