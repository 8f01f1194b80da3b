"""Behaviour of the game sources: builtin:gems, the agents, the registry and the Gymnasium / ALE / vizdoom adapters."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.actions import ActionSpecError
from train.games.agents import RandomAgent, ScriptedAgent
from train.games.builtin import PLAYER, GemsGame
from train.games.gym_adapters import DiscreteActions, MultiDiscreteActions, headless_sdl, resize_area
from train.games.registry import game_help_text, list_games, make_agent, make_game

SPEC = GemsGame.action_spec


def press(*names: str) -> np.ndarray:
    return SPEC.encode(names)


def player_centre(frame: np.ndarray) -> tuple[float, float]:
    """Centre (x, y) of the player's cyan pixels in a 64x64 frame."""
    ys, xs = np.nonzero(np.all(frame == PLAYER, axis=-1))
    assert len(xs) > 0, "player not visible"
    return float(xs.mean()), float(ys.mean())


def rollout(game, seed: int, actions: np.ndarray) -> np.ndarray:
    frames = [game.reset(seed)]
    for a in actions:
        frame, done = game.step(a)
        frames.append(frame)
        if done:
            break
    return np.stack(frames)


def random_actions(n: int, size: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, size)) < 0.3).astype(np.float32)


# ---- builtin:gems ------------------------------------------------------------------------------------------
def test_gems_is_deterministic_given_seed_and_actions():
    actions = random_actions(300, SPEC.size)
    a = rollout(make_game("builtin:gems"), 7, actions)
    b = rollout(make_game("builtin:gems"), 7, actions)
    c = rollout(make_game("builtin:gems"), 8, actions)
    assert a.shape == b.shape and np.array_equal(a, b)
    assert not np.array_equal(a[0], c[0])


def test_unseeded_resets_follow_the_constructor_seed():
    g1, g2 = make_game("builtin:gems", seed=3), make_game("builtin:gems", seed=3)
    for _ in range(3):
        assert np.array_equal(g1.reset(), g2.reset())


@pytest.mark.parametrize("buttons, dx, dy", [(("right",), 1, 0), (("left",), -1, 0), (("down",), 0, 1),
                                             (("up",), 0, -1), (("up", "right"), 1, -1), (("left", "right"), 0, 0),
                                             (("up", "down", "left"), -1, 0)])
def test_player_moves_with_the_buttons(buttons, dx, dy):
    game = make_game("builtin:gems", n_enemies=0)
    x0, y0 = player_centre(game.reset(0))
    for _ in range(5):
        frame, _ = game.step(press(*buttons))
    x1, y1 = player_centre(frame)
    speed = game.config.player_speed
    assert (x1 - x0, y1 - y0) == (5 * speed * dx, 5 * speed * dy)


def test_player_stays_in_the_play_area():
    game = make_game("builtin:gems", n_enemies=0)
    game.reset(0)
    for _ in range(60):
        frame, _ = game.step(press("up", "left"))
    assert game.player == [0, 8]                       # clamped below the 8-px HUD
    assert np.all(frame == PLAYER, axis=-1)[:8].sum() == 0


def test_collecting_a_gem_scores_and_replaces_it():
    game = make_game("builtin:gems", n_enemies=0)
    frame = game.reset(1)
    hud_before = frame[:8].copy()
    for _ in range(200):
        gx, gy = game.gems[0]
        px, py = game.player
        pressed = [n for n, on in (("right", gx > px + 1), ("left", gx < px - 1), ("down", gy > py + 1),
                                   ("up", gy < py - 1)) if on]
        frame, _ = game.step(press(*pressed))
        if game.score:
            break
    assert game.score == 1
    assert len(game.gems) == game.config.n_gems
    assert not np.array_equal(frame[:8], hud_before)   # the score digits changed


def test_enemy_hit_costs_a_life_and_respawns_at_the_centre():
    game = make_game("builtin:gems", n_enemies=1)
    game.reset(0)
    px, py = game.player = [10, 30]
    game.enemies = [[px + 2, py + 2, 1, 1]]
    game.step(SPEC.null())
    assert game.lives == game.config.lives - 1
    assert tuple(game.player) == game.spawn_point()
    game.enemies = [[game.player[0], game.player[1], 1, 1]]
    game.step(SPEC.null())
    assert game.lives == game.config.lives - 1         # invulnerable right after a hit


