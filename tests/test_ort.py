"""The ONNX Runtime backend and `reverie export`: the exported step graphs reproduce the torch session (ring wrap,
guidance, several sampling steps, batches, save-games), the export is cached per checkpoint, and bad requests give
clear errors. Skipped where onnx / onnxruntime are not installed (the [export] extra)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from tiny_model import FRAME, SPEC, W, tiny_checkpoint

pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[export]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[export]')")

from engine.session import Session, SessionError, default_backend  # noqa: E402
from export.cli import main as export_main  # noqa: E402
from export.onnx import ensure_graphs  # noqa: E402
from export.prepare import prepare_backend  # noqa: E402

LATENT_ATOL = 1e-4  # fp32, same math in two runtimes: kernels sum in different orders


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ort") / "model.safetensors", start=3)


def actions(n: int, batch: int | None = None, seed: int = 1) -> np.ndarray:
    shape = (n, SPEC.size) if batch is None else (n, batch, SPEC.size)
    return np.random.default_rng(seed).integers(0, 2, shape).astype(np.float32)


def frames(T: int, seed: int = 0, batch: int | None = None) -> np.ndarray:
    shape = (T, *FRAME) if batch is None else (batch, T, *FRAME)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def ort_session(ckpt, **kw) -> Session:
    """An onnxruntime session the way the front ends make one: export (once, cached), then open the graphs."""
    backend, graphs = prepare_backend(ckpt, "onnxruntime", kw.get("batch", 1), quiet=True)
    return Session(ckpt, backend=backend, graphs=graphs, **kw)


def run(session: Session, acts) -> tuple[np.ndarray, torch.Tensor]:
    out, lat = [], []
    for a in acts:
        out.append(np.array(session.step(a), copy=True))
        lat.append(session.latent.clone())
    return np.stack(out), torch.stack(lat)


@pytest.mark.parametrize("steps,guidance", [(1, 1.0), (2, 2.5), (3, 1.0), (4, 1.5)])
def test_onnxruntime_rollout_equals_torch_through_ring_wrap(ckpt, steps, guidance):
    kw = dict(steps=steps, guidance=guidance, threads=1)
    a, b = Session(ckpt, backend="torch", **kw), ort_session(ckpt, **kw)
    assert b.backend == "onnxruntime"
    ctx, acts = frames(3), actions(3)
    a.reset(ctx, acts, seed=4)
    b.reset(ctx, acts, seed=4)
    fa, la = run(a, actions(3 * W, seed=2))  # 3 W frames: every ring slot is replaced twice
    fb, lb = run(b, actions(3 * W, seed=2))
    assert torch.allclose(la, lb, atol=LATENT_ATOL), float((la - lb).abs().max())
    assert np.abs(fa.astype(int) - fb).max() <= 1  # uint8 rounding of near-equal floats
    assert torch.equal(a.kv.valid, b.kv.valid) and int(a.kv.count) == int(b.kv.count)
    assert torch.allclose(a.kv.k, b.kv.k, atol=LATENT_ATOL)


def test_onnxruntime_equals_torch_for_a_backbone_without_actions(tmp_path):
    """A model whose backbone reads no actions exports a backbone graph without that input (the exporter drops
    it); the runtime feeds each graph only what it reads, and the rollout still follows the actions."""
    import onnx

    path = tiny_checkpoint(tmp_path / "nba.safetensors", start=3, backbone_actions=False)
    kw = dict(steps=2, guidance=2.0, threads=1)
    a, b = Session(path, backend="torch", **kw), ort_session(path, **kw)
    names = {i.name for i in onnx.load(str(b.runner.folder / "backbone.onnx")).graph.input}
    assert "actions" not in names and "z" in names
    a.reset(frames(3), actions(3), seed=4)
    b.reset(frames(3), actions(3), seed=4)
    state = b.state()
    fa, la = run(a, actions(2 * W, seed=2))
    fb, lb = run(b, actions(2 * W, seed=2))
    assert torch.allclose(la, lb, atol=LATENT_ATOL), float((la - lb).abs().max())
    b.load_state(state)
    _, lc = run(b, 1 - actions(2 * W, seed=2))
    assert not torch.allclose(lb, lc, atol=1e-3)  # other actions, other frames: the head reads them


def test_onnxruntime_batch_and_changing_settings_between_frames(ckpt):
    a = Session(ckpt, backend="torch", batch=2, threads=1)
    b = ort_session(ckpt, batch=2, threads=1)
    for s in (a, b):
        s.reset(frames(2, batch=2), seed=[5, 9])
    la, lb = [], []
    for t, act in enumerate(actions(6, batch=2)):
        for s, out in ((a, la), (b, lb)):
            s.steps, s.guidance = 1 + t % 3, 1.0 + 0.5 * (t % 2)
            s.step(act)
            out.append(s.latent.clone())
    assert torch.allclose(torch.stack(la), torch.stack(lb), atol=LATENT_ATOL)


def test_onnxruntime_state_round_trip_and_fork(ckpt):
    s = ort_session(ckpt, threads=1)
    s.reset(seed=1)
    run(s, actions(5))
    saved = s.state()
    other = s.fork()
    first, _ = run(s, actions(4, seed=3))
    s.load_state(saved)
    again, _ = run(s, actions(4, seed=3))
    branch, _ = run(other, actions(4, seed=3))
    assert np.array_equal(first, again) and np.array_equal(first, branch)


def test_backbone_beside_the_decode_gives_the_same_world(ckpt):
    """With overlap the deferred backbone pass runs on a second thread while the frame is decoded: the rollout,
    a reset or a load in the middle of a pass, and a fork are all the same as with every part in order."""
    serial, overlap = ort_session(ckpt, threads=1), ort_session(ckpt, threads=1)
    serial.overlap, overlap.overlap = False, True
    ctx = frames(2)
    for s in (serial, overlap):
        s.reset(ctx, seed=5)
    acts = actions(2 * W + 3, seed=4)
    for t, act in enumerate(acts):
        fs, fo = serial.step(act, defer_update=True), overlap.step(act, defer_update=True)
        assert np.array_equal(fs, fo), t
        if t == W:                       # a save-game taken while a pass runs, loaded while the next one runs
            saved = overlap.state()
            assert overlap.scheduler.inflight is None and int(overlap.kv.count) == int(serial.kv.count) + 1
    branch, serial_branch = overlap.fork(), serial.fork()    # forked while a pass runs
    overlap.load_state(saved)
    serial_again = serial.fork()
    serial_again.load_state(saved)
    for act in acts[:4]:
        assert np.array_equal(serial_again.step(act, defer_update=True), overlap.step(act, defer_update=True))
        assert np.array_equal(serial_branch.step(act, defer_update=True), branch.step(act, defer_update=True))
    overlap.reset(ctx, seed=5)           # reset while a pass runs: nothing of it survives
    serial.reset(ctx, seed=5)
    assert np.array_equal(serial.step(acts[0], defer_update=True), overlap.step(acts[0], defer_update=True))
    for k in serial.state()["tensors"]:
        assert torch.equal(serial.state()["tensors"][k], overlap.state()["tensors"][k]), k
    for act in acts[:3]:                 # a plain step with overlap returns with its pass done
        assert np.array_equal(serial.step(act), overlap.step(act)) and overlap.scheduler.inflight is None
    overlap.close()
    assert overlap.scheduler.executor is None


def test_export_is_cached_per_checkpoint_and_batch(ckpt, capsys):
    from engine.checkpoint import load_checkpoint

    c = load_checkpoint(ckpt)
    folder = ensure_graphs(c, 1)
    stamp = (folder / "backbone.onnx").stat().st_mtime_ns
    assert ensure_graphs(c, 1) == folder and (folder / "backbone.onnx").stat().st_mtime_ns == stamp  # not re-exported
    assert ensure_graphs(c, 3) != folder
    man = json.loads((folder / "manifest.json").read_text())
    assert man["batch"] == 1 and man["game"] == SPEC.game and len(man["sha256"]) == 64
    assert all(v is not None and v < 1e-3 for k, v in man["max_abs_error"].items() if k != "decode")


def test_players_started_together_export_once_and_both_run(ckpt, tmp_path):
    """Two processes opening a new checkpoint at once: one exports, the other waits for it and uses its graphs."""
    import subprocess
    import sys

    code = ("import sys; from engine.checkpoint import load_checkpoint; from export.onnx import ensure_graphs; "
            "print(ensure_graphs(load_checkpoint(sys.argv[1]), 2))")
    env = {**os.environ, "REVERIE_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ckpt)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    folders = {out.strip() for out, _ in outs}
    assert len(folders) == 1
    assert sum("exporting" in err for _, err in outs) == 1   # the second found the first's export
    folder = type(tmp_path)(folders.pop())
    assert json.loads((folder / "manifest.json").read_text())["batch"] == 2
    assert sorted(p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock")) == [folder.name]


def test_export_over_an_existing_folder_replaces_it_whole(ckpt, tmp_path):
    out = tmp_path / "graphs"
    out.mkdir()
    (out / "stale.onnx").write_bytes(b"old")
    assert export_main(["--model", str(ckpt), "--out", str(out)]) == 0
    assert not (out / "stale.onnx").exists() and (out / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["graphs"]   # no temporary or set-aside folder is left


def test_export_cli_writes_graphs_and_reports_bad_input(ckpt, tmp_path, capsys):
    out = tmp_path / "graphs"
    assert export_main(["--model", str(ckpt), "--out", str(out), "--batch", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["backbone.onnx", "decode.onnx", "head.onnx", "head_cfg.onnx",
                                                     "manifest.json"]
    assert json.loads((out / "manifest.json").read_text())["batch"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    capsys.readouterr()
    assert export_main(["--model", str(tmp_path / "missing.safetensors")]) == 1
    assert "missing.safetensors" in capsys.readouterr().err
    ae_only = tiny_checkpoint(tmp_path / "ae.safetensors", with_wm=False)
    assert export_main(["--model", str(ae_only)]) == 1
    assert "without world-model weights" in capsys.readouterr().err
    assert export_main(["--model", str(ckpt), "--format", "tensorrt"]) == 1
    assert "TensorRT" in capsys.readouterr().err


def test_onnxruntime_bad_requests_raise(ckpt):
    from tiny_model import tiny_models

    with pytest.raises(SessionError, match="fp32"):
        ort_session(ckpt, dtype="bf16")
    ae, wm = tiny_models()
    with pytest.raises(SessionError, match="reverie export"):
        Session(models=(ae, wm, SPEC), backend="onnxruntime", dtype="fp32")
    with pytest.raises(SessionError, match="backend"):
        Session(ckpt, backend="openvino")


def test_auto_backend_picks_onnxruntime_on_cpu(tmp_path):
    """auto: onnxruntime once the graphs are exported (front ends export first), torch before; asked for by name
    without an export, onnxruntime says how to export."""
    fresh = tiny_checkpoint(tmp_path / "fresh.safetensors")
    assert default_backend("cpu") == "onnxruntime"
    assert Session(fresh, backend="auto", threads=1).backend == "torch"
    with pytest.raises(SessionError, match="reverie export"):
        Session(fresh, backend="onnxruntime", threads=1)
    assert prepare_backend(fresh, "auto", 1, "cpu", quiet=True)[0] == "onnxruntime"
    assert Session(fresh, backend="auto", threads=1).backend == "onnxruntime"   # found in the cache
    assert Session(fresh, threads=1).backend == "onnxruntime"                   # auto is the default
    assert os.environ.get("REVERIE_CACHE")  # conftest keeps the exports out of the user's cache


@pytest.mark.gpu
def test_tensorrt_backend_matches_torch_on_cuda(ckpt):
    """TensorRT engines from the exported graphs follow the torch session (fp16 kernels: loose tolerance)."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it cannot be on the CPU machines)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA device")
    a = Session(ckpt, backend="torch", device="cuda", dtype="fp32", cuda_graph=False)
    b = Session(ckpt, backend="tensorrt", device="cuda")
    for s in (a, b):
        s.reset(seed=2)
    _, la = run(a, actions(2 * W))
    _, lb = run(b, actions(2 * W))
    assert torch.allclose(la, lb, atol=5e-2), float((la - lb).abs().max())


