#!/usr/bin/env bash
# The GPU figures the README quotes, in one command, on a machine with PyTorch and no network:
# benchmarks/benchmark.py (ours against the reference in the same process: time per transfer,
# model calls, peak memory) on ComfyUI 0.33.0 and 0.3.75, from the folder benchmarks/gpu_bundle.sh
# builds (wheels and ComfyUI trees; nothing is downloaded). See benchmarks/gpu_check.md.
#
#   bash benchmarks/gpu_check.sh [--bundle DIR] [--out DIR] [--quick] [--only NAME,..] [--runs N]
#                                [--budget SECONDS] [--full]
#
#   --bundle DIR   gpu_bundle.sh's folder (default: .gpu_bundle/ in the repo root)
#   --out DIR      where the results go (default: artifacts/gpu-check-<time>/); the last line names it
#   --quick        the same runs on tiny models and sizes: checks this script on a CPU in minutes
#   --only NAMES   only these runs of the plan below (e.g. 0.3.75_sdxl,0.33.0_flux)
#   --runs N       timed runs per measurement, after one warm-up (default 1)
#   --budget S     the whole command's seconds (default 470: under 8 minutes); a run gets at most
#                  its own limit and what is left, and none starts with under 45 s left
#   --full         let each benchmark run to its end (by default a run is stopped once it has
#                  printed the paper defaults and the structures, which is what the README quotes)
# Environment: PYTHON, the interpreter (default python3).
# Results: <out>/<name>.txt, each run's output, and <out>/summary.txt: the card, torch, the
# bundle, each command with its status and wall time, and the figures.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
bundle="$repo/.gpu_bundle" out="" quick=0 only="" runs=1 budget="" full=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) bundle="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --only) only=",$2,"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --full) full=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "usage: see the head of $0" >&2; exit 2 ;;
  esac
done
started="$(date +%s)"
budget="${budget:-$( [ "$quick" = 1 ] && echo 3600 || echo 470 )}"  # --quick on two CPU cores: ~10 min
deadline=$(( started + budget ))
out="${out:-$repo/artifacts/gpu-check-$(date -u +%Y%m%d-%H%M%S)}"
work="${TMPDIR:-/tmp}/cia-gpu-check"

# The plan: name|ComfyUI release|seconds at most|benchmark.py arguments. Paper defaults (100
# steps), square images; sd15 also times one appearance onto 1, 4 and 8 structures and ours
# under TorchCompileModel; Flux-dev's layout with 8 heads of 24 (its 12 G random weights alone
# take minutes to make on the CPU).
if [ "$quick" = 1 ]; then
  tiny="--model tiny --size 64 --aspect 2 --steps 10 --runs 1"
  plan=("0.33.0_sd15|0.33.0|900|$tiny --structures 1,2 --compile"
        "0.33.0_sdxl|0.33.0|600|$tiny"
        "0.3.75_sd15|0.3.75|900|$tiny --structures 1,2 --compile"
        "0.3.75_sdxl|0.3.75|600|$tiny"
        "0.33.0_flux|0.33.0|600|--model flux --size 64 --aspect 2 --steps 4 --runs 1")
else
  sd15="--model sd15 --size 512 --aspect 2 --dtype fp16 --structures 1,4,8 --compile --runs $runs"
  sdxl="--model sdxl --size 1024 --aspect 2 --dtype fp16 --runs $runs"
  plan=("0.33.0_sd15|0.33.0|260|$sd15"
        "0.33.0_sdxl|0.33.0|200|$sdxl"
        "0.3.75_sd15|0.3.75|260|$sd15"
        "0.3.75_sdxl|0.3.75|200|$sdxl"
        "0.33.0_flux|0.33.0|150|--model flux --heads 8 --text-tokens 512 --size 1024 --aspect 2 --dtype bf16 --runs $runs")
fi

log() { printf '[gpu_check] %s\n' "$*" >&2; }
mkdir -p "$out"
summary="$out/summary.txt"
note() { printf '%s\n' "$@" >> "$summary"; }

