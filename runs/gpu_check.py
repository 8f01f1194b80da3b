"""The numbers of one GPU check (runs/gpu_check.sh runs it after the CUDA tests): one results JSON, one markdown table.

    python3 runs/gpu_check.py --out results/gpu [--pytest-xml FILE] [--budget 270] [--quick] [--only a,b] [--skip c]

Parts, each wrapped so that one failure (recorded with its error text) does not stop the rest, in this order:
  env        torch / CUDA / cuDNN / Triton versions, the GPUs
  noise      fix 4: counter-based noise eager vs torch.compile (ms a draw, CUDA kernels a draw), the integer hash
             bit-equal to numpy's, the normals allclose; whether the session's runner draws with the compiled one
  default    fixes 5, 6, 7, 8 on the shipped model: fp32 RoPE tables / latent statistics / latent buffer / Euler
             update, captured graphs (keys, one pool, nothing new after changing steps or guidance, the frame right
             after a change vs steady frames), replays per plain and deferred step, pinned staging, and the backbone
             step timed with each SDPA backend (flash, efficient, math, cudnn) on a full ring (no mask) and masked
  parity     CUDA-graph session vs eager session over a ring wrap (bar: frames within bf16 tolerance)
  precision  fix 6: bf16 vs fp32 on the same rollout (mean abs latent difference, PSNR of frames); fix 10: fp32 on
             CUDA vs the CPU with TF32 switched on globally (the runner must turn it off), and the flag restored
  bench      `reverie bench` of the shipped model at batch 1 and 16 (bar: >= 1000 frames/s at batch 1)
  oasis      the oasis preset, random weights, 1/2/4 steps with guidance 2 (bar: <= 5 ms a frame at 4 steps), the
             split of a 4-step frame, and the SDPA backends at that size
  device     fix 10: a session on cuda:1 where there are two GPUs, else on cuda:N with the current device set
             explicitly, against one on plain "cuda"
  eval       fix 1: `reverie eval --device cuda` vs `--device cpu` on a freshly recorded held-out set
  train      fix 9: short `train ae` and `train wm` on CUDA (ms a step from metrics.jsonl)

Timing: warm-up first; whole frames by the host clock around Session.step (which returns the frame in host memory,
like `reverie bench`); parts of a frame and graph replays by CUDA events. With no CUDA device every CUDA part is
recorded as skipped; `--device cpu --quick` runs what can run on a CPU (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
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

BARS = {  # name: (what, comparison, bar)
    "default_fps_b1": ("default model, reverie bench, batch 1: frames/s", ">=", 1000.0),
    "oasis_ms_4steps_guided": ("oasis preset, 4 steps, guidance 2: p50 ms a frame", "<=", 5.0),
    "graph_vs_eager_frames": ("CUDA graph vs eager frames (mean abs, uint8 levels)", "<=", 1.0),
}
BF16_LATENT_MEAN_TOL = 1e-2   # graph vs eager: mean abs latent difference (latents are about unit scale)
SDPA = ("flash", "efficient", "math", "cudnn")


# ---- small helpers -------------------------------------------------------------------------------------------------
def short_error(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return (f"{type(e).__name__}: {e}"[:600] + "\n" + "".join(tb[-3:])[-1500:]).strip()


def sub(res: dict, name: str, fn: Callable[[], Any]) -> Any:
    """res[name] = fn(), or {"error": ...}: a sub-check that fails leaves the rest of its part running."""
    try:
        res[name] = fn()
    except BaseException as e:  # noqa: BLE001 (SystemExit from a CLI's argparse too; not KeyboardInterrupt)
        if isinstance(e, KeyboardInterrupt):
            raise
        res[name] = {"error": short_error(e)}
    return res[name]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def pct(a, q: float) -> float:
    return float(np.percentile(np.asarray(a, dtype=np.float64), q))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def held_actions(size: int, n: int, seed: int = 0) -> np.ndarray:
    """Player-like actions: one random button held for 2-12 frames at a time (as `reverie bench`)."""
    rng = np.random.default_rng(seed)
    out, t = np.zeros((n, size), np.float32), 0
    while t < n:
        k = int(rng.integers(2, 13))
        out[t:t + k, int(rng.integers(0, size))] = 1.0
        t += k
    return out


def step_ms(sess, actions) -> np.ndarray:
    """Host milliseconds of each Session.step (the frame is in host memory when it returns)."""
    out = np.empty(len(actions))
    for i, a in enumerate(actions):
        t0 = time.perf_counter()
        sess.step(a)
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def rollout(sess, actions) -> tuple[np.ndarray, torch.Tensor]:
    """Frames (n, ...) uint8 and latents (n, B, C, h, w) float32 on the CPU."""
    frames, lats = [], []
    for a in actions:
        frames.append(np.array(sess.step(a), copy=True))
        lats.append(sess.latent.detach().float().cpu().clone())
    return np.stack(frames), torch.stack(lats)


def compare(fa: np.ndarray, la: torch.Tensor, fb: np.ndarray, lb: torch.Tensor) -> dict:
    """Per-step and overall differences of two rollouts."""
    d = (la - lb).abs()
    scale = float(lb.abs().mean())
    per = [float(x) for x in d.flatten(1).mean(1)]
    fd = np.abs(fa.astype(np.int32) - fb.astype(np.int32))
    return {"latent_mean_abs": float(d.mean()), "latent_max_abs": float(d.max()), "latent_mean_abs_ref": scale,
            "latent_rel": float(d.mean()) / max(scale, 1e-12), "latent_mean_abs_by_step": per,
            "frames_mean_abs": float(fd.mean()), "frames_max_abs": int(fd.max()),
            "psnr_by_step": [psnr(fa[i], fb[i]) for i in range(len(fa))], "psnr_all": psnr(fa, fb)}


def replay_ms(graph, dev: torch.device, iters: int) -> float:
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


@contextlib.contextmanager
def counting_replays():
    """Count torch.cuda.CUDAGraph.replay calls (every captured graph of every session)."""
    count = [0]
    original = torch.cuda.CUDAGraph.replay

    def replay(self, *a, **k):
        count[0] += 1
        return original(self, *a, **k)

    torch.cuda.CUDAGraph.replay = replay
    try:
        yield count
    finally:
        torch.cuda.CUDAGraph.replay = original


@contextlib.contextmanager
def restored(sess):
    """Run something that advances a session's state (warm-ups, timing loops) and put the state back."""
    snap = {k: t.clone() for k, t in sess._tensors().items()}
    appended = sess.kv.appended
    try:
        yield
    finally:
        for k, t in sess._tensors().items():
            t.copy_(snap[k])
        sess.kv.appended = appended
        sync(sess.device)


