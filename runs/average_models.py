"""Average the world-model weights of fine-tunes of one model (a "model soup"), keeping the first checkpoint's
autoencoder, IDM, start state, config, action spec and run-time defaults; records the recipe in `extra`.

The default model since 2026-12-03 (README "Long play", "The soup ships") is half the model shipped before it and
half a `--focus avatar,enemies --focus-share 0.75 --ema 0.999` fine-tune of it (runs/default_model_cpu.sh, last stage):

    python runs/average_models.py OUT.safetensors engine/assets/default.safetensors:0.5 FOCUS_EMA/model.safetensors:0.5
"""

from __future__ import annotations

import json
import math
import sys

import torch

from engine.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint


def average(specs: list[tuple[str, float]]) -> tuple[Checkpoint, dict[str, torch.Tensor]]:
    """(first checkpoint, weighted sum of every checkpoint's 'wm' weights); weights must be positive and sum to 1,
    and every model must have the first one's world-model shapes."""
    if len(specs) < 2:
        raise CheckpointError("give two models or more, each as PATH:WEIGHT")
    if any(w <= 0 for _, w in specs) or not math.isclose(sum(w for _, w in specs), 1.0, abs_tol=1e-6):
        raise CheckpointError(f"weights {[w for _, w in specs]}: each must be > 0 and together they must sum to 1")
    first, acc = None, {}
    for path, w in specs:
        ck = load_checkpoint(path)
        if not ck.has("wm"):
            raise CheckpointError(f"{path}: holds no world-model weights")
        wm = ck.tensors["wm"]
        if first is None:
            first, acc = ck, {k: w * v.float() for k, v in wm.items()}
            continue
        if {k: tuple(v.shape) for k, v in wm.items()} != {k: tuple(v.shape) for k, v in acc.items()}:
            raise CheckpointError(f"{path}: its world model's weights do not have {first.path}'s names and shapes; "
                                  "only fine-tunes of one model can be averaged")
        if not ck.action_spec.compatible(first.action_spec):
            raise CheckpointError(f"{path}: a model of {ck.action_spec.game!r}, {first.path} plays "
                                  f"{first.action_spec.game!r}")
        for k, v in wm.items():
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


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        specs = [parse(s) for s in argv[1:]]
        first, wm = average(specs)
        extra = {**first.extra, "averaged_from": [{"model": p, "weight": w} for p, w in specs]}
        save_checkpoint(argv[0], kind=first.kind, config=first.config, action_spec=first.action_spec,
                        parts={**first.tensors, "wm": wm}, data=first.data, metrics=first.metrics, extra=extra,
                        half=True)
    except CheckpointError as e:
        print(f"average_models: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"wrote": argv[0], "averaged_from": extra["averaged_from"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
