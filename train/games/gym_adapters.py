"""Adapters that put Atari (ale-py), Doom (vizdoom) and any image-based Gymnasium env behind the Game protocol.

Each adapter builds an ActionSpec from the env's controls, turns a Reverie action vector (multi-hot buttons, then
axes) into the env's action, and returns frames resized to (size, size, 3) uint8 with an area filter in numpy. Each
step's reward and end are the env's: env.step's reward, terminated and truncated; vizdoom's reward (summed over the
skipped tics), its episode end as terminated and its episode timeout as truncated.

- `ale:<Game>` -> Gymnasium "ALE/<Game>-v5" with sticky actions off and a fixed frameskip, so an episode is
  a function of its seed and actions. Buttons are the minimal action set's meanings, lower-cased ("fire",
  "right", "left", ...); nothing pressed is action 0, NOOP, which therefore has no button.
- `vizdoom:<scenario>` -> a vizdoom DoomGame on `<scenario>.cfg` from vizdoom's own scenario folder, window
  hidden, sound off. Binary buttons are named after vizdoom's buttons ("move_left", "attack"); delta buttons
  (e.g. TURN_LEFT_RIGHT_DELTA) become axes in [-1, 1].
- `gym:<EnvId>` -> any registered Gymnasium env whose observation is an image or that renders "rgb_array",
  with a Discrete, MultiDiscrete, MultiBinary or bounded 1-D Box action space.

gymnasium, ale_py and vizdoom are imported only when an adapter is built (the `data` extra).

None of them needs a window to give frames, but SDL does not know that: gymnasium's pygame renderers (CartPole and
the other classic-control envs) and vizdoom start SDL's video, and SDL, finding no X display, tries Wayland, whose
library prints `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` on a server. A program that only
records or replays games runs them inside `with headless_sdl():`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import re
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.actions import ActionSpec, ActionSpecError
from engine.cache import cache_root

INSTALL_HINT = "install the data extra: pip install 'reverie[data]'"
ALE_FRAMESKIP = 4           # the ALE v5 default; 60 Hz Atari -> 15 frames/s
VIZDOOM_FRAME_SKIP = 2      # 35 Hz Doom -> 17.5 frames/s
VIZDOOM_DELTA_SCALE = 10.0  # an axis value of 1 is this many units of a vizdoom delta button per tic
ATARI_HZ = 60.0
_ALE_TOKENS = re.compile(r"UP|DOWN|LEFT|RIGHT|FIRE")
# SDL's drivers that need no display and no sound card, under SDL 2's and SDL 3's variable names
HEADLESS_SDL = {("SDL_VIDEODRIVER", "SDL_VIDEO_DRIVER"): "dummy", ("SDL_AUDIODRIVER", "SDL_AUDIO_DRIVER"): "dummy"}


@contextlib.contextmanager
def headless_sdl(environ: MutableMapping[str, str] | None = None) -> Iterator[None]:
    """Within the block, point SDL at its dummy video and audio drivers (in this process and the processes it starts)
    where the user has not chosen a driver: the games' frames are read from memory, never shown, so SDL need not look
    for a display. The variables are as they were again on exit."""
    env = os.environ if environ is None else environ
    added: dict[str, str] = {}
    for names, driver in HEADLESS_SDL.items():
        if not any(env.get(name, "").strip() for name in names):
            added.update(dict.fromkeys(names, driver))
    before = {name: env.get(name) for name in added}
    env.update(added)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value


def require(module: str) -> Any:
    """Import an optional dependency or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module!r} is needed for this game but is not installed ({e}); {INSTALL_HINT}") from e


# ---- frames ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix averaging the input pixels each output pixel covers (box filter, exact overlap)."""
    scale = n_in / n_out
    lo = np.arange(n_out)[:, None] * scale                    # (n_out, 1)
    j = np.arange(n_in)[None, :]                              # (1, n_in)
    w = np.clip(np.minimum(lo + scale, j + 1) - np.maximum(lo, j), 0.0, None)  # (n_out, n_in)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 view of a grey (H, W) / (H, W, 1) or RGB(A) (H, W, 3|4) image."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {frame.shape}")
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return frame[:, :, :3]