def test_episode_ends_at_max_steps_and_refuses_more_steps():
    game = make_game("builtin:gems", max_steps=5, n_enemies=0)
    game.reset(0)
    dones = [game.step(SPEC.null())[1] for _ in range(5)]
    assert dones == [False] * 4 + [True]
    with pytest.raises(RuntimeError, match="reset"):
        game.step(SPEC.null())


@pytest.mark.parametrize("size", [64, 128, 96])
def test_frames_have_the_requested_size(size):
    game = make_game("builtin:gems", size=size)
    game.reset(2)
    frame, _ = game.step(SPEC.null())
    assert frame.shape == (size, size, 3) and frame.dtype == np.uint8
    small = make_game("builtin:gems")
    small.reset(2)
    ref, _ = small.step(SPEC.null())
    if size % 64 == 0:
        k = size // 64
        assert np.array_equal(frame, ref.repeat(k, 0).repeat(k, 1))


def test_frames_are_copies():
    game = make_game("builtin:gems")
    f0 = game.reset(0)
    keep = f0.copy()
    game.step(press("right"))
    assert np.array_equal(f0, keep)


@pytest.mark.parametrize("bad", [np.zeros(3, np.float32), np.zeros(5, np.float32), np.zeros((2, 4), np.float32),
                                 np.array([0.5, 0, 0, 0], np.float32)])
def test_bad_action_raises_a_clear_error(bad):
    game = make_game("builtin:gems")
    game.reset(0)
    with pytest.raises(ActionSpecError, match="builtin:gems|button values"):
        game.step(bad)


def test_unknown_game_option_is_named():
    with pytest.raises(TypeError, match="n_gemz"):
        make_game("builtin:gems", n_gemz=2)


def test_state_dict_round_trips_through_json():
    game = make_game("builtin:gems")
    game.reset(4)
    for a in random_actions(50, SPEC.size):
        game.step(a)
    saved = json.loads(json.dumps(game.state_dict()))
    actions = random_actions(100, SPEC.size, seed=1)
    expected = [game.step(a)[0] for a in actions]
    other = make_game("builtin:gems")
    other.load_state_dict(saved)
    got = [other.step(a)[0] for a in actions]
    assert all(np.array_equal(e, g) for e, g in zip(expected, got))


# ---- agents ------------------------------------------------------------------------------------------------
def test_scripted_agent_is_persistent_and_varied():
    game = make_game("builtin:gems", seed=0)
    agent = make_agent("scripted", game, seed=0)
    frame, actions = game.reset(0), []
    for _ in range(1000):
        a = agent.act(frame)
        actions.append(a)
        frame, done = game.step(a)
        if done:
            frame = game.reset()
    acts = np.stack(actions)
    changes = np.any(acts[1:] != acts[:-1], axis=1).mean()
    assert changes < 0.3
    assert not np.any(acts[:, 0] * acts[:, 1]) and not np.any(acts[:, 2] * acts[:, 3])   # no opposite buttons
    assert len({tuple(a) for a in acts}) == 9                                             # 8 directions + no-op


def test_scripted_agent_is_deterministic():
    runs = []
    for _ in range(2):
        game = make_game("builtin:gems")
        agent = ScriptedAgent(game, seed=5)
        frame, acts = game.reset(5), []
        for _ in range(200):
            acts.append(agent.act(frame))
            frame, _ = game.step(acts[-1])
        runs.append(np.stack(acts))
    assert np.array_equal(*runs)


def test_random_agent_holds_its_choices():
    spec = make_game("builtin:gems").action_spec
    agent = RandomAgent(spec, seed=0)
    acts = np.stack([agent.act(None) for _ in range(500)])
    assert np.any(acts[1:] != acts[:-1], axis=1).mean() < 0.5
    assert len({tuple(a) for a in acts}) > 5
    spec.check(acts)
    exclusive = RandomAgent(spec, seed=0, exclusive=True)
    assert max(exclusive.act(None).sum() for _ in range(200)) == 1


