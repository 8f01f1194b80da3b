"""`reverie play`: key maps, input from posted events, the window loop with its worker, recording, the HUD, the CLI.

Headless on CPU (SDL dummy drivers, set in conftest), with a tiny random-weight checkpoint. Window tests run in
lockstep (one model step per presented frame, after that frame's input), so action sequences are exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pygame
import pytest
from tiny_model import play_checkpoint

from engine.actions import ActionSpec
from engine.session import Session
from play import cli
from play.hud import FrameStats
from play.input import Autopilot, InputState
from play.keymap import RESERVED_KEYS, KeyMap
from play.window import Window, WindowConfig
from play.world import ModelWorld, PlayError, RealWorld, make_real_game
from train.data.episodes import Episode
from train.games.registry import make_game

ROOT = Path(__file__).resolve().parents[1]
GEMS = make_game("builtin:gems").action_spec
UP, DOWN, LEFT, RIGHT = (GEMS.encode([b]) for b in ("up", "down", "left", "right"))
NULL = GEMS.null()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny random world model of builtin:gems (64x64 frames, context of 4)."""
    return play_checkpoint(tmp_path_factory.mktemp("play") / "tiny.safetensors", GEMS)


@pytest.fixture
def display():
    pygame.display.init()
    yield
    pygame.display.quit()


class CountingSession:
    """Wraps a Session's step: counts calls, keeps the actions, can add a delay (a slow model)."""

    def __init__(self, session: Session):
        self.session, self.calls, self.delay = session, [], 0.0
        self._step = session.step
        session.step = self.step

    def step(self, action, **kw):
        self.calls.append(np.array(action, copy=True))
        if self.delay:
            time.sleep(self.delay)
        return self._step(action, **kw)


def model_window(ckpt: Path, tmp_path: Path, **kw) -> tuple[Window, CountingSession]:
    session = Session(ckpt, threads=1)
    counter = CountingSession(session)
    world = ModelWorld(session, seed=3)
    cfg = dict(headless=True, lockstep=True, record_dir=tmp_path / "rec", save_path=tmp_path / "world.safetensors",
               threads=1)
    cfg.update(kw)
    return Window(world, WindowConfig(**cfg), print_fn=lambda m: None), counter


def key(kind: int, k: int) -> None:
    pygame.event.post(pygame.event.Event(kind, key=k, mod=0))


def tap(k: int) -> None:
    """A press and release of `k`, as a keyboard sends them (the window's controls act on the press)."""
    key(pygame.KEYDOWN, k)
    key(pygame.KEYUP, k)


def next_frame(win: Window, timeout: float = 10.0) -> None:
    """Tick until one more stepped frame has been presented."""
    n, deadline = win.stats.frames, time.perf_counter() + timeout
    while win.stats.frames == n:
        assert win.tick(), win.exit_reason
        assert time.perf_counter() < deadline, "no frame arrived"