def make_session(ctx, checkpoint=None, **kw):
    from engine.session import Session

    kw.setdefault("device", ctx.dev)
    return Session(checkpoint, backend="torch", **kw)


def random_session(ctx, preset: str, **kw):
    """Random weights of a preset, the way `reverie bench --preset` makes them."""
    try:
        from play.bench import random_session as make
    except ImportError:
        make = None
    args = dict(device=str(ctx.dev), batch=kw.get("batch", 1), steps=kw.get("steps"), guidance=kw.get("guidance"),
                dtype=kw.get("dtype", "auto"), cuda_graph=kw.get("cuda_graph", True))
    if make is not None:
        return make(preset, **args)
    from engine.actions import ActionSpec
    from engine.autoencoder import Autoencoder
    from engine.config import ModelConfig
    from engine.session import Session
    from engine.world_model import WorldModel

    cfg = ModelConfig.from_name(preset, action_dim=8)
    spec = ActionSpec(game="bench:random", buttons=tuple(f"b{i}" for i in range(8)))
    torch.manual_seed(0)
    return Session(models=(Autoencoder(cfg.autoencoder), WorldModel(cfg.world_model), spec), **args)


def cli(*argv: str) -> int:
    """A `reverie` command in this process (the same dispatcher as the console script)."""
    import reverie_cli

    try:
        return int(reverie_cli.main([str(a) for a in argv]) or 0)
    except SystemExit as e:  # argparse
        return int(e.code or 0) if not isinstance(e.code, str) else 2


