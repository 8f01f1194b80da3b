"""Model configurations: one dataclass per component, named presets, and (de)serialisation to JSON.

Presets (`ModelConfig.from_name`):
  tiny   64x64 frames, 8x8x16 latents (patch 2: 16 tokens a frame), d=192, 6 backbone + 3 head layers: the
         default model, trainable and playable on a 2-core CPU.
  small  128x128 frames, 16x16x16 latents (patch 2: 64 tokens), d=384, 8 + 3 layers.
  oasis  360x640 frames, 18x32x16 latents (patch 2: 144 tokens), d=1024, 16 backbone layers: GPU speed work.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ReverieError


class ConfigError(ReverieError, ValueError):
    """A configuration that cannot describe a model."""


@dataclass
class AutoencoderConfig:
    """Convolutional autoencoder: frame (3, H, W) <-> latent grid (C, H/f, W/f), f = product of strides."""

    height: int = 64
    width: int = 64
    latent_channels: int = 16
    strides: tuple[int, ...] = (2, 2, 2)        # f = 8
    encoder_channels: tuple[int, ...] = (16, 32, 64)
    decoder_channels: tuple[int, ...] = (128, 64, 32)  # one per stride, from the latent up to the frame
    decoder_blocks: int = 1                     # residual blocks per decoder stage
    decoder_noise: float = 0.25                 # max std of latent noise while training, relative to the latent std
    mse_loss_weight: float = 1.0
    l1_loss_weight: float = 0.05
    freq_loss_weight: float = 0.05              # weight of the FFT-magnitude term
    change_weight: float = 0.0                  # training: extra loss weight on pixels that changed from the last
                                                # frame (a ball, a cursor), so small moving things are not erased

    @property
    def factor(self) -> int:
        f = 1
        for s in self.strides:
            f *= s
        return f

    @property
    def latent_height(self) -> int:
        return self.height // self.factor

    @property
    def latent_width(self) -> int:
        return self.width // self.factor

    def validate(self) -> None:
        if len(self.strides) != len(self.encoder_channels) or len(self.strides) != len(self.decoder_channels):
            raise ConfigError("autoencoder: strides, encoder_channels and decoder_channels need one entry per stage")
        if self.height % self.factor or self.width % self.factor:
            raise ConfigError(f"autoencoder: frame {self.height}x{self.width} is not divisible by f={self.factor}")
        if not 1 <= self.latent_channels <= 64:
            raise ConfigError(f"autoencoder: latent_channels={self.latent_channels} out of range 1..64")
        if not 0.0 <= self.decoder_noise <= 10.0:
            raise ConfigError(f"autoencoder: decoder_noise={self.decoder_noise} must be in [0, 10]")
        if not 0.0 <= self.change_weight <= 1000.0:
            raise ConfigError(f"autoencoder: change_weight={self.change_weight} must be in [0, 1000]")


@dataclass
class WorldModelConfig:
    """Causal backbone over frame tokens + few-step shortcut diffusion head over the next frame's tokens."""

    latent_channels: int = 16
    latent_height: int = 8
    latent_width: int = 8
    patch: int = 2                      # tokens are patch x patch cells of the latent grid
    action_dim: int = 4
    d_model: int = 192
    heads: int = 3
    backbone_layers: int = 6
    head_layers: int = 3
    mlp_ratio: float = 4.0
    context_frames: int = 16            # W: training window and KV-cache capacity in frames
    rope_base: float = 100.0            # spatial RoPE base
    time_period: int = 4096             # temporal RoPE is exactly periodic in this many frames (ring positions)
    context_noise: float = 0.05         # run time: the context's fixed noise level (training draws it at random)
    sampling_steps: int = 1             # run time: default head steps per frame (eval --write-model records it)
    guidance: float = 1.0               # run time: default classifier-free guidance scale (likewise)
    backbone_actions: bool = True       # the backbone also reads the action that led to each frame; off: the
                                        # action enters at the head only, where the frame it leads to is made
    shortcut_levels: int = 6            # step sizes d = 1, 1/2, ..., 1/2^(levels-1); index `levels` means d=0

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, columns) of a frame's tokens, row-major as the model patchifies them."""
        return self.latent_height // self.patch, self.latent_width // self.patch

    @property
    def tokens_per_frame(self) -> int:
        return self.token_grid[0] * self.token_grid[1]

    @property
    def token_dim(self) -> int:
        return self.latent_channels * self.patch * self.patch

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def validate(self) -> None:
        if self.latent_height % self.patch or self.latent_width % self.patch:
            raise ConfigError(f"world model: latent {self.latent_height}x{self.latent_width} not divisible by "
                              f"patch {self.patch}")
        if self.d_model % self.heads or self.head_dim % 8:
            raise ConfigError(f"world model: d_model={self.d_model} must split into heads={self.heads} of a "
                              "multiple of 8")
        if self.context_frames < 2:
            raise ConfigError("world model: context_frames must be >= 2")
        if self.action_dim < 1:
            raise ConfigError("world model: action_dim must be >= 1")


