"""The TensorRT backend of engine.Session (CUDA): engines built from the exported ONNX step graphs.

The four graphs of `export.onnx` (backbone step, head Euler step with and without guidance, decode) are parsed with
TensorRT's ONNX parser and built once per checkpoint, batch, precision and GPU into serialized engines beside the
ONNX files in the cache (REVERIE_CACHE, default ~/.cache/reverie). At run time every input and output is a torch
CUDA tensor whose address is bound by name (TensorRT 10's named-tensor API), and each graph is one
`execute_async_v3` on torch's current stream, so the session's host-side bookkeeping stays in torch.

Written against the documented TensorRT 10 Python API; the machines this project is developed on cannot install
TensorRT, so this backend has not been run there (its tests skip where `import tensorrt` fails).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.cache import locked
from engine.checkpoint import Checkpoint

PRECISIONS = ("fp32", "fp16", "bf16")


class TrtUnavailable(RuntimeError):
    """tensorrt is not installed, or there is no CUDA device."""


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TrtUnavailable("backend 'tensorrt' needs NVIDIA TensorRT 10 (pip install tensorrt) and a CUDA GPU; "
                             "use --backend torch on CUDA or onnxruntime on CPU") from None
    return trt


def build_engine(onnx_path: Path, plan_path: Path, precision: str = "fp16", workspace_gb: float = 2.0) -> Path:
    """Parse an ONNX graph and write a serialized TensorRT engine (temporary name, then rename)."""
    trt = _trt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    tmp = plan_path.with_name(f".{plan_path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(memoryview(plan))
    os.replace(tmp, plan_path)
    return plan_path


def engine_tag(precision: str, device: torch.device) -> str:
    """Engines are specific to the GPU and the TensorRT version: both are in their file names."""
    trt = _trt()
    if not torch.cuda.is_available():
        raise TrtUnavailable("TensorRT engines are built on a CUDA GPU, and torch sees none")
    gpu = torch.cuda.get_device_name(device).replace(" ", "_")
    return f"{precision}-{gpu}-trt{trt.__version__}"


def build_engines(folder: Path, precision: str = "fp16", device: torch.device | None = None) -> list[Path]:
    """Engines of the four exported graphs in `folder`, built where missing."""
    tag = engine_tag(precision, device or torch.device("cuda"))
    plans = []
    from export.onnx import GRAPHS

    with locked(folder.parent / f"{folder.name}.lock"):   # one builder at a time; the others then find the plans
        for name in GRAPHS:
            plan = folder / f"{name}.{tag}.plan"
            if not plan.is_file():
                build_engine(folder / f"{name}.onnx", plan, precision)
            plans.append(plan)
    return plans


class TrtRunner:
    """Deserialized engines and execution contexts of the four graphs; `run` binds torch CUDA tensors by name."""

    def __init__(self, ckpt: Checkpoint, batch: int, device: torch.device, precision: str = "fp16"):
        trt = _trt()
        if device.type != "cuda" or not torch.cuda.is_available():
            raise TrtUnavailable("backend 'tensorrt' runs on a CUDA device; pass --device cuda")
        from engine.ort_runtime import graphs_for

        folder = graphs_for(ckpt, batch)
        plans = build_engines(folder, precision, device)
        self.device = device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engines, self.contexts, self.outputs, self.inputs = {}, {}, {}, {}
        from export.onnx import GRAPHS

        for name, plan in zip(GRAPHS, plans):
            engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
            if engine is None:
                raise RuntimeError(f"{plan}: TensorRT could not load this engine; delete it to rebuild")
            self.engines[name] = engine
            self.contexts[name] = engine.create_execution_context()
            self.outputs[name] = self._alloc_outputs(trt, engine)
            # the exporter drops inputs a model does not read (the actions of a backbone without backbone_actions)
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            self.inputs[name] = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]

    def _alloc_outputs(self, trt, engine) -> dict[str, torch.Tensor]:
        """Preallocated output tensors of an engine (static shapes), by name."""
        out = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                dtype = _torch_dtype(trt, engine.get_tensor_dtype(name))
                out[name] = torch.empty(tuple(engine.get_tensor_shape(name)), dtype=dtype, device=self.device)
        return out

    def run(self, name: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run graph `name` on torch's current CUDA stream; returns its outputs (reused buffers) in ONNX order."""
        ctx = self.contexts[name]
        keep = []
        for key in self.inputs[name]:  # the inputs this graph reads, taken from `feeds` (a superset)
            t = feeds[key].contiguous()
            keep.append(t)  # alive until the enqueue below has been issued
            ctx.set_tensor_address(key, t.data_ptr())
        outs = self.outputs[name]
        for key, t in outs.items():
            ctx.set_tensor_address(key, t.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT failed to run the {name} graph")
        return list(outs.values())


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool, trt.uint8: torch.uint8}
    for attr, tdt in (("bfloat16", torch.bfloat16), ("int64", torch.int64)):
        if hasattr(trt, attr):
            table[getattr(trt, attr)] = tdt
    if dt not in table:
        raise RuntimeError(f"TensorRT tensor type {dt} has no torch equivalent here")
    return table[dt]
