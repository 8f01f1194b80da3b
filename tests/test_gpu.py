"""The real-time session on a CUDA device (`pytest -m gpu`; every test skips where torch sees no CUDA device).

CUDA-graph sessions against eager ones over a ring wrap (a tiny random model and the shipped one), one graph replay
for a plain step, nothing captured when steps or guidance change between frames and every graph in one memory
pool (reference and Triton kernels), save-games and forks on the device, fp32 on CUDA against the CPU with TF32
switched on globally (the runner must turn it off), bf16 against fp32, pinned staging buffers, the noise drawn as
one kernel (compiled, or Triton's), a session on a device that is not the current one, and `reverie eval --device
cuda` against the CPU. runs/gpu_check.sh runs these first; runs/gpu_check.py measures what they do not check.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from tiny_model import FRAME, SPEC, tiny_models

from engine.noise import _uniform, _uniform_np, counter_normal, counter_normal_np
from engine.runners import TorchRunner
from engine.session import Session
from kernels import triton_problem

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")]
# the torch runner's two steps on CUDA: the graph modules (reference) and the fused Triton kernels, where they run
KERNELS = ["reference", pytest.param("triton", marks=pytest.mark.skipif(
    torch.cuda.is_available() and triton_problem("cuda") is not None,
    reason=f"Triton kernels cannot run here: {torch.cuda.is_available() and triton_problem('cuda')}"))]

BF16_ATOL = 5e-2      # bf16 latents (about unit scale): graph vs eager, or the same world replayed
FP32_ATOL = 2e-4      # fp32 latents, CUDA vs CPU: summation order and transcendental ulps; TF32 would be ~1e-3


# ---- sessions ----------------------------------------------------------------------------------------------------
def tiny_session(device: str = "cuda", dtype: str = "bf16", **kw) -> Session:
    """A session of a fresh tiny random model (each session its own modules: placing them moves them)."""
    ae, wm = tiny_models()
    return Session(models=(ae, wm, SPEC), backend="torch", device=device, dtype=dtype, **kw)


def default_session(device: str = "cuda", dtype: str = "bf16", **kw) -> Session:
    """A session of the shipped model."""
    return Session(None, backend="torch", device=device, dtype=dtype, **kw)


MAKERS = {"tiny": tiny_session, "default": default_session}


def primed(make, **kw) -> Session:
    s = make(**kw)
    if make is tiny_session:
        s.reset(np.random.default_rng(0).integers(0, 256, (2, *FRAME), dtype=np.uint8),
                np.random.default_rng(1).integers(0, 2, (2, SPEC.size)).astype(np.float32))
    else:
        s.reset()   # the checkpoint's start state
    return s


def actions(s: Session, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (n, s.spec.size)).astype(np.float32)


def rollout(s: Session, acts) -> tuple[np.ndarray, torch.Tensor]:
    """Frames (n, ...) uint8 and latents (n, B, C, h, w) float32 on the CPU; copies, not views."""
    frames, lats = [], []
    for a in acts:
        frames.append(np.array(s.step(a), copy=True))
        lats.append(s.latent.detach().float().cpu().clone())
    return np.stack(frames), torch.stack(lats)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


@pytest.fixture
def captured(monkeypatch) -> list[torch.cuda.CUDAGraph]:
    """Every CUDA graph the torch runner captures from here on (through its public capture, whatever schedules it)."""
    graphs = []
    original = TorchRunner.capture

    def recording(self, fn):
        graphs.append(original(self, fn))
        return graphs[-1]

    monkeypatch.setattr(TorchRunner, "capture", recording)
    return graphs


@pytest.fixture
def replays(monkeypatch):
    """Counts torch.cuda.CUDAGraph.replay calls."""
    count = {"n": 0}
    original = torch.cuda.CUDAGraph.replay

    def counting(self, *args, **kwargs):
        count["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counting)
    return count


# ---- CUDA graphs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny", "default"])
def test_cuda_graph_session_equals_eager_over_a_ring_wrap(model):
    make = MAKERS[model]
    graph, eager = primed(make, cuda_graph=True, steps=2, guidance=2.0, seed=3), \
        primed(make, cuda_graph=False, steps=2, guidance=2.0, seed=3)
    assert graph.use_graphs and not eager.use_graphs
    W = graph.cfg.context_frames
    acts = actions(graph, 2 * W + 2, seed=4)       # past a full ring, wrapping it
    half = len(acts) // 2
    out = {}
    for name, s in (("graph", graph), ("eager", eager)):
        f1, l1 = rollout(s, acts[:half])
        s.steps, s.guidance = 1, 1.0                # a change of knobs inside the compared run
        f2, l2 = rollout(s, acts[half:])
        out[name] = (np.concatenate([f1, f2]), torch.cat([l1, l2]))
    (fg, lg), (fe, le) = out["graph"], out["eager"]
    assert graph.kv.full and int(graph.kv.count) == int(eager.kv.count)
    diff = (lg - le).abs()
    torch.testing.assert_close(lg, le, atol=BF16_ATOL, rtol=BF16_ATOL,
                               msg=lambda m: f"{m}\nlatent mean abs diff by step: {diff.flatten(1).mean(1)}")
    assert np.abs(fg.astype(int) - fe.astype(int)).mean() <= 1.0


def test_plain_step_is_one_replay_and_deferred_two(replays):
    s = primed(tiny_session, steps=2, guidance=1.5)
    a = actions(s, 12)
    s.step(a[0])                                    # captures every plain-step variant
    replays["n"] = 0
    s.step(a[1])
    assert replays["n"] == 1
    s.step(a[2], defer_update=True)                 # captures the deferred variants
    s.finish()
    replays["n"] = 0
    s.step(a[3], defer_update=True)
    s.finish()
    assert replays["n"] == 2                        # head + decode now, the backbone after the frame is shown


@pytest.mark.parametrize("kernels", KERNELS)
def test_switching_steps_or_guidance_captures_nothing_new(captured, kernels):
    s = primed(tiny_session, steps=1, guidance=1.0, kernels=kernels)
    assert s.runner.kernels == kernels
    a = iter(actions(s, 64))
    s.step(next(a))
    first = len(captured)
    assert first
    combos = list(itertools.product(sorted(s.knob_limits["steps"]), (1.0, 2.0)))
    for steps, guidance in combos + combos[::-1]:   # through the ring wrap (W=4) and back
        s.steps, s.guidance = steps, guidance
        s.step(next(a))
    assert s.kv.full
    assert len(captured) == first, f"{len(captured) - first} graphs captured after the first step"
    pools = {tuple(g.pool()) for g in captured}
    assert len(pools) == 1, pools                   # one memory pool for every graph of the session, either kernels


def test_state_load_and_fork_on_cuda():
    s = primed(tiny_session, steps=2, guidance=1.5, seed=3)
    rollout(s, actions(s, 3, seed=5))
    saved = s.state()
    assert all(t.device.type == "cpu" for t in saved["tensors"].values())
    tail = actions(s, 6, seed=6)                    # wraps the ring (W=4)
    fork = s.fork()
    frames_a, lat_a = rollout(s, tail)
    frames_f, lat_f = rollout(fork, tail)           # a fork continues the same world on its own buffers
    assert np.array_equal(frames_a, frames_f) and torch.equal(lat_a, lat_f)
    s.load_state(saved)
    frames_b, lat_b = rollout(s, tail)
    assert np.array_equal(frames_a, frames_b) and torch.equal(lat_a, lat_b)
    fresh = tiny_session(steps=2, guidance=1.5)     # never reset: the state holds the whole world
    fresh.load_state(saved)
    frames_c, lat_c = rollout(fresh, tail)
    assert np.array_equal(frames_a, frames_c) and torch.equal(lat_a, lat_c)
    reseeded = primed(tiny_session, steps=2, guidance=1.5, seed=3)
    reseeded.load_state(saved)
    other = reseeded.fork(seed=9)
    assert not torch.allclose(rollout(other, tail)[1], lat_a, atol=1e-3)   # a new seed draws other noise


# ---- precision -----------------------------------------------------------------------------------------------------
def test_fp32_on_cuda_matches_cpu_with_tf32_off():
    """TF32 switched on globally (legacy flag, the one the runner reads): an fp32 session must still run full fp32
    and put the flag back."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        gpu = primed(tiny_session, dtype="fp32", steps=2, guidance=1.5, seed=2)
        cpu = primed(tiny_session, device="cpu", dtype="fp32", steps=2, guidance=1.5, seed=2)
        acts = actions(gpu, 6, seed=7)
        fg, lg = rollout(gpu, acts)
        fc, lc = rollout(cpu, acts)
        assert torch.backends.cuda.matmul.allow_tf32, "the session did not restore the global TF32 flag"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    torch.testing.assert_close(lg, lc, atol=FP32_ATOL, rtol=FP32_ATOL)
    assert np.abs(fg.astype(int) - fc.astype(int)).max() <= 1


