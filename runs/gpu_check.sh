#!/usr/bin/env bash
# The GPU check of a session: one script, no network, at most about 6 minutes on one H100/H200 with the machine's own
# torch and Triton (pygame and TensorRT need not be there).
#
#   bash runs/gpu_check.sh                 results in results/gpu (or in $OUT where that is set, e.g. the device tool)
#   BUDGET=360 bash runs/gpu_check.sh      seconds for the whole script (runs/gpu_check.py skips parts past it)
#   RECIPE=1 bash runs/gpu_check.sh        then also train the default model (runs/default_model.sh, ~8 min more)
# The fused Triton kernels have their own check of under 5 minutes: python3 runs/kernels_gpu.py (writes kernels.json).
#
# 1. the machine: nvidia-smi, torch / CUDA / Triton versions
# 2. the CUDA-marked tests: python -m pytest -m gpu (JUnit XML; each skips without CUDA)
# 3. runs/gpu_check.py: one results.json with every number and its pass/fail against the bars, and summary.md (a
#    README-ready table): reverie bench of the default model at batch 1 and 16, the oasis preset at 1/2/4 steps with
#    guidance, CUDA graph vs eager, bf16 vs fp32, the noise draw, graph captures and replays, SDPA backends, the
#    device handling, eval and a short training run on CUDA. Each part is wrapped: a failure is recorded, the rest runs.
# At most 8 files land in the results folder (the device tool brings back no more): log.txt, nvidia-smi.txt,
# pytest_gpu.xml, results.json, summary.md; scratch (data, training runs) goes to $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
WORK=${WORK:-/tmp/reverie-gpu-check}
BUDGET=${BUDGET:-360}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/log.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1 SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy PYGAME_HIDE_SUPPORT_PROMPT=1
export REVERIE_CACHE=${REVERIE_CACHE:-$WORK/cache}
say() { echo "[$SECONDS s] $*" | tee -a "$LOG"; }

# the project from this tree: installed already, else an editable install with no index (there is no network)
if ! (cd / && "$PY" -c "import reverie_cli, engine.session" 2>/dev/null); then
  say "reverie is not importable: pip install -e . --no-deps (no index, no build isolation)"
  "$PY" -m pip install -q -e . --no-deps --no-index --no-build-isolation >>"$LOG" 2>&1 || say "pip install failed; using PYTHONPATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
REVERIE=${REVERIE:-"$PY -m reverie_cli"}
export REVERIE

say "machine"
{ nvidia-smi || echo "nvidia-smi failed"; } >"$OUT/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG" || true
set +e
"$PY" - <<'PY' 2>&1 | tee -a "$LOG"
import platform, torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = None
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}, "
      f"cuda available {torch.cuda.is_available()}, devices {torch.cuda.device_count()}")
PY
[[ ${PIPESTATUS[0]} == 0 ]] || say "$PY could not import torch"
set -e

say "pytest -m gpu"
# only the files that hold gpu tests: collecting the rest would import pygame, gymnasium, ... (not on a GPU machine)
mapfile -t GPU_TESTS < <(grep -l "mark.gpu" tests/test_*.py)
set +e
timeout 200 "$PY" -m pytest -m gpu -q -rs --tb=short -p no:cacheprovider --continue-on-collection-errors \
  --junitxml="$OUT/pytest_gpu.xml" "${GPU_TESTS[@]}" 2>&1 | tee -a "$LOG"
PYTEST_RC=${PIPESTATUS[0]}
set -e
say "pytest exit code $PYTEST_RC"

LEFT=$(( BUDGET - SECONDS - 60 ))      # the last part started may still run a minute
if (( LEFT < 60 )); then LEFT=60; fi
[[ -f runs/gpu_check.py ]] || say "runs/gpu_check.py is missing (it travels and commits only if .gitignore lets it)"
say "runs/gpu_check.py (parts start within $LEFT s)"
set +e
timeout $(( LEFT + 240 )) "$PY" runs/gpu_check.py --out "$OUT" --work "$WORK" --budget "$LEFT" \
  --pytest-xml "$OUT/pytest_gpu.xml" --pytest-rc "$PYTEST_RC" 2>&1 | grep -v -E '^\s*$|it/s\]' | tee -a "$LOG"
CHECK_RC=${PIPESTATUS[0]}
set -e
say "gpu_check.py exit code $CHECK_RC"

if [[ "${RECIPE:-0}" == "1" ]]; then
  say "the default model's GPU recipe (runs/default_model.sh)"
  set +e
  bash runs/default_model.sh "$WORK/recipe" 2>&1 | grep -v -E '^\s*$|it/s\]|frame/s\]' | tee -a "$LOG"
  say "recipe exit code ${PIPESTATUS[0]}"
  set -e
  for f in default.safetensors eval_s1.json eval_s2.json; do   # 8 files at most in the results folder
    if [[ -f "$WORK/recipe/$f" ]]; then cp "$WORK/recipe/$f" "$OUT/"; fi
  done
fi

say "done in $SECONDS s; results in $OUT"
ls -la "$OUT" | tee -a "$LOG"
if [[ -f "$OUT/summary.md" ]]; then cat "$OUT/summary.md"; fi
# exit 1 when a test failed or the check itself broke (the numbers, pass or fail, are in results.json either way)
if [[ $PYTEST_RC != 0 && $PYTEST_RC != 5 ]] || [[ $CHECK_RC != 0 ]]; then exit 1; fi
