#!/usr/bin/env bash
# The GPU check: one script, no network, at most 8 minutes on one H100 with the machine's own torch and Triton.
#
#   bash runs/gpu_check.sh                 results in $OUT where it is set (the device tool), else runs/gpu_results/
#   BUDGET=470 bash runs/gpu_check.sh      seconds for the whole: each step runs under `timeout`, cut to what is left
#   TRAIN_EXTRA="..." bash runs/...        more `--set` for the training step (default: the stages before the world
#                                          model a few hundred steps too, and a loss row every 20 steps)
#
# The steps, most needed first; each one's exit code and seconds go to log.txt as it ends, its results into the
# results folder as it ends (8 files at most, all the device tool brings back):
#   versions.txt        python, torch, CUDA, cuDNN, the GPU and its driver, Triton (and whether the kernels run),
#                       onnxruntime with its execution providers, onnx, TensorRT
#   pytest_gpu.xml      pytest -m gpu over the files that hold gpu tests (tests/test_gpu.py, test_ort.py's CUDA runs)
#   pytest_kernels.xml  tests/test_kernels.py on CUDA: every Triton kernel compiled and against its reference
#   bench.jsonl         one line per `reverie bench`: the shipped model at batch 1 and 16, reference against Triton
#                       kernels (both CUDA graphs) and CUDA graphs against eager (reference); then the model trained here
#   train.jsonl         the gpu recipe's loss curve (every stage's metrics rows, stage named) and its eval
#   gpu_check.json      runs/gpu_check.py: what the tests do not assert (noise, SDPA backends, split, oasis, memory)
#   kernels.json        runs/kernels_gpu.py: the kernels in bf16 / fp16 / fp32 at the session's shapes, the step on/off
#   log.txt             everything the steps print, and a line per step
# Scratch (episodes, the run folder, bench JSON) goes to $WORK. Exit 1 when a step failed, timed out or was skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_results}
WORK=${WORK:-/tmp/reverie-gpu-check}
BUDGET=${BUDGET:-470}
PY=${PYTHON:-python3}
TRAIN_EXTRA=${TRAIN_EXTRA:---set ae.steps=300 --set idm.steps=300 --set log_every=20}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/log.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1 SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy PYGAME_HIDE_SUPPORT_PROMPT=1
export REVERIE_CACHE=${REVERIE_CACHE:-$WORK/cache}
FAILED=()

say() { echo "[$SECONDS s] $*" | tee -a "$LOG"; }

# step NAME MOST COMMAND...: COMMAND under `timeout`, for MOST seconds or what is left of the budget if less
step() {
  local name=$1 most=$2 left=$(( BUDGET - SECONDS )) t0=$SECONDS rc
  shift 2
  if (( left < 15 )); then
    say "step $name: skipped, the budget is spent"
    FAILED+=("$name(skipped)")
    return 0
  fi
  (( most < left )) || most=$left
  say "step $name, at most $most s: $*"
  timeout --kill-after=10 "$most" "$@" 2>&1 | grep --line-buffered -v -E '^\s*$|it/s\]|step/s\]' | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  say "step $name: exit $rc in $(( SECONDS - t0 )) s$( (( rc == 124 )) && echo ', timed out')"
  (( rc == 0 )) || FAILED+=("$name($rc)")
}

# the project from this tree: installed already, else an editable install with no index (there is no network)
if ! (cd / && "$PY" -c "import reverie_cli, engine.session" 2>/dev/null); then
  say "reverie is not importable: pip install -e . --no-deps (no index, no build isolation)"
  "$PY" -m pip install -q -e . --no-deps --no-index --no-build-isolation >>"$LOG" 2>&1 || say "pip install failed"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
REVERIE=("$PY" -m reverie_cli)

