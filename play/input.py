"""Player input: held controls tracked from events, handed to the model worker one action per step.

Held keys come from KEYDOWN/KEYUP events, never from `pygame.key.get_pressed()` (which misses a tap that begins
and ends between two polls, and which dummy-driver tests cannot drive). The window's main thread feeds every
event to `InputState.handle`; the model worker calls `take()` once per step and gets the buttons held now plus
every button pressed since its previous `take()`, so a tap shorter than a model step still reaches the model.

Gamepads feed the same state through the key map's pad bindings (hat and left stick as arrows, pad buttons as
keys); spec axes follow the other stick axes and the mouse. `Autopilot` posts a scripted held-key pattern as
real KEYDOWN/KEYUP events, so the headless benchmark and the tests drive the same path a person does.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pygame

from play.keymap import MOUSE_PIXELS_PER_UNIT, PAD_DEADZONE, PAD_STICK_AXES, KeyMap

HAT_KEYS = ((pygame.K_LEFT, pygame.K_RIGHT), (pygame.K_DOWN, pygame.K_UP))   # hat x -1/+1, hat y -1/+1
STICK_KEYS = {0: (pygame.K_LEFT, pygame.K_RIGHT), 1: (pygame.K_UP, pygame.K_DOWN)}  # stick y is down-positive


class InputState:
    """What the player holds now, and what they pressed since the model last took an action. Thread-safe."""

    def __init__(self, keymap: KeyMap):
        self.keymap = keymap
        self._lock = threading.Lock()
        self._keys: set[int] = set()               # keyboard keys held (bound to a button)
        self._pad: dict[str, set[int]] = {}        # per pad source ('hat0', 'axis1', 'button3', ...): keys it holds
        self._pressed: set[int] = set()            # keys that went down since the last take()
        self._pad_axes: dict[str, float] = {}      # spec axis -> gamepad value
        self._mouse = np.zeros(2, np.float64)      # mouse motion (pixels) since the last take()
        self._joysticks: dict[int, pygame.joystick.JoystickType] = {}
        self.sampled_at = time.perf_counter()      # when the main thread last pumped events into this state
        self.game_events = 0                       # events that changed what is held (for tests and the HUD)

    # ---- main thread --------------------------------------------------------------------------------------------
    def handle(self, event: pygame.event.Event) -> bool:
        """Update from one event; True if it was game input."""
        t = event.type
        if t in (pygame.KEYDOWN, pygame.KEYUP):
            if self.keymap.control(event.key) is None:
                return False
            with self._lock:
                if t == pygame.KEYDOWN:
                    self._keys.add(event.key)
                    self._pressed.add(event.key)
                else:
                    self._keys.discard(event.key)
                self.game_events += 1
            return True
        if t == pygame.JOYDEVICEADDED:
            joy = pygame.joystick.Joystick(event.device_index)
            self._joysticks[joy.get_instance_id()] = joy
            return False
        if t == pygame.JOYDEVICEREMOVED:
            self._joysticks.pop(event.instance_id, None)
            with self._lock:
                self._pad = {k: v for k, v in self._pad.items() if not k.startswith(f"{event.instance_id}:")}
                self._pad_axes.clear()
            return False
        if t == pygame.JOYHATMOTION:
            x, y = event.value
            keys = {HAT_KEYS[0][x > 0]} if x else set()
            keys |= {HAT_KEYS[1][y > 0]} if y else set()
            self._set_pad(f"{event.instance_id}:hat{event.hat}", keys)
            return True
        if t == pygame.JOYAXISMOTION:
            if event.axis in PAD_STICK_AXES:
                neg, pos = STICK_KEYS[PAD_STICK_AXES.index(event.axis)]
                v = event.value
                keys = {pos} if v > PAD_DEADZONE else {neg} if v < -PAD_DEADZONE else set()
                self._set_pad(f"{event.instance_id}:axis{event.axis}", keys)
            elif event.axis in self.keymap.pad_axes:
                with self._lock:
                    self._pad_axes[self.keymap.pad_axes[event.axis]] = float(np.clip(event.value, -1.0, 1.0))
            return True
        if t in (pygame.JOYBUTTONDOWN, pygame.JOYBUTTONUP):
            if event.button >= len(self.keymap.pad_button_keys):
                return False
            key = self.keymap.pad_button_keys[event.button]
            self._set_pad(f"{event.instance_id}:button{event.button}", {key} if t == pygame.JOYBUTTONDOWN else set())
            return True
        if t == pygame.MOUSEMOTION and self.keymap.mouse_axes:
            with self._lock:
                self._mouse += event.rel
            return True
        if t == pygame.WINDOWFOCUSLOST:
            self.release_all()  # a key released while another window had focus would otherwise stay held
        return False

    def _set_pad(self, source: str, keys: set[int]) -> None:
        keys = {k for k in keys if self.keymap.control(k) is not None}
        with self._lock:
            self._pressed |= keys - self._pad.get(source, set())
            self._pad[source] = keys
            self.game_events += 1

    def release_all(self) -> None:
        """Forget every held key and pad control (focus lost, world reset)."""
        with self._lock:
            self._keys.clear()
            self._pad.clear()
            self._pad_axes.clear()

    def mark_sampled(self, now: float | None = None) -> None:
        """Record that the main thread has just pumped all pending events into this state."""
        self.sampled_at = time.perf_counter() if now is None else now

    # ---- worker thread ------------------------------------------------------------------------------------------
    def take(self) -> tuple[np.ndarray, float]:
        """The next step's action: held buttons plus those pressed since the last take; and when input was sampled."""
        with self._lock:
            keys = self._held() | self._pressed
            self._pressed = set()
            mouse, self._mouse = self._mouse, np.zeros(2, np.float64)
            axes = dict(self._pad_axes)
            sampled_at = self.sampled_at
        for name, value in zip(self.keymap.mouse_axes, mouse):
            if value:
                axes[name] = float(np.clip(axes.get(name, 0.0) + value / MOUSE_PIXELS_PER_UNIT, -1.0, 1.0))
        return self.keymap.action({self.keymap.keys[k] for k in keys}, axes), sampled_at

    def held_action(self) -> np.ndarray:
        """The action of what is held right now (no taps consumed)."""
        with self._lock:
            keys = self._held()
            axes = dict(self._pad_axes)
        return self.keymap.action({self.keymap.keys[k] for k in keys}, axes)

    def _held(self) -> set[int]:
        held = set(self._keys)
        for keys in self._pad.values():
            held |= keys
        return held


