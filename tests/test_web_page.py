"""The exported web page in headless Chromium (Debian's, through Playwright; tests/browser.py): it loads the default
model from a loopback server, its step in JavaScript computes the Python session's frames, the keys move the avatar as
they do in Python, Enter resets, the HUD reports frames/s, and a missing or damaged file shows its error.

Parity: the Python session here runs the same graphs in onnxruntime (float32), so the two differ only by the two
runtimes' float rounding (onnxruntime native against onnxruntime-web's WASM build).
"""

from __future__ import annotations

import base64
import json
import shutil
import time

import numpy as np
import pytest
from browser import browser, page  # noqa: F401  (fixtures)

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[export]')")

from engine.runtime import DEFAULT_MODEL  # noqa: E402
from engine.session import Session  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from export.serve import serve_folder  # noqa: E402
from export.web import export_web  # noqa: E402
from train.evaluation.control import displacement  # noqa: E402
from train.games.probes import probes_for  # noqa: E402

AVATAR = probes_for("builtin:gems")["avatar"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return export_web(None, tmp_path_factory.mktemp("web") / "site")


@pytest.fixture(scope="module")
def url(site):
    with serve_folder(site) as address:
        yield address


@pytest.fixture(scope="module")
def python_graphs(tmp_path_factory):
    return export_onnx(DEFAULT_MODEL, tmp_path_factory.mktemp("graphs") / "g", batch=1, check=False)


def python_rollout(graphs, actions: np.ndarray, seed: int = 0) -> np.ndarray:
    s = Session(DEFAULT_MODEL, backend="onnxruntime", graphs=graphs, threads=1, seed=seed)
    s.reset()
    return np.stack([s.step(a).copy() for a in actions])


def decode(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(64, 64, 3)


def open_page(page, url, query: str = ""):   # noqa: F811
    page.goto(url + query)
    page.wait_for_function("window.reverie !== undefined")
    page.evaluate("window.reverie.ready")
    return page


def held(button: int, frames: int, dim: int = 4) -> np.ndarray:
    a = np.zeros((frames, dim), np.float32)
    a[:, button] = 1
    return a


def test_the_page_loads_the_default_model_and_plays(page, url):  # noqa: F811
    open_page(page, url)
    assert page.evaluate("window.reverie.error()") is None
    model = page.evaluate("window.reverie.model()")
    assert model["game"] == "builtin:gems" and model["buttons"] == ["up", "down", "left", "right"]
    page.wait_for_function("window.reverie.stats().frames >= 30")
    stats = page.evaluate("window.reverie.stats()")
    assert stats["fps"] > 0 and 0 < stats["p50_ms"] <= stats["p99_ms"]
    assert stats["backend"].startswith("wasm") and "thread" in stats["backend"]
    hud = page.inner_text("#hud")
    assert "frames/s" in hud and "p99" in hud and "wasm" in hud
    assert not page.errors, page.errors


def test_the_noise_is_the_python_sessions(page, url):  # noqa: F811
    """js/noise.js against engine.noise: the same hash bit for bit, the same normals to float32 rounding, for seeds
    whose world seed passes 2^32 too."""
    import torch

    from engine.noise import counter_normal

    open_page(page, url)
    cases = [(0, 0, 0), (0, 7, 1), (12345, 999, 0), (4_000_000, 123_456, 1)]   # (session seed, counter, stream)
    got = page.evaluate("""async (cases) => {
        const { counterNormal, seed32 } = await import('./js/noise.js');
        return cases.map(([s, c, st]) => Array.from(counterNormal(seed32(BigInt(s) * 1000003n), c, 1024, st)));
    }""", cases)
    for (s, c, st), z in zip(cases, got):
        ref = counter_normal(torch.tensor([s * 1_000_003]), torch.tensor([c]), (1024,), st)[0].numpy()
        np.testing.assert_allclose(np.array(z, np.float32), ref, rtol=0, atol=2e-6)


def test_the_page_computes_the_python_sessions_frames(page, url, python_graphs):  # noqa: F811
    """From the same start, seed and actions: 16 frames with >= 99.9% of pixels within 1 level, and over 200 frames
    a mean absolute difference per frame that stays small (the curve: docs/research/web-page.md)."""
    actions = np.concatenate([held(b, 12) for b in (3, 2, 1, 0)] * 5)[:200]   # right, left, down, up held in turn
    open_page(page, url)
    out = page.evaluate("(a) => window.reverie.rollout(a)", {"start": 0, "seed": 3, "actions": actions.tolist()})
    web = np.stack([decode(f) for f in out["frames"]])
    ref = python_rollout(python_graphs, actions, seed=3)
    diff = np.abs(web.astype(np.int16) - ref.astype(np.int16)).reshape(len(web), -1)
    within = (diff[:16] <= 1).mean()
    assert within >= 0.999, f"first 16 frames: {100 * within:.3f}% of pixels within 1 level"
    curve = diff.mean(1)
    assert curve.max() < 2.0, f"mean |difference| per frame over 200 frames peaks at {curve.max():.2f} levels"
    # and the rollout left the live world playing
    page.wait_for_function("window.reverie.stats().frames > 0 && !window.reverie.stats().paused")


def avatar_x(rgb: np.ndarray) -> float:
    return float(AVATAR.centroid(rgb)[0])


def test_a_held_key_moves_the_avatar_as_in_the_python_session(page, url, python_graphs):  # noqa: F811
    """Hold Right on the keyboard, then Left after Enter: the cyan avatar moves the way the Python session's does from
    the same start."""
    ref_right = python_rollout(python_graphs, held(3, 24))
    ref_left = python_rollout(python_graphs, held(2, 24), seed=1)
    start = python_rollout(python_graphs, held(3, 1))[0]
    moves = {"ArrowRight": displacement(np.stack([start, ref_right[-1]]), AVATAR, (1, 0)),
             "ArrowLeft": displacement(np.stack([start, ref_left[-1]]), AVATAR, (-1, 0))}
    assert all(m > 2 for m in moves.values()), f"the Python session itself: {moves}"

    open_page(page, url)
    for key in ("ArrowRight", "ArrowLeft"):
        page.keyboard.press("KeyP")                       # paused: Enter shows the start frame
        page.wait_for_function("window.reverie.stats().paused")
        page.keyboard.press("Enter")
        time.sleep(0.5)
        first = decode(page.evaluate("window.reverie.frame()")["rgb"])
        page.keyboard.down(key)
        page.keyboard.press("KeyP")                       # resume with the key held
        time.sleep(1.0)                                   # about 30 frames at the game's speed
        page.keyboard.up(key)
        last = decode(page.evaluate("window.reverie.frame()")["rgb"])
        direction = (1, 0) if key == "ArrowRight" else (-1, 0)
        moved = displacement(np.stack([first, last]), AVATAR, direction)
        assert moved > 2, f"{key} held: the page's avatar moved {moved:.1f} px that way (Python: {moves[key]:.1f})"
    assert not page.errors, page.errors


def test_enter_resets_to_the_next_seed_and_the_start_frame(page, url, site):  # noqa: F811
    open_page(page, url)
    page.wait_for_function("window.reverie.stats().frames >= 10")
    seed = page.evaluate("window.reverie.stats().seed")
    page.keyboard.press("KeyP")
    page.wait_for_function("window.reverie.stats().paused")
    page.keyboard.press("Enter")
    page.wait_for_function(f"window.reverie.stats().seed === {seed + 1}")
    time.sleep(0.3)
    model = json.loads((site / "model" / "model.json").read_text())
    entry = model["tables"]["start_frames"]
    start = np.frombuffer((site / "model" / "tables.bin").read_bytes(), np.uint8, 64 * 64 * 3, entry["offset"])
    shown = decode(page.evaluate("window.reverie.frame()")["rgb"])
    np.testing.assert_array_equal(shown, start.reshape(64, 64, 3))


@pytest.mark.parametrize("damage", ["corrupt backbone", "missing head", "truncated tables"])
def test_a_page_with_a_bad_file_shows_its_error(page, site, tmp_path, damage):  # noqa: F811
    broken = shutil.copytree(site, tmp_path / "broken")
    if damage == "corrupt backbone":
        path = broken / "model" / "backbone.onnx"
        data = bytearray(path.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
        path.write_bytes(bytes(data))
        name = "backbone.onnx"
    elif damage == "missing head":
        (broken / "model" / "head.onnx").unlink()
        name = "head.onnx"
    else:
        path = broken / "model" / "tables.bin"
        path.write_bytes(path.read_bytes()[:1000])
        name = "tables.bin"
    with serve_folder(broken) as address:
        page.goto(address)
        page.wait_for_function("window.reverie !== undefined && window.reverie.error() !== null")
        message = page.evaluate("window.reverie.error()")
        assert name in message, message
        box = page.locator("#error")
        assert box.is_visible() and name in box.inner_text()
        with pytest.raises(Exception, match=name):
            page.evaluate("window.reverie.ready")


def test_the_breakout_page_plays_with_its_own_keys(page, tmp_path):  # noqa: F811
    """The Breakout model exports and plays the same way: Space fires, the arrows move the paddle."""
    site = export_web(DEFAULT_MODEL.parent / "breakout.safetensors", tmp_path / "breakout")
    with serve_folder(site) as address:
        open_page(page, address)
        assert page.evaluate("window.reverie.model().buttons") == ["fire", "right", "left"]
        page.keyboard.press("Space")
        page.keyboard.down("ArrowLeft")
        page.wait_for_function("window.reverie.stats().frames >= 20")
        page.keyboard.up("ArrowLeft")
        stats = page.evaluate("window.reverie.stats()")
        assert stats["steps"] == 2 and stats["fps"] > 0   # Breakout's own sampling settings
        assert "fire: Space" in page.inner_text("#controls-table") or "fire" in page.inner_text("#game-keys")
        assert not page.errors, page.errors
