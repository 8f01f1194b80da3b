"""Windows of consecutive frames over a directory of episode files, for training (a torch-compatible Dataset).

Item i is a window of ``window`` consecutive frames of one episode (windows never cross episodes) with, for each
frame, the action that led to it and that action's confidence (1 for recorded actions; see train/data/label.py); an
episode's first frame gets the null (zero) action, with confidence 1, which is also the action dropped for
classifier-free guidance. Files are opened lazily and a few readers are kept open (LRU); a copy of the
dataset in a DataLoader worker opens its own.
"""

from __future__ import annotations

import bisect
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.actions import ActionSpec
from train.data.episodes import SUFFIX, Episode, EpisodeError

DEFAULT_OPEN_FILES = 8


@dataclass(frozen=True)
class EpisodeInfo:
    """One episode of a dataset: its file, name and number of frames."""

    path: Path
    name: str
    frames: int


def episode_files(root_or_files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The episode files of a directory (``*.episode``, sorted, not recursive) or the given list of files."""
    if isinstance(root_or_files, (str, os.PathLike)):
        root = Path(root_or_files)
        if root.is_dir():
            files = sorted(root.glob("*" + SUFFIX))
            if not files:
                raise FileNotFoundError(f"{root}: no *{SUFFIX} episode files in this directory; record some with "
                                        "'reverie record --out DIR'")
            return files
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or directory")
        return [root]
    files = [Path(f) for f in root_or_files]
    if not files:
        raise FileNotFoundError("no episode files given")
    return files


class WindowDataset:
    """Random access to every window of ``window`` consecutive frames of every episode.

    ``ds[i]`` -> dict(frames=(window, H, W, 3) uint8, actions=(window, A) float32, confidence=(window,) float32,
    episode=file name, start=int), where ``actions[k]`` (sure to ``confidence[k]``) led to ``frames[k]``. Bad files
    raise EpisodeError, or with ``skip_bad`` are skipped with a warning; ``verify`` checks every checksum up front
    (else a chunk is checked when first read).
    """

    def __init__(self, root_or_files: str | os.PathLike | Iterable[str | os.PathLike], window: int,
                 skip_bad: bool = False, verify: bool = False, open_files: int = DEFAULT_OPEN_FILES):
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        self.window = window
        self.open_files = max(1, open_files)
        self.episodes: list[EpisodeInfo] = []
        self.spec: ActionSpec | None = None
        self.frame_shape: tuple[int, int, int] | None = None
        first_name = ""
        for path in episode_files(root_or_files):
            try:
                with Episode(path) as ep:
                    if verify:
                        ep.verify()
                    spec, shape, frames = ep.spec, ep.frame_shape, len(ep)
            except EpisodeError as e:
                if not skip_bad:
                    raise
                warnings.warn(f"skipping bad episode {path.name}: {e}", stacklevel=2)
                continue
            if self.spec is None:
                self.spec, self.frame_shape, first_name = spec, shape, path.name
            elif shape != self.frame_shape:
                raise ValueError(f"{path}: frames are {shape}, but {first_name} has {self.frame_shape}; one dataset "
                                 "needs one frame shape (record at the same --size or use separate directories)")
            elif not spec.compatible(self.spec):
                raise ValueError(f"{path}: action spec {spec.to_dict()} does not match {first_name}'s "
                                 f"{self.spec.to_dict()}; one dataset needs one action spec (same game and version)")
            self.episodes.append(EpisodeInfo(path, path.name, frames))
        if not self.episodes:
            raise ValueError("no readable episodes (all were bad and skipped)")
        counts = [max(0, e.frames - window + 1) for e in self.episodes]
        self._ends = np.cumsum(counts).tolist()    # window index where each episode's windows end
        self._readers: OrderedDict[int, Episode] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self._ends[-1]

    @property
    def action_size(self) -> int:
        return self.spec.size

    def locate(self, index: int) -> tuple[int, int]:
        """(episode number, first frame) of window ``index``."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"window {index} out of range for {n} windows")
        e = bisect.bisect_right(self._ends, index)
        start = index - (self._ends[e - 1] if e else 0)
        return e, start

    def _reader(self, e: int) -> Episode:
        if os.getpid() != self._pid:  # forked into a worker: open our own files
            self._readers = OrderedDict()
            self._pid = os.getpid()
        ep = self._readers.get(e)
        if ep is None:
            ep = self._readers[e] = Episode(self.episodes[e].path)
            while len(self._readers) > self.open_files:
                self._readers.popitem(last=False)[1].close()
        self._readers.move_to_end(e)
        return ep

    def __getitem__(self, index: int) -> dict:
        e, start = self.locate(int(index))
        ep = self._reader(e)
        stop = start + self.window
        frames = ep.frames(start, stop)                                             # (W, H, W, 3)
        actions = np.zeros((self.window, self.spec.size), np.float32)              # (W, A)
        lo = max(start, 1)                                                          # frame 0 keeps the null action
        actions[lo - start:] = ep.actions(lo - 1, stop - 1)
        confidence = np.ones(self.window, np.float32)                              # (W,)
        confidence[lo - start:] = ep.confidence(lo - 1, stop - 1)
        return {"frames": frames, "actions": actions, "confidence": confidence, "episode": self.episodes[e].name,
                "start": start}

    def close(self) -> None:
        for ep in self._readers.values():
            ep.close()
        self._readers.clear()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()  # open files do not travel to worker processes
        return state

    def __repr__(self) -> str:
        return (f"WindowDataset({len(self.episodes)} episodes, {len(self)} windows of {self.window}, "
                f"frames {self.frame_shape}, actions {self.spec.size})")
