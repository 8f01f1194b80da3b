"""Counter-based Gaussian noise: a pure function of (seed, counter, element), made of tensor ops only.

The runtime draws its noise from this instead of a stateful generator so that each world of a batch has its own
stream (its seed), a save-game is two integers per world, forks are new seeds, and the whole step stays
capturable as a CUDA graph (no host-side generator state). The hash is a 32-bit integer mix (Wellons'
"lowbias32") evaluated in int64 so that no operation leaves the 64-bit range; Box-Muller turns two uniforms
into a normal.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _uniform(seed: torch.Tensor, counter: torch.Tensor, stream: int, numel: int) -> torch.Tensor:
    """(B, numel) uniforms in (0, 1) from per-world seed (B,) and counter (B,)."""
    elem = torch.arange(numel, device=seed.device, dtype=torch.int64)
    key = _mix32((seed.to(torch.int64) & _MASK32) ^ ((stream * 0x9E3779B9) & _MASK32))  # (B,)
    ctr = _mix32((key ^ (counter.to(torch.int64) & _MASK32)) & _MASK32)                   # (B,)
    h = _mix32((ctr[:, None] + elem[None, :] * 0x632BE5AB) & _MASK32)                     # (B, numel)
    h = _mix32(h ^ key[:, None])
    return ((h >> 8).float() + 0.5) * (1.0 / 16777216.0)


def counter_normal(seed: torch.Tensor, counter: torch.Tensor, shape: tuple[int, ...],
                   stream: int = 0) -> torch.Tensor:
    """Standard normal noise (B, *shape), a deterministic function of (seed[b], counter[b], stream)."""
    numel = math.prod(shape)
    u1 = _uniform(seed, counter, 2 * stream, numel)
    u2 = _uniform(seed, counter, 2 * stream + 1, numel)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.reshape(seed.shape[0], *shape)


def _mix32_np(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(_MASK32)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & np.uint64(_MASK32)
    return x ^ (x >> np.uint64(16))


def _uniform_np(seed: np.ndarray, counter: np.ndarray, stream: int, numel: int) -> np.ndarray:
    m = np.uint64(_MASK32)
    elem = np.arange(numel, dtype=np.uint64)
    key = _mix32_np((seed.astype(np.uint64) & m) ^ np.uint64((stream * 0x9E3779B9) & _MASK32))
    ctr = _mix32_np((key ^ (counter.astype(np.uint64) & m)) & m)
    h = _mix32_np((ctr[:, None] + elem[None, :] * np.uint64(0x632BE5AB)) & m)
    h = _mix32_np(h ^ key[:, None])
    return ((h >> np.uint64(8)).astype(np.float32) + np.float32(0.5)) * np.float32(1.0 / 16777216.0)


def counter_normal_np(seed: np.ndarray, counter: np.ndarray, shape: tuple[int, ...], stream: int = 0) -> np.ndarray:
    """counter_normal in numpy (the CPU graph backends' host side: a few numpy calls instead of ~40 torch ops).

    The integer hash is the same bit for bit; the float math agrees with the torch version to float32 rounding.
    """
    numel = math.prod(shape)
    u1 = _uniform_np(seed, counter, 2 * stream, numel)
    u2 = _uniform_np(seed, counter, 2 * stream + 1, numel)
    z = np.sqrt(np.float32(-2.0) * np.log(u1)) * np.cos(np.float32(2.0 * math.pi) * u2)
    return z.astype(np.float32).reshape(seed.shape[0], *shape)
