"""`reverie export`: write a checkpoint's real-time step as ONNX graphs (backbone step, head step, decode).

With no --out the graphs go to the cache where `--backend onnxruntime` sessions look for them, so running this
once ahead of time removes the export from the first `reverie play` / `reverie bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reverie export", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="world-model checkpoint (default: the shipped model)")
    p.add_argument("--format", default="onnx", choices=["onnx", "tensorrt"],
                   help="onnx (default), or tensorrt: also build TensorRT engines beside the graphs (CUDA GPU)")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"],
                   help="TensorRT kernel precision (default fp16)")
    p.add_argument("--batch", type=int, default=1, help="worlds stepped together (the graphs have static shapes)")
    p.add_argument("--out", default=None, help="output folder (default: the onnxruntime backend's cache)")
    args = p.parse_args(argv)
    from engine.checkpoint import CheckpointError, load_checkpoint
    from engine.session import DEFAULT_MODEL

    if args.batch < 1:
        print(f"reverie export: error: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 1
    try:
        import onnx  # noqa: F401
    except ImportError:
        print("reverie export: error: the onnx package is missing: pip install onnx onnxruntime", file=sys.stderr)
        return 1
    from export.onnx import MANIFEST, export_onnx

    t0 = time.perf_counter()
    try:
        ckpt = load_checkpoint(args.model or DEFAULT_MODEL)
        if args.out is None:
            from engine.ort_runtime import graphs_for

            out = graphs_for(ckpt, args.batch, quiet=True)
        else:
            out = export_onnx(ckpt.path, Path(args.out), batch=args.batch)
        if args.format == "tensorrt":
            from engine.trt_runtime import build_engines

            build_engines(out, args.precision)
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"reverie export: error: {e}", file=sys.stderr)
        return 1
    man = json.loads((out / MANIFEST).read_text())
    errs = ", ".join(f"{k} {v:.1e}" for k, v in man["max_abs_error"].items() if v is not None)
    print(f"wrote {out} ({', '.join(man['graphs'].values())}) in {time.perf_counter() - t0:.1f} s"
          + (f"; max |onnxruntime - torch|: {errs}" if errs else ""))
    return 0
