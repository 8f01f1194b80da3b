"""Data-path throughput: built-in game frames/s, episode writing MB/s, and random-window reads/s.

Run: python benchmarks/bench_data.py [--json OUT.json]. Small defaults (well under a minute on 2 CPU cores). Each
compression setting is measured, so the numbers also justify the default (train/data/episodes.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.errors import ReverieError
from engine.knobs import arg_type, check_seed
from engine.output import check_count, prepare_output, write_json
from train.data.dataset import WindowDataset
from train.data.episodes import COMPRESSIONS, DEFAULT_CHUNK_FRAMES, EpisodeWriter
from train.games.registry import make_agent, make_game


def bench_game(env: str, size: int, frames: int, seed: int) -> dict:
    """Frames/s of game.step alone and of agent.act + game.step, with the scripted agent."""
    game = make_game(env, size=size, seed=seed)
    agent = make_agent("scripted", game, seed=seed)
    frame = game.reset(seed)
    agent.reset(seed)
    actions, t0, n = [], time.perf_counter(), 0
    while n < frames:
        action = agent.act(frame)
        actions.append(action)
        frame, done = game.step(action)
        n += 1
        if done:
            frame = game.reset(seed + n)
            agent.reset(seed + n)
    with_agent = n / (time.perf_counter() - t0)
    game.reset(seed)
    t0 = time.perf_counter()
    for a in actions:
        _, done = game.step(a)
        if done:
            game.reset(seed)
    game_only = len(actions) / (time.perf_counter() - t0)
    game.close()
    return {"env": env, "size": size, "game_fps": round(game_only), "game_and_agent_fps": round(with_agent)}


def play(env: str, size: int, steps: int, seed: int):
    """One episode as arrays: frames (T+1, H, W, 3), actions (T, A), and the game's spec and fps."""
    game = make_game(env, size=size, seed=seed)
    agent = make_agent("scripted", game, seed=seed)
    frame = game.reset(seed)
    agent.reset(seed)
    frames, actions = [frame], []
    for _ in range(steps):
        a = agent.act(frame)
        frame, done = game.step(a)
        frames.append(frame)
        actions.append(a)
        if done:
            break
    spec, fps = game.action_spec, game.fps
    game.close()
    return np.stack(frames), np.stack(actions), spec, fps


def bench_write(root: Path, episodes: list, env: str, compression: str, chunk_frames: int) -> dict:
    """Writer throughput over pre-recorded frames (the game is not in the timing): raw MB/s and file MB/s."""
    root.mkdir(parents=True, exist_ok=True)
    raw = written = 0
    t0 = time.perf_counter()
    for i, (frames, actions, spec, fps) in enumerate(episodes):
        with EpisodeWriter(root / f"e{i:04d}.episode", env_id=env, action_spec=spec, frame_shape=frames.shape[1:],
                           fps=fps, seed=i, chunk_frames=chunk_frames, compression=compression) as w:
            w.extend(frames, actions)
        raw += frames.nbytes + actions.nbytes
        written += w.bytes_written
    seconds = time.perf_counter() - t0
    return {"raw_mb_s": round(raw / 1e6 / seconds, 1), "file_mb_s": round(written / 1e6 / seconds, 2),
            "file_mb": round(written / 1e6, 3), "compression_ratio": round(raw / written, 1),
            "frames_s": round(sum(len(e[0]) for e in episodes) / seconds)}


def bench_read(root: Path, window: int, samples: int, seed: int) -> dict:
    """Random windows/s from a WindowDataset (first pass: checksums checked; second pass: steady state)."""
    ds = WindowDataset(root, window=window)
    rng = np.random.default_rng(seed)
    out = {}
    for name in ("first_pass", "steady"):
        index = rng.integers(len(ds), size=samples)
        t0 = time.perf_counter()
        for i in index:
            ds[int(i)]
        out[f"windows_s_{name}"] = round(samples / (time.perf_counter() - t0))
    ds.close()
    out["frames_mb_s_steady"] = round(out["windows_s_steady"] * window * int(np.prod(ds.frame_shape)) / 1e6, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="builtin:gems", help="game for all three measurements (default builtin:gems)")
    p.add_argument("--size", type=arg_type(check_count(8, 1024), "--size", int), default=64,
                   help="frame side (default 64)")
    p.add_argument("--game-frames", type=arg_type(check_count(1), "--game-frames", int), default=3000,
                   help="frames for the game's frames/s (default 3000)")
    p.add_argument("--episodes", type=arg_type(check_count(1), "--episodes", int), default=6,
                   help="episodes to write and read (default 6)")
    p.add_argument("--steps", type=arg_type(check_count(1), "--steps", int), default=400,
                   help="steps per episode at most (default 400)")
    p.add_argument("--window", type=arg_type(check_count(1), "--window", int), default=16,
                   help="frames per window read (default 16)")
    p.add_argument("--samples", type=arg_type(check_count(1), "--samples", int), default=2000,
                   help="random windows read per pass (default 2000)")
    p.add_argument("--chunk-frames", type=arg_type(check_count(1), "--chunk-frames", int),
                   default=DEFAULT_CHUNK_FRAMES, help="frames per chunk")
    p.add_argument("--seed", type=arg_type(check_seed, "--seed", int), default=0)
    p.add_argument("--json", type=Path, help="also write the results to this JSON file (folders are made)")
    a = p.parse_args(argv)
    try:
        if a.json is not None:
            prepare_output(a.json)          # before the run, not after it
    except ReverieError as e:
        print(f"bench_data: error: {e}", file=sys.stderr)
        return 1

    results = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
               "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}}
    results["game"] = bench_game(a.env, a.size, a.game_frames, a.seed)
    print(f"game   {a.env} {a.size}x{a.size}: {results['game']['game_fps']} frames/s step only, "
          f"{results['game']['game_and_agent_fps']} with the scripted agent")
    episodes = [play(a.env, a.size, a.steps, a.seed + e) for e in range(a.episodes)]
    with tempfile.TemporaryDirectory() as tmp:
        for compression in COMPRESSIONS:
            root = Path(tmp) / compression
            w = bench_write(root, episodes, a.env, compression, a.chunk_frames)
            r = bench_read(root, a.window, a.samples, a.seed)
            results[f"compression_{compression}"] = {"write": w, "read": r}
            print(f"{compression:<5}  write {w['raw_mb_s']} MB/s of frames ({w['frames_s']} frames/s, "
                  f"{w['file_mb_s']} MB/s to disk, ratio {w['compression_ratio']}x); read {r['windows_s_steady']} "
                  f"windows/s of {a.window} (first pass {r['windows_s_first_pass']})")
    if a.json is not None:
        write_json(a.json, results)
        print(f"wrote {a.json}")
    else:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
