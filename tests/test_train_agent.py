"""`reverie train agent` (train/agents/train_agent.py): a few thousand PPO frames end to end in the dream of a small
random world model with a reward model beside it, and in the real game; what the run folder holds, resuming, that PPO
changes the policy, the SB3 VecEnv adapters (train/agents/sb3_envs.py), and bad input as one-line errors that write
nothing.

The runs use a 64x64 world model built like tests/tiny_model.py's (whose 32x32 frames are too small for SB3's Nature
CNN: a one-line error). Its reward model has random reward logits and an episode end that never fires, so the episodes
are cut off after --episode-steps frames.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_model import SPEC, start_frames, tiny_checkpoint

import reverie_cli
from engine.actions import ActionSpec
from engine.checkpoint import save_checkpoint
from engine.config import ModelConfig
from engine.graphs import file_sha256
from engine.reward_model import RewardModel
from train.agents.policy import FEATURES_DIM, channels_first, load_agent, policy_class
from train.agents.sb3_envs import DreamSB3Env, GameSB3Env
from train.agents.train_agent import PPO_SETTINGS

SIZE = 64            # frame side of the runs' world model (the Nature CNN's smallest input is 36)
WORLDS = 4
EPISODE = 64         # dream frames per episode (--episode-steps)
ROLLOUT = PPO_SETTINGS["n_steps"] * WORLDS   # frames per PPO update: 512
RUN = ["--worlds", str(WORLDS), "--episode-steps", str(EPISODE), "--denoise-steps", "1", "--save-every",
       str(ROLLOUT), "--action-repeat", "1", "--threads", "1", "--no-progress"]   # every frame a choice


# ---- models ----------------------------------------------------------------------------------------------------------
def world_model(path: Path, size: int = SIZE) -> Path:
    """tests/tiny_model.py's tiny random world model at `size` x `size` frames (latents size/8), with a start state."""
    return tiny_checkpoint(path, size=size)


def reward_model(path: Path, spec: ActionSpec = SPEC) -> Path:
    """A random reward model (classes 0 and 1) whose episode end never fires (end logit -20)."""
    torch.manual_seed(1)
    model = RewardModel(spec.size, [0.0, 1.0], width=8)
    with torch.no_grad():
        model.head[-1].weight[-1].zero_()
        model.head[-1].bias[-1] = -20.0
    return save_checkpoint(path, kind="reward", config=ModelConfig(), action_spec=spec,
                           parts={"reward": model.state_dict()},
                           extra={"classes": [0.0, 1.0], "width": 8, "end": "terminated",
                                  "eval": {"end_threshold": 0.5}})


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The runs' world model, with its reward model beside it (<stem>.reward.safetensors: the default lookup)."""
    root = tmp_path_factory.mktemp("agent-model")
    reward_model(root / "model.reward.safetensors")
    return world_model(root / "model.safetensors")


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """A world model with no reward model beside it."""
    return world_model(tmp_path_factory.mktemp("agent-bare") / "model.safetensors")


def train(argv: list[str], capsys) -> str:
    """Run `reverie train agent ARGV`; it must succeed; returns what it printed."""
    capsys.readouterr()
    assert reverie_cli.main(["train", "agent", *argv]) == 0
    return capsys.readouterr().out


def files(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dream_run(model, tmp_path_factory) -> tuple[Path, str, dict[str, bytes]]:
    """2048 frames in the dream (4 PPO updates): the run folder, what was printed and the files it wrote."""
    out = tmp_path_factory.mktemp("agent-dream") / "run"
    with pytest.MonkeyPatch.context() as mp:   # module scope has no capsys: capture by hand
        buf = io.StringIO()
        mp.setattr(sys, "stdout", buf)
        assert reverie_cli.main(["train", "agent", "--model", str(model), "--out", str(out), "--frames", "2048",
                                 *RUN]) == 0
    return out, buf.getvalue(), files(out)


def check_run_folder(out: Path, frames: int, trained_in: str) -> None:
    """What a finished run leaves: the agent, snapshots every ROLLOUT frames, TensorBoard events, train.json, states."""
    agent = load_agent(out)
    assert agent.info["trained_in"] == trained_in and agent.info["frames"] == frames, agent.info
    assert agent.spec == SPEC and agent.frame_shape == (SIZE, SIZE, 3)
    action = agent.act(np.zeros((SIZE, SIZE, 3), np.uint8))
    assert action.shape == (SPEC.size,) and set(action.tolist()) <= {0.0, 1.0}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"agent_{n:09d}.safetensors" for n in range(ROLLOUT, frames + 1, ROLLOUT)]
    assert load_agent(out / "checkpoints" / f"agent_{ROLLOUT:09d}.safetensors").info["frames"] == ROLLOUT
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    summary = json.loads((out / "train.json").read_text())
    assert summary["frames"] == frames and summary["trained_in"] == trained_in and summary["game"] == SPEC.game
    assert json.loads((out / "config.json").read_text())["stage"] == "agent"
    assert (out / "state" / "manifest.json").is_file()


