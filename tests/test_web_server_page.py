"""The exported web page with a server backend (?server=ws://HOST:PORT), in headless Chromium (tests/browser.py): it
plays a world of a `reverie serve` subprocess on a loopback port through the protocol of docs/SERVE.md (msgpack over a
binary WebSocket; js/remote.js and js/msgpack.js), with the keys, HUD and window.reverie of local play, and shows a
readable error naming the server when there is none, the token is refused or the connection drops.

js/msgpack.js is checked against Python's msgpack: the same bytes out, the same values in, and the limits refused.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from browser import browser, page  # noqa: F401  (fixtures)
from test_web_page import site, url  # noqa: F401  (fixtures: the default model's page, served on loopback)

msgpack = pytest.importorskip("msgpack", reason="msgpack is not installed")
pytest.importorskip("websockets", reason="websockets is not installed (pip install -e '.[play]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[export]')")

from train.evaluation.control import displacement  # noqa: E402
from train.games.probes import probes_for  # noqa: E402

AVATAR = probes_for("builtin:gems")["avatar"]
ROOT = Path(__file__).resolve().parent.parent
SERVE = [sys.executable, "-m", "reverie_cli", "serve"]
SERVER_START_S = 180        # loading the default model and its graphs on a busy 2-core machine
TOKEN = "open-sesame"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def welcome(address: str, token: str | None = None) -> dict | None:
    """The server's answer to a hello (welcome or error), or None where nothing answers yet."""
    from websockets.sync.client import connect

    try:
        with connect(address, open_timeout=5, close_timeout=1) as ws:
            ws.send(msgpack.packb({"t": "hello", "v": 1, "format": "raw", **({"token": token} if token else {})}))
            return msgpack.unpackb(ws.recv(timeout=30))
    except (OSError, TimeoutError):
        return None
    except Exception as e:   # websockets' own errors while the server is still starting
        if type(e).__module__.startswith("websockets"):
            return None
        raise


