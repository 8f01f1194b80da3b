"""The episode file: one recorded episode of play (frames, actions, reward and end), msgpack, checksummed, random
access.

An episode holds T+1 frames and T actions: frame 0 is the reset frame and ``actions[t]`` leads from frame t to
frame t+1. On disk (all integers little-endian):

    prefix   b"RVEP", format version (u8), header length (u32)
    header   msgpack map: format, env id/version, seed, frame shape (H, W, 3), fps, action spec, agent, chunking,
             checksum and compression names, created time, user metadata
    chunks   msgpack maps, one per ``chunk_frames`` consecutive frames: index, first frame, count, the frame bytes
             (uint8, optionally zlib), the bytes of the actions that led to those frames (float32; frame 0 has
             none), in files whose header says ``"confidence": true`` the confidence of each of those actions
             (float32 in [0, 1]), in files whose header says ``"reward": true`` the reward of each of those steps
             (float32, finite) and their end flags (uint8: 1 terminated, 2 truncated, both may be set; only the last
             step of the episode may have any), and the crc32 of frame + action (+ confidence) (+ reward + end) bytes
    footer   msgpack map: frame and action totals, each chunk's byte offset and frame count, crc32 of the header;
             with ``"reward": true`` also the reward sum (math.fsum of the steps' float32 rewards) and the last
             step's end flags, so that a summary reads no chunk
    trailer  footer offset (u64), crc32 of the footer (u32), b"RVEP"

Version 2 added the optional per-action confidence (labels filled in by an inverse-dynamics model carry how sure
it was; see train/data/label.py); a version-2 file without it differs from a version-1 file only in the version number,
and readers read both. Recorded actions have no confidence field and read as confidence 1.
Version 3 added the optional per-step reward and episode end, written where the game gives them (`reverie record`,
`play --human`); files without them (versions 1 and 2, imported video, dreams) read with the reward unknown:
``ep.has_reward`` is False and ``ep.rewards()``, ``ep.ends()``, ``ep.reward_sum`` and ``ep.end`` are None.

Every byte is covered by a check: the header by the footer's crc, chunks by their own, the footer by the trailer's.
Readers seek to the chunks a request needs and never load the whole file; every length is bounded by the header's
declared sizes and by fixed caps before anything is allocated, so a hostile file cannot make a reader allocate GBs.
A writer writes to ``<path>.tmp`` and renames it into place only on a clean close, so a killed recorder leaves only
a ``.tmp`` file, which readers and ``reverie data check`` treat as incomplete.
"""

from __future__ import annotations

import math
import os
import struct
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from engine.actions import ActionSpec, ActionSpecError
from engine.errors import ReverieError

FORMAT_VERSION = 3                       # what the writer writes
READ_VERSIONS = (1, 2, 3)                # what readers read
SUFFIX = ".episode"
TMP_SUFFIX = ".tmp"
MAGIC = b"RVEP"
PREFIX = struct.Struct("<4sBI")          # magic, format version, header length
TRAILER = struct.Struct("<QI4s")         # footer offset, footer crc32, magic
CHECKSUM = "crc32"
COMPRESSIONS = ("none", "zlib")
DEFAULT_COMPRESSION = "zlib"             # ~60x smaller game frames for ~3x slower random reads
DEFAULT_CHUNK_FRAMES = 32                # a 64x64 chunk: 393 KB raw, ~6 KB zlib-compressed (builtin:gems)

# caps that bound what a reader allocates for any file, whatever its header says
MAX_HEADER_BYTES = 1 << 20               # header incl. user metadata
MAX_SIDE = 8192                          # frame height / width
MAX_ACTION_SIZE = 4096                   # entries of an action vector
MAX_CHUNK_FRAMES = 4096
MAX_CHUNK_BYTES = 1 << 30                # raw frame bytes of one chunk
CHUNK_OVERHEAD = 256                     # msgpack keys and small fields of a chunk record
ZLIB_SLACK = 1024                        # compressed data may exceed its raw size by a little

HEADER_KEYS = {"format", "env_id", "env_version", "seed", "frame_shape", "fps", "action_spec", "agent",
               "chunk_frames", "checksum", "compression", "created", "metadata"}
CHUNK_KEYS = {"index", "first", "count", "frames", "actions", "crc"}
CONFIDENCE = "confidence"                # header flag (version 2) and chunk field of the per-action confidence
FOOTER_KEYS = {"frames", "actions", "chunk_offsets", "chunk_counts", "header_crc"}
REWARD = "reward"                        # header flag (version 3) and chunk field of the per-step reward (float32)
END = "end"                              # chunk field of the per-step end flags (uint8) and footer's last flags
REWARD_SUM = "reward_sum"                # footer field: math.fsum of the rewards
REWARD_FOOTER_KEYS = {REWARD_SUM, END}
TERMINATED = 1                           # end flag: the game ended the episode (a terminal state)
TRUNCATED = 2                            # end flag: the episode was cut off (a time limit, the recorder's --steps)
MAX_END = TERMINATED | TRUNCATED


