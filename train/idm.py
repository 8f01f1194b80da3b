"""Inverse-dynamics model (IDM): predicts the action taken between two consecutive frames.

It is the instrument behind eval's action-following score: trained on real frames, it is scored on real pairs
and on pairs the world model generated under the same actions; if the model follows the actions, the IDM reads
them back from its frames nearly as well as from the game's. Buttons are multi-hot (sigmoid + BCE), axes
regressed (MSE). `reverie train idm --data DIR --out RUN` writes RUN/idm.safetensors.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from engine.actions import ActionSpec
from engine.autoencoder import frames_to_tensor
from engine.checkpoint import Checkpoint, load_into, save_checkpoint
from engine.config import ModelConfig
from train.config import add_train_flags, config_from_args, data_path, open_episodes, step_generator
from train.loop import Dist, fit, start_run, trained_weights
from train.run_dir import check_out

HELP = "the inverse-dynamics model (action from two frames) used by eval"


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


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `reverie train idm`: the shared ones."""
    add_train_flags(p, "idm")


def run(args: argparse.Namespace) -> int:
    """Train the inverse-dynamics model; write RUN/idm.safetensors."""
    tcfg = config_from_args(args)
    data_path(args.data)  # every path, then the run folder, before any work
    flags = check_out(args, "idm")
    src = open_episodes(args)
    spec: ActionSpec = src.spec
    nb = len(spec.buttons)
    started = start_run(args.out, tcfg, {"stage": "idm", "flags": flags, "data": src.summary()}, args.dry_run,
                        args.no_resume)
    if started is None:
        return 0
    run_dir, device, dist_info = started
    model = InverseDynamics(spec.size).to(device)

    def batch_fn(step: int, d: Dist):
        """This rank's slice of the frame pairs of `step` and the actions between them."""
        win = src.sample(step_generator(tcfg.seed, step), tcfg.batch, 2)
        per = tcfg.batch // d.world
        sl = slice(d.rank * per, (d.rank + 1) * per)
        fr = frames_to_tensor(win.frames[sl].to(device))  # (b, 2, 3, H, W)
        return fr[:, 0], fr[:, 1], win.actions[sl, 1].to(device)

    def loss_fn(m, batch):
        """The IDM loss, and its accuracy on the batch (a device tensor: no sync)."""
        before, after, target = batch
        logits = m(before, after)
        with torch.no_grad():
            pred = torch.tanh(logits)
            pred[:, :nb] = (logits[:, :nb] > 0).float()
            acc = accuracy(pred, target, nb)
        return idm_loss(logits, target, nb), {"accuracy": acc}

    last = fit(run=run_dir, model=model, tcfg=tcfg, device=device, dist_info=dist_info, batch_fn=batch_fn,
               loss_fn=loss_fn, describe=lambda v: f"loss {v['loss']:.4f} acc {v.get('accuracy', 0):.3f}",
               resume=not args.no_resume, progress=not args.no_progress)
    weights = trained_weights(run_dir, "idm.safetensors", last, model, tcfg, dist_info)
    if weights is None:
        return 0
    if dist_info.main:
        cfg = ModelConfig.from_name("tiny", action_dim=spec.size)
        path = save_checkpoint(run_dir.root / "idm.safetensors", kind="idm", config=cfg, action_spec=spec,
                               parts={"idm": weights}, data=src.summary(),
                               metrics={k: float(v) for k, v in last.items()})
        print(f"wrote {path} (train accuracy {last.get('accuracy', float('nan')):.3f})")
    return 0