@dataclass
class ModelConfig:
    """The whole model: autoencoder + world model, with the preset name it came from."""

    name: str = "tiny"
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)

    def validate(self) -> None:
        self.autoencoder.validate()
        self.world_model.validate()
        ae, wm = self.autoencoder, self.world_model
        if (ae.latent_channels, ae.latent_height, ae.latent_width) != (wm.latent_channels, wm.latent_height,
                                                                       wm.latent_width):
            raise ConfigError("world model latent shape does not match the autoencoder's "
                              f"({wm.latent_channels}x{wm.latent_height}x{wm.latent_width} vs "
                              f"{ae.latent_channels}x{ae.latent_height}x{ae.latent_width})")

    @classmethod
    def from_name(cls, name: str, action_dim: int = 4) -> ModelConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        cfg = PRESETS[name]()
        cfg.world_model.action_dim = action_dim
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """A config from its JSON form; a world model's training keys of older files are set aside (split_training)."""
        try:
            ae = _build(AutoencoderConfig, d["autoencoder"])
            wm = _build(WorldModelConfig, split_training(d["world_model"])[0])
            cfg = cls(name=str(d.get("name", "custom")), autoencoder=ae, world_model=wm)
            cfg.validate()
        except (KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"model config: {e}") from None
        return cfg


# Keys of the world model's config in files written before its training loss moved out of the architecture (to
# train/training/wm_loss.py): a record of how the model was trained, set aside on reading. `head_patch` is the finer
# head that was measured and removed (docs/research/avatar.md): 0 (none) reads, any other value is refused.
TRAINING_KEYS = ("context_noise_max", "action_dropout", "shortcut_fraction", "shortcut_decay", "rollout_iters",
                 "rollout_fraction", "change_weight", "object_weight")


def split_training(world_model: Any) -> tuple[Any, dict[str, Any]]:
    """A world model's config dict -> (its architecture and run-time keys, the training keys older files carry)."""
    if not isinstance(world_model, dict):
        return world_model, {}
    if world_model.get("head_patch", 0) != 0:
        raise ConfigError(f"world model: head_patch={world_model['head_patch']}: a head with finer tokens than the "
                          "backbone, which this Reverie no longer has (measured and not adopted); retrain the model "
                          "without it")
    arch = {k: v for k, v in world_model.items() if k not in TRAINING_KEYS and k != "head_patch"}
    return arch, {k: world_model[k] for k in TRAINING_KEYS if k in world_model}


def _build(kind: type, d: Any) -> Any:
    """A config dataclass from a dict, checking names and the type of every field against its default."""
    if not isinstance(d, dict):
        raise ConfigError(f"{kind.__name__}: expected a mapping, got {type(d).__name__}")
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(kind)}
    unknown = sorted(set(d) - set(defaults))
    if unknown:
        raise ConfigError(f"{kind.__name__}: unknown fields {unknown}")
    kw = {}
    for k, v in d.items():
        want = defaults[k]
        if isinstance(want, tuple):
            ok = isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            v = tuple(v) if ok else v
        elif isinstance(want, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        else:
            ok = isinstance(v, type(want)) and not (isinstance(v, bool) and not isinstance(want, bool))
        if not ok:
            raise ConfigError(f"{kind.__name__}.{k}: expected {type(want).__name__}, got {v!r}")
        kw[k] = v
    return kind(**kw)


def _tiny() -> ModelConfig:
    return ModelConfig("tiny")


def _small() -> ModelConfig:
    ae = AutoencoderConfig(height=128, width=128, encoder_channels=(32, 64, 128), decoder_channels=(128, 64, 32))
    wm = WorldModelConfig(latent_height=16, latent_width=16, patch=2, d_model=384, heads=6, backbone_layers=8,
                          head_layers=3)
    return ModelConfig("small", ae, wm)


def _oasis() -> ModelConfig:
    ae = AutoencoderConfig(height=360, width=640, strides=(2, 2, 5), encoder_channels=(64, 128, 256),
                           decoder_channels=(128, 96, 64))
    wm = WorldModelConfig(latent_height=18, latent_width=32, patch=2, d_model=1024, heads=16, backbone_layers=16,
                          head_layers=4, context_frames=32)
    return ModelConfig("oasis", ae, wm)


PRESETS = {"tiny": _tiny, "small": _small, "oasis": _oasis}
