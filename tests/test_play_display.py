"""`reverie play` where no window can be shown, and given a checkpoint that holds no world model: one clear line
at once, before SDL's own warnings and before any export."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pygame
import pytest
from tiny_model import tiny_checkpoint

from play import cli
from play.display import check_display, headless_driver_reason, no_display_reason, start_display
from play.world import PlayError

ROOT = Path(__file__).resolve().parents[1]
NO_DISPLAY_S = 10           # the bar: with no display, play says so within this many seconds
DISPLAY_AND_DRIVER = ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER", "SDL_VIDEO_DRIVER")


def play_without_display(*argv: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """`reverie play ARGV` with no display named and no SDL driver chosen (as over SSH); and its seconds."""
    env = {k: v for k, v in os.environ.items() if k not in DISPLAY_AND_DRIVER}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "reverie_cli", "play", *argv], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env=env)
    return r, time.perf_counter() - t0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY / WAYLAND_DISPLAY name the display on Linux")
@pytest.mark.parametrize("argv", [(), ("--real", "--env", "builtin:gems")])
def test_no_display_is_one_line_naming_headless_within_seconds(argv):
    r, seconds = play_without_display(*argv, timeout=NO_DISPLAY_S)
    assert seconds < NO_DISPLAY_S
    assert r.returncode == 1 and not r.stdout, r
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr                       # no SDL warning, no traceback
    assert "--headless" in lines[0] and "display" in lines[0], lines


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY / WAYLAND_DISPLAY name the display on Linux")
def test_headless_and_help_need_no_display(tmp_path):
    r, _ = play_without_display("--real", "--env", "builtin:gems", "--headless", "--frames", "3")
    assert r.returncode == 0 and "3 frames" in r.stdout, r
    r, _ = play_without_display("--help")
    assert r.returncode == 0 and "--headless" in r.stdout, r


def test_display_known_missing_only_where_nobody_chose_a_driver():
    assert "DISPLAY" in no_display_reason({}, "linux")
    assert no_display_reason({"DISPLAY": ":0"}, "linux") is None
    assert no_display_reason({"WAYLAND_DISPLAY": "wayland-0"}, "linux") is None
    assert no_display_reason({"SDL_VIDEODRIVER": "dummy"}, "linux") is None        # a test's or a user's choice
    assert no_display_reason({"SDL_VIDEODRIVER": "kmsdrm"}, "linux") is None
    assert no_display_reason({}, "darwin") is None and no_display_reason({}, "win32") is None
    with pytest.raises(PlayError, match="--headless"):
        check_display({"DISPLAY": " "}, "linux")


def test_sdl_falling_back_to_a_driver_that_shows_nothing_is_refused():
    assert "offscreen" in headless_driver_reason("offscreen", {})
    assert headless_driver_reason("dummy", {}) is not None
    assert headless_driver_reason("offscreen", {"SDL_VIDEODRIVER": "offscreen"}) is None
    assert headless_driver_reason("x11", {}) is None and headless_driver_reason("wayland", {}) is None


def test_start_display_refuses_an_unasked_offscreen_driver(monkeypatch):
    for name in DISPLAY_AND_DRIVER:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DISPLAY", ":0")                   # named, but SDL found nothing there
    started = []
    monkeypatch.setattr(pygame.display, "init", lambda: started.append(True))
    monkeypatch.setattr(pygame.display, "get_driver", lambda: "offscreen")
    monkeypatch.setattr(pygame.display, "quit", lambda: started.clear())
    with pytest.raises(PlayError, match="offscreen.*--headless"):
        start_display()
    assert not started                                    # SDL's display was shut again


def test_an_autoencoder_checkpoint_is_refused_before_any_export(tmp_path, capsys):
    ae = tiny_checkpoint(tmp_path / "ae.safetensors", with_wm=False)
    cache = Path(os.environ["REVERIE_CACHE"])
    before = sorted(cache.rglob("*")) if cache.exists() else []
    assert cli.main(["--model", str(ae), "--headless", "--frames", "3", "--backend", "onnxruntime"]) == 1
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(ae) in lines[0] and "autoencoder checkpoint" in lines[0], lines
    assert "model.safetensors" in lines[0] and "reverie train wm" in lines[0] and "--recipe" in lines[0], lines
    assert "export" not in out + err                      # refused before the graphs were exported
    assert (sorted(cache.rglob("*")) if cache.exists() else []) == before
