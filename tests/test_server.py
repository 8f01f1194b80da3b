"""play/server.py and `reverie serve` (docs/SERVE.md), on loopback in-process with the tiny model (tests/tiny_model.py):
frames equal a local Session's with the same seed and actions; many clients each get their own world; a client
killed mid-frame frees its worlds; pause, save and load carry a world bit for bit; every malformed message gets an
error naming its field while a well-behaved client keeps being served, and a flood leaves memory bounded; the token
and the loopback rule."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc

import msgpack
import numpy as np
import pytest
from test_protocol import BAD
from tiny_model import FRAME, SPEC, tiny_checkpoint
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from engine.checkpoint import load_checkpoint
from engine.session import Session
from play import protocol as P
from play.serve_cli import main as serve_main
from play.serve_cli import model_info
from play.server import SHRINK_TICKS, ServeConfig, Server, serve_in_thread

A = SPEC.size
MAX_WORLDS = 8
SIZES = (1, 2, 4, 8)   # the batches of a server that follows demand
RECV_S = 20.0          # the longest a test waits for one message (the suite shares 2 cores)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return load_checkpoint(tiny_checkpoint(tmp_path_factory.mktemp("serve") / "model.safetensors"))


@pytest.fixture
def server(ckpt, request):
    """A server of MAX_WORLDS worlds on a free loopback port, in one session or in sessions of the batches
    `sizes`; an indirect parameter overrides settings."""
    settings = {"port": 0, "max_worlds": MAX_WORLDS, "fps": 60.0, **getattr(request, "param", {})}
    sizes = settings.pop("sizes", (MAX_WORLDS,))
    cfg = ServeConfig(**settings)
    sessions = {size: Session(ckpt, backend="torch", batch=size) for size in sizes}
    srv = Server(sessions, model_info(ckpt, sessions[MAX_WORLDS]), cfg)
    with serve_in_thread(srv) as url:
        yield srv, url
    for s in sessions.values():
        s.close()


class Client:
    """A test client over the sync websockets API: requests with ids, frames collected per world."""

    def __init__(self, url: str, hello: dict | None = None, **hello_fields):
        self.ws = connect(url, max_size=P.MAX_REPLY, open_timeout=RECV_S, max_queue=None)   # reads on: close is quick
        self.ws.__enter__()   # websockets >= 17.1 warns of a connection used outside `with`; close() ends it
        self.next_id, self.frames = 0, {}
        self.send({"t": "hello", "v": 1, **hello_fields} if hello is None else hello)
        self.welcome = self.recv()

    def send(self, msg: dict) -> None:
        self.ws.send(P.encode(msg))

    def recv(self) -> dict:
        msg = P.decode_reply(self.ws.recv(timeout=RECV_S))
        if msg["t"] == "frame":
            self.frames.setdefault(msg["world"], []).append(msg)
        return msg

    def request(self, msg: dict) -> dict:
        """Send a request with a fresh id; its one answer (frames meanwhile are collected)."""
        self.next_id += 1
        self.send({**msg, "id": self.next_id})
        while True:
            reply = self.recv()
            if reply.get("id") == self.next_id:
                return reply
            assert reply["t"] == "frame", reply

    def create(self, seed: int | None = None) -> int:
        reply = self.request({"t": "create"} if seed is None else {"t": "create", "seed": seed})
        assert reply["t"] == "created", reply
        self.frame(reply["world"], 0)
        return reply["world"]

    def frame(self, world: int, n: int) -> dict:
        """Read until frame n of `world` (or a later one) has come; that frame."""
        while not self.frames.get(world) or self.frames[world][-1]["n"] < n:
            self.recv()
        return next(f for f in self.frames[world] if f["n"] >= n)

    def close(self) -> None:
        self.ws.close()


def wait_until(done, timeout: float = RECV_S) -> bool:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)
    return done()


def image(msg: dict) -> np.ndarray:
    assert msg["format"] == "raw"
    return np.frombuffer(msg["data"], np.uint8).reshape(FRAME)


def local_frames(ckpt, seed: int, actions: list[np.ndarray]) -> list[np.ndarray]:
    """A one-world Session's start frame and its frames under `actions`."""
    s = Session(ckpt, backend="torch", batch=1)
    out = [s.reset(seed=seed)] + [s.step(a) for a in actions]
    s.close()
    return out


def close_to(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal to the runtimes' float rounding (a batch of 8 against a batch of 1)."""
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) <= 2


