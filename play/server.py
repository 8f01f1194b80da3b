"""`reverie serve`'s server: many clients' worlds stepped as one batch per tick, over WebSocket + msgpack.

docs/SERVE.md is the spec (the protocol is play/protocol.py). One asyncio event loop serves every connection; one
task, the tick loop, steps every live world of every client together, once per tick, each under its client's newest
action. The session is only ever used from one worker thread (a single-thread executor), so the event loop keeps
reading and writing while a step runs, and world bookkeeping (create, pause, close) happens between steps under one
lock. Each world's new frame goes to its connection's outbox, which holds at most FRAMES_PER_WORLD unsent frames of a
world (the older is replaced): a slow or vanished client never stalls the tick or anyone else.

    server = Server({1: s1, 2: s2, 4: s4}, model_info(...), ServeConfig(port=0, max_worlds=4))   # or one session
    with serve_in_thread(server) as url: ...        # tests and benchmarks: a server on loopback in a thread
    asyncio.run(server.run(stop))                    # the CLI (play/serve_cli.py)

Worlds live in the session's slots (engine.session: reset_world, world_bytes, load_world_bytes, close_world). A
paused world is parked as its save-game bytes and leaves its slot; every world a client holds, paused or not, counts
against --max-worlds, so a resume always finds a free slot. Given sessions of several fixed batches (1, 2, 4, 8, 16),
the live worlds run in the smallest that holds them: a world that finds the session full moves them all to the next
larger one, and once a smaller one would have held them for SHRINK_TICKS ticks they move back (each world through its
save-bytes), so one client's world is not stepped in a batch of 16.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import io
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from engine.errors import ReverieError
from play import protocol as P
from play.page_http import page_response

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_WORLDS = 16
FRAMES_PER_WORLD = 2        # unsent frames kept per world of a connection; a newer one replaces the older
CONTROL_QUEUE = 32          # unsent answers per connection before its reader waits for the writer
HELLO_TIMEOUT_S = 10.0      # a connection that says no hello in this time is closed
FLUSH_TIMEOUT_S = 1.0       # how long a closing connection's last answers may take to leave
MAX_CONNECTIONS = 256       # connections at once; more are closed at once (1013, try again later)
CLOSE_TRY_LATER = 1013
PNG_COMPRESSION = 1         # zlib level: fast, frames are small
SEED_RANGE = 2 ** 31        # a world created without a seed gets one drawn from [0, SEED_RANGE)
SHRINK_TICKS = 30           # ticks in a row a smaller session would have held the live worlds before they move to it
# at --fps max, a tick first waits for the next step of each world whose client answered the last frame (so that step
# is applied now, not a tick later: the round trip is one tick, not two), for at most this share of the last tick's
# time and INPUT_WAIT_MAX_S; a client that stops answering is waited for no more
INPUT_WAIT = 0.5
INPUT_WAIT_MAX_S = 0.02


class ServeError(ReverieError, OSError):
    """A server that cannot start: a host beyond loopback without a token, a port in use."""


@dataclass
class ServeConfig:
    """What `reverie serve`'s flags set."""

    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    max_worlds: int = DEFAULT_MAX_WORLDS    # worlds in all (the session's batch)
    per_client: int = P.MAX_WORLDS_PER_CLIENT
    token: str | None = None
    fps: float = 0.0                        # ticks per second; 0 steps as fast as it goes
    threads: int | None = None              # torch threads of the stepping thread


@dataclass(eq=False)
class World:
    """A client's world: its slot in the session (None while paused), or its parked save-game."""

    handle: int
    action: np.ndarray
    slot: int | None = None
    parked: bytes | None = None
    seq: int = -1                # the newest step's seq received
    answers: bool = False        # its client sent a step between the last two ticks: the next tick waits for it
    step_at: float = 0.0         # loop time of its newest step
    frame_at: float = 0.0        # loop time its newest frame went to the outbox: a later step answers that frame
    ack: int = -1                # the seq of the newest step applied
    n: int = 0                   # frames since its reset
    gen: int = 0                 # bumped by reset, load, pause and close: frames of an older gen are dropped


