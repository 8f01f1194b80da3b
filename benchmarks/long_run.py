"""A 10,000-frame run of the real-time session: memory stays constant and latents finite (issue 4).

    python benchmarks/long_run.py [--model CKPT | --preset tiny] [--frames 10000] [--json long_run.json]

Prints RSS every 1,000 frames and saves JSON with the growth after warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine.errors import ReverieError
from engine.knobs import arg_type, check_threads
from engine.output import check_count, prepare_output, write_json
from engine.session import Session
from play.bench import held_actions, random_session


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint (default: random weights of --preset)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--frames", type=arg_type(check_count(1), "--frames", int), default=10_000)
    p.add_argument("--warmup", type=arg_type(check_count(0), "--warmup", int), default=500)
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=1)
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                   help="with --model: the session's backend (default torch)")
    p.add_argument("--json", type=Path, default=Path("long_run.json"), help="results (folders are made)")
    a = p.parse_args(argv)
    try:
        return run(a)
    except ReverieError as e:
        print(f"long_run: error: {e}", file=sys.stderr)
        return 1


def run(a: argparse.Namespace) -> int:
    prepare_output(a.json)
    torch.set_num_threads(a.threads)
    if a.model:
        from export.prepare import prepare_backend

        backend, graphs = prepare_backend(a.model, a.backend, 1, "cpu")
        s = Session(a.model, backend=backend, graphs=graphs, threads=a.threads)
        s.reset()
    else:
        s = random_session(a.preset, "cpu", 1, 2, 1.0, "fp32", False)
        s.reset(np.random.default_rng(0).integers(0, 256, (8, *s.frame_shape), dtype=np.uint8))
    acts = held_actions(s.spec, a.frames)
    rss, base, t0 = [], rss_mb(), time.perf_counter()
    for t in range(a.frames):
        s.step(acts[t])
        if t == a.warmup:
            base = rss_mb()
        if t % 1000 == 999:
            if not torch.isfinite(s.latent).all():
                raise SystemExit(f"non-finite latent at frame {t + 1}")
            rss.append(round(rss_mb(), 2))
            print(f"frame {t + 1}: RSS {rss[-1]:.1f} MB", flush=True)
    out = {"backend": s.backend, "steps": s.steps, "guidance": s.guidance,
           "frames": a.frames, "seconds": time.perf_counter() - t0, "rss_after_warmup_mb": base, "rss_mb": rss,
           "rss_growth_mb": rss[-1] - base if rss else 0.0, "finite": bool(torch.isfinite(s.latent).all()),
           "frame_count": int(s.state()["tensors"]["frame_count"])}
    print(json.dumps(out))
    write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