@pytest.mark.parametrize("server", [{}, {"sizes": SIZES}], indirect=True, ids=["one session", "following demand"])
def test_frames_equal_a_local_session_under_the_same_seed_and_actions(server, ckpt):
    _, url = server
    c = Client(url)
    assert c.welcome["t"] == "welcome" and c.welcome["model"]["action_dim"] == A
    assert c.welcome["model"]["frame"] == list(FRAME) and c.welcome["max_worlds"] == P.MAX_WORLDS_PER_CLIENT
    w = c.create(seed=7)
    rng = np.random.default_rng(0)
    held = [np.eye(A, dtype=np.float32)[rng.integers(A)] for _ in range(6)]   # actions by seq
    for seq, a in enumerate(held):
        c.send({"t": "step", "world": w, "action": [float(v) for v in a], "seq": seq})
        c.frame(w, c.frames[w][-1]["n"] + 4)   # hold each action a few ticks
    c.frame(w, c.frames[w][-1]["n"] + 2)
    got = {f["n"]: f for f in c.frames[w]}
    last = max(got)
    # the action of each frame: its ack; a frame that was replaced (slow reader) lies between acks it can be read from
    actions, acks = [], [-1]
    for n in range(1, last + 1):
        if n in got:
            acks.append(got[n]["ack"])
        elif n + 1 in got and got[n + 1]["ack"] == acks[-1]:
            acks.append(acks[-1])
        else:
            break
        actions.append(np.zeros(A, np.float32) if acks[-1] < 0 else held[acks[-1]])
    assert len(actions) >= 10 and len(set(acks)) >= 3
    ref = local_frames(ckpt, 7, actions)
    for n in range(len(actions) + 1):
        if n in got:
            assert close_to(image(got[n]), ref[n]), f"frame {n}"
    c.close()


@pytest.mark.parametrize("server", [{}, {"sizes": SIZES}], indirect=True, ids=["one session", "following demand"])
def test_eight_clients_each_get_their_own_world(server, ckpt):
    srv, url = server
    clients = [Client(url) for _ in range(8)]
    worlds = [c.create(seed=100 + i) for i, c in enumerate(clients)]
    frames = [image(c.frame(w, 3)) if c.frame(w, 3)["n"] == 3 else None for c, w in zip(clients, worlds)]
    for i, f in enumerate(frames):
        if f is not None:   # frames before any step use the zero action: the local session's frame 3
            assert close_to(f, local_frames(ckpt, 100 + i, [np.zeros(A, np.float32)] * 3)[3])
    later = [image(c.frame(w, 4)) for c, w in zip(clients, worlds)]
    assert len({f.tobytes() for f in later}) == 8     # different seeds, different worlds
    assert srv.batch == MAX_WORLDS and srv.moves == (0 if len(srv.sessions) == 1 else 1 + 2 + 4)
    for c in clients:
        c.close()


@pytest.mark.parametrize("server", [{"sizes": SIZES, "fps": 0.0}], indirect=True)
def test_worlds_follow_demand_into_a_smaller_batch(server, ckpt):
    srv, url = server
    c = Client(url)
    kept, *gone = [c.create(seed=20 + i) for i in range(3)]
    assert srv.batch == 4
    for w in gone:
        assert c.request({"t": "close", "world": w})["t"] == "ok"
    c.frame(kept, c.frames[kept][-1]["n"] + SHRINK_TICKS + 5)
    assert srv.batch == 1
    ns = [f["n"] for f in c.frames[kept]]
    assert ns == sorted(ns) and ns[0] == 0     # its frames kept coming, in order, through the moves
    c.close()


def test_caps_and_a_client_killed_mid_frame_frees_its_worlds(server):
    srv, url = server
    a, b = Client(url), Client(url)
    for _ in range(P.MAX_WORLDS_PER_CLIENT):
        a.create()
    reply = a.request({"t": "create"})
    assert reply["t"] == "error" and "close one first" in reply["message"]
    for _ in range(MAX_WORLDS - P.MAX_WORLDS_PER_CLIENT):
        b.create()
    reply = Client(url).request({"t": "create"})
    assert reply["t"] == "error" and "taken" in reply["message"]
    a.frame(0, 2)
    # the process dies halfway through sending a message (a masked binary frame announcing 256 bytes, 10 sent) while
    # frames are on their way to it: no close handshake
    a.ws.socket.sendall(b"\x82\xfe\x01\x00" + b"mask" + b"x" * 10)
    a.ws.socket.close()
    deadline = time.monotonic() + RECV_S
    while srv.worlds > MAX_WORLDS - P.MAX_WORLDS_PER_CLIENT and time.monotonic() < deadline:
        b.recv()
    c = Client(url)
    for _ in range(P.MAX_WORLDS_PER_CLIENT):
        c.create()
    assert srv.worlds == MAX_WORLDS
    b.close()
    c.close()


