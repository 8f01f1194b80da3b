"""Gated residual fused with the next modulated norm: `x = x + gate * y`, returning x and norm(x) modulated.

Between two sub-layers of a DiT block (and, with gate 1 and an affine norm, of a pre-norm transformer block) eager
PyTorch reads and writes the residual stream for the gated add, then reads it again for the norm. Here one program
per token reads x and y once and writes both the new residual and the normed, modulated input of the next
sub-layer. The gate is per frame (B, D), per token (B, N, D), per feature (D,) or absent (1).
"""

from __future__ import annotations

import torch

from kernels._triton import HAVE_TRITON, block, device_ok, tl, triton
from kernels.modulated_norm import _broadcast, row_strides
from kernels.modulated_norm import reference as modulated_norm_reference

if HAVE_TRITON:
    from kernels.modulated_norm import norm_modulate_row

__all__ = ["gated_residual_norm", "reference"]


def reference(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, shift: torch.Tensor, scale: torch.Tensor,
              eps: float = 1e-5, rms: bool = False, one_plus: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (B, N, D) -> (x + gate * y, modulated_norm(x + gate * y)), in x's type as the model computes them."""
    x = x + (y if gate is None else _broadcast(gate, x, "gate") * y)
    return x, modulated_norm_reference(x, shift, scale, eps, rms, one_plus)


if HAVE_TRITON:
    @triton.jit
    def _gated_residual_kernel(x_ptr, y_ptr, g_ptr, sc_ptr, sh_ptr, x_out_ptr, n_out_ptr, N, D, g_sb, g_sn,
                               sc_sb, sc_sn, sh_sb, sh_sn, eps, HAS_GATE: tl.constexpr, RMS: tl.constexpr,
                               ONE_PLUS: tl.constexpr, BLOCK_D: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        b, n = row // N, row % N
        cols = tl.arange(0, BLOCK_D)
        keep = cols < D
        x = tl.load(x_ptr + row * D + cols, mask=keep, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + row * D + cols, mask=keep, other=0.0).to(tl.float32)
        if HAS_GATE:
            y = y * tl.load(g_ptr + b * g_sb + n * g_sn + cols, mask=keep, other=0.0).to(tl.float32)
        x = x + y
        x_store = x.to(x_out_ptr.dtype.element_ty)
        tl.store(x_out_ptr + row * D + cols, x_store, mask=keep)
        sc = tl.load(sc_ptr + b * sc_sb + n * sc_sn + cols, mask=keep, other=0.0).to(tl.float32)
        sh = tl.load(sh_ptr + b * sh_sb + n * sh_sn + cols, mask=keep, other=0.0).to(tl.float32)
        # the norm reads the residual as stored (rounded to its type), as the unfused pair would
        z = norm_modulate_row(x_store.to(tl.float32), cols, keep, D, sc, sh, eps, RMS, ONE_PLUS)
        tl.store(n_out_ptr + row * D + cols, z.to(n_out_ptr.dtype.element_ty), mask=keep)


def gated_residual_norm(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, shift: torch.Tensor,
                        scale: torch.Tensor, eps: float = 1e-5, rms: bool = False,
                        one_plus: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel of `reference` (same arguments and results)."""
    why = device_ok(x, y, gate, shift, scale)
    if why is not None:
        raise RuntimeError(f"kernels.gated_residual: {why}")
    if x.ndim != 3 or y.shape != x.shape:
        raise ValueError(f"x and y must both be (B, N, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    B, N, D = x.shape
    g, g_sb, g_sn = row_strides(gate, x, "gate") if gate is not None else (x, 0, 0)
    sc, sc_sb, sc_sn = row_strides(scale, x, "scale")
    sh, sh_sb, sh_sn = row_strides(shift, x, "shift")
    x, y = x.contiguous(), y.contiguous()
    x_out, n_out = torch.empty_like(x), torch.empty_like(x)
    if x.numel():
        _gated_residual_kernel[(B * N,)](x, y, g, sc, sh, x_out, n_out, N, D, g_sb, g_sn, sc_sb, sc_sn, sh_sb, sh_sn,
                                         float(eps), HAS_GATE=gate is not None, RMS=rms, ONE_PLUS=one_plus,
                                         BLOCK_D=block(D))
    return x_out, n_out
