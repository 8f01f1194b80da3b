"""The dream and the real game behind stable-baselines3's VecEnv, so PPO trains in either with the same code.

SB3 has its own vector API (reset() -> obs; step_async/step_wait -> obs, rewards, dones, infos as a list of dicts), in
which an ended env is reset in the same step and the last frame of its episode travels in info["terminal_observation"],
with info["TimeLimit.truncated"] telling a time limit from a real end (PPO bootstraps the value there). Both adapters
hand out frames channels first (train.agents.policy.observation_space) and add info["episode"] = {"r", "l"} at each
end, which SB3 logs as rollout/ep_rew_mean.

With an action repeat k, one step of the agent holds its action for k frames (the rewards summed; the frame seen is the
last), as agents on Atari do (Mnih et al. 2015): the agent decides 4x less often, so credit reaches back 4x further per
decision and PPO's updates cost 4x less per frame. An env whose episode ends within the k frames goes on into its next
episode under the same action; those frames count toward the next episode's length but not its return.

- DreamSB3Env wraps train.agents.dream_vec_env.DreamVecEnv (B imagined worlds, one Session batch).
- GameSB3Env plays B real games (train.games.registry.make_game), episode e of env i seeded seed + i + B * e.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from engine.actions import ActionSpec
from train.agents.policy import action_space, channels_first, observation_space


class _Episodes(VecEnv):
    """Per-env episode return and length, the infos SB3 expects, and the VecEnv methods that do not apply."""

    def __init__(self, num_envs: int, frame_shape: tuple[int, ...], spec: ActionSpec, repeat: int = 1):
        self.render_mode, self.repeat = None, int(repeat)
        super().__init__(num_envs, observation_space(frame_shape), action_space(spec))
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)
        self.finished: list[tuple[float, int]] = []   # (return, length) of every episode ended since the last take
        self._actions: np.ndarray | None = None

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, -1)

    def _infos(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
               final_frames: dict[int, np.ndarray]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        self.returns += rewards
        self.lengths += self.repeat
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            ep = (float(self.returns[i]), int(self.lengths[i]))
            infos[i] = {"terminal_observation": channels_first(final_frames[i]),
                        "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                        "episode": {"r": ep[0], "l": ep[1]}}
            self.finished.append(ep)
            self.returns[i], self.lengths[i] = 0.0, 0
        return dones, infos

    def _frames_step(self, actions: np.ndarray):
        """One frame of every env: (frames (B, H, W, 3), rewards, terminated, truncated, {env: final frame})."""
        raise NotImplementedError

    def step_wait(self):
        B = self.num_envs
        total, term, trunc, finals = np.zeros(B), np.zeros(B, bool), np.zeros(B, bool), {}
        for _ in range(self.repeat):
            frames, rewards, te, tr, fin = self._frames_step(self._actions)
            live = ~(term | trunc)                       # envs whose episode of this agent step still runs
            total += np.where(live, rewards, 0.0)
            finals.update({i: f for i, f in fin.items() if live[i]})
            term |= np.asarray(te, bool) & live
            trunc |= np.asarray(tr, bool) & live
        dones, infos = self._infos(total, term, trunc, finals)
        return channels_first(frames), total.astype(np.float32), dones, infos

    def take_finished(self) -> list[tuple[float, int]]:
        done, self.finished = self.finished, []
        return done

    # SB3 calls these on wrappers; these envs have no attributes or methods to reach
    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        raise NotImplementedError(f"{type(self).__name__} has no per-env method {method_name!r}")

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * len(self._get_indices(indices))


class DreamSB3Env(_Episodes):
    """B dream worlds (a DreamVecEnv) as an SB3 VecEnv."""

    def __init__(self, dream: Any, seed: int = 0, repeat: int = 1):
        super().__init__(dream.num_envs, dream.session.frame_shape, dream.action_spec, repeat)
        self.dream, self.base_seed = dream, int(seed)

    def reset(self) -> np.ndarray:
        obs, _ = self.dream.reset(seed=self.base_seed)
        self.returns[:], self.lengths[:] = 0.0, 0
        return channels_first(obs)

    def _frames_step(self, actions: np.ndarray):
        obs, rewards, terminated, truncated, infos = self.dream.step(actions)
        finals = {i: infos["final_obs"][i] for i in np.flatnonzero(infos.get("_final_obs", ()))}
        return obs, np.asarray(rewards, np.float64), terminated, truncated, finals

    def close(self) -> None:
        self.dream.close()


class GameSB3Env(_Episodes):
    """B real games as an SB3 VecEnv; env i's e-th episode is seeded seed + i + B * e."""

    def __init__(self, games: list[Any], seed: int = 0, repeat: int = 1):
        g = games[0]
        super().__init__(len(games), (g.size, g.size, 3), g.action_spec, repeat)
        self.games, self.base_seed = games, int(seed)
        self.episode = np.zeros(len(games), np.int64)
        self._frames = np.zeros((len(games), g.size, g.size, 3), np.uint8)

    def _seed(self, i: int) -> int:
        return self.base_seed + i + self.num_envs * int(self.episode[i])

    def reset(self) -> np.ndarray:
        self.episode[:] = 0
        for i, g in enumerate(self.games):
            self._frames[i] = g.reset(seed=self._seed(i))
        self.returns[:], self.lengths[:] = 0.0, 0
        return channels_first(self._frames)

    def _frames_step(self, actions: np.ndarray):
        B = self.num_envs
        rewards, terminated, truncated = np.zeros(B), np.zeros(B, bool), np.zeros(B, bool)
        finals = {}
        for i, g in enumerate(self.games):
            frame, done = g.step(actions[i])
            rewards[i], terminated[i] = float(g.reward), bool(g.terminated)
            truncated[i] = bool(done and not g.terminated)
            self._frames[i] = frame
            if done:
                finals[i] = np.array(frame)
                self.episode[i] += 1
                self._frames[i] = g.reset(seed=self._seed(i))
        return self._frames.copy(), rewards, terminated, truncated, finals

    def close(self) -> None:
        for g in self.games:
            g.close()
