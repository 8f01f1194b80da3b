"""Training-step time of the tiny world model on this CPU: fp32 against bf16 autocast (issue 3 asks to measure).

    python benchmarks/bench_train_precision.py [--threads 1] [--batch 8] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.errors import ReverieError
from engine.knobs import arg_type, check_batch, check_threads
from engine.output import check_count, prepare_output, write_json
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=1)
    p.add_argument("--batch", type=arg_type(check_batch, "--batch", int), default=8)
    p.add_argument("--repeats", type=arg_type(check_count(1), "--repeats", int), default=3)
    p.add_argument("--json", type=Path, default=None, help="also write the results here (folders are made)")
    args = p.parse_args(argv)
    try:
        if args.json is not None:
            prepare_output(args.json)       # before the run, not after it
    except ReverieError as e:
        print(f"bench_train_precision: error: {e}", file=sys.stderr)
        return 1
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
    if args.json is not None:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