def settle(win: Window, seconds: float = 0.05) -> None:
    """Tick for a while (commands queued on the worker run)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        assert win.tick()


def settle_until(win: Window, done, timeout: float = 10.0) -> None:
    """Tick until done() (a command on the worker has run, however busy the machine is)."""
    deadline = time.perf_counter() + timeout
    while not done():
        assert win.tick()
        assert time.perf_counter() < deadline, "timed out"


# ---- key maps -------------------------------------------------------------------------------------------------------
def test_keymap_binds_gems_arrows_and_wasd_and_never_the_window_keys():
    km = KeyMap.for_spec(GEMS)
    assert {km.control(k) for k in (pygame.K_UP, pygame.K_w)} == {"up"}
    assert {km.control(k) for k in (pygame.K_LEFT, pygame.K_a)} == {"left"}
    assert km.control(pygame.K_RIGHT) == km.control(pygame.K_d) == "right"
    assert km.control(pygame.K_DOWN) == km.control(pygame.K_s) == "down"
    assert not set(km.keys) & RESERVED_KEYS
    np.testing.assert_array_equal(km.action(["up", "right"]), GEMS.encode(["up", "right"]))


def test_keymap_generic_doom_and_atari_specs():
    odd = ActionSpec("x:odd", ("jump", "zap", "warp", "blink"))
    km = KeyMap.for_spec(odd)
    assert km.control(pygame.K_SPACE) == "jump"
    bound = set(km.keys.values())
    assert bound == set(odd.buttons)                    # every button reachable
    assert not set(km.keys) & RESERVED_KEYS
    doom = ActionSpec("vizdoom:x", ("move_left", "move_right", "attack", "turn_left", "turn_right", "move_forward"),
                      axes=("turn_left_right_delta",))
    km = KeyMap.for_spec(doom)
    assert km.control(pygame.K_LEFT) == "turn_left" and km.control(pygame.K_a) == "move_left"
    assert km.control(pygame.K_LCTRL) == "attack" and km.control(pygame.K_UP) == "move_forward"
    assert "turn_left_right_delta" in km.pad_axes.values()
    atari = ActionSpec("ale:x", ("fire", "up", "right", "left", "down", "upright", "upleft", "upfire", "uprightfire"))
    km = KeyMap.for_spec(atari)
    np.testing.assert_array_equal(km.action(["up", "right"]), atari.encode(["upright"]))
    np.testing.assert_array_equal(km.action(["up", "right", "fire"]), atari.encode(["uprightfire"]))
    np.testing.assert_array_equal(km.action(["down", "fire"]), atari.encode(["down", "fire"]))  # no 'downfire'
    np.testing.assert_array_equal(km.action(["up", "down"]), atari.null())                    # opposites cancel


# ---- input ----------------------------------------------------------------------------------------------------------
def test_posted_key_events_give_held_actions_and_a_short_tap_still_counts(display):
    state = InputState(KeyMap.for_spec(GEMS))

    def pump():
        for event in pygame.event.get():
            state.handle(event)
        return state.take()[0]

    np.testing.assert_array_equal(pump(), NULL)
    key(pygame.KEYDOWN, pygame.K_RIGHT)
    np.testing.assert_array_equal(pump(), RIGHT)
    np.testing.assert_array_equal(pump(), RIGHT)                     # still held
    key(pygame.KEYDOWN, pygame.K_w)
    key(pygame.KEYUP, pygame.K_w)                                    # a tap between two steps
    np.testing.assert_array_equal(pump(), RIGHT + UP)
    np.testing.assert_array_equal(pump(), RIGHT)                     # counted once
    key(pygame.KEYUP, pygame.K_RIGHT)
    np.testing.assert_array_equal(pump(), NULL)
    tap(pygame.K_p)                                                  # a window control, not game input
    np.testing.assert_array_equal(pump(), NULL)


def test_gamepad_hat_and_buttons_act_as_keys(display):
    state = InputState(KeyMap.for_spec(GEMS))
    state.handle(pygame.event.Event(pygame.JOYHATMOTION, instance_id=0, hat=0, value=(1, 1)))
    np.testing.assert_array_equal(state.take()[0], RIGHT + UP)
    state.handle(pygame.event.Event(pygame.JOYHATMOTION, instance_id=0, hat=0, value=(0, 0)))
    state.handle(pygame.event.Event(pygame.JOYAXISMOTION, instance_id=0, axis=0, value=-0.9))
    np.testing.assert_array_equal(state.take()[0], LEFT)


# ---- the window -----------------------------------------------------------------------------------------------------
def test_window_steps_with_the_actions_of_posted_keys(ckpt, tmp_path):
    win, counter = model_window(ckpt, tmp_path)
    try:
        win.start()
        next_frame(win)
        key(pygame.KEYDOWN, pygame.K_RIGHT)
        next_frame(win)
        next_frame(win)
        key(pygame.KEYUP, pygame.K_RIGHT)
        key(pygame.KEYDOWN, pygame.K_UP)
        key(pygame.KEYUP, pygame.K_UP)                                # shorter than a frame
        next_frame(win)
        next_frame(win)
    finally:
        win.close()
    expected = [NULL, RIGHT, RIGHT, UP, NULL]
    assert len(counter.calls) == len(expected)
    for got, want in zip(counter.calls, expected):
        np.testing.assert_array_equal(got, want)


def test_esc_exits_cleanly(ckpt, tmp_path):
    win, _ = model_window(ckpt, tmp_path)
    try:
        win.start()
        next_frame(win)
        tap(pygame.K_ESCAPE)
        while win.tick():
            pass
        assert win.exit_reason == "Esc"
    finally:
        win.close()
    assert not win.worker._thread.is_alive()


def test_number_and_bracket_keys_set_steps_and_guidance(ckpt, tmp_path):
    win, _ = model_window(ckpt, tmp_path)
    try:
        win.start()
        tap(pygame.K_1)
        tap(pygame.K_RIGHTBRACKET)
        tap(pygame.K_RIGHTBRACKET)
        next_frame(win)
        settle(win)
        assert win.world.session.steps == 1 and win.world.session.guidance == 1.5
        next_frame(win)                                   # guidance on: the head runs twice, still a frame
        assert "steps 1   guidance 1.50" in " ".join(win.hud.last_lines)
        lo, hi = win.cfg.guidance_range
        for _ in range(int((hi - 1.5) / win.cfg.guidance_step) + 3):   # past the top: held at it
            tap(pygame.K_RIGHTBRACKET)
        settle(win, 0.3)
        assert win.world.session.guidance == hi
        for _ in range(int(hi / win.cfg.guidance_step) + 3):           # past the bottom: held at it
            tap(pygame.K_LEFTBRACKET)
        settle(win, 0.3)
        assert win.world.session.guidance == lo
        next_frame(win)                                   # still a frame
    finally:
        win.close()


def test_a_failing_model_step_closes_with_a_clear_error(ckpt, tmp_path):
    win, counter = model_window(ckpt, tmp_path, lockstep=False)

    def broken(action, **kw):
        raise RuntimeError("out of memory (simulated)")
    counter._step = broken
    with pytest.raises(PlayError, match="simulated"):
        win.run()
    assert not win.worker._thread.is_alive()


def test_closing_the_window_exits_run_with_code_zero(ckpt, tmp_path):
    win, _ = model_window(ckpt, tmp_path, lockstep=False)
    timer = threading.Timer(0.5, lambda: pygame.event.post(pygame.event.Event(pygame.QUIT)))
    timer.start()
    try:
        assert win.run() == 0
    finally:
        timer.cancel()
    assert win.exit_reason == "window closed"
    assert win.stats.frames > 0
    assert not win.worker._thread.is_alive()


def test_pause_makes_no_model_calls_and_does_not_spin(ckpt, tmp_path):
    win, counter = model_window(ckpt, tmp_path, lockstep=False)
    try:
        win.start()
        for _ in range(3):
            next_frame(win)
        tap(pygame.K_p)
        settle(win, 0.1)                                  # a step in flight when P was pressed finishes
        calls, cpu0, wall0 = len(counter.calls), time.process_time(), time.perf_counter()
        settle(win, 0.3)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        assert len(counter.calls) == calls
        assert cpu < 0.35 * wall, f"paused loop used {cpu:.3f} s of CPU in {wall:.3f} s"
        tap(pygame.K_PERIOD)                              # one step while paused
        settle(win, 0.2)
        assert len(counter.calls) == calls + 1
        tap(pygame.K_p)
        next_frame(win)
        assert len(counter.calls) > calls + 1
    finally:
        win.close()


def test_recording_writes_a_valid_episode_and_gif(ckpt, tmp_path):
    win, counter = model_window(ckpt, tmp_path)
    try:
        win.start()
        next_frame(win)
        tap(pygame.K_r)
        key(pygame.KEYDOWN, pygame.K_LEFT)
        for _ in range(5):
            next_frame(win)
        tap(pygame.K_r)
        next_frame(win)
    finally:
        win.close()
    files = sorted((tmp_path / "rec").iterdir())
    episodes = [f for f in files if f.suffix == ".episode"]
    assert len(episodes) == 1 and any(f.suffix == ".gif" for f in files)
    with Episode(episodes[0]) as ep:
        ep.verify()
        assert len(ep) == 6 and ep.num_actions == 5
        assert ep.env_id == "model:builtin:gems"
        np.testing.assert_array_equal(ep.actions(0, 5), np.stack(counter.calls[1:6]))
        assert ep.frames(0, 6).std() > 0


def test_hud_numbers_are_measured(ckpt, tmp_path):
    win, counter = model_window(ckpt, tmp_path)
    try:
        win.start()
        for _ in range(6):
            next_frame(win)
        fast = win.stats.summary()
        lines = list(win.hud.last_lines)
        counter.delay = 0.1                               # a much slower model (clear of load noise)
        win.stats = FrameStats()
        for _ in range(8):
            next_frame(win)
        slow = win.stats.summary()
        hud_step_ms = float(win.hud.last_lines[2].split("step")[1].split("ms")[0])
    finally:
        win.close()
    assert win.hud.last_lines != lines                    # frame counter and timings move
    assert slow["p50_ms"] >= fast["p50_ms"] + 50
    assert slow["step_ms"] >= 100 and slow["latency_ms"] >= 100
    assert 0 < slow["fps"] < fast["fps"]
    assert hud_step_ms >= 100                             # what the HUD shows is the measured step time


def screenshot(ckpt: Path, tmp_path: Path, held: int, frames: int = 8) -> np.ndarray:
    win, _ = model_window(ckpt, tmp_path, hud=False)
    try:
        win.start()
        key(pygame.KEYDOWN, held)
        for _ in range(frames):
            next_frame(win)
        return pygame.surfarray.array3d(win.screen)[:, :512].copy()   # (x, y, 3): the frame, above the HUD's strip
    finally:
        win.close()


def test_screenshot_is_not_blank_and_follows_the_actions(ckpt, tmp_path):
    right = screenshot(ckpt, tmp_path, pygame.K_RIGHT)
    again = screenshot(ckpt, tmp_path, pygame.K_RIGHT)
    left = screenshot(ckpt, tmp_path, pygame.K_LEFT)
    assert right.shape == (512, 512, 3)
    assert right.std() > 1 and len(np.unique(right.reshape(-1, 3), axis=0)) > 10
    np.testing.assert_array_equal(right, again)           # same seed, same keys: the same world
    assert np.abs(right.astype(int) - left.astype(int)).sum() > 0


def test_tab_shows_the_real_game_beside_the_model_and_f5_f9_restore_the_world(ckpt, tmp_path):
    win, _ = model_window(ckpt, tmp_path, hud=False)
    try:
        win.start()
        next_frame(win)
        tap(pygame.K_TAB)
        next_frame(win)
        assert win.screen.get_size() == (2 * 512 + 8, 512 + win.hud.strip_height(512, win._info()))
        real = pygame.surfarray.array3d(win.screen)[520:, :512]         # (x, y, 3)
        twin = np.repeat(np.repeat(win._last.step.twin, 8, 0), 8, 1).transpose(1, 0, 2)
        np.testing.assert_array_equal(real, twin)                       # whole: its label is in the strip below
        tap(pygame.K_p)                                                # paused: only '.' steps
        settle(win)
        saved_frame = win._last.step.frame
        tap(pygame.K_F5)
        settle(win)
        assert (tmp_path / "world.safetensors").exists()
        key(pygame.KEYDOWN, pygame.K_RIGHT)
        for _ in range(3):
            tap(pygame.K_PERIOD)
            settle(win)
        assert not np.array_equal(win._last.step.frame, saved_frame)
        tap(pygame.K_F9)
        settle_until(win, lambda: win._last.action is None)              # the load's frame is shown
        np.testing.assert_array_equal(win._last.step.frame, saved_frame)
    finally:
        win.close()


def scaled(frame: np.ndarray, k: int = 8) -> np.ndarray:
    """(H, W, 3) -> (H*k, W*k, 3), nearest neighbour, as the window draws it."""
    return np.repeat(np.repeat(frame, k, 0), k, 1)


def on_screen(win: Window) -> np.ndarray:
    """The window's pixels, (y, x, 3)."""
    return pygame.surfarray.array3d(win.screen).transpose(1, 0, 2)