step versions 60 "$PY" - "$OUT/versions.txt" <<'PY'
import importlib, platform, subprocess, sys
import torch
lines = [f"python {platform.python_version()}", f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
         f"cuDNN {torch.backends.cudnn.version()}, CUDA available {torch.cuda.is_available()}"]
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    lines.append(f"gpu {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=20).stdout.strip()
    lines.append(f"driver {smi}")
except (OSError, subprocess.TimeoutExpired) as e:
    lines.append(f"driver: nvidia-smi failed ({e})")
for name in ("triton", "onnxruntime", "onnx", "tensorrt"):
    try:
        lines.append(f"{name} {importlib.import_module(name).__version__}")
    except Exception as e:  # noqa: BLE001 (a broken install counts as absent)
        lines.append(f"{name}: not importable ({type(e).__name__}: {e})")
try:
    import onnxruntime
    lines.append(f"onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
except ImportError:
    pass
from kernels import triton_problem
lines.append(f"Triton kernels on cuda: {triton_problem('cuda') or 'they run'}")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

# only the files that hold gpu tests: collecting the rest would import pygame, gymnasium, ...
mapfile -t GPU_TESTS < <(grep -l "mark.gpu" tests/test_*.py)
step pytest_gpu 150 "$PY" -m pytest -m gpu -q -rs --tb=short -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" \
  "${GPU_TESTS[@]}"
step pytest_kernels 90 "$PY" -m pytest -q -rs --tb=short -p no:cacheprovider \
  --junitxml="$OUT/pytest_kernels.xml" tests/test_kernels.py

# bench LABEL ARGS...: `reverie bench` on CUDA, its JSON appended to bench.jsonl as one line named LABEL
bench() {
  local label=$1 json="$WORK/bench_$1.json"
  shift
  rm -f "$json"
  step "bench_$label" 45 "${REVERIE[@]}" bench --device cuda --backend torch --frames 300 --warmup 30 --json "$json" "$@"
  if [[ -f $json ]]; then
    "$PY" -c 'import json, sys; print(json.dumps({"label": sys.argv[2], **json.load(open(sys.argv[1]))}))' \
      "$json" "$label" >>"$OUT/bench.jsonl"
  fi
}
for batch in 1 16; do
  bench "b${batch}_reference_graphs" --batch "$batch" --kernels reference
  bench "b${batch}_triton_graphs" --batch "$batch" --kernels triton
  bench "b${batch}_reference_eager" --batch "$batch" --kernels reference --no-cuda-graph
done

# a few hundred steps of the gpu recipe on freshly recorded play, its loss curve, and the model benched
DATA="$WORK/data" RUN="$WORK/run"
rm -rf "$DATA" "$RUN"
step record 60 "${REVERIE[@]}" record --env builtin:gems --agent scripted --episodes 40 --steps 1000 --size 64 \
  --out "$DATA" --no-progress
# shellcheck disable=SC2086  # TRAIN_EXTRA is a list of flags
step train 200 "${REVERIE[@]}" train --recipe gpu --data "$DATA" --out "$RUN" --set wm.steps=300 $TRAIN_EXTRA
step loss_curve 30 "$PY" - "$RUN" "$OUT/train.jsonl" <<'PY'
import json, sys
from pathlib import Path
run, rows = Path(sys.argv[1]), []
for metrics in sorted(run.glob("*/metrics.jsonl")):
    stage = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows += [{"stage": metrics.parent.name, **r} for r in stage]
    losses = [r["loss"] for r in stage if isinstance(r.get("loss"), (int, float))]
    print(f"{metrics.parent.name}: {len(stage)} rows" + (f", loss {losses[0]:.4g} -> {losses[-1]:.4g}" if losses else ""))
if (run / "eval.json").is_file():
    rows.append({"stage": "eval", **json.loads((run / "eval.json").read_text())})
Path(sys.argv[2]).write_text("".join(json.dumps(r) + "\n" for r in rows))
if not rows:
    sys.exit(f"no metrics.jsonl under {run}: the training step wrote none")
PY
if [[ -f "$RUN/model.safetensors" ]]; then
  bench model_b1 --model "$RUN/model.safetensors" --batch 1
else
  say "no $RUN/model.safetensors to bench"
  FAILED+=("bench_model(no model)")
fi

step gpu_check 90 "$PY" runs/gpu_check.py --out "$OUT" --budget 45
step kernels_gpu 80 "$PY" runs/kernels_gpu.py --out "$OUT" --work "$WORK/kernels" --parts env,correct,step --budget 40

say "done in $SECONDS s; results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
if (( ${#FAILED[@]} )); then
  say "not clean: ${FAILED[*]}"
  exit 1
fi
