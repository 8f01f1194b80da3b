"""One step from real context: is the avatar lost where an enemy is near it? (builtin:gems)

    python experiments/avatar_near_enemy.py --data HELDOUT [--model CKPT] [--reps 2] [--json OUT]

Long dreams lose the avatar mostly where an enemy comes near it (docs/research/avatar.md, "Where the avatar is
lost"), but a 1,000-frame eval of 8 dreams moves by about +-0.1 between runs, too noisy to rank fine-tunes that differ
by less.
This asks the same question one step at a time, teacher-forced: for every frame t of the held-out episodes where the
real avatar's centre is within 10 px of an enemy pixel ("near"), and for as many again drawn at random where no enemy
is within 16 px ("far"), a session is reset on the 8 real frames up to t and stepped once with the recorded action;
the avatar probe then counts the avatar's pixels in the predicted frame. Reported per group: the share of predicted
frames without an avatar (< 9 px, the probe's "visible"), the avatar's area over the real next frame's, and both
again without the steps where the real avatar is hit (it jumps to the spawn point, or starts to flash), which a
model may fairly blur. The steps without a hit are split once more by whether the avatar is flashing (the 32 frames
after a hit, when it turns white for 4 frames of every 8): a dream unsure of the blink's phase mixes the cyan and the
white into a pale blob that neither of the probe's colours matches. Each start is sampled `--reps` times with
different noise.
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
from train.games.builtin import PLAYER_FLASH
from train.games.probes import AVATAR, Probe, probes_for

ENV_ID = "builtin:gems"
CONTEXT = 8          # real frames each step starts from
NEAR, FAR = 10.0, 16.0   # px from the avatar's centre to the nearest enemy pixel
JUMP = 8.0           # px: a real avatar that moves further in one frame was hit and respawned
# the avatar's white while it flashes after a hit; in the play area only, or the HUD's white text matches every frame
FLASH = Probe("flash", (PLAYER_FLASH,), min_pixels=9, region=probes_for(ENV_ID)[AVATAR].region, tolerance=64)


def starts_by_distance(src: EpisodeSource, rng: np.random.Generator, far_per_near: float = 1.0,
                       max_near: int | None = None) -> dict[str, list[tuple[int, int, float, bool, bool]]]:
    """(episode, t, distance to the nearest enemy pixel, hit at t + 1, flashing) for the near starts and a random draw
    of far ones, from frames where the real avatar is visible. Flashing: the avatar is in its invulnerable spell after
    a hit, when it turns white for 4 frames of every 8 (white in one of the frames t - 7 .. t + 1)."""
    probes = probes_for(ENV_ID)
    avatar, enemies = probes[AVATAR], probes["enemies"]
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    near, far = [], []
    for e, n in enumerate(src.lengths):
        frames = src.episode_frames(e)
        if frames.shape[1:3] != (64, 64):
            raise ReverieError(f"episode {e}: frames of {frames.shape[1]}x{frames.shape[2]}; this measure reads "
                               "64x64 frames")
        centre, enemy = avatar.centroid(frames), enemies.mask(frames)
        flashing = FLASH.visible(frames)
        for t in range(CONTEXT - 1, n - 1):
            if np.isnan(centre[t]).any():
                continue
            d = np.hypot(xs - centre[t, 0], ys - centre[t, 1])[enemy[t]]
            dist = float(d.min()) if d.size else float("inf")
            jumped = np.isnan(centre[t + 1]).any() or float(np.hypot(*(centre[t + 1] - centre[t]))) > JUMP
            blinked = bool(flashing[max(t - 7, 0):t + 1].any())   # white within the last 8 frames
            spell = blinked or bool(flashing[t + 1])
            hit = bool(jumped or (flashing[t + 1] and not blinked))
            if dist <= NEAR:
                near.append((e, t, dist, hit, spell))
            elif dist > FAR:
                far.append((e, t, dist, hit, spell))
    if max_near is not None and len(near) > max_near:
        near = [near[i] for i in sorted(rng.choice(len(near), max_near, replace=False))]
    k = min(len(far), int(round(far_per_near * len(near))))
    far = [far[i] for i in sorted(rng.choice(len(far), k, replace=False))] if k else []
    return {"near": near, "far": far}


def one_step_counts(sess: Session, src: EpisodeSource, group: list, reps: int, batch: int) -> tuple[np.ndarray, ...]:
    """Avatar pixels in the predicted and in the real next frame of every start, `reps` times each, with the starts'
    hit and flashing flags."""
    avatar = probes_for(ENV_ID)[AVATAR]
    frames = {e: src.episode_frames(e) for e in {s[0] for s in group}}
    pred, real, hit, flash = [], [], [], []
    for r in range(reps):
        for i in range(0, len(group), batch):
            g = group[i:i + batch]
            pad = g + [g[-1]] * (batch - len(g))      # a short last batch runs full, its padding is dropped
            ctx = np.stack([frames[e][t - CONTEXT + 1:t + 1] for e, t, *_ in pad])
            act = np.stack([src.actions[e][t - CONTEXT + 1:t + 1] for e, t, *_ in pad])
            sess.reset(ctx, act, seed=[(r * len(group) + i + k) % 2**31 for k in range(batch)])
            out = sess.step(np.stack([src.actions[e][t + 1] for e, t, *_ in pad]))
            pred += list(avatar.count(out[:len(g)]))
            real += [int(avatar.count(frames[e][t + 1])) for e, t, *_ in g]
            hit += [h for *_, h, _ in g]
            flash += [f for *_, f in g]
    return np.array(pred), np.array(real), np.array(hit, bool), np.array(flash, bool)


def summarise(pred: np.ndarray, real: np.ndarray, hit: np.ndarray, flash: np.ndarray, min_pixels: int) -> dict:
    """Missing share and area ratio, over all steps, the steps without a hit, and those without a hit split by
    whether the avatar is flashing (a dream that mixes its cyan and white draws neither colour)."""
    def part(sel: np.ndarray) -> dict:
        if not sel.any():
            return {"samples": 0, "missing": None, "area_ratio": None}
        return {"samples": int(sel.sum()), "missing": float((pred[sel] < min_pixels).mean()),
                "area_ratio": float(pred[sel].mean() / max(real[sel].mean(), 1e-9))}
    return {"all": part(np.ones_like(hit)), "no_hit": part(~hit), "hit": part(hit), "hit_share": float(hit.mean()),
            "steady": part(~hit & ~flash), "flashing": part(~hit & flash), "flashing_share": float(flash.mean())}


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="held-out builtin:gems episodes (64x64)")
    p.add_argument("--model", default=None, help="world-model checkpoint (default: the shipped model)")
    p.add_argument("--steps", type=int, choices=(1, 2, 3, 4), default=None,
                   help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=arg_type(check_guidance, "--guidance"), default=None,
                   help="guidance scale (default: the model's)")
    p.add_argument("--reps", type=int, default=2, help="samples of each start, with different noise (default 2)")
    p.add_argument("--max-near", type=int, default=None, help="at most this many near starts (default: all)")
    p.add_argument("--batch", type=int, default=8, help="starts stepped at once (default 8)")
    p.add_argument("--seed", type=int, default=0, help="the draw of far starts")
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=1)
    p.add_argument("--json", default=None, help="where to save the results")
    args = p.parse_args(argv)
    try:
        if args.reps < 1 or args.batch < 1 or (args.max_near is not None and args.max_near < 1):
            raise ReverieError("--reps, --batch and --max-near must be >= 1")
        out = prepare_output(args.json) if args.json else None
        torch.set_num_threads(args.threads)
        src = EpisodeSource(args.data)
        if src.spec.game != ENV_ID:
            raise ReverieError(f"--data {args.data}: {src.spec.game!r} episodes; this measure needs {ENV_ID}")
        groups = starts_by_distance(src, np.random.default_rng(args.seed), max_near=args.max_near)
        if not groups["near"]:
            raise ReverieError(f"--data {args.data}: no frame has an enemy within {NEAR:g} px of the avatar; record "
                               "longer or more episodes")
        sess = Session(args.model, batch=args.batch, steps=args.steps, guidance=args.guidance, threads=args.threads,
                       cuda_graph=False)
        min_px = probes_for(ENV_ID)[AVATAR].min_pixels_at(64, 64)
        result = {"model": str(args.model or "shipped"), "data": str(args.data), "steps": sess.steps,
                  "guidance": sess.guidance, "reps": args.reps, "near_px": NEAR, "far_px": FAR}
        for name, group in groups.items():
            if not group:
                continue
            s = summarise(*one_step_counts(sess, src, group, args.reps, args.batch), min_px)
            result[name] = {"starts": len(group), **s}
            print(f"{name:4s} {len(group):4d} starts x {args.reps}: avatar missing after one step "
                  f"{s['all']['missing']:.3f} (without hits {s['no_hit']['missing']:.3f}), area "
                  f"{s['all']['area_ratio']:.2f} of the real one; real hits {s['hit_share']:.1%}; flashing "
                  f"{s['flashing_share']:.1%} of starts: missing {fmt(s['flashing']['missing'])} flashing, "
                  f"{fmt(s['steady']['missing'])} steady")
        if "far" in result and result["far"]["no_hit"]["missing"]:
            result["near_over_far"] = result["near"]["no_hit"]["missing"] / result["far"]["no_hit"]["missing"]
        if out is not None:
            write_json(Path(out), result)
            print(f"saved {out}")
    except (ReverieError, OSError, ValueError) as e:
        print(f"avatar_near_enemy: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
