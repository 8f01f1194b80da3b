"""Game and agent lookup by id: the one place that maps `builtin:gems`, `ale:<Game>`, `vizdoom:<scenario>` and
`gym:<EnvId>` onto the classes that implement them (train.games.base.Game / Agent).
"""

from __future__ import annotations

from typing import Any

from train.games.agents import BreakoutAgent, DoomBasicAgent, RandomAgent, ScriptedAgent
from train.games.base import Agent, Game
from train.games.builtin import ENV_ID as GEMS_ID
from train.games.builtin import GemsGame

BUILTIN_GAMES = {GEMS_ID: "collect gems, dodge bouncing enemies (pure numpy, the default world model's data)"}
ADAPTER_PREFIXES = {
    "ale": "Atari 2600 through ale-py, e.g. ale:Breakout, ale:Pong (any ALE/<Game>-v5)",
    "vizdoom": "Doom through vizdoom's bundled scenarios, e.g. vizdoom:basic, vizdoom:health_gathering",
    "gym": "any Gymnasium env with image observations or rgb_array rendering, e.g. gym:CartPole-v1",
}
EXAMPLE_IDS = ("ale:Breakout", "ale:Pong", "vizdoom:basic", "vizdoom:health_gathering", "gym:<EnvId>")
AGENTS = {"scripted": "builtin:gems: persistent modes (chase, wander, flee, idle, zig-zag); ale:Breakout: serves, "
                      "tracks the ball (aim varied per rally), random detours and misses; vizdoom:basic: strafes "
                      "until the monster is in front of the gun and shoots, with detours and near misses",
          "random": "uniformly random controls, each held for a few frames; any game"}


def list_games() -> list[str]:
    """Built-in game ids followed by example adapter ids (`gym:<EnvId>` stands for any Gymnasium id)."""
    return list(BUILTIN_GAMES) + list(EXAMPLE_IDS)


def game_help_text() -> str:
    """A few lines listing the games and agents, for a command's --help epilog."""
    lines = ["games:"]
    lines += [f"  {k:<22} {v}" for k, v in BUILTIN_GAMES.items()]
    lines += [f"  {k + ':<...>':<22} {v}" for k, v in ADAPTER_PREFIXES.items()]
    lines += ["agents:"] + [f"  {k:<22} {v}" for k, v in AGENTS.items()]
    return "\n".join(lines)


def _unknown_game(env_id: str) -> ValueError:
    return ValueError(f"unknown game {env_id!r}; known: {', '.join(BUILTIN_GAMES)} and the adapters "
                      f"{', '.join(p + ':<name>' for p in ADAPTER_PREFIXES)} (e.g. {', '.join(EXAMPLE_IDS[:-1])})")


def make_game(env_id: str, size: int = 64, seed: int | None = None, **kw: Any) -> Game:
    """Build a game by id; `seed` seeds the episodes that reset(None) starts; `kw` goes to the game."""
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"{env_id}: frame size must be an int >= 8, got {size!r}")
    if env_id in BUILTIN_GAMES:
        return GemsGame(size=size, seed=seed, **kw)
    prefix, _, name = env_id.partition(":")
    if not name or prefix not in ADAPTER_PREFIXES:
        raise _unknown_game(env_id)
    from train.games import gym_adapters  # imports gymnasium / ale_py / vizdoom only inside the adapter

    if prefix == "ale":
        return gym_adapters.make_ale(name, size, seed, **kw)
    if prefix == "vizdoom":
        return gym_adapters.make_vizdoom(name, size, seed, **kw)
    return gym_adapters.make_gym(name, size, seed, **kw)


def make_agent(name: str, game: Game, seed: int | None = None) -> Agent:
    """Build an agent by name ("scripted" or "random") to play `game`."""
    if name == "random":
        return RandomAgent(game.action_spec, seed, exclusive=bool(getattr(game, "exclusive_buttons", False)))
    if name == "scripted":
        if isinstance(game, GemsGame):
            return ScriptedAgent(game, seed)
        if getattr(game, "env_id", None) == "ale:Breakout":
            return BreakoutAgent(game, seed)
        if getattr(game, "env_id", None) == "vizdoom:basic":
            return DoomBasicAgent(game, seed)
        raise ValueError(f"the scripted agent plays {GEMS_ID}, ale:Breakout and vizdoom:basic only, not "
                         f"{game.env_id!r}; use the 'random' agent")
    raise ValueError(f"unknown agent {name!r}; known: {', '.join(AGENTS)}")
