"""History guidance on builtin:gems: does guiding against a weaker history keep the avatar in long dreams?

    python benchmarks/history_guidance.py --data HELDOUT [--model CKPT] [--horizon 500] \
        --run 1.75,0 --run 1.75,1,noise:0.5 --run 1.75,1,short:2 [--json OUT]

Each --run is `guidance,weight[,weak]`. The head's velocity is

    v = v(a | H) + (guidance - 1) (v(a | H) - v(null | H)) + weight (v(a | H) - v(a | H_weak))

where H is the world's history and H_weak a weaker one: `noise:L`, the same frames entering the backbone at
context-noise level L instead of the run-time 0.05 (in the training range, 0..0.6); `short:k`, only the last k frames
attended (Song et al. 2025, "History-guided video diffusion", guide with full against partial history). Weight 0 is
the shipped sampling. The weak history is a second copy of every world in the same session (batch 2B) fed the same
generated latents, so it costs a second backbone pass and a third head pass per frame; it runs on the torch backend.

For each run: 1-step dreams from 8 real context frames on the first 8 held-out episodes long enough for the horizon,
under their recorded actions; per probe (avatar, gems, enemies, score) the share of frames where it is visible per
time bucket, its area against the real game's and the share of frames with two or more of it; PSNR per bucket; and
control as in benchmarks/control_starts.py (8 starts, each direction held 12 frames: the dream's move over the real
one where the real avatar moved freely, and holds that lost the avatar).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine.errors import ReverieError
from engine.knobs import arg_type, check_threads
from engine.kv_cache import NEG_INF, RingKVCache
from engine.output import check_count, prepare_output, write_json
from engine.session import Session
from train.data.windows import EpisodeSource
from train.evaluation.control import DIRECTIONS, control_frames, displacement
from train.evaluation.objects import real_moves
from train.games.probes import AVATAR, probes_for

ENV_ID = "builtin:gems"
CONTEXT, WORLDS = 8, 8
STARTS, FIRST, STRIDE, FREE_MOVE = 8, 100, 37, 23.0   # as benchmarks/control_starts.py
BUCKETS = ((0, 16), (16, 100), (100, 250), (250, 500), (500, 1000), (1000, 2000), (2000, 4000))
WEAK_SEED = 777   # the weak copy of world b draws its context noise from seed b + WEAK_SEED


class RecentRing(RingKVCache):
    """The session's ring, with worlds `first`.. attending only the last `frames_seen` frames (the new one included)."""

    def __init__(self, ring: RingKVCache, first: int, frames_seen: int):
        self.__dict__.update(ring.__dict__)
        self.first, self.frames_seen = first, frames_seen

    def mask(self, with_next: bool, full: bool | None = None) -> torch.Tensor:
        """RingKVCache.mask for the in-place (torch) backbone, never None: the copies are masked with a full ring."""
        slots = torch.arange(self.frames, device=self.valid.device)
        keep = self.valid | (slots == self.slot())                                    # (B, W)
        keep[self.first:] &= (self.slot() - slots).remainder(self.frames) < self.frames_seen
        keep = keep.repeat_interleave(self.tokens, dim=1)
        return torch.zeros(keep.shape, device=keep.device).masked_fill(~keep, NEG_INF)[:, None, None]


