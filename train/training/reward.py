"""`reverie train reward`: train the reward and episode-end model (engine/reward_model.py) on recorded steps.

`reverie train reward --data DIR --out RUN [--heldout DIR] [--init CKPT] [--model WORLD]` trains on the episodes of DIR
that carry rewards (episode format 3: `reverie record`, `play --human`) and writes RUN/reward.safetensors (kind
"reward", with the action spec and the reward classes) and RUN/eval.json: precision and recall of "reward != 0" and
of "episode ended" (terminated) over every step of the held-out episodes (--heldout, or every HOLDOUT_EVERY-th
episode of DIR).

With --model, every frame (in training and in the held-out scores) is first redrawn by that world model's autoencoder
(encoded and decoded, as the dream draws its frames), so the reward model reads frames as the agent in the dream sees
them. Trained on the game's crisp frames, the shipped gems reward model found 15 gems per 100 dream frames of random
play against about 0.6 in the game; trained on redrawn frames, 2.5 (docs/research/agents-in-dream.md).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.autoencoder import frames_to_tensor
from engine.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, model_name, save_checkpoint
from engine.config import ModelConfig
from engine.reward_model import (
    MAX_WEIGHT,
    RewardLoss,
    RewardModel,
    class_index,
    class_weights,
    load_reward_model,
    precision_recall,
    predict,
    reward_classes,
)
from train.data.episodes import SUFFIX, TERMINATED, Episode
from train.data.windows import pick_focused_windows
from train.training.config import (
    TrainConfig,
    TrainingError,
    add_settings,
    at_least,
    data_path,
    init_path,
    open_episodes,
    restate,
    setting,
    settings_from_args,
    step_generator,
)
from train.training.loop import Dist, fit, start_run, trained_weights
from train.training.run_dir import check_out

HELP = "the reward and episode-end model that the dream's agents are trained with"
RE_RECORD = "record them again with reverie record (format 3)"
HOLDOUT_EVERY = 5          # without --heldout, every 5th episode of --data is held out for eval.json
EVAL_BATCH = 256           # steps per forward pass when scoring the held-out episodes


@dataclass
class RewardSettings(TrainConfig):
    """`reverie train reward`: the shared settings, with this stage's own steps, batch and learning rate."""

    steps: int = restate("steps", 600)
    batch: int = restate("batch", 64)
    lr: float = restate("lr", 2e-3)
    width: int = setting(32, "channels of the first conv layer", check=at_least(4))
    end_threshold: float = setting(0.5, "an end is predicted where its probability is at least this",
                                   check=(lambda v: 0 < v < 1, "in (0, 1)"))
    end_share: float = setting(1 / 16, "share of each batch drawn from the steps where the game ended (ends are a "
                               "few in thousands of steps; the loss weight follows the share drawn)",
                               check=(lambda v: 0 <= v < 1, "in [0, 1)"))


