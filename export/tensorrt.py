"""TensorRT engines of the step's graphs: built once per checkpoint, batch, precision, GPU and TensorRT version.

    folder = ensure_engines(ckpt, batch=1, precision="fp16", device="cuda")   # exports, then builds what is missing
    runner = engine.trt_runner.TrtRunner(folder, torch.device("cuda"), "fp16")

TensorRT 11 removed weak typing (BuilderFlag.FP16 / BF16 and the precision constraints): every network is strongly
typed and its precision is its graph's types. So the precision is chosen at export (export.onnx: weights and
matmuls in fp16 or bf16, float32 inputs and outputs with casts inside, norms and softmax in float32), and each graph
is built as a strongly typed network (on 10.x with NetworkDefinitionCreationFlag.STRONGLY_TYPED, which 11.x
accepts and ignores); no precision flag is ever set. For fp32, TF32 is turned off so fp32 means fp32.

Before building, each graph is checked against TensorRT's documented ONNX support (export.trt_support), so a graph
TensorRT would reject fails with the list of its problems instead of a parser error. After building, the engine
inspector (the build uses ProfilingVerbosity.DETAILED so that it reports types) gives every layer's input and output
types; they are written as JSON beside the plan (`engine.trt_runner.report_path`) with the I/O tensors in the graph's
order, and the build fails if no convolution or matrix-multiply layer runs in the requested precision. Plans and
reports are written under temporary names and renamed; builds run under the graphs folder's file lock
(engine.cache.locked), so processes started together build once. Every TensorRT failure is a TrtUnavailable or
TrtError (engine.trt_runner) that says what to do.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

from engine.cache import locked
from engine.checkpoint import Checkpoint
from engine.errors import ReverieError
from engine.graphs import GRAPHS, MANIFEST, PRECISIONS
from engine.trt_runner import (
    TrtError,
    cuda_device,
    engine_tag,
    plan_path,
    report_path,
    require_tensorrt,
    torch_dtype,
    trt_log,
    trt_major,
)

HEAVY_LAYER = re.compile(r"convolution|matrixmultiply|gemm|fullyconnected", re.IGNORECASE)
# data types in the inspector's JSON: "Format/Datatype" (10.x, e.g. "Row major linear FP16 format") or "DataType"
# (11.x, e.g. "Half"); checked in this order ("bf16" before "fp16", "uint8" before "int8")
LAYER_DTYPES = (("bfloat16", r"bf16|bfloat16"), ("float16", r"\bfp16\b|\bhalf\b|\bfloat16\b"), ("fp8", r"\bfp8"),
                ("float32", r"\bfp32\b|\bfloat\b|\bfloat32\b"), ("uint8", r"\buint8\b"), ("int8", r"\bint8\b"),
                ("int32", r"\bint32\b"), ("int64", r"\bint64\b"), ("int4", r"\bint4\b"), ("bool", r"\bbool\b"))
FLOAT_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def ensure_engines(ckpt: Checkpoint, batch: int, precision: str = "fp16", device: str | torch.device = "cuda",
                   quiet: bool = False) -> Path:
    """The cache folder of this checkpoint's graphs for `batch` worlds in `precision`, with TensorRT engines for
    this GPU and TensorRT built beside them; exports and builds (once, under a lock) whatever is missing."""
    require_tensorrt(device)   # before anything is exported
    from export.onnx import ensure_graphs

    folder = ensure_graphs(ckpt, batch, quiet=quiet, precision=precision)
    build_engines(folder, precision, device, quiet=quiet)
    return folder


def build_engines(folder: str | os.PathLike, precision: str = "fp16", device: str | torch.device = "cuda",
                  quiet: bool = False) -> list[Path]:
    """Plans of every graph in an exported folder, built where missing or older than their graph."""
    require_tensorrt(device, purpose="building TensorRT engines",
                     otherwise="export ONNX graphs only (reverie export without --format tensorrt)")
    folder, device = Path(folder), cuda_device(device)
    if precision not in PRECISIONS:
        raise TrtError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    exported = _exported_precision(folder)
    if exported != precision:
        raise TrtError(f"{folder}: its graphs were exported for {exported}, not {precision}; export them for "
                       f"{precision} (reverie export --precision {precision}) or build for {exported}")
    tag = engine_tag(precision, device)
    if all(engine_current(folder, name, tag) for name in GRAPHS):
        return [plan_path(folder, name, tag) for name in GRAPHS]
    from export.trt_support import check_graph

    with locked(folder.parent / f"{folder.name}.lock"):   # one builder at a time; the others then find the plans
        todo = [name for name in GRAPHS if not engine_current(folder, name, tag)]
        problems = [p for name in todo for p in check_graph(folder / f"{name}.onnx", precision)]
        if problems:
            raise TrtError(f"{folder}: TensorRT 10/11 cannot build these graphs, which is a defect of the exporter "
                           f"(please report it): " + "; ".join(problems))
        for name in todo:
            if not quiet:
                print(f"reverie: building the TensorRT engine of {name} ({precision}, {tag.split('-', 1)[1]}; once, "
                      f"cached in {folder})", file=sys.stderr)
            with torch.cuda.device(device):
                build_engine(folder / f"{name}.onnx", plan_path(folder, name, tag), precision, quiet=quiet,
                             report=report_path(folder, name, tag))
    return [plan_path(folder, name, tag) for name in GRAPHS]


def _exported_precision(folder: Path) -> str:
    try:
        man = json.loads((folder / MANIFEST).read_text())
    except OSError:
        raise TrtError(f"{folder}: no exported graphs here ({MANIFEST} missing); export them first with "
                       "'reverie export'") from None
    except ValueError:
        raise TrtError(f"{folder / MANIFEST}: damaged; export the graphs again with 'reverie export'") from None
    missing = [g for g in GRAPHS if not (folder / f"{g}.onnx").is_file()]
    if missing:
        raise TrtError(f"{folder}: {', '.join(m + '.onnx' for m in missing)} missing; export the graphs again with "
                       "'reverie export'")
    return str(man.get("precision", "fp32"))


def _stamp(onnx_path: Path) -> dict[str, Any]:
    st = onnx_path.stat()
    return {"file": onnx_path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def engine_current(folder: Path, name: str, tag: str) -> bool:
    """Whether graph `name` has a plan and a report built from its current ONNX file."""
    plan, report = plan_path(folder, name, tag), report_path(folder, name, tag)
    try:
        rep = json.loads(report.read_text())
        return plan.is_file() and rep.get("onnx") == _stamp(folder / f"{name}.onnx") and not rep.get("problems")
    except (OSError, ValueError, AttributeError):
        return False


def _write(path: Path, data: bytes | memoryview) -> None:
    """Write under a temporary name in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def build_engine(onnx_path: str | os.PathLike, plan: str | os.PathLike, precision: str, quiet: bool = False,
                 report: str | os.PathLike | None = None) -> dict[str, Any]:
    """Parse one ONNX graph as a strongly typed network, build and write its plan and its report (JSON; default:
    beside the plan, named like it); returns the report.

    Builds on the current CUDA device. Raises TrtError when TensorRT fails or the built engine does not run its
    convolutions and matrix multiplies in `precision` (the report is written either way).
    """
    trt = require_tensorrt(None, purpose="building TensorRT engines",
                           otherwise="export ONNX graphs only (reverie export without --format tensorrt)")
    onnx_path, plan = Path(onnx_path), Path(plan)
    log = trt_log(trt)
    log.quiet = quiet
    log.take_errors()
    version = trt.__version__
    try:
        builder = trt.Builder(log.logger)
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if flag is None and trt_major(trt) < 11:
            raise TrtError(f"TensorRT {version} cannot build strongly typed networks; install TensorRT 10.x or 11.x")
        network = builder.create_network(0 if flag is None else 1 << int(flag))
        parser = trt.OnnxParser(network, log.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
            raise TrtError(f"{onnx_path}: TensorRT {version}'s ONNX parser rejects this graph: {'; '.join(errors)}. "
                           "It passed Reverie's check of TensorRT's documented support (export/trt_support.py), "
                           "which misses this case: please report it")
        config = builder.create_builder_config()
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED   # the inspector reports layer types
        tf32 = getattr(trt.BuilderFlag, "TF32", None)
        if precision == "fp32" and tf32 is not None:
            config.clear_flag(tf32)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            why = log.take_errors() or "see the TensorRT messages above"
            raise TrtError(f"{onnx_path}: TensorRT {version} failed to build an engine ({why}); if the GPU ran out of "
                           "memory, close other programs using it and try again")
        data = bytes(memoryview(serialized))
        runtime = trt.Runtime(log.logger)
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise TrtError(f"{onnx_path}: TensorRT {version} cannot load the engine it just built "
                           f"({log.take_errors() or 'see the TensorRT messages above'})")
        inspector = engine.create_engine_inspector()
        info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        io = _io_tensors(trt, engine, onnx_path)
    except ReverieError:
        raise
    except (RuntimeError, TypeError, AttributeError) as e:   # the bindings' own errors, or an API this version lacks
        raise TrtError(f"{onnx_path}: TensorRT {version} failed ({type(e).__name__}: {e}); Reverie supports the "
                       "TensorRT 10.x and 11.x Python APIs") from e
    layers = layer_precisions(info)
    problems = precision_problems(layers, precision)
    report_data = {"graph": onnx_path.stem, "onnx": _stamp(onnx_path), "tensorrt": version, "precision": precision,
                   "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                   "strongly_typed": True, **io,
                   "heavy_layers": _count(layers), "problems": problems, "layers": layers}
    if not problems:
        _write(plan, data)
    report = Path(report) if report is not None else plan.with_suffix(".json")
    _write(report, json.dumps(report_data, indent=1).encode())
    if problems:
        raise TrtError(f"{onnx_path}: " + "; ".join(problems))
    return report_data


def _parser_error(err: Any) -> str:
    """One parser error as text, with its node when the bindings give it."""
    desc = err.desc() if hasattr(err, "desc") else str(err)
    node = ""
    for attr in ("node_name", "node_operator"):
        try:
            v = getattr(err, attr)()
        except (AttributeError, RuntimeError, TypeError):
            continue
        if v:
            node += f"{' ' if node else ''}{v}"
    return f"{node}: {desc}" if node else str(desc)


def _io_tensors(trt: Any, engine: Any, onnx_path: Path) -> dict[str, list[dict[str, Any]]]:
    """The engine's inputs and outputs (name, dtype, shape), outputs in the ONNX graph's order."""
    import onnx

    tensors: dict[str, list[dict[str, Any]]] = {"inputs": [], "outputs": []}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        kind = "inputs" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "outputs"
        dtype = torch_dtype(trt, engine.get_tensor_dtype(name), f"{onnx_path}: tensor {name!r}")
        tensors[kind].append({"name": name, "dtype": str(dtype).removeprefix("torch."),
                              "shape": [int(d) for d in engine.get_tensor_shape(name)]})
    order = [o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output]
    tensors["outputs"].sort(key=lambda t: order.index(t["name"]) if t["name"] in order else len(order))
    return tensors


def _dtype(tensor: Any) -> str | None:
    text = ""
    if isinstance(tensor, dict):
        text = str(tensor.get("DataType") or tensor.get("Format/Datatype") or tensor.get("Format") or "")
    text = text.lower()
    for name, pattern in LAYER_DTYPES:
        if re.search(pattern, text):
            return name
    return None


def layer_precisions(info: str | dict[str, Any]) -> list[dict[str, Any]]:
    """Each layer of an engine inspector's JSON (TensorRT 10.x or 11.x schema): name, type, input and output
    types, and whether it is a heavy layer (convolution, matrix multiply)."""
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError:
            return []
    out = []
    for layer in info.get("Layers", []) if isinstance(info, dict) else []:
        if not isinstance(layer, dict):   # names only: the engine was built without detailed profiling verbosity
            out.append({"name": str(layer), "type": None, "inputs": [], "outputs": [], "heavy": False})
            continue
        kind = str(layer.get("LayerType", ""))
        param = str(layer.get("ParameterType", ""))
        out.append({"name": str(layer.get("Name", "")), "type": kind or param or None,
                    "inputs": [_dtype(t) for t in layer.get("Inputs", [])],
                    "outputs": [_dtype(t) for t in layer.get("Outputs", [])],
                    "heavy": bool(HEAVY_LAYER.search(f"{kind} {param}"))})
    return out


def _compute_type(layer: dict[str, Any]) -> str | None:
    """A heavy layer's type: that of its first floating-point input."""
    return next((t for t in layer["inputs"] if t in FLOAT_NAMES.values()), None)


def _count(layers: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for layer in layers:
        if layer["heavy"]:
            key = _compute_type(layer) or "unknown"
            counts[key] = counts.get(key, 0) + 1
    return counts


def precision_problems(layers: list[dict[str, Any]], precision: str) -> list[str]:
    """Empty, or why the engine does not run in `precision`: its convolution and matrix-multiply layers (the ones
    the inspector shows; TensorRT may fuse the rest) include some, and none of them computes in that type."""
    want = FLOAT_NAMES[precision]
    typed = [(layer["name"], _compute_type(layer)) for layer in layers if layer["heavy"]]
    typed = [(n, t) for n, t in typed if t is not None]
    if not typed or any(t == want for _, t in typed):
        return []
    shown = ", ".join(f"{n!r} in {t}" for n, t in typed[:5]) + (f" and {len(typed) - 5} more" if len(typed) > 5
                                                                else "")
    return [f"none of the engine's {len(typed)} convolution and matrix-multiply layers computes in {want} ({shown}), "
            f"though the graph was exported for {precision}"]