@pytest.mark.parametrize("env", ["builtin:gems", "ale:Breakout"])
def test_the_hud_covers_no_pixel_of_the_game_its_score_included(env, tmp_path):
    """The statistics, a message and the real game's caption sit in a strip below the frames: the score both games
    draw along their top rows, and every other pixel of the game, is on screen as the game drew it."""
    if env.startswith("ale:"):
        pytest.importorskip("ale_py")
    win = Window(RealWorld(make_real_game(env, 64, 0)), WindowConfig(headless=True, lockstep=True,
                                                                     record_dir=tmp_path), print_fn=lambda m: None)
    try:
        win.start()
        win.hud.toast("recorded 999 frames: recordings/a-long-episode-name.episode, recordings/a-long-name.gif")
        for _ in range(5):
            next_frame(win)
        screen, frame = on_screen(win), win._last.step.frame
        size = win.window_size
        tap(pygame.K_h)                                    # the HUD off: the same window, the strip left empty
        settle(win)
        hidden_size, hidden = win.window_size, on_screen(win)
    finally:
        win.close()
    assert win.hud.last_lines and size[0] == 512 and size[1] > 512 + 3 * win.hud.font.get_linesize()
    np.testing.assert_array_equal(screen[:64], scaled(frame)[:64])    # the score: the frame's top 8 rows
    np.testing.assert_array_equal(screen[:512], scaled(frame))        # and all the rest of the game
    strip = screen[512:].reshape(-1, 3)
    assert len(np.unique(strip, axis=0)) > 2                          # text drawn in the strip
    assert hidden_size == size
    hidden_strip = hidden[512:].reshape(-1, 3)
    assert len(np.unique(hidden_strip, axis=0)) < len(np.unique(strip, axis=0))


