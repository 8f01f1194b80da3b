"""`export.web.export_web`: the folder a web page plays a model from, whole or not at all.

The page itself (the step in JavaScript against the Python session, keys, HUD, errors) is tested in Chromium by
tests/test_web_page.py; these tests read the folder and run its graphs natively.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from tiny_model import tiny_checkpoint

pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[export]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[export]')")

from engine.checkpoint import CheckpointError  # noqa: E402
from engine.errors import ReverieError  # noqa: E402
from engine.graphs import example_inputs  # noqa: E402
from export import web  # noqa: E402
from export.web import WebExportError, export_web  # noqa: E402

MB = 1024 * 1024


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The shipped default model's page."""
    return export_web(None, tmp_path_factory.mktemp("web") / "site")


def folder_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_the_page_is_whole_and_small(page):
    for name in ("index.html", "js/main.js", "js/worker.js", "js/world.js", "js/noise.js", "js/keymap.js",
                 "ort/ort.wasm.min.mjs", "ort/ort-wasm-simd-threaded.mjs", "ort/ort-wasm-simd-threaded.wasm",
                 "ort/LICENSE", "ort/VERSION", "model/model.json", "model/tables.bin", "_headers"):
        assert (page / name).is_file(), name
    assert not (page / "ort" / "refresh.sh").exists()   # the maintainer's script stays in the package
    assert "Cross-Origin-Embedder-Policy: require-corp" in (page / "_headers").read_text()   # for static hosts
    model = json.loads((page / "model" / "model.json").read_text())
    for g, entry in model["graphs"].items():
        assert (page / "model" / entry["file"]).stat().st_size == entry["bytes"], g
    assert model["game"] == "builtin:gems" and model["buttons"] == ["up", "down", "left", "right"]
    assert model["fps"] == 30 and model["card"]["metrics"]["psnr_step1"] > 25
    assert folder_bytes(page) <= 40 * MB, f"{folder_bytes(page) / MB:.1f} MB"   # the bar for the default
    assert not list(page.parent.glob(".site*"))   # no temporary folder left beside it


def test_nothing_is_fetched_from_another_origin(page):
    for path in [page / "index.html", *(page / "js").glob("*.js"), page / "style.css"]:
        text = path.read_text()
        code = re.sub(r"//[^\n]*|/\*.*?\*/|<!--.*?-->", "", text, flags=re.S)   # comments may cite addresses
        assert not re.search(r"""(src|href|from|import\(|fetch\()\s*=?\s*["'`](https?:)?//""", code), path.name


def test_float16_stored_weights_compute_the_float32_graphs(page, tmp_path):
    """The page's graphs keep float16-exact weights as float16 behind a Cast: natively they give the exported
    float32 graphs' outputs bit for bit."""
    from engine.checkpoint import load_checkpoint, load_into
    from engine.runtime import DEFAULT_MODEL
    from engine.world_model import WorldModel
    from export.onnx import export_onnx

    ref = export_onnx(DEFAULT_MODEL, tmp_path / "ref", batch=1, check=False)
    ckpt = load_checkpoint(DEFAULT_MODEL)
    ex = example_inputs(load_into(WorldModel(ckpt.config.world_model), ckpt, "wm"), 1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    for g in ("backbone", "head_cfg", "decode"):
        assert (page / "model" / f"{g}.onnx").stat().st_size < 0.6 * (ref / f"{g}.onnx").stat().st_size, g
        a = ort.InferenceSession(str(ref / f"{g}.onnx"), so, providers=["CPUExecutionProvider"])
        b = ort.InferenceSession(str(page / "model" / f"{g}.onnx"), so, providers=["CPUExecutionProvider"])
        feeds = {i.name: ex[g][i.name].numpy() for i in a.get_inputs()}
        for x, y in zip(a.run(None, feeds), b.run(None, feeds)):
            np.testing.assert_array_equal(x, y)


def test_the_breakout_model_exports_with_its_own_buttons_and_speed(tmp_path):
    from engine.runtime import DEFAULT_MODEL

    out = export_web(DEFAULT_MODEL.parent / "breakout.safetensors", tmp_path / "breakout")
    model = json.loads((out / "model" / "model.json").read_text())
    assert model["game"] == "ale:Breakout" and model["buttons"] == ["fire", "right", "left"]
    assert model["fps"] == 15 and model["name"] == "breakout"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model.safetensors")


def test_a_tiny_model_exports_and_replaces_an_older_page(tiny, tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "stale.txt").write_text("from an older export")
    export_web(tiny, out)
    model = json.loads((out / "model" / "model.json").read_text())
    assert model["frame"] == [32, 32, 3] and model["tables"]["start_latents"]["shape"] == [1, 2, 16, 4, 4]
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


@pytest.mark.parametrize("case", ["missing", "not a checkpoint", "autoencoder only"])
def test_a_checkpoint_the_page_cannot_play_is_one_line_and_writes_nothing(case, tmp_path):
    src = tmp_path / "in" / "model.safetensors"
    src.parent.mkdir()
    if case == "not a checkpoint":
        src.write_bytes(b"this is not a checkpoint" * 10)
    elif case == "autoencoder only":
        tiny_checkpoint(src, with_wm=False)
    with pytest.raises(CheckpointError) as err:
        export_web(src, tmp_path / "site")
    message = str(err.value)
    assert "\n" not in message and str(src) in message
    assert not (tmp_path / "site").exists() and [p.name for p in tmp_path.iterdir()] == ["in"]


def test_a_model_too_large_for_the_browser_is_refused_before_anything_is_written(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(web, "MAX_MEMORY_BYTES", 1000)
    with pytest.raises(WebExportError, match="WebAssembly memory") as err:
        export_web(tiny, tmp_path / "site")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_an_operator_the_web_runtime_lacks_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "head.onnx")
    with pytest.raises(WebExportError, match="com.example::FancyOp"):
        web._web_graph(tmp_path / "head.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_bad_arguments_are_reverie_errors(tiny, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WebExportError, match="is not a folder"):
        export_web(tiny, tmp_path / "file")
    with pytest.raises(WebExportError, match="fps"):
        export_web(tiny, tmp_path / "site", fps=0)
    assert issubclass(WebExportError, ReverieError)
