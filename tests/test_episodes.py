"""The episode file format: bit-exact round trips, and a clear EpisodeError for every kind of damage."""

from __future__ import annotations

import math
import struct
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.actions import ActionSpec
from train.data.episodes import (
    FORMAT_VERSION,
    MAGIC,
    PREFIX,
    TERMINATED,
    TRAILER,
    TRUNCATED,
    Episode,
    EpisodeError,
    EpisodeWriter,
)

SPEC = ActionSpec(game="test:fake", buttons=("up", "fire"), axes=("dx",))


def make_data(n_actions: int, shape=(6, 5, 3), spec: ActionSpec = SPEC, seed: int = 0):
    """Random frames (n_actions + 1, *shape) and valid actions (n_actions, A)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n_actions + 1, *shape), dtype=np.uint8)
    actions = np.zeros((n_actions, spec.size), np.float32)
    nb = len(spec.buttons)
    actions[:, :nb] = rng.integers(0, 2, (n_actions, nb))
    actions[:, nb:] = rng.uniform(-1, 1, (n_actions, spec.size - nb))
    return frames, actions


def write(path: Path, frames, actions, spec: ActionSpec = SPEC, **kw) -> Path:
    with EpisodeWriter(path, env_id="test:fake", env_version="3", action_spec=spec, frame_shape=frames.shape[1:],
                       fps=15.0, seed=7, agent="random", metadata={"note": "hi"}, **kw) as w:
        w.append(frames[0])
        for f, a in zip(frames[1:], actions):
            w.append(f, a)
    return path


def small_file(tmp_path: Path, compression: str = "none") -> Path:
    frames, actions = make_data(9, shape=(3, 2, 3))
    return write(tmp_path / f"small_{compression}.episode", frames, actions, chunk_frames=4, compression=compression)


def open_and_verify(path: Path) -> None:
    with Episode(path) as ep:
        ep.verify()


# ---- round trips -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_round_trip_is_bit_exact(tmp_path, compression):
    frames, actions = make_data(70)
    path = write(tmp_path / "a.episode", frames, actions, chunk_frames=16, compression=compression)
    assert not Path(str(path) + ".tmp").exists()
    with Episode.open(path) as ep:
        assert len(ep) == 71 and ep.num_actions == 70
        assert ep.frame_shape == (6, 5, 3) and ep.spec == SPEC and ep.compression == compression
        h = ep.header
        assert (h["env_id"], h["env_version"], h["seed"], h["fps"], h["agent"], h["metadata"]) == (
            "test:fake", "3", 7, 15.0, "random", {"note": "hi"})
        assert np.array_equal(ep.frames(), frames) and ep.frames().dtype == np.uint8
        assert np.array_equal(ep.actions(), actions) and ep.actions().dtype == np.float32
        for a in (0, 1, 15, 16, 17, 31, 32, 64, 70):        # across chunk boundaries
            for b in (a, a + 1, a + 16, a + 17, 71):
                assert np.array_equal(ep.frames(a, b), frames[a:b])
                assert np.array_equal(ep.actions(a, b), actions[a:b])
        assert np.array_equal(ep.frames(-3), frames[-3:])
        ep.verify()


def test_reset_frame_only_episode(tmp_path):
    frames, actions = make_data(0)
    with Episode(write(tmp_path / "one.episode", frames, actions)) as ep:
        assert len(ep) == 1 and ep.num_actions == 0
        assert ep.actions().shape == (0, 3)
        assert np.array_equal(ep.frames(), frames)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 7), w=st.integers(1, 7), n_actions=st.integers(0, 40), buttons=st.integers(0, 3),
       axes=st.integers(0, 2), chunk=st.integers(1, 9), compression=st.sampled_from(["none", "zlib"]),
       seed=st.integers(0, 2**16))
def test_round_trip_property(h, w, n_actions, buttons, axes, chunk, compression, seed):
    if buttons + axes == 0:
        buttons = 1
    spec = ActionSpec(game="test:prop", buttons=tuple(f"b{i}" for i in range(buttons)),
                      axes=tuple(f"a{i}" for i in range(axes)))
    frames, actions = make_data(n_actions, (h, w, 3), spec, seed)
    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d) / "p.episode", frames, actions, spec, chunk_frames=chunk, compression=compression)
        with Episode(path) as ep:
            ep.verify()
            assert np.array_equal(ep.frames(), frames) and np.array_equal(ep.actions(), actions)
            a = seed % (n_actions + 1)
            assert np.array_equal(ep.frames(a, a + 5), frames[a:a + 5])
            assert np.array_equal(ep.actions(a, a + 5), actions[a:a + 5])


def test_extend_equals_append(tmp_path):
    frames, actions = make_data(20)
    a = write(tmp_path / "a.episode", frames, actions, chunk_frames=8)
    with EpisodeWriter(tmp_path / "b.episode", env_id="test:fake", action_spec=SPEC, frame_shape=(6, 5, 3),
                       chunk_frames=8) as w:
        w.extend(frames[:5], actions[:4])
        w.extend(frames[5:], actions[4:])
    with Episode(a) as ea, Episode(tmp_path / "b.episode") as eb:
        assert np.array_equal(ea.frames(), eb.frames()) and np.array_equal(ea.actions(), eb.actions())


# ---- the writer: nothing half-written looks whole -----------------------------------------------------------------
def test_exception_inside_writer_leaves_no_file(tmp_path):
    frames, actions = make_data(100)
    path = tmp_path / "x.episode"
    with pytest.raises(RuntimeError, match="boom"):
        with EpisodeWriter(path, env_id="test:fake", action_spec=SPEC, frame_shape=(6, 5, 3), chunk_frames=8) as w:
            w.extend(frames[:50], actions[:49])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_without_frames_writes_nothing(tmp_path):
    with pytest.raises(EpisodeError, match="no frames"):
        with EpisodeWriter(tmp_path / "x.episode", env_id="test:fake", action_spec=SPEC, frame_shape=(6, 5, 3)):
            pass
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_bad_input(tmp_path):
    frames, actions = make_data(3)
    with EpisodeWriter(tmp_path / "x.episode", env_id="test:fake", action_spec=SPEC, frame_shape=(6, 5, 3)) as w:
        with pytest.raises(ValueError, match="reset frame and takes no action"):
            w.append(frames[0], actions[0])
        with pytest.raises(ValueError, match=r"expected uint8 \(6, 5, 3\)"):
            w.append(frames[0].astype(np.float32))
        w.append(frames[0])
        with pytest.raises(ValueError, match="needs the action"):
            w.append(frames[1])
        with pytest.raises(ValueError, match="expected 3 values"):
            w.append(frames[1], np.zeros(2, np.float32))
        with pytest.raises(ValueError, match="0 or 1"):
            w.append(frames[1], np.array([0.5, 0, 0], np.float32))
        w.append(frames[1], actions[0])
    with pytest.raises(ValueError, match="compression"):
        EpisodeWriter(tmp_path / "y.episode", env_id="e", action_spec=SPEC, frame_shape=(2, 2, 3), compression="lz9")
    with pytest.raises(ValueError, match="frame_shape"):
        EpisodeWriter(tmp_path / "y.episode", env_id="e", action_spec=SPEC, frame_shape=(2, 2, 4))


def test_tmp_file_is_not_an_episode(tmp_path):
    frames, actions = make_data(40)
    path = tmp_path / "x.episode"
    w = EpisodeWriter(path, env_id="test:fake", action_spec=SPEC, frame_shape=(6, 5, 3), chunk_frames=8)
    w.extend(frames[:30], actions[:29])
    w._file.flush()                      # what a killed recorder leaves behind
    assert not path.exists()
    with pytest.raises(EpisodeError, match="truncated or incomplete"):
        Episode(w.tmp_path)
    w.abort()
    assert not w.tmp_path.exists()


# ---- damage -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_truncated_at_every_offset(tmp_path, compression):
    data = small_file(tmp_path, compression).read_bytes()
    bad = tmp_path / "cut.episode"
    for n in range(len(data)):
        bad.write_bytes(data[:n])
        with pytest.raises(EpisodeError) as info:
            open_and_verify(bad)
        assert str(bad) in str(info.value), n


@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_flipped_byte_at_every_offset(tmp_path, compression):
    data = small_file(tmp_path, compression).read_bytes()
    bad = tmp_path / "flip.episode"
    for i in range(len(data)):
        b = bytearray(data)
        b[i] ^= 0xFF
        bad.write_bytes(bytes(b))
        with pytest.raises(EpisodeError) as info:
            open_and_verify(bad)
        assert str(bad) in str(info.value), i


def test_checksum_error_names_the_chunk_and_offset(tmp_path):
    frames, actions = make_data(40)
    path = write(tmp_path / "a.episode", frames, actions, chunk_frames=8)
    with Episode(path) as ep:
        offset = ep._offsets[2]
    data = bytearray(path.read_bytes())
    data[offset + 200] ^= 0x01
    path.write_bytes(bytes(data))
    with Episode(path) as ep:                 # header and footer are intact: opening works
        ep.frames(0, 16)
        with pytest.raises(EpisodeError, match=rf"a\.episode at byte {offset}: chunk 2 checksum mismatch"):
            ep.frames(16, 17)


def test_wrong_format_version(tmp_path):
    path = small_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[4] = FORMAT_VERSION + 1
    path.write_bytes(bytes(data))
    with pytest.raises(EpisodeError, match=rf"at byte 4: episode format version {FORMAT_VERSION + 1}.*upgrade"):
        Episode(path)


@pytest.mark.parametrize("content", [b"", b"hello world, not an episode", msgpack.packb({"a": 1}), MAGIC,
                                     MAGIC + b"\x01garbage", bytes(range(256)) * 4])
def test_not_an_episode(tmp_path, content):
    path = tmp_path / "junk.episode"
    path.write_bytes(content)
    with pytest.raises(EpisodeError) as info:
        open_and_verify(path)
    assert str(path) in str(info.value) and "byte" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(EpisodeError, match="cannot open"):
        Episode(tmp_path / "nope.episode")


# ---- files built by hand, so that they are well formed and checksummed but lie -------------------------------------
def header(**over) -> dict:
    h = {"format": FORMAT_VERSION, "env_id": "test:fake", "env_version": "1", "seed": 0, "frame_shape": [2, 2, 3],
         "fps": 30.0, "action_spec": SPEC.to_dict(), "agent": "x", "chunk_frames": 4, "checksum": "crc32",
         "compression": "none", "created": "", "metadata": {}}
    h.update(over)
    return h


def chunk(index: int, first: int, count: int, frame_bytes: int | None = None, action_rows: int | None = None) -> dict:
    fb = bytes(frame_bytes if frame_bytes is not None else count * 12)
    ab = bytes(12 * (action_rows if action_rows is not None else (count - 1 if first == 0 else count)))
    return {"index": index, "first": first, "count": count, "frames": fb, "actions": ab,
            "crc": zlib.crc32(ab, zlib.crc32(fb))}


def build(path: Path, h: dict, chunks: list[dict], **footer_over) -> Path:
    """An episode file with correct checksums around whatever the records say (a chunk's "raw" goes in as is)."""
    hb = msgpack.packb(h, use_bin_type=True)
    body = PREFIX.pack(MAGIC, FORMAT_VERSION, len(hb)) + hb
    offsets = []
    for c in chunks:
        offsets.append(len(body))
        body += c["raw"] if "raw" in c else msgpack.packb(c, use_bin_type=True)
    counts = [c["count"] for c in chunks]
    footer = {"frames": sum(counts), "actions": sum(counts) - 1, "chunk_offsets": offsets, "chunk_counts": counts,
              "header_crc": zlib.crc32(hb)}
    footer.update(footer_over)
    fb = msgpack.packb(footer, use_bin_type=True)
    path.write_bytes(body + fb + TRAILER.pack(len(body), zlib.crc32(fb), MAGIC))
    return path


def test_hand_built_file_is_valid(tmp_path):
    path = build(tmp_path / "ok.episode", header(), [chunk(0, 0, 4), chunk(1, 4, 2)])
    with Episode(path) as ep:
        ep.verify()
        assert len(ep) == 6 and ep.frames().shape == (6, 2, 2, 3)


@pytest.mark.parametrize("case, match", [
    ("frame_bytes", "chunk 1 has 30 frame bytes, expected 2 x 12"),
    ("action_bytes", "chunk 1 has 36 action bytes"),
    ("footer_frames", "footer says 7 frames but its chunks hold 6"),
    ("footer_actions", "footer says 6 actions for 6 frames"),
    ("offset_out_of_range", "chunk offsets are out of range"),
    ("offset_not_rising", "chunk offsets are out of range"),
    ("count_over_chunk_frames", "chunk_counts must each be 1..4"),
    ("chunk_disagrees_with_footer", "but the footer says 2 frames from 4"),
    ("header_shape", "'frame_shape' must be"),
    ("header_unknown_checksum", "unknown checksum"),
    ("header_type", "header 'seed' must be an integer"),
    ("header_spec", "action_spec"),
])
def test_header_or_footer_that_lies(tmp_path, case, match):
    h, c0, c1, over = header(), chunk(0, 0, 4), chunk(1, 4, 2), {}
    if case == "frame_bytes":
        c1 = chunk(1, 4, 2, frame_bytes=30)
    elif case == "action_bytes":
        c1 = chunk(1, 4, 2, action_rows=3)
    elif case == "footer_frames":
        over = {"frames": 7}
    elif case == "footer_actions":
        over = {"actions": 6}
    elif case == "offset_out_of_range":
        over = {"chunk_offsets": [PREFIX.size + len(msgpack.packb(h)), 10**9]}
    elif case == "offset_not_rising":
        over = {"chunk_offsets": [PREFIX.size + len(msgpack.packb(h))] * 2}
    elif case == "count_over_chunk_frames":
        c0, c1 = chunk(0, 0, 5), chunk(1, 5, 1)
    elif case == "chunk_disagrees_with_footer":
        c1 = {**chunk(1, 4, 2), "first": 3}
    elif case == "header_shape":
        h = header(frame_shape=[2, 2])
    elif case == "header_unknown_checksum":
        h = header(checksum="md5")
    elif case == "header_type":
        h = header(seed="seven")
    elif case == "header_spec":
        h = header(action_spec={"game": "x"})
    path = build(tmp_path / "liar.episode", h, [c0, c1], **over)
    with pytest.raises(EpisodeError, match=match) as info:
        open_and_verify(path)
    assert str(path) in str(info.value) and "at byte" in str(info.value)


def test_huge_declared_sizes_fail_fast_without_allocating(tmp_path):
    # a header whose chunks would be 8192 x 8192 x 3 x 50 bytes = 10 GB
    path = build(tmp_path / "huge.episode", header(frame_shape=[8192, 8192, 3], chunk_frames=50), [chunk(0, 0, 1)])
    tracemalloc.start()
    with pytest.raises(EpisodeError, match="more than the cap"):
        Episode(path)
    # a sane header, but a chunk whose msgpack bin claims 4 GB inside a small file
    raw = bytearray(msgpack.packb(chunk(0, 0, 4), use_bin_type=True))
    i = raw.index(b"\xa6frames") + 7
    assert raw[i] == 0xC4                                    # bin8 holding the frame bytes
    raw[i:i + 2] = b"\xc6\xff\xff\xff\xff"                  # bin32 claiming 4 GB - 1
    bad = build(tmp_path / "bin.episode", header(), [{"count": 4, "raw": bytes(raw)}])
    with pytest.raises(EpisodeError, match="chunk 0 is not valid msgpack"):
        open_and_verify(bad)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 * 2**20, peak


def test_error_is_a_value_error_with_path_and_offset(tmp_path):
    path = small_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError) as info:
        Episode(path)
    e = info.value
    assert isinstance(e, EpisodeError) and e.path == str(path) and isinstance(e.offset, int)
    assert "re-record" in str(e)
    assert struct.calcsize("<QI4s") == TRAILER.size


