"""Control start by start: how far the dream's avatar moves when a direction is held, against the real game, per
guidance scale (any game whose probes name an avatar: builtin:gems, ale:Boxing).

    python experiments/control_starts.py --data HELDOUT [--model CKPT] [--guidance 1.0 1.25 1.5 1.75] [--json OUT]
        [--png OUT.png]

`reverie eval` reports control as means over its starts, which mixes starts against a wall (no move in either) with
starts in the open. This keeps every start: from 8 real starts (start k: episode k mod E, frame 100 + 37 k, 8 real
context frames), each direction is held for 12 frames in the real game (replayed from the episode's seed, restored
after each hold) and on a fork of the dream; it prints and saves each move and, per guidance scale, the dream's move
over the real one where the real avatar moved freely (>= 23 px), how many holds lost the avatar, and in how many
starts each direction moved the avatar that way (>= 2 px) in the dream and in the real game. --png draws, per start,
the start frame, then for each direction the real frame and the dream frame after the hold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from engine.errors import ReverieError
from engine.knobs import arg_type, check_guidance, check_threads
from engine.output import prepare_output, write_json
from engine.session import Session
from train.data.windows import EpisodeSource
from train.evaluation.control import DIRECTIONS, control_dream, control_frames, displacement
from train.evaluation.objects import real_moves
from train.games.probes import AVATAR, probes_for

CONTEXT, STARTS, FIRST, STRIDE = 8, 8, 100, 37
FREE_MOVE = 23.0   # px: a real move this long went unblocked (builtin:gems: 12 frames x 2 px, less a pixel)
THAT_WAY = 2.0     # px along the held direction: the avatar went that way


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="held-out episodes of a game with an avatar probe, each over 145 + "
                                                 "37 k frames for the starts k it holds")
    p.add_argument("--model", default=None, help="world-model checkpoint (default: the shipped model)")
    p.add_argument("--guidance", type=arg_type(check_guidance, "--guidance"), nargs="+", default=[1.0, 1.25, 1.5, 1.75])
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=1)
    p.add_argument("--json", default=None, help="where to save the results")
    p.add_argument("--png", default=None, help="where to draw the holds, real and dreamt, start by start")
    args = p.parse_args(argv)
    try:
        out = prepare_output(args.json) if args.json else None
        torch.set_num_threads(args.threads)
        src = EpisodeSource(args.data)
        env_id = src.spec.game
        if AVATAR not in probes_for(env_id):
            raise ReverieError(f"--data {args.data}: {env_id!r} declares no avatar probe (train/games/probes.py)")
        starts = [(k % len(src.lengths), FIRST + STRIDE * k) for k in range(STARTS)]
        if any(src.lengths[e] < s + CONTEXT + control_frames(env_id) for e, s in starts):
            raise ReverieError(f"--data {args.data}: start k needs episode k mod {len(src.lengths)} longer than "
                               f"{FIRST + CONTEXT + control_frames(env_id)} + {STRIDE} k frames")
        probe, n = probes_for(env_id)[AVATAR], control_frames(env_id)
        real = real_moves(src, starts, CONTEXT, probe, n, [d for d in DIRECTIONS if d in src.spec.buttons])
        if any(m is None for moves in real.values() for m in moves):
            raise ReverieError(f"--data {args.data}: the real game of some episode cannot be replayed from its seed")
        frames = np.stack([src.episode_frames(e)[s:s + CONTEXT] for e, s in starts])
        actions = np.stack([src.actions[e][s:s + CONTEXT] for e, s in starts])
        runs = []
        for g in args.guidance:
            sess = Session(args.model, batch=STARTS, steps=1, guidance=g, threads=args.threads, cuda_graph=False)
            sess.reset(frames, actions, seed=list(range(STARTS)))
            held = {d: control_dream(sess, d, n) for d in real}          # (n + 1, STARTS, H, W, 3) each
            dream = {d: [None if not np.isfinite(m) else float(m)
                         for m in displacement(held[d], probe, DIRECTIONS[d])] for d in real}
            free = [m / r for d in real for r, m in zip(real[d], dream[d]) if m is not None and r >= FREE_MOVE]
            lost = sum(m is None for d in real for m in dream[d])
            that_way = {d: {"dream": sum(m is not None and m >= THAT_WAY for m in dream[d]),
                            "real": sum(r >= THAT_WAY for r in real[d]), "starts": STARTS} for d in real}
            runs.append({"guidance": g, "dream_px": dream, "speed_in_the_open": float(np.mean(free)) if free else None,
                         "avatar_lost": lost, "holds": STARTS * len(real), "that_way": that_way})
            speed = runs[-1]["speed_in_the_open"]
            print(f"guidance {g}: the dream moves {'-' if speed is None else f'{speed:.2f}'}x the real distance in the "
                  f"open; the avatar lost in {lost} of {STARTS * len(real)} holds")
            for d in real:
                print(f"  {d:5s} that way in {that_way[d]['dream']}/{STARTS} dreams, {that_way[d]['real']}/{STARTS} "
                      f"real; real {np.round(real[d], 1).tolist()}  dream "
                      f"{[None if m is None else round(m, 1) for m in dream[d]]}")
            if args.png and g == args.guidance[-1]:
                draw(args.png, src, starts, real, held, probe, n)
        result = {"model": str(args.model or "shipped"), "data": str(args.data), "env": env_id, "frames_held": n,
                  "starts": starts, "real_px": real, "runs": runs}
        if out is not None:
            write_json(Path(out), result)
            print(f"saved {out}")
    except (ReverieError, OSError, ValueError) as e:   # a missing or unreadable --data folder included
        print(f"control_starts: {e}", file=sys.stderr)
        return 2
    return 0


def draw(path: str, src: EpisodeSource, starts: list, real: dict, held: dict, probe, n: int) -> None:
    """Per start a row: the start frame, then for each direction the real game and the dream after the hold."""
    from train.evaluation.control import control_real
    from train.evaluation.long_play import episode_info, replay_game
    from train.pictures.images import save_grid

    rows = []
    for k, (e, s) in enumerate(starts):
        frames, actions = src.episode_frames(e), src.actions[e]
        game, _ = replay_game(episode_info(src, e).env_id, episode_info(src, e).seed, frames[:s + CONTEXT],
                              actions[:s + CONTEXT], {})
        row = [frames[s + CONTEXT - 1]]
        try:
            for d in real:
                row += [control_real(game, d, n)[-1], held[d][-1, k]]
        finally:
            game.close()
        rows.append(np.stack(row))
    save_grid(path, rows, scale=2)
    print(f"drew {path}: per start, the start frame, then real and dream after holding {', '.join(real)}")


if __name__ == "__main__":
    sys.exit(main())
