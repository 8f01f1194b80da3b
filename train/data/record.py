"""`reverie record`: play a game with an agent and write each episode to an episode file (train/data/episodes.py).

Episode e of a run with ``--seed K`` resets the game and the agent with seed K+e, so a recording is reproducible
and runs with disjoint seed ranges never repeat an episode; it is written to ``OUT/<env>_s<K>_e<eeee>.episode``, where
<env> is the env id with ':' (and any other character unsafe in a file name) as '-': builtin-gems_s0_e0000.episode.
Each step's reward and end (terminated / truncated) are the game's (train.games.base.Game); an episode that reaches
``--steps`` before the game ends it is truncated there. ``--workers`` records episodes in parallel processes (spawned,
so it works on every platform). Nothing is shown on a screen, so SDL, which some games start, gets its dummy
drivers (train.games.gym_adapters.headless_sdl).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from train.data.episodes import (
    COMPRESSIONS,
    DEFAULT_CHUNK_FRAMES,
    DEFAULT_COMPRESSION,
    MAX_CHUNK_FRAMES,
    MAX_SIDE,
    SUFFIX,
    EpisodeWriter,
)

AGENTS = ("scripted", "random")   # the registry's agent names (train.games.registry.AGENTS)
PROGRESS_EVERY = 32   # steps between progress reports from a worker


@dataclass(frozen=True)
class Job:
    """One episode to record."""

    env: str
    agent: str
    size: int
    steps: int
    seed: int
    index: int
    path: str
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
    compression: str = DEFAULT_COMPRESSION


def episode_path(out: Path, env: str, base_seed: int, index: int) -> Path:
    """OUT/<env id with unsafe characters replaced>_s<base seed>_e<index>.episode"""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", env).strip("-.") or "env"
    return out / f"{safe}_s{base_seed}_e{index:04d}{SUFFIX}"


_progress_queue = None  # set in worker processes by _init_worker


def _init_worker(queue) -> None:
    global _progress_queue
    _progress_queue = queue


def record_episode(job: Job, progress=None) -> dict:
    """Record one episode; returns its path, frame count and bytes. ``progress(n)`` is called every few steps."""
    from train.games.registry import make_agent, make_game

    if progress is None and _progress_queue is not None:
        progress = _progress_queue.put
    game = make_game(job.env, size=job.size, seed=job.seed)
    try:
        agent = make_agent(job.agent, game, seed=job.seed)
        frame = game.reset(job.seed)
        agent.reset(job.seed)
        rewarded = hasattr(game, "reward")   # a game of the user's own may say nothing of reward and end
        with EpisodeWriter(job.path, env_id=game.env_id, env_version=game.env_version,
                           action_spec=game.action_spec, frame_shape=frame.shape, fps=game.fps, seed=job.seed,
                           agent=job.agent, chunk_frames=job.chunk_frames, compression=job.compression,
                           metadata={"episode_index": job.index, "max_steps": job.steps}, reward=rewarded) as writer:
            writer.append(frame)
            pending = 0
            for t in range(job.steps):
                action = agent.act(frame)
                frame, done = game.step(action)
                if rewarded:
                    terminated = bool(getattr(game, "terminated", done))
                    truncated = bool(getattr(game, "truncated", False)) or (t == job.steps - 1 and not terminated)
                    writer.append(frame, action, reward=game.reward, terminated=terminated, truncated=truncated)
                else:
                    writer.append(frame, action)
                pending += 1
                if progress is not None and pending == PROGRESS_EVERY:
                    progress(pending)
                    pending = 0
                if done:
                    break
            if progress is not None and pending:
                progress(pending)
        return {"path": job.path, "frames": writer.num_frames, "bytes": writer.bytes_written}
    finally:
        game.close()


def build_parser() -> argparse.ArgumentParser:
    try:
        from train.games.registry import game_help_text

        games = game_help_text()
    except Exception as e:  # the help must work even where a game package is broken
        games = f"(the list of games is unavailable: {e})"
    p = argparse.ArgumentParser(
        prog="reverie record", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Record episodes of a game played by an agent into episode files (one file per episode).",
        epilog=f"{games}\n\nEpisode e uses seed SEED+e for the game and the agent. Files are named after the env id "
               f"with ':' as '-', the seed of\nepisode 0 and the episode index; --env builtin:gems --seed 0 writes\n  "
               f"{', '.join(episode_path(Path('OUT'), 'builtin:gems', 0, e).as_posix() for e in (0, 1))}, ...")
    p.add_argument("--env", required=True, help="game id, e.g. builtin:gems (see the list below)")
    p.add_argument("--agent", default="scripted", help=f"who plays: {' | '.join(AGENTS)} (default scripted)")
    p.add_argument("--episodes", type=int, default=1, help="number of episodes (default 1)")
    p.add_argument("--steps", type=int, default=1000,
                   help="actions per episode at most; an episode that ends early is kept (default 1000)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels, frames are SIZE x SIZE (default 64)")
    p.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="seed of episode 0; episode e uses SEED+e (default 0)")
    p.add_argument("--workers", type=int, default=1, help="parallel recording processes (default 1)")
    p.add_argument("--compression", choices=COMPRESSIONS, default=DEFAULT_COMPRESSION,
                   help=f"compression of frame bytes in the files (default {DEFAULT_COMPRESSION})")
    p.add_argument("--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES,
                   help=f"frames per chunk, the unit of random access (default {DEFAULT_CHUNK_FRAMES})")
    p.add_argument("--overwrite", action="store_true", help="replace episode files that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _fail(msg: str) -> int:
    print(f"reverie record: error: {msg}", file=sys.stderr)
    return 2


def _check_args(a: argparse.Namespace) -> str | None:
    """A message for the first bad argument, or None."""
    if a.episodes < 1:
        return f"--episodes must be at least 1, got {a.episodes}"
    if a.steps < 1:
        return f"--steps must be at least 1, got {a.steps}"
    if not 8 <= a.size <= MAX_SIDE:
        return f"--size must be between 8 and {MAX_SIDE} pixels, got {a.size}"
    if a.workers < 1:
        return f"--workers must be at least 1, got {a.workers}"
    if not 1 <= a.chunk_frames <= MAX_CHUNK_FRAMES:
        return f"--chunk-frames must be 1..{MAX_CHUNK_FRAMES}, got {a.chunk_frames}"
    if a.agent not in AGENTS:
        return f"unknown agent {a.agent!r}; choose one of {', '.join(AGENTS)}"
    return None


def _probe(a: argparse.Namespace) -> str | None:
    """Make the game and agent once so that a bad env, size or agent fails before any recording."""
    try:
        from train.games.registry import make_agent, make_game
    except Exception as e:
        return f"cannot load the games registry: {type(e).__name__}: {e}"
    try:
        game = make_game(a.env, size=a.size, seed=a.seed)
    except Exception as e:
        return f"cannot start --env {a.env} at --size {a.size}: {e} (see 'reverie record --help' for the games)"
    try:
        make_agent(a.agent, game, seed=a.seed)
    except Exception as e:
        return f"cannot make agent {a.agent!r} for {a.env}: {e}"
    finally:
        game.close()
    return None


def _check_out(out: Path, paths: list[Path], overwrite: bool) -> str | None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        return f"cannot write to output directory {out}: {e.strerror or e}"
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        return (f"{len(existing)} episode file(s) already exist in {out} (e.g. {existing[0]}); pass --overwrite, "
                "another --out, or another --seed")
    return None


def _shorten(bar, steps: int, result: dict) -> None:
    """Take the steps an episode that ended early did not play off the progress bar's total."""
    bar.total -= steps - (result["frames"] - 1)
    bar.refresh()