@pytest.mark.parametrize("model", ["tiny", "default"])
def test_bf16_stays_close_to_fp32_with_fp32_tables(model):
    make = MAKERS[model]
    b16, f32 = primed(make, dtype="bf16", seed=4), primed(make, dtype="fp32", seed=4)
    for t in (b16.wm.rope.t_cos, b16.wm.rope.t_sin, b16.wm.rope.s_cos, b16.wm.latent_mean, b16.wm.latent_std,
              b16.z_buf):
        assert t.dtype == torch.float32
    assert next(b16.wm.backbone.parameters()).dtype == torch.bfloat16
    acts = actions(b16, 2, seed=8)
    fb, lb = rollout(b16, acts)
    ff, lf = rollout(f32, acts)
    rel = float((lb - lf).abs().mean() / lf.abs().mean())
    assert rel <= 0.05, f"bf16 latents differ from fp32 by {rel:.3f} of their mean magnitude"
    if model == "default":   # a trained decoder fed bf16 correctly gives nearly the fp32 frame
        assert psnr(fb[0], ff[0]) >= 30.0


def test_staging_buffers_are_pinned():
    s = primed(tiny_session)
    assert s.staging is not None and all(t.is_pinned() for t in s.staging)
    frame = s.step(SPEC.null())
    assert isinstance(frame, np.ndarray) and frame.shape == FRAME


