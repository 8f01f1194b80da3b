"""Key maps: keyboard keys and gamepad controls bound to the control names of a checkpoint's action spec.

The spec (engine.actions.ActionSpec) names the buttons a model was trained with; a key map binds keys to those
names, so one window plays any game. Known names get the keys a player expects (arrows and WASD move, Space
fires or jumps, Ctrl attacks, E uses, Shift runs); Doom-like specs with both turning and strafing get arrows to
turn and A/D to strafe, as in the classic key layout. Buttons with unknown names are bound to free letter keys
in spec order, so every button of every spec is reachable. The window's own controls (Esc, Enter, P, `.`, 1-4,
[ ], F1, F5, F9, R, Tab, H) are never bound to a button.

Gamepads act through the same map: the hat and the left stick act as the arrow keys, pad buttons 0-3 as Space,
Ctrl, E, Shift and later pad buttons as the letter keys given to unknown buttons; the spec's axes (e.g. Doom's
turn delta) follow the remaining stick axes and the mouse.

Atari specs (ale:*) have one button per joystick combination ('upright', 'downleftfire', ...) because the game
takes one action at a time; when such a spec is played, pressing Up and Right presses its 'upright' button.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pygame

from engine.actions import ActionSpec

# The window's own controls: never bound to a game button.
RESERVED_KEYS = frozenset({
    pygame.K_ESCAPE, pygame.K_RETURN, pygame.K_KP_ENTER, pygame.K_p, pygame.K_PERIOD, pygame.K_1, pygame.K_2,
    pygame.K_3, pygame.K_4, pygame.K_LEFTBRACKET, pygame.K_RIGHTBRACKET, pygame.K_F1, pygame.K_F5, pygame.K_F9,
    pygame.K_r, pygame.K_TAB, pygame.K_h,
})

# (keys, control names in order of preference): each key is bound to the first name the spec has.
NAMED_BINDINGS: tuple[tuple[tuple[int, ...], tuple[str, ...]], ...] = (
    ((pygame.K_UP, pygame.K_w), ("up", "move_forward", "forward", "move_up")),
    ((pygame.K_DOWN, pygame.K_s), ("down", "move_backward", "backward", "back", "move_down")),
    ((pygame.K_LEFT,), ("left", "turn_left", "move_left")),
    ((pygame.K_RIGHT,), ("right", "turn_right", "move_right")),
    ((pygame.K_a,), ("move_left", "left", "turn_left")),      # strafe where the spec can both turn and strafe
    ((pygame.K_d,), ("move_right", "right", "turn_right")),
    ((pygame.K_SPACE,), ("fire", "jump", "attack", "shoot", "action", "a", "button_a")),
    ((pygame.K_LCTRL, pygame.K_RCTRL), ("attack", "fire", "shoot")),
    ((pygame.K_e,), ("use", "interact")),
    ((pygame.K_LSHIFT, pygame.K_RSHIFT), ("speed", "run", "sprint")),
    ((pygame.K_c,), ("crouch", "duck")),
)

# Keys given, in this order, to buttons that no named binding covers.
SPARE_KEYS = tuple(getattr(pygame, f"K_{c}") for c in "zxcvbnmfgjklqtyuio") + (
    pygame.K_5, pygame.K_6, pygame.K_7, pygame.K_8, pygame.K_9, pygame.K_0)

PAD_BUTTON_KEYS = (pygame.K_SPACE, pygame.K_LCTRL, pygame.K_e, pygame.K_LSHIFT)  # pad buttons 0..3 act as these
PAD_STICK_AXES = (0, 1)         # left stick: x, y act as the arrow keys
PAD_DEADZONE = 0.5              # stick deflection that counts as an arrow key held
MOUSE_PIXELS_PER_UNIT = 40.0    # mouse motion (pixels per step) that gives a full axis value of 1

# Atari-style combination buttons: (up|down)? (right|left)? (fire)? with at least two parts, e.g. 'upleftfire'.
_COMBO = re.compile(r"^(up|down)?(right|left)?(fire)?$")


@dataclass
class KeyMap:
    """Keys -> control names of one spec, plus how gamepad and mouse drive its buttons and axes."""

    spec: ActionSpec
    keys: dict[int, str]                                  # pygame key code -> button name
    pad_button_keys: tuple[int, ...] = ()                 # pad button i acts as key pad_button_keys[i]
    pad_axes: dict[int, str] = field(default_factory=dict)    # pad axis index -> spec axis name
    mouse_axes: tuple[str, ...] = ()                      # spec axes driven by mouse dx, dy
    combos: bool = False                                  # the spec has Atari-style combination buttons

    @classmethod
    def for_spec(cls, spec: ActionSpec) -> KeyMap:
        """Bind every button of `spec` to at least one key (named bindings first, then spare letters)."""
        buttons = set(spec.buttons)
        keys: dict[int, str] = {}
        for key_codes, names in NAMED_BINDINGS:
            name = next((n for n in names if n in buttons), None)
            if name is not None:
                for k in key_codes:
                    keys.setdefault(k, name)
        combos = _has_combos(spec)
        covered = set(keys.values())
        if combos:  # combination buttons are reached by pressing their parts together
            covered |= {b for b in spec.buttons if _combo_parts(b) and set(_combo_parts(b)) <= covered}
        spare = [k for k in SPARE_KEYS if k not in keys and k not in RESERVED_KEYS]
        unbound = [b for b in spec.buttons if b not in covered]
        for key, name in zip(spare, unbound):
            keys[key] = name
        pad_buttons = PAD_BUTTON_KEYS + tuple(k for k in spare[: len(unbound)])
        free_pad_axes = [i for i in range(8) if i not in PAD_STICK_AXES]
        pad_axes = dict(zip(free_pad_axes, spec.axes))
        return cls(spec, keys, pad_buttons, pad_axes, tuple(spec.axes[:2]), combos)

    def control(self, key: int) -> str | None:
        """The button a key presses, or None."""
        return self.keys.get(key)

    def first_key(self, name: str) -> int | None:
        """The first key bound to a button (the autopilot presses it)."""
        return next((k for k, n in self.keys.items() if n == name), None)

    def action(self, pressed: Iterable[str], axes: Mapping[str, float] | None = None) -> np.ndarray:
        """Action vector for the pressed button names and axis values (combination buttons where the spec has them)."""
        names = set(pressed)
        if self.combos:
            names = self._combine(names)
        return self.spec.encode(sorted(names, key=self.spec.buttons.index), axes or {})

    def _combine(self, names: set[str]) -> set[str]:
        """{'up', 'right', 'fire'} -> {'uprightfire'} when the spec has that button; opposite directions cancel."""
        vertical = {"up", "down"} & names
        horizontal = {"left", "right"} & names
        parts = (sorted(vertical) if len(vertical) == 1 else []) + (sorted(horizontal) if len(horizontal) == 1
                                                                    else []) + (["fire"] if "fire" in names else [])
        rest = names - {"up", "down", "left", "right", "fire"}
        combined = "".join(parts)
        if len(parts) >= 2 and combined in self.spec.buttons:
            return rest | {combined}
        return rest | {p for p in parts if p in self.spec.buttons}

    def describe(self) -> list[str]:
        """One line per button: 'up: Up, W'."""
        lines = []
        for b in self.spec.buttons:
            ks = [pygame.key.name(k).title() or str(k) for k, n in self.keys.items() if n == b]
            if not ks and self.combos and _combo_parts(b):
                continue  # reached by pressing its parts together; said once below
            lines.append(f"{b}: {', '.join(ks) if ks else '(unbound)'}")
        if self.combos:
            lines.append("combinations (e.g. upright, upfire): press their keys together")
        for i, a in self.pad_axes.items():
            lines.append(f"{a}: gamepad axis {i}" + (f", mouse {'xy'[self.mouse_axes.index(a)]}"
                                                       if a in self.mouse_axes else ""))
        return lines


def _combo_parts(name: str) -> list[str]:
    """['up', 'right', 'fire'] for 'uprightfire'; [] for names that are not a combination of two or more parts."""
    m = _COMBO.match(name)
    parts = [p for p in m.groups() if p] if m else []
    return parts if len(parts) >= 2 else []


def _has_combos(spec: ActionSpec) -> bool:
    return any(_combo_parts(b) for b in spec.buttons)
