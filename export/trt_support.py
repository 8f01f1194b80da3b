"""What TensorRT's ONNX parser accepts, as data, and a check of an exported graph against it (runs on any CPU).

TensorRT cannot be installed on the machines this project is developed and tested on, so a graph TensorRT would
reject must fail here instead of in a user's engine build. `check_graph` walks every node of an ONNX graph and checks
its operator, the type of each tensor it reads and writes (from ONNX shape inference), and the restrictions TensorRT
documents, against the operator support matrix of onnx-tensorrt (github.com/onnx/onnx-tensorrt, docs/operators.md):

- The table below is the matrix of TensorRT 10.1 (branch 10.1-GA): the oldest 10.x whose table is accurate. Later
  10.x and 11.x add operators (Attention, RMSNormalization, RotaryEmbedding in 10.15) and types, so a graph that
  passes this table parses on every 10.x and 11.x. (10.0-GA's table listed ConstantOfShape as FP32 only; its
  importer takes any value type, and 10.1 corrected the table.)
- Opsets: TensorRT 10.0 parses opsets 9 to 20, TensorRT 11 up to 25; the common range is 9 to 20.
- UINT8 only at network inputs and outputs: any node output of type uint8 that is not a graph output is rejected by
  the parser ("TensorRT does not support UINT8 types for intermediate tensors"); no operator but Cast takes it.
- INT8, INT4 and FP8 are quantized types, reachable only through Q/DQ nodes; DOUBLE is cast down with clamping.
  Neither appears in any operator's list here, so a graph using them fails.

With `precision`, it also checks what the exporter promises for that precision: float32 at the graph's inputs and
outputs, and every heavy operator with weights (Conv, ConvTranspose, Gemm, MatMul with a constant operand) computing
in the requested type, since a strongly typed network runs each layer in the type its graph gives it (a bf16
export's convolutions are fp16: ONNX Conv takes bfloat16 only from opset 22, past what TensorRT 10 parses).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# ---- the onnx-tensorrt support matrix (TensorRT 10.1) --------------------------------------------------------------
F = frozenset({"FP32", "FP16", "BF16"})
FI = F | {"INT32", "INT64"}
FIB = FI | {"BOOL"}
B = frozenset({"BOOL"})
I = frozenset({"INT32", "INT64"})
I64 = frozenset({"INT64"})
Q = frozenset({"INT8", "FP8", "INT4"})

SUPPORTED: dict[str, frozenset[str]] = {
    **dict.fromkeys(["Abs", "Add", "ArgMax", "ArgMin", "DepthToSpace", "Div", "Equal", "Greater", "GreaterOrEqual",
                     "IsNaN", "Less", "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Pad", "Range", "ReduceL1",
                     "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
                     "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Scatter", "ScatterElements", "ScatterND",
                     "Shrink", "Sign", "SpaceToDepth", "Sub", "Sum", "TopK"], FI),
    **dict.fromkeys(["Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Ceil",
                     "Celu", "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "Dropout", "Einsum", "Elu",
                     "Erf", "Exp", "Floor", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
                     "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Hardmax", "ImageScaler",
                     "InstanceNormalization", "IsInf", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LRN",
                     "LSTM", "LpNormalization", "LpPool", "MatMul", "MaxPool", "MeanVarianceNormalization",
                     "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike",
                     "RandomUniform", "RandomUniformLike", "Reciprocal", "Resize", "RNN", "Round", "ScaledTanh",
                     "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Tan",
                     "Tanh", "ThresholdedRelu", "Upsample"], F),
    **dict.fromkeys(["And", "Not", "Or", "Xor"], B),
    **dict.fromkeys(["Cast", "CastLike"], FIB | {"UINT8"}),
    **dict.fromkeys(["Concat", "Constant", "ConstantOfShape", "Expand", "EyeLike", "Flatten", "Gather",
                     "GatherElements", "GatherND", "Identity", "If", "Loop", "OneHot", "Reshape", "ReverseSequence",
                     "Shape", "Size", "Slice", "Split", "Squeeze", "Tile", "Transpose", "Trilu", "Unsqueeze",
                     "Where"], FIB),
    **dict.fromkeys(["DeformConv", "GridSample", "Mish", "NonMaxSuppression", "NonZero", "RoiAlign"],
                    frozenset({"FP32", "FP16"})),
    "DequantizeLinear": Q,
    "Gelu": FI | {"INT8"},
    "Mean": FI | {"FP8"},
}

UNSUPPORTED = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "BlackmanWindow",
    "Col2Im", "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "HammingWindow", "HannWindow", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix",
    "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "STFT", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat",
    "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique"})

OPSETS = (9, 20)   # the default domain's opsets every supported TensorRT parses

# The matrix types an operator's data tensors; these inputs and outputs are indices, shapes, axes, conditions or
# masks instead, with their own types (ONNX's type constraints).
_REDUCE = {op: {1: I64} for op in SUPPORTED if op.startswith("Reduce")}
AUX_INPUTS: dict[str, dict[int, frozenset[str]]] = {
    **_REDUCE,
    "Reshape": {1: I64}, "Expand": {1: I64}, "Tile": {1: I64}, "Squeeze": {1: I64}, "Unsqueeze": {1: I64},
    "Split": {1: I64}, "ConstantOfShape": {0: I64}, "TopK": {1: I64}, "Trilu": {1: I64},
    "Gather": {1: I}, "GatherElements": {1: I}, "GatherND": {1: I64}, "Scatter": {1: I}, "ScatterElements": {1: I},
    "ScatterND": {1: I64}, "CumSum": {1: I}, "Slice": {1: I, 2: I, 3: I, 4: I}, "Pad": {1: I64, 3: I},
    "Where": {0: B}, "If": {0: B}, "Loop": {0: I64, 1: B},
    "Resize": {1: F, 2: frozenset({"FP32"}), 3: I64}, "Upsample": {1: frozenset({"FP32"})},
    "OneHot": {0: FI, 1: FI}, "Dropout": {1: F, 2: B}, "RoiAlign": {2: I64},
    "NonMaxSuppression": {2: I64, 3: frozenset({"FP32"}), 4: frozenset({"FP32"})},
    "QuantizeLinear": {1: F, 2: Q}, "DequantizeLinear": {1: F, 2: Q},
}
AUX_OUTPUTS: dict[str, dict[int, frozenset[str]]] = {
    **dict.fromkeys(["Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "IsNaN", "IsInf"], {0: B}),
    "Shape": {0: I64}, "Size": {0: I64}, "ArgMax": {0: I64}, "ArgMin": {0: I64}, "NonZero": {0: I64},
    "TopK": {1: I64}, "MaxPool": {1: I64}, "Dropout": {1: B}, "LayerNormalization": {1: F, 2: F},
    "NonMaxSuppression": {0: I64}, "QuantizeLinear": {0: Q}, "DequantizeLinear": {0: F},
}
# "`axes` must be an initializer" (a weight: an initializer or a Constant node's output), by input index
CONSTANT_INPUTS = {**{op: 1 for op in _REDUCE}, "Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 3, "CumSum": 1}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
HEAVY = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PRECISION_TYPES = {"fp32": "FP32", "fp16": "FP16", "bf16": "BF16"}
_FOLDS = {"Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "DequantizeLinear"}

_NAMES = {"FP32": "float32", "FP16": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
          "BOOL": "bool", "UINT8": "uint8", "INT8": "int8", "FP8": "fp8", "INT4": "int4", "DOUBLE": "float64"}


def _matrix_type(elem_type: int) -> str | None:
    """The matrix's name of an ONNX element type (None: unknown)."""
    from onnx import TensorProto

    if not elem_type:
        return None
    name = TensorProto.DataType.Name(elem_type)
    return {"FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "FLOAT8E4M3FN": "FP8", "FLOAT8E4M3FNUZ": "FP8",
            "FLOAT8E5M2": "FP8", "FLOAT8E5M2FNUZ": "FP8"}.get(name, name)


