"""The training loop every stage shares: resumable, data-parallel, NaN-guarded, logged.

A run folder holds `config.json` (the resolved configuration), `metrics.jsonl`, TensorBoard events under
`tb/`, and whole training states under `state/step_XXXXXXXX/` (weights, optimizer, every RNG, step), the
newest of which is named by `state/manifest.json`, written last. State files are safetensors named *.state, so the
run's one *.safetensors file is the checkpoint it produces. A state folder is written under a temporary
name and renamed when whole, so a run killed at any moment resumes from the last whole state. The data position
is a pure function of (seed, step): batches are drawn by a generator seeded from both, so resuming needs no
iterator state, and 20 + 30 steps equal 50 straight steps bit for bit on CPU.

Data parallel: launched under `torchrun`, each rank takes its slice of the global batch, DDP averages gradients,
rank 0 alone logs and saves; ranks seed their noise differently (seed + rank).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from engine.checkpoint import atomic_write_text


class TrainingError(RuntimeError):
    """A run that cannot go on (diverged, bad resume state)."""


@dataclass
class TrainConfig:
    """Optimisation settings shared by every stage (CLI flags map onto these fields)."""

    steps: int = 2000
    batch: int = 16                  # global batch (split across ranks)
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 100
    min_lr_ratio: float = 0.1        # cosine decay to lr * this
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "auto"          # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    device: str = "auto"
    threads: int = 0                 # torch CPU threads; 0 = leave torch's default
    save_every: int = 500
    log_every: int = 25
    sample_every: int = 0            # 0 = only at the end
    keep_states: int = 2
    max_bad_steps: int = 5           # stop after this many non-finite steps in a row
    time_limit: float = 0.0          # seconds; > 0 ends the run when either steps or time run out, and the
                                     # schedule follows whichever is further along (not bit-reproducible)
    fsdp: bool = False               # under torchrun: shard parameters, gradients and optimizer state (FSDP2)

    def lr_at(self, step: int, time_fraction: float = 0.0) -> float:
        """Linear warm-up then cosine decay over max(step progress, time progress)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        p = min(1.0, max((step - self.warmup) / max(1, self.steps - self.warmup), time_fraction))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but torch sees no CUDA device")
    return dev


def autocast_dtype(tcfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if tcfg.precision == "fp32" or (tcfg.precision == "auto" and device.type != "cuda"):
        return None
    if tcfg.precision in ("bf16", "auto"):
        return torch.bfloat16
    raise TrainingError(f"unknown precision {tcfg.precision!r}; use auto, fp32 or bf16")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def finish_distributed(ok: bool = True) -> bool:
    """Leave the process group, if this process joined one (returns whether it had).

    A gloo group torn down by process exit can abort a rank ("terminate called without an active exception")
    after its work is done. After a clean run the ranks meet at a barrier first, so none leaves while another
    still talks to it; after an error they do not wait for each other."""
    if not dist.is_initialized():
        return False
    try:
        if ok:
            dist.barrier()
    finally:
        dist.destroy_process_group()
    return True


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator that picks the data of `step` (shared by ranks when rank is 0): the data position."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + rank)


class RunDir:
    """Files of one training run."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.state_root = self.root / "state"

    def write_config(self, cfg: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / "config.json", json.dumps(cfg, indent=2, sort_keys=True, default=str))

    def latest(self) -> Path | None:
        """The newest whole state folder, as named by the manifest."""
        man = self.state_root / "manifest.json"
        if not man.exists():
            return None
        try:
            name = json.loads(man.read_text())["latest"]
        except (json.JSONDecodeError, KeyError) as e:
            raise TrainingError(f"{man}: unreadable manifest ({e}); delete it to start over") from None
        path = self.state_root / name
        if not (path / "state.json").exists():
            raise TrainingError(f"{man} names {name}, which is not a whole state folder")
        return path

    def save_state(self, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, keep: int,
                   extra: dict[str, Any], gathered: tuple[dict, dict] | None = None) -> Path:
        """Write a whole training state under a temporary name, rename it, then point the manifest at it.

        `gathered`: full (model, optimizer) state dicts already gathered from a sharded (FSDP2) model.
        """
        model_sd, opt_sd = gathered if gathered is not None else (model.state_dict(), opt.state_dict())
        name = f"step_{step:08d}"
        final = self.state_root / name
        tmp = self.state_root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model_sd.items()}, str(tmp / "model.state"))
        opt_tensors, opt_meta = _flatten_optimizer(opt_sd)
        save_file(opt_tensors, str(tmp / "optim.state"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda{i}"] = s
        save_file(rng, str(tmp / "rng.state"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, **extra}))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(self.state_root / "manifest.json", json.dumps({"latest": name, "step": step}))
        states = sorted(p for p in self.state_root.glob("step_*") if p.is_dir())
        for old in states[:-keep] if keep > 0 else []:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load_state(self, path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                   sharded: bool = False) -> dict[str, Any]:
        meta = json.loads((path / "state.json").read_text())
        model_sd = load_file(str(path / "model.state"))
        opt_sd = _unflatten_optimizer(load_file(str(path / "optim.state")), meta["optimizer"])
        if sharded:  # every rank reads the full state and keeps its shard
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            full = StateDictOptions(full_state_dict=True)
            set_model_state_dict(model, model_sd, options=full)
            set_optimizer_state_dict(model, opt, opt_sd, options=full)
        else:
            model.load_state_dict(model_sd)
            opt.load_state_dict(opt_sd)
        rng = load_file(str(path / "rng.state"))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available():
            states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
            if states:
                torch.cuda.set_rng_state_all(states)
        return meta


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state dict -> tensors named '<param id or name>/<field>' + JSON-able rest."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int | str, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, _, name = key.rpartition("/")
        state.setdefault(int(pid) if pid.isdigit() else pid, {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def shard(model: torch.nn.Module, device: torch.device, world: int) -> None:
    """FSDP2 (ZeRO-3): shard every block of every ModuleList, then the rest of the model, over the ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for m in list(model.modules()):
        if isinstance(m, torch.nn.ModuleList):
            for blk in m:
                fully_shard(blk, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer | None, sharded: bool) -> tuple[dict, dict | None]:
    """Full model (and optimizer) state dicts; collective on every rank when the model is sharded."""
    if not sharded:
        return model.state_dict(), opt.state_dict() if opt is not None else None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=full)
    return msd, get_optimizer_state_dict(model, opt, options=full) if opt is not None else None