def test_scripted_agent_refuses_other_games():
    class Other:
        env_id = "gym:Other-v0"
        action_spec = SPEC
    with pytest.raises(ValueError, match="scripted agent plays builtin:gems, ale:Breakout and vizdoom:basic"):
        make_agent("scripted", Other())
    with pytest.raises(ValueError, match="random"):
        make_agent("greedy", make_game("builtin:gems"))


# ---- registry ----------------------------------------------------------------------------------------------
def test_registry_lists_games_and_names_them_in_errors():
    games = list_games()
    assert "builtin:gems" in games and "ale:Breakout" in games and "vizdoom:basic" in games
    assert "builtin:gems" in game_help_text()
    for bad in ("nope", "builtin:nope", "snes:Mario", "ale:"):
        with pytest.raises(ValueError, match="builtin:gems.*ale:"):
            make_game(bad)


def test_registry_does_not_import_the_data_extra():
    code = "import sys, train.games.registry; print(any(m in sys.modules for m in ('gymnasium', 'ale_py', 'vizdoom')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- adapter pieces without the data extra -----------------------------------------------------------------
def test_resize_area_averages_blocks_and_keeps_flat_colour():
    img = np.random.default_rng(0).integers(0, 256, (128, 128, 3)).astype(np.uint8)
    block = img.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(resize_area(img, 64).astype(float) - block).max() <= 0.5
    flat = np.full((210, 160, 3), (20, 24, 40), np.uint8)
    assert np.array_equal(resize_area(flat, 64), np.full((64, 64, 3), (20, 24, 40), np.uint8))
    assert resize_area(np.zeros((50, 70), np.uint8), 64).shape == (64, 64, 3)


def test_discrete_actions_map_buttons_and_combinations():
    meanings = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    m = DiscreteActions(6, 0, meanings)
    assert m.buttons == ("fire", "right", "left", "rightfire", "leftfire")
    vec = lambda *on: np.array([b in on for b in m.buttons], np.float32)  # noqa: E731
    assert m.to_env(vec()) == 0
    assert m.to_env(vec("left")) == 3
    assert m.to_env(vec("right", "fire")) == 4
    assert m.to_env(vec("right", "left")) == 2           # no combined action: the first pressed wins
    assert DiscreteActions(3).buttons == ("action_1", "action_2")


def test_multidiscrete_actions_are_multi_hot():
    m = MultiDiscreteActions([3, 2])
    assert m.buttons == ("d0_1", "d0_2", "b1")
    assert list(m.to_env(np.array([0, 1, 1], np.float32))) == [2, 1]
    assert list(m.to_env(np.zeros(3, np.float32))) == [0, 0]


def test_headless_sdl_picks_dummy_drivers_for_the_block_and_keeps_the_users_choice():
    env: dict[str, str] = {"SDL_VIDEODRIVER": "x11", "HOME": "/h"}
    with headless_sdl(env):
        assert env == {"SDL_VIDEODRIVER": "x11", "HOME": "/h", "SDL_AUDIODRIVER": "dummy", "SDL_AUDIO_DRIVER": "dummy"}
    assert env == {"SDL_VIDEODRIVER": "x11", "HOME": "/h"}
    empty: dict[str, str] = {"SDL_AUDIO_DRIVER": " "}   # a blank choice is no choice
    with headless_sdl(empty):
        assert empty == dict.fromkeys(("SDL_VIDEODRIVER", "SDL_VIDEO_DRIVER", "SDL_AUDIODRIVER", "SDL_AUDIO_DRIVER"),
                                      "dummy")
    assert empty == {"SDL_AUDIO_DRIVER": " "}


# ---- adapters (need the data extra) ------------------------------------------------------------------------
def test_ale_is_deterministic_given_seed():
    pytest.importorskip("ale_py")
    game = make_game("ale:Breakout", size=64)
    assert game.action_spec.buttons == ("fire", "right", "left")
    actions = np.eye(3, dtype=np.float32)[np.arange(40) % 3]   # fire, right, left, ...
    a, b = rollout(game, 3, actions), rollout(game, 3, actions)
    game.close()
    assert a.shape[1:] == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert len({f.tobytes() for f in a}) > 1