def _run_parallel(jobs: list[Job], workers: int, bar) -> list[dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    results = []
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(queue,)) as pool:
        pending = {pool.submit(record_episode, job) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                while not queue.empty():
                    bar.update(queue.get())
                for fut in done:
                    results.append(fut.result())
                    _shorten(bar, jobs[0].steps, results[-1])
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    while not queue.empty():
        bar.update(queue.get())
    return results


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from train.games.gym_adapters import headless_sdl

    with headless_sdl():   # before any game starts SDL, here and in the spawned workers, which inherit the environment
        return run(a)


def run(a: argparse.Namespace) -> int:
    """Check the arguments, record every episode, print one summary line; the exit status."""
    msg = _check_args(a) or _probe(a)
    if msg:
        return _fail(msg)
    out = a.out
    jobs = [Job(a.env, a.agent, a.size, a.steps, a.seed + e, e, str(episode_path(out, a.env, a.seed, e)),
                a.chunk_frames, a.compression) for e in range(a.episodes)]
    msg = _check_out(out, [Path(j.path) for j in jobs], a.overwrite)
    if msg:
        return _fail(msg)

    from tqdm import tqdm

    t0 = time.perf_counter()
    with tqdm(total=a.episodes * a.steps, unit="step", desc=f"record {a.env}", disable=a.no_progress,
              file=sys.stderr) as bar:
        try:
            if a.workers == 1 or a.episodes == 1:
                results = []
                for job in jobs:
                    results.append(record_episode(job, bar.update))
                    _shorten(bar, a.steps, results[-1])
            else:
                results = _run_parallel(jobs, min(a.workers, a.episodes), bar)
        except Exception as e:
            bar.close()
            return _fail(f"recording failed: {type(e).__name__}: {e} (files already finished are kept in {out})")
    seconds = time.perf_counter() - t0
    frames = sum(r["frames"] for r in results)
    mb = sum(r["bytes"] for r in results) / 1e6
    episodes = f"{len(results)} episode" + ("s" if len(results) != 1 else "")
    print(f"recorded {episodes} of {a.env}, {frames} frames ({frames - len(results)} actions), "
          f"{mb:.2f} MB in {seconds:.1f} s ({mb / max(seconds, 1e-9):.2f} MB/s, {frames / max(seconds, 1e-9):.0f} "
          f"frames/s) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
