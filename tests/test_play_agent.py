"""`reverie play --agent`: an agent plays inside the dream (the keys are ignored), and a copy of it plays the real game
beside it on Tab; an agent that does not fit the model, a missing agent file and --agent with --real are one-line
errors.

Headless on CPU (SDL dummy drivers, set in conftest), with a tiny random-weight 64x64 model (the agents' Nature CNN
needs frames of at least 36 pixels) and an untrained agent file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pygame
import pytest
import torch
from tiny_model import play_checkpoint

from engine.actions import ActionSpec
from engine.session import Session
from play import cli
from play.agent import AgentWorld, agent_label
from play.window import Window, WindowConfig
from play.world import make_real_game
from train.agents.policy import build_policy, load_agent, save_agent
from train.games.registry import make_game

GEMS = make_game("builtin:gems").action_spec
FRAME = (64, 64, 3)
SCALE = 8                  # the window's automatic scale for 64x64 frames (512 pixels)
SEED = 3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny random world model of builtin:gems (64x64 frames, context of 4)."""
    return play_checkpoint(tmp_path_factory.mktemp("play-agent") / "tiny.safetensors", GEMS)


def agent_file(path: Path, spec: ActionSpec = GEMS, frame_shape: tuple[int, ...] = FRAME) -> Path:
    """An untrained agent file for `spec` and frames of `frame_shape`."""
    torch.manual_seed(1)
    return save_agent(path, build_policy(frame_shape, spec), spec, frame_shape, {"trained_in": "test"})


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Path:
    return agent_file(tmp_path_factory.mktemp("agent") / "test-agent.safetensors")


class RecordingSession:
    """Wraps a Session's step: keeps each action it was given and the frame it returned."""

    def __init__(self, session: Session):
        self.actions, self.frames = [], []
        self._step = session.step
        session.step = self.step

    def step(self, action, **kw):
        frame = self._step(action, **kw)
        self.actions.append(np.array(action, copy=True))
        self.frames.append(frame.copy())
        return frame


def agent_window(ckpt: Path, agent: Path, tmp_path: Path, **kw) -> tuple[Window, AgentWorld, RecordingSession]:
    session = Session(ckpt, threads=1)
    recorded = RecordingSession(session)
    world = AgentWorld(session, load_agent(agent), agent_label(str(agent)), seed=SEED)
    cfg = dict(headless=True, lockstep=True, hud=True, threads=1, record_dir=tmp_path / "rec",
               save_path=tmp_path / "world.safetensors")
    cfg.update(kw)
    return Window(world, WindowConfig(**cfg), print_fn=lambda m: None), world, recorded


def tap(k: int) -> None:
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=k, mod=0))
    pygame.event.post(pygame.event.Event(pygame.KEYUP, key=k, mod=0))


def next_frame(win: Window, timeout: float = 20.0) -> None:
    """Tick until one more stepped frame has been presented."""
    n, deadline = win.stats.frames, time.perf_counter() + timeout
    while win.stats.frames == n:
        assert win.tick(), win.exit_reason
        assert time.perf_counter() < deadline, "no frame arrived"


def scaled(frame: np.ndarray, k: int = SCALE) -> np.ndarray:
    """(H, W, 3) -> (H*k, W*k, 3), nearest neighbour, as the window draws it."""
    return np.repeat(np.repeat(frame, k, 0), k, 1)


def real_game_played_by(agent: Path, seed: int, steps: int, start_frames: int) -> list[np.ndarray]:
    """The real game from the dream's start (seed, start_frames - 1 null steps), then `steps` of the agent's play."""
    game, policy = make_real_game("builtin:gems", FRAME[0], seed), load_agent(agent)
    frame = game.reset(seed)
    for _ in range(start_frames - 1):
        frame, _ = game.step(GEMS.null())
    policy.reset(seed)
    frames = []
    for _ in range(steps):
        frame, _ = game.step(policy.act(frame))
        frames.append(frame)
    return frames


