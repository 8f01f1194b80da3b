"""A client of `reverie serve` (docs/SERVE.md, protocol version 1): one WebSocket connection, its worlds, their frames
as numpy arrays, and round trips measured from `seq` / `ack`.

    client = await Client.connect("ws://127.0.0.1:8765", token=T)    # hello -> welcome (or ClientError)
    world = await client.create(seed=0)
    seq = await client.step(world, action)      # no answer: the newest action wins, frames carry its `ack`
    frame = await client.next_frame(world)      # Frame: .image (H, W, 3) uint8, .n, .ack, .tick_ms
    data = await client.save(world); await client.load(world, data)
    await client.close()

Frames: the newest frame of a world wins (next_frame returns the newest one after the last it returned; a slow
reader skips frames, never queues them). Round trip of step `seq` s: from sending it to the first frame of its world
whose `ack` >= s (client.take_round_trips()).

`RemoteWorld` is the window's world interface (play/world.py: reset / step / save / load / close) over a Client run on
a background thread's asyncio loop, for `reverie play --connect`. Every failure (no server there, a refused token, a
closed connection, a malformed message) is a ClientError: one line naming the address and what to do.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from engine.actions import ActionSpec, ActionSpecError
from play.protocol import FORMATS, MAX_MESSAGE, MAX_REPLY, VERSION, ProtocolError, decode_reply, encode
from play.world import PlayError, Step

DEFAULT_PORT = 8765
CONNECT_TIMEOUT = 10.0      # seconds to connect and get `welcome`
REQUEST_TIMEOUT = 30.0      # seconds for an answer to a request (create, reset, save, load, ...)
FRAME_TIMEOUT = 10.0        # seconds without a frame of a live world before the client gives up
PENDING_STEPS = 1024        # steps awaiting their ack per world; older ones are forgotten (no round trip)
ROUND_TRIPS_KEPT = 1_000_000  # round trips kept between take_round_trips() calls (a 600 s bench of 1000 frames/s)
HUD_ROUND_TRIPS = 240       # recent round trips the window's HUD shows the median of
POLL_SECONDS = 0.05         # how often a waiting step of RemoteWorld looks whether the window paused it


class ClientError(PlayError):
    """What went wrong talking to a server, in one line that names its address and what to do."""


# ---- messages --------------------------------------------------------------------------------------------------------
def decode(data: Any, url: str) -> dict[str, Any]:
    """A server message, checked by play/protocol.py within a client's limits."""
    try:
        return decode_reply(data)
    except ProtocolError as e:
        raise ClientError(f"{url} sent a message this client cannot read ({e}); is it a reverie serve of protocol "
                          f"version {VERSION}?") from None


def encode_request(message: dict[str, Any]) -> bytes:
    try:
        return encode(message)
    except ProtocolError as e:
        raise ClientError(f"a {message.get('t')} request breaks the protocol: {e}") from None


def field_of(message: dict[str, Any], name: str, kind: type | tuple[type, ...], url: str) -> Any:
    """message[name] if it is of `kind` (bool is no int), else ClientError naming the message and the field: for the
    welcome's model fields, which the protocol's schema leaves open (decode_reply checks every top-level field)."""
    value = message.get(name)
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        value = None
    if not isinstance(value, kind):
        raise ClientError(f"{url} sent a {message.get('t')!r} message whose field {name!r} is {value!r}; is it a "
                          "reverie serve of protocol version 1?")
    return value


def server_url(address: str) -> str:
    """ws://HOST:PORT/ from 'HOST:PORT', 'HOST' (port 8765), '[::1]:PORT' or a ws:// or wss:// URL."""
    text = address.strip()
    if "://" not in text:
        text = f"ws://{text}"
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("ws", "wss") or not parts.hostname or port == -1:
        raise ClientError(f"{address!r} is not a server address: give HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT}) or "
                          "ws://HOST:PORT")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port or DEFAULT_PORT}{parts.path or '/'}"


