"""Transformer parts of the world model: 3-D RoPE, the block-causal backbone and the few-step diffusion head.

Backbone: tokens of frame t attend to every token of frames <= t (block-causal), with rotary position embedding
(RoPE, Su et al. 2021) over (time, y, x). The temporal frequencies are integer multiples of 2*pi/P, so rotary
angles are exactly periodic in P frames: the run-time ring buffer can wrap its frame counter without ever
re-rotating cached keys. Head: a DiT (Peebles & Xie 2023) with adaLN-zero over the N tokens of the next frame,
conditioned per token on the backbone output and globally on (tau, step size, action).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import WorldModelConfig


# ---------------------------------------------------------------------------------------------------------------
# Rotary position embedding over (time, y, x)
# ---------------------------------------------------------------------------------------------------------------
def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Rotary pairs given to (time, y, x): a quarter to time, the rest shared by y and x."""
    pairs = head_dim // 2
    t = max(2, pairs // 4)
    y = (pairs - t) // 2
    return t, y, pairs - t - y


class Rope3D(nn.Module):
    """Tables of rotary angles: time (periodic in `period` frames) and spatial (per token of a frame)."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        pt, py, px = rope_split(cfg.head_dim)
        hh, ww = cfg.latent_height // cfg.patch, cfg.latent_width // cfg.patch
        period = cfg.time_period
        # integer wave numbers k from period/3 (wavelength 3 frames) down to 1 (wavelength = period)
        ks = torch.logspace(math.log10(period / 3), 0, pt, dtype=torch.float64).round()
        ks = torch.maximum(ks, torch.arange(pt, 0, -1, dtype=torch.float64))  # strictly decreasing, unique
        t_angle = torch.arange(period, dtype=torch.float64)[:, None] * (2 * math.pi * ks / period)  # (P, pt)
        fy = cfg.rope_base ** (-torch.arange(py, dtype=torch.float64) / max(py, 1))
        fx = cfg.rope_base ** (-torch.arange(px, dtype=torch.float64) / max(px, 1))
        yy, xx = torch.meshgrid(torch.arange(hh, dtype=torch.float64), torch.arange(ww, dtype=torch.float64),
                                indexing="ij")
        s_angle = torch.cat([yy.reshape(-1, 1) * fy, xx.reshape(-1, 1) * fx], dim=1)  # (N, py + px)
        self.register_buffer("t_cos", t_angle.cos().float(), persistent=False)
        self.register_buffer("t_sin", t_angle.sin().float(), persistent=False)
        self.register_buffer("s_cos", s_angle.cos().float(), persistent=False)
        self.register_buffer("s_sin", s_angle.sin().float(), persistent=False)
        self.period = period
        cos0, sin0 = self.frames(torch.zeros(1, dtype=torch.long))  # time 0: the head's purely spatial angles
        self.register_buffer("s_cos_full", cos0[0].clone(), persistent=False)
        self.register_buffer("s_sin_full", sin0[0].clone(), persistent=False)

    def frames(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (T, N, head_dim/2) for frames at integer `positions` (T,)."""
        pos = positions.remainder(self.period)
        tc, ts = self.t_cos[pos], self.t_sin[pos]  # (T, pt)
        T, N = pos.shape[0], self.s_cos.shape[0]
        cos = torch.cat([tc[:, None].expand(T, N, -1), self.s_cos[None].expand(T, N, -1)], dim=-1)
        sin = torch.cat([ts[:, None].expand(T, N, -1), self.s_sin[None].expand(T, N, -1)], dim=-1)
        return cos, sin  # (T, N, hd/2)

    def spatial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (N, head_dim/2) with time fixed at 0 (the head never attends across frames)."""
        return self.s_cos_full, self.s_sin_full


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + hd/2]) of x (B, H, L, hd) by angles with cos/sin (L, hd/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------
def fourier_features(x: torch.Tensor, dim: int, max_period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features (..., dim) of a scalar in [0, 1] (DDPM/DiT timestep embedding, scaled by 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[..., None] * 1000.0 * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ScalarEmbed(nn.Module):
    """A scalar (noise level, tau) -> a d_model vector via Fourier features and an MLP."""

    def __init__(self, d: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(fourier_features(x, self.freq_dim).to(self.mlp[0].weight.dtype))


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the activations' type (bf16/fp16 statistics lose the small sprites'
    contrast; exported reduced-precision graphs keep their norms in fp32 this way too). A no-op cast in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with RoPE. The real-time step (engine.graphs) uses `project` and `out` around its own
    attention over the ring KV cache."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x (B, L, D) -> rotated q, rotated k, v, each (B, H, L, hd)."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3x (B, H, L, hd)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, y: torch.Tensor) -> torch.Tensor:
        """Attention output (B, H, L, hd) -> (B, L, D)."""
        B, H, L, hd = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, L, H * hd))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.project(x, cos, sin)
        return self.out(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))  # (B, L, D)


class MLP(nn.Sequential):
    def __init__(self, d: int, ratio: float):
        super().__init__(nn.Linear(d, int(d * ratio)), nn.GELU(approximate="tanh"), nn.Linear(int(d * ratio), d))


class BackboneBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, d: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = LayerNorm(d), Attention(d, heads)
        self.norm2, self.mlp = LayerNorm(d), MLP(d, mlp_ratio)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class HeadBlock(nn.Module):
    """DiT block with adaLN-zero conditioning."""

    def __init__(self, d: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = LayerNorm(d, elementwise_affine=False)
        self.attn = Attention(d, heads)
        self.norm2 = LayerNorm(d, elementwise_affine=False)
        self.mlp = MLP(d, mlp_ratio)
        self.ada = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, c, cos, sin):
        s1, g1, b1, s2, g2, b2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), b1, s1), cos, sin)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), b2, s2))


# ---------------------------------------------------------------------------------------------------------------
# Backbone and head
# ---------------------------------------------------------------------------------------------------------------
def block_causal_mask(frames: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """Boolean (T*N, T*N) mask: True where a token of frame t may attend a token of frame s <= t."""
    f = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)
    return f[:, None] >= f[None, :]


class Backbone(nn.Module):
    """Block-causal transformer over frames; each frame's tokens carry its latent, context level and (with
    `backbone_actions`, the default) the action that led to it.

    Without it the backbone reads frames only and the action enters at the head alone. Where an action's effect
    shows in the frames it led to (the built-in game), the backbone then cannot offer the head the last action as
    a shortcut that is right whenever the player holds a key and wrong exactly when the action changes.
    """

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.token_in = nn.Linear(cfg.token_dim, d)
        self.action_in = nn.Linear(cfg.action_dim, d)
        if not cfg.backbone_actions:  # kept (the weight layout stays one for both), frozen: DDP wants no idle params
            self.action_in.requires_grad_(False)
        self.level_in = ScalarEmbed(d)
        self.blocks = nn.ModuleList(BackboneBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.backbone_layers))
        self.norm_out = LayerNorm(d)

    def embed(self, tokens: torch.Tensor, actions: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, N, Dt), actions (B, T, A), levels (B, T) -> (B, T, N, D)."""
        cond = self.level_in(levels)  # (B, T, D)
        if self.cfg.backbone_actions:
            cond = cond + self.action_in(actions.to(self.token_in.weight.dtype))
        return self.token_in(tokens.to(self.token_in.weight.dtype)) + cond[:, :, None]

    def forward(self, tokens, actions, levels, rope: Rope3D, start: int = 0) -> torch.Tensor:
        """Full block-causal pass over a window: (B, T, N, Dt) -> (B, T, N, D)."""
        B, T, N, _ = tokens.shape
        x = self.embed(tokens, actions, levels).reshape(B, T * N, -1)  # (B, T*N, D)
        cos, sin = rope.frames(torch.arange(start, start + T, device=tokens.device))
        cos, sin = cos.reshape(T * N, -1), sin.reshape(T * N, -1)  # (T*N, hd/2)
        mask = block_causal_mask(T, N, tokens.device)
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        return self.norm_out(x).reshape(B, T, N, -1)


