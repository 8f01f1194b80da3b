"""`reverie eval agent`: play an agent for N episodes and score it, in the real game or in the dream of a world model.

    reverie eval agent --agent gems --env builtin:gems --episodes 100 --json runs/gems-agent/eval.json
    reverie eval agent --agent runs/gems-agent --model default --episodes 100        # the score the dream predicts

The agent is a baseline (random, scripted: train.games.registry), a shipped agent's name (gems), a run folder of
`reverie train agent` or its agent.safetensors. In the real game episode e starts from seed --seed + e (default
1000000, held out: training uses small seeds) and is played to its end (terminated or truncated); its score is the sum
of the game's rewards. In the dream (--model) B worlds run as one batch (DreamVecEnv) with the model's reward model,
each world playing its share of the episodes (so short episodes are not over-counted), each episode cut off at
--episode-steps (default: the game's own limit); its score is the sum of the predicted rewards. The JSON holds the
mean, its standard error (std / sqrt(n)), every episode's score and length, and what was played where.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.checkpoint import atomic_write_text
from engine.errors import ReverieError
from train.agents.policy import AgentError, AgentPolicy, check_fits, load_agent
from train.agents.train_agent import dream_setup
from train.games.registry import AGENTS, make_agent, make_game

HELD_OUT_SEED = 1_000_000      # episode seeds from here on: `reverie train` and `reverie record` use small ones
MAX_EPISODES = 100_000
MAX_WORLDS = 256
DEFAULT_WORLDS = 16            # dream worlds at once unless --worlds says otherwise (never more than --episodes)
REWARD_UNITS = {"builtin:gems": "gems", "ale:": "points"}   # what a game's (or a family's) reward counts, for the
                                                            # summary line; an Atari reward is the game's score


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reverie eval agent", description=__doc__.split("\n\n")[0])
    p.add_argument("--agent", required=True, help="random, scripted, a shipped agent (gems), a run folder of "
                   "'reverie train agent' or an agent .safetensors file")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--env", help="play the real game, e.g. builtin:gems")
    where.add_argument("--model", help="play in the dream of this world model (a file, or a shipped model: default)")
    p.add_argument("--episodes", type=int, default=100, help=f"episodes to score, 1..{MAX_EPISODES} (default 100)")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help=f"episode e plays seed SEED + e (default "
                   f"{HELD_OUT_SEED}, held out from training's small seeds); in the dream, world i is seeded SEED + i")
    p.add_argument("--json", type=Path, default=None, help="write the scores here (atomically)")
    p.add_argument("--size", type=int, default=64, help="frame side of the real game (default 64)")
    p.add_argument("--reward", help="reward model of the dream (default: the one beside --model)")
    p.add_argument("--worlds", type=int, default=None, help=f"dream worlds run as one batch, 1..{MAX_WORLDS} "
                   f"(default: --episodes, at most {DEFAULT_WORLDS})")
    p.add_argument("--episode-steps", type=int, default=None, help="frames before an episode is cut off (default: "
                   "in the dream, the game's own limit, 1000 for builtin:gems; in the real game, its own end, which "
                   "for an Atari agent that never serves is 27,000 frames)")
    p.add_argument("--starts", help="in the dream: start each episode from a random window of this folder of recorded "
                   "play, as 'train agent --starts' does (default: the model's built-in start state)")
    p.add_argument("--device", default="cpu", help="device of the dream and the policy (cpu, cuda)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Counts out of range are one-line errors (argparse's own would print the usage too)."""
    for flag, value, hi in (("--episodes", args.episodes, MAX_EPISODES), ("--worlds", args.worlds, MAX_WORLDS),
                            ("--episode-steps", args.episode_steps, 10**6), ("--threads", args.threads, 1024)):
        if value is not None and not 1 <= value <= hi:
            raise AgentError(f"{flag} {value}: must be between 1 and {hi:,}")
    if not 0 <= args.seed < 2**63 - MAX_EPISODES:
        raise AgentError(f"--seed {args.seed}: must be a whole number >= 0 (episode e plays seed SEED + e)")
    if args.size < 8:
        raise AgentError(f"--size {args.size}: frames must be at least 8 pixels a side")
    if args.env and (args.reward or args.worlds or args.starts):
        raise AgentError("--reward, --worlds and --starts are for the dream (--model); the real game is played one "
                         "episode at a time")


def trained_agent(name: str, device: str) -> AgentPolicy | None:
    """None for a baseline (random, scripted); else the agent file, run folder or shipped agent, loaded."""
    return None if name in AGENTS else load_agent(name, device)


def baseline(name: str, game: Any, seed: int) -> Any:
    try:
        return make_agent(name, game, seed)
    except ValueError as e:
        raise AgentError(f"--agent {name}: {e}") from None


def play_real(args: argparse.Namespace, policy: AgentPolicy | None, progress: Any) -> tuple[list, list, dict]:
    """Episode e from seed args.seed + e, to its end; the scores, lengths and what the JSON says of the game.
    `progress()` makes the bar over episodes once the agent is known to fit."""
    try:
        game = make_game(args.env, size=args.size)
    except ValueError as e:
        raise AgentError(f"--env {args.env}: {e}") from None
    try:
        shape = (game.size, game.size, 3)
        if policy is not None:
            check_fits(policy, game.action_spec, shape, f"--env {args.env} at --size {args.size}")
        agent = policy if policy is not None else baseline(args.agent, game, args.seed)
        scores, lengths, bar = [], [], progress()
        for e in range(args.episodes):
            frame = game.reset(args.seed + e)
            agent.reset(args.seed + e)
            score, length, done = 0.0, 0, False
            while not done:
                frame, done = game.step(agent.act(frame))
                score += float(game.reward)
                length += 1
                done = bool(done or game.terminated or game.truncated or length == args.episode_steps)
            scores.append(score)
            lengths.append(length)
            bar.update(1)
        bar.close()
    finally:
        game.close()
    return scores, lengths, {"env": args.env, "game": args.env, "size": args.size, "episode_steps": args.episode_steps,
                             "seeds": [args.seed, args.seed + args.episodes - 1]}


