"""train.agents.dream_vec_env.DreamVecEnv: B dream worlds as one Session batch behind Gymnasium's vector API (spaces,
dtypes, seeding, SAME_STEP autoreset, reward_fn, B envs equal B DreamEnvs, bad input).

Gymnasium 1.4 has no checker for vector envs (gymnasium.utils.env_checker checks single envs: tests/test_dream_env.py
runs it on DreamEnv with a reward_fn), so the vector API is checked here by hand, as its docs define it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from tiny_model import FRAME, SPEC, start_frames, tiny_checkpoint, tiny_models

from engine.actions import ActionSpec
from train.agents.dream_env import DreamEnv
from train.agents.dream_vec_env import DreamVecEnv

B = 3
LEVEL = 1  # frames of a batch and of single runs may differ by float rounding: at most one level of 255


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("dreamvec") / "model.safetensors", start=3)


def random_actions(steps: int, seed: int = 0, batch: int = B) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (steps, batch, SPEC.size), dtype=np.int8)


def ends_at(env_index: int, call: int, batch: int = B):
    """A reward_fn: reward = the new frame's mean / 255; env `env_index` ends on its `call`-th call."""
    calls = [0]

    def reward_fn(prev, actions, frames):
        calls[0] += 1
        ended = np.zeros(batch, bool)
        ended[env_index] = calls[0] == call
        return frames.reshape(batch, -1).mean(1) / 255, ended

    return reward_fn


def rollout(env: DreamVecEnv, seed, actions: np.ndarray):
    obs, _ = env.reset(seed=seed)
    frames, steps = [obs], []
    for a in actions:
        out = env.step(a)
        frames.append(out[0])
        steps.append(out)
    return np.stack(frames), steps


def test_vector_api_spaces_dtypes_and_bookkeeping(checkpoint):
    env = DreamVecEnv(checkpoint, B, max_episode_steps=4, render_mode="rgb_array", steps=1)
    assert isinstance(env, VectorEnv) and env.num_envs == B
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert env.single_observation_space == spaces.Box(0, 255, FRAME, np.uint8)
    assert env.single_action_space == spaces.MultiBinary(SPEC.size)
    assert env.observation_space == spaces.Box(0, 255, (B, *FRAME), np.uint8)
    assert env.action_space == spaces.Box(0, 1, (B, SPEC.size), np.int8)  # gymnasium's batch of MultiBinary
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros((B, SPEC.size), np.int8))
    assert env.render() is None
    obs, infos = env.reset(seed=0)
    assert obs in env.observation_space and obs.dtype == np.uint8
    assert np.array_equal(infos["frame"], np.zeros(B)) and infos["_frame"].all()
    assert all(np.array_equal(obs[i], start_frames(3)[-1]) for i in range(B))  # the checkpoint's start state
    env.action_space.seed(0)
    previous = obs
    for t in range(1, 9):
        obs, rewards, terminations, truncations, infos = env.step(env.action_space.sample())
        assert obs in env.observation_space and obs is not previous and not np.shares_memory(obs, previous)
        assert rewards.shape == (B,) and rewards.dtype == np.float32 and not rewards.any()
        assert terminations.shape == truncations.shape == (B,)
        assert terminations.dtype == truncations.dtype == np.bool_ and not terminations.any()
        assert truncations.tolist() == [t % 4 == 0] * B  # truncated after max_episode_steps, then autoreset
        if t % 4 == 0:
            assert infos["_final_obs"].all() and infos["_final_info"].all()
            assert np.array_equal(infos["final_info"]["frame"], [4] * B)
            assert all(np.array_equal(o, start_frames(3)[-1]) for o in obs)  # already the next episode's first frame
            assert np.array_equal(infos["frame"], [0] * B)
        else:
            assert "final_obs" not in infos and np.array_equal(infos["frame"], [t % 4] * B)
        assert all(np.array_equal(r, o) for r, o in zip(env.render(), obs, strict=True))
        previous = obs
    env.close()
    env.close()  # closing twice is allowed
    assert env.closed


def test_same_seed_same_observations(checkpoint):
    env = DreamVecEnv(checkpoint, B, max_episode_steps=100, steps=1)
    actions = random_actions(8)
    first, _ = rollout(env, 5, actions)
    assert np.array_equal(rollout(env, 5, actions)[0], first)
    assert np.array_equal(rollout(env, [5, 6, 7], actions)[0], first)  # an int seeds env i with seed + i
    same = np.repeat(actions[:, :1], B, axis=1)  # every env the same actions: env i of seed 6 is env i + 1 of seed 5
    first, _ = rollout(env, 5, same)
    other, _ = rollout(env, 6, same)
    assert not np.array_equal(other[:, 0], first[:, 0])
    assert np.abs(other[:, :-1].astype(int) - first[:, 1:]).max() <= LEVEL
    env.close()