# ---- version 3: the reward and end of each step; versions 1 and 2 read with the reward unknown ---------------------
def write_rewarded(path: Path, frames, actions, rewards, ends, **kw) -> Path:
    with EpisodeWriter(path, env_id="test:fake", action_spec=SPEC, frame_shape=frames.shape[1:], reward=True,
                       **kw) as w:
        w.append(frames[0])
        for f, a, r, e in zip(frames[1:], actions, rewards, ends):
            w.append(f, a, reward=r, terminated=bool(e & TERMINATED), truncated=bool(e & TRUNCATED))
    return path


@pytest.mark.parametrize("compression", ["none", "zlib"])
@pytest.mark.parametrize("last, name", [(TERMINATED, "terminated"), (TRUNCATED, "truncated"),
                                        (TERMINATED | TRUNCATED, "terminated"), (0, "stopped")])
def test_round_trip_with_reward_and_end(tmp_path, compression, last, name):
    frames, actions = make_data(70)
    rewards = np.random.default_rng(1).normal(size=70).astype(np.float32)
    ends = np.zeros(70, np.uint8)
    ends[-1] = last
    path = write_rewarded(tmp_path / "r.episode", frames, actions, rewards, ends, chunk_frames=16,
                          compression=compression)
    with Episode(path) as ep:
        assert ep.version == FORMAT_VERSION == 3 and ep.has_reward and ep.header["reward"] is True
        assert np.array_equal(ep.rewards(), rewards) and ep.rewards().dtype == np.float32
        assert np.array_equal(ep.ends(), ends) and ep.ends().dtype == np.uint8
        assert ep.end == name and ep.reward_sum == math.fsum(rewards.tolist())
        for a in (0, 1, 15, 16, 17, 31, 64, 70):             # across chunk boundaries
            for b in (a, a + 1, a + 17, 71):
                assert np.array_equal(ep.rewards(a, b), rewards[a:b]) and np.array_equal(ep.ends(a, b), ends[a:b])
        assert np.array_equal(ep.frames(), frames) and np.array_equal(ep.actions(), actions)
        ep.verify()


