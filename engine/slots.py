"""World slots: one world of a batched Session saved, loaded, primed alone or closed, the others left bit for bit.

    st = session.state_world(b)          # one world's save-game: CPU tensors plus metadata
    other.load_world(c, st)              # into any slot of any session of the same model, any batch size
    session.reset_world(b, frames)       # prime slot b alone (the checkpoint's start state when frames is None)
    session.close_world(b)               # the slot is empty; session.live says which slots hold a world
    data = session.world_bytes(b); other.load_world_bytes(c, data)   # the same as safetensors bytes (no pickle)

All worlds of a session share the ring KV cache's position (kv.count): they step in lockstep. A world saved at ring
position p and loaded at position q has moved in time by delta = q - p. Its ring slots are rolled by delta (frame j
sat in slot j mod W and now sits where frame j + delta goes), and its cached keys, stored after RoPE (Su et al. 2021),
are rotated by the time angle of delta: Rope3D's first `pt` rotary pairs of a head are time, integer wave numbers over
`time_period` frames, so rotating by delta mod period composes exactly with the angle a key was made at, and every
later query sees the distances it would have seen. The spatial pairs and the values do not change. The world's noise
seed and counter are its own (engine.noise), so it draws the noise it would have drawn: its frames are those it would
have made, to float rounding. A closed slot still computes in the batch from its cleared cache; rows of a batch never
mix, so nothing it computes reaches another world.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from engine.checkpoint import atomic_target
from engine.inputs import SessionError
from engine.knobs import MAX_SEED
from engine.runtime import Runtime

if TYPE_CHECKING:
    from engine.session import Session

WORLD_FORMAT = 1
WORLD_KIND = "world"         # beside a whole session's save-game (engine.savegame), which has no kind
MAX_HEADER_BYTES = 1 << 20   # a world's safetensors header: 8 small tensors and a config, far below this
FINGERPRINT_SAMPLES = 64     # values of each weight tensor hashed into the model fingerprint


def world_fields(s: Session) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Each tensor of a world's save-game: its shape and type (floats stored as float32, whatever the cache's)."""
    c, (L, _, H, S, hd) = s.cfg, s.kv.k.shape
    f32 = torch.float32
    return {"k_cache": ((L, H, S, hd), f32), "v_cache": ((L, H, S, hd), f32), "valid": ((s.kv.frames,), torch.bool),
            "seed": ((), torch.long), "counter": ((), torch.long), "h_last": ((c.tokens_per_frame, c.d_model), f32),
            "z_buf": ((c.latent_channels, c.latent_height, c.latent_width), f32),
            "frame_buf": (tuple(s.frame_shape), torch.uint8)}


def model_fingerprint(s: Session) -> str:
    """A short hash of the world model's weights (a few values of each tensor, rounded to bf16 so that one model placed
    in fp32 or bf16 hashes alike): a world from other weights of the same config is refused, not dreamt on."""
    h = hashlib.sha256()
    for name, t in sorted(s.wm.state_dict().items()):
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, max(flat.numel() - 1, 0), min(FINGERPRINT_SAMPLES, flat.numel()), device=flat.device)
        sample = flat[idx.long()].to(torch.bfloat16).float().cpu().numpy()
        h.update(f"{name}{tuple(t.shape)}".encode() + sample.tobytes())
    return h.hexdigest()[:16]


def one_world_runtime(rt: Runtime) -> Runtime:
    """A runtime for one world over the same loaded modules: the torch runner is batch-agnostic and shared; a graph
    backend's graphs have a fixed batch, so its worlds are primed by a torch runner over the same fp32 weights."""
    if rt.backend == "torch":
        return dataclasses.replace(rt, batch=1)
    from engine.runners import TorchRunner

    return dataclasses.replace(rt, batch=1, backend="torch",
                               runner=TorchRunner(rt.wm, rt.ae, rt.device, rt.dtype, kernels="reference"))


