"""Counter-based Gaussian noise in one kernel: the draw of `engine.noise.counter_normal`, its reference.

The reference stays in engine/noise.py (the session, the onnxruntime runner's numpy twin and save-games use it with
no kernels at all; kernels/ imports nothing from engine/); tests/test_kernels.py holds the two side by side.

Reference: about 110 tiny integer kernels per draw in eager PyTorch, twice a frame. Here one program per (world,
block of elements) hashes (seed, counter, stream, element) with the same 32-bit mix (Wellons' lowbias32, in int64
with 32-bit masks exactly as the reference writes it), so every uniform is the reference's bit for bit, and turns
two uniforms into a normal by Box-Muller. On CUDA the logarithm and cosine are libdevice's logf and cosf and the
square root is correctly rounded (sqrt_rn): the functions torch's own CUDA kernels call, so the draw matches the
reference on the same GPU bit for bit. The interpreter (CPU tests) uses numpy's float32 log and cos, which differ
from torch's CPU ones in the last bit of some elements: there the uniforms are compared bit for bit and the
normals to a few float32 ulps.
"""

from __future__ import annotations

import math

import torch

from kernels._triton import HAVE_TRITON, block, device_ok, tl, triton

__all__ = ["counter_normal", "counter_uniform"]

MASK32 = 0xFFFFFFFF
STREAM_SALT = 0x9E3779B9     # the reference's per-stream key
ELEMENT_SALT = 0x632BE5AB    # the reference's per-element step
TWO_PI = 2.0 * math.pi
BLOCK = 1024                 # elements per program

if HAVE_TRITON:
    from triton.language.extra import libdevice

    @triton.jit
    def _mix32(x):
        """lowbias32 on int64 values in [0, 2^32) (the product may wrap int64: its low 32 bits are what is kept)."""
        x = x ^ (x >> 16)
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x = x ^ (x >> 15)
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    @triton.jit
    def _uniform(seed, counter, salt, elem):
        """Uniforms in (0, 1) of one world's (seed, counter) and a stream's salt, for elements `elem` (int64)."""
        key = _mix32((seed & 0xFFFFFFFF) ^ salt)
        ctr = _mix32((key ^ (counter & 0xFFFFFFFF)) & 0xFFFFFFFF)
        h = _mix32((ctr + elem * 0x632BE5AB) & 0xFFFFFFFF)
        h = _mix32(h ^ key)
        return ((h >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)

    @triton.jit
    def _noise_kernel(seed_ptr, counter_ptr, out_ptr, numel, salt1, salt2, TWO_PI_F: tl.constexpr,
                      NORMAL: tl.constexpr, PRECISE: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        elem = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)   # (BLOCK,)
        keep = elem < numel
        seed = tl.load(seed_ptr + b).to(tl.int64)
        counter = tl.load(counter_ptr + b).to(tl.int64)
        u1 = _uniform(seed, counter, salt1, elem)
        if NORMAL:
            u2 = _uniform(seed, counter, salt2, elem)
            if PRECISE:   # libdevice logf/cosf: what torch's CUDA kernels compute
                z = tl.sqrt_rn(-2.0 * libdevice.log(u1)) * libdevice.cos(TWO_PI_F * u2)
            else:         # the interpreter (numpy float32)
                z = tl.sqrt_rn(-2.0 * tl.log(u1)) * tl.cos(TWO_PI_F * u2)
        else:
            z = u1
        tl.store(out_ptr + b.to(tl.int64) * numel + elem, z, mask=keep)


def _draw(seed: torch.Tensor, counter: torch.Tensor, shape: tuple[int, ...], stream: int,
          normal: bool) -> torch.Tensor:
    why = device_ok(seed, counter)
    if why is not None:
        raise RuntimeError(f"kernels.noise: {why}")
    if seed.shape != counter.shape or seed.ndim != 1:
        raise ValueError(f"seed and counter must both be (B,), got {tuple(seed.shape)} and {tuple(counter.shape)}")
    numel = math.prod(shape)
    B = seed.shape[0]
    out = torch.empty(B, numel, dtype=torch.float32, device=seed.device)
    if B and numel:
        stream_index = 2 * stream if normal else stream
        salt1 = (stream_index * STREAM_SALT) & MASK32
        salt2 = ((stream_index + 1) * STREAM_SALT) & MASK32
        size = min(BLOCK, block(numel))
        grid = (B, triton.cdiv(numel, size))
        _noise_kernel[grid](seed.contiguous(), counter.contiguous(), out, numel, salt1, salt2,
                            TWO_PI_F=TWO_PI, NORMAL=normal, PRECISE=seed.device.type == "cuda", BLOCK=size)
    return out.reshape(B, *shape)


def counter_normal(seed: torch.Tensor, counter: torch.Tensor, shape: tuple[int, ...], stream: int = 0) -> torch.Tensor:
    """Standard normal noise (B, *shape) float32, the reference's draw: seed (B,) and counter (B,) integer tensors."""
    return _draw(seed, counter, tuple(shape), stream, normal=True)


def counter_uniform(seed: torch.Tensor, counter: torch.Tensor, numel: int, stream: int) -> torch.Tensor:
    """The uniforms (B, numel) in (0, 1) behind the draw of `stream` (the reference's `_uniform`; tests compare
    them bit for bit)."""
    return _draw(seed, counter, (numel,), stream, normal=False)
