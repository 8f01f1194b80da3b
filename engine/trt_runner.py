"""The TensorRT runner (CUDA): serialized engines of the step's graphs, run on torch CUDA tensors bound by name.

`export.tensorrt` builds one engine (a plan file) per graph of engine.graphs from the exported ONNX graphs, into the
graphs' folder; this module only loads and runs them (engine/ never imports export/). A plan is specific to the GPU
and the TensorRT version, so both are in its name (`engine_tag`, `plan_path`) and another GPU or TensorRT builds its
own. Networks are strongly typed (TensorRT 11 has no other kind; on 10.x the exporter sets the flag): the precision
is the exported graph's, and every engine takes and gives float32 (int64 `level`, uint8 frames).

At run time every input and output is a torch CUDA tensor whose address is bound by name (the named-tensor API of
TensorRT 10 and 11), and each graph is one `execute_async_v3` on torch's current stream of the runner's device, so
the session's host-side bookkeeping stays in torch and orders with it. Outputs are preallocated; see `TrtRunner.run`
for how long a returned tensor stays valid.

Written against the documented TensorRT 10 and 11 Python APIs; the machines this project is developed on cannot
install TensorRT, so it is checked there statically (tests/test_tensorrt_static.py) and its GPU tests skip.
"""

from __future__ import annotations

import json
import re
import sys
from collections import deque
from pathlib import Path
from typing import Any

import torch

from engine.errors import ReverieError
from engine.graphs import GRAPHS
from engine.noise import counter_normal

PRECISIONS = ("fp32", "fp16", "bf16")
MIN_MAJOR = 10          # the named-tensor API, execute_async_v3 and strongly typed networks


class TrtUnavailable(ReverieError, RuntimeError):
    """TensorRT cannot run here: not installed, too old, or no CUDA device."""


class TrtError(ReverieError, RuntimeError):
    """TensorRT failed on this model: parsing, building, loading or running an engine."""


# ---- the TensorRT module and the device ---------------------------------------------------------------------------
def tensorrt_problem(device: str | torch.device | None = "cuda") -> tuple[str | None, Any]:
    """(why TensorRT cannot run on `device` and what to do, or None; the tensorrt module when it imported).
    device None: only whether the module imports and is recent enough."""
    if device is not None and torch.device(device).type != "cuda":
        return f"the device is {torch.device(device).type} (pass a CUDA device: --device cuda)", None
    if device is not None and not torch.cuda.is_available():
        return ("torch sees no CUDA device here (a CPU build of torch, or no NVIDIA GPU or driver): run it where "
                "there is one, with torch's CUDA build"), None
    try:
        import tensorrt as trt
    except ImportError:
        return "the tensorrt package is not installed (pip install tensorrt, or the project's [tensorrt] extra)", None
    except (OSError, RuntimeError) as e:  # the package is there but its libraries (libnvinfer) did not load
        return (f"the tensorrt package does not load ({type(e).__name__}: {e}); reinstall it for this CUDA driver "
                "(pip install --force-reinstall tensorrt)"), None
    if trt_major(trt) < MIN_MAJOR:
        return f"TensorRT {trt.__version__} is installed (pip install -U tensorrt for 10.x or 11.x)", trt
    return None, trt


def require_tensorrt(device: str | torch.device | None = "cuda", purpose: str = "backend 'tensorrt'",
                     otherwise: str = "use --backend torch on CUDA, or --backend onnxruntime on the CPU") -> Any:
    """The tensorrt module, or TrtUnavailable saying what `purpose` needs, what is missing, and what to do."""
    problem, trt = tensorrt_problem(device)
    if problem is not None:
        raise TrtUnavailable(f"{purpose} needs NVIDIA TensorRT 10 or 11 and a CUDA GPU, but {problem}; or "
                             f"{otherwise}")
    return trt


def trt_major(trt: Any) -> int:
    m = re.match(r"(\d+)", str(getattr(trt, "__version__", "0")))
    return int(m.group(1)) if m else 0


