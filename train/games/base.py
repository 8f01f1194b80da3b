"""The interface every game source implements, so that recorder, trainer and player treat them alike.

A game is stepped with action vectors laid out by its ActionSpec (engine.actions) and returns RGB uint8 frames of
shape (size, size, 3). `reset(seed)` starts a new episode; `step(action)` returns the next frame and whether the
episode ended. After each step the game says what that step earned and how the episode ended, as Gymnasium does:
`reward` (a float), `terminated` (the game reached an end state) and `truncated` (cut off, e.g. a time limit); after
`reset` they are 0.0, False, False. Agents choose action vectors from what they see.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from engine.actions import ActionSpec


class Game(Protocol):
    env_id: str           # e.g. "builtin:gems", "ale:Breakout", "vizdoom:basic", "gym:CarRacing-v3"
    env_version: str      # changes whenever dynamics or rendering change
    action_spec: ActionSpec
    size: int             # frames are (size, size, 3) uint8
    fps: float            # native frames per second
    reward: float         # what the last step earned (0.0 after reset)
    terminated: bool      # the last step reached an end state of the game
    truncated: bool       # the last step cut the episode off (a time limit); done == terminated or truncated

    def reset(self, seed: int | None = None) -> np.ndarray: ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]: ...

    def close(self) -> None: ...


class Agent(Protocol):
    def reset(self, seed: int | None = None) -> None: ...

    def act(self, frame: np.ndarray) -> np.ndarray: ...
