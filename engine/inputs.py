"""What a caller may hand the session, turned into tensors or refused with a clear error.

Actions come as a vector, a (B, A) array, or button names (for every world, or per world); frames as uint8 RGB
(T, H, W, 3) for every world or (B, T, H, W, 3) per world. Every refusal is a SessionError naming what was wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.actions import ActionSpec, ActionSpecError
from engine.errors import ReverieError


class SessionError(ReverieError, ValueError):
    """A bad input to the session: wrong shapes, unknown buttons, another game's state."""


def _names(action: Any) -> bool:
    return isinstance(action, (list, tuple)) and bool(action) and all(isinstance(a, str) for a in action)


def actions_array(spec: ActionSpec, action: Any, batch: int, where: str = "action") -> np.ndarray:
    """Action vector(s) -> float32 (B, A)."""
    try:
        if _names(action):
            action = spec.encode(action)
        elif isinstance(action, (list, tuple)) and action and all(isinstance(a, (list, tuple, set)) for a in action) \
                and all(isinstance(x, str) for a in action for x in a):
            action = np.stack([spec.encode(a) for a in action])
        arr = spec.check(action, where)
    except ActionSpecError as e:
        raise SessionError(str(e)) from None
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (batch, arr.shape[0]))
    if arr.shape[0] != batch:
        raise SessionError(f"{where}: got actions for {arr.shape[0]} worlds, the session has batch={batch}")
    return np.array(arr, dtype=np.float32)  # a writable copy


def reset_actions(spec: ActionSpec, actions: Any, batch: int, frames: int) -> torch.Tensor:
    """The actions that led to each context frame -> (B, T, A) float32 (null actions when None)."""
    if actions is None:
        return torch.zeros(batch, frames, spec.size)
    try:
        arr = spec.check(actions, "reset actions")
    except ActionSpecError as e:
        raise SessionError(str(e)) from None
    if arr.ndim == 2:
        arr = np.broadcast_to(arr, (batch, *arr.shape))
    if arr.shape[:2] != (batch, frames):
        raise SessionError(f"reset actions: need one per frame, shape ({frames}, {spec.size}) or "
                           f"({batch}, {frames}, {spec.size}); got {arr.shape}")
    return torch.from_numpy(np.array(arr, dtype=np.float32))


def frames_tensor(frames: Any, frame_shape: tuple[int, int, int], batch: int) -> torch.Tensor:
    """(T, H, W, 3) or (B, T, H, W, 3) uint8 -> (B, T, H, W, 3) uint8 tensor."""
    arr = torch.as_tensor(np.asarray(frames))
    if arr.dtype != torch.uint8:
        raise SessionError(f"frames must be uint8 RGB, got {arr.dtype}")
    if arr.ndim == 4:
        arr = arr[None].expand(batch, *arr.shape)
    if arr.ndim != 5 or tuple(arr.shape[2:]) != frame_shape or arr.shape[0] != batch:
        raise SessionError(f"frames must be (T, {', '.join(map(str, frame_shape))}) or ({batch}, T, ...) uint8 for "
                           f"this model, got {tuple(arr.shape)}")
    if arr.shape[1] < 1:
        raise SessionError("reset needs at least one frame")
    return arr