def play_dream(args: argparse.Namespace, policy: AgentPolicy | None, progress: Any) -> tuple[list, list, dict]:
    """B dream worlds, world i playing its share of the episodes; summed predicted rewards and lengths."""
    from train.agents.dream_vec_env import DreamVecEnv

    if args.agent == "scripted":
        raise AgentError("--agent scripted reads the real game's state, which a dream has not; score it with --env, "
                         "or play random or a trained agent in the dream")
    ckpt, rpath, reward_fn, steps, sampler = dream_setup(args)
    spec = ckpt.action_spec
    worlds = min(args.worlds or DEFAULT_WORLDS, args.episodes)
    quota = [args.episodes // worlds + (i < args.episodes % worlds) for i in range(worlds)]   # episodes per world
    try:
        env = DreamVecEnv(ckpt, num_envs=worlds, max_episode_steps=steps, reward_fn=reward_fn, device=args.device,
                          threads=args.threads, start_sampler=sampler)
    except ValueError as e:   # e.g. a model without a start state
        raise AgentError(f"--model {args.model}: {e}") from None
    try:
        shape = tuple(env.session.frame_shape)
        if policy is not None:
            check_fits(policy, spec, shape, f"the dream of --model {args.model}")
            policy.reset(args.seed)
        else:
            try:   # the real game says whether its buttons are one choice (Atari) or free (gems)
                game = make_game(spec.game, size=shape[0])
            except (ValueError, ImportError, RuntimeError) as e:
                raise AgentError(f"--agent {args.agent}: cannot build {spec.game!r} to play at random ({e})") from None
            randoms = [baseline(args.agent, game, args.seed + i) for i in range(worlds)]
            game.close()
        obs, _ = env.reset(seed=args.seed)                                    # (B, H, W, 3) uint8
        score, length = np.zeros(worlds), np.zeros(worlds, np.int64)
        done_count = [0] * worlds
        scores, lengths, bar = [], [], progress()
        while len(scores) < args.episodes:
            if policy is not None:
                actions = policy.act_batch(obs)                               # (B, A) float32
            else:
                actions = np.stack([a.act(o) for a, o in zip(randoms, obs)])
            obs, rewards, terminated, truncated, _ = env.step(actions)
            score += rewards
            length += 1
            for i in np.flatnonzero(terminated | truncated):
                if done_count[i] < quota[i]:
                    scores.append(float(score[i]))
                    lengths.append(int(length[i]))
                    bar.update(1)
                done_count[i] += 1
                score[i], length[i] = 0.0, 0
                if policy is not None:
                    policy.forget(i)
                else:
                    randoms[i].reset(args.seed + worlds * done_count[i] + i)
        bar.close()
    finally:
        env.close()
    return scores, lengths, {"model": str(ckpt.path), "game": spec.game, "reward_model": str(rpath),
                             "starts": args.starts,
                             "episode_steps": steps, "worlds": worlds, "seeds": [args.seed, args.seed + worlds - 1]}


def summary(scores: list[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation (ddof=1) and standard error std / sqrt(n); 0 spread for one episode."""
    x = np.asarray(scores, dtype=np.float64)
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return float(x.mean()), std, std / math.sqrt(len(x))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    check_args(args)
    torch.set_num_threads(max(1, args.threads))
    policy = trained_agent(args.agent, args.device)
    started = time.perf_counter()
    def progress() -> tqdm:
        return tqdm(total=args.episodes, unit="episode", desc="eval agent", disable=args.no_progress,
                    dynamic_ncols=True)

    scores, lengths, world = (play_dream if args.model else play_real)(args, policy, progress)
    seconds = time.perf_counter() - started
    mean, std, stderr = summary(scores)
    result = {"agent": args.agent, "agent_file": str(policy.path) if policy is not None else None,
              "agent_info": policy.info if policy is not None else {"baseline": args.agent,
                                                                    "about": AGENTS[args.agent]},
              "where": "dream" if args.model else "real", **world, "seed": args.seed, "episodes": len(scores),
              "mean": mean, "std": std, "stderr": stderr, "min": min(scores), "max": max(scores),
              "scores": scores, "lengths": lengths, "seconds": round(seconds, 2)}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    unit = next((u for prefix, u in REWARD_UNITS.items() if world["game"].startswith(prefix)), "reward")
    first, last = world["seeds"]
    if args.model:
        where, seeds = f"in the dream of {args.model} ({world['game']})", f"worlds seeded {first}..{last}"
        unit += " (predicted)"
    else:
        where, seeds = f"on {args.env}", f"seeds {first}..{last}"
    print(f"agent {args.agent} {where}: {mean:.2f} ± {stderr:.2f} {unit} an episode over {len(scores)} episodes "
          f"({seeds})" + (f"; wrote {args.json}" if args.json else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ReverieError as e:
        print(f"reverie eval agent: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