def end_name(flags: int) -> str:
    """'terminated' (whatever else is set), 'truncated', or 'stopped' (the recording stopped before the end)."""
    return "terminated" if flags & TERMINATED else "truncated" if flags & TRUNCATED else "stopped"


class EpisodeError(ReverieError, ValueError):
    """A bad or unreadable episode file; the message names the file, the byte offset and what to do."""

    def __init__(self, path: str | os.PathLike, what: str, offset: int | None = None, todo: str | None = None):
        self.path, self.offset, self.what = str(path), offset, what
        where = f"{self.path}" + (f" at byte {offset}" if offset is not None else "")
        todo = todo if todo is not None else "the file is damaged: re-record it or delete it"
        super().__init__(f"{where}: {what}; {todo}")


def _crc(*parts: bytes) -> int:
    """crc32 over the concatenation of parts."""
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    return crc


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _need(cond: bool, path: str | os.PathLike, what: str, offset: int | None) -> None:
    if not cond:
        raise EpisodeError(path, what, offset)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_header(h: Any, path: str | os.PathLike, offset: int | None,
                  version: int = FORMAT_VERSION) -> tuple[tuple[int, int, int], ActionSpec]:
    """Validate every field of a decoded header of a file of format `version`; return its frame shape and spec."""
    _need(isinstance(h, dict), path, f"header is a {type(h).__name__}, not a map", offset)
    missing = sorted({"format", "env_id", "frame_shape", "action_spec", "chunk_frames", "checksum",
                      "compression"} - set(h))
    _need(not missing, path, f"header lacks keys {missing}", offset)
    unknown = sorted(set(map(str, h)) - (HEADER_KEYS | ({CONFIDENCE} if version >= 2 else set())
                                         | ({REWARD} if version >= 3 else set())))
    _need(not unknown, path, f"header has unknown keys {unknown}", offset)
    _need(h["format"] == version, path, f"header says format {h['format']!r} but the prefix says {version}", offset)
    _need(isinstance(h.get(CONFIDENCE, False), bool), path, f"header {CONFIDENCE!r} must be true or false", offset)
    _need(isinstance(h.get(REWARD, False), bool), path, f"header {REWARD!r} must be true or false", offset)
    for key in ("env_id", "env_version", "agent", "created"):
        _need(h.get(key) is None or isinstance(h.get(key), str), path, f"header {key!r} must be a string", offset)
    _need(isinstance(h["env_id"], str) and h["env_id"] != "", path, "header 'env_id' is empty", offset)
    _need(h.get("seed") is None or _is_int(h.get("seed")), path, "header 'seed' must be an integer", offset)
    fps = h.get("fps")
    _need(fps is None or (isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps < 1e6),
          path, f"header 'fps' must be a positive number, got {fps!r}", offset)
    _need(h.get("metadata") is None or isinstance(h.get("metadata"), dict), path,
          "header 'metadata' must be a map", offset)
    shape = h["frame_shape"]
    _need(isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) for s in shape), path,
          f"header 'frame_shape' must be [H, W, 3], got {shape!r}", offset)
    _need(1 <= shape[0] <= MAX_SIDE and 1 <= shape[1] <= MAX_SIDE and shape[2] == 3, path,
          f"header 'frame_shape' {shape} is out of range (1..{MAX_SIDE} pixels a side, 3 channels)", offset)
    cf = h["chunk_frames"]
    _need(_is_int(cf) and 1 <= cf <= MAX_CHUNK_FRAMES, path,
          f"header 'chunk_frames' must be 1..{MAX_CHUNK_FRAMES}, got {cf!r}", offset)
    _need(cf * shape[0] * shape[1] * 3 <= MAX_CHUNK_BYTES, path,
          f"header declares chunks of {cf * shape[0] * shape[1] * 3} frame bytes, more than the cap of "
          f"{MAX_CHUNK_BYTES}", offset)
    _need(h["checksum"] == CHECKSUM, path, f"unknown checksum {h['checksum']!r} (this Reverie knows {CHECKSUM!r})",
          offset)
    _need(h["compression"] in COMPRESSIONS, path,
          f"unknown compression {h['compression']!r} (known: {list(COMPRESSIONS)})", offset)
    try:
        spec = ActionSpec.from_dict(h["action_spec"], where="header 'action_spec'")
    except (ActionSpecError, TypeError) as e:
        raise EpisodeError(path, str(e), offset) from None
    _need(spec.size <= MAX_ACTION_SIZE, path, f"action spec has {spec.size} entries, more than {MAX_ACTION_SIZE}",
          offset)
    return (shape[0], shape[1], 3), spec


