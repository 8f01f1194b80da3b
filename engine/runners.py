"""Runners: interchangeable executors of the step's graphs (engine.graphs) behind one interface.

    runner.run(name, feeds) -> list of output tensors     name in engine.graphs.GRAPHS; feeds by input name
    runner.noise(seed, counter, shape, stream) -> (B, *shape) float32, the counter-based draw of engine.noise
    runner.in_place_cache   the backbone writes the new keys into the ring itself (else the session writes them)
    runner.cache_dtype      the type the KV cache is kept in
    runner.capture(fn)      (torch on CUDA only) fn captured as a CUDA graph

The session owns everything between the graphs (ring slots, masks, noise counters, the Euler loop, guidance,
save-games, forks), once for every runner:
  torch        the modules themselves: eager on CPU; on CUDA each part of a step is captured as a CUDA graph
               (one memory pool per session), with the attention backend chosen explicitly and no TF32 in fp32
  onnxruntime  the exported graphs (export.onnx, `reverie export`) in ONNX Runtime on the CPU: one call per graph
               with fused kernels, about twice the eager torch step on a small CPU; it releases the GIL
  tensorrt     engines built from the same graphs (export.tensorrt), bound to torch CUDA tensors by name
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.autoencoder import Autoencoder
from engine.fused_step import fused_modules
from engine.graphs import GRAPHS, INPUTS, MANIFEST, file_sha256, graph_folder, graph_modules, graphs_complete
from engine.inputs import SessionError
from engine.noise import counter_normal, counter_normal_np
from engine.world_model import WorldModel
from kernels import KernelError
from kernels import ops as kernel_ops
from kernels import resolve as resolve_kernels

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# Scaled-dot-product attention kernels the torch runner may use on CUDA, in order of preference. cuDNN attention
# (torch's default on Hopper) is left out: known NaN gradients and graph-capture failures with masked attention.
CUDA_ATTENTION = ("flash", "efficient", "math")


class RunnerError(SessionError):
    """A backend that cannot run here (not installed, wrong device, graphs missing or damaged)."""


def default_backend(device: str | torch.device = "cpu") -> str:
    """The fastest backend for a device: onnxruntime on CPU where installed, torch (CUDA graphs) on CUDA."""
    if torch.device(device).type != "cpu":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


def resolve_backend(backend: str, device: torch.device, checkpoint: Path | None, batch: int,
                    graphs: str | Path | None) -> tuple[str, Path | None]:
    """The backend a session runs and its graphs folder: given, or found in the cache by the checkpoint's sha256.

    "auto" is the fastest backend ready for the device: onnxruntime on CPU once the model's graphs are exported
    (the front ends export first; `reverie export` does it ahead), torch otherwise.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise RunnerError(f"backend {backend!r}: choose one of auto, {', '.join(BACKENDS)}")
    wanted = default_backend(device) if backend == "auto" else backend
    if wanted == "torch" or graphs is not None:
        return wanted, None if graphs is None else Path(graphs)
    if wanted == "onnxruntime" and checkpoint is not None:
        sha = file_sha256(checkpoint)
        if graphs_complete(graph_folder(sha, batch), sha, batch):
            return wanted, graph_folder(sha, batch)
    return ("torch", None) if backend == "auto" else (wanted, None)  # make_runner says how to export


def resolve_dtype(dtype: str, backend: str, device: torch.device) -> torch.dtype:
    """The model precision: auto is bf16 for torch on CUDA, else fp32 (exported graphs take float32 in and out)."""
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype != "auto" and dtype not in names:
        raise RunnerError(f"dtype {dtype!r}: choose auto, fp32, bf16 or fp16")
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" and backend == "torch" else "fp32"
    if dtype != "fp32" and backend != "torch":
        raise RunnerError(f"backend {backend!r} takes float32 in and out (its precision is chosen at export); "
                          "leave dtype at auto or fp32")
    return names[dtype]


def place_models(ae: Autoencoder, wm: WorldModel, device: torch.device,
                 dtype: torch.dtype) -> tuple[Autoencoder, WorldModel]:
    """Models on the device for inference: transformer weights in `dtype`, while RoPE tables, latent statistics and
    the encoder stay float32; the decoder too on CPU, where bf16 convolutions are slow."""
    ae, wm = ae.to(device).eval(), wm.to(device).eval()
    ae.decoder.to(dtype if device.type == "cuda" else torch.float32)
    wm.backbone.to(dtype)
    wm.head.to(dtype)
    for p in list(ae.parameters()) + list(wm.parameters()):
        p.requires_grad_(False)
    return ae, wm


