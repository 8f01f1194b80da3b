"""The numbers of a GPU check that tests/test_gpu.py does not assert (runs/gpu_check.sh runs it after the tests).

    python3 runs/gpu_check.py [--out DIR] [--budget 90] [--only noise,sdpa] [--quick --device cpu]

Parts, each wrapped (a failure is recorded, the rest runs), none started after --budget seconds, DIR/gpu_check.json
rewritten whole as each ends (a timeout loses nothing); kernels modes: reference, and triton where it runs:
  noise      one counter-noise draw: eager (~110 kernels), torch.compile, the Triton kernel (us)
  sdpa       one frame's queries against a full ring and a filling (masked) one, default and oasis shapes, with each
             SDPA backend alone (only that kernel may run: its time, or its refusal) and Triton's ring_attention
  split      backbone / head / decode ms of a frame (CUDA events), shipped model and oasis preset, per kernels mode
  oasis      the oasis preset, guidance 2, 1/2/4 steps, per kernels mode: ms a frame against the design target
  switch     the frame right after a change of steps or guidance against steady frames (nothing is captured then)
  precision  the shipped model in bf16 against fp32 over 32 frames: PSNR per frame (the test checks the first)
  memory     peak CUDA memory of the oasis preset at batch 16 with every graph captured, per kernels mode
Frames are timed by the host clock around Session.step (the frame is in host memory when it returns), as `reverie
bench` does; parts by CUDA events. Public API only: Session, its knobs, `profile` / `times`, `runner.kernels`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from play.bench import held_actions  # noqa: E402  (a player's actions: a button held 2-12 frames at a time)

SDPA = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH", "cudnn": "CUDNN_ATTENTION"}
OASIS_TARGET_FPS = 300.0        # shared/DESIGN.md: the oasis-scale preset, one H100/H200, 4 steps, decode included


def sub(res: dict, name: str, fn: Callable[[], Any]) -> Any:
    """res[name] = fn(), or {"error": ...}: a check that fails leaves the rest of its part running."""
    try:
        res[name] = fn()
    except (Exception, SystemExit) as e:  # noqa: BLE001 (anything a CUDA library raises; a CLI's exit)
        res[name] = {"error": f"{type(e).__name__}: {e}"[:600], "where": traceback.format_exc()[-800:]}
    return res[name]


def gpu_ms(dev: torch.device, fn: Callable[[], Any], reps: int) -> float:
    """ms a call of fn after warm-up: CUDA events around `reps` calls (the host clock on a CPU)."""
    for _ in range(3):
        fn()
    if dev.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) * 1e3 / reps
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def frame_ms(sess, acts) -> np.ndarray:
    out = np.empty(len(acts))
    for i, a in enumerate(acts):
        t0 = time.perf_counter()
        sess.step(a)
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


class Ctx:
    def __init__(self, args):
        self.dev, self.quick = torch.device(args.device), args.quick
        self.big = "tiny" if args.quick else "oasis"             # the preset of the big-model parts
        from kernels import triton_problem  # why Triton kernels cannot run here (None: they can)

        self.triton = triton_problem(self.dev) if self.dev.type == "cuda" else "a CPU run keeps to the reference"
        self.modes = ["reference"] + (["triton"] if self.triton is None else [])

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def session(self, preset: str | None, kernels: str = "auto", **kw):
        """The shipped model (preset None) or random weights of a preset, torch backend, primed and warm."""
        from engine.session import Session
        from play.bench import random_session  # random weights of a preset, as `reverie bench --preset`

        if preset is None:
            sess = Session(None, backend="torch", device=self.dev, kernels=kernels, **kw)
            sess.reset()
        else:
            sess = random_session(preset, str(self.dev), kw.pop("batch", 1), kw.pop("steps", None),
                                  kw.pop("guidance", None), kw.pop("dtype", "auto"), True, kernels)
            sess.reset(np.random.default_rng(0).integers(0, 256, (max(1, sess.cfg.context_frames // 2),
                                                                  *sess.frame_shape), dtype=np.uint8))
        acts = held_actions(sess.spec, sess.cfg.context_frames + 4)
        frame_ms(sess, acts)                                          # captures done, the ring full
        return sess


def part_noise(ctx: Ctx) -> dict:
    from engine.noise import counter_normal

    draws = {"eager": counter_normal}
    if ctx.dev.type == "cuda":   # (on a CPU, inductor's C++ build takes minutes)
        draws["compiled"] = torch.compile(counter_normal, dynamic=False, fullgraph=True)
    if ctx.triton is None:
        from kernels.noise import counter_normal as kernel

        draws["triton"] = kernel

    def draw_us(fn, B: int, shape: tuple[int, ...]) -> float:
        seed, counter = torch.arange(B, device=ctx.dev) * 1_000_003 + 11, torch.arange(B, device=ctx.dev) + 7
        return 1e3 * gpu_ms(ctx.dev, lambda: fn(seed, counter, shape, 0), ctx.n(200, 5))

    res = {"default_head": {}, "oasis_head_b16": {}}
    for name, fn in draws.items():
        sub(res["default_head"], f"{name}_us", lambda fn=fn: draw_us(fn, 1, (16, 64)))
        sub(res["oasis_head_b16"], f"{name}_us", lambda fn=fn: draw_us(fn, 16, (144, 64)))
    return res


def attention_ms(ctx: Ctx, preset: str) -> dict:
    """One frame's queries against a full ring and a half-full (masked) one: each SDPA kernel alone, and Triton's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from engine.config import ModelConfig
    from kernels.ring_attention import ring_mask

    c, reps = ModelConfig.from_name(preset, action_dim=8).world_model, ctx.n(200, 3)
    H, N, hd, W = c.heads, c.tokens_per_frame, c.head_dim, c.context_frames
    dt = torch.bfloat16 if ctx.dev.type == "cuda" else torch.float32
    q, k, v = (torch.randn(1, H, L, hd, device=ctx.dev, dtype=dt) for L in (N, W * N, W * N))
    valid, slot = torch.arange(W, device=ctx.dev)[None] < W // 2, torch.tensor(W // 2, device=ctx.dev)   # (1, W)
    masks = {"full": None, "masked": ring_mask(valid, slot, N).to(dt)}
    row: dict[str, Any] = {"queries": N, "keys": W * N, "heads": H, "head_dim": hd}

    def alone(backend: str, mask) -> float:   # that kernel alone: it runs, or SDPA says it cannot
        with sdpa_kernel([getattr(SDPBackend, SDPA[backend])]):
            return gpu_ms(ctx.dev, lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), reps)

    for backend in SDPA:
        for ring, mask in masks.items():
            sub(row, f"{backend}_{ring}_ms", lambda b=backend, m=mask: alone(b, m))
    if ctx.triton is None:
        from kernels.ring_attention import ring_attention

        sub(row, "triton_full_ms", lambda: gpu_ms(ctx.dev, lambda: ring_attention(q, k, v), reps))
        sub(row, "triton_masked_ms", lambda: gpu_ms(ctx.dev, lambda: ring_attention(q, k, v, valid, slot, N), reps))
    return row


