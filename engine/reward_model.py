"""Reward and episode-end model: the reward of a step and whether the game ended there, read from the frame before,
the action and the frame after.

The dream (engine.Session) imagines frames only; an agent trained in it (DreamEnv, `reverie train agent`) also needs
the reward of each imagined step and the end of the episode. This small conv net gives both, as World Models (Ha and
Schmidhuber 2018) and DIAMOND (Alonso et al. 2024) do with a separate reward/termination predictor. It is a model of
its own rather than heads beside the world model because the shipped world model's frame step, its exported graphs,
the web page and the server then stay byte for byte as they are (no new outputs to export or serve), and because it
trains in minutes on real frames (`reverie train reward`, train/training/reward.py) without retraining the world
model: a reward model can be added to any world model already shipped for the same game and action spec.

The reward is predicted as classes of the reward values seen in training where they are few (builtin:gems: {0, +1}),
with class weights that lift the rare non-zero rewards, or as a regression where they are many. The end is the
probability that the game itself ended the episode at this step (terminated: lives gone); truncation (a time limit,
the recorder's --steps) depends on the step count, not on the frames, and is left to the environment's own limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.autoencoder import frames_to_tensor
from engine.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_into

MAX_CLASSES = 8            # more distinct reward values than this: the reward is regressed, not classified
MAX_WEIGHT = 50.0          # cap of a rare class's loss weight (a class seen once would otherwise dominate)


def reward_classes(rewards: torch.Tensor, max_classes: int = MAX_CLASSES) -> list[float] | None:
    """The sorted distinct reward values of the training steps, or None (regression) when there are more than
    `max_classes` of them; 0 is always a class, so "no reward" can be predicted."""
    values = sorted(set(torch.unique(rewards.float()).tolist()) | {0.0})
    return values if len(values) <= max_classes else None


def class_weights(counts: torch.Tensor, max_weight: float = MAX_WEIGHT) -> torch.Tensor:
    """Inverse-frequency loss weights (mean 1 over the steps), capped at `max_weight`; unseen classes weigh 1."""
    total = counts.sum().clamp(min=1).float()
    w = total / (len(counts) * counts.float().clamp(min=1))
    return torch.where(counts > 0, w.clamp(max=max_weight), torch.ones_like(w))


class RewardModel(nn.Module):
    """(frame before, action, frame after) -> (reward logits (B, K) or value (B, 1), end logit (B,))."""

    def __init__(self, action_dim: int, classes: list[float] | None, width: int = 32):
        super().__init__()
        w = width
        self.classes = classes
        self.register_buffer("values", torch.tensor(classes or [0.0], dtype=torch.float32), persistent=False)
        self.frames = nn.Sequential(
            nn.Conv2d(9, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveMaxPool2d(4), nn.Flatten())   # max: a small change (a score digit) is not averaged away
        self.head = nn.Sequential(nn.Linear(2 * w * 16 + action_dim, 128), nn.SiLU(),
                                  nn.Linear(128, (len(classes) if classes else 1) + 1))

    def forward(self, before: torch.Tensor, action: torch.Tensor, after: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """before/after: (B, 3, H, W) in [0, 1], action: (B, A); the difference image is given explicitly."""
        feats = self.frames(torch.cat([before, after, after - before], dim=1))   # (B, 2w*16)
        out = self.head(torch.cat([feats, action], dim=1))                       # (B, K + 1)
        return out[:, :-1], out[:, -1]

    def reward_of(self, reward_out: torch.Tensor) -> torch.Tensor:
        """The predicted reward (B,): the most likely class's value, or the regressed value."""
        if self.classes is None:
            return reward_out[:, 0]
        return self.values[reward_out.argmax(dim=1)]


@dataclass
class RewardLoss:
    """Class-weighted cross entropy on the reward (or MSE weighted up where the reward is non-zero) plus BCE on the
    end with the rare ends weighted up."""

    weights: torch.Tensor | None      # (K,) class weights; None for regression
    end_weight: float                 # pos_weight of the end's BCE
    nonzero_weight: float = 1.0       # regression: weight of a step whose reward is non-zero

    def __call__(self, model: RewardModel, reward_out: torch.Tensor, end_logit: torch.Tensor,
                 target: torch.Tensor, ended: torch.Tensor) -> torch.Tensor:
        """target: (B,) class index (classes) or reward (regression); ended: (B,) 0/1."""
        if model.classes is None:
            w = torch.where(target != 0, self.nonzero_weight, 1.0)
            reward_loss = (w * (reward_out[:, 0].float() - target) ** 2).sum() / w.sum()
        else:
            reward_loss = F.cross_entropy(reward_out.float(), target, weight=self.weights.to(reward_out.device))
        end_loss = F.binary_cross_entropy_with_logits(
            end_logit.float(), ended.float(), pos_weight=torch.tensor(self.end_weight, device=end_logit.device))
        return reward_loss + end_loss


