"""The real-time step and the play loop on each CPU backend, back to back in one run (ratios, not lone numbers).

    python benchmarks/bench_backends.py [--model CKPT] [--frames 600] [--json OUT.json]

For torch and onnxruntime, with 1 and 2 threads: `reverie bench` (the session step alone) and
`reverie play --headless` (the whole play loop: worker thread, event pump, scaling, blit, HUD), each as its own
process so that nothing carries over. Prints a table and writes every result to the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from engine.errors import ReverieError
from engine.knobs import arg_type, check_guidance, check_steps
from engine.output import check_count, prepare_output, write_json


def run(argv: list[str], out: Path) -> dict:
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    proc = subprocess.run([sys.executable, "-m", "reverie_cli", *argv, "--json", str(out)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--frames", type=arg_type(check_count(1), "--frames", int), default=600)
    p.add_argument("--steps", type=arg_type(check_steps, "--steps", int), default=None,
                   help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=arg_type(check_guidance, "--guidance"), default=None,
                   help="guidance (default: the model's)")
    p.add_argument("--json", type=Path, default=None, help="write every result here (folders are made)")
    args = p.parse_args(argv)
    try:
        if args.json is not None:
            prepare_output(args.json)       # before the run, not after it
    except ReverieError as e:
        print(f"bench_backends: error: {e}", file=sys.stderr)
        return 1
    common = (["--model", args.model] if args.model else []) + \
        (["--steps", str(args.steps)] if args.steps else []) + \
        (["--guidance", str(args.guidance)] if args.guidance is not None else [])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("onnxruntime", "torch"):
            for threads in (1, 2):
                key = f"{backend}-{threads}t"
                bench = run(["bench", "--backend", backend, "--threads", str(threads), "--frames",
                             str(args.frames), *common], Path(tmp) / f"b-{key}.json")
                play = run(["play", "--headless", "--backend", backend, "--threads", str(threads), "--frames",
                            str(args.frames), *common], Path(tmp) / f"p-{key}.json")
                results[key] = {"bench": bench, "play": play}
                print(f"{key:16} bench {bench['fps']:6.1f} fps p50 {bench['p50_ms']:5.2f} p99 {bench['p99_ms']:5.2f} ms"
                      f" (backbone {bench['backbone_ms']:.2f} / head {bench['head_ms']:.2f} / decode "
                      f"{bench['decode_ms']:.2f})   play {play['fps']:6.1f} fps p50 {play['p50_ms']:5.2f} p99 "
                      f"{play['p99_ms']:5.2f} ms latency p50 {play.get('latency_ms_p50', float('nan')):5.2f} ms",
                      flush=True)
    if args.json is not None:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