def test_ale_unknown_game_lists_known_ones():
    pytest.importorskip("ale_py")
    with pytest.raises(ValueError, match="Breakout"):
        make_game("ale:NotAGame")


def test_vizdoom_basic_frames():
    pytest.importorskip("vizdoom")
    game = make_game("vizdoom:basic", size=64, seed=0)
    try:
        assert game.action_spec.buttons == ("move_left", "move_right", "attack")
        frame = game.reset(1)
        frames = [frame] + [game.step(game.action_spec.encode(["move_left"]))[0] for _ in range(5)]
        again = game.reset(1)
    finally:
        game.close()
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert np.array_equal(frame, again)
    assert not np.array_equal(frames[0], frames[-1])
    with pytest.raises(ValueError, match="basic"):
        make_game("vizdoom:nope")


def play_doom(agent: str, seeds: range) -> list[np.ndarray]:
    """The actions of whole vizdoom:basic episodes (300 tics at most) played by an agent, one array per episode."""
    game = make_game("vizdoom:basic", size=64, seed=0)
    bot = make_agent(agent, game, 0)
    episodes = []
    try:
        for seed in seeds:
            frame, done, acts = game.reset(seed), False, []
            bot.reset(seed)
            while not done:
                acts.append(bot.act(frame))
                frame, done = game.step(acts[-1])
            episodes.append(np.stack(acts))
    finally:
        game.close()
    return episodes


def test_doom_scripted_agent_plays_basic(tmp_path, monkeypatch):
    """It kills the monster (an episode that ends before vizdoom:basic's 300-tic limit, about 150 frames, ended in a
    kill), mostly after aiming rather than by chance: the random agent runs out of time far more often."""
    pytest.importorskip("vizdoom")
    monkeypatch.chdir(tmp_path)
    scripted, random = play_doom("scripted", range(12)), play_doom("random", range(12))
    limit = 148                                       # 300 tics at frame skip 2, less the frame the kill takes
    kills = sum(len(e) < limit for e in scripted)
    assert kills >= 11, [len(e) for e in scripted]
    assert sum(len(e) < limit for e in random) < kills
    acts = np.concatenate(scripted)
    assert not np.any(acts[:, 0] * acts[:, 1])        # never left and right at once
    assert 0.05 < acts[:, 2].mean() < 0.6             # it shoots, not every frame
    assert np.median([len(e) for e in scripted]) >= 16   # long enough for a training window, most of the time
    again = play_doom("scripted", range(3))
    assert all(np.array_equal(a, b) for a, b in zip(scripted[:3], again))


def test_doom_agent_refuses_other_games():
    from train.games.agents import DoomBasicAgent

    with pytest.raises(TypeError, match="vizdoom:basic only"):
        DoomBasicAgent(make_game("builtin:gems"))


def test_gym_adapter_on_a_rendered_env():
    pytest.importorskip("gymnasium")
    pytest.importorskip("pygame")
    game = make_game("gym:CartPole-v1", size=32)
    try:
        assert game.action_spec.buttons == ("action_1",)
        frames = rollout(game, 0, [game.action_spec.encode(["action_1"])] * 5)
        again = rollout(game, 0, [game.action_spec.encode(["action_1"])] * 5)
    finally:
        game.close()
    assert frames.shape[1:] == (32, 32, 3) and np.array_equal(frames, again)
    with pytest.raises(ValueError, match="unknown Gymnasium env"):
        make_game("gym:NoSuchEnv-v9")


def test_vizdoom_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    pytest.importorskip("vizdoom")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))
    game = make_game("vizdoom:basic", size=32, seed=0)
    try:
        game.reset(0)
    finally:
        game.close()
    assert list((tmp_path / "cwd").iterdir()) == []
    assert (tmp_path / "cache" / "vizdoom" / "_vizdoom.ini").is_file()


