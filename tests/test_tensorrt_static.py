"""TensorRT, checked where it cannot be installed (CPU CI), and run where it can (marked gpu).

- Static: every exported graph, in every precision, against TensorRT 10.x/11.x's documented ONNX support
  (export.trt_support, from the onnx-tensorrt operator matrix), and hand-made graphs with known defects.
- The build path (export.tensorrt) against a stand-in `tensorrt` module: strongly typed networks, no precision
  flags, plans and reports written whole, parser and build failures as TrtError, the engine inspector's JSON.
- GPU: real engines against ONNX Runtime; skipped with the reason where TensorRT or CUDA is missing.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
import types

import numpy as np
import pytest
import torch
from tiny_model import tiny_checkpoint

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[export]')")
from onnx import TensorProto, helper  # noqa: E402

from engine.graphs import GRAPHS, PRECISIONS  # noqa: E402
from engine.trt_runner import TrtError, TrtUnavailable, plan_path, report_path, tag_for  # noqa: E402
from export import tensorrt as ext  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from export.trt_support import SUPPORTED, check_graph  # noqa: E402

EXPORTS_PRECISION = "precision" in inspect.signature(export_onnx).parameters


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("trt") / "model.safetensors")


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    """Graphs of the tiny model per precision (batch 2), exported once for the module."""
    made = {}

    def get(precision: str):
        if precision not in made:
            if precision != "fp32" and not EXPORTS_PRECISION:
                pytest.skip("export.onnx.export_onnx has no precision parameter yet: only fp32 graphs exist")
            kw = {"precision": precision} if EXPORTS_PRECISION else {}
            made[precision] = export_onnx(ckpt, tmp_path_factory.mktemp(f"graphs-{precision}"), batch=2, check=False,
                                          **kw)
        return made[precision]
    return get


# ---- (a) the exported graphs pass ----------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("graph", GRAPHS)
def test_every_exported_graph_is_within_tensorrts_documented_support(exported, precision, graph):
    problems = check_graph(exported(precision) / f"{graph}.onnx", precision=precision)
    assert problems == [], "\n".join(problems)


def test_a_backbone_without_actions_is_within_support_too(tmp_path):
    path = tiny_checkpoint(tmp_path / "nba.safetensors", backbone_actions=False)
    out = export_onnx(path, tmp_path / "graphs", check=False)
    names = {i.name for i in onnx.load(str(out / "backbone.onnx")).graph.input}
    assert "actions" not in names   # the exporter dropped it; the runner takes input names from the engine
    problems = [p for g in GRAPHS for p in check_graph(out / f"{g}.onnx", precision="fp32")]
    assert problems == [], "\n".join(problems)


# ---- (b), (c) defects are caught -----------------------------------------------------------------------------------
def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(model, tmp_path, name="g.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.mark.parametrize("at_end", [False, True])
def test_a_uint8_transpose_fails_naming_the_node_and_the_type(tmp_path, at_end):
    """Item 3's defect: frames cast to uint8, then permuted (TensorRT takes uint8 only at network inputs and
    outputs). In the middle of a graph, and at its end as the old decode graph had it."""
    nodes = [helper.make_node("Cast", ["x"], ["x_u8"], name="to_u8", to=TensorProto.UINT8),
             helper.make_node("Transpose", ["x_u8"], ["frames" if at_end else "t_u8"], name="permute_u8",
                              perm=[0, 2, 3, 1])]
    if not at_end:
        nodes.append(helper.make_node("Cast", ["t_u8"], ["frames"], name="to_f32", to=TensorProto.FLOAT))
    out_type = TensorProto.UINT8 if at_end else TensorProto.FLOAT
    path = _save(_model(nodes, [_vi("x", TensorProto.FLOAT, [1, 3, 4, 4])], [_vi("frames", out_type, [1, 4, 4, 3])]),
                 tmp_path)
    problems = check_graph(path)
    assert any("permute_u8" in p and "Transpose" in p and "uint8" in p for p in problems), problems
    assert any("to_u8" in p and "uint8 inside the network" in p for p in problems), problems


def test_permuting_in_float_and_casting_last_passes(tmp_path):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="permute", perm=[0, 2, 3, 1]),
             helper.make_node("Cast", ["t"], ["frames"], name="to_u8", to=TensorProto.UINT8)]
    path = _save(_model(nodes, [_vi("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                        [_vi("frames", TensorProto.UINT8, [1, 4, 4, 3])]), tmp_path)
    assert check_graph(path) == []


def test_an_unsupported_operator_fails(tmp_path):
    nodes = [helper.make_node("Det", ["x"], ["d"], name="determinant")]
    path = _save(_model(nodes, [_vi("x", TensorProto.FLOAT, [2, 3, 3])], [_vi("d", TensorProto.FLOAT, [2])]),
                 tmp_path)
    problems = check_graph(path)
    assert len(problems) == 1 and "determinant" in problems[0] and "does not support Det" in problems[0]
    assert "Det" not in SUPPORTED


def test_an_operator_outside_its_documented_types_fails(tmp_path):
    nodes = [helper.make_node("MatMul", ["a", "b"], ["c"], name="int_matmul")]
    path = _save(_model(nodes, [_vi("a", TensorProto.INT32, [2, 3]), _vi("b", TensorProto.INT32, [3, 4])],
                        [_vi("c", TensorProto.INT32, [2, 4])]), tmp_path)
    problems = check_graph(path)
    assert len(problems) == 1 and "int_matmul" in problems[0] and "int32" in problems[0], problems


def test_opsets_domains_and_computed_axes_fail(tmp_path):
    relu = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    io = ([_vi("x", TensorProto.FLOAT, [2])], [_vi("y", TensorProto.FLOAT, [2])])
    assert any("opset 21" in p for p in check_graph(_save(_model(relu, *io, opset=21), tmp_path, "o.onnx")))
    custom = _model([helper.make_node("Plug", ["x"], ["y"], name="p", domain="my.ops")], *io)
    custom.opset_import.append(helper.make_opsetid("my.ops", 1))
    assert any("my.ops" in p for p in check_graph(_save(custom, tmp_path, "c.onnx")))
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Unsqueeze", ["x", "s"], ["y"], name="unsq")]
    axes = _model(nodes, [_vi("x", TensorProto.FLOAT, [1])], [_vi("y", TensorProto.FLOAT, [1, 1])])
    assert any("unsq" in p and "axes" in p for p in check_graph(_save(axes, tmp_path, "a.onnx")))


def test_the_precision_check_finds_float32_weights_and_reduced_io(tmp_path):
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], np.eye(3, dtype=np.float32).ravel().tolist())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")]
    path = _save(_model(nodes, [_vi("x", TensorProto.FLOAT, [2, 3])], [_vi("y", TensorProto.FLOAT, [2, 3])], [w]),
                 tmp_path)
    assert check_graph(path, precision="fp32") == []
    assert any("linear" in p and "fp16" in p for p in check_graph(path, precision="fp16"))
    nodes = [helper.make_node("Cast", ["x"], ["y"], name="half", to=TensorProto.FLOAT16)]
    path = _save(_model(nodes, [_vi("x", TensorProto.FLOAT, [2])], [_vi("y", TensorProto.FLOAT16, [2])]),
                 tmp_path, "h.onnx")
    assert check_graph(path) == []   # valid for TensorRT, but not what the exporter promises
    assert any("'y' is float16" in p for p in check_graph(path, precision="fp16"))


# ---- the engine inspector's JSON -------------------------------------------------------------------------------------
INSPECTOR_10 = {"Layers": [
    {"Name": "conv_in", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
     "Inputs": [{"Name": "z", "Location": "Device", "Dimensions": [1, 16, 4, 4],
                 "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
     "Outputs": [{"Name": "c", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
    {"Name": "{ForeignNode[/MatMul.../Softmax]}", "LayerType": "Myelin",
     "Inputs": [{"Name": "c", "Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Name": "frames", "Format/Datatype": "Row major linear UInt8 format"}]}],
    "Bindings": ["z", "frames"]}
INSPECTOR_11 = {"Layers": [
    {"Name": "gemm", "LayerType": "MatrixMultiply", "ParameterType": "MatrixMultiply",
     "Inputs": [{"Name": "a", "DataType": "BFloat16", "Format": "Row major linear"}],
     "Outputs": [{"Name": "b", "DataType": "BFloat16", "Format": "Row major linear"}]},
    {"Name": "cast", "LayerType": "Cast", "Inputs": [{"Name": "b", "DataType": "BFloat16"}],
     "Outputs": [{"Name": "y", "DataType": "Float"}]}],
    "I/O Tensors": [{"Name": "a", "IOMode": "Input", "DataType": "Float"}]}
INSPECTOR_FP32 = json.loads(json.dumps(INSPECTOR_10).replace("FP16", "FP32"))


def test_layer_precisions_read_both_inspector_schemas():
    ten = ext.layer_precisions(json.dumps(INSPECTOR_10))
    assert [(lay["heavy"], lay["inputs"], lay["outputs"]) for lay in ten] == [
        (True, ["float16"], ["float16"]), (False, ["float32"], ["uint8"])]
    eleven = ext.layer_precisions(INSPECTOR_11)
    assert [(lay["heavy"], lay["inputs"], lay["outputs"]) for lay in eleven] == [
        (True, ["bfloat16"], ["bfloat16"]), (False, ["bfloat16"], ["float32"])]
    assert ext.precision_problems(ten, "fp16") == [] and ext.precision_problems(eleven, "bf16") == []
    assert "bfloat16" in ext.precision_problems(ten, "bf16")[0]
    assert ext.layer_precisions({"Layers": ["names only"]})[0]["heavy"] is False


# ---- the build path against a stand-in tensorrt ------------------------------------------------------------------
class FakeTrt(types.ModuleType):
    """Just enough of the tensorrt module for export.tensorrt: records what the build asked for."""

    def __init__(self, inspector: dict, parse_errors: tuple = (), version: str = "10.9.0"):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        fake = self

        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        class ILogger:
            def __init__(self):
                pass
        ILogger.Severity = Severity
        self.ILogger = ILogger
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.BuilderFlag = types.SimpleNamespace(TF32=7)   # no FP16 / BF16: TensorRT 11 has none
        self.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed")
        self.LayerInformationFormat = types.SimpleNamespace(JSON="json")
        self.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
        for name in ("float32", "float16", "bfloat16", "int8", "int32", "int64", "bool", "uint8"):
            setattr(self, name, f"dt.{name}")

        class Network:
            def __init__(self, flags):
                self.flags, self.io = flags, []

        class Config:
            def __init__(self):
                self.profiling_verbosity, self.cleared = None, []

            def clear_flag(self, flag):
                self.cleared.append(flag)

        class Builder:
            def __init__(self, logger):
                self.logger = logger

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", network.flags, config.profiling_verbosity, tuple(config.cleared)))
                return json.dumps(network.io).encode()

        class Error:
            def __init__(self, node, desc):
                self._node, self._desc = node, desc

            def desc(self):
                return self._desc

            def node_name(self):
                return self._node

            def node_operator(self):
                return "Transpose"

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.errors = network, [Error(*e) for e in parse_errors]

            def parse_from_file(self, path):
                g = onnx.load(path).graph
                self.network.io = [(i.name, "in", i.type.tensor_type.elem_type, [d.dim_value for d in
                                   i.type.tensor_type.shape.dim]) for i in g.input] + \
                                  [(o.name, "out", o.type.tensor_type.elem_type, [d.dim_value for d in
                                   o.type.tensor_type.shape.dim]) for o in reversed(g.output)]
                return not self.errors

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, i):
                return self.errors[i]

        class Engine:
            def __init__(self, io):
                self.io = {name: (mode, elem, shape) for name, mode, elem, shape in io}
                self.num_io_tensors = len(io)
                self.names = [name for name, *_ in io]

            def get_tensor_name(self, i):
                return self.names[i]

            def get_tensor_mode(self, name):
                return self.io[name][0]

            def get_tensor_dtype(self, name):
                return {TensorProto.FLOAT: "dt.float32", TensorProto.INT64: "dt.int64",
                        TensorProto.UINT8: "dt.uint8"}[self.io[name][1]]

            def get_tensor_shape(self, name):
                return self.io[name][2]

            def create_engine_inspector(self):
                return types.SimpleNamespace(get_engine_information=lambda fmt: json.dumps(inspector))

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return Engine(json.loads(bytes(data)))

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch answers as if a CUDA GPU were there (nothing runs on it: the build path only asks its name)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 80GB")
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())


def install(monkeypatch, fake: FakeTrt) -> FakeTrt:
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def test_engines_are_built_strongly_typed_with_reports_and_only_once(exported, monkeypatch, fake_gpu):
    folder = exported("fp32")
    fake = install(monkeypatch, FakeTrt(INSPECTOR_FP32))
    plans = ext.build_engines(folder, "fp32", "cuda", quiet=True)
    tag = tag_for("fp32", "Fake GPU 80GB", "10.9.0")
    assert tag == "fp32-Fake_GPU_80GB-trt10.9.0"
    assert plans == [plan_path(folder, g, tag) for g in GRAPHS] and all(p.is_file() for p in plans)
    builds = [c for c in fake.calls if c[0] == "build"]
    # strongly typed, detailed profiling for the inspector, TF32 off for fp32 (and no precision flag: the stand-in
    # has none, like TensorRT 11)
    assert len(builds) == 4 and all(flags == 1 << 0 and verbosity == "detailed" and cleared == (7,)
                                    for _, flags, verbosity, cleared in builds)
    rep = json.loads(report_path(folder, "backbone", tag).read_text())
    assert rep["strongly_typed"] and rep["precision"] == "fp32" and rep["heavy_layers"] == {"float32": 1}
    assert [o["name"] for o in rep["outputs"]] == ["h", "k_new", "v_new"]   # the graph's order, not the engine's
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    fake.calls.clear()
    ext.build_engines(folder, "fp32", "cuda", quiet=True)
    assert fake.calls == []   # current plans are not built again


def test_ensure_engines_exports_then_builds_into_the_cache(ckpt, monkeypatch, fake_gpu, tmp_path):
    from engine.checkpoint import load_checkpoint
    from engine.graphs import file_sha256, graph_folder

    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))
    install(monkeypatch, FakeTrt(INSPECTOR_FP32))
    folder = ext.ensure_engines(load_checkpoint(ckpt), 1, "fp32", "cuda", quiet=True)
    assert folder == graph_folder(file_sha256(ckpt), 1, "fp32")
    tag = tag_for("fp32", "Fake GPU 80GB", "10.9.0")
    assert all(plan_path(folder, g, tag).is_file() and report_path(folder, g, tag).is_file() for g in GRAPHS)


def test_an_engine_not_in_the_requested_precision_fails(exported, monkeypatch, fake_gpu, tmp_path):
    folder = exported("fp32")
    install(monkeypatch, FakeTrt(INSPECTOR_10))   # its convolution computes in float16
    with pytest.raises(TrtError, match="none of the engine's 1 convolution"):
        ext.build_engine(folder / "decode.onnx", tmp_path / "decode.x.plan", "fp32")
    assert not (tmp_path / "decode.x.plan").exists()
    assert json.loads((tmp_path / "decode.x.json").read_text())["problems"]   # the report says why
    with pytest.raises(TrtError, match="exported for fp32, not fp16"):
        ext.build_engines(folder, "fp16", "cuda")


def test_parser_errors_and_static_problems_become_trt_errors(exported, monkeypatch, fake_gpu, tmp_path):
    install(monkeypatch, FakeTrt(INSPECTOR_10, parse_errors=[("/Transpose", "UINT8 intermediate")]))
    with pytest.raises(TrtError, match=r"rejects this graph: /Transpose Transpose: UINT8 intermediate"):
        ext.build_engine(exported("fp32") / "decode.onnx", tmp_path / "d.plan", "fp32")
    # a graph TensorRT would reject fails before any build, with the static check's list
    folder = tmp_path / "bad"
    folder.mkdir()
    for g in GRAPHS:
        (folder / f"{g}.onnx").write_bytes((exported("fp32") / f"{g}.onnx").read_bytes())
    (folder / "manifest.json").write_text(json.dumps({"precision": "fp32"}))
    nodes = [helper.make_node("Cast", ["z"], ["u"], name="to_u8", to=TensorProto.UINT8),
             helper.make_node("Transpose", ["u"], ["frames"], name="permute_u8", perm=[0, 2, 3, 1])]
    onnx.save(_model(nodes, [_vi("z", TensorProto.FLOAT, [1, 3, 2, 2])], [_vi("frames", TensorProto.UINT8,
                                                                                [1, 2, 2, 3])]),
              str(folder / "decode.onnx"))
    fake = install(monkeypatch, FakeTrt(INSPECTOR_10))
    with pytest.raises(TrtError, match="permute_u8"):
        ext.build_engines(folder, "fp32", "cuda")
    assert not [c for c in fake.calls if c[0] == "build"]


def test_without_tensorrt_or_cuda_the_error_says_what_to_do(ckpt, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # import fails
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))
    from engine.checkpoint import load_checkpoint

    with pytest.raises(TrtUnavailable, match="TensorRT 10 or 11") as e:
        ext.ensure_engines(load_checkpoint(ckpt), 1, "fp16", "cuda")
    assert "--backend" in str(e.value)
    assert not (tmp_path / "cache").exists()   # nothing was exported first


# ---- the real thing ------------------------------------------------------------------------------------------------
@pytest.fixture
def real_trt():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it cannot be on the CPU machines)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA device, and torch sees none")


@pytest.mark.gpu
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-3), ("fp16", 5e-2), ("bf16", 2e-1)])
def test_tensorrt_engines_match_onnxruntime(real_trt, ckpt, tmp_path, precision, atol):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from engine.graphs import example_inputs
    from engine.trt_runner import TrtRunner

    fp32 = export_onnx(ckpt, tmp_path / "fp32", check=False)
    folder = export_onnx(ckpt, tmp_path / precision, check=False, precision=precision)
    ext.build_engines(folder, precision, "cuda", quiet=True)
    runner = TrtRunner(folder, torch.device("cuda"), precision)
    from engine.checkpoint import load_checkpoint, load_into
    from engine.world_model import WorldModel

    wm = load_into(WorldModel(load_checkpoint(ckpt).config.world_model), load_checkpoint(ckpt), "wm")
    ex = example_inputs(wm, 1)
    for name in GRAPHS:
        sess = ort.InferenceSession(str(fp32 / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        want = sess.run(None, {i.name: ex[name][i.name].numpy() for i in sess.get_inputs()})
        got = runner.run(name, {k: v.cuda() for k, v in ex[name].items()})
        for w, g in zip(want, got):
            err = float((torch.from_numpy(w).float() - g.cpu().float()).abs().max())
            assert err <= (1.5 if w.dtype == np.uint8 else atol), (name, err)
    rep = json.loads(report_path(folder, "decode", runner_tag(precision)).read_text())
    assert not rep["problems"] and rep["strongly_typed"]


def runner_tag(precision: str) -> str:
    from engine.trt_runner import engine_tag

    return engine_tag(precision, "cuda")