def test_tensorrt_backend_without_tensorrt_is_a_clear_error(ckpt):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(SessionError, match="tensorrt"):
            Session(ckpt, backend="tensorrt", device="cpu")
    else:
        pytest.skip("TensorRT is installed here")


# ---- onnxruntime on CUDA (onnxruntime-gpu) -----------------------------------------------------------------------
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_provider_choice_prefers_tensorrt_then_cuda_and_says_why_it_falls_back(tmp_path):
    from engine.runners import ort_providers

    cpu, cuda = torch.device("cpu"), torch.device("cuda:1")
    assert ort_providers(cpu, GPU_BUILD, tensorrt=True) == (["CPUExecutionProvider"], None)
    chosen, why = ort_providers(cuda, GPU_BUILD, tensorrt=True, device_id=1, engine_cache=tmp_path)
    assert why is None and [p if isinstance(p, str) else p[0] for p in chosen] == GPU_BUILD
    assert chosen[0][1] == {"device_id": 1, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path)}
    assert chosen[1] == ("CUDAExecutionProvider", {"device_id": 1})
    # onnxruntime-gpu lists TensorRT's provider even where TensorRT's library is missing: CUDA's then
    chosen, why = ort_providers(cuda, GPU_BUILD, tensorrt=False, device_id=1)
    assert why is None and chosen == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    chosen, why = ort_providers(cuda, ["AzureExecutionProvider", "CPUExecutionProvider"], tensorrt=True)
    assert chosen == ["CPUExecutionProvider"] and "pip install onnxruntime-gpu" in why