class Head(nn.Module):
    """Few-step diffusion head: velocity of the next frame's tokens given x_tau, the backbone output and cond."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        d = cfg.d_model
        self.x_in = nn.Linear(cfg.token_dim, d)
        self.h_in = nn.Linear(d, d)
        self.tau_in = ScalarEmbed(d)
        self.step_in = nn.Embedding(cfg.shortcut_levels + 1, d)
        self.action_in = nn.Linear(cfg.action_dim, d)
        self.null_action = nn.Parameter(torch.zeros(d))
        # the action also enters every token directly: through adaLN alone it was learned far too slowly (the
        # history already predicts most motion, so the gated path got little gradient)
        self.action_tokens = nn.Linear(cfg.action_dim, d)
        self.null_action_tokens = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(HeadBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.head_layers))
        self.norm_out = LayerNorm(d, elementwise_affine=False)
        self.ada_out = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, cfg.token_dim)
        for m in (self.ada_out, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def cond(self, tau: torch.Tensor, step_index: torch.Tensor, actions: torch.Tensor,
             drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global conditioning (M, D) for adaLN and the per-token action embedding (M, D); `drop` (M,) bool
        selects the learned null action in both."""
        a = self.action_in(actions.to(self.x_in.weight.dtype))
        a = torch.where(drop[:, None], self.null_action.to(a.dtype).expand_as(a), a)
        t = self.action_tokens(actions.to(self.x_in.weight.dtype))
        t = torch.where(drop[:, None], self.null_action_tokens.to(t.dtype).expand_as(t), t)
        return self.tau_in(tau) + self.step_in(step_index) + a, t

    def embed(self, x_tokens: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Noisy tokens (M, N, Dt) and backbone output (M, N, D) -> the head's input tokens (M, N, D)."""
        dt = self.x_in.weight.dtype
        return self.x_in(x_tokens.to(dt)) + self.h_in(h.to(dt))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The last normed head tokens (M, N, D) -> velocity tokens (M, N, Dt)."""
        return self.out(x)

    def forward(self, x_tokens, h, c, cos, sin, action_tokens=None) -> torch.Tensor:
        """x_tokens (M, N, Dt), h (M, N, D), c (M, D), action_tokens (M, D) -> velocity tokens (M, N, Dt)."""
        x = self.embed(x_tokens, h)
        if action_tokens is not None:
            x = x + action_tokens[:, None]
        for blk in self.blocks:
            x = blk(x, c, cos, sin)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=-1)
        return self.project(modulate(self.norm_out(x), shift, scale))
