"""`reverie train idm`: train the inverse-dynamics model (engine/inverse_dynamics.py) on recorded frame pairs.

`reverie train idm --data DIR --out RUN` writes RUN/idm.safetensors, which eval's action-following score and
`reverie data label` read.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from engine.actions import ActionSpec
from engine.autoencoder import frames_to_tensor
from engine.checkpoint import save_checkpoint
from engine.config import ModelConfig
from engine.inverse_dynamics import InverseDynamics, accuracy, idm_loss
from train.training.config import (
    TrainConfig,
    add_settings,
    data_path,
    open_episodes,
    restate,
    settings_from_args,
    step_generator,
)
from train.training.loop import Dist, fit, start_run, trained_weights
from train.training.run_dir import check_out

HELP = "the inverse-dynamics model (action from two frames) used by eval"


@dataclass
class IDMSettings(TrainConfig):
    """`reverie train idm`: the shared settings, with this stage's own steps, batch and learning rate."""

    steps: int = restate("steps", 600)
    batch: int = restate("batch", 64)
    lr: float = restate("lr", 1e-3)


SETTINGS = IDMSettings


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `reverie train idm`: its paths, then its settings (train.training.config.add_settings)."""
    p.add_argument("--data", required=True, help="folder of episode files (from 'reverie record')")
    p.add_argument("--out", required=True, help="run folder (created; an existing run of this stage resumes)")
    add_settings(p, IDMSettings)


def run(args: argparse.Namespace) -> int:
    """Train the inverse-dynamics model; write RUN/idm.safetensors."""
    tcfg = settings_from_args(args, IDMSettings, "idm")
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