# ---- reward and episode end (train.games.base.Game: reward, terminated, truncated of the last step) -------------
def play_out(game, agent, seed: int, cap: int = 3000) -> tuple[list[float], list[tuple[bool, bool]]]:
    """Rewards and (terminated, truncated) of every step of one episode, played by `agent` until it ends."""
    frame = game.reset(seed)
    agent.reset(seed)
    assert (game.reward, game.terminated, game.truncated) == (0.0, False, False)
    rewards, ends = [], []
    for _ in range(cap):
        frame, done = game.step(agent.act(frame))
        rewards.append(game.reward)
        ends.append((game.terminated, game.truncated))
        assert isinstance(game.reward, float) and done == (game.terminated or game.truncated)
        if done:
            break
    return rewards, ends


class Null:
    def __init__(self, spec):
        self.spec = spec

    def reset(self, seed=None):
        pass

    def act(self, frame):
        return self.spec.null()


def test_gems_reward_is_the_score_each_step_adds():
    game = make_game("builtin:gems", n_enemies=0)
    game.reset(1)
    scores, rewards = [], []
    for _ in range(200):
        gx, gy = game.gems[0]
        px, py = game.player
        game.step(press(*[n for n, on in (("right", gx > px + 1), ("left", gx < px - 1), ("down", gy > py + 1),
                                          ("up", gy < py - 1)) if on]))
        scores.append(game.score)
        rewards.append(game.reward)
    assert game.score >= 2 and np.array_equal(np.cumsum(rewards), scores)
    assert set(rewards) == {0.0, 1.0} and not game.terminated and not game.truncated


def test_gems_ends_terminated_when_the_lives_are_gone_and_truncated_at_max_steps():
    game = make_game("builtin:gems", lives=1)
    game.reset(0)
    game.enemies = [[game.player[0], game.player[1], 1, 1]]
    _, done = game.step(SPEC.null())
    assert done and game.terminated and not game.truncated and game.reward == 0.0
    game.reset(0)
    assert (game.reward, game.terminated, game.truncated) == (0.0, False, False)
    rewards, ends = play_out(make_game("builtin:gems", max_steps=7, n_enemies=0), Null(SPEC), 0)
    assert ends == [(False, False)] * 6 + [(False, True)] and rewards == [0.0] * 7


def test_ale_reward_and_end_are_the_envs():
    pytest.importorskip("ale_py")
    game = make_game("ale:Breakout", size=32, seed=0)
    try:
        rewards, ends = play_out(game, make_agent("scripted", game, seed=0), 0)
    finally:
        game.close()
    assert sum(rewards) > 0 and set(rewards) <= {0.0, 1.0, 4.0, 7.0}    # Breakout's brick values
    assert ends[-1] == (True, False) and not any(any(e) for e in ends[:-1])   # the lives ran out


def test_gym_reward_and_end_are_the_envs():
    pytest.importorskip("gymnasium")
    pytest.importorskip("pygame")
    with headless_sdl():
        fell = make_game("gym:CartPole-v1", size=16, seed=0)
        cut = make_game("gym:CartPole-v1", size=16, seed=0, max_episode_steps=5)
        try:
            rewards, ends = play_out(fell, Null(fell.action_spec), 0)       # pushed one way, the pole falls
            cut_rewards, cut_ends = play_out(cut, Null(cut.action_spec), 0)
        finally:
            fell.close()
            cut.close()
    assert rewards == [1.0] * len(rewards) and ends[-1] == (True, False) and len(ends) < 100
    assert cut_rewards == [1.0] * 5 and cut_ends[-1] == (False, True)       # the env's time limit truncates


def test_vizdoom_reward_and_end_are_the_games():
    pytest.importorskip("vizdoom")
    game = make_game("vizdoom:basic", size=32, seed=0)
    try:
        shot, shot_ends = play_out(game, make_agent("scripted", game, seed=0), 0)
        idle, idle_ends = play_out(game, Null(game.action_spec), 0)
    finally:
        game.close()
    assert shot_ends[-1] == (True, False) and shot[-1] > 50      # the monster killed: basic's +100 (less the tics)
    assert idle_ends[-1] == (False, True) and sum(idle) < 0      # basic's 300-tic timeout, -1 a tic
    assert not any(any(e) for e in shot_ends[:-1] + idle_ends[:-1])
