"""Save-games on disk: a Session.state() as one .safetensors file, tensors plus JSON metadata, no pickle.

Written under a temporary name and renamed when whole; bf16 tensors are stored as float32 (safetensors readers
without bf16 still open them, and loading casts back to the session's type).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.checkpoint import atomic_target
from engine.inputs import SessionError


def write_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a Session.state() to `path` atomically."""
    meta = {"format": str(state["format"]), "game": state["game"], "config": json.dumps(state["config"]),
            "batch": str(state["batch"]), "primed": str(int(state["primed"]))}
    tensors = {k: (v.float() if v.dtype == torch.bfloat16 else v).contiguous() for k, v in state["tensors"].items()}
    path = Path(path)
    with atomic_target(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """A save-game file back as a Session.state() dict; SessionError when it is not one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        st = {"format": int(meta["format"]), "game": meta["game"], "config": json.loads(meta["config"]),
              "batch": int(meta["batch"]), "primed": meta["primed"] == "1", "tensors": tensors}
    except (OSError, SafetensorError, KeyError, ValueError) as e:
        raise SessionError(f"{path}: not a readable Reverie save-game ({e}); pass a file written by Session.save "
                           "or the play window's save key") from None
    st["config"] = {k: tuple(v) if isinstance(v, list) else v for k, v in st["config"].items()}
    return st
