"""engine.Session: the real-time world, one interface for play, serve, eval, bench and the Gymnasium wrapper.

    s = Session("model.safetensors", device="cpu", steps=1)
    s.reset(frames, actions)        # prime the context from real frames (T, H, W, 3) uint8
    frame = s.step(action)          # (H, W, 3) uint8; batch > 1 gives (B, H, W, 3)
    save = s.state(); ...; s.load_state(save)   # a save-game: KV cache, noise counters, step count
    other = s.fork()                # an independent branch of the same world

Per frame: S head steps (1..4, changeable between frames) with classifier-free guidance as one batch of 2 (scale
1.0 skips the second half), one decode, then one backbone pass that appends the new frame to a ring-buffer KV
cache of W frames. Every buffer is preallocated and every shape static, so memory does not grow with play time and
on CUDA each part runs as a captured CUDA graph with no host sync inside. Noise is counter-based
(engine.noise): each world has its own seed and counter, so a batch of B equals B single runs.

Backends: "torch" (eager on CPU, CUDA graphs on GPU), "onnxruntime" (CPU: the three parts as exported ONNX graphs,
engine.ort_runtime; about twice the torch step's speed on a small CPU), "tensorrt" (CUDA: engines built from the same
graphs, engine.trt_runtime), "auto" (onnxruntime on CPU where installed, else torch). The ring cache, masks, noise
and the Euler loop stay in torch for all of them, so save-games and forks work the same everywhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.actions import ActionSpec, ActionSpecError
from engine.autoencoder import Autoencoder, frames_to_tensor, tensor_to_frames
from engine.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_into
from engine.noise import counter_normal, counter_normal_np
from engine.world_model import WorldModel, step_schedule

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default.safetensors"
STATE_FORMAT = 1
MAX_SAMPLING_STEPS = 4
BACKENDS = ("torch", "onnxruntime", "tensorrt")


def default_backend(device: str | torch.device = "cpu") -> str:
    """The fastest backend available for a device: ONNX Runtime on CPU where installed, else torch."""
    if torch.device(device).type != "cpu":
        return "torch"
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


class SessionError(ValueError):
    """A bad input to the session: wrong shapes, unknown buttons, another game's state."""


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

    def __init__(self, checkpoint: str | os.PathLike | Checkpoint | None = None, backend: str = "torch",
                 device: str | torch.device = "cpu", batch: int = 1, steps: int | None = None,
                 guidance: float | None = None,
                 context_noise: float | None = None, seed: int = 0, dtype: str = "auto", cuda_graph: bool = True,
                 threads: int | None = None, profile: bool = False, game: str | None = None,
                 models: tuple[Autoencoder, WorldModel, ActionSpec] | None = None):
        if backend == "auto":
            backend = default_backend(device)
        if backend not in BACKENDS:
            raise SessionError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.backend = backend
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SessionError("device 'cuda' asked for, but torch sees no CUDA device")
        if models is None:
            ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint or DEFAULT_MODEL)
            if not ckpt.has("wm"):
                raise CheckpointError(f"{ckpt.path}: a {ckpt.kind!r} checkpoint without world-model weights; "
                                      "pass the model.safetensors written by 'reverie train wm'")
            ae = load_into(Autoencoder(ckpt.config.autoencoder), ckpt, "ae")
            wm = load_into(WorldModel(ckpt.config.world_model), ckpt, "wm")
            spec, self.checkpoint = ckpt.action_spec, ckpt
        else:
            ae, wm, spec = models
            self.checkpoint = None
        if game is not None and game != spec.game:
            raise SessionError(f"the model was trained on {spec.game!r}, not {game!r}")
        if batch < 1:
            raise SessionError(f"batch must be >= 1, got {batch}")
        self.spec: ActionSpec = spec
        self.cfg = wm.cfg
        self.batch = batch
        if dtype == "auto":  # exported graphs take float32 in and out (TensorRT picks fp16 kernels inside)
            dtype = "bf16" if self.device.type == "cuda" and backend == "torch" else "fp32"
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        dec_dtype = self.dtype if self.device.type == "cuda" else torch.float32  # CPU convs are slow in bf16
        self.ae = ae.to(self.device).eval()
        self.ae.decoder.to(dec_dtype)
        self._memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.ae.decoder.to(memory_format=self._memory_format)  # oneDNN convolutions are faster channels-last
        self.wm = wm.to(self.device, self.dtype).eval()
        for p in list(self.ae.parameters()) + list(self.wm.parameters()):
            p.requires_grad_(False)
        self.frame_shape = (ae.cfg.height, ae.cfg.width, 3)
        self.context_noise = float(self.cfg.context_noise if context_noise is None else context_noise)
        # None: the model's own run-time defaults (what `reverie eval --write-model` measured it with)
        self._steps = self._check_steps(self.cfg.sampling_steps if steps is None else steps)
        self.guidance = float(self.cfg.guidance if guidance is None else guidance)
        self.profile = profile
        self.times = StepTimes()
        # onnxruntime releases the GIL, so a deferred step can run the backbone pass on a second core while this
        # thread decodes the frame: both read only the new latent (see step())
        self.overlap = backend == "onnxruntime" and usable_cores() > 1
        self._pool: ThreadPoolExecutor | None = None
        self.use_graphs = cuda_graph and self.device.type == "cuda"
        self._graphs: dict[Any, Any] = {}
        self._runner: Any = None  # the exported graphs' runtime (onnxruntime or TensorRT), None on torch
        if backend == "onnxruntime":
            self._runner = self._ort_runner(threads)
        elif backend == "tensorrt":
            self._runner = self._trt_runner()
        self._alloc(seed)

    def _trt_runner(self):
        from engine.trt_runtime import TrtRunner, TrtUnavailable

        if self.checkpoint is None or self.checkpoint.path is None:
            raise SessionError("backend 'tensorrt' needs a checkpoint file to export; models given in memory run "
                               "on the torch backend")
        if self.dtype != torch.float32:
            raise SessionError("backend 'tensorrt' takes float32 in and out (it runs fp16 kernels inside); leave "
                               "dtype at auto or fp32")
        self.use_graphs = False
        try:
            return TrtRunner(self.checkpoint, self.batch, self.device, precision="fp16")
        except TrtUnavailable as e:
            raise SessionError(str(e)) from None

    def _ort_runner(self, threads: int | None):
        from engine.ort_runtime import OrtRunner, OrtUnavailable

        if self.device.type != "cpu":
            raise SessionError("backend 'onnxruntime' runs on the CPU here; on CUDA use --backend torch (CUDA graphs)")
        if self.dtype != torch.float32:
            raise SessionError("backend 'onnxruntime' runs float32; leave dtype at auto or fp32")
        if self.checkpoint is None or self.checkpoint.path is None:
            raise SessionError("backend 'onnxruntime' needs a checkpoint file to export; models given in memory run "
                               "on the torch backend")
        try:
            return OrtRunner(self.checkpoint, self.batch, threads or torch.get_num_threads())
        except OrtUnavailable as e:
            raise SessionError(str(e)) from None

    # ---- buffers ---------------------------------------------------------------------------------------------
    def _alloc(self, seed: int) -> None:
        c, B, dev = self.cfg, self.batch, self.device
        N, W = c.tokens_per_frame, c.context_frames
        shape = (c.backbone_layers, B, c.heads, W * N, c.head_dim)
        self.k_cache = torch.zeros(shape, device=dev, dtype=self.dtype)   # (L, B, H, W*N, hd)
        self.v_cache = torch.zeros(shape, device=dev, dtype=self.dtype)
        self.valid = torch.zeros(B, W, dtype=torch.bool, device=dev)      # which ring slots hold a frame
        self.frame_count = torch.zeros((), dtype=torch.long, device=dev)  # frames appended since reset
        self.seed = torch.arange(B, dtype=torch.long, device=dev) + seed * 1_000_003  # see _seeds
        self.counter = torch.zeros(B, dtype=torch.long, device=dev)
        self.h_last = torch.zeros(B, N, c.d_model, device=dev, dtype=self.dtype)
        self.action_buf = torch.zeros(B, c.action_dim, device=dev, dtype=self.dtype)
        self.guidance_buf = torch.ones((), device=dev, dtype=self.dtype)
        self.z_buf = torch.zeros(B, c.latent_channels, c.latent_height, c.latent_width, device=dev, dtype=self.dtype)
        self.frame_buf = torch.zeros(B, *self.frame_shape, dtype=torch.uint8, device=dev)
        self._token_offsets = torch.arange(N, device=dev)
        self.primed = False
        self._pending = False  # a deferred backbone pass (step(..., defer_update=True)) has not run yet
        self._inflight: Future | None = None  # that pass running beside the decode (overlap)

    def _seeds(self, seed: int | Sequence[int]) -> torch.Tensor:
        if isinstance(seed, (int, np.integer)):
            return torch.arange(self.batch, device=self.device) + int(seed) * 1_000_003
        seeds = torch.as_tensor(list(seed), dtype=torch.long, device=self.device)
        if seeds.shape != (self.batch,):
            raise SessionError(f"seed: need one seed per world ({self.batch}), got {len(seeds)}")
        return seeds

    @property
    def steps(self) -> int:
        return self._steps

    @steps.setter
    def steps(self, value: int) -> None:
        self._steps = self._check_steps(value)

    def _check_steps(self, steps: int) -> int:
        if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_SAMPLING_STEPS:
            raise SessionError(f"steps must be in 1..{MAX_SAMPLING_STEPS} head steps per frame, got {steps!r}")
        try:
            step_schedule(int(steps), self.cfg.shortcut_levels)
        except ValueError as e:
            raise SessionError(str(e)) from None
        return int(steps)

    # ---- inputs ----------------------------------------------------------------------------------------------
    def _actions(self, action: Any, where: str = "action") -> torch.Tensor:
        """Action vector(s) -> (B, A); accepts a vector, a (B, A) array, or button names per world."""
        try:
            if isinstance(action, (list, tuple)) and action and all(isinstance(a, str) for a in action):
                action = self.spec.encode(action)
            elif isinstance(action, (list, tuple)) and action and \
                    all(isinstance(a, (list, tuple, set)) for a in action) and \
                    all(isinstance(x, str) for a in action for x in a):
                action = np.stack([self.spec.encode(a) for a in action])
            arr = self.spec.check(action, where)
        except ActionSpecError as e:
            raise SessionError(str(e)) from None
        if arr.ndim == 1:
            arr = np.broadcast_to(arr, (self.batch, arr.shape[0]))
        if arr.shape[0] != self.batch:
            raise SessionError(f"{where}: got actions for {arr.shape[0]} worlds, the session has batch={self.batch}")
        return torch.from_numpy(np.array(arr, dtype=np.float32))

    def _frames(self, frames: Any) -> torch.Tensor:
        """(T, H, W, 3) or (B, T, H, W, 3) uint8 -> (B, T, H, W, 3) uint8 tensor on the device."""
        arr = torch.as_tensor(np.asarray(frames))
        if arr.dtype != torch.uint8:
            raise SessionError(f"frames must be uint8 RGB, got {arr.dtype}")
        if arr.ndim == 4:
            arr = arr[None].expand(self.batch, *arr.shape)
        if arr.ndim != 5 or tuple(arr.shape[2:]) != self.frame_shape or arr.shape[0] != self.batch:
            raise SessionError(f"frames must be (T, {', '.join(map(str, self.frame_shape))}) or "
                               f"({self.batch}, T, ...) uint8 for this model, got {tuple(arr.shape)}")
        if arr.shape[1] < 1:
            raise SessionError("reset needs at least one frame")
        return arr.to(self.device)

    # ---- the three parts of a step ---------------------------------------------------------------------------
    def _mask(self) -> torch.Tensor:
        """Additive attention mask (B, 1, 1, W*N) from the valid ring slots."""
        N = self.cfg.tokens_per_frame
        m = self.valid.repeat_interleave(N, dim=1)  # (B, W*N)
        return torch.zeros(m.shape, device=self.device, dtype=self.dtype).masked_fill(~m, float("-inf"))[:, None, None]

    def _advance(self, z: torch.Tensor, actions: torch.Tensor) -> None:
        """Backbone pass over a new frame's latent z (B, C, h, w): append it to the ring cache, update h_last."""
        if self._runner is not None:
            return self._advance_graph(z, actions)
        c, wm = self.cfg, self.wm
        slot = self.frame_count.remainder(c.context_frames)
        write_index = slot * c.tokens_per_frame + self._token_offsets  # (N,)
        self.valid.index_fill_(1, slot.reshape(1), True)
        noise = counter_normal(self.seed, self.counter, tuple(z.shape[1:]), stream=1).to(self.dtype)
        level = torch.full((self.batch,), self.context_noise, device=self.device, dtype=self.dtype)
        z_ctx = wm.corrupt(wm.normalize(z.to(self.dtype)), level, noise)
        cos, sin = wm.rope.frames(self.frame_count.reshape(1))
        h = wm.backbone.step(wm.patchify(z_ctx), actions.to(self.dtype), level, cos[0], sin[0],
                             self.k_cache, self.v_cache, write_index, self._mask())
        self.h_last.copy_(h)
        self.frame_count.add_(1)
        self.counter.add_(1)

    def _predict(self, actions: torch.Tensor, steps: int, cfg_on: bool) -> None:
        """Head: sample the next latent into z_buf (S Euler steps, CFG as one batch of 2 when on)."""
        if self._runner is not None:
            return self._predict_graph(actions, steps, cfg_on)
        wm = self.wm
        noise = counter_normal(self.seed, self.counter, (self.cfg.tokens_per_frame, self.cfg.token_dim), stream=0)
        g = self.guidance_buf if cfg_on else 1.0
        tokens = wm.sample(self.h_last, actions.to(self.dtype), noise.to(self.dtype), steps, g)
        self.z_buf.copy_(wm.denormalize(wm.unpatchify(tokens)))

    def _decode(self) -> None:
        if self._runner is not None:
            (frames,) = self._run_graph("decode", {"z": self.z_buf})
            self.frame_buf.copy_(frames)
            return
        dec = self.ae.decoder
        x = dec(self.z_buf.to(next(dec.parameters()).dtype).contiguous(memory_format=self._memory_format))
        self.frame_buf.copy_(tensor_to_frames(x.float()))

    # ---- the same three parts as exported graphs (export.onnx documents them): onnxruntime or TensorRT --------
    def _run_graph(self, name: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if self.backend == "onnxruntime":  # CPU tensors share memory with the numpy arrays onnxruntime reads
            outs = self._runner.run(name, {k: np.ascontiguousarray(v.numpy()) for k, v in feeds.items()})
            return [torch.from_numpy(o) for o in outs]
        # TensorRT writes into reused output buffers; a copy keeps an output that feeds the next call (the head's x)
        # from being read and written by the same enqueue
        return [o.clone() for o in self._runner.run(name, feeds)]

    def _graph_noise(self, shape: tuple[int, ...], stream: int) -> torch.Tensor:
        if self.device.type == "cpu":  # the same numbers from a few numpy calls instead of ~40 small torch ops
            return torch.from_numpy(counter_normal_np(self.seed.numpy(), self.counter.numpy(), shape, stream))
        return counter_normal(self.seed, self.counter, shape, stream=stream)

    def _advance_graph(self, z: torch.Tensor, actions: torch.Tensor) -> None:
        c, wm, N, dev = self.cfg, self.wm, self.cfg.tokens_per_frame, self.device
        slot = int(self.frame_count) % c.context_frames
        self.valid[:, slot] = False  # the frame in this slot leaves the window; the new one is attended in-graph
        noise = self._graph_noise(tuple(z.shape[1:]), stream=1)
        cos, sin = wm.rope.frames(self.frame_count.reshape(1))
        h, k_new, v_new = self._run_graph("backbone", {
            "z": z.float(), "noise": noise, "actions": actions.float(),
            "level": torch.full((self.batch,), self.context_noise, device=dev), "cos": cos[0].float(),
            "sin": sin[0].float(), "k_cache": self.k_cache, "v_cache": self.v_cache, "mask": self._mask()})
        self.k_cache[:, :, :, slot * N:(slot + 1) * N] = k_new
        self.v_cache[:, :, :, slot * N:(slot + 1) * N] = v_new
        self.valid[:, slot] = True
        self.h_last.copy_(h)
        self.frame_count.add_(1)
        self.counter.add_(1)

    def _predict_graph(self, actions: torch.Tensor, steps: int, cfg_on: bool) -> None:
        wm, dev = self.wm, self.device
        x = self._graph_noise((self.cfg.tokens_per_frame, self.cfg.token_dim), stream=0)
        feeds = {"h": self.h_last, "actions": actions.float()}
        if cfg_on:
            feeds["guidance"] = self.guidance_buf.reshape(1).float()
        tau = 0.0
        for j in step_schedule(steps, self.cfg.shortcut_levels):
            d = 2.0 ** -j
            feeds.update(x=x, tau=torch.full((1,), tau, device=dev), d=torch.full((1,), d, device=dev),
                         level=torch.full((1,), j, dtype=torch.long, device=dev))
            (x,) = self._run_graph("head_cfg" if cfg_on else "head", feeds)
            tau += d
        self.z_buf.copy_(wm.denormalize(wm.unpatchify(x)))

    # ---- public API -----------------------------------------------------------------------------------------------
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
        fr = self._frames(frames)
        B, T = fr.shape[:2]
        if actions is None:
            acts = torch.zeros(B, T, self.spec.size)
        else:
            try:
                arr = self.spec.check(actions, "reset actions")
            except ActionSpecError as e:
                raise SessionError(str(e)) from None
            if arr.ndim == 2:
                arr = np.broadcast_to(arr, (B, *arr.shape))
            if arr.shape[:2] != (B, T):
                raise SessionError(f"reset actions: need one per frame, shape ({T}, {self.spec.size}) or "
                                   f"({B}, {T}, {self.spec.size}); got {arr.shape}")
            acts = torch.from_numpy(np.array(arr, dtype=np.float32))
        self._wait_backbone(discard=True)   # a pass still running would write into the buffers reset clears
        if seed is not None:
            self.seed.copy_(self._seeds(seed))
        self._pending = False
        self.k_cache.zero_()
        self.v_cache.zero_()
        self.valid.zero_()
        self.frame_count.zero_()
        self.counter.zero_()
        enc_dtype = next(self.ae.encoder.parameters()).dtype
        z = self.ae.encode(frames_to_tensor(fr.reshape(B * T, *self.frame_shape)).to(enc_dtype))
        z = z.reshape(B, T, *z.shape[1:])
        acts = acts.to(self.device)
        for t in range(T):
            self._advance(z[:, t], acts[:, t])
        self.primed = True
        self.frame_buf.copy_(fr[:, -1])
        return self._out()

    @torch.no_grad()
    def step(self, action: Any, defer_update: bool = False) -> np.ndarray:
        """Advance every world by one frame under `action`; returns (H, W, 3) uint8, or (B, H, W, 3).

        With `defer_update` the frame comes back before the backbone pass that appends it to the context; that pass
        then runs in finish(), which a front end calls after showing the frame (the next step, state() and save()
        call it too), so the player sees the frame sooner by the backbone's time.

        With `overlap` (the onnxruntime backend on a machine with more than one core) the backbone pass runs on a
        second thread while this one decodes the frame, since both read only the new latent: a plain step returns
        once both are done, a deferred one as soon as the frame is decoded.
        """
        if not self.primed:
            raise SessionError("call reset(frames) before step()")
        action = self._actions(action).to(self.device)
        self.finish()
        self.action_buf.copy_(action)
        cfg_on = float(self.guidance) != 1.0
        if cfg_on:
            self.guidance_buf.fill_(float(self.guidance))
        if self.use_graphs:
            self._run_graphs(self._steps, cfg_on, defer_update)
        elif self.overlap and (defer_update or not self.profile):   # a profiled plain step keeps the parts apart
            t0 = time.perf_counter()
            self._predict(self.action_buf, self._steps, cfg_on)
            t1 = time.perf_counter()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="reverie-backbone")
            self._inflight = self._pool.submit(self._timed_advance)
            self._decode()
            self.times.head_ms, self.times.decode_ms = (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
            if not defer_update:
                self._wait_backbone()
        elif self.profile:
            t0 = time.perf_counter()
            self._predict(self.action_buf, self._steps, cfg_on)
            t1 = time.perf_counter()
            self._decode()
            t2 = time.perf_counter()
            self.times.head_ms, self.times.decode_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
            if not defer_update:
                self._timed_advance()
        else:
            self._predict(self.action_buf, self._steps, cfg_on)
            self._decode()
            if not defer_update:
                self._advance(self.z_buf, self.action_buf)
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
        elif self.use_graphs:
            self._graphs[self._pending_graphs][2].replay()
        elif self.profile:
            self._timed_advance()
        else:
            self._advance(self.z_buf, self.action_buf)

    @torch.no_grad()   # grad mode is per thread: the pass on the overlap thread needs its own
    def _timed_advance(self) -> None:
        """The backbone pass with its time in `times` (profiled steps, and the pass beside the decode)."""
        t0 = time.perf_counter()
        self._advance(self.z_buf, self.action_buf)
        self.times.backbone_ms = (time.perf_counter() - t0) * 1e3

    def _wait_backbone(self, discard: bool = False) -> None:
        """Wait for the backbone pass running beside the decode, if one is; its error is raised here unless the
        caller is about to overwrite what it wrote (`discard`)."""
        fut, self._inflight = self._inflight, None
        error = fut.exception() if fut is not None else None
        if error is not None and not discard:
            raise error

    def _out(self) -> np.ndarray:
        frames = self.frame_buf.to("cpu", copy=True).numpy()  # the buffer is rewritten by the next step
        return frames[0] if self.batch == 1 else frames

    @property
    def latent(self) -> torch.Tensor:
        """The latest generated latent (B, C, h, w) (tests compare rollouts on it)."""
        return self.z_buf

    # ---- CUDA graphs --------------------------------------------------------------------------------------------
    def _run_graphs(self, steps: int, cfg_on: bool, defer_update: bool = False) -> None:
        key = (steps, cfg_on)
        if key not in self._graphs:
            self._graphs[key] = self._capture(steps, cfg_on)
        graphs = self._graphs[key]
        if defer_update:  # head and decode now, the backbone graph in finish()
            self._pending_graphs = key
            graphs[0].replay()
            graphs[1].replay()
            return
        if self.profile:
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            ev[0].record()
            for g, e in zip(graphs, ev[1:]):
                g.replay()
                e.record()
            ev[3].synchronize()
            self.times = StepTimes(ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2]), ev[2].elapsed_time(ev[3]))
        else:
            for g in graphs:
                g.replay()

    def _capture(self, steps: int, cfg_on: bool) -> list[torch.cuda.CUDAGraph]:
        """Capture head, decode and backbone as three graphs over the session's static buffers."""
        saved = self.state()
        parts = [lambda: self._predict(self.action_buf, steps, cfg_on), self._decode,
                 lambda: self._advance(self.z_buf, self.action_buf)]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and allocator outside the capture
                for f in parts:
                    f()
        torch.cuda.current_stream().wait_stream(stream)
        graphs = []
        for f in parts:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                f()
            graphs.append(g)
        self.load_state(saved)  # warm-up and capture advanced the world: undo it
        return graphs

    # ---- save-games and branches ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The whole world as CPU tensors plus metadata: KV cache, ring validity, step count, noise counters."""
        self.finish()
        return {"format": STATE_FORMAT, "game": self.spec.game, "config": self.wm.cfg.__dict__.copy(),
                "batch": self.batch, "primed": self.primed,
                "tensors": {k: getattr(self, k).detach().cpu().clone() for k in self._STATE}}

    _STATE = ("k_cache", "v_cache", "valid", "frame_count", "seed", "counter", "h_last", "frame_buf", "z_buf")

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
        for k in self._STATE:
            t = state["tensors"][k]
            getattr(self, k).copy_(t.to(self.device))
        self.primed = bool(state["primed"])
        self._pending = False

    def save(self, path: str | os.PathLike) -> Path:
        """Write state() to a .safetensors save-game (atomically)."""
        import json

        from safetensors.torch import save_file

        from engine.checkpoint import atomic_target

        st = self.state()
        meta = {"format": str(st["format"]), "game": st["game"], "config": json.dumps(st["config"]),
                "batch": str(st["batch"]), "primed": str(int(st["primed"]))}
        tensors = {k: (v.float() if v.dtype == torch.bfloat16 else v).contiguous() for k, v in st["tensors"].items()}
        path = Path(path)
        with atomic_target(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    def load(self, path: str | os.PathLike) -> None:
        import json

        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            st = {"format": int(meta["format"]), "game": meta["game"], "config": json.loads(meta["config"]),
                  "batch": int(meta["batch"]), "primed": meta["primed"] == "1", "tensors": tensors}
        except (OSError, SafetensorError, KeyError, ValueError) as e:
            raise SessionError(f"{path}: not a readable Reverie save-game ({e})") from None
        st["config"] = {k: tuple(v) if isinstance(v, list) else v for k, v in st["config"].items()}
        self.load_state(st)

    def fork(self, seed: int | None = None) -> Session:
        """An independent copy of this world (sharing weights) whose noise continues from `seed`."""
        other = Session.__new__(Session)
        other.__dict__.update(self.__dict__)
        other._graphs = {}
        other._pool = None
        other._alloc(0)
        other.load_state(self.state())
        if seed is not None:
            other.seed.copy_(other._seeds(seed))
        return other

    def close(self) -> None:
        self._wait_backbone(discard=True)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._graphs.clear()
        self.k_cache = self.v_cache = None  # type: ignore[assignment]

