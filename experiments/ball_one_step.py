"""One step from real context: does the Breakout world model draw the ball where it flies? (ale:Breakout)

    python experiments/ball_one_step.py --data HELDOUT [--model CKPT] [--max-starts 512] [--json OUT]

A 100-frame dream of the Breakout model (before its lr 3e-4 stage) showed the ball in 0.41x as many frames as the real
game, yet more sampling steps (2, 4, 8) and run-time context noise (0, 0.05, 0.15) moved that by no more than 0.01:
the loss happens in the model's prediction of the next frame, not in the sampler or in drift. This asks it one step
at a time, teacher-forced: for frames t of the held-out episodes where the real ball is in play in frames t - 1, t
and t + 1, a session is reset on the 8 real frames up to t and stepped once with the recorded action. Reported: the
share of predicted frames where the ball probe finds the ball, split into free flight and bounces (the ball's
direction flips between t - 1 -> t and t -> t + 1), the median distance of a seen ball from the real one, the share
with more ball blobs than one, and the ball's peak brightness near the real ball (the largest projection of a pixel
onto the ball's red within 4 px, 1 = the full red; the probe needs about 0.27): a dim smear and an erased ball both
fail the probe but look different to a player.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from engine.errors import ReverieError
from engine.knobs import arg_type, check_guidance, check_steps, check_threads
from engine.output import prepare_output, write_json
from engine.session import Session
from train.data.windows import EpisodeSource
from train.games.probes import BREAKOUT_RED, blob_counts, probes_for

ENV_ID = "ale:Breakout"
CONTEXT = 8          # real frames each step starts from
NEAR = 4             # px around the real ball where its peak brightness is read
RED = np.array(BREAKOUT_RED, np.float64)


def ball_starts(src: EpisodeSource) -> list[tuple[int, int, bool]]:
    """(episode, t, bounce) for every t with the real ball visible in frames t - 1, t and t + 1. Bounce: the ball's
    x or y direction flips between the two moves."""
    ball = probes_for(ENV_ID)["ball"]
    starts = []
    for e, n in enumerate(src.lengths):
        frames = src.episode_frames(e)
        if frames.shape[1:3] != (64, 64):
            raise ReverieError(f"episode {e}: frames of {frames.shape[1]}x{frames.shape[2]}; this measure reads "
                               "64x64 frames")
        seen, c = ball.visible(frames), ball.centroid(frames)
        for t in range(CONTEXT - 1, n - 1):
            if seen[t - 1] and seen[t] and seen[t + 1]:
                before, after = c[t] - c[t - 1], c[t + 1] - c[t]
                starts.append((e, t, bool((np.sign(before) * np.sign(after) < 0).any())))
    return starts


def peak_near(frames: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N,) the largest projection onto the ball's red of a pixel within NEAR px of each centre (x, y)."""
    out = np.zeros(len(frames))
    for i, (f, (x, y)) in enumerate(zip(frames, centres)):
        x0, y0 = max(int(x) - NEAR, 0), max(int(y) - NEAR, 0)
        win = f[y0:int(y) + NEAR + 1, x0:int(x) + NEAR + 1].astype(np.float64)
        out[i] = (win @ RED / (RED @ RED)).max() if win.size else 0.0
    return out


def one_step(sess: Session, src: EpisodeSource, starts: list, batch: int) -> dict[str, np.ndarray]:
    """Per start: ball seen in the predicted frame, its distance from the real ball, blob count, peak brightness near
    the real ball in the predicted and in the real frame."""
    ball = probes_for(ENV_ID)["ball"]
    frames = {e: src.episode_frames(e) for e in {s[0] for s in starts}}
    cols: dict[str, list] = {"seen": [], "dist": [], "blobs": [], "peak": [], "peak_real": [], "bounce": []}
    for i in range(0, len(starts), batch):
        g = starts[i:i + batch]
        pad = g + [g[-1]] * (batch - len(g))      # a short last batch runs full, its padding is dropped
        sess.reset(np.stack([frames[e][t - CONTEXT + 1:t + 1] for e, t, _ in pad]),
                   np.stack([src.actions[e][t - CONTEXT + 1:t + 1] for e, t, _ in pad]),
                   seed=[(i + k) % 2**31 for k in range(batch)])
        pred = sess.step(np.stack([src.actions[e][t + 1] for e, t, _ in pad]))[:len(g)]
        real = np.stack([frames[e][t + 1] for e, t, _ in g])
        rc, pc = ball.centroid(real), ball.centroid(pred)
        cols["seen"] += list(ball.visible(pred))
        cols["dist"] += list(np.hypot(*(pc - rc).T))
        cols["blobs"] += list(blob_counts(ball.mask(pred), ball.min_pixels_at(64, 64)))
        cols["peak"] += list(peak_near(pred, rc))
        cols["peak_real"] += list(peak_near(real, rc))
        cols["bounce"] += [b for *_, b in g]
    return {k: np.array(v) for k, v in cols.items()}