def test_reward_with_confidence_and_reset_frame_only(tmp_path):
    frames, actions = make_data(5)
    with EpisodeWriter(tmp_path / "c.episode", env_id="test:fake", action_spec=SPEC, frame_shape=(6, 5, 3),
                       chunk_frames=2, confidence=True, reward=True) as w:
        w.extend(frames, actions, np.full(5, 0.5, np.float32), np.arange(5, dtype=np.float32), [0, 0, 0, 0, 1])
    with Episode(tmp_path / "c.episode") as ep:
        ep.verify()
        assert np.array_equal(ep.confidence(), np.full(5, 0.5)) and np.array_equal(ep.rewards(), np.arange(5))
        assert ep.end == "terminated" and ep.reward_sum == 10.0
    with EpisodeWriter(tmp_path / "one.episode", env_id="test:fake", action_spec=SPEC, frame_shape=(6, 5, 3),
                       reward=True) as w:
        w.append(frames[0])
    with Episode(tmp_path / "one.episode") as ep:
        assert ep.rewards().shape == (0,) and ep.reward_sum == 0.0 and ep.end == "stopped"


def test_a_file_without_rewards_says_the_reward_is_unknown(tmp_path):
    frames, actions = make_data(9)
    with Episode(write(tmp_path / "plain.episode", frames, actions)) as ep:
        assert ep.version == 3 and not ep.has_reward and "reward" not in ep.header
        assert ep.rewards() is None and ep.ends() is None and ep.reward_sum is None and ep.end is None
        assert np.array_equal(ep.actions(), actions)


