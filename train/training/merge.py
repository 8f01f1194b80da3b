"""`reverie train merge`: average the world-model weights of fine-tunes of one model (a "model soup"), optionally
add the difference between two other fine-tunes of it (a "task vector", Ilharco et al. 2023), keeping the first
checkpoint's autoencoder, IDM, start state, config, action spec and run-time defaults; records the recipe in `extra`.

The default model since 2026-12-03 (docs/research/soup-and-task-vector.md) is half the model shipped before that day
and half a fine-tune of it with `focus = "avatar,enemies"`, `focus_share = 0.75` and `ema = 0.999`, plus, in the
backbone's input layers and first three blocks, the difference between a `rollout_fraction = 1.0` fine-tune of that
model and a fine-tune with the same settings and time at the usual 0.5 (the `gems` recipe's last stages,
train/training/recipes/gems.toml):

    reverie train merge --out OUT.safetensors BASE.safetensors:0.5 FOCUS_EMA/model.safetensors:0.5 \
        --add OWN/model.safetensors CONTROL/model.safetensors 1.0 \
        --parts backbone.token_in,backbone.level_in,backbone.blocks.0,backbone.blocks.1,backbone.blocks.2
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from engine.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint

HELP = "average fine-tunes of one model's world-model weights, and add task vectors (a model soup)"


def load_wm(path: str, first: Checkpoint | None = None,
            what: str = "averaged") -> tuple[Checkpoint, dict[str, torch.Tensor]]:
    """(checkpoint, its world-model weights); with `first`, the weights must have first's names and shapes and the
    model must play first's game (only fine-tunes of one model can be `what`)."""
    ck = load_checkpoint(path)
    if not ck.has("wm"):
        raise CheckpointError(f"{path}: holds no world-model weights")
    wm = ck.tensors["wm"]
    if first is not None:
        if {k: tuple(v.shape) for k, v in wm.items()} != {k: tuple(v.shape) for k, v in first.tensors["wm"].items()}:
            raise CheckpointError(f"{path}: its world model's weights do not have {first.path}'s names and shapes; "
                                  f"only fine-tunes of one model can be {what}")
        if not ck.action_spec.compatible(first.action_spec):
            raise CheckpointError(f"{path}: a model of {ck.action_spec.game!r}, {first.path} plays "
                                  f"{first.action_spec.game!r}")
    return ck, wm


def average(specs: list[tuple[str, float]]) -> tuple[Checkpoint, dict[str, torch.Tensor]]:
    """(first checkpoint, weighted sum of every checkpoint's 'wm' weights); weights must be positive and sum to 1,
    and every model must have the first one's world-model shapes."""
    if len(specs) < 2:
        raise CheckpointError("give two models or more, each as PATH:WEIGHT")
    if any(w <= 0 for _, w in specs) or not math.isclose(sum(w for _, w in specs), 1.0, abs_tol=1e-6):
        raise CheckpointError(f"weights {[w for _, w in specs]}: each must be > 0 and together they must sum to 1")
    first, wm = load_wm(specs[0][0])
    acc = {k: specs[0][1] * v.float() for k, v in wm.items()}
    for path, w in specs[1:]:
        for k, v in load_wm(path, first)[1].items():
            acc[k] += w * v.float()
    return first, acc


def parse(spec: str) -> tuple[str, float]:
    path, sep, w = spec.rpartition(":")
    try:
        if not sep:
            raise ValueError
        return path, float(w)
    except ValueError:
        raise CheckpointError(f"{spec!r}: give each model as PATH:WEIGHT (for example model.safetensors:0.5)") from None