SETTINGS = RewardSettings


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `reverie train reward`: its paths, then its settings (train.training.config.add_settings)."""
    p.add_argument("--data", required=True, help="folder of episode files with rewards (from 'reverie record')")
    p.add_argument("--out", required=True, help="run folder (created; an existing run of this stage resumes)")
    p.add_argument("--heldout", default=None, help="folder of held-out episodes with rewards for eval.json "
                   f"(default: every {HOLDOUT_EVERY}th episode of --data, left out of training)")
    p.add_argument("--init", default=None, help="start from this reward model (a reward.safetensors or its run)")
    p.add_argument("--model", default=None, help="the world model whose dream the reward model will read: frames are "
                   "redrawn by its autoencoder first (recommended; a file or a shipped model's name)")
    add_settings(p, RewardSettings)


# ---------------------------------------------------------------------------------------------------------------
# Checks before any work: nothing is written when one fails
# ---------------------------------------------------------------------------------------------------------------
def rewarded_files(flag: str, folder: str) -> list[Path]:
    """The episode files of `folder` that carry rewards (headers only); a one-line error when none do."""
    root = Path(folder)
    files = [root] if root.is_file() else sorted(root.glob("*" + SUFFIX))
    with_reward = []
    for f in files:
        with Episode(f) as ep:
            if ep.has_reward:
                with_reward.append(f.resolve())
    if not with_reward:
        raise TrainingError(f"{flag} {folder}: none of its {len(files)} episode files has rewards (they were "
                            f"recorded before episode format 3, imported or dreamed); {RE_RECORD}")
    return with_reward


def heldout_path(value: str) -> Path:
    """`--heldout`: a folder of episode files; the error names the flag."""
    p = Path(value)
    if not p.exists() or (p.is_dir() and not any(p.glob("*" + SUFFIX))):
        raise TrainingError(f"--heldout {value}: no episode files there; record held-out episodes with "
                            f"'reverie record --seed 1000 --out {value}'")
    return p


def init_model(value: str):
    """`--init`: a reward checkpoint (file or run folder); any other kind is a one-line error."""
    p = init_path(value)
    if p.is_dir():
        if not (p / "reward.safetensors").is_file():
            raise CheckpointError(f"--init {value}: a folder without reward.safetensors; pass the reward model that "
                                  "'reverie train reward' wrote")
        p = p / "reward.safetensors"
    return load_checkpoint(p)


# ---------------------------------------------------------------------------------------------------------------
# The steps of a dataset: frame pairs, the action between them, its reward and end
# ---------------------------------------------------------------------------------------------------------------
class Steps:
    """Every step of an EpisodeSource's rewarded episodes: step (e, s) leads from frame s to frame s + 1 of episode e
    with action actions[e][s + 1] (the led-to convention), reward rewards[e][s] and end flags ends[e][s]."""

    def __init__(self, src, use: list[Path], redraw=None):
        self.src, self.redraw = src, redraw   # redraw: uint8 frames (N, H, W, 3) -> the same as the dream draws them
        chosen = set(use)
        self.rewards: list[np.ndarray] = []
        self.ends: list[np.ndarray] = []
        self.used: list[int] = []
        for e, info in enumerate(src.ds.episodes):
            with Episode(info.path) as ep:
                if ep.has_reward and Path(info.path).resolve() in chosen:
                    self.rewards.append(ep.rewards())
                    self.ends.append(ep.ends())
                    self.used.append(e)
                else:
                    self.rewards.append(np.zeros(len(ep) - 1, np.float32))
                    self.ends.append(np.zeros(len(ep) - 1, np.uint8))
        self.starts = [np.arange(len(self.rewards[e])) if e in self.used else np.zeros(0, np.int64)
                       for e in range(len(self.rewards))]
        self.end_starts = [np.flatnonzero(self.ends[e] & TERMINATED) if e in self.used else np.zeros(0, np.int64)
                           for e in range(len(self.rewards))]

    def all_rewards(self) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([self.rewards[e] for e in self.used]))

    def all_terminated(self) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([self.ends[e] for e in self.used]) & TERMINATED) > 0

    def pairs(self, sel: list[tuple[int, int]]):
        """uint8 frames before and after (B, H, W, 3), actions (B, A), rewards (B,), terminated (B,) of steps sel."""
        fr = np.stack([self._frames(e, s) for e, s in sel])                    # (B, 2, H, W, 3)
        act = np.stack([self.src.actions[e][s + 1] for e, s in sel])
        rew = np.array([self.rewards[e][s] for e, s in sel], np.float32)
        end = np.array([self.ends[e][s] & TERMINATED for e, s in sel]) > 0
        fr = torch.from_numpy(fr)
        if self.redraw is not None:
            fr = self.redraw(fr.flatten(0, 1)).view(fr.shape)
        return fr[:, 0], fr[:, 1], torch.from_numpy(act), torch.from_numpy(rew), torch.from_numpy(end)

    def _frames(self, e: int, s: int) -> np.ndarray:
        if self.src.frames is not None:
            return self.src.frames[e][s:s + 2]
        with Episode(self.src.ds.episodes[e].path) as ep:
            return ep.frames(s, s + 2)


def split(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): every HOLDOUT_EVERY-th file held out; a one-line error under 2 files."""
    if len(files) < 2:
        raise TrainingError(f"--data: only {len(files)} episode with rewards, none left to hold out; record more "
                            "episodes or give --heldout DIR")
    held = files[HOLDOUT_EVERY - 1::HOLDOUT_EVERY] or files[-1:]
    return [f for f in files if f not in held], held


