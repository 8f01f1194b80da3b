"""Long rollouts for `reverie eval`: a dream beside the real game under the same actions, for as long as a person
plays, and the time buckets its metrics are reported in.

A rollout starts from `context` real frames of a held-out episode. The dream then gets the episode's recorded actions
while they last and, past the end of the recording, actions from an agent: the one that recorded the episode where
train.games knows it, else the random agent. The agent acts on the real game's frames (the scripted agent reads the
real game's state), so the real game and the dream get the same actions.

The real reference: the recording while it lasts. Where the game can be replayed from the episode's seed
(train.evaluation.control.replay_real_game: builtin:gems, Atari), the real game also runs alongside for the whole
horizon with its time limit lifted, so there are real frames to compare with long after the recording ends; a game over
(no lives left) ends the real reference there, and the dream goes on under the random agent. Where the game cannot be
replayed (Doom, imported video), there is no real frame past the recording.

All rollouts have the same length, the horizon, and run `batch` worlds to a Session; the `real_ok` mask says where a
real frame exists. Where the real game runs alongside and can save its state, each step also records which button
sets would have done the same thing there (led the real game to the same next frame: pushing into a wall looks like
standing still), so that an action judge can be scored by what an action does, not by which keys made it.
Every metric is then reported per time bucket of horizon steps (bucket_edges).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import ReverieError
from engine.session import Session
from train.data.windows import EpisodeSource

BUCKETS = ((1, 16), (17, 100), (101, 250), (251, 500), (501, 1000))  # horizon steps; past 1000 they double
NO_TIME_LIMIT = sys.maxsize   # the replayed real game's time limit: only a game over ends it
MAX_EFFECT_BUTTONS = 8      # Track.effects tries every button set: 2^buttons real steps per frame


def bucket_edges(horizon: int) -> list[tuple[int, int]]:
    """(first, last) horizon step of each time bucket: 1-16, 17-100, 101-250, 251-500, 501-1000, then doubling
    (1001-2000, 2001-4000, ...). The last bucket is cut at the horizon; buckets past it are left out."""
    edges, last = list(BUCKETS), BUCKETS[-1][1]
    while last < horizon:
        edges.append((last + 1, 2 * last))
        last *= 2
    return [(a, min(b, horizon)) for a, b in edges if a <= horizon]


def bucket_slices(horizon: int) -> list[slice]:
    """The 0-based horizon-step slice of each bucket of bucket_edges(horizon)."""
    return [slice(a - 1, b) for a, b in bucket_edges(horizon)]


def masked_mean(values: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """Mean of `values` where `mask` holds (everywhere without one); None where nothing is left (never NaN)."""
    v = values if mask is None else values[mask]
    return float(v.mean()) if v.size else None


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """At most k indices spread evenly over range(n) (all of them when k >= n)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64)) if n > 0 else np.zeros(0, np.int64)


