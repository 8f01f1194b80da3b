"""The world model: causal backbone + few-step shortcut diffusion head, its training loss and its sampler.

Data convention: latents z (from the autoencoder, normalised per channel) of frames x_0..x_{T-1}, and actions
a_0..a_{T-1] where a_t is the action that led to frame t (null for an episode's first frame). The backbone reads
(context-corrupted z_t, a_t, level_t) and gives h_t; the head predicts z_{t+1} from h_t and a_{t+1}. With
`backbone_actions` off the backbone reads no a_t (the frames show what it did) and the head alone reads actions.

Flow convention (rectified flow, Liu et al. 2022): x_tau = (1 - tau) * noise + tau * data, velocity
v = data - noise; tau = 0 is pure noise. The head also takes the step size d it will be integrated with
(shortcut models, Frans et al. 2024): d = 0 is trained with the flow-matching target, d > 0 with the
self-consistency target s(x, tau, 2d) = (s(x, tau, d) + s(x', tau + d, d)) / 2, so 1, 2 and 4 Euler steps all
work from one network. Context corruption uses the same interpolation: (1 - level) * z + level * noise
(GameNGen/Oasis/DIAMOND-style noise augmentation against drift).

Against drift the model can also be trained on its own outputs (`rollout_iters` K > 0): for a share of the windows,
the context frames after the first are replaced by the model's own 1-step predictions, refined by K Jacobi passes
(pass k predicts every frame in parallel from the previous pass's frames, so after K passes frame t carries up to
min(t, K) generations of the model's own errors; K = T - 1 would be the exact autoregressive rollout). The targets
stay the real next frames, so the model learns to pull a drifting, blurring rollout back to the real game rather
than copying its errors forward (scheduled sampling, Bengio et al. 2015; in spirit Self-Forcing, Huang et al. 2025).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import WorldModelConfig
from engine.transformer import Backbone, Head, Rope3D

# how training treats actions an inverse-dynamics model filled in, by their confidence (WorldModel.loss)
UNSURE_ACTIONS = ("keep", "weight", "drop")
# the weights that read the action: a warm start with fresh actions (`reverie train wm --init M --fresh-actions`)
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
        """Head velocity (M, N, Dt) for noisy tokens x_tokens at flow time tau (M,) and step level (M,); tokens in
        and out in the backbone's layout, whatever the head's own."""
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

    def forward(self, z: torch.Tensor, actions: torch.Tensor, confidence: torch.Tensor | None = None,
                unsure: str = "keep", objects: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss(z, actions, confidence, unsure, objects)

    @torch.no_grad()
    def own_rollout(self, z: torch.Tensor, actions: torch.Tensor, iters: int) -> torch.Tensor:
        """The model's own version of windows z (B, T, C, h, w): frame 0 real, frames 1.. predicted in 1 step
        from the previous Jacobi pass (the first pass reads the real frames), `iters` passes."""
        cfg = self.cfg
        B, T = z.shape[:2]
        M = B * (T - 1)
        level = torch.full((B, T), cfg.context_noise, device=z.device)
        act = actions[:, 1:].reshape(M, -1)
        cur = z
        for _ in range(iters):
            ctx = self.corrupt(cur, level, torch.randn_like(cur))
            h = self.backbone(self.patchify(ctx), actions, level, self.rope)[:, :-1]  # (B, T-1, N, D)
            noise = torch.randn(M, cfg.tokens_per_frame, cfg.token_dim, device=z.device, dtype=z.dtype)
            nxt = self.sample(h.reshape(M, *h.shape[2:]), act, noise, steps=1)
            cur = torch.cat([z[:, :1], self.unpatchify(nxt.to(z.dtype)).reshape(B, T - 1, *z.shape[2:])], dim=1)
        return cur

    def change_weights(self, z: torch.Tensor) -> torch.Tensor:
        """Per-token loss weights (B * (T - 1), N) of the next frames of windows z (B, T, C, h, w), mean 1.

        A token's weight grows with how much it changes from the frame before, relative to the batch's mean change:
        w = 1 + change_weight * min(change / mean change, 8), then scaled to mean 1. On a game frame most tokens are
        static background that the model copies forward; the few that move (the avatar, a ball, enemies) decide
        whether the dream is still a game but carry a small share of a uniform loss, so a model can leave them
        blurred, and a blurred sprite fades a little more with every frame it is fed back.
        """
        tok = self.patchify(z.float())                                 # (B, T, N, Dt)
        change = (tok[:, 1:] - tok[:, :-1]).pow(2).mean(dim=-1)        # (B, T-1, N)
        rel = (change / change.mean().clamp_min(1e-8)).clamp(max=8.0)
        w = 1.0 + self.cfg.change_weight * rel
        return (w / w.mean()).reshape(-1, w.shape[-1]).detach()

    def object_weights(self, objects: torch.Tensor) -> torch.Tensor:
        """Per-token loss weights (B * (T - 1), N), mean 1, from windows' object masks (B, T, N) (1 where a token
        holds a pixel of an object the game's probes declare): 1 + object_weight on the next frames' object tokens.

        The change weights miss a sprite that stands still: an avatar against a wall (two thirds of the built-in
        game's frames) changes nothing, so a uniform loss leaves it as blurred as the background would allow."""
        w = 1.0 + self.cfg.object_weight * objects[:, 1:].float()
        return (w / w.mean()).reshape(-1, w.shape[-1]).detach()

    def loss(self, z: torch.Tensor, actions: torch.Tensor, confidence: torch.Tensor | None = None,
             unsure: str = "keep", objects: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Shortcut rectified-flow loss over a batch of windows.

        z: (B, T, C, h, w) normalised latents; actions: (B, T, A). Returns the scalar loss and per-sample
        diagnostics (tau, per-sample loss, whether it was a self-consistency sample).

        confidence (B, T): how sure each action is (1 for recorded actions, the labeling IDM's for labels that
        `reverie data label` filled in), used as `unsure` says: "keep" ignores it; "weight" weighs each predicted
        frame's loss by the confidence of the action that led to it (a normalised mean); "drop" hides the action
        from the model with probability 1 - confidence, as guidance dropout does, so the frame still teaches the
        dynamics but an unsure label does not teach that the avatar ignored a key.

        objects (B, T, N): which tokens hold a declared object (`object_weights`); needed when object_weight > 0.
        """
        if unsure not in UNSURE_ACTIONS:
            raise ValueError(f"unsure must be one of {UNSURE_ACTIONS}, got {unsure!r}")
        if unsure != "keep" and (confidence is None or confidence.shape != actions.shape[:2]):
            raise ValueError(f"unsure={unsure!r} needs a confidence of shape {tuple(actions.shape[:2])}, got "
                             f"{None if confidence is None else tuple(confidence.shape)}")
        cfg = self.cfg
        B, T = z.shape[:2]
        if cfg.object_weight > 0 and (objects is None or objects.shape != (B, T, cfg.tokens_per_frame)):
            raise ValueError(f"object_weight={cfg.object_weight} needs object masks of shape "
                             f"{(B, T, cfg.tokens_per_frame)}, got {None if objects is None else tuple(objects.shape)}")
        dev = z.device
        context = z
        n_own = int(round(B * cfg.rollout_fraction)) if cfg.rollout_iters > 0 else 0
        if n_own:  # the first n_own windows see the model's own frames as context; targets stay real
            own = self.own_rollout(z[:n_own], actions[:n_own], cfg.rollout_iters)
            context = torch.cat([own, z[n_own:]])
        levels = cfg.context_noise_max * torch.rand(B, T, device=dev) ** 2  # (B, T), skewed to small
        z_ctx = self.corrupt(context, levels, torch.randn(z.shape, device=dev, dtype=z.dtype))  # layout-independent
        h = self.backbone(self.patchify(z_ctx), actions, levels, self.rope)  # (B, T, N, D)

        M = B * (T - 1)
        h = h[:, :-1].reshape(M, *h.shape[2:])                     # (M, N, D) context for the next frame
        data = self.patchify(z[:, 1:]).reshape(M, -1, cfg.token_dim)  # (M, N, Dt)
        act = actions[:, 1:].reshape(M, -1)                          # (M, A)
        drop = torch.rand(M, device=dev) < cfg.action_dropout
        sure = confidence[:, 1:].reshape(M).float() if unsure != "keep" else None   # (M,)
        if unsure == "drop":
            drop = drop | (torch.rand(M, device=dev) >= sure)
        noise = torch.randn_like(data)

        L = cfg.shortcut_levels
        n_sc = int(round(M * cfg.shortcut_fraction)) if L > 1 else 0
        # flow-matching part: d = 0 (index L), tau ~ U(0, 1)
        step_idx = torch.full((M,), L, dtype=torch.long, device=dev)
        tau = torch.rand(M, device=dev)
        # self-consistency part: level j in [0, L-1], tau on the grid of d = 2^-j
        if n_sc:
            if cfg.shortcut_decay == 1.0:
                j = torch.randint(0, L, (n_sc,), device=dev)
            else:  # weight decay^j: more of the coarse steps (d = 1, 1/2) that 1- and 2-step sampling runs
                p_j = cfg.shortcut_decay ** torch.arange(L, device=dev, dtype=torch.float32)
                j = torch.multinomial(p_j / p_j.sum(), n_sc, replacement=True)
            d = 2.0 ** -j.float()
            k = torch.floor(torch.rand(n_sc, device=dev) * (2.0 ** j.float()))
            step_idx[:n_sc] = j
            tau[:n_sc] = k * d
        x_tau = (1 - tau)[:, None, None] * noise + tau[:, None, None] * data
        target = data - noise
        if n_sc:
            with torch.no_grad():
                half = torch.clamp(j + 1, max=L)  # index L (d = 0) stands in for the half of the finest step
                xs, hs, as_, ds = x_tau[:n_sc], h[:n_sc].detach(), act[:n_sc], drop[:n_sc]
                v1 = self.velocity(xs, hs, tau[:n_sc], half, as_, ds)
                x_mid = xs + (d / 2)[:, None, None] * v1
                v2 = self.velocity(x_mid, hs, tau[:n_sc] + d / 2, half, as_, ds)
                target = torch.cat([((v1 + v2) / 2).to(target.dtype), target[n_sc:]])
        pred = self.velocity(x_tau, h, tau, step_idx, act, drop)
        err = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=2)  # (M, N)
        if cfg.change_weight > 0:
            err = err * self.change_weights(z)
        if cfg.object_weight > 0:
            err = err * self.object_weights(objects)
        per_sample = err.mean(dim=1)  # (M,)
        is_sc = torch.zeros(M, dtype=torch.bool, device=dev)
        is_sc[:n_sc] = True
        total = (per_sample * sure).sum() / sure.sum().clamp_min(1e-6) if unsure == "weight" else per_sample.mean()
        return total, {"tau": tau.detach(), "loss": per_sample.detach(), "shortcut": is_sc, "level": step_idx}