def test_tab_toggles_once_per_press_and_resizes_the_same_window(ckpt, tmp_path):
    """A held Tab (auto-repeat, or key-downs after a missed key-up) toggles once; the window is resized, never
    re-created (a new window flashed black and took the keyboard focus), and shows the frames at once."""
    win, _ = model_window(ckpt, tmp_path, hud=False)
    try:
        win.start()
        next_frame(win)
        window, window_id, height = win.window, win.window.id, win.window_size[1]
        for _ in range(4):                                 # Tab held down: one key-down edge
            key(pygame.KEYDOWN, pygame.K_TAB)
            settle(win, 0.02)
        assert win.side_by_side and win.window_size == (2 * 512 + 8, height)
        assert win.window is window and win.window.id == window_id and win.screen.get_size() == win.window_size
        screen = on_screen(win)
        np.testing.assert_array_equal(screen[:512, :512], scaled(win._last.step.frame))
        np.testing.assert_array_equal(screen[:512, 520:], scaled(win._last.step.twin))
        key(pygame.KEYUP, pygame.K_TAB)
        key(pygame.KEYDOWN, pygame.K_TAB)                  # the next press toggles back; its key-up is missed
        settle(win, 0.02)
        assert not win.side_by_side and win.window_size == (512, height) and win.window.id == window_id
        np.testing.assert_array_equal(on_screen(win)[:512], scaled(win._last.step.frame))
        key(pygame.KEYDOWN, pygame.K_TAB)                  # down again with no key-up between: not a press
        settle(win, 0.02)
        assert not win.side_by_side
        pygame.event.post(pygame.event.Event(pygame.WINDOWFOCUSLOST))   # focus lost: every key counts as up
        key(pygame.KEYDOWN, pygame.K_TAB)
        settle(win, 0.02)
        assert win.side_by_side
        key(pygame.KEYUP, pygame.K_TAB)
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_TAB, mod=0, repeat=1))  # SDL's repeat
        settle(win, 0.02)
        assert win.side_by_side and win.window.id == window_id
    finally:
        win.close()


