"""What the window plays: the model's imagined world, or the real game itself.

Both kinds share one small interface, gym-like as in DIAMOND: `reset() -> Step`, `step(action) -> Step`, so the
window, the worker and the recorder do not care which one runs. A `ModelWorld` wraps an engine.Session: it
starts from a few frames of the real game (run with the null action) when the checkpoint's game can be made, or
from a mid-grey frame otherwise, and keeps that real game running beside the model with the same actions for the
side-by-side view. A `RealWorld` is the game alone (`--real`, `--human`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.actions import ActionSpec
from engine.errors import ReverieError

START_FRAMES = 8        # real frames (null action) the model's context starts from, at most its context window
BLANK_LEVEL = 128       # the mid-grey start frame when the game cannot be made


class PlayError(ReverieError, RuntimeError):
    """Something the player should be told in one clear line (bad model, no display, no game)."""


@dataclass
class Step:
    """One displayed step: the main frame, the real game's frame beside it (or None), whether an episode ended."""

    frame: np.ndarray                 # (H, W, 3) uint8
    twin: np.ndarray | None = None    # (H, W, 3) uint8, the real game stepped with the same actions
    done: bool = False                # the real game's episode ended (RealWorld only)
    reward: float | None = None       # the real game's reward for this step, and how its episode ended (RealWorld only)
    terminated: bool = False
    truncated: bool = False


def make_real_game(env_id: str, size: int, seed: int) -> Any:
    """The real game by id (train.games), or PlayError saying why it cannot be made."""
    try:
        from train.games.registry import make_game
    except ImportError as e:
        raise PlayError(f"the games package is not available ({e})") from None
    try:
        return make_game(env_id, size=size, seed=seed)
    except Exception as e:  # unknown id, missing ale-py / vizdoom, ... : one line, no traceback
        raise PlayError(f"cannot start the game {env_id!r}: {e}") from None


class RealWorld:
    """The real game behind the world interface; a finished episode is reported as done (the caller resets)."""

    kind = "real"

    def __init__(self, game: Any, seed: int = 0):
        self.game = game
        self.spec: ActionSpec = game.action_spec
        self.env_id: str = game.env_id
        self.env_version: str = str(getattr(game, "env_version", ""))   # written into recorded episodes
        self.fps = float(getattr(game, "fps", 30.0))
        self.seed = seed
        self.resets = 0
        self.episode_seed: int | None = None    # the seed the running episode started from
        self.frame_shape = tuple(game.reset(seed).shape)
        self.backend = "real game"
        self.steps = None
        self.guidance = None

    def reset(self) -> Step:
        self.episode_seed = self.seed + self.resets
        frame = self.game.reset(self.episode_seed)
        self.resets += 1
        return Step(frame)

    def step(self, action: np.ndarray) -> Step:
        frame, done = self.game.step(action)
        g = self.game
        return Step(frame, None, bool(done), float(getattr(g, "reward", 0.0)), bool(getattr(g, "terminated", False)),
                    bool(getattr(g, "truncated", False)))

    @property
    def has_twin(self) -> bool:
        return False

    def save(self, path: Path) -> None:
        raise PlayError("save-games need a model: the real game is played as it is")

    def load(self, path: Path) -> Step:
        raise PlayError("save-games need a model: the real game is played as it is")

    def close(self) -> None:
        self.game.close()


