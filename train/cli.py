"""`reverie train ae|wm|idm`: argument parsing shared by the three training stages.

Flags map onto TrainConfig fields (and a few stage fields); `--dry-run` prints the resolved configuration;
every run folder gets its `config.json`.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from train.loop import TrainConfig

STAGE_DEFAULTS = {
    "ae": {"steps": 2000, "batch": 32, "lr": 1e-3},
    "wm": {"steps": 3000, "batch": 8, "lr": 3e-4},
    "idm": {"steps": 600, "batch": 64, "lr": 1e-3},
}


def add_train_flags(p: argparse.ArgumentParser, stage: str) -> None:
    d = {**{f.name: f.default for f in fields(TrainConfig)}, **STAGE_DEFAULTS[stage]}
    p.add_argument("--data", required=True, help="folder of episode files (from 'reverie record')")
    p.add_argument("--out", required=True, help="run folder (created; an existing run resumes)")
    p.add_argument("--preset", default="tiny", help="model size: tiny, small, oasis (default tiny)")
    p.add_argument("--steps", type=int, default=d["steps"], help=f"optimizer steps (default {d['steps']})")
    p.add_argument("--batch", type=int, default=d["batch"], help=f"global batch (default {d['batch']})")
    p.add_argument("--lr", type=float, default=d["lr"], help=f"peak learning rate (default {d['lr']})")
    p.add_argument("--warmup", type=int, default=d["warmup"])
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    p.add_argument("--grad-clip", type=float, default=d["grad_clip"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--save-every", type=int, default=d["save_every"])
    p.add_argument("--log-every", type=int, default=d["log_every"])
    p.add_argument("--sample-every", type=int, default=0, help="write sample images every N steps (0: at the end)")
    p.add_argument("--max-bad-steps", type=int, default=d["max_bad_steps"])
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the model over ranks (FSDP2) instead of replicating it (DDP)")
    p.add_argument("--time-limit", type=float, default=0.0,
                   help="stop after this many seconds (the LR schedule then follows time; not bit-reproducible)")
    p.add_argument("--skip-bad", action="store_true", help="skip damaged episode files with a warning")
    p.add_argument("--no-resume", action="store_true", help="ignore saved states in --out and start over")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, warmup=min(args.warmup, max(1, args.steps // 5)),
                       weight_decay=args.weight_decay, grad_clip=args.grad_clip, seed=args.seed,
                       precision=args.precision, device=args.device, threads=args.threads,
                       save_every=args.save_every, log_every=args.log_every, sample_every=args.sample_every,
                       max_bad_steps=args.max_bad_steps, time_limit=args.time_limit,
                       fsdp=args.fsdp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reverie train", description="Train a stage of the world model.")
    sub = p.add_subparsers(dest="stage", required=True)
    pa = sub.add_parser("ae", help="the autoencoder (frame <-> latent grid)")
    add_train_flags(pa, "ae")
    pa.add_argument("--crop", type=int, default=0,
                    help="train on random crops of this size (a multiple of the latent factor; 0: whole frames)")
    pw = sub.add_parser("wm", help="the world model (causal backbone + diffusion head) on cached latents")
    add_train_flags(pw, "wm")
    pw.add_argument("--ae", required=True, help="autoencoder checkpoint (.safetensors from 'reverie train ae')")
    pw.add_argument("--idm", help="inverse-dynamics checkpoint to bundle into the model file, for eval")
    pw.add_argument("--window", type=int, default=0, help="frames per training window (default: the preset's)")
    pw.add_argument("--init", default=None,
                    help="warm start: world-model weights from a checkpoint or a training state folder (new weights "
                         "the model has since gained start fresh); the run itself starts at step 0")
    pw.add_argument("--half", action="store_true", help="store the final model's weights as float16 (half size)")
    pw.add_argument("--rollout-iters", type=int, default=None,
                    help="train on the model's own rollouts against drift: Jacobi passes K (0: off; default: the "
                         "preset's)")
    pw.add_argument("--rollout-fraction", type=float, default=None,
                    help="share of windows whose context is the model's own rollout (default: the preset's, 0.5)")
    pw.add_argument("--backbone-actions", choices=("on", "off"), default=None,
                    help="whether the backbone also reads the action that led to each frame (off: the head alone "
                         "reads actions; default: the preset's, on)")
    pi = sub.add_parser("idm", help="the inverse-dynamics model (action from two frames) used by eval")
    add_train_flags(pi, "idm")
    args = p.parse_args(argv)
    from engine.checkpoint import CheckpointError
    from train.loop import TrainingError, finish_distributed

    ok = False
    try:
        if args.stage == "ae":
            from train.train_ae import run
        elif args.stage == "wm":
            from train.train_wm import run
        else:
            from train.idm import run
        rc = int(run(args) or 0)
        ok = rc == 0
    except (CheckpointError, TrainingError, FileNotFoundError, ValueError) as e:
        print(f"reverie train {args.stage}: error: {e}", file=sys.stderr)
        rc = 1
    finally:  # an uncaught error leaves the group too (without waiting for the other ranks) and propagates
        joined = finish_distributed(ok)
    if joined:
        # a torchrun worker whose files are all written ends here: the C++ teardown of the collective backend at
        # interpreter exit can abort a rank that has finished its work (seen with gloo + FSDP2)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc
