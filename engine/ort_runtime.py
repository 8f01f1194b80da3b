"""The ONNX Runtime backend of engine.Session: the step's three graphs run whole in ONNX Runtime on the CPU.

On a small CPU the PyTorch step is dominated by per-operator dispatch (hundreds of small ops a frame); ONNX
Runtime runs each graph as one call with fused kernels and releases the GIL for all of it, which also keeps a play
window's main thread responsive. The graphs come from `export.onnx` (`reverie export`); a Session asked for this
backend finds them in the cache (REVERIE_CACHE, default ~/.cache/reverie) under the checkpoint's sha256 and batch,
and exports them there once when they are missing (a few seconds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from engine.cache import cache_root, locked
from engine.checkpoint import Checkpoint


class OrtUnavailable(RuntimeError):
    """onnxruntime (or the exporter) is not installed."""


def graphs_for(ckpt: Checkpoint, batch: int, quiet: bool = False) -> Path:
    """The folder of exported graphs for this checkpoint file and batch, exporting them once if needed.

    Processes that ask at the same time export once: the others wait on the folder's lock, then use its graphs.
    """
    from export.onnx import export_onnx, file_sha256

    sha = file_sha256(ckpt.path)
    folder = cache_root() / "onnx" / f"{sha[:20]}-b{batch}"
    if _complete(folder, sha, batch):
        return folder
    with locked(folder.parent / f"{folder.name}.lock"):
        if _complete(folder, sha, batch):   # another process exported it while this one waited
            return folder
        if not quiet:
            print(f"reverie: exporting {ckpt.path.name} to ONNX for batch {batch} (once; cached in {folder})",
                  file=sys.stderr)
        return export_onnx(ckpt.path, folder, batch=batch)


def _complete(folder: Path, sha: str, batch: int) -> bool:
    """Whether `folder` holds every graph of this checkpoint (by sha256) and batch."""
    from export.onnx import GRAPHS, MANIFEST

    try:
        man = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(man, dict) and man.get("sha256") == sha and man.get("batch") == batch and \
        all((folder / f"{g}.onnx").is_file() for g in GRAPHS)


class OrtRunner:
    """Inference sessions of the four graphs with the thread settings of the caller."""

    def __init__(self, ckpt: Checkpoint, batch: int, threads: int):
        try:
            import onnxruntime as ort
        except ImportError:
            raise OrtUnavailable("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime "
                                 "(or the project's [play] extra)") from None
        try:
            import onnx  # noqa: F401  (the exporter writes through it)
        except ImportError:
            raise OrtUnavailable("backend 'onnxruntime' exports the model first, which needs the onnx package: "
                                 "pip install onnx") from None
        from export.onnx import GRAPHS

        self.folder = graphs_for(ckpt, batch)
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # worker threads sleep between calls instead of spinning: on a small CPU a spinning pool takes the core the
        # window (or the other half of the step) needs
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = so.intra_op_num_threads
        self.sessions = {}
        for name in GRAPHS:
            path = self.folder / f"{name}.onnx"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; export the model again with 'reverie export'")
            self.sessions[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        # the exporter drops inputs a model does not read (the actions of a backbone without backbone_actions)
        self.inputs = {name: [i.name for i in s.get_inputs()] for name, s in self.sessions.items()}

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run graph `name` on the inputs it reads, taken from `feeds` (a superset)."""
        return self.sessions[name].run(None, {k: feeds[k] for k in self.inputs[name]})