# ---- the agent plays, the keys do not --------------------------------------------------------------------------------
def test_the_dream_takes_the_agents_actions_not_the_keys(ckpt, agent, tmp_path):
    win, world, recorded = agent_window(ckpt, agent, tmp_path)
    try:
        win.start()
        start = win._last_frame                       # the reset frame the agent acts on first
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RIGHT, mod=0))   # held: ignored
        for _ in range(6):
            next_frame(win)
        assert win.input.game_events > 0                 # the key reached the window ...
    finally:
        win.close()
    replay = load_agent(agent)                           # ... but every action is the agent's, from the dream frames
    replay.reset(SEED)
    expected = [replay.act(f) for f in [start, *recorded.frames[:-1]]]
    np.testing.assert_array_equal(np.stack(recorded.actions), np.stack(expected))
    right = GEMS.encode(["right"])
    assert not all(np.array_equal(a, right) for a in recorded.actions)


def test_the_real_game_beside_is_played_by_a_copy_of_the_agent_from_the_dreams_start(ckpt, agent):
    world = AgentWorld(Session(ckpt, threads=1), load_agent(agent), "test", seed=SEED)
    try:
        first = world.reset()
        twins = []
        for _ in range(5):
            action, _ = world.take()
            twins.append(world.step(action).twin)
            world.finish()
        expected = real_game_played_by(agent, SEED, 5, world.start_frames)
        np.testing.assert_array_equal(np.stack(twins), np.stack(expected))
        world.reset()                                    # Enter: both start again, from the next seed
        assert world.episode_seed == SEED + 1 and world.real_score == 0.0
        action, _ = world.take()
        np.testing.assert_array_equal(world.step(action).twin,
                                      real_game_played_by(agent, SEED + 1, 1, world.start_frames)[0])
        assert first.twin is not None
    finally:
        world.close()


def test_tab_shows_the_dream_and_the_real_game_side_by_side_with_the_agent_in_the_hud(ckpt, agent, tmp_path):
    win, world, _ = agent_window(ckpt, agent, tmp_path)
    try:
        win.start()
        next_frame(win)
        tap(pygame.K_TAB)
        next_frame(win)
        assert win.side_by_side
        screen = pygame.surfarray.array3d(win.screen).transpose(1, 0, 2)           # (y, x, 3)
        side = FRAME[0] * SCALE
        np.testing.assert_array_equal(screen[:side, :side], scaled(win._last.step.frame))
        np.testing.assert_array_equal(screen[:side, side + 8:], scaled(win._last.step.twin))
        assert not np.array_equal(win._last.step.frame, win._last.step.twin)      # two worlds, not one twice
        assert any("agent: test-agent" in line for line in win.hud.last_lines)
        tap(pygame.K_TAB)
        next_frame(win)
        assert not win.side_by_side and win.screen.get_width() == side
    finally:
        win.close()


# ---- the command -----------------------------------------------------------------------------------------------------
def test_headless_play_with_an_agent_writes_it_into_the_json(ckpt, agent, tmp_path):
    out = tmp_path / "p.json"
    assert cli.main(["--model", str(ckpt), "--agent", str(agent), "--headless", "--frames", "12", "--json", str(out),
                     "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["agent"] == str(agent) and report["frames"] == 12 and report["model_steps"] == 12


def one_line_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_an_agent_of_another_game_or_frame_size_is_a_one_line_error(ckpt, tmp_path, capsys):
    breakout = agent_file(tmp_path / "breakout.safetensors", ActionSpec(game="ale:Breakout",
                                                                         buttons=("fire", "left", "right")))
    err = one_line_error(capsys, ["--model", str(ckpt), "--agent", str(breakout), "--headless", "--frames", "2"])
    assert "ale:Breakout" in err and "builtin:gems" in err
    big = agent_file(tmp_path / "big.safetensors", frame_shape=(96, 96, 3))
    err = one_line_error(capsys, ["--model", str(ckpt), "--agent", str(big), "--headless", "--frames", "2"])
    assert "96x96" in err and "64x64" in err


def test_a_missing_agent_and_agent_with_real_are_one_line_errors(ckpt, agent, tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    err = one_line_error(capsys, ["--model", str(ckpt), "--agent", str(missing), "--headless", "--frames", "2"])
    assert "nope.safetensors" in err
    for flags in (["--real"], ["--human", "--out", str(tmp_path / "me")], ["--connect", "localhost:1"]):
        err = one_line_error(capsys, [*flags, "--agent", str(agent), "--headless", "--frames", "2"])
        assert "--agent" in err and "--real" in err
