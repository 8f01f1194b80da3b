"""train.agents.dream_env.DreamEnv: the Gymnasium API over an imagined world (env checker, rollouts, seeding,
spaces)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env
from tiny_model import FRAME, SPEC, start_frames, tiny_checkpoint, tiny_models

from engine.actions import ActionSpec
from train.agents.dream_env import DreamEnv


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("dream") / "model.safetensors", start=3)


def play(env: DreamEnv, seed: int, actions) -> np.ndarray:
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    for a in actions:
        frames.append(env.step(a)[0])
    return np.stack(frames)


def test_env_checker_passes(checkpoint):
    # An EnvSpec (not registered anywhere) lets the checker assert seeded determinism and re-make the env for its
    # render-mode and double-close checks.
    kwargs = {"checkpoint": str(checkpoint), "max_episode_steps": 50, "steps": 1}
    env = DreamEnv(render_mode="rgb_array", **kwargs)
    env.spec = EnvSpec("ReverieDream-v0", entry_point=DreamEnv, kwargs=kwargs, nondeterministic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env)
    env.close()
    env.close()  # closing twice is allowed
    assert "ReverieDream-v0" not in gym.registry  # nothing registered globally


def test_rollout_frames_and_episode_bookkeeping(checkpoint):
    env = DreamEnv(checkpoint, max_episode_steps=20, render_mode="rgb_array", steps=1)
    assert env.observation_space == spaces.Box(0, 255, FRAME, np.uint8)
    assert env.action_space == spaces.MultiBinary(SPEC.size)
    obs, info = env.reset(seed=0)
    assert obs.shape == FRAME and obs.dtype == np.uint8 and info == {"frame": 0}
    env.action_space.seed(0)
    frames = []
    for t in range(1, 21):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space
        assert (reward, terminated, truncated, info) == (0.0, False, t == 20, {"frame": t})
        assert np.array_equal(env.render(), obs)
        frames.append(obs)
    assert len({f.tobytes() for f in frames}) > 1  # the dream moves
    env.close()


def test_same_seed_same_observations(checkpoint):
    env = DreamEnv(checkpoint, max_episode_steps=100, steps=1)
    actions = np.random.default_rng(1).integers(0, 2, (12, SPEC.size), dtype=np.int8)
    first = play(env, 5, actions)
    assert np.array_equal(play(env, 5, actions), first)
    assert not np.array_equal(play(env, 6, actions), first)
    env.close()


def test_start_frames_and_options(checkpoint):
    ae, wm = tiny_models()
    env = DreamEnv(models=(ae, wm, SPEC), start_frames=start_frames(2), steps=1)  # no checkpoint at all
    obs, _ = env.reset(seed=0)
    assert np.array_equal(obs, start_frames(2)[-1])
    other = np.full((2, *FRAME), 77, np.uint8)
    obs, _ = env.reset(seed=0, options={"frames": other, "actions": np.zeros((2, SPEC.size), np.float32)})
    assert np.array_equal(obs, other[-1])
    with pytest.raises(ValueError, match="start frames"):
        DreamEnv(models=(ae, wm, SPEC))


def test_axes_give_a_dict_action_space():
    spec = ActionSpec(game="test:mouse", buttons=("fire",), axes=("dx", "dy"))
    env = DreamEnv(models=(*tiny_models(spec=spec), spec), start_frames=start_frames(2), steps=1)
    assert env.action_space == spaces.Dict({"buttons": spaces.MultiBinary(1),
                                            "axes": spaces.Box(-1.0, 1.0, (2,), np.float32)})
    env.reset(seed=0)
    env.action_space.seed(0)
    assert env.step(env.action_space.sample())[0].shape == FRAME
    with pytest.raises(ValueError, match="dict"):
        env.step(np.zeros(3, np.float32))


def test_bad_use_is_refused(checkpoint):
    env = DreamEnv(checkpoint, steps=1)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(SPEC.size, np.int8))
    assert env.render() is None  # render_mode None
    with pytest.raises(ValueError, match="render_mode"):
        DreamEnv(checkpoint, render_mode="human")
    with pytest.raises(ValueError, match="batch"):
        DreamEnv(checkpoint, batch=2)
    with pytest.raises(ValueError, match="max_episode_steps"):
        DreamEnv(checkpoint, max_episode_steps=0)


def mean_reward(prev, actions, frames):
    """A deterministic reward_fn: the change of the frame's mean brightness; ended when a frame is darker than 100."""
    change = frames.reshape(len(frames), -1).mean(1) - prev.reshape(len(prev), -1).mean(1)
    return change.astype(np.float32), frames.reshape(len(frames), -1).mean(1) < 100


def test_env_checker_passes_with_a_reward_fn(checkpoint):
    kwargs = {"checkpoint": str(checkpoint), "max_episode_steps": 50, "steps": 1, "reward_fn": mean_reward}
    env = DreamEnv(render_mode="rgb_array", **kwargs)
    env.spec = EnvSpec("ReverieDreamReward-v0", entry_point=DreamEnv, kwargs=kwargs, nondeterministic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)
    env.close()


def test_reward_fn_gives_reward_and_episode_end(checkpoint):
    seen = []

    def reward_fn(prev, actions, frames):
        seen.append((prev.copy(), actions.copy(), frames.copy()))
        assert not frames.flags.writeable  # the env's own frames cannot be changed through it
        return np.array([len(seen) * 0.5], np.float32), np.array([len(seen) == 3])

    env = DreamEnv(checkpoint, max_episode_steps=5, reward_fn=reward_fn, steps=1)
    obs0, _ = env.reset(seed=0)
    results = [env.step(np.array([1, 0, 0, 1], np.int8)) for _ in range(3)]
    assert [(r[1], r[2], r[3]) for r in results] == [(0.5, False, False), (1.0, False, False), (1.5, True, False)]
    assert all(isinstance(r[1], float) and isinstance(r[2], bool) for r in results)
    prev, actions, frames = seen[0]
    assert prev.shape == frames.shape == (1, *FRAME) and np.array_equal(prev[0], obs0)
    assert np.array_equal(frames[0], results[0][0]) and np.array_equal(seen[1][0][0], results[0][0])
    assert actions.dtype == np.float32 and np.array_equal(actions, [[1, 0, 0, 1]])
    env.close()


def test_bad_reward_fn_is_refused(checkpoint):
    with pytest.raises(ValueError, match="reward_fn must be callable"):
        DreamEnv(checkpoint, reward_fn="model.safetensors", steps=1)
    env = DreamEnv(checkpoint, reward_fn=lambda p, a, f: (np.zeros(2), np.zeros(2, bool)), steps=1)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"rewards must be \(1,\)"):
        env.step(np.zeros(SPEC.size, np.int8))


def test_sampling_noise_is_a_setting(checkpoint):
    env = DreamEnv(checkpoint, context_noise=0.3, steps=2, guidance=2.0)
    assert (env.session.context_noise, env.session.steps, env.session.guidance) == (pytest.approx(0.3), 2, 2.0)
    actions = np.random.default_rng(2).integers(0, 2, (6, SPEC.size), dtype=np.int8)
    quiet = play(DreamEnv(checkpoint, context_noise=0.0, steps=1), 3, actions)
    assert not np.array_equal(play(DreamEnv(checkpoint, context_noise=0.5, steps=1), 3, actions), quiet)
