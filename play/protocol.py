"""The `reverie serve` wire protocol (version 1): its messages, their limits, and encode / decode that enforce both.

Every message is one msgpack map with a string field `t`; docs/SERVE.md is the spec, this file its executable form.
Pure: no I/O, no engine, no torch, so that a client (bench --serve, a test, another program) and the server share it.

    data = encode({"t": "step", "world": 0, "action": [0.0, 1.0, 0.0, 0.0], "seq": 7})
    msg = decode_request(data, action_dim=4)        # the server: a checked dict, or ProtocolError naming the field
    reply = decode_reply(frame_bytes)               # a client: the server's messages (frames may be large)

A request is refused before any work on it: its size, msgpack's own limits while unpacking (strings, bins, arrays,
maps, nesting), then every field's type and range. Nothing in a message is executed or unpickled; invalid UTF-8 is
kept as surrogates while unpacking so that the error can name the field that held it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from engine.errors import ReverieError

VERSION = 1
FORMATS = ("raw", "png", "jpeg")
DEFAULT_FORMAT = "raw"
DEFAULT_QUALITY = 90           # JPEG quality when hello names none

# limits on what a client sends (docs/SERVE.md, "Limits")
MAX_MESSAGE = 64 * 1024        # bytes of one message: the WebSocket max_size, and checked again here; a server raises
                               # it to hold one save-game of its model (a `load`), and says so in `welcome`
MAX_STR = 256                  # characters of a string (tokens, formats, field names)
MAX_BIN = 64 * 1024            # bytes of a bin (a save-game to load)
MAX_ARRAY = 64                 # items of a list (an action)
MAX_MAP = 16                   # fields of a map
MAX_INT = 2 ** 63 - 1          # ids, seqs and world handles: msgpack's signed range (larger is refused, not wrapped)
MAX_SEED = 2 ** 62             # as engine.knobs.MAX_SEED: the counter-based noise hashes seeds as 64-bit integers
MAX_WORLDS_PER_CLIENT = 4
MAX_ERRORS = 10                # errors from one connection before it is closed
INCOMING_QUEUE = 32            # messages buffered per connection (the WebSocket max_queue)
CLOSE_POLICY = 1008            # WebSocket close code: too many errors, a refused token, a wrong version
CLOSE_TOO_BIG = 1009           # WebSocket close code the library sends for a message over MAX_MESSAGE

# limits on what the server sends, for clients: frames are big (a 360x640 raw frame is 675 KiB)
MAX_REPLY = 64 * 1024 * 1024
MAX_REPLY_STR = 64 * 1024
MAX_REPLY_ITEMS = 4096


class ProtocolError(ReverieError, ValueError):
    """A message that breaks the protocol; `field` names what was wrong, `id` the request it answers (or None)."""

    def __init__(self, message: str, field: str | None = None, id: int | None = None):
        super().__init__(message)
        self.field, self.id = field, id


@dataclass(frozen=True)
class Field:
    """One field of a message: its kind (int, float, number, str, bool, bin, floats, map, list, ints), whether it
    must be present, and for ints and numbers the inclusive range."""

    kind: str
    required: bool = True
    lo: float = 0
    hi: float = MAX_INT


def _opt(kind: str, lo: float = 0, hi: float = MAX_INT) -> Field:
    return Field(kind, False, lo, hi)


ID, WORLD = Field("int"), Field("int")

# client -> server
REQUESTS: dict[str, dict[str, Field]] = {
    "hello": {"v": Field("int"), "token": _opt("str"), "format": _opt("str"), "quality": _opt("int", 1, 100)},
    "create": {"id": ID, "seed": _opt("int", 0, MAX_SEED), "start": _opt("int")},
    "step": {"world": WORLD, "action": Field("floats"), "seq": Field("int")},
    "reset": {"world": WORLD, "id": ID, "seed": _opt("int", 0, MAX_SEED)},
    "pause": {"world": WORLD, "id": ID, "paused": Field("bool")},
    "save": {"world": WORLD, "id": ID},
    "load": {"world": WORLD, "id": ID, "data": Field("bin")},
    "close": {"world": WORLD, "id": ID},
}

# server -> client
REPLIES: dict[str, dict[str, Field]] = {
    "welcome": {"v": Field("int"), "model": Field("map"), "max_worlds": Field("int"),
                "fps": Field("number", lo=0, hi=1e6), "max_message": _opt("int", MAX_MESSAGE, MAX_REPLY)},
    "created": {"id": ID, "world": WORLD},
    "frame": {"world": WORLD, "n": Field("int"), "ack": Field("int", lo=-1), "format": Field("str"),
              "data": Field("bin"), "tick_ms": Field("number", lo=0, hi=1e9)},
    "ok": {"id": ID},
    "saved": {"id": ID, "world": WORLD, "data": Field("bin")},
    "error": {"id": _opt("int"), "message": Field("str")},
}


# ---- encoding ---------------------------------------------------------------------------------------------------
def encode(msg: Mapping[str, Any]) -> bytes:
    """One message (a request or a reply) as msgpack bytes; ProtocolError where it breaks its own schema."""
    t = msg.get("t")
    schema = REQUESTS.get(t) if isinstance(t, str) else None
    schema = schema if schema is not None else (REPLIES.get(t) if isinstance(t, str) else None)
    if schema is None:
        raise ProtocolError(f"t: unknown message type {t!r}", "t")
    _check_fields(t, dict(msg), schema, action_dim=None, strings=MAX_REPLY_STR)
    return msgpack.packb(dict(msg), use_bin_type=True)


# ---- decoding ---------------------------------------------------------------------------------------------------
def decode_request(data: Any, action_dim: int | None = None, max_message: int = MAX_MESSAGE) -> dict[str, Any]:
    """A client's message, checked against its type's fields (an action against `action_dim` values when given);
    `max_message` bytes at most, a bin (a save-game to load) as large.

    Raises ProtocolError, and nothing else, for any input: its `field` names what was wrong and its `id` is the
    request's own id where the message got far enough to carry a valid one."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("message: binary messages only (one msgpack map each), got a text message", "message")
    if len(data) > max_message:
        raise ProtocolError(f"message: {len(data)} bytes, over the {max_message}-byte limit", "message")
    msg = _unpack(bytes(data), MAX_STR, max(MAX_BIN, max_message), MAX_ARRAY, MAX_MAP)
    msg = _top_map(msg)
    t = msg.get("t")
    rid = msg.get("id")
    rid = rid if type(rid) is int and 0 <= rid <= MAX_INT else None
    if not isinstance(t, str) or t not in REQUESTS:
        raise ProtocolError(f"t: unknown message type {_show(t)}; known: {', '.join(REQUESTS)}", "t", rid)
    for key, value in msg.items():   # nesting beyond a map of lists is refused
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value)):
            raise ProtocolError(f"{t}.{_show_key(key)}: nested lists and maps are refused", _show_key(key), rid)
    try:
        _check_fields(t, msg, REQUESTS[t], action_dim, MAX_STR)
    except ProtocolError as e:
        raise ProtocolError(str(e), e.field, rid) from None
    if t == "hello":
        _check_hello(msg)
    if t == "step":
        msg["action"] = [float(v) for v in msg["action"]]
    return msg


