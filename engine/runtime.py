"""engine.runtime.Runtime: a world model ready to run, shared by a session and its forks.

Loading is done once: the checkpoint read and checked, the autoencoder and world model placed on the device in their
precision, the backend chosen and its runner made (engine.runners). A Session owns a Runtime; `Session.fork` makes a
new session over the same one, so that a branch of a world shares the weights, the runner and its graphs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import knobs
from engine.actions import ActionSpec
from engine.autoencoder import Autoencoder
from engine.checkpoint import Checkpoint, load_checkpoint, load_world_model
from engine.inputs import SessionError
from engine.runners import make_runner, place_models, resolve_backend, resolve_dtype
from engine.world_model import WorldModel

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default.safetensors"


@dataclass(frozen=True)
class Runtime:
    """A loaded model on its device with its runner, for `batch` worlds (exported graphs have a fixed batch)."""

    spec: ActionSpec
    ae: Autoencoder
    wm: WorldModel
    runner: Any
    backend: str
    dtype: torch.dtype
    device: torch.device
    batch: int
    checkpoint: Checkpoint | None = None

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.ae.cfg.height, self.ae.cfg.width, 3)

    @classmethod
    def load(cls, checkpoint: str | os.PathLike | Checkpoint | None = None, backend: str = "auto",
             device: str | torch.device = "cpu", batch: int = 1, dtype: str = "auto", threads: int | None = None,
             game: str | None = None, models: tuple[Autoencoder, WorldModel, ActionSpec] | None = None,
             graphs: str | os.PathLike | None = None, kernels: str = "auto") -> Runtime:
        """Load a checkpoint (the shipped default when None) or take `models`; the arguments are Session's."""
        batch = knobs.check_batch(batch)
        if threads is not None:
            torch.set_num_threads(knobs.check_threads(threads))
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SessionError("device 'cuda' asked for, but torch sees no CUDA device")
        if models is None:
            ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint or DEFAULT_MODEL)
            (ae, wm), spec = load_world_model(ckpt), ckpt.action_spec
        else:
            (ae, wm, spec), ckpt = models, None
        if game is not None and game != spec.game:
            raise SessionError(f"the model was trained on {spec.game!r}, not {game!r}")
        if kernels == "triton" and backend == "auto":
            backend = "torch"   # the kernels are the torch runner's
        backend, folder = resolve_backend(backend, device, getattr(ckpt, "path", None), batch, graphs)
        dtype_ = resolve_dtype(dtype, backend, device)
        ae, wm = place_models(ae, wm, device, dtype_)
        runner = make_runner(backend, wm, ae, device, dtype_, folder, threads or torch.get_num_threads(), kernels)
        return cls(spec, ae, wm, runner, backend, dtype_, device, batch, ckpt)
