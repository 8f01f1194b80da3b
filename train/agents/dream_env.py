"""DreamEnv: a Gymnasium environment whose world is a Reverie world model, so agents can act inside the dream.

The agent sees imagined frames and its actions drive the model, as in DIAMOND (Alonso et al. 2024) and
World Models (Ha & Schmidhuber 2018). Every step is one `engine.Session.step`, so play, eval and agents share
one runtime.

    env = DreamEnv("model.safetensors", max_episode_steps=500)   # or DreamEnv(models=(ae, wm, spec), ...)
    env = DreamEnv("model.safetensors", reward_fn=my_reward, context_noise=0.1, steps=2)   # reward, dream noise
    obs, info = env.reset(seed=0)                                 # obs: the last frame of the start state
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

Spaces:
  observation_space  Box(0, 255, (H, W, 3), uint8): the imagined frame.
  action_space       MultiBinary(n_buttons) when the game's ActionSpec has no axes; otherwise
                     Dict({"buttons": MultiBinary(n_buttons), "axes": Box(-1, 1, (n_axes,), float32)})
                     ("buttons" is left out when the game has none).
Reward and episode end come from `reward_fn(prev_frames (B, H, W, 3) uint8, actions (B, A) float32, frames
(B, H, W, 3) uint8) -> (rewards (B,) float32, ended (B,) bool)`, called on each step's transition (here B = 1; a
reward and episode-end model plugs in there, and DreamVecEnv calls it once for all its worlds). Without one the dream
never ends by itself: reward is 0.0 and terminated is False. Either way truncated becomes True once max_episode_steps
frames have been imagined. The dream's sampling noise is a setting: context_noise, steps and guidance go to the
Session (None: the model's own run-time defaults), and can be changed between steps as env.session.context_noise etc.
`reset(seed=s)` reseeds the world's noise from the env's np_random, so the same seed and actions give the same frames.
`reset(options={"frames": ..., "actions": ...})` primes the world from other real frames for that episode. Nothing is
registered globally: build the env directly, or register it yourself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[Any, Any]]


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


def _numpy(x: Any) -> np.ndarray:
    """An array-like (numpy, list, or a torch tensor on any device) as numpy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_reward(result: Any, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A reward_fn's answer -> (rewards (B,) float32, ended (B,) bool); ValueError saying what was wrong."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ValueError(f"reward_fn must return (rewards, ended), two arrays of shape ({batch},); got "
                         f"{type(result).__name__}")
    rewards, ended = _numpy(result[0]), _numpy(result[1])
    if rewards.shape != (batch,) or rewards.dtype.kind not in "biuf":
        raise ValueError(f"reward_fn: rewards must be ({batch},) numbers, got shape {rewards.shape} {rewards.dtype}")
    if not np.isfinite(rewards).all():
        raise ValueError(f"reward_fn: rewards must be finite, got {rewards.tolist()}")
    if ended.shape != (batch,) or ended.dtype.kind not in "biu" or not np.isin(ended, (0, 1)).all():
        raise ValueError(f"reward_fn: ended must be ({batch},) bool, got shape {ended.shape} {ended.dtype}")
    return rewards.astype(np.float32), ended.astype(bool)


def call_reward(reward_fn: RewardFn | None, prev: np.ndarray, actions: np.ndarray,
                frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rewards (B,) float32 and episode ends (B,) bool of one step of B worlds (zeros and False without reward_fn);
    reward_fn sees read-only copies, so it cannot change what the env returns."""
    B = frames.shape[0]
    if reward_fn is None:
        return np.zeros(B, np.float32), np.zeros(B, bool)
    views = []
    for x in (prev, actions, frames):
        x = x.copy()
        x.flags.writeable = False
        views.append(x)
    return check_reward(reward_fn(*views), B)


class DreamEnv(gym.Env):
    """One imagined world behind the Gymnasium API; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": DEFAULT_RENDER_FPS}

    def __init__(self, checkpoint: str | os.PathLike | Checkpoint | None = None, *, start_frames: Any = None,
                 start_actions: Any = None, max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
                 render_mode: str | None = None, reward_fn: RewardFn | None = None, steps: int | None = None,
                 guidance: float | None = None, context_noise: float | None = None, **session_kwargs: Any):
        """checkpoint, the sampling settings and session_kwargs go to engine.Session (checkpoint None: the shipped
        default model); reward_fn: see the module docstring (None: reward 0, never terminated).

        start_frames (T, H, W, 3) uint8 and start_actions (T, A) prime every episode; without them the
        checkpoint's built-in start state is used.
        """
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode {render_mode!r}: DreamEnv renders only {self.metadata['render_modes']}")
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if session_kwargs.get("batch", 1) != 1:
            raise ValueError("DreamEnv runs one world (batch=1); for many worlds use "
                             "train.agents.dream_vec_env.DreamVecEnv(num_envs=B)")
        if reward_fn is not None and not callable(reward_fn):
            raise ValueError(f"reward_fn must be callable (prev_frames, actions, frames) -> (rewards, ended), got "
                             f"{type(reward_fn).__name__}")
        self.session = Session(checkpoint, steps=steps, guidance=guidance, context_noise=context_noise,
                               **session_kwargs)
        self.reward_fn = reward_fn
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
        """Imagine one frame under `action`; reward and terminated from reward_fn (0.0 and False without one),
        truncated after max_episode_steps."""
        if self._t is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        vector = self._vector(action)
        prev = self._last
        obs = self.session.step(vector)
        self._last = np.array(obs, dtype=np.uint8, copy=True)
        self._t += 1
        rewards, ended = call_reward(self.reward_fn, prev[None], vector.reshape(1, -1), self._last[None])
        truncated = bool(self._t >= self.max_episode_steps)
        return self._last.copy(), float(rewards[0]), bool(ended[0]), truncated, {"frame": self._t}

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