@contextmanager
def reverie_serve(tmp_path: Path, token: str | None = None):
    """`reverie serve` with the default model on a free loopback port, --fps max, a batch of 2 worlds (a light load
    beside Chromium on 2 cores); yields (address, process)."""
    port = free_port()
    address = f"ws://127.0.0.1:{port}"
    log = tmp_path / f"serve-{port}.log"
    args = [*SERVE, "--host", "127.0.0.1", "--port", str(port), "--fps", "max", "--max-worlds", "2",
            *(["--token", token] if token else [])]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while (answer := welcome(address, token)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited {proc.returncode}" if proc.poll() is not None else "no welcome in time"
                pytest.fail(f"{' '.join(args[1:])}: {why}\n{log.read_text(errors='replace')[-3000:]}", pytrace=False)
            time.sleep(0.5)
        assert answer["t"] == "welcome", answer
        yield address, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with reverie_serve(tmp_path_factory.mktemp("serve")) as (address, _):
        yield address


def decode(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(64, 64, 3)


def open_page(page, url, query: str):   # noqa: F811
    page.goto(url + query)
    page.wait_for_function("window.reverie !== undefined")
    page.evaluate("window.reverie.ready")
    return page


# reset(), then the frame on screen once the reset's start frame is drawn (before any later frame is)
RESET_THEN_FRAME = "async () => { await window.reverie.reset(); return (await window.reverie.frame()).rgb; }"


def frames_later(page, count: int) -> None:   # noqa: F811
    """Wait until `count` more frames have been drawn."""
    now = page.evaluate("window.reverie.stats().frames")
    page.wait_for_function(f"window.reverie.stats().frames >= {now + count}")


# ---- js/msgpack.js against Python's msgpack ------------------------------------------------------------------------

VALUES = [None, True, False, 0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, -1, -32, -33,
          -128, -129, -32768, -32769, -2 ** 31, -2 ** 31 - 1, -2 ** 53 + 1, 0.5, -1.25, 1e300, "", "a", "x" * 31,
          "x" * 32, "é" * 200, "x" * 70_000, b"", b"\x00\xff" * 150, bytes(70_000), [], [1, [2, "three"]], [0] * 16,
          list(range(70_000)), {}, {f"k{i}": i for i in range(16)}, {"t": "welcome", "model": {"frame": [64, 64, 3]}}]


def test_msgpack_js_writes_pythons_bytes(page, url):  # noqa: F811
    page.goto(url + "style.css")                      # the page's origin: its modules import from there
    got = page.evaluate("""async (values) => {
        const { encode } = await import('/js/msgpack.js');
        const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
        const fix = (v) => typeof v === 'string' && v.startsWith('bin:')
          ? Uint8Array.from(atob(v.slice(4)), (c) => c.charCodeAt(0)) : v;
        const out = values.map((v) => hex(encode(fix(v))));
        out.push(hex(encode({ t: 'step', world: 0, action: new Float32Array([0, 1, 0.5]), seq: 7 })));
        return out;
    }""", [f"bin:{base64.b64encode(v).decode()}" if isinstance(v, bytes) else v for v in VALUES])
    expected = [msgpack.packb(v) for v in VALUES]
    expected.append(msgpack.packb({"t": "step", "world": 0, "action": [0.0, 1.0, 0.5], "seq": 7}))   # floats: float64
    wrong = [i for i, (g, e) in enumerate(zip(got, expected)) if bytes.fromhex(g) != e]
    assert not wrong, [(VALUES + ["step"])[i] if i < len(VALUES) else "step" for i in wrong][:5]


def test_msgpack_js_reads_pythons_values_within_limits(page, url):  # noqa: F811
    page.goto(url + "style.css")
    loose = {"maxStrLen": 1 << 20, "maxBinLen": 1 << 20, "maxArrayLen": 1 << 20, "maxMapLen": 64, "maxDepth": 8}
    packed = [msgpack.packb(v) for v in VALUES] + [msgpack.packb(0.25, use_single_float=True)]
    got = page.evaluate("""async ([packed, loose]) => {
        const { decode } = await import('/js/msgpack.js');
        const bytes = (h) => Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));
        const plain = (v) => v instanceof Uint8Array ? 'bin:' + btoa(String.fromCharCode(...v)) : v;
        return packed.map((h) => {
          const v = decode(bytes(h), loose);
          return v instanceof Uint8Array ? plain(v.length > 1000 ? v.subarray(0, 3) : v) : v;
        });
    }""", [[p.hex() for p in packed], loose])
    for value, back in zip(VALUES + [0.25], got):
        if isinstance(value, bytes):
            assert back == "bin:" + base64.b64encode(value if len(value) <= 1000 else value[:3]).decode()
        else:
            assert back == value, (str(value)[:40], str(back)[:40])

    bad = {   # bytes -> what the error names
        msgpack.packb("x" * 257): "string of 257 bytes", msgpack.packb(bytes(65537)): "bin of 65537 bytes",
        msgpack.packb(list(range(65))): "array of 65 items", msgpack.packb({str(i): i for i in range(17)}): "map of 17",
        msgpack.packb({"a": [[1]]}): "nested deeper than 2", b"\xa2\xc3\x28": "not valid UTF-8",
        msgpack.packb({1: 2}): "map key is a number", msgpack.packb(msgpack.ExtType(1, b"x")): "ext type",
        msgpack.packb(1) + b"\x00": "1 bytes after", msgpack.packb("hello")[:3]: "truncated",
        msgpack.packb(2 ** 60): "past 2^53",
    }
    errors = page.evaluate("""async (cases) => {
        const { decode } = await import('/js/msgpack.js');
        const bytes = (h) => Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));
        return cases.map((h) => {
          try { decode(bytes(h)); return null; } catch (e) { return `${e.name}: ${e.message}`; }
        });
    }""", [b.hex() for b in bad])
    for (data, words), error in zip(bad.items(), errors):
        assert error and error.startswith("MsgpackError") and words in error, (data[:8], words, error)


# ---- playing a server's world ----------------------------------------------------------------------------------------

def test_the_page_plays_a_world_on_the_server(page, url, server):  # noqa: F811
    open_page(page, url, f"?server={server}")
    assert page.evaluate("window.reverie.error()") is None
    model = page.evaluate("window.reverie.model()")   # from the server's welcome
    assert model["game"] == "builtin:gems" and model["buttons"] == ["up", "down", "left", "right"]
    page.wait_for_function("window.reverie.stats().frames >= 30")
    stats = page.evaluate("window.reverie.stats()")
    assert stats["fps"] > 0 and stats["backend"] == f"server {server}/"
    assert 0 < stats["rtt_p50_ms"] <= stats["rtt_p99_ms"] < 5000, stats
    hud = page.inner_text("#hud")
    assert "round trip p50" in hud and f"server {server}" in hud and "local play only" in hud, hud
    page.keyboard.press("Digit2")                     # a local-only knob: the page says so
    assert "local play only" in page.inner_text("#toast")
    with pytest.raises(Exception, match="rollout: local play only"):
        page.evaluate("window.reverie.rollout({actions: [[0, 0, 0, 1]]})")
    assert not page.errors, page.errors


def test_a_held_arrow_moves_the_avatar_and_enter_resets(page, url, server, site):  # noqa: F811
    open_page(page, url, f"?server={server}")
    for key, direction in (("ArrowRight", (1, 0)), ("ArrowLeft", (-1, 0))):
        first = decode(page.evaluate(RESET_THEN_FRAME))
        page.keyboard.down(key)
        frames_later(page, 30)
        page.keyboard.up(key)
        last = decode(page.evaluate("window.reverie.frame()")["rgb"])
        moved = displacement(np.stack([first, last]), AVATAR, direction)
        assert moved > 2, f"{key} held for 30 frames: the avatar moved {moved:.1f} px that way"

    model = json.loads((site / "model" / "model.json").read_text())   # the start frame the checkpoint holds
    entry = model["tables"]["start_frames"]
    start = np.frombuffer((site / "model" / "tables.bin").read_bytes(), np.uint8, 64 * 64 * 3, entry["offset"])
    seed = page.evaluate("window.reverie.stats().seed")
    page.keyboard.press("Enter")
    page.wait_for_function(f"window.reverie.stats().seed === {seed + 1}")
    # the start frame, or where the server replaced it before sending (it keeps 2 unsent frames a world), a frame a
    # step or two on under no keys: the avatar back at its start
    shown = decode(page.evaluate(RESET_THEN_FRAME))
    start_xy, shown_xy = AVATAR.centroid(start.reshape(64, 64, 3)), AVATAR.centroid(shown)
    assert np.hypot(*(shown_xy - start_xy)) < 1.5, f"after a reset the avatar is at {shown_xy}, its start {start_xy}"
    assert page.evaluate("window.reverie.stats().seed") == seed + 2
    page.keyboard.press("KeyP")                       # the protocol's pause: no frames while paused
    page.wait_for_function("window.reverie.stats().paused")
    time.sleep(0.3)
    count = page.evaluate("window.reverie.stats().frames")
    time.sleep(0.5)
    assert page.evaluate("window.reverie.stats().frames") == count
    with pytest.raises(Exception, match="resume"):    # the server resets only a world in its batch
        page.evaluate("window.reverie.reset()")
    page.keyboard.press("KeyP")
    frames_later(page, 5)
    assert not page.errors, page.errors


def failed(page) -> str:   # noqa: F811
    """The page's error once it shows one; the error box is on screen and says the same, and the player's
    promises (ready where it never loaded, reset) reject with it."""
    page.wait_for_function("window.reverie !== undefined && window.reverie.error() !== null")
    message = page.evaluate("window.reverie.error()")
    assert page.locator("#error").is_visible() and message in page.inner_text("#error")
    with pytest.raises(Exception, match="world server"):
        page.evaluate("window.reverie.reset()")
    return message


def test_no_server_there_shows_the_error(page, url):  # noqa: F811
    address = f"ws://127.0.0.1:{free_port()}"
    page.goto(url + f"?server={address}")
    message = failed(page)
    assert f"cannot connect to the world server {address}" in message, message


@pytest.mark.parametrize("query, words", [("?server=http://127.0.0.1:8765", "expected ws:// or wss://"),
                                          ("?server=ws://127.0.0.1:8765&steps=2", "the server's settings")])
def test_a_bad_server_address_shows_the_error(page, url, query, words):  # noqa: F811
    page.goto(url + query)
    page.wait_for_function("window.reverie !== undefined && window.reverie.error() !== null")
    assert words in page.evaluate("window.reverie.error()")


def test_a_refused_token_and_a_dropped_connection_show_the_error(page, url, tmp_path):  # noqa: F811
    with reverie_serve(tmp_path, token=TOKEN) as (address, proc):
        page.goto(url + f"?server={address}&token=wrong")
        message = failed(page)
        assert f"the world server {address}/ refused this page" in message and "token" in message, message

        open_page(page, url, f"?server={address}&token={TOKEN}")
        frames_later(page, 5)
        proc.terminate()
        proc.wait(10)
        message = failed(page)
        assert f"the connection to the world server {address}/ was lost" in message, message


def test_the_server_hands_out_the_page_that_plays_on_it(page, server):  # noqa: F811
    """http://HOST:PORT/ of `reverie serve` is the web page, sent to play a world of that server; the server answers
    plain requests with the page's files only."""
    import urllib.error
    import urllib.request

    http = server.replace("ws://", "http://")
    with urllib.request.urlopen(http + "/js/main.js", timeout=10) as r:
        assert r.headers["Content-Type"] == "text/javascript"
        assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    for bad in ("/../pyproject.toml", "/%2e%2e/README.md", "/model/model.json", "/nothing.html"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(http + bad, timeout=10)
        assert err.value.code == 404, bad
    page.goto(http + "/")
    page.wait_for_function("window.reverie !== undefined")
    page.evaluate("window.reverie.ready")
    assert f"server={server}/" in page.url
    page.wait_for_function("window.reverie.stats().frames >= 10")
    assert page.evaluate("window.reverie.stats().backend") == f"server {server}/"
    assert not page.errors, page.errors