def part_sdpa(ctx: Ctx) -> dict:
    return {preset: attention_ms(ctx, preset) for preset in ("tiny", ctx.big)}


def per_mode(ctx: Ctx, fn: Callable[[str], dict]) -> dict:
    """fn(kernels) for each kernels mode that runs here, each wrapped."""
    res: dict[str, Any] = {}
    for mode in ctx.modes:
        sub(res, mode, lambda mode=mode: fn(mode))
    return res


def part_split(ctx: Ctx) -> dict:
    def split(preset: str | None, mode: str) -> dict:
        sess = ctx.session(preset, mode, **({} if preset is None else {"steps": 4, "guidance": 2.0}))
        sess.profile, rows = True, []
        for a in held_actions(sess.spec, ctx.n(30, 3), seed=2):
            sess.step(a)
            rows.append((sess.times.backbone_ms, sess.times.head_ms, sess.times.decode_ms))
        out = dict(zip(("backbone_ms", "head_ms", "decode_ms"), map(float, np.median(np.array(rows), axis=0))))
        out.update(steps=sess.steps, guidance=sess.guidance, kernels=sess.runner.kernels)
        sess.close()
        return out

    return {"default": per_mode(ctx, lambda mode: split(None, mode)),
            ctx.big: per_mode(ctx, lambda mode: split(ctx.big, mode))}


