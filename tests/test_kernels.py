"""The fused Triton kernels (kernels/) against their PyTorch references, and the switch that picks them.

On a CPU the kernels run in Triton's interpreter (tests/conftest.py turns it on before any kernel is defined): about
100x slower than torch, so the shapes are small but odd (one token, widths that are not powers of two, a ring that
wraps, batches > 1), in float32 and float16 (the interpreter's bfloat16 arithmetic is wrong; the GPU script
runs/kernels_gpu.py checks bfloat16 on CUDA). Without Triton installed the kernel tests skip and say so; CI installs
the `kernels` extra, so they run there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_model import SPEC, start_frames, tiny_models

import kernels
from engine.noise import _uniform, counter_normal_np
from engine.noise import counter_normal as reference_normal
from kernels import KernelError, flow_step, gated_residual, modulated_norm, noise, ring_attention, rope_qkv
from kernels._triton import device_problem, version_problem, version_tuple

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# no Triton, or one too old for this device (its interpreter on a CPU): the kernel tests skip and say why
needs_triton = pytest.mark.skipif(device_problem(DEVICE) is not None, reason=f"{device_problem(DEVICE)}")
# the tolerance of each dtype: the kernels compute in float32 and round once, the references round in between
TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.float16: {"atol": 4e-3, "rtol": 2e-3}}
DTYPES = [torch.float32, torch.float16]


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a.float(), b.float(), **TOL[dtype])


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0, shift=0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).to(DEVICE)


# ---- noise ---------------------------------------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("shape", [(1,), (3, 5, 7), (2, 1100)])   # 1 element; odd; more than one block of 1024
def test_noise_draw_is_the_references_hash_bit_for_bit(shape):
    seed = torch.tensor([0, 5, -3, 2**40 + 7], device=DEVICE)           # negative and past 32 bits: masked alike
    counter = torch.tensor([0, 1, 99, 2**33 + 1], device=DEVICE)
    numel = int(np.prod(shape))
    for stream in (0, 1, 3):
        assert torch.equal(noise.counter_uniform(seed, counter, numel, stream), _uniform(seed, counter, stream, numel))
        got, want = noise.counter_normal(seed, counter, shape, stream), reference_normal(seed, counter, shape, stream)
        assert got.shape == (4, *shape) and got.dtype == torch.float32
        # the same uniforms; log and cos of numpy (interpreter) or libdevice (CUDA) against torch's: a few ulps
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-6)
        if DEVICE == "cpu":   # bit for bit with the draw whose float math is numpy's too (the onnxruntime runner's);
            # on CUDA runs/kernels_gpu.py reports whether libdevice's logf/cosf give torch's CUDA draw bit for bit
            assert np.array_equal(got.numpy(), counter_normal_np(seed.numpy(), counter.numpy(), shape, stream))
    a = noise.counter_normal(seed, counter, shape)
    assert torch.equal(a[1:2], noise.counter_normal(seed[1:2], counter[1:2], shape))   # a batch = its singles


@needs_triton
def test_noise_refuses_mismatched_seed_and_counter():
    with pytest.raises(ValueError, match="seed and counter must both be"):
        noise.counter_normal(torch.zeros(2, dtype=torch.long, device=DEVICE),
                             torch.zeros(3, dtype=torch.long, device=DEVICE), (4,))


# ---- modulated norm and the gated residual ---------------------------------------------------------------------------
SHAPES = [(1, 1, 7), (2, 5, 48), (3, 4, 100)]   # one token; widths that are not powers of two


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,D", SHAPES)
def test_modulated_norm_matches_the_reference(dtype, B, N, D):
    x = randn(B, N, D, dtype=dtype, scale=3.0, shift=1.0)
    for i, per in enumerate([(D,), (B, D), (B, N, D)]):               # per feature, per frame, per token
        shift, scale = randn(*per, dtype=dtype, seed=i + 1), randn(*per, dtype=dtype, seed=i + 7)
        for rms in (False, True):
            for one_plus in (True, False):
                got = modulated_norm.modulated_norm(x, shift, scale, 1e-5, rms, one_plus)
                close(got, modulated_norm.reference(x, shift, scale, 1e-5, rms, one_plus), dtype)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,D", SHAPES)
def test_gated_residual_norm_matches_the_reference(dtype, B, N, D):
    x, y = randn(B, N, D, dtype=dtype, scale=2.0), randn(B, N, D, dtype=dtype, seed=3)
    for i, per in enumerate([(B, D), (B, N, D)]):
        shift, scale = randn(*per, dtype=dtype, seed=i + 1), randn(*per, dtype=dtype, seed=i + 7)
        for gate in (None, randn(*per, dtype=dtype, seed=i + 11)):
            for rms in (False, True):
                got = gated_residual.gated_residual_norm(x, y, gate, shift, scale, 1e-5, rms)
                want = gated_residual.reference(x, y, gate, shift, scale, 1e-5, rms)
                close(got[0], want[0], dtype)
                close(got[1], want[1], dtype)


@needs_triton
def test_norm_kernels_refuse_a_shift_of_the_wrong_shape():
    x = randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"scale must be \(D,\), \(B, D\) or \(B, N, D\)"):
        modulated_norm.modulated_norm(x, randn(8), randn(3, 8))
    with pytest.raises(ValueError, match="x and y must both be"):
        gated_residual.gated_residual_norm(x, randn(2, 3, 9), None, randn(8), randn(8))


# ---- RoPE + ring write, attention over the ring ----------------------------------------------------------------------
RING = [(1, 1, 1, 4, 1), (2, 5, 3, 10, 3), (2, 16, 2, 32, 5), (1, 70, 1, 16, 2)]  # (B, N, heads, head size, W)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,H,hd,W", RING)
def test_rope_qkv_rotates_and_writes_the_ring_slot(dtype, B, N, H, hd, W):
    qkv = randn(B, N, 3 * H * hd, dtype=dtype)
    angles = torch.rand(N, hd // 2, generator=torch.Generator().manual_seed(1)).to(DEVICE) * 6
    cos, sin = angles.cos(), angles.sin()
    for slot in range(W):                                            # every slot, the last one where the ring wraps
        columns = slot * N + torch.arange(N, device=DEVICE)
        k1, v1 = randn(B, H, W * N, hd, dtype=dtype, seed=2), randn(B, H, W * N, hd, dtype=dtype, seed=3)
        k2, v2 = k1.clone(), v1.clone()
        q = rope_qkv.rope_qkv(qkv, cos, sin, H, k1, v1, columns)
        close(q, rope_qkv.reference(qkv, cos, sin, H, k2, v2, columns), dtype)
        close(k1, k2, dtype)                                         # the slot written, every other column kept
        close(v1, v2, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,H,hd,W", RING)
def test_ring_attention_reads_the_cache_in_place(dtype, B, N, H, hd, W):
    q = randn(B, H, N, hd, dtype=dtype)
    k, v = randn(B, H, W * N, hd, dtype=dtype, seed=2), randn(B, H, W * N, hd, dtype=dtype, seed=3)
    valid = (torch.rand(B, W, generator=torch.Generator().manual_seed(4)) > 0.5).to(DEVICE)
    valid[0] = False                                                 # a world whose only frame is the new one
    for slot in {0, W - 1}:
        s = torch.tensor(slot, device=DEVICE)
        got = ring_attention.ring_attention(q, k, v, valid, s, N)
        close(got, ring_attention.reference(q, k, v, valid, s, N), dtype)
    close(ring_attention.ring_attention(q, k, v), ring_attention.reference(q, k, v), dtype)   # every column


@needs_triton
def test_ring_attention_ignores_columns_it_must_not_read():
    """Left-out columns may hold anything (an old frame, garbage): the output does not change."""
    B, N, H, hd, W = 1, 3, 2, 8, 4
    q, k, v = randn(B, H, N, hd), randn(B, H, W * N, hd, seed=1), randn(B, H, W * N, hd, seed=2)
    valid = torch.tensor([[True, False, True, False]], device=DEVICE)
    slot = torch.tensor(3, device=DEVICE)
    before = ring_attention.ring_attention(q, k, v, valid, slot, N)
    k[:, :, N:2 * N], v[:, :, N:2 * N] = 1e4, -1e4                   # slot 1: not valid, not the new frame
    assert torch.equal(ring_attention.ring_attention(q, k, v, valid, slot, N), before)


@needs_triton
def test_ring_kernels_refuse_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match="k_out and v_out must be"):
        rope_qkv.rope_qkv(randn(1, 2, 12), randn(2, 1), randn(2, 1), 2, randn(1, 2, 4, 3), randn(1, 2, 4, 3),
                          torch.arange(2, device=DEVICE))
    with pytest.raises(ValueError, match="valid must be"):
        ring_attention.ring_attention(randn(1, 1, 2, 4), randn(1, 1, 6, 4), randn(1, 1, 6, 4),
                                      torch.ones(1, 2, dtype=torch.bool, device=DEVICE),
                                      torch.tensor(0, device=DEVICE), 2)


# ---- flow step -------------------------------------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 16, 40)])          # 1280 elements: more than one block
def test_flow_step_matches_the_reference(dtype, shape):
    x = randn(*shape, dtype=dtype)
    v = randn(2 * shape[0], *shape[1:], dtype=dtype, seed=1)
    d, g = torch.tensor([0.25], device=DEVICE), torch.tensor([1.75], device=DEVICE)
    torch.testing.assert_close(flow_step.flow_step(x, v, d, g), flow_step.reference(x, v, d, g), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(flow_step.flow_step(x, v[:shape[0]], d), flow_step.reference(x, v[:shape[0]], d),
                               atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="v must be"):
        flow_step.flow_step(x, v[:shape[0]], d, g)


# ---- the switch ------------------------------------------------------------------------------------------------------
def test_the_switch_resolves_modes_and_says_why_it_cannot(monkeypatch):
    assert kernels.resolve("reference", "cpu") == "reference"
    assert kernels.resolve("auto", "cpu") == "reference"             # the interpreter is for tests, not for play
    with pytest.raises(KernelError, match="kernels must be one of auto, triton, reference"):
        kernels.resolve("fast", "cpu")
    from kernels import _triton

    monkeypatch.setattr(_triton, "INTERPRET", False)
    with pytest.raises(KernelError, match="TRITON_INTERPRET=1"):
        kernels.resolve("triton", "cpu")
    monkeypatch.setattr(_triton, "HAVE_TRITON", False)
    monkeypatch.setattr(_triton, "IMPORT_ERROR", "ModuleNotFoundError: No module named 'triton'")
    with pytest.raises(KernelError, match=r"Triton does not import .*pip install 'reverie\[kernels\]'"):
        kernels.resolve("triton", "cpu")
    with pytest.raises(KernelError, match="resolved mode"):
        kernels.ops("auto")
    table = kernels.ops("reference")
    assert table.flow_step is flow_step.reference and table.ring_attention is ring_attention.reference


def test_a_triton_too_old_is_named_with_the_reference_path(monkeypatch):
    """CUDA needs Triton 3.0, the CPU interpreter 3.8 (kernels/_triton.py says why): an older one is refused by
    name, with the way out, before any kernel runs."""
    from kernels import _triton

    assert version_tuple("3.6.0") == (3, 6) and version_tuple("3.0.0+git8a2e1f3") == (3, 0)
    assert version_tuple("3.10.1") > version_tuple("3.8.0")
    monkeypatch.setattr(_triton, "HAVE_TRITON", True)
    monkeypatch.setattr(_triton, "VERSION", "2.3.1")
    why = version_problem("cuda")
    assert "Triton 2.3.1 is older than 3.0" in why and "pip install -U 'triton>=3.0'" in why
    assert "kernels='reference'" in why
    monkeypatch.setattr(_triton, "VERSION", "3.6.0")
    assert version_problem("cuda") is None                          # the lent GPU machines' Triton
    monkeypatch.setattr(_triton, "INTERPRET", True)
    with pytest.raises(KernelError, match=r"Triton 3\.6\.0 is older than 3\.8, .* the CPU interpreter"):
        kernels.resolve("triton", "cpu")
    assert kernels.resolve("auto", "cpu") == "reference"


def test_a_session_refuses_triton_kernels_where_they_cannot_run(monkeypatch):
    from engine.session import Session, SessionError
    from kernels import _triton

    ae, wm = tiny_models()
    monkeypatch.setattr(_triton, "INTERPRET", False)
    with pytest.raises(SessionError, match="TRITON_INTERPRET"):
        Session(models=(ae, wm, SPEC), backend="torch", kernels="triton")
    with pytest.raises(SessionError, match="kernels 'triton' are the torch backend's"):
        Session(models=(ae, wm, SPEC), backend="onnxruntime", graphs="/nonexistent", kernels="triton")


# ---- the whole step --------------------------------------------------------------------------------------------------
def run_session(kernel_mode: str, steps: int = 2, frames: int = 3, **kw):
    from engine.session import Session

    ae, wm = tiny_models()
    s = Session(models=(ae, wm, SPEC), backend="torch", device=DEVICE, batch=2, steps=steps, guidance=1.5,
                kernels=kernel_mode, seed=3, **kw)
    s.reset(start_frames(2))
    out = [s.step(np.eye(4, dtype=np.float32)[[i % 4, (i + 1) % 4]]) for i in range(frames)]
    return s, np.stack(out).astype(int)


def test_the_fused_step_over_reference_ops_is_the_graph_modules_step(monkeypatch):
    """engine.fused_step regroups the step around the ops; over the reference ops it computes what the graph
    modules compute (fast: no Triton), 6 frames so that the ring of 4 wraps."""
    from engine import runners
    from engine.fused_step import fused_modules

    _, plain = run_session("reference", frames=6)
    original = runners.TorchRunner.__init__

    def with_fused_reference(self, wm, ae, *a, **kw):
        original(self, wm, ae, *a, **kw)
        self.modules.update(fused_modules(wm, kernels.ops("reference")))
        self.inputs["backbone"] += ["valid"]

    monkeypatch.setattr(runners.TorchRunner, "__init__", with_fused_reference)
    s, fused = run_session("reference", frames=6)
    assert s.runner.modules["backbone"].__class__.__name__ == "FusedBackboneStep"
    assert np.abs(fused - plain).max() <= 1


# kernels on vs off over whole steps, per model precision: (latent atol = rtol, most uint8 levels any pixel may
# differ, mean levels over all pixels)
STEP_TOL = {
    # both sides compute in float32 and differ only in summation order (~1e-6 relative): a pixel may round the other
    # way, by one level
    "fp32": (1e-4, 1, 1.0),
    # the kernels compute in float32 and round once; the reference rounds every op's output to bf16 (8 bits of
    # mantissa, 2^-9 relative) through each layer and sampling step: latents part by about 1e-2 (the CUDA tests'
    # bf16 bound, 5e-2, holds them), which a decoder turns into a few levels at some pixels, under one on average
    "bf16": (5e-2, 255, 1.0),
}


@needs_triton
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_session_step_with_kernels_equals_the_step_without(dtype):
    """Frames of two worlds over a ring that wraps (2 start frames + 3 steps in a ring of 4), 2 sampling steps with
    guidance: Triton kernels on equals off within the precision's tolerance; the next noise draws agree to float
    rounding."""
    if dtype == "bf16" and DEVICE == "cpu":
        pytest.skip("bf16 runs on CUDA only here (Triton's interpreter gets bfloat16 arithmetic wrong)")
    atol, most, mean = STEP_TOL[dtype]
    on, frames_on = run_session("triton", dtype=dtype)
    off, frames_off = run_session("reference", dtype=dtype)
    assert on.runner.kernels == "triton" and off.runner.kernels == "reference"
    torch.testing.assert_close(on.latent.float(), off.latent.float(), atol=atol, rtol=atol)
    diff = np.abs(frames_on - frames_off)
    assert diff.max() <= most and diff.mean() <= mean, (diff.max(), diff.mean())
    torch.testing.assert_close(on.runner.noise(on.seed, on.counter, (3, 4), 0),
                               off.runner.noise(off.seed, off.counter, (3, 4), 0), atol=2e-6, rtol=1e-6)
    assert torch.equal(on.counter, off.counter)
