"""Autoguidance: does guiding a model away from a weaker one keep what the player looks at (avatar, ball)?

    python benchmarks/autoguidance.py --data HELDOUT --bad WEAKER.safetensors [--model CKPT] [--weights 0,0.5,1]
        [--object avatar] [--steps 1] [--guidance 1.75] [--horizon 600] [--json OUT]

Guidance on the action buys the avatar's presence with speed (README, "Long play"). Autoguidance (Karras et al.
2024, "Guiding a diffusion model with a bad version of itself") guides with a weaker model of the same kind instead,
both conditioned on the same action, so what it amplifies is the difference in quality, not the action's effect:
x = x_good + w (x_good - x_bad). The two models each sample the next latent from the same noise (each with its own
action guidance); at one sampling step the combined latent is exactly the combined velocity's sample, at more steps
it combines the two samples (output space). The combination is appended to both models' context and the good
model's decoder draws it. The bad model runs a second backbone and head per frame.

On the held-out episodes of a game with object probes (builtin:gems, ale:Breakout; 8 real frames, then `--horizon`
dreamed ones under the recorded actions, the last action held past an episode's end), it reports per weight the
share of frames each probe is visible, `--object` per time bucket, and how often the dream shows more of `--object`
than the real game.
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
from train.games.probes import AVATAR, probes_for

CONTEXT = 8
BUCKETS = ((1, 16), (17, 100), (101, 250), (251, 500), (501, 1000), (1001, 2000))


def dream(good: Session, bad: Session | None, weight: float, src: EpisodeSource, horizon: int, obj: str) -> dict:
    """Per probe, visible (H, E) in the dream and in the real episodes, and `obj`'s blob counts."""
    probes = probes_for(src.spec.game)
    E = len(src.lengths)
    frames = [src.episode_frames(e) for e in range(E)]
    ctx = np.stack([f[:CONTEXT] for f in frames])
    acts = np.stack([src.actions[e][:CONTEXT] for e in range(E)])
    for s in (good, bad):
        if s is not None:
            s.reset(ctx, acts, seed=list(range(E)))
    names = tuple(probes)
    seen = {n: [] for n in names}
    real = {n: [] for n in names}
    blobs, real_blobs = [], []
    with torch.no_grad():
        for t in range(CONTEXT, CONTEXT + horizon):
            a = torch.from_numpy(np.stack([src.actions[e][min(t, len(src.actions[e]) - 1)] for e in range(E)]))
            good.action_buf.copy_(a)
            good._head(good.steps, good.guidance != 1.0)
            if bad is not None:
                bad.action_buf.copy_(a)
                bad._head(bad.steps, bad.guidance != 1.0)
                z = good.z_buf + weight * (good.z_buf - bad.z_buf)
                good.z_buf.copy_(z)
                bad.z_buf.copy_(z)
                bad._backbone(bad.z_buf, bad.action_buf)
            good._decode()
            good._backbone(good.z_buf, good.action_buf)
            out = good.frame_buf.numpy()
            ref = np.stack([frames[e][min(t, len(frames[e]) - 1)] for e in range(E)])
            for n in names:
                seen[n].append(probes[n].visible(out))
                real[n].append(probes[n].visible(ref))
            blobs.append(probes[obj].blobs(out))
            real_blobs.append(probes[obj].blobs(ref))
    return {"seen": {n: np.array(v) for n, v in seen.items()}, "real": {n: np.array(v) for n, v in real.items()},
            "blobs": np.array(blobs), "real_blobs": np.array(real_blobs)}


def summarise(r: dict, horizon: int, obj: str) -> dict:
    av = r["seen"][obj]
    buckets = [(a, min(b, horizon)) for a, b in BUCKETS if a <= horizon]
    return {"visible_dream": {n: float(v.mean()) for n, v in r["seen"].items()},
            "visible_real": {n: float(v.mean()) for n, v in r["real"].items()},
            "object_buckets": [{"frames": f"{a}-{b}", "visible_dream": float(av[a - 1:b].mean())} for a, b in buckets],
            "more_than_real": float((r["blobs"] > r["real_blobs"]).mean())}


