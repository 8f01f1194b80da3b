"""`reverie play`: play inside a world model (default: the shipped model), the real game, or record your own play.

    reverie play                                   the default model in a window
    reverie play --model run/model.safetensors     another checkpoint
    reverie play --real                            the real game the model was trained on, no model
    reverie play --human --env builtin:gems --out data/me     record your own episodes for training
    reverie play --headless --frames 300 --json play.json     the play benchmark (no window)
    reverie play --connect HOST:PORT [--token T]   a world on a running 'reverie serve'
    reverie play --agent gems                      an agent plays inside the model, you watch (Tab: and the real game)

Errors (a missing or wrong model, no display) are one clear line and exit code 1; a quit (Esc, closing the
window) exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from play.display import check_display, start_display
from play.world import PlayError

# engine.knobs and engine.output import torch (seconds on a busy machine): they are imported where the parser is
# built, after a missing display has already been told (main)
DEFAULT_ENV = "builtin:gems"
HEADLESS_FRAMES = 300       # --headless without --frames
UNCAPPED = ("max", "uncapped")  # --fps words for as fast as the model goes
CHECKPOINT_KINDS = {"autoencoder": "an autoencoder", "idm": "an inverse-dynamics model"}   # kind -> what it is


def default_threads() -> int:
    """Torch threads for the model on CPU: all cores but one (the window's), at most 4."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def fps_arg(text: str) -> float:
    """--fps: frames per second in (0, MAX_FPS], or 'max' for as fast as the model goes (returned as 0.0)."""
    from engine.knobs import arg_type, check_fps

    if text.strip().lower() in UNCAPPED:
        return 0.0
    try:
        return arg_type(check_fps, "--fps")(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} (--fps max plays as fast as the model goes)") from None


def build_parser() -> argparse.ArgumentParser:
    from engine.knobs import (
        MAX_FPS,
        arg_type,
        check_guidance,
        check_scale,
        check_seed,
        check_steps,
        check_threads,
    )
    from engine.output import check_count

    p = argparse.ArgumentParser(
        prog="reverie play", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Play inside a world model in a pygame window: your keys go to the model, the model imagines "
                    "the next frame. With no arguments it plays the shipped default model.",
        epilog="controls: Esc quit | Enter reset | P pause | . one step while paused | 1-4 sampling steps | "
               "[ ] guidance | F5/F9 save/load the world | R record | Tab side by side with the real game | H HUD | "
               "F1 help\ngame keys: arrows/WASD move, Space fire/jump, Ctrl attack, E use, Shift run; other buttons "
               "get letter keys (listed at start)")
    m = p.add_argument_group("model")
    m.add_argument("--model", type=Path, default=None, metavar="CKPT",
                   help="world-model checkpoint (.safetensors from 'reverie train wm') or a shipped model's name "
                        "(default, breakout; default: the default model)")
    m.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"),
                   help="runtime backend (default auto: onnxruntime on CPU where installed, torch on CUDA)")
    m.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default: cuda where available)")
    m.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="model precision (default auto: fp32 on CPU, bf16 on CUDA)")
    m.add_argument("--steps", type=arg_type(check_steps, "--steps", int), default=None,
                   help="sampling steps per frame, 1..4 (default: the model's, 1 for the shipped one)")
    m.add_argument("--guidance", type=arg_type(check_guidance, "--guidance"), default=None,
                   help="classifier-free guidance scale, 1.0 is off (default: the model's)")
    m.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=None,
                   help=f"torch threads on CPU (default: cores - 1, at most 4; here {default_threads()})")
    m.add_argument("--seed", type=arg_type(check_seed, "--seed", int), default=0,
                   help="seed of the real game's start and the autopilot")
    m.add_argument("--agent", default=None, metavar="AGENT",
                   help="let an agent play inside the model while you watch: a shipped agent's name (gems), a run "
                        "folder of 'reverie train agent' or its agent .safetensors; Tab shows it playing the real game "
                        "beside the model; your game keys are ignored, the window's controls still work")
    w = p.add_argument_group("window")
    w.add_argument("--scale", type=arg_type(check_scale, "--scale", int), default=None,
                   help="window pixels per frame pixel, 1..32 (default: fit 512 pixels)")
    w.add_argument("--fps", type=fps_arg, default=None, metavar="F",
                   help=f"frames per second to play at, up to {MAX_FPS:g}, or 'max' for as fast as the model goes "
                        "(default: the game's own speed; headless: max)")
    w.add_argument("--side-by-side", action="store_true", help="start with the real game beside the model (Tab)")
    w.add_argument("--no-hud", action="store_true", help="start with the HUD hidden (H)")
    w.add_argument("--save", type=Path, default=Path("reverie-world.safetensors"), metavar="FILE",
                   help="save-game file for F5 / F9 (default reverie-world.safetensors)")
    w.add_argument("--record-dir", type=Path, default=Path("recordings"), metavar="DIR",
                   help="where R writes episodes and GIFs (default recordings/)")
    g = p.add_argument_group("real game and recording your own play")
    g.add_argument("--real", action="store_true", help="play the real game instead of the model (no model needed)")
    g.add_argument("--human", action="store_true", help="play the real game and record every episode to --out")
    g.add_argument("--env", default=None, help=f"game id for --real / --human (default: the model's game, or "
                                               f"{DEFAULT_ENV})")
    g.add_argument("--out", type=Path, default=None, metavar="DIR", help="episode folder for --human")
    r = p.add_argument_group("a world on a server")
    r.add_argument("--connect", default=None, metavar="HOST:PORT",
                   help="play a world on a running 'reverie serve' (docs/SERVE.md); the server runs the model")
    r.add_argument("--token", default=None, help="the server's --token, for --connect")
    b = p.add_argument_group("benchmark")
    b.add_argument("--headless", action="store_true",
                   help="no window (SDL dummy driver): the whole loop driven by a scripted held-key pattern")
    b.add_argument("--frames", type=arg_type(check_count(1), "--frames", int), default=None,
                   help=f"show this many frames (the world steps once per frame), then stop (headless default "
                        f"{HEADLESS_FRAMES}; windowed default: until quit)")
    b.add_argument("--json", type=Path, default=None, metavar="OUT",
                   help="write the run's numbers as JSON (folders are made)")
    b.add_argument("--lockstep", action="store_true",
                   help="one model step per shown frame, after that frame's input (deterministic replays)")
    return p


