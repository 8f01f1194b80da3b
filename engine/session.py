"""engine.session.Session: the real-time world, one interface for play, eval, bench and the Gymnasium wrapper.

    s = Session("model.safetensors", device="cpu", steps=1)
    s.reset(frames, actions)        # prime the context from real frames (T, H, W, 3) uint8
    frame = s.step(action)          # (H, W, 3) uint8; batch > 1 gives (B, H, W, 3)
    save = s.state(); ...; s.load_state(save)   # a save-game: KV cache, noise counters, step count
    other = s.fork()                # an independent branch of the same world

Per frame: S head steps (1..4, changeable between frames) with classifier-free guidance as one batch of 2 (scale 1.0
skips the second half), one decode, then one backbone pass that appends the new frame to a ring-buffer KV cache of W
frames (engine.kv_cache). The three parts are the graphs of engine.graphs, run by a runner (engine.runners): torch
(eager on CPU; on CUDA each step one CUDA-graph replay), onnxruntime (the exported graphs, CPU) or tensorrt (CUDA).
The session owns what lies between them, once for every runner: the ring, counter-based noise (engine.noise: each
world its own seed and counter, so a batch of B equals B single runs), the Euler loop, guidance, save-games, forks.

The default backend, "auto", is the fastest one ready for the device: onnxruntime on CPU where it is installed and
the model's graphs are exported (`reverie export`; play and bench export first), torch otherwise. The torch runner's
`kernels` ("auto": the fused Triton kernels of kernels/ on CUDA where Triton imports, the PyTorch graph modules
elsewhere; "triton"; "reference") choose how its step is computed; the frames agree within float tolerance.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import knobs
from engine.actions import ActionSpec
from engine.autoencoder import Autoencoder, frames_to_tensor
from engine.capture import StepCapture, StepTimes, timed, usable_cores
from engine.checkpoint import Checkpoint, load_checkpoint, load_world_model
from engine.inputs import SessionError, actions_array, frames_tensor, reset_actions
from engine.knobs import MAX_SAMPLING_STEPS
from engine.kv_cache import RingKVCache
from engine.runners import default_backend as default_backend
from engine.runners import make_runner, place_models, resolve_backend, resolve_dtype
from engine.world_model import WorldModel, euler_schedule

__all__ = ["DEFAULT_MODEL", "MAX_SAMPLING_STEPS", "Session", "SessionError", "StepTimes", "default_backend"]
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default.safetensors"
STATE_FORMAT = 1
SEED_STRIDE = 1_000_003   # world b of seed s draws from seed b + s * SEED_STRIDE


class Session:
    """B worlds imagined by one model; see the module docstring."""

    def __init__(self, checkpoint: str | os.PathLike | Checkpoint | None = None, backend: str = "auto",
                 device: str | torch.device = "cpu", batch: int = 1, steps: int | None = None,
                 guidance: float | None = None, context_noise: float | None = None, seed: int = 0, dtype: str = "auto",
                 cuda_graph: bool = True, threads: int | None = None, profile: bool = False, game: str | None = None,
                 models: tuple[Autoencoder, WorldModel, ActionSpec] | None = None,
                 graphs: str | os.PathLike | None = None, kernels: str = "auto"):
        self.batch, seed = knobs.check_batch(batch), knobs.check_seed(seed)
        if threads is not None:
            torch.set_num_threads(knobs.check_threads(threads))
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SessionError("device 'cuda' asked for, but torch sees no CUDA device")
        if models is None:
            ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint or DEFAULT_MODEL)
            (ae, wm), spec, self.checkpoint = load_world_model(ckpt), ckpt.action_spec, ckpt
        else:
            (ae, wm, spec), self.checkpoint = models, None
        if game is not None and game != spec.game:
            raise SessionError(f"the model was trained on {spec.game!r}, not {game!r}")
        if kernels == "triton" and backend == "auto":
            backend = "torch"   # the kernels are the torch runner's
        self.backend, graphs = resolve_backend(backend, self.device, getattr(self.checkpoint, 'path', None),
                                               self.batch, graphs)
        self.dtype = resolve_dtype(dtype, self.backend, self.device)
        self.spec: ActionSpec = spec
        self.cfg = wm.cfg
        self.ae, self.wm = place_models(ae, wm, self.device, self.dtype)
        self.frame_shape = (ae.cfg.height, ae.cfg.width, 3)
        self.runner = make_runner(self.backend, self.wm, self.ae, self.device, self.dtype, graphs,
                                  threads or torch.get_num_threads(), kernels)
        self.use_graphs = cuda_graph and self.backend == "torch" and self.device.type == "cuda"
        # onnxruntime releases the GIL: the backbone pass can run on a second core while this thread decodes
        self.overlap = self.backend == "onnxruntime" and usable_cores() > 1
        self.profile, self.times = profile, StepTimes()
        self._executor: ThreadPoolExecutor | None = None
        self._alloc(seed)
        # None: the model's own run-time defaults (what `reverie eval --write-model` measured it with)
        self.steps = self.cfg.sampling_steps if steps is None else steps
        self.guidance = self.cfg.guidance if guidance is None else guidance
        self.context_noise = self.cfg.context_noise if context_noise is None else context_noise

    # ---- buffers: every one preallocated, so memory never grows and CUDA graphs can capture the step ------------
    def _alloc(self, seed: int) -> None:
        c, B, dev = self.cfg, self.batch, self.device
        self.kv = RingKVCache(c.backbone_layers, B, c.heads, c.context_frames, c.tokens_per_frame, c.head_dim,
                              self.runner.cache_dtype, dev)
        self.seed = torch.arange(B, dtype=torch.long, device=dev) + seed * SEED_STRIDE   # (B,)
        self.counter = torch.zeros(B, dtype=torch.long, device=dev)                     # (B,) frames drawn
        self.h_last = torch.zeros(B, c.tokens_per_frame, c.d_model, device=dev)
        self.action_buf = torch.zeros(B, c.action_dim, device=dev)
        self.guidance_buf = torch.ones(1, device=dev)
        self.level_buf = torch.zeros(B, device=dev)   # the context-noise level of every appended frame
        self.z_buf = torch.zeros(B, c.latent_channels, c.latent_height, c.latent_width, device=dev)
        self.frame_buf = torch.zeros(B, *self.frame_shape, dtype=torch.uint8, device=dev)
        # per sampling-step count: (tau, shortcut level, step size d) of each Euler step, as static device tensors
        self._schedule = {s: [tuple(torch.tensor([v], device=dev) for v in e)
                              for e in euler_schedule(s, c.shortcut_levels)]
                          for s in range(1, MAX_SAMPLING_STEPS + 1) if 2 ** (c.shortcut_levels - 1) >= s}
        self.knob_limits = {"steps": set(self._schedule)}
        self._staging = None
        if dev.type == "cuda":  # pinned host buffers: actions in and frames out copy without a pageable bounce
            self._staging = (torch.empty(B, c.action_dim, pin_memory=True),
                             torch.empty(B, *self.frame_shape, dtype=torch.uint8, pin_memory=True))
        self._capture = StepCapture(self.runner.capture, self._schedule, self._head, self._decode,
                                    lambda full: self._backbone(self.z_buf, self.action_buf, full),
                                    self._tensors) if self.use_graphs else None
        self.primed = self._pending = False  # _pending: a deferred backbone pass (step(defer_update=True)) to run
        self._inflight: Future | None = None  # that pass running beside the decode (overlap)

    # ---- knobs: checked (engine.knobs), and mirrored into the device buffers a captured step reads --------------
    steps = knobs.Knob(knobs.check_steps)
    guidance = knobs.Knob(knobs.check_guidance, "guidance_buf")
    context_noise = knobs.Knob(knobs.check_context_noise, "level_buf")

    # ---- the three parts of a step, over the session's buffers --------------------------------------------------
    def _backbone(self, z: torch.Tensor, actions: torch.Tensor, full: bool | None = None) -> None:
        """Backbone pass over a new frame's latent z (B, C, h, w): append it to the ring, update h_last. `full`: whether
        the ring is full (a captured pass is captured for one of the two)."""
        kv, run = self.kv, self.runner
        noise = run.noise(self.seed, self.counter, tuple(z.shape[1:]), 1)
        cos, sin = self.wm.rope.frames(kv.count.reshape(1))  # (1, N, hd/2)
        mask = kv.mask(with_next=run.in_place_cache, full=kv.full if full is None else full)
        feeds = {"z": z, "noise": noise, "actions": actions, "level": self.level_buf, "cos": cos[0], "sin": sin[0],
                 "k_cache": kv.k, "v_cache": kv.v, "mask": mask}
        if run.in_place_cache:   # the fused step reads the ring's validity itself (kernels.ring_attention)
            feeds.update(write_index=kv.write_index(), valid=None if mask is None else kv.valid)
        h, k_new, v_new = run.run("backbone", feeds)
        kv.append(*((None, None) if run.in_place_cache else (k_new, v_new)))
        self.h_last.copy_(h)
        self.counter.add_(1)

    def _head(self, steps: int, cfg_on: bool) -> None:
        """Sample the next latent into z_buf: `steps` Euler steps of the head from counter-based noise."""
        c = self.cfg
        x = self.runner.noise(self.seed, self.counter, (c.tokens_per_frame, c.token_dim), 0)
        feeds = {"h": self.h_last, "actions": self.action_buf, "guidance": self.guidance_buf}
        for tau, level, d in self._schedule[steps]:
            (x,) = self.runner.run("head_cfg" if cfg_on else "head", {**feeds, "x": x, "tau": tau, "level": level,
                                                                       "d": d})
        self.z_buf.copy_(self.wm.denormalize(self.wm.unpatchify(x)))

    def _decode(self) -> None:
        (frames,) = self.runner.run("decode", {"z": self.z_buf})
        self.frame_buf.copy_(frames)

    # ---- scheduling: captured parts (engine.capture), timing, the pass beside the decode -------------------------
    def _part(self, key: tuple, fn: Callable[[], None], appends: bool = False) -> None:
        """Run fn; on CUDA replay its graph instead. A replay runs no Python, so the host's count of appended frames
        follows here."""
        if self._capture is None:
            return fn()
        appended = self.kv.appended   # the warm-ups of a first capture append too; the device state is restored
        self._capture.replay(key)
        self.kv.appended = appended + appends

    def _timed(self, name: str, key: tuple, fn: Callable[[], None], appends: bool = False) -> None:
        """_part, timed into `times` when profiling."""
        if not self.profile:
            return self._part(key, fn, appends)
        setattr(self.times, f"{name}_ms", timed(self.device, lambda: self._part(key, fn, appends)))

    @torch.no_grad()   # grad mode is per thread: the pass on the overlap thread needs its own
    def _backbone_pass(self) -> None:
        full = self.kv.full
        self._timed("backbone", ("backbone", full), lambda: self._backbone(self.z_buf, self.action_buf, full), True)

    def _wait_backbone(self, discard: bool = False) -> None:
        """Wait for a backbone pass running beside the decode; its error is raised here unless the caller is about
        to overwrite what it wrote (`discard`)."""
        fut, self._inflight = self._inflight, None
        error = fut.exception() if fut is not None else None
        if error is not None and not discard:
            raise error

    # ---- public API ----------------------------------------------------------------------------------------------
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
        fr = frames_tensor(frames, self.frame_shape, self.batch).to(self.device)
        B, T = fr.shape[:2]
        acts = reset_actions(self.spec, actions, B, T).to(self.device)
        seeds = None if seed is None else self._seeds(seed)
        self._wait_backbone(discard=True)   # a pass still running would write into the buffers reset clears
        if seeds is not None:
            self.seed.copy_(seeds)
        self._pending = False
        self.kv.clear()
        self.counter.zero_()
        with getattr(self.runner, "context", contextlib.nullcontext)():  # the torch runner's: no TF32 in fp32
            z = self.ae.encode(frames_to_tensor(fr.reshape(B * T, *self.frame_shape)))  # (B*T, C, h, w) float32
        z = z.reshape(B, T, *z.shape[1:])
        for t in range(T):
            self._backbone(z[:, t].contiguous(), acts[:, t].contiguous())
        self.primed = True
        self.frame_buf.copy_(fr[:, -1])
        return self._out()

    def _seeds(self, seed: int | Sequence[int]) -> torch.Tensor:
        if isinstance(seed, (int, np.integer)):
            return torch.arange(self.batch, device=self.device) + knobs.check_seed(seed) * SEED_STRIDE
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
        self.finish()
        if self._staging is not None:
            self._staging[0].copy_(action)
            self.action_buf.copy_(self._staging[0], non_blocking=True)
        else:
            self.action_buf.copy_(action)
        s, g = self._steps, self._guidance != 1.0
        if self.overlap and (defer_update or not self.profile):   # a profiled plain step keeps the parts apart
            self._timed("head", ("head", s, g), lambda: self._head(s, g))
            self._executor = self._executor or ThreadPoolExecutor(1, thread_name_prefix="reverie-backbone")
            self._inflight = self._executor.submit(self._backbone_pass)
            self._timed("decode", ("decode",), self._decode)
            if not defer_update:
                self._wait_backbone()
        elif self.profile:
            self._timed("head", ("head", s, g), lambda: self._head(s, g))
            self._timed("decode", ("decode",), self._decode)
            if not defer_update:
                self._backbone_pass()
        elif defer_update:
            self._part(("head_decode", s, g), lambda: (self._head(s, g), self._decode()))
        else:
            f = self.kv.full
            self._part(("step", s, g, f),
                       lambda: (self._head(s, g), self._decode(), self._backbone(self.z_buf, self.action_buf, f)), True)
        self._pending = defer_update
        return self._out()

    @torch.no_grad()
    def finish(self) -> None:
        """Run the backbone pass a step(..., defer_update=True) left pending (nothing otherwise)."""
        if not self._pending:
            return
        self._pending = False
        if self._inflight is not None:
            self._wait_backbone()
        else:
            self._backbone_pass()

    def _out(self) -> np.ndarray:
        if self._staging is not None:
            self._staging[1].copy_(self.frame_buf, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            frames = self._staging[1].numpy().copy()
        else:
            frames = self.frame_buf.numpy().copy()  # the buffer is rewritten by the next step
        return frames[0] if self.batch == 1 else frames

    @property
    def latent(self) -> torch.Tensor:
        """The latest generated latent (B, C, h, w) (tests compare rollouts on it)."""
        return self.z_buf

    # ---- save-games and branches ------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        """The world's state tensors by their save-game names."""
        kv = self.kv
        return {"k_cache": kv.k, "v_cache": kv.v, "valid": kv.valid, "frame_count": kv.count, "seed": self.seed,
                "counter": self.counter, "h_last": self.h_last, "frame_buf": self.frame_buf, "z_buf": self.z_buf}

    def state(self) -> dict[str, Any]:
        """The whole world as CPU tensors plus metadata: KV cache, ring validity, step count, noise counters."""
        self.finish()
        return {"format": STATE_FORMAT, "game": self.spec.game, "config": self.wm.cfg.__dict__.copy(),
                "batch": self.batch, "primed": self.primed,
                "tensors": {k: t.detach().cpu().clone() for k, t in self._tensors().items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a state() of a session of the same model and batch."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise SessionError("not a Reverie session state (format mismatch)")
        if state.get("game") != self.spec.game:
            raise SessionError(f"this save is from a {state.get('game')!r} world; the model plays {self.spec.game!r}")
        if state.get("config") != self.wm.cfg.__dict__ or state.get("batch") != self.batch:
            raise SessionError("this save is from a different model or batch size; load it with the model and "
                               "--batch it was saved with")
        self._wait_backbone(discard=True)
        for k, t in self._tensors().items():
            t.copy_(state["tensors"][k].to(self.device))
        self.kv.appended = int(self.kv.count)
        self.primed = bool(state["primed"])
        self._pending = False

    def save(self, path: str | os.PathLike) -> Path:
        """Write state() to a .safetensors save-game (atomically)."""
        from engine.savegame import write_state

        return write_state(path, self.state())

    def load(self, path: str | os.PathLike) -> None:
        """Restore a save-game written by save()."""
        from engine.savegame import read_state

        self.load_state(read_state(path))

    def fork(self, seed: int | None = None) -> Session:
        """An independent copy of this world (sharing weights and runner) whose noise continues from `seed`."""
        other = Session.__new__(Session)
        other.__dict__.update(self.__dict__)
        other._executor, other.times = None, StepTimes()
        other._alloc(0)
        other.guidance, other.context_noise = self.guidance, self.context_noise
        other.load_state(self.state())
        if seed is not None:
            other.seed.copy_(other._seeds(seed))
        return other

    def close(self) -> None:
        self._wait_backbone(discard=True)
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        self._capture = None
