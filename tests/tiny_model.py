"""A tiny random Reverie model for fast tests: 32x32 frames, 4x4x16 latents, d=32, 2 + 1 layers, W=4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.actions import ActionSpec
from engine.autoencoder import Autoencoder
from engine.checkpoint import save_checkpoint
from engine.config import AutoencoderConfig, ModelConfig
from engine.world_model import WorldModel

SPEC = ActionSpec(game="builtin:gems", buttons=("up", "down", "left", "right"))
FRAME = (32, 32, 3)
W = 4  # context frames (ring capacity)


def tiny_config(spec: ActionSpec = SPEC, context_frames: int = W, time_period: int = 4096,
                backbone_actions: bool = True, size: int = FRAME[0]) -> ModelConfig:
    """The tiny model's configuration for size x size frames (32 unless an agent's CNN needs 36 or more)."""
    cfg = ModelConfig.from_name("tiny", action_dim=spec.size)
    cfg.autoencoder = AutoencoderConfig(height=size, width=size, latent_channels=16,
                                        encoder_channels=(8, 8, 8), decoder_channels=(8, 8, 8))
    wm = cfg.world_model
    wm.latent_height = wm.latent_width = size // 8
    wm.d_model, wm.heads, wm.backbone_layers, wm.head_layers = 32, 2, 2, 1
    wm.context_frames, wm.time_period, wm.backbone_actions = context_frames, time_period, backbone_actions
    cfg.validate()
    return cfg


def tiny_models(seed: int = 0, spec: ActionSpec = SPEC, **cfg_kwargs) -> tuple[Autoencoder, WorldModel]:
    """Random autoencoder + world model; the zero-initialised adaLN and output layers get random weights too, so
    frames depend on noise and actions."""
    cfg = tiny_config(spec, **cfg_kwargs)
    torch.manual_seed(seed)
    ae, wm = Autoencoder(cfg.autoencoder), WorldModel(cfg.world_model)
    with torch.no_grad():
        for m in [blk.ada for blk in wm.head.blocks] + [wm.head.ada_out, wm.head.out]:
            nn.init.normal_(m.weight, std=0.1)
            nn.init.normal_(m.bias, std=0.1)
        nn.init.normal_(wm.head.null_action, std=0.5)
        wm.latent_mean.normal_(std=0.1)
        wm.latent_std.uniform_(0.5, 1.5)
    return ae, wm


def start_frames(T: int = 2, seed: int = 0, size: int = FRAME[0]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (T, size, size, 3), dtype=np.uint8)


def tiny_checkpoint(path: str | Path, spec: ActionSpec = SPEC, with_wm: bool = True, start: int = 2,
                    **cfg_kwargs) -> Path:
    """A tiny random checkpoint with a built-in start state of `start` frames."""
    ae, wm = tiny_models(spec=spec, **cfg_kwargs)
    cfg = ModelConfig(name="test", autoencoder=ae.cfg, world_model=wm.cfg)
    size = cfg_kwargs.get("size", FRAME[0])
    parts = {"ae": ae.state_dict(), "start": {"frames": torch.from_numpy(start_frames(start, size=size)),
                                              "actions": torch.zeros(start, spec.size)}}
    if with_wm:
        parts["wm"] = wm.state_dict()
    return save_checkpoint(path, kind="world_model" if with_wm else "autoencoder", config=cfg, action_spec=spec,
                           parts=parts)


def play_checkpoint(path: str | Path, spec: ActionSpec = SPEC) -> Path:
    """The tiny preset at its own 64x64 frames with a one-layer backbone and a context of 4, every weight random (the
    zero-initialised adaLN layers would leave a fresh head blind to the action): the model of the play tests."""
    cfg = ModelConfig.from_name("tiny", action_dim=spec.size)
    wm_cfg = cfg.world_model
    wm_cfg.d_model, wm_cfg.heads, wm_cfg.backbone_layers, wm_cfg.head_layers, wm_cfg.context_frames = 32, 2, 1, 1, 4
    torch.manual_seed(0)
    ae, wm = Autoencoder(cfg.autoencoder), WorldModel(cfg.world_model)
    with torch.no_grad():
        for p in wm.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return save_checkpoint(path, kind="world_model", config=cfg, action_spec=spec,
                           parts={"ae": ae.state_dict(), "wm": wm.state_dict()}, data={"env_ids": [spec.game]})
