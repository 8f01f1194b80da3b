"""World slots of engine.Session (engine.slots): one world of a batch reset, saved, loaded or closed alone.

A world reset into slot b of a stepped batch makes the frames of a fresh one-world session (torch and onnxruntime);
the other slots never change, bit for bit; a world moves between slots, batch sizes and ring positions through its
save-game (dict, bytes or file) and goes on as it would have; bad blobs are refused, naming what is wrong, with every
slot left as it was. The tiny random model of tests/tiny_model.py (a ring of W = 4 frames).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_session import random_actions, real_frames, rollout
from tiny_model import SPEC, W, tiny_checkpoint, tiny_models

from engine.actions import ActionSpec
from engine.inputs import SessionError
from engine.session import Session
from engine.slots import read_world, rotate_time, world_from_bytes, world_to_bytes

B = 4
LATENT_ATOL = {"torch": 1e-5, "onnxruntime": 1e-4}   # fp32: one world in a batch vs alone; measured ~1e-6 in torch
PIXEL_SHARE = 0.999   # uint8 frames: at least this share of pixels within one level
FRAMES = 16



def close_frames(a: np.ndarray, b: np.ndarray) -> float:
    """The share of pixels within one uint8 level."""
    return float((np.abs(a.astype(int) - b.astype(int)) <= 1).mean())


@pytest.fixture(scope="module")
def models():
    return tiny_models()


def make(models, batch: int = B, **kw) -> Session:
    kw = {"steps": 2, "guidance": 1.5, **kw}
    return Session(models=(*models, SPEC), dtype="fp32", batch=batch, **kw)


def stepped(models, n: int = 5, batch: int = B, **kw) -> Session:
    """A batch primed from its own frames and stepped n frames."""
    s = make(models, batch, seed=3, **kw)
    s.reset(real_frames(3, seed=4, batch=batch))
    rollout(s, random_actions(n, seed=5, batch=batch))
    return s


def everything(s: Session) -> dict[str, torch.Tensor]:
    return {k: t.clone() for k, t in s.state()["tensors"].items()}


# ---- reset_world: a world primed alone in a stepped batch == a fresh one-world session ---------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("slots") / "model.safetensors", start=3)


def backend_session(ckpt, backend: str, batch: int, **kw) -> Session:
    graphs = None
    if backend == "onnxruntime":
        pytest.importorskip("onnx", reason="onnx is not installed (pip install 'reverie[export]')")
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the [play] extra)")
        from export.prepare import prepare_backend

        backend, graphs = prepare_backend(ckpt, backend, batch, quiet=True)
    return Session(ckpt, backend=backend, graphs=graphs, batch=batch, threads=1, steps=2, guidance=1.5, **kw)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("start", ["frames", "checkpoint"])
def test_a_world_reset_into_a_stepped_batch_makes_a_fresh_worlds_frames(ckpt, backend, start):
    s = backend_session(ckpt, backend, B, seed=3)
    s.reset(real_frames(3, seed=4, batch=B))
    rollout(s, random_actions(5, seed=5, batch=B))   # ring position 8: not the fresh world's 2 (or 3)
    frames, actions = (real_frames(2, seed=6), random_actions(2, seed=7)) if start == "frames" else (None, None)
    first = s.reset_world(2, frames, actions, seed=9)
    alone = backend_session(ckpt, backend, 1)
    assert np.array_equal(first, alone.reset(frames, actions, seed=9))
    assert s.live.tolist() == [True] * B
    acts = random_actions(FRAMES, seed=8, batch=B)
    got_frames, got = rollout(s, acts)
    want_frames, want = rollout(alone, acts[:, 2])
    torch.testing.assert_close(got[:, 2], want[:, 0], atol=LATENT_ATOL[backend], rtol=0)
    assert close_frames(got_frames[:, 2], want_frames) >= PIXEL_SHARE


def test_reset_world_keeps_or_sets_the_seed(models):
    s = stepped(models)
    seeds = s.seed.clone()
    s.reset_world(1, real_frames(2))
    assert torch.equal(s.seed, seeds)   # None keeps slot 1's seed
    s.reset_world(1, real_frames(2), seed=5)
    assert int(s.seed[1]) == int(make(models, 1, seed=5).seed[0]) and torch.equal(s.seed[[0, 2, 3]], seeds[[0, 2, 3]])


# ---- the other slots: untouched bit for bit -------------------------------------------------------------------
@pytest.mark.parametrize("change", ["reset_world", "reset_world full", "load_world", "close_world"])
def test_the_other_slots_are_untouched_bit_for_bit(models, change):
    s = stepped(models)
    twin = s.fork()   # the same batch, where nothing happens to slot 1
    before = everything(s)
    if change.startswith("reset_world"):
        s.reset_world(1, real_frames(W + 1 if "full" in change else 2, seed=9), seed=2)
    elif change == "load_world":
        s.load_world(1, stepped(models, n=2, batch=2).state_world(0))
    else:
        s.close_world(1)
    others = [0, 2, 3]
    for k, t in everything(s).items():
        if t.dim() and t.shape[0] == B:   # per-world tensors (B, ...)
            assert torch.equal(t[others], before[k][others]), k
        elif t.dim() > 1:                 # keys and values (L, B, ...)
            assert torch.equal(t[:, others], before[k][:, others]), k
    acts = random_actions(W + 3, seed=11, batch=B)
    got_frames, got = rollout(s, acts)
    want_frames, want = rollout(twin, acts)
    assert np.array_equal(got_frames[:, others], want_frames[:, others]) and torch.equal(got[:, others],
                                                                                        want[:, others])


def test_the_other_slots_are_untouched_bit_for_bit_in_onnxruntime(ckpt):
    s = backend_session(ckpt, "onnxruntime", B, seed=3)
    s.reset(real_frames(3, seed=4, batch=B))
    rollout(s, random_actions(3, seed=5, batch=B))
    twin = s.fork()
    s.reset_world(1, real_frames(2, seed=9), seed=2)
    s.close_world(3)
    acts = random_actions(W + 2, seed=11, batch=B)
    got_frames, got = rollout(s, acts)
    want_frames, want = rollout(twin, acts)
    assert np.array_equal(got_frames[:, [0, 2]], want_frames[:, [0, 2]]) and torch.equal(got[:, [0, 2]],
                                                                                        want[:, [0, 2]])


def test_a_loaded_world_with_empty_ring_slots_masks_them_until_filled(models):
    s = stepped(models, n=W + 2)
    assert s.kv.full
    s.reset_world(0, real_frames(2))   # 2 frames: W - 2 empty slots in world 0's ring
    assert not s.kv.full and s.kv.valid[0].sum() == 2 and s.kv.valid[1:].all()
    rollout(s, random_actions(W, batch=B))
    assert s.kv.full and s.kv.valid.all()


# ---- save-games of one world: moved between slots, batch sizes and ring positions ---------------------------------
@pytest.mark.parametrize("time_period", [4096, 6])
def test_a_world_moves_between_slots_batches_and_ring_positions(time_period):
    models = tiny_models(time_period=time_period)
    src = stepped(models, n=3, batch=2)
    st = src.state_world(1)
    assert st["position"] == 6 and st["tensors"]["k_cache"].device.type == "cpu"
    other_slot = stepped(models, n=W + 6, batch=3)   # ring position 13: 7 frames after src, a multiple of neither W
                                                     # nor the short period 6
    other_slot.load_world(2, st)
    alone = make(models, 1)                          # never reset: position 0, before the world's first frame
    alone.load_world(0, st)
    acts = random_actions(FRAMES, seed=12)
    _, want = rollout(src, np.stack([acts, acts], 1))
    _, got = rollout(other_slot, np.stack([acts] * 3, 1))
    _, got_alone = rollout(alone, acts)
    torch.testing.assert_close(got[:, 2], want[:, 1], atol=LATENT_ATOL["torch"], rtol=0)
    torch.testing.assert_close(got_alone[:, 0], want[:, 1], atol=LATENT_ATOL["torch"], rtol=0)


def test_rotate_time_moves_rope_keys_in_time(models):
    """Keys rotated at time t, then re-rotated by delta, equal the keys rotated at t + delta (mod the period)."""
    from engine.transformer import apply_rope

    rope, hd = models[1].rope, models[1].cfg.head_dim
    raw = torch.randn(2, 3, rope.s_cos.shape[0], hd, generator=torch.Generator().manual_seed(0))   # (L, H, N, hd)
    for t, delta in [(5, 3), (7, -9), (4090, 11), (2, 4096 * 2 + 1)]:
        cos, sin = rope.frames(torch.tensor([t]))
        cos2, sin2 = rope.frames(torch.tensor([t + delta]))
        torch.testing.assert_close(rotate_time(apply_rope(raw, cos[0], sin[0]), rope, delta),
                                   apply_rope(raw, cos2[0], sin2[0]), atol=1e-5, rtol=0)


def test_world_bytes_and_files_round_trip(models, tmp_path):
    s = stepped(models)
    st, data = s.state_world(3), s.world_bytes(3)
    assert isinstance(data, bytes)
    back = world_from_bytes(data)
    path = s.save_world(3, tmp_path / "world.safetensors")
    from_file = read_world(path)
    for k, t in st["tensors"].items():
        assert torch.equal(back["tensors"][k], t) and torch.equal(from_file["tensors"][k], t), k
    assert {k: v for k, v in back.items() if k != "tensors"} == {k: v for k, v in st.items() if k != "tensors"}
    twin = s.fork()
    s.load_world_bytes(0, data)   # world 3 copied into slot 0, at the same position
    acts = random_actions(6, seed=3, batch=B)
    acts[:, 0] = acts[:, 3]
    _, got = rollout(s, acts)
    twin.load_world(0, from_file)
    assert torch.equal(rollout(twin, acts)[1], got)
    torch.testing.assert_close(got[:, 0], got[:, 3], atol=LATENT_ATOL["torch"], rtol=0)   # the copy plays alike


def blobs(models, tmp_path) -> dict[str, tuple[object, str]]:
    """Bad world save-games and the phrase each error must name."""
    good = stepped(models, n=1, batch=1)
    data = good.world_bytes(0)
    st = good.state_world(0)
    shaped = {**st, "tensors": {**st["tensors"], "h_last": st["tensors"]["h_last"][:-1]}}
    typed = {**st, "tensors": {**st["tensors"], "frame_buf": st["tensors"]["frame_buf"].float()}}
    nan = {**st, "tensors": {**st["tensors"], "k_cache": st["tensors"]["k_cache"].clone().fill_(float("nan"))}}
    missing = {**st, "tensors": {k: t for k, t in st["tensors"].items() if k != "valid"}}
    other_cfg = stepped(tiny_models(context_frames=W + 2), n=1, batch=1).world_bytes(0)
    other_weights = stepped(tiny_models(seed=1), n=1, batch=1).world_bytes(0)
    other_game = Session(models=(*models, ActionSpec(game="builtin:other", buttons=SPEC.buttons)), dtype="fp32")
    other_game.reset(real_frames(2))
    return {"truncated": (data[: len(data) // 2], "truncated|not a readable"),
            "header cut": (data[:5], "not a readable"),
            "garbage": (bytes(range(256)) * 40, "not a readable"),
            "json not a world": (world_to_bytes(st)[:8] + b"{}" * 10, "not a readable|not a Reverie"),
            "not bytes": ("a string", "expected bytes"),
            "other config": (other_cfg, r"different model \(config differs in context_frames\)"),
            "other weights": (other_weights, "other weights"),
            "other game": (other_game.world_bytes(0), "builtin:other"),
            "session save-game": (good.state(), "not a Reverie world save-game"),
            "shape": (shaped, "'h_last' must be"),
            "dtype": (typed, "'frame_buf' must be"),
            "nan": (nan, "'k_cache' holds NaN"),
            "missing tensor": (missing, r"missing: \['valid'\]"),
            "position": ({**st, "position": -1}, "position")}


def test_bad_world_save_games_are_refused_and_change_nothing(models, tmp_path):
    s = stepped(models)
    s.close_world(2)
    before, live = everything(s), s.live
    for name, (blob, phrase) in blobs(models, tmp_path).items():
        with pytest.raises(SessionError, match=phrase):
            if isinstance(blob, (bytes, str)):
                s.load_world_bytes(1, blob)
            else:
                s.load_world(1, blob)
        after = everything(s)
        assert all(torch.equal(after[k], t) for k, t in before.items()), f"{name}: a slot changed"
        assert s.live.tolist() == live.tolist(), name
    with pytest.raises(SessionError, match="world slot"):
        s.load_world(B, s.state_world(0))
    with pytest.raises(SessionError, match="holds no world"):
        s.state_world(2)
    with pytest.raises(SessionError, match="missing.safetensors"):
        read_world(tmp_path / "missing.safetensors")


# ---- close_world -------------------------------------------------------------------------------------------------
def test_a_closed_slot_reaches_no_world(models):
    s = stepped(models)
    twin = s.fork()
    s.close_world(1)
    assert s.live.tolist() == [True, False, True, True] and twin.live.all()
    assert s.fork().live.tolist() == s.live.tolist()   # forks and state() keep the slots
    acts = random_actions(2 * W + 1, seed=13, batch=B)
    noisy = acts.copy()
    noisy[:, 1] = 1 - noisy[:, 1]    # whatever the closed slot is fed
    got_frames, got = rollout(s, noisy)
    want_frames, want = rollout(twin, acts)
    others = [0, 2, 3]
    assert np.array_equal(got_frames[:, others], want_frames[:, others]) and torch.equal(got[:, others],
                                                                                        want[:, others])
    s.reset_world(1, real_frames(2))   # the slot takes a world again
    assert s.live.all()


def test_a_session_starts_with_no_live_slots_and_steps_the_worlds_loaded_into_it(models):
    s = make(models, 3)
    assert s.live.tolist() == [False] * 3
    s.reset_world(1, real_frames(2), seed=4)
    assert s.live.tolist() == [False, True, False]
    alone = make(models, 1)
    alone.reset(real_frames(2), seed=4)
    acts = random_actions(W + 2, seed=2)
    torch.testing.assert_close(rollout(s, np.stack([acts] * 3, 1))[1][:, 1], rollout(alone, acts)[1][:, 0],
                               atol=LATENT_ATOL["torch"], rtol=0)


# ---- the shipped default model ----------------------------------------------------------------------------------
def test_default_model_world_reset_in_onnxruntime():
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'reverie[export]')")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the [play] extra)")
    from engine.runtime import DEFAULT_MODEL
    from export.prepare import prepare_backend

    def session(batch: int) -> Session:
        backend, graphs = prepare_backend(DEFAULT_MODEL, "onnxruntime", batch, quiet=True)
        return Session(DEFAULT_MODEL, backend=backend, graphs=graphs, batch=batch, threads=1)

    s, alone = session(2), session(1)
    s.reset(seed=1)
    null = np.zeros((3, 2, s.spec.size), np.float32)
    rollout(s, null)
    s.reset_world(0, seed=5)
    alone.reset(seed=5)
    acts = np.zeros((8, s.spec.size), np.float32)
    acts[:, 0] = 1
    got_frames, _ = rollout(s, np.stack([acts, acts], 1))
    want_frames, _ = rollout(alone, acts)
    assert close_frames(got_frames[:, 0], want_frames) >= PIXEL_SHARE