def add_differences(first: Checkpoint, wm: dict[str, torch.Tensor], adds: list[tuple[str, str, float]],
                    parts: str) -> dict[str, torch.Tensor]:
    """wm + sum of scale * (finetune - base) over `adds`, for the world-model weights named by `parts`: "all", or
    comma-separated name prefixes ("backbone", "backbone.blocks.0", ...; a prefix stops at a dot, so blocks.1 is not
    blocks.10); every model must be a model of first's game with first's world-model names and shapes."""
    prefixes = [q.strip() for q in parts.split(",")]

    def named(k: str, q: str) -> bool:
        return k == q or k.startswith(q + ".")

    unknown = [] if parts == "all" else [q for q in prefixes if not any(named(k, q) for k in wm)]
    if unknown:
        tops = sorted({k.split(".")[0] for k in wm})
        raise CheckpointError(f"--parts {parts!r}: {unknown} names no world-model weight; give all, or "
                              f"comma-separated name prefixes such as {', '.join(tops)}, backbone.blocks.0")
    chosen = [k for k in wm if parts == "all" or any(named(k, q) for q in prefixes)]
    out = {k: v.clone() for k, v in wm.items()}
    for finetune, base, scale in adds:
        if not math.isfinite(scale) or scale == 0:
            raise CheckpointError(f"--add {finetune} {base} {scale}: the scale must be a finite number other than 0")
        a, b = (load_wm(path, first, "added")[1] for path in (finetune, base))
        for k in chosen:
            out[k] += scale * (a[k].float() - b[k].float())
    return out


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `reverie train merge`."""
    p.add_argument("--out", required=True, help="the checkpoint to write (float16 world model)")
    p.add_argument("models", nargs="+", metavar="PATH:WEIGHT",
                   help="models to average, weights > 0 summing to 1 (one model with weight 1 when --add is given)")
    p.add_argument("--add", nargs=3, action="append", default=[], metavar=("FINETUNE", "BASE", "SCALE"),
                   help="add SCALE x (FINETUNE - BASE) to the average; repeatable")
    p.add_argument("--parts", default="all",
                   help="which weights --add changes: all (default), or comma-separated weight-name prefixes such as "
                        "backbone, head, backbone.blocks.0")


def merge(out: str | Path, models: list[tuple[str, float]], adds: list[tuple[str, str, float]] = (),
          parts: str = "all") -> dict:
    """Write the average of `models` (PATH, WEIGHT) plus the task vectors `adds` (FINETUNE, BASE, SCALE) in the
    weights `parts` names to `out`; returns the record of how it was made (also kept in the checkpoint's extra)."""
    adds = list(adds)
    if adds and len(models) == 1 and math.isclose(models[0][1], 1.0):
        first, wm = load_wm(models[0][0])
        wm = {k: v.float() for k, v in wm.items()}
    else:
        first, wm = average(models)
    if not adds and parts != "all":
        raise CheckpointError(f"--parts {parts} without --add: --parts says which weights --add changes")
    recipe = {"averaged_from": [{"model": str(p), "weight": w} for p, w in models]}
    if adds:
        wm = add_differences(first, wm, adds, parts)
        recipe["added"] = [{"finetune": str(f), "base": str(b), "scale": s, "parts": parts} for f, b, s in adds]
    save_checkpoint(out, kind=first.kind, config=first.config, action_spec=first.action_spec,
                    parts={**first.tensors, "wm": wm}, data=first.data, metrics=first.metrics,
                    extra={**{k: v for k, v in first.extra.items() if k not in ("averaged_from", "added")},
                           **recipe}, half=True)
    return recipe


def run(args: argparse.Namespace) -> int:
    """`reverie train merge`: parse the model and --add specs, merge, print what was written."""
    specs = [parse(s) for s in args.models]
    adds = []
    for finetune, base, scale in args.add:
        try:
            adds.append((finetune, base, float(scale)))
        except ValueError:
            raise CheckpointError(f"--add {finetune} {base} {scale!r}: the scale must be a number") from None
    recipe = merge(args.out, specs, adds, args.parts)
    print(json.dumps({"wrote": args.out, **recipe}, indent=1))
    return 0
