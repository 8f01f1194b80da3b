"""Triton where it imports: the one place `kernels/` imports it, so that every reference runs without it.

Kernels are defined only when Triton imports (`HAVE_TRITON`). On a CPU they run under Triton's interpreter alone
(`TRITON_INTERPRET=1`, set before this module is first imported; triton >= 3.8): the test suite does that, at about
100x the cost of torch, in float32 and float16 (the interpreter gets bfloat16 arithmetic wrong).
"""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
except ImportError as e:  # the base install has no Triton: the references serve
    triton = tl = None
    IMPORT_ERROR: str | None = f"{type(e).__name__}: {e}"
else:
    IMPORT_ERROR = None

HAVE_TRITON = triton is not None
INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"


def block(n: int, least: int = 16) -> int:
    """The power-of-two block that covers n (at least `least`: tl.dot wants 16 in every dimension)."""
    return max(least, 1 << max(0, int(n) - 1).bit_length())


def device_problem(device_type: str) -> str | None:
    """Why a Triton kernel cannot run on this kind of device here (None: it can): CUDA needs a compiled Triton and
    a GPU, the CPU its interpreter."""
    if not HAVE_TRITON:
        return f"Triton does not import ({IMPORT_ERROR}); pip install 'reverie[kernels]'"
    if device_type == "cpu":
        return None if INTERPRET else "Triton runs on the CPU only under TRITON_INTERPRET=1 (the tests set it)"
    if device_type != "cuda":
        return f"Triton kernels here run on CUDA, not {device_type}"
    return None


def device_ok(*tensors) -> str | None:
    """Why these tensors cannot go to a Triton kernel here (None: they can)."""
    for t in tensors:
        if t is not None:
            why = device_problem(t.device.type)
            if why is not None:
                return why
    return None if tensors else device_problem("cpu")