class EpisodeWriter:
    """Write one episode: ``append(frame)`` the reset frame, then ``append(frame, action)`` per step.

    With ``confidence=True`` every action carries its confidence in [0, 1]: ``append(frame, action, confidence)``.
    With ``reward=True`` every step carries the reward it earned and whether it ended the episode:
    ``append(frame, action, reward=r, terminated=..., truncated=...)``; nothing may follow a step that ended it.
    A context manager; the file appears under ``path`` only on a clean close with at least one frame.
    """

    def __init__(self, path: str | os.PathLike, *, env_id: str, action_spec: ActionSpec,
                 frame_shape: tuple[int, int, int], env_version: str = "", fps: float = 30.0,
                 seed: int | None = None, agent: str = "", metadata: dict | None = None,
                 chunk_frames: int = DEFAULT_CHUNK_FRAMES, compression: str = DEFAULT_COMPRESSION,
                 confidence: bool = False, reward: bool = False):
        self.path = Path(path)
        self.tmp_path = Path(str(path) + TMP_SUFFIX)
        self.spec = action_spec
        self.frame_shape = tuple(int(s) for s in frame_shape)
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
        self.compression = compression
        self.header = {"format": FORMAT_VERSION, "env_id": env_id, "env_version": str(env_version),
                       "seed": None if seed is None else int(seed), "frame_shape": list(self.frame_shape),
                       "fps": float(fps), "action_spec": action_spec.to_dict(), "agent": str(agent),
                       "chunk_frames": int(chunk_frames), "checksum": CHECKSUM, "compression": compression,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "metadata": dict(metadata or {})}
        self.with_confidence = bool(confidence)
        if self.with_confidence:  # absent otherwise: a recording's header is the same as in version 1
            self.header[CONFIDENCE] = True
        self.with_reward = bool(reward)
        if self.with_reward:      # absent otherwise: the reward is unknown, as in versions 1 and 2
            self.header[REWARD] = True
        header_bytes = _pack(self.header)
        if len(header_bytes) > MAX_HEADER_BYTES:
            raise ValueError(f"episode header is {len(header_bytes)} bytes (metadata too large); the cap is "
                             f"{MAX_HEADER_BYTES}")
        try:
            _check_header(msgpack.unpackb(header_bytes), self.path, None)
        except EpisodeError as e:
            raise ValueError(f"cannot write {self.path}: {e.what}") from None
        self._header_crc = _crc(header_bytes)
        self._frames: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._confidence: list[float] = []
        self._rewards: list[float] = []       # this chunk's
        self._ends: list[int] = []            # this chunk's
        self._all_rewards: list[float] = []   # the episode's, for the footer's exact sum
        self.end = 0                          # the last step's end flags
        self._offsets: list[int] = []
        self._counts: list[int] = []
        self.num_frames = 0
        self.bytes_written = 0
        self._file = open(self.tmp_path, "wb")  # closed by close() or abort()
        self._write(PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self.bytes_written += len(data)

    def append(self, frame: np.ndarray, action: np.ndarray | None = None, confidence: float | None = None, *,
               reward: float | None = None, terminated: bool = False, truncated: bool = False) -> None:
        """Add the next frame and the action that led to it (None for the reset frame only), with the action's
        confidence in [0, 1] if this writer was made with ``confidence=True`` (and only then), and the step's reward
        and end (terminated / truncated) if it was made with ``reward=True`` (and only then)."""
        if self.end:
            raise ValueError(f"{self.path}: the episode ended at step {self.num_frames - 2} "
                             f"({end_name(self.end)}); nothing may follow")
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape or frame.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame {self.num_frames} is {frame.dtype} {frame.shape}, "
                             f"expected uint8 {self.frame_shape}")
        if (action is None) != (self.num_frames == 0):
            raise ValueError(f"{self.path}: frame {self.num_frames} "
                             + ("is the reset frame and takes no action" if self.num_frames == 0
                                else "needs the action that led to it"))
        if action is not None:
            where = f"{self.path}: action {self.num_frames - 1}"
            checked = self.spec.check(action, where=where)
            if (confidence is None) == self.with_confidence:
                raise ValueError(f"{where}: " + ("this writer carries a confidence for every action; pass one"
                                                 if self.with_confidence else "this writer was made without "
                                                 "confidence=True, so its actions carry no confidence"))
            if confidence is not None:
                c = float(confidence)
                if not 0.0 <= c <= 1.0:  # NaN fails too
                    raise ValueError(f"{where}: confidence must be in [0, 1], got {confidence!r}")
                self._confidence.append(c)
            if (reward is None) == self.with_reward or (not self.with_reward and (terminated or truncated)):
                raise ValueError(f"{where}: " + ("this writer records every step's reward; pass reward="
                                                 if self.with_reward else "this writer was made without "
                                                 "reward=True, so its steps carry no reward or end"))
            end = 0
            if reward is not None:
                r = float(reward)
                if not math.isfinite(r):
                    raise ValueError(f"{where}: reward must be a finite number, got {reward!r}")
                end = (TERMINATED if terminated else 0) | (TRUNCATED if truncated else 0)
                self._rewards.append(r)
                self._all_rewards.append(float(np.float32(r)))
                self._ends.append(end)
            self._actions.append(checked)
        elif confidence is not None or reward is not None or terminated or truncated:
            raise ValueError(f"{self.path}: the reset frame has no action, so no confidence, reward or end")
        self._frames.append(frame)
        self.num_frames += 1
        if action is not None and self.with_reward:
            self.end = end
        if len(self._frames) == self.header["chunk_frames"]:
            self._flush_chunk()

    def extend(self, frames: np.ndarray, actions: np.ndarray, confidence: np.ndarray | None = None,
               rewards: np.ndarray | None = None, ends: np.ndarray | None = None) -> None:
        """Append many frames; ``actions[k]`` (and ``confidence[k]``, ``rewards[k]``, end flags ``ends[k]``) led to
        ``frames[k]`` (pass len(frames) - 1 actions when starting)."""
        skip = 1 if self.num_frames == 0 else 0
        if len(actions) != len(frames) - skip:
            raise ValueError(f"{self.path}: {len(frames)} frames need {len(frames) - skip} actions, got "
                             f"{len(actions)}")
        if confidence is not None and len(confidence) != len(actions):
            raise ValueError(f"{self.path}: {len(actions)} actions need {len(actions)} confidences, got "
                             f"{len(confidence)}")
        for name, values in (("rewards", rewards), ("end flags", ends)):
            if values is not None and len(values) != len(actions):
                raise ValueError(f"{self.path}: {len(actions)} actions need {len(actions)} {name}, got {len(values)}")
        if skip and len(frames):
            self.append(frames[0])
        for k, (f, a) in enumerate(zip(frames[skip:], actions)):
            end = 0 if ends is None else int(ends[k])
            self.append(f, a, None if confidence is None else confidence[k],
                        reward=None if rewards is None else rewards[k], terminated=bool(end & TERMINATED),
                        truncated=bool(end & TRUNCATED))

    def _flush_chunk(self) -> None:
        if not self._frames:
            return
        count = len(self._frames)
        first = self.num_frames - count
        frame_bytes = np.ascontiguousarray(np.stack(self._frames)).tobytes()       # (count, H, W, 3)
        if self.compression == "zlib":
            frame_bytes = zlib.compress(frame_bytes, 1)
        action_bytes = (np.stack(self._actions).astype("<f4").tobytes() if self._actions else b"")  # (n, A)
        record = {"index": len(self._offsets), "first": first, "count": count, "frames": frame_bytes,
                  "actions": action_bytes, "crc": _crc(frame_bytes, action_bytes)}
        if self.with_confidence:
            confidence_bytes = np.asarray(self._confidence, "<f4").tobytes()                   # (n,)
            record[CONFIDENCE] = confidence_bytes
            record["crc"] = _crc(frame_bytes, action_bytes, confidence_bytes)
        if self.with_reward:
            reward_bytes = np.asarray(self._rewards, "<f4").tobytes()                          # (n,)
            end_bytes = np.asarray(self._ends, np.uint8).tobytes()                             # (n,)
            record[REWARD], record[END] = reward_bytes, end_bytes
            checked = [frame_bytes, action_bytes] + ([record[CONFIDENCE]] if self.with_confidence else [])
            record["crc"] = _crc(*checked, reward_bytes, end_bytes)
        self._offsets.append(self.bytes_written)
        self._counts.append(count)
        self._write(_pack(record))
        self._frames.clear()
        self._actions.clear()
        self._confidence.clear()
        self._rewards.clear()
        self._ends.clear()

    def close(self) -> None:
        """Finish the file: last chunk, footer, trailer, fsync, then rename into place."""
        if self._file.closed:
            return
        if self.num_frames == 0:
            self.abort()
            raise EpisodeError(self.path, "no frames were appended, so nothing was written",
                               todo="append at least the reset frame")
        self._flush_chunk()
        footer = {"frames": self.num_frames, "actions": self.num_frames - 1, "chunk_offsets": self._offsets,
                  "chunk_counts": self._counts, "header_crc": self._header_crc}
        if self.with_reward:
            footer.update({REWARD_SUM: math.fsum(self._all_rewards), END: self.end})
        footer = _pack(footer)
        footer_offset = self.bytes_written
        self._write(footer + TRAILER.pack(footer_offset, _crc(footer), MAGIC))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.path)
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop the partial file."""
        if not self._file.closed:
            self._file.close()
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Episode:
    """Random-access reader of one episode file: header and footer on open, chunks on demand.

    ``len(ep)`` frames, ``ep.num_actions`` actions; ``frames(a, b)`` is (n, H, W, 3) uint8, ``actions(a, b)``
    (n, A) float32, where ``actions[t]`` leads from frame t to frame t+1, and ``confidence(a, b)`` (n,) float32 the
    confidence of those actions (ones where the file has none: ``ep.has_confidence``); ``rewards(a, b)`` (n,) float32
    and ``ends(a, b)`` (n,) uint8 end flags of those steps, ``reward_sum`` and ``end`` (None, all four, where the file
    has no reward: ``ep.has_reward``). Reads format versions 1, 2 and 3.
    Each chunk's checksum is checked the first time it is read; ``verify()`` checks them all.
    """

    def __init__(self, path: str | os.PathLike, chunk_cache: int = 2):
        self.path = Path(path)
        self._fd: int | None = None
        self._chunk_cache: OrderedDict[int, tuple[np.ndarray | None, ...]] = OrderedDict()
        self._chunk_cache_size = chunk_cache
        self._checked: set[int] = set()
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as e:
            raise EpisodeError(self.path, f"cannot open: {e.strerror}", todo="check the path") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike) -> Episode:
        return cls(path)

    # ---- low level ----------------------------------------------------------------------------------------------
    def _read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (callers bound length by the file size first)."""
        try:
            if hasattr(os, "pread"):
                data = os.pread(self._fd, length, offset)
            else:  # pragma: no cover - Windows
                os.lseek(self._fd, offset, os.SEEK_SET)
                data = os.read(self._fd, length)
        except OSError as e:
            raise EpisodeError(self.path, f"cannot read: {e.strerror or e}", offset, todo="check the file") from None
        if len(data) != length:
            raise EpisodeError(self.path, f"file ends early: wanted {length} bytes, got {len(data)}", offset)
        return data

    def _unpack(self, data: bytes, offset: int, what: str, **limits: int) -> Any:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0, **limits)
        except msgpack.ExtraData:
            raise EpisodeError(self.path, f"{what} has extra bytes after it (its length is wrong)", offset) from None
        except Exception as e:  # msgpack raises ValueError, FormatError, StackError, UnicodeDecodeError, ...
            raise EpisodeError(self.path, f"{what} is not valid msgpack ({type(e).__name__}: {e})", offset) from None

    def _open(self) -> None:
        p = self.path
        self.file_size = size = os.fstat(self._fd).st_size
        _need(size > 0, p, "the file is empty (0 bytes)", 0)
        head = self._read(0, min(size, PREFIX.size))
        if head[:4] != MAGIC[: len(head)]:
            raise EpisodeError(p, f"not a Reverie episode file (starts with {head[:4]!r}, expected {MAGIC!r})", 0,
                               todo=f"move it out of the episode directory, or give it another suffix than {SUFFIX}")
        _need(len(head) == PREFIX.size, p, f"file is truncated: {size} bytes, shorter than the prefix", 0)
        _, version, header_len = PREFIX.unpack(head)
        if version not in READ_VERSIONS:
            newer = version > max(READ_VERSIONS)
            raise EpisodeError(p, f"episode format version {version}, but this Reverie reads versions "
                               f"{', '.join(map(str, READ_VERSIONS))}", 4, todo="upgrade Reverie to read it" if newer
                               else "re-record it with this Reverie")
        self.version = version
        _need(header_len <= MAX_HEADER_BYTES, p, f"header claims {header_len} bytes, more than the cap "
              f"{MAX_HEADER_BYTES}", 5)
        _need(size >= PREFIX.size + header_len + TRAILER.size, p,
              f"file is truncated: {size} bytes, too short for its {header_len}-byte header and trailer", size)
        # trailer and footer first: a truncated file is the most common damage and is named as such
        footer_offset, footer_crc, end_magic = TRAILER.unpack(self._read(size - TRAILER.size, TRAILER.size))
        if end_magic != MAGIC:
            raise EpisodeError(p, "file is truncated or incomplete: no trailer at its end (was the recorder "
                               "killed?)", size - TRAILER.size)
        header_end = PREFIX.size + header_len
        _need(header_end < footer_offset < size - TRAILER.size, p, f"trailer's footer offset {footer_offset} "
              f"is outside the file's body ({header_end}..{size - TRAILER.size})", size - TRAILER.size)
        footer_bytes = self._read(footer_offset, size - TRAILER.size - footer_offset)
        _need(_crc(footer_bytes) == footer_crc, p, "footer checksum mismatch (a byte was changed)", footer_offset)
        max_chunks = size // 8 + 1  # every chunk record takes more than 8 bytes
        f = self._unpack(footer_bytes, footer_offset, "footer", max_str_len=64, max_bin_len=0,
                         max_array_len=max_chunks, max_map_len=16)
        _need(isinstance(f, dict) and set(f) in (FOOTER_KEYS, FOOTER_KEYS | REWARD_FOOTER_KEYS), p,
              f"footer must be a map with keys {sorted(FOOTER_KEYS)} (and {sorted(REWARD_FOOTER_KEYS)} in a file "
              "with rewards)", footer_offset)
        header_bytes = self._read(PREFIX.size, header_len)
        _need(f["header_crc"] == _crc(header_bytes), p, "header checksum mismatch (a byte of the header was "
              "changed)", PREFIX.size)
        self.header = h = self._unpack(header_bytes, PREFIX.size, "header", max_str_len=MAX_HEADER_BYTES,
                                       max_bin_len=MAX_HEADER_BYTES, max_array_len=MAX_HEADER_BYTES,
                                       max_map_len=MAX_HEADER_BYTES)
        self.frame_shape, self.spec = _check_header(h, p, PREFIX.size, version)
        self.chunk_frames, self.compression = h["chunk_frames"], h["compression"]
        self.has_confidence: bool = h.get(CONFIDENCE, False)
        self.has_reward: bool = h.get(REWARD, False)
        self._chunk_keys = (CHUNK_KEYS | ({CONFIDENCE} if self.has_confidence else set())
                            | ({REWARD, END} if self.has_reward else set()))
        self._check_footer(f, footer_offset, header_end)

    def _check_footer(self, f: dict, offset: int, header_end: int) -> None:
        """Validate the footer's totals and chunk index against the header and the file's extent."""
        p = self.path
        offsets, counts = f["chunk_offsets"], f["chunk_counts"]
        _need(isinstance(offsets, list) and isinstance(counts, list) and len(offsets) == len(counts) >= 1, p,
              "footer's chunk_offsets and chunk_counts must be lists of the same non-zero length", offset)
        _need(all(_is_int(c) and 1 <= c <= self.chunk_frames for c in counts), p,
              f"footer's chunk_counts must each be 1..{self.chunk_frames} (the header's chunk_frames)", offset)
        _need(all(_is_int(o) for o in offsets) and offsets[0] == header_end
              and all(a < b for a, b in zip(offsets, offsets[1:])) and offsets[-1] < offset, p,
              f"footer's chunk offsets are out of range (they must rise from {header_end} to below {offset})", offset)
        frames, actions = f["frames"], f["actions"]
        _need(_is_int(frames) and frames == sum(counts), p, f"footer says {frames!r} frames but its chunks hold "
              f"{sum(counts)}", offset)
        _need(actions == frames - 1, p, f"footer says {actions!r} actions for {frames} frames (expected "
              f"{frames - 1})", offset)
        self.num_frames, self.num_actions = frames, actions
        self.reward_sum: float | None = None
        self._end: int | None = None
        _need(self.has_reward == (REWARD_SUM in f), p, "footer " + ("lacks the reward sum and end of a file whose "
              "header says it has rewards" if self.has_reward else "has a reward sum, but the header says the file "
              "has no rewards"), offset)
        if self.has_reward:
            total, end = f[REWARD_SUM], f[END]
            _need(isinstance(total, float) and math.isfinite(total), p,
                  f"footer's reward sum must be a finite number, got {total!r}", offset)
            _need(_is_int(end) and 0 <= end <= MAX_END and (end == 0 or actions > 0), p,
                  f"footer's end flags must be 0..{MAX_END} (0 for an episode without steps), got {end!r}", offset)
            self.reward_sum, self._end = total, end
        self._offsets = offsets
        self._ends = offsets[1:] + [offset]
        self._counts = counts
        self._firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
        h, w, c = self.frame_shape
        self._frame_bytes = h * w * c
        self._action_bytes = 4 * self.spec.size
        for i, (a, b) in enumerate(zip(self._offsets, self._ends)):
            limit = self._max_chunk_bytes(counts[i])
            _need(b - a <= limit, p, f"chunk {i} spans {b - a} bytes, more than its {counts[i]} frames can take "
                  f"({limit})", a)

    def _max_chunk_bytes(self, count: int) -> int:
        raw = count * self._frame_bytes
        if self.compression == "zlib":
            raw += raw // 1000 + ZLIB_SLACK
        confidence = count * 4 if self.has_confidence else 0  # float32 per action
        reward = count * 5 if self.has_reward else 0          # float32 reward and uint8 end flags per step
        return raw + count * self._action_bytes + confidence + reward + CHUNK_OVERHEAD

    # ---- chunks -------------------------------------------------------------------------------------------------
    def _chunk(self, i: int) -> tuple[np.ndarray | None, ...]:
        """Frames (count, H, W, 3), incoming actions (n = count or count-1, A), their confidence (n,), rewards (n,)
        and end flags (n,) of chunk i, checked (None for what the file does not hold)."""
        hit = self._chunk_cache.get(i)
        if hit is not None:
            self._chunk_cache.move_to_end(i)
            return hit
        p, offset, count, first = self.path, self._offsets[i], self._counts[i], self._firsts[i]
        limit = self._max_chunk_bytes(count)
        data = self._read(offset, self._ends[i] - offset)
        keys = self._chunk_keys
        rec = self._unpack(data, offset, f"chunk {i}", max_str_len=16, max_bin_len=limit, max_array_len=0,
                           max_map_len=len(keys))
        _need(isinstance(rec, dict) and set(rec) == keys, p, f"chunk {i} must be a map with keys {sorted(keys)}",
              offset)
        _need((rec["index"], rec["first"], rec["count"]) == (i, first, count), p,
              f"chunk {i} says it is chunk {rec['index']!r} holding {rec['count']!r} frames from {rec['first']!r}, "
              f"but the footer says {count} frames from {first}", offset)
        fb, ab, cb = rec["frames"], rec["actions"], rec.get(CONFIDENCE, b"")
        _need(isinstance(fb, bytes) and isinstance(ab, bytes) and isinstance(cb, bytes), p,
              f"chunk {i}'s frames, actions and confidence must be bytes", offset)
        rb, eb = rec.get(REWARD, b""), rec.get(END, b"")
        _need(isinstance(rb, bytes) and isinstance(eb, bytes), p, f"chunk {i}'s reward and end must be bytes", offset)
        if i not in self._checked:
            parts = [fb, ab] + ([cb] if self.has_confidence else []) + ([rb, eb] if self.has_reward else [])
            _need(rec["crc"] == _crc(*parts), p, f"chunk {i} checksum mismatch (a byte was changed)", offset)
        n_actions = count - 1 if first == 0 else count
        _need(len(ab) == n_actions * self._action_bytes, p, f"chunk {i} has {len(ab)} action bytes, expected "
              f"{n_actions} x {self._action_bytes}", offset)
        confidence = None
        if self.has_confidence:
            _need(len(cb) == n_actions * 4, p, f"chunk {i} has {len(cb)} confidence bytes, expected {n_actions} x 4",
                  offset)
            confidence = np.frombuffer(cb, "<f4")                                        # (n,)
            _need(bool(np.all((confidence >= 0) & (confidence <= 1))), p,
                  f"chunk {i} has confidence values outside [0, 1]", offset)
        rewards = ends = None
        if self.has_reward:
            rewards, ends = self._check_rewards(i, rb, eb, n_actions, offset)
        if self.compression == "zlib":
            try:
                d = zlib.decompressobj()
                fb = d.decompress(fb, count * self._frame_bytes + 1)
                ok = d.eof and not d.unconsumed_tail
            except zlib.error as e:
                raise EpisodeError(p, f"chunk {i}'s frames do not decompress ({e})", offset) from None
            _need(ok, p, f"chunk {i}'s compressed frames hold more than {count} frames", offset)
        _need(len(fb) == count * self._frame_bytes, p, f"chunk {i} has {len(fb)} frame bytes, expected "
              f"{count} x {self._frame_bytes}", offset)
        self._checked.add(i)
        frames = np.frombuffer(fb, np.uint8).reshape(count, *self.frame_shape)          # (count, H, W, 3)
        actions = np.frombuffer(ab, "<f4").reshape(n_actions, self.spec.size)          # (n, A)
        self._chunk_cache[i] = (frames, actions, confidence, rewards, ends)
        while len(self._chunk_cache) > self._chunk_cache_size:
            self._chunk_cache.popitem(last=False)
        return self._chunk_cache[i]

    def _check_rewards(self, i: int, rb: bytes, eb: bytes, n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk i's rewards (n,) float32 and end flags (n,) uint8, checked: finite rewards, flags only on the
        episode's last step, and those the footer's."""
        p = self.path
        _need(len(rb) == n * 4 and len(eb) == n, p, f"chunk {i} has {len(rb)} reward bytes and {len(eb)} end bytes, "
              f"expected {n} x 4 and {n} x 1", offset)
        rewards, ends = np.frombuffer(rb, "<f4"), np.frombuffer(eb, np.uint8)           # (n,), (n,)
        _need(bool(np.all(np.isfinite(rewards))), p, f"chunk {i} has rewards that are not finite numbers", offset)
        _need(bool(np.all(ends <= MAX_END)), p, f"chunk {i} has end flags above {MAX_END}", offset)
        last = i == len(self._counts) - 1
        _need(not np.any(ends[:-1] if last else ends), p, f"chunk {i} says the episode ended before its last step",
              offset)
        if last and n:
            _need(int(ends[-1]) == self._end, p, f"chunk {i} ends the episode with flags {int(ends[-1])} but the "
                  f"footer says {self._end}", offset)
        return rewards, ends

    @staticmethod
    def _range(start: int | None, stop: int | None, n: int) -> tuple[int, int]:
        start, stop, _ = slice(start, stop).indices(n)
        return start, max(start, stop)

    def _gather(self, start: int, stop: int, out: np.ndarray, part: int) -> np.ndarray:
        """Copy part 0 (frames [start, stop)), 1 (the actions that led to them), 2 (their confidence), 3 (the
        rewards of those steps) or 4 (their end flags) into out."""
        i = int(np.searchsorted(self._firsts, start, side="right")) - 1
        pos = start
        while pos < stop:
            first, count = self._firsts[i], self._counts[i]
            chunk = self._chunk(i)
            end = min(stop, first + count)
            lo = max(first, 1) if part else first  # actions of chunk i led to frames max(first, 1) ..
            out[pos - start:end - start] = chunk[part][pos - lo:end - lo]
            pos, i = end, i + 1
        return out

    # ---- public -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_frames

    def frames(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Frames [start, stop) as (n, H, W, 3) uint8 (slice semantics)."""
        start, stop = self._range(start, stop, self.num_frames)
        return self._gather(start, stop, np.empty((stop - start, *self.frame_shape), np.uint8), 0)

    def actions(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Actions [start, stop) as (n, A) float32; actions[t] leads from frame t to frame t+1."""
        start, stop = self._range(start, stop, self.num_actions)
        out = np.empty((stop - start, self.spec.size), np.float32)
        return self._gather(start + 1, stop + 1, out, 1)

    def confidence(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Confidence of actions [start, stop) as (n,) float32 in [0, 1]; ones where the file has none (recorded
        actions, and every version-1 file)."""
        start, stop = self._range(start, stop, self.num_actions)
        if not self.has_confidence:
            return np.ones(stop - start, np.float32)
        return self._gather(start + 1, stop + 1, np.empty(stop - start, np.float32), 2)

    def rewards(self, start: int | None = None, stop: int | None = None) -> np.ndarray | None:
        """Rewards of steps [start, stop) as (n,) float32 (step t is the action from frame t to t+1); None where the
        file has no rewards (``has_reward``: versions 1 and 2, imported video, dreams)."""
        if not self.has_reward:
            return None
        start, stop = self._range(start, stop, self.num_actions)
        return self._gather(start + 1, stop + 1, np.empty(stop - start, np.float32), 3)

    def ends(self, start: int | None = None, stop: int | None = None) -> np.ndarray | None:
        """End flags of steps [start, stop) as (n,) uint8 (TERMINATED | TRUNCATED, non-zero only on the episode's
        last step); None where the file has no rewards."""
        if not self.has_reward:
            return None
        start, stop = self._range(start, stop, self.num_actions)
        return self._gather(start + 1, stop + 1, np.empty(stop - start, np.uint8), 4)

    @property
    def end(self) -> str | None:
        """How the episode ended: 'terminated', 'truncated', 'stopped' (the recording stopped first), or None where
        the file has no rewards (unknown); from the footer, no chunk is read."""
        return None if self._end is None else end_name(self._end)

    @property
    def metadata(self) -> dict:
        """The header's user metadata (a label source in "labels" and friends, see train/data/label.py)."""
        return self.header.get("metadata") or {}

    def verify(self) -> None:
        """Check every chunk's checksum and structure; raise EpisodeError at the first bad one."""
        self._checked.clear()
        self._chunk_cache.clear()
        total = []
        for i in range(len(self._offsets)):
            rewards = self._chunk(i)[3]
            if rewards is not None:
                total.extend(rewards.tolist())
        self._chunk_cache.clear()
        if self.has_reward:
            _need(math.fsum(total) == self.reward_sum, self.path, f"footer's reward sum {self.reward_sum!r} is not "
                  f"the sum of the steps' rewards ({math.fsum(total)!r})", None)

    @property
    def env_id(self) -> str:
        return self.header["env_id"]

    @property
    def fps(self) -> float | None:
        return self.header.get("fps")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._chunk_cache.clear()

    def __enter__(self) -> Episode:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"Episode({str(self.path)!r}, frames={self.num_frames}, shape={self.frame_shape}, "
                f"env={self.env_id!r})")
