"""One frame of B worlds, defined once: the worlds' preallocated tensors and the three parts of a step over them.

Per frame the head samples the next latent from counter-based noise in S Euler steps (classifier-free guidance as one
batch of 2; scale 1.0 runs the conditioned half alone), the decoder turns it into a frame, and one backbone pass
appends it to the ring KV cache of W frames. Each part runs graphs of engine.graphs through a runner (engine.runners)
and reads and writes only the tensors of `World`, allocated once: memory never grows, and a CUDA graph can capture any
part. engine.scheduler decides when each part runs; engine.reference is the same rollout written plainly, without a
cache or a runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.config import WorldModelConfig
from engine.knobs import MAX_SAMPLING_STEPS
from engine.kv_cache import RingKVCache
from engine.world_model import WorldModel, euler_schedule

SEED_STRIDE = 1_000_003   # world b of seed s draws its noise from seed b + s * SEED_STRIDE
NOISE_HEAD, NOISE_CONTEXT = 0, 1   # engine.noise streams: the head's starting noise, the context corruption

EulerStep = tuple[torch.Tensor, torch.Tensor, torch.Tensor]   # (tau, shortcut level, step size d), each (1,)
# sampler(x, schedule, guided) -> tokens: noise tokens (B, N, Dt) to the next frame's tokens (B, N, Dt)
Sampler = Callable[[torch.Tensor, list[EulerStep], bool], torch.Tensor]


def world_seeds(seed: int, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The noise seed (B,) of each world of a session seeded with `seed`."""
    return torch.arange(batch, dtype=torch.long, device=device) + seed * SEED_STRIDE


def euler_steps(cfg: WorldModelConfig, device: torch.device) -> dict[int, list[EulerStep]]:
    """For each sampling-step count the head was trained for: its Euler steps as static device tensors."""
    return {s: [tuple(torch.tensor([v], device=device) for v in e) for e in euler_schedule(s, cfg.shortcut_levels)]
            for s in range(1, MAX_SAMPLING_STEPS + 1) if 2 ** (cfg.shortcut_levels - 1) >= s}


@dataclass
class World:
    """The tensors of B worlds: a step reads and writes exactly these, so a captured step can hold their addresses."""

    kv: RingKVCache              # keys and values of the last W frames
    seed: torch.Tensor           # (B,) long: each world's noise seed
    counter: torch.Tensor        # (B,) long: frames appended since reset, the noise counter
    h_last: torch.Tensor         # (B, N, D): the backbone's output for the newest frame
    action_buf: torch.Tensor     # (B, A): the action of the step being taken
    guidance_buf: torch.Tensor   # (1,): the guidance scale
    level_buf: torch.Tensor      # (B,): the context-noise level of every appended frame
    z_buf: torch.Tensor          # (B, C, h, w): the newest generated latent
    frame_buf: torch.Tensor      # (B, H, W, 3) uint8: the newest frame

    @classmethod
    def allocate(cls, cfg: WorldModelConfig, batch: int, frame_shape: tuple[int, int, int], cache_dtype: torch.dtype,
                 device: torch.device, seed: int = 0) -> World:
        B, dev = batch, device
        return cls(kv=RingKVCache(cfg.backbone_layers, B, cfg.heads, cfg.context_frames, cfg.tokens_per_frame,
                                  cfg.head_dim, cache_dtype, dev),
                   seed=world_seeds(seed, B, dev), counter=torch.zeros(B, dtype=torch.long, device=dev),
                   h_last=torch.zeros(B, cfg.tokens_per_frame, cfg.d_model, device=dev),
                   action_buf=torch.zeros(B, cfg.action_dim, device=dev), guidance_buf=torch.ones(1, device=dev),
                   level_buf=torch.zeros(B, device=dev),
                   z_buf=torch.zeros(B, cfg.latent_channels, cfg.latent_height, cfg.latent_width, device=dev),
                   frame_buf=torch.zeros(B, *frame_shape, dtype=torch.uint8, device=dev))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The worlds' state by save-game name: what a save-game holds and a capture's warm-up restores."""
        kv = self.kv
        return {"k_cache": kv.k, "v_cache": kv.v, "valid": kv.valid, "frame_count": kv.count, "seed": self.seed,
                "counter": self.counter, "h_last": self.h_last, "frame_buf": self.frame_buf, "z_buf": self.z_buf}


class StepParts:
    """The three parts of a step over a World, run by a runner. Called directly (research code) they run eagerly."""

    def __init__(self, runner: Any, wm: WorldModel, world: World):
        self.runner, self.wm, self.world = runner, wm, world
        self.schedule = euler_steps(wm.cfg, world.seed.device)
        self.sampler: Sampler = self.euler   # replaceable: Session.set_sampler

    def backbone(self, z: torch.Tensor, actions: torch.Tensor, full: bool | None = None) -> None:
        """Append a frame's latent z (B, C, h, w), led to by `actions` (B, A), to the ring; its output goes to h_last.
        `full`: whether the ring is full (a captured pass is captured for one of the two)."""
        w, run = self.world, self.runner
        noise = run.noise(w.seed, w.counter, tuple(z.shape[1:]), NOISE_CONTEXT)
        cos, sin = self.wm.rope.frames(w.kv.count.reshape(1))   # (1, N, hd/2)
        mask = w.kv.mask(with_next=run.in_place_cache, full=w.kv.full if full is None else full)
        feeds = {"z": z, "noise": noise, "actions": actions, "level": w.level_buf, "cos": cos[0], "sin": sin[0],
                 "k_cache": w.kv.k, "v_cache": w.kv.v, "mask": mask}
        if run.in_place_cache:   # the fused step reads the ring's validity itself (kernels.ring_attention)
            feeds.update(write_index=w.kv.write_index(), valid=None if mask is None else w.kv.valid)
        h, k_new, v_new = run.run("backbone", feeds)
        w.kv.append(*((None, None) if run.in_place_cache else (k_new, v_new)))
        w.h_last.copy_(h)
        w.counter.add_(1)

    def head(self, steps: int, guided: bool) -> None:
        """Sample the next latent into z_buf: the sampler's `steps` Euler steps from the world's noise."""
        c, w = self.wm.cfg, self.world
        x = self.runner.noise(w.seed, w.counter, (c.tokens_per_frame, c.token_dim), NOISE_HEAD)   # (B, N, Dt)
        x = self.sampler(x, self.schedule[steps], guided)
        w.z_buf.copy_(self.wm.denormalize(self.wm.unpatchify(x)))   # (B, C, h, w)

    def euler(self, x: torch.Tensor, schedule: list[EulerStep], guided: bool) -> torch.Tensor:
        """The runner's Euler loop over the head graphs: noise tokens x (B, N, Dt) -> the next frame's tokens, with
        classifier-free guidance at guidance_buf's scale when `guided`."""
        w = self.world
        feeds = {"h": w.h_last, "actions": w.action_buf, "guidance": w.guidance_buf}
        for tau, level, d in schedule:
            (x,) = self.runner.run("head_cfg" if guided else "head", {**feeds, "x": x, "tau": tau, "level": level,
                                                                       "d": d})
        return x

    def decode(self) -> None:
        """Decode z_buf into frame_buf."""
        (frames,) = self.runner.run("decode", {"z": self.world.z_buf})
        self.world.frame_buf.copy_(frames)