def class_index(model: RewardModel, rewards: torch.Tensor) -> torch.Tensor:
    """Rewards (B,) -> index of the nearest class (B,) (classes); the rewards themselves for regression."""
    if model.classes is None:
        return rewards.float()
    return (rewards.float()[:, None] - model.values[None, :].to(rewards.device)).abs().argmin(dim=1)


@torch.no_grad()
def predict(model: RewardModel, before: torch.Tensor, action: torch.Tensor, after: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames (B, H, W, 3) and actions (B, A) -> (predicted reward (B,), probability of the end (B,))."""
    reward_out, end_logit = model(frames_to_tensor(before), action.float(), frames_to_tensor(after))
    return model.reward_of(reward_out), torch.sigmoid(end_logit.float())


def precision_recall(predicted: torch.Tensor, actual: torch.Tensor) -> dict[str, float | int | None]:
    """Precision and recall of a yes/no prediction (B,) bool, with the counts; None where undefined (nothing
    predicted, or nothing to find)."""
    tp = int((predicted & actual).sum())
    pred, pos = int(predicted.sum()), int(actual.sum())
    return {"precision": tp / pred if pred else None, "recall": tp / pos if pos else None,
            "true_positives": tp, "predicted": pred, "positives": pos, "steps": int(actual.numel())}


def load_reward_model(ckpt: Checkpoint, flag: str = "") -> RewardModel:
    """The reward model of a checkpoint that `reverie train reward` wrote, in eval mode; a clear error for any other."""
    where = f"{flag} {ckpt.path}" if flag else str(ckpt.path)
    if ckpt.kind != "reward" or not ckpt.has("reward"):
        raise CheckpointError(f"{where}: a {ckpt.kind!r} checkpoint, not a reward model; pass the reward.safetensors "
                              "that 'reverie train reward' wrote")
    classes = ckpt.extra.get("classes")
    width = ckpt.extra.get("width", 32)
    if not (classes is None or (isinstance(classes, list) and all(isinstance(c, (int, float)) for c in classes))):
        raise CheckpointError(f"{where}: bad 'classes' {classes!r} in its metadata; train it again")
    model = RewardModel(ckpt.action_spec.size, None if classes is None else [float(c) for c in classes], int(width))
    return load_into(model, ckpt, "reward").eval()


class RewardFunction:
    """A reward model as the dream's `reward_fn` (train/agents/dream_env.py): (prev_frames (B, H, W, 3) uint8,
    actions (B, A) float32, frames (B, H, W, 3) uint8) numpy arrays -> (rewards (B,) float32, ended (B,) bool)."""

    def __init__(self, model: RewardModel, end_threshold: float = 0.5, device: str | torch.device = "cpu"):
        self.model, self.end_threshold, self.device = model.to(device).eval(), end_threshold, torch.device(device)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> RewardFunction:
        """From a reward.safetensors, with the end threshold it was evaluated with."""
        return cls.from_checkpoint(load_checkpoint(path), device)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: str | torch.device = "cpu", flag: str = "") -> RewardFunction:
        """From a loaded reward checkpoint (`flag` names where it came from in an error)."""
        threshold = (ckpt.extra.get("eval") or {}).get("end_threshold", 0.5)
        return cls(load_reward_model(ckpt, flag), float(threshold), device)

    def __call__(self, prev_frames: np.ndarray, actions: np.ndarray, frames: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        def on(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:   # a copy: the env hands read-only views
            return torch.from_numpy(np.array(x)).to(self.device, dtype)

        reward, p_end = predict(self.model, on(prev_frames, torch.uint8), on(actions, torch.float32),
                                on(frames, torch.uint8))
        return reward.cpu().numpy().astype(np.float32), (p_end >= self.end_threshold).cpu().numpy()
