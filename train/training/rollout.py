"""Rollouts of a world model against recorded episodes: the shared core of training samples and `reverie eval`.

A rollout primes a Session with `context` real frames of an episode, then steps it with the episode's recorded
actions for `horizon` frames, returning generated and real frames side by side.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from engine.actions import ActionSpec
from engine.autoencoder import Autoencoder
from engine.session import Session
from engine.world_model import WorldModel
from train.data.windows import EpisodeSource


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB over the last three axes of uint8 images (..., H, W, 3)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1)) / 255.0**2
    return -10.0 * np.log10(np.maximum(mse, 1e-10))


def rollout(session: Session, frames: np.ndarray, actions: np.ndarray, context: int,
            horizon: int, seeds: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Batched rollout: frames (B, T, H, W, 3), actions (B, T, A) (led-to convention), T >= context + horizon.

    Returns generated and real frames, each (B, horizon, H, W, 3).
    """
    session.reset(frames[:, :context], actions[:, :context], seed=seeds)
    gen = []
    for t in range(context, context + horizon):
        out = session.step(actions[:, t])
        gen.append(out if out.ndim == 4 else out[None])
    return np.stack(gen, axis=1), frames[:, context:context + horizon]


def session_from_training(ae: Autoencoder, wm: WorldModel, spec: ActionSpec, device: torch.device, batch: int,
                          steps: int = 2, guidance: float = 1.0, seed: int = 0) -> Session:
    """A Session over copies of models being trained (the session casts and freezes what it is given)."""
    return Session(models=(copy.deepcopy(ae), copy.deepcopy(wm), spec), device=device, batch=batch,
                   steps=steps, guidance=guidance, seed=seed, cuda_graph=False, dtype="fp32")


def write_samples(folder: Path, step: int, ae: Autoencoder, wm: WorldModel, src: EpisodeSource,
                  device: torch.device, seed: int = 0, n: int = 4, horizon: int = 16) -> dict[str, float]:
    """Roll out `n` windows of the training data, save a PNG grid (real row over generated row) and a GIF."""
    from train.pictures.images import grid, save_gif, save_png

    context = max(1, wm.cfg.context_frames // 2)
    need = context + horizon
    if max(src.lengths) < need:
        return {}
    win = src.sample(torch.Generator().manual_seed(seed + 12345), n, need)
    sess = session_from_training(ae, wm, src.spec, device, batch=n, seed=seed)
    gen, real = rollout(sess, win.frames.numpy(), win.actions.numpy(), context, horizon)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rows += [real[i], gen[i]]
    save_png(folder / f"rollout_step{step:07d}.png", grid(rows), scale=2)
    side = np.concatenate([real, gen], axis=3)  # (n, horizon, H, 2W, 3)
    save_gif(folder / f"rollout_step{step:07d}.gif", list(np.concatenate(list(side), axis=1)), fps=10, scale=2)
    p = psnr(gen, real)  # (n, horizon)
    return {"sample_psnr_step1": float(p[:, 0].mean()), "sample_psnr_mean": float(p.mean())}