# ---- noise, devices, eval ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernels", KERNELS)
def test_compiled_noise_matches_eager_and_numpy(kernels):
    """The CUDA runner draws its noise as one kernel: counter_normal under torch.compile, or the Triton kernel."""
    s = primed(tiny_session, kernels=kernels)
    s.step(SPEC.null())
    want = {"reference": "torch.compile", "triton": "triton"}[kernels]
    assert s.runner.noise_impl == want, f"the CUDA runner draws its noise {s.runner.noise_impl}, not with {want}"
    seed = torch.tensor([0, 5, 123_456_789_012], device="cuda")
    counter = torch.tensor([0, 17, 2 ** 33 + 5], device="cuda")
    for shape, stream in (((16, 4, 4), 1), ((4, 64), 0)):
        got = s.runner.noise(seed, counter, shape, stream)
        torch.testing.assert_close(got, counter_normal(seed, counter, shape, stream), atol=1e-5, rtol=1e-5)
        want = torch.from_numpy(counter_normal_np(seed.cpu().numpy(), counter.cpu().numpy(), shape, stream))
        torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)
    numel = 64
    fused = torch.compile(_uniform, dynamic=False, fullgraph=True)
    u = fused(seed, counter, 3, numel).cpu()        # the integer hash: bit for bit
    assert torch.equal(u, torch.from_numpy(_uniform_np(seed.cpu().numpy(), counter.cpu().numpy(), 3, numel)))


def test_a_triton_too_old_for_the_kernels_falls_back_to_the_reference_step(monkeypatch):
    """kernels "auto" with a Triton older than the kernels need (3.0 on CUDA): one warning line that names the
    reference step, which runs; asked for by name, refused with the same reason."""
    from engine.session import SessionError
    from kernels import _triton

    monkeypatch.setattr(_triton, "HAVE_TRITON", True)
    monkeypatch.setattr(_triton, "VERSION", "2.3.1")
    with pytest.warns(UserWarning, match=r"Triton 2\.3\.1 is older than 3\.0.*running the reference step"):
        s = primed(tiny_session)
    assert s.runner.kernels == "reference"
    s.step(SPEC.null())
    with pytest.raises(SessionError, match=r"Triton 2\.3\.1 is older than 3\.0.*kernels='reference'"):
        tiny_session(kernels="triton")


def test_session_on_a_device_that_is_not_the_current_one():
    """cuda:1 where there are two GPUs (the current device stays cuda:0); with one, cuda:0 named explicitly."""
    n = torch.cuda.device_count()
    target = f"cuda:{n - 1}"
    torch.cuda.set_device(0)
    s = primed(tiny_session, device=target, steps=2, guidance=1.5, seed=6)
    ref = primed(tiny_session, device="cuda:0", steps=2, guidance=1.5, seed=6)
    acts = actions(s, 6, seed=3)
    fs, ls = rollout(s, acts)
    fr, lr = rollout(ref, acts)
    assert s.latent.device == torch.device(target) and s.use_graphs
    assert torch.cuda.current_device() == 0
    torch.testing.assert_close(ls, lr, atol=BF16_ATOL, rtol=BF16_ATOL)


def test_eval_on_cuda_agrees_with_cpu(tmp_path):
    """`reverie eval --device cuda` (bf16 session, bf16 decoder) scores the shipped model like the CPU does."""
    import reverie_cli

    data = tmp_path / "heldout"
    assert reverie_cli.main(["record", "--env", "builtin:gems", "--agent", "scripted", "--episodes", "1", "--steps",
                             "60", "--size", "64", "--out", str(data), "--seed", "1000000", "--no-progress"]) == 0
    res = {}
    for dev in ("cuda", "cpu"):
        out = tmp_path / f"eval_{dev}.json"
        assert reverie_cli.main(["eval", "--data", str(data), "--horizon", "4", "--rollouts-per-episode", "2",
                                 "--device", dev, "--threads", "2", "--json", str(out)]) == 0
        res[dev] = json.loads(out.read_text())
    assert res["cuda"]["device"].startswith("cuda")
    assert abs(res["cuda"]["ae_psnr"] - res["cpu"]["ae_psnr"]) <= 1.0
    assert abs(res["cuda"]["psnr_step1"] - res["cpu"]["psnr_step1"]) <= 1.5
