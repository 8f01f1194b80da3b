"""Control: does holding a direction move the avatar as far in the dream as in the real game?

From a real start, each direction is held for N frames (CONTROL_FRAMES; 12 for builtin:gems, 24 px at 2 px a
frame) in the real game, restored from its state afterwards so that one start serves every direction, and in the
dream, on a fork of the session so that the session itself is untouched. The avatar probe (train.games.probes.AVATAR)
finds the avatar in the first and last frame; the displacement is the move of its centroid along the held
direction, in pixels of a 64x64 frame. After a long dream there is no real reference: measure_control(session,
None, ...) reports the dream's move and how often the avatar was missing.

Only games that can save and restore their state (state_dict() / load_state_dict(): builtin:gems, Atari) can be replayed
and controlled in the real game here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from engine.actions import ActionSpec
from engine.errors import ReverieError
from train.games.probes import PROBE_SIZE, Probe

DIRECTIONS: dict[str, tuple[int, int]] = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}
DEFAULT_CONTROL_FRAMES = 12
CONTROL_FRAMES = {"builtin:gems": 12}   # N per game


class ControlError(ReverieError, ValueError):
    """A control measurement that cannot be made: a game without save/restore, an unknown direction, ..."""


class ReplayMismatch(ControlError):
    """Replaying an episode's seed and actions in the real game did not reproduce its frames."""


def control_frames(env_id: str) -> int:
    """How many frames a direction is held for in `env_id`."""
    return CONTROL_FRAMES.get(env_id, DEFAULT_CONTROL_FRAMES)


def displacement(frames: np.ndarray, probe: Probe, direction: tuple[int, int]) -> float:
    """How far the probe's object moved along `direction` from frames[0] to frames[-1], in pixels at 64x64.

    frames: (T, H, W, 3) uint8. NaN if the object is not visible in the first or the last frame. Frames with more
    leading axes, (T, B, H, W, 3), give one displacement per world as a (B,) array.
    """
    frames = np.asarray(frames)
    if frames.ndim < 4 or frames.shape[0] < 1:
        raise ControlError(f"displacement: expected frames (T, H, W, 3) with T >= 1, got shape {frames.shape}")
    h, w = frames.shape[-3:-1]
    move = probe.centroid(frames[-1]) - probe.centroid(frames[0])            # (..., 2) (x, y), NaN if lost
    dx, dy = direction
    d = move[..., 0] * (PROBE_SIZE / w) * dx + move[..., 1] * (PROBE_SIZE / h) * dy
    return float(d) if np.ndim(d) == 0 else d


def _require_state(game: Any, what: str) -> None:
    if not (callable(getattr(game, "state_dict", None)) and callable(getattr(game, "load_state_dict", None))):
        raise ControlError(f"{what}: {getattr(game, 'env_id', type(game).__name__)!r} cannot save and restore its "
                           "state (state_dict()/load_state_dict()); control and replay in the real game work for "
                           "builtin:gems and Atari (ale:) games only")


def replay_real_game(env_id: str, size: int, seed: int, actions: np.ndarray, frames: np.ndarray | None = None) -> Any:
    """The real game reset with `seed` and stepped through actions[1:] (actions[t] led to frame t; actions[0] is the
    null action of the first frame), positioned after the last action.

    With `frames` (T, H, W, 3), every replayed frame is checked against them: a ReplayMismatch names the first one
    that differs (the game is deterministic given its seed, which episodes record in their header).
    """
    from train.games.registry import make_game

    actions = np.asarray(actions, np.float32)
    if actions.ndim != 2 or len(actions) < 1:
        raise ControlError(f"replay of {env_id}: expected actions (T, A) with T >= 1, got shape {actions.shape}")
    if frames is not None:
        frames = np.asarray(frames)
        if frames.shape != (len(actions), size, size, 3):
            raise ControlError(f"replay of {env_id}: expected frames of shape {(len(actions), size, size, 3)} (one "
                               f"per action, {size}x{size}), got {frames.shape}")
    if seed is None:
        raise ControlError(f"replay of {env_id}: the episode records no seed, so the real game cannot be replayed")
    game = make_game(env_id, size=size, seed=int(seed))
    try:
        _require_state(game, f"replay of {env_id}")
        frame = game.reset(int(seed))
        _check_frame(frames, 0, frame, env_id, seed)
        for t in range(1, len(actions)):
            if getattr(game, "done", False):
                raise ReplayMismatch(f"replay of {env_id} seed {seed}: the game ended after frame {t - 1}, but the "
                                     f"episode goes on to frame {len(actions) - 1}")
            frame, _ = game.step(actions[t])
            _check_frame(frames, t, frame, env_id, seed)
    except BaseException:
        game.close()
        raise
    return game


