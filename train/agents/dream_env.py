"""DreamEnv: a Gymnasium environment whose world is a Reverie world model, so agents can act inside the dream.

The agent sees imagined frames and its actions drive the model, as in DIAMOND (Alonso et al. 2024) and
World Models (Ha & Schmidhuber 2018). Every step is one `engine.Session.step`, so play, eval and agents share
one runtime.

    env = DreamEnv("model.safetensors", max_episode_steps=500)   # or DreamEnv(models=(ae, wm, spec), ...)
    obs, info = env.reset(seed=0)                                 # obs: the last frame of the start state
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

Spaces:
  observation_space  Box(0, 255, (H, W, 3), uint8): the imagined frame.
  action_space       MultiBinary(n_buttons) when the game's ActionSpec has no axes; otherwise
                     Dict({"buttons": MultiBinary(n_buttons), "axes": Box(-1, 1, (n_axes,), float32)})
                     ("buttons" is left out when the game has none).
The dream has no reward model and never ends by itself: reward is 0.0, terminated is False, and truncated
becomes True once max_episode_steps frames have been imagined. `reset(seed=s)` reseeds the world's noise from
the env's np_random, so the same seed and actions give the same frames. `reset(options={"frames": ...,
"actions": ...})` primes the world from other real frames for that episode. Nothing is registered globally:
build the env directly, or register it yourself.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from engine.actions import ActionSpec
from engine.checkpoint import Checkpoint
from engine.session import Session

DEFAULT_RENDER_FPS = 15          # used when the checkpoint's data summary does not name the game's fps
DEFAULT_MAX_EPISODE_STEPS = 1000
WORLD_SEED_RANGE = 2**31 - 1     # world seeds drawn from np_random lie in [0, this)


def action_space_for(spec: ActionSpec) -> spaces.Space:
    """MultiBinary over the buttons, or a Dict of buttons and axes when the game has axes."""
    nb, na = len(spec.buttons), len(spec.axes)
    if na == 0:
        return spaces.MultiBinary(nb)
    parts: dict[str, spaces.Space] = {}
    if nb:
        parts["buttons"] = spaces.MultiBinary(nb)
    parts["axes"] = spaces.Box(-1.0, 1.0, (na,), np.float32)
    return spaces.Dict(parts)


class DreamEnv(gym.Env):
    """One imagined world behind the Gymnasium API; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": DEFAULT_RENDER_FPS}

    def __init__(self, checkpoint: str | os.PathLike | Checkpoint | None = None, *, start_frames: Any = None,
                 start_actions: Any = None, max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
                 render_mode: str | None = None, **session_kwargs: Any):
        """checkpoint and session_kwargs go to engine.Session (checkpoint None: the shipped default model).

        start_frames (T, H, W, 3) uint8 and start_actions (T, A) prime every episode; without them the
        checkpoint's built-in start state is used.
        """
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode {render_mode!r}: DreamEnv renders only {self.metadata['render_modes']}")
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if session_kwargs.get("batch", 1) != 1:
            raise ValueError("DreamEnv runs one world (batch=1); for many worlds use gymnasium.vector or "
                             "engine.Session(batch=B) directly")
        self.session = Session(checkpoint, **session_kwargs)
        ckpt = self.session.checkpoint
        if start_frames is None and (ckpt is None or ckpt.start_state() is None):
            raise ValueError("DreamEnv needs start frames: pass start_frames=(T, H, W, 3) uint8, or a checkpoint "
                             "that holds a built-in start state")
        self.action_spec: ActionSpec = self.session.spec
        self.start_frames, self.start_actions = start_frames, start_actions
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = render_mode
        fps = (ckpt.data.get("fps") if ckpt is not None else None) or DEFAULT_RENDER_FPS
        self.metadata = {**self.metadata, "render_fps": fps}
        self.observation_space = spaces.Box(0, 255, self.session.frame_shape, np.uint8)
        self.action_space = action_space_for(self.action_spec)
        self._t: int | None = None          # frames imagined in this episode; None before the first reset
        self._last: np.ndarray | None = None
        self._closed = False

    def _vector(self, action: Any) -> np.ndarray:
        """A sample of action_space -> the ActionSpec's float32 vector (buttons, then axes)."""
        spec = self.action_spec
        if not spec.axes:
            return np.asarray(action, dtype=np.float32)
        if not isinstance(action, dict):
            raise ValueError(f"action: game {spec.game!r} has axes, so an action is a dict with keys "
                             f"{sorted(self.action_space.spaces)}, got {type(action).__name__}")
        buttons = np.asarray(action.get("buttons", np.zeros(len(spec.buttons))), dtype=np.float32)
        axes = np.asarray(action["axes"], dtype=np.float32)
        return np.concatenate([buttons.reshape(-1), axes.reshape(-1)])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Prime the world from the start frames; returns (last start frame, {"frame": 0})."""
        super().reset(seed=seed)
        options = options or {}
        frames, actions = self.start_frames, self.start_actions
        if "frames" in options:
            frames, actions = options["frames"], options.get("actions")
        world_seed = int(self.np_random.integers(0, WORLD_SEED_RANGE))
        obs = self.session.reset(frames, actions, seed=world_seed)
        self._last = np.array(obs, dtype=np.uint8, copy=True)
        self._t = 0
        return self._last.copy(), {"frame": 0}

    def step(self, action: Any):
        """Imagine one frame under `action`; reward 0.0, never terminated, truncated after max_episode_steps."""
        if self._t is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        obs = self.session.step(self._vector(action))
        self._last = np.array(obs, dtype=np.uint8, copy=True)
        self._t += 1
        truncated = bool(self._t >= self.max_episode_steps)
        return self._last.copy(), 0.0, False, truncated, {"frame": self._t}

    def render(self) -> np.ndarray | None:
        """The last frame (H, W, 3) uint8 in render_mode "rgb_array"; None otherwise or before reset()."""
        if self.render_mode != "rgb_array" or self._last is None:
            return None
        return self._last.copy()

    def close(self) -> None:
        """Free the session's buffers; calling it again does nothing."""
        if not self._closed:
            self.session.close()
            self._closed = True
