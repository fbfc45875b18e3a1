#!/usr/bin/env bash
# The test command: set up everything from nothing (venvs, torch, ComfyUI), then run pytest, on
# each ComfyUI release CI covers: 0.3.75, and 0.33.0 where ../shared/comfyui has its source.
# With COMFYUI_PATH or CIA_COMFYUI_VERSION set, on that ComfyUI only (see setup_env.sh).
# Usage: bash scripts/run_tests.sh [pytest args, paths relative to tests/ ...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${COMFYUI_PATH:-}${CIA_COMFYUI_VERSION:-}" ]; then
  releases=(0.3.75)
  [ -d "$here/../../shared/comfyui/ComfyUI-0.33.0" ] && releases+=(0.33.0)
  failed=()
  for release in "${releases[@]}"; do
    printf '\n=== the tests on ComfyUI %s\n' "$release"
    CIA_COMFYUI_VERSION="$release" bash "$here/run_tests.sh" "$@" || failed+=("$release")
  done
  if [ "${#failed[@]}" -gt 0 ]; then
    printf '\n=== tests failed on ComfyUI %s\n' "${failed[*]}"
    exit 1
  fi
  printf '\n=== tests passed on ComfyUI %s\n' "${releases[*]}"
  exit 0
fi
CIA_WITH_TESTS=1 source "$here/setup_env.sh"
"$PY" -m ruff check "$repo"  # the linter (pyproject.toml's [tool.ruff]) first: it takes a second
cd "$repo/tests"  # the repo root is the node package itself: collect from inside tests/
exec "$PY" -m pytest "$@"