def _show(types: Any) -> str:
    if isinstance(types, str):
        return _NAMES.get(types, types.lower())
    order = list(_NAMES)
    return ", ".join(_show(t) for t in sorted(types, key=lambda t: order.index(t) if t in order else 99))


def check_graph(onnx_path: str | os.PathLike, precision: str | None = None) -> list[str]:
    """Every way the ONNX graph at `onnx_path` breaks TensorRT 10.x/11.x's documented support (empty: none).

    Each problem is one line naming the file, the node (name and operator), the tensor and its type. With
    `precision` (fp32, fp16, bf16) the exporter's promises for that precision are checked too (module docstring).
    """
    import onnx

    path = Path(onnx_path)
    model = onnx.load(str(path))
    where = path.name
    problems: list[str] = []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if not OPSETS[0] <= imp.version <= OPSETS[1]:
                problems.append(f"{where}: opset {imp.version}; every TensorRT 10.x and 11.x parses opsets "
                                f"{OPSETS[0]} to {OPSETS[1]}")
        else:
            problems.append(f"{where}: imports operator domain {imp.domain!r}; TensorRT parses the default ONNX "
                            "domain only (others need plugins)")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # onnx raises InferenceError, ValidationError or RuntimeError by version
        opset = max((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), default=0)
        problems.append(f"{where}: not valid ONNX at opset {opset}: shape inference fails ({type(e).__name__}: "
                        f"{str(e).strip()[:300]}), so its tensor types cannot be checked")
        inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types: dict[str, str | None] = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        types[vi.name] = _matrix_type(vi.type.tensor_type.elem_type)
    weights = {init.name for init in g.initializer}
    for init in g.initializer:
        types[init.name] = _matrix_type(init.data_type)
    graph_inputs = {vi.name for vi in g.input} - weights
    graph_outputs = {vi.name for vi in g.output}
    constant = set(weights)   # weights, and what folds from weights alone (for the heavy operators' operands)
    for node in g.node:
        if node.op_type == "Constant":
            weights.update(node.output)
        if node.op_type in ("Constant", "Identity") and all(x in weights for x in node.input):
            weights.update(node.output)
        if node.op_type == "Constant" or (node.op_type in _FOLDS and node.input and
                                          all(not x or x in constant for x in node.input)):
            constant.update(node.output)

    for vi in g.input:
        if vi.name in graph_inputs and types.get(vi.name) not in FIB | {"UINT8"}:
            problems.append(f"{where}: input {vi.name!r} is {_show(types.get(vi.name) or 'of unknown type')}; "
                            "TensorRT takes float32, float16, bfloat16, int32, int64, bool or uint8 at its inputs")
    for vi in g.output:
        if types.get(vi.name) not in FIB | {"UINT8"}:
            problems.append(f"{where}: output {vi.name!r} is {_show(types.get(vi.name) or 'of unknown type')}; "
                            "TensorRT gives float32, float16, bfloat16, int32, int64, bool or uint8 at its outputs")

    for node in g.node:
        problems += _check_node(node, where, types, weights, graph_outputs)

    if precision is not None:
        problems += _check_precision(g, where, precision, types, constant, graph_inputs, graph_outputs)
    return problems


