"""benchmarks/history_guidance.py: weight 0 is the shipped sampling; a weak history changes the dream; bad runs are
refused."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.session import Session
from tests.tiny_model import FRAME, SPEC, tiny_checkpoint

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "history_guidance.py"
_spec = importlib.util.spec_from_file_location("history_guidance", _path)
hg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hg)

B, T = 2, 6


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (B, 3, *FRAME), dtype=np.uint8)
    actions = rng.integers(0, 2, (B, 3, SPEC.size)).astype(np.float32)
    steps = rng.integers(0, 2, (T, B, SPEC.size)).astype(np.float32)
    return frames, actions, steps


def _latents(sess, frames, actions, steps) -> list[torch.Tensor]:
    sess.reset(frames, actions, seed=list(range(B)))
    out = []
    for a in steps:
        sess.step(a)
        out.append(sess.latent[:B].clone())
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(tiny_checkpoint(tmp_path_factory.mktemp("hg") / "tiny.safetensors"))


def test_weight_zero_is_the_sessions_own_sampling(ckpt):
    inputs = _inputs()
    plain = Session(ckpt, backend="torch", batch=B, steps=1, guidance=1.5, threads=1)
    guided = hg.HistoryGuidedSession(ckpt, B, guidance=1.5, weight=0.0, weak=("short", 1.0))
    for a, b in zip(_latents(plain, *inputs), _latents(guided, *inputs)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weak", [("short", 1.0), ("noise", 0.5)])
def test_a_weak_history_changes_the_dream(ckpt, weak):
    inputs = _inputs()
    base = _latents(hg.HistoryGuidedSession(ckpt, B, 1.5, 0.0, weak), *inputs)
    guided = _latents(hg.HistoryGuidedSession(ckpt, B, 1.5, 1.0, weak), *inputs)
    assert not torch.allclose(base[0], guided[0], atol=1e-3)
    assert all(torch.isfinite(z).all() for z in guided)


def test_short_history_attends_only_the_last_frames(ckpt):
    """With k = the whole ring the weak copy sees what the world sees; with k = 1 it does not."""
    inputs = _inputs()
    whole = hg.HistoryGuidedSession(ckpt, B, 1.0, 1.0, ("short", 4.0))   # W = 4 in the tiny model
    whole.level_buf.zero_()                                               # no context noise: the copies agree
    _latents(whole, *inputs)
    torch.testing.assert_close(whole.h_last[B:], whole.h_last[:B], rtol=1e-4, atol=1e-4)
    one = hg.HistoryGuidedSession(ckpt, B, 1.0, 1.0, ("short", 1.0))
    one.level_buf.zero_()
    _latents(one, *inputs)
    assert not torch.allclose(one.h_last[B:], one.h_last[:B], atol=1e-3)


@pytest.mark.parametrize("text", ["1.5", "1.5,x", "1.5,1,blur:2", "0,1", "1.5,1,short:2,extra"])
def test_bad_runs_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--run"):
        hg.parse_run(text)