class HistoryGuidedSession(Session):
    """B worlds, each with a weak-history copy (worlds B..2B-1 of a batch-2B session); see the module docstring."""

    def __init__(self, model: str | None, worlds: int, guidance: float, weight: float, weak: tuple[str, float],
                 threads: int = 1):
        # the PyTorch modules read the ring's mask (the fused Triton step reads slot validity instead)
        super().__init__(model, backend="torch", batch=2 * worlds, steps=1, guidance=guidance, threads=threads,
                         cuda_graph=False, kernels="reference")
        self.worlds, self.weight, (self.weak_kind, self.weak_value) = worlds, weight, weak
        if self.weak_kind == "short":
            self.kv = RecentRing(self.kv, worlds, int(self.weak_value))
        self._weak_level()

    def _weak_level(self) -> None:
        if self.weak_kind == "noise":
            self.level_buf[self.worlds:] = self.weak_value

    def reset(self, frames, actions=None, seed=None):  # noqa: D102 - Session.reset for B worlds and their copies
        seeds = list(seed) + [s + WEAK_SEED for s in seed]
        out = super().reset(np.concatenate([frames, frames]), np.concatenate([actions, actions]), seed=seeds)
        self._weak_level()
        return out[:self.worlds]

    def step(self, action, defer_update=False):  # noqa: D102 - Session.step; the copies take the same action
        a = np.broadcast_to(np.asarray(action, np.float32), (self.worlds, self.spec.size))
        return super().step(np.concatenate([a, a]), defer_update)[:self.worlds]

    def _head(self, steps, cfg_on):
        c, B, wm, g = self.cfg, self.worlds, self.wm, float(self.guidance)
        x = self.runner.noise(self.seed[:B], self.counter[:B], (c.tokens_per_frame, c.token_dim), 0)
        h, a = self.h_last[:B], self.action_buf[:B]
        branches = [(h, False)] + [(h, True)] * (g != 1.0) + [(self.h_last[B:], False)] * (self.weight != 0)
        hh, n = torch.cat([b[0] for b in branches]), len(branches)
        drop = torch.cat([torch.full((B,), b[1]) for b in branches])
        for tau, level, d in self._schedule[steps]:
            M = hh.shape[0]
            v = wm.velocity(torch.cat([x] * n), hh, tau.expand(M), level.expand(M), torch.cat([a] * n), drop).float()
            out = v[:B].clone()
            if g != 1.0:
                out += (g - 1.0) * (v[:B] - v[B:2 * B])
            if self.weight != 0:
                out += self.weight * (v[:B] - v[(n - 1) * B:])
            x = x + d * out
        z = wm.denormalize(wm.unpatchify(x))
        self.z_buf[:B] = z
        self.z_buf[B:] = z


def parse_run(text: str) -> tuple[float, float, tuple[str, float]]:
    parts = text.split(",")
    try:
        g, w = float(parts[0]), float(parts[1])
        kind, _, value = (parts[2] if len(parts) > 2 else "noise:0.5").partition(":")
        weak = (kind, float(value))
    except (IndexError, ValueError):
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected guidance,weight[,noise:L|short:k]") from None
    if kind not in ("noise", "short") or len(parts) > 3 or not (g > 0 and np.isfinite(w)):
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected guidance > 0, a weight, noise:L or short:k")
    return g, w, weak


def dream_report(sess: HistoryGuidedSession, frames: np.ndarray, actions: np.ndarray, horizon: int) -> dict:
    sess.reset(frames[:, :CONTEXT], actions[:, :CONTEXT], seed=list(range(len(frames))))
    dream = np.stack([sess.step(actions[:, CONTEXT + t]) for t in range(horizon)])   # (H, B, h, w, 3)
    real = frames[:, CONTEXT:].swapaxes(0, 1)
    buckets = [(a, min(b, horizon)) for a, b in BUCKETS if a < horizon]
    out: dict = {"buckets": [[a + 1, b] for a, b in buckets]}
    for name, probe in probes_for(ENV_ID).items():
        seen = probe.visible(dream)
        out[name] = {"visible_dream": float(seen.mean()), "visible_real": float(probe.visible(real).mean()),
                     "visible_dream_buckets": [float(seen[a:b].mean()) for a, b in buckets],
                     "area_ratio": float(probe.count(dream).mean() / max(probe.count(real).mean(), 1e-9)),
                     "two_or_more": float((probe.blobs(dream) >= 2).mean())}
    mse = ((dream.astype(np.float64) - real) ** 2).mean(axis=(2, 3, 4))
    out["psnr_buckets"] = [float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse[a:b], 1e-10)))) for a, b in buckets]
    return out


