"""The play loop: the pygame window that shows the world, takes the player's input and the window's controls.

The main thread pumps events at least `pump_hz` times a second, leaves the input for the model worker
(play/worker.py) and presents each frame the worker hands back: the frame scaled up by an integer factor with
nearest neighbour (pygame.transform.scale), the real game beside it on Tab, the HUD in a strip below them (never
over the game). It sleeps on the worker's condition variable between frames, so it reacts to a new frame at once
and never spins. The session keeps one window: Tab resizes it. The window's controls act on a key's press (its
key-down edge), never on a held or repeated key. Headless runs (`--headless`) use SDL's dummy video driver and the
same loop, driven by the autopilot's posted key events.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pygame

from engine.knobs import MAX_GUIDANCE, check_guidance, check_steps
from play.display import start_display
from play.hud import STRIP_PADDING, FrameStats, Hud, HudInfo, percentile
from play.input import Autopilot, InputState, KeyPresses
from play.keymap import KeyMap
from play.record import Recorder, model_env_id
from play.worker import Output, Worker
from play.world import PlayError, Step

TARGET_SIDE = 512               # the automatic scale makes the frame's longer side at most this many pixels
SIDE_GAP = 8                    # pixels between the model and the real game
STEPS_KEYS = {pygame.K_1: 1, pygame.K_2: 2, pygame.K_3: 3, pygame.K_4: 4}
WARMUP_FRAMES = 5               # first frames left out of the benchmark's numbers (allocator, caches)

CONTROLS = (("Esc", "quit"), ("Enter", "reset the world"), ("P", "pause / resume"), (".", "one step while paused"),
            ("1-4", "sampling steps"), ("[ ]", "guidance scale down / up"), ("F5 / F9", "save / load the world"),
            ("R", "start / stop recording"), ("Tab", "side by side with the real game"), ("H", "HUD on / off"),
            ("F1", "help"))


def controls_text(keymap: KeyMap) -> list[str]:
    """The controls and the game's key bindings, one per line (printed at start, shown on F1)."""
    lines = [f"{k:>8}  {what}" for k, what in CONTROLS]
    return lines + ["game keys:"] + [f"  {line}" for line in keymap.describe()]


@dataclass
class WindowConfig:
    """How the window runs; `reverie play`'s flags map onto these fields."""

    scale: int = 0                      # pixels per frame pixel; 0 picks the largest fitting TARGET_SIDE
    fps: float = 0.0                    # cap on model steps per second (the game's speed); 0: as fast as it goes
    pump_hz: float = 250.0              # events are pumped at least this often (input latency, not CPU)
    headless: bool = False              # SDL dummy video driver: no window on screen
    frames: int = 0                     # show this many stepped frames (the world steps as often), then stop
                                        # (0: until quit)
    autopilot: bool = False             # post a scripted held-key pattern (headless benchmark)
    seed: int = 0                       # autopilot seed
    lockstep: bool = False              # one model step per presented frame, after that frame's input
    hud: bool = True
    side_by_side: bool = False
    threads: int | None = None          # torch threads of the model worker
    save_path: Path = Path("reverie-world.safetensors")   # F5 / F9
    record_dir: Path = Path("recordings")                 # R
    human_dir: Path | None = None       # record every episode here from the start (`--human`)
    gif: bool = True                    # write a GIF beside each recorded episode
    guidance_step: float = 0.25
    guidance_range: tuple[float, float] = (0.0, min(10.0, MAX_GUIDANCE))   # [ and ] stay inside it
    caption: str = "Reverie"
    info: dict[str, Any] = field(default_factory=dict)    # extra facts for the benchmark JSON (device, model, ...)