class Logger:
    """metrics.jsonl always; TensorBoard when it is installed. Only rank 0 makes one."""

    def __init__(self, root: Path):
        self.file = open(root / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(root / "tb"))
        except ImportError:
            self.tb = None

    def log(self, step: int, values: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def fit(*, run: RunDir, model: torch.nn.Module, tcfg: TrainConfig, device: torch.device, dist_info: Dist,
        batch_fn: Callable[[int, Dist], Any], loss_fn: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict]],
        sample_fn: Callable[[int], dict[str, float] | None] | None = None,
        describe: Callable[[dict], str] | None = None, resume: bool = True) -> dict[str, float]:
    """Run `tcfg.steps` optimizer steps of `loss_fn(model, batch_fn(step))`, resuming from the last whole state.

    Returns the last logged values. Raises TrainingError after `max_bad_steps` non-finite steps in a row. With
    `tcfg.fsdp` under torchrun the model is sharded in place (FSDP2); read its weights with full_state().
    """
    from tqdm import tqdm

    sharded = tcfg.fsdp and dist_info.world > 1
    if sharded:
        shard(model, device, dist_info.world)
        sample_fn = None  # previews run one rank's model alone, which a sharded model cannot
    torch.manual_seed(tcfg.seed + dist_info.rank)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tcfg.lr, betas=(0.9, 0.99),
                            fused=device.type == "cuda" and not sharded)
    start = 0
    latest = run.latest() if resume else None
    if latest is not None:
        meta = run.load_state(latest, model, opt, sharded)
        start = int(meta["step"])
        if dist_info.main:
            print(f"resuming from {latest} (step {start})")
        torch.manual_seed(tcfg.seed + dist_info.rank + 1_000_003 * start)  # stream continues deterministically
    ddp = model
    if dist_info.world > 1 and not sharded:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if device.type == "cuda" else None)
    amp = autocast_dtype(tcfg, device)
    logger = Logger(run.root) if dist_info.main else None
    bad, last = 0, {}
    acc: dict[str, list[float]] = {}
    t0, seen = time.perf_counter(), 0
    clock0 = time.perf_counter() - (float(meta.get("elapsed", 0.0)) if latest is not None else 0.0)
    done = start
    bar = tqdm(range(start, tcfg.steps), initial=start, total=tcfg.steps, disable=not dist_info.main,
               dynamic_ncols=True, desc=run.root.name)
    for step in bar:
        # reseed per step so that the noise of step s does not depend on where the run was resumed
        torch.manual_seed((tcfg.seed + 1) * 1_000_003 + step * 97 + dist_info.rank)
        elapsed = time.perf_counter() - clock0
        time_fraction = elapsed / tcfg.time_limit if tcfg.time_limit > 0 else 0.0
        if dist_info.world > 1 and tcfg.time_limit > 0:  # ranks must agree on when to stop
            tf = torch.tensor([time_fraction], device=device)
            dist.all_reduce(tf, op=dist.ReduceOp.MAX)
            time_fraction = float(tf)
        if time_fraction >= 1.0:
            if dist_info.main:
                tqdm.write(f"time limit of {tcfg.time_limit:.0f} s reached after {step} steps")
            break
        batch = batch_fn(step, dist_info)
        for g in opt.param_groups:
            g["lr"] = tcfg.lr_at(step, time_fraction)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss, stats = loss_fn(ddp, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        if hasattr(gnorm, "full_tensor"):  # FSDP2: a DTensor norm over the shards
            gnorm = gnorm.full_tensor()
        ok = torch.isfinite(loss.detach()) & torch.isfinite(gnorm)
        if dist_info.world > 1:
            flag = ok.float().reshape(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok = flag[0] > 0
        if bool(ok):
            opt.step()
            bad = 0
        else:
            bad += 1
            opt.zero_grad(set_to_none=True)
            msg = f"step {step}: non-finite loss or gradient (loss={loss.item()}, grad norm={gnorm.item()}); " \
                  f"optimizer step skipped ({bad} in a row)"
            if logger:
                logger.log(step, {"skipped_steps": float(bad)})
                tqdm.write(msg)
            if bad >= tcfg.max_bad_steps:
                if logger:
                    logger.close()
                raise TrainingError(f"{msg}; stopping after {bad} in a row. Lower --lr, check the data, or "
                                    "resume from the last state with different settings")
            continue
        seen += 1
        for k, v in stats.items():
            acc.setdefault(k, []).append(float(v))
        acc.setdefault("loss", []).append(float(loss.detach()))
        acc.setdefault("grad_norm", []).append(float(gnorm))
        done = step + 1
        if dist_info.main and (done % tcfg.log_every == 0 or done == tcfg.steps):
            dt = time.perf_counter() - t0
            last = {k: sum(v) / len(v) for k, v in acc.items()}
            last["lr"] = opt.param_groups[0]["lr"]
            last["steps_per_s"] = seen / max(dt, 1e-9)
            logger.log(done, last)
            bar.set_postfix_str(describe(last) if describe else f"loss {last['loss']:.4f}")
            acc, t0, seen = {}, time.perf_counter(), 0
        if sample_fn is not None and dist_info.main and tcfg.sample_every and done % tcfg.sample_every == 0:
            vals = sample_fn(done)
            if vals:
                logger.log(done, vals)
        if done % tcfg.save_every == 0 or done == tcfg.steps:
            _save(run, done, model, opt, tcfg, dist_info, time.perf_counter() - clock0, sharded)
    if acc and dist_info.main:  # steps since the last log line (a time limit can end a run between logs)
        last = {k: sum(v) / len(v) for k, v in acc.items()}
        last["lr"] = opt.param_groups[0]["lr"]
        logger.log(done, last)
    if done != tcfg.steps and done > start:  # stopped by the time limit: keep what was learned
        _save(run, done, model, opt, tcfg, dist_info, time.perf_counter() - clock0, sharded)
    if logger:
        logger.close()
    last["steps_done"] = float(done)
    last["steps_run"] = float(done - start)  # the same on every rank
    return last


def trained_weights(run: RunDir, checkpoint_name: str, last: dict[str, float], model: torch.nn.Module,
                    tcfg: TrainConfig, dist_info: Dist) -> dict[str, torch.Tensor] | None:
    """The full weights after fit() (collective when sharded), or None when a finished run was re-run."""
    final = run.root / checkpoint_name
    if last.get("steps_run") == 0 and final.exists():
        print(f"{final} is already trained to step {tcfg.steps}; nothing to do")
        return None
    return full_state(model, None, tcfg.fsdp and dist_info.world > 1)[0]


def _save(run: RunDir, done: int, model, opt, tcfg: TrainConfig, dist_info: Dist, elapsed: float,
          sharded: bool = False) -> None:
    gathered = full_state(model, opt, True) if sharded else None  # collective: every rank takes part
    if dist_info.main:
        run.save_state(done, model, opt, tcfg.keep_states, {"train": asdict(tcfg), "elapsed": elapsed}, gathered)
    if dist_info.world > 1:
        dist.barrier()


def start_run(out: str, tcfg: TrainConfig, resolved: dict[str, Any], dry_run: bool = False,
              fresh: bool = False) -> tuple[RunDir, torch.device, Dist] | None:
    """Resolve device and threads, join DDP, write config.json; None when it was a dry run."""
    if dry_run:
        print(json.dumps({"train": asdict(tcfg), **resolved}, indent=2, sort_keys=True, default=str))
        return None
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(tcfg.device)
    dist_info = init_distributed(device)
    torch.manual_seed(tcfg.seed)  # initial weights are a function of --seed (the same on every rank)
    if device.type == "cuda" and dist_info.world > 1:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    if tcfg.batch % dist_info.world:
        raise TrainingError(f"--batch {tcfg.batch} does not split over {dist_info.world} ranks")
    run = RunDir(out)
    if fresh and dist_info.main:
        shutil.rmtree(run.state_root, ignore_errors=True)
    if dist_info.main:
        run.write_config({"train": asdict(tcfg), "device": str(device), "world_size": dist_info.world, **resolved})
    return run, device, dist_info
