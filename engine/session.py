"""engine.session.Session: the real-time world, one interface for play, eval, bench and the Gymnasium wrapper.

    s = Session("model.safetensors", device="cpu", steps=1)
    s.reset(frames, actions)        # prime the context from real frames (T, H, W, 3) uint8
    frame = s.step(action)          # (H, W, 3) uint8; batch > 1 gives (B, H, W, 3)
    save = s.state(); ...; s.load_state(save)   # a save-game: KV cache, noise counters, step count
    other = s.fork()                # an independent branch of the same world
    s.reset_world(b); s.load_world(b, other.state_world(0)); s.close_world(b)   # one world of the batch alone

Per frame: S head steps (1..4, changeable between frames) with classifier-free guidance as one batch of 2 (scale 1.0
skips the second half), one decode, then one backbone pass that appends the new frame to a ring-buffer KV cache of W
frames. The pieces, each in its own file:
  engine.runtime    the model loaded and placed, with the runner of its backend: torch (eager on CPU; on CUDA CUDA
                    graphs, or the Triton kernels of kernels/ with `kernels`), onnxruntime or tensorrt
  engine.step       the worlds' preallocated tensors and the three parts of a step over them
  engine.scheduler  when the parts run: captured, the backbone pass beside the decode (overlap), deferred, profiled
  engine.reference  the same rollout written plainly, the spec every runner is tested against
  engine.slots      world slots: one world of the batch saved, loaded, primed alone or closed, the others untouched
The session owns the rest, once for every runner: inputs, counter-based noise seeds (engine.noise: each world its
own seed and counter, so a batch of B equals B single runs), the knobs, save-games and forks.

The default backend, "auto", is the fastest one ready for the device: onnxruntime on CPU where it is installed and
the model's graphs are exported (`reverie export`; play and bench export first), torch otherwise.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import knobs
from engine.actions import ActionSpec
from engine.autoencoder import Autoencoder, frames_to_tensor
from engine.capture import StepTimes, usable_cores
from engine.checkpoint import Checkpoint
from engine.inputs import SessionError, actions_array, frames_tensor, reset_actions
from engine.knobs import MAX_SAMPLING_STEPS
from engine.kv_cache import RingKVCache
from engine.runners import default_backend as default_backend
from engine.runtime import DEFAULT_MODEL, Runtime
from engine.scheduler import StepScheduler
from engine.slots import WorldSlots, world_from_bytes, world_to_bytes, write_world
from engine.step import SEED_STRIDE, Sampler, StepParts, World, world_seeds
from engine.world_model import WorldModel

__all__ = ["DEFAULT_MODEL", "MAX_SAMPLING_STEPS", "SEED_STRIDE", "Runtime", "Session", "SessionError", "StepTimes",
           "default_backend"]
STATE_FORMAT = 1


class Session:
    """B worlds imagined by one model; see the module docstring.

    Public beside the methods: `runtime` (what forks share: spec, ae, wm, runner, backend, dtype, device, also
    mirrored here), `world` (engine.step.World; its tensors also read as kv, seed, counter, h_last, action_buf,
    guidance_buf, level_buf, z_buf, frame_buf), `parts` (engine.step.StepParts: research code may run a step its own
    way through them, eagerly) and `scheduler` (engine.scheduler.StepScheduler).
    """

    def __init__(self, checkpoint: str | os.PathLike | Checkpoint | None = None, backend: str = "auto",
                 device: str | torch.device = "cpu", batch: int | None = None, steps: int | None = None,
                 guidance: float | None = None, context_noise: float | None = None, seed: int = 0, dtype: str = "auto",
                 cuda_graph: bool = True, threads: int | None = None, profile: bool = False, game: str | None = None,
                 models: tuple[Autoencoder, WorldModel, ActionSpec] | None = None,
                 graphs: str | os.PathLike | None = None, kernels: str = "auto", runtime: Runtime | None = None):
        """Load the model (or take `models`; `runtime`: one already loaded, as forks share it), then B worlds over it.
        steps, guidance, context_noise: None takes the model's own run-time defaults."""
        seed = knobs.check_seed(seed)
        if runtime is None:
            runtime = Runtime.load(checkpoint, backend, device, 1 if batch is None else batch, dtype, threads, game,
                                   models, graphs, kernels)
        elif checkpoint is not None or models is not None or batch not in (None, runtime.batch):
            raise SessionError(f"Session(runtime=...) runs that runtime's model for its batch of {runtime.batch}; "
                               "pass no checkpoint, models or other batch with it")
        rt = self.runtime = runtime
        self.spec, self.ae, self.wm, self.cfg, self.runner = rt.spec, rt.ae, rt.wm, rt.wm.cfg, rt.runner
        self.backend, self.dtype, self.device, self.batch = rt.backend, rt.dtype, rt.device, rt.batch
        self.checkpoint, self.frame_shape = rt.checkpoint, rt.frame_shape
        self.world = World.allocate(self.cfg, self.batch, self.frame_shape, self.runner.cache_dtype, self.device, seed)
        self.parts = StepParts(self.runner, self.wm, self.world)
        self.knob_limits = {"steps": set(self.parts.schedule)}
        self.use_graphs = cuda_graph and self.backend == "torch" and self.device.type == "cuda"
        # onnxruntime releases the GIL: the backbone pass can run on a second core while this thread decodes
        self.scheduler = StepScheduler(self.parts, self.device, self.runner.capture if self.use_graphs else None,
                                       overlap=self.backend == "onnxruntime" and usable_cores() > 1, profile=profile)
        self.staging = None   # on CUDA, pinned host buffers: actions in and frames out copy without a pageable bounce
        if self.device.type == "cuda":
            self.staging = (torch.empty(self.batch, self.cfg.action_dim, pin_memory=True),
                            torch.empty(self.batch, *self.frame_shape, dtype=torch.uint8, pin_memory=True))
        self.primed, self.slots = False, WorldSlots(self)   # slots: which hold a world, one world's save-games
        self.steps = self.cfg.sampling_steps if steps is None else steps
        self.guidance = self.cfg.guidance if guidance is None else guidance
        self.context_noise = self.cfg.context_noise if context_noise is None else context_noise

    # ---- knobs: checked (engine.knobs), and mirrored into the device tensors a captured step reads ----------------
    steps = knobs.Knob(knobs.check_steps)
    guidance = knobs.Knob(knobs.check_guidance, "guidance_buf")
    context_noise = knobs.Knob(knobs.check_context_noise, "level_buf")
    overlap = property(lambda s: s.scheduler.overlap, lambda s, on: setattr(s.scheduler, "overlap", bool(on)),
                       doc="whether the backbone pass runs on a second thread beside the decode (engine.scheduler)")
    profile = property(lambda s: s.scheduler.profile, lambda s, on: setattr(s.scheduler, "profile", bool(on)),
                       doc="whether each part of a step is timed into `times`")
    times = property(lambda s: s.scheduler.times, doc="milliseconds of the last step's parts (when profiling)")

    # ---- the worlds' tensors (engine.step.World), to read: a captured step holds their addresses --------------------
    kv = property(lambda s: s.world.kv, doc="the ring KV cache (engine.kv_cache.RingKVCache); set_cache replaces it")
    seed = property(lambda s: s.world.seed, doc="(B,) each world's noise seed; reset(seed=...) sets them")
    counter = property(lambda s: s.world.counter, doc="(B,) frames appended since reset: the noise counter")
    h_last = property(lambda s: s.world.h_last, doc="(B, N, D) the backbone's output for the newest frame")
    action_buf = property(lambda s: s.world.action_buf, doc="(B, A) the action of the last step")
    guidance_buf = property(lambda s: s.world.guidance_buf, doc="(1,) the guidance scale the head reads")
    level_buf = property(lambda s: s.world.level_buf, doc="(B,) each world's context-noise level")
    z_buf = property(lambda s: s.world.z_buf, doc="(B, C, h, w) the newest generated latent")
    frame_buf = property(lambda s: s.world.frame_buf, doc="(B, H, W, 3) uint8 the newest frame")
    latent = property(lambda s: s.world.z_buf, doc="(B, C, h, w) the newest generated latent (rollouts compare it)")
    live = property(lambda s: s.slots.live.copy(), doc="(B,) bool numpy: the slots holding a world")

    # ---- playing ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, frames: Any = None, actions: Any = None, seed: int | Sequence[int] | None = None) -> np.ndarray:
        """Prime every world from real frames (T, H, W, 3) or (B, T, H, W, 3); actions[t] led to frames[t].

        With no frames, the checkpoint's built-in start state is used. `seed`: an int seeds world b with
        b + seed * 1_000_003; a sequence gives each world its own noise seed (None keeps the current seeds).
        """
        if frames is None:
            start = self.checkpoint.start_state() if self.checkpoint is not None else None
            if start is None:
                raise SessionError("this checkpoint has no built-in start state; pass reset(frames) with real frames")
            frames, actions = start[0].numpy(), start[1].numpy()
        fr = frames_tensor(frames, self.frame_shape, self.batch).to(self.device)   # (B, T, H, W, 3)
        B, T = fr.shape[:2]
        acts = reset_actions(self.spec, actions, B, T).to(self.device)            # (B, T, A)
        seeds = None if seed is None else self._seeds(seed)
        self.scheduler.drop()   # a pass still running would write into the tensors reset clears
        w = self.world
        if seeds is not None:
            w.seed.copy_(seeds)
        w.kv.clear()
        w.counter.zero_()
        with getattr(self.runner, "context", contextlib.nullcontext)():  # the torch runner's: no TF32 in fp32
            z = self.ae.encode(frames_to_tensor(fr.reshape(B * T, *self.frame_shape)))  # (B*T, C, h, w) float32
        z = z.reshape(B, T, *z.shape[1:])                                                # (B, T, C, h, w)
        for t in range(T):
            self.parts.backbone(z[:, t].contiguous(), acts[:, t].contiguous())
        self.primed = True
        self.slots.live[:] = True
        w.frame_buf.copy_(fr[:, -1])
        return self._out()

    def _seeds(self, seed: int | Sequence[int]) -> torch.Tensor:
        if isinstance(seed, (int, np.integer)):
            return world_seeds(knobs.check_seed(seed), self.batch, self.device)
        seeds = [knobs.check_seed(s, "seed of a world") for s in seed]
        if len(seeds) != self.batch:
            raise SessionError(f"seed: need one seed per world ({self.batch}), got {len(seeds)}")
        return torch.tensor(seeds, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def step(self, action: Any, defer_update: bool = False) -> np.ndarray:
        """Advance every world by one frame under `action`; returns (H, W, 3) uint8, or (B, H, W, 3).

        With `defer_update` the frame comes back before the backbone pass that appends it to the context; that pass
        runs in finish(), which a front end calls after showing the frame (the next step, state() and save() call it
        too). With `overlap` (onnxruntime, more than one core) the backbone pass runs on a second thread while this
        one decodes the frame: a plain step returns once both are done, a deferred one once the frame is decoded.
        """
        if not self.primed:
            raise SessionError("call reset(frames) before step()")
        action = torch.from_numpy(actions_array(self.spec, action, self.batch))
        self.scheduler.finish()   # a pending pass reads the previous action
        if self.staging is not None:
            self.staging[0].copy_(action)
            self.action_buf.copy_(self.staging[0], non_blocking=True)
        else:
            self.action_buf.copy_(action)
        self.scheduler.step(self.steps, self.guidance != 1.0, defer_update)
        return self._out()

    def finish(self) -> None:
        """Run the backbone pass a step(..., defer_update=True) left pending (nothing otherwise)."""
        self.scheduler.finish()

    def _out(self) -> np.ndarray:
        if self.staging is not None:
            self.staging[1].copy_(self.frame_buf, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            frames = self.staging[1].numpy().copy()
        else:
            frames = self.frame_buf.numpy().copy()  # the buffer is rewritten by the next step
        return frames[0] if self.batch == 1 else frames

    # ---- research hooks: a step computed another way, through seams that do not freeze the internals ----------------
    def set_sampler(self, sampler: Sampler | None) -> None:
        """Replace the head's Euler loop (e.g. another guidance): sampler(x, schedule, guided) -> tokens, from the noise
        tokens x (B, N, Dt) of engine.noise, the Euler steps [(tau, shortcut level, d)] as (1,) device tensors and
        whether guidance is on, to the next frame's tokens (B, N, Dt), which become `latent`. It reads the worlds
        through the public tensors (h_last, action_buf, guidance_buf). None restores the runner's loop; graphs captured
        with the old one are dropped. Forks do not inherit it."""
        self.parts.sampler = self.parts.euler if sampler is None else sampler
        self.scheduler.recapture()

    def set_cache(self, cache: RingKVCache) -> None:
        """Replace the ring KV cache with another of the same shape, e.g. a RingKVCache subclass whose mask() hides
        frames from some worlds (it reads the torch runner's reference kernels); its tensors become the worlds' state.
        Graphs captured with the old cache are dropped. Forks do not inherit it."""
        old = self.world.kv.k
        if not isinstance(cache, RingKVCache) or (cache.k.shape, cache.k.dtype, cache.k.device) != \
                (old.shape, old.dtype, old.device):
            raise SessionError(f"set_cache: need a RingKVCache with keys {tuple(old.shape)} {old.dtype} on "
                               f"{old.device}, got {type(cache).__name__}")
        self.scheduler.drop()
        self.world.kv = cache
        self.scheduler.recapture()

    # ---- save-games and branches ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The whole world as CPU tensors plus metadata: KV cache, ring validity, step count, noise counters."""
        self.finish()
        return {"format": STATE_FORMAT, "game": self.spec.game, "config": self.wm.cfg.__dict__.copy(),
                "batch": self.batch, "primed": self.primed, "live": self.slots.live.tolist(),
                "tensors": {k: t.detach().cpu().clone() for k, t in self.world.tensors().items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a state() of a session of the same model and batch."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise SessionError("not a Reverie session state (format mismatch)")
        if state.get("game") != self.spec.game:
            raise SessionError(f"this save is from a {state.get('game')!r} world; the model plays {self.spec.game!r}")
        if state.get("config") != self.wm.cfg.__dict__ or state.get("batch") != self.batch:
            raise SessionError("this save is from a different model or batch size; load it with the model and "
                               "--batch it was saved with")
        self.scheduler.drop()
        for k, t in self.world.tensors().items():
            t.copy_(state["tensors"][k].to(self.device))
        self.kv.sync_host()
        self.primed = bool(state["primed"])
        self.slots.live[:] = state.get("live", self.primed)   # a save-game file keeps no slots: all live if primed

    def save(self, path: str | os.PathLike) -> Path:
        """Write state() to a .safetensors save-game (atomically)."""
        from engine.savegame import write_state

        return write_state(path, self.state())

    def load(self, path: str | os.PathLike) -> None:
        """Restore a save-game written by save()."""
        from engine.savegame import read_state

        self.load_state(read_state(path))

    # ---- world slots (engine.slots): one world of the batch alone, the others untouched bit for bit ------------------
    def state_world(self, b: int) -> dict[str, Any]:
        """Slot b's world as CPU tensors plus metadata (format, game, config, model, the ring position saved at)."""
        return self.slots.state(b)

    def load_world(self, b: int, state: dict[str, Any]) -> None:
        """Put a state_world() of any session of this model into slot b (checked: SessionError, nothing changed)."""
        self.slots.load(b, state)

    def reset_world(self, b: int, frames: Any = None, actions: Any = None, seed: int | None = None) -> np.ndarray:
        """Prime slot b alone as reset() primes a one-world session (seed: None keeps slot b's); returns its frame."""
        return self.slots.reset(b, frames, actions, seed)

    def close_world(self, b: int) -> None:
        """Empty slot b: it still computes in the batch, and nothing it computes reaches a world."""
        self.slots.close(b)

    def world_bytes(self, b: int) -> bytes:
        """state_world(b) as safetensors bytes (what a client keeps)."""
        return world_to_bytes(self.state_world(b))

    def load_world_bytes(self, b: int, data: bytes) -> None:
        """load_world from world_bytes() output; a malformed blob raises SessionError and changes nothing."""
        self.load_world(b, world_from_bytes(data))

    def save_world(self, b: int, path: str | os.PathLike) -> Path:
        """Write state_world(b) to a .safetensors file (atomically); engine.slots.read_world reads it back."""
        return write_world(path, self.state_world(b))

    def fork(self, seed: int | Sequence[int] | None = None) -> Session:
        """An independent branch of this world: a new session over the same runtime (weights, runner) with this one's
        knobs and state; its noise continues from `seed` (as reset takes it) when given."""
        other = Session(runtime=self.runtime, steps=self.steps, guidance=self.guidance,
                        context_noise=self.context_noise, cuda_graph=self.use_graphs, profile=self.profile)
        other.overlap = self.overlap
        other.load_state(self.state())
        if seed is not None:
            other.seed.copy_(other._seeds(seed))
        return other

    def close(self) -> None:
        """Stop the overlap thread and free captured graphs (the session still steps, eagerly)."""
        self.scheduler.close()
