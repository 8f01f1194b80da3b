#!/usr/bin/env bash
# The one GPU run of a session: train the default model, evaluate it, benchmark it and the oasis preset.
# Runs on the lent GPU machine (no install: PYTHONPATH); copies at most 8 files to $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 REVERIE="python3 -m reverie_cli"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/rv
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/log.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/log.txt"
bash runs/default_model.sh "$W" 2>&1 | grep -v -E '^\s*$|it/s\]|frame/s\]' | tee -a "$OUT/log.txt"
cp "$W/default.safetensors" "$OUT/" 2>/dev/null
cp "$W/eval_s2.png" "$OUT/" 2>/dev/null
cp "$(ls "$W"/wm/samples/*.png 2>/dev/null | tail -1)" "$OUT/rollout.png" 2>/dev/null
cp "$(ls "$W"/wm/samples/*.gif 2>/dev/null | tail -1)" "$OUT/rollout.gif" 2>/dev/null
M="$W/default.safetensors"
for args in "--steps 2" "--steps 1" "--steps 4" "--steps 2 --guidance 1.5" "--steps 2 --batch 16" "--steps 2 --no-cuda-graph"; do
  name=$(echo "$args" | tr -d ' -' ); timeout 45 python3 -m reverie_cli bench --model "$M" --device cuda --frames 300 $args \
    --json "$W/bench_$name.json" 2>&1 | tail -1 | tee -a "$OUT/log.txt"
done
timeout 90 python3 -m reverie_cli bench --preset oasis --device cuda --frames 200 --steps 4 --json "$W/bench_oasis.json" \
  2>&1 | tail -1 | tee -a "$OUT/log.txt"
python3 - "$W" "$OUT/results.json" <<'PY'
import glob, json, os, sys
w, out = sys.argv[1], sys.argv[2]
res = {}
for f in sorted(glob.glob(f"{w}/eval_*.json") + glob.glob(f"{w}/bench_*.json")):
    res[os.path.basename(f)[:-5]] = json.load(open(f))
for stage in ("ae", "idm", "wm"):
    p = f"{w}/{stage}/metrics.jsonl"
    if os.path.exists(p):
        rows = [json.loads(l) for l in open(p)]
        res[f"train_{stage}"] = {"last": rows[-1], "rows": len(rows)}
json.dump(res, open(out, "w"), indent=1)
PY
ls -la "$OUT"