def test_pause_save_and_load_carry_a_world_bit_for_bit(server, ckpt):
    _, url = server
    c = Client(url)
    w, other = c.create(seed=3), c.create(seed=4)
    c.frame(w, 3)
    assert c.request({"t": "pause", "world": w, "paused": True})["t"] == "ok"
    paused_at = c.frames[w][-1]["n"]
    saved = c.request({"t": "save", "world": w})
    assert saved["t"] == "saved" and saved["world"] == w
    time.sleep(0.2)
    c.frame(other, c.frames[other][-1]["n"] + 2)
    assert c.frames[w][-1]["n"] == paused_at        # a paused world gets no frames
    s = Session(ckpt, backend="torch", batch=1)
    s.load_world_bytes(0, saved["data"])
    after = s.step(np.zeros(A, np.float32))
    assert c.request({"t": "load", "world": other, "data": saved["data"]})["t"] == "ok"
    seen = len(c.frames[other])
    while len(c.frames[other]) == seen:
        c.recv()
    assert close_to(image(c.frames[other][seen]), after)   # the first frame after the load continues the save
    assert c.request({"t": "pause", "world": w, "paused": False})["t"] == "ok"
    resumed = c.frame(w, paused_at + 1)
    assert resumed["n"] == paused_at + 1 and close_to(image(resumed), after)
    bad = c.request({"t": "load", "world": w, "data": b"not a save-game"})
    assert bad["t"] == "error" and "load.data" in bad["message"]
    assert c.request({"t": "reset", "world": w, "seed": 3})["t"] == "ok"
    assert c.request({"t": "close", "world": w})["t"] == "ok"
    assert c.request({"t": "save", "world": w})["t"] == "error"
    s.close()
    c.close()


def _attack(url: str, raws: list, texts: int = 0) -> list[dict]:
    """One connection sends `raws` (bytes) after hello, and `texts` text messages; the answers."""
    c = Client(url)
    c.create()
    for raw in raws:
        c.ws.send(raw)
    for _ in range(texts):
        c.ws.send("not binary")
    errors = []
    while len(errors) < len(raws) + texts:
        msg = c.recv()
        if msg["t"] == "error":
            errors.append(msg)
    c.close()
    return errors


def test_every_malformed_message_gets_an_error_while_others_are_served(server):
    srv, url = server
    good = Client(url)
    gw = good.create(seed=1)
    stop, served = threading.Event(), []

    def play() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            good.send({"t": "step", "world": gw, "action": [0.0] * A, "seq": seq})
            served.append(good.frame(gw, good.frames[gw][-1]["n"] + 1)["n"])

    player = threading.Thread(target=play)
    player.start()
    raws = [raw for raw, _, _ in BAD.values() if len(raw) <= P.MAX_MESSAGE]   # larger ones: the library's 1009
    raws += [P.encode({"t": "step", "world": 99, "action": [0.0] * A, "seq": 1}),     # no such world
             P.encode({"t": "hello", "v": 1}),                                        # hello twice
             P.encode({"t": "reset", "world": 5, "id": 77})]
    batch = P.MAX_ERRORS - 1
    for i in range(0, len(raws), batch):
        part = raws[i:i + batch]
        errors = _attack(url, part[:-1], texts=1) if i == 0 else _attack(url, part)
        assert all(e["message"] and "\n" not in e["message"] for e in errors)
    assert _attack(url, [P.encode({"t": "reset", "world": 5, "id": 77})])[0]["id"] == 77
    # the tenth error closes the connection (1008); a message over the server's limit (one save-game) closes it (1009)
    c = Client(url)
    for _ in range(P.MAX_ERRORS):
        c.ws.send(b"\xc1")
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            c.recv()
    assert closed.value.rcvd.code == P.CLOSE_POLICY
    c = Client(url)
    c.ws.send(msgpack.packb({"t": "load", "world": 0, "id": 1, "data": b"x" * srv.max_message}))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            c.recv()
    assert closed.value.rcvd.code == P.CLOSE_TOO_BIG
    time.sleep(0.3)
    stop.set()
    player.join(RECV_S)
    assert len(served) >= 5 and served == sorted(served)   # the good client was served throughout
    good.close()
    assert wait_until(lambda: srv.worlds == 0)   # every connection gone, every world freed


