"""Declarative action spec: the one description of a game's controls.

A spec names the buttons (multi-hot) and the continuous axes (e.g. mouse dx, dy) of one game, with a version.
It is written into every episode file and every checkpoint, and key maps bind to it, so recorder, trainer and
player agree on what each entry of an action vector means. An action vector is float32 of length
``len(buttons) + len(axes)``: buttons first (0 or 1), then axes (clipped to [-1, 1]).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import ReverieError

SPEC_FORMAT = 1
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class ActionSpecError(ReverieError, ValueError):
    """An action spec or an action that does not fit its spec."""


@dataclass(frozen=True)
class ActionSpec:
    """Named buttons and axes of one game; ``version`` changes whenever their meaning does."""

    game: str
    buttons: tuple[str, ...]
    axes: tuple[str, ...] = ()
    version: int = 1
    format: int = field(default=SPEC_FORMAT)

    def __post_init__(self) -> None:
        object.__setattr__(self, "buttons", tuple(self.buttons))
        object.__setattr__(self, "axes", tuple(self.axes))
        self.validate()

    # ---- validation -------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ActionSpecError naming the bad field if the spec is malformed."""
        if not isinstance(self.game, str) or not self.game:
            raise ActionSpecError(f"action spec: 'game' must be a non-empty string, got {self.game!r}")
        if self.format != SPEC_FORMAT:
            raise ActionSpecError(f"action spec for {self.game!r}: format {self.format} is not supported "
                                  f"(this Reverie reads format {SPEC_FORMAT})")
        if not isinstance(self.version, int) or self.version < 1:
            raise ActionSpecError(f"action spec for {self.game!r}: 'version' must be an int >= 1, got {self.version!r}")
        names = list(self.buttons) + list(self.axes)
        if not names:
            raise ActionSpecError(f"action spec for {self.game!r}: needs at least one button or axis")
        for n in names:
            if not isinstance(n, str) or not _NAME.match(n):
                raise ActionSpecError(f"action spec for {self.game!r}: bad control name {n!r} "
                                      "(use lower-case letters, digits and '_', starting with a letter)")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ActionSpecError(f"action spec for {self.game!r}: duplicate control names {dup}")

    # ---- sizes and lookup --------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Length of an action vector."""
        return len(self.buttons) + len(self.axes)

    @property
    def names(self) -> tuple[str, ...]:
        return self.buttons + self.axes

    def index(self, name: str) -> int:
        """Position of a named control in the action vector."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ActionSpecError(f"unknown control {name!r} for game {self.game!r}; "
                                  f"known: buttons {list(self.buttons)}, axes {list(self.axes)}") from None

    def null(self) -> np.ndarray:
        """The action with nothing pressed and axes at rest."""
        return np.zeros(self.size, np.float32)

    # ---- encoding ------------------------------------------------------------------------------------------
    def encode(self, pressed: Iterable[str] = (), axes: Mapping[str, float] | None = None) -> np.ndarray:
        """Action vector from the names of pressed buttons and axis values; unknown names raise."""
        vec = self.null()
        for name in pressed:
            i = self.index(name)
            if i >= len(self.buttons):
                raise ActionSpecError(f"{name!r} is an axis of game {self.game!r}, not a button; pass it in axes=")
            vec[i] = 1.0
        for name, value in (axes or {}).items():
            i = self.index(name)
            if i < len(self.buttons):
                raise ActionSpecError(f"{name!r} is a button of game {self.game!r}, not an axis")
            vec[i] = float(np.clip(value, -1.0, 1.0))
        return vec

    def decode(self, vec: np.ndarray) -> tuple[list[str], dict[str, float]]:
        """Pressed button names and axis values of an action vector."""
        vec = self.check(vec)
        pressed = [b for b, v in zip(self.buttons, vec[: len(self.buttons)]) if v > 0.5]
        axes = {a: float(v) for a, v in zip(self.axes, vec[len(self.buttons):])}
        return pressed, axes

    def check(self, vec: Any, where: str = "action") -> np.ndarray:
        """Validate an action vector (or a batch, last axis = controls) and return it as float32."""
        arr = np.asarray(vec, dtype=np.float32)
        if arr.ndim == 0 or arr.shape[-1] != self.size:
            raise ActionSpecError(f"{where}: expected {self.size} values for game {self.game!r} "
                                  f"({list(self.names)}), got shape {tuple(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise ActionSpecError(f"{where}: action values must be finite")
        nb = len(self.buttons)
        b = arr[..., :nb]
        if nb and not np.all((b == 0.0) | (b == 1.0)):
            raise ActionSpecError(f"{where}: button values must be 0 or 1 (buttons {list(self.buttons)})")
        if np.any(np.abs(arr[..., nb:]) > 1.0):
            raise ActionSpecError(f"{where}: axis values must lie in [-1, 1] (axes {list(self.axes)})")
        return arr

    # ---- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "game": self.game, "version": self.version,
                "buttons": list(self.buttons), "axes": list(self.axes)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "action spec") -> ActionSpec:
        """Build a spec from its dict form; unknown or missing keys raise an error naming them."""
        if not isinstance(d, Mapping):
            raise ActionSpecError(f"{where}: expected a mapping, got {type(d).__name__}")
        known = {"format", "game", "version", "buttons", "axes"}
        unknown = sorted(set(map(str, d)) - known)
        if unknown:
            raise ActionSpecError(f"{where}: unknown keys {unknown}; known keys {sorted(known)}")
        missing = sorted({"game", "buttons"} - set(d))
        if missing:
            raise ActionSpecError(f"{where}: missing keys {missing}")
        for key in ("buttons", "axes"):
            if key in d and not isinstance(d[key], (list, tuple)):
                raise ActionSpecError(f"{where}: {key!r} must be a list of names")
        return cls(game=d["game"], buttons=tuple(d["buttons"]), axes=tuple(d.get("axes", ())),
                   version=d.get("version", 1), format=d.get("format", SPEC_FORMAT))

    def compatible(self, other: ActionSpec) -> bool:
        """True if action vectors of ``other`` mean the same as ours."""
        return (self.game, self.buttons, self.axes, self.version) == (other.game, other.buttons, other.axes,
                                                                       other.version)