def resize_area(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize an image to (size, size, 3) uint8 with an area (box) filter; the aspect ratio is not kept."""
    frame = to_rgb(frame)
    h, w, _ = frame.shape
    if (h, w) == (size, size):
        return frame.copy()
    wy, wx = _area_weights(h, size), _area_weights(w, size)
    tmp = wy @ frame.reshape(h, w * 3).astype(np.float32)                 # (size, w * 3)
    out = wx @ tmp.reshape(size, w, 3).transpose(1, 0, 2).reshape(w, size * 3)  # (size_x, size_y * 3)
    out = out.reshape(size, size, 3).transpose(1, 0, 2)                   # (size_y, size_x, 3)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---- actions -----------------------------------------------------------------------------------------------
def control_name(raw: str, fallback: str) -> str:
    """A valid ActionSpec control name from an env's label ('UP-RIGHT' -> 'up_right'), or the fallback."""
    name = re.sub(r"[^a-z0-9_]+", "_", str(raw).strip().lower()).strip("_")[:32]
    return name if re.match(r"^[a-z]", name) else fallback


def _unique(names: list[str]) -> list[str]:
    """Make names unique by suffixing the position of repeats."""
    seen: set[str] = set()
    out = []
    for i, n in enumerate(names):
        if n in seen:
            n = f"{n[:24]}_{i}"
        seen.add(n)
        out.append(n)
    return out


class DiscreteActions:
    """A Discrete(n) action as one-hot buttons for actions 1..n-1; nothing pressed is action 0.

    Several pressed buttons pick the action whose meaning combines theirs (Atari: 'up' + 'fire' -> 'upfire')
    when the env has one; otherwise the first pressed button in spec order wins.
    """

    exclusive = True

    def __init__(self, n: int, start: int = 0, meanings: Sequence[str] | None = None):
        self.n, self.start = n, start
        raw = list(meanings) if meanings is not None and len(meanings) == n else [f"action_{i}" for i in range(n)]
        self.null_meaning = raw[0]
        self.buttons = tuple(_unique([control_name(m, f"action_{i}") for i, m in enumerate(raw)][1:]))
        self.axes: tuple[str, ...] = ()
        tokens = [frozenset(_ALE_TOKENS.findall(m)) if _ALE_TOKENS.sub("", m) == "" else frozenset([m])
                  for m in map(str, raw)]
        self._tokens = tokens
        self._by_tokens = {t: i for i, t in enumerate(tokens)}

    def to_env(self, action: np.ndarray) -> int:
        pressed = np.flatnonzero(action[: len(self.buttons)]) + 1   # env action indices
        if len(pressed) == 0:
            return self.start
        if len(pressed) > 1:
            union = frozenset().union(*(self._tokens[i] for i in pressed))
            return self.start + self._by_tokens.get(union, int(pressed[0]))
        return self.start + int(pressed[0])


class MultiDiscreteActions:
    """MultiDiscrete(nvec): per dimension, one button per value above the first (a two-valued dimension is one
    button `b<i>`, a larger one buttons `d<i>_<v>`); nothing pressed is each dimension's first value."""

    exclusive = False

    def __init__(self, nvec: Sequence[int], start: Sequence[int] | None = None):
        self.nvec = [int(n) for n in nvec]
        self.start = np.zeros(len(self.nvec), np.int64) if start is None else np.asarray(start, np.int64)
        names, self._slots = [], []   # slot k -> (dimension, value)
        for d, n in enumerate(self.nvec):
            for v in range(1, n):
                names.append(f"b{d}" if n == 2 else f"d{d}_{v}")
                self._slots.append((d, v))
        self.buttons, self.axes = tuple(names), ()

    def to_env(self, action: np.ndarray) -> np.ndarray:
        out = np.zeros(len(self.nvec), np.int64)
        chosen = np.zeros(len(self.nvec), bool)
        for k in np.flatnonzero(action[: len(self.buttons)]):
            d, v = self._slots[k]
            if not chosen[d]:   # the first pressed value of a dimension wins
                out[d], chosen[d] = v, True
        return out + self.start


class MultiBinaryActions:
    """MultiBinary(n): button `b<i>` is bit i."""

    exclusive = False

    def __init__(self, n: int):
        self.buttons, self.axes = tuple(f"b{i}" for i in range(n)), ()

    def to_env(self, action: np.ndarray) -> np.ndarray:
        return action[: len(self.buttons)].astype(np.int8)


class BoxActions:
    """A bounded 1-D Box: axis `axis_<i>` in [-1, 1] maps linearly onto [low_i, high_i]."""

    exclusive = False

    def __init__(self, low: np.ndarray, high: np.ndarray, dtype: Any):
        self.low, self.high, self.dtype = low.astype(np.float64), high.astype(np.float64), dtype
        self.buttons, self.axes = (), tuple(f"axis_{i}" for i in range(len(low)))

    def to_env(self, action: np.ndarray) -> np.ndarray:
        return (self.low + (action.astype(np.float64) + 1.0) / 2.0 * (self.high - self.low)).astype(self.dtype)


def actions_for_space(space: Any, meanings: Sequence[str] | None, where: str) -> Any:
    """The action mapping for a Gymnasium action space, or a ValueError naming what is supported."""
    spaces = require("gymnasium.spaces")
    if isinstance(space, spaces.Discrete):
        return DiscreteActions(int(space.n), int(space.start), meanings)
    if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return MultiDiscreteActions(space.nvec, space.start)
    if isinstance(space, spaces.MultiBinary) and np.ndim(space.n) == 0:
        return MultiBinaryActions(int(space.n))
    if isinstance(space, spaces.Box) and len(space.shape) == 1 and space.is_bounded("both"):
        return BoxActions(space.low, space.high, space.dtype)
    raise ValueError(f"{where}: action space {space} is not supported; use an env with a Discrete, MultiDiscrete, "
                     "MultiBinary or bounded 1-D Box action space")


def checked(spec: ActionSpec, action: np.ndarray) -> np.ndarray:
    """One action vector validated against the spec (a batch is an error here)."""
    a = spec.check(action)
    if a.ndim != 1:
        raise ActionSpecError(f"action: expected one action of shape ({spec.size},) for {spec.game!r}, "
                              f"got shape {tuple(a.shape)}")
    return a


# ---- games -------------------------------------------------------------------------------------------------
class GymGame:
    """A Gymnasium env behind the Game protocol; frames come from image observations or from render()."""

    def __init__(self, env: Any, env_id: str, env_version: str, size: int = 64, seed: int | None = None,
                 fps: float | None = None):
        self.env, self.env_id, self.env_version, self.size = env, env_id, env_version, size
        meanings = None
        get_meanings = getattr(env.unwrapped, "get_action_meanings", None)
        if callable(get_meanings):
            meanings = list(get_meanings())
        self.actions = actions_for_space(env.action_space, meanings, env_id)
        self.exclusive_buttons = self.actions.exclusive
        self.action_spec = ActionSpec(game=env_id, buttons=self.actions.buttons, axes=self.actions.axes)
        self.fps = float(fps or env.metadata.get("render_fps") or 30.0)
        obs_space = env.observation_space
        self._image_obs = (getattr(obs_space, "dtype", None) == np.uint8 and len(obs_space.shape) in (2, 3)
                           and (len(obs_space.shape) == 2 or obs_space.shape[2] in (1, 3, 4)))
        if not self._image_obs and env.render_mode != "rgb_array":
            raise ValueError(f"{env_id}: observations are not images and the env does not render 'rgb_array'; "
                             "only image-based envs can be recorded")
        self._episode_seeds = np.random.default_rng(seed)
        self._last: np.ndarray | None = None
        self.done = False
        self.reward, self.terminated, self.truncated = 0.0, False, False   # of the last step (env.step's)

    def _frame(self, obs: Any) -> np.ndarray:
        image = obs if self._image_obs else self.env.render()
        if image is None:
            raise RuntimeError(f"{self.env_id}: render() returned nothing; the env needs render_mode='rgb_array'")
        self._last = resize_area(image, self.size)
        return self._last.copy()

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is None:
            seed = int(self._episode_seeds.integers(2**31))
        obs, _ = self.env.reset(seed=int(seed))
        self.done = False
        self.reward, self.terminated, self.truncated = 0.0, False, False
        return self._frame(obs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        a = checked(self.action_spec, action)
        if self.done:
            raise RuntimeError(f"{self.env_id}: step() after the episode ended; call reset() first")
        obs, reward, terminated, truncated, _ = self.env.step(self.actions.to_env(a))
        self.reward, self.terminated, self.truncated = float(reward), bool(terminated), bool(truncated)
        self.done = self.terminated or self.truncated
        return self._frame(obs), self.done

    def close(self) -> None:
        self.env.close()


class AleGame(GymGame):
    """An Atari game: a GymGame that can save and restore the emulator (state_dict / load_state_dict), so eval can
    replay an episode from its seed and run the real game beside a dream past the end of the recording, and judge an
    action by what it does. Sticky actions are off, so the game is deterministic given its seed and actions."""

    def state_dict(self) -> dict[str, Any]:
        """The emulator's state (RNG included) with the current frame, in memory (an ale-py ALEState, not JSON): a
        save point within one process, for replay and eval, not a save-game file."""
        if self._last is None:
            raise RuntimeError(f"{self.env_id}: state_dict() before reset()")
        return {"env_id": self.env_id, "env_version": self.env_version, "done": self.done, "frame": self._last.copy(),
                "ale": self.env.unwrapped.ale.cloneState(include_rng=True), "reward": self.reward,
                "terminated": self.terminated, "truncated": self.truncated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by state_dict(); a state of another game or version raises ValueError."""
        if state.get("env_id") != self.env_id or state.get("env_version") != self.env_version:
            raise ValueError(f"saved state is for {state.get('env_id')!r} version {state.get('env_version')!r}, "
                             f"this game is {self.env_id!r} version {self.env_version!r}")
        self.env.unwrapped.ale.restoreState(state["ale"])
        self._last, self.done = np.array(state["frame"], copy=True), bool(state["done"])
        self.reward = float(state.get("reward", 0.0))
        self.terminated, self.truncated = bool(state.get("terminated", self.done)), bool(state.get("truncated", False))

    def frame(self) -> np.ndarray:
        """The current frame without stepping (e.g. after load_state_dict)."""
        if self._last is None:
            raise RuntimeError(f"{self.env_id}: frame() before reset()")
        return self._last.copy()


def _known_gym_ids(gym: Any, prefix: str = "", suffix: str = "") -> list[str]:
    return sorted(k for k in gym.registry if k.startswith(prefix) and k.endswith(suffix))


def _ale(gym: Any) -> Any:
    """ale_py, registered with Gymnasium, its log at warnings: each emulator it makes would print its banner."""
    ale_py = require("ale_py")
    gym.register_envs(ale_py)
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)
    return ale_py


def make_ale(game: str, size: int = 64, seed: int | None = None, frameskip: int = ALE_FRAMESKIP,
             full_action_space: bool = False, **kw: Any) -> GymGame:
    """`ale:<Game>`: Atari through Gymnasium's ALE/<Game>-v5, sticky actions off, fixed frameskip."""
    gym = require("gymnasium")
    ale_py = _ale(gym)
    gym_id = f"ALE/{game}-v5"
    if gym_id not in gym.registry:
        names = [k[4:-3] for k in _known_gym_ids(gym, "ALE/", "-v5")]
        raise ValueError(f"unknown Atari game {game!r} (ale:{game}); ale-py {ale_py.__version__} has: "
                         f"{', '.join(names)}")
    env = gym.make(gym_id, frameskip=frameskip, repeat_action_probability=0.0, full_action_space=full_action_space,
                   obs_type="rgb", **kw)
    version = (f"ale_py={ale_py.__version__};{gym_id};frameskip={frameskip};repeat_action_probability=0;"
               f"full_action_space={full_action_space}")
    return AleGame(env, f"ale:{game}", version, size, seed, fps=ATARI_HZ / frameskip)


def make_gym(env_id: str, size: int = 64, seed: int | None = None, **kw: Any) -> GymGame:
    """`gym:<EnvId>`: any registered Gymnasium env with image observations or an rgb_array renderer."""
    gym = require("gymnasium")
    if env_id.startswith("ALE/"):
        _ale(gym)
    elif env_id.startswith("Vizdoom"):
        require("vizdoom.gymnasium_wrapper")
    if env_id not in gym.registry:
        raise ValueError(f"unknown Gymnasium env {env_id!r} (gym:{env_id}); registered ids include: "
                         f"{', '.join(_known_gym_ids(gym)[:40])}, ...")
    kw.setdefault("render_mode", "rgb_array")
    env = gym.make(env_id, **kw)
    options = ";".join(f"{k}={v}" for k, v in sorted(kw.items()) if k != "render_mode")
    return GymGame(env, f"gym:{env_id}", f"gymnasium={gym.__version__};{env_id};{options}", size, seed)


class VizdoomGame:
    """`vizdoom:<scenario>`: a hidden-window vizdoom DoomGame on one of vizdoom's bundled scenario configs."""

    def __init__(self, scenario: str, size: int = 64, seed: int | None = None, frame_skip: int = VIZDOOM_FRAME_SKIP,
                 resolution: str = "RES_160X120", delta_scale: float = VIZDOOM_DELTA_SCALE):
        vzd = require("vizdoom")
        configs = {p.stem: p for p in Path(vzd.scenarios_path).glob("*.cfg")}
        if scenario not in configs:
            raise ValueError(f"unknown vizdoom scenario {scenario!r} (vizdoom:{scenario}); vizdoom {vzd.__version__} "
                             f"ships: {', '.join(sorted(configs))}")
        if not hasattr(vzd.ScreenResolution, resolution):
            raise ValueError(f"vizdoom:{scenario}: unknown resolution {resolution!r}, e.g. RES_160X120, RES_320X240")
        if frame_skip < 1:
            raise ValueError(f"vizdoom:{scenario}: frame_skip must be >= 1, got {frame_skip}")
        game = vzd.DoomGame()
        game.load_config(str(configs[scenario]))
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_screen_resolution(getattr(vzd.ScreenResolution, resolution))
        game.set_mode(vzd.Mode.PLAYER)
        # vizdoom writes its ini file and an (empty) `_vizdoom` folder into the working directory: the ini goes to
        # the cache instead, and the folder is removed again on close when this game made it
        config_dir = cache_root() / "vizdoom"
        config_dir.mkdir(parents=True, exist_ok=True)
        game.set_doom_config_path(str(config_dir / "_vizdoom.ini"))
        self._scratch = Path.cwd() / "_vizdoom"
        self._made_scratch = not self._scratch.exists()
        game.init()
        self.game, self.size, self.frame_skip, self.delta_scale = game, size, frame_skip, delta_scale
        self.env_id = f"vizdoom:{scenario}"
        self.env_version = f"vizdoom={vzd.__version__};{scenario}.cfg;frame_skip={frame_skip};{resolution}"
        self.fps = float(game.get_ticrate()) / frame_skip
        available = list(game.get_available_buttons())
        self._is_delta = [bool(vzd.is_delta_button(b)) for b in available]
        names = [control_name(b.name, f"button_{i}") for i, b in enumerate(available)]
        buttons = [n for n, d in zip(names, self._is_delta) if not d]
        axes = [n for n, d in zip(names, self._is_delta) if d]
        self.action_spec = ActionSpec(game=self.env_id, buttons=tuple(buttons), axes=tuple(axes))
        order = {n: i for i, n in enumerate(self.action_spec.names)}
        self._slot = [order[n] for n in names]   # vizdoom button i <- action vector entry
        self.exclusive_buttons = False
        self._episode_seeds = np.random.default_rng(seed)
        self._last = np.zeros((size, size, 3), np.uint8)
        self.done = False
        self.reward, self.terminated, self.truncated = 0.0, False, False   # of the last step

    def _frame(self) -> np.ndarray:
        state = self.game.get_state()
        if state is not None and state.screen_buffer is not None:   # None once the episode has finished
            self._last = resize_area(state.screen_buffer, self.size)
        return self._last.copy()

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is None:
            seed = int(self._episode_seeds.integers(2**31))
        self.game.set_seed(int(seed) % 2**32)
        self.game.new_episode()
        self.done = False
        self.reward, self.terminated, self.truncated = 0.0, False, False
        return self._frame()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        a = checked(self.action_spec, action)
        if self.done:
            raise RuntimeError(f"{self.env_id}: step() after the episode ended; call reset() first")
        env_action = [float(a[s]) * (self.delta_scale if d else 1.0) for s, d in zip(self._slot, self._is_delta)]
        self.reward = float(self.game.make_action(env_action, self.frame_skip))   # summed over the skipped tics
        self.done = bool(self.game.is_episode_finished())
        # the scenario's episode_timeout cuts the episode off; death or the scenario's goal ends it
        self.truncated = self.done and bool(self.game.is_episode_timeout_reached())
        self.terminated = self.done and not self.truncated
        return self._frame(), self.done

    def close(self) -> None:
        self.game.close()
        if self._made_scratch:
            with contextlib.suppress(OSError):   # left in place if it is not empty or not ours to remove
                self._scratch.rmdir()


def make_vizdoom(scenario: str, size: int = 64, seed: int | None = None, **kw: Any) -> VizdoomGame:
    """`vizdoom:<scenario>`, e.g. vizdoom:basic."""
    return VizdoomGame(scenario, size, seed, **kw)


def vizdoom_scenarios() -> list[str]:
    """Names of the scenario configs vizdoom ships, or [] when vizdoom is not installed."""
    try:
        vzd = importlib.import_module("vizdoom")
    except ImportError:
        return []
    return sorted(p.stem for p in Path(vzd.scenarios_path).glob("*.cfg"))
