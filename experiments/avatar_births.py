"""Where a second avatar comes from in long dreams (builtin:gems).

    python experiments/avatar_births.py --data HELDOUT [--model CKPT] [--frames 990] [--json OUT]

Every change that kept the avatar on screen longer also showed two avatars more often (docs/research/avatar.md). This
dreams one rollout per held-out episode from its first 8 real frames under its recorded actions (replayed from the
start again past the episode's end), finds the avatar probe's separate blobs in every frame (groups of touching
avatar-coloured pixels, at least the probe's 9 each), and at every "birth", a frame with more avatars than the frame
before it, asks where the new one (the blob furthest from every avatar of the frame before) came from, in this order:
  ghost    the frame before already had 3 or more avatar-coloured pixels within 4 px of it: a faint avatar the dream
           kept, now over the threshold
  spawn    within 8 px of the point a hit respawns the player at (the dream hedging over a hit)
  enemy    an enemy pixel within 4 px of it in the frame before (an enemy taking the avatar's colour)
  gem      a gem pixel within 4 px of it in the frame before
  nothing  none of these
It also reports the share of frames that show two avatars or more.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.errors import ReverieError
from engine.knobs import arg_type, check_guidance, check_threads
from engine.output import prepare_output, write_json
from engine.session import Session
from train.data.windows import EpisodeSource
from train.games.probes import AVATAR, blob_centres, probes_for
from train.games.registry import make_game

ENV_ID = "builtin:gems"
CONTEXT = 8
GHOST_PX, GHOST_R = 3, 4     # avatar-coloured pixels within this many px of the new blob, the frame before
SPAWN_R, NEAR_R = 8.0, 4.0   # px to the respawn point; to an enemy or gem pixel the frame before
KINDS = ("ghost", "spawn", "enemy", "gem", "nothing")


def spawn_centre() -> np.ndarray:
    """(x, y): the middle of the player where a hit respawns it, from the game itself."""
    game = make_game(ENV_ID, size=64, seed=0)
    try:
        x, y = game.spawn_point()
        return np.array([x, y], np.float64) + game.config.player_size / 2
    finally:
        game.close()


def nearest(mask: np.ndarray, c: np.ndarray) -> float:
    """Distance from c (x, y) to the nearest set pixel's centre of an (H, W) mask; inf when none is set."""
    ys, xs = np.nonzero(mask)
    return float(np.hypot(xs + 0.5 - c[0], ys + 0.5 - c[1]).min()) if len(xs) else float("inf")


def classify(dream: np.ndarray, spawn: np.ndarray) -> tuple[dict[str, int], float, int]:
    """(frames, 64, 64, 3) of one dream -> (births per kind, share of frames with two avatars or more, frames)."""
    probes = probes_for(ENV_ID)
    av, en, gem = probes[AVATAR], probes["enemies"], probes["gems"]
    mask_av, mask_en, mask_gem = av.mask(dream), en.mask(dream), gem.mask(dream)
    min_px = av.min_pixels_at(64, 64)
    kinds = dict.fromkeys(KINDS, 0)
    before, two = np.zeros((0, 2)), 0
    for t in range(len(dream)):
        blobs = blob_centres(mask_av[t], min_px)
        two += len(blobs) >= 2
        if t and len(before) and len(blobs) > len(before):
            far = np.hypot(*(blobs[:, None] - before[None]).transpose(2, 0, 1)).min(axis=1)   # (K,) to the old ones
            c = blobs[int(far.argmax())]
            x, y = int(c[0]), int(c[1])
            ghost = int(mask_av[t - 1][max(y - GHOST_R, 0):y + GHOST_R, max(x - GHOST_R, 0):x + GHOST_R].sum())
            if ghost >= GHOST_PX:
                kinds["ghost"] += 1
            elif np.hypot(*(c - spawn)) <= SPAWN_R:
                kinds["spawn"] += 1
            elif nearest(mask_en[t - 1], c) <= NEAR_R:
                kinds["enemy"] += 1
            elif nearest(mask_gem[t - 1], c) <= NEAR_R:
                kinds["gem"] += 1
            else:
                kinds["nothing"] += 1
        before = blobs
    return kinds, two / len(dream), len(dream)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="held-out builtin:gems episodes (64x64)")
    p.add_argument("--model", default=None, help="world-model checkpoint (default: the shipped model)")
    p.add_argument("--steps", type=int, choices=(1, 2, 3, 4), default=None,
                   help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=arg_type(check_guidance, "--guidance"), default=None,
                   help="guidance scale (default: the model's)")
    p.add_argument("--frames", type=int, default=990, help="frames dreamt per episode (default 990)")
    p.add_argument("--episodes", type=int, default=8, help="held-out episodes, one dream each (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=1)
    p.add_argument("--json", default=None, help="where to save the results")
    args = p.parse_args(argv)
    try:
        if args.frames < 2 or args.episodes < 1:
            raise ReverieError("--frames must be >= 2 and --episodes >= 1")
        out = prepare_output(args.json) if args.json else None
        torch.set_num_threads(args.threads)
        src = EpisodeSource(args.data)
        if src.spec.game != ENV_ID:
            raise ReverieError(f"--data {args.data}: {src.spec.game!r} episodes; this measure needs {ENV_ID}")
        use = [e for e in range(len(src.lengths)) if src.lengths[e] > CONTEXT][:args.episodes]
        if len(use) < args.episodes or src.frame_shape[:2] != (64, 64):
            raise ReverieError(f"--data {args.data}: needs {args.episodes} episodes of 64x64 frames longer than "
                               f"{CONTEXT} frames; it has {len(use)} of {src.frame_shape[0]}x{src.frame_shape[1]}")
        sess = Session(args.model, batch=len(use), steps=args.steps, guidance=args.guidance, threads=args.threads,
                       cuda_graph=False)
        sess.reset(np.stack([src.episode_frames(e)[:CONTEXT] for e in use]),
                   np.stack([src.actions[e][:CONTEXT] for e in use]), seed=[args.seed + i for i in range(len(use))])
        dream = np.empty((len(use), args.frames, 64, 64, 3), np.uint8)
        for t in tqdm(range(args.frames), desc="dream", unit="frame"):
            acts = [src.actions[e][(CONTEXT + t) % len(src.actions[e])] for e in use]
            dream[:, t] = sess.step(np.stack(acts))
        spawn = spawn_centre()
        total, two, n = dict.fromkeys(KINDS, 0), 0.0, 0
        for d in dream:
            kinds, share, frames = classify(d, spawn)
            total = {k: total[k] + kinds[k] for k in KINDS}
            two, n = two + share * frames, n + frames
        births = sum(total.values())
        result = {"model": str(args.model or "shipped"), "data": str(args.data), "steps": sess.steps,
                  "guidance": sess.guidance, "dreams": len(use), "frames": n, "two_or_more": two / n,
                  "births": births, "births_per_1000_frames": 1000 * births / n,
                  "kinds": total, "kind_shares": {k: (total[k] / births if births else None) for k in KINDS}}
        print(f"{result['model']}: two avatars or more in {result['two_or_more']:.1%} of {n} frames; "
              f"{births} births ({result['births_per_1000_frames']:.0f} per 1,000 frames): "
              + ", ".join(f"{k} {total[k]}" for k in KINDS))
        if out is not None:
            write_json(Path(out), result)
            print(f"saved {out}")
    except (ReverieError, OSError, ValueError) as e:
        print(f"avatar_births: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
