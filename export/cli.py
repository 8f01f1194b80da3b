"""`reverie export`: write a checkpoint's real-time step as ONNX graphs, optionally build TensorRT engines, or write
a web page that plays it in a browser.

With no --out the graphs go to the cache where the onnxruntime and tensorrt backends look for them, so running this
once ahead of time removes the export (and the engine build) from the first `reverie play` / `reverie bench`.

`--format web --out DIR` writes a static folder that plays the model in a browser (onnxruntime-web, WASM; see
export/web.py); `--serve` then serves it on 127.0.0.1 with the headers that let the page use threads (export/serve.py)
until Ctrl-C, from a temporary folder when no --out is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_PORT = 8000


def build_parser() -> argparse.ArgumentParser:
    """The `reverie export` parser."""
    p = argparse.ArgumentParser(prog="reverie export", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="world-model checkpoint (default: the shipped model)")
    p.add_argument("--format", default="onnx", choices=["onnx", "tensorrt", "web"],
                   help="onnx (default); tensorrt: also build TensorRT 10/11 engines beside the graphs (needs "
                        "TensorRT and a CUDA GPU); web: a static folder that plays the model in a browser "
                        "(onnxruntime-web)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="the graphs' weights and matmuls (inputs and outputs stay float32): fp32 (default for onnx; "
                        "what onnxruntime runs), fp16 (default for tensorrt) or bf16")
    p.add_argument("--batch", type=int, default=1, help="worlds stepped together (the graphs have static shapes)")
    p.add_argument("--device", default="cuda", help="the CUDA device TensorRT engines are built for (default cuda)")
    p.add_argument("--out", default=None, help="output folder (default: the backends' cache; --format web needs one "
                                                "unless --serve is given)")
    p.add_argument("--serve", action="store_true",
                   help="with --format web: serve the page on 127.0.0.1, with the headers that let it use threads, "
                        "until Ctrl-C")
    p.add_argument("--port", type=int, default=None,
                   help=f"--serve's port (default {DEFAULT_PORT}; 0 picks a free one)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tensorrt = args.format == "tensorrt"
    precision = args.precision or ("fp16" if tensorrt else "fp32")

    def fail(message: str) -> int:
        print(f"reverie export: error: {message}", file=sys.stderr)
        return 1

    if args.batch < 1:
        return fail(f"--batch must be >= 1, got {args.batch}")
    if args.format == "web" or args.serve or args.port is not None:
        return web(args, fail)
    from engine.errors import ReverieError

    try:
        import onnx  # noqa: F401
    except ImportError:
        return fail("the onnx package is missing: pip install onnx onnxruntime (the project's [export] extra)")
    if tensorrt:  # before anything is exported: the engines need TensorRT and a GPU here
        import torch

        from engine.trt_runner import require_tensorrt

        try:
            device = torch.device(args.device)
        except RuntimeError:   # torch.device's answer to a malformed string
            return fail(f"--device {args.device!r}: not a device; pass cuda or cuda:N")
        try:
            require_tensorrt(device, purpose="--format tensorrt",
                             otherwise="leave out --format tensorrt to write the ONNX graphs only")
        except ReverieError as e:
            return fail(str(e))

    from engine.checkpoint import load_checkpoint
    from engine.graphs import MANIFEST
    from engine.session import DEFAULT_MODEL
    from export.onnx import ensure_graphs, export_onnx

    t0 = time.perf_counter()
    plans: list[Path] = []
    try:
        ckpt = load_checkpoint(args.model or DEFAULT_MODEL)
        if args.out is None:
            out = ensure_graphs(ckpt, args.batch, quiet=True, precision=precision)
        else:
            out = export_onnx(ckpt.path, Path(args.out), batch=args.batch, precision=precision)
        if tensorrt:
            from export.tensorrt import build_engines

            plans = build_engines(out, precision, device)
        man = json.loads((out / MANIFEST).read_text())
    except ReverieError as e:
        return fail(str(e))
    except OSError as e:   # the output folder or the cache cannot be written
        return fail(f"{e.filename or args.out or 'the cache'}: {e.strerror or e}")
    errs = ", ".join(f"{k} {v:.1e}" for k, v in (man.get("max_abs_error") or {}).items() if v is not None)
    files = [*man.get("graphs", {}).values(), *(pl.name for pl in plans)]
    print(f"wrote {out} ({precision}: {', '.join(files)}) in {time.perf_counter() - t0:.1f} s"
          + (f"; max |onnxruntime - torch|: {errs}" if errs else ""))
    return 0


def web(args: argparse.Namespace, fail) -> int:
    """--format web [--serve [--port P]]: write the page's folder, then serve it until Ctrl-C if asked."""
    if args.format != "web":
        flag = "--serve" if args.serve else "--port"
        return fail(f"{flag} serves the web page: add --format web (reverie export --format web --serve)")
    if args.port is not None and not args.serve:
        return fail("--port is the port of --serve: add --serve, or leave out --port")
    if args.precision is not None:
        return fail("--precision is for --format onnx and tensorrt; the web page's graphs are float32 "
                    "(leave out --precision)")
    if args.out is None and not args.serve:
        return fail("--format web needs --out DIR, the folder to write (or --serve to look at the page now)")
    port = DEFAULT_PORT if args.port is None else args.port
    if not 0 <= port <= 65535:
        return fail(f"--port {port}: out of range; pass 1..65535, or 0 for a free one")
    try:
        import onnx  # noqa: F401
    except ImportError:
        return fail("the onnx package is missing: pip install onnx onnxruntime (the project's [export] extra)")
    from engine.errors import ReverieError
    from export.serve import FolderServer
    from export.web import export_web

    with tempfile.TemporaryDirectory(prefix="reverie-web-") as tmp:
        try:
            # the port is taken before the export, so a busy one fails now rather than after the export
            server = FolderServer(tmp, port=port) if args.serve else None
        except ReverieError as e:
            return fail(str(e))
        try:
            t0 = time.perf_counter()
            try:
                out = export_web(args.model, Path(args.out) if args.out is not None else Path(tmp) / "web")
            except ReverieError as e:
                return fail(str(e))
            except OSError as e:   # the output folder cannot be written
                return fail(f"{e.filename or args.out}: {e.strerror or e}")
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            print(f"wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s", flush=True)
            if server is None:
                return 0
            server.folder = out
            print(f"serving it at {server.url} (Ctrl-C stops)", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            return 0
        finally:
            if server is not None:
                server.server_close()
