"""DreamVecEnv: B imagined worlds behind Gymnasium's vector-environment API, stepped as one Session batch.

Agents learn faster from many worlds at once, and a world model steps B worlds for little more than the cost of one
(DIAMOND, Alonso et al. 2024; Dreamer 4, Hafner et al. 2025, train their agents on batches of imagined rollouts). Each
vector step is one `engine.Session.step` of batch B; a world whose episode ended is primed again alone in its slot
(`Session.reset_world`), the other worlds untouched bit for bit.

    envs = DreamVecEnv("model.safetensors", num_envs=8, max_episode_steps=500, reward_fn=my_reward)
    obs, infos = envs.reset(seed=0)                  # obs (B, H, W, 3) uint8; env i seeded with seed + i
    obs, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample())

Each world is a DreamEnv (train.agents.dream_env) in all but the batch: the same spaces per env, the same seeding
(env i's np_random draws its world's noise seed at each of its resets), the same reward_fn contract, called once per
step for all B worlds. So B worlds seeded s, s+1, ... give the frames of B DreamEnvs seeded alike (to the batch's float
rounding). The dream's sampling noise (context_noise, steps, guidance) is a setting passed to the Session.

Autoreset is SAME_STEP (gymnasium.vector.AutoresetMode): on the step where env i ends, its returned observation is
already the first of its next episode; the last frame of the ended episode is in infos["final_obs"][i] and that step's
info in infos["final_info"] (masks "_final_obs", "_final_info"), as stable-baselines3's VecEnv also hands them over.
Autoreset episodes start from the constructor's start frames (or the checkpoint's start state), or, with
start_sampler(rng) -> (frames (T, H, W, 3), actions (T, A)), from a start drawn for each episode (e.g. a window of
recorded play, as DIAMOND starts its imagined rollouts from real frames; rng is the env's np_random); a reset with
options={"frames": (T, H, W, 3), "actions": (T, A)} primes every world, or only those of options["reset_mask"] (B,)
bool, from other frames for that episode.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from engine.actions import ActionSpec
from engine.checkpoint import Checkpoint
from engine.session import Session
from engine.step import world_seeds
from train.agents.dream_env import (
    DEFAULT_MAX_EPISODE_STEPS,
    DEFAULT_RENDER_FPS,
    WORLD_SEED_RANGE,
    RewardFn,
    action_space_for,
    call_reward,
)


class DreamVecEnv(VectorEnv):
    """num_envs imagined worlds as one Session batch behind gymnasium.vector.VectorEnv; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": DEFAULT_RENDER_FPS,
                "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, checkpoint: str | os.PathLike | Checkpoint | None = None, num_envs: int = 1, *,
                 start_frames: Any = None, start_actions: Any = None,
                 max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS, reward_fn: RewardFn | None = None,
                 render_mode: str | None = None, steps: int | None = None, guidance: float | None = None,
                 context_noise: float | None = None, start_sampler: Any = None, **session_kwargs: Any):
        """checkpoint, the sampling settings and session_kwargs go to engine.Session(batch=num_envs); the rest as
        DreamEnv takes them; start_sampler: see the module docstring."""
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if "batch" in session_kwargs:
            raise ValueError("DreamVecEnv: pass the number of worlds as num_envs, not batch")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode {render_mode!r}: DreamVecEnv renders only {self.metadata['render_modes']}")
        if isinstance(max_episode_steps, bool) or int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if reward_fn is not None and not callable(reward_fn):
            raise ValueError(f"reward_fn must be callable (prev_frames, actions, frames) -> (rewards, ended), got "
                             f"{type(reward_fn).__name__}")
        self.session = Session(checkpoint, batch=int(num_envs), steps=steps, guidance=guidance,
                               context_noise=context_noise, **session_kwargs)
        ckpt = self.session.checkpoint
        if start_frames is None and (ckpt is None or ckpt.start_state() is None):
            raise ValueError("DreamVecEnv needs start frames: pass start_frames=(T, H, W, 3) uint8, or a checkpoint "
                             "that holds a built-in start state")
        self.num_envs = int(num_envs)
        self.action_spec: ActionSpec = self.session.spec
        self.start_frames, self.start_actions = start_frames, start_actions
        if start_sampler is not None and not callable(start_sampler):
            raise ValueError(f"start_sampler must be callable (rng) -> (frames, actions), got "
                             f"{type(start_sampler).__name__}")
        self.start_sampler = start_sampler
        self.max_episode_steps = int(max_episode_steps)
        self.reward_fn = reward_fn
        self.render_mode = render_mode
        fps = (ckpt.data.get("fps") if ckpt is not None else None) or DEFAULT_RENDER_FPS
        self.metadata = {**self.metadata, "render_fps": fps}
        self.single_observation_space = spaces.Box(0, 255, self.session.frame_shape, np.uint8)
        self.single_action_space = action_space_for(self.action_spec)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.env_rngs: list[np.random.Generator | None] = [None] * self.num_envs   # each env's np_random
        self._t = np.zeros(self.num_envs, np.int64)   # frames imagined in each env's episode
        self._last: np.ndarray | None = None           # (B, H, W, 3) uint8; None before the first reset

    # ---- seeding: env i as a DreamEnv would seed itself -------------------------------------------------------------
    def _env_seeds(self, seed: int | list[int | None] | None) -> list[int | None]:
        """reset's seed as SyncVectorEnv takes it: None, an int (env i gets seed + i) or one per env."""
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed: need one seed per env ({self.num_envs}) or an int, got {len(seeds)}")
        return seeds

    def _world_seed(self, i: int, seed: int | None) -> int:
        """Reseed env i's np_random when seed is given (as gym.Env.reset does), then draw its world's noise seed."""
        if seed is not None or self.env_rngs[i] is None:
            self.env_rngs[i], _ = seeding.np_random(seed)
        return int(self.env_rngs[i].integers(0, WORLD_SEED_RANGE))

    # ---- the vector API ------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Prime every world (or those of options["reset_mask"]) from the start frames; returns (obs, infos)."""
        options = dict(options or {})
        seeds = self._env_seeds(seed)
        frames, actions = self.start_frames, self.start_actions
        if "frames" in options:
            frames, actions = options["frames"], options.get("actions")
        mask = options.get("reset_mask")
        if mask is None and self.start_sampler is not None and "frames" not in options:
            if self._last is None:   # the session is primed as a whole once, then each world from a start of its own
                first_frames, first_actions = self.start_sampler(np.random.default_rng(0))
                obs = self.session.reset(first_frames, first_actions, seed=0)
                self._last = np.array(obs, dtype=np.uint8).reshape(self.num_envs, *self.session.frame_shape)
            for i, s in enumerate(seeds):
                self._reset_one(i, s)
            self._t[:] = 0
            envs = range(self.num_envs)
        elif mask is None:
            world_seed = [self._world_seed(i, s) for i, s in enumerate(seeds)]
            # a world seeded w in a one-world session draws from world_seeds(w, 1)[0]: the same here, per slot
            obs = self.session.reset(frames, actions, seed=[int(world_seeds(w, 1)[0]) for w in world_seed])
            self._last = np.array(obs, dtype=np.uint8).reshape(self.num_envs, *self.session.frame_shape)
            self._t[:] = 0
            envs = range(self.num_envs)
        else:
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
                raise ValueError(f"options['reset_mask'] must be a numpy bool array of shape ({self.num_envs},), "
                                 f"got {getattr(mask, 'shape', type(mask).__name__)} {getattr(mask, 'dtype', '')}")
            if self._last is None:
                raise gym.error.ResetNeeded("reset() every env once before a reset with options['reset_mask']")
            envs = np.flatnonzero(mask).tolist()
            for i in envs:
                self._reset_one(i, seeds[i], frames, actions)
        infos: dict[str, Any] = {}
        for i in envs:
            infos = self._add_info(infos, {"frame": 0}, i)
        return self._last.copy(), infos

    def _reset_one(self, i: int, seed: int | None, frames: Any = None, actions: Any = None) -> None:
        """Prime env i's world alone in its slot; the other worlds are not touched."""
        world_seed = self._world_seed(i, seed)
        if frames is None and self.start_sampler is not None:
            frames, actions = self.start_sampler(self.env_rngs[i])
        elif frames is None:
            frames, actions = self.start_frames, self.start_actions
        obs = self.session.reset_world(i, frames, actions, seed=world_seed)
        self._last[i] = obs
        self._t[i] = 0

    def _vectors(self, actions: Any) -> np.ndarray:
        """A sample of action_space -> the ActionSpec's float32 vectors (B, A) (buttons, then axes)."""
        spec, B = self.action_spec, self.num_envs
        if spec.axes:
            if not isinstance(actions, dict):
                raise ValueError(f"actions: game {spec.game!r} has axes, so actions are a dict with keys "
                                 f"{sorted(self.single_action_space.spaces)}, got {type(actions).__name__}")
            buttons = np.asarray(actions.get("buttons", np.zeros((B, len(spec.buttons)))), dtype=np.float32)
            axes = np.asarray(actions["axes"], dtype=np.float32)
            if buttons.shape != (B, len(spec.buttons)) or axes.shape != (B, len(spec.axes)):
                raise ValueError(f"actions: need buttons ({B}, {len(spec.buttons)}) and axes ({B}, {len(spec.axes)}), "
                                 f"got {buttons.shape} and {axes.shape}")
            return np.concatenate([buttons, axes], axis=1)
        vectors = np.asarray(actions, dtype=np.float32)
        if vectors.shape != (B, spec.size):
            raise ValueError(f"actions: need one action per env, shape ({B}, {spec.size}), got {vectors.shape}")
        return vectors

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Imagine one frame in every world (one Session step); ended envs are reset in the same step (SAME_STEP)."""
        if self._last is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        vectors = self._vectors(actions)                                          # (B, A) float32
        prev = self._last
        frames = self.session.step(vectors).reshape(self.num_envs, *self.session.frame_shape)   # (B, H, W, 3)
        self._last = np.array(frames, dtype=np.uint8)
        self._t += 1
        rewards, terminations = call_reward(self.reward_fn, prev, vectors, self._last)
        truncations = self._t >= self.max_episode_steps
        infos: dict[str, Any] = {}
        for i in range(self.num_envs):
            info = {"frame": int(self._t[i])}
            if terminations[i] or truncations[i]:
                infos = self._add_info(infos, {"final_obs": self._last[i].copy(), "final_info": info}, i)
                self._reset_one(i, None)
                info = {"frame": 0}
            infos = self._add_info(infos, info, i)
        return self._last.copy(), rewards, terminations, truncations, infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        """Each env's last frame (H, W, 3) uint8 in render_mode "rgb_array"; None otherwise or before reset()."""
        if self.render_mode != "rgb_array" or self._last is None:
            return None
        return tuple(frame.copy() for frame in self._last)

    def close_extras(self, **kwargs: Any) -> None:
        """Free the session's buffers (VectorEnv.close calls this once)."""
        self.session.close()
