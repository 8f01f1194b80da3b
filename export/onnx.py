"""ONNX export of the step's graphs (engine.graphs: backbone step, head Euler step with and without guidance,
decode), and the cache of exported graphs that the onnxruntime and tensorrt backends run.

`export_onnx` writes the four graphs with a manifest.json (the checkpoint's sha256, batch, precision, versions,
input shapes, the measured ONNX Runtime vs PyTorch error) into a folder, written under a temporary name and renamed
when whole. `ensure_graphs` does it once per checkpoint, batch and precision into the cache folder that
engine.graphs.graph_folder names, under a file lock, so that players started together export once.

Precision: fp32 (onnxruntime, and TensorRT in fp32), or fp16 / bf16 for TensorRT's strongly typed networks: the
weights and matmuls in that type, inputs and outputs float32 with casts inside, norms, attention softmax and the
Euler update in float32.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.autoencoder import Autoencoder
from engine.cache import locked
from engine.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_into
from engine.errors import ReverieError
from engine.graphs import (
    FORMAT,
    GRAPHS,
    INPUTS,
    MANIFEST,
    OUTPUTS,
    PRECISIONS,
    example_inputs,
    file_sha256,
    graph_folder,
    graph_modules,
    graphs_complete,
)
from engine.world_model import WorldModel

OPSET = 17
CHECK_LIMIT = {"frames": 1.5, "other": 1e-3}  # max |onnxruntime - torch|: uint8 frames one level, floats fp32 noise


class ExportError(ReverieError, RuntimeError):
    """An export that failed or gave graphs that do not reproduce the model."""


def ensure_graphs(ckpt: Checkpoint, batch: int, quiet: bool = False, precision: str = "fp32") -> Path:
    """The cache folder of this checkpoint's graphs for `batch` worlds, exported there once if missing."""
    sha = file_sha256(ckpt.path)
    folder = graph_folder(sha, batch, precision)
    if graphs_complete(folder, sha, batch, precision):
        return folder
    with locked(folder.parent / f"{folder.name}.lock"):
        if graphs_complete(folder, sha, batch, precision):   # another process exported it while this one waited
            return folder
        if not quiet:
            print(f"reverie: exporting {ckpt.path.name} to ONNX for batch {batch} ({precision}; once, cached in "
                  f"{folder})", file=sys.stderr)
        return export_onnx(ckpt.path, folder, batch=batch, precision=precision)


def _export_one(module: nn.Module, inputs: dict[str, torch.Tensor], outputs: tuple[str, ...], path: Path) -> None:
    args = tuple(inputs.values())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter: a few seconds for all four graphs
            torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=list(outputs),
                              opset_version=OPSET, dynamo=False)
        except Exception:  # torch builds without it: the dynamo exporter (needs onnxscript; slower to export)
            torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=list(outputs),
                              opset_version=max(OPSET, 18), dynamo=True)


def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, batch: int = 1, check: bool = True,
                precision: str = "fp32") -> Path:
    """Export the checkpoint's step graphs for `batch` worlds into out_dir (replaced atomically); returns it.

    With `check` (fp32 only: ONNX Runtime's CPU kernels lack most bf16 ops), each graph is run once in ONNX Runtime
    and compared against PyTorch.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ExportError(f"batch must be an integer >= 1, got {batch!r}")
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    ckpt = load_checkpoint(checkpoint)
    if not ckpt.has("wm"):
        raise CheckpointError(f"{ckpt.path}: a {ckpt.kind!r} checkpoint without world-model weights; export the "
                              "model.safetensors written by 'reverie train wm'")
    ae = load_into(Autoencoder(ckpt.config.autoencoder), ckpt, "ae").float().eval()
    wm = load_into(WorldModel(ckpt.config.world_model), ckpt, "wm").float().eval()
    reduced = precision != "fp32"
    if reduced:  # weights in the precision; RoPE tables and latent statistics stay float32 (casts at the inputs)
        wm.backbone.to(PRECISIONS[precision])
        wm.head.to(PRECISIONS[precision])
        # ONNX Conv takes bfloat16 only from opset 22, which TensorRT 10's parser does not read: a bf16 model decodes
        # in fp16 (the decoder's activations stay well inside fp16's range)
        ae.decoder.to(torch.float16)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ex = example_inputs(wm, batch)
        errors: dict[str, float | None] = {}
        for name, module in graph_modules(wm, ae, explicit_attention=reduced).items():
            inputs = {k: ex[name][k] for k in INPUTS[name]}
            _export_one(module.eval(), inputs, OUTPUTS[name], tmp / f"{name}.onnx")
            errors[name] = _check(module, inputs, tmp / f"{name}.onnx") if check and not reduced else None
        manifest: dict[str, Any] = {
            "format": FORMAT, "checkpoint": str(ckpt.path), "sha256": file_sha256(ckpt.path), "batch": batch,
            "precision": precision, "config": ckpt.config.world_model.__dict__, "game": ckpt.action_spec.game,
            "torch": torch.__version__, "opset": OPSET, "graphs": {n: f"{n}.onnx" for n in GRAPHS},
            "inputs": {n: {k: list(v.shape) for k, v in ex[n].items()} for n in GRAPHS}, "outputs": OUTPUTS,
            "max_abs_error": errors,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=list))
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the whole folder `tmp` to `out`, an older `out` moved aside first, so `out` is never half-deleted."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, out)


def _check(module: nn.Module, inputs: dict[str, torch.Tensor], path: Path) -> float | None:
    """Max abs difference between ONNX Runtime and PyTorch on the example inputs (None without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    used = {i.name for i in sess.get_inputs()}  # the exporter drops inputs the graph does not read
    got = sess.run(None, {k: v.numpy() for k, v in inputs.items() if k in used})
    with torch.no_grad():
        ref = module(*inputs.values())
    ref = ref if isinstance(ref, tuple) else (ref,)
    err = max(float((torch.from_numpy(g).float() - r.float()).abs().max()) for g, r in zip(got, ref))
    limit = CHECK_LIMIT["frames" if ref[0].dtype == torch.uint8 else "other"]
    if not err <= limit:
        raise ExportError(f"{path.name}: ONNX Runtime differs from PyTorch by {err:.3g} (limit {limit}); please "
                          "report this with the checkpoint")
    return err
