"""Training-step time of the tiny world model on this CPU: fp32 against bf16 autocast (issue 3 asks to measure).

    python benchmarks/bench_train_precision.py [--threads 1] [--batch 8] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from engine.config import ModelConfig
from engine.world_model import WorldModel


def step_time(wm: WorldModel, opt, z, a, amp: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss, _ = wm.loss(z, a)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return min(times[1:])  # the first step warms up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig.from_name("tiny").world_model
    torch.manual_seed(0)
    wm = WorldModel(cfg)
    opt = torch.optim.AdamW(wm.parameters(), 1e-4)
    T = cfg.context_frames
    z = torch.randn(args.batch, T, cfg.latent_channels, cfg.latent_height, cfg.latent_width)
    a = torch.zeros(args.batch, T, cfg.action_dim)
    fp32 = step_time(wm, opt, z, a, False, args.repeats)
    bf16 = step_time(wm, opt, z, a, True, args.repeats)
    out = {"fp32_s_per_step": fp32, "bf16_autocast_s_per_step": bf16, "bf16_over_fp32": bf16 / fp32,
           "threads": args.threads, "batch": args.batch, "window": T, "torch": torch.__version__}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
