"""Attention of a frame's N new tokens against the ring-buffer KV cache, read in place.

The backbone of the real-time step attends the new frame's queries to W cached frames (engine.kv_cache.RingKVCache:
frame t in slot t mod W). Eager PyTorch builds an additive float mask over the W*N cached columns every frame and
calls SDPA. Here one program per (world, head, block of queries) walks the cache in blocks with an online softmax
(Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022), statistics in float32, and decides per column from
the ring's state whether it counts: a slot holds a frame (`valid`, (B, W)) or is the slot the new frame was just
written into (`slot`). No mask tensor, no concatenation. RoPE angles are absolute and periodic, so the ring's
order needs no reordering: softmax attention does not care where in the buffer a key sits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton import HAVE_TRITON, block, device_ok, tl, triton

__all__ = ["reference", "ring_attention", "ring_mask"]


def ring_mask(valid: torch.Tensor, slot: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Additive float32 mask (B, 1, 1, W*N): 0 where a slot is valid or is `slot`, -inf elsewhere (what
    RingKVCache.mask(with_next=True) gives while the ring is not full)."""
    hot = torch.arange(valid.shape[1], device=valid.device) == slot                 # (W,)
    keep = (valid | hot).repeat_interleave(tokens_per_frame, dim=1)                  # (B, W*N)
    return torch.zeros(keep.shape, device=keep.device).masked_fill(~keep, float("-inf"))[:, None, None]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None = None,
              slot: torch.Tensor | None = None, tokens_per_frame: int = 1) -> torch.Tensor:
    """q (B, H, N, hd) against k, v (B, H, S, hd) -> (B, H, N, hd); with `valid` (B, W) and `slot` () the columns of
    slots neither valid nor `slot` are left out (S = W * tokens_per_frame), without them every column counts."""
    mask = None if valid is None else ring_mask(valid, slot, tokens_per_frame).to(q.dtype)
    return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)


if HAVE_TRITON:
    @triton.jit
    def _ring_attention_kernel(q_ptr, k_ptr, v_ptr, valid_ptr, slot_ptr, out_ptr, H, N, S, W, HD, TOKENS, scale,
                               HAS_VALID: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)              # b * H + h
        b = bh // H
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        row_keep, dim_keep = rows < N, dims < HD
        q = tl.load(q_ptr + bh * N * HD + rows[:, None] * HD + dims[None, :],
                    mask=row_keep[:, None] & dim_keep[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        slot = -1
        if HAS_VALID:
            slot = tl.load(slot_ptr).to(tl.int64)
        for start in range(0, S, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_keep = cols < S
            kv_mask = col_keep[:, None] & dim_keep[None, :]
            k = tl.load(k_ptr + bh * S * HD + cols[:, None] * HD + dims[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION) * scale     # (BLOCK_M, BLOCK_N)
            keep = col_keep
            if HAS_VALID:                               # a column counts if its slot holds a frame or is the new one
                frame = cols // TOKENS
                held = tl.load(valid_ptr + b * W + frame, mask=col_keep, other=0)
                keep = keep & ((held != 0) | (frame == slot))
            s = tl.where(keep[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)   # no column yet: nothing to rescale
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + bh * S * HD + cols[:, None] * HD + dims[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(out_ptr + bh * N * HD + rows[:, None] * HD + dims[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=row_keep[:, None] & dim_keep[None, :])


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None = None,
                   slot: torch.Tensor | None = None, tokens_per_frame: int = 1) -> torch.Tensor:
    """The Triton kernel of `reference` (same arguments and result); k and v contiguous (a cache layer is)."""
    why = device_ok(q, k, v, valid, slot)
    if why is not None:
        raise RuntimeError(f"kernels.ring_attention: {why}")
    B, H, N, hd = q.shape
    S = k.shape[2]
    if k.shape != (B, H, S, hd) or v.shape != k.shape:
        raise ValueError(f"k and v must be (B, H, S, hd) = ({B}, {H}, S, {hd}); got {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    W = 1
    if valid is not None:
        W = valid.shape[1]
        if valid.shape != (B, W) or W * tokens_per_frame != S or slot is None or slot.numel() != 1:
            raise ValueError(f"valid must be (B, W) with W x tokens_per_frame = S = {S} and slot one index; got valid "
                             f"{tuple(valid.shape)}, tokens_per_frame {tokens_per_frame}, slot "
                             f"{None if slot is None else tuple(slot.shape)}")
        valid = valid.contiguous().to(torch.int8)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    block_m = min(64, block(N))      # a block of queries; 64 keeps the scores and accumulator in registers
    if q.numel():
        _ring_attention_kernel[(B * H, triton.cdiv(N, block_m))](
            q, k, v, valid if valid is not None else q, slot if slot is not None else q, out, H, N, S, W, hd,
            tokens_per_frame, hd ** -0.5, HAS_VALID=valid is not None,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32", BLOCK_M=block_m, BLOCK_N=64 if S >= 64 else
            block(S), BLOCK_D=block(hd))
    return out
