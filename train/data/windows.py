"""Training data access for every stage: random windows of (frames, actions) drawn by a step's generator.

Small datasets (under `preload_gb`) are read once into memory as uint8 and sampled by slicing, which keeps a GPU
busy; larger ones are streamed window by window through `train.data.dataset.WindowDataset`, which reads only the
chunks a window needs. Either way the windows of one step are a pure function of the step's generator, so a
resumed run sees the same data as an uninterrupted one.

Every action carries a confidence: 1 for recorded actions, the inverse-dynamics model's for labels that
`reverie data label` filled in (train/data/label.py). `window_starts(window, min_confidence)` lists the windows whose
every action is at least that sure, and pick_windows() draws among them; with no threshold that is every window, drawn
exactly as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from engine.actions import ActionSpec
from train.data.dataset import WindowDataset
from train.data.episodes import Episode


@dataclass
class Window:
    frames: torch.Tensor      # (B, W, H, W, 3) uint8
    actions: torch.Tensor     # (B, W, A) float32; actions[:, k] led to frames[:, k]
    confidence: torch.Tensor  # (B, W) float32 in [0, 1]: of actions[:, k]; 1 for recorded actions


def pick_windows(gen: torch.Generator, starts: list[np.ndarray], batch: int) -> list[tuple[int, int]]:
    """`batch` (episode, first frame) pairs: an episode drawn with weight len(starts[e]), then one of its starts.

    With every start allowed (starts[e] = 0..T_e - W) this is the plain draw of windows weighted by episode length.
    """
    weights = torch.tensor([len(s) for s in starts], dtype=torch.float64)
    eps = torch.multinomial(weights, batch, replacement=True, generator=gen).tolist()
    return [(e, int(starts[e][int(torch.randint(0, len(starts[e]), (1,), generator=gen))])) for e in eps]


def pick_focused_windows(gen: torch.Generator, starts: list[np.ndarray], focus: list[np.ndarray], batch: int,
                         share: float) -> list[tuple[int, int]]:
    """`batch` windows as pick_windows() draws them, of which round(share * batch) come from the `focus` starts (a
    subset of `starts`, per episode), spread evenly over the batch so that every data-parallel rank's slice gets its
    part. With share 0 (or no focus window) this is pick_windows() exactly."""
    k = round(share * batch) if any(len(f) for f in focus) else 0
    if k == 0:
        return pick_windows(gen, starts, batch)
    plain = pick_windows(gen, starts, batch - k) if k < batch else []
    focused = pick_windows(gen, focus, k)
    out = []
    for i in range(batch):   # position i is a focus window where the running count of k over batch steps up
        out.append(focused.pop() if (i + 1) * k // batch > i * k // batch else plain.pop())
    return out


class EpisodeSource:
    """All episodes of a dataset folder, sampled as windows; preloaded when small enough."""

    def __init__(self, root: str | os.PathLike, skip_bad: bool = False, preload_gb: float = 8.0):
        self.ds = WindowDataset(root, window=1, skip_bad=skip_bad)
        self.spec: ActionSpec = self.ds.spec
        self.frame_shape = self.ds.frame_shape
        self.lengths = [e.frames for e in self.ds.episodes]
        self.env_ids: list[str] = []
        nbytes = sum(self.lengths) * int(np.prod(self.frame_shape))
        self.frames: list[np.ndarray] | None = None
        self.actions: list[np.ndarray] = []
        self.confidence: list[np.ndarray] = []   # (T+1,) per episode, like actions: frame 0's null action is sure
        self._starts: dict[tuple[int, float], list[np.ndarray]] = {}
        preload = nbytes <= preload_gb * 2**30
        frames = []
        for info in self.ds.episodes:
            with Episode(info.path) as ep:
                self.env_ids.append(ep.env_id)
                acts = np.zeros((len(ep), self.spec.size), np.float32)  # (T+1, A): led-to convention
                acts[1:] = ep.actions()
                self.actions.append(acts)
                conf = np.ones(len(ep), np.float32)                      # (T+1,)
                conf[1:] = ep.confidence()
                self.confidence.append(conf)
                if preload:
                    frames.append(ep.frames())
        if preload:
            self.frames = frames

    @property
    def num_frames(self) -> int:
        return sum(self.lengths)

    def summary(self) -> dict:
        return {"episodes": len(self.lengths), "frames": self.num_frames, "env_ids": sorted(set(self.env_ids)),
                "frame_shape": list(self.frame_shape), "files": [e.name for e in self.ds.episodes]}

    def episode_frames(self, e: int) -> np.ndarray:
        if self.frames is not None:
            return self.frames[e]
        with Episode(self.ds.episodes[e].path) as ep:
            return ep.frames()

    def window_starts(self, window: int, min_confidence: float = 0.0) -> list[np.ndarray]:
        """Per episode, the first frames of its windows of `window` frames whose every action has confidence at least
        `min_confidence` (0: every window); ValueError if no episode has a window at all."""
        if max(self.lengths) < window:
            raise ValueError(f"no episode has {window} frames (longest has {max(self.lengths)}); record longer "
                             "episodes or lower the window")
        key = (window, float(min_confidence))
        if key in self._starts:
            return self._starts[key]
        starts = []
        for n, conf in zip(self.lengths, self.confidence):
            if n < window:
                starts.append(np.zeros(0, np.int64))
            elif min_confidence <= 0:
                starts.append(np.arange(n - window + 1))
            else:
                lowest = np.lib.stride_tricks.sliding_window_view(conf, window).min(axis=1)  # (n - window + 1,)
                starts.append(np.flatnonzero(lowest >= min_confidence))
        self._starts[key] = starts
        return starts

    def sample(self, gen: torch.Generator, batch: int, window: int, min_confidence: float = 0.0) -> Window:
        """`batch` random windows of `window` frames, never crossing episodes (episodes weighted by their windows);
        with `min_confidence` only windows whose every action is at least that sure."""
        starts = self.window_starts(window, min_confidence)
        if not any(len(s) for s in starts):
            raise ValueError(f"no window of {window} frames has every action's confidence at least "
                             f"{min_confidence}; lower the threshold")
        sel = pick_windows(gen, starts, batch)
        if self.frames is not None:
            fr = np.stack([self.frames[e][s:s + window] for e, s in sel])
        else:
            fr = np.stack([self._stream(e, s, window) for e, s in sel])
        ac = np.stack([self.actions[e][s:s + window] for e, s in sel])
        conf = np.stack([self.confidence[e][s:s + window] for e, s in sel])
        return Window(torch.from_numpy(fr), torch.from_numpy(ac), torch.from_numpy(conf))

    def _stream(self, e: int, start: int, window: int) -> np.ndarray:
        ep = self.ds._reader(e)
        return ep.frames(start, start + window)