@dataclass(eq=False)
class Client:
    """One connection: its format, its worlds and its outbox (answers first, then frames)."""

    ws: ServerConnection
    format: str = P.DEFAULT_FORMAT
    quality: int = P.DEFAULT_QUALITY
    welcomed: bool = False
    errors: int = 0
    worlds: dict[int, World] = field(default_factory=dict)
    next_handle: int = 0
    control: collections.deque = field(default_factory=collections.deque)
    frames: collections.deque = field(default_factory=collections.deque)   # (handle, bytes)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)

    def push_frame(self, handle: int, data: bytes) -> None:
        """Queue a world's frame, replacing its oldest unsent one beyond FRAMES_PER_WORLD."""
        mine = [i for i, (h, _) in enumerate(self.frames) if h == handle]
        if len(mine) >= FRAMES_PER_WORLD:
            del self.frames[mine[0]]
        self.frames.append((handle, data))
        self.wake.set()

    def renew(self, w: World) -> None:
        """A world's state changed under it (reset, load, pause, close): frames of its old state are not sent."""
        w.gen += 1
        self.frames = collections.deque((h, d) for h, d in self.frames if h != w.handle)


def encode_image(frame: np.ndarray, fmt: str, quality: int) -> bytes:
    """A frame (H, W, 3) uint8 as the bytes a client asked for: raw RGB, PNG or JPEG."""
    if fmt == "raw":
        return frame.tobytes()
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(frame).save(buf, "PNG", compress_level=PNG_COMPRESSION)
    else:
        Image.fromarray(frame).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def max_message(session: Any) -> int:
    """The largest message a client of `session`'s model may send: 64 KiB, or one world's save-game (a `load`) with room
    for its header, which is mostly the world's keys and values (2.4 MB for the default model)."""
    c = getattr(session, "cfg", None)
    if c is None:
        return P.MAX_MESSAGE
    h, w, _ = session.frame_shape
    kv = 2 * 4 * c.backbone_layers * c.heads * c.context_frames * c.tokens_per_frame * c.head_dim
    rest = 4 * (c.tokens_per_frame * c.d_model + c.latent_channels * c.latent_height * c.latent_width) + h * w * 3
    return max(P.MAX_MESSAGE, kv + rest + 64 * 1024)