def spec_of(model: dict[str, Any], url: str) -> ActionSpec:
    """The action spec of a welcome's model fields (game, buttons, axes)."""
    try:
        return ActionSpec(game=model["game"], buttons=tuple(model["buttons"]), axes=tuple(model["axes"]))
    except (KeyError, TypeError, ActionSpecError) as e:
        raise ClientError(f"{url} describes its model's controls in a way this client cannot read ({e})") from None


def decode_image(form: str, data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """A frame's bytes as (H, W, 3) uint8: raw RGB, or a PNG / JPEG file."""
    if form == "raw":
        if len(data) != math.prod(shape):
            raise ClientError(f"a raw frame of {len(data)} bytes is not the model's {shape[0]}x{shape[1]}x3")
        return np.frombuffer(data, np.uint8).reshape(shape)  # (H, W, 3), read-only
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        image = np.asarray(im.convert("RGB"))
    if image.shape != shape:
        raise ClientError(f"a {form} frame of {image.shape[1]}x{image.shape[0]} is not the model's "
                          f"{shape[1]}x{shape[0]}")
    return image


@dataclass
class Welcome:
    """What the server said about itself: its model's player fields, worlds per client, tick rate (0: max)."""

    model: dict[str, Any]
    max_worlds: int
    fps: float
    frame_shape: tuple[int, int, int]
    action_dim: int
    max_message: int = MAX_MESSAGE       # bytes a message to the server may have (a load carries a save-game)

    @classmethod
    def parse(cls, message: dict[str, Any], url: str) -> Welcome:
        v = message["v"]
        if v != VERSION:
            raise ClientError(f"{url} speaks protocol version {v}, this client {VERSION}: install the same "
                              "reverie on both ends")
        model = message["model"]
        shape = field_of(model, "frame", list, url)
        if len(shape) != 3 or shape[2] != 3 or not all(isinstance(s, int) and 0 < s <= 4096 for s in shape):
            raise ClientError(f"{url} sent a frame shape {shape!r}; a frame is [H, W, 3]")
        action_dim = field_of(model, "action_dim", int, url)
        spec = spec_of(model, url)
        if spec.size != action_dim:
            raise ClientError(f"{url} names {spec.size} controls but an action_dim of {action_dim}")
        return cls(model=model, max_worlds=message["max_worlds"], fps=float(message["fps"]), frame_shape=tuple(shape),
                   action_dim=action_dim, max_message=int(message.get("max_message", MAX_MESSAGE)))


@dataclass
class Frame:
    """One frame of a world as it came from the server; `image` decodes it on first use."""

    world: int
    n: int                    # frame number of the world since its reset
    ack: int                  # the seq of the newest step the server had applied (-1 before any)
    format: str
    data: bytes
    tick_ms: float            # the server's step time of the tick that made it
    received_at: float        # time.perf_counter() when it arrived
    count: int                # frames of this world received on this connection, this one included
    shape: tuple[int, int, int]
    _image: np.ndarray | None = field(default=None, repr=False)

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = decode_image(self.format, self.data, self.shape)
        return self._image


class _World:
    """A world's newest frame, the steps awaiting their ack and the frame waiters of one connection."""

    def __init__(self) -> None:
        self.latest: Frame | None = None
        self.returned = 0                   # count of the newest frame next_frame returned
        self.count = 0                      # frames received
        self.pending: deque[tuple[int, float]] = deque(maxlen=PENDING_STEPS)   # (seq, sent at)
        self.arrived = asyncio.Event()


# ---- the client --------------------------------------------------------------------------------------------------
class Client:
    """One connection to a server (create it with `await Client.connect(url)`); use it from one asyncio loop."""

    def __init__(self, ws: Any, url: str, welcome: Welcome, form: str):
        self._ws = ws
        self.url = url
        self.welcome = welcome
        self.format = form
        self._ids = 0
        self._seq = 0
        self._answers: dict[int, asyncio.Future] = {}
        self._worlds: dict[int, _World] = {}
        self._round_trips: deque[float] = deque(maxlen=ROUND_TRIPS_KEPT)
        self._tick_ms: deque[float] = deque(maxlen=ROUND_TRIPS_KEPT)      # the server's step time of each frame
        self.errors: list[str] = []           # the server's errors that answered no request
        self.closed: ClientError | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, url: str, token: str | None = None, form: str = "raw", quality: int | None = None,
                      timeout: float = CONNECT_TIMEOUT) -> Client:
        """Open a connection, say hello, and return the client once the server's welcome came."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        if form not in FORMATS:
            raise ClientError(f"format must be one of {', '.join(FORMATS)}, got {form!r}")
        try:
            ws = await asyncio.wait_for(connect(url, compression=None, proxy=None, max_size=MAX_REPLY,
                                                open_timeout=None, ping_interval=None), timeout)
        except InvalidURI:
            raise ClientError(f"{url!r} is not a server address: give HOST:PORT or ws://HOST:PORT") from None
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as e:
            if isinstance(e, asyncio.TimeoutError):
                why = f"no answer within {timeout:g} s"
            else:
                why = os.strerror(e.errno) if getattr(e, "errno", None) else (str(e) or type(e).__name__)
            raise ClientError(f"cannot connect to {url}: {why}; is 'reverie serve' running there (reverie serve "
                              "--host H --port P)?") from None
        try:
            hello: dict[str, Any] = {"t": "hello", "v": VERSION, "format": form}
            if token is not None:
                hello["token"] = token
            if quality is not None:
                hello["quality"] = int(quality)
            await ws.send(encode_request(hello))
            raw = await asyncio.wait_for(ws.recv(), timeout)
            if isinstance(raw, str):
                raise ClientError(f"{url} answered hello with a text message; is it a reverie serve?")
            message = decode(raw, url)
            if message["t"] == "error":
                raise ClientError(refusal(url, str(message.get("message", "")), token))
            if message["t"] != "welcome":
                raise ClientError(f"{url} answered hello with {message['t']!r}, not 'welcome'; is it a reverie "
                                  "serve of protocol version 1?")
            welcome = Welcome.parse(message, url)
        except ConnectionClosed as e:
            await ws.close()
            reason = e.rcvd.reason if e.rcvd is not None else ""
            raise ClientError(refusal(url, reason or "it closed the connection before its welcome", token)) from None
        except asyncio.TimeoutError:
            await ws.close()
            raise ClientError(f"{url} did not answer hello within {timeout:g} s; is it a reverie serve?") from None
        except BaseException:
            await ws.close()
            raise
        return cls(ws, url, welcome, form)

    # ---- requests ------------------------------------------------------------------------------------------------
    async def create(self, seed: int | None = None, start: int | None = None) -> int:
        """A new world on the server (its first frame follows); returns its handle."""
        fields = {k: v for k, v in (("seed", seed), ("start", start)) if v is not None}
        answer = await self._request("create", "created", **fields)
        return answer["world"]

    async def step(self, world: int, action: Any) -> int:
        """Send the world's newest action (action_dim floats); returns its seq."""
        values = [float(v) for v in np.asarray(action, np.float32).reshape(-1)]
        if len(values) != self.welcome.action_dim or not all(math.isfinite(v) for v in values):
            raise ClientError(f"an action is {self.welcome.action_dim} finite floats, got {values!r}")
        self._seq += 1
        state = self._world(world)
        state.pending.append((self._seq, time.perf_counter()))
        await self._send({"t": "step", "world": world, "action": values, "seq": self._seq})
        return self._seq

    async def reset(self, world: int, seed: int | None = None) -> None:
        """Start the world again; its next frame is its start frame."""
        await self._request("reset", "ok", world=world, **({} if seed is None else {"seed": seed}))
        self._world(world).latest = None     # frames made before the reset are not the world's any more

    async def pause(self, world: int, paused: bool) -> None:
        await self._request("pause", "ok", world=world, paused=bool(paused))

    async def save(self, world: int) -> bytes:
        """The world's save-game (safetensors bytes), for load() here or on another server of the same model."""
        answer = await self._request("save", "saved", world=world)
        return answer["data"]

    async def load(self, world: int, data: bytes) -> None:
        """Put a save-game into the world (its next frame continues the saved world)."""
        if len(data) + 256 > self.welcome.max_message:
            raise ClientError(f"a save-game of {len(data)} bytes is more than a message to {self.url} may carry "
                              f"({self.welcome.max_message} bytes): is it a save-game of this server's model?")
        await self._request("load", "ok", world=world, data=bytes(data))
        self._world(world).latest = None

    async def close_world(self, world: int) -> None:
        await self._request("close", "ok", world=world)
        self._worlds.pop(world, None)

    async def next_frame(self, world: int, timeout: float = FRAME_TIMEOUT) -> Frame:
        """The world's newest frame after the last one this returned, waiting up to `timeout` seconds for it."""
        state = self._world(world)
        deadline = time.perf_counter() + timeout
        while state.latest is None or state.latest.count <= state.returned:
            if self.closed is not None:
                raise self.closed
            state.arrived.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                raise ClientError(f"no frame of world {world} from {self.url} in {timeout:g} s; is the server "
                                  "overloaded, or the world paused?")
            try:
                await asyncio.wait_for(state.arrived.wait(), left)
            except asyncio.TimeoutError:
                pass
        state.returned = state.latest.count
        return state.latest

    def frames_received(self, world: int) -> int:
        return self._world(world).count

    def take_round_trips(self) -> list[float]:
        """Round trips (ms) measured since the last call, oldest first."""
        out = list(self._round_trips)
        self._round_trips.clear()
        return out

    def take_tick_ms(self) -> list[float]:
        """The server's step times (ms) of the frames received since the last call."""
        out = list(self._tick_ms)
        self._tick_ms.clear()
        return out

    async def close(self) -> None:
        """Close the connection (the server frees its worlds)."""
        self._reader.cancel()
        try:
            await asyncio.wait_for(self._ws.close(), 5.0)
        except (asyncio.TimeoutError, OSError):
            pass
        if self.closed is None:
            self.closed = ClientError(f"the connection to {self.url} is closed")

    # ---- inside ----------------------------------------------------------------------------------------------------
    def _world(self, world: int) -> _World:
        state = self._worlds.get(world)
        if state is None:
            raise ClientError(f"world {world} is not one of this connection's worlds on {self.url}")
        return state

    async def _send(self, message: dict[str, Any]) -> None:
        from websockets.exceptions import ConnectionClosed

        if self.closed is not None:
            raise self.closed
        try:
            await self._ws.send(encode_request(message))
        except ConnectionClosed:
            await asyncio.sleep(0)            # let the reader record why
            raise self.closed or ClientError(f"{self.url} closed the connection") from None

    async def _request(self, kind: str, answer: str, **fields: Any) -> dict[str, Any]:
        """Send a request with a new id and return its answer of type `answer`; an `error` answer is a ClientError."""
        self._ids += 1
        rid = self._ids
        future = asyncio.get_running_loop().create_future()
        self._answers[rid] = future
        try:
            await self._send({"t": kind, "id": rid, **fields})
            message = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            raise ClientError(f"{self.url} did not answer {kind} within {REQUEST_TIMEOUT:g} s") from None
        finally:
            self._answers.pop(rid, None)
        if message["t"] == "error":
            raise ClientError(f"{self.url} refused {kind}: {message.get('message', '(no message)')}")
        if message["t"] != answer:
            raise ClientError(f"{self.url} answered {kind} with {message['t']!r}, not {answer!r}")
        return message

    async def _read(self) -> None:
        """Take every message from the server: frames into their worlds, answers to their requests."""
        from websockets.exceptions import ConnectionClosed

        why: ClientError
        try:
            async for raw in self._ws:
                if isinstance(raw, str):
                    raise ClientError(f"{self.url} sent a text message; the protocol's messages are binary")
                self._dispatch(decode(raw, self.url))
            why = ClientError(f"{self.url} closed the connection")
        except ConnectionClosed as e:
            close = e.rcvd
            detail = f" (code {close.code}: {close.reason or 'no reason'})" if close is not None else ""
            why = ClientError(f"{self.url} closed the connection{detail}")
        except ClientError as e:
            why = e
            await self._ws.close()
        except asyncio.CancelledError:
            why = ClientError(f"the connection to {self.url} is closed")
        if self.errors:
            why = ClientError(f"{why}: {self.errors[-1]}")
        self.closed = why
        for future in self._answers.values():
            if not future.done():
                future.set_exception(why)
        for state in self._worlds.values():
            state.arrived.set()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "frame":
            world = message["world"]
            state = self._worlds.get(world)
            if state is None:
                return                          # a frame of a world closed meanwhile
            now = time.perf_counter()
            ack = message["ack"]
            state.count += 1
            state.latest = Frame(world=world, n=message["n"], ack=ack, format=message["format"], data=message["data"],
                                 tick_ms=float(message["tick_ms"]),
                                 received_at=now, count=state.count, shape=self.welcome.frame_shape)
            self._tick_ms.append(state.latest.tick_ms)
            while state.pending and state.pending[0][0] <= ack:
                self._round_trips.append((now - state.pending.popleft()[1]) * 1e3)
            state.arrived.set()
            return
        rid = message.get("id")
        if kind == "created" and isinstance(rid, int) and isinstance(message.get("world"), int):
            self._worlds.setdefault(message["world"], _World())    # before its first frame is read
        if isinstance(rid, int) and not isinstance(rid, bool) and rid in self._answers:
            if not self._answers[rid].done():
                self._answers[rid].set_result(message)
        elif kind == "error":
            self.errors.append(str(message.get("message", "")))


