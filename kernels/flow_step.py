"""The flow step: classifier-free guidance combine and Euler update in one pass over the frame's tokens.

After the head's velocity v for the conditioned and the null action (one batch of 2B, Ho & Salimans 2022), the
sampler takes `x + d * (v_null + guidance * (v_cond - v_null))` (an Euler step of the rectified flow); eager PyTorch
makes four kernels and three temporaries of it. Step size d and guidance are read from one-element device tensors,
so a captured CUDA graph replays with new values.
"""

from __future__ import annotations

import torch

from kernels._triton import HAVE_TRITON, device_ok, tl, triton

__all__ = ["flow_step", "reference"]

BLOCK = 1024


def reference(x: torch.Tensor, v: torch.Tensor, d: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, ...) and v (B, ...), or v (2B, ...) [conditioned; null] with guidance (1,) -> x + d * v in float32."""
    B = x.shape[0]
    v = v.float()
    if guidance is not None:
        v = v[B:] + guidance.float() * (v[:B] - v[B:])
    return x.float() + d.float() * v


if HAVE_TRITON:
    @triton.jit
    def _flow_step_kernel(x_ptr, v_ptr, d_ptr, g_ptr, out_ptr, numel, GUIDED: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        keep = offs < numel
        x = tl.load(x_ptr + offs, mask=keep, other=0.0).to(tl.float32)
        d = tl.load(d_ptr).to(tl.float32)
        if GUIDED:
            vc = tl.load(v_ptr + offs, mask=keep, other=0.0).to(tl.float32)
            vn = tl.load(v_ptr + numel + offs, mask=keep, other=0.0).to(tl.float32)
            v = vn + tl.load(g_ptr).to(tl.float32) * (vc - vn)
        else:
            v = tl.load(v_ptr + offs, mask=keep, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, x + d * v, mask=keep)


def flow_step(x: torch.Tensor, v: torch.Tensor, d: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel of `reference` (same arguments and result)."""
    why = device_ok(x, v, d, guidance)
    if why is not None:
        raise RuntimeError(f"kernels.flow_step: {why}")
    B = x.shape[0]
    want = (2 * B, *x.shape[1:]) if guidance is not None else tuple(x.shape)
    if tuple(v.shape) != want:
        raise ValueError(f"v must be {want} for x {tuple(x.shape)}" + (" with guidance" if guidance is not None
                                                                        else "") + f", got {tuple(v.shape)}")
    x, v = x.contiguous(), v.contiguous()
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if x.numel():
        _flow_step_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, v, d, guidance if guidance is not None else d, out,
                                                            x.numel(), GUIDED=guidance is not None, BLOCK=BLOCK)
    return out
