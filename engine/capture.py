"""CUDA graphs of a session's step, and the timing of its parts: how the torch runner's step runs on a GPU.

Eager PyTorch is launch-bound at a world model's per-frame sizes (3-8x slower than the same work replayed as a
graph), so on CUDA every part of a step is captured once and replayed: a plain step is one replay (head, decode and
backbone in one graph), a deferred step two (head + decode now, the backbone after the frame is shown). All step
counts and guidance modes are captured together on first use, so that changing them in play never stalls a frame;
the backbone is captured twice, for a ring still filling (masked) and a full one (no mask, the fastest attention).
Every graph shares one memory pool; all state lives in the session's preallocated buffers, which the warm-up runs
before a capture advance and a snapshot on the device restores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

KINDS = {"step": ("step",), "head_decode": ("head_decode", "backbone"), "head": ("head",), "decode": ("decode",),
         "backbone": ("backbone",)}  # what is captured together when one of a kind is first needed


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS says, e.g. in a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class StepTimes:
    """Milliseconds of the parts of the last step (filled when the session was made with profile=True)."""

    head_ms: float = 0.0
    decode_ms: float = 0.0
    backbone_ms: float = 0.0


class StepCapture:
    """Captured variants of a session's step parts, keyed e.g. ("step", steps, guided, ring_full)."""

    def __init__(self, capture: Callable[[Callable[[], None]], torch.cuda.CUDAGraph], steps: Iterable[int],
                 head: Callable[[int, bool], None], decode: Callable[[], None], backbone: Callable[[bool], None],
                 state: Callable[[], dict[str, torch.Tensor]]):
        self._capture, self._state = capture, state
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.fns: dict[tuple, Callable[[], None]] = {("decode",): decode}
        for f in (False, True):
            self.fns[("backbone", f)] = lambda f=f: backbone(f)
        for s in steps:
            for g in (False, True):
                self.fns[("head", s, g)] = lambda s=s, g=g: head(s, g)
                self.fns[("head_decode", s, g)] = lambda s=s, g=g: (head(s, g), decode())
                for f in (False, True):
                    self.fns[("step", s, g, f)] = lambda s=s, g=g, f=f: (head(s, g), decode(), backbone(f))

    def replay(self, key: tuple) -> None:
        """Replay the graph of `key`, capturing its whole kind first if needed (undoing the warm-ups' effect)."""
        if key not in self.graphs:
            saved = {k: t.clone() for k, t in self._state().items()}
            for k, fn in self.fns.items():
                if k[0] in KINDS[key[0]] and k not in self.graphs:
                    self.graphs[k] = self._capture(fn)
            for k, t in self._state().items():
                t.copy_(saved[k])
        self.graphs[key].replay()


def timed(device: torch.device, fn: Callable[[], None]) -> float:
    """Run fn and return its milliseconds: CUDA events on a GPU (the kernels, not their launches), else the clock."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3