def decode_reply(data: Any) -> dict[str, Any]:
    """A server's message, checked against its type's fields; ProtocolError otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("message: the server sends binary messages only", "message")
    if len(data) > MAX_REPLY:
        raise ProtocolError(f"message: {len(data)} bytes, over the {MAX_REPLY}-byte limit", "message")
    msg = _top_map(_unpack(bytes(data), MAX_REPLY_STR, MAX_REPLY, MAX_REPLY_ITEMS, MAX_REPLY_ITEMS))
    t = msg.get("t")
    if not isinstance(t, str) or t not in REPLIES:
        raise ProtocolError(f"t: unknown message type {_show(t)}; known: {', '.join(REPLIES)}", "t")
    _check_fields(t, msg, REPLIES[t], None, MAX_REPLY_STR)
    return msg


def _unpack(data: bytes, strings: int, bins: int, arrays: int, maps: int) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True, unicode_errors="surrogateescape",
                               max_str_len=strings, max_bin_len=bins, max_array_len=arrays, max_map_len=maps,
                               max_ext_len=0)
    except msgpack.StackError:
        raise ProtocolError("message: nested too deep", "message") from None
    except msgpack.ExtraData:
        raise ProtocolError("message: bytes after the msgpack map (send one map per message)", "message") from None
    except Exception as e:   # truncated, malformed, over a length limit, a bad key type: msgpack's many errors
        raise ProtocolError(f"message: not a msgpack map within the limits ({_one_line(e) or type(e).__name__})",
                            "message") from None


def _top_map(msg: Any) -> dict[str, Any]:
    if not isinstance(msg, dict):
        raise ProtocolError(f"message: expected a msgpack map with a field 't', got {type(msg).__name__}", "message")
    if not all(isinstance(k, str) for k in msg):
        raise ProtocolError("message: field names must be strings", "message")
    return msg


def _check_fields(t: str, msg: dict[str, Any], schema: dict[str, Field], action_dim: int | None,
                  strings: int) -> None:
    for key in msg:
        if key != "t" and key not in schema:
            raise ProtocolError(f"{t}.{_show_key(key)}: unknown field; {t} takes {', '.join(schema) or 'none'}",
                                _show_key(key))
    for name, f in schema.items():
        value = msg.get(name)
        if value is None:
            if f.required:
                raise ProtocolError(f"{t}.{name}: missing (a {f.kind})", name)
            msg.pop(name, None)   # an optional field sent as nil is absent
            continue
        _check_value(f"{t}.{name}", name, value, f, action_dim if name == "action" else None, strings)


def _check_value(where: str, name: str, value: Any, f: Field, dim: int | None, strings: int) -> None:
    kind = f.kind
    if kind == "int":
        if type(value) is not int:
            raise ProtocolError(f"{where}: expected an integer, got {_show(value)}", name)
        if not f.lo <= value <= f.hi:
            raise ProtocolError(f"{where}: {value} is out of range [{f.lo}, {f.hi}]", name)
    elif kind == "number":
        if type(value) not in (int, float) or not math.isfinite(value) or not f.lo <= value <= f.hi:
            raise ProtocolError(f"{where}: expected a finite number in [{f.lo}, {f.hi:g}], got {_show(value)}", name)
    elif kind == "bool":
        if type(value) is not bool:
            raise ProtocolError(f"{where}: expected true or false, got {_show(value)}", name)
    elif kind == "str":
        if type(value) is not str:
            raise ProtocolError(f"{where}: expected a string, got {_show(value)}", name)
        if len(value) > strings:
            raise ProtocolError(f"{where}: {len(value)} characters, over the limit of {strings}", name)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"{where}: not valid UTF-8", name) from None
    elif kind == "bin":
        if type(value) is not bytes:
            raise ProtocolError(f"{where}: expected bytes (msgpack bin), got {_show(value)}", name)
    elif kind == "map":
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected a map, got {_show(value)}", name)
    elif kind == "floats":
        if not isinstance(value, (list, tuple)) or not all(type(v) in (int, float) for v in value):
            raise ProtocolError(f"{where}: expected a list of numbers, got {_show(value)}", name)
        if dim is not None and len(value) != dim:
            raise ProtocolError(f"{where}: expected {dim} values (the model's action_dim), got {len(value)}", name)
        if not all(math.isfinite(v) for v in value):
            raise ProtocolError(f"{where}: values must be finite (no NaN or infinity)", name)


def _check_hello(msg: dict[str, Any]) -> None:
    if msg["v"] != VERSION:
        raise ProtocolError(f"hello.v: this server speaks protocol version {VERSION}, the client {msg['v']}", "v")
    fmt = msg.setdefault("format", DEFAULT_FORMAT)
    if fmt not in FORMATS:
        raise ProtocolError(f"hello.format: {_show(fmt)} is not one of {', '.join(FORMATS)}", "format")
    msg.setdefault("quality", DEFAULT_QUALITY)


def _show(value: Any) -> str:
    """A short, one-line, printable description of a client's value for an error message."""
    if isinstance(value, (bytes, bytearray)):
        return f"bytes of length {len(value)}"
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__
    return _one_line(text)[:40]


def _show_key(key: Any) -> str:
    return _one_line(str(key).encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace"))[:40]


def _one_line(e: Any) -> str:
    return " ".join(str(e).split()).encode("ascii", "backslashreplace").decode("ascii")[:200]
