"""ONNX export of the three graphs of a real-time step: backbone step, head Euler step, decode.

The session's bookkeeping (ring slots, masks, counter-based noise, the Euler loop) stays in the host runtime; each
graph is one static-shape function of its inputs, so ONNX Runtime or TensorRT can run it whole:

  backbone.onnx  z (B,C,h,w) raw latent, noise (B,C,h,w), actions (B,A), level (B,), cos/sin (N,hd/2),
                 k_cache/v_cache (L,B,H,W*N,hd), mask (B,1,1,W*N) additive (the slot being replaced masked out)
                 -> h (B,N,D), k_new/v_new (L,B,H,N,hd). The new frame's keys are attended as extra columns, so
                 the cache is read-only inside the graph and the host writes k_new/v_new into the ring slot.
  head.onnx      x (B,N,Dt), h (B,N,D), actions (B,A), tau (1,), level (1,) int64, d (1,) -> x + d * v
  head_cfg.onnx  the same with classifier-free guidance as one batch of 2B, plus guidance (1,)
  decode.onnx    z (B,C,h,w) raw latent -> frames (B,H,W,3) uint8

`export_onnx` writes them with a manifest.json (the checkpoint's sha256, batch, versions) into a folder, written
under a temporary name and renamed when whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.autoencoder import Autoencoder
from engine.world_model import WorldModel

GRAPHS = ("backbone", "head", "head_cfg", "decode")
MANIFEST = "manifest.json"
FORMAT = 1


class BackboneStepGraph(nn.Module):
    """One new frame through the backbone against a read-only ring cache (see the module docstring)."""

    def __init__(self, wm: WorldModel):
        super().__init__()
        self.wm = wm

    def forward(self, z, noise, actions, level, cos, sin, k_cache, v_cache, mask):
        wm = self.wm
        bb = wm.backbone
        ctx = wm.corrupt(wm.normalize(z), level, noise)
        x = bb.embed(wm.patchify(ctx)[:, None], actions[:, None], level[:, None])[:, 0]  # (B, N, D)
        B, N, D = x.shape
        own = torch.zeros(B, 1, 1, N, dtype=mask.dtype)
        mask = torch.cat([mask, own], dim=-1)
        ks, vs = [], []
        for i, blk in enumerate(bb.blocks):
            q, k, v = blk.attn._qkv(blk.norm1(x), cos, sin)  # (B, H, N, hd)
            ks.append(k)
            vs.append(v)
            y = F.scaled_dot_product_attention(q, torch.cat([k_cache[i], k], dim=2),
                                               torch.cat([v_cache[i], v], dim=2), attn_mask=mask)
            x = x + blk.attn.proj(y.transpose(1, 2).reshape(B, N, D))
            x = x + blk.mlp(blk.norm2(x))
        return bb.norm_out(x), torch.stack(ks), torch.stack(vs)


class HeadStepGraph(nn.Module):
    """One Euler step of the head: x + d * v(x, tau), with classifier-free guidance when `cfg` is set."""

    def __init__(self, wm: WorldModel, cfg: bool):
        super().__init__()
        self.wm, self.cfg = wm, cfg

    def forward(self, x, h, actions, tau, level, d, guidance=None):
        B = x.shape[0]
        if self.cfg:
            xx, hh, aa = torch.cat([x, x]), torch.cat([h, h]), torch.cat([actions, actions])
            drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)])
        else:
            xx, hh, aa = x, h, actions
            drop = torch.zeros(B, dtype=torch.bool)
        M = xx.shape[0]
        v = self.wm.velocity(xx, hh, tau.expand(M), level.expand(M), aa, drop)
        if self.cfg:
            v = v[B:] + guidance * (v[:B] - v[B:])
        return x + d * v


class DecodeGraph(nn.Module):
    """Raw latent -> uint8 frames (B, H, W, 3), rounded and clamped like engine.autoencoder.tensor_to_frames."""

    def __init__(self, ae: Autoencoder):
        super().__init__()
        self.decoder = ae.decoder

    def forward(self, z):
        x = self.decoder(z).float()
        return x.clamp(0, 1).mul(255.0).add(0.5).to(torch.uint8).permute(0, 2, 3, 1)


def example_inputs(wm: WorldModel, ae: Autoencoder, batch: int) -> dict[str, tuple[dict[str, torch.Tensor], ...]]:
    """Named example inputs of each graph (shapes are what the exported graphs accept)."""
    c = wm.cfg
    B, N, D, Dt = batch, c.tokens_per_frame, c.d_model, c.token_dim
    L, H, W, hd = c.backbone_layers, c.heads, c.context_frames, c.head_dim
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, c.latent_channels, c.latent_height, c.latent_width, generator=g)
    cos, sin = wm.rope.frames(torch.tensor([3]))
    kc = torch.randn(L, B, H, W * N, hd, generator=g)
    head = {"x": torch.randn(B, N, Dt, generator=g), "h": torch.randn(B, N, D, generator=g),
            "actions": torch.zeros(B, c.action_dim), "tau": torch.zeros(1), "level": torch.zeros(1, dtype=torch.long),
            "d": torch.ones(1)}
    return {
        "backbone": {"z": z, "noise": torch.randn(z.shape, generator=g), "actions": torch.zeros(B, c.action_dim),
                     "level": torch.full((B,), 0.05), "cos": cos[0].contiguous(), "sin": sin[0].contiguous(),
                     "k_cache": kc, "v_cache": torch.randn(kc.shape, generator=g),
                     "mask": torch.zeros(B, 1, 1, W * N)},
        "head": head,
        "head_cfg": {**head, "guidance": torch.full((1,), 2.0)},
        "decode": {"z": z},
    }


OUTPUTS = {"backbone": ["h", "k_new", "v_new"], "head": ["x_next"], "head_cfg": ["x_next"], "decode": ["frames"]}


def graph_modules(wm: WorldModel, ae: Autoencoder) -> dict[str, nn.Module]:
    return {"backbone": BackboneStepGraph(wm), "head": HeadStepGraph(wm, cfg=False),
            "head_cfg": HeadStepGraph(wm, cfg=True), "decode": DecodeGraph(ae)}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _export_one(module: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], path: Path) -> None:
    args = tuple(inputs.values())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter: a few seconds for all four graphs
            torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=outputs,
                              opset_version=17, dynamo=False)
        except Exception:  # torch builds without it: the dynamo exporter (needs onnxscript; slower to export)
            torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=outputs,
                              opset_version=18, dynamo=True)


def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, batch: int = 1,
                check: bool = True) -> Path:
    """Export the checkpoint's step graphs for `batch` worlds into out_dir (replaced atomically); returns it.

    With `check`, each graph is run once in ONNX Runtime (when installed) and compared against PyTorch.
    """
    from engine.checkpoint import CheckpointError, load_checkpoint, load_into

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    ckpt = load_checkpoint(checkpoint)
    if not ckpt.has("wm"):
        raise CheckpointError(f"{ckpt.path}: a {ckpt.kind!r} checkpoint without world-model weights; export the "
                              "model.safetensors written by 'reverie train wm'")
    ae = load_into(Autoencoder(ckpt.config.autoencoder), ckpt, "ae").float().eval()
    wm = load_into(WorldModel(ckpt.config.world_model), ckpt, "wm").float().eval()
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ex = example_inputs(wm, ae, batch)
        errors = {}
        for name, module in graph_modules(wm, ae).items():
            _export_one(module.eval(), ex[name], OUTPUTS[name], tmp / f"{name}.onnx")
            if check:
                errors[name] = _check(module, ex[name], tmp / f"{name}.onnx")
        manifest: dict[str, Any] = {
            "format": FORMAT, "checkpoint": str(ckpt.path), "sha256": file_sha256(ckpt.path), "batch": batch,
            "config": ckpt.config.world_model.__dict__, "game": ckpt.action_spec.game,
            "torch": torch.__version__, "graphs": {n: f"{n}.onnx" for n in GRAPHS},
            "inputs": {n: {k: list(v.shape) for k, v in ex[n].items()} for n in GRAPHS},
            "max_abs_error": errors,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=list))
        if out.exists():   # moved aside first, so `out` is never a half-deleted folder
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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
    limit = 1.5 if ref[0].dtype == torch.uint8 else 1e-3  # uint8 frames: one level of rounding
    if not err <= limit:
        raise RuntimeError(f"{path.name}: ONNX Runtime differs from PyTorch by {err:.3g} (limit {limit})")
    return err