def check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Reject flag combinations argparse cannot see with its usage error (exit code 2); values are checked by
    their argparse types (engine.knobs)."""
    if a.human and a.out is None:
        p.error("--human records episodes: pass --out DIR")
    if a.connect is not None and (a.real or a.human or a.model is not None):
        p.error("--connect plays the server's model: leave out --model, --real and --human")
    if a.token is not None and a.connect is None:
        p.error("--token goes with --connect HOST:PORT")
    if a.device not in ("auto", "cpu", "cuda") and not a.device.startswith("cuda:"):
        p.error(f"--device must be cpu, cuda, cuda:N or auto, got {a.device!r}")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoint_env_id(ckpt: Any) -> str:
    """The game a checkpoint was trained on: its data's first env id, else its action spec's game."""
    env_ids = (ckpt.data or {}).get("env_ids") if isinstance(ckpt.data, dict) else None
    if isinstance(env_ids, (list, tuple)) and env_ids and isinstance(env_ids[0], str):
        return env_ids[0]
    return ckpt.action_spec.game


def check_world_model(ckpt: Any) -> None:
    """PlayError where the checkpoint holds no world model (an autoencoder's or an inverse-dynamics model's own)."""
    if ckpt.has("wm"):
        return
    what = CHECKPOINT_KINDS.get(ckpt.kind, f"a {ckpt.kind!r}")
    raise PlayError(f"{ckpt.path} is {what} checkpoint, not a world model: pass the model.safetensors that "
                    "'reverie train wm' (or 'reverie train --recipe') writes")


def make_world(a: argparse.Namespace, say) -> tuple[Any, dict[str, Any]]:
    """The world the flags ask for, and facts about it for the benchmark JSON."""
    from engine.checkpoint import load_checkpoint
    from engine.session import DEFAULT_MODEL
    from play.world import ModelWorld, RealWorld, make_real_game

    model_path = a.model or DEFAULT_MODEL
    if a.connect is not None:
        from play.client import RemoteWorld

        world = RemoteWorld(a.connect, a.token, seed=a.seed)
        return world, {"device": "remote", "model": f"{world.model.get('name', '?')} at {world.url}",
                       "env": world.env_id, "server": world.url, "server_fps": world.client.welcome.fps}
    if a.real or a.human:
        env = a.env
        size = 64
        if env is None and (a.model is not None or Path(DEFAULT_MODEL).exists()):
            ckpt = load_checkpoint(model_path)
            env, size = checkpoint_env_id(ckpt), ckpt.config.autoencoder.height
        world = RealWorld(make_real_game(env or DEFAULT_ENV, size, a.seed), seed=a.seed)
        return world, {"env": world.env_id, "device": "cpu", "model": None}
    if a.model is None and not Path(DEFAULT_MODEL).exists():
        raise PlayError(f"the default model is not installed ({DEFAULT_MODEL} is missing): pass --model CKPT with a "
                        "checkpoint from 'reverie train wm', or play the real game with --real")
    from engine.session import Session
    from export.prepare import prepare_backend

    device = resolve_device(a.device)
    threads = a.threads or (default_threads() if device == "cpu" else None)
    ckpt = load_checkpoint(model_path)
    check_world_model(ckpt)                                        # before any export
    agent = None
    if a.agent is not None:                                        # a missing or unfitting agent: before any export
        try:
            from play.agent import load_fitting_agent
        except ImportError as e:
            raise PlayError(f"--agent needs the agents extra ({e}): pip install 'reverie[agents]'") from None
        agent = load_fitting_agent(a.agent, ckpt, f"--model {model_path}")
    t_export = time.perf_counter()   # a first onnxruntime run of a checkpoint exports its graphs once
    backend, graphs = prepare_backend(ckpt, a.backend, 1, device)
    export_s = time.perf_counter() - t_export
    session = Session(ckpt, backend=backend, graphs=graphs, device=device, steps=a.steps, guidance=a.guidance,
                      dtype=a.dtype, threads=threads, profile=a.headless or a.json is not None)
    if agent is None:
        world = ModelWorld(session, env_id=checkpoint_env_id(ckpt), seed=a.seed, backend=backend)
    else:
        from play.agent import AgentWorld, agent_label

        world = AgentWorld(session, agent, agent_label(a.agent), env_id=checkpoint_env_id(ckpt), seed=a.seed,
                           backend=backend)
    if world.warning:
        say(f"warning: no real game to start from ({world.warning}); starting from a mid-grey frame, and Tab has no "
            "real game to show")
    info = {"device": device, "model": str(model_path), "env": world.env_id, "dtype": a.dtype, "threads": threads,
            "batch": 1, "export_s": export_s, "agent": a.agent}
    return world, info


def may_run_without_window(argv: list[str]) -> bool:
    """argv asks for --headless or --help, possibly abbreviated (argparse's prefixes); only then may there be no
    display."""
    return any(t == "-h" or (len(t) > 2 and any(flag.startswith(t) for flag in ("--headless", "--help")))
               for t in argv)


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not may_run_without_window(argv):
        try:
            check_display()      # at once: torch, imported next for the flags' checks, takes seconds to import
        except PlayError as e:
            print(f"reverie play: error: {e}", file=sys.stderr)
            return 1
    p = build_parser()
    a = p.parse_args(argv)
    check_args(p, a)

    def say(message: str) -> None:
        print(message, flush=True)

    try:
        import pygame

        from play.window import Window, WindowConfig
    except ImportError as e:
        print(f"reverie play: error: {e}; install the play extra: pip install 'reverie[play]'", file=sys.stderr)
        return 1
    from engine.errors import ReverieError
    from engine.output import prepare_folder, prepare_output, write_json

    try:
        if a.agent is not None and (a.real or a.human or a.connect is not None):
            raise PlayError("--agent plays inside the model and cannot go with --real, --human or --connect: leave "
                            "those out (the real game is beside the model on Tab)")
        if a.json is not None:
            prepare_output(a.json)                      # before the run, not after it
        if a.human:
            prepare_folder(a.out, "--out")
        if not a.headless:
            start_display()                             # before the model loads (and exports)
        world, info = make_world(a, say)
        frames = a.frames or (HEADLESS_FRAMES if a.headless else 0)
        fps = a.fps if a.fps is not None else (0.0 if a.headless or a.connect else world.fps)   # a server paces
        threads = info.get("threads")
        cfg = WindowConfig(scale=a.scale or 0, fps=fps, headless=a.headless, frames=frames,
                           autopilot=a.headless and a.agent is None,
                           seed=a.seed, lockstep=a.lockstep, hud=not a.no_hud, side_by_side=a.side_by_side,
                           threads=threads, save_path=a.save, record_dir=a.record_dir,
                           human_dir=a.out if a.human else None, caption=f"Reverie: {world.kind} {world.env_id}",
                           info=info)
        window = Window(world, cfg, print_fn=say)
        if a.connect is not None:
            world.follow(window.worker)                 # P pauses the world on the server too
        what = "the real game" if world.kind == "real" else f"the model {info['model']}"
        if a.agent is not None:
            what = f"the agent {a.agent} in {what}"
        say(f"reverie play: {what} ({world.env_id}), {world.backend}, "
            f"{'as fast as it goes' if not fps else f'{fps:g} frames/s'}" + (", headless" if a.headless else ""))
        if a.agent is not None:
            say("the agent plays and your game keys are ignored (the window's controls work); Tab shows it playing "
                "the real game beside the model")
        code = window.run()
        report = window.report()
        # from the start of the command to the first frame on screen, less the one-time export of the graphs
        report["cold_start_s"] = window.started_at - t_start + window.first_frame_s - info.get("export_s", 0.0)
        if a.connect is not None:
            report["round_trip_ms_p50"] = world.round_trip_ms
        say(f"{window.exit_reason or 'quit'}: {report['frames']} frames, {report['model_steps']} steps of the "
            f"world, {report['fps']:.1f} frames/s, p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms, "
            f"model step {report['step_ms_p50']:.1f} ms")
        if a.json is not None:
            write_json(a.json, report)
            say(f"wrote {a.json}")
    except (ReverieError, pygame.error) as e:
        print(f"reverie play: error: {e}", file=sys.stderr)
        return 1
    return code