class ModelWorld:
    """An engine.Session started from real frames, with the real game beside it when it can be made."""

    kind = "model"

    def __init__(self, session: Any, env_id: str | None = None, seed: int = 0, start_frames: int = START_FRAMES,
                 backend: str = "torch"):
        self.session = session
        self.spec: ActionSpec = session.spec
        self.frame_shape = tuple(session.frame_shape)
        self.env_id = env_id or self.spec.game
        self.env_version = ""                   # imagined frames come from no version of the game
        self.episode_seed: int | None = None
        self.seed = seed
        self.resets = 0
        self.start_frames = max(1, min(start_frames, session.cfg.context_frames))
        # what actually runs, as the runner names it ("onnxruntime CUDA", "onnxruntime CPU", "torch triton"), which
        # may differ from what was asked for (an onnxruntime without a GPU provider falls back to the CPU)
        self.backend = f"{getattr(session.runner, 'name', backend)} {session.device.type}"
        self.game = self._game()
        self.fps = float(getattr(self.game, "fps", 30.0)) if self.game is not None else 30.0
        self.warning = None if self.game is not None else self._why_no_game

    def _game(self) -> Any:
        """The checkpoint's real game, if it can be made with this model's frame size and action spec."""
        h, w, _ = self.frame_shape
        self._why_no_game = None
        if h != w:
            self._why_no_game = f"the model's frames are {h}x{w}; games make square frames"
            return None
        try:
            game = make_real_game(self.env_id, h, self.seed)
        except PlayError as e:
            self._why_no_game = str(e)
            return None
        if not game.action_spec.compatible(self.spec):
            game.close()
            self._why_no_game = (f"the game {self.env_id!r} has controls {list(game.action_spec.names)}, the model "
                                 f"{list(self.spec.names)}")
            return None
        return game

    @property
    def has_twin(self) -> bool:
        return self.game is not None

    @property
    def steps(self) -> int:
        return self.session.steps

    @steps.setter
    def steps(self, value: int) -> None:
        self.session.steps = value

    @property
    def guidance(self) -> float:
        return float(self.session.guidance)

    @guidance.setter
    def guidance(self, value: float) -> None:
        self.session.guidance = float(value)

    def context(self) -> np.ndarray:
        """Start frames (T, H, W, 3): the real game under the null action, or one mid-grey frame."""
        if self.game is None:
            return np.full((1, *self.frame_shape), BLANK_LEVEL, np.uint8)
        null = self.spec.null()
        frames = [self.game.reset(self.seed + self.resets)]
        for _ in range(self.start_frames - 1):
            frame, done = self.game.step(null)
            if done:
                break
            frames.append(frame)
        return np.stack(frames)  # (T, H, W, 3)

    def reset(self) -> Step:
        """Prime the model from a fresh start of the real game (a new seed each time)."""
        frames = self.context()
        self.resets += 1
        frame = self.session.reset(frames).copy()  # the session reuses its output buffer; the window reads this one
        return Step(frame, frames[-1] if self.game is not None else None)

    def step(self, action: np.ndarray) -> Step:
        # the frame comes back before the backbone pass that appends it to the context: finish() runs that pass
        # once the frame is on its way to the screen
        frame = self.session.step(action, defer_update=True).copy()  # (H, W, 3); the next step reuses the buffer
        twin = None
        if self.game is not None:
            if getattr(self.game, "done", False):
                self.game.reset(None)
            twin, _ = self.game.step(action)
        return Step(frame, twin)

    def finish(self) -> None:
        """The deferred part of the last step (the model's backbone pass)."""
        self.session.finish()

    def save(self, path: Path) -> None:
        """The model's world to `path` (session save-game); the real game beside it to `path`.game.json if it can."""
        self.session.save(path)
        state_dict = getattr(self.game, "state_dict", None)
        if callable(state_dict):
            from engine.checkpoint import atomic_write_text

            atomic_write_text(_twin_path(path), json.dumps(state_dict()))

    def load(self, path: Path) -> Step:
        """Restore a save-game written by save(); the real game too where it was saved."""
        if not Path(path).exists():
            raise PlayError(f"no save-game at {path} (press F5 to save one first)")
        self.session.load(path)
        twin = None
        twin_path = _twin_path(path)
        if self.game is not None and twin_path.exists() and callable(getattr(self.game, "load_state_dict", None)):
            try:
                self.game.load_state_dict(json.loads(twin_path.read_text()))
                twin = self.game.frame()
            except (ValueError, KeyError, TypeError, OSError):
                twin = None  # the caller says the real game beside the model was not restored
        frame = self.session.frame_buf[0].cpu().numpy().copy()   # the frame shown when the world was saved
        return Step(frame, twin)

    def close(self) -> None:
        if self.game is not None:
            self.game.close()
        self.session.close()


def _twin_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".game.json")
