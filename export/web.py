"""`reverie export --format web`: a checkpoint as a static web page that plays it in the browser (onnxruntime-web).

    export_web("model.safetensors", "site/")   # -> site/index.html, js/, ort/, model/

The folder is self-contained (nothing is fetched from another origin) and is written under a temporary name and
renamed when whole:

  index.html, style.css, js/   the player (export/page/, copied as is): js/world.js is the session's step in JavaScript
                               (ring KV cache, counter-based noise, guidance, Euler steps, decode), js/main.js the
                               window, js/worker.js the model's own loop
  ort/                         the pinned onnxruntime-web runtime (its SIMD-threaded WASM build), shipped with reverie
  model/model.json             what the page needs to run the step (below) and the model card
  model/{backbone,head,head_cfg,decode}.onnx   the step's graphs (engine.graphs), float32 in and out; weights that are
                               exactly float16 (a half checkpoint's) are stored as float16 and cast back when the
                               graph loads, so the graph computes what the float32 export does at half the size
  model/tables.bin             little-endian arrays named in model.json: RoPE tables, the start states' latents

A start state is the checkpoint's built-in context, encoded here in float32 as Session.reset encodes it, so the page
primes the world as the session does: from the same start, seed and actions it computes the same frames (to the two
runtimes' float rounding). The noise generator is ported bit for bit (js/noise.js, engine/noise.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ReverieError

PAGE = Path(__file__).parent / "page"
WEB_FORMAT = 1
# The browser's limits: one WebAssembly memory holds at most 4 GB (wasm32), and an ArrayBuffer a graph is read into
# about 2 GB. The page needs the graphs, their working memory and the KV cache inside the first.
MAX_GRAPH_BYTES = 2 * 1024 ** 3 - 1
MAX_MEMORY_BYTES = 3 * 1024 ** 3
# onnxruntime-web 1.31's WASM build is onnxruntime's CPU provider: the standard domains up to this opset
WEB_DOMAINS = ("", "ai.onnx")
WEB_MAX_OPSET = 23
# frames per second of a game's own speed, by the prefix of its name (the games themselves live in train/)
GAME_FPS = {"builtin": 30.0, "ale": 15.0, "vizdoom": 35.0 / 4}
CARD_METRICS = ("psnr_step1", "psnr_mean", "ssim_mean", "ae_psnr")


class WebExportError(ReverieError, ValueError):
    """A checkpoint the web page cannot run, or a folder that cannot be written."""


def export_web(checkpoint: str | os.PathLike | None, out_dir: str | os.PathLike, fps: float | None = None,
               name: str | None = None) -> Path:
    """Write the web page of `checkpoint` (None: the shipped default model) into out_dir, replaced atomically."""
    from engine.checkpoint import CheckpointError, load_checkpoint
    from engine.runtime import DEFAULT_MODEL
    from export.onnx import move_into_place

    path = Path(checkpoint) if checkpoint is not None else Path(DEFAULT_MODEL)
    ckpt = load_checkpoint(path)   # CheckpointError names the file and what is wrong
    if not ckpt.has("wm") or not ckpt.has("ae"):
        raise CheckpointError(f"{ckpt.path}: a {ckpt.kind!r} checkpoint without a world model and its autoencoder; "
                              "export the model.safetensors written by 'reverie train' or 'reverie train wm'")
    if ckpt.start_state() is None:
        raise WebExportError(f"{ckpt.path}: no built-in start state, and the page has no game to start from; "
                             "export a model written by 'reverie train' (it stores one)")
    if fps is not None and not (isinstance(fps, (int, float)) and 1 <= fps <= 240):
        raise WebExportError(f"fps {fps!r}: give the game's frames per second, 1..240")
    if not (PAGE / "index.html").is_file() or not (PAGE / "ort").is_dir():
        raise WebExportError(f"{PAGE}: the page's files are missing from this installation; reinstall reverie")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WebExportError(f"--out {out}: exists and is not a folder; pass a folder path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(PAGE, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("refresh.sh", "*.md", ".*"))
        _write_model(ckpt, tmp / "model", fps, name or _model_name(ckpt.path))
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _model_name(path: Path) -> str:
    from engine.runtime import DEFAULT_MODEL

    if path.resolve() == Path(DEFAULT_MODEL).resolve() or path.parent.name == "assets":
        return path.stem
    return path.parent.name if path.stem == "model" else path.stem


def _write_model(ckpt: Any, folder: Path, fps: float | None, name: str) -> None:
    """model/: the graphs (float16-stored where exact), tables.bin and model.json."""
    import torch

    from engine.autoencoder import Autoencoder, frames_to_tensor
    from engine.checkpoint import load_into
    from engine.graphs import file_sha256
    from engine.step import SEED_STRIDE
    from engine.world_model import WorldModel, euler_schedule
    from export.onnx import export_onnx

    folder.mkdir()
    graphs = Path(tempfile.mkdtemp(prefix=".graphs.", dir=folder.parent))
    try:
        export_onnx(ckpt.path, graphs / "g", batch=1)
        files = {}
        for g in ("backbone", "head", "head_cfg", "decode"):
            files[g] = _web_graph(graphs / "g" / f"{g}.onnx", folder / f"{g}.onnx")
    finally:
        shutil.rmtree(graphs, ignore_errors=True)

    c = ckpt.config.world_model
    ae = load_into(Autoencoder(ckpt.config.autoencoder), ckpt, "ae").float().eval()
    wm = load_into(WorldModel(c), ckpt, "wm").float().eval()
    frames, actions = ckpt.start_state()
    with torch.no_grad():   # encoded as Session.reset encodes: float32, one batch of the start's frames
        z = ae.encode(frames_to_tensor(frames.reshape(-1, *frames.shape[-3:])))   # (T, C, h, w)
    arrays = {
        "t_cos": wm.rope.t_cos, "t_sin": wm.rope.t_sin,   # (P, pt): time angles, periodic in P frames
        "s_cos": wm.rope.s_cos, "s_sin": wm.rope.s_sin,   # (N, hd/2 - pt): each token's spatial angles
        "start_latents": z[None],                          # (S, T, C, h, w): S start states of T frames
        "start_actions": actions.float()[None],            # (S, T, A): the action that led to each frame
        "start_frames": frames[-1:].to(torch.uint8),       # (S, H, W, 3): each start's last frame, shown at reset
    }
    tables, offset, blob = {}, 0, bytearray()
    for key, t in arrays.items():
        a = t.detach().cpu().contiguous().numpy()
        a = a.astype("<f4") if a.dtype == np.float32 else a
        pad = (-offset) % 16
        blob += b"\0" * pad
        offset += pad
        tables[key] = {"offset": offset, "shape": list(a.shape), "dtype": "uint8" if a.dtype == np.uint8 else "float32"}
        blob += a.tobytes()
        offset += a.nbytes
    (folder / "tables.bin").write_bytes(bytes(blob))

    spec = ckpt.action_spec
    H, W, _ = frames.shape[-3:]
    steps = [s for s in range(1, 5) if 2 ** (c.shortcut_levels - 1) >= s]
    kv_bytes = 2 * 4 * c.backbone_layers * c.heads * c.context_frames * c.tokens_per_frame * c.head_dim
    weights = sum(f["bytes"] for f in files.values())
    if weights * 3 + kv_bytes * 4 > MAX_MEMORY_BYTES:
        raise WebExportError(f"{ckpt.path}: the model needs about {(weights * 3 + kv_bytes * 4) / 1e9:.1f} GB of "
                             "WebAssembly memory, more than a browser gives (4 GB at most); export a smaller preset")
    game_fps = fps or ckpt.data.get("fps") or GAME_FPS.get(spec.game.split(":")[0], 30.0)
    ev = ckpt.metrics.get("eval") or {}
    params = sum(p.numel() for p in wm.parameters()) + sum(p.numel() for p in ae.decoder.parameters())
    card = {"name": name, "game": spec.game, "file": ckpt.path.name, "sha256": file_sha256(ckpt.path),
            "parameters": params,
            "trained_on": {k: ckpt.data[k] for k in ("episodes", "frames", "env_ids") if k in ckpt.data},
            "training_steps": ckpt.metrics.get("steps_done"),
            "metrics": {k: ev[k] for k in CARD_METRICS if isinstance(ev.get(k), (int, float))}}
    af = ev.get("action_following") or {}
    if af.get("available"):
        card["metrics"]["action_following_ratio"] = af.get("ratio")
    model = {
        "format": WEB_FORMAT, "name": name, "game": spec.game, "frame": [int(H), int(W), 3], "fps": float(game_fps),
        "buttons": list(spec.buttons), "axes": list(spec.axes), "action_dim": spec.size,
        "null_action": [float(v) for v in spec.null()],
        "defaults": {"steps": c.sampling_steps, "guidance": c.guidance, "context_noise": c.context_noise},
        "step_choices": steps,
        # each step count's Euler steps (tau, shortcut level, step size), as WorldModel.sample takes them
        "schedules": {str(s): [[float(t), int(j), float(d)] for t, j, d in euler_schedule(s, c.shortcut_levels)]
                      for s in steps},
        "latent": [c.latent_channels, c.latent_height, c.latent_width], "patch": c.patch,
        "tokens": c.tokens_per_frame, "token_dim": c.token_dim, "d_model": c.d_model,
        "layers": c.backbone_layers, "heads": c.heads, "head_dim": c.head_dim, "context_frames": c.context_frames,
        "latent_mean": [float(v) for v in wm.latent_mean], "latent_std": [float(v) for v in wm.latent_std],
        "rope_period": int(wm.rope.period), "seed_stride": SEED_STRIDE, "noise_streams": {"head": 0, "context": 1},
        "starts": 1, "tables": tables, "graphs": files, "card": card,
    }
    (folder / "model.json").write_text(json.dumps(model, indent=1))


def _web_graph(src: Path, dst: Path) -> dict[str, Any]:
    """Copy an exported graph for the page: float32 weights that are exactly float16 stored as float16 behind a Cast
    (onnxruntime folds the cast when it loads the graph: the same float32 values at half the bytes); refuse operators
    and sizes onnxruntime-web lacks. Returns the graph's file entry of model.json."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    for imp in model.opset_import:
        if imp.domain in WEB_DOMAINS and imp.version > WEB_MAX_OPSET:
            raise WebExportError(f"{src.name}: opset {imp.version}, newer than onnxruntime-web runs "
                                 f"({WEB_MAX_OPSET}); please report this with the checkpoint")
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in WEB_DOMAINS})
    if foreign:
        raise WebExportError(f"{src.name}: operators onnxruntime-web does not have: {', '.join(foreign)}")
    casts, kept = [], []
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT and np.prod(init.dims, dtype=np.int64) >= 64:
            a = numpy_helper.to_array(init)
            h = a.astype(np.float16)
            if np.isfinite(h).all() and np.array_equal(h.astype(np.float32), a):
                half = numpy_helper.from_array(h, f"{init.name}.f16")
                kept.append(half)
                casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                              name=f"{init.name}.cast"))
                continue
        kept.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    if len(data) > MAX_GRAPH_BYTES:
        raise WebExportError(f"{src.name}: {len(data) / 1e9:.1f} GB, more than a browser reads into one buffer "
                             "(2 GB); export a smaller preset")
    dst.write_bytes(data)
    return {"file": dst.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "inputs": [i.name for i in model.graph.input if i.name not in {t.name for t in kept}],
            "outputs": [o.name for o in model.graph.output]}