@torch.no_grad()
def evaluate(model: RewardModel, steps: Steps, device: torch.device, end_threshold: float) -> dict:
    """Precision and recall of "reward != 0" and of "episode ended" (terminated) over every step of `steps`."""
    model.eval()
    sel = [(e, s) for e in steps.used for s in range(len(steps.rewards[e]))]
    pred_r, pred_end, true_r, true_end = [], [], [], []
    for i in range(0, len(sel), EVAL_BATCH):
        before, after, act, rew, end = steps.pairs(sel[i:i + EVAL_BATCH])
        r, p = predict(model, before.to(device), act.to(device), after.to(device))
        pred_r.append(r.cpu())
        pred_end.append(p.cpu() >= end_threshold)
        true_r.append(rew)
        true_end.append(end)
    pr, tr = torch.cat(pred_r), torch.cat(true_r)
    return {"reward_nonzero": precision_recall(pr != 0 if model.classes else pr.abs() > nonzero_cut(tr), tr != 0),
            "episode_ended": precision_recall(torch.cat(pred_end), torch.cat(true_end)),
            "reward_mean_abs_error": float((pr - tr).abs().mean()), "episodes": len(steps.used)}


def nonzero_cut(rewards: torch.Tensor) -> float:
    """Regression: a predicted reward counts as non-zero above half the smallest non-zero |reward| seen."""
    nz = rewards[rewards != 0].abs()
    return float(nz.min()) / 2 if len(nz) else 0.5


# ---------------------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Train the reward and episode-end model; write RUN/reward.safetensors and RUN/eval.json."""
    tcfg = settings_from_args(args, RewardSettings, "reward")
    data_path(args.data)  # every path and input, then the run folder, before any work
    files = rewarded_files("--data", args.data)
    if args.heldout:
        heldout_path(args.heldout)
        train_files, held_files = files, rewarded_files("--heldout", args.heldout)
    else:
        train_files, held_files = split(files)
    init = init_model(args.init) if args.init else None
    if init is not None:
        load_reward_model(init, "--init")
    redraw, drawn_by = redrawer(args.model) if args.model else (None, None)
    flags = check_out(args, "reward")
    src = open_episodes(args)
    if init is not None and init.action_spec != src.spec:
        raise TrainingError(f"--init {args.init}: trained for actions {init.action_spec}, the data has {src.spec}")
    ae_cfg = drawn_by.config.autoencoder if drawn_by is not None else None
    if ae_cfg is not None and (drawn_by.action_spec != src.spec or
                               (ae_cfg.height, ae_cfg.width) != tuple(src.frame_shape[:2])):
        raise TrainingError(f"--model {args.model}: a world model of {drawn_by.action_spec.game!r} at "
                            f"{ae_cfg.height}x{ae_cfg.width}, but --data "
                            f"holds {src.spec.game!r} at {src.frame_shape[0]}x{src.frame_shape[1]}")
    train_steps = Steps(src, train_files, redraw)
    if args.heldout:
        held_src = open_episodes(argparse.Namespace(data=args.heldout, skip_bad=args.skip_bad))
        if held_src.spec != src.spec or held_src.frame_shape != src.frame_shape:
            raise TrainingError(f"--heldout {args.heldout}: its action spec or frame size differs from --data's")
        held_steps = Steps(held_src, held_files, redraw)
    else:
        held_steps = Steps(src, held_files, redraw)
    rewards = train_steps.all_rewards()
    classes = init.extra.get("classes") if init is not None else reward_classes(rewards)
    summary = {**src.summary(), "trained_on": len(train_steps.used), "held_out": len(held_steps.used)}
    started = start_run(args.out, tcfg, {"stage": "reward", "flags": flags, "data": summary, "classes": classes},
                        args.dry_run, args.no_resume)
    if started is None:
        return 0
    run_dir, device, dist_info = started
    model = RewardModel(src.spec.size, classes, tcfg.width)
    if init is not None:
        model.load_state_dict(load_reward_model(init, "--init").state_dict())
    model = model.to(device)
    loss = make_loss(model, rewards, train_steps.all_terminated(), tcfg.end_share)

    def batch_fn(step: int, d: Dist):
        """This rank's slice of the steps drawn for `step`, on the device."""
        sel = pick_focused_windows(step_generator(tcfg.seed, step), train_steps.starts, train_steps.end_starts,
                                   tcfg.batch, tcfg.end_share)
        per = tcfg.batch // d.world
        before, after, act, rew, end = train_steps.pairs(sel[d.rank * per:(d.rank + 1) * per])
        return (frames_to_tensor(before.to(device)), act.to(device), frames_to_tensor(after.to(device)),
                class_index(model, rew.to(device)), end.to(device))

    def loss_fn(m, batch):
        """The weighted reward + end loss, and the share of steps whose reward class is right."""
        before, act, after, target, ended = batch
        reward_out, end_logit = m(before, act, after)
        with torch.no_grad():
            right = (reward_out.argmax(dim=1) == target).float().mean() if classes else reward_out.new_zeros(())
        return loss(model, reward_out, end_logit, target, ended), {"accuracy": right}

    last = fit(run=run_dir, model=model, tcfg=tcfg, device=device, dist_info=dist_info, batch_fn=batch_fn,
               loss_fn=loss_fn, describe=lambda v: f"loss {v['loss']:.4f} acc {v.get('accuracy', 0):.3f}",
               resume=not args.no_resume, progress=not args.no_progress)
    weights = trained_weights(run_dir, "reward.safetensors", last, model, tcfg, dist_info)
    if weights is None or not dist_info.main:
        return 0
    model.load_state_dict(weights)
    report = {"heldout": str(args.heldout) if args.heldout else f"every {HOLDOUT_EVERY}th episode of --data",
              "classes": classes, "end": "terminated", "end_threshold": tcfg.end_threshold,
              **evaluate(model, held_steps, device, tcfg.end_threshold)}
    cfg = ModelConfig.from_name("tiny", action_dim=src.spec.size)
    path = save_checkpoint(run_dir.root / "reward.safetensors", kind="reward", config=cfg, action_spec=src.spec,
                           parts={"reward": weights}, data=summary,
                           metrics={k: float(v) for k, v in last.items()},
                           extra={"classes": classes, "width": tcfg.width, "end": "terminated", "eval": report,
                                  "drawn_by": model_name(drawn_by.path) if drawn_by is not None else None})
    atomic_write_text(run_dir.root / "eval.json", json.dumps(report, indent=2) + "\n")
    r, e = report["reward_nonzero"], report["episode_ended"]
    print(f"wrote {path}; held out: reward != 0 precision {shown(r['precision'])} recall {shown(r['recall'])} "
          f"({r['positives']} of {r['steps']} steps), ended precision {shown(e['precision'])} recall "
          f"{shown(e['recall'])} ({e['positives']} ends)")
    return 0


