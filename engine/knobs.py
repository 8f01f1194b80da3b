"""The session's numeric knobs, checked once: the Session, `reverie play`, `bench` and `eval` all call these.

A knob that is NaN, infinite, out of range or of the wrong type is refused with a message that names it and its
range: `reverie play --guidance nan` used to be accepted and turned every later frame black. Each check returns the
value in its canonical Python type; `arg_type` wraps one as an argparse `type=` so the CLIs fail at parse time.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from engine.inputs import SessionError

MAX_SAMPLING_STEPS = 4          # head Euler steps per frame the shortcut head is trained for (1, 2, 3 or 4)
MAX_GUIDANCE = 100.0            # classifier-free guidance beyond this is numerically meaningless
MAX_BATCH = 4096                # worlds stepped together; a typo guard, far above any GPU's memory for the presets
MAX_FPS = 1000.0
MAX_SCALE = 32                  # window pixels per frame pixel
MAX_SEED = 2 ** 62              # the counter-based noise hashes seeds as 64-bit integers


class KnobError(SessionError):
    """A numeric setting out of its range, NaN or infinite, or of the wrong type."""


def _number(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise KnobError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise KnobError(f"{name} must be a finite number, got {value!r}")
    return v


def _integer(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise KnobError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    if not lo <= int(value) <= hi:
        raise KnobError(f"{name} must be in {lo}..{hi}, got {value!r}")
    return int(value)


def check_guidance(value: Any, name: str = "guidance") -> float:
    """Classifier-free guidance scale: finite, 0..MAX_GUIDANCE (1.0 is off)."""
    v = _number(name, value)
    if not 0.0 <= v <= MAX_GUIDANCE:
        raise KnobError(f"{name} must be in 0..{MAX_GUIDANCE:g} (1.0 is off, 1.5-3 is typical), got {value!r}")
    return v


def check_steps(value: Any, name: str = "steps") -> int:
    """Head Euler steps per frame: 1..MAX_SAMPLING_STEPS."""
    return _integer(name, value, 1, MAX_SAMPLING_STEPS)


def check_context_noise(value: Any, name: str = "context noise") -> float:
    """Run-time context corruption level: finite, 0..1 (the model was trained with levels up to ~0.6)."""
    v = _number(name, value)
    if not 0.0 <= v <= 1.0:
        raise KnobError(f"{name} must be in 0..1 (0.05 is typical), got {value!r}")
    return v


def check_seed(value: Any, name: str = "seed") -> int:
    """A noise seed: an integer in 0..2^62."""
    return _integer(name, value, 0, MAX_SEED)


def check_batch(value: Any, name: str = "batch") -> int:
    """Worlds stepped together: 1..MAX_BATCH."""
    return _integer(name, value, 1, MAX_BATCH)


def check_threads(value: Any, name: str = "threads") -> int:
    """CPU threads: 1..1024."""
    return _integer(name, value, 1, 1024)


def check_device(value: Any, name: str = "--device") -> torch.device:
    """A device name: cpu, cuda or cuda:N, and CUDA only where torch sees it."""
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):  # torch's answers to a malformed name
        raise KnobError(f"{name} {value!r}: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise KnobError(f"{name} {value!r}: use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KnobError(f"{name} {value} asked for, but torch sees no CUDA device")
    return device


def check_fps(value: Any, name: str = "fps") -> float:
    """A frame-rate target: finite, > 0 and at most MAX_FPS."""
    v = _number(name, value)
    if not 0.0 < v <= MAX_FPS:
        raise KnobError(f"{name} must be in (0, {MAX_FPS:g}] frames/s, got {value!r}")
    return v


def check_scale(value: Any, name: str = "scale") -> int:
    """Window pixels per frame pixel: 1..MAX_SCALE."""
    return _integer(name, value, 1, MAX_SCALE)


class Knob:
    """A checked attribute: `steps = Knob(check_steps)`; with `buffer`, every set also fills that device tensor of
    the owner (what a captured CUDA graph reads)."""

    def __init__(self, check: Callable[[Any, str], Any], buffer: str | None = None):
        self.check, self.buffer = check, buffer

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{name}"

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: Any, value: Any) -> None:
        value = self.check(value, self.name)
        valid = getattr(obj, "knob_limits", {}).get(self.name)
        if valid is not None and value not in valid:
            raise KnobError(f"{self.name}={value!r} is not available for this model (choose from {sorted(valid)})")
        setattr(obj, self.slot, value)
        if self.buffer is not None:
            getattr(obj, self.buffer).fill_(value)


def arg_type(check: Callable[[Any, str], Any], flag: str, kind: type = float) -> Callable[[str], Any]:
    """An argparse `type=` that parses the text as `kind` and applies `check`, naming the flag on failure."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        try:
            return check(value, flag)
        except KnobError as e:  # argparse already names the flag: "argument --guidance: must be ..."
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{flag} ")) from None

    parse.__name__ = flag  # argparse names the type in some messages
    return parse