def _label(where: str, node: Any) -> str:
    return f"{where}: node {node.name or '(unnamed)'!r} ({node.op_type})"


def _check_node(node: Any, where: str, types: dict[str, str | None], weights: set[str],
                graph_outputs: set[str]) -> list[str]:
    from onnx import helper

    label = _label(where, node)
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return [f"{label}: operator of domain {node.domain!r}; TensorRT parses the default ONNX domain only"]
    if op in UNSUPPORTED:
        return [f"{label}: TensorRT's ONNX parser does not support {op} (onnx-tensorrt operator matrix)"]
    if op not in SUPPORTED:
        return [f"{label}: {op} is not in TensorRT 10.x's ONNX operator matrix (onnx-tensorrt docs/operators.md)"]
    problems = []
    data = SUPPORTED[op]
    bad = []
    for kind, names, aux in (("input", node.input, AUX_INPUTS.get(op, {})),
                             ("output", node.output, AUX_OUTPUTS.get(op, {}))):
        for i, x in enumerate(names):
            if not x:
                continue
            t = types.get(x)
            if t is None:
                problems.append(f"{label}: {kind} {x!r} has no type after ONNX shape inference; TensorRT needs it")
            elif t not in aux.get(i, data):
                bad.append((kind, x, t, aux.get(i, data)))
    for allowed in dict.fromkeys(a for *_, a in bad):   # one line per node and set of accepted types
        what = ", ".join(f"{kind} {x!r} is {_show(t)}" for kind, x, t, a in bad if a == allowed)
        problems.append(f"{label}: {what}; TensorRT's {op} takes {_show(allowed)} there")
    for x in node.output:
        if x and types.get(x) == "UINT8" and x not in graph_outputs:
            problems.append(f"{label}: output {x!r} is uint8 inside the network; TensorRT accepts uint8 only at "
                            "network inputs and outputs (compute in float, cast to uint8 last)")

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op in CONSTANT_INPUTS:
        i = CONSTANT_INPUTS[op]
        if len(node.input) > i and node.input[i] and node.input[i] not in weights:
            problems.append(f"{label}: input {i} ({node.input[i]!r}, the axes) is computed; TensorRT needs it as an "
                            "initializer or Constant")
    if op == "Resize":
        def text(key: str, default: str) -> str:
            v = attrs.get(key, default)
            return v.decode() if isinstance(v, bytes) else str(v)

        for key, default, allowed in (("mode", "nearest", RESIZE_MODES),
                                      ("coordinate_transformation_mode", "half_pixel", RESIZE_COORDINATES),
                                      ("nearest_mode", "round_prefer_floor", RESIZE_NEAREST),
                                      ("keep_aspect_ratio_policy", "stretch", {"stretch"})):
            if text(key, default) not in allowed:
                problems.append(f"{label}: {key}={text(key, default)!r}; TensorRT supports {sorted(allowed)}")
        if int(attrs.get("antialias", 0)):
            problems.append(f"{label}: antialias=1; TensorRT's Resize does not antialias")
    if op in ("MaxPool", "AveragePool", "LpPool"):
        if len(attrs.get("kernel_shape", ())) not in (2, 3):
            problems.append(f"{label}: kernel_shape {list(attrs.get('kernel_shape', ()))}; TensorRT pools in 2D or 3D")
        if any(int(d) != 1 for d in attrs.get("dilations", ())):
            problems.append(f"{label}: dilations {list(attrs['dilations'])}; TensorRT pools without dilation")
    if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
        problems.append(f"{label}: the Indices output; TensorRT's MaxPool gives the values only")
    if op == "LayerNormalization" and any(node.output[1:]):
        problems.append(f"{label}: the Mean/InvStdDev outputs; TensorRT's LayerNormalization gives Y only")
    if op == "TopK" and int(attrs.get("sorted", 1)) != 1:
        problems.append(f"{label}: sorted=0; TensorRT's TopK sorts")
    if op == "ScatterND":
        red = attrs.get("reduction", b"none")
        if (red.decode() if isinstance(red, bytes) else red) != "none":
            problems.append(f"{label}: reduction={red!r}; TensorRT's ScatterND does not reduce")
    if op == "Dropout" and len(node.input) > 2 and node.input[2] and node.input[2] not in weights:
        problems.append(f"{label}: training_mode is computed; TensorRT needs an initializer that is False")
    if op == "Constant" and ({"sparse_value", "value_string", "value_strings"} & set(attrs)):
        problems.append(f"{label}: sparse or string constant; TensorRT takes dense numeric constants only")
    return problems