class WorldSlots:
    """The slot bookkeeping of one session: which slots are live, the one-world primer, the model's fingerprint."""

    def __init__(self, session: Session):
        self.session = session
        self.live = np.zeros(session.batch, dtype=bool)
        self.primer: Session | None = None   # a one-world session over the same weights, made on the first reset
        self.fingerprint: str | None = None

    def slot(self, b: Any) -> int:
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)) or not 0 <= b < self.session.batch:
            raise SessionError(f"world slot must be an integer in 0..{self.session.batch - 1}, got {b!r}")
        return int(b)

    def model_id(self) -> str:
        if self.fingerprint is None:
            self.fingerprint = model_fingerprint(self.session)
        return self.fingerprint

    # ---- one world out -------------------------------------------------------------------------------------------
    def state(self, b: int, device: torch.device | str = "cpu") -> dict[str, Any]:
        """Slot b's world as tensors on `device` plus metadata (Session.state_world)."""
        s, b = self.session, self.slot(b)
        if not self.live[b]:
            raise SessionError(f"world slot {b} holds no world (closed or never reset); nothing to save")
        s.finish()
        w, kv = s.world, s.world.kv
        parts = {"k_cache": kv.k[:, b], "v_cache": kv.v[:, b], "valid": kv.valid[b], "seed": w.seed[b],
                 "counter": w.counter[b], "h_last": w.h_last[b], "z_buf": w.z_buf[b], "frame_buf": w.frame_buf[b]}
        tensors = {k: t.detach().to(device, torch.float32 if t.is_floating_point() else t.dtype, copy=True).contiguous()
                   for k, t in parts.items()}
        return {"format": WORLD_FORMAT, "kind": WORLD_KIND, "game": s.spec.game, "config": s.wm.cfg.__dict__.copy(),
                "model": self.model_id(), "position": int(kv.count), "tensors": tensors}

    # ---- one world in ---------------------------------------------------------------------------------------------
    def check(self, state: Any) -> dict[str, torch.Tensor]:
        """The tensors of a world save-game that fits this session's model; SessionError (one line) otherwise."""
        s = self.session
        if not isinstance(state, dict) or state.get("format") != WORLD_FORMAT or state.get("kind") != WORLD_KIND:
            raise SessionError("not a Reverie world save-game (format or kind mismatch); pass Session.state_world() "
                               "or world_bytes() of a session of this model")
        if state.get("game") != s.spec.game:
            raise SessionError(f"this world is from a {state.get('game')!r} model; this one plays {s.spec.game!r}")
        config, mine = state.get("config"), s.wm.cfg.__dict__
        if config != mine:
            config = config if isinstance(config, dict) else {}
            diff = sorted(str(k) for k in set(mine) | set(config) if config.get(k) != mine.get(k))
            raise SessionError(f"this world is from a different model (config differs in {', '.join(diff)}); load it "
                               "into a session of the model it was saved with")
        if state.get("model") != self.model_id():
            raise SessionError(f"this world is from other weights of the same config (model {state.get('model')!r}, "
                               f"this session's {self.model_id()!r}); load it into the model it was saved with")
        pos = state.get("position")
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos <= MAX_SEED:
            raise SessionError(f"world save-game: position must be an integer in 0..{MAX_SEED}, got {pos!r}")
        tensors, fields = state.get("tensors"), world_fields(s)
        if not isinstance(tensors, dict) or set(tensors) != set(fields):
            got = set(tensors) if isinstance(tensors, dict) else set()
            raise SessionError(f"world save-game: tensors must be exactly {', '.join(fields)} (missing: "
                               f"{sorted(set(fields) - got)}, unknown: {sorted(map(str, got - set(fields)))})")
        for name, (shape, dtype) in fields.items():
            t = tensors[name]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
                got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
                raise SessionError(f"world save-game: '{name}' must be {shape} {dtype} for this model, got {got}")
            if dtype == torch.float32 and not bool(torch.isfinite(t).all()):
                raise SessionError(f"world save-game: '{name}' holds NaN or infinite values")
        if not 0 <= int(tensors["seed"]) <= MAX_SEED or int(tensors["counter"]) < 0:
            raise SessionError(f"world save-game: seed must be in 0..{MAX_SEED} and counter >= 0, got "
                               f"{int(tensors['seed'])} and {int(tensors['counter'])}")
        return tensors

    @torch.no_grad()
    def load(self, b: int, state: Any) -> None:
        """Put a saved world into slot b: ring rolled, keys re-rotated to this ring position (module docstring)."""
        s, b = self.session, self.slot(b)
        t = self.check(state)
        s.finish()   # a pending pass belongs to every world: run it before slot b changes under it
        w, kv, dev = s.world, s.world.kv, s.device
        delta = int(kv.count) - state["position"]
        shift = delta % kv.frames
        keys = rotate_time(t["k_cache"].to(dev), s.wm.rope, delta)
        kv.k[:, b].copy_(roll_frames(keys, shift, kv.frames))
        kv.v[:, b].copy_(roll_frames(t["v_cache"].to(dev), shift, kv.frames))
        valid = t["valid"].roll(shift)
        kv.valid[b].copy_(valid.to(dev))
        for name in ("seed", "counter", "h_last", "z_buf", "frame_buf"):
            getattr(w, name)[b].copy_(t[name].to(dev))
        if not bool(valid.all()):
            kv.mark_holes()
        self.live[b] = True
        s.primed = True

    def reset(self, b: int, frames: Any = None, actions: Any = None, seed: int | None = None) -> np.ndarray:
        """Prime slot b alone: a one-world session over the same weights primes it, then it is loaded into slot b."""
        s, b = self.session, self.slot(b)
        if self.primer is None:
            from engine.session import Session

            self.primer = Session(runtime=one_world_runtime(s.runtime), cuda_graph=False)
            self.primer.slots.fingerprint = self.model_id()   # the same modules: hashed once
        p = self.primer
        p.context_noise = s.context_noise   # priming corrupts the context at the session's level
        frame = p.reset(frames, actions, seed=[int(s.seed[b])] if seed is None else seed)
        self.load(b, p.slots.state(0, device=p.device))
        return frame

    def close(self, b: int) -> None:
        """Empty slot b: its cache and buffers cleared. It still computes in the batch; its frames reach no one. Its
        holes need no mask: what a closed world attends only shapes its own, ignored, frames."""
        s, b = self.session, self.slot(b)
        s.finish()
        w = s.world
        for t in (w.kv.k[:, b], w.kv.v[:, b], w.kv.valid[b], w.counter[b], w.h_last[b], w.z_buf[b], w.frame_buf[b]):
            t.zero_()
        self.live[b] = False


