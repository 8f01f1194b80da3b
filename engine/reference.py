"""The plain rollout, top to bottom: what a Session computes, written without a KV cache, a runner or a graph.

    frames, latents = rollout(ae, wm, context, context_actions, actions, seed=0, steps=2, guidance=1.5,
                              context_noise=0.05)

This is the spec. Every runner (torch eager, CUDA graphs, the Triton kernels, onnxruntime, TensorRT) must give these
latents within its precision's tolerance (tests/test_reference.py). Per generated frame:

  1. Context. Every frame so far, oldest first: the encoded real frames, then the generated ones. Each is
     normalised, corrupted with context noise at the run-time level, (1 - level) z + level noise, and patchified into
     N tokens. Frame t's corruption noise is stream 1 of engine.noise at counter t.
  2. Backbone. Run from scratch over the whole history, block-causal with a window of W frames: a frame attends to
     itself and the W - 1 frames before it. The ring KV cache computes the same thing one frame at a time: a frame's
     keys are made once, when it enters, from the frames it can see then. Its output for the newest frame is h.
  3. Head. Start from noise (stream 0, counter = the index of the frame being predicted) and take `steps` Euler steps
     of the shortcut schedule. With guidance g != 1 each step runs the head for the action and for the null action
     and mixes v_null + g (v_action - v_null) (classifier-free guidance).
  4. Decode. The latent becomes a uint8 frame, and the latent joins the context under its action.

World b of a session seeded s draws from seed b + s * 1_000_003 (engine.step.world_seeds), as the session does.
The modules run as given: pass them in float32 for the spec.
"""

from __future__ import annotations

import torch

from engine.autoencoder import Autoencoder, frames_to_tensor, tensor_to_frames
from engine.noise import counter_normal
from engine.step import NOISE_CONTEXT, NOISE_HEAD, world_seeds
from engine.world_model import WorldModel


def window_mask(frames: int, tokens_per_frame: int, window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (T*N, T*N): True where a token of frame t may attend a token of frame s, t - window < s <= t."""
    f = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)   # (T*N,) the frame of each token
    return (f[:, None] >= f[None, :]) & (f[:, None] - f[None, :] < window)


def backbone(wm: WorldModel, tokens: torch.Tensor, actions: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The backbone over a whole history, windowed: tokens (B, T, N, Dt), actions (B, T, A), levels (B, T) ->
    (B, T, N, D). (Backbone.forward, with the window of the run-time ring instead of the full causal mask.)"""
    bb, (B, T, N, _) = wm.backbone, tokens.shape
    x = bb.embed(tokens, actions, levels).reshape(B, T * N, -1)      # (B, T*N, D)
    cos, sin = wm.rope.frames(torch.arange(T, device=x.device))     # (T, N, hd/2): frame t at time t
    cos, sin = cos.reshape(T * N, -1), sin.reshape(T * N, -1)        # (T*N, hd/2)
    mask = window_mask(T, N, wm.cfg.context_frames, x.device)
    for block in bb.blocks:
        x = block(x, cos, sin, mask)
    return bb.norm_out(x).reshape(B, T, N, -1)                       # (B, T, N, D)


@torch.no_grad()
def rollout(ae: Autoencoder, wm: WorldModel, context: torch.Tensor, context_actions: torch.Tensor,
            actions: torch.Tensor, seed: int | torch.Tensor = 0, steps: int = 1, guidance: float = 1.0,
            context_noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream len(actions) frames after real ones, on the device of `context` (where the modules are).

    context (B, T, H, W, 3) uint8 real frames; context_actions (B, T, A), the action that led to each; actions
    (n, B, A), one per generated frame; seed: the session's seed (int) or each world's (B,) long.
    Returns frames (n, B, H, W, 3) uint8 and latents (n, B, C, h, w).
    """
    (B, T), dev = context.shape[:2], context.device
    seeds = world_seeds(seed, B, dev) if isinstance(seed, int) else seed.to(dev, torch.long)   # (B,)
    level = torch.full((B,), float(context_noise), device=dev)
    c = wm.cfg

    # 1. the context: encoded real frames, then each generated latent as it is made
    latents = ae.encode(frames_to_tensor(context.reshape(B * T, *context.shape[2:])))   # (B*T, C, h, w)
    history = list(latents.reshape(B, T, *latents.shape[1:]).unbind(1))                # T x (B, C, h, w)
    history_actions = list(context_actions.to(dev, torch.float32).unbind(1))            # T x (B, A)

    out_frames, out_latents = [], []
    for action in actions.to(dev, torch.float32):                                       # (B, A)
        t = len(history)   # the index of the frame being predicted
        tokens = []
        for i, z in enumerate(history):
            counter = torch.full((B,), i, device=dev)                                 # frame i's draw
            noise = counter_normal(seeds, counter, tuple(z.shape[1:]), NOISE_CONTEXT)  # (B, C, h, w)
            tokens.append(wm.patchify(wm.corrupt(wm.normalize(z), level, noise)))    # (B, N, Dt)

        # 2. the backbone over the whole history; h is its output for the newest frame
        h = backbone(wm, torch.stack(tokens, 1), torch.stack(history_actions, 1), level[:, None].expand(B, t))
        h = h[:, -1].float()                                                            # (B, N, D)

        # 3. the head: Euler steps from noise, guided (WorldModel.sample)
        counter = torch.full((B,), t, device=dev)                                       # frame t's draw
        x = counter_normal(seeds, counter, (c.tokens_per_frame, c.token_dim), NOISE_HEAD)   # (B, N, Dt)
        x = wm.sample(h, action, x, steps, guidance)
        z = wm.denormalize(wm.unpatchify(x.float()))                                    # (B, C, h, w)

        # 4. decode, and the new latent joins the context
        out_frames.append(tensor_to_frames(ae.decode(z).float()))                       # (B, H, W, 3)
        out_latents.append(z)
        history.append(z)
        history_actions.append(action)
    return torch.stack(out_frames), torch.stack(out_latents)
