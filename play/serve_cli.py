"""`reverie serve`: many clients' worlds over WebSocket + msgpack, stepped as one batch per tick (docs/SERVE.md).

    reverie serve                                    the default model on ws://127.0.0.1:8765/
    reverie serve --model run/model.safetensors --port 9000 --max-worlds 8 --fps 30
    reverie serve --host 0.0.0.0 --token SECRET      beyond loopback only with a token

The flags are checked before anything heavy is imported, and a host beyond loopback without --token is refused
before the model loads or any port is bound (one line, exit 2). The model's onnxruntime graphs are exported first,
as `reverie play` does, so the server runs the fast CPU backend. Ctrl-C or SIGTERM stop it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from play.server import DEFAULT_MAX_WORLDS, DEFAULT_PORT, LOOPBACK, ServeConfig, Server

MAX_WORLDS_LIMIT = 4096       # as engine.knobs.MAX_BATCH
UNCAPPED = ("max", "uncapped")
MAX_FPS = 1000.0              # as engine.knobs.MAX_FPS


def _int_in(flag: str, lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}, got {value}")
        return value

    parse.__name__ = flag
    return parse


def fps_arg(text: str) -> float:
    """--fps: ticks per second in (0, MAX_FPS], or 'max' for as fast as the model goes (0.0)."""
    if text.strip().lower() in UNCAPPED:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number or 'max', got {text!r}") from None
    if not 0.0 < value <= MAX_FPS:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_FPS:g}] ticks/s, or 'max', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reverie serve", description=__doc__.split("\n\n")[0],
                                epilog="protocol, limits and deployment: docs/SERVE.md")
    p.add_argument("--model", type=Path, default=None, metavar="CKPT",
                   help="world-model checkpoint (default: the shipped model)")
    p.add_argument("--host", default=LOOPBACK, help=f"address to listen on (default {LOOPBACK}; any other needs "
                                                    "--token)")
    p.add_argument("--port", type=_int_in("--port", 0, 65535), default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--max-worlds", type=_int_in("--max-worlds", 1, MAX_WORLDS_LIMIT), default=DEFAULT_MAX_WORLDS,
                   help=f"worlds served at once, all clients together (default {DEFAULT_MAX_WORLDS}); the session's "
                        "batch")
    p.add_argument("--token", default=None, help="a secret every client's hello must carry (required beyond "
                                                 "loopback); also read from REVERIE_SERVE_TOKEN")
    p.add_argument("--fps", type=fps_arg, default=0.0, metavar="F|max",
                   help="ticks per second, or 'max' for as fast as the model goes (default max)")
    p.add_argument("--threads", type=_int_in("--threads", 1, 1024), default=None,
                   help="CPU threads of the model (default 1 for onnxruntime, 2 for torch)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"),
                   help="runtime backend (default auto: onnxruntime on CPU where installed, torch on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    return p


def model_info(ckpt: Any, session: Any) -> dict[str, Any]:
    """The welcome's `model`: model.json's player fields (export/web.py), and how many start states there are."""
    from export.web import GAME_FPS, _model_name

    spec = session.spec
    fps = (ckpt.data or {}).get("fps") if isinstance(ckpt.data, dict) else None
    return {"name": _model_name(Path(ckpt.path)), "game": spec.game, "frame": [int(v) for v in session.frame_shape],
            "fps": float(fps or GAME_FPS.get(spec.game.split(":")[0], 30.0)), "buttons": list(spec.buttons),
            "axes": list(spec.axes), "action_dim": int(spec.size),
            "defaults": {"steps": int(session.steps), "guidance": float(session.guidance),
                         "context_noise": float(session.context_noise)},
            "starts": 1}


def session_sizes(max_worlds: int) -> list[int]:
    """The batches the server moves its worlds between: the powers of two below max_worlds, and max_worlds."""
    return [1 << i for i in range(max_worlds.bit_length()) if 1 << i < max_worlds] + [max_worlds]


def load_sessions(a: argparse.Namespace) -> tuple[dict[int, Any], dict[str, Any]]:
    """{batch: session} over the model for session_sizes(--max-worlds), the backend made ready first (a first run
    exports each batch's graphs once), and the welcome's model."""
    from engine.checkpoint import load_checkpoint
    from engine.session import DEFAULT_MODEL, Session
    from export.prepare import prepare_backend
    from play.cli import check_world_model

    ckpt = load_checkpoint(a.model or DEFAULT_MODEL)
    check_world_model(ckpt)
    sessions = {}
    for size in session_sizes(a.max_worlds):
        backend, graphs = prepare_backend(ckpt, a.backend, size, a.device)
        threads = a.threads or (1 if backend == "onnxruntime" else 2)
        sessions[size] = Session(ckpt, backend=backend, graphs=graphs, device=a.device, batch=size, threads=threads)
    return sessions, model_info(ckpt, sessions[a.max_worlds])


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    a.token = a.token or os.environ.get("REVERIE_SERVE_TOKEN") or None
    from export.serve import is_loopback

    if not is_loopback(a.host) and a.token is None:
        print(f"reverie serve: error: refusing to listen on {a.host} without --token: anyone who can reach it could "
              f"use this machine; pass --token SECRET (clients send it in hello), or serve on {LOOPBACK}",
              file=sys.stderr)
        return 2
    sessions, model = load_sessions(a)
    session = sessions[a.max_worlds]
    cfg = ServeConfig(host=a.host, port=a.port, max_worlds=a.max_worlds, token=a.token, fps=a.fps,
                      threads=a.threads or None)
    server = Server(sessions, model, cfg)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(url: str) -> None:
            print(f"reverie serve: {model['name']} ({model['game']}) on {url}, {a.max_worlds} worlds in batches of "
                  f"{'/'.join(map(str, sessions))}, "
                  f"{session.backend}, {'as fast as it goes' if not a.fps else f'{a.fps:g} ticks/s'}", flush=True)

        await server.run(stop, ready)

    try:
        asyncio.run(run())
    finally:
        for s in sessions.values():
            s.close()
    print("reverie serve: stopped", flush=True)
    return 0
