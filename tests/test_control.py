"""Control (train/evaluation/control.py): holding a direction in the real game moves the avatar the configured distance
and leaves the game as it was; displacement is exact on synthetic sprites; an episode replays from its seed and actions
(and an altered frame is named); the dream runs on a fork and leaves the session untouched."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_model import FRAME, tiny_checkpoint

from engine.actions import ActionSpecError
from engine.errors import ReverieError
from engine.session import Session
from train.data.episodes import Episode
from train.data.record import Job, record_episode
from train.evaluation.control import (
    CONTROL_FRAMES,
    DIRECTIONS,
    ControlError,
    ReplayMismatch,
    control_dream,
    control_frames,
    control_real,
    displacement,
    hold,
    measure_control,
    replay_real_game,
)
from train.games.builtin import ACTION_SPEC, BACKGROUND, PLAYER, GemsGame
from train.games.probes import AVATAR, probes_for

AVATAR_PROBE = probes_for("builtin:gems")[AVATAR]
N = control_frames("builtin:gems")


def sprite_frames(positions: list[tuple[int, int]], size: int = 64, side: int = 6) -> np.ndarray:
    """Frames of one cyan square (top-left corners at 64x64 scale) on the background, drawn at `size`."""
    k = size / 64
    out = np.empty((len(positions), size, size, 3), np.uint8)
    out[:] = BACKGROUND
    for f, (x, y) in zip(out, positions):
        f[round(y * k):round((y + side) * k), round(x * k):round((x + side) * k)] = PLAYER
    return out


@pytest.mark.parametrize("size", [64, 128])
def test_displacement_of_a_moving_sprite_is_exact(size):
    frames = sprite_frames([(10, 30), (17, 30), (34, 21)], size)
    assert displacement(frames, AVATAR_PROBE, DIRECTIONS["right"]) == 24.0
    assert displacement(frames, AVATAR_PROBE, DIRECTIONS["left"]) == -24.0
    assert displacement(frames, AVATAR_PROBE, DIRECTIONS["up"]) == 9.0
    assert displacement(frames, AVATAR_PROBE, DIRECTIONS["down"]) == -9.0
    gone = frames.copy()
    gone[-1] = BACKGROUND
    assert np.isnan(displacement(gone, AVATAR_PROBE, DIRECTIONS["right"]))
    assert np.isnan(displacement(gone[::-1], AVATAR_PROBE, DIRECTIONS["right"]))
    worlds = np.stack([frames, gone], axis=1)                   # (T, B, H, W, 3): one move per world
    moves = displacement(worlds, AVATAR_PROBE, DIRECTIONS["right"])
    assert moves.shape == (2,) and moves[0] == 24.0 and np.isnan(moves[1])


def test_hold_and_frames():
    assert hold(ACTION_SPEC, "up").tolist() == [1, 0, 0, 0] and hold(ACTION_SPEC, "right").tolist() == [0, 0, 0, 1]
    with pytest.raises(ActionSpecError):
        hold(ACTION_SPEC, "jump")
    assert CONTROL_FRAMES["builtin:gems"] == 12 == N and control_frames("ale:Pong") == 12


def hit_free(game: GemsGame, button: str, n: int) -> bool:
    """Whether holding `button` for n frames from the game's state costs no life (checked on a copy)."""
    other = GemsGame(size=64)
    other.load_state_dict(game.state_dict())
    for _ in range(n):
        other.step(hold(ACTION_SPEC, button))
    return other.lives == game.lives


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_control_in_the_real_game_moves_the_avatar_and_restores_the_game(seed):
    game = GemsGame(size=64)
    game.reset(seed)                                    # the player starts at the centre spawn, far from the walls
    assert tuple(game.player) == game.spawn_point()
    before = game.state_dict()
    checked = 0
    for button, direction in DIRECTIONS.items():
        frames = control_real(game, button, N)
        assert frames.shape == (N + 1, 64, 64, 3)
        assert game.state_dict() == before              # restored, so the same start serves every direction
        assert np.array_equal(frames[0], game.frame())
        if hit_free(game, button, N):
            assert displacement(frames, AVATAR_PROBE, direction) == N * game.config.player_speed == 24
            checked += 1
    assert checked >= 3


def test_control_in_the_real_game_stops_at_the_end_of_the_episode():
    game = GemsGame(size=64, max_steps=5)
    game.reset(0)
    frames = control_real(game, "left", N)
    assert frames.shape == (6, 64, 64, 3) and not game.done and game.t == 0


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    path = tmp_path_factory.mktemp("ep") / "gems.episode"
    record_episode(Job(env="builtin:gems", agent="scripted", size=64, steps=40, seed=11, index=0, path=str(path)))
    with Episode(path) as ep:
        frames, recorded = ep.frames(), ep.actions()
        seed = ep.header["seed"]
    actions = np.zeros((len(frames), ACTION_SPEC.size), np.float32)   # led-to convention: actions[0] is null
    actions[1:] = recorded
    return frames, actions, seed


