"""A game-independent drift measure for `reverie eval`: the Fréchet distance between Gaussians fitted to autoencoder
latents of dream frames and of real held-out frames (the FID recipe of Heusel et al. 2017, with the model's own
encoder in place of an Inception network, which cannot be downloaded here).

    FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)

The samples are latent cells: every position of the encoder's grid is one C-dim sample (16 dims; 64 cells a frame
for the tiny preset), so the distance compares what local content appears, wherever it is. The whole flattened latent
of a frame (C*h*w = 1024 dims) was tried first and is blind to what matters here: in the shipped model's dreams of
builtin:gems (8 rollouts of 400 frames, 2026-12-01) the gems probe fell from 100% visible to 63%, 28% and 13% over
the buckets 1-16, 17-100, 101-250, 251-400, while the flattened FD stayed at or under its real-vs-real floor (112, 72,
71, 75 against 101, 76, 76, 76: the layout of a frame varies far more between episodes than one 4x4 gem weighs), and
it had fewer samples than dims (a rank-deficient covariance) in every bucket. The cell FD of the same kind of run
(1000 frames) rose 0.041, 0.188, 0.316, 0.444, 0.414 over the five buckets against floors of 0.015-0.016, and the
real frames of the same buckets scored 0.014-0.026; with 64 samples a frame for 16 dims its covariance is full rank
even for a bucket of a few frames.

Square roots are symmetric ones from torch.linalg.eigh in float64, tiny negative eigenvalues clamped to zero. Each
set is cut to at most FD_FRAMES evenly spaced frames, the real reference is one fixed set (half A of the held-out
frames), and every distance comes with its floor at the same number of frames, since the estimate is biased upwards
the fewer samples it sees: real frames of the other half (B; disjoint episodes where there are two or more) against
half A.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.autoencoder import Autoencoder, frames_to_tensor
from train.evaluation.long_play import evenly_spaced

FD_FRAMES = 512          # at most this many frames a side of a distance (the encoder costs ~8 ms a frame on a CPU)
ENCODE_CHUNK = 256       # frames through the encoder at a time


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of a module's parameters (float32 for one without any)."""
    return next((p.dtype for p in module.parameters()), torch.float32)


@torch.no_grad()
def encode_latents(ae: Autoencoder, frames: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> the encoder's latent cells (N, h*w, C) float64 on the CPU."""
    dtype, out = module_dtype(ae.encoder), []
    for j in range(0, len(frames), ENCODE_CHUNK):
        x = frames_to_tensor(torch.from_numpy(np.ascontiguousarray(frames[j:j + ENCODE_CHUNK])).to(device))
        z = ae.encode(x.to(dtype))                                              # (n, C, h, w)
        out.append(z.flatten(2).transpose(1, 2).double().cpu())                 # (n, h*w, C)
    return torch.cat(out)


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative rounding clamped)."""
    lam, vec = torch.linalg.eigh(s)
    return (vec * lam.clamp(min=0).sqrt()) @ vec.T


@dataclass
class Gaussian:
    mean: torch.Tensor      # (D,)
    cov: torch.Tensor       # (D, D)

    @classmethod
    def fit(cls, x: torch.Tensor) -> Gaussian:
        """Mean and (unbiased) covariance of samples x (N, D), N >= 2."""
        return cls(x.mean(0), torch.cov(x.T))


class FrechetReference:
    """A fixed real reference (half A of the held-out frames) and the frames that measure the floor (half B), as
    samples (N, P, C): N frames of P samples (latent cells) of C dims each."""

    def __init__(self, half_a: torch.Tensor, half_b: torch.Tensor):
        if min(len(half_a), len(half_b)) < 1:
            raise ValueError("a Fréchet distance needs at least 1 frame a side")
        self.ref = Gaussian.fit(half_a.flatten(0, 1))
        self.ref_sqrt = _sqrt_psd(self.ref.cov)          # S_A^1/2, once for every distance to A
        self.half_b = half_b

    def distance(self, x: torch.Tensor) -> float | None:
        """FD between samples x (N, P, C) and the reference; None for fewer than 2 samples."""
        x = x.flatten(0, 1)                                                     # (N*P, C)
        if len(x) < 2:
            return None
        g = Gaussian.fit(x)
        m = self.ref_sqrt @ g.cov @ self.ref_sqrt
        cross = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()      # Tr (S_A^1/2 S S_A^1/2)^1/2
        fd = ((g.mean - self.ref.mean) ** 2).sum() + g.cov.trace() + self.ref.cov.trace() - 2 * cross
        return max(0.0, float(fd))

    def floor(self, n: int | None = None) -> float | None:
        """Real-vs-real FD: up to n evenly spaced frames of half B against half A (all of half B with no n)."""
        b = self.half_b if n is None else self.half_b[evenly_spaced(len(self.half_b), n)]
        return self.distance(b)


def split_halves(episodes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of held-out frames: alternate episodes (frames of one episode are alike), or the first and
    second half of the only episode; each cut to FD_FRAMES evenly spaced frames."""
    if len(episodes) >= 2:
        a, b = np.concatenate(episodes[0::2]), np.concatenate(episodes[1::2])
    else:
        a, b = np.array_split(episodes[0], 2)
    return a[evenly_spaced(len(a), FD_FRAMES)], b[evenly_spaced(len(b), FD_FRAMES)]


def bucket_distances(ref: FrechetReference, ae: Autoencoder, dream: np.ndarray, slices: list[slice],
                     device: torch.device | str) -> list[dict[str, float | None]]:
    """Per bucket of horizon steps: {"fd": dream frames vs the reference, "fd_floor": real vs real at as many frames}.
    dream: (R, H, h, w, 3) uint8."""
    out = []
    for sl in slices:
        frames = dream[:, sl].reshape(-1, *dream.shape[2:])                      # (R * len, h, w, 3)
        pick = frames[evenly_spaced(len(frames), FD_FRAMES)]
        out.append({"fd": ref.distance(encode_latents(ae, pick, device)), "fd_floor": ref.floor(len(pick))})
    return out