# ---- runs ------------------------------------------------------------------------------------------------------------
def test_a_dream_run_writes_the_agent_snapshots_logs_and_states(dream_run, model):
    out, printed, _ = dream_run
    check_run_folder(out, 2048, "dream")
    assert f"wrote {out / 'agent.safetensors'}: 2,048 frames" in printed, printed
    info = load_agent(out).info
    assert info["world_model"] == str(model)
    assert info["reward_model"] == str(model.with_name("model.reward.safetensors"))   # found beside the model
    assert info["reward_model_sha256"] == file_sha256(model.with_name("model.reward.safetensors"))
    assert info["episode_steps"] == EPISODE and info["dream"]["steps"] == 1 and info["seed"] == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2048 // EPISODE   # each world's episodes are cut off after 64 frames
    assert all(m["length"] == EPISODE and m["frames"] % ROLLOUT == 0 and 0 <= m["return"] <= EPISODE for m in lines)


def test_the_same_command_resumes_and_a_finished_run_is_left_alone(dream_run, model, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(dream_run[0], out)
    printed = train(["--model", str(model), "--out", str(out), "--frames", "2560", *RUN], capsys)
    assert f"{out}: resuming at 2,048 frames" in printed, printed
    check_run_folder(out, 2560, "dream")
    assert json.loads((out / "train.json").read_text())["frames"] == 2560
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2560 // EPISODE   # appended to, not restarted
    before = files(out)
    printed = train(["--model", str(model), "--out", str(out), "--frames", "2560", *RUN], capsys)
    assert "already trained on 2,560 frames" in printed, printed
    assert files(out) == before


def test_ppo_changes_the_policy(dream_run, model):
    """The trained weights differ from the fresh policy PPO builds with the same seed (which is reproducible)."""
    from stable_baselines3 import PPO

    from train.games.registry import make_game

    def fresh() -> dict[str, torch.Tensor]:
        env = GameSB3Env([make_game("builtin:gems", size=SIZE) for _ in range(WORLDS)])   # the same spaces
        ppo = PPO(policy_class(), env, seed=0, device="cpu", policy_kwargs={"features_extractor_kwargs":
                                                                           {"features_dim": FEATURES_DIM}},
                  **PPO_SETTINGS)
        return ppo.policy.state_dict()

    first, second = fresh(), fresh()
    assert all(torch.equal(first[k], second[k]) for k in first)
    trained = load_agent(dream_run[0]).policy.state_dict()
    assert trained.keys() == first.keys()
    changed = [k for k in first if not torch.equal(first[k], trained[k])]
    assert "action_net.weight" in changed and "value_net.weight" in changed and \
        "features_extractor.cnn.0.weight" in changed, changed
    # and each update changes it again: the first snapshot (after one update) is not the last (after four)
    snapshots = sorted((dream_run[0] / "checkpoints").iterdir())
    early, late = (load_agent(p).policy.state_dict() for p in (snapshots[0], snapshots[-1]))
    assert not torch.equal(early["action_net.weight"], late["action_net.weight"])


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_says_where_its_whole_state_is_and_resumes(model, tmp_path, capsys, monkeypatch, signum, code):
    """SIGTERM or Ctrl-C during training: the update under way finishes, a whole state is saved, one line says where,
    and the same command goes on from there to the end."""
    from train.training.interrupt import StopSignals

    out = tmp_path / "run"
    argv = ["train", "agent", "--model", str(model), "--out", str(out), "--frames", str(3 * ROLLOUT), *RUN]
    monkeypatch.setattr(StopSignals, "agreed", lambda self: signum)   # the signal arrives during the first update
    capsys.readouterr()
    if signum == signal.SIGINT:
        assert reverie_cli.main(argv) == code
    else:
        with pytest.raises(SystemExit) as stopped:
            reverie_cli.main(argv)
        assert stopped.value.code == code
    printed = capsys.readouterr().out
    state = out / "state" / f"step_{ROLLOUT:08d}"
    assert f"stopped at {ROLLOUT:,} frames, its whole state is saved in {state}; run the same command" in printed
    assert load_agent(out).info["frames"] == ROLLOUT and not (out / "train.json").exists()
    monkeypatch.undo()
    printed = train(argv[2:], capsys)
    assert f"{out}: resuming at {ROLLOUT:,} frames" in printed, printed
    check_run_folder(out, 3 * ROLLOUT, "dream")


def test_an_explicit_reward_model(model, tmp_path, capsys):
    """--reward for a world model with none beside it."""
    alone = tmp_path / "alone" / "wm.safetensors"
    alone.parent.mkdir()
    shutil.copy(model, alone)
    reward = reward_model(tmp_path / "reward" / "reward.safetensors")
    out = tmp_path / "run"
    train(["--model", str(alone), "--reward", str(reward), "--out", str(out), "--frames", str(ROLLOUT), *RUN], capsys)
    check_run_folder(out, ROLLOUT, "dream")
    assert load_agent(out).info["reward_model"] == str(reward)


def test_a_real_game_run(tmp_path, capsys):
    out = tmp_path / "run"
    printed = train(["--env", "builtin:gems", "--size", str(SIZE), "--out", str(out), "--frames", "1024", *RUN],
                    capsys)
    assert "1,024 frames" in printed, printed
    check_run_folder(out, 1024, "real")
    assert load_agent(out).info["env"] == "builtin:gems"




# ---- the SB3 adapters ------------------------------------------------------------------------------------------------
def check_vec_step(env, actions, ended_at: dict[int, bool]) -> tuple[np.ndarray, list[dict]]:
    """One VecEnv step: shapes and dtypes, and infos that hold an episode's end exactly where `ended_at` says
    (env index -> whether by the time limit)."""
    obs, rewards, dones, infos = env.step(actions)
    B, (C, H, W) = env.num_envs, env.observation_space.shape
    assert obs.shape == (B, C, H, W) and obs.dtype == np.uint8
    assert rewards.shape == (B,) and rewards.dtype == np.float32
    assert dones.shape == (B,) and dones.dtype == np.bool_ and len(infos) == B
    assert np.flatnonzero(dones).tolist() == sorted(ended_at)
    for i, info in enumerate(infos):
        if i in ended_at:
            assert info["terminal_observation"].shape == (C, H, W)
            assert info["terminal_observation"].dtype == np.uint8
            assert set(info["episode"]) == {"r", "l"} and info["TimeLimit.truncated"] is ended_at[i]
        else:
            assert "episode" not in info and "terminal_observation" not in info
    return obs, infos


def test_dream_sb3_env_is_a_vec_env_as_sb3_expects(bare):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecEnv

    from train.agents.dream_vec_env import DreamVecEnv

    B, calls = 3, [0]

    def reward_fn(prev, actions, frames):   # reward 1 every step; env 1 ends (terminated) on the 2nd step
        calls[0] += 1
        return np.ones(B, np.float32), np.array([False, calls[0] == 2, False])

    env = DreamSB3Env(DreamVecEnv(bare, B, max_episode_steps=3, reward_fn=reward_fn, steps=1), seed=0)
    assert isinstance(env, VecEnv) and PPO._wrap_env(env) is env   # channels first already: no transposing wrapper
    obs = env.reset()
    assert obs.shape == (B, 3, SIZE, SIZE) and obs.dtype == np.uint8 and obs.shape[1:] == env.observation_space.shape
    start = channels_first(start_frames(size=SIZE)[-1])   # the checkpoint's start state
    assert all(np.array_equal(o, start) for o in obs)
    actions = np.ones((B, SPEC.size), np.int64)
    check_vec_step(env, actions, {})
    obs, infos = check_vec_step(env, actions, {1: False})
    assert infos[1]["episode"] == {"r": 2.0, "l": 2} and np.array_equal(obs[1], start)   # reset in the same step
    obs, infos = check_vec_step(env, actions, {0: True, 2: True})   # the time limit, 3 frames
    assert infos[0]["episode"] == {"r": 3.0, "l": 3} and np.array_equal(obs[0], start)
    assert sorted(env.take_finished()) == [(2.0, 2), (3.0, 3), (3.0, 3)] and env.take_finished() == []
    env.close()


class Ends:
    """A stub game that is over (terminated, reward 1 each step) after `steps` steps."""

    size, action_spec = SIZE, SPEC

    def __init__(self, steps: int):
        self.steps, self.t, self.reward, self.terminated = steps, 0, 0.0, False

    def reset(self, seed=None):
        self.t = 0
        return np.full((SIZE, SIZE, 3), 7, np.uint8)

    def step(self, action):
        self.t += 1
        self.reward, self.terminated = 1.0, self.t >= self.steps
        return np.full((SIZE, SIZE, 3), self.t, np.uint8), self.terminated

    def close(self):
        pass


def test_game_sb3_env_is_a_vec_env_as_sb3_expects():
    from train.games.builtin import GemsConfig, GemsGame

    env = GameSB3Env([GemsGame(size=SIZE, config=GemsConfig(max_steps=2)), Ends(1)], seed=5)
    obs = env.reset()
    assert obs.shape == (2, 3, SIZE, SIZE) and obs.dtype == np.uint8
    actions = np.zeros((2, SPEC.size), np.int64)
    obs, infos = check_vec_step(env, actions, {1: False})   # the stub ends, terminated
    assert infos[1]["episode"] == {"r": 1.0, "l": 1} and (infos[1]["terminal_observation"] == 1).all()
    assert (obs[1] == 7).all()   # reset in the same step
    obs, infos = check_vec_step(env, actions, {0: True, 1: False})   # gems' time limit (2 frames)
    assert infos[0]["episode"]["l"] == 2 and env.episode.tolist() == [1, 2]
    env.close()


# ---- bad input -------------------------------------------------------------------------------------------------------
def one_line_error(capsys, argv: list[str]) -> str:
    """Run `reverie train agent ...`; it must fail with exactly one line on stderr and no traceback."""
    capsys.readouterr()
    assert reverie_cli.main(["train", "agent", *argv]) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("reverie train agent: error: "), lines[0]
    return lines[0]


def test_a_world_model_without_a_reward_model_is_refused(bare, tmp_path, capsys):
    out = tmp_path / "run"
    line = one_line_error(capsys, ["--model", str(bare), "--out", str(out), *RUN])
    assert str(bare) in line and "no reward model" in line and "--reward" in line, line
    assert not out.exists()


def test_a_reward_model_of_another_game_is_refused(bare, tmp_path, capsys):
    breakout = reward_model(tmp_path / "breakout.safetensors",
                            ActionSpec(game="ale:Breakout", buttons=("fire", "left", "right")))
    out = tmp_path / "run"
    line = one_line_error(capsys, ["--model", str(bare), "--reward", str(breakout), "--out", str(out), *RUN])
    assert "--reward" in line and "ale:Breakout" in line and "builtin:gems" in line, line
    assert not out.exists()


def test_a_reward_that_is_not_a_reward_model_is_refused(bare, tmp_path, capsys):
    out = tmp_path / "run"
    line = one_line_error(capsys, ["--model", str(bare), "--reward", str(bare), "--out", str(out), *RUN])
    assert "--reward" in line and "not a reward model" in line, line
    assert not out.exists()


@pytest.mark.parametrize("where", ["dream", "real"])
def test_frames_too_small_for_the_agents_cnn_are_refused(where, tmp_path, capsys):
    """tests/tiny_model.py's 32x32 world model, or the real game at --size 32."""
    tiny = tiny_checkpoint(tmp_path / "model.safetensors")
    reward_model(tmp_path / "model.reward.safetensors")
    source = ["--model", str(tiny)] if where == "dream" else ["--env", "builtin:gems", "--size", "32"]
    out = tmp_path / "run"
    line = one_line_error(capsys, [*source, "--out", str(out), *RUN])
    assert "32x32" in line and "36x36" in line and "--size" in line, line
    assert not out.exists()


def test_a_missing_model_is_refused(tmp_path, capsys):
    out, missing = tmp_path / "run", tmp_path / "nope.safetensors"
    line = one_line_error(capsys, ["--model", str(missing), "--out", str(out), *RUN])
    assert str(missing) in line and "no such" in line, line
    assert not out.exists()


def test_another_stages_run_folder_is_refused(bare, tmp_path, capsys):
    reward = reward_model(tmp_path / "reward.safetensors")
    out = tmp_path / "wm-run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"stage": "wm", "flags": {}}))
    before = files(out)
    line = one_line_error(capsys, ["--model", str(bare), "--reward", str(reward), "--out", str(out), *RUN])
    assert "--out" in line and "reverie train wm" in line, line
    assert files(out) == before


@pytest.mark.parametrize("flag, value", [("--frames", "-5"), ("--frames", "0"), ("--frames", "1e12"),
                                         ("--worlds", "0")])
def test_bad_numbers_are_usage_errors(flag, value, bare, tmp_path, capsys):
    """argparse's errors: a usage line and one error line naming the flag and the value, exit status 2."""
    out = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        reverie_cli.main(["train", "agent", "--model", str(bare), "--out", str(out), *RUN, flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines[0].startswith("usage:"), err
    assert flag in lines[-1] and "must be between 1 and" in lines[-1], err
    assert not out.exists()


# ---- action repeat and recorded starts ------------------------------------------------------------------------------
def test_an_action_repeat_counts_frames_and_the_agent_holds_its_choice(model, tmp_path, capsys):
    """--action-repeat 4: a PPO update covers 4x the frames, and the saved agent holds each choice for 4 frames."""
    out = tmp_path / "run"
    run = list(RUN)
    run[run.index("--action-repeat") + 1] = "4"
    run[run.index("--save-every") + 1] = str(4 * ROLLOUT)
    train(["--model", str(model), "--out", str(out), "--frames", str(4 * ROLLOUT), *run], capsys)
    agent = load_agent(out)
    assert agent.info["action_repeat"] == 4 and agent.info["frames"] == 4 * ROLLOUT
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"agent_{4 * ROLLOUT:09d}.safetensors"]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)
    agent.reset(3)
    acts = np.stack([agent.act(f) for f in frames])
    for k in range(0, 12, 4):   # the same choice over each 4 frames, whatever the frames
        assert (acts[k:k + 4] == acts[k]).all()
    agent.reset(3)
    again = np.stack([agent.act(f) for f in frames])
    assert (again == acts).all(), "the same seed, the same actions"


def test_dream_episodes_start_from_recorded_play(model, tmp_path, capsys):
    """--starts DIR: every dream episode is primed from a window of recorded play, not the built-in start."""
    from train.agents.dream_vec_env import DreamVecEnv
    from train.agents.starts import RecordedStarts

    data = tmp_path / "play"
    assert reverie_cli.main(["record", "--env", "builtin:gems", "--episodes", "2", "--steps", "40", "--size",
                             str(SIZE), "--out", str(data), "--no-progress"]) == 0
    starts = RecordedStarts(data, SPEC, (SIZE, SIZE, 3), 2)
    frames, actions = starts(np.random.default_rng(0))
    assert frames.shape == (2, SIZE, SIZE, 3) and actions.shape == (2, SPEC.size)
    env = DreamVecEnv(model, num_envs=3, max_episode_steps=5, start_sampler=starts, steps=1)
    try:
        obs, _ = env.reset(seed=7)
        assert obs.shape == (3, SIZE, SIZE, 3)
        assert any(not np.array_equal(obs[i], obs[j]) for i in range(3) for j in range(i)), \
            "each world starts from a window of its own"
    finally:
        env.close()
    out = tmp_path / "run"
    train(["--model", str(model), "--out", str(out), "--frames", str(ROLLOUT), "--starts", str(data), *RUN], capsys)
    assert load_agent(out).info["starts"] == str(data)


def test_starts_of_another_game_or_none_are_refused(model, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    line = one_line_error(capsys, ["--model", str(model), "--out", str(out), "--starts", str(empty), *RUN])
    assert "--starts" in line and not out.exists()
