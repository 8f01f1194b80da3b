"""The GPU check of the fused kernels (kernels/): one program, no network, under 5 minutes on one H100/H200, with the
machine's own torch and Triton.

    python3 runs/kernels_gpu.py --out results/kernels [--budget 270] [--device cuda] [--quick]
    (the device tool: OUT is set, so `python3 runs/kernels_gpu.py` writes into it; commit OUT/kernels.json under
    benchmarks/results/ with the card and versions it records)

1. env       the card, torch / CUDA / Triton versions
2. correct   every kernel against its reference in bfloat16, float16 and float32 at the session's shapes (default
             model and `oasis` preset): max abs difference against the tolerance of its dtype; the noise kernel's
             normals against engine.noise's on the same GPU, bit for bit (libdevice logf/cosf, sqrt_rn)
3. step      a whole session step, kernels on and off, both under CUDA graphs: ms a frame and the frames' difference
4. bench     `reverie bench` of the default model (batch 1 and 16) and of the oasis preset (4 steps, guidance 2),
             kernels triton and reference
5. ops       each kernel timed against torch eager and torch.compile of the same reference, per call, as a CUDA
             graph replay (how the session runs them) and as plain launches (last: the compiles are slow)
Writes OUT/kernels.json (every number, the bars of the kernels issue with pass/fail) whole after each part, so a
timeout loses only the part it cut, and prints a summary. Parts run in that order (or those of --parts), each wrapped
(a failure is recorded, the rest runs), and none starts after --budget seconds. With no
CUDA device, `--device cpu --quick` under TRITON_INTERPRET=1 runs every code path at toy sizes (a smoke test; its
timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runs.gpu_check import sub  # noqa: E402  (a part's sub-check that fails records its error, the rest runs)

TOL = {"bfloat16": 3e-2, "float16": 4e-3, "float32": 1e-4}   # max abs difference / max(1, |reference|)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
BARS = {  # name: (what, comparison, bar)
    "ops_vs_eager_min": ("slowest kernel's speed-up over torch eager (CUDA graph replays)", ">=", 1.5),
    "ops_vs_compile_min": ("slowest kernel's speed-up over torch.compile of its reference", ">=", 1.0),
    "step_speedup_default": ("default model step, kernels on vs off (both CUDA graphs)", ">=", 1.3),
    "default_fps_b1": ("default model, reverie bench, batch 1, kernels on: frames/s", ">=", 1000.0),
    "oasis_fps_4steps": ("oasis preset, 4 steps, guidance 2, kernels on: frames/s", ">=", 300.0),
    "oasis_p99_ms_4steps": ("oasis preset, 4 steps, guidance 2, kernels on: p99 ms", "<=", 4.0),
    "batch16_over_batch1": ("default model, kernels on: frames/s of 16 worlds over 1", ">=", 8.0),
}


def time_ms(fn: Callable[[], Any], dev: torch.device, graph: bool, reps: int) -> float:
    """ms a call: replays of fn captured as a CUDA graph (graph=True) or plain calls, by CUDA events; host clock on a
    CPU."""
    for _ in range(3):
        fn()
    if dev.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) * 1e3 / reps
    torch.cuda.synchronize(dev)
    if graph:
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream(dev).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(10):          # 10 calls a replay: the replay's own launch is spread over them
                fn()
        run, calls = g.replay, 10
    else:
        run, calls = fn, 1
    for _ in range(3):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(dev)
    start.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize(dev)
    return start.elapsed_time(end) / (reps * calls)


# ---- the ops at the session's shapes ---------------------------------------------------------------------------------
def op_cases(preset: str, dev: torch.device, dtype: torch.dtype, batch: int = 1) -> dict[str, dict]:
    """name -> {reference, kernel, args (a fresh copy each call for in-place ops), out}: the five ops and the noise at
    the shapes one frame of `preset` gives them (the head with guidance: 2B rows)."""
    from engine.config import ModelConfig
    from engine.noise import counter_normal
    from kernels import flow_step, gated_residual, modulated_norm, noise, ring_attention, rope_qkv

    c = ModelConfig.from_name(preset, action_dim=8).world_model
    B, M, N, D, H, hd = batch, 2 * batch, c.tokens_per_frame, c.d_model, c.heads, c.head_dim
    W, Dt = c.context_frames, c.token_dim
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(dt).to(dev)

    angles = torch.rand(N, hd // 2, generator=g).to(dev) * 6
    cos, sin = angles.cos(), angles.sin()
    kc, vc = r(B, H, W * N, hd), r(B, H, W * N, hd)
    columns = (W - 1) * N + torch.arange(N, device=dev)
    valid = torch.ones(B, W, dtype=torch.bool, device=dev)
    valid[:, W // 2:] = False                                         # a ring half full
    slot = torch.tensor(W - 1, device=dev)
    seed = torch.arange(B, device=dev)
    counter = torch.full((B,), 12345, device=dev)
    x, y, per = r(M, N, D), r(M, N, D), r(M, D)
    return {
        "modulated_norm": {"ref": modulated_norm.reference, "ker": modulated_norm.modulated_norm,
                           "args": lambda: (x, per, per)},
        "gated_residual_norm": {"ref": gated_residual.reference, "ker": gated_residual.gated_residual_norm,
                                "args": lambda: (x, y, per, per, per)},
        "rope_qkv": {"ref": rope_qkv.reference, "ker": rope_qkv.rope_qkv,
                     "args": lambda: (r(B, N, 3 * D), cos, sin, H, kc, vc, columns)},
        "ring_attention": {"ref": ring_attention.reference, "ker": ring_attention.ring_attention,
                           "args": lambda: (r(B, H, N, hd), kc, vc, valid, slot, N)},
        "flow_step": {"ref": flow_step.reference, "ker": flow_step.flow_step,
                      "args": lambda: (r(B, N, Dt), r(M, N, Dt), torch.full((1,), 0.25, device=dev),
                                       torch.full((1,), 2.0, device=dev))},
        "noise": {"ref": lambda s, k: counter_normal(s, k, (N, Dt), 0),
                  "ker": lambda s, k: noise.counter_normal(s, k, (N, Dt), 0), "args": lambda: (seed, counter),
                  "float32_only": True},
    }


def first(out):
    return out[0] if isinstance(out, tuple) else out


def part_correct(ctx) -> dict:
    res = ctx.live
    for preset in ctx.presets:
        for dname, dt in DTYPES.items():
            if ctx.dev.type == "cpu" and dt == torch.bfloat16:
                continue                                              # the interpreter's bf16 is wrong
            for name, case in op_cases(preset, ctx.dev, dt).items():
                if case.get("float32_only") and dt != torch.float32:
                    continue
                args = case["args"]()
                a = case["ref"](*[t.clone() if torch.is_tensor(t) else t for t in args])
                b = case["ker"](*[t.clone() if torch.is_tensor(t) else t for t in args])
                outs = list(zip(a, b)) if isinstance(a, tuple) else [(a, b)]
                err = max(float((x.float() - y.float()).abs().max() / max(1.0, float(x.float().abs().max())))
                          for x, y in outs)
                entry = {"max_rel_err": err, "tol": TOL[dname], "ok": err <= TOL[dname]}
                if name == "noise":
                    entry["bit_equal"] = bool(torch.equal(a, b))
                res[f"{preset}/{name}/{dname}"] = entry
                ctx.save()
    res["all_ok"] = all(v["ok"] for v in res.values() if isinstance(v, dict) and "ok" in v)
    return res


def part_ops(ctx) -> dict:
    res = ctx.live
    for preset in ctx.presets:
        for name, case in op_cases(preset, ctx.dev, ctx.dtype).items():
            if time.perf_counter() - ctx.t0 > ctx.budget:
                res[f"{preset}/{name}"] = {"skipped": "over the time budget"}
                continue
            args = case["args"]()
            row = {}
            fns = {"eager": case["ref"], "kernel": case["ker"]}
            if ctx.compile:
                fns["compile"] = torch.compile(case["ref"], dynamic=False)
            for label, fn in fns.items():
                for graph in (True, False):
                    key = f"{label}_{'graph' if graph else 'launch'}_ms"
                    try:
                        row[key] = time_ms(lambda fn=fn, args=args: fn(*args), ctx.dev, graph, ctx.reps)
                    except Exception as e:  # noqa: BLE001 - e.g. a compiled fn that will not capture
                        row[key] = None
                        row[f"{key}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            for other in ("eager", "compile"):
                a, b = row.get(f"{other}_graph_ms"), row.get("kernel_graph_ms")
                row[f"speedup_vs_{other}"] = a / b if a and b else None
            res[f"{preset}/{name}"] = row
            ctx.save()
    return res


def make_session(ctx, preset: str | None, kernels: str, batch: int = 1, steps: int | None = None,
                 guidance: float | None = None):
    from engine.session import Session
    from play.bench import random_session

    if preset is None:
        return Session(None, backend="torch", device=str(ctx.dev), batch=batch, steps=steps, guidance=guidance,
                       kernels=kernels)
    return random_session(preset, str(ctx.dev), batch, steps, guidance, "auto", ctx.dev.type == "cuda", kernels)


def part_step(ctx) -> dict:
    res = ctx.live
    cases = [("default", None, None, None)] + [(p, p, 4, 2.0) for p in ctx.presets if p != "tiny"]
    for label, preset, steps, guidance in cases:
        def one(preset=preset, steps=steps, guidance=guidance):
            out, frames = {}, {}
            for mode in ("reference", "triton"):
                s = make_session(ctx, preset, mode, steps=steps, guidance=guidance)
                rng = np.random.default_rng(0)
                if preset is None:
                    s.reset()
                else:
                    s.reset(rng.integers(0, 256, (4, *s.frame_shape), dtype=np.uint8))
                acts = np.eye(s.spec.size, dtype=np.float32)[rng.integers(0, s.spec.size, 200)]
                frames[mode] = np.stack([s.step(a) for a in acts[:ctx.n(40, 3)]]).astype(np.int16)
                if s.device.type == "cuda":
                    torch.cuda.synchronize(s.device)
                t0 = time.perf_counter()
                n = ctx.n(150, 3)
                for a in acts[:n]:
                    s.step(a)
                out[f"{mode}_ms"] = (time.perf_counter() - t0) * 1e3 / n
                out[f"{mode}_cuda_graph"] = bool(s.use_graphs)
                s.close()
            out["speedup"] = out["reference_ms"] / out["triton_ms"]
            diff = np.abs(frames["triton"] - frames["reference"])
            out["frames_mean_abs"], out["frames_max_abs"] = float(diff.mean()), int(diff.max())
            return out
        sub(res, label, one)
        ctx.save()
    return res


def part_bench(ctx) -> dict:
    import reverie_cli

    res = ctx.live
    runs = [("default_b1", ["--batch", "1"]), ("default_b16", ["--batch", "16"])]
    if "oasis" in ctx.presets:
        runs.append(("oasis_4steps", ["--preset", "oasis", "--steps", "4", "--guidance", "2"]))
    for label, extra in runs:
        for mode in ("triton", "reference"):
            if time.perf_counter() - ctx.t0 > ctx.budget:
                res[f"{label}/{mode}"] = {"skipped": "over the time budget"}
                continue
            path = ctx.work / f"bench_{label}_{mode}.json"
            argv = ["bench", "--device", str(ctx.dev), "--backend", "torch", "--kernels", mode, "--frames",
                    str(ctx.n(600, 5)), "--warmup", str(ctx.n(50, 2)), "--json", str(path), *extra]
            rc = reverie_cli.main(argv)
            if rc != 0:
                res[f"{label}/{mode}"] = {"error": f"reverie bench exited {rc}"}
                continue
            r = json.loads(path.read_text())
            res[f"{label}/{mode}"] = {k: r.get(k) for k in ("fps", "p50_ms", "p99_ms", "backbone_ms", "head_ms",
                                                            "decode_ms", "steps", "guidance", "dtype", "cuda_graph",
                                                            "batch", "kernels")}
            ctx.save()
    return res


def part_env(ctx) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": str(ctx.dev)}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as e:
        info["triton"] = f"not importable: {e}"
    if ctx.dev.type == "cuda":
        p = torch.cuda.get_device_properties(ctx.dev)
        info.update(card=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
    info["TRITON_INTERPRET"] = os.environ.get("TRITON_INTERPRET")
    return info


def bars(parts: dict) -> dict:
    def get(*keys):
        d = parts
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    ops = [v for v in (parts.get("ops") or {}).values() if isinstance(v, dict)]
    vs_eager = [v.get("speedup_vs_eager") for v in ops]
    vs_compile = [v.get("speedup_vs_compile") for v in ops]
    b1, b16 = get("bench", "default_b1/triton", "fps"), get("bench", "default_b16/triton", "fps")
    values = {
        "ops_vs_eager_min": min(vs_eager) if vs_eager and None not in vs_eager else None,
        "ops_vs_compile_min": min(vs_compile) if vs_compile and None not in vs_compile else None,
        "step_speedup_default": get("step", "default", "speedup"),
        "default_fps_b1": b1,
        "oasis_fps_4steps": get("bench", "oasis_4steps/triton", "fps"),
        "oasis_p99_ms_4steps": get("bench", "oasis_4steps/triton", "p99_ms"),
        "batch16_over_batch1": b16 / b1 if b1 and b16 else None,
    }
    out = {}
    for name, (what, op, bar) in BARS.items():
        v = values[name]
        out[name] = {"what": what, "value": v, "bar": f"{op} {bar}",
                     "met": None if v is None else (v >= bar if op == ">=" else v <= bar)}
    return out


class Ctx:
    def __init__(self, args):
        self.dev = torch.device(args.device)
        self.quick, self.budget, self.t0 = args.quick, args.budget, time.perf_counter()
        self.presets = ["tiny"] if args.quick else ["tiny", "oasis"]
        self.dtype = torch.bfloat16 if self.dev.type == "cuda" else torch.float32
        self.reps = self.n(200, 2)
        self.compile = self.dev.type == "cuda"
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.live: dict[str, Any] = {}             # the running part's results, filled as it measures
        self.save: Callable[[], None] = lambda: None   # writes kernels.json whole (main sets it)

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


# the per-op timings last: torch.compile of every reference takes most of the time, and what is left of the budget
# then goes to them op by op
PARTS = (("env", part_env), ("correct", part_correct), ("step", part_step), ("bench", part_bench), ("ops", part_ops))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "results" / "kernels"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/reverie-kernels-gpu"), help="scratch")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=270.0, help="seconds; parts not started by then are skipped")
    ap.add_argument("--quick", action="store_true", help="toy sizes and few repetitions (a smoke test)")
    ap.add_argument("--parts", default=",".join(name for name, _ in PARTS),
                    help="comma-separated parts to run (default: all, in order)")
    args = ap.parse_args(argv)
    wanted = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(wanted) - {name for name, _ in PARTS})
    if unknown:
        ap.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(name for name, _ in PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("kernels_gpu: torch sees no CUDA device; run with --device cpu --quick under TRITON_INTERPRET=1 for a "
              "smoke test", file=sys.stderr)
        return 1
    ctx = Ctx(args)
    results: dict[str, Any] = {"script": "runs/kernels_gpu.py", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "quick": args.quick, "parts": {}}
    path = args.out / "kernels.json"

    def write() -> None:
        """kernels.json whole, under a temporary name first: a timeout leaves the last whole one."""
        results["bars"] = bars(results["parts"])
        results["seconds"] = time.perf_counter() - ctx.t0
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
        tmp.replace(path)

    ctx.save = write
    for name, fn in PARTS:
        if name not in wanted:
            continue
        elapsed = time.perf_counter() - ctx.t0
        if elapsed > args.budget:
            results["parts"][name] = {"skipped": f"over the time budget ({elapsed:.0f} s > {args.budget:.0f} s)"}
            write()
            continue
        print(f"[{elapsed:5.0f}s] kernels_gpu: {name}", flush=True)
        t0 = time.perf_counter()
        ctx.live = results["parts"][name] = {}   # a part fills it measurement by measurement, saving each
        part, outcome = ctx.live, sub({}, name, lambda fn=fn: fn(ctx))
        if isinstance(outcome, dict) and outcome is not part:   # a part's own dict (env), or its error
            part.update(outcome)
        part["seconds"] = time.perf_counter() - t0
        if "error" in part:
            print(f"kernels_gpu: {name} failed: {part['error'].splitlines()[0]}", flush=True)
        write()
    write()
    for b in results["bars"].values():
        mark = {True: "met", False: "NOT met", None: "not measured"}[b["met"]]
        value = "-" if b["value"] is None else f"{b['value']:.3g}"
        print(f"  {b['what']}: {value} (bar {b['bar']}): {mark}")
    print(f"kernels_gpu: {path} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
