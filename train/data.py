"""Training data access for every stage: random windows of (frames, actions) drawn by a step's generator.

Small datasets (under `preload_gb`) are read once into memory as uint8 and sampled by slicing, which keeps a GPU
busy; larger ones are streamed window by window through `train.dataset.WindowDataset`, which reads only the
chunks a window needs. Either way the windows of one step are a pure function of the step's generator, so a
resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from engine.actions import ActionSpec
from train.dataset import WindowDataset
from train.episodes import Episode


@dataclass
class Window:
    frames: torch.Tensor   # (B, W, H, W, 3) uint8
    actions: torch.Tensor  # (B, W, A) float32; actions[:, k] led to frames[:, k]


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
        preload = nbytes <= preload_gb * 2**30
        frames = []
        for info in self.ds.episodes:
            with Episode(info.path) as ep:
                self.env_ids.append(ep.env_id)
                acts = np.zeros((len(ep), self.spec.size), np.float32)  # (T+1, A): led-to convention
                acts[1:] = ep.actions()
                self.actions.append(acts)
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

    def sample(self, gen: torch.Generator, batch: int, window: int) -> Window:
        """`batch` random windows of `window` frames, never crossing episodes (episodes weighted by length)."""
        lens = torch.tensor(self.lengths, dtype=torch.float64)
        ok = lens >= window
        if not bool(ok.any()):
            raise ValueError(f"no episode has {window} frames (longest has {max(self.lengths)}); record longer "
                             "episodes or lower the window")
        weights = torch.where(ok, lens - window + 1, torch.zeros_like(lens))
        eps = torch.multinomial(weights, batch, replacement=True, generator=gen).tolist()
        starts = [int(torch.randint(0, self.lengths[e] - window + 1, (1,), generator=gen)) for e in eps]
        if self.frames is not None:
            fr = np.stack([self.frames[e][s:s + window] for e, s in zip(eps, starts)])
        else:
            fr = np.stack([self._stream(e, s, window) for e, s in zip(eps, starts)])
        ac = np.stack([self.actions[e][s:s + window] for e, s in zip(eps, starts)])
        return Window(torch.from_numpy(fr), torch.from_numpy(ac))

    def _stream(self, e: int, start: int, window: int) -> np.ndarray:
        ep = self.ds._reader(e)
        return ep.frames(start, start + window)
