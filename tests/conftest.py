"""Test settings: one torch thread (two cores are shared by the suite; oversubscription is far slower)."""

import os
import tempfile

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# ONNX graphs exported by onnxruntime sessions go to a throwaway cache, not the user's ~/.cache
os.environ.setdefault("REVERIE_CACHE", tempfile.mkdtemp(prefix="reverie-test-cache-"))

import torch  # noqa: E402

torch.set_num_threads(1)
# Triton kernels run on a CPU only in Triton's interpreter, which must be on before any kernel is defined
# (kernels/ defines them when first imported); on a GPU machine they compile for it
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