def cuda_device(device: str | torch.device) -> torch.device:
    """The device with its index made explicit (torch.device('cuda') is the current CUDA device)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class Log:
    """One logger for every builder and runtime (TensorRT expects a single one): warnings and errors go to stderr
    prefixed 'tensorrt:', and the last errors are kept for the message of the TrtError that follows them."""

    def __init__(self, trt: Any):
        base = trt.ILogger

        class _Logger(base):  # the documented way: subclass ILogger and call its __init__
            def __init__(self, owner: Log):
                base.__init__(self)
                self.owner = owner

            def log(self, severity: Any, msg: str) -> None:
                self.owner.emit(severity, msg)

        self.trt = trt
        self.errors: deque[str] = deque(maxlen=8)
        self.quiet = False
        self.logger = _Logger(self)

    def emit(self, severity: Any, msg: str) -> None:
        S = self.trt.ILogger.Severity
        if severity in (S.ERROR, S.INTERNAL_ERROR):
            self.errors.append(msg.strip())
            print(f"tensorrt: {msg.strip()}", file=sys.stderr)
        elif severity == S.WARNING and not self.quiet:
            print(f"tensorrt: {msg.strip()}", file=sys.stderr)

    def take_errors(self) -> str:
        """The errors logged since the last call, as one clause ('' when none)."""
        out = "; ".join(self.errors)
        self.errors.clear()
        return out


_LOG: Log | None = None


def trt_log(trt: Any) -> Log:
    global _LOG
    if _LOG is None or _LOG.trt is not trt:
        _LOG = Log(trt)
    return _LOG


# ---- plan files ----------------------------------------------------------------------------------------------------
def engine_tag(precision: str, device: str | torch.device) -> str:
    """'{precision}-{gpu}-trt{version}': engines are specific to the GPU and the TensorRT version."""
    trt = require_tensorrt(device)
    return tag_for(precision, torch.cuda.get_device_name(cuda_device(device)), trt.__version__)


def tag_for(precision: str, gpu_name: str, trt_version: str) -> str:
    if precision not in PRECISIONS:
        raise TrtError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    gpu = re.sub(r"[^A-Za-z0-9.]+", "_", gpu_name).strip("_") or "gpu"
    return f"{precision}-{gpu}-trt{trt_version}"


def plan_path(folder: str | Path, name: str, tag: str) -> Path:
    """The serialized engine of graph `name` in an exported folder."""
    return Path(folder) / f"{name}.{tag}.plan"


def report_path(folder: str | Path, name: str, tag: str) -> Path:
    """The build report beside a plan: I/O tensors in the graph's order and every layer's precision (JSON)."""
    return Path(folder) / f"{name}.{tag}.json"


# ---- running -------------------------------------------------------------------------------------------------------
class _Graph:
    """One engine: its context, input specs and two sets of output buffers."""

    def __init__(self, engine: Any, context: Any, inputs: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 outputs: list[str], buffers: list[list[torch.Tensor]]):
        self.engine, self.context, self.inputs, self.outputs, self.buffers = engine, context, inputs, outputs, buffers
        self.next = 0


class TrtRunner:
    """The engines of the four graphs in `folder`, built for `precision` on this GPU and TensorRT.

    Runner interface (engine.runners): `run(name, feeds)`, `inputs` (each graph's input names, from the engine: the
    exporter drops inputs a graph does not read), `noise`, `in_place_cache` (False: the session writes the new keys
    into the ring), `cache_dtype` (float32, the graphs' I/O type), `device`.
    """

    in_place_cache = False
    cache_dtype = torch.float32
    name = "tensorrt"

    def __init__(self, folder: str | Path, device: str | torch.device, precision: str):
        trt = require_tensorrt(device)
        self.trt, self.folder, self.precision = trt, Path(folder), precision
        self.device = cuda_device(device)
        self.log = trt_log(trt)
        tag = engine_tag(precision, self.device)
        self.graphs: dict[str, _Graph] = {}
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self.log.logger)
            for name in GRAPHS:
                self.graphs[name] = self._load(name, plan_path(self.folder, name, tag), report_path(self.folder,
                                                                                                    name, tag))
        self.inputs = {name: list(g.inputs) for name, g in self.graphs.items()}
        self.outputs = {name: list(g.outputs) for name, g in self.graphs.items()}

    def _load(self, name: str, plan: Path, report: Path) -> _Graph:
        trt = self.trt
        if not plan.is_file():
            raise TrtError(f"{plan}: no TensorRT engine of the {name} graph for this GPU, TensorRT and precision; "
                           f"build it with 'reverie export --format tensorrt --precision {self.precision}' (or let "
                           "--backend tensorrt build it)")
        try:
            engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        except (RuntimeError, TypeError) as e:
            engine, why = None, f"{type(e).__name__}: {e}"
        else:
            why = self.log.take_errors()
        if engine is None:
            raise TrtError(f"{plan}: TensorRT {trt.__version__} could not load this engine"
                           + (f" ({why})" if why else "") + "; delete it and it is built again")
        context = engine.create_execution_context()
        if context is None:
            why = self.log.take_errors() or "out of GPU memory?"
            raise TrtError(f"{plan}: TensorRT could not create an execution context ({why})")
        inputs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        outputs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for i in range(engine.num_io_tensors):
            key = engine.get_tensor_name(i)
            shape = tuple(int(d) for d in engine.get_tensor_shape(key))
            if any(d < 0 for d in shape):
                raise TrtError(f"{plan}: tensor {key!r} has a dynamic shape {shape}; the exported graphs are static, "
                               "so this engine was not built by Reverie: delete it")
            spec = (shape, torch_dtype(trt, engine.get_tensor_dtype(key), f"{plan}: tensor {key!r}"))
            (inputs if engine.get_tensor_mode(key) == trt.TensorIOMode.INPUT else outputs)[key] = spec
        order = list(outputs)
        try:  # the graph's output order, recorded at build time (the engine's own order is the same in practice)
            recorded = json.loads(report.read_text()).get("outputs")
            names = [o["name"] if isinstance(o, dict) else o for o in recorded]
            if sorted(names) == sorted(order):
                order = names
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            pass
        buffers = [[torch.empty(outputs[k][0], dtype=outputs[k][1], device=self.device) for k in order]
                   for _ in range(2)]
        return _Graph(engine, context, inputs, order, buffers)

    def run(self, name: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run graph `name` on torch's current stream of the runner's device; its outputs in the graph's order.

        Each graph's inputs are taken from `feeds` (a superset) by name and checked for dtype, shape and device. The
        outputs are the runner's own buffers, two sets per graph used in turn (an input that is one of a graph's
        output buffers, like the head's x fed back for the next Euler step, is never overwritten by that call): a
        returned tensor is valid until the second-next run of the same graph, so copy what is kept longer.
        """
        g = self.graphs[name]
        ctx = g.context
        keep = []
        for key, (shape, dtype) in g.inputs.items():
            t = feeds[key]
            if t.dtype != dtype or t.shape != shape or t.device != self.device:
                raise TrtError(f"TensorRT {name} graph: input {key!r} must be {_describe(dtype, shape, self.device)}, "
                               f"got {_describe(t.dtype, tuple(t.shape), t.device)}")
            if not t.is_contiguous():
                t = t.contiguous()
            keep.append(t)  # alive until the enqueue below has been issued (the stream orders the rest)
            if not ctx.set_tensor_address(key, t.data_ptr()):
                raise TrtError(f"TensorRT {name} graph: cannot bind input {key!r} ({self.log.take_errors()})")
        outs = g.buffers[g.next]
        used = {t.untyped_storage().data_ptr() for t in keep}
        if any(o.untyped_storage().data_ptr() in used for o in outs):   # an input is this set: take the other one
            g.next ^= 1
            outs = g.buffers[g.next]
        g.next ^= 1
        for key, t in zip(g.outputs, outs):
            if not ctx.set_tensor_address(key, t.data_ptr()):
                raise TrtError(f"TensorRT {name} graph: cannot bind output {key!r} ({self.log.take_errors()})")
        stream = torch.cuda.current_stream(self.device).cuda_stream
        try:
            ok = ctx.execute_async_v3(stream)
        except (RuntimeError, TypeError) as e:
            ok = False
            self.log.errors.append(f"{type(e).__name__}: {e}")
        if not ok:
            why = self.log.take_errors()
            raise TrtError(f"TensorRT failed to enqueue the {name} graph" + (f" ({why})" if why else "")
                           + "; if this persists, delete the engines in " + str(self.folder) + " to rebuild them")
        return list(outs)

    def noise(self, seed: torch.Tensor, counter: torch.Tensor, shape: tuple[int, ...], stream: int) -> torch.Tensor:
        return counter_normal(seed, counter, shape, stream)


def _describe(dtype: torch.dtype, shape: tuple[int, ...], device: torch.device) -> str:
    return f"{str(dtype).removeprefix('torch.')} {tuple(shape)} on {device}"


def torch_dtype(trt: Any, dt: Any, what: str = "tensor") -> torch.dtype:
    """The torch dtype of a TensorRT DataType (TrtError when torch has none)."""
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
             "int32": torch.int32, "int64": torch.int64, "bool": torch.bool, "uint8": torch.uint8}
    for attr, tdt in table.items():
        if hasattr(trt, attr) and dt == getattr(trt, attr):
            return tdt
    raise TrtError(f"{what}: TensorRT type {dt} has no torch equivalent; the exported graphs take float32, int64 "
                   "and uint8 at their inputs and outputs")
