"""`reverie train agent`: PPO trained only inside the dream of a world model, or, as the baseline, in the real game.

    reverie train agent --model default --out runs/gems-agent --frames 300000 --worlds 32
    reverie train agent --env builtin:gems --out runs/gems-real --frames 300000          # PPO in the real game

The dream is B worlds of one Session batch (train.agents.dream_vec_env.DreamVecEnv) whose reward and episode end come
from the reward model trained for that world model (`reverie train reward`): --reward, or the file beside the model
(<model>.reward.safetensors, or reward.safetensors in the model's folder). The agent is stable-baselines3's PPO with
its CNN actor-critic (the Atari settings of Schulman et al. 2017, 128 steps per world per update); only frames the
world model imagined, and the rewards read from them, reach it. The dream's sampling noise is a setting
(--context-noise, --denoise-steps, --guidance): a dream too deterministic can be exploited (Ha and Schmidhuber 2018).

The run folder holds agent.safetensors (the newest policy; `reverie eval agent --agent RUN`), checkpoints/ (a policy
every --save-every frames, for choosing between agents), TensorBoard logs under tb/, metrics.jsonl (the return of
every ended episode) and whole training states under state/. Running the same command again resumes (a larger
--frames trains on); Ctrl-C saves at the end of the rollout under way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.checkpoint import Checkpoint, CheckpointError, atomic_write_text, load_checkpoint, model_name, resolve_model
from engine.graphs import file_sha256
from train.agents.policy import AGENT_FILE, FEATURES_DIM, AgentError, policy_class, require_sb3, save_agent
from train.training.config import TrainingError
from train.training.distributed import Dist
from train.training.interrupt import StopSignals, signal_name
from train.training.run_dir import RunDir, check_out

HELP = "train an agent with PPO inside the dream of a world model (or in the real game, as a baseline)"
MAX_FRAMES = 10**9          # more than this is a typo, not a plan (at hundreds of frames a second: years)
MAX_WORLDS = 256
# PPO's settings: the Atari ones of Schulman et al. (2017) and SB3's zoo, with 128 steps per world per update
PPO_SETTINGS = {"n_steps": 128, "batch_size": 256, "n_epochs": 4, "learning_rate": 2.5e-4, "gamma": 0.99,
                "gae_lambda": 0.95, "clip_range": 0.1, "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5}
SAVE_STATE_SECONDS = 300    # a whole training state at least this often, besides each --save-every snapshot
RESUMABLE = frozenset({"frames", "save_every", "threads"})


def positive_int(name: str, hi: int):
    def parse(text: str) -> int:
        try:
            v = int(float(text)) if "e" in text.lower() else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r}: not a whole number") from None
        if not 1 <= v <= hi:
            raise argparse.ArgumentTypeError(f"{name} {v}: must be between 1 and {hi:,}")
        return v
    return parse


def add_flags(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0]
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="world model checkpoint (a file, or a shipped model's name: default) whose "
                       "dream the agent trains in")
    where.add_argument("--env", help="train in the real game instead (the baseline), e.g. builtin:gems")
    p.add_argument("--out", required=True, help="run folder (created; the same command again resumes it)")
    p.add_argument("--reward", help="reward model for the dream (default: <model>.reward.safetensors or "
                   "reward.safetensors beside the model)")
    p.add_argument("--frames", type=positive_int("--frames", MAX_FRAMES), default=300_000,
                   help="frames of play to train on, over all worlds (default 300000)")
    p.add_argument("--worlds", type=positive_int("--worlds", MAX_WORLDS), default=32,
                   help="worlds played at once: one session batch in the dream (default 32)")
    p.add_argument("--episode-steps", type=positive_int("--episode-steps", 100_000), default=None,
                   help="frames per dream episode before it is cut off (default: the game's own limit, 1000 for "
                   "builtin:gems)")
    p.add_argument("--action-repeat", type=positive_int("--action-repeat", 16), default=4,
                   help="frames each choice of the agent is held (default 4, as agents on Atari)")
    p.add_argument("--starts", help="folder of recorded play: each dream episode starts from a random window of it "
                   "(default: the model's built-in start state)")
    p.add_argument("--context-noise", type=float, default=None, help="the dream's context noise (default: the "
                   "model's own)")
    p.add_argument("--denoise-steps", type=int, default=None, help="the dream's sampling steps per frame "
                   "(default: the model's own)")
    p.add_argument("--guidance", type=float, default=None, help="the dream's action guidance (default: the model's)")
    p.add_argument("--save-every", type=positive_int("--save-every", MAX_FRAMES), default=None,
                   help="write a policy to checkpoints/ every this many frames (default: an eighth of --frames)")
    p.add_argument("--seed", type=int, default=0, help="seed of the policy's weights, PPO and the worlds")
    p.add_argument("--size", type=int, default=64, help="frame side of the real game with --env (default 64)")
    p.add_argument("--device", default="cpu", help="device of the dream and the policy (cpu, cuda)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--no-resume", action="store_true", help="start over in an existing run folder")
    p.add_argument("--force", action="store_true", help="resume although flags changed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---- the world the agent plays in ------------------------------------------------------------------------------------
def reward_path(model: Path, given: str | None) -> Path:
    """--reward, or the reward model beside the world model; AgentError naming what to do when there is none."""
    if given:
        p = resolve_model(given)   # a file, a run folder, or a shipped reward model's name (default.reward)
        if p.is_dir():
            p = p / "reward.safetensors"
        if not p.is_file():
            raise AgentError(f"--reward {given}: no such reward model file")
        return p
    for p in (model.with_name(model.name.replace(".safetensors", ".reward.safetensors")),
              model.parent / "reward.safetensors"):
        if p.is_file():
            return p
    raise AgentError(f"--model {model}: this world model has no reward model, so its dream gives no reward; train "
                     "one on recorded play with 'reverie train reward --data DIR --out RUN' and pass --reward "
                     "RUN/reward.safetensors")


def world_model(given: str) -> Checkpoint:
    ckpt = load_checkpoint(given)
    if not (ckpt.has("wm") and ckpt.has("ae")):
        raise AgentError(f"--model {ckpt.path}: a {ckpt.kind!r} checkpoint without a world model; pass a model "
                         "that 'reverie train' wrote (or a shipped one: default)")
    return ckpt


def dream_setup(args: argparse.Namespace) -> tuple[Checkpoint, Path, Any, int, Any]:
    """What --model's dream needs (train agent and eval agent alike): the world model, its reward model's path and
    reward function (checked to fit the model's game), the episode limit (--episode-steps) and the starts (--starts)."""
    from engine.reward_model import RewardFunction

    ckpt = world_model(args.model)
    rpath = reward_path(ckpt.path, args.reward)
    reward_ckpt = load_checkpoint(rpath)
    reward_fn = RewardFunction.from_checkpoint(reward_ckpt, args.device, "--reward")
    if reward_ckpt.action_spec.to_dict() != ckpt.action_spec.to_dict():
        raise AgentError(f"--reward {rpath}: a reward model of {reward_ckpt.action_spec.game!r} (action spec "
                         f"v{reward_ckpt.action_spec.version}), but the world model plays {ckpt.action_spec.game!r} "
                         f"(v{ckpt.action_spec.version}); train a reward model on this game's play")
    steps = args.episode_steps or game_limit(ckpt.action_spec.game)
    sampler = None
    if args.starts:
        from train.agents.starts import RecordedStarts

        sampler = RecordedStarts.for_model(args.starts, ckpt)
    return ckpt, rpath, reward_fn, steps, sampler


def make_dream(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The SB3 env over B dream worlds, and what the agent file records about it."""
    from train.agents.dream_vec_env import DreamVecEnv
    from train.agents.sb3_envs import DreamSB3Env

    ckpt, rpath, reward_fn, steps, sampler = dream_setup(args)
    dream = DreamVecEnv(ckpt, num_envs=args.worlds, max_episode_steps=steps, reward_fn=reward_fn,
                        steps=args.denoise_steps, guidance=args.guidance, context_noise=args.context_noise,
                        device=args.device, threads=args.threads, start_sampler=sampler)
    s = dream.session
    info = {"trained_in": "dream",   # shipped models by name, so the agent file means the same on every install
            "world_model": model_name(ckpt.path), "world_model_sha256": file_sha256(ckpt.path),
            "reward_model": model_name(rpath), "reward_model_sha256": file_sha256(rpath),
            "episode_steps": steps, "starts": args.starts,
            "dream": {"context_noise": s.context_noise, "steps": s.steps, "guidance": s.guidance}}
    return DreamSB3Env(dream, seed=args.seed, repeat=args.action_repeat), info


def game_limit(env_id: str) -> int:
    """The real game's own episode limit (builtin:gems: 1000 frames); 1000 where the game has none."""
    if env_id == "builtin:gems":
        from train.games.builtin import GemsConfig

        return GemsConfig().max_steps
    return 1000


def make_real(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from train.agents.sb3_envs import GameSB3Env
    from train.games.registry import make_game

    try:
        games = [make_game(args.env, size=args.size) for _ in range(args.worlds)]
    except ValueError as e:
        raise AgentError(f"--env {args.env}: {e}") from None
    return GameSB3Env(games, seed=args.seed, repeat=args.action_repeat), {"trained_in": "real", "env": args.env}


# ---- training -------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    require_sb3()
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    torch.set_num_threads(max(1, args.threads))
    flags = check_out(args, "agent", RESUMABLE)
    run_dir = RunDir(args.out)
    env, info = make_dream(args) if args.model else make_real(args)
    spec = env.dream.action_spec if args.model else env.games[0].action_spec
    frame_shape = tuple(env.observation_space.shape[1:]) + (env.observation_space.shape[0],)
    save_every = args.save_every or max(1, args.frames // 8)
    repeat = args.action_repeat       # SB3 counts the agent's steps; a step is `repeat` frames of every world
    run_dir.write_config({"stage": "agent", "flags": flags})
    model = PPO(policy_class(), env, seed=args.seed, device=args.device, verbose=0,
                tensorboard_log=str(run_dir.root / "tb"),
                policy_kwargs={"features_extractor_kwargs": {"features_dim": FEATURES_DIM}}, **PPO_SETTINGS)
    latest = None if args.no_resume else run_dir.latest()
    done = 0
    if latest is not None:
        meta = run_dir.load_state(latest, model.policy, model.policy.optimizer)
        done, model._n_updates = int(meta["step"]), int(meta.get("n_updates", 0))
        model.num_timesteps = done // repeat
        print(f"{args.out}: resuming at {done:,} frames")
    if done >= args.frames:
        print(f"{args.out}: already trained on {done:,} frames (--frames {args.frames:,}); pass a larger --frames "
              "to train on")
        env.close()
        return 0
    info = {**info, "game": spec.game, "seed": args.seed, "action_repeat": repeat, "ppo": PPO_SETTINGS}
    metrics = run_dir.root / "metrics.jsonl"
    (run_dir.root / "checkpoints").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def save(frames: int, snapshot: bool) -> None:
        body = {**info, "frames": frames}
        save_agent(run_dir.root / AGENT_FILE, model.policy, spec, frame_shape, body)
        if snapshot:
            save_agent(run_dir.root / "checkpoints" / f"agent_{frames:09d}.safetensors", model.policy, spec,
                       frame_shape, body)
        run_dir.save_state(frames, model.policy, model.policy.optimizer, keep=2,
                           extra={"n_updates": int(model._n_updates)})

    class Progress(BaseCallback):
        def __init__(self, signals: StopSignals):
            super().__init__()
            self.signals, self.saved_at, self.next_snapshot = signals, time.monotonic(), \
                (done // save_every + 1) * save_every
            self.bar = tqdm(total=args.frames, initial=done, unit="frame", unit_scale=True, desc="agent",
                            disable=args.no_progress, dynamic_ncols=True)
            self.recent: list[float] = []

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            frames = int(self.model.num_timesteps) * repeat
            self.bar.update(frames - self.bar.n)
            ended = env.take_finished()
            if ended:
                with open(metrics, "a") as f:
                    for r, n in ended:
                        f.write(json.dumps({"frames": frames, "return": r, "length": n}) + "\n")
                self.recent = (self.recent + [r for r, _ in ended])[-100:]
                self.bar.set_postfix_str(f"return {np.mean(self.recent):.2f} ({len(self.recent)} episodes)")

        def _on_training_end(self) -> None:
            self.bar.close()

    def on_update_end(callback: Progress) -> None:
        """After each PPO update (weights whole): snapshots, states, and Ctrl-C."""
        frames = int(model.num_timesteps) * repeat
        snapshot = frames >= callback.next_snapshot or frames >= args.frames
        if snapshot:
            callback.next_snapshot = (frames // save_every + 1) * save_every
        signum = callback.signals.agreed()
        if snapshot or signum or time.monotonic() - callback.saved_at > SAVE_STATE_SECONDS:
            save(frames, snapshot)
            callback.saved_at = time.monotonic()
        if signum:
            callback.bar.close()
            env.close()
            line = (f"{signal_name(signum)}: stopped at {frames:,} frames, its whole state is saved in "
                    f"{run_dir.latest()}; run the same command to resume from it")
            print(line, flush=True)
            StopSignals.stop(signum, line)

    with StopSignals(Dist()) as signals:
        progress = Progress(signals)
        original_train = model.train

        def train_then_check() -> None:   # PPO.learn calls train() once per rollout: the update's end is here
            original_train()
            on_update_end(progress)

        model.train = train_then_check
        model.learn(total_timesteps=-(-(args.frames - done) // repeat), callback=progress, reset_num_timesteps=False,
                    tb_log_name="ppo")
    frames = int(model.num_timesteps) * repeat
    elapsed = time.perf_counter() - started
    summary = {"frames": frames, "seconds": round(elapsed, 1), "frames_per_second": round((frames - done) /
               max(elapsed, 1e-9), 1), **info}
    atomic_write_text(run_dir.root / "train.json", json.dumps(summary, indent=2) + "\n")
    env.close()
    print(f"wrote {run_dir.root / AGENT_FILE}: {frames:,} frames in {elapsed / 60:.1f} min "
          f"({summary['frames_per_second']} frames/s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reverie train agent")
    add_flags(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (AgentError, CheckpointError, TrainingError) as e:
        print(f"reverie train agent: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
