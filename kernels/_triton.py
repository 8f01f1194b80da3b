"""Triton where it imports: the one place `kernels/` imports it, so that every reference runs without it.

Kernels are defined only when Triton imports (`HAVE_TRITON`). On a CPU they run under Triton's interpreter alone
(`TRITON_INTERPRET=1`, set before this module is first imported): the test suite does that, at about 100x the cost of
torch, in float32 and float16 (the interpreter gets bfloat16 arithmetic wrong).

Versions: on CUDA the kernels need Triton 3.0 (the first with `triton.language.extra.libdevice`, `tl.dot(...,
input_precision=)` and `tl.sqrt_rn`; every kernel compiles for sm_90 under 3.0, 3.6 and 3.9, and not under 2.3);
the interpreter needs 3.8 (3.6 and 3.7 fail on ring_attention). An older Triton is named here, with the reference
path, instead of failing inside a kernel.
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
MIN_VERSION = {"cuda": (3, 0), "cpu": (3, 8)}   # compiled for CUDA; the CPU interpreter (see the module docstring)
VERSION = None if triton is None else triton.__version__


def version_tuple(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as '3.6.0' or '3.0.0+git1234'."""
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in version.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def version_problem(device_type: str) -> str | None:
    """Why the installed Triton is too old for this kind of device (None: it is new enough, or not installed)."""
    least = MIN_VERSION.get(device_type)
    if VERSION is None or least is None or version_tuple(VERSION) >= least:
        return None
    where = "compiled for CUDA" if device_type == "cuda" else "in the CPU interpreter"
    return (f"Triton {VERSION} is older than {least[0]}.{least[1]}, the oldest the fused kernels run with {where}: "
            f"pip install -U 'triton>={least[0]}.{least[1]}', or use kernels='reference' (the PyTorch step)")


def block(n: int, least: int = 16) -> int:
    """The power-of-two block that covers n (at least `least`: tl.dot wants 16 in every dimension)."""
    return max(least, 1 << max(0, int(n) - 1).bit_length())


def device_problem(device_type: str) -> str | None:
    """Why a Triton kernel cannot run on this kind of device here (None: it can): CUDA needs a compiled Triton and
    a GPU, the CPU its interpreter."""
    if not HAVE_TRITON:
        return f"Triton does not import ({IMPORT_ERROR}); pip install 'reverie[kernels]'"
    if device_type == "cpu":
        if not INTERPRET:
            return "Triton runs on the CPU only under TRITON_INTERPRET=1 (the tests set it)"
        return version_problem("cpu")
    if device_type != "cuda":
        return f"Triton kernels here run on CUDA, not {device_type}"
    return version_problem("cuda")


def device_ok(*tensors) -> str | None:
    """Why these tensors cannot go to a Triton kernel here (None: they can)."""
    for t in tensors:
        if t is not None:
            why = device_problem(t.device.type)
            if why is not None:
                return why
    return None if tensors else device_problem("cpu")