@torch.no_grad()
def rotate_time(keys: torch.Tensor, rope: Any, delta: int) -> torch.Tensor:
    """Keys (..., hd) made at time t, as if made at t + delta: each time pair rotated by delta's angle (float32)."""
    step = delta % rope.period
    if step == 0:
        return keys
    cos, sin = rope.t_cos[step].to(keys.device), rope.t_sin[step].to(keys.device)   # (pt,)
    pt, half = cos.shape[0], keys.shape[-1] // 2
    x1, x2 = keys[..., :pt].float(), keys[..., half:half + pt].float()             # (..., pt) each
    out = keys.clone()
    out[..., :pt] = x1 * cos - x2 * sin
    out[..., half:half + pt] = x1 * sin + x2 * cos
    return out


def roll_frames(cache: torch.Tensor, shift: int, frames: int) -> torch.Tensor:
    """One world's keys or values (L, H, W*N, hd) with its ring slots rolled forward by `shift`."""
    L, H, S, hd = cache.shape
    return cache.reshape(L, H, frames, S // frames, hd).roll(shift, dims=2).reshape(L, H, S, hd)


# ---- a world's save-game as safetensors bytes or a file: tensors plus string metadata, no pickle --------------------
def world_to_bytes(state: dict[str, Any]) -> bytes:
    """A state_world() dict as safetensors bytes."""
    meta = {"format": str(state["format"]), "kind": state["kind"], "game": state["game"],
            "config": json.dumps(state["config"]), "model": state["model"], "position": str(state["position"])}
    return save_safetensors({k: t.cpu().contiguous() for k, t in state["tensors"].items()}, metadata=meta)


def world_from_bytes(data: Any, where: str = "world save-game") -> dict[str, Any]:
    """Safetensors bytes back as a state_world() dict (unchecked: WorldSlots.check judges the fit); SessionError
    naming what is unreadable."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SessionError(f"{where}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n > min(len(data) - 8, MAX_HEADER_BYTES):
            raise ValueError(f"header of {n} bytes in {len(data)} bytes: truncated or not safetensors")
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
        config = json.loads(meta["config"])
        state = {"format": int(meta["format"]), "kind": meta["kind"], "game": meta["game"], "model": meta["model"],
                 "config": {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()},
                 "position": int(meta["position"]), "tensors": load_safetensors(data)}
    except KeyError as e:
        raise SessionError(f"{where}: not a Reverie world save-game (no {e} in its metadata)") from None
    except (SafetensorError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise SessionError(f"{where}: not a readable Reverie world save-game ({e}); pass the whole output of "
                           "world_bytes() or save_world()".replace("\n", " ")) from None
    return state


def write_world(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a state_world() dict to a .safetensors file atomically."""
    path = Path(path)
    with atomic_target(path) as tmp:
        tmp.write_bytes(world_to_bytes(state))
    return path


def read_world(path: str | os.PathLike) -> dict[str, Any]:
    """A world save-game file back as a state_world() dict; SessionError when unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SessionError(f"{path}: cannot read this world save-game ({e.strerror})") from None
    return world_from_bytes(data, str(path))