def refusal(url: str, message: str, token: str | None) -> str:
    """The line for a server that refused a hello, with what to do about a token."""
    hint = ""
    if "token" in message.lower():
        hint = ("; pass the server's token with --token T" if token is None else
                "; check --token against the server's --token")
    return f"{url} refused the connection: {message}{hint}"


# ---- a client for synchronous callers --------------------------------------------------------------------------------
class ClientThread:
    """An asyncio loop on a background thread that runs a Client's coroutines for synchronous callers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="reverie-client", daemon=True)
        self.thread.start()

    def submit(self, coroutine: Coroutine) -> Any:
        """Start a coroutine on the loop; returns its concurrent.futures.Future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine: Coroutine, timeout: float) -> Any:
        """Run a coroutine on the loop and return its result (its exception raised here)."""
        future = self.submit(coroutine)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise ClientError(f"no answer within {timeout:g} s") from None

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
        if not self.thread.is_alive():
            self.loop.close()


class RemoteWorld:
    """A world on a server behind the window's world interface (play/world.py): the newest frame wins.

    Steps go out as fast as the window asks and each returns the newest frame the server made since the last one,
    so the server's tick paces play. Sampling steps and guidance are the server's; save-games go to a local file."""

    kind = "model"

    def __init__(self, address: str, token: str | None = None, seed: int = 0, form: str = "raw",
                 timeout: float = CONNECT_TIMEOUT):
        self.url = server_url(address)
        self.thread = ClientThread()
        try:
            self.client: Client = self.thread.call(Client.connect(self.url, token, form, timeout=timeout),
                                                   timeout + 1.0)
        except BaseException:
            self.thread.stop()
            raise
        model = self.client.welcome.model
        self.model = model
        self.spec = spec_of(model, self.url)
        self.frame_shape = self.client.welcome.frame_shape
        self.env_id = str(model.get("game", self.spec.game))
        self.env_version = ""
        self.fps = float(model.get("fps") or 30.0)
        self.seed = seed
        self.resets = 0
        self.episode_seed: int | None = None
        self.warning = None
        self.world: int | None = None
        self.round_trips: deque[float] = deque(maxlen=HUD_ROUND_TRIPS)
        self._last: np.ndarray | None = None
        self._paused = False
        defaults = model.get("defaults") if isinstance(model.get("defaults"), dict) else {}
        self._steps, self._guidance = defaults.get("steps"), defaults.get("guidance")

    @property
    def address(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def backend(self) -> str:
        """The HUD's backend field: the server's address and the median round trip."""
        rtt = f"{np.median(self.round_trips):.0f} ms" if self.round_trips else "-"
        return f"{self.address} rtt {rtt}"

    @property
    def round_trip_ms(self) -> float:
        return float(np.median(self.round_trips)) if self.round_trips else 0.0

    @property
    def has_twin(self) -> bool:
        return False

    @property
    def steps(self) -> int | None:
        return self._steps

    @steps.setter
    def steps(self, value: int) -> None:
        raise PlayError(f"sampling steps are set by the server at {self.address} (reverie serve's model), not here")

    @property
    def guidance(self) -> float | None:
        return None if self._guidance is None else float(self._guidance)

    @guidance.setter
    def guidance(self, value: float) -> None:
        raise PlayError(f"guidance is set by the server at {self.address} (reverie serve's model), not here")

    def follow(self, worker: Any) -> None:
        """Pause the server's world whenever the window's worker pauses (P), and resume it with the worker."""
        pause = worker.pause

        def pause_both(paused: bool) -> None:
            pause(paused)
            self.pause(paused)

        worker.pause = pause_both

    def pause(self, paused: bool) -> None:
        """Pause or resume the world on the server (a paused world gets no frames and leaves the batch)."""
        self._paused = paused
        if self.world is not None:
            self.thread.submit(self.client.pause(self.world, paused))    # errors show on the next step

    def reset(self) -> Step:
        """A new world on the first call, else the same world started again (a new seed each time)."""
        self.episode_seed = self.seed + self.resets
        self.resets += 1
        if self.world is None:
            self.world = self.thread.call(self.client.create(seed=self.episode_seed), REQUEST_TIMEOUT + 1)
            return Step(self._next(wait_paused=True))
        return Step(self._live(self.client.reset(self.world, seed=self.episode_seed)))

    def step(self, action: np.ndarray) -> Step:
        """Send the action; the newest frame the server made since the last one (one step while paused)."""
        if self._paused:
            return Step(self._live(self.client.step(self.world, action)))
        self.thread.call(self.client.step(self.world, action), REQUEST_TIMEOUT + 1)
        return Step(self._next())

    def _live(self, request: Coroutine) -> np.ndarray:
        """Run a request on the world and return its next frame, even while the window pauses it: a paused world
        resumes on the server for the request and that frame (the server refuses a reset or load of a paused
        world, and sends it no frames)."""
        paused = self._paused
        try:
            if paused:
                self.thread.call(self.client.pause(self.world, False), REQUEST_TIMEOUT + 1)
            self.thread.call(request, REQUEST_TIMEOUT + 1)
            return self._next(wait_paused=True)
        finally:
            if paused:
                self.thread.call(self.client.pause(self.world, True), REQUEST_TIMEOUT + 1)

    def _next(self, wait_paused: bool = False) -> np.ndarray:
        """The next frame; while the window pauses the world (and not waiting anyway), the last one again."""
        future = self.thread.submit(self.client.next_frame(self.world))
        while True:
            try:
                frame = future.result(POLL_SECONDS)
                break
            except TimeoutError:
                if self._paused and not wait_paused and self._last is not None:
                    future.cancel()
                    return self._last
        self.round_trips.extend(self.client.take_round_trips())
        self._last = frame.image
        return self._last

    def save(self, path: Path) -> None:
        """The world's save-game from the server, written to `path`."""
        from engine.checkpoint import atomic_target

        data = self.thread.call(self.client.save(self.world), REQUEST_TIMEOUT + 1)
        with atomic_target(path) as tmp:
            tmp.write_bytes(data)

    def load(self, path: Path) -> Step:
        """A save-game file (from F5 here or a save on any server of this model) into the world."""
        if not Path(path).exists():
            raise PlayError(f"no save-game at {path} (press F5 to save one first)")
        return Step(self._live(self.client.load(self.world, Path(path).read_bytes())))

    def close(self) -> None:
        try:
            self.thread.call(self.client.close(), 10.0)
        except ClientError:
            pass
        finally:
            self.thread.stop()
