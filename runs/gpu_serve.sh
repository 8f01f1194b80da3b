#!/usr/bin/env bash
# The serve bar on one CUDA GPU: `reverie serve` with the default model on the GPU (torch, CUDA graphs), driven by
# `reverie bench --serve` with 16 and then 64 clients from the same machine, 20 s each, loopback only.
#
#   bash runs/gpu_serve.sh            results in $OUT where it is set (the device tool), else runs/gpu_results/
#   DEVICE=cpu BACKEND=onnxruntime SECONDS_EACH=5 OUT=/tmp/s bash runs/gpu_serve.sh    the same run on a CPU
#
# Needs the project's play extra on that machine (websockets, msgpack): a lent device machine has no network, so
# install them there from wheels carried with the working tree, or run this where pip works. Writes serve_K16.json,
# serve_K64.json and serve_log.txt; exit 1 when a run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_results}
PORT=${PORT:-18765}
mkdir -p "$OUT"
python3 -c "import websockets, msgpack" 2>/dev/null || { echo "gpu_serve: needs websockets and msgpack (pip install -e '.[play]')" | tee "$OUT/serve_log.txt"; exit 1; }
python3 -m reverie_cli serve --device "${DEVICE:-cuda}" --backend "${BACKEND:-torch}" --max-worlds 64 --port "$PORT" --fps max \
    >"$OUT/serve_log.txt" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 120); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 1; done
status=0
for k in 16 64; do
    timeout 120 python3 -m reverie_cli bench --serve "ws://127.0.0.1:$PORT" --clients "$k" --seconds "${SECONDS_EACH:-20}" \
        --json "$OUT/serve_K$k.json" >>"$OUT/serve_log.txt" 2>&1 || status=1
done
exit $status
