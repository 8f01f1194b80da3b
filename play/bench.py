"""`reverie bench`: frames/s and frame times of the real-time session, with the machine it ran on.

The backend is made ready first (export.prepare: a first onnxruntime or TensorRT run exports the checkpoint's
graphs once); that time is reported apart as `export_s`. Cold start (checkpoint load + session + reset + first
frame) is reported apart too; warm-up frames are excluded; each timed frame is one `Session.step` including the
copy of the frame to host memory. A separate profiled pass splits the frame into head, decode and backbone time
(CUDA events on GPU, so the split costs no host syncs in the timed pass; on onnxruntime with `overlap` the timed
frames run the backbone beside the decode, the split runs them in turn). `--preset NAME` benchmarks random
weights of a preset (e.g. oasis) with no checkpoint.

`--serve ws://HOST:PORT` is the load program of a `reverie serve` instead (docs/SERVE.md): K clients in one process,
each with its own connection and world, each sending a step with a new seq on every frame it receives (or F times a
second with --fps), for S seconds; it reports each client's frames/s and round trips, and the world-frames/s of all.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from engine.knobs import arg_type, check_batch, check_device, check_fps, check_guidance, check_steps, check_threads
from engine.output import check_count, prepare_output, write_json
from engine.session import DEFAULT_MODEL, Session, SessionError

SPLIT_FRAMES = 50           # profiled frames for the backbone / head / decode split
MAX_CLIENTS = 256           # --serve: clients of one load program
MAX_SECONDS = 600           # --serve: seconds of one measurement
SERVE_WARMUP_S = 1.0        # --serve: seconds of play after every client has its first frame, before the count


def machine(device: torch.device, threads: int) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": threads,
            "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
        info["cpu_count"] = os.cpu_count()
    except OSError:
        info["cpu"] = platform.processor()
    return info


def random_session(preset: str, device: str, batch: int, steps: int | None, guidance: float | None, dtype: str,
                   cuda_graph: bool, kernels: str = "auto") -> Session:
    """A session over random weights of a preset (speed work; the frames are noise)."""
    from engine.actions import ActionSpec
    from engine.autoencoder import Autoencoder
    from engine.config import ModelConfig
    from engine.world_model import WorldModel

    cfg = ModelConfig.from_name(preset, action_dim=8)
    spec = ActionSpec(game="bench:random", buttons=tuple(f"b{i}" for i in range(8)))
    torch.manual_seed(0)
    return Session(models=(Autoencoder(cfg.autoencoder), WorldModel(cfg.world_model), spec), device=device,
                   batch=batch, steps=steps, guidance=guidance, dtype=dtype, cuda_graph=cuda_graph, kernels=kernels)


def held_actions(spec, frames: int, seed: int = 0) -> np.ndarray:
    """Player-like actions: a random button set held for 2-12 frames at a time."""
    rng = np.random.default_rng(seed)
    out = np.zeros((frames, spec.size), np.float32)
    t = 0
    while t < frames:
        n = int(rng.integers(2, 13))
        a = spec.null()
        if len(spec.buttons):
            a[int(rng.integers(0, len(spec.buttons)))] = 1.0
        out[t:t + n] = a
        t += n
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reverie bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--preset", default=None, help="benchmark random weights of this preset instead of a model")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"],
                   help="auto (default): onnxruntime on CPU where installed, torch on CUDA")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--frames", type=arg_type(check_count(1), "--frames", int), default=300,
                   help="timed frames (default 300)")
    p.add_argument("--warmup", type=arg_type(check_count(0), "--warmup", int), default=30,
                   help="untimed frames first (default 30)")
    p.add_argument("--batch", type=arg_type(check_batch, "--batch", int), default=1, help="worlds stepped together")
    p.add_argument("--steps", type=arg_type(check_steps, "--steps", int), default=None,
                   help="sampling steps per frame, 1..4 (default: the model's)")
    p.add_argument("--guidance", type=arg_type(check_guidance, "--guidance"), default=None,
                   help="classifier-free guidance, 1.0 is off (default: the model's)")
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=None,
                   help="CPU threads (default: 1 for onnxruntime, which runs this small step fastest on one, 2 for "
                        "torch)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="transformer precision (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--no-cuda-graph", action="store_true", help="run eagerly on CUDA")
    p.add_argument("--kernels", default="auto", choices=["auto", "triton", "reference"],
                   help="the torch backend's step: triton (the fused kernels of kernels/), reference (PyTorch), auto "
                        "(triton on CUDA where it imports; default)")
    p.add_argument("--json", type=Path, default=None, help="write the results here (folders are made)")
    s = p.add_argument_group("load on a server (reverie serve)")
    s.add_argument("--serve", default=None, metavar="URL",
                   help="measure a running 'reverie serve' at ws://HOST:PORT instead of a local session")
    s.add_argument("--token", default=None, help="the server's --token")
    s.add_argument("--clients", type=arg_type(check_count(1, MAX_CLIENTS), "--clients", int), default=1,
                   help=f"clients, each its own connection and world, 1..{MAX_CLIENTS} (default 1)")
    s.add_argument("--seconds", type=arg_type(check_count(1, MAX_SECONDS), "--seconds", int), default=20,
                   help=f"seconds measured, 1..{MAX_SECONDS} (default 20)")
    s.add_argument("--fps", type=arg_type(check_fps, "--fps"), default=None,
                   help="steps each client sends per second (default: one per frame received)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json is not None:
        prepare_output(args.json)           # before the run, not after it
    if args.serve is not None:
        return serve_main(args)
    result = bench(args)
    line = (f"{result['fps']:.1f} frames/s  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
            f"cold start {result['cold_start_s']:.2f} s" +
            (f" (+ export {result['export_s']:.2f} s)" if result["export_s"] >= 0.01 else "") +
            f"  split: backbone {result['backbone_ms']:.2f} / head {result['head_ms']:.2f} / decode "
            f"{result['decode_ms']:.2f} ms  ({result['backend']} {result['device']}, batch {result['batch']}, "
            f"{result['steps']} steps" + (f", kernels {result['kernels']}" if result["kernels"] else "") + ")")
    print(line)
    if args.json is not None:
        write_json(args.json, result)
    return 0


def bench(args: argparse.Namespace) -> dict:
    from export.prepare import prepare_backend

    device = check_device(args.device)
    backend = args.backend
    if (args.preset or args.kernels == "triton") and backend == "auto":
        backend = "torch"   # random weights live in memory; Triton kernels are the torch runner's
    if backend != "torch" and args.preset:
        raise SessionError(f"--preset runs random weights in memory on the torch backend; --backend {backend} "
                           "needs a checkpoint (--model)")
    t_load = time.perf_counter()
    ckpt = None
    if not args.preset:
        from engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.model or DEFAULT_MODEL)
    load_s = time.perf_counter() - t_load
    # a first run of a checkpoint on onnxruntime / TensorRT exports its graphs once: not part of the cold start
    t_export = time.perf_counter()
    graphs = None
    if ckpt is not None:
        backend, graphs = prepare_backend(ckpt, backend, args.batch, device)
    export_s = time.perf_counter() - t_export
    threads = args.threads or (1 if backend == "onnxruntime" else 2)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if args.preset:
        sess = random_session(args.preset, args.device, args.batch, args.steps, args.guidance, args.dtype,
                              not args.no_cuda_graph, args.kernels)
        rng = np.random.default_rng(0)
        T = max(1, sess.cfg.context_frames // 2)
        sess.reset(rng.integers(0, 256, (T, *sess.frame_shape), dtype=np.uint8))
        model_name = f"random {args.preset}"
    else:
        sess = Session(ckpt, backend=backend, graphs=graphs, device=device, batch=args.batch, steps=args.steps,
                       guidance=args.guidance, dtype=args.dtype, cuda_graph=not args.no_cuda_graph, threads=threads,
                       kernels=args.kernels)
        sess.reset()
        model_name = str(ckpt.path)
    actions = held_actions(sess.spec, args.warmup + args.frames + 1)
    sess.step(actions[0])
    cold = load_s + time.perf_counter() - t0
    for t in range(args.warmup):
        sess.step(actions[1 + t])
    times = np.empty(args.frames)
    base = 1 + args.warmup
    t_all = time.perf_counter()
    for t in range(args.frames):
        ts = time.perf_counter()
        sess.step(actions[base + t])
        times[t] = time.perf_counter() - ts
    total = time.perf_counter() - t_all
    # profiled pass for the split (separate so that its syncs do not touch the timed frames)
    sess.profile = True
    split = []
    for t in range(min(SPLIT_FRAMES, args.frames)):
        sess.step(actions[t])
        split.append((sess.times.backbone_ms, sess.times.head_ms, sess.times.decode_ms))
    bb, hd, dc = np.median(np.array(split), axis=0)
    ms = times * 1e3
    result = {
        "fps": args.frames * args.batch / total, "frames_per_s_per_world": args.frames / total,
        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()), "max_ms": float(ms.max()), "cold_start_s": cold,
        "backbone_ms": float(bb), "head_ms": float(hd), "decode_ms": float(dc),
        "device": str(device), "backend": backend, "export_s": export_s, "batch": args.batch, "steps": sess.steps,
        "guidance": sess.guidance, "dtype": str(sess.dtype).replace("torch.", ""),
        "cuda_graph": bool(getattr(sess, "use_graphs", False)), "overlap": bool(getattr(sess, "overlap", False)),
        "kernels": getattr(sess.runner, "kernels", None),
        "frames": args.frames, "warmup": args.warmup,
        "model": model_name,
        "machine": machine(device, threads),
    }
    close = getattr(sess, "close", None)
    if callable(close):
        close()
    return result


# ---- --serve: the load program of a server ---------------------------------------------------------------------------
def serve_main(args: argparse.Namespace) -> int:
    """`reverie bench --serve URL`: run the clients, print a summary, write the JSON."""
    from play.client import server_url

    result = asyncio.run(bench_serve(server_url(args.serve), args.token, args.clients, args.seconds, args.fps))
    per = result["per_client"]
    print(f"{result['world_frames_per_s']:.1f} world-frames/s from {result['clients']} clients over "
          f"{result['seconds']:g} s; per client {min(c['fps'] for c in per):.1f}-{max(c['fps'] for c in per):.1f} "
          f"frames/s, round trip p50 {result['round_trip_p50_ms']:.1f} ms p99 {result['round_trip_p99_ms']:.1f} ms, "
          f"server step p50 {result['server_tick_ms_p50']:.1f} ms "
          f"({result['server']}, {result['welcome']['model'].get('name', '?')}, server fps "
          f"{result['welcome']['fps'] or 'max'})")
    if args.json is not None:
        write_json(args.json, result)
    return 0


async def bench_serve(url: str, token: str | None, clients: int, seconds: float, fps: float | None) -> dict:
    """K clients on `url`, each its own connection and world; frames and round trips counted over `seconds`."""
    from play.client import Client, spec_of

    load_before = os.getloadavg()                       # how quiet the machine was (server and clients share it)
    first = await Client.connect(url, token)            # a refused token or no server: one line, before the rest
    others = await asyncio.gather(*(Client.connect(url, token) for _ in range(clients - 1)), return_exceptions=True)
    conns = [first] + [c for c in others if not isinstance(c, BaseException)]
    tasks: list[asyncio.Task] = []
    try:
        for c in others:
            if isinstance(c, BaseException):
                raise c
        worlds = await asyncio.gather(*(c.create(seed=i) for i, c in enumerate(conns)))
        await asyncio.gather(*(c.next_frame(w) for c, w in zip(conns, worlds)))
        actions = held_actions(spec_of(first.welcome.model, url), 1024)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(drive(c, w, actions, fps, stop, 97 * i)) for i, (c, w) in
                 enumerate(zip(conns, worlds))]
        await asyncio.sleep(SERVE_WARMUP_S)
        start = [(c.frames_received(w), c.take_round_trips(), c.take_tick_ms()) for c, w in zip(conns, worlds)]
        t0 = time.perf_counter()
        done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
        elapsed = time.perf_counter() - t0
        counts = [c.frames_received(w) - n0 for c, w, (n0, *_) in zip(conns, worlds, start)]
        trips = [c.take_round_trips() for c in conns]
        ticks = [ms for c in conns for ms in c.take_tick_ms() if ms > 0]    # 0: a start frame, made outside a tick
        stop.set()
        for task in done:
            task.result()                               # a client that failed: its ClientError, one line
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in conns))
    per_client = [{"client": i, "world": w, "frames": n, "fps": n / elapsed, "round_trips": len(rt),
                   "round_trip_p50_ms": _percentile(rt, 50), "round_trip_p99_ms": _percentile(rt, 99)}
                  for i, (w, n, rt) in enumerate(zip(worlds, counts, trips))]
    every = [ms for rt in trips for ms in rt]
    welcome = first.welcome
    return {
        "mode": "serve", "server": url, "clients": clients, "seconds": elapsed, "fps_cap": fps or 0.0,
        "world_frames_per_s": sum(counts) / elapsed, "frames": sum(counts),
        "fps_per_client_min": min(c["fps"] for c in per_client),
        "fps_per_client_median": float(np.median([c["fps"] for c in per_client])),
        "round_trip_p50_ms": _percentile(every, 50), "round_trip_p99_ms": _percentile(every, 99),
        "server_tick_ms_p50": _percentile(ticks, 50), "server_tick_ms_p99": _percentile(ticks, 99),
        "per_client": per_client,
        "welcome": {"model": welcome.model, "fps": welcome.fps, "max_worlds": welcome.max_worlds,
                    "max_message": welcome.max_message},
        "machine": {**machine(torch.device("cpu"), torch.get_num_threads()), "load_average_before": load_before},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


async def drive(client, world: int, actions: np.ndarray, fps: float | None, stop: asyncio.Event, offset: int) -> None:
    """One client's play: a step on every frame received, or `fps` steps a second, until `stop`."""
    t = offset
    period = 1.0 / fps if fps else 0.0
    due = time.perf_counter()
    while not stop.is_set():
        if period:
            due += period
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        else:
            await client.next_frame(world)
        await client.step(world, actions[t % len(actions)])
        t += 1


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0