def cli_subprocess(argv: list[str], timeout: float, log: Path) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run([sys.executable, "-m", "reverie_cli", *map(str, argv)], cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    tail = [ln for ln in log.read_text(errors="replace").splitlines() if "%|" not in ln][-8:]   # no progress bars
    return {"rc": rc, "seconds": time.perf_counter() - t0, "tail": tail}


# ---- the parts -----------------------------------------------------------------------------------------------------
class Ctx:
    def __init__(self, args):
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.quick = args.quick
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.oasis = args.oasis_preset
        self.threads = 2 if args.quick else min(8, os.cpu_count() or 1)

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def part_env(ctx: Ctx) -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "numpy": np.__version__,
            "cpu_count": os.cpu_count()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["devices"] = [{"name": torch.cuda.get_device_name(i),
                            "capability": list(torch.cuda.get_device_capability(i)),
                            "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2 ** 30, 1)}
                           for i in range(torch.cuda.device_count())]
        info["legacy_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    for mod in ("pygame", "tensorrt", "onnxruntime", "pytest"):
        try:
            __import__(mod)
            info[f"has_{mod}"] = True
        except Exception:  # noqa: BLE001 (a broken install counts as absent)
            info[f"has_{mod}"] = False
    return info


def part_noise(ctx: Ctx) -> dict:
    """Fix 4: the counter-based draw as one fused kernel (torch.compile) vs ~110 eager kernels."""
    from engine.noise import _uniform, _uniform_np, counter_normal, counter_normal_np

    dev, res = ctx.dev, {}
    compiled = torch.compile(counter_normal, dynamic=False, fullgraph=True)
    compiled_u = torch.compile(_uniform, dynamic=False, fullgraph=True)
    cases = [("default_head", 1, (16, 64), 0), ("default_backbone", 1, (16, 8, 8), 1),
             ("default_b16_head", 16, (16, 64), 0), ("oasis_head", 1, (144, 64), 0)]
    iters = ctx.n(200, 10)
    for name, B, shape, stream in cases:
        r = res[name] = {"batch": B, "shape": list(shape), "stream": stream}
        seed = torch.arange(B, device=dev, dtype=torch.long) * 1_000_003 + 12345
        counter = torch.arange(B, device=dev, dtype=torch.long) + 7
        t0 = time.perf_counter()
        z_c = compiled(seed, counter, shape, stream)
        sync(dev)
        r["compile_s"] = time.perf_counter() - t0
        z_e = counter_normal(seed, counter, shape, stream)
        z_np = counter_normal_np(seed.cpu().numpy(), counter.cpu().numpy(), shape, stream)
        if name in ("default_head", "default_backbone"):   # the integer hash, bit for bit (two shapes suffice)
            numel = math.prod(shape)
            u_c, u_e = compiled_u(seed, counter, stream, numel), _uniform(seed, counter, stream, numel)
            u_np = _uniform_np(seed.cpu().numpy(), counter.cpu().numpy(), stream, numel)
            r["hash_bit_equal_compiled_eager"] = bool(torch.equal(u_c, u_e))
            r["hash_bit_equal_compiled_numpy"] = bool(torch.equal(u_c.cpu(), torch.from_numpy(u_np)))
        r["normal_max_abs_compiled_eager"] = float((z_c - z_e).abs().max())
        r["normal_max_abs_compiled_numpy"] = float((z_c.cpu() - torch.from_numpy(z_np)).abs().max())
        r["normal_allclose"] = bool(torch.allclose(z_c, z_e, atol=1e-5, rtol=1e-5))
        for label, fn in (("eager", counter_normal), ("compiled", compiled)):
            for _ in range(3):
                fn(seed, counter, shape, stream)
            sync(dev)
            t0 = time.perf_counter()
            for _ in range(iters):
                fn(seed, counter, shape, stream)
            sync(dev)
            r[f"{label}_ms_per_draw"] = (time.perf_counter() - t0) * 1e3 / iters
            if ctx.cuda:
                sub(r, f"{label}_kernels_per_draw",
                    lambda fn=fn, a=(seed, counter, shape, stream): count_kernels(lambda: fn(*a), dev))
        r["speedup"] = r["eager_ms_per_draw"] / max(r["compiled_ms_per_draw"], 1e-9)

    def runner_noise():
        """Whether the session's runner draws with a compiled function (after a reset and a step, since a failed
        compile falls back to the eager draw)."""
        sess = make_session(ctx, steps=1)
        sess.reset()
        sess.step(sess.spec.null())
        fn = getattr(sess.runner, "_fused_noise", None) or getattr(sess.runner, "_noise", None)
        sess.close()
        return {"compiled": fn is not None and fn is not counter_normal, "what": type(fn).__name__}

    sub(res, "session_runner", runner_noise)
    ok = all(isinstance(r, dict) and r.get("hash_bit_equal_compiled_numpy", True) and r.get("normal_allclose")
             for k, r in res.items() if k != "session_runner")
    res["pass"] = bool(ok and (not ctx.cuda or res["session_runner"].get("compiled")))
    return res


def count_kernels(fn: Callable[[], Any], dev: torch.device) -> int:
    from torch.profiler import ProfilerActivity, profile

    sync(dev)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(dev)
    return sum(1 for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA"))


def attention_backends(ctx: Ctx, sess, iters: int) -> dict:
    """Fix 7: the backbone step captured with one SDPA backend at a time, timed by replays; the ring is full, so
    the step runs with no mask (flash, which takes no mask, must work); then masked, with the runner's own order."""
    run, out = sess.runner, {}
    out["ring_full"] = bool(sess.kv.full)
    out["mask_when_full_is_none"] = sess.kv.mask(with_next=True, full=True) is None
    out["runner_order"] = list(getattr(run, "_attention", ()))
    saved = run._attention
    try:
        for name, backends, full in [*((b, (b,), True) for b in SDPA), ("masked_runner_order", saved, False)]:
            def one(backends=backends, full=full):
                run._attention = tuple(backends)
                with restored(sess):
                    graph = run.capture(lambda: sess._backbone(sess.z_buf, sess.action_buf, full))
                    return {"ms": replay_ms(graph, ctx.dev, iters)}
            sub(out, name, one)
    finally:
        run._attention = saved
    timed = {b: out[b]["ms"] for b in SDPA if "ms" in out.get(b, {})}
    out["fastest"] = min(timed, key=timed.get) if timed else None
    out["runner_first_choice_works"] = bool(saved) and saved[0] in timed
    return out


def part_default(ctx: Ctx) -> dict:
    """Fixes 5, 6, 7, 8 on one session of the shipped model (bf16, CUDA graphs, batch 1)."""
    res: dict[str, Any] = {}
    sess = make_session(ctx, steps=1, guidance=1.75, seed=1)
    spec, W = sess.spec, sess.cfg.context_frames

    def dtypes():
        d = {"rope_t_cos": sess.wm.rope.t_cos.dtype, "rope_s_cos": sess.wm.rope.s_cos.dtype,
             "latent_mean": sess.wm.latent_mean.dtype, "latent_std": sess.wm.latent_std.dtype,
             "z_buf": sess.z_buf.dtype, "kv_cache": sess.kv.k.dtype, "h_last": sess.h_last.dtype,
             "backbone_weights": next(sess.wm.backbone.parameters()).dtype,
             "decoder_weights": next(sess.ae.decoder.parameters()).dtype,
             "encoder_weights": next(sess.ae.encoder.parameters()).dtype}
        c = sess.cfg
        x = sess.runner.noise(sess.seed, sess.counter, (c.tokens_per_frame, c.token_dim), 0)
        tau, level, dd = sess._schedule[1][0]
        with torch.no_grad():
            (xn,) = sess.runner.run("head_cfg", {"x": x, "h": sess.h_last, "actions": sess.action_buf,
                                                 "guidance": sess.guidance_buf, "tau": tau, "level": level, "d": dd})
        d["euler_update"] = xn.dtype
        out = {k: str(v).replace("torch.", "") for k, v in d.items()}
        fp32 = ("rope_t_cos", "rope_s_cos", "latent_mean", "latent_std", "z_buf", "euler_update")
        out["pass"] = all(out[k] == "float32" for k in fp32)
        return out

    sub(res, "fp32_tables", dtypes)
    res["use_graphs"] = bool(sess.use_graphs)
    staging = getattr(sess, "_staging", None)
    res["staging_pinned"] = None if staging is None else [bool(t.is_pinned()) for t in staging]
    sess.reset()
    acts = held_actions(spec.size, 4000, seed=3)
    ai = iter(acts)
    warm = step_ms(sess, [next(ai) for _ in range(W + 8)])
    res["first_step_ms"] = float(warm[0])            # the captures
    graphs = (lambda: dict(sess._capture.graphs)) if sess._capture is not None else (lambda: {})
    keys0 = set(graphs())
    res["graph_keys_after_first_steps"] = sorted(map(str, keys0))
    res["graphs_after_first_steps"] = len(keys0)

    def pools():
        ps = {tuple(g.pool()) if isinstance(g.pool(), (tuple, list)) else g.pool() for g in graphs().values()}
        return {"distinct_pools": len(ps)}

    if ctx.cuda:
        sub(res, "pools", pools)

    def switching():
        """Fix 5: change steps / guidance between frames; the frame right after a change vs steady frames."""
        rows = []
        steady_n = ctx.n(30, 5)
        for steps, g in [(2, 1.75), (2, 1.0), (4, 2.0), (3, 1.0), (1, 1.75), (4, 1.0), (1, 1.0)]:
            sess.steps, sess.guidance = steps, g
            first = step_ms(sess, [next(ai)])[0]
            steady = step_ms(sess, [next(ai) for _ in range(steady_n)])
            p50 = pct(steady, 50)
            rows.append({"steps": steps, "guidance": g, "first_ms": float(first), "steady_p50_ms": p50,
                         "steady_max_ms": float(steady.max()), "stall": bool(first > p50 + 2.0 and first > 2 * p50)})
        new = sorted(map(str, set(graphs()) - keys0))
        return {"changes": rows, "graphs_captured_by_changes": new,
                "pass": not new and not any(r["stall"] for r in rows)}

    sub(res, "switching", switching)
    sess.steps, sess.guidance = 1, 1.75

    def replays():
        """Fix 8: graph replays of a plain step and of a deferred step + finish."""
        sess.step(next(ai))
        n = ctx.n(20, 3)
        with counting_replays() as c:
            for _ in range(n):
                sess.step(next(ai))
        plain = c[0] / n
        sess.step(next(ai), defer_update=True)   # captures the deferred kinds first
        sess.finish()
        with counting_replays() as c:
            for _ in range(n):
                sess.step(next(ai), defer_update=True)
                sess.finish()
        return {"plain_step": plain, "deferred_step_and_finish": c[0] / n, "pass": plain == 1}

    if ctx.cuda:
        sub(res, "replays", replays)
        res["graphs_total"] = len(graphs())
        res["graph_keys_total"] = sorted(map(str, graphs()))
        sub(res, "attention", lambda: attention_backends(ctx, sess, ctx.n(200, 5)))
    sess.close()
    return res


def part_parity(ctx: Ctx) -> dict:
    """CUDA-graph session vs eager session of the shipped model over a ring wrap, same start, seed and actions."""
    res = {}
    n_steps = ctx.n(40, 6)
    runs = {}
    for graph in (True, False):
        sess = make_session(ctx, steps=2, guidance=2.0, seed=5, cuda_graph=graph)
        sess.reset()
        acts = held_actions(sess.spec.size, n_steps, seed=4)
        half = n_steps // 2
        f1, l1 = rollout(sess, acts[:half])
        sess.steps, sess.guidance = 1, 1.75        # a change of knobs inside the compared run
        t0 = time.perf_counter()
        f2, l2 = rollout(sess, acts[half:])
        res[f"ms_per_frame_{'graph' if graph else 'eager'}"] = (time.perf_counter() - t0) * 1e3 / (n_steps - half)
        runs[graph] = (np.concatenate([f1, f2]), torch.cat([l1, l2]))
        res[f"use_graphs_{graph}"] = bool(sess.use_graphs)
        sess.close()
    c = compare(*runs[True], *runs[False])
    c.pop("psnr_by_step")
    res.update(c)
    res["steps"], res["ring"] = n_steps, "wraps (context 16, start 8 frames)"
    res["pass"] = bool(c["frames_mean_abs"] <= BARS["graph_vs_eager_frames"][2]
                       and c["latent_mean_abs"] <= BF16_LATENT_MEAN_TOL)
    return res


def part_precision(ctx: Ctx) -> dict:
    """Fix 6: the bf16 vs fp32 gap on one rollout; fix 10: fp32 on CUDA vs fp32 on the CPU with TF32 on globally."""
    res: dict[str, Any] = {}
    n_steps = ctx.n(32, 4)

    def gap():
        runs = {}
        for dtype in ("bf16", "fp32"):
            sess = make_session(ctx, dtype=dtype, seed=9)
            sess.reset()
            runs[dtype] = rollout(sess, held_actions(sess.spec.size, n_steps, seed=8))
            sess.close()
        c = compare(*runs["bf16"], *runs["fp32"])
        lat = c.pop("latent_mean_abs_by_step")
        ps = c.pop("psnr_by_step")
        c.update({"psnr_step1": ps[0], "psnr_mean": float(np.mean([p for p in ps if math.isfinite(p)] or [99.0])),
                  "psnr_last": ps[-1], "latent_mean_abs_step1": lat[0], "latent_mean_abs_last": lat[-1],
                  "steps": n_steps, "psnr_by_step": [round(p, 2) for p in ps]})
        return c

    sub(res, "bf16_vs_fp32", gap)

    def tf32_off():
        if not ctx.cuda:
            return {"skipped": "no CUDA"}
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True   # legacy API, as the runner reads it
        try:
            from engine.autoencoder import frames_to_tensor

            runs, enc = {}, {}
            k = ctx.n(8, 3)
            for dev in ("cuda", "cpu"):
                sess = make_session(ctx, dtype="fp32", seed=11, device=dev)
                start = torch.from_numpy(np.asarray(sess.checkpoint.start_state()[0]))
                with torch.no_grad():   # what reset() encodes, outside the runner (global cuDNN TF32 setting)
                    enc[dev] = sess.ae.encode(frames_to_tensor(start.to(dev))).float().cpu()
                sess.reset()
                runs[dev] = rollout(sess, held_actions(sess.spec.size, k, seed=12))
                sess.close()
            restored_flag = torch.backends.cuda.matmul.allow_tf32
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
        c = compare(*runs["cuda"], *runs["cpu"])
        c.pop("psnr_by_step")
        c["encoder_max_abs"] = float((enc["cuda"] - enc["cpu"]).abs().max())
        c["cudnn_allow_tf32_global"] = bool(torch.backends.cudnn.allow_tf32)
        c["global_tf32_flag_restored"] = bool(restored_flag)
        c["pass"] = bool(c["latent_max_abs"] <= 1e-3 and restored_flag)
        return c

    sub(res, "fp32_cuda_vs_cpu_tf32_on_globally", tf32_off)
    return res


def part_bench(ctx: Ctx) -> dict:
    """`reverie bench` of the shipped model (torch backend, CUDA graphs, bf16) at batch 1 and 16."""
    res = {}
    frames, warm = ctx.n(600, 20), ctx.n(50, 3)
    for batch in (1, 16):
        def one(batch=batch):
            path = ctx.work / f"bench_b{batch}.json"
            rc = cli("bench", "--device", str(ctx.dev), "--backend", "torch", "--batch", batch, "--frames", frames,
                     "--warmup", warm, "--json", path)
            if rc != 0:
                return {"error": f"reverie bench exited {rc}"}
            r = json.loads(path.read_text())
            return {k: r.get(k) for k in ("fps", "frames_per_s_per_world", "p50_ms", "p99_ms", "mean_ms", "max_ms",
                                          "cold_start_s", "backbone_ms", "head_ms", "decode_ms", "steps", "guidance",
                                          "dtype", "cuda_graph", "batch", "frames")}
        sub(res, f"batch{batch}", one)
    return res


def part_oasis(ctx: Ctx) -> dict:
    """The oasis preset (random weights, bf16, CUDA graphs) at 1/2/4 steps with guidance 2."""
    res: dict[str, Any] = {"preset": ctx.oasis}
    t0 = time.perf_counter()
    sess = random_session(ctx, ctx.oasis, steps=4, guidance=2.0, dtype="auto")
    res["session_s"] = time.perf_counter() - t0
    c = sess.cfg
    res["config"] = {"d_model": c.d_model, "backbone_layers": c.backbone_layers, "head_layers": c.head_layers,
                     "tokens_per_frame": c.tokens_per_frame, "context_frames": c.context_frames,
                     "frame": list(sess.frame_shape), "dtype": str(sess.dtype).replace("torch.", "")}
    rng = np.random.default_rng(0)
    T = max(1, c.context_frames // 2)
    sess.reset(rng.integers(0, 256, (T, *sess.frame_shape), dtype=np.uint8))
    acts = held_actions(sess.spec.size, 5000, seed=1)
    ai = iter(acts)
    t0 = time.perf_counter()
    sess.step(next(ai))
    res["first_step_s"] = time.perf_counter() - t0
    step_ms(sess, [next(ai) for _ in range(c.context_frames)])   # the ring fills
    for steps in (1, 2, 4):
        def one(steps=steps):
            sess.steps, sess.guidance = steps, 2.0
            step_ms(sess, [next(ai) for _ in range(ctx.n(20, 2))])
            ms = step_ms(sess, [next(ai) for _ in range(ctx.n(200, 5))])
            return {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "mean_ms": float(ms.mean()),
                    "fps": 1e3 / float(ms.mean())}
        sub(res, f"steps{steps}_guided", one)

    def split():
        sess.steps, sess.guidance = 4, 2.0
        sess.profile = True
        try:
            rows = []
            for _ in range(ctx.n(30, 3)):
                sess.step(next(ai))
                rows.append((sess.times.backbone_ms, sess.times.head_ms, sess.times.decode_ms))
        finally:
            sess.profile = False
        bb, hd, dc = np.median(np.array(rows), axis=0)
        return {"backbone_ms": float(bb), "head_ms": float(hd), "decode_ms": float(dc)}

    sub(res, "split_4steps_guided", split)
    if ctx.cuda:
        sub(res, "attention", lambda: attention_backends(ctx, sess, ctx.n(100, 5)))
    sess.close()
    return res


def part_device(ctx: Ctx) -> dict:
    """Fix 10: a session on a named device that is not the current one (cuda:1), or with the device set explicitly."""
    n = torch.cuda.device_count()
    res: dict[str, Any] = {"device_count": n}
    k = ctx.n(12, 3)
    if n > 1:
        torch.cuda.set_device(0)
        target, mode = "cuda:1", "cuda:1 while the current device is cuda:0"
    else:
        torch.cuda.set_device(0)
        target, mode = "cuda:0", "one GPU: current device set explicitly, session on cuda:0 vs plain 'cuda'"
    res["mode"] = mode
    runs = {}
    for dev in (target, "cuda:0" if n > 1 else "cuda"):
        sess = make_session(ctx, device=dev, seed=2)
        sess.reset()
        runs[dev] = rollout(sess, held_actions(sess.spec.size, k, seed=2))
        res[f"latent_device_{dev}"] = str(sess.latent.device)
        res[f"graphs_{dev}"] = len(sess._capture.graphs) if sess._capture is not None else 0
        sess.close()
    res["current_device_after"] = torch.cuda.current_device()
    a, b = list(runs.values())
    c = compare(*a, *b)
    c.pop("psnr_by_step")
    c.pop("latent_mean_abs_by_step")
    res.update(c)
    res["pass"] = bool(res[f"latent_device_{target}"] == target and c["latent_mean_abs"] <= BF16_LATENT_MEAN_TOL
                       and res["current_device_after"] == 0)
    return res


def part_eval(ctx: Ctx) -> dict:
    """Fix 1: `reverie eval` on CUDA (bf16 decoder fed correctly) vs on the CPU, on held-out episodes recorded here."""
    res: dict[str, Any] = {}
    data = ctx.work / "heldout"
    eps, steps = 2, ctx.n(100, 40)
    rc = cli("record", "--env", "builtin:gems", "--agent", "scripted", "--episodes", eps, "--steps", steps,
             "--size", 64, "--out", data, "--seed", 1_000_000, "--no-progress", "--overwrite")
    res["record"] = {"rc": rc, "episodes": eps, "steps": steps, "note": "builtin:gems is numpy only (no pygame)"}
    if rc != 0:
        res["error"] = f"reverie record exited {rc}"
        return res
    horizon = ctx.n(8, 4)
    devices = ["cuda", "cpu"] if ctx.cuda else ["cpu"]
    for dev in devices:
        def one(dev=dev):
            path = ctx.work / f"eval_{dev}.json"
            t0 = time.perf_counter()
            rc = cli("eval", "--data", data, "--horizon", horizon, "--rollouts-per-episode", 2, "--device", dev,
                     "--threads", ctx.threads, "--json", path)
            if rc != 0:
                return {"error": f"reverie eval --device {dev} exited {rc}"}
            r = json.loads(path.read_text())
            return {"psnr_step1": r["psnr_step1"], "psnr_mean": r["psnr_mean"], "ssim_mean": r["ssim_mean"],
                    "ae_psnr": r["ae_psnr"], "action_following_ratio": r["action_following"]["ratio"],
                    "rollouts": r["rollouts"], "seconds": time.perf_counter() - t0}
        sub(res, dev, one)
    if ctx.cuda and "psnr_step1" in res.get("cuda", {}) and "psnr_step1" in res.get("cpu", {}):
        g, c = res["cuda"], res["cpu"]
        res["gap_cuda_minus_cpu"] = {k: g[k] - c[k] for k in ("psnr_step1", "psnr_mean", "ae_psnr")}
        res["pass"] = bool(abs(g["ae_psnr"] - c["ae_psnr"]) <= 1.0 and abs(g["psnr_step1"] - c["psnr_step1"]) <= 1.0)
    else:
        res["pass"] = None   # nothing on CUDA to confirm
    return res


def part_train(ctx: Ctx) -> dict:
    """Fix 9: short `train ae` and `train wm` runs on the device; ms a step from their metrics.jsonl."""
    res: dict[str, Any] = {}
    data = ctx.work / "heldout"
    if not data.is_dir() or not any(data.glob("*.episode")):
        rc = cli("record", "--env", "builtin:gems", "--agent", "scripted", "--episodes", 2, "--steps",
                 ctx.n(100, 40), "--size", 64, "--out", data, "--seed", 1_000_000, "--no-progress", "--overwrite")
        if rc != 0:
            return {"error": f"reverie record exited {rc}"}
    for stage in ("ae", "wm"):   # a run folder of an earlier check would resume or refuse changed flags
        shutil.rmtree(ctx.work / f"train_{stage}", ignore_errors=True)
    dev = str(ctx.dev)
    common = ["--device", dev, "--threads", min(4, ctx.threads), "--save-every", 100000, "--no-resume"]
    ae_steps, wm_steps, log_every = ctx.n(60, 4), ctx.n(80, 4), ctx.n(20, 2)
    runs = {
        "ae": ["train", "ae", "--data", data, "--out", ctx.work / "train_ae", "--preset", "tiny", "--steps", ae_steps,
               "--batch", 64, "--log-every", log_every, *common],
        "wm": ["train", "wm", "--data", data, "--ae", ctx.work / "train_ae" / "ae.safetensors", "--out",
               ctx.work / "train_wm", "--preset", "tiny", "--steps", wm_steps, "--batch", 32, "--log-every",
               log_every, "--sample-every", 0, "--backbone-actions", "off", *common],
    }
    for stage, argv in runs.items():
        def one(stage=stage, argv=argv):
            r = cli_subprocess(argv, timeout=ctx.n(90, 300), log=ctx.work / f"train_{stage}.log")
            metrics = ctx.work / f"train_{stage}" / "metrics.jsonl"
            rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()] if metrics.is_file() \
                else []
            sps = [row["steps_per_s"] for row in rows if row.get("steps_per_s")]
            later = sps[1:] or sps     # the first interval holds the warm-up (kernels chosen, caches filled)
            r.update({"rows": len(rows), "steps_per_s": sps,
                      "ms_per_step": 1e3 / float(np.median(later)) if later else None,
                      "last_loss": rows[-1].get("loss") if rows else None})
            if r["rc"] != 0:
                r["error"] = f"exited {r['rc']}"
            return r
        sub(res, stage, one)
    res["pass"] = all(isinstance(res.get(s), dict) and res[s].get("rc") == 0 and res[s].get("ms_per_step")
                      for s in runs)
    return res


PARTS: list[tuple[str, Callable[[Ctx], dict], bool]] = [  # (name, function, needs CUDA); the bars' parts first
    ("env", part_env, False), ("bench", part_bench, False), ("oasis", part_oasis, False),
    ("default", part_default, False), ("parity", part_parity, True), ("noise", part_noise, False),
    ("precision", part_precision, False), ("device", part_device, True), ("eval", part_eval, False),
    ("train", part_train, False),
]


# ---- verdicts and the table ----------------------------------------------------------------------------------------
def dig(d: Any, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def verdicts(results: dict) -> None:
    p = results["parts"]
    values = {"default_fps_b1": dig(p, "bench", "batch1", "fps"),
              "oasis_ms_4steps_guided": dig(p, "oasis", "steps4_guided", "p50_ms"),
              "graph_vs_eager_frames": dig(p, "parity", "frames_mean_abs")}
    bars = {}
    for name, (what, op, bar) in BARS.items():
        v = values[name]
        ok = None if v is None else (v >= bar if op == ">=" else v <= bar)
        if name == "graph_vs_eager_frames" and ok is not None:
            ok = bool(dig(p, "parity", "pass"))
        bars[name] = {"what": what, "value": v, "bar": f"{op} {bar}", "pass": ok}
    results["bars"] = bars
    results["fixes"] = {
        "1_eval_on_cuda": dig(p, "eval", "pass"),
        "4_noise_fused": dig(p, "noise", "pass"),
        "5_graphs_no_recapture_no_stall": dig(p, "default", "switching", "pass"),
        "5_one_pool": None if dig(p, "default", "pools") is None else
        dig(p, "default", "pools", "distinct_pools") == 1,
        "6_fp32_tables_and_euler": dig(p, "default", "fp32_tables", "pass"),
        "7_attention_flash_on_full_ring": None if dig(p, "default", "attention") is None else
        "ms" in (dig(p, "default", "attention", "flash") or {}),
        "8_one_replay_plain_step": dig(p, "default", "replays", "pass"),
        "8_pinned_staging": None if dig(p, "default", "staging_pinned") is None else
        all(dig(p, "default", "staging_pinned")),
        "9_train_on_device": dig(p, "train", "pass"),
        "10_device_handling": dig(p, "device", "pass"),
        "10_fp32_tf32_off": dig(p, "precision", "fp32_cuda_vs_cpu_tf32_on_globally", "pass"),
    }


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def summary_md(results: dict) -> str:
    p, lines = results["parts"], []
    env = p.get("env", {})
    gpu = ", ".join(d["name"] for d in env.get("devices", [])) or "no CUDA device"
    lines += [f"GPU check, {results['started']}: {gpu}; torch {env.get('torch')}, CUDA {env.get('torch_cuda')}, "
              f"Triton {env.get('triton')}; {results['seconds']:.0f} s", ""]
    lines += ["| bar | measured | bar | pass |", "|---|---|---|---|"]
    for b in results["bars"].values():
        lines.append(f"| {b['what']} | {fmt(b['value'])} | {b['bar']} | {fmt(b['pass'])} |")
    lines += ["", "| check | measured |", "|---|---|"]

    def row(name, text):
        lines.append(f"| {name} | {text} |")

    b1, b16 = dig(p, "bench", "batch1") or {}, dig(p, "bench", "batch16") or {}
    if "fps" in b1:
        row("reverie bench, default model, batch 1", f"{fmt(b1['fps'], 0)} frames/s, p50 {fmt(b1['p50_ms'])} ms, "
            f"p99 {fmt(b1['p99_ms'])} ms; split backbone / head / decode {fmt(b1['backbone_ms'])} / "
            f"{fmt(b1['head_ms'])} / {fmt(b1['decode_ms'])} ms ({b1.get('steps')} step, guidance {b1.get('guidance')})")
    if "fps" in b16:
        row("reverie bench, default model, batch 16", f"{fmt(b16['fps'], 0)} frames/s "
            f"({fmt(b16['frames_per_s_per_world'], 0)} steps/s), p50 {fmt(b16['p50_ms'])} ms, "
            f"p99 {fmt(b16['p99_ms'])} ms")
    o = p.get("oasis", {})
    cells = [f"{s} step{'s' if s > 1 else ''}: {fmt(dig(o, f'steps{s}_guided', 'p50_ms'))} ms" for s in (1, 2, 4)]
    if dig(o, "steps4_guided", "p50_ms") is not None:
        sp = o.get("split_4steps_guided", {})
        row("oasis preset, guidance 2, p50 a frame", "; ".join(cells) + (
            f" (4 steps: backbone / head / decode {fmt(sp.get('backbone_ms'))} / {fmt(sp.get('head_ms'))} / "
            f"{fmt(sp.get('decode_ms'))} ms)" if "backbone_ms" in sp else ""))
    par = p.get("parity", {})
    if "latent_mean_abs" in par:
        row("CUDA graph vs eager (default model, 40 frames, ring wraps)",
            f"latent mean / max abs {par['latent_mean_abs']:.2e} / {par['latent_max_abs']:.2e}, frames mean abs "
            f"{fmt(par['frames_mean_abs'], 3)}; {fmt(par.get('ms_per_frame_graph'))} vs "
            f"{fmt(par.get('ms_per_frame_eager'))} ms a frame")
    gap = dig(p, "precision", "bf16_vs_fp32") or {}
    if "psnr_step1" in gap:
        row("bf16 vs fp32, same rollout", f"frame PSNR step 1 {fmt(gap['psnr_step1'], 1)} dB, mean over "
            f"{gap['steps']} {fmt(gap['psnr_mean'], 1)} dB; latent mean abs step 1 {gap['latent_mean_abs_step1']:.2e}"
            f", last {gap['latent_mean_abs_last']:.2e}")
    tf = dig(p, "precision", "fp32_cuda_vs_cpu_tf32_on_globally") or {}
    if "latent_max_abs" in tf:
        row("fp32 CUDA vs CPU (global TF32 on; runner turns it off)",
            f"latent max abs {tf['latent_max_abs']:.2e}; flag restored {fmt(tf['global_tf32_flag_restored'])}")
    nz = p.get("noise", {})
    case = nz.get("default_backbone", {})
    if "eager_ms_per_draw" in case:
        row("counter noise, one draw (default backbone)", f"eager {case['eager_ms_per_draw'] * 1e3:.0f} us "
            f"({fmt(case.get('eager_kernels_per_draw'))} kernels) vs compiled {case['compiled_ms_per_draw'] * 1e3:.0f}"
            f" us ({fmt(case.get('compiled_kernels_per_draw'))}); hash bit-equal to numpy "
            f"{fmt(case['hash_bit_equal_compiled_numpy'])}; runner compiled "
            f"{fmt(dig(nz, 'session_runner', 'compiled'))}")
    d = p.get("default", {})
    sw = d.get("switching", {})
    if "changes" in sw:
        worst = max(sw["changes"], key=lambda r: r["first_ms"] - r["steady_p50_ms"])
        row("graphs (default model)", f"{d.get('graphs_after_first_steps')} captured by the first steps, "
            f"{len(sw['graphs_captured_by_changes'])} more by 7 changes of steps/guidance; pools "
            f"{fmt(dig(d, 'pools', 'distinct_pools'))}; worst frame after a change {worst['first_ms']:.2f} ms vs "
            f"steady {worst['steady_p50_ms']:.2f} ms")
    if "replays" in d and "plain_step" in d["replays"]:
        row("replays a step; pinned staging", f"plain {fmt(d['replays']['plain_step'])}, deferred + finish "
            f"{fmt(d['replays']['deferred_step_and_finish'])}; pinned {d.get('staging_pinned')}")
    for where, att in (("default", dig(d, "attention")), ("oasis", dig(o, "attention"))):
        if isinstance(att, dict) and "fastest" in att:
            cells = [f"{b} {fmt(att[b]['ms'], 3)}" if "ms" in att.get(b, {}) else f"{b} failed" for b in SDPA]
            masked = att.get("masked_runner_order", {})
            row(f"backbone step by SDPA backend, {where} (ms, full ring)", ", ".join(cells) +
                f"; fastest {att['fastest']}; masked (ring filling) {fmt(masked.get('ms'), 3)}")
    ev = p.get("eval", {})
    if "cuda" in ev and "psnr_step1" in ev["cuda"]:
        c = ev.get("cpu", {})
        row("reverie eval --device cuda vs cpu", f"step-1 PSNR {fmt(ev['cuda']['psnr_step1'])} vs "
            f"{fmt(c.get('psnr_step1'))} dB, mean {fmt(ev['cuda']['psnr_mean'])} vs {fmt(c.get('psnr_mean'))} dB, "
            f"AE {fmt(ev['cuda']['ae_psnr'])} vs {fmt(c.get('ae_psnr'))} dB")
    tr = p.get("train", {})
    if any(isinstance(tr.get(s), dict) for s in ("ae", "wm")):
        row("train on the device, ms a step", f"ae {fmt(dig(tr, 'ae', 'ms_per_step'), 1)} (batch 64), "
            f"wm {fmt(dig(tr, 'wm', 'ms_per_step'), 1)} (batch 32)")
    dv = p.get("device", {})
    if "mode" in dv:
        row("device handling", f"{dv['mode']}: latent mean abs {fmt(dv.get('latent_mean_abs'), 4)}")
    pt = results.get("pytest")
    if isinstance(pt, dict) and "tests" in pt:
        row("pytest -m gpu", f"{pt['tests']} tests: {pt['passed']} passed, {pt['failed']} failed, "
            f"{pt['errors']} errors, {pt['skipped']} skipped")
    lines += ["", "| fix | confirmed |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in results["fixes"].items()]
    failed = {k: v.get("error", "").splitlines()[0] for k, v in p.items() if isinstance(v, dict) and v.get("error")}
    if failed:
        lines += ["", "Parts that failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items())]
    skipped = {k: v["skipped"] for k, v in p.items() if isinstance(v, dict) and v.get("skipped")}
    if skipped:
        lines += ["", "Parts skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())]
    return "\n".join(lines) + "\n"


def junit_summary(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0, "problems": [], "skip_reasons": []}
    for s in suites:
        out["tests"] += int(s.get("tests", 0))
        out["failed"] += int(s.get("failures", 0))
        out["errors"] += int(s.get("errors", 0))
        out["skipped"] += int(s.get("skipped", 0))
        for case in s.iter("testcase"):
            for tag in ("failure", "error"):
                for el in case.findall(tag):
                    out["problems"].append({"test": f"{case.get('classname')}::{case.get('name')}", "kind": tag,
                                            "message": (el.get("message") or "")[:400]})
            for el in case.findall("skipped"):
                out["skip_reasons"].append((el.get("message") or "")[:200])
    out["passed"] = out["tests"] - out["failed"] - out["errors"] - out["skipped"]
    out["skip_reasons"] = sorted(set(out["skip_reasons"]))
    return out


# ---- main ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "results" / "gpu"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/reverie-gpu-check"), help="scratch (data, runs)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=270.0, help="seconds; parts not started by then are skipped")
    ap.add_argument("--quick", action="store_true", help="a few frames each (a smoke test of this script)")
    ap.add_argument("--only", default="", help="comma-separated parts to run")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip")
    ap.add_argument("--oasis-preset", default="oasis", help="the big preset (a smaller one for a CPU smoke run)")
    ap.add_argument("--pytest-xml", type=Path, default=None, help="JUnit XML of the gpu tests, summarised in")
    ap.add_argument("--pytest-rc", type=int, default=None)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dyn = getattr(torch, "_dynamo", None)
    if dyn is not None:   # one process makes many sessions (shapes): keep the noise compiled for all of them
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(dyn.config, name):
                setattr(dyn.config, name, max(int(getattr(dyn.config, name)), 256))
    torch.set_num_threads(2 if args.quick else min(8, os.cpu_count() or 1))
    cuda = torch.cuda.is_available() and torch.device(args.device).type == "cuda"
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; every part that needs one is skipped", flush=True)
    ctx = Ctx(args)
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    t_start = time.perf_counter()
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": args.device,
                               "quick": args.quick, "budget_s": args.budget, "parts": {}, "seconds": 0.0}
    if args.pytest_xml is not None:
        try:
            results["pytest"] = junit_summary(args.pytest_xml)
        except Exception as e:  # noqa: BLE001
            results["pytest"] = {"error": f"no JUnit XML read from {args.pytest_xml}: {e}"}
        if args.pytest_rc is not None:
            results["pytest"]["rc"] = args.pytest_rc

    def write() -> None:
        results["seconds"] = time.perf_counter() - t_start
        verdicts(results)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (args.out / "summary.md").write_text(summary_md(results))

    for name, fn, needs_cuda in PARTS:
        if (only and name not in only) or name in skip:
            continue
        elapsed = time.perf_counter() - t_start
        if needs_cuda and not cuda or (name != "env" and not cuda and args.device == "cuda"):
            results["parts"][name] = {"skipped": "no CUDA device"}
        elif elapsed > args.budget:
            results["parts"][name] = {"skipped": f"over the time budget ({elapsed:.0f} s > {args.budget:.0f} s)"}
        else:
            print(f"[{elapsed:5.0f}s] gpu_check: {name}", flush=True)
            t0 = time.perf_counter()
            try:
                r = fn(ctx)
            except BaseException as e:  # noqa: BLE001
                if isinstance(e, KeyboardInterrupt):
                    raise
                r = {"error": short_error(e)}
                print(f"gpu_check: {name} failed: {r['error'].splitlines()[0]}", flush=True)
            r["seconds"] = time.perf_counter() - t0
            results["parts"][name] = r
            if cuda:
                torch.cuda.empty_cache()
        write()
    write()
    print(summary_md(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