def part_oasis(ctx: Ctx) -> dict:
    def frames(mode: str) -> dict:
        sess, out = ctx.session(ctx.big, mode, steps=4, guidance=2.0), {}
        acts = iter(held_actions(sess.spec, 2000, seed=1))
        for steps in (1, 2, 4):
            sess.steps = steps
            frame_ms(sess, [next(acts) for _ in range(ctx.n(20, 2))])
            ms = frame_ms(sess, [next(acts) for _ in range(ctx.n(200, 4))])
            out[f"steps{steps}"] = {"p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
                                    "fps": 1e3 / float(ms.mean())}
        sess.close()
        return {**out, "meets_target": out["steps4"]["fps"] >= OASIS_TARGET_FPS}

    return {"target": f">= {OASIS_TARGET_FPS:.0f} frames/s at 4 steps, guidance 2", **per_mode(ctx, frames)}


def part_switch(ctx: Ctx) -> dict:
    sess = ctx.session(None, steps=1, guidance=1.75)
    acts, rows = iter(held_actions(sess.spec, 2000, seed=3)), []
    for steps, guidance in [(2, 1.75), (2, 1.0), (4, 2.0), (3, 1.0), (1, 1.75), (4, 1.0), (1, 1.0)]:
        sess.steps, sess.guidance = steps, guidance
        first = float(frame_ms(sess, [next(acts)])[0])
        steady = float(np.median(frame_ms(sess, [next(acts) for _ in range(ctx.n(30, 3))])))
        rows.append({"steps": steps, "guidance": guidance, "first_ms": first, "steady_p50_ms": steady})
    kernels = sess.runner.kernels
    sess.close()
    worst = max(r["first_ms"] - r["steady_p50_ms"] for r in rows)
    return {"kernels": kernels, "changes": rows, "worst_extra_ms": worst}


def part_precision(ctx: Ctx) -> dict:
    from engine.session import Session

    frames = {}
    for dtype in ("bf16", "fp32"):
        sess = Session(None, backend="torch", device=ctx.dev, dtype=dtype, seed=9)
        sess.reset()
        frames[dtype] = [np.array(sess.step(a), copy=True) for a in held_actions(sess.spec, ctx.n(32, 3), 8)]
        sess.close()
    mse = [float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) for a, b in zip(*frames.values())]
    by_step = [math.inf if e == 0 else 10 * math.log10(255.0 ** 2 / e) for e in mse]
    return {"psnr_by_step": [round(p, 2) for p in by_step], "psnr_min": min(by_step)}


def part_memory(ctx: Ctx) -> dict:
    if ctx.dev.type != "cuda":
        return {"skipped": "peak CUDA memory needs a CUDA device"}

    def peak(mode: str) -> dict:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.dev)
        before = torch.cuda.memory_allocated(ctx.dev)
        sess = ctx.session(ctx.big, mode, batch=ctx.n(16, 2), steps=4, guidance=2.0)   # every capture made
        out = {"batch": sess.batch, "peak_gib": (torch.cuda.max_memory_allocated(ctx.dev) - before) / 2 ** 30}
        sess.close()
        return out

    return per_mode(ctx, peak)


PARTS = {"noise": part_noise, "sdpa": part_sdpa, "split": part_split, "oasis": part_oasis, "switch": part_switch,
         "precision": part_precision, "memory": part_memory}


def env(ctx: Ctx) -> dict:
    gpu = torch.cuda.get_device_name(ctx.dev) if ctx.dev.type == "cuda" else None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": gpu, "kernels": ctx.modes,
            "triton_problem": ctx.triton}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "runs" / "gpu_results"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=90.0, help="seconds; parts not started by then are skipped")
    ap.add_argument("--only", default="", help=f"comma-separated parts of {', '.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="toy sizes, a few frames each (a smoke run of the script)")
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; nothing to measure (a smoke run: --device cpu --quick)")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    path, t0 = args.out / "gpu_check.json", time.perf_counter()
    ctx = Ctx(args)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "env": env(ctx), "parts": {}}
    only = {p for p in args.only.split(",") if p}
    for name, fn in PARTS.items():
        if only and name not in only:
            continue
        elapsed = time.perf_counter() - t0
        if elapsed > args.budget:
            results["parts"][name] = {"skipped": f"over the budget ({elapsed:.0f} s > {args.budget:.0f} s)"}
        else:
            print(f"[{elapsed:4.0f} s] gpu_check: {name}", flush=True)
            part = sub(results["parts"], name, lambda fn=fn: fn(ctx))
            part["seconds"] = round(time.perf_counter() - t0 - elapsed, 1)
        results["seconds"] = time.perf_counter() - t0
        path.with_name(path.name + ".tmp").write_text(json.dumps(results, indent=1, default=str) + "\n")
        path.with_name(path.name + ".tmp").replace(path)   # whole, or the last whole one
    print(f"gpu_check: {path} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