class KeyPresses:
    """Key-down edges of the window's controls: a toggle (Tab, P, H, F1, R) fires once per press.

    A key-down while the key is already down is no press: auto-repeat, or a key-down that follows a missed key-up.
    The key's next key-up, or the window losing focus, makes the next key-down a press again.
    """

    def __init__(self) -> None:
        self._down: set[int] = set()

    def press(self, event: pygame.event.Event) -> bool:
        """Update from one event; True for a key-down that is a new press."""
        if event.type == pygame.KEYUP:
            self._down.discard(event.key)
        elif event.type == pygame.KEYDOWN:
            if event.key in self._down or getattr(event, "repeat", False):
                return False
            self._down.add(event.key)
            return True
        elif event.type == pygame.WINDOWFOCUSLOST:
            self._down.clear()
        return False


class Autopilot:
    """A scripted held-key pattern for headless runs: hold a random button set for a while, with some short taps.

    `events(frame)` returns the KEYDOWN/KEYUP events to post before display frame `frame`; a person's events take the
    same path.
    """

    def __init__(self, keymap: KeyMap, seed: int = 0, hold_frames: tuple[int, int] = (4, 16), tap_every: int = 7):
        self.keymap = keymap
        self.rng = np.random.default_rng(seed)
        self.hold_frames = hold_frames
        self.tap_every = tap_every
        self.keys = sorted({keymap.first_key(b) for b in keymap.spec.buttons} - {None})
        self.held: set[int] = set()
        self.next_change = 0
        self._last_frame = -1

    def events(self, frame: int) -> list[pygame.event.Event]:
        out: list[pygame.event.Event] = []
        if not self.keys or frame == self._last_frame:   # the loop may tick several times per frame
            return out
        self._last_frame = frame
        if frame >= self.next_change:
            n = int(self.rng.integers(0, min(2, len(self.keys)) + 1))   # hold 0, 1 or 2 buttons
            new = {self.keys[i] for i in self.rng.choice(len(self.keys), size=n, replace=False)}
            out += [pygame.event.Event(pygame.KEYUP, key=k, mod=0) for k in sorted(self.held - new)]
            out += [pygame.event.Event(pygame.KEYDOWN, key=k, mod=0) for k in sorted(new - self.held)]
            self.held = new
            self.next_change = frame + int(self.rng.integers(self.hold_frames[0], self.hold_frames[1] + 1))
        elif self.tap_every and frame % self.tap_every == 0:
            free = [k for k in self.keys if k not in self.held]
            if free:
                k = free[int(self.rng.integers(len(free)))]
                out += [pygame.event.Event(pygame.KEYDOWN, key=k, mod=0),
                        pygame.event.Event(pygame.KEYUP, key=k, mod=0)]
        return out