def _check_precision(g: Any, where: str, precision: str, types: dict[str, str | None], constant: set[str],
                     graph_inputs: set[str], graph_outputs: set[str]) -> list[str]:
    if precision not in PRECISION_TYPES:
        return [f"{where}: precision {precision!r}; choose one of {', '.join(PRECISION_TYPES)}"]
    want = PRECISION_TYPES[precision]
    problems = []
    for name in sorted(graph_inputs | graph_outputs):
        if types.get(name) in ("FP16", "BF16"):
            problems.append(f"{where}: {'input' if name in graph_inputs else 'output'} {name!r} is "
                            f"{_show(types[name])}; the exported graphs take and give float32 (casting inside)")
    for node in g.node:
        if node.op_type not in HEAVY:
            continue
        operands = [x for x in node.input[:2] if x]
        if node.op_type in ("Conv", "ConvTranspose"):
            weighted = len(operands) > 1 and operands[1] in constant
        else:
            weighted = any(x in constant for x in operands)
        t = types.get(node.output[0]) if node.output else None
        # ONNX Conv takes bfloat16 only from opset 22 (past TensorRT 10's parser), so a bf16 export decodes in fp16
        allowed = {want, "FP16"} if precision == "bf16" and node.op_type in ("Conv", "ConvTranspose") else {want}
        if weighted and t in F and t not in allowed:
            problems.append(f"{_label(where, node)}: computes in {_show(t)}, and the graph was exported for "
                            f"{precision} (weights and matmuls in {_show(want)})")
    return problems