def test_onnxruntime_on_cuda_falls_back_to_the_cpu_with_the_reason(ckpt, monkeypatch):
    """The runner on a CUDA device with the CPU build of onnxruntime (every machine here), and with a build that
    lists the CUDA provider but cannot start it: the graphs load on the CPU, and the runner says so, in one line."""
    import onnxruntime

    from engine.runners import OrtRunner

    _, graphs = prepare_backend(ckpt, "onnxruntime", 1, quiet=True)
    with pytest.warns(UserWarning, match=r"cuda:0: this onnxruntime has no CUDA execution provider .*onnxruntime-gpu"):
        runner = OrtRunner(graphs, 1, "cuda:0")
    assert (runner.provider, runner.name, runner.on_gpu) == ("CPUExecutionProvider", "onnxruntime CPU", False)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(GPU_BUILD))
        with pytest.warns(UserWarning, match="could not start CUDAExecutionProvider.*the graphs run on the CPU"):
            runner = OrtRunner(graphs, 1, "cuda:0")
        assert runner.provider == "CPUExecutionProvider" and "could not start" in runner.fallback
    cpu = OrtRunner(graphs, 1)
    assert (cpu.provider, cpu.fallback, cpu.name) == ("CPUExecutionProvider", None, "onnxruntime CPU")