def test_replay_reproduces_a_recorded_episode(episode):
    frames, actions, seed = episode
    game = replay_real_game("builtin:gems", 64, seed, actions, frames)
    assert game.t == len(frames) - 1 and np.array_equal(game.frame(), frames[-1])
    # the replayed game is a real start: control from it works
    assert control_real(game, "up", 3).shape == (4, 64, 64, 3)
    altered = frames.copy()
    altered[7, 30, 30] = 255 - altered[7, 30, 30]
    with pytest.raises(ReplayMismatch, match="frame 7 differs"):
        replay_real_game("builtin:gems", 64, seed, actions, altered)
    with pytest.raises(ReplayMismatch, match="frame 0 differs"):
        replay_real_game("builtin:gems", 64, seed + 1, actions, frames)
    with pytest.raises(ControlError):
        replay_real_game("builtin:gems", 64, seed, actions, frames[:-1])


def test_replay_refuses_a_game_without_state():
    pytest.importorskip("vizdoom")
    with pytest.raises(ReverieError, match="cannot save and restore"):
        replay_real_game("vizdoom:basic", 64, 0, np.zeros((2, 3), np.float32))


def test_an_atari_game_replays_from_its_seed_and_restores_its_state():
    """Atari (sticky actions off) is deterministic given its seed and actions: a recorded Breakout episode replays
    frame for frame, a frame that differs is named, and a saved state restored gives the same next frames (which is
    what lets eval run the real game past the recording and judge an action by its effect)."""
    pytest.importorskip("gymnasium")
    pytest.importorskip("ale_py")
    from train.games.agents import BreakoutAgent
    from train.games.registry import make_game

    game = make_game("ale:Breakout", size=64, seed=3)
    agent = BreakoutAgent(game, 3)
    frames, actions = [game.reset(11)], [np.zeros(3, np.float32)]
    for _ in range(80):
        actions.append(np.asarray(agent.act(frames[-1]), np.float32))
        frames.append(game.step(actions[-1])[0])
    game.close()
    frames, actions = np.stack(frames), np.stack(actions)
    assert len({f.tobytes() for f in frames}) > 20                     # the ball moves: not a still screen

    replayed = replay_real_game("ale:Breakout", 64, 11, actions[:50], frames[:50])
    try:
        state = replayed.state_dict()
        assert np.array_equal(replayed.frame(), frames[49])
        ahead = [replayed.step(a)[0] for a in actions[50:]]
        assert all(np.array_equal(a, b) for a, b in zip(ahead, frames[50:]))
        replayed.load_state_dict(state)
        assert np.array_equal(replayed.frame(), frames[49])
        assert np.array_equal(replayed.step(actions[50])[0], frames[50])
        with pytest.raises(ValueError, match="saved state is for"):
            replayed.load_state_dict({**state, "env_id": "ale:Pong"})
    finally:
        replayed.close()
    altered = frames[:50].copy()
    altered[30, 40, 20] = 255 - altered[30, 40, 20]
    with pytest.raises(ReplayMismatch, match="frame 30 differs"):
        replay_real_game("ale:Breakout", 64, 11, actions[:50], altered)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model.safetensors")


def same_state(a: dict, b: dict) -> bool:
    return a["tensors"].keys() == b["tensors"].keys() and all(
        np.array_equal(a["tensors"][k].numpy(), b["tensors"][k].numpy()) for k in a["tensors"])


@pytest.mark.parametrize("batch", [1, 2])
def test_control_in_the_dream_runs_on_a_fork(checkpoint, batch):
    session = Session(checkpoint, backend="torch", batch=batch, dtype="fp32")
    session.reset()
    before = session.state()
    first = session.frame_buf.numpy().copy()
    frames = control_dream(session, "right", 3)
    shape = (4, *FRAME) if batch == 1 else (4, batch, *FRAME)
    assert frames.shape == shape and frames.dtype == np.uint8
    assert np.array_equal(frames[0], first[0] if batch == 1 else first)
    assert same_state(before, session.state())
    # the fork's frames are the session's own continuation
    again = control_dream(session, "right", 3)
    assert np.array_equal(again, frames)
    stepped = np.stack([session.step(["right"]) for _ in range(3)])
    assert np.array_equal(stepped, frames[1:])


def test_measure_control_reports_every_direction(checkpoint):
    session = Session(checkpoint, backend="torch", batch=2, dtype="fp32")
    session.reset()
    before = session.state()
    game = GemsGame(size=64)
    game.reset(0)
    result = measure_control(session, game, AVATAR_PROBE, N)
    assert list(result) == ["up", "down", "left", "right"]
    for button, r in result.items():
        assert set(r) == {"real_px", "dream_px", "dream_missing", "ratio"}
        if hit_free(game, button, N):
            assert r["real_px"] == 24.0
        assert 0.0 <= r["dream_missing"] <= 1.0
        assert r["ratio"] is None or np.isnan(r["ratio"]) or r["ratio"] == r["dream_px"] / r["real_px"]
    assert same_state(before, session.state()) and game.t == 0
    dream_only = measure_control(session, None, AVATAR_PROBE, 2, buttons=["left"])
    assert list(dream_only) == ["left"] and dream_only["left"]["real_px"] is None
    assert dream_only["left"]["ratio"] is None
    with pytest.raises(ControlError):
        measure_control(session, None, AVATAR_PROBE, 2, buttons=["jump"])
