"""Compare autoencoders on what small moving things need: plain PSNR, PSNR and recall over the pixels that changed
from the previous frame, and per object probe the share of real frames showing the object whose reconstruction shows
it too where it is (the Breakout ball: a model cannot dream what its autoencoder erases), and how often the
reconstruction shows one where the frame has none (decoder speckle).

    python experiments/ae_small_objects.py --data HELDOUT --ae run_a/ae.safetensors run_b/ae.safetensors \
        --json docs/research/results/ae_small_objects.json

Frames: every consecutive pair of the held-out episodes (at most --pairs, evenly spaced). Writes the JSON and prints
one line per autoencoder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from engine.autoencoder import Autoencoder
from engine.checkpoint import load_checkpoint, load_into
from engine.output import write_json
from train.data.windows import EpisodeSource
from train.evaluation.evaluate import autoencoder_on_pairs, reconstruct
from train.evaluation.long_play import evenly_spaced
from train.games.probes import probes_for
from train.training.rollout import psnr


def pairs_of(src: EpisodeSource, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(before, after) uint8 frames of up to `limit` consecutive pairs, evenly spaced over the episodes."""
    before, after = [], []
    for e in range(len(src.env_ids)):
        f = src.episode_frames(e)
        before.append(f[:-1])
        after.append(f[1:])
    b, a = np.concatenate(before), np.concatenate(after)
    keep = evenly_spaced(len(a), limit)
    return b[keep], a[keep]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="held-out episodes")
    p.add_argument("--ae", nargs="+", required=True, help="autoencoder checkpoints (or models with an ae part)")
    p.add_argument("--pairs", type=int, default=2048, help="frame pairs at most (default 2048)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    src = EpisodeSource(a.data)
    env_id = src.env_ids[0]
    probes = probes_for(env_id)
    before, after = pairs_of(src, a.pairs)
    results = {}
    for path in a.ae:
        ckpt = load_checkpoint(path)
        ae = load_into(Autoencoder(ckpt.config.autoencoder), ckpt, "ae").eval()
        with torch.no_grad():
            recon = reconstruct(ae, after, "cpu")
            r = autoencoder_on_pairs(ae, before, after, probes, "cpu", recon=recon)
        r["psnr"] = float(psnr(recon, after).mean())
        r["change_weight"] = ckpt.config.autoencoder.change_weight
        results[str(path)] = r
        objs = ", ".join(f"{k} {v['kept_recon']:.3f} (anywhere {v['visible_recon']:.3f}, without it "
                         f"{v['false_recon'] if v['false_recon'] is not None else float('nan'):.3f})"
                         for k, v in r["objects"].items() if v["kept_recon"] is not None)
        print(f"{path}: psnr {r['psnr']:.2f} dB, changed pixels {r['changed_psnr']:.2f} dB, recall "
              f"{r['changed_recall']:.3f}; kept in the reconstruction: {objs}")
    write_json(a.json, {"data": str(a.data), "env_id": env_id, "autoencoders": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
