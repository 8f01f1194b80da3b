"""The training loop every stage shares: resumable, data-parallel, NaN-guarded, logged.

fit() runs the optimizer steps; start_run() sets a run up (threads, device, process group, initial-weight seed,
config.json). The pieces it stands on have their own files: train.training.config (TrainConfig, flags, the seeding
rule), train.training.distributed (device, ranks, sharding) and train.training.run_dir (the run folder, its states and
their owner). Their public names are importable from here too.

Each step's randomness is a pure function of (seed, step, rank) (train.training.config.seed_for), so resuming needs no
iterator state and 20 + 30 steps equal 50 straight steps bit for bit on CPU.

Nothing waits for the GPU in a step: the logged values (loss, gradient norm, a stage's stats) stay on the device
and are reduced with one host sync at log time. On CUDA the fused optimizer skips a non-finite step on the device
(its `found_inf`), and the guard's counters are read at log and save time; on CPU (and with a sharded model, whose
optimizer is not fused) each step's flag is read at once, which costs nothing there.

Ctrl-C and SIGTERM end the step under way; then a whole state of it is saved and the run stops, saying which
(train.training.interrupt). fit() is a page of its own over its parts: _prepare, _step, _after_step (_log, _save) and
_wrap_up.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from train.training.config import TrainConfig, TrainingError, seed_for, step_generator
from train.training.distributed import Dist, finish_distributed, full_state, init_distributed, resolve_device, shard
from train.training.interrupt import StopSignals, signal_name
from train.training.run_dir import RunDir

__all__ = ["Dist", "Logger", "RunDir", "TrainConfig", "TrainingError", "autocast_dtype", "choose_precision",
           "cpu_native_bf16", "describe_precision", "finish_distributed", "fit", "full_state", "init_distributed",
           "resolve_device", "seed_for", "shard", "start_run", "step_generator", "trained_weights", "WeightAverage"]


def cpu_native_bf16() -> str | None:
    """The instruction set this CPU computes bfloat16 with ("AMX" or "AVX-512 BF16"), None when it has neither.

    bf16 autocast is a different bargain on the two kinds of CPU: with native bf16 a training step of the tiny world
    model takes 0.52x the fp32 time (2-core AMD EPYC with AVX-512 BF16), without it 15x (the same model on an EPYC
    without; `benchmarks/bench_train_precision.py`), because torch then emulates the bf16 matmuls."""
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX-512 BF16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        fn = getattr(torch.cpu, probe, None)   # private helpers of torch.cpu: absent in some builds, so optional
        try:
            if fn is not None and fn():
                return name
        except RuntimeError:
            continue
    return None


def choose_precision(tcfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype of `--precision` on this device (None: full precision) and why, in words. `auto` is bf16 on
    CUDA and on a CPU that computes bf16 natively (`cpu_native_bf16`), fp32 on any other CPU."""
    if tcfg.precision == "fp32":
        return None, "--precision fp32"
    if tcfg.precision == "bf16":
        return torch.bfloat16, "--precision bf16"
    if tcfg.precision != "auto":
        raise TrainingError(f"--precision {tcfg.precision}: unknown; use auto, fp32 or bf16")
    if device.type == "cuda":
        return torch.bfloat16, "auto: CUDA"
    native = cpu_native_bf16() if device.type == "cpu" else None
    if native is not None:
        return torch.bfloat16, f"auto: this CPU computes bf16 natively, {native}; --precision fp32 to turn it off"
    return None, "auto: this CPU has no native bf16, where bf16 autocast runs many times slower"