def test_tensors_bound_in_place_give_what_numpy_feeds_give(ckpt, monkeypatch):
    """The GPU path's binding of torch tensors as inputs and outputs (IOBinding), run here on CPU memory: every graph
    call of a rollout gives, bound, what it gave through numpy."""
    from engine.runners import OrtRunner

    calls, original = [], OrtRunner.run

    def recording(self, name, feeds):
        outs = original(self, name, feeds)
        calls.append((name, {k: v.clone() if torch.is_tensor(v) else v for k, v in feeds.items()},
                      [o.clone() for o in outs]))
        return outs

    monkeypatch.setattr(OrtRunner, "run", recording)
    s = ort_session(ckpt, steps=2, guidance=1.5)
    s.reset(frames(3), seed=2)
    run(s, actions(W + 2))
    monkeypatch.undo()
    assert {name for name, _, _ in calls} == {"backbone", "head_cfg", "decode"}
    bound = OrtRunner(s.runner.folder, 1, io_binding=True)
    assert bound.io_binding and not s.runner.io_binding
    for name, feeds, want in calls:
        got = bound.run(name, feeds)
        assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want)), name


@pytest.mark.gpu
def test_onnxruntime_on_cuda_follows_the_cpu_graphs(ckpt):
    """The exported graphs on the GPU (TensorRT's or CUDA's provider, torch CUDA tensors bound in place) give the
    CPU's world: the same graphs, other kernels (the CUDA provider may use TF32 matmuls, hence the tolerance)."""
    import onnxruntime

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch sees none)")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (pip install -e '.[gpu]'); this onnxruntime has no CUDA provider")
    gpu, cpu = ort_session(ckpt, device="cuda", steps=2, guidance=1.5), ort_session(ckpt, steps=2, guidance=1.5)
    assert gpu.runner.on_gpu and gpu.runner.name.startswith("onnxruntime "), gpu.runner.provider
    for s in (gpu, cpu):
        s.reset(frames(3), seed=2)
    fg, lg = run(gpu, actions(2 * W))
    fc, lc = run(cpu, actions(2 * W))
    assert lg.device.type == "cuda"
    torch.testing.assert_close(lg.cpu(), lc, atol=1e-2, rtol=1e-2)
    assert np.abs(fg.astype(int) - fc.astype(int)).mean() <= 1.0
