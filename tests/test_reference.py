"""Every runner against engine/reference.py, the plain rollout that is the spec of what a Session computes.

Two worlds of a tiny random checkpoint (tests/tiny_model.py, a ring of W = 4 frames), each with its own context and
actions, dream W + 3 frames after 2 real ones: past a full ring, so that every slot is replaced (W frames in Triton's
slow CPU interpreter). The latents of each runner must match
the reference's within the tolerance written next to its precision; fp32 frames within one uint8 level. A runner
that cannot run here is skipped with the reason (CUDA, Triton, onnxruntime, TensorRT).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_model import FRAME, SPEC, W, tiny_checkpoint

from engine import reference
from engine.checkpoint import load_checkpoint, load_world_model
from engine.session import Session

B, CONTEXT, HORIZON, SEED = 2, 2, W + 3, 7

# latent tolerances by precision (the tiny model's latents are about unit scale)
FP32_ATOL = 1e-4        # fp32 on the CPU: the ring's attention sums in another order than the recompute
FP32_CUDA_ATOL = 2e-4   # fp32 on CUDA, TF32 off: summation order and transcendental ulps
TRITON_CPU_ATOL = 1e-4  # Triton's interpreter in fp32 (it gets bf16 wrong, so bf16 runs on a GPU only)
LOW_REL = 0.05          # bf16 / fp16 weights and cache: mean |error| at most 5% of the mean |latent| over the rollout

RUNNERS = {   # name: (Session keywords, latent tolerance, whether the tolerance is relative)
    "torch-cpu-fp32": (dict(backend="torch", device="cpu", dtype="fp32"), FP32_ATOL, False),
    "triton-cpu-fp32": (dict(backend="torch", device="cpu", dtype="fp32", kernels="triton"), TRITON_CPU_ATOL, False),
    "onnxruntime-cpu-fp32": (dict(backend="onnxruntime", device="cpu"), FP32_ATOL, False),
    "torch-cuda-fp32": (dict(backend="torch", device="cuda", dtype="fp32", kernels="reference"), FP32_CUDA_ATOL,
                        False),
    "torch-cuda-bf16": (dict(backend="torch", device="cuda", dtype="bf16", kernels="reference"), LOW_REL, True),
    "triton-cuda-bf16": (dict(backend="torch", device="cuda", dtype="bf16", kernels="triton"), LOW_REL, True),
    "tensorrt-cuda-fp16": (dict(backend="tensorrt", device="cuda"), LOW_REL, True),
}


def skip_unless_runnable(name: str) -> None:
    if name.startswith("triton"):
        pytest.importorskip("triton", reason=f"{name}: Triton is not installed (pip install 'reverie[kernels]')")
    if name.startswith("onnxruntime"):
        pytest.importorskip("onnx", reason=f"{name}: onnx is not installed (pip install 'reverie[export]')")
        pytest.importorskip("onnxruntime", reason=f"{name}: onnxruntime is not installed (the [play] extra)")
    if name.startswith("tensorrt"):
        pytest.importorskip("tensorrt", reason=f"{name}: `import tensorrt` fails here (TensorRT installs from "
                                               "NVIDIA's index only; see DESIGN.md, section 7)")
    if "cuda" in name and not torch.cuda.is_available():
        pytest.skip(f"{name}: needs a CUDA device, and torch sees none")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("reference") / "model.safetensors")


def inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Context frames (B, T, H, W, 3), their actions (B, T, A) and the dream's actions (n, B, A), per world."""
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (B, CONTEXT, *FRAME), dtype=np.uint8),
            rng.integers(0, 2, (B, CONTEXT, SPEC.size)).astype(np.float32),
            rng.integers(0, 2, (HORIZON, B, SPEC.size)).astype(np.float32))


def session_for(ckpt, name: str, **knobs) -> Session:
    kw = dict(RUNNERS[name][0])
    if kw["backend"] in ("onnxruntime", "tensorrt"):   # the graphs exported (and built) first, as the front ends do
        from export.prepare import prepare_backend

        kw["backend"], kw["graphs"] = prepare_backend(ckpt, kw["backend"], B, kw["device"], quiet=True)
    return Session(ckpt, batch=B, seed=SEED, threads=1, **kw, **knobs)


KNOBS = [(1, 1.0), (3, 2.0)]   # (steps, guidance): one plain head step; three guided ones
CASES = [(name, *knobs, HORIZON) for name in RUNNERS if name != "triton-cpu-fp32" for knobs in KNOBS]
# Triton's CPU interpreter: about 30 s for W frames on two busy cores, so one guided case over W frames
CASES.append(pytest.param("triton-cpu-fp32", 2, 1.5, W, marks=pytest.mark.slow))


@pytest.mark.parametrize("name,steps,guidance,horizon", CASES)
def test_runner_follows_the_reference(ckpt, name, steps, guidance, horizon):
    skip_unless_runnable(name)
    context, context_actions, actions = inputs()
    actions = actions[:horizon]
    s = session_for(ckpt, name, steps=steps, guidance=guidance)
    s.reset(context, context_actions)
    frames, latents = [], []
    for a in actions:
        frames.append(s.step(a))
        latents.append(s.latent.float().cpu().clone())   # a copy: the buffer is rewritten by the next step
    got, got_frames = torch.stack(latents), np.stack(frames).astype(int)   # (n, B, C, h, w), (n, B, H, W, 3)

    ae, wm = load_world_model(load_checkpoint(ckpt))   # float32 on the CPU: the spec
    want_frames, want = reference.rollout(ae.eval(), wm.eval(), torch.from_numpy(context),
                                          torch.from_numpy(context_actions), torch.from_numpy(actions), seed=SEED,
                                          steps=steps, guidance=guidance, context_noise=s.context_noise)
    tolerance, relative = RUNNERS[name][1:]
    if relative:
        error = float((got - want).abs().mean() / want.abs().mean())
        assert error <= tolerance, f"{name}: latents differ from the reference by {error:.3f} of their magnitude"
    else:
        torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance, msg=lambda m: f"{name}: {m}")
        assert np.abs(got_frames - want_frames.numpy()).max() <= 1, f"{name}: frames differ by more than a level"