def test_b_envs_equal_b_dream_envs_across_autoreset(checkpoint):
    # max_episode_steps=5 with 12 steps: every env is autoreset twice, drawing its next world seed from its own
    # np_random as a DreamEnv's reset() does
    actions = random_actions(12, seed=1)
    env = DreamVecEnv(checkpoint, B, max_episode_steps=5, steps=1)
    batch, steps = rollout(env, 20, actions)
    for i in range(B):
        single = DreamEnv(checkpoint, max_episode_steps=5, steps=1)
        obs, _ = single.reset(seed=20 + i)
        frames = [obs]
        for a in actions[:, i]:
            obs, reward, terminated, truncated, _ = single.step(a)
            if truncated:
                assert np.array_equal(steps[len(frames) - 1][4]["final_obs"][i], obs)  # the ended episode's frame
                obs, _ = single.reset()
            frames.append(obs)
        diff = np.abs(np.stack(frames).astype(int) - batch[:, i].astype(int))
        assert diff.max() <= LEVEL, f"env {i}: max difference {diff.max()}"
        single.close()
    env.close()


def test_autoreset_of_one_env_leaves_the_others_bit_identical(checkpoint):
    actions = random_actions(10, seed=2)
    ended_run, ended_steps = rollout(DreamVecEnv(checkpoint, B, reward_fn=ends_at(1, 3), steps=1), 9, actions)
    plain_run, plain_steps = rollout(DreamVecEnv(checkpoint, B, reward_fn=ends_at(1, -1), steps=1), 9, actions)
    others = [0, 2]
    assert np.array_equal(ended_run[:, others], plain_run[:, others])  # bit for bit, before and after env 1's end
    assert np.array_equal(ended_run[:3, 1], plain_run[:3, 1])
    _, rewards, terminations, truncations, infos = ended_steps[2]
    assert terminations.tolist() == [False, True, False] and not truncations.any()
    assert infos["_final_obs"].tolist() == [False, True, False]
    assert np.array_equal(infos["final_obs"][1], plain_run[3, 1])      # the last frame of the ended episode
    assert np.array_equal(ended_run[3, 1], start_frames(3)[-1])         # env 1 already in its next episode
    assert infos["frame"].tolist() == [3, 0, 3] and infos["final_info"]["frame"][1] == 3
    assert not np.array_equal(ended_run[4:, 1], plain_run[4:, 1])
    assert [s[2].any() for s in plain_steps] == [False] * 10


def test_reward_fn_sees_each_transition_and_its_answers_come_back_per_env(checkpoint):
    seen = []

    def reward_fn(prev, actions, frames):
        seen.append((prev.copy(), actions.copy(), frames.copy()))
        rewards = np.arange(B, dtype=np.float32) + frames.reshape(B, -1).mean(1)
        return rewards, np.array([False, False, len(seen) == 2])

    env = DreamVecEnv(checkpoint, B, reward_fn=reward_fn, steps=1)
    obs0, _ = env.reset(seed=0)
    actions = random_actions(3, seed=3)
    obs1, r1, term1, _, _ = env.step(actions[0])
    obs2, r2, term2, _, info2 = env.step(actions[1])
    obs3, _, term3, _, _ = env.step(actions[2])
    (p1, a1, f1), (p2, a2, f2), (p3, _, _) = seen
    assert p1.shape == f1.shape == (B, *FRAME) and p1.dtype == f1.dtype == np.uint8
    assert a1.shape == (B, SPEC.size) and a1.dtype == np.float32 and np.array_equal(a1, actions[0])
    assert np.array_equal(p1, obs0) and np.array_equal(f1, obs1) and np.array_equal(p2, obs1)
    assert np.allclose(r1, np.arange(B) + obs1.reshape(B, -1).mean(1)) and r1.dtype == np.float32
    assert term1.tolist() == [False] * 3 and term2.tolist() == [False, False, True] and not term3.any()
    assert np.array_equal(f2[2], info2["final_obs"][2])
    assert np.array_equal(p3[2], obs2[2]) and np.array_equal(obs2[2], start_frames(3)[-1])  # the reset frame
    env.close()


def test_reset_mask_and_start_frames_options(checkpoint):
    env = DreamVecEnv(checkpoint, B, steps=1)
    env.reset(seed=0)
    obs, _, _, _, _ = env.step(random_actions(1)[0])
    other = np.full((2, *FRAME), 77, np.uint8)
    mask = np.array([False, True, False])
    again, infos = env.reset(options={"frames": other, "reset_mask": mask})
    assert np.array_equal(again[[0, 2]], obs[[0, 2]]) and np.array_equal(again[1], other[-1])
    assert infos["_frame"].tolist() == [False, True, False]
    obs, _ = env.reset(options={"frames": other, "actions": np.zeros((2, SPEC.size), np.float32)})
    assert all(np.array_equal(o, other[-1]) for o in obs)
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": [True, False, False]})
    fresh = DreamVecEnv(checkpoint, B, steps=1)
    with pytest.raises(gym.error.ResetNeeded):
        fresh.reset(options={"reset_mask": mask})


