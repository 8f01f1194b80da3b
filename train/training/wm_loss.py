"""The world model's training loss and its knobs: shortcut rectified flow over windows of latents.

It lives with training, apart from the model (engine/world_model.py holds the architecture and what play needs), and
runs through WorldModel.forward so that a distributed wrapper (DDP, FSDP2) sees the whole pass. A checkpoint records
the loss it was trained with in its extra ("loss").

The head predicts the velocity v = data - noise at x_tau = (1 - tau) * noise + tau * data (rectified flow, Liu et
al. 2022), given the step size d it will be integrated with (shortcut models, Frans et al. 2024): d = 0 is trained on
the flow-matching target, d > 0 on the self-consistency target s(x, tau, 2d) = (s(x, tau, d) + s(x', tau + d, d)) / 2,
so 1, 2 and 4 Euler steps all work from one network. Context frames are corrupted with noise of a random level that
the backbone reads (GameNGen/Oasis/DIAMOND-style augmentation against drift).

Against drift the model can also be trained on its own outputs (`rollout_iters` K > 0): for a share of the windows,
the context frames after the first are replaced by the model's own 1-step predictions, refined by K Jacobi passes
(pass k predicts every frame in parallel from the previous pass's frames, so after K passes frame t carries up to
min(t, K) generations of the model's own errors). The targets stay the real next frames, so the model learns to pull
a drifting rollout back to the real game rather than copying its errors forward (scheduled sampling, Bengio et al.
2015; in spirit Self-Forcing, Huang et al. 2025).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.world_model import WorldModel

TAU_BINS = 4   # the flow-matching loss is also logged per tau bin (a free diagnostic of where the model struggles)


@dataclass
class WorldModelLoss:
    """Shortcut rectified-flow loss of a WorldModel over windows; its fields are the knobs it is trained with."""

    context_noise_max: float = 0.6   # per-frame context corruption level drawn in [0, max], skewed to small
    action_dropout: float = 0.1      # p of the null action in the head (classifier-free guidance)
    shortcut_fraction: float = 0.25  # share of each batch trained on the self-consistency target
    rollout_iters: int = 0           # Jacobi passes that replace context with the model's own frames (0: off)
    rollout_fraction: float = 0.5    # share of windows whose context is the model's own rollout
    change_weight: float = 0.0       # extra weight on tokens that change from the last frame (change_weights)
    object_weight: float = 0.0       # extra weight on tokens that hold a declared object (object_weights)

    def __call__(self, model: WorldModel, z: torch.Tensor, actions: torch.Tensor,
                 objects: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean loss over windows z (B, T, C, h, w) of normalised latents with actions (B, T, A), and per-sample
        diagnostics (tau, loss, whether a self-consistency sample, its level); objects (B, T, N): which tokens hold a
        declared object, needed when object_weight > 0."""
        cfg = model.cfg
        B, T = z.shape[:2]
        if self.object_weight > 0 and (objects is None or objects.shape != (B, T, cfg.tokens_per_frame)):
            raise ValueError(f"object_weight={self.object_weight} needs object masks of shape "
                             f"{(B, T, cfg.tokens_per_frame)}, got {None if objects is None else tuple(objects.shape)}")
        dev, M = z.device, B * (T - 1)
        context = z
        n_own = int(round(B * self.rollout_fraction)) if self.rollout_iters > 0 else 0
        if n_own:  # the first n_own windows see the model's own frames as context; targets stay real
            context = torch.cat([own_rollout(model, z[:n_own], actions[:n_own], self.rollout_iters), z[n_own:]])
        levels = self.context_noise_max * torch.rand(B, T, device=dev) ** 2               # (B, T)
        z_ctx = model.corrupt(context, levels, torch.randn(z.shape, device=dev, dtype=z.dtype))
        h = model.backbone(model.patchify(z_ctx), actions, levels, model.rope)           # (B, T, N, D)
        h = h[:, :-1].reshape(M, *h.shape[2:])                                           # (M, N, D) context of the next
        data = model.patchify(z[:, 1:]).reshape(M, -1, cfg.token_dim)                    # (M, N, Dt)
        act = actions[:, 1:].reshape(M, -1)                                              # (M, A)
        drop = torch.rand(M, device=dev) < self.action_dropout
        noise = torch.randn_like(data)
        tau, step_idx, n_sc = self.draw_steps(M, cfg.shortcut_levels, dev)
        x_tau = (1 - tau)[:, None, None] * noise + tau[:, None, None] * data
        target = data - noise
        if n_sc:
            sc = shortcut_target(model, x_tau[:n_sc], h[:n_sc].detach(), tau[:n_sc], step_idx[:n_sc], act[:n_sc],
                                 drop[:n_sc])
            target = torch.cat([sc.to(target.dtype), target[n_sc:]])
        pred = model.velocity(x_tau, h, tau, step_idx, act, drop)
        err = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=2)   # (M, N)
        if self.change_weight > 0:
            err = err * change_weights(model, z, self.change_weight)
        if self.object_weight > 0:
            err = err * object_weights(objects, self.object_weight)
        per_sample = err.mean(dim=1)                                                     # (M,)
        is_sc = torch.zeros(M, dtype=torch.bool, device=dev)
        is_sc[:n_sc] = True
        return per_sample.mean(), {"tau": tau.detach(), "loss": per_sample.detach(), "shortcut": is_sc,
                                   "level": step_idx}

    def draw_steps(self, M: int, levels: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """tau (M,), the step level per sample (M,) and how many of the first samples are self-consistency ones: those
        get a level j in [0, levels - 1] (d = 2^-j) and tau on the grid of d; the rest level `levels` (d = 0) and
        tau ~ U(0, 1)."""
        n_sc = int(round(M * self.shortcut_fraction)) if levels > 1 else 0
        step_idx = torch.full((M,), levels, dtype=torch.long, device=dev)
        tau = torch.rand(M, device=dev)
        if n_sc:
            j = torch.randint(0, levels, (n_sc,), device=dev)
            k = torch.floor(torch.rand(n_sc, device=dev) * (2.0 ** j.float()))
            step_idx[:n_sc] = j
            tau[:n_sc] = k * 2.0 ** -j.float()
        return tau, step_idx, n_sc


@torch.no_grad()
def shortcut_target(model: WorldModel, x: torch.Tensor, h: torch.Tensor, tau: torch.Tensor, level: torch.Tensor,
                    act: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """The self-consistency target of a step of size d = 2^-level: the mean velocity of two steps of d / 2 (level + 1;
    the finest level's half is taken at d = 0, index `shortcut_levels`)."""
    d = 2.0 ** -level.float()
    half = torch.clamp(level + 1, max=model.cfg.shortcut_levels)
    v1 = model.velocity(x, h, tau, half, act, drop)
    v2 = model.velocity(x + (d / 2)[:, None, None] * v1, h, tau + d / 2, half, act, drop)
    return (v1 + v2) / 2


@torch.no_grad()
def own_rollout(model: WorldModel, z: torch.Tensor, actions: torch.Tensor, iters: int) -> torch.Tensor:
    """The model's own version of windows z (B, T, C, h, w): frame 0 real, frames 1.. predicted in 1 step from the
    previous Jacobi pass (the first pass reads the real frames), `iters` passes."""
    cfg = model.cfg
    B, T = z.shape[:2]
    M = B * (T - 1)
    level = torch.full((B, T), cfg.context_noise, device=z.device)
    act = actions[:, 1:].reshape(M, -1)
    cur = z
    for _ in range(iters):
        ctx = model.corrupt(cur, level, torch.randn_like(cur))
        h = model.backbone(model.patchify(ctx), actions, level, model.rope)[:, :-1]     # (B, T-1, N, D)
        noise = torch.randn(M, cfg.tokens_per_frame, cfg.token_dim, device=z.device, dtype=z.dtype)
        nxt = model.sample(h.reshape(M, *h.shape[2:]), act, noise, steps=1)             # (M, N, Dt)
        cur = torch.cat([z[:, :1], model.unpatchify(nxt.to(z.dtype)).reshape(B, T - 1, *z.shape[2:])], dim=1)
    return cur


def change_weights(model: WorldModel, z: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-token loss weights (B * (T - 1), N) of the next frames of windows z (B, T, C, h, w), mean 1.

    A token's weight grows with how much it changes from the frame before, relative to the batch's mean change:
    w = 1 + weight * min(change / mean change, 8), then scaled to mean 1. On a game frame most tokens are static
    background that the model copies forward; the few that move (the avatar, a ball, enemies) decide whether the dream
    is still a game but carry a small share of a uniform loss, so a model can leave them blurred, and a blurred sprite
    fades a little more with every frame it is fed back.
    """
    tok = model.patchify(z.float())                                 # (B, T, N, Dt)
    change = (tok[:, 1:] - tok[:, :-1]).pow(2).mean(dim=-1)         # (B, T-1, N)
    rel = (change / change.mean().clamp_min(1e-8)).clamp(max=8.0)
    w = 1.0 + weight * rel
    return (w / w.mean()).reshape(-1, w.shape[-1]).detach()


def object_weights(objects: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-token loss weights (B * (T - 1), N), mean 1, from windows' object masks (B, T, N) (1 where a token holds a
    pixel of an object the game's probes declare): 1 + weight on the next frames' object tokens.

    The change weights miss a sprite that stands still: an avatar against a wall (two thirds of the built-in game's
    frames) changes nothing, so a uniform loss leaves it as blurred as the background would allow."""
    w = 1.0 + weight * objects[:, 1:].float()
    return (w / w.mean()).reshape(-1, w.shape[-1]).detach()


def tau_bin_stats(stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flow-matching loss per tau bin + the self-consistency loss (and at d = 1, the step 1-step sampling takes).

    0-d tensors on the loss's device, computed with masks rather than boolean indexing, which would wait for the
    device; a bin with no sample this step is NaN, which the training loop leaves out of its average."""
    tau, loss, sc = stats["tau"].float(), stats["loss"].float(), stats["shortcut"]
    out = {}
    for b in range(TAU_BINS):
        sel = ~sc & (tau >= b / TAU_BINS) & (tau < (b + 1) / TAU_BINS)
        out[f"loss_tau{b}"] = torch.where(sel, loss, 0.0).sum() / sel.sum()  # 0 / 0: NaN, "no sample"
    out["loss_shortcut"] = torch.where(sc, loss, 0.0).sum() / sc.sum()
    one = sc & (stats["level"] == 0)
    out["loss_d1"] = torch.where(one, loss, 0.0).sum() / one.sum()
    return out