def episode_windows(n: int, need: int, per_episode: int) -> list[int]:
    """Starts of up to `per_episode` evenly spaced, non-overlapping windows of `need` frames in an episode of n."""
    k = min(per_episode, n // need)
    stride = (n - need) // max(1, k - 1) if k > 1 else 0
    return [i * stride for i in range(k)]


def windows(src: Any, need: int, per_episode: int, max_episodes: int) -> list[tuple[int, int]]:
    """(episode, start) of evenly spaced, non-overlapping windows of `need` frames."""
    lengths = src.lengths[:max_episodes] if max_episodes else src.lengths
    return [(e, s) for e, n in enumerate(lengths) for s in episode_windows(n, need, per_episode)]


def plan_starts(src: Any, context: int, horizon: int, per_episode: int, max_episodes: int) -> list[tuple[int, int]]:
    """(episode, first context frame) of every rollout: the evenly spaced windows of `windows` where an episode holds
    context + horizon frames (a short eval, as it always was); else one rollout from the episode's first frame, where
    the recording lasts longest (an agent plays the rest). Episodes of `context` frames or fewer give none."""
    need, out = context + horizon, []
    for e, n in enumerate(src.lengths[:max_episodes] if max_episodes else src.lengths):
        if n >= need:
            out += [(e, s) for s in episode_windows(n, need, per_episode)]
        elif n > context:
            out.append((e, 0))
    return out


# ---- the real side of a rollout ----------------------------------------------------------------------------------
def replay_game(env_id: str, seed: int | None, frames: np.ndarray, actions: np.ndarray,
                unreplayable: dict[str, str] | None = None) -> tuple[Any | None, str]:
    """The real game at the last of `frames` (replayed from the episode's seed through `actions`, checked against
    `frames`), with its time limit lifted, or None and why not. `unreplayable` (env id -> why) remembers games that
    cannot be replayed at all, so that each is made (an emulator, for Atari) once."""
    from train.evaluation.control import ReplayMismatch, replay_real_game

    unreplayable = {} if unreplayable is None else unreplayable
    if seed is None:
        return None, "the episode file records no seed"
    if env_id in unreplayable:
        return None, unreplayable[env_id]
    try:
        game = replay_real_game(env_id, int(frames.shape[1]), int(seed), actions, frames)
    except ReplayMismatch as e:                                # this episode only
        return None, str(e)
    except (ReverieError, ImportError, ValueError) as e:       # a game that cannot be replayed here at all
        unreplayable[env_id] = str(e)
        return None, str(e)
    config = getattr(game, "config", None)
    if dataclasses.is_dataclass(config) and hasattr(config, "max_steps"):   # a time limit is not a game over
        game.config = dataclasses.replace(config, max_steps=NO_TIME_LIMIT)
    return game, "replayed"


def fallback_agent(spec: Any, actions: np.ndarray, seed: int) -> Any:
    """The random agent, pressing one button at a time where the recording never pressed two (Atari's discrete
    actions), several otherwise."""
    from train.games.agents import RandomAgent

    nb = len(spec.buttons)
    exclusive = bool(nb) and bool((actions[:, :nb] > 0.5).sum(axis=1).max(initial=0) <= 1)
    return RandomAgent(spec, seed, exclusive=exclusive)


@dataclass
class Track:
    """The real side of one rollout: the recording while it lasts, the real game alongside (if it can be replayed),
    and the agent that chooses the actions once the recording ends."""

    frames: np.ndarray            # (T, H, W, 3) the episode's recorded frames
    actions: np.ndarray           # (T, A) its actions, led-to convention
    index: int                    # the episode frame the next action leads to
    game: Any | None              # the real game at frame index - 1; None: none, or game over
    agent: Any                    # plays past the recording, on the real game's frames
    fallback: Any                 # the random agent: past the recording with no real game
    last_real: np.ndarray = field(repr=False, default=None)  # the newest real frame

    def next_action(self, dream_frame: np.ndarray) -> tuple[np.ndarray, bool]:
        """The action for the next frame and whether it is the recording's."""
        if self.index < len(self.actions):
            return self.actions[self.index], True
        if self.game is not None:
            return np.asarray(self.agent.act(self.last_real), np.float32), False
        return np.asarray(self.fallback.act(dream_frame), np.float32), False

    def effects(self, action: np.ndarray) -> np.ndarray | None:
        """Which button sets do the same thing from here: (2^buttons,) int, entry k the class of button set k (bit i:
        button i pressed; the axes as in `action`), equal where the real game's next frame is the same (into a wall,
        "right" does what nothing pressed does; up + down cancel). None where it cannot be told: no real game, one
        that cannot save and restore its state, or more than MAX_EFFECT_BUTTONS buttons. The game is left as it
        was."""
        game = self.game
        if game is None or getattr(game, "done", False) or not (
                callable(getattr(game, "state_dict", None)) and callable(getattr(game, "load_state_dict", None))):
            return None
        nb = len(game.action_spec.buttons)
        if not 0 < nb <= MAX_EFFECT_BUTTONS:
            return None
        state, seen = game.state_dict(), {}
        classes = np.zeros(2 ** nb, np.int64)
        try:
            for k in range(2 ** nb):
                other = np.asarray(action, np.float32).copy()
                other[:nb] = [(k >> i) & 1 for i in range(nb)]
                game.load_state_dict(state)
                frame, _ = game.step(other)
                classes[k] = seen.setdefault(np.ascontiguousarray(frame).tobytes(), len(seen))
        finally:
            game.load_state_dict(state)
        return classes

    def advance(self, action: np.ndarray) -> np.ndarray | None:
        """Step the real side with `action`: the real frame it leads to, or None where there is none."""
        i, frame = self.index, None
        self.index += 1
        if self.game is not None:
            frame, done = self.game.step(action)
            if done:                      # game over: no real frame after this one
                self.close()
        if i < len(self.frames):
            frame = self.frames[i]        # the recording, where it lasts, is the reference
        if frame is not None:
            self.last_real = frame
        return frame

    def close(self) -> None:
        if self.game is not None:
            self.game.close()
            self.game = None


@dataclass
class Rollouts:
    """R rollouts of H frames: the dream, the real reference where there is one, and the actions both got."""

    starts: list[tuple[int, int]]     # (episode, first context frame) of each rollout
    seeds: list[int]                  # each rollout's noise seed
    dream: np.ndarray                 # (R, H, h, w, 3) uint8
    real: np.ndarray                  # (R, H, h, w, 3) uint8, zero where real_ok is False
    real_ok: np.ndarray               # (R, H) bool: a real frame exists
    actions: np.ndarray               # (R, H, A) float32: the action that led to each frame
    recorded: np.ndarray              # (R, H) bool: that action is the recording's
    last_context: np.ndarray          # (R, h, w, 3) the last real context frame
    replay_notes: dict[str, int]      # how the real reference was made: "replayed" or why not -> rollouts
    effects: np.ndarray | None = None        # (R, H, 2^buttons) int: Track.effects of each step, -1 where unknown

    @property
    def horizon(self) -> int:
        return self.dream.shape[1]


@dataclass
class EpisodeInfo:
    """What a rollout needs to know about its episode beyond frames and actions."""

    env_id: str
    seed: int | None
    agent: str


def episode_info(src: EpisodeSource, e: int) -> EpisodeInfo:
    from train.data.episodes import Episode

    with Episode(src.ds.episodes[e].path) as ep:
        return EpisodeInfo(ep.env_id, ep.header.get("seed"), str(ep.header.get("agent") or ""))


def make_track(src: EpisodeSource, info: EpisodeInfo, e: int, start: int, context: int, seed: int,
               unreplayable: dict[str, str]) -> tuple[Track, str]:
    """The real side of a rollout from frames start .. start + context - 1 of episode e; and how its game was made."""
    from train.games.registry import make_agent

    frames, actions = src.episode_frames(e), src.actions[e]
    game, note = replay_game(info.env_id, info.seed, frames[:start + context], actions[:start + context],
                             unreplayable)
    fallback = fallback_agent(src.spec, actions, seed)
    agent = fallback
    if game is not None and info.agent in ("scripted", "random"):
        try:
            agent = make_agent(info.agent, game, seed)
        except ValueError:                 # an agent that cannot play this game: the random one plays
            pass
    track = Track(frames, actions, start + context, game, agent, fallback, frames[start + context - 1])
    return track, note


def run_rollouts(make_session: Callable[[int], Session], src: EpisodeSource, starts: Sequence[tuple[int, int]],
                 context: int, horizon: int, seeds: Sequence[int], batch: int,
                 at_end: Callable[[Session, list[int]], None] | None = None, progress: bool = True) -> Rollouts:
    """Roll out every start for `horizon` frames, `batch` rollouts to a session made by make_session(b);
    at_end(session, rollouts) sees each session after the last frame of its rollouts."""
    from tqdm import tqdm

    R, (h, w, _), A = len(starts), src.frame_shape, src.spec.size
    dream = np.zeros((R, horizon, h, w, 3), np.uint8)
    real = np.zeros_like(dream)
    real_ok = np.zeros((R, horizon), bool)
    acts = np.zeros((R, horizon, A), np.float32)
    recorded = np.zeros((R, horizon), bool)
    nb = len(src.spec.buttons)
    effects = np.full((R, horizon, 2 ** nb), -1, np.int64) if 0 < nb <= MAX_EFFECT_BUTTONS else None
    last_ctx = np.zeros((R, h, w, 3), np.uint8)
    infos = {e: episode_info(src, e) for e in sorted({e for e, _ in starts})}
    notes: dict[str, int] = {}
    unreplayable: dict[str, str] = {}
    with tqdm(total=R * horizon, unit="frame", desc="eval rollouts", disable=not progress, leave=False) as bar:
        for lo in range(0, R, batch):
            idx = list(range(lo, min(R, lo + batch)))
            sess = make_session(len(idx))
            fr = np.stack([src.episode_frames(starts[r][0])[starts[r][1]:starts[r][1] + context] for r in idx])
            ac = np.stack([src.actions[starts[r][0]][starts[r][1]:starts[r][1] + context] for r in idx])
            sess.reset(fr, ac, seed=[seeds[r] for r in idx])     # (B, context, h, w, 3): a rollout's noise: its seed
            last_ctx[idx] = fr[:, -1]
            tracks = []
            for r in idx:
                e, s = starts[r]
                track, note = make_track(src, infos[e], e, s, context, seeds[r], unreplayable)
                tracks.append(track)
                notes[note] = notes.get(note, 0) + 1
            prev = fr[:, -1]                                                         # (B, h, w, 3)
            for t in range(horizon):
                chosen = [tr.next_action(prev[j]) for j, tr in enumerate(tracks)]
                a = np.stack([c[0] for c in chosen]).astype(np.float32)                # (B, A)
                prev = sess.step(a).reshape(len(idx), h, w, 3)
                dream[idx, t], acts[idx, t] = prev, a
                recorded[idx, t] = [c[1] for c in chosen]
                for j, (r, tr) in enumerate(zip(idx, tracks)):
                    eff = None if effects is None else tr.effects(a[j])
                    if eff is not None:
                        effects[r, t] = eff
                    frame = tr.advance(a[j])
                    if frame is not None:
                        real[r, t], real_ok[r, t] = frame, True
                bar.update(len(idx))
            for tr in tracks:
                tr.close()
            if at_end is not None:
                at_end(sess, idx)
    return Rollouts(list(starts), list(seeds), dream, real, real_ok, acts, recorded, last_ctx, notes, effects)
