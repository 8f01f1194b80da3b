"""When the parts of a step run: the one place that orders a session's head, decode and backbone pass.

A step is head, decode, backbone pass, in that order; how they run is the session's choice, switchable between steps:
  plain      the fewest parts: eager on CPU; on CUDA (`capture`, engine.capture) one graph replay per step, or two for
             a deferred step
  overlap    (onnxruntime, more than one core) the backbone pass on a second thread while this one decodes the frame:
             onnxruntime releases the GIL
  profile    every part on its own, timed into `times` (a plain step's parts then run one after another)
A deferred step (`defer`) returns once the frame is decoded; its backbone pass runs in finish(), which the front end
calls after showing the frame, and the next step and a save-game call first.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from engine.capture import StepCapture, StepTimes, timed
from engine.step import StepParts


class StepScheduler:
    """Runs the parts of a session's step (engine.step.StepParts) plain, overlapped or profiled; see the module."""

    def __init__(self, parts: StepParts, device: torch.device,
                 capture: Callable[[Callable[[], None]], torch.cuda.CUDAGraph] | None, overlap: bool, profile: bool):
        w = parts.world
        self.parts, self.device, self.overlap, self.profile, self.times = parts, device, overlap, profile, StepTimes()
        self.capture = None if capture is None else StepCapture(
            capture, parts.schedule, parts.head, parts.decode, lambda full: parts.backbone(w.z_buf, w.action_buf, full),
            w.tensors)
        self.pending = False                    # a deferred backbone pass still to run
        self.inflight: Future | None = None     # that pass, running on the overlap thread
        self.executor: ThreadPoolExecutor | None = None

    def step(self, steps: int, guided: bool, defer: bool) -> None:
        """Head and decode of the next frame, then (unless `defer`) the backbone pass that appends it."""
        self.finish()
        p, w = self.parts, self.parts.world
        if not (self.overlap or self.profile):
            if defer:
                self.run(("head_decode", steps, guided), lambda: (p.head(steps, guided), p.decode()))
            else:
                full = w.kv.full
                self.run(("step", steps, guided, full),
                         lambda: (p.head(steps, guided), p.decode(), p.backbone(w.z_buf, w.action_buf, full)), True)
            self.pending = defer
            return
        self.run(("head", steps, guided), lambda: p.head(steps, guided), timed_as="head")
        self.pending = True
        if self.overlap and (defer or not self.profile):   # a profiled plain step keeps its parts apart
            self.executor = self.executor or ThreadPoolExecutor(1, thread_name_prefix="reverie-backbone")
            self.inflight = self.executor.submit(self.backbone)
        self.run(("decode",), p.decode, timed_as="decode")
        if not defer:
            self.finish()

    def finish(self) -> None:
        """Run, or wait for, the backbone pass a deferred step left (nothing otherwise)."""
        if not self.pending:
            return
        self.pending = False
        if self.inflight is not None:
            self.wait()
        else:
            self.backbone()

    @torch.no_grad()   # grad mode is per thread: the pass on the overlap thread needs its own
    def backbone(self) -> None:
        """The backbone pass that appends the newest latent, led to by the step's action."""
        w, full = self.parts.world, self.parts.world.kv.full
        self.run(("backbone", full), lambda: self.parts.backbone(w.z_buf, w.action_buf, full), True, "backbone")

    def run(self, key: tuple, fn: Callable[[], None], appends: bool = False, timed_as: str | None = None) -> None:
        """fn, or on CUDA the replay of its graph `key`; timed into `times` as `timed_as` when profiling. A replay runs
        no Python, so the host's count of appended frames follows here."""
        if self.profile and timed_as is not None:
            setattr(self.times, f"{timed_as}_ms", timed(self.device, lambda: self.run(key, fn, appends)))
            return
        if self.capture is None:
            fn()
            return
        kv = self.parts.world.kv
        appended = kv.appended   # the warm-ups of a first capture append too; the device state is restored
        self.capture.replay(key)
        kv.appended = appended + appends

    def wait(self, discard: bool = False) -> None:
        """Wait for a pass on the overlap thread; its error is raised here unless the caller is about to overwrite
        what it wrote (`discard`)."""
        fut, self.inflight = self.inflight, None
        error = fut.exception() if fut is not None else None
        if error is not None and not discard:
            raise error

    def drop(self) -> None:
        """Before the worlds' tensors are overwritten (reset, load): let a running pass end, forget a pending one."""
        self.wait(discard=True)
        self.pending = False

    def recapture(self) -> None:
        """Forget the captured graphs (a part changed: set_sampler, set_cache); they are captured again when used."""
        if self.capture is not None:
            self.capture.graphs.clear()

    def close(self) -> None:
        """Stop the overlap thread and free the captured graphs; later steps run eagerly."""
        self.wait(discard=True)
        if self.executor is not None:
            self.executor.shutdown()
            self.executor = None
        self.capture = None