def weights_arg(text: str) -> list[float]:
    try:
        ws = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes numbers separated by commas, got {text!r}") from None
    if not ws or any(not 0.0 <= w <= 4.0 for w in ws):
        raise argparse.ArgumentTypeError(f"weights must be in 0..4, got {text!r}")
    return ws


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="held-out episodes of a game with object probes")
    p.add_argument("--model", default=None, help="the model to play (default: the shipped one)")
    p.add_argument("--bad", required=True, help="a weaker checkpoint of the same architecture and autoencoder")
    p.add_argument("--weights", type=weights_arg, default=[0.0, 0.5, 1.0],
                   help="autoguidance weights w, comma-separated (0: the model alone; default 0,0.5,1)")
    p.add_argument("--object", default=None,
                   help="the probe counted per bucket and for extra copies (default: avatar where the game has one, "
                        "else ball)")
    p.add_argument("--steps", type=int, choices=(1, 2, 3, 4), default=1, help="sampling steps of both (default 1)")
    p.add_argument("--guidance", type=arg_type(check_guidance, "--guidance"), default=1.75,
                   help="action guidance of both models (default 1.75, the gems model's shipped setting)")
    p.add_argument("--horizon", type=int, default=600, help="dreamed frames per episode (default 600)")
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=1)
    p.add_argument("--json", default=None, help="where to save the results")
    args = p.parse_args(argv)
    try:
        if args.horizon < 1:
            raise ReverieError(f"--horizon must be >= 1, got {args.horizon}")
        out = prepare_output(args.json) if args.json else None
        torch.set_num_threads(args.threads)
        src = EpisodeSource(args.data)
        probes = probes_for(src.spec.game)
        if not probes:
            raise ReverieError(f"--data {args.data}: {src.spec.game!r} declares no object probes; this measure needs "
                               "a game that does (builtin:gems, ale:Breakout)")
        obj = args.object or (AVATAR if AVATAR in probes else "ball")
        if obj not in probes:
            raise ReverieError(f"--object {obj}: {src.spec.game} has the probes {', '.join(probes)}")
        if min(src.lengths) <= CONTEXT:
            raise ReverieError(f"--data {args.data}: every episode needs more than {CONTEXT} frames")
        kw = dict(batch=len(src.lengths), steps=args.steps, guidance=args.guidance, threads=args.threads,
                  cuda_graph=False, backend="torch")
        good = Session(args.model, **kw)
        bad = Session(args.bad, **kw)
        if (good.cfg.tokens_per_frame, good.cfg.token_dim) != (bad.cfg.tokens_per_frame, bad.cfg.token_dim):
            raise ReverieError(f"--bad {args.bad}: its tokens do not match the model's; it must be the same "
                               "architecture")
        result = {"model": str(args.model or "shipped"), "bad": str(args.bad), "data": str(args.data),
                  "object": obj, "steps": args.steps, "guidance": args.guidance, "horizon": args.horizon,
                  "episodes": len(src.lengths), "runs": []}
        for w in args.weights:
            r = summarise(dream(good, bad if w else None, w, src, args.horizon, obj), args.horizon, obj)
            result["runs"].append({"weight": w, **r})
            v = r["visible_dream"]
            print(f"w {w:4.2f}: {obj} {v[obj]:.3f} (" + " ".join(f"{b['visible_dream']:.2f}"
                  for b in r["object_buckets"]) + f"), more than real {r['more_than_real']:.1%}; "
                  + ", ".join(f"{n} {x:.3f}" for n, x in v.items() if n != obj))
        if out is not None:
            write_json(Path(out), result)
            print(f"saved {out}")
    except (ReverieError, OSError, ValueError) as e:
        print(f"autoguidance: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