def redrawer(model: str):
    """(uint8 frames -> the same frames encoded and decoded by the world model's autoencoder, its checkpoint)."""
    from engine.autoencoder import Autoencoder, tensor_to_frames
    from engine.checkpoint import load_into

    ckpt = load_checkpoint(model)
    if not (ckpt.has("ae") and ckpt.has("wm")):
        raise CheckpointError(f"--model {ckpt.path}: a {ckpt.kind!r} checkpoint, not a world model; pass the world "
                              "model the reward model is for")
    ae = load_into(Autoencoder(ckpt.config.autoencoder), ckpt, "ae").eval()   # the dream's drawing: its decoder

    @torch.no_grad()
    def redraw(frames: torch.Tensor) -> torch.Tensor:
        return tensor_to_frames(ae.decode(ae.encode(frames_to_tensor(frames))))

    return redraw, ckpt


def make_loss(model: RewardModel, rewards: torch.Tensor, terminated: torch.Tensor, end_share: float) -> RewardLoss:
    """The loss with the rare classes weighted up by their inverse frequency in the training steps, and the ends by
    theirs in the batches (end_share of each batch is drawn from the ends, the rest from all steps)."""
    ends = int(terminated.sum())
    drawn = end_share + (1 - end_share) * ends / len(terminated)
    end_weight = min(MAX_WEIGHT, (1 - drawn) / drawn) if ends else 1.0
    if model.classes is None:
        nonzero = int((rewards != 0).sum())
        return RewardLoss(None, end_weight, min(MAX_WEIGHT, (len(rewards) - nonzero) / nonzero) if nonzero else 1.0)
    counts = torch.bincount(class_index(model, rewards), minlength=len(model.classes))
    return RewardLoss(class_weights(counts), end_weight)


def shown(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
