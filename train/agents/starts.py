"""Recorded play as the starts of dream episodes: each episode of the dream begins from a window of real frames.

DIAMOND (Alonso et al. 2024) and Dreamer begin their imagined rollouts from frames of real play and imagine a short
way from there. A dream stays closest to the game near its real start, and starting each episode somewhere else in
recorded play shows the agent the game's many situations instead of one start state.

    starts = RecordedStarts("data/gems", spec, (64, 64, 3), length=8)
    frames, actions = starts(np.random.default_rng(0))     # (8, 64, 64, 3) uint8, (8, A): actions[t] led to frames[t]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.actions import ActionSpec
from train.agents.policy import AgentError
from train.data.episodes import SUFFIX, Episode, EpisodeError


class RecordedStarts:
    """Random windows of `length` frames (from the second frame on, so that every frame has the action that led to
    it) of the episode files in a folder; a one-line error for a folder that cannot give them."""

    def __init__(self, folder: str | os.PathLike, spec: ActionSpec, frame_shape: tuple[int, ...], length: int):
        root = Path(folder)
        files = [root] if root.is_file() else sorted(root.glob("*" + SUFFIX))
        if not files:
            raise AgentError(f"--starts {folder}: no episode files there; record play with 'reverie record --out "
                             f"{folder}'")
        self.length, self.episodes = int(length), []
        for f in files:
            try:
                ep = Episode(f)
            except EpisodeError as e:
                raise AgentError(f"--starts: {e}") from None
            if ep.spec.to_dict() != spec.to_dict() or tuple(ep.frame_shape) != tuple(frame_shape):
                raise AgentError(f"--starts {f}: play of {ep.spec.game!r} at {ep.frame_shape[0]}x{ep.frame_shape[1]}, "
                                 f"but the world model plays {spec.game!r} at {frame_shape[0]}x{frame_shape[1]}")
            if len(ep) > self.length:
                self.episodes.append(ep)
        if not self.episodes:
            raise AgentError(f"--starts {folder}: no episode longer than {self.length} frames")

    @classmethod
    def for_model(cls, folder: str | os.PathLike, ckpt) -> RecordedStarts:
        """Windows as long as the world model's built-in start (else its context), of its game at its frame size."""
        start = ckpt.start_state()
        length = start[0].shape[0] if start is not None else ckpt.config.world_model.context_frames
        side = (ckpt.config.autoencoder.height, ckpt.config.autoencoder.width, 3)
        return cls(folder, ckpt.action_spec, side, length)

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        ep = self.episodes[int(rng.integers(len(self.episodes)))]
        s = int(rng.integers(1, len(ep) - self.length + 1))
        return ep.frames(s, s + self.length), ep.actions(s - 1, s - 1 + self.length)