def summarise(r: dict[str, np.ndarray]) -> dict:
    """Shares and medians over all starts and per kind (free flight, bounce)."""
    def part(sel: np.ndarray) -> dict:
        if not sel.any():
            return {"starts": 0}
        seen = r["seen"][sel].astype(bool)
        return {"starts": int(sel.sum()), "ball_seen": float(seen.mean()),
                "distance_px_median": float(np.median(r["dist"][sel][seen])) if seen.any() else None,
                "more_than_one_blob": float((r["blobs"][sel] > 1).mean()),
                "peak_median": float(np.median(r["peak"][sel])),
                "peak_real_median": float(np.median(r["peak_real"][sel]))}
    bounce = r["bounce"].astype(bool)
    return {"all": part(np.ones_like(bounce)), "free": part(~bounce), "bounce": part(bounce),
            "bounce_share": float(bounce.mean())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="held-out ale:Breakout episodes (64x64)")
    p.add_argument("--model", default="breakout", help="world-model checkpoint (default: the shipped Breakout model)")
    p.add_argument("--steps", type=arg_type(check_steps, "--steps", int), default=None,
                   help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=arg_type(check_guidance, "--guidance"), default=None,
                   help="guidance scale (default: the model's)")
    p.add_argument("--max-starts", type=int, default=512, help="at most this many starts, drawn at random (512)")
    p.add_argument("--batch", type=int, default=16, help="starts stepped at once (default 16)")
    p.add_argument("--seed", type=int, default=0, help="the draw of starts")
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=1)
    p.add_argument("--json", default=None, help="where to save the results")
    args = p.parse_args(argv)
    try:
        if args.batch < 1 or args.max_starts < 1:
            raise ReverieError("--batch and --max-starts must be >= 1")
        out = prepare_output(args.json) if args.json else None
        torch.set_num_threads(args.threads)
        src = EpisodeSource(args.data)
        if src.spec.game != ENV_ID:
            raise ReverieError(f"--data {args.data}: {src.spec.game!r} episodes; this measure needs {ENV_ID}")
        starts = ball_starts(src)
        if not starts:
            raise ReverieError(f"--data {args.data}: the ball is never in play for three frames running; record "
                               "episodes with the scripted agent, which serves")
        if len(starts) > args.max_starts:
            keep = np.random.default_rng(args.seed).choice(len(starts), args.max_starts, replace=False)
            starts = [starts[i] for i in sorted(keep)]
        sess = Session(args.model, batch=args.batch, steps=args.steps, guidance=args.guidance, threads=args.threads,
                       cuda_graph=False)
        s = summarise(one_step(sess, src, starts, args.batch))
        result = {"model": str(args.model), "data": str(args.data), "steps": sess.steps, "guidance": sess.guidance,
                  "context": CONTEXT, **s}
        for kind in ("all", "free", "bounce"):
            k = s[kind]
            if k["starts"]:
                dist = "-" if k["distance_px_median"] is None else f"{k['distance_px_median']:.1f} px"
                print(f"{kind:6s} {k['starts']:4d} starts: ball seen after one step {k['ball_seen']:.3f}, "
                      f"{dist} from the real one, >1 blob {k['more_than_one_blob']:.3f}, peak brightness "
                      f"{k['peak_median']:.2f} (real {k['peak_real_median']:.2f})")
        if out is not None:
            write_json(Path(out), result)
            print(f"saved {out}")
    except (ReverieError, OSError, ValueError) as e:
        print(f"ball_one_step: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
