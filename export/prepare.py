"""Make ready what a runtime backend needs before a Session is made: the front ends' one call into export/.

    backend, graphs = prepare_backend(ckpt, "auto", batch=1, device="cpu")
    session = Session(ckpt, backend=backend, graphs=graphs, device="cpu")

`auto` resolves to the fastest backend for the device (engine.runners.default_backend): onnxruntime on CPU where
installed, torch (CUDA graphs) on CUDA. onnxruntime and tensorrt need the checkpoint's step graphs exported
(export.onnx, cached per checkpoint and batch); tensorrt also needs engines built from them (export.tensorrt).
Both happen once and are cached, under a file lock so that players started together export once.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.checkpoint import Checkpoint, load_checkpoint
from engine.runners import BACKENDS, default_backend
from engine.session import SessionError


def prepare_backend(checkpoint: str | os.PathLike | Checkpoint, backend: str, batch: int,
                    device: str | torch.device = "cpu", precision: str = "fp16",
                    quiet: bool = False) -> tuple[str, Path | None]:
    """(resolved backend, graphs folder or None for torch); exports and builds what is missing."""
    if backend == "auto":
        backend = default_backend(device)
    if backend not in BACKENDS:
        raise SessionError(f"backend {backend!r}: choose one of auto, {', '.join(BACKENDS)}")
    if backend == "torch":
        return backend, None
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if backend == "tensorrt":
        from export.tensorrt import ensure_engines

        return backend, ensure_engines(ckpt, batch, precision, torch.device(device), quiet=quiet)
    from export.onnx import ensure_graphs

    return backend, ensure_graphs(ckpt, batch, quiet=quiet)