def test_writer_refuses_bad_reward_and_steps_after_the_end(tmp_path):
    frames, actions = make_data(3)
    with EpisodeWriter(tmp_path / "x.episode", env_id="test:fake", action_spec=SPEC, frame_shape=(6, 5, 3),
                       reward=True) as w:
        w.append(frames[0])
        with pytest.raises(ValueError, match="records every step's reward"):
            w.append(frames[1], actions[0])
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="reward must be a finite number"):
                w.append(frames[1], actions[0], reward=bad)
        w.append(frames[1], actions[0], reward=1.0, terminated=True)
        with pytest.raises(ValueError, match=r"ended at step 0 \(terminated\); nothing may follow"):
            w.append(frames[2], actions[1], reward=0.0)
    with EpisodeWriter(tmp_path / "y.episode", env_id="test:fake", action_spec=SPEC, frame_shape=(6, 5, 3)) as w:
        w.append(frames[0])
        for kw in ({"reward": 1.0}, {"terminated": True}):
            with pytest.raises(ValueError, match="without reward=True"):
                w.append(frames[1], actions[0], **kw)
        w.append(frames[1], actions[0])


def rewarded_chunk(index: int, first: int, count: int, rewards=None, ends=None) -> dict:
    """A chunk of a hand-built file with rewards: zero frames and actions, these rewards and end flags."""
    c = chunk(index, first, count)
    n = count - 1 if first == 0 else count
    rb = np.asarray(rewards if rewards is not None else np.zeros(n), "<f4").tobytes()
    eb = np.asarray(ends if ends is not None else np.zeros(n), np.uint8).tobytes()
    c.update({"reward": rb, "end": eb, "crc": zlib.crc32(eb, zlib.crc32(rb, c["crc"]))})
    return c


