"""The real-time step, defined once: backbone step, head Euler step (with and without guidance), decode.

Every runner runs these modules: the torch runner calls them (eager on CPU, captured as CUDA graphs on GPU), and
`export.onnx` exports the same modules for onnxruntime and TensorRT. The session owns the bookkeeping between them
(ring slots and masks, counter-based noise, the Euler loop, guidance), once for every runner. Inputs and outputs are
float32 (the frames uint8); each module casts to its weights' type inside, keeps norms and the attention softmax in
float32, and does the Euler update in float32, so that a bf16 or fp16 model keeps its latents and RoPE tables exact.

  backbone  z (B,C,h,w) raw latent, noise (B,C,h,w), actions (B,A), level (B,), cos/sin (N,hd/2),
            k_cache/v_cache (L,B,H,W*N,hd), mask (B,1,1,W*N) additive or None
            -> h (B,N,D), k_new/v_new (L,B,H,N,hd)
            read-only cache (exported): the slot being replaced is masked out and the new frame's keys are attended
            as N extra columns; the host writes k_new/v_new into the slot. In place (torch runner, `write_index`
            (N,) given): keys are written into the slot first and the cache alone is attended, with no mask at all
            once the ring is full.
  head      x (B,N,Dt), h (B,N,D), actions (B,A), tau (1,), level (1,) int64, d (1,) -> x + d * v
  head_cfg  the same with classifier-free guidance as one batch of 2B, plus guidance (1,)
  decode    z (B,C,h,w) raw latent -> frames (B,H,W,3) uint8 (permuted in float, cast last: TensorRT takes uint8 only
            at a network's inputs and outputs)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.autoencoder import Autoencoder
from engine.cache import cache_root
from engine.world_model import WorldModel

GRAPHS = ("backbone", "head", "head_cfg", "decode")
INPUTS = {
    "backbone": ("z", "noise", "actions", "level", "cos", "sin", "k_cache", "v_cache", "mask"),
    "head": ("x", "h", "actions", "tau", "level", "d"),
    "head_cfg": ("x", "h", "actions", "tau", "level", "d", "guidance"),
    "decode": ("z",),
}
OUTPUTS = {"backbone": ("h", "k_new", "v_new"), "head": ("x_next",), "head_cfg": ("x_next",), "decode": ("frames",)}
MANIFEST = "manifest.json"
FORMAT = 2          # of the exported folder; 2: float32 I/O with casts inside, decode permutes before its cast
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              explicit: bool) -> torch.Tensor:
    """Softmax attention (B, H, L, hd); `explicit` writes it out with the softmax in float32 (exported graphs)."""
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)  # (B, H, L, S)
    if mask is not None:
        scores = scores + mask
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


class BackboneStep(nn.Module):
    """One new frame through the backbone against the ring KV cache (see the module docstring)."""

    def __init__(self, wm: WorldModel, explicit_attention: bool = False):
        super().__init__()
        self.wm, self.explicit = wm, explicit_attention

    def forward(self, z, noise, actions, level, cos, sin, k_cache, v_cache, mask=None, write_index=None):
        wm, bb = self.wm, self.wm.backbone
        ctx = wm.corrupt(wm.normalize(z.float()), level.float(), noise.float())         # (B, C, h, w) fp32
        x = bb.embed(wm.patchify(ctx)[:, None], actions[:, None], level[:, None])[:, 0]  # (B, N, D)
        B, N, D = x.shape
        if write_index is None and mask is not None:   # the new frame's own N columns are always attended
            mask = torch.cat([mask.float(), torch.zeros(B, 1, 1, N, dtype=torch.float32, device=mask.device)], -1)
        ks, vs = [], []
        for i, blk in enumerate(bb.blocks):
            q, k, v = blk.attn.project(blk.norm1(x), cos, sin)  # (B, H, N, hd)
            ks.append(k.to(k_cache.dtype))
            vs.append(v.to(v_cache.dtype))
            if write_index is not None:   # in place: the slot takes the new keys, the cache is attended whole
                k_cache[i].index_copy_(2, write_index, ks[-1])
                v_cache[i].index_copy_(2, write_index, vs[-1])
                kk, vv = k_cache[i], v_cache[i]
            else:                          # read-only cache plus the new frame's columns
                kk, vv = torch.cat([k_cache[i], ks[-1]], dim=2), torch.cat([v_cache[i], vs[-1]], dim=2)
            y = attention(q, kk.to(q.dtype), vv.to(q.dtype), mask, self.explicit)  # (B, H, N, hd)
            x = x + blk.attn.out(y)
            x = x + blk.mlp(blk.norm2(x))
        return bb.norm_out(x).float(), torch.stack(ks), torch.stack(vs)   # (B, N, D), 2x (L, B, H, N, hd)


class HeadStep(nn.Module):
    """One Euler step of the head, x + d * v(x, tau), in float32; classifier-free guidance when `cfg` is set."""

    def __init__(self, wm: WorldModel, cfg: bool):
        super().__init__()
        self.wm, self.cfg = wm, cfg

    def forward(self, x, h, actions, tau, level, d, guidance=None):
        B = x.shape[0]
        drop = torch.zeros(B, dtype=torch.bool, device=x.device)
        xx, hh, aa = x, h, actions
        if self.cfg:  # conditioned and null action as one batch of 2B (Ho & Salimans 2022)
            xx, hh, aa = torch.cat([x, x]), torch.cat([h, h]), torch.cat([actions, actions])
            drop = torch.cat([drop, torch.ones(B, dtype=torch.bool, device=x.device)])
        M = xx.shape[0]
        v = self.wm.velocity(xx, hh, tau.expand(M), level.expand(M), aa, drop).float()  # (M, N, Dt)
        if self.cfg:
            v = v[B:] + guidance.float() * (v[:B] - v[B:])
        return x.float() + d.float() * v


class Decode(nn.Module):
    """Raw latent -> uint8 frames (B, H, W, 3), rounded and clamped like engine.autoencoder.tensor_to_frames."""

    def __init__(self, ae: Autoencoder, channels_last: bool = False):
        super().__init__()
        self.decoder, self.channels_last = ae.decoder, channels_last

    def forward(self, z):
        w = self.decoder.conv_in.weight
        z = z.to(w.dtype)
        if self.channels_last:  # oneDNN convolutions on CPU are faster channels-last
            z = z.contiguous(memory_format=torch.channels_last)
        x = self.decoder(z).float().clamp(0, 1).mul(255.0).add(0.5).floor()  # (B, 3, H, W) in 0..255
        return x.permute(0, 2, 3, 1).to(torch.uint8)                           # (B, H, W, 3)


def graph_modules(wm: WorldModel, ae: Autoencoder, explicit_attention: bool = False,
                  channels_last: bool = False) -> dict[str, nn.Module]:
    return {"backbone": BackboneStep(wm, explicit_attention), "head": HeadStep(wm, cfg=False),
            "head_cfg": HeadStep(wm, cfg=True), "decode": Decode(ae, channels_last)}


def example_inputs(wm: WorldModel, batch: int) -> dict[str, dict[str, torch.Tensor]]:
    """Named float32 example inputs of each graph, in INPUTS order (the shapes the exported graphs accept)."""
    c = wm.cfg
    B, N, D, Dt = batch, c.tokens_per_frame, c.d_model, c.token_dim
    L, H, W, hd = c.backbone_layers, c.heads, c.context_frames, c.head_dim
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, c.latent_channels, c.latent_height, c.latent_width, generator=g)
    cos, sin = wm.rope.frames(torch.tensor([3]))
    kc = torch.randn(L, B, H, W * N, hd, generator=g)
    mask = torch.zeros(B, 1, 1, W * N)
    mask[:, :, :, :N] = float("-inf")  # the slot being replaced
    head = {"x": torch.randn(B, N, Dt, generator=g), "h": torch.randn(B, N, D, generator=g),
            "actions": torch.zeros(B, c.action_dim), "tau": torch.zeros(1), "level": torch.zeros(1, dtype=torch.long),
            "d": torch.ones(1)}
    return {
        "backbone": {"z": z, "noise": torch.randn(z.shape, generator=g), "actions": torch.zeros(B, c.action_dim),
                     "level": torch.full((B,), 0.05), "cos": cos[0].contiguous(), "sin": sin[0].contiguous(),
                     "k_cache": kc, "v_cache": torch.randn(kc.shape, generator=g), "mask": mask},
        "head": head,
        "head_cfg": {**head, "guidance": torch.full((1,), 2.0)},
        "decode": {"z": z},
    }


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def graph_folder(sha256: str, batch: int, precision: str = "fp32") -> Path:
    """The cache folder of a checkpoint's exported graphs (REVERIE_CACHE, default ~/.cache/reverie)."""
    suffix = "" if precision == "fp32" else f"-{precision}"
    return cache_root() / "onnx" / f"{sha256[:20]}-b{batch}{suffix}"


def graphs_complete(folder: Path, sha256: str, batch: int, precision: str = "fp32") -> bool:
    """Whether `folder` holds every graph of this checkpoint (by sha256), batch and precision, in this format."""
    try:
        man = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(man, dict) and man.get("sha256") == sha256 and man.get("batch") == batch and \
        man.get("format") == FORMAT and man.get("precision", "fp32") == precision and \
        all((folder / f"{g}.onnx").is_file() for g in GRAPHS)