def autocast_dtype(tcfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--precision` on this device (`choose_precision`)."""
    return choose_precision(tcfg, device)[0]


def describe_precision(amp: torch.dtype | None, why: str) -> str:
    """One line for the training log from `choose_precision`: the arithmetic the run uses and why."""
    return f"precision: {'bf16 autocast' if amp is not None else 'fp32'} ({why})"


class Logger:
    """metrics.jsonl always; TensorBoard when it is installed (the `train` extra), and a line at the start saying
    so when it is not. Only rank 0 makes one."""

    def __init__(self, root: Path):
        self.file = open(root / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:   # the play set-up has no tensorboard: say so once, not silently write nothing
            self.tb = None
            print(f"TensorBoard logs off: pip install -e '.[train]' (tensorboard) to write them to {root / 'tb'}")
        else:
            self.tb = SummaryWriter(str(root / "tb"))

    def log(self, step: int, values: dict[str, float]) -> None:
        """Append one row (and TensorBoard scalars)."""
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush and close both."""
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class Running:
    """Sums of the logged values since the last log line, kept where they were computed.

    A tensor value stays on its device (adding it launches a kernel, never a sync); a step whose flag `ok` is
    false, and a value that is NaN (a stat with no sample this step, such as an empty tau bin), count for nothing.
    reduce() reads everything back with one sync."""

    def __init__(self):
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, Any] = {}

    def __bool__(self) -> bool:
        return bool(self.sums)

    def add(self, values: dict[str, Any], ok: torch.Tensor | None = None) -> None:
        """Add one step's values; `ok` (a device flag) masks them when the step's fate is not known yet."""
        for k, v in values.items():
            if torch.is_tensor(v):
                v = v.detach().double().reshape(())
                valid = ~torch.isnan(v) if ok is None else ~torch.isnan(v) & ok
                s, c = torch.where(valid, v, 0.0), valid.double()
            else:  # a host number (a stage that reads its stats back itself)
                v = float(v)
                if math.isnan(v):
                    continue
                s, c = (v, 1.0) if ok is None else (torch.where(ok, v, 0.0).double(), ok.double())
            self.sums[k] = self.sums.get(k, 0.0) + s
            self.counts[k] = self.counts.get(k, 0.0) + c

    def reduce(self) -> tuple[dict[str, float], dict[str, float]]:
        """Means and counts of every value seen (with one host sync), and start over."""
        keys = list(self.sums)
        vals = [self.sums[k] for k in keys] + [self.counts[k] for k in keys]
        on_device = [i for i, v in enumerate(vals) if torch.is_tensor(v)]
        host = [v if not torch.is_tensor(v) else 0.0 for v in vals]
        if on_device:
            for i, x in zip(on_device, torch.stack([vals[i] for i in on_device]).tolist()):
                host[i] = x
        self.sums, self.counts = {}, {}
        sums, counts = host[:len(keys)], host[len(keys):]
        means = {k: s / n for k, s, n in zip(keys, sums, counts) if n > 0}
        return means, dict(zip(keys, counts))


class DeviceGuard:
    """The non-finite guard's counters on the device: no per-step sync; read at log and save time."""

    def __init__(self, device: torch.device):
        zero = torch.zeros((), dtype=torch.long, device=device)
        self.run, self.longest, self.skipped = zero.clone(), zero.clone(), zero.clone()

    def update(self, ok: torch.Tensor) -> None:
        """Count one step: bad steps in a row, the longest such run, and all skipped steps."""
        bad = (~ok).long()
        self.run = (self.run + 1) * bad
        self.longest = torch.maximum(self.longest, self.run)
        self.skipped = self.skipped + bad

    def read(self) -> tuple[int, int]:
        """(longest run of bad steps, steps skipped) since the last read, with one host sync."""
        longest, skipped = torch.stack([self.longest, self.skipped]).tolist()
        self.longest, self.skipped = self.run.clone(), torch.zeros_like(self.skipped)
        return int(longest), int(skipped)


class WeightAverage:
    """An exponential moving average of a model's floating-point weights, kept in fp32 on the model's device.

    After step s the average moves toward the weights by 1 - min(decay, (1 + s) / (10 + s)): early in a run (from
    scratch) it follows the weights closely, later it averages over about 1 / (1 - decay) steps. The average
    smooths out the step-to-step noise of the last weights, which a sampled model shows as sporadic artefacts; it is
    saved with every training state (`average.state`) and is what the checkpoint written at the end holds."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.pairs = [(k, v) for k, v in model.state_dict(keep_vars=True).items() if v.is_floating_point()]
        self.shadow = {k: v.detach().float().clone() for k, v in self.pairs}

    @torch.no_grad()
    def update(self, step: int, ok: torch.Tensor | None = None) -> None:
        """Move toward the current weights after optimizer step `step`; `ok` (a device flag) holds it where the
        step was skipped on the device."""
        rate = 1.0 - min(self.decay, (1 + step) / (10 + step))
        weight = torch.tensor(rate) if ok is None else ok.float() * rate
        for k, v in self.pairs:
            self.shadow[k].lerp_(v.detach().float(), weight.to(self.shadow[k].device))

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take a saved average; a mismatch with the model is a TrainingError."""
        if set(tensors) != set(self.shadow):
            raise TrainingError("the saved weight average does not fit the model being trained; start over with "
                                "--no-resume, or pick another --out")
        for k, v in tensors.items():
            self.shadow[k].copy_(v.float())


# DDP warns once a process, in four lines, where a gradient's strides differ from those of its slot in DDP's bucket
# ("Grad strides do not match bucket view strides"), e.g. a 1x1 convolution's weight gradient that cuDNN or oneDNN
# hands back channels-last, which differs from the weight's strides only on its size-1 dims. DDP copies the gradient
# into its bucket either way, so it is harmless and leaves a user nothing to do: fit() ignores that one message while
# it runs (EDM2's training does the same).
DDP_STRIDES_WARNING = "Grad strides do not match bucket view strides"


@dataclass
class _Loop:
    """What one fit() works with, from its preparation to its last save."""

    run: RunDir
    model: torch.nn.Module
    ddp: torch.nn.Module                 # what the loss sees: the model, wrapped in DDP under torchrun (not sharded)
    tcfg: TrainConfig
    device: torch.device
    dist_info: Dist
    opt: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    sharded: bool
    amp: torch.dtype | None
    average: WeightAverage | None
    guard: DeviceGuard | None            # None: each step's flag is read at once (the sync guard)
    logger: Logger | None                # rank 0's
    start: int                           # the step it resumed from (0: a new run)
    clock0: float                        # perf_counter() at the run's start, earlier by the time before a resume
    done: int = 0                        # optimizer steps taken: the step the next state is saved as
    saved: int = -1                      # the step of the newest whole state on disk (this run's or resumed from)
    bad: int = 0                         # non-finite steps in a row (the sync guard)
    busy: str = ""                       # what is under way while the weights on hand are no whole step's
    stopped: bool = False                # a signal stopped the run and it was said
    running: Running = field(default_factory=Running)
    last: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)


def fit(*, run: RunDir, model: torch.nn.Module, tcfg: TrainConfig, device: torch.device, dist_info: Dist,
        batch_fn: Callable[[int, Dist], Any], loss_fn: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict]],
        sample_fn: Callable[[int], dict[str, float] | None] | None = None,
        describe: Callable[[dict], str] | None = None, resume: bool = True,
        sync_guard: bool | None = None, progress: bool = True) -> dict[str, float]:
    """Run `tcfg.steps` optimizer steps of `loss_fn(model, batch_fn(step))`, resuming from the last whole state.

    Returns the last logged values. Raises TrainingError after `max_bad_steps` non-finite steps in a row: at once
    with `sync_guard` (the default on CPU and for a sharded model), else at the next log or save step. With
    `tcfg.fsdp` under torchrun the model is sharded in place (FSDP2); read its weights with full_state().
    Ctrl-C or SIGTERM ends the step under way, saves a whole state of it and raises KeyboardInterrupt or
    SystemExit(143) (train.training.interrupt): the same call resumes from that state.
    """
    from tqdm import tqdm

    loop = _prepare(run, model, tcfg, device, dist_info, resume, sync_guard)
    if loop.sharded:
        sample_fn = None  # previews run one rank's model alone, which a sharded model cannot
    bar = tqdm(range(loop.start, tcfg.steps), initial=loop.start, total=tcfg.steps,
               disable=not (dist_info.main and progress), dynamic_ncols=True, desc=run.root.name)
    try:
        with StopSignals(dist_info) as signals, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=DDP_STRIDES_WARNING)
            for step in bar:
                _stop_if_signalled(loop, signals, bar)
                time_fraction = _time_fraction(loop)
                if time_fraction >= 1.0:
                    if dist_info.main:
                        tqdm.write(f"time limit of {tcfg.time_limit:.0f} s reached after {step} steps")
                    break
                if _step(loop, step, time_fraction, batch_fn, loss_fn):
                    _after_step(loop, bar, describe, progress, sample_fn)
            _wrap_up(loop)
            _stop_if_signalled(loop, signals, bar)  # a signal during the last step or the wrap-up
    except KeyboardInterrupt:
        _save_on_keyboard_interrupt(loop, bar)
        raise
    finally:
        bar.close()
        if loop.logger:
            loop.logger.close()
    # steps_run: the same on every rank
    return {**loop.last, "steps_done": float(loop.done), "steps_run": float(loop.done - loop.start)}


def _prepare(run: RunDir, model: torch.nn.Module, tcfg: TrainConfig, device: torch.device, dist_info: Dist,
             resume: bool, sync_guard: bool | None) -> _Loop:
    """Shard the model (FSDP2) or wrap it in DDP under torchrun, build the optimizer and the weight average, resume
    from the newest whole state, choose the precision and open the log."""
    sharded = tcfg.fsdp and dist_info.world > 1
    if sharded:
        shard(model, device, dist_info.world)
    if sync_guard is None:
        sync_guard = device.type != "cuda"
    sync_guard = sync_guard or sharded  # only the fused optimizer skips a step on the device
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tcfg.lr, betas=(0.9, 0.99),
                            fused=not sharded and (device.type == "cuda" or not sync_guard))
    average = WeightAverage(model, tcfg.ema) if tcfg.ema > 0 else None
    start, elapsed = 0, 0.0
    latest = run.latest() if resume else None
    if latest is not None:
        start, elapsed, average = _resume(run, latest, model, opt, tcfg, sharded, average, dist_info)
    ddp = model
    if dist_info.world > 1 and not sharded:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    amp, why = choose_precision(tcfg, device)
    if dist_info.main:
        print(describe_precision(amp, why))
    return _Loop(run=run, model=model, ddp=ddp, tcfg=tcfg, device=device, dist_info=dist_info, opt=opt,
                 params=params, sharded=sharded, amp=amp, average=average,
                 guard=None if sync_guard else DeviceGuard(device),
                 logger=Logger(run.root) if dist_info.main else None, start=start, done=start,
                 saved=start if latest is not None else -1, clock0=time.perf_counter() - elapsed)


def _resume(run: RunDir, latest: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, tcfg: TrainConfig,
            sharded: bool, average: WeightAverage | None, dist_info: Dist) -> tuple[int, float, WeightAverage | None]:
    """Load the state at `latest` into the model, the optimizer and the weight average; returns its step, the
    seconds trained before it, and the average."""
    meta = run.load_state(latest, model, opt, sharded)
    if average is not None:
        saved = run.load_average(latest)
        if saved is not None:
            average.load(saved)
        else:  # a state saved before --ema was given (--force): the average starts from the weights
            average = WeightAverage(model, tcfg.ema)
    opt.param_groups[0]["weight_decay"] = tcfg.weight_decay  # the flag, not the saved group (with --force)
    start = int(meta["step"])
    if dist_info.main:
        print(f"resuming from {latest} (step {start})")
    return start, float(meta.get("elapsed", 0.0)), average


def _time_fraction(loop: _Loop) -> float:
    """The share of `--time-limit` used so far (0 without one); under torchrun the ranks agree on the largest."""
    tcfg = loop.tcfg
    if tcfg.time_limit <= 0:
        return 0.0
    fraction = (time.perf_counter() - loop.clock0) / tcfg.time_limit
    if loop.dist_info.world > 1:  # ranks must agree on when to stop
        tf = torch.tensor([fraction], device=loop.device)
        dist.all_reduce(tf, op=dist.ReduceOp.MAX)
        fraction = float(tf)
    return fraction


def _step(loop: _Loop, step: int, time_fraction: float, batch_fn: Callable, loss_fn: Callable) -> bool:
    """One optimizer step of `loss_fn(model, batch_fn(step))`; False where a non-finite loss or gradient skipped it
    (with the sync guard; the device guard skips on the device and counts)."""
    tcfg, dist_info, opt = loop.tcfg, loop.dist_info, loop.opt
    # the one seeding rule: the noise of step s depends on (seed, s, rank) alone, not on where it resumed
    torch.manual_seed(seed_for(tcfg.seed, step, dist_info.rank, "noise"))
    batch = batch_fn(step, dist_info)
    for g in opt.param_groups:
        g["lr"] = tcfg.lr_at(step, time_fraction)
    with torch.autocast(loop.device.type, dtype=loop.amp, enabled=loop.amp is not None):
        loss, stats = loss_fn(loop.ddp, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(loop.params, tcfg.grad_clip)
    if hasattr(gnorm, "full_tensor"):  # FSDP2: a DTensor norm over the shards
        gnorm = gnorm.full_tensor()
    ok = torch.isfinite(loss.detach()) & torch.isfinite(gnorm)
    if dist_info.world > 1:
        flag = ok.float().reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = flag[0] > 0
    values = {**stats, "loss": loss.detach(), "grad_norm": gnorm.detach()}
    if loop.guard is None and not bool(ok):
        _skip(loop, step, loss, gnorm)
        return False
    loop.busy = "an optimizer step"  # until `done` moves on, the weights are no whole step's
    if loop.guard is not None:  # decided on the device: the fused step does nothing where found_inf is set
        opt.found_inf = (~ok).float()
        opt.step()
        loop.guard.update(ok)
        loop.running.add(values, ok)
    else:
        opt.step()
        loop.bad = 0
        loop.running.add(values)
    if loop.average is not None:
        loop.average.update(step, ok if loop.guard is not None else None)
    loop.done, loop.busy = step + 1, ""
    return True


def _skip(loop: _Loop, step: int, loss: torch.Tensor, gnorm: torch.Tensor) -> None:
    """A non-finite loss or gradient under the sync guard: no optimizer step; TrainingError after
    `max_bad_steps` in a row."""
    from tqdm import tqdm

    loop.bad += 1
    loop.opt.zero_grad(set_to_none=True)
    msg = f"step {step}: non-finite loss or gradient (loss={loss.item()}, grad norm={gnorm.item()}); " \
          f"optimizer step skipped ({loop.bad} in a row)"
    if loop.logger:
        loop.logger.log(step, {"skipped_steps": float(loop.bad)})
        tqdm.write(msg)
    if loop.bad >= loop.tcfg.max_bad_steps:
        raise TrainingError(_stop_message(msg, loop.bad))


def _after_step(loop: _Loop, bar: Any, describe: Callable[[dict], str] | None, progress: bool,
                sample_fn: Callable[[int], dict[str, float] | None] | None) -> None:
    """After an optimizer step, each when due: the device guard's counters, a log line, previews, a whole state."""
    tcfg, done, main = loop.tcfg, loop.done, loop.dist_info.main
    log_now = done % tcfg.log_every == 0 or done == tcfg.steps
    save_now = done % tcfg.save_every == 0 or done == tcfg.steps
    if loop.guard is not None and (log_now or save_now):  # every rank reads the same (all-reduced) counters
        _read_guard(loop)
    if main and log_now:
        _log(loop, bar, describe, progress)
    if sample_fn is not None and main and tcfg.sample_every and done % tcfg.sample_every == 0:
        vals = sample_fn(done)
        if vals:
            loop.logger.log(done, vals)
    if save_now:
        _save(loop)


def _read_guard(loop: _Loop) -> None:
    """Log the steps the device guard skipped since its last read; TrainingError after `max_bad_steps` in a row."""
    from tqdm import tqdm

    longest, skipped = loop.guard.read()
    if skipped and loop.logger:
        loop.logger.log(loop.done, {"skipped_steps": float(skipped)})
        tqdm.write(f"steps before {loop.done}: {skipped} non-finite loss or gradient, optimizer step skipped")
    if longest >= loop.tcfg.max_bad_steps:
        raise TrainingError(_stop_message(f"steps before {loop.done}: non-finite loss or gradient in {longest} steps",
                                          longest))


def _log(loop: _Loop, bar: Any, describe: Callable[[dict], str] | None, progress: bool) -> None:
    """Rank 0: one row of metrics.jsonl (the means since the last) and the progress bar's text, or a line of its
    own without a bar."""
    dt = time.perf_counter() - loop.t0
    last, counts = loop.running.reduce()
    last["lr"] = loop.opt.param_groups[0]["lr"]
    last["steps_per_s"] = counts.get("loss", 0.0) / max(dt, 1e-9)
    loop.logger.log(loop.done, last)
    said = describe(last) if describe else f"loss {last.get('loss', math.nan):.4f}"
    bar.set_postfix_str(said)
    if not progress:                  # no bar to carry it: one line per log step, for a log file
        print(f"step {loop.done}/{loop.tcfg.steps}: {said}, {last['steps_per_s']:.2f} steps/s, lr {last['lr']:.3g}",
              flush=True)
    loop.last, loop.t0 = last, time.perf_counter()


def _log_rest(loop: _Loop) -> None:
    """Rank 0: a row for the steps since the last log line (a time limit or a signal can end a run between logs)."""
    if loop.running and loop.dist_info.main:
        loop.last = loop.running.reduce()[0]
        loop.last["lr"] = loop.opt.param_groups[0]["lr"]
        loop.logger.log(loop.done, loop.last)


def _wrap_up(loop: _Loop) -> None:
    """After the last step: log the rest, and save what was learned where a time limit stopped the run early."""
    _log_rest(loop)
    if loop.done != loop.tcfg.steps and loop.done > loop.start:
        _save(loop)


def _save(loop: _Loop) -> None:
    """Save a whole state of step `loop.done` from rank 0 (every rank gathers a sharded model's state and meets at
    a barrier)."""
    loop.busy = "a save"
    gathered = full_state(loop.model, loop.opt, True) if loop.sharded else None  # collective: every rank takes part
    if loop.dist_info.main:
        loop.run.save_state(loop.done, loop.model, loop.opt, loop.tcfg.keep_states,
                            {"train": asdict(loop.tcfg), "elapsed": time.perf_counter() - loop.clock0}, gathered,
                            average=None if loop.average is None else loop.average.shadow)
    if loop.dist_info.world > 1:
        dist.barrier()
    loop.saved, loop.busy = loop.done, ""


def _stop_if_signalled(loop: _Loop, signals: StopSignals, bar: Any) -> None:
    """At a step boundary (a collective under torchrun): where a signal came to any rank, save a whole state of this
    step, say so and stop (train.training.interrupt)."""
    signum = signals.agreed()
    if signum is None:
        return
    signals.acted = True
    _log_rest(loop)
    if loop.done not in (loop.saved, 0):
        _save(loop)
    line = _say_stopped(loop, bar, signal_name(signum))
    signals.stop(signum, line)


def _save_on_keyboard_interrupt(loop: _Loop, bar: Any) -> None:
    """A KeyboardInterrupt raised inside a step (where no handler holds Ctrl-C: fit() off the main thread; or raised
    by code): save the last whole step's state where that is safe, and say so."""
    if loop.stopped or loop.dist_info.world > 1:  # said already; or the other ranks are elsewhere: no save together
        return
    if not loop.busy and loop.done not in (loop.saved, 0):
        _log_rest(loop)
        _save(loop)
    _say_stopped(loop, bar, "interrupted" + (f" during {loop.busy}" if loop.busy else ""))


def _say_stopped(loop: _Loop, bar: Any, why: str) -> str:
    """Rank 0 says, in one line after the progress bar, which whole state the same command resumes from (the one the
    manifest names: an interrupt inside a save may come after the save became whole)."""
    loop.stopped = True
    if not loop.dist_info.main:
        return f"{why}: stopped"
    try:
        latest = loop.run.latest()
    except TrainingError:
        latest = None
    if latest is None:
        line = f"{why}: stopped before a state was saved; the same command starts the run over"
    else:
        line = (f"{why}: stopped at step {int(latest.name.removeprefix('step_'))}, its whole training state is saved "
                f"in {latest}; run the same command to resume from it")
    bar.close()
    print(line, file=sys.stderr, flush=True)
    return line


def _stop_message(what: str, bad: int) -> str:
    return (f"{what}; stopping after {bad} in a row. Lower --lr, check the data, or resume from the last state "
            "with different settings")


def trained_weights(run: RunDir, checkpoint_name: str, last: dict[str, float], model: torch.nn.Module,
                    tcfg: TrainConfig, dist_info: Dist) -> dict[str, torch.Tensor] | None:
    """The full weights after fit() (collective when sharded), or None when a finished run was re-run. With
    `--ema` they are the weight average saved with the last state (on rank 0, which writes the checkpoint)."""
    final = run.root / checkpoint_name
    if last.get("steps_run") == 0 and final.exists():
        print(f"{final} is already trained to step {tcfg.steps}; nothing to do")
        return None
    weights = full_state(model, None, tcfg.fsdp and dist_info.world > 1)[0]
    latest = run.latest() if tcfg.ema > 0 and dist_info.main else None
    saved = run.load_average(latest) if latest is not None else None
    if saved is not None:
        weights = {k: saved[k].to(device=v.device, dtype=v.dtype) if k in saved else v for k, v in weights.items()}
    return weights


def start_run(out: str, tcfg: TrainConfig, resolved: dict[str, Any], dry_run: bool = False,
              fresh: bool = False) -> tuple[RunDir, torch.device, Dist] | None:
    """Resolve device and threads, join the process group, seed the initial weights, write config.json; None when
    it was a dry run. Call train.training.run_dir.check_out first: this writes into `out`."""
    if dry_run:
        print(json.dumps({"train": asdict(tcfg), **resolved}, indent=2, sort_keys=True, default=str))
        return None
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    dist_info, device = init_distributed(resolve_device(tcfg.device))
    torch.manual_seed(seed_for(tcfg.seed, stream="init"))  # initial weights: a function of --seed, equal on all ranks
    if tcfg.batch % dist_info.world:
        raise TrainingError(f"--batch {tcfg.batch} does not split over {dist_info.world} ranks")
    run = RunDir(out)
    if fresh and dist_info.main:
        shutil.rmtree(run.state_root, ignore_errors=True)
    if dist_info.main:
        run.write_config({"train": asdict(tcfg), "device": str(device), "world_size": dist_info.world, **resolved})
    return run, device, dist_info