def test_sampling_settings_reach_the_session(checkpoint):
    env = DreamVecEnv(checkpoint, 2, steps=2, guidance=1.5, context_noise=0.2)
    assert (env.session.steps, env.session.guidance, env.session.context_noise) == (2, 1.5, pytest.approx(0.2))
    assert env.session.batch == 2
    single = DreamEnv(checkpoint, steps=2, guidance=1.5, context_noise=0.2)
    assert (single.session.steps, single.session.guidance) == (2, 1.5)
    assert single.session.context_noise == pytest.approx(0.2)
    actions = random_actions(4, seed=4, batch=2)
    quiet = rollout(DreamVecEnv(checkpoint, 2, context_noise=0.0, steps=1), 0, actions)[0]
    noisy = rollout(DreamVecEnv(checkpoint, 2, context_noise=0.5, steps=1), 0, actions)[0]
    assert not np.array_equal(quiet, noisy)


def test_one_env_and_axes_games():
    ae, wm = tiny_models()
    env = DreamVecEnv(models=(ae, wm, SPEC), num_envs=1, start_frames=start_frames(2), steps=1)  # no checkpoint
    obs, _ = env.reset(seed=0)
    assert obs.shape == (1, *FRAME)
    assert env.step(np.ones((1, SPEC.size), np.int8))[0].shape == (1, *FRAME)
    spec = ActionSpec(game="test:mouse", buttons=("fire",), axes=("dx", "dy"))
    env = DreamVecEnv(models=(*tiny_models(spec=spec), spec), num_envs=2, start_frames=start_frames(2), steps=1)
    assert env.single_action_space == spaces.Dict({"buttons": spaces.MultiBinary(1),
                                                   "axes": spaces.Box(-1.0, 1.0, (2,), np.float32)})
    env.reset(seed=0)
    env.action_space.seed(0)
    assert env.step(env.action_space.sample())[0].shape == (2, *FRAME)
    with pytest.raises(ValueError, match="dict"):
        env.step(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("answer, match", [
    (np.zeros(B), "return"),
    ((np.zeros(B + 1), np.zeros(B, bool)), "rewards"),
    ((np.full(B, np.nan), np.zeros(B, bool)), "finite"),
    ((np.zeros(B), np.full(B, 0.5)), "ended"),
    ((np.zeros(B), np.zeros(2, bool)), "ended"),
])
def test_bad_reward_fn_answers_are_refused(checkpoint, answer, match):
    env = DreamVecEnv(checkpoint, B, reward_fn=lambda prev, actions, frames: answer, steps=1)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(np.zeros((B, SPEC.size), np.int8))


def test_bad_use_is_refused(checkpoint):
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_envs"):
            DreamVecEnv(checkpoint, n, steps=1)
    with pytest.raises(ValueError, match="num_envs"):
        DreamVecEnv(checkpoint, 2, batch=2)
    with pytest.raises(ValueError, match="render_mode"):
        DreamVecEnv(checkpoint, 2, render_mode="human")
    with pytest.raises(ValueError, match="max_episode_steps"):
        DreamVecEnv(checkpoint, 2, max_episode_steps=0)
    with pytest.raises(ValueError, match="reward_fn"):
        DreamVecEnv(checkpoint, 2, reward_fn=3)
    with pytest.raises(ValueError, match="start frames"):
        DreamVecEnv(models=(*tiny_models(), SPEC), num_envs=2)
    env = DreamVecEnv(checkpoint, 2, steps=1)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="one action per env"):
        env.step(np.zeros(SPEC.size, np.int8))
    with pytest.raises(ValueError, match="one seed per env"):
        env.reset(seed=[1, 2, 3])


def test_a_reward_fn_may_answer_with_torch_tensors(checkpoint):
    import torch

    def reward_fn(prev, actions, frames):  # as a torch reward model answers: float logits and a bool end
        return torch.full((B,), 0.25), torch.tensor([True, False, False])

    env = DreamVecEnv(checkpoint, B, reward_fn=reward_fn, steps=1)
    env.reset(seed=0)
    _, rewards, terminations, _, infos = env.step(np.zeros((B, SPEC.size), np.int8))
    assert rewards.tolist() == [0.25] * B and rewards.dtype == np.float32
    assert terminations.tolist() == [True, False, False] and infos["_final_obs"].tolist() == [True, False, False]
