"""Control start by start: how far the dream's avatar moves when a direction is held, against the real game, per
guidance scale (builtin:gems).

    python experiments/control_starts.py --data HELDOUT [--model CKPT] [--guidance 1.0 1.25 1.5 1.75] [--json OUT]

`reverie eval` reports control as means over its starts, which mixes starts against a wall (no move in either) with
starts in the open. This keeps every start: from 8 real starts (episode e, frame 100 + 37 e, 8 real context frames),
each direction is held for 12 frames in the real game (replayed from the episode's seed, restored after each hold)
and on a fork of the dream; it prints and saves each move and, per guidance scale, the dream's move over the real one
where the real avatar moved freely (>= 23 px) and how many holds lost the avatar.
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

ENV_ID = "builtin:gems"
CONTEXT, STARTS, FIRST, STRIDE = 8, 8, 100, 37
FREE_MOVE = 23.0   # px: a real move this long went unblocked (12 frames x 2 px, less a pixel of rounding)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="held-out builtin:gems episodes, at least 8, each over 145 frames")
    p.add_argument("--model", default=None, help="world-model checkpoint (default: the shipped model)")
    p.add_argument("--guidance", type=arg_type(check_guidance, "--guidance"), nargs="+", default=[1.0, 1.25, 1.5, 1.75])
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=1)
    p.add_argument("--json", default=None, help="where to save the results")
    args = p.parse_args(argv)
    try:
        out = prepare_output(args.json) if args.json else None
        torch.set_num_threads(args.threads)
        src = EpisodeSource(args.data)
        if src.spec.game != ENV_ID:
            raise ReverieError(f"--data {args.data}: {src.spec.game!r} episodes; this measure needs {ENV_ID}")
        starts = [(e, FIRST + STRIDE * e) for e in range(STARTS)]
        if len(src.lengths) < STARTS or any(src.lengths[e] < s + CONTEXT for e, s in starts):
            raise ReverieError(f"--data {args.data}: needs {STARTS} episodes, episode e longer than "
                               f"{FIRST + CONTEXT} + {STRIDE} e frames")
        probe, n = probes_for(ENV_ID)[AVATAR], control_frames(ENV_ID)
        real = real_moves(src, starts, CONTEXT, probe, n, list(DIRECTIONS))
        if any(m is None for moves in real.values() for m in moves):
            raise ReverieError(f"--data {args.data}: the real game of some episode cannot be replayed from its seed")
        frames = np.stack([src.episode_frames(e)[s:s + CONTEXT] for e, s in starts])
        actions = np.stack([src.actions[e][s:s + CONTEXT] for e, s in starts])
        runs = []
        for g in args.guidance:
            sess = Session(args.model, batch=STARTS, steps=1, guidance=g, threads=args.threads, cuda_graph=False)
            sess.reset(frames, actions, seed=list(range(STARTS)))
            dream = {d: [None if not np.isfinite(m) else float(m)
                         for m in displacement(control_dream(sess, d, n), probe, DIRECTIONS[d])] for d in DIRECTIONS}
            free = [m / r for d in DIRECTIONS for r, m in zip(real[d], dream[d]) if m is not None and r >= FREE_MOVE]
            lost = sum(m is None for d in DIRECTIONS for m in dream[d])
            runs.append({"guidance": g, "dream_px": dream, "speed_in_the_open": float(np.mean(free)) if free else None,
                         "avatar_lost": lost, "holds": STARTS * len(DIRECTIONS)})
            print(f"guidance {g}: the dream moves {runs[-1]['speed_in_the_open']:.2f}x the real distance in the "
                  f"open; the avatar lost in {lost} of {STARTS * len(DIRECTIONS)} holds")
            for d in DIRECTIONS:
                print(f"  {d:5s} real {np.round(real[d], 1).tolist()}  dream "
                      f"{[None if m is None else round(m, 1) for m in dream[d]]}")
        result = {"model": str(args.model or "shipped"), "data": str(args.data), "frames_held": n,
                  "starts": starts, "real_px": real, "runs": runs}
        if out is not None:
            write_json(Path(out), result)
            print(f"saved {out}")
    except (ReverieError, OSError, ValueError) as e:   # a missing or unreadable --data folder included
        print(f"control_starts: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
