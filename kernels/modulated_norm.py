"""Modulated norm: LayerNorm or RMSNorm without affine, then `x * (1 + scale) + shift`, in one pass over a row.

The DiT head's adaLN (Peebles & Xie 2023, "adaLN-zero") normalises every token and modulates it by a shift and scale
of its frame; eager PyTorch spends four kernels and three trips through memory on it (the norm in float32, a cast,
the multiply, the add). Here one program reads a token's row once, keeps the statistics in float32 and writes the
modulated row once. Shift and scale may be per frame (B, D), per token (B, N, D) or per feature (D,). With
`one_plus=False` the scale is a plain weight, `x * weight + bias`: the backbone's affine LayerNorm is that case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton import HAVE_TRITON, block, device_ok, tl, triton

__all__ = ["modulated_norm", "reference"]


def _broadcast(t: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    """(D,), (B, D) or (B, N, D) -> a view that broadcasts against x (B, N, D)."""
    B, N, D = x.shape
    if t.shape == (D,):
        return t
    if t.shape == (B, D):
        return t[:, None]
    if t.shape == (B, N, D):
        return t
    raise ValueError(f"{name} must be (D,), (B, D) or (B, N, D) for x of shape {tuple(x.shape)}, got {tuple(t.shape)}")


def normalize(x: torch.Tensor, eps: float, rms: bool) -> torch.Tensor:
    """The float32 norm without affine, cast back to x's type (what engine.transformer.LayerNorm computes)."""
    xf = x.float()
    if rms:
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    else:
        y = F.layer_norm(xf, xf.shape[-1:], eps=eps)
    return y.to(x.dtype)


def reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5, rms: bool = False,
              one_plus: bool = True) -> torch.Tensor:
    """x (B, N, D) -> norm(x) * (1 + scale) + shift (or * scale + shift without `one_plus`), in x's type, as the
    model's modules compute it: adaLN (engine.transformer.HeadBlock) norms in float32 and modulates in x's type, an
    affine LayerNorm (engine.transformer.LayerNorm) does it all in float32."""
    scale, shift = _broadcast(scale, x, "scale"), _broadcast(shift, x, "shift")
    if not one_plus:
        return (normalize(x.float(), eps, rms) * scale.float() + shift.float()).to(x.dtype)
    return normalize(x, eps, rms) * (1 + scale) + shift


if HAVE_TRITON:
    @triton.jit
    def norm_modulate_row(x, cols, keep, D, sc, sh, eps, RMS: tl.constexpr, ONE_PLUS: tl.constexpr):
        """One row x (BLOCK_D,) float32 (zero past D) -> its norm, modulated by sc and sh (float32 rows)."""
        if RMS:
            xhat = x * tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
        else:
            mean = tl.sum(x, axis=0) / D
            xc = tl.where(keep, x - mean, 0.0)
            xhat = xc * tl.rsqrt(tl.sum(xc * xc, axis=0) / D + eps)
        if ONE_PLUS:
            return xhat * (1.0 + sc) + sh
        else:
            return xhat * sc + sh

    @triton.jit
    def _modulated_norm_kernel(x_ptr, sc_ptr, sh_ptr, out_ptr, N, D, sc_sb, sc_sn, sh_sb, sh_sn, eps,
                               RMS: tl.constexpr, ONE_PLUS: tl.constexpr, BLOCK_D: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)           # token b * N + n
        b, n = row // N, row % N
        cols = tl.arange(0, BLOCK_D)
        keep = cols < D
        x = tl.load(x_ptr + row * D + cols, mask=keep, other=0.0).to(tl.float32)
        sc = tl.load(sc_ptr + b * sc_sb + n * sc_sn + cols, mask=keep, other=0.0).to(tl.float32)
        sh = tl.load(sh_ptr + b * sh_sb + n * sh_sn + cols, mask=keep, other=0.0).to(tl.float32)
        y = norm_modulate_row(x, cols, keep, D, sc, sh, eps, RMS, ONE_PLUS)
        tl.store(out_ptr + row * D + cols, y.to(out_ptr.dtype.element_ty), mask=keep)


def row_strides(t: torch.Tensor, x: torch.Tensor, name: str) -> tuple[torch.Tensor, int, int]:
    """A contiguous per-feature, per-frame or per-token tensor and its (batch, token) strides in elements (0 where it
    broadcasts)."""
    B, N, D = x.shape
    _broadcast(t, x, name)                     # the shape check
    t = t.contiguous()
    if t.ndim == 1:
        return t, 0, 0
    if t.ndim == 2:
        return t, D, 0
    return t, N * D, D


def modulated_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5, rms: bool = False,
                   one_plus: bool = True) -> torch.Tensor:
    """The Triton kernel of `reference` (same arguments); x (B, N, D), output in x's type."""
    why = device_ok(x, shift, scale)
    if why is not None:
        raise RuntimeError(f"kernels.modulated_norm: {why}")
    if x.ndim != 3:
        raise ValueError(f"x must be (B, N, D), got {tuple(x.shape)}")
    B, N, D = x.shape
    sc, sc_sb, sc_sn = row_strides(scale, x, "scale")
    sh, sh_sb, sh_sn = row_strides(shift, x, "shift")
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        _modulated_norm_kernel[(B * N,)](x, sc, sh, out, N, D, sc_sb, sc_sn, sh_sb, sh_sn, float(eps), RMS=rms,
                                         ONE_PLUS=one_plus, BLOCK_D=block(D))
    return out
