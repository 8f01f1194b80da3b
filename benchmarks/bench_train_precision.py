"""Training-step time on this CPU: fp32 against bf16 autocast, for the tiny world model and autoencoder.

    python benchmarks/bench_train_precision.py [--threads 1] [--batch 8] [--rounds 2] [--json OUT.json]

`reverie train --precision auto` picks bf16 autocast on a CPU that computes bf16 natively (AVX-512 BF16 or AMX) and
fp32 on any other, because the bargain flips with the hardware: on a 2-core EPYC without native bf16 a world-model
step took 15x as long in bf16 (2026-12-01), on one with AVX-512 BF16 0.52x (2026-12-02). This measures yours: the
two precisions alternate, `--rounds` times, on the same random batch, each time the best of `--repeats` steps, and
the JSON records what the CPU reports about itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from engine.autoencoder import Autoencoder
from engine.config import ModelConfig
from engine.errors import ReverieError
from engine.knobs import arg_type, check_batch, check_threads
from engine.output import check_count, prepare_output, write_json
from engine.world_model import WorldModel
from train.training.loop import cpu_native_bf16
from train.training.wm_loss import WorldModelLoss


def step_time(loss_fn, model: torch.nn.Module, opt, amp: bool, repeats: int) -> float:
    """Best of `repeats` optimizer steps (after one warm-up step), in seconds."""
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return min(times[1:])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=1)
    p.add_argument("--batch", type=arg_type(check_batch, "--batch", int), default=8,
                   help="world-model windows per step (the autoencoder takes 8x as many frames)")
    p.add_argument("--repeats", type=arg_type(check_count(1), "--repeats", int), default=3)
    p.add_argument("--rounds", type=arg_type(check_count(1), "--rounds", int), default=2,
                   help="fp32 and bf16 alternate this many times")
    p.add_argument("--json", type=Path, default=None, help="also write the results here (folders are made)")
    args = p.parse_args(argv)
    try:
        if args.json is not None:
            prepare_output(args.json)       # before the run, not after it
    except ReverieError as e:
        print(f"bench_train_precision: error: {e}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    cfg = ModelConfig.from_name("tiny")
    torch.manual_seed(0)
    wm, ae = WorldModel(cfg.world_model), Autoencoder(cfg.autoencoder)
    c, T = cfg.world_model, cfg.world_model.context_frames
    z = torch.randn(args.batch, T, c.latent_channels, c.latent_height, c.latent_width)
    a = torch.zeros(args.batch, T, c.action_dim)
    frames = torch.rand(8 * args.batch, 3, cfg.autoencoder.height, cfg.autoencoder.width)
    wm_loss = WorldModelLoss()            # the trainer's default knobs, run through forward as it runs them
    parts = {"world_model": (wm, lambda m: m(wm_loss, z, a)[0]), "autoencoder": (ae, lambda m: m.loss(frames)[0])}
    out: dict = {"cpu": cpu_name(), "cpu_native_bf16": cpu_native_bf16(),
                 "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
                 "wm_batch": args.batch, "wm_window": T, "ae_batch": 8 * args.batch, "rounds": args.rounds,
                 "torch": torch.__version__}
    for name, (model, loss_fn) in parts.items():
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        f32, b16 = [], []
        for _ in range(args.rounds):
            f32.append(step_time(loss_fn, model, opt, False, args.repeats))
            b16.append(step_time(loss_fn, model, opt, True, args.repeats))
        out[name] = {"fp32_s_per_step": f32, "bf16_autocast_s_per_step": b16,
                     "bf16_over_fp32": sum(b16) / sum(f32)}
    # what the older result files (2026-12-01) called these, for the world model
    out.update(fp32_s_per_step=min(out["world_model"]["fp32_s_per_step"]),
               bf16_autocast_s_per_step=min(out["world_model"]["bf16_autocast_s_per_step"]),
               bf16_over_fp32=out["world_model"]["bf16_over_fp32"])
    print(json.dumps(out, indent=2))
    if args.json is not None:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
