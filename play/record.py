"""Recording play: the frames and actions of a session to an episode file (train.data.episodes) and a GIF beside it.

R starts and stops a recording in the window; `reverie play --human` records every episode of the real game, so
a trainer can record their own play. The episode holds the frame shown when recording started (its reset frame)
and then one frame per step with the action that led to it, exactly the format `reverie record` writes. Frames
the model imagined are filed under the env id `model:<game>`, so they are never taken for real game data. A recorder
made with ``reward=True`` (the real game's) also writes each step's reward and end, as `reverie record` does; a stop
before the game ends the episode leaves its end as 'stopped'.
The GIF (Pillow, optional) is written when the recording stops; the episode file appears only when whole.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.actions import ActionSpec

GIF_SCALE = 4               # GIF pixels per frame pixel (nearest neighbour)
GIF_MAX_FRAMES = 3000       # longer recordings keep their first GIF_MAX_FRAMES frames in the GIF
MODEL_ENV_PREFIX = "model:"


def recording_name(env_id: str, agent: str, index: int) -> str:
    """'<env>_<agent>_<YYYYmmdd-HHMMSS>_<index>' with unsafe characters replaced."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", env_id).strip("-.") or "env"
    return f"{safe}_{agent}_{time.strftime('%Y%m%d-%H%M%S')}_{index:04d}"


class Recorder:
    """One recording at a time: start(first frame), add(frame, action) per step, stop() writes the files."""

    def __init__(self, out_dir: str | Path, *, env_id: str, spec: ActionSpec, frame_shape: tuple[int, int, int],
                 fps: float, agent: str = "human", gif: bool = True, metadata: dict[str, Any] | None = None,
                 env_version: str = "", reward: bool = False):
        self.out_dir = Path(out_dir)
        self.env_id, self.spec, self.frame_shape = env_id, spec, tuple(frame_shape)
        self.env_version = env_version       # the game's version, as `reverie record` writes it
        self.fps, self.agent, self.gif, self.metadata = fps, agent, gif, dict(metadata or {})
        self.reward = reward                 # steps carry the game's reward and end (train.games.base.Game)
        self.count = 0                       # recordings started by this recorder
        self._writer: Any = None
        self._gif_frames: list[np.ndarray] = []
        self.path: Path | None = None

    @property
    def active(self) -> bool:
        return self._writer is not None

    @property
    def frames(self) -> int:
        return self._writer.num_frames if self._writer is not None else 0

    def start(self, frame: np.ndarray, seed: int | None = None) -> Path:
        """Begin a new episode whose reset frame is `frame` (the game's start from `seed`, where known); returns
        the path it will be written to."""
        from train.data.episodes import SUFFIX, EpisodeWriter

        if self.active:
            raise RuntimeError("a recording is already running; stop it first")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = self.out_dir / (recording_name(self.env_id, self.agent, self.count) + SUFFIX)
            self.count += 1
            if not path.exists():
                break
        self._writer = EpisodeWriter(path, env_id=self.env_id, env_version=self.env_version, action_spec=self.spec,
                                     frame_shape=self.frame_shape, fps=self.fps, seed=seed, agent=self.agent,
                                     metadata=self.metadata, reward=self.reward)
        self.path = path
        self._gif_frames = []
        self._add_frame(frame)
        self._writer.append(np.ascontiguousarray(frame))
        return path

    def add(self, frame: np.ndarray, action: np.ndarray, reward: float | None = None, terminated: bool = False,
            truncated: bool = False) -> None:
        """The next frame and the action that led to it, with the step's reward and end where this recorder records
        them (``reward=True``, and only then)."""
        self._writer.append(np.ascontiguousarray(frame), action, reward=reward, terminated=terminated,
                            truncated=truncated)
        self._add_frame(frame)

    def _add_frame(self, frame: np.ndarray) -> None:
        if self.gif and len(self._gif_frames) < GIF_MAX_FRAMES:
            self._gif_frames.append(np.array(frame, np.uint8, copy=True))

    def stop(self) -> list[Path]:
        """Finish the episode file (and the GIF); returns the paths written."""
        if not self.active:
            return []
        writer, self._writer = self._writer, None
        writer.close()
        written = [writer.path]
        if self.gif and self._gif_frames:
            gif_path = write_gif(writer.path.with_suffix(".gif"), self._gif_frames, self.fps)
            if gif_path is not None:
                written.append(gif_path)
        self._gif_frames = []
        return written

    def abort(self) -> None:
        """Drop a running recording without writing it."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self._gif_frames = []


def write_gif(path: Path, frames: list[np.ndarray], fps: float, scale: int = GIF_SCALE) -> Path | None:
    """An animated GIF of frames (H, W, 3) uint8, scaled up by nearest neighbour; None where Pillow is missing."""
    try:
        from PIL import Image
    except ImportError:
        return None
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    tmp = path.with_name(f".{path.name}.tmp")
    duration = max(20, int(round(1000.0 / max(fps, 1e-3))))  # GIF timing is in 10 ms units; browsers clamp < 20
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    tmp.replace(path)
    return path


def model_env_id(game: str) -> str:
    """The env id that episodes of a model's imagination are filed under."""
    return f"{MODEL_ENV_PREFIX}{game}"
