"""The real-time step over fused ops (kernels/): the math of engine.graphs' BackboneStep and HeadStep, regrouped.

The torch runner runs these instead of the graph modules when its kernels are Triton (`Session(kernels=...)`,
`reverie bench --kernels`); with the reference ops (kernels.ops("reference")) they compute what the graph modules
compute, which the tests use to check the regrouping apart from the kernels. Per backbone layer: the qkv
projection, RoPE with k and v written into the ring slot (rope_qkv), attention over the cache in place with the
slot validity read in the kernel (ring_attention), and each residual add fused with the next layer norm
(gated_residual_norm, gate 1, the norm's weight and bias as scale and shift). Per head block the same with the
adaLN shift, scale and gate of its frame; the head's last norm and the guidance + Euler update (flow_step) close
the step. Matrix products stay torch's (cuBLAS): at these sizes the launches and memory passes between them are
what the kernels remove.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.world_model import WorldModel
from kernels import Ops


class FusedBackboneStep(nn.Module):
    """engine.graphs.BackboneStep with the in-place ring cache, over fused ops. Extra input: the ring's `valid`
    (B, W) (None once the ring is full: every column counts); the slot being written is the one `write_index`
    points at. k_new and v_new come back None: the keys are already in the cache."""

    def __init__(self, wm: WorldModel, ops: Ops):
        super().__init__()
        self.wm, self.ops = wm, ops

    def forward(self, z, noise, actions, level, cos, sin, k_cache, v_cache, mask=None, write_index=None, valid=None):
        wm, bb, ops = self.wm, self.wm.backbone, self.ops
        ctx = wm.corrupt(wm.normalize(z.float()), level.float(), noise.float())          # (B, C, h, w) fp32
        x = bb.embed(wm.patchify(ctx)[:, None], actions[:, None], level[:, None])[:, 0]  # (B, N, D)
        N = x.shape[1]
        slot = None if valid is None else write_index[:1] // N                         # (1,) the new frame's slot
        blocks = list(bb.blocks)
        norms = [blk.norm1 for blk in blocks[1:]] + [bb.norm_out]   # the norm after each block's MLP
        first = blocks[0].norm1
        n = ops.modulated_norm(x, first.bias, first.weight, first.eps, one_plus=False)
        for i, blk in enumerate(blocks):
            qkv = blk.attn.qkv(n)                                                         # (B, N, 3 D)
            q = ops.rope_qkv(qkv, cos, sin, blk.attn.heads, k_cache[i], v_cache[i], write_index)  # (B, H, N, hd)
            y = ops.ring_attention(q, k_cache[i], v_cache[i], valid, slot, N)             # (B, H, N, hd)
            x, n = ops.gated_residual_norm(x, blk.attn.out(y), None, blk.norm2.bias, blk.norm2.weight, blk.norm2.eps,
                                           one_plus=False)
            x, n = ops.gated_residual_norm(x, blk.mlp(n), None, norms[i].bias, norms[i].weight, norms[i].eps,
                                           one_plus=False)
        return n.float(), None, None                                                      # (B, N, D)


def fused_velocity(wm: WorldModel, ops: Ops, x_tokens, h, tau, step_index, actions, drop) -> torch.Tensor:
    """WorldModel.velocity over fused ops: (M, N, Dt) velocity of noisy tokens at flow time tau (M,)."""
    head = wm.head
    cos, sin = wm.rope.spatial()                                                          # (N, hd/2)
    c, a_tok = head.cond(tau, step_index, actions, drop)                                  # (M, D), (M, D)
    x = head.embed(x_tokens, h) + a_tok[:, None]                                          # (M, N_head, D)
    M, N, D = x.shape
    cs = F.silu(c)
    mods = [blk.ada(cs).chunk(6, dim=-1) for blk in head.blocks]    # each: shift/scale/gate of attention and MLP
    final = head.ada_out(cs).chunk(2, dim=-1)                        # shift, scale of the last norm
    columns = torch.arange(N, device=x.device)
    blocks = list(head.blocks)
    s1, _, b1, _, _, _ = mods[0]
    n = ops.modulated_norm(x, b1, s1, blocks[0].norm1.eps)
    for i, blk in enumerate(blocks):
        _, g1, _, s2, g2, b2 = mods[i]
        H = blk.attn.heads
        qkv = blk.attn.qkv(n)                                                             # (M, N, 3 D)
        k = torch.empty(M, H, N, D // H, dtype=qkv.dtype, device=qkv.device)
        v = torch.empty_like(k)
        q = ops.rope_qkv(qkv, cos, sin, H, k, v, columns)                                 # (M, H, N, hd)
        y = ops.ring_attention(q, k, v)
        x, n = ops.gated_residual_norm(x, blk.attn.out(y), g1, b2, s2, blk.norm2.eps)
        shift, scale = (mods[i + 1][2], mods[i + 1][0]) if i + 1 < len(blocks) else final
        eps = blocks[i + 1].norm1.eps if i + 1 < len(blocks) else head.norm_out.eps
        x, n = ops.gated_residual_norm(x, blk.mlp(n), g2, shift, scale, eps)
    return head.project(n)                                                                # (M, N, Dt)


class FusedHeadStep(nn.Module):
    """engine.graphs.HeadStep over fused ops: one Euler step x + d * v, guided when `cfg` is set."""

    def __init__(self, wm: WorldModel, cfg: bool, ops: Ops):
        super().__init__()
        self.wm, self.cfg, self.ops = wm, cfg, ops

    def forward(self, x, h, actions, tau, level, d, guidance=None):
        B = x.shape[0]
        drop = torch.zeros(B, dtype=torch.bool, device=x.device)
        xx, hh, aa = x, h, actions
        if self.cfg:  # conditioned and null action as one batch of 2B
            xx, hh, aa = torch.cat([x, x]), torch.cat([h, h]), torch.cat([actions, actions])
            drop = torch.cat([drop, torch.ones(B, dtype=torch.bool, device=x.device)])
        M = xx.shape[0]
        v = fused_velocity(self.wm, self.ops, xx, hh, tau.expand(M), level.expand(M), aa, drop)   # (M, N, Dt)
        return self.ops.flow_step(x, v, d, guidance if self.cfg else None)


def fused_modules(wm: WorldModel, ops: Ops) -> dict[str, nn.Module]:
    """The step's modules over `ops`, by graph name (the decode is the graph module's: a convolution stack)."""
    return {"backbone": FusedBackboneStep(wm, ops), "head": FusedHeadStep(wm, False, ops),
            "head_cfg": FusedHeadStep(wm, True, ops)}
