"""Fused Triton kernels for the frame step, each beside its pure-PyTorch reference, and the switch between them.

    noise           counter-based normal draw (engine.noise), the hash bit for bit
    modulated_norm  LayerNorm / RMSNorm without affine, then x * (1 + scale) + shift (or an affine weight and bias)
    gated_residual  x + gate * y fused with the next modulated norm
    rope_qkv        RoPE on q and k as they leave the qkv projection; k and v written into their ring-cache slot
    ring_attention  the new tokens against the ring KV cache read in place, slot validity decided in the kernel
    flow_step       classifier-free guidance combine and Euler update

`ops(mode)` gives the last five as one table, each file's reference or its kernel; the torch runner's fused step
(engine.fused_step) calls them, and draws its noise with kernels.noise (whose reference is engine/noise.py). Modes:
"reference" (PyTorch, anywhere), "triton" (the kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1) and
"auto" (Triton on CUDA where it imports, the references elsewhere). Triton is the `kernels` extra, not a
dependency of the base install; nothing here imports it until a kernel is asked for. A Triton older than the kernels
need (kernels._triton.MIN_VERSION) counts as one that cannot run them: "triton" is refused, "auto" takes the
references (the torch runner says so in one line).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

MODES = ("auto", "triton", "reference")
# op -> the file (kernels/<file>.py) that holds its kernel (named like the op) and its `reference`
OPS = {"modulated_norm": "modulated_norm", "gated_residual_norm": "gated_residual", "rope_qkv": "rope_qkv",
       "ring_attention": "ring_attention", "flow_step": "flow_step"}


class KernelError(RuntimeError):
    """Kernels asked for where they cannot run (no Triton, a CPU without its interpreter, an unknown mode)."""


@dataclass(frozen=True)
class Ops:
    """The fused ops of one mode (see the module docstring); each file's `reference` or its kernel."""

    mode: str
    modulated_norm: Callable[..., torch.Tensor]
    gated_residual_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rope_qkv: Callable[..., torch.Tensor]
    ring_attention: Callable[..., torch.Tensor]
    flow_step: Callable[..., torch.Tensor]


def triton_problem(device: str | torch.device) -> str | None:
    """Why Triton kernels cannot run on `device` here (None: they can)."""
    from kernels._triton import device_problem

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return device_problem(device.type)


def version_problem(device: str | torch.device) -> str | None:
    """Why the installed Triton is too old for `device` (None: new enough, or not installed at all)."""
    from kernels._triton import version_problem as problem

    return problem(torch.device(device).type)


def resolve(mode: str, device: str | torch.device) -> str:
    """"triton" or "reference" for `mode` on `device`; KernelError (saying why) when triton is asked for and cannot
    run there."""
    if mode not in MODES:
        raise KernelError(f"kernels must be one of {', '.join(MODES)}; got {mode!r}")
    device = torch.device(device)
    if mode == "reference":
        return "reference"
    why = triton_problem(device)
    if mode == "auto":
        return "triton" if why is None and device.type == "cuda" else "reference"
    if why is not None:
        raise KernelError(f"kernels 'triton' on {device}: {why}; use kernels 'reference' (or 'auto')")
    return "triton"


def ops(mode: str) -> Ops:
    """The op table of a resolved mode ("triton" or "reference")."""
    if mode not in ("triton", "reference"):
        raise KernelError(f"ops() takes a resolved mode, 'triton' or 'reference'; got {mode!r} (see resolve())")
    table = {}
    for name, file in OPS.items():
        module = importlib.import_module(f"kernels.{file}")
        table[name] = module.reference if mode == "reference" else getattr(module, name)
    return Ops(mode=mode, **table)
