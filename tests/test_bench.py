"""`reverie bench`: the JSON it writes, and clear errors (no traceback) for what it cannot run or bad flags.

Timings are not asserted (benchmarks print and save numbers; tests check that they are there and sane).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_model import tiny_checkpoint

import reverie_cli

REQUIRED = ("fps", "p50_ms", "p99_ms", "cold_start_s", "backbone_ms", "head_ms", "decode_ms", "device", "backend",
            "batch", "steps")
POSITIVE = ("fps", "p50_ms", "p99_ms", "cold_start_s", "backbone_ms", "head_ms", "decode_ms")
QUICK = ["--frames", "5", "--warmup", "1", "--threads", "1"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """bench sets torch's thread count; give the rest of the suite its one thread back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_bench(args: list[str]) -> int:
    return reverie_cli.main(["bench", *args])


def check_result(result: dict, batch: int, steps: int, backend: str = "torch") -> None:
    missing = [k for k in REQUIRED if k not in result]
    assert not missing, f"bench JSON lacks {missing}"
    for k in POSITIVE:
        assert isinstance(result[k], (int, float)) and math.isfinite(result[k]) and result[k] > 0, (k, result[k])
    assert result["p99_ms"] >= result["p50_ms"]
    assert (result["device"], result["backend"], result["batch"], result["steps"]) == ("cpu", backend, batch, steps)
    machine = result["machine"]
    assert machine["threads"] == 1 and machine["cpu"] and machine["torch"] == torch.__version__


def test_bench_preset_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert run_bench(["--preset", "tiny", *QUICK, "--json", str(out)]) == 0
    assert "frames/s" in capsys.readouterr().out
    result = json.loads(out.read_text())
    check_result(result, batch=1, steps=1)  # the default: one sampling step
    assert result["model"] == "random tiny"


def test_bench_checkpoint_batch_and_steps(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "model.safetensors")
    out = tmp_path / "bench.json"
    assert run_bench(["--model", str(ckpt), "--batch", "2", "--steps", "1", "--guidance", "1.5", *QUICK,
                      "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    check_result(result, batch=2, steps=1, backend="onnxruntime")  # auto: the CPU's fastest backend
    assert result["model"] == str(ckpt)
    assert result["guidance"] == 1.5
    assert run_bench(["--model", str(ckpt), "--backend", "torch", *QUICK, "--json", str(out)]) == 0
    check_result(json.loads(out.read_text()), batch=1, steps=1, backend="torch")


@pytest.mark.parametrize("args,message", [
    (["--preset", "tiny", "--backend", "tensorrt"], "tensorrt"),
    (["--model", "missing.safetensors"], "missing.safetensors"),
    (["--preset", "tiny", "--backend", "onnxruntime"], "checkpoint"),
])
def test_bench_errors_are_clear(tmp_path, capsys, args, message):
    out = tmp_path / "bench.json"
    code = run_bench([*QUICK, *args, "--json", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and "error" in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize("flag,value", [
    ("--frames", "0"), ("--warmup", "-1"), ("--steps", "0"), ("--steps", "5"), ("--guidance", "nan"),
    ("--guidance", "inf"), ("--guidance", "-0.5"), ("--batch", "0"), ("--threads", "0"), ("--frames", "ten"),
])
def test_bench_bad_knobs_are_refused_at_the_command_line(tmp_path, capsys, flag, value):
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as e:  # argparse: exit 2, the flag named; later flags win over QUICK's
        run_bench(["--preset", "tiny", *QUICK, flag, value, "--json", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "error" in err and "Traceback" not in err, err
    assert not out.exists()


def test_bench_guidance_nan_through_the_reverie_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "reverie_cli", "bench", "--preset", "tiny", "--guidance", "nan"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--guidance" in r.stderr and "finite" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert [ln for ln in r.stderr.splitlines() if "error" in ln] == [r.stderr.strip().splitlines()[-1]]


def test_bench_json_into_a_new_folder_and_an_unwritable_one(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "bench.json"
    assert run_bench(["--preset", "tiny", *QUICK, "--json", str(out)]) == 0
    check_result(json.loads(out.read_text()), batch=1, steps=1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    capsys.readouterr()
    code = run_bench(["--preset", "tiny", *QUICK, "--json", str(blocker / "bench.json")])
    captured = capsys.readouterr()
    assert code == 1 and "--json" in captured.err and str(blocker) in captured.err
    assert "frames/s" not in captured.out  # refused before the run, not after it


def test_bench_error_on_a_checkpoint_without_world_model(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ae.safetensors", with_wm=False)
    assert run_bench(["--model", str(ckpt), *QUICK]) != 0
    err = capsys.readouterr().err
    assert "world-model" in err and "Traceback" not in err
