"""RoPE over (time, y, x) applied to q and k as they leave the fused qkv projection, k and v written straight into
their ring-cache slot.

Eager PyTorch splits the projection's output into q, k and v, rotates q and k with six element-wise kernels and a
concatenation each, and copies k and v into the cache slot with two index copies. Here one program per (token,
head) reads the token's q, k and v once, rotates the pairs (x[i], x[i + hd/2]) by the angles of its position
(engine.transformer.apply_rope: Su et al. 2021, the rotary tables of engine.transformer.Rope3D) and writes q in
attention layout and k, v into the cache columns the ring gives the new frame.
"""

from __future__ import annotations

import torch

from kernels._triton import HAVE_TRITON, block, device_ok, tl, triton

__all__ = ["reference", "rope_qkv"]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """engine.transformer.apply_rope: pairs (x[i], x[i + hd/2]) of x (B, H, L, hd) by angles cos/sin (L, hd/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, k_out: torch.Tensor,
              v_out: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """qkv (B, L, 3 D) -> rotated q (B, H, L, hd); rotated k and v are written into k_out / v_out (B, H, S, hd) at
    `columns` (L,) (a ring slot; arange(L) for a plain buffer)."""
    B, L, D3 = qkv.shape
    q, k, v = qkv.view(B, L, 3, heads, D3 // (3 * heads)).permute(2, 0, 3, 1, 4)   # 3x (B, H, L, hd)
    k_out.index_copy_(2, columns, rotate(k, cos, sin).to(k_out.dtype))
    v_out.index_copy_(2, columns, v.to(v_out.dtype))
    return rotate(q, cos, sin)


if HAVE_TRITON:
    @triton.jit
    def _rope_qkv_kernel(qkv_ptr, cos_ptr, sin_ptr, col_ptr, q_ptr, k_ptr, v_ptr, L, S, D, H, HALF,
                         BLOCK_HALF: tl.constexpr):
        token = tl.program_id(0).to(tl.int64)          # b * L + l
        h = tl.program_id(1).to(tl.int64)
        b, pos = token // L, token % L
        hd = 2 * HALF
        i = tl.arange(0, BLOCK_HALF)
        keep = i < HALF
        src = qkv_ptr + token * 3 * D + h * hd
        c = tl.load(cos_ptr + pos * HALF + i, mask=keep, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + pos * HALF + i, mask=keep, other=0.0).to(tl.float32)
        q1 = tl.load(src + i, mask=keep, other=0.0).to(tl.float32)
        q2 = tl.load(src + HALF + i, mask=keep, other=0.0).to(tl.float32)
        k1 = tl.load(src + D + i, mask=keep, other=0.0).to(tl.float32)
        k2 = tl.load(src + D + HALF + i, mask=keep, other=0.0).to(tl.float32)
        v1 = tl.load(src + 2 * D + i, mask=keep, other=0.0)
        v2 = tl.load(src + 2 * D + HALF + i, mask=keep, other=0.0)
        q_dst = q_ptr + ((b * H + h) * L + pos) * hd
        tl.store(q_dst + i, (q1 * c - q2 * s).to(q_ptr.dtype.element_ty), mask=keep)
        tl.store(q_dst + HALF + i, (q1 * s + q2 * c).to(q_ptr.dtype.element_ty), mask=keep)
        col = tl.load(col_ptr + pos).to(tl.int64)
        kv = ((b * H + h) * S + col) * hd
        tl.store(k_ptr + kv + i, (k1 * c - k2 * s).to(k_ptr.dtype.element_ty), mask=keep)
        tl.store(k_ptr + kv + HALF + i, (k1 * s + k2 * c).to(k_ptr.dtype.element_ty), mask=keep)
        tl.store(v_ptr + kv + i, v1.to(v_ptr.dtype.element_ty), mask=keep)
        tl.store(v_ptr + kv + HALF + i, v2.to(v_ptr.dtype.element_ty), mask=keep)


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, k_out: torch.Tensor,
             v_out: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The Triton kernel of `reference` (same arguments and result); k_out and v_out must be contiguous (a layer of
    the ring cache is)."""
    why = device_ok(qkv, cos, sin, k_out, v_out, columns)
    if why is not None:
        raise RuntimeError(f"kernels.rope_qkv: {why}")
    B, L, D3 = qkv.shape
    D = D3 // 3
    hd = D // heads
    if D3 != 3 * D or D != heads * hd or hd % 2:
        raise ValueError(f"qkv (B, L, 3 D) with D = heads x an even head size; got {tuple(qkv.shape)}, {heads} heads")
    S = k_out.shape[2]
    if k_out.shape != (B, heads, S, hd) or v_out.shape != k_out.shape:
        raise ValueError(f"k_out and v_out must be (B, H, S, hd) = ({B}, {heads}, S, {hd}); got "
                         f"{tuple(k_out.shape)} and {tuple(v_out.shape)}")
    if not (k_out.is_contiguous() and v_out.is_contiguous()):
        raise ValueError("k_out and v_out must be contiguous (they are written in place)")
    if cos.shape != (L, hd // 2) or sin.shape != cos.shape or columns.shape != (L,):
        raise ValueError(f"cos and sin must be (L, hd/2) = ({L}, {hd // 2}) and columns ({L},); got "
                         f"{tuple(cos.shape)}, {tuple(sin.shape)}, {tuple(columns.shape)}")
    qkv = qkv.contiguous()
    q = torch.empty(B, heads, L, hd, dtype=qkv.dtype, device=qkv.device)
    if q.numel():
        _rope_qkv_kernel[(B * L, heads)](qkv, cos.contiguous(), sin.contiguous(), columns.contiguous(), q, k_out,
                                         v_out, L, S, D, heads, hd // 2, BLOCK_HALF=block(hd // 2, 1))
    return q