class TorchRunner:
    """The graph modules run by PyTorch; on CUDA, parts of a step are captured as CUDA graphs (see `capture`)."""

    in_place_cache = True

    def __init__(self, wm: WorldModel, ae: Autoencoder, device: torch.device, dtype: torch.dtype,
                 attention: tuple[str, ...] = CUDA_ATTENTION, kernels: str = "auto"):
        self.device, self.cache_dtype = device, dtype
        self.kernels = resolve_kernels(kernels, device)      # "triton" or "reference"; KernelError if impossible
        self.modules = graph_modules(wm, ae, channels_last=device.type == "cpu")
        self.inputs = {name: [*INPUTS[name], "write_index"] if name == "backbone" else list(INPUTS[name])
                       for name in GRAPHS}
        self.cuda = device.type == "cuda"
        self.pool = None
        self._fused_noise: Callable[..., torch.Tensor] | None = None
        self._kernel_noise: Callable[..., torch.Tensor] | None = None
        if self.kernels == "triton":   # the fused step (engine.fused_step) over the Triton kernels
            table = kernel_ops("triton")
            self.modules.update(fused_modules(wm, table))
            self.inputs["backbone"] += ["valid"]
            from kernels.noise import counter_normal as kernel_noise

            self._kernel_noise = kernel_noise
        elif self.cuda:
            self.pool = torch.cuda.graph_pool_handle()
            # ~110 tiny integer kernels a draw eagerly, twice a frame; compiled, one fused kernel (compiled lazily:
            # the first draw runs in a capture's warm-up, never inside the capture)
            self._fused_noise = torch.compile(counter_normal, dynamic=False, fullgraph=True)
        self._attention = attention
        self._fp32 = dtype == torch.float32

    @contextlib.contextmanager
    def context(self):
        """On CUDA: the session's device, the chosen attention kernels, and no TF32 when the model runs fp32."""
        if not self.cuda:
            yield
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
        tf32 = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = tf32 and not self._fp32
            with torch.cuda.device(self.device), sdpa_kernel([names[a] for a in self._attention]), \
                    torch.backends.cudnn.flags(enabled=True, allow_tf32=not self._fp32):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32

    def run(self, name: str, feeds: dict[str, Any]) -> list[torch.Tensor]:
        args = {k: feeds[k] for k in self.inputs[name] if k in feeds}
        if self.cuda:  # the device, attention kernels and TF32 settings; nothing to set on the CPU's hot path
            with self.context():
                out = self.modules[name](**args)
        else:
            out = self.modules[name](**args)
        return list(out) if isinstance(out, tuple) else [out]

    def noise(self, seed: torch.Tensor, counter: torch.Tensor, shape: tuple[int, ...], stream: int) -> torch.Tensor:
        if self._kernel_noise is not None:
            return self._kernel_noise(seed, counter, shape, stream)
        if self._fused_noise is not None:
            try:
                return self._fused_noise(seed, counter, shape, stream)
            except Exception as e:  # no working compiler toolchain here: the eager draw is the same function
                warnings.warn(f"reverie: torch.compile of the noise draw failed ({type(e).__name__}: {e}); drawing "
                              "it eagerly (slower, same numbers)", stacklevel=2)
                self._fused_noise = None
        return counter_normal(seed, counter, shape, stream)

    def capture(self, fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
        """fn captured as a CUDA graph in the session's pool, after two warm-up runs on a side stream (the caller
        undoes their effect on its state)."""
        with self.context():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # kernels chosen and compiled, allocator warmed, outside the capture
                    fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                fn()
        return graph


class OrtRunner:
    """The exported graphs in ONNX Runtime on the CPU, with the caller's thread count."""

    in_place_cache = False
    cache_dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, folder: Path, threads: int):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RunnerError("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime (or the "
                              "project's [play] extra)") from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # worker threads sleep between calls instead of spinning: on a small CPU a spinning pool takes the core the
        # window (or the other half of the step) needs
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.folder, self.threads = folder, so.intra_op_num_threads
        self.sessions = {}
        for name in GRAPHS:
            path = folder / f"{name}.onnx"
            try:
                self.sessions[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own types for missing and damaged files
                raise RunnerError(f"{path}: cannot load this graph ({e}); export the model again with "
                                  "'reverie export'") from None
        # the exporter drops inputs a graph does not read (the actions of a backbone without backbone_actions)
        self.inputs = {name: [i.name for i in s.get_inputs()] for name, s in self.sessions.items()}

    def run(self, name: str, feeds: dict[str, Any]) -> list[torch.Tensor]:
        # CPU tensors share memory with the numpy arrays onnxruntime reads
        outs = self.sessions[name].run(None, {k: np.ascontiguousarray(feeds[k].numpy()) for k in self.inputs[name]})
        return [torch.from_numpy(o) for o in outs]

    def noise(self, seed: torch.Tensor, counter: torch.Tensor, shape: tuple[int, ...], stream: int) -> torch.Tensor:
        # the same numbers from a few numpy calls instead of ~40 small torch ops
        return torch.from_numpy(counter_normal_np(seed.numpy(), counter.numpy(), shape, stream))


def make_runner(backend: str, wm: WorldModel, ae: Autoencoder, device: torch.device, dtype: torch.dtype,
                graphs: Path | None, threads: int, kernels: str = "auto") -> Any:
    """The runner of a backend; graph backends need the folder their graphs were exported (and built) into. `kernels`
    (auto, triton, reference) is the torch runner's: the graph backends fuse their own kernels."""
    if backend == "torch":
        try:
            return TorchRunner(wm, ae, device, dtype, kernels=kernels)
        except KernelError as e:
            raise RunnerError(str(e)) from None
    if kernels == "triton":
        raise RunnerError(f"kernels 'triton' are the torch backend's; backend {backend!r} runs its own fused "
                          "graphs (use backend 'torch', or kernels 'auto')")
    if graphs is None or not (Path(graphs) / MANIFEST).is_file():
        raise RunnerError(f"backend {backend!r} runs the model's exported graphs, and none were found"
                          + (f" in {graphs}" if graphs else "") + ": export them first with 'reverie export' (or "
                          "export.prepare.prepare_backend), then pass the folder as Session(graphs=...)")
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise RunnerError("backend 'onnxruntime' runs on the CPU here; on CUDA use the torch backend (CUDA "
                              "graphs) or tensorrt")
        return OrtRunner(Path(graphs), threads)
    from engine.trt_runner import TrtRunner

    if device.type != "cuda":
        raise RunnerError("backend 'tensorrt' runs on a CUDA device; pass device='cuda'")
    precision = json.loads((Path(graphs) / MANIFEST).read_text()).get("precision", "fp32")
    return TrtRunner(Path(graphs), device, precision)
