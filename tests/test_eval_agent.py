"""`reverie eval agent`: baselines and trained agents scored in the real game and in a tiny dream; bad input is a
one-line error that writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import reverie_cli
from engine.actions import ActionSpec
from engine.autoencoder import Autoencoder
from engine.checkpoint import save_checkpoint
from engine.config import AutoencoderConfig, ModelConfig
from engine.reward_model import RewardModel
from engine.world_model import WorldModel
from tests.tiny_model import SPEC, tiny_checkpoint, tiny_config
from train.games.registry import make_game

pytest.importorskip("stable_baselines3")
from train.agents.policy import build_policy, save_agent  # noqa: E402

GEMS = ["--env", "builtin:gems"]
DREAM_FRAME = (64, 64, 3)   # SB3's Nature CNN needs frames of at least 36 pixels a side: tiny_model's 32 are too few
FIELDS = {"mean", "stderr", "episodes", "scores", "lengths", "seed", "agent", "agent_info", "where", "seconds"}


def make_agent_file(path: Path, spec: ActionSpec, frame_shape: tuple[int, int, int]) -> Path:
    """An untrained policy saved as an agent file."""
    torch.manual_seed(0)
    return save_agent(path, build_policy(frame_shape, spec), spec, frame_shape, {"trained_in": "real", "frames": 0})


@pytest.fixture(scope="module")
def agents(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("agents")
    gems = make_game("builtin:gems").action_spec
    other = ActionSpec(game="ale:Breakout", buttons=("fire", "left", "right"))
    return {"gems64": make_agent_file(d / "gems64.safetensors", gems, (64, 64, 3)),
            "other": make_agent_file(d / "other.safetensors", other, (64, 64, 3)),
            "dream": make_agent_file(d / "dream.safetensors", SPEC, DREAM_FRAME)}


def tiny_64_checkpoint(path: Path) -> Path:
    """tests/tiny_model's random world model at 64x64 frames (8x8 latents), with a random start state."""
    cfg = tiny_config()
    cfg.autoencoder = AutoencoderConfig(height=64, width=64, latent_channels=16, encoder_channels=(8, 8, 8),
                                        decoder_channels=(8, 8, 8))
    cfg.world_model.latent_height = cfg.world_model.latent_width = 8
    cfg.validate()
    torch.manual_seed(0)
    ae, wm = Autoencoder(cfg.autoencoder), WorldModel(cfg.world_model)
    start = np.random.default_rng(0).integers(0, 256, (2, *DREAM_FRAME), dtype=np.uint8)
    parts = {"ae": ae.state_dict(), "wm": wm.state_dict(),
             "start": {"frames": torch.from_numpy(start), "actions": torch.zeros(2, SPEC.size)}}
    return save_checkpoint(path, kind="world_model", config=cfg, action_spec=SPEC, parts=parts)


def write_reward_model(path: Path) -> Path:
    """An untrained reward model whose end never fires: dream episodes run to --episode-steps."""
    torch.manual_seed(0)
    reward = RewardModel(SPEC.size, [0.0, 1.0], width=8)
    with torch.no_grad():
        reward.head[-1].bias[-1] = -20.0    # the end's logit
    return save_checkpoint(path, kind="reward", config=ModelConfig(), action_spec=SPEC,
                           parts={"reward": reward.state_dict()},
                           extra={"classes": [0.0, 1.0], "width": 8, "end": "terminated",
                                  "eval": {"end_threshold": 0.5}})


@pytest.fixture(scope="module")
def dream(tmp_path_factory) -> dict[str, Path]:
    """Tiny gems world models at 64x64 and 32x32 frames, each with a reward model beside it."""
    d64, d32 = tmp_path_factory.mktemp("dream64"), tmp_path_factory.mktemp("dream32")
    for d in (d64, d32):
        write_reward_model(d / "reward.safetensors")
    return {"64": tiny_64_checkpoint(d64 / "model.safetensors"), "32": tiny_checkpoint(d32 / "model.safetensors")}


def run(argv: list[str], out: Path | None = None) -> dict:
    assert reverie_cli.main(["eval", "agent", *argv, "--no-progress", *(["--json", str(out)] if out else [])]) == 0
    return json.loads(out.read_text()) if out else {}


def check_result(result: dict, episodes: int) -> None:
    assert FIELDS <= set(result)
    assert result["episodes"] == len(result["scores"]) == len(result["lengths"]) == episodes
    assert result["mean"] == pytest.approx(np.mean(result["scores"]))
    assert result["stderr"] == pytest.approx(np.std(result["scores"], ddof=1) / np.sqrt(episodes))


def test_baselines_score_real_episodes_and_scripted_beats_random(tmp_path, capsys):
    scripted = run(["--agent", "scripted", *GEMS, "--episodes", "3"], tmp_path / "scripted.json")
    random = run(["--agent", "random", *GEMS, "--episodes", "3", "--seed", "7"], tmp_path / "random.json")
    for result in (scripted, random):
        check_result(result, 3)
        assert result["where"] == "real" and result["env"] == "builtin:gems"
        assert all(0 < n <= 1000 for n in result["lengths"])
    assert random["seed"] == 7 and random["agent"] == "random"
    assert scripted["mean"] > random["mean"]
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert line.startswith("agent scripted on builtin:gems: ") and "(seeds 1000000..1000002)" in line