def test_autopilot_posts_holds_and_taps():
    pilot = Autopilot(KeyMap.for_spec(GEMS), seed=1)
    events = [e for f in range(200) for e in pilot.events(f)]
    downs = [e for e in events if e.type == pygame.KEYDOWN]
    assert len(downs) > 10 and {e.key for e in downs} <= {pygame.K_UP, pygame.K_DOWN, pygame.K_LEFT, pygame.K_RIGHT}


# ---- the command ----------------------------------------------------------------------------------------------------
def test_headless_benchmark_writes_json(ckpt, tmp_path):
    out = tmp_path / "p.json"
    assert cli.main(["--model", str(ckpt), "--headless", "--frames", "20", "--json", str(out), "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    for k in ("fps", "p50_ms", "p99_ms", "step_ms_p50", "latency_ms_p50", "device", "backend", "steps", "frames"):
        assert k in report, k
    assert report["frames"] == 20 and report["fps"] > 0 and report["device"] == "cpu"
    assert report["model_steps"] == 20                   # one model step per shown frame


def test_headless_real_game_steps_once_per_shown_frame(tmp_path):
    """`--real` with no frame cap used to step the game thousands of times for the frames it showed."""
    out = tmp_path / "new" / "folder" / "r.json"          # folders are made
    assert cli.main(["--real", "--env", "builtin:gems", "--headless", "--frames", "100", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 100 and report["model_steps"] == 100, report


def test_human_mode_records_the_real_game(tmp_path):
    out = tmp_path / "me"
    report_path = tmp_path / "h.json"
    assert cli.main(["--human", "--env", "builtin:gems", "--out", str(out), "--headless", "--frames", "100",
                     "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["frames"] == 100 and report["model_steps"] == 100, report
    episodes = sorted(out.glob("*.episode"))  # one per game episode: a fast machine may finish one and start another
    assert episodes and not list(out.glob("*.gif"))
    game = make_game("builtin:gems")
    total, pressed = 0, False
    for path in episodes:
        with Episode(path) as ep:
            ep.verify()
            assert ep.env_id == "builtin:gems" and ep.num_actions == len(ep) - 1
            assert ep.header["env_version"] == game.env_version != ""   # as `reverie record` writes it
            pressed |= bool(ep.actions(0, ep.num_actions).any())
            total += ep.num_actions
    # the autopilot pressed keys (a last short episode may fall inside a stretch where it holds none)
    assert pressed and total == 100                        # every step shown, every step recorded
    with Episode(episodes[0]) as ep:
        assert ep.header["seed"] == 0                      # the game's start seed (--seed, default 0)


def test_real_world_resets_after_the_episode_ends(tmp_path):
    world = RealWorld(make_real_game("builtin:gems", 64, 0))
    world.game.config.max_steps = 3
    win = Window(world, WindowConfig(headless=True, lockstep=True, human_dir=tmp_path), print_fn=lambda m: None)
    try:
        win.start()
        for _ in range(7):
            next_frame(win)
    finally:
        win.close()
    lengths = sorted(len(Episode(p)) for p in tmp_path.glob("*.episode"))
    assert lengths == [2, 4, 4]               # two whole episodes of 3 steps, then the 7th step began the third
    ends = sorted(str(Episode(p).end) for p in tmp_path.glob("*.episode"))
    assert ends == ["stopped", "truncated", "truncated"]   # the game's step limit ended the first two; play, the third
    assert all(Episode(p).has_reward for p in tmp_path.glob("*.episode"))   # human play records the game's reward
    seeds = sorted(Episode(p).header["seed"] for p in tmp_path.glob("*.episode"))
    assert seeds == [0, 1, 2]                 # each episode's own start seed


def run_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reverie_cli", "play", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("flag,value", [
    ("--guidance", "nan"), ("--guidance", "inf"), ("--guidance", "-inf"), ("--guidance", "1e9"), ("--steps", "0"),
    ("--steps", "5"), ("--fps", "0"), ("--fps", "nan"), ("--fps", "-30"), ("--scale", "0"), ("--scale", "1000"),
    ("--seed", "-1"), ("--threads", "0"), ("--frames", "0"), ("--frames", "-5"), ("--steps", "two"),
])
def test_bad_knobs_are_refused_with_the_flag_named(capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        cli.main(["--headless", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "error" in err and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if "error" in ln]) == 1, err


def test_fps_max_plays_as_fast_as_it_goes():
    a = cli.build_parser().parse_args(["--fps", "max"])
    assert a.fps == 0.0
    assert cli.build_parser().parse_args(["--fps", "24"]).fps == 24.0


def test_guidance_nan_through_the_reverie_command():
    r = run_cli("--guidance", "nan", "--headless", "--frames", "5")
    assert r.returncode == 2 and "--guidance" in r.stderr and "finite" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout and not r.stdout


def test_unwritable_json_is_refused_before_the_run(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["--real", "--env", "builtin:gems", "--headless", "--frames", "5", "--json",
                     str(blocker / "p.json")]) == 1
    captured = capsys.readouterr()
    assert "--json" in captured.err and str(blocker) in captured.err and "Traceback" not in captured.err
    assert "frames/s" not in captured.out                  # nothing ran


def test_missing_model_is_a_clear_error(tmp_path):
    missing = tmp_path / "missing.safetensors"
    r = run_cli("--model", str(missing), "--headless", "--frames", "5")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    assert "missing.safetensors" in r.stderr


def test_junk_model_and_no_display_are_clear_errors(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(100))
    assert cli.main(["--model", str(junk), "--headless", "--frames", "5"]) == 1
    assert "junk.safetensors" in capsys.readouterr().err
    r = run_cli("--real", "--env", "builtin:gems", env={"SDL_VIDEODRIVER": "no-such-driver"})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    assert "--headless" in r.stderr