def test_a_flood_leaves_memory_bounded(server):
    srv, url = server
    floods = [Client(url) for _ in range(3)]
    for c in floods:
        c.create()

    def flood(c: Client, n: int, base: int) -> None:   # steps as fast as they go, never reading a frame
        for i in range(n):
            c.ws.send(P.encode({"t": "step", "world": 0, "action": [float(i % 2)] + [0.0] * (A - 1), "seq": base + i}))

    gc.collect()
    tracemalloc.start()
    try:
        for round_ in range(2):
            threads = [threading.Thread(target=flood, args=(c, 1500, round_ * 10_000)) for c in floods]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            if round_ == 0:
                time.sleep(0.5)
                gc.collect()
                base = tracemalloc.get_traced_memory()[0]
        time.sleep(0.5)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 4 * 2 ** 20, f"memory grew {grown / 2 ** 20:.1f} MB under the second flood"
    for c in srv.clients:
        assert len(c.frames) <= P.MAX_WORLDS_PER_CLIENT * 2 and len(c.control) <= 32
    for c in floods:
        c.ws.socket.close()


@pytest.mark.parametrize("server", [{"token": "s3cret"}], indirect=True)
def test_a_token_is_required_and_compared(server):
    _, url = server
    c = Client(url, token="wrong")
    assert c.welcome["t"] == "error" and "token" in c.welcome["message"]
    with pytest.raises(ConnectionClosed) as closed:
        c.recv()
    assert closed.value.rcvd.code == P.CLOSE_POLICY
    c = Client(url)
    assert c.welcome["t"] == "error"
    assert Client(url, token="s3cret").welcome["t"] == "welcome"


def test_nothing_but_hello_before_welcome(server):
    _, url = server
    c = Client(url, hello={"t": "create", "id": 5})
    assert c.welcome["t"] == "error" and c.welcome["id"] == 5 and "hello first" in c.welcome["message"]
    c = Client(url, hello={"t": "hello", "v": 9})
    assert c.welcome["t"] == "error" and "hello.v" in c.welcome["message"]


@pytest.mark.parametrize("server", [{"fps": 0.0}], indirect=True)
def test_png_and_jpeg_frames(server, ckpt):
    from io import BytesIO

    from PIL import Image

    _, url = server
    png, jpeg = Client(url, format="png"), Client(url, format="jpeg", quality=80)
    wp, wj = png.create(seed=9), jpeg.create(seed=9)
    start = local_frames(ckpt, 9, [])[0]
    got = np.asarray(Image.open(BytesIO(png.frame(wp, 0)["data"])))
    assert png.frames[wp][0]["format"] == "png" and np.array_equal(got, start)
    assert jpeg.frame(wj, 2)["format"] == "jpeg" and jpeg.frames[wj][-1]["data"][:2] == b"\xff\xd8"


def test_refuses_a_host_beyond_loopback_without_a_token(capsys):
    assert serve_main(["--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--token" in err and "Traceback" not in err


def test_the_message_limit_holds_one_save_game_of_the_served_model():
    """A `load` carries a whole world (2.4 MB for the default model): the server's message limit is one save-game of its
    model, said in `welcome`, while every other field keeps the protocol's small limits."""
    from engine.runtime import DEFAULT_MODEL
    from engine.session import Session
    from play import protocol as P
    from play.server import max_message

    s = Session(DEFAULT_MODEL, backend="torch", batch=1, threads=1)
    s.reset_world(0, seed=1)
    save = s.world_bytes(0)
    limit = max_message(s)
    assert len(save) < limit < len(save) + 128 * 1024
    load = msgpack.packb({"t": "load", "world": 0, "id": 1, "data": save})
    assert P.decode_request(load, 4, limit)["data"] == save
    with pytest.raises(P.ProtocolError, match="over the 65536-byte limit"):
        P.decode_request(load, 4)
    with pytest.raises(P.ProtocolError):   # a big message of another type is still refused by its fields
        P.decode_request(msgpack.packb({"t": "step", "world": 0, "seq": 1, "action": save}), 4, limit)