def test_the_same_seed_plays_the_same_episodes(tmp_path):
    a = run(["--agent", "random", *GEMS, "--episodes", "2"], tmp_path / "a.json")
    b = run(["--agent", "random", *GEMS, "--episodes", "2"], tmp_path / "b.json")
    assert a["scores"] == b["scores"] and a["lengths"] == b["lengths"]


def test_real_episodes_are_cut_off_at_episode_steps(tmp_path):
    """An Atari agent that never serves would play 27,000 frames an episode: --episode-steps caps the real game too."""
    full = run(["--agent", "scripted", *GEMS, "--episodes", "2"], tmp_path / "full.json")
    cut = run(["--agent", "scripted", *GEMS, "--episodes", "2", "--episode-steps", "50"], tmp_path / "cut.json")
    assert min(full["lengths"]) > 50 and full["episode_steps"] is None
    assert cut["lengths"] == [50, 50] and cut["episode_steps"] == 50 and cut["mean"] <= full["mean"]


def test_an_atari_game_scores_points_to_the_cap(tmp_path, capsys):
    result = run(["--agent", "random", "--env", "ale:Breakout", "--episodes", "1", "--episode-steps", "20"],
                 tmp_path / "breakout.json")
    assert result["lengths"] == [20] and result["game"] == "ale:Breakout"   # 5 lives last longer than 20 steps
    assert "points an episode over 1 episodes" in capsys.readouterr().out


def test_one_episode_has_no_spread(tmp_path):
    result = run(["--agent", "scripted", *GEMS, "--episodes", "1"], tmp_path / "one.json")
    assert result["stderr"] == 0 and result["mean"] == result["scores"][0]


def test_a_trained_agent_plays_real_episodes(agents, tmp_path):
    result = run(["--agent", str(agents["gems64"]), *GEMS, "--episodes", "2"], tmp_path / "agent.json")
    check_result(result, 2)
    assert result["agent_info"]["trained_in"] == "real" and result["agent_info"]["frames"] == 0


def test_a_trained_agent_and_random_play_in_the_dream(agents, dream, tmp_path):
    result = run(["--agent", str(agents["dream"]), "--model", str(dream["64"]), "--episodes", "3", "--worlds", "2",
                  "--episode-steps", "4", "--seed", "5"], tmp_path / "dream.json")
    check_result(result, 3)
    assert result["where"] == "dream" and result["model"] == str(dream["64"]) and result["worlds"] == 2
    assert result["lengths"] == [4, 4, 4] and set(result["scores"]) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    random = run(["--agent", "random", "--model", str(dream["32"]), "--episodes", "2", "--episode-steps", "3"],
                 tmp_path / "random.json")
    check_result(random, 2)
    assert random["worlds"] == 2 and random["lengths"] == [3, 3]


def one_line_error(capsys, argv: list[str], out: Path) -> str:
    capsys.readouterr()
    assert reverie_cli.main(["eval", "agent", *argv, "--json", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("case, expected", [
    ("other game", "trained on 'ale:Breakout', not 'builtin:gems'"),
    ("frame size", "acts on 64x64 frames"),
    ("episodes", "--episodes 0: must be between 1 and"),
    ("seed", "--seed -1: must be a whole number >= 0"),
    ("unknown env", "unknown game 'nope:x'"),
    ("missing", "no such agent file or run folder"),
    ("scripted dream", "--agent scripted reads the real game's state"),
    ("dream frame size", "acts on 64x64 frames"),
])
def test_bad_input_is_a_one_line_error_and_writes_nothing(case, expected, agents, dream, tmp_path, capsys):
    argv = {"other game": ["--agent", str(agents["other"]), *GEMS, "--episodes", "1"],
            "frame size": ["--agent", str(agents["gems64"]), *GEMS, "--size", "32", "--episodes", "1"],
            "episodes": ["--agent", "random", *GEMS, "--episodes", "0"],
            "seed": ["--agent", "random", *GEMS, "--episodes", "1", "--seed", "-1"],
            "unknown env": ["--agent", "random", "--env", "nope:x", "--episodes", "1"],
            "missing": ["--agent", str(tmp_path / "no.safetensors"), *GEMS, "--episodes", "1"],
            "scripted dream": ["--agent", "scripted", "--model", str(dream["64"]), "--episodes", "1"],
            "dream frame size": ["--agent", str(agents["dream"]), "--model", str(dream["32"]), "--episodes", "1"]}[case]
    err = one_line_error(capsys, argv, tmp_path / "out.json")
    assert err.startswith("reverie eval agent: error: ") and expected in err, err


def test_dream_episodes_from_recorded_starts(agents, dream, tmp_path):
    """--starts: each dream episode begins from a window of recorded play, as 'train agent --starts' trains it."""
    data = tmp_path / "play"
    assert reverie_cli.main(["record", "--env", "builtin:gems", "--episodes", "2", "--steps", "30", "--out", str(data),
                             "--no-progress"]) == 0
    result = run(["--agent", str(agents["dream"]), "--model", str(dream["64"]), "--episodes", "2", "--worlds", "2",
                  "--episode-steps", "3", "--starts", str(data)], tmp_path / "starts.json")
    check_result(result, 2)
    assert result["starts"] == str(data) and result["lengths"] == [3, 3]


def test_starts_are_for_the_dream(tmp_path, capsys):
    line = one_line_error(capsys, ["--agent", "random", *GEMS, "--episodes", "1", "--starts", str(tmp_path)],
                          tmp_path / "x.json")
    assert "--starts" in line