class Server:
    """The worlds of every connection over one session of batch `cfg.max_worlds`; see the module docstring."""

    def __init__(self, sessions: Any, model: dict[str, Any], cfg: ServeConfig):
        """sessions: one session, or {batch: session} of one model; the worlds live in the smallest that holds them."""
        self.sessions = dict(sessions) if isinstance(sessions, dict) else {int(sessions.batch): sessions}
        self.model, self.cfg = model, cfg
        if any(int(s.batch) != size for size, s in self.sessions.items()) or max(self.sessions) < cfg.max_worlds:
            raise ServeError(f"need sessions keyed by their batch, the largest holding --max-worlds {cfg.max_worlds}; "
                             f"got batches {sorted(self.sessions)}")
        self.session = self.sessions[min(self.sessions)]
        self.batch = int(self.session.batch)
        self.moves = 0                                   # worlds moved between sessions, all told
        self._roomy_ticks = 0                            # ticks in a row that a smaller session would have held
        self.action_dim = int(model["action_dim"])
        self.max_message = max_message(self.session)
        # frames the library buffers per connection: about 2 MB at most, whatever one message may weigh
        self.max_queue = max(2, P.INCOMING_QUEUE * P.MAX_MESSAGE // self.max_message)
        self.starts = int(model.get("starts", 1))
        self.slots: list[World | None] = [None] * self.batch
        self.clients: set[Client] = set()
        self.worlds = 0                                  # worlds held by all clients, paused ones included
        self.stepper = ThreadPoolExecutor(1, "reverie-serve-step", initializer=self._init_thread)
        self.encoder = ThreadPoolExecutor(1, "reverie-serve-encode")
        self.port: int | None = None
        self.ticks = 0
        self._seeds = random.Random()
        self._lock: asyncio.Lock | None = None
        self._live: asyncio.Event | None = None
        self._input: asyncio.Event | None = None   # set by every step message (the tick's wait for answers)
        self._tick_s = 0.0                         # the last tick's step time

    def _init_thread(self) -> None:
        if self.cfg.threads:
            import torch

            torch.set_num_threads(self.cfg.threads)   # the intra-op thread count is per thread

    # ---- running ---------------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, ready: Callable[[str], None] | None = None) -> None:
        """Serve until `stop` is set; `ready(url)` once listening. Leaves the session open (the caller's)."""
        self._lock, self._live, self._input = asyncio.Lock(), asyncio.Event(), asyncio.Event()
        try:
            server = await serve(self._connection, self.cfg.host, self.cfg.port, max_size=self.max_message,
                                 max_queue=self.max_queue, compression=None, open_timeout=HELLO_TIMEOUT_S,
                                 process_request=page_response)   # http://HOST:PORT/: the web page, playing here
        except OSError as e:
            raise ServeError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: {e.strerror or e}; pass another "
                             "--port, or --port 0 for a free one") from None
        async with server:
            self.port = server.sockets[0].getsockname()[1]
            ticks = asyncio.create_task(self._ticks())
            if ready is not None:
                ready(self.url)
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([ticks, stopped], return_when=asyncio.FIRST_COMPLETED)
            ticks.cancel()
            stopped.cancel()
            await asyncio.gather(ticks, return_exceptions=True)
            server.close()
            await server.wait_closed()
        self.stepper.shutdown(wait=True)
        self.encoder.shutdown(wait=True)
        if not ticks.cancelled() and ticks.exception() is not None:   # a step that failed ends the server, said
            raise ticks.exception()

    @property
    def url(self) -> str:
        host = self.cfg.host
        return f"ws://{f'[{host}]' if ':' in host else host}:{self.port}/"

    async def _call(self, fn: Callable, *args: Any) -> Any:
        """fn(*args) on the session's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.stepper, fn, *args)

    # ---- the tick loop ---------------------------------------------------------------------------------------------
    async def _ticks(self) -> None:
        period = 1.0 / self.cfg.fps if self.cfg.fps > 0 else 0.0
        next_due = 0.0
        delivering: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        while True:
            await self._live.wait()
            if period:   # ticks start on a fixed grid; a late tick moves the grid instead of bursting
                now = loop.time()
                if next_due > now:
                    await asyncio.sleep(next_due - now)
                now = loop.time()
                next_due = (next_due if next_due and now - next_due < period else now) + period
            else:   # the last tick's frames out first: the steps that answer them are what the next tick waits for
                if delivering is not None:
                    await delivering
                    delivering = None
                await self._await_answers(loop.time() + min(INPUT_WAIT * self._tick_s, INPUT_WAIT_MAX_S))
            async with self._lock:
                active = [w for w in self.slots if w is not None]
                if not active:
                    self._live.clear()
                    continue
                await self._follow_demand(len(active))
                actions = np.zeros((self.batch, self.action_dim), np.float32)
                snapshot = []
                for w in active:
                    actions[w.slot] = w.action
                    w.answers = w.seq > w.ack
                    w.ack, w.n = w.seq, w.n + 1
                    snapshot.append((w, w.slot, w.gen, w.n, w.ack))
                t0 = time.perf_counter()
                frames = await self._call(self._step, self.session, actions)
                self._tick_s = time.perf_counter() - t0
                tick_ms = self._tick_s * 1e3
                self.ticks += 1
            if delivering is not None:
                await delivering      # one tick's frames in encoding at a time
            delivering = asyncio.create_task(self._deliver(snapshot, frames, tick_ms))
            await asyncio.sleep(0)    # let readers and writers run between ticks at --fps max

    async def _await_answers(self, deadline: float) -> None:
        """Until `deadline` (loop time), wait for a step answering the newest frame of every live world whose client
        answers each frame."""
        loop = asyncio.get_running_loop()
        while any(w is not None and w.answers and w.step_at <= w.frame_at for w in self.slots):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._input.clear()
            try:
                await asyncio.wait_for(self._input.wait(), remaining)
            except asyncio.TimeoutError:   # noqa: UP041 (TimeoutError is asyncio's only from Python 3.11)
                return

    @staticmethod
    def _step(session: Any, actions: np.ndarray) -> np.ndarray:
        frames = np.asarray(session.step(actions))
        return frames.reshape(len(actions), *frames.shape[-3:])   # (K, H, W, 3): a batch of 1 comes back unbatched

    # ---- following demand: the smallest session that holds the live worlds -------------------------------------------
    async def _follow_demand(self, live: int) -> None:
        """Move the worlds to a smaller session once one has held them for SHRINK_TICKS ticks in a row (under the
        lock). Growing happens when a world needs a slot (_free_slot)."""
        smaller = min(size for size in self.sessions if size >= live)
        self._roomy_ticks = self._roomy_ticks + 1 if smaller < self.batch else 0
        if self._roomy_ticks >= SHRINK_TICKS:
            await self._move_to(smaller)

    async def _free_slot(self) -> int:
        """A free slot of the current session, moving the worlds to the next larger one where it is full (under the
        lock; every world held counts against max_worlds, so the largest session always has one)."""
        if None not in self.slots:
            await self._move_to(min(size for size in self.sessions if size > self.batch))
        return self.slots.index(None)

    async def _move_to(self, size: int) -> None:
        """Move every live world into the session of batch `size` through its save-game (engine.slots: a world's
        frames are those it would have made, to float rounding)."""
        old, new = self.session, self.sessions[size]
        live = [w for w in self.slots if w is not None]

        def move() -> None:
            for i, w in enumerate(live):
                new.load_world_bytes(i, old.world_bytes(w.slot))
                old.close_world(w.slot)

        await self._call(move)
        self.session, self.batch, self.slots = new, size, [None] * size
        for i, w in enumerate(live):
            self.slots[i], w.slot = w, i
        self.moves += len(live)
        self._roomy_ticks = 0

    async def _deliver(self, snapshot: list, frames: np.ndarray, tick_ms: float) -> None:
        owners = {id(w): c for c in self.clients for w in c.worlds.values()}
        jobs = [(owners.get(id(w)), w, slot, gen, n, ack) for w, slot, gen, n, ack in snapshot]
        jobs = [j for j in jobs if j[0] is not None]
        if any(c.format != "raw" for c, *_ in jobs):
            images = await asyncio.get_running_loop().run_in_executor(
                self.encoder, lambda: [encode_image(frames[j[2]], j[0].format, j[0].quality) for j in jobs])
        else:
            images = [frames[j[2]].tobytes() for j in jobs]
        for (client, w, _, gen, n, ack), image in zip(jobs, images):
            if w.gen == gen and client.worlds.get(w.handle) is w:
                client.push_frame(w.handle, P.encode({"t": "frame", "world": w.handle, "n": n, "ack": ack,
                                                      "format": client.format, "data": image, "tick_ms": tick_ms}))
                w.frame_at = asyncio.get_running_loop().time()

    async def _send_frame(self, client: Client, w: World, frame: np.ndarray) -> None:
        """A world's start frame (n 0), outside the ticks: after create and reset."""
        image = frame.tobytes() if client.format == "raw" else await asyncio.get_running_loop().run_in_executor(
            self.encoder, encode_image, frame, client.format, client.quality)
        client.push_frame(w.handle, P.encode({"t": "frame", "world": w.handle, "n": w.n, "ack": w.ack,
                                              "format": client.format, "data": image, "tick_ms": 0.0}))

    # ---- connections -----------------------------------------------------------------------------------------------
    async def _connection(self, ws: ServerConnection) -> None:
        if len(self.clients) >= MAX_CONNECTIONS:
            await ws.close(CLOSE_TRY_LATER, "the server is full; try again later")
            return
        client = Client(ws)
        self.clients.add(client)
        writer = asyncio.create_task(self._writer(client))
        try:
            await self._read(client)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            async with self._lock:
                for w in list(client.worlds.values()):
                    await self._drop_world(client, w)
            writer.cancel()

    async def _read(self, client: Client) -> None:
        ws = client.ws
        try:
            first = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT_S)
        except TimeoutError:
            await self._refuse(client, None, f"hello: none within {HELLO_TIMEOUT_S:g} s of connecting")
            return
        if not await self._hello(client, first):
            return
        async for raw in ws:
            try:
                await self._handle(client, P.decode_request(raw, self.action_dim, self.max_message))
            except (P.ProtocolError, ReverieError) as e:
                if await self._error(client, getattr(e, "id", None), str(e)):
                    return
            except Exception as e:   # a bug of ours: said to the client and logged, never the end of the server
                traceback.print_exc(file=sys.stderr)
                if await self._error(client, None, f"server: internal error ({type(e).__name__}); please report it"):
                    return

    async def _hello(self, client: Client, raw: Any) -> bool:
        try:
            msg = P.decode_request(raw, self.action_dim, self.max_message)
        except P.ProtocolError as e:
            await self._refuse(client, e.id, str(e))
            return False
        if msg["t"] != "hello":
            await self._refuse(client, msg.get("id"), f"t: send hello first (got {msg['t']})")
            return False
        if self.cfg.token is not None:
            given = msg.get("token", "").encode("utf-8")
            if not hmac.compare_digest(given, self.cfg.token.encode("utf-8")):
                await self._refuse(client, None, "hello.token: missing or wrong token")
                return False
        client.format, client.quality, client.welcomed = msg["format"], msg["quality"], True
        await self._reply(client, {"t": "welcome", "v": P.VERSION, "model": self.model,
                                   "max_worlds": self.cfg.per_client, "fps": float(self.cfg.fps),
                                   "max_message": self.max_message})
        return True

    async def _error(self, client: Client, rid: int | None, message: str) -> bool:
        """Answer an error; True when it was the connection's last allowed one (then closed, 1008)."""
        client.errors += 1
        msg = {"t": "error", "message": message[:P.MAX_REPLY_STR]}
        if rid is not None:
            msg["id"] = rid
        await self._reply(client, msg)
        if client.errors >= P.MAX_ERRORS:
            await self._close(client, P.CLOSE_POLICY, f"{P.MAX_ERRORS} errors")
            return True
        return False

    async def _refuse(self, client: Client, rid: int | None, message: str) -> None:
        msg = {"t": "error", "message": message}
        if rid is not None:
            msg["id"] = rid
        await self._reply(client, msg)
        await self._close(client, P.CLOSE_POLICY, message[:100])

    async def _close(self, client: Client, code: int, reason: str) -> None:
        """Close after the answers already queued have left (or FLUSH_TIMEOUT_S has passed)."""
        client.frames.clear()
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while client.control and time.monotonic() < deadline:
            client.room.clear()
            try:
                await asyncio.wait_for(client.room.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        await client.ws.close(code, reason)

    async def _reply(self, client: Client, msg: dict[str, Any]) -> None:
        while len(client.control) >= CONTROL_QUEUE:   # the client reads nothing: stop reading from it too
            client.room.clear()
            await client.room.wait()
        client.control.append(P.encode(msg))
        client.wake.set()

    async def _writer(self, client: Client) -> None:
        try:
            while True:
                await client.wake.wait()
                client.wake.clear()
                while client.control or client.frames:
                    if client.control:
                        data = client.control.popleft()
                        client.room.set()
                    else:
                        data = client.frames.popleft()[1]
                    await client.ws.send(data)
        except ConnectionClosed:
            client.control.clear()
            client.room.set()

    # ---- requests --------------------------------------------------------------------------------------------------
    async def _handle(self, client: Client, msg: dict[str, Any]) -> None:
        t, rid = msg["t"], msg.get("id")
        if t == "hello":
            raise P.ProtocolError("hello: already said", "t")
        if t == "create":
            await self._create(client, msg)
            return
        w = client.worlds.get(msg["world"])
        if w is None:
            raise P.ProtocolError(f"{t}.world: no world {msg['world']} on this connection", "world", rid)
        if t == "step":
            if msg["seq"] <= w.seq:
                raise P.ProtocolError(f"step.seq: {msg['seq']} is not above the last one ({w.seq})", "seq")
            w.action = np.asarray(msg["action"], np.float32)
            w.seq, w.step_at = msg["seq"], asyncio.get_running_loop().time()
            self._input.set()
            return
        async with self._lock:
            if t == "save":
                data = w.parked if w.slot is None else await self._call(self.session.world_bytes, w.slot)
                await self._reply(client, {"t": "saved", "id": rid, "world": w.handle, "data": bytes(data)})
                return
            if t == "close":
                await self._drop_world(client, w)
            elif t == "pause":
                await self._pause(client, w, msg["paused"])
            elif t == "reset":
                if w.slot is None:
                    raise P.ProtocolError(f"reset.world: world {w.handle} is paused; resume it first", "world", rid)
                frame = await self._call(lambda: self.session.reset_world(w.slot, seed=msg.get("seed")))
                w.n = 0
                client.renew(w)
                await self._reply(client, {"t": "ok", "id": rid})
                await self._send_frame(client, w, np.asarray(frame))
                return
            elif t == "load":
                await self._load(client, w, msg["data"], rid)
            await self._reply(client, {"t": "ok", "id": rid})

    async def _create(self, client: Client, msg: dict[str, Any]) -> None:
        rid = msg["id"]
        if len(client.worlds) >= self.cfg.per_client:
            raise P.ProtocolError(f"create: this connection holds {len(client.worlds)} worlds, the most one client "
                                  "may; close one first", "id", rid)
        start = msg.get("start", 0)
        if start >= self.starts:
            raise P.ProtocolError(f"create.start: {start} is out of range; this model has {self.starts} start "
                                  f"state(s), 0..{self.starts - 1}", "start", rid)
        seed = msg.get("seed", self._seeds.randrange(SEED_RANGE))
        async with self._lock:
            if self.worlds >= self.cfg.max_worlds:
                raise P.ProtocolError(f"create: all {self.cfg.max_worlds} worlds of this server are taken; try again "
                                      "later", "id", rid)
            slot = await self._free_slot()
            w = World(client.next_handle, np.zeros(self.action_dim, np.float32), slot=slot)
            frame = await self._call(lambda: self.session.reset_world(slot, seed=seed))
            client.next_handle += 1
            client.worlds[w.handle] = w
            self.slots[slot] = w
            self.worlds += 1
            await self._reply(client, {"t": "created", "id": rid, "world": w.handle})
            await self._send_frame(client, w, np.asarray(frame))
            self._live.set()

    async def _pause(self, client: Client, w: World, paused: bool) -> None:
        if paused and w.slot is not None:
            w.parked = bytes(await self._call(self.session.world_bytes, w.slot))
            await self._call(self.session.close_world, w.slot)
            self.slots[w.slot], w.slot = None, None
            client.renew(w)
        elif not paused and w.slot is None:
            slot = await self._free_slot()
            await self._call(self.session.load_world_bytes, slot, w.parked)
            self.slots[slot], w.slot, w.parked = w, slot, None
            client.renew(w)
            self._live.set()

    async def _load(self, client: Client, w: World, data: bytes, rid: int) -> None:
        """A save-game into a world; a paused one is checked in a free slot and parked again."""
        slot = w.slot if w.slot is not None else await self._free_slot()
        try:
            await self._call(self.session.load_world_bytes, slot, data)
            if w.slot is None:
                w.parked = bytes(await self._call(self.session.world_bytes, slot))
                await self._call(self.session.close_world, slot)
        except ReverieError as e:
            raise P.ProtocolError(f"load.data: {e}", "data", rid) from None
        client.renew(w)

    async def _drop_world(self, client: Client, w: World) -> None:
        """Free a world's slot (close_world) and forget it."""
        if w.slot is not None:
            await self._call(self.session.close_world, w.slot)
            self.slots[w.slot] = None
        w.slot, w.parked = None, None
        client.worlds.pop(w.handle, None)
        client.renew(w)
        self.worlds -= 1


@contextmanager
def serve_in_thread(server: Server, timeout: float = 30.0) -> Iterator[str]:
    """Run `server` on an event loop in a background thread for the `with` block; yields its ws:// URL."""
    started = threading.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        async def go() -> None:
            box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
            await server.run(box["stop"], ready=lambda url: started.set())

        try:
            asyncio.run(go())
        except BaseException as e:   # shown to the caller below
            box["error"] = e
            started.set()

    thread = threading.Thread(target=main, name="reverie-serve", daemon=True)
    thread.start()
    if not started.wait(timeout) or "error" in box:
        raise box.get("error") or ServeError(f"the server did not start within {timeout:g} s")
    try:
        yield server.url
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(timeout)
