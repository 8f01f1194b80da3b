"""Agents that play games to record training data: a random agent for any game, scripted ones for builtin:gems and
Atari Breakout.

A world model learns controls only from data where actions have visible, lasting effects, so no agent changes its
action every frame: the random agent holds each choice for a few frames, the gems agent follows modes (chase a gem,
wander, flee, idle, zig-zag) that last many frames, and the Breakout agent tracks the ball so that the data shows
what a player sees (the ball in flight, bricks breaking, the score and lives changing), with random detours and
misses. All are deterministic given the seed passed to `reset`. Agents implement train.games.base.Agent:
reset(seed), act(frame) -> action vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.actions import ActionSpec
from train.games.builtin import HUD_HEIGHT, WORLD, GemsGame

# The 8 directions and no-op as (dx, dy) with y pointing down.
DIRECTIONS = tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0))
NOOP = (0, 0)


class RandomAgent:
    """Uniformly random buttons and axes, each choice held for a random number of frames.

    With `exclusive=True` at most one button is pressed at a time (for games whose buttons are the choices of one
    discrete action, such as the Atari and Gymnasium adapters); otherwise each button is pressed with probability
    `min(0.5, 2 / n_buttons)`, so large button sets are not all held down at once.
    """

    def __init__(self, spec: ActionSpec, seed: int | None = None, exclusive: bool = False,
                 hold_min: int = 2, hold_max: int = 10):
        if not 1 <= hold_min <= hold_max:
            raise ValueError(f"RandomAgent: need 1 <= hold_min <= hold_max, got {hold_min}, {hold_max}")
        self.spec, self.exclusive = spec, exclusive
        self.hold_min, self.hold_max = hold_min, hold_max
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self._action = self.spec.null()
        self._left = 0

    def _sample(self) -> np.ndarray:
        nb, action = len(self.spec.buttons), self.spec.null()
        if nb and self.exclusive:
            choice = int(self.rng.integers(nb + 1))  # nb means nothing pressed
            if choice < nb:
                action[choice] = 1.0
        elif nb:
            action[:nb] = self.rng.random(nb) < min(0.5, 2.0 / nb)
        action[nb:] = self.rng.uniform(-1.0, 1.0, self.spec.size - nb)
        return action

    def act(self, frame: np.ndarray) -> np.ndarray:
        if self._left <= 0:
            self._action = self._sample()
            self._left = int(self.rng.integers(self.hold_min, self.hold_max + 1))
        self._left -= 1
        return self._action.copy()


@dataclass
class ScriptedConfig:
    """How often each mode is chosen and how long it lasts (frames)."""

    weights: tuple[float, ...] = (0.40, 0.25, 0.10, 0.10, 0.15)   # chase, wander, flee, idle, zigzag
    chase_frames: tuple[int, int] = (40, 160)
    wander_frames: tuple[int, int] = (10, 60)
    flee_frames: tuple[int, int] = (10, 40)
    idle_frames: tuple[int, int] = (5, 30)
    zigzag_frames: tuple[int, int] = (30, 80)
    zigzag_leg: tuple[int, int] = (6, 14)    # frames per leg of a zig-zag
    deadband: int = 1                        # chase stops moving along an axis within this many px of the gem
    danger_radius: int = 12                  # an enemy centre this close (Chebyshev, px) is a threat ...
    dodge_prob: float = 0.8                  # ... that makes the agent flee with this probability, once per threat
    flee_horizon: int = 8                    # frames of enemy motion that fleeing looks ahead
    flee_replan: int = 6                     # fleeing re-chooses its direction every this many frames


MODES = ("chase", "wander", "flee", "idle", "zigzag")


class ScriptedAgent:
    """Plays builtin:gems with persistent, varied behaviour by reading the game's state (not its pixels)."""

    def __init__(self, game: GemsGame, seed: int | None = None, config: ScriptedConfig | None = None):
        if not isinstance(game, GemsGame):
            raise TypeError(f"ScriptedAgent plays builtin:gems only, got {getattr(game, 'env_id', type(game))!r}; "
                            "use the 'random' agent for other games")
        self.game, self.config = game, config or ScriptedConfig()
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.mode, self._left = "idle", 0
        self._direction, self._legs = NOOP, (NOOP, NOOP)
        self._leg_frames, self._t = 1, 0
        self._threatened = False

    def _frames(self, bounds: tuple[int, int]) -> int:
        return int(self.rng.integers(bounds[0], bounds[1] + 1))

    def _new_mode(self) -> None:
        """Pick the next mode and its duration; wander and zig-zag fix their directions now."""
        c = self.config
        p = np.asarray(c.weights, np.float64)
        self.mode = MODES[int(self.rng.choice(len(MODES), p=p / p.sum()))]
        self._t = 0
        if self.mode == "chase":
            self._left = self._frames(c.chase_frames)
        elif self.mode == "wander":
            self._left = self._frames(c.wander_frames)
            self._direction = DIRECTIONS[int(self.rng.integers(len(DIRECTIONS)))]
        elif self.mode == "flee":
            self._left = self._frames(c.flee_frames)
        elif self.mode == "idle":
            self._left = self._frames(c.idle_frames)
        else:  # zigzag: alternate between two diagonals that share a heading, e.g. up-right / down-right
            self._left = self._frames(c.zigzag_frames)
            self._leg_frames = self._frames(c.zigzag_leg)
            s = 1 if self.rng.random() < 0.5 else -1
            if self.rng.random() < 0.5:
                self._legs = ((s, -1), (s, 1))       # heading left or right
            else:
                self._legs = ((-1, s), (1, s))       # heading up or down

    def _centre(self, x: int, y: int, side: int) -> tuple[float, float]:
        return x + side / 2, y + side / 2

    def _chase(self) -> tuple[int, int]:
        g, c = self.game, self.game.config
        px, py = self._centre(*g.player, c.player_size)
        if not g.gems:
            return NOOP
        gx, gy = min((self._centre(x, y, c.gem_size) for x, y in g.gems),
                     key=lambda q: abs(q[0] - px) + abs(q[1] - py))
        band = self.config.deadband
        dx = 0 if abs(gx - px) <= band else (1 if gx > px else -1)
        dy = 0 if abs(gy - py) <= band else (1 if gy > py else -1)
        return dx, dy

    def _nearest_enemy(self) -> tuple[float, float, float] | None:
        """Centre of the nearest enemy and its Chebyshev distance to the player's centre."""
        g, c = self.game, self.game.config
        px, py = self._centre(*g.player, c.player_size)
        best = None
        for e in g.enemies:
            ex, ey = self._centre(e[0], e[1], c.enemy_size)
            d = max(abs(ex - px), abs(ey - py))
            if best is None or d < best[2]:
                best = (ex, ey, d)
        return best

    def _enemy_paths(self, horizon: int) -> list[list[tuple[int, int]]]:
        """Each enemy's top-left corner over the next `horizon` frames, bouncing as the game does."""
        g = self.game
        hi, lo = WORLD - g.config.enemy_size, HUD_HEIGHT
        paths = []
        for x, y, vx, vy in g.enemies:
            path = []
            for _ in range(horizon):
                vx = vx if 0 <= x + vx <= hi else -vx
                vy = vy if lo <= y + vy <= hi else -vy
                x, y = x + vx, y + vy
                path.append((x, y))
            paths.append(path)
        return paths

    def _flee(self) -> tuple[int, int]:
        """The direction (or standing still) that keeps the player farthest from every enemy over a short horizon."""
        g, c = self.game, self.game.config
        if not g.enemies:
            return NOOP
        h, s, e = self.config.flee_horizon, c.player_size, c.enemy_size
        paths = self._enemy_paths(h)
        best, best_gap = NOOP, -1e9
        for dx, dy in DIRECTIONS + (NOOP,):
            gap = 1e9
            for k in range(h):
                px = min(max(g.player[0] + (k + 1) * dx * c.player_speed, 0), WORLD - s)
                py = min(max(g.player[1] + (k + 1) * dy * c.player_speed, HUD_HEIGHT), WORLD - s)
                for path in paths:
                    ex, ey = path[k]
                    gap = min(gap, max(abs(ex + e / 2 - px - s / 2), abs(ey + e / 2 - py - s / 2)))
            if gap > best_gap:
                best, best_gap = (dx, dy), gap
        return best

    def direction(self) -> tuple[int, int]:
        """The (dx, dy) the current mode wants this frame."""
        if self.mode == "chase":
            return self._chase()
        if self.mode == "wander":
            return self._direction
        if self.mode == "flee":
            if self._t % self.config.flee_replan == 0:
                self._direction = self._flee()
            return self._direction
        if self.mode == "zigzag":
            return self._legs[(self._t // self._leg_frames) % 2]
        return NOOP

    def act(self, frame: np.ndarray) -> np.ndarray:
        if self._left <= 0:
            self._new_mode()
        nearest = self._nearest_enemy()
        threatened = nearest is not None and nearest[2] <= self.config.danger_radius
        if threatened and not self._threatened and self.mode != "flee" and self.rng.random() < self.config.dodge_prob:
            self.mode, self._left, self._t = "flee", self._frames(self.config.flee_frames), 0
        self._threatened = threatened
        dx, dy = self.direction()
        self._left -= 1
        self._t += 1
        action = self.game.action_spec.null()  # (up, down, left, right): never two opposite buttons
        action[0], action[1] = dy < 0, dy > 0
        action[2], action[3] = dx < 0, dx > 0
        return action


# ale:Breakout RAM (the 128 bytes of the Atari's memory): paddle x, ball x, ball y (0 while no ball is in play).
BREAKOUT_PADDLE_X, BREAKOUT_BALL_X, BREAKOUT_BALL_Y = 72, 99, 101
BREAKOUT_AIM = 10    # ball x - paddle x (RAM units) with the ball over the paddle's centre (measured at 64x64)


@dataclass
class BreakoutConfig:
    """How the Breakout agent aims, wanders and misses (RAM x units are about 2.56 per 64x64 pixel)."""

    aim_jitter: tuple[int, int] = (-6, 6)    # per rally, where on the paddle it tries to hit (varies the angles)
    deadband: int = 3                        # no move while the ball is this close to the aim point
    detour_prob: float = 0.03                # per frame, the chance of a random move held for detour_frames
    detour_frames: tuple[int, int] = (2, 8)
    miss_prob: float = 0.15                  # per rally, the chance it stops tracking (a lost life; ends episodes)
    serve_wait: tuple[int, int] = (0, 12)    # frames it waits (moving at random) before serving a new ball


class BreakoutAgent:
    """Plays ale:Breakout by reading the paddle and ball positions from the console's RAM (not its pixels).

    It serves (FIRE) when no ball is in play, then moves the paddle under the ball, aiming at a point that changes
    every rally, with short random detours and, now and then, a rally where it gives up (so lives are lost and
    served again). Buttons are exclusive (one of fire, right, left, or none), as in the Atari's action set.
    """

    def __init__(self, game, seed: int | None = None, config: BreakoutConfig | None = None):
        env_id = getattr(game, "env_id", None)
        ale = getattr(getattr(getattr(game, "env", None), "unwrapped", None), "ale", None)
        if env_id != "ale:Breakout" or ale is None:
            raise TypeError(f"BreakoutAgent plays ale:Breakout only, got {env_id or type(game)!r}")
        names = game.action_spec.buttons
        missing = {"fire", "right", "left"} - set(names)
        if missing:
            raise TypeError(f"ale:Breakout's buttons are {names}, missing {sorted(missing)}")
        self.game, self.ale, self.config = game, ale, config or BreakoutConfig()
        self._button = {n: i for i, n in enumerate(names)}
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self._in_play = False
        self._aim, self._give_up, self._wait = BREAKOUT_AIM, False, 0
        self._detour, self._detour_left = None, 0

    def _int(self, bounds: tuple[int, int]) -> int:
        return int(self.rng.integers(bounds[0], bounds[1] + 1))

    def _new_rally(self) -> None:
        c = self.config
        self._aim = BREAKOUT_AIM + self._int(c.aim_jitter)
        self._give_up = bool(self.rng.random() < c.miss_prob)
        self._wait = self._int(c.serve_wait)

    def act(self, frame: np.ndarray) -> np.ndarray:
        c = self.config
        ram = self.ale.getRAM()
        paddle, ball_x, ball_y = int(ram[BREAKOUT_PADDLE_X]), int(ram[BREAKOUT_BALL_X]), int(ram[BREAKOUT_BALL_Y])
        action = self.game.action_spec.null()
        in_play = ball_y != 0
        if in_play and not self._in_play:
            self._new_rally()
        if not in_play and self._in_play:
            self._wait = self._int(c.serve_wait)
        self._in_play = in_play
        if self._detour_left <= 0 and self.rng.random() < c.detour_prob:
            self._detour = ("right", "left", None)[int(self.rng.integers(3))]
            self._detour_left = self._int(c.detour_frames)
        if self._detour_left > 0:
            self._detour_left -= 1
            if self._detour is not None:
                action[self._button[self._detour]] = 1.0
            return action
        if not in_play:
            if self._wait > 0:
                self._wait -= 1
            else:
                action[self._button["fire"]] = 1.0
            return action
        if self._give_up:
            return action
        d = ball_x - (paddle + self._aim)
        if d > c.deadband:
            action[self._button["right"]] = 1.0
        elif d < -c.deadband:
            action[self._button["left"]] = 1.0
        return action


@dataclass
class DoomBasicConfig:
    """How the vizdoom:basic agent wanders, aims and misses (64x64 pixels; the gun points at column 32)."""

    wander_frames: tuple[int, int] = (10, 60)    # per episode, random strafing before it starts to aim
    aim_jitter: tuple[int, int] = (-3, 3)        # per aim, px off the monster's centre it aims at (a near miss)
    deadband: int = 1                            # no strafe while the aim point is this close to the gun
    fire_prob: float = 0.3                       # per frame, the chance it fires once aimed
    stray_fire_prob: float = 0.05                # per frame, the chance it fires while still strafing to aim
    detour_prob: float = 0.06                    # per frame, the chance of a random button set held detour_frames
    detour_frames: tuple[int, int] = (2, 8)
    reaim_frames: tuple[int, int] = (6, 20)      # a new aim point (jitter) this often


class DoomBasicAgent:
    """Plays vizdoom:basic from what it sees: strafes at random for a while, then strafes until the monster (found
    by the monster probe on the 64x64 frame) is in front of the gun and shoots, with random detours, shots fired on
    the move and aim points a pixel or two off the monster's centre, so that the data shows hits, misses and kills
    (an episode ends when the monster dies). Never holds left and right together."""

    def __init__(self, game, seed: int | None = None, config: DoomBasicConfig | None = None):
        from train.games.probes import probes_for  # train.games.probes imports this package's builtin game

        env_id = getattr(game, "env_id", None)
        if env_id != "vizdoom:basic":
            raise TypeError(f"DoomBasicAgent plays vizdoom:basic only, got {env_id or type(game)!r}")
        names = game.action_spec.buttons
        missing = {"move_left", "move_right", "attack"} - set(names)
        if missing:
            raise TypeError(f"vizdoom:basic's buttons are {names}, missing {sorted(missing)}")
        self.game, self.config = game, config or DoomBasicConfig()
        self.monster = probes_for(env_id)["monster"]
        self._button = {n: i for i, n in enumerate(names)}
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self._wander = self._int(self.config.wander_frames)
        self._aim, self._reaim = 0, 0
        self._detour, self._detour_left = None, 0

    def _int(self, bounds: tuple[int, int]) -> int:
        return int(self.rng.integers(bounds[0], bounds[1] + 1))

    def _random_buttons(self) -> np.ndarray:
        action = self.game.action_spec.null()
        move = ("move_left", "move_right", None)[int(self.rng.integers(3))]
        if move is not None:
            action[self._button[move]] = 1.0
        action[self._button["attack"]] = float(self.rng.random() < 0.3)
        return action

    def act(self, frame: np.ndarray) -> np.ndarray:
        c = self.config
        if self._detour_left <= 0 and (self._wander > 0 or self.rng.random() < c.detour_prob):
            self._detour = self._random_buttons()
            self._detour_left = self._int(c.detour_frames)
        if self._detour_left > 0:
            self._detour_left -= 1
            self._wander = max(0, self._wander - 1)
            return self._detour.copy()
        action = self.game.action_spec.null()
        x = float(self.monster.centroid(frame)[0])
        if np.isnan(x):                       # not in view: keep strafing one way until it is
            action[self._button["move_right"]] = 1.0
            return action
        if self._reaim <= 0:
            self._aim, self._reaim = self._int(c.aim_jitter), self._int(c.reaim_frames)
        self._reaim -= 1
        d = x + self._aim - frame.shape[1] / 2
        if abs(d) > c.deadband:
            action[self._button["move_right" if d > 0 else "move_left"]] = 1.0
            action[self._button["attack"]] = float(self.rng.random() < c.stray_fire_prob)
        else:
            action[self._button["attack"]] = float(self.rng.random() < c.fire_prob)
        return action