def control_report(sess: HistoryGuidedSession, frames: np.ndarray, actions: np.ndarray,
                   real: dict[str, list[float | None]]) -> dict:
    probe, n = probes_for(ENV_ID)[AVATAR], control_frames(ENV_ID)
    ratios, lost, moves = [], 0, {}
    for d, vec in DIRECTIONS.items():
        first = sess.reset(frames, actions, seed=list(range(len(frames))))
        held = sess.spec.encode([d])
        m = displacement(np.stack([first] + [sess.step(held) for _ in range(n)]), probe, vec)
        moves[d] = [float(x) if np.isfinite(x) else None for x in m]
        lost += int((~np.isfinite(m)).sum())
        ratios += [x / r for x, r in zip(m, real[d]) if np.isfinite(x) and r is not None and r >= FREE_MOVE]
    return {"speed_in_the_open": float(np.mean(ratios)) if ratios else None, "avatar_lost": lost,
            "holds": STARTS * len(DIRECTIONS), "dream_px": moves}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="held-out builtin:gems episodes (8 at least horizon + 8 frames long)")
    p.add_argument("--model", default=None, help="world-model checkpoint (default: the shipped model)")
    p.add_argument("--horizon", type=arg_type(check_count(1), "--horizon", int), default=500)
    p.add_argument("--run", type=parse_run, action="append", required=True, help="guidance,weight[,noise:L|short:k]")
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=2)
    p.add_argument("--no-control", action="store_true", help="skip the control measure")
    p.add_argument("--json", default=None, help="where to save the results")
    args = p.parse_args(argv)
    try:
        out = prepare_output(args.json) if args.json else None
        torch.set_num_threads(args.threads)
        src = EpisodeSource(args.data)
        if src.spec.game != ENV_ID:
            raise ReverieError(f"--data {args.data}: {src.spec.game!r} episodes; this measure needs {ENV_ID}")
        eps = [e for e in range(len(src.lengths)) if src.lengths[e] >= CONTEXT + args.horizon][:WORLDS]
        if len(eps) < WORLDS:
            raise ReverieError(f"--data {args.data}: needs {WORLDS} episodes of at least {CONTEXT + args.horizon} "
                               f"frames, has {len(eps)}")
        frames = np.stack([src.episode_frames(e)[:CONTEXT + args.horizon] for e in eps])
        actions = np.stack([src.actions[e][:CONTEXT + args.horizon] for e in eps])
        starts = [(e, FIRST + STRIDE * e) for e in range(STARTS)]
        real = None
        if not args.no_control:
            real = real_moves(src, starts, CONTEXT, probes_for(ENV_ID)[AVATAR], control_frames(ENV_ID),
                              list(DIRECTIONS))
            c_frames = np.stack([src.episode_frames(e)[s:s + CONTEXT] for e, s in starts])
            c_actions = np.stack([src.actions[e][s:s + CONTEXT] for e, s in starts])
        runs = []
        for g, w, weak in args.run:
            t0 = time.time()
            sess = HistoryGuidedSession(args.model, WORLDS, g, w, weak, args.threads)
            r = {"guidance": g, "weight": w, "weak": f"{weak[0]}:{weak[1]:g}",
                 **dream_report(sess, frames, actions, args.horizon)}
            if real is not None:
                r["control"] = control_report(HistoryGuidedSession(args.model, STARTS, g, w, weak, args.threads),
                                              c_frames, c_actions, real)
            r["seconds"] = time.time() - t0
            runs.append(r)
            ctl = r.get("control", {})
            print(f"guidance {g} weight {w} {r['weak']}: " + "  ".join(
                f"{k} {r[k]['visible_dream']:.2f} (area {r[k]['area_ratio']:.2f}, 2+ {r[k]['two_or_more']:.2f})"
                for k in ("avatar", "gems", "enemies", "score")) +
                f"  psnr {' '.join(f'{x:.1f}' for x in r['psnr_buckets'])}"
                + (f"  control {ctl['speed_in_the_open']:.2f}x, lost {ctl['avatar_lost']}/{ctl['holds']}"
                   if ctl else ""), flush=True)
        if out is not None:
            write_json(Path(out), {"model": str(args.model or "shipped"), "data": str(args.data),
                                   "horizon": args.horizon, "episodes": eps, "real_px": real, "runs": runs})
            print(f"saved {out}")
    except (ReverieError, OSError, ValueError) as e:
        print(f"history_guidance: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
