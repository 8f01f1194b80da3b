"""The world model: causal backbone + few-step shortcut diffusion head, and its sampler.

Data convention: latents z (from the autoencoder, normalised per channel) of frames x_0..x_{T-1}, and actions
a_0..a_{T-1] where a_t is the action that led to frame t (null for an episode's first frame). The backbone reads
(context-corrupted z_t, a_t, level_t) and gives h_t; the head predicts z_{t+1} from h_t and a_{t+1}. With
`backbone_actions` off the backbone reads no a_t (the frames show what it did) and the head alone reads actions.

Flow convention (rectified flow, Liu et al. 2022): x_tau = (1 - tau) * noise + tau * data, velocity
v = data - noise; tau = 0 is pure noise. The head also takes the step size d it will be integrated with
(shortcut models, Frans et al. 2024), so 1, 2 and 4 Euler steps all work from one network. Context corruption uses
the same interpolation: (1 - level) * z + level * noise. The training loss is train/training/wm_loss.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from engine.config import WorldModelConfig
from engine.transformer import Backbone, Head, Rope3D

# the weights that read the action: a warm start with fresh actions (`train wm --init M --set fresh_actions=true`)
# starts these from zero and keeps the rest, so a model pretrained on a game's frames learns what its actions do anew
ACTION_INPUTS = ("backbone.action_in.weight", "backbone.action_in.bias", "head.action_in.weight",
                 "head.action_in.bias", "head.null_action", "head.action_tokens.weight", "head.action_tokens.bias",
                 "head.null_action_tokens")


def step_schedule(steps: int, levels: int) -> list[int]:
    """Shortcut level index per Euler step for `steps` steps summing to 1 (level j means d = 2^-j).

    Powers of two split evenly; other counts halve the first steps until the count fits, e.g. 3 -> [1, 2, 2]
    (d = 1/2, 1/4, 1/4).
    """
    if not 1 <= steps <= 2 ** (levels - 1):
        raise ValueError(f"sampling steps must be in 1..{2 ** (levels - 1)}, got {steps}")
    sched = [0]
    while len(sched) < steps:
        j = min(range(len(sched)), key=lambda i: sched[i])  # split the largest remaining step
        sched[j:j + 1] = [sched[j] + 1, sched[j] + 1]
    return sorted(sched)


def euler_schedule(steps: int, levels: int) -> list[tuple[float, int, float]]:
    """(tau, shortcut level j, step size d = 2^-j) of each Euler step of a `steps`-step sample from tau = 0."""
    out, tau = [], 0.0
    for j in step_schedule(steps, levels):
        out.append((tau, j, 2.0 ** -j))
        tau += 2.0 ** -j
    return out


class WorldModel(nn.Module):
    """Backbone + head + the latent normalisation they were trained with."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.head = Head(cfg)
        self.rope = Rope3D(cfg)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    # ---- latents <-> tokens --------------------------------------------------------------------------------
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Autoencoder latent (..., C, h, w) -> unit-scale latent."""
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """(..., C, h, w) -> (..., N, C*p*p)."""
        p, lead = self.cfg.patch, z.shape[:-3]
        C, h, w = z.shape[-3:]
        z = z.reshape(-1, C, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (M, h/p, w/p, C, p, p)
        return z.reshape(*lead, (h // p) * (w // p), C * p * p)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., N, C*p*p) -> (..., C, h, w)."""
        c, p = self.cfg, self.cfg.patch
        hp, wp, lead = c.latent_height // p, c.latent_width // p, tokens.shape[:-2]
        x = tokens.reshape(-1, hp, wp, c.latent_channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (M, C, h/p, p, w/p, p)
        return x.reshape(*lead, c.latent_channels, c.latent_height, c.latent_width)

    # ---- head --------------------------------------------------------------------------------------------
    def velocity(self, x_tokens, h, tau, step_index, actions, drop) -> torch.Tensor:
        """Head velocity (M, N, Dt) for noisy tokens x_tokens (M, N, Dt) at flow time tau (M,) and step level (M,)."""
        cos, sin = self.rope.spatial()
        c, a_tok = self.head.cond(tau, step_index, actions, drop)
        return self.head(x_tokens, h, c, cos, sin, a_tok)

    def sample(self, h: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor, steps: int,
               guidance: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Euler-integrate the head from noise (B, N, Dt) to next-frame tokens in `steps` shortcut steps.

        guidance == 1 runs the conditioned head only; otherwise conditioned and null action run as one batch
        of 2B and mix as v_null + g * (v_cond - v_null) (classifier-free guidance, Ho & Salimans 2022).
        """
        B = h.shape[0]
        cfg_on = not (isinstance(guidance, (int, float)) and guidance == 1.0)
        hh = torch.cat([h, h]) if cfg_on else h
        aa = torch.cat([actions, actions]) if cfg_on else actions
        drop = torch.zeros(hh.shape[0], dtype=torch.bool, device=h.device)
        if cfg_on:
            drop[B:] = True
        x, tau = noise, 0.0
        for j in step_schedule(steps, self.cfg.shortcut_levels):
            d = 2.0 ** -j
            xx = torch.cat([x, x]) if cfg_on else x
            t = torch.full((hh.shape[0],), tau, device=h.device)
            v = self.velocity(xx, hh, t, torch.full_like(t, j, dtype=torch.long), aa, drop)
            if cfg_on:
                v_c, v_u = v[:B], v[B:]
                v = v_u + guidance * (v_c - v_u)
            x = x + d * v
            tau += d
        return x

    # ---- training -----------------------------------------------------------------------------------------
    def corrupt(self, z: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Context noise augmentation: (1 - level) * z + level * noise, level broadcast over (C, h, w)."""
        lv = level.reshape(*level.shape, 1, 1, 1).to(z.dtype)
        return (1 - lv) * z + lv * noise

    def forward(self, objective: Callable[..., Any], *args: Any) -> Any:
        """objective(self, *args): a training objective over this model (train.training.wm_loss), run as the module's
        forward so that a distributed wrapper (DDP, FSDP2) sees its whole pass."""
        return objective(self, *args)
