"""How the reward model reads the dream (docs/research/agents-in-dream.md, "Why the dream does not teach").

    python3 experiments/dream_reward_probes.py --heldout data/gems-held [--reward REWARD.safetensors]

1. Teacher-forced one step: prime the dream with 8 real frames of held-out play, step it once with the real action, and
   score the reward model's reading of that dream frame against the real reward (half the windows end just before a
   real gem): precision and recall.
2. Eight free steps from real windows: rewards per 100 steps, by step, in the recorded play, and as the reward model
   reads the dream under the recorded actions and under random actions.
"""

from __future__ import annotations

import argparse
import glob
import json

import numpy as np
import torch

from engine.reward_model import RewardFunction
from engine.session import Session
from train.data.episodes import Episode
from train.training.reward import redrawer

B, T, H = 32, 8, 8


def windows(eps: list, rng: np.random.Generator, before_reward: bool, horizon: int):
    """B windows of T frames (and the actions that led to them), the next `horizon` actions and rewards."""
    fr, ac, fut, rew = [], [], [], []
    for b in range(B):
        ep = eps[int(rng.integers(len(eps)))]
        rr = ep.rewards()
        hits = np.flatnonzero(rr != 0)
        hits = hits[(hits > T) & (hits < len(ep) - horizon - 2)]
        if before_reward and b % 2 == 0 and len(hits):
            s = int(rng.choice(hits))
        else:
            s = int(rng.integers(T + 1, len(ep) - horizon - 2))
        fr.append(ep.frames(s - T + 1, s + 1))
        ac.append(ep.actions(s - T, s))
        fut.append(ep.actions(s, s + horizon))
        rew.append(rr[s:s + horizon])
    return map(np.stack, (fr, ac, fut, rew))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--heldout", required=True)
    p.add_argument("--reward", default="engine/assets/default.reward.safetensors")
    p.add_argument("--model", default="default")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--context-noise", type=float, default=None, help="the dream's context noise (default: the model's)")
    args = p.parse_args()
    torch.set_num_threads(2)
    rf = RewardFunction.load(args.reward)
    redraw, _ = redrawer(args.model)
    eps = [Episode(f) for f in sorted(glob.glob(f"{args.heldout}/*.episode"))]
    sess = Session(args.model, batch=B, context_noise=args.context_noise)
    side = sess.frame_shape
    rng = np.random.default_rng(0)
    tp = fp = pos = 0
    for it in range(args.batches):
        fr, ac, fut, rew = windows(eps, rng, True, 1)
        sess.reset(fr, ac, seed=it)
        dream = np.asarray(sess.step(fut[:, 0].astype(np.float32))).reshape(B, *side)
        r, _ = rf(redraw(torch.from_numpy(fr[:, -1])).numpy(), fut[:, 0].astype(np.float32), dream)
        p_, t_ = r != 0, rew[:, 0] != 0
        tp, fp, pos = tp + (p_ & t_).sum(), fp + (p_ & ~t_).sum(), pos + t_.sum()
    one_step = {"positives": int(pos), "predicted": int(tp + fp), "precision": float(tp / max(tp + fp, 1)),
                "recall": float(tp / max(pos, 1))}
    rng = np.random.default_rng(1)
    real, n = np.zeros(H), 0
    dream = {"recorded actions": np.zeros(H), "random actions": np.zeros(H)}
    for it in range(args.batches):
        fr, ac, fut, rew = windows(eps, rng, False, H)
        real += (rew != 0).sum(0)
        for name in dream:
            sess.reset(fr, ac, seed=it)
            prev = fr[:, -1]
            for t in range(H):
                a = fut[:, t].astype(np.float32) if name == "recorded actions" else \
                    (rng.random((B, fut.shape[-1])) < 0.5).astype(np.float32)
                d = np.asarray(sess.step(a)).reshape(B, *side).copy()
                r, _ = rf(prev, a, d)
                dream[name][t] += (r != 0).sum()
                prev = d
        n += B
    out = {"teacher_forced_one_step": one_step, "per_100_by_step": {"real": (100 * real / n).round(1).tolist(),
           **{k: (100 * v / n).round(1).tolist() for k, v in dream.items()}}, "windows": n}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
