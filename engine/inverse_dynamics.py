"""Inverse-dynamics model (IDM): predicts the action taken between two consecutive frames.

It is the instrument behind eval's action-following score and the labeller of `reverie data label`: trained on real
frames (`reverie train idm`, train/training/idm.py), it is scored on real pairs and on pairs the world model
generated under the same actions; if the model follows the actions, the IDM reads them back from its frames nearly as
well as from the game's. Buttons are multi-hot (sigmoid + BCE), axes regressed (MSE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.autoencoder import frames_to_tensor
from engine.checkpoint import Checkpoint, load_into


class InverseDynamics(nn.Module):
    """Two frames (B, 6, H, W) in [0, 1] -> action logits (B, buttons + axes)."""

    def __init__(self, action_dim: int, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(9, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * w * 16, 128), nn.SiLU(), nn.Linear(128, action_dim))

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """before/after: (B, 3, H, W) in [0, 1]; the difference image is given explicitly."""
        return self.net(torch.cat([before, after, after - before], dim=1))


def idm_loss(logits: torch.Tensor, target: torch.Tensor, n_buttons: int) -> torch.Tensor:
    """BCE on the buttons plus MSE on the (tanh) axes."""
    loss = logits.new_zeros(())
    if n_buttons:
        loss = loss + F.binary_cross_entropy_with_logits(logits[:, :n_buttons], target[:, :n_buttons])
    if logits.shape[1] > n_buttons:
        loss = loss + F.mse_loss(torch.tanh(logits[:, n_buttons:]), target[:, n_buttons:])
    return loss


@torch.no_grad()
def predict(idm: InverseDynamics, before: torch.Tensor, after: torch.Tensor, n_buttons: int) -> torch.Tensor:
    """uint8 frames (B, H, W, 3) -> predicted action vectors (B, A)."""
    logits = idm(frames_to_tensor(before), frames_to_tensor(after))
    out = torch.tanh(logits)
    out[:, :n_buttons] = (logits[:, :n_buttons] > 0).float()
    return out


def accuracy(pred: torch.Tensor, target: torch.Tensor, n_buttons: int) -> torch.Tensor:
    """Share of pairs whose whole button set is read back exactly (axes: within 0.25), as a 0-d tensor on the
    device of `pred` (training logs it without waiting for the device)."""
    ok = torch.ones(pred.shape[0], dtype=torch.bool, device=pred.device)
    if n_buttons:
        ok &= (pred[:, :n_buttons] == target[:, :n_buttons]).all(dim=1)
    if pred.shape[1] > n_buttons:
        ok &= ((pred[:, n_buttons:] - target[:, n_buttons:]).abs() <= 0.25).all(dim=1)
    return ok.float().mean()


def action_accuracy(pred: torch.Tensor, target: torch.Tensor, n_buttons: int) -> float:
    """accuracy() read back as a number (for eval's report)."""
    return float(accuracy(pred, target, n_buttons))


def load_idm(ckpt: Checkpoint) -> InverseDynamics:
    """The inverse-dynamics model of a checkpoint, in eval mode."""
    return load_into(InverseDynamics(ckpt.action_spec.size), ckpt, "idm").eval()
