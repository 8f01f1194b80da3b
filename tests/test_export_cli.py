"""`reverie export`: --precision for the ONNX graphs, and --format tensorrt checking its preconditions before it
exports anything, with errors that fit the command."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_model import tiny_checkpoint

pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[export]')")

from export.cli import main as export_main  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("cli") / "model.safetensors")


def tensorrt_here() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(tensorrt_here(), reason="TensorRT and a CUDA GPU are here: the precondition holds")
def test_format_tensorrt_checks_its_preconditions_before_exporting(ckpt, tmp_path, capsys):
    out = tmp_path / "graphs"
    assert export_main(["--model", str(ckpt), "--out", str(out), "--format", "tensorrt"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("reverie export: error: --format tensorrt needs NVIDIA TensorRT 10 or 11")
    assert "--backend" not in err and "leave out --format tensorrt" in err   # advice that fits `reverie export`
    assert not out.exists() and list(tmp_path.iterdir()) == []   # nothing exported first
    assert export_main(["--model", str(ckpt), "--format", "tensorrt", "--device", "cpu"]) == 1
    assert "the device is cpu" in capsys.readouterr().err
    assert export_main(["--model", str(ckpt), "--format", "tensorrt", "--device", "nonsense"]) == 1
    assert "--device 'nonsense'" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_precision_selects_the_graphs_type(ckpt, tmp_path, capsys, precision):
    import onnx

    out = tmp_path / precision
    assert export_main(["--model", str(ckpt), "--out", str(out), "--precision", precision]) == 0
    assert json.loads((out / "manifest.json").read_text())["precision"] == precision
    inits = {onnx.TensorProto.DataType.Name(i.data_type) for i in onnx.load(str(out / "head.onnx")).graph.initializer}
    assert ("FLOAT16" in inits) == (precision == "fp16")
    assert f"wrote {out} ({precision}:" in capsys.readouterr().out


def test_bad_requests_are_one_line_errors(ckpt, tmp_path, capsys):
    assert export_main(["--model", str(ckpt), "--batch", "0"]) == 1
    assert "--batch must be >= 1" in capsys.readouterr().err
    assert export_main(["--model", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "missing.safetensors" in err and err.count("\n") == 1
