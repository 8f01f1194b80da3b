"""play/protocol.py: every message type round-trips through encode / decode (Hypothesis), every malformed request is
refused with a ProtocolError naming its field, and a time-bounded fuzz of the decoder never raises anything else."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from play import protocol as P

A = 4   # the action_dim of the requests below

ints = st.integers(0, P.MAX_INT)
seeds = st.integers(0, P.MAX_SEED)
action = st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=A, max_size=A)
text = st.text(max_size=64)
small_bin = st.binary(max_size=512)

REQUEST = st.one_of(
    st.fixed_dictionaries({"t": st.just("hello"), "v": st.just(1), "format": st.sampled_from(P.FORMATS),
                           "quality": st.integers(1, 100)}, optional={"token": text}),
    st.fixed_dictionaries({"t": st.just("create"), "id": ints}, optional={"seed": seeds, "start": ints}),
    st.fixed_dictionaries({"t": st.just("step"), "world": ints, "action": action, "seq": ints}),
    st.fixed_dictionaries({"t": st.just("reset"), "world": ints, "id": ints}, optional={"seed": seeds}),
    st.fixed_dictionaries({"t": st.just("pause"), "world": ints, "id": ints, "paused": st.booleans()}),
    st.fixed_dictionaries({"t": st.just("save"), "world": ints, "id": ints}),
    st.fixed_dictionaries({"t": st.just("load"), "world": ints, "id": ints, "data": small_bin}),
    st.fixed_dictionaries({"t": st.just("close"), "world": ints, "id": ints}),
)
MODEL = {"name": "default", "game": "builtin:gems", "frame": [64, 64, 3], "fps": 30.0, "buttons": ["up", "down"],
         "axes": [], "action_dim": 2, "defaults": {"steps": 1, "guidance": 1.0, "context_noise": 0.02}}
REPLY = st.one_of(
    st.fixed_dictionaries({"t": st.just("welcome"), "v": st.just(1), "model": st.just(MODEL),
                           "max_worlds": st.integers(1, 4), "fps": st.floats(0, 1000)}),
    st.fixed_dictionaries({"t": st.just("created"), "id": ints, "world": ints}),
    st.fixed_dictionaries({"t": st.just("frame"), "world": ints, "n": ints, "ack": st.integers(-1, P.MAX_INT),
                           "format": st.sampled_from(P.FORMATS), "data": small_bin, "tick_ms": st.floats(0, 1e3)}),
    st.fixed_dictionaries({"t": st.just("ok"), "id": ints}),
    st.fixed_dictionaries({"t": st.just("saved"), "id": ints, "world": ints, "data": small_bin}),
    st.fixed_dictionaries({"t": st.just("error"), "message": text}, optional={"id": ints}),
)


@settings(max_examples=300, deadline=None)
@given(REQUEST)
def test_every_request_round_trips(msg):
    assert P.decode_request(P.encode(msg), action_dim=A) == msg


@settings(max_examples=200, deadline=None)
@given(REPLY)
def test_every_reply_round_trips(msg):
    assert P.decode_reply(P.encode(msg)) == msg


def test_hello_fills_its_defaults():
    assert P.decode_request(P.encode({"t": "hello", "v": 1})) == {"t": "hello", "v": 1, "format": "raw",
                                                                  "quality": P.DEFAULT_QUALITY}


def test_an_optional_field_sent_as_nil_is_absent():
    assert P.decode_request(msgpack.packb({"t": "create", "id": 3, "seed": None})) == {"t": "create", "id": 3}


def _step(**over):
    return {"t": "step", "world": 0, "action": [0.0] * A, "seq": 1, **over}


# (raw bytes, the field the error must name, the id it must carry)
BAD = {
    "empty": (b"", "message", None),
    "reserved byte": (b"\xc1", "message", None),
    "truncated map": (msgpack.packb(_step())[:-3], "message", None),
    "trailing bytes": (msgpack.packb(_step()) + b"\x00", "message", None),
    "not a map": (msgpack.packb([1, 2, 3]), "message", None),
    "int key": (msgpack.packb({1: 2}), "message", None),
    "deep nesting": (b"\x91" * 5000 + b"\x00", "message", None),
    "nested map in a field": (msgpack.packb({"t": "close", "world": 0, "id": 1, "x": {"a": 1}}), "x", 1),
    "list of lists": (msgpack.packb(_step(action=[[0.0]] * A)), "action", None),
    "no t": (msgpack.packb({"id": 1}), "t", 1),
    "unknown t": (msgpack.packb({"t": "explode", "id": 7}), "t", 7),
    "t not a string": (msgpack.packb({"t": 5}), "t", None),
    "unknown field": (msgpack.packb({"t": "save", "world": 0, "id": 2, "zz": 1}), "zz", 2),
    "missing field": (msgpack.packb({"t": "save", "id": 2}), "world", 2),
    "world a string": (msgpack.packb({"t": "save", "world": "0", "id": 2}), "world", 2),
    "world a bool": (msgpack.packb(_step(world=True)), "world", None),
    "world a float": (msgpack.packb(_step(world=0.0)), "world", None),
    "absurd id": (msgpack.packb({"t": "create", "id": 2 ** 64 - 1}), "id", None),
    "negative id": (msgpack.packb({"t": "create", "id": -1}), "id", None),
    "seed too big": (msgpack.packb({"t": "create", "id": 3, "seed": 2 ** 63}), "seed", 3),
    "negative seed": (msgpack.packb({"t": "create", "id": 3, "seed": -5}), "seed", 3),
    "NaN action": (msgpack.packb(_step(action=[math.nan] + [0.0] * (A - 1))), "action", None),
    "infinite action": (msgpack.packb(_step(action=[math.inf] * A)), "action", None),
    "short action": (msgpack.packb(_step(action=[0.0] * (A - 1))), "action", None),
    "string in action": (msgpack.packb(_step(action=["a"] * A)), "action", None),
    "long array": (msgpack.packb(_step(action=[0.0] * 100)), "message", None),
    "long string": (msgpack.packb({"t": "hello", "v": 1, "token": "x" * 1000}), "message", None),
    "big bin": (msgpack.packb({"t": "load", "world": 0, "id": 1, "data": b"x" * (P.MAX_BIN + 1)}), "message", None),
    "too many fields": (msgpack.packb({f"k{i}": i for i in range(20)}), "message", None),
    "ext type": (msgpack.packb({"t": msgpack.ExtType(3, b"boom")}), "message", None),
    "invalid UTF-8 string": (b"\x83\xa1t\xa5hello\xa1v\x01\xa5token\xa2\xff\xfe", "token", None),
    "invalid UTF-8 key": (b"\x82\xa1t\xa5hello\xa2\xff\xfe\x01", "\\udcff\\udcfe", None),
    "paused an int": (msgpack.packb({"t": "pause", "world": 0, "id": 4, "paused": 1}), "paused", 4),
    "data a string": (msgpack.packb({"t": "load", "world": 0, "id": 4, "data": "abc"}), "data", 4),
    "wrong version": (msgpack.packb({"t": "hello", "v": 2}), "v", None),
    "unknown format": (msgpack.packb({"t": "hello", "v": 1, "format": "gif"}), "format", None),
    "quality 0": (msgpack.packb({"t": "hello", "v": 1, "format": "jpeg", "quality": 0}), "quality", None),
    "over the size limit": (msgpack.packb({"t": "load", "world": 0, "id": 1, "data": b"x" * P.MAX_MESSAGE}),
                            "message", None),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_malformed_request_is_refused_naming_its_field(name):
    raw, field, rid = BAD[name]
    with pytest.raises(P.ProtocolError) as e:
        P.decode_request(raw, action_dim=A)
    assert e.value.field == field and e.value.id == rid
    message = str(e.value)
    assert field in message and "\n" not in message and message.isascii()


def test_a_text_message_is_refused():
    with pytest.raises(P.ProtocolError, match="binary messages only"):
        P.decode_request('{"t": "hello"}')


def test_encode_refuses_what_breaks_the_schema():
    with pytest.raises(P.ProtocolError, match="frame.data"):
        P.encode({"t": "frame", "world": 0, "n": 0, "ack": -1, "format": "raw", "data": "no", "tick_ms": 1.0})
    with pytest.raises(P.ProtocolError, match="unknown message type"):
        P.encode({"t": "nope"})


def test_the_seed_limit_is_the_engines():
    from engine.knobs import MAX_SEED

    assert P.MAX_SEED == MAX_SEED


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=256))
def test_fuzz_the_decoder_raises_only_its_own_error(data):
    for decode in (lambda d: P.decode_request(d, action_dim=A), P.decode_reply):
        try:
            decode(data)
        except P.ProtocolError:
            pass


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.recursive(st.none() | st.booleans() | st.integers(-2 ** 64, 2 ** 64) | st.floats() | st.text(max_size=8)
                    | st.binary(max_size=8),
                    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=6), kids, max_size=6),
                    max_leaves=20),
       st.sampled_from(list(P.REQUESTS)))
def test_fuzz_well_formed_msgpack_of_any_shape(value, t):
    if isinstance(value, dict):
        value = {"t": t, **value}
    try:
        data = msgpack.packb(value, use_bin_type=True)
    except (OverflowError, ValueError):
        return
    try:
        P.decode_request(data, action_dim=A)
    except P.ProtocolError:
        pass