def test_hand_built_file_with_rewards_is_valid(tmp_path):
    path = build(tmp_path / "ok.episode", header(reward=True),
                 [rewarded_chunk(0, 0, 4, [1, 2, 3]), rewarded_chunk(1, 4, 2, [0.5, 0.5], [0, 2])],
                 reward_sum=7.0, end=2)
    with Episode(path) as ep:
        ep.verify()
        assert ep.rewards().tolist() == [1, 2, 3, 0.5, 0.5] and ep.end == "truncated"


@pytest.mark.parametrize("case, match", [
    ("nan", "chunk 1 has rewards that are not finite numbers"),
    ("short", "chunk 1 has 4 reward bytes and 2 end bytes, expected 2 x 4 and 2 x 1"),
    ("end_early", "chunk 0 says the episode ended before its last step"),
    ("end_flag", "chunk 1 has end flags above 3"),
    ("end_disagrees", "chunk 1 ends the episode with flags 1 but the footer says 2"),
    ("sum", "footer's reward sum 9.0 is not the sum of the steps' rewards"),
    ("footer_sum_type", "footer's reward sum must be a finite number"),
    ("footer_lacks_reward", "footer lacks the reward sum and end"),
    ("footer_has_reward", "footer has a reward sum, but the header says the file has no rewards"),
    ("header_flag", "header 'reward' must be true or false"),
])
def test_a_corrupt_reward_field_is_a_one_line_error_naming_the_file(tmp_path, case, match):
    h, c0, c1 = header(reward=True), rewarded_chunk(0, 0, 4, [1, 2, 3]), rewarded_chunk(1, 4, 2, [1, 1], [0, 2])
    over = {"reward_sum": 9.0 if case == "sum" else 8.0, "end": 2}
    if case == "nan":
        c1 = rewarded_chunk(1, 4, 2, [1, float("nan")], [0, 2])
    elif case == "short":
        c1 = rewarded_chunk(1, 4, 2, [1], [0, 2])
    elif case == "end_early":
        c0 = rewarded_chunk(0, 0, 4, [1, 2, 3], [1, 0, 0])
    elif case == "end_flag":
        c1 = rewarded_chunk(1, 4, 2, [1, 1], [0, 4])
    elif case == "end_disagrees":
        c1 = rewarded_chunk(1, 4, 2, [1, 1], [0, 1])
    elif case == "footer_sum_type":
        over["reward_sum"] = "five"
    elif case == "footer_lacks_reward":
        over = {}
    elif case == "footer_has_reward":
        h, c0, c1 = header(), chunk(0, 0, 4), chunk(1, 4, 2)
    elif case == "header_flag":
        h = header(reward=1)
    path = build(tmp_path / "bad.episode", h, [c0, c1], **over)
    with pytest.raises(EpisodeError, match=match) as info:
        open_and_verify(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


@pytest.mark.parametrize("version", [1, 2])
def test_old_format_files_still_read_with_the_reward_unknown(tmp_path, version):
    h = header(format=version)
    hb = msgpack.packb(h, use_bin_type=True)
    path = build(tmp_path / f"v{version}.episode", h, [chunk(0, 0, 4), chunk(1, 4, 2)])
    data = bytearray(path.read_bytes())
    data[:PREFIX.size] = PREFIX.pack(MAGIC, version, len(hb))
    path.write_bytes(bytes(data))
    with Episode(path) as ep:
        ep.verify()
        assert ep.version == version and len(ep) == 6 and ep.actions().shape == (5, SPEC.size)
        assert not ep.has_reward and ep.rewards() is None and ep.ends() is None
        assert ep.reward_sum is None and ep.end is None
    bad = build(tmp_path / "flag.episode", header(format=version, reward=True), [chunk(0, 0, 4)])
    data = bytearray(bad.read_bytes())
    data[:PREFIX.size] = PREFIX.pack(MAGIC, version, len(msgpack.packb(header(format=version, reward=True),
                                                                           use_bin_type=True)))
    bad.write_bytes(bytes(data))
    with pytest.raises(EpisodeError, match=r"header has unknown keys \['reward'\]"):
        Episode(bad)
