"""The built-in game `builtin:gems`: a tiny, clean, mostly predictable arcade world in pure numpy.

It is the data source of the default world model, so it is drawn to be easy to learn with an f=8 autoencoder
(64x64 frame -> 8x8 latent): flat colours, no texture or anti-aliasing, a dark background, integer motion.
The player (a 6x6 cyan square) collects 4x4 yellow gems (score +1; a new gem appears at a random place) and
avoids 5x5 enemies that move diagonally at 1 px per frame and bounce off the walls, so their motion follows
from the last two frames. A hit costs a life and respawns the player at the centre, flashing while it cannot be
hit again. The episode ends when the lives are gone (terminated) or after `max_steps` frames (truncated). A step's
reward is the score it added: +1 for a gem, 0 otherwise.

Everything is deterministic given the seed passed to `reset` and the actions; the only randomness (gem and
enemy placement) comes from a numpy Generator seeded at reset. The world is always simulated and drawn at
64x64; other sizes are an integer upscale (multiples of 64) or a nearest-neighbour resize of that frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine.actions import ActionSpec, ActionSpecError

ENV_ID = "builtin:gems"
ENV_VERSION = "1"
ACTION_SPEC = ActionSpec(game=ENV_ID, buttons=("up", "down", "left", "right"), version=1)
WORLD = 64                      # the world is simulated and drawn at WORLD x WORLD pixels
HUD_HEIGHT = 8                  # rows 0..7 are the score bar; the play area is below it

BACKGROUND = (20, 24, 40)
HUD_BACKGROUND = (44, 50, 84)
HUD_TEXT = (235, 235, 245)
LIFE_PIP = (255, 120, 160)
PLAYER = (0, 220, 235)
PLAYER_FLASH = (240, 250, 255)
GEM = (255, 208, 40)
ENEMY_COLOURS = ((235, 60, 60), (220, 70, 220), (255, 130, 40))

# 3x5 pixel digits, one string of three columns per row.
_FONT_ROWS = {
    0: ("111", "101", "101", "101", "111"), 1: ("010", "110", "010", "010", "111"),
    2: ("111", "001", "111", "100", "111"), 3: ("111", "001", "111", "001", "111"),
    4: ("101", "101", "111", "001", "001"), 5: ("111", "100", "111", "001", "111"),
    6: ("111", "100", "111", "101", "111"), 7: ("111", "001", "001", "001", "001"),
    8: ("111", "101", "111", "101", "111"), 9: ("111", "101", "111", "001", "111"),
}
DIGIT_MASKS = {d: np.array([[c == "1" for c in row] for row in rows]) for d, rows in _FONT_ROWS.items()}  # (5, 3)
# Each digit drawn on the HUD colour, ready to paste with one slice assignment.
DIGIT_SPRITES = {d: np.where(m[:, :, None], np.array(HUD_TEXT, np.uint8), np.array(HUD_BACKGROUND, np.uint8))
                 for d, m in DIGIT_MASKS.items()}  # (5, 3, 3)


@dataclass
class GemsConfig:
    """Rules and sizes of builtin:gems; changing any default changes the game, so bump ENV_VERSION too."""

    player_size: int = 6
    player_speed: int = 2         # px per frame per pressed direction
    gem_size: int = 4
    enemy_size: int = 5
    n_gems: int = 3
    n_enemies: int = 2
    lives: int = 3
    max_steps: int = 1000
    invulnerable_frames: int = 32  # after a hit the player flashes and cannot be hit for this many frames
    flash_period: int = 4          # frames per flash colour while invulnerable
    enemy_spawn_clearance: int = 16  # enemies start at least this far (Chebyshev, px) from the player
    max_score_digits: int = 4
    max_life_pips: int = 8


def _overlap(ax: int, ay: int, asz: int, bx: int, by: int, bsz: int) -> bool:
    """True if two axis-aligned squares (top-left corner and side) share at least one pixel."""
    return ax < bx + bsz and bx < ax + asz and ay < by + bsz and by < ay + asz


class GemsGame:
    """builtin:gems behind the Game protocol (train.games.base): reset(seed) -> frame, step(action) -> (frame, done)."""

    env_id = ENV_ID
    env_version = ENV_VERSION
    action_spec = ACTION_SPEC
    fps = 30.0

    def __init__(self, size: int = WORLD, seed: int | None = None, config: GemsConfig | None = None, **kw: Any):
        if kw:
            unknown = sorted(set(kw) - set(asdict(GemsConfig())))
            if unknown:
                raise TypeError(f"{ENV_ID}: unknown options {unknown}; known: {sorted(asdict(GemsConfig()))}")
            config = GemsConfig(**{**asdict(config or GemsConfig()), **kw})
        self.config = config or GemsConfig()
        if not isinstance(size, int) or size < 8:
            raise ValueError(f"{ENV_ID}: size must be an int >= 8, got {size!r}")
        self.size = size
        self._episode_seeds = np.random.default_rng(seed)  # seeds the episodes that reset(None) starts
        self._canvas = np.empty((WORLD, WORLD, 3), np.uint8)  # (64, 64, 3), redrawn every frame
        self._backdrop = np.empty_like(self._canvas)          # HUD bar over the play-area background
        self._backdrop[:] = BACKGROUND
        self._backdrop[:HUD_HEIGHT] = HUD_BACKGROUND
        self._colours = {name: np.array(rgb, np.uint8) for name, rgb in
                         (("pip", LIFE_PIP), ("player", PLAYER), ("flash", PLAYER_FLASH), ("gem", GEM))}
        self._enemy_colours = [np.array(rgb, np.uint8) for rgb in ENEMY_COLOURS]
        if size % WORLD == 0:
            self._scale, self._index = size // WORLD, None
        else:  # nearest-neighbour source row/column of each output pixel
            self._scale, self._index = 0, (np.arange(size) * WORLD) // size
        self.rng = np.random.default_rng(0)
        self._reset_state()

    # ---- state -------------------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        c = self.config
        self.t = 0
        self.score = 0
        self.lives = c.lives
        self.invulnerable = 0
        self.done = False
        self.reward, self.terminated, self.truncated = 0.0, False, False   # of the last step
        self.player = list(self.spawn_point())
        self.gems: list[list[int]] = []
        self.enemies: list[list[int]] = []   # [x, y, vx, vy]

    def spawn_point(self) -> tuple[int, int]:
        """Top-left corner of the player at the centre of the play area."""
        s = self.config.player_size
        return (WORLD - s) // 2, HUD_HEIGHT + (WORLD - HUD_HEIGHT - s) // 2

    def _random_spot(self, side: int) -> tuple[int, int]:
        """A uniformly random top-left corner for a square of `side` px inside the play area."""
        x = int(self.rng.integers(0, WORLD - side + 1))
        y = int(self.rng.integers(HUD_HEIGHT, WORLD - side + 1))
        return x, y

    def _place_gem(self) -> list[int]:
        """A new gem position that overlaps neither the player nor another gem."""
        c = self.config
        px, py = self.player
        while True:
            x, y = self._random_spot(c.gem_size)
            if _overlap(x, y, c.gem_size, px, py, c.player_size):
                continue
            if any(_overlap(x, y, c.gem_size, gx, gy, c.gem_size) for gx, gy in self.gems):
                continue
            return [x, y]

    def _place_enemy(self) -> list[int]:
        """A new enemy away from the player, moving diagonally at 1 px per frame in a random direction."""
        c = self.config
        px, py = self.player
        while True:
            x, y = self._random_spot(c.enemy_size)
            if max(abs(x - px), abs(y - py)) >= c.enemy_spawn_clearance:
                vx, vy = (int(v) * 2 - 1 for v in self.rng.integers(0, 2, size=2))
                return [x, y, vx, vy]

    # ---- Game protocol -------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode; the same seed always gives the same world."""
        if seed is None:
            seed = int(self._episode_seeds.integers(2**31))
        self.rng = np.random.default_rng(seed)
        self._reset_state()
        for _ in range(self.config.n_gems):
            self.gems.append(self._place_gem())
        for _ in range(self.config.n_enemies):
            self.enemies.append(self._place_enemy())
        return self._frame()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """Advance one frame with an action vector (up, down, left, right); returns (frame, done)."""
        a = ACTION_SPEC.check(action)
        if a.ndim != 1:
            raise ActionSpecError(f"action: expected one action of shape ({ACTION_SPEC.size},) for {ENV_ID!r}, "
                                  f"got shape {tuple(a.shape)}")
        if self.done:
            raise RuntimeError(f"{ENV_ID}: step() after the episode ended; call reset() first")
        c = self.config
        score = self.score
        up, down, left, right = (int(v) for v in a)
        px = min(max(self.player[0] + (right - left) * c.player_speed, 0), WORLD - c.player_size)
        py = min(max(self.player[1] + (down - up) * c.player_speed, HUD_HEIGHT), WORLD - c.player_size)
        self.player = [px, py]
        self._move_enemies()
        for gem in self.gems:
            if _overlap(px, py, c.player_size, gem[0], gem[1], c.gem_size):
                self.score += 1
                self.gems.remove(gem)
                self.gems.append(self._place_gem())
                break  # at most one gem per frame keeps the rule simple to learn
        if self.invulnerable > 0:
            self.invulnerable -= 1
        elif any(_overlap(px, py, c.player_size, e[0], e[1], c.enemy_size) for e in self.enemies):
            self.lives -= 1
            self.player = list(self.spawn_point())
            self.invulnerable = c.invulnerable_frames
        self.t += 1
        self.reward = float(self.score - score)
        self.terminated = self.lives <= 0
        self.truncated = not self.terminated and self.t >= c.max_steps
        self.done = self.terminated or self.truncated
        return self._frame(), self.done

    def _move_enemies(self) -> None:
        """Move each enemy by its velocity, reflecting the velocity where it would leave the play area."""
        hi = WORLD - self.config.enemy_size
        for e in self.enemies:
            if not 0 <= e[0] + e[2] <= hi:
                e[2] = -e[2]
            if not HUD_HEIGHT <= e[1] + e[3] <= hi:
                e[3] = -e[3]
            e[0] += e[2]
            e[1] += e[3]

    def close(self) -> None:
        pass

    # ---- rendering -----------------------------------------------------------------------------------------
    def render_world(self) -> np.ndarray:
        """Draw the current state into the 64x64 canvas and return it (a view, overwritten next frame)."""
        c, buf, colour = self.config, self._canvas, self._colours
        np.copyto(buf, self._backdrop)
        digits = str(min(self.score, 10**c.max_score_digits - 1))
        for i, ch in enumerate(digits):
            x = 2 + 4 * i
            buf[2:7, x:x + 3] = DIGIT_SPRITES[int(ch)]
        for i in range(min(max(self.lives, 0), c.max_life_pips)):
            x = WORLD - 5 - 5 * i
            buf[2:5, x:x + 3] = colour["pip"]
        g = c.gem_size
        for x, y in self.gems:
            buf[y:y + g, x:x + g] = colour["gem"]
        s = c.enemy_size
        for i, (x, y, _, _) in enumerate(self.enemies):
            buf[y:y + s, x:x + s] = self._enemy_colours[i % len(self._enemy_colours)]
        x, y = self.player
        flash = self.invulnerable > 0 and (self.invulnerable // c.flash_period) % 2 == 1
        buf[y:y + c.player_size, x:x + c.player_size] = colour["flash"] if flash else colour["player"]
        return buf

    def _frame(self) -> np.ndarray:
        """The current frame at the requested size, as a new array."""
        buf = self.render_world()
        if self._index is not None:
            return buf[self._index[:, None], self._index[None, :]]  # (size, size, 3)
        if self._scale == 1:
            return buf.copy()
        k = self._scale
        out = np.broadcast_to(buf[:, None, :, None, :], (WORLD, k, WORLD, k, 3))
        return out.reshape(self.size, self.size, 3)  # reshape of a broadcast view copies

    # ---- save / load ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole world as JSON-able data (RNG included), so a game can be saved and resumed exactly."""
        return {"env_id": ENV_ID, "env_version": ENV_VERSION, "config": asdict(self.config), "t": self.t,
                "score": self.score, "lives": self.lives, "invulnerable": self.invulnerable, "done": self.done,
                "player": list(self.player), "gems": [list(g) for g in self.gems],
                "enemies": [list(e) for e in self.enemies], "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a world saved by state_dict(); a state of another game or version raises ValueError."""
        if state.get("env_id") != ENV_ID or state.get("env_version") != ENV_VERSION:
            raise ValueError(f"saved state is for {state.get('env_id')!r} version {state.get('env_version')!r}, "
                             f"this game is {ENV_ID!r} version {ENV_VERSION!r}")
        self.config = GemsConfig(**state["config"])
        self.t, self.score, self.lives = int(state["t"]), int(state["score"]), int(state["lives"])
        self.invulnerable, self.done = int(state["invulnerable"]), bool(state["done"])
        self.reward, self.terminated = 0.0, self.done and self.lives <= 0
        self.truncated = self.done and not self.terminated
        self.player = [int(v) for v in state["player"]]
        self.gems = [[int(v) for v in g] for g in state["gems"]]
        self.enemies = [[int(v) for v in e] for e in state["enemies"]]
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]

    def frame(self) -> np.ndarray:
        """The current frame without stepping (e.g. after load_state_dict)."""
        return self._frame()
