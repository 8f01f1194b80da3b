"""Checkpoints: one .safetensors file with the weights, the model config, the action spec, a summary of the
training data and the metrics in its metadata. No pickle anywhere: safetensors for tensors, JSON for the rest.

Tensor names are prefixed by the part they belong to: `ae.` (autoencoder), `wm.` (world model), `idm.`
(inverse-dynamics model), `reward.` (reward and episode-end model). A file may hold any subset; `kind` in the
metadata says what it was written as.
Every write goes to a temporary name in the same folder and is renamed when whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.actions import ActionSpec, ActionSpecError
from engine.config import ConfigError, ModelConfig, split_training
from engine.errors import ReverieError

FORMAT = "reverie-checkpoint"
FORMAT_VERSION = 1
# start: a built-in start state (frames, actions) for Session.reset(); agent: a policy (reverie train agent)
PARTS = ("ae", "wm", "idm", "reward", "agent", "start")


class CheckpointError(ReverieError, ValueError):
    """A checkpoint file that is missing, not Reverie's, damaged or does not fit the model it claims."""


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_target(path) as tmp:
        tmp.write_text(text)


@dataclass
class Checkpoint:
    """What a checkpoint file holds, validated."""

    path: Path
    kind: str
    config: ModelConfig
    action_spec: ActionSpec
    tensors: dict[str, dict[str, torch.Tensor]]  # part -> state dict
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def has(self, part: str) -> bool:
        return part in self.tensors

    def start_state(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The built-in start state: frames (T, H, W, 3) uint8 and the actions that led to them (T, A)."""
        st = self.tensors.get("start")
        if st is None or "frames" not in st or "actions" not in st:
            return None
        return st["frames"], st["actions"]


def save_checkpoint(path: str | os.PathLike, *, kind: str, config: ModelConfig, action_spec: ActionSpec,
                    parts: dict[str, dict[str, torch.Tensor]], data: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    half: bool = False) -> Path:
    """Write weights of the given parts ({"ae": state_dict, ...}) and metadata atomically.

    half=True stores float weights as float16 (half the size; loading casts them back to float32).
    """
    flat: dict[str, torch.Tensor] = {}
    for part, sd in parts.items():
        if part not in PARTS:
            raise ValueError(f"unknown checkpoint part {part!r}; parts are {PARTS}")
        for k, v in sd.items():
            v = v.detach().to("cpu")
            if half and v.is_floating_point():
                v = v.half()
            flat[f"{part}.{k}"] = v.contiguous()
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": kind, "config": config.to_json(),
            "action_spec": json.dumps(action_spec.to_dict()), "data": json.dumps(data or {}),
            "metrics": json.dumps(metrics or {}), "extra": json.dumps(extra or {})}
    path = Path(path)
    with atomic_target(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)
    return path


SHIPPED = Path(__file__).resolve().parent / "assets"   # the models that ship with Reverie, by name


def shipped_models() -> list[str]:
    """Names of the shipped world models (`reverie play --model breakout`): engine/assets/<name>.safetensors; the
    reward models and agents beside them (<name>.reward, <name>.agent) are found by what uses them."""
    return sorted(p.stem for p in SHIPPED.glob("*.safetensors") if "." not in p.stem)


def model_name(path: str | os.PathLike) -> str:
    """How a file that another file refers to is recorded: a shipped model by its name ("default", "default.reward"),
    which holds on any install, anything else by the path as given (no install's absolute path is written down)."""
    p = Path(path)
    if p.suffix == ".safetensors" and p.resolve().parent == SHIPPED:
        return p.stem
    return str(path)


def resolve_model(path: str | os.PathLike) -> Path:
    """A checkpoint path, or a shipped model's file for a bare name ("default", "breakout", "default.reward") that is
    not a file here."""
    p = Path(path)
    if p.exists() or len(p.parts) != 1:
        return p
    shipped = SHIPPED / (p.name if p.suffix == ".safetensors" else f"{p.name}.safetensors")
    return shipped if shipped.exists() else p


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint (a path, or a shipped model's name); raise CheckpointError saying what is wrong
    and what to do."""
    path = resolve_model(path)
    if not path.exists():
        names = ", ".join(shipped_models()) or "none installed"
        raise CheckpointError(f"{path}: no such checkpoint file (train one with 'reverie train', or pass "
                              f"--model with the path of a .safetensors file or a shipped model's name: {names})")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; pass the .safetensors file inside it")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: a safetensors file but not a Reverie checkpoint (no "
                                      f"'format: {FORMAT}' in its metadata)")
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); it may be truncated or not a "
                              "checkpoint at all") from None
    except (OSError, ValueError, RuntimeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: cannot read checkpoint ({e})") from None
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('format_version')!r}; this Reverie "
                              f"reads version {FORMAT_VERSION}")
    try:
        raw = json.loads(meta["config"])
        config = ModelConfig.from_dict(raw)
        spec = ActionSpec.from_dict(json.loads(meta["action_spec"]), where=f"{path}: action_spec")
        data, metrics, extra = (json.loads(meta.get(k, "{}")) for k in ("data", "metrics", "extra"))
    except (KeyError, json.JSONDecodeError, ConfigError, ActionSpecError) as e:
        raise CheckpointError(f"{path}: bad metadata: {e}") from None
    trained = split_training(raw.get("world_model"))[1]   # an older file's training keys: kept as its record
    if trained and isinstance(extra, dict) and "loss" not in extra:
        extra["loss"] = trained
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in flat.items():
        part, _, key = name.partition(".")
        if part not in PARTS or not key:
            raise CheckpointError(f"{path}: unexpected tensor {name!r}")
        if t.is_floating_point():
            if not torch.isfinite(t).all():
                raise CheckpointError(f"{path}: tensor {name!r} holds NaN or Inf values; the run that wrote it "
                                      "diverged")
            t = t.float()
        tensors.setdefault(part, {})[key] = t
    return Checkpoint(path, meta.get("kind", "?"), config, spec, tensors, data, metrics, extra)


def load_into(module: torch.nn.Module, ckpt: Checkpoint, part: str) -> torch.nn.Module:
    """Load one part's weights into `module`, checking names and shapes with a clear error."""
    if part not in ckpt.tensors:
        raise CheckpointError(f"{ckpt.path}: holds no '{part}' weights (it holds {sorted(ckpt.tensors)}); "
                              f"it was written as a {ckpt.kind!r} checkpoint")
    sd = ckpt.tensors[part]
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{ckpt.path}: '{part}' weights do not fit the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for k, v in own.items():
        if tuple(v.shape) != tuple(sd[k].shape):
            raise CheckpointError(f"{ckpt.path}: '{part}.{k}' has shape {tuple(sd[k].shape)}, the config says "
                                  f"{tuple(v.shape)}")
    module.load_state_dict(sd)
    return module


def load_world_model(ckpt: Checkpoint) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The autoencoder and world model of a checkpoint that has both (a clear error for an autoencoder-only one)."""
    from engine.autoencoder import Autoencoder
    from engine.world_model import WorldModel

    if not ckpt.has("wm"):
        raise CheckpointError(f"{ckpt.path}: a {ckpt.kind!r} checkpoint without world-model weights; pass the "
                              "model.safetensors written by 'reverie train wm'")
    return (load_into(Autoencoder(ckpt.config.autoencoder), ckpt, "ae"),
            load_into(WorldModel(ckpt.config.world_model), ckpt, "wm"))