def _check_frame(frames: np.ndarray | None, t: int, frame: np.ndarray, env_id: str, seed: int) -> None:
    if frames is None or np.array_equal(frames[t], frame):
        return
    n = int(np.any(frames[t] != frame, axis=-1).sum())
    raise ReplayMismatch(f"replay of {env_id} seed {seed}: frame {t} differs from the recorded episode ({n} pixels); "
                         "the episode was recorded with another game version, seed or actions")


def hold(spec: ActionSpec, button: str) -> np.ndarray:
    """The action vector with `button` pressed and nothing else."""
    return spec.encode([button])


def _current_frame(game: Any) -> np.ndarray:
    frame = getattr(game, "frame", None)
    if not callable(frame):
        raise ControlError(f"{getattr(game, 'env_id', type(game).__name__)!r} cannot show its current frame without "
                           "stepping (frame()); control in the real game works for builtin:gems and Atari games "
                           "only")
    return np.asarray(frame())


def control_real(game: Any, button: str, n: int) -> np.ndarray:
    """(n + 1, H, W, 3): the game's current frame, then up to n frames holding `button` (fewer if the episode ends).
    The game's state is restored afterwards, so one start serves every direction."""
    _require_state(game, "control in the real game")
    action = hold(game.action_spec, button)
    state = game.state_dict()
    frames = [_current_frame(game)]
    try:
        for _ in range(n):
            if getattr(game, "done", False):
                break
            frame, _ = game.step(action)
            frames.append(np.asarray(frame))
    finally:
        game.load_state_dict(state)
    return np.stack(frames)


def control_dream(session: Any, button: str, n: int) -> np.ndarray:
    """(n + 1, B, H, W, 3), or (n + 1, H, W, 3) for batch 1: the session's current frame, then n frames holding
    `button` on a fork of the session (the session itself is left as it was)."""
    first = session.frame_buf.detach().cpu().numpy().copy()        # (B, H, W, 3)
    action = hold(session.spec, button)
    branch = session.fork()
    try:
        frames = [first] + [np.asarray(branch.step(action)).reshape(first.shape) for _ in range(n)]
    finally:
        branch.close()
    out = np.stack(frames)                                           # (n + 1, B, H, W, 3)
    return out[:, 0] if session.batch == 1 else out


def measure_control(session: Any, game: Any | None, probe: Probe, n: int, buttons: Iterable[str] | None = None) -> dict:
    """Per direction button of the session's spec: {"real_px", "dream_px", "dream_missing", "ratio"}.

    real_px: the avatar's move in the real game (None without a game; NaN if it was not visible at both ends).
    dream_px: mean move over the worlds whose avatar was visible at both ends (NaN if none).
    dream_missing: share of worlds whose avatar was not visible at the end of the dream.
    ratio: dream_px / real_px (None without a usable real move).
    """
    spec_buttons = tuple(session.spec.buttons)
    if buttons is None:
        buttons = [b for b in DIRECTIONS if b in spec_buttons]
    else:
        buttons = list(buttons)
        bad = [b for b in buttons if b not in DIRECTIONS or b not in spec_buttons]
        if bad:
            raise ControlError(f"control: {bad} are not direction buttons of {session.spec.game!r} "
                               f"(directions: {list(DIRECTIONS)}; buttons: {list(spec_buttons)})")
    out: dict[str, dict[str, float | None]] = {}
    for b in buttons:
        direction = DIRECTIONS[b]
        real_px = None if game is None else displacement(control_real(game, b, n), probe, direction)
        dream = control_dream(session, b, n)
        if session.batch == 1:
            dream = dream[:, None]                                     # (n + 1, 1, H, W, 3)
        moves = np.atleast_1d(displacement(dream, probe, direction))   # (B,)
        ok = np.isfinite(moves)
        dream_px = float(moves[ok].mean()) if ok.any() else float("nan")
        usable = real_px is not None and np.isfinite(real_px) and real_px != 0
        out[b] = {"real_px": real_px, "dream_px": dream_px,
                  "dream_missing": float(1.0 - probe.visible(dream[-1]).mean()),
                  "ratio": dream_px / real_px if usable else None}
    return out
