"""The model worker: steps the world on its own thread so the window never waits for the model.

The main thread pumps events every display frame and leaves the input where the worker can take it; the worker
takes the latest action, runs one step, and hands the frame back. A slow model lowers the frame rate, never the
window's responsiveness. Commands that touch the world (reset, save, load, sampling steps, recording) are queued
and run on the worker between steps, so the session is only ever used from one thread. Paused, the worker waits
on a condition variable: no spinning and no model calls. `lockstep` makes it step only when the main thread asks,
once per presented frame (deterministic replays); `fps` caps its steps per second (the game's speed).

Every frame the worker makes is shown: it hands a frame over only once the window has taken the one before
(it computes the next step meanwhile), so a world much faster than the screen (the real game with no frame cap)
is paced by the screen instead of stepping thousands of times per shown frame. `max_steps` ends stepping after
that many steps, so `reverie play --frames N` shows N frames and steps the world N times.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from play.world import Step

JOIN_SECONDS = 10.0         # how long stop() waits for a step in progress to finish


@dataclass
class Output:
    """A frame handed from the worker to the window."""

    step: Step
    seq: int                  # increases by one per output
    sampled_at: float         # when the main thread sampled the input this step used (perf_counter seconds)
    done_at: float            # when the worker finished it
    step_ms: float            # wall time of the step on the worker
    action: np.ndarray | None  # the action the step used (None for reset and load)
    times: Any = None         # the session's part times for this step, where it measures them


class Worker:
    """Runs `advance(action) -> (Step, times)` on a thread with actions from `take() -> (action, sampled_at)`."""

    def __init__(self, advance: Callable[[np.ndarray], tuple[Step, Any]],
                 take: Callable[[], tuple[np.ndarray, float]], fps: float = 0.0, lockstep: bool = False,
                 threads: int | None = None, after: Callable[[], None] | None = None, max_steps: int = 0):
        self.advance, self.take, self.after = advance, take, after
        self.max_steps = max_steps    # stop stepping after this many steps (0: no limit); calls still run
        self.period = 1.0 / fps if fps and fps > 0 else 0.0
        self.lockstep = lockstep
        self.threads = threads
        self.cond = threading.Condition()
        self._calls: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._paused = False
        self._single = False          # one step allowed while paused ('.')
        self._requested = False       # lockstep: the main thread asked for a step
        self._stopping = False
        self._out: Output | None = None
        self._seq = 0
        self._taken = 0               # the newest output the window has taken (wait_frame)
        self.steps_taken = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="reverie-model", daemon=True)

    # ---- main thread -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> bool:
        """Ask the worker to finish and wait for it; False if a step did not finish in time."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(JOIN_SECONDS)
        return not self._thread.is_alive()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self, paused: bool) -> None:
        with self.cond:
            self._paused = paused
            self._single = False
            self.cond.notify_all()

    def single_step(self) -> None:
        """While paused: run exactly one step."""
        with self.cond:
            self._single = True
            self.cond.notify_all()

    def request_step(self) -> None:
        """Lockstep: allow the next step (requests do not pile up)."""
        with self.cond:
            self._requested = True
            self.cond.notify_all()

    def call(self, fn: Callable[[], Step | None]) -> Future:
        """Run fn on the worker between steps; a Step it returns is shown like a stepped frame."""
        fut: Future = Future()
        with self.cond:
            self._calls.append((fn, fut))
            self.cond.notify_all()
        return fut

    def publish(self, step: Step, sampled_at: float, step_ms: float = 0.0, action: np.ndarray | None = None,
                times: Any = None, in_turn: bool = False) -> Output | None:
        """Hand a frame to the window (used by the worker thread, and by the main thread before start()).

        in_turn: first wait until the window has taken the previous frame, so that none is skipped (the worker's
        outputs); None if the worker is stopped while it waits.
        """
        with self.cond:
            while in_turn and self._out is not None and self._taken < self._out.seq:
                if self._stopping:
                    return None
                self.cond.wait()
            self._seq += 1
            self._out = Output(step, self._seq, sampled_at, time.perf_counter(), step_ms, action, times)
            self.cond.notify_all()
            return self._out

    def wait_frame(self, seen: int, timeout: float) -> Output | None:
        """The newest output after `seen`, waiting up to `timeout` seconds (asleep, not spinning); else None."""
        deadline = time.perf_counter() + max(0.0, timeout)
        with self.cond:
            while (self._out is None or self._out.seq <= seen) and self.error is None:
                left = deadline - time.perf_counter()
                if left <= 0 or self._stopping:
                    return None
                self.cond.wait(left)
            if self._out is None or self._out.seq <= seen:
                return None
            self._taken = self._out.seq
            self.cond.notify_all()     # the worker may hand over its next frame
            return self._out

    # ---- worker thread -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)  # the intra-op thread count is per thread: set it here too
        next_due = 0.0
        try:
            while True:
                job = self._next_job(next_due)
                if job is None:
                    return
                if isinstance(job, tuple):
                    fn, fut = job
                    self._run_call(fn, fut)
                    continue
                start = time.perf_counter()
                if self.period:  # steps start on a fixed grid; a late step moves the grid instead of bursting
                    base = next_due if next_due and start - next_due < self.period else start
                    next_due = base + self.period
                action, sampled_at = self.take()
                step, times = self.advance(action)
                self.steps_taken += 1
                self.publish(step, sampled_at, (time.perf_counter() - start) * 1e3, action, times, in_turn=True)
                if self.after is not None:  # work the frame does not wait for (the model's context update)
                    self.after()
        except BaseException as e:  # shown by the window as one clear line; the window then closes
            with self.cond:
                self.error = e
                self.cond.notify_all()

    def _next_job(self, next_due: float) -> tuple[Callable[[], Any], Future] | str | None:
        """Sleep until there is a call to run or a step is due; None when stopping."""
        with self.cond:
            while True:
                if self._stopping:
                    return None
                if self._calls:
                    return self._calls.popleft()
                may_step = (not self._paused or self._single) and (not self.lockstep or self._requested
                                                                     or self._single) \
                    and not (self.max_steps and self.steps_taken >= self.max_steps)
                if may_step:
                    wait = next_due - time.perf_counter() if self.period and not self._single else 0.0
                    if wait <= 0:
                        self._single = False
                        self._requested = False
                        return "step"
                    self.cond.wait(wait)
                else:
                    self.cond.wait()

    def _run_call(self, fn: Callable[[], Any], fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            result = fn()
        except Exception as e:
            fut.set_exception(e)
            return
        if isinstance(result, Step):
            self.publish(result, time.perf_counter(), in_turn=True)
        fut.set_result(result)
