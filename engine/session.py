"""engine.session.Session: the real-time world, one interface for play, serve, eval, bench and the Gymnasium wrapper.

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
the model's graphs are exported (`reverie export`; play and bench export first), torch otherwise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.actions import ActionSpec
from engine.autoencoder import Autoencoder, frames_to_tensor
from engine.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_into
from engine.graphs import file_sha256, graph_folder, graphs_complete
from engine.inputs import SessionError, actions_array, frames_tensor, reset_actions
from engine.knobs import (
    MAX_SAMPLING_STEPS,
    check_batch,
    check_context_noise,
    check_guidance,
    check_seed,
    check_steps,
    check_threads,
)
from engine.kv_cache import RingKVCache
from engine.runners import BACKENDS, make_runner
from engine.runners import default_backend as default_backend
from engine.world_model import WorldModel, step_schedule

__all__ = ["DEFAULT_MODEL", "MAX_SAMPLING_STEPS", "Session", "SessionError", "StepTimes", "default_backend"]
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default.safetensors"
STATE_FORMAT = 1
SEED_STRIDE = 1_000_003   # world b of seed s draws from seed b + s * SEED_STRIDE


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS says, e.g. in a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class StepTimes:
    """Milliseconds of the parts of the last step (filled when the session was made with profile=True)."""

    head_ms: float = 0.0
    decode_ms: float = 0.0
    backbone_ms: float = 0.0


class Session:
    """B worlds imagined by one model; see the module docstring."""

    def __init__(self, checkpoint: str | os.PathLike | Checkpoint | None = None, backend: str = "auto",
                 device: str | torch.device = "cpu", batch: int = 1, steps: int | None = None,
                 guidance: float | None = None, context_noise: float | None = None, seed: int = 0, dtype: str = "auto",
                 cuda_graph: bool = True, threads: int | None = None, profile: bool = False, game: str | None = None,
                 models: tuple[Autoencoder, WorldModel, ActionSpec] | None = None,
                 graphs: str | os.PathLike | None = None):
        self.batch, seed = check_batch(batch), check_seed(seed)
        if threads is not None:
            torch.set_num_threads(check_threads(threads))
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SessionError("device 'cuda' asked for, but torch sees no CUDA device")
        if models is None:
            ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint or DEFAULT_MODEL)
            if not ckpt.has("wm"):
                raise CheckpointError(f"{ckpt.path}: a {ckpt.kind!r} checkpoint without world-model weights; "
                                      "pass the model.safetensors written by 'reverie train wm'")
            ae, wm = load_into(Autoencoder(ckpt.config.autoencoder), ckpt, "ae"), \
                load_into(WorldModel(ckpt.config.world_model), ckpt, "wm")
            spec, self.checkpoint = ckpt.action_spec, ckpt
        else:
            (ae, wm, spec), self.checkpoint = models, None
        if game is not None and game != spec.game:
            raise SessionError(f"the model was trained on {spec.game!r}, not {game!r}")
        self.backend, graphs = self._resolve_backend(backend, graphs)
        if dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise SessionError(f"dtype {dtype!r}: choose auto, fp32, bf16 or fp16")
        if dtype == "auto":  # exported graphs take float32 in and out
            dtype = "bf16" if self.device.type == "cuda" and self.backend == "torch" else "fp32"
        if dtype != "fp32" and self.backend != "torch":
            raise SessionError(f"backend {self.backend!r} takes float32 in and out (its precision is chosen at "
                               "export); leave dtype at auto or fp32")
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        self.spec: ActionSpec = spec
        self.cfg = wm.cfg
        # weights in the model precision; RoPE tables, latent statistics and the encoder stay float32. CPU
        # convolutions are slow in bf16, so the decoder runs in fp32 there.
        self.ae = ae.to(self.device).eval()
        self.ae.decoder.to(self.dtype if self.device.type == "cuda" else torch.float32)
        self.wm = wm.to(self.device).eval()
        self.wm.backbone.to(self.dtype)
        self.wm.head.to(self.dtype)
        for p in list(self.ae.parameters()) + list(self.wm.parameters()):
            p.requires_grad_(False)
        self.frame_shape = (ae.cfg.height, ae.cfg.width, 3)
        self.runner = make_runner(self.backend, self.wm, self.ae, self.device, self.dtype, graphs,
                                  threads or torch.get_num_threads())
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

    def _resolve_backend(self, backend: str, graphs: Any) -> tuple[str, Path | None]:
        """The backend to run and its graphs folder: given, or found in the cache by the checkpoint's sha256."""
        if backend != "auto" and backend not in BACKENDS:
            raise SessionError(f"backend {backend!r}: choose one of auto, {', '.join(BACKENDS)}")
        wanted = default_backend(self.device) if backend == "auto" else backend
        if wanted == "torch" or graphs is not None:
            return wanted, None if graphs is None else Path(graphs)
        path = getattr(self.checkpoint, "path", None)
        if wanted == "onnxruntime" and path is not None:
            folder = graph_folder(file_sha256(path), self.batch)
            if graphs_complete(folder, file_sha256(path), self.batch):
                return wanted, folder
        if backend == "auto":  # nothing exported yet: the torch runner needs nothing
            return "torch", None
        return wanted, None   # make_runner says how to export

    # ---- buffers: every one preallocated, so memory never grows and CUDA graphs can capture the step ------------
    def _alloc(self, seed: int) -> None:
        c, B, dev = self.cfg, self.batch, self.device
        self.kv = RingKVCache(c.backbone_layers, B, c.heads, c.context_frames, c.tokens_per_frame, c.head_dim,
                              self.runner.cache_dtype, dev)
        self.seed = torch.arange(B, dtype=torch.long, device=dev) + seed * SEED_STRIDE   # (B,)
        self.counter = torch.zeros(B, dtype=torch.long, device=dev)                     # (B,) frames drawn
        self.h_last = torch.zeros(B, c.tokens_per_frame, c.d_model, device=dev, dtype=self.runner.cache_dtype)
        self.action_buf = torch.zeros(B, c.action_dim, device=dev)
        self.guidance_buf = torch.ones(1, device=dev)
        self.level_buf = torch.zeros(B, device=dev)   # the context-noise level of every appended frame
        self.z_buf = torch.zeros(B, c.latent_channels, c.latent_height, c.latent_width, device=dev)
        self.frame_buf = torch.zeros(B, *self.frame_shape, dtype=torch.uint8, device=dev)
        # per sampling-step count: (tau, shortcut level, step size d) of each Euler step, as static device tensors
        self._schedule = {s: [(torch.full((1,), float(sum(2.0 ** -i for i in step_schedule(s, c.shortcut_levels)[:k])),
                                          device=dev), torch.full((1,), j, dtype=torch.long, device=dev),
                               torch.full((1,), 2.0 ** -j, device=dev))
                              for k, j in enumerate(step_schedule(s, c.shortcut_levels))]
                          for s in range(1, MAX_SAMPLING_STEPS + 1) if 2 ** (c.shortcut_levels - 1) >= s}
        self._staging = None
        if dev.type == "cuda":  # pinned host buffers: actions in and frames out copy without a pageable bounce
            self._staging = (torch.empty(B, c.action_dim, pin_memory=True),
                             torch.empty(B, *self.frame_shape, dtype=torch.uint8, pin_memory=True))
        self._graphs: dict[tuple, Any] = {}
        self.primed = self._pending = False  # _pending: a deferred backbone pass (step(defer_update=True)) to run
        self._inflight: Future | None = None  # that pass running beside the decode (overlap)

    # ---- knobs -------------------------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self._steps

    @steps.setter
    def steps(self, value: int) -> None:
        value = check_steps(value)
        if value not in self._schedule:
            raise SessionError(f"steps={value}: this model's head was trained for at most "
                               f"{max(self._schedule)} steps per frame")
        self._steps = value

    @property
    def guidance(self) -> float:
        return self._guidance

    @guidance.setter
    def guidance(self, value: float) -> None:
        self._guidance = check_guidance(value)
        self.guidance_buf.fill_(self._guidance)

    @property
    def context_noise(self) -> float:
        return self._context_noise

    @context_noise.setter
    def context_noise(self, value: float) -> None:
        self._context_noise = check_context_noise(value)
        self.level_buf.fill_(self._context_noise)

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
        if run.in_place_cache:
            feeds["write_index"] = kv.write_index()
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

    # ---- scheduling: captured parts, timing, the pass beside the decode ------------------------------------------
    def _part(self, key: tuple, fn: Callable[[], None], appends: bool = False) -> None:
        """Run fn; on CUDA replay its CUDA graph (captured on first use, all step counts and guidance modes at once,
        so that changing them in play never stalls a frame)."""
        if not self.use_graphs:
            return fn()
        if key not in self._graphs:
            saved = {k: t.clone() for k, t in self._tensors().items()}, self.kv.appended
            for k, f in self._variants(key[0]).items():
                self._graphs.setdefault(k, self.runner.capture(f))
            for k, t in self._tensors().items():  # warm-up and capture advanced the world: undo it on the device
                t.copy_(saved[0][k])
            self.kv.appended = saved[1]
        self._graphs[key].replay()
        if appends:  # a replay runs no Python: the host's count of appended frames follows here
            self.kv.appended += 1

    def _variants(self, kind: str) -> dict[tuple, Callable[[], None]]:
        """Every captured function of a kind: per step count and guidance mode, per ring state (filling, full)."""
        def bb(full: bool) -> None:
            self._backbone(self.z_buf, self.action_buf, full)

        out: dict[tuple, Callable[[], None]] = {}
        for s in self._schedule:
            for g in (False, True):
                out[("head", s, g)] = lambda s=s, g=g: self._head(s, g)
                out[("head_decode", s, g)] = lambda s=s, g=g: (self._head(s, g), self._decode())
                for f in (False, True):
                    out[("step", s, g, f)] = lambda s=s, g=g, f=f: (self._head(s, g), self._decode(), bb(f))
        out[("decode",)] = self._decode
        for f in (False, True):
            out[("backbone", f)] = lambda f=f: bb(f)
        group = {"head": ("head",), "decode": ("decode",), "backbone": ("backbone",),
                 "head_decode": ("head_decode", "backbone"), "step": ("step",)}[kind]
        return {k: f for k, f in out.items() if k[0] in group}

    def _timed(self, name: str, key: tuple, fn: Callable[[], None], appends: bool = False) -> None:
        """_part, timed into `times` when profiling (CUDA events on GPU: kernels, not launches)."""
        if not self.profile:
            return self._part(key, fn, appends)
        if self.device.type == "cuda":
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            ev[0].record()
            self._part(key, fn, appends)
            ev[1].record()
            ev[1].synchronize()
            ms = ev[0].elapsed_time(ev[1])
        else:
            t0 = time.perf_counter()
            self._part(key, fn, appends)
            ms = (time.perf_counter() - t0) * 1e3
        setattr(self.times, f"{name}_ms", ms)

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
        z = self.ae.encode(frames_to_tensor(fr.reshape(B * T, *self.frame_shape)))  # (B*T, C, h, w) float32
        z = z.reshape(B, T, *z.shape[1:])
        for t in range(T):
            self._backbone(z[:, t].contiguous(), acts[:, t].contiguous())
        self.primed = True
        self.frame_buf.copy_(fr[:, -1])
        return self._out()

    def _seeds(self, seed: int | Sequence[int]) -> torch.Tensor:
        if isinstance(seed, (int, np.integer)):
            return torch.arange(self.batch, device=self.device) + check_seed(seed) * SEED_STRIDE
        seeds = [check_seed(s, "seed of a world") for s in seed]
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
        self._graphs.clear()