# 1. The packages (no index: wheels only) and the two ComfyUI trees, fresh, in $work.
[ -f "$bundle/MANIFEST.txt" ] || { log "no bundle at $bundle: run benchmarks/gpu_bundle.sh where PyPI is reachable"; exit 2; }
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
rm -rf "$work" && mkdir -p "$work/site"
{
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" "$bundle"/wheels/*.whl
  else  # no pip: a wheel is a zip of what goes into site-packages
    "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
      "$work/site" "$bundle"/wheels/*.whl
  fi
  for release in 0.33.0 0.3.75; do tar -xzf "$bundle/comfyui-$release.tar.gz" -C "$work"; done
} > "$out/setup.txt" 2>&1 || { log "setup failed: $out/setup.txt"; cat "$out/setup.txt" >&2; exit 2; }
# PyAV bundles FFmpeg (36 MB): where the machine has none, a stand-in takes its place. ComfyUI
# imports it at module level for its video and audio types; the benchmark reads and writes no
# media, and any use of the stand-in raises.
if ! PYTHONPATH="$work/site" "$PY" -c 'import av' 2>/dev/null; then
  mkdir -p "$work/site/av"
  cat > "$work/site/av/__init__.py" <<'PY'
"""A stand-in for PyAV, from benchmarks/gpu_check.sh: every name and submodule exists; using one raises."""
import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0+stand-in"


def _unavailable(*args, **kwargs):
    raise ImportError("PyAV is not installed (a stand-in from benchmarks/gpu_check.sh)")


class _Name(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Name(name, (), {"__init__": _unavailable})


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Name(name, (), {"__init__": _unavailable})


class _Submodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True) if fullname.startswith("av.") else None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__, module.__getattr__ = [], __getattr__
        return module

    def exec_module(self, module):
        pass


sys.meta_path.append(_Submodules())
PY
  av_note="PyAV: a stand-in (the machine has none)"
else
  av_note="PyAV: the machine's own"
fi
# As benchmarks/run.sh sets it: tests/ (reference, tiny models, node graph), scripts/ (headless)
export PYTHONPATH="$repo/tests:$repo/scripts:$repo/benchmarks:$work/site${PYTHONPATH:+:$PYTHONPATH}"

# 2. What the summary starts with: the machine, the checkout, the bundle.
{
  echo "Cross-Image Attention GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)$([ "$quick" = 1 ] && echo ', --quick (tiny models)')"
  "$PY" -c 'import platform, torch
print("card:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)")
print("torch:", torch.__version__, "CUDA", torch.version.cuda, "| python", platform.python_version())'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/nvidia-smi: /' || true
  echo "checkout: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" status --porcelain 2>/dev/null | grep -q . && echo ' (with changes)')"
  echo "$av_note"
  echo "bundle ($bundle):"; sed 's/^/  /' "$bundle/MANIFEST.txt"
} > "$summary" 2>&1
if [ "$quick" = 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  log "no CUDA device for $PY: the full-size runs need one (--quick runs on a CPU)"; exit 2
fi
# ComfyUI 0.33.0's DynamicVRAM (comfy-aimdo, NVIDIA only) is set up by its main.py, which the
# headless runner does not run: benchmark.py --dynamic-vram does what main.py does.
if [ "$quick" = 0 ]; then
  dynamic="--dynamic-vram"; note "0.33.0: with DynamicVRAM (benchmark.py --dynamic-vram)"
else
  dynamic=""; note "0.33.0: without DynamicVRAM (--quick runs on a CPU)"
fi
note "" "runs (status, wall seconds, command):"

# 3. Each run: its own time limit, its output to <out>/<name>.txt; a run that fails is noted and
#    the next goes on. Unless --full, a run is stopped once it printed what the README quotes:
#    its last "one appearance onto N structure(s)" line, else its paper-defaults block.
failed=0 pid="" ran=() selected=0
trap '[ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null; exit 130' INT TERM  # no run outlives the check
for entry in "${plan[@]}"; do
  IFS='|' read -r name release limit args <<< "$entry"
  [ -z "$only" ] || [[ "$only" == *",$name,"* ]] || continue
  selected=$(( selected + 1 ))
  [ "$release" = 0.33.0 ] && args="$args $dynamic"
  command="COMFYUI_PATH=$work/ComfyUI-$release $PY benchmarks/benchmark.py $args"
  left=$(( deadline - $(date +%s) - 5 ))
  if (( left < 45 )); then note "$name: skipped, ${left} s of the budget left: $command"; failed=1; continue; fi
  (( limit > left )) && limit=$left
  stop=""
  if [ "$full" = 0 ] && [[ "$args" != *"--model flux"* ]]; then
    if [[ "$args" =~ --structures\ ([0-9,]+) ]]; then stop="one appearance onto ${BASH_REMATCH[1]##*,} structure"
    else stop="^paper defaults +seconds/transfer"; fi
  fi
  log "$name (at most $limit s): $command"
  ran+=("$name")
  echo "# $command" > "$out/$name.txt"
  begin="$(date +%s)" stopped=0
  # shellcheck disable=SC2086  # args are words
  (cd "$repo" && COMFYUI_PATH="$work/ComfyUI-$release" exec timeout -k 10 "$limit" "$PY" benchmarks/benchmark.py $args) \
    >> "$out/$name.txt" 2>&1 &
  pid=$!
  while [ -n "$stop" ] && kill -0 "$pid" 2>/dev/null; do
    if grep -Eq -- "$stop" "$out/$name.txt"; then
      sleep 2 && kill -TERM "$pid" 2>/dev/null && stopped=1; break  # timeout passes it on to the run's processes
    fi
    sleep 1
  done
  if wait "$pid"; then rc=0; else rc=$?; fi
  seconds=$(( $(date +%s) - begin ))
  if [ "$stopped" = 1 ]; then status="ok (stopped once the quoted figures were out)"
  elif [ "$rc" = 0 ]; then status="ok"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="TIMED OUT at $limit s"; failed=1
  else status="FAILED (exit $rc)"; failed=1; fi
  note "$name: $status, $seconds s: $command"
  log "$name: $status, $seconds s"
done

# 4. The figures, from each run's output (its other lines are ComfyUI's log).
(( selected )) || { note "(no run of the plan is named by --only '${only//,/ }')"; failed=1; }
note "" "figures:"
for name in ${ran[@]+"${ran[@]}"}; do
  note "== $name"
  grep -E '^(device:|paper defaults|cheapest faithful|full method|attention step|patched layer)' "$out/$name.txt" \
    >> "$summary" || note "(none)"
done
note "" "total: $(( $(date +%s) - started )) s"
log "results: $out"
echo "$out"
exit "$failed"