class Window:
    """One play session in a window: `run()` plays until a quit; errors raise PlayError."""

    def __init__(self, world: Any, config: WindowConfig | None = None, print_fn: Callable[[str], None] = print):
        self.world = world
        self.cfg = cfg = config or WindowConfig()
        self.print = print_fn
        self.keymap = KeyMap.for_spec(world.spec)
        self.help_lines = controls_text(self.keymap)
        self.input = InputState(self.keymap)
        self.stats = FrameStats(keep_all=cfg.headless or cfg.frames > 0)
        self.autopilot = Autopilot(self.keymap, cfg.seed) if cfg.autopilot else None
        self.agent: str | None = getattr(world, "agent_name", None)   # an agent plays (play/agent.py): keys are not
        take = world.take if self.agent else self.input.take            # the world's actions, only the controls
        self.worker = Worker(self._advance, take, fps=cfg.fps, lockstep=cfg.lockstep, threads=cfg.threads,
                             after=getattr(world, "finish", None), max_steps=cfg.frames)
        human = cfg.human_dir is not None
        env_id = world.env_id if world.kind == "real" else model_env_id(world.spec.game)
        self.recorder = Recorder(cfg.human_dir if human else cfg.record_dir, env_id=env_id, spec=world.spec,
                                 frame_shape=world.frame_shape, fps=world.fps, gif=cfg.gif and not human,
                                 agent=self.agent or ("autopilot" if cfg.autopilot else "human"),
                                 env_version=getattr(world, "env_version", "") if world.kind == "real" else "",
                                 metadata={"source": "reverie play", "world": world.kind, "game": world.spec.game},
                                 reward=world.kind == "real" and hasattr(getattr(world, "game", None), "reward"))
        h, w, _ = world.frame_shape
        self.scale = cfg.scale or max(1, TARGET_SIDE // max(h, w))
        self.side_by_side = False
        self.hud: Hud | None = None
        self.window: pygame.Window | None = None     # one window for the whole session: Tab resizes it
        self.screen: pygame.Surface | None = None    # the window's surface: the frames, and the HUD's strip below
        self.window_size = (0, 0)
        self._strip = pygame.Rect(0, 0, 0, 0)        # the HUD's strip (below the frames)
        self.presses = KeyPresses()                  # the controls fire on key-down edges only
        self._src: pygame.Surface | None = None
        self._dest: list[pygame.Surface] = []
        self.messages: queue.SimpleQueue[str] = queue.SimpleQueue()   # worker thread -> screen and console
        self.frame_index = 0            # steps since the last reset (written by the worker)
        self.part_times: list[tuple[float, float, float]] = []
        self.exit_reason: str | None = None
        self.started_at = 0.0
        self.first_frame_s = 0.0
        self._seen = 0
        self._last: Output | None = None
        self._last_frame: np.ndarray | None = None
        self._dirty = False
        self._awaiting = False          # lockstep: a requested step has not been presented yet
        self._next_pump = 0.0
        self._closed = False

    # ---- life cycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the window, start the world and the worker; PlayError if there is no display."""
        self.started_at = time.perf_counter()
        if self.cfg.headless:
            os.environ["SDL_VIDEODRIVER"] = "dummy"
        else:
            start_display()           # no display: one clear line, before SDL's own warnings or a window nobody sees
        try:
            pygame.display.init()
            pygame.font.init()
        except pygame.error as e:
            raise PlayError(f"cannot start pygame's display ({e}); is there a display? Use --headless to run "
                            "without one") from None
        try:
            pygame.joystick.init()
        except pygame.error:
            pass  # no gamepad support on this system: keyboard only
        self.hud = Hud(visible=self.cfg.hud)
        self._open_window(self.cfg.side_by_side and self.world.has_twin)
        first = self.world.reset()
        self._last_frame = first.frame
        if self.cfg.human_dir is not None:
            path = self._start_recording(first.frame)
            self.print(f"recording to {path}")
        self.worker.publish(first, time.perf_counter())
        self.worker.start()
        self.print("\n".join(self.help_lines))
        self._next_pump = time.perf_counter()

    def _open_window(self, side_by_side: bool) -> None:
        """Open the window, or resize the open one (Tab), for the model's frame (and the real game's beside it)
        above the HUD's strip; a resized window shows its frames again at once."""
        h, w, _ = self.world.frame_shape
        k = self.scale
        strip_height = self.hud.strip_height(w * k, self._info())
        size = (w * k * 2 + SIDE_GAP if side_by_side else w * k, h * k + strip_height)
        try:
            if self.window is None:
                self.window = pygame.Window(self.cfg.caption, size, position=pygame.WINDOWPOS_CENTERED)
            else:   # the same window, resized about its centre: re-creating it flashed black and took the focus
                (x, y), width = self.window.position, self.window.size[0]
                self.window.size = size
                self.window.position = (x + (width - size[0]) // 2, y)
            self.screen = self.window.get_surface()
        except pygame.error as e:
            raise PlayError(f"cannot open a {size[0]}x{size[1]} window ({e}); is there a display? Use --headless "
                            "to run without one") from None
        self.side_by_side = side_by_side
        self.window_size = size
        self._strip = pygame.Rect(0, h * k, size[0], strip_height)
        # frames are converted into a small surface of the screen's format, then scaled straight into the screen
        self._src = pygame.Surface((w, h), 0, self.screen)
        self._dest = [self.screen.subsurface((0, 0, w * k, h * k))]
        if side_by_side:
            self._dest.append(self.screen.subsurface((w * k + SIDE_GAP, 0, w * k, h * k)))
        self._dirty = True
        self._present(None)

    def run(self) -> int:
        """Play until a quit or the frame budget is spent (returns 0); errors raise PlayError after a clean close."""
        try:
            self.start()
            while self.tick():
                pass
        finally:
            self.close()
        return 0

    def close(self) -> None:
        """Stop the worker, finish a running recording, close the world and the window."""
        if self._closed:
            return
        self._closed = True
        if not self.worker.stop():
            self.print("the model step did not finish in time; closing anyway")
        if self.recorder.active:
            self._say(self._stop_recording())
        self._drain_messages()
        try:
            self.world.close()
        finally:
            if self.window is not None:
                self.window.destroy()
            pygame.display.quit()

    # ---- one display frame ----------------------------------------------------------------------------------------
    def tick(self) -> bool:
        """Pump events, present the newest frame; False once the window should close."""
        if self.worker.error is not None:
            e = self.worker.error
            raise PlayError(f"the world stopped: {type(e).__name__}: {e}")
        if self.autopilot is not None:
            for event in self.autopilot.events(self.stats.frames):
                pygame.event.post(event)
        for event in pygame.event.get():
            self._handle(event)
            if self.exit_reason is not None:
                return False
        self.input.mark_sampled()
        self._drain_messages()
        if self.cfg.lockstep and not self.worker.paused and not self._awaiting:
            self.worker.request_step()   # one step per presented frame: the next one after this frame's input
            self._awaiting = True
        now = time.perf_counter()
        self._next_pump = max(self._next_pump + 1.0 / self.cfg.pump_hz, now)
        out = self.worker.wait_frame(self._seen, self._next_pump - now)
        if out is not None:
            self._seen = out.seq
            self._present(out)
        elif self._dirty or self.hud.has_toast:
            self._present(None)
        if self.cfg.frames and self.stats.frames >= self.cfg.frames:
            self.exit_reason = f"{self.stats.frames} frames"
            return False
        return True

    def _present(self, out: Output | None) -> None:
        """Scale and blit the frame (and the real game beside it), draw the HUD, flip; record the frame's timing."""
        t0 = time.perf_counter()
        if out is not None:
            self._last = out
        if self._last is None:
            return
        step = self._last.step
        h, w, _ = self.world.frame_shape
        k = self.scale
        x = w * k + SIDE_GAP                      # the real game's left edge, side by side
        self._blit_scaled(step.frame, 0)
        if self.side_by_side:
            self.screen.fill((0, 0, 0), (w * k, 0, SIDE_GAP, h * k))
            if step.twin is not None:
                self._blit_scaled(step.twin, 1)
            else:
                self._dest[1].fill((0, 0, 0))
        self.hud.draw(self.screen, self._strip, self.stats, self._info(), self.help_lines, width=w * k)
        if self.side_by_side:
            score = getattr(self.world, "real_score", None)      # the agent's score in the real game
            label = "real game" if score is None else f"real game   score {score:g}"
            self.hud.label(self.screen, label, (x + STRIP_PADDING, self._strip.top + STRIP_PADDING))
        self.window.flip()
        shown = time.perf_counter()
        self._dirty = False
        if out is None:
            return
        if not self.first_frame_s:
            self.first_frame_s = shown - self.started_at
        if out.action is None:      # a reset or a load: not a step, and the interval to it is not a frame time
            self.stats.gap()
            return
        self._awaiting = False
        self.stats.frame(shown, out.step_ms, (shown - out.sampled_at) * 1e3, (shown - t0) * 1e3)
        if out.times is not None and self.stats.keep_all:
            self.part_times.append(out.times)

    def _blit_scaled(self, frame: np.ndarray, where: int) -> None:
        """Draw (H, W, 3) uint8 scale times larger (nearest neighbour) into screen area `where` (0 model, 1 real)."""
        h, w, _ = frame.shape
        self._src.blit(pygame.image.frombuffer(np.ascontiguousarray(frame), (w, h), "RGB"), (0, 0))
        pygame.transform.scale(self._src, (w * self.scale, h * self.scale), self._dest[where])

    def _info(self) -> HudInfo:
        return HudInfo(backend=self.world.backend, steps=self.world.steps, guidance=self.world.guidance,
                       frame=self.frame_index, paused=self.worker.paused, recording=self.recorder.active,
                       mode=self.world.kind, agent=self.agent)

    # ---- events and controls ---------------------------------------------------------------------------------------
    def _handle(self, event: pygame.event.Event) -> None:
        if event.type in (pygame.QUIT, pygame.WINDOWCLOSE):
            self.exit_reason = "window closed"
            return
        if event.type in (pygame.KEYDOWN, pygame.KEYUP) and self.keymap.control(event.key) is None:
            if self.presses.press(event):     # a window control (or an unbound key): on its key-down edge only
                self._control(event.key)
            return
        if event.type == pygame.WINDOWFOCUSLOST:
            self.presses.press(event)
        self.input.handle(event)

    def _control(self, key: int) -> bool:
        """Run the window control bound to `key`; False if it is not one."""
        model = self.world.kind == "model"
        if key == pygame.K_ESCAPE:
            self.exit_reason = "Esc"
        elif key in (pygame.K_RETURN, pygame.K_KP_ENTER):
            self._command(self._reset_world, "reset")
        elif key == pygame.K_p:
            self.worker.pause(not self.worker.paused)
            self.stats.gap()
            self._dirty = True
        elif key == pygame.K_PERIOD:
            if self.worker.paused:
                self.stats.gap()
                self.worker.single_step()
        elif key in STEPS_KEYS and model:
            self._command(lambda: self._set_steps(STEPS_KEYS[key]), "sampling steps")
        elif key in (pygame.K_LEFTBRACKET, pygame.K_RIGHTBRACKET) and model:
            delta = self.cfg.guidance_step * (1 if key == pygame.K_RIGHTBRACKET else -1)
            self._command(lambda: self._set_guidance(delta), "guidance")
        elif key == pygame.K_F1:
            self.hud.help_visible = not self.hud.help_visible
            self._dirty = True
        elif key == pygame.K_F5:
            self._command(self._save, "save")
        elif key == pygame.K_F9:
            self._command(self._load, "load")
        elif key == pygame.K_r:
            self._command(self._toggle_recording, "recording")
        elif key == pygame.K_TAB:
            if self.world.has_twin:
                self._open_window(not self.side_by_side)
            else:
                self._say(f"no real game to show beside the {self.world.kind}: "
                          + (getattr(self.world, "warning", None) or "this is the real game"))
        elif key == pygame.K_h:
            self.hud.visible = not self.hud.visible
            self._dirty = True
        elif key in STEPS_KEYS or key in (pygame.K_LEFTBRACKET, pygame.K_RIGHTBRACKET):
            self._say("sampling steps and guidance are knobs of the model; this is the real game")
        else:
            return False
        return True

    def _command(self, fn: Callable[[], Step | None], what: str) -> None:
        """Run fn on the worker between steps; a failure becomes a message, not a crash."""
        def done(fut) -> None:
            e = fut.exception()
            if e is not None:
                self.messages.put(f"{what} failed: {e}")
        self.worker.call(fn).add_done_callback(done)

    def _say(self, message: str | None) -> None:
        if message:
            self.messages.put(message)

    def _drain_messages(self) -> None:
        while True:
            try:
                message = self.messages.get_nowait()
            except queue.Empty:
                return
            self.print(message)
            if self.hud is not None:
                self.hud.toast(message)
            self._dirty = True

    # ---- on the worker thread -------------------------------------------------------------------------------------
    def _advance(self, action: np.ndarray) -> tuple[Step, Any]:
        """One step of the world with `action`; records it; a finished real episode starts the next one."""
        step = self.world.step(action)
        session = getattr(self.world, "session", None)
        times = None
        if session is not None and getattr(session, "profile", False):
            t = session.times
            times = (t.head_ms, t.decode_ms, t.backbone_ms)
        self.frame_index += 1
        if self.recorder.active:
            self.recorder.add(step.frame, action, *((step.reward, step.terminated, step.truncated)
                                                    if self.recorder.reward else ()))
        if step.done:
            self._say(f"the episode ended after {self.frame_index} frames")
            self._say(self._stop_recording())
            step = self.world.reset()
            self.frame_index = 0
            if self.cfg.human_dir is not None:
                self._say(f"recording to {self._start_recording(step.frame)}")
        self._last_frame = step.frame
        return step, times

    def _reset_world(self) -> Step:
        message = self._stop_recording()
        step = self.world.reset()
        self.frame_index = 0
        self._last_frame = step.frame
        self._say(message)
        if self.cfg.human_dir is not None:
            self._say(f"recording to {self._start_recording(step.frame)}")
        self._say("reset")
        return step

    def _set_steps(self, steps: int) -> None:
        self.world.steps = check_steps(steps, "sampling steps")
        self._say(f"sampling steps {self.world.steps}")

    def _set_guidance(self, delta: float) -> None:
        """Guidance up or down by `delta`, kept inside guidance_range (and finite: a NaN guidance blacks out every
        later frame)."""
        lo, hi = self.cfg.guidance_range
        current = self.world.guidance
        if not np.isfinite(current):
            current = 1.0
        self.world.guidance = check_guidance(float(np.clip(round(current + delta, 4), lo, hi)))
        self._say(f"guidance {self.world.guidance:.2f}" + (" (off)" if self.world.guidance == 1.0 else ""))

    def _save(self) -> None:
        self.world.save(self.cfg.save_path)
        self._say(f"saved the world to {self.cfg.save_path}")

    def _load(self) -> Step:
        message = self._stop_recording()
        step = self.world.load(self.cfg.save_path)
        self._last_frame = step.frame
        self._say(message)
        note = " (the real game beside it was not restored)" if self.world.has_twin and step.twin is None else ""
        self._say(f"loaded the world from {self.cfg.save_path}{note}")
        return step

    def _toggle_recording(self) -> None:
        if self.recorder.active:
            self._say(self._stop_recording())
        else:
            self._say(f"recording to {self._start_recording(self._last_frame)}")

    def _start_recording(self, frame: np.ndarray) -> Path:
        """Start an episode file from `frame`; the real game's episode seed goes into its header (where the frame
        is that episode's start), and a folder that cannot be written is a PlayError naming it."""
        at_start = self.world.kind == "real" and self.frame_index == 0
        try:
            return self.recorder.start(frame, seed=getattr(self.world, "episode_seed", None) if at_start else None)
        except OSError as e:
            raise PlayError(f"cannot record into {self.recorder.out_dir}: {e.strerror or e}") from None

    def _stop_recording(self) -> str | None:
        if not self.recorder.active:
            return None
        frames = self.recorder.frames
        paths = self.recorder.stop()
        note = " (no GIF: Pillow is not installed)" if self.recorder.gif and len(paths) == 1 else ""
        return f"recorded {frames} frames: " + ", ".join(str(p) for p in paths) + note

    # ---- the benchmark -----------------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """End-to-end numbers of this run (the headless benchmark's JSON)."""
        s = self.stats
        if s.keep_all:   # a benchmark run: every frame but the first few
            skip = WARMUP_FRAMES if len(s.all_intervals_ms) > 4 * WARMUP_FRAMES else 0
            intervals = s.all_intervals_ms[skip:]
            steps_ms, latency, render = s.all_step_ms[skip:], s.all_latency_ms[skip:], s.all_render_ms[skip:]
        else:            # an open-ended session: its last STATS_WINDOW frames
            skip, intervals, steps_ms, latency = 0, list(s.intervals_ms), list(s.step_ms), list(s.latency_ms)
            render = []
        total = sum(intervals)
        out: dict[str, Any] = {
            "fps": 1e3 * len(intervals) / total if total else 0.0,
            "p50_ms": percentile(intervals, 50), "p99_ms": percentile(intervals, 99),
            "mean_ms": total / len(intervals) if intervals else 0.0,
            "frames": s.frames, "warmup_frames": skip,
            "step_ms_p50": percentile(steps_ms, 50), "step_ms_p99": percentile(steps_ms, 99),
            "latency_ms_p50": percentile(latency, 50), "latency_ms_p99": percentile(latency, 99),
            "render_ms_p50": percentile(render, 50), "render_ms_p99": percentile(render, 99),
            "model_steps": self.worker.steps_taken, "first_frame_s": self.first_frame_s,
            "backend": self.world.backend, "steps": self.world.steps, "guidance": self.world.guidance,
            "world": self.world.kind, "scale": self.scale, "window": list(self.window_size),
            "lockstep": self.cfg.lockstep, "fps_cap": self.cfg.fps, "threads": self.cfg.threads,
        }
        if self.part_times:
            parts = np.asarray(self.part_times[skip:] or self.part_times)
            out.update(head_ms=float(np.median(parts[:, 0])), decode_ms=float(np.median(parts[:, 1])),
                       backbone_ms=float(np.median(parts[:, 2])))
        out.update(self.cfg.info)
        return out
