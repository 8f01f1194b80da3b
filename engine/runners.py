"""Runners: interchangeable executors of the step's graphs (engine.graphs) behind one interface.

    runner.run(name, feeds) -> list of output tensors     name in engine.graphs.GRAPHS; feeds by input name
    runner.noise(seed, counter, shape, stream) -> (B, *shape) float32, the counter-based draw of engine.noise
    runner.in_place_cache   the backbone writes the new keys into the ring itself (else the session writes them)
    runner.cache_dtype      the type the KV cache is kept in
    runner.capture(fn)      (torch on CUDA only) fn captured as a CUDA graph
    runner.name             what runs, for a HUD or a report: "torch", "torch triton", "onnxruntime CUDA", ...

The session owns everything between the graphs (ring slots, masks, noise counters, the Euler loop, guidance,
save-games, forks), once for every runner:
  torch        the modules themselves: eager on CPU; on CUDA each part of a step is captured as a CUDA graph
               (one memory pool per session), with the attention backend chosen explicitly and no TF32 in fp32
  onnxruntime  the exported graphs (export.onnx, `reverie export`) in ONNX Runtime: on the CPU one call per graph
               with fused kernels, about twice the eager torch step on a small CPU (it releases the GIL); on CUDA
               through onnxruntime-gpu's TensorRT or CUDA execution provider, for a GPU without TensorRT's package
  tensorrt     engines built from the same graphs (export.tensorrt), bound to torch CUDA tensors by name
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import warnings
from collections.abc import Callable, Sequence
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
from kernels import version_problem as kernel_version_problem

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# onnxruntime-gpu's execution providers, best first: TensorRT's (where its library loads), then CUDA's
ORT_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so.11", "nvinfer_10.dll", "nvinfer_11.dll")
ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int64)": torch.int64,
             "tensor(int32)": torch.int32, "tensor(uint8)": torch.uint8, "tensor(bool)": torch.bool}
NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32,
               torch.uint8: np.uint8, torch.bool: np.bool_}
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
        self.cuda = device.type == "cuda"
        if kernels == "auto" and self.cuda and self.kernels == "reference" and kernel_version_problem(device):
            warnings.warn(f"reverie: {kernel_version_problem(device)}; running the reference step", stacklevel=3)
        self.modules = graph_modules(wm, ae, channels_last=device.type == "cpu")
        self.inputs = {name: [*INPUTS[name], "write_index"] if name == "backbone" else list(INPUTS[name])
                       for name in GRAPHS}
        # every graph a session captures shares this one pool, whichever kernels run (a private pool a graph is GBs
        # at the oasis preset, batch 16)
        self.pool = torch.cuda.graph_pool_handle() if self.cuda else None
        # the noise draw: ~110 tiny integer kernels eagerly, twice a frame; on CUDA one kernel instead, Triton's
        # (kernels.noise) in Triton mode, else counter_normal under torch.compile (compiled lazily: the first draw
        # runs in a capture's warm-up, never inside the capture). `noise_impl` names the one that runs.
        self._draw: Callable[..., torch.Tensor] = counter_normal
        self.noise_impl = "eager"
        if self.kernels == "triton":   # the fused step (engine.fused_step) over the Triton kernels
            self.modules.update(fused_modules(wm, kernel_ops("triton")))
            self.inputs["backbone"] += ["valid"]
            from kernels.noise import counter_normal as kernel_noise

            self._draw, self.noise_impl = kernel_noise, "triton"
        elif self.cuda:
            self._draw = torch.compile(counter_normal, dynamic=False, fullgraph=True)
            self.noise_impl = "torch.compile"
        # the SDPA kernels tried in order (CUDA, reference step); a graph keeps those it was captured with
        self.attention = attention
        self.name = "torch triton" if self.kernels == "triton" else "torch"
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
            with torch.cuda.device(self.device), sdpa_kernel([names[a] for a in self.attention]), \
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
        try:
            return self._draw(seed, counter, shape, stream)
        except Exception as e:  # no working compiler toolchain here: the eager draw is the same function
            if self.noise_impl != "torch.compile":
                raise
            warnings.warn(f"reverie: torch.compile of the noise draw failed ({type(e).__name__}: {e}); drawing it "
                          "eagerly (slower, same numbers)", stacklevel=2)
            self._draw, self.noise_impl = counter_normal, "eager"
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


def tensorrt_libraries() -> bool:
    """Whether TensorRT's runtime library loads here (onnxruntime-gpu lists its TensorRT provider either way)."""
    for name in TENSORRT_LIBRARIES:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def ort_providers(device: torch.device, available: Sequence[str], tensorrt: bool, device_id: int = 0,
                  engine_cache: Path | None = None) -> tuple[list[Any], str | None]:
    """The execution providers to ask onnxruntime for on `device`, best first and the CPU's last, from the
    `available` ones (onnxruntime.get_available_providers()); and why none of them runs on the GPU when the device is
    CUDA (None: one does, or the device is the CPU). TensorRT's provider only where its library loads (`tensorrt`)."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"], None
    gpu = [p for p in ORT_GPU_PROVIDERS if p in available and (p != "TensorrtExecutionProvider" or tensorrt)]
    if not gpu:
        return ["CPUExecutionProvider"], (f"this onnxruntime has no CUDA execution provider (only "
                                          f"{', '.join(available)}): pip uninstall onnxruntime, then pip install "
                                          "onnxruntime-gpu (the project's [gpu] extra)")
    options: dict[str, dict[str, Any]] = {"CUDAExecutionProvider": {"device_id": device_id},
                                          "TensorrtExecutionProvider": {"device_id": device_id}}
    if engine_cache is not None:   # TensorRT builds an engine per graph on the first run (slow): keep them
        options["TensorrtExecutionProvider"].update(trt_engine_cache_enable=True,
                                                    trt_engine_cache_path=str(engine_cache))
    return [(p, options[p]) for p in gpu] + ["CPUExecutionProvider"], None


class OrtRunner:
    """The exported graphs in ONNX Runtime: on the CPU with the caller's thread count, or on a CUDA device through
    onnxruntime-gpu's TensorRT or CUDA execution provider, with torch CUDA tensors bound in place as inputs and
    outputs. `provider` names the one that runs (`name`: "onnxruntime CUDA", for a HUD); where the device is CUDA and
    no GPU provider starts, the graphs run on the CPU and `fallback` says why (also warned, in one line)."""

    in_place_cache = False
    cache_dtype = torch.float32

    def __init__(self, folder: Path, threads: int, device: str | torch.device = "cpu", io_binding: bool | None = None):
        """`io_binding`: torch tensors bound in place as inputs and outputs (default: where a GPU provider runs)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise RunnerError("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime (or the "
                              "project's [play] extra; onnxruntime-gpu, the [gpu] extra, on CUDA)") from None
        device = torch.device(device)
        if device.type not in ("cpu", "cuda"):
            raise RunnerError(f"backend 'onnxruntime' runs on the CPU or a CUDA device, not {device.type}")
        self.device = device
        self.device_id = (torch.cuda.current_device() if device.index is None else device.index) \
            if device.type == "cuda" else 0
        providers, self.fallback = ort_providers(device, ort.get_available_providers(), tensorrt_libraries(),
                                                 self.device_id, Path(folder) / "ort_tensorrt")
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
                self.sessions[name] = ort.InferenceSession(str(path), so, providers=providers)
            except Exception as e:  # onnxruntime raises its own types for missing and damaged files
                raise RunnerError(f"{path}: cannot load this graph ({e}); export the model again with "
                                  "'reverie export'") from None
        # what runs: a provider that fails to start (a CUDA or cuDNN library missing) is dropped by onnxruntime
        first = [s.get_providers()[0] for s in self.sessions.values()]
        self.provider = ", ".join(dict.fromkeys(first))
        self.on_gpu = "CPUExecutionProvider" not in first
        if device.type == "cuda" and not self.on_gpu and self.fallback is None:
            self.fallback = (f"onnxruntime could not start {providers[0][0]} (its own message says why; usually a "
                             "CUDA or cuDNN library it needs is missing)")
        if self.fallback is not None:
            warnings.warn(f"reverie: backend 'onnxruntime' on {device}: {self.fallback}; the graphs run on the CPU",
                          stacklevel=3)
        self.name = f"onnxruntime {self.provider.replace('ExecutionProvider', '')}"
        # the exporter drops inputs a graph does not read (the actions of a backbone without backbone_actions)
        self.inputs = {name: [i.name for i in s.get_inputs()] for name, s in self.sessions.items()}
        self.outputs = {name: [(o.name, o.shape, o.type) for o in s.get_outputs()] for name, s in self.sessions.items()}
        self.io_binding = self.on_gpu if io_binding is None else io_binding
        if self.io_binding:
            for name, outs in self.outputs.items():
                if any(not all(isinstance(d, int) for d in shape) or kind not in ORT_TYPES for _, shape, kind in outs):
                    raise RunnerError(f"{folder / (name + '.onnx')}: outputs {outs} are not static tensors of a known "
                                      "type; export the model again with 'reverie export'")

    def run(self, name: str, feeds: dict[str, Any]) -> list[torch.Tensor]:
        if not self.io_binding:   # CPU tensors share memory with the numpy arrays onnxruntime reads
            outs = self.sessions[name].run(None, {k: np.ascontiguousarray(feeds[k].cpu().numpy())
                                                  for k in self.inputs[name]})
            return [torch.from_numpy(o).to(self.device) for o in outs]
        session, keep, where = self.sessions[name], [], self.device.type
        io = session.io_binding()
        for k in self.inputs[name]:
            t = feeds[k].contiguous()
            keep.append(t)   # alive until the run below has read it
            io.bind_input(k, where, self.device_id, NUMPY_TYPES[t.dtype], tuple(t.shape), t.data_ptr())
        outs = [torch.empty(shape, dtype=ORT_TYPES[kind], device=self.device) for _, shape, kind in self.outputs[name]]
        for (k, _, _), t in zip(self.outputs[name], outs):
            io.bind_output(k, where, self.device_id, NUMPY_TYPES[t.dtype], tuple(t.shape), t.data_ptr())
        if where == "cuda":   # onnxruntime runs on a stream of its own: torch's writes to the inputs land first,
            torch.cuda.current_stream(self.device).synchronize()   # and its outputs are whole when the run returns
        session.run_with_iobinding(io)
        io.synchronize_outputs()
        return outs

    def noise(self, seed: torch.Tensor, counter: torch.Tensor, shape: tuple[int, ...], stream: int) -> torch.Tensor:
        # the same numbers from a few numpy calls instead of ~40 small torch ops (on CUDA: a copy up)
        z = counter_normal_np(seed.cpu().numpy(), counter.cpu().numpy(), shape, stream)
        return torch.from_numpy(z).to(self.device)


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
        return OrtRunner(Path(graphs), threads, device)
    from engine.trt_runner import TrtRunner

    if device.type != "cuda":
        raise RunnerError("backend 'tensorrt' runs on a CUDA device; pass device='cuda'")
    precision = json.loads((Path(graphs) / MANIFEST).read_text()).get("precision", "fp32")
    return TrtRunner(Path(graphs), device, precision)
