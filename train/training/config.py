"""The training configuration every stage shares, its command-line flags, path checks and the one seeding rule.

TrainConfig's fields are the shared flags of `reverie train ae|wm|idm` (`--weight-decay` sets `weight_decay`);
add_train_flags() derives them from the dataclass, with each stage's defaults from STAGE_DEFAULTS, and
config_from_args() builds the config back from the parsed flags. A stage module adds its own flags and reads them
from the namespace; it never imports train.training.cli (which only registers the stages).

Every flag the user gave is recorded in the run folder's config.json ("flags"). Re-running into the same `--out`
may change only the RESUMABLE flags (how long and how often, not what is trained); any other change is refused
unless `--force` (resume with the new values) or `--no-resume` (start over) says so.

Paths are checked before any work (loading data, encoding): a missing `--data`, `--ae`, `--idm` or `--init` fails
at once with an error that names the flag the user typed.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine.checkpoint import CheckpointError
from engine.errors import ReverieError


class TrainingError(ReverieError, RuntimeError):
    """A run that cannot go on (diverged, bad resume state, a refused run folder, a bad flag)."""


def _f(default: Any, help: str = "", **kw: Any) -> Any:
    """A TrainConfig field whose flag help text travels in its metadata."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Optimisation settings shared by every stage (CLI flags map onto these fields)."""

    steps: int = _f(2000, "optimizer steps")
    batch: int = _f(16, "global batch (split across ranks)")
    lr: float = _f(3e-4, "peak learning rate")
    weight_decay: float = _f(0.01, "AdamW weight decay (matrices only)")
    warmup: int = _f(100, "linear warm-up steps (at most a fifth of --steps)")
    min_lr_ratio: float = _f(0.1, "cosine decay ends at lr times this")
    grad_clip: float = _f(1.0, "clip the gradient norm to this")
    seed: int = _f(0, "seed of initial weights, data order and noise (see seed_for)")
    precision: str = _f("auto", "auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX-512 BF16, AMX), fp32 "
                        "on other CPUs", choices=("auto", "fp32", "bf16"))
    device: str = _f("auto", "auto, cpu, cuda, cuda:1 ...")
    threads: int = _f(0, "torch CPU threads (0: torch's default)")
    save_every: int = _f(500, "write a whole training state every N steps")
    log_every: int = _f(25, "log averaged metrics every N steps")
    sample_every: int = _f(0, "write sample images every N steps (0: at the end)")
    keep_states: int = _f(2, "how many training states to keep")
    max_bad_steps: int = _f(5, "stop after this many non-finite steps in a row")
    # > 0 ends the run when either steps or time run out; the schedule follows whichever is further along
    time_limit: float = _f(0.0, "stop after this many seconds (the LR schedule then follows time; not "
                                "bit-reproducible)")
    fsdp: bool = _f(False, "under torchrun: shard the model over ranks (FSDP2) instead of replicating it (DDP)")
    ema: float = _f(0.0, "keep an exponential moving average of the weights with this decay per step (e.g. 0.999; "
                    "0: off); the checkpoint written at the end holds the average")

    def lr_at(self, step: int, time_fraction: float = 0.0) -> float:
        """Linear warm-up then cosine decay over max(step progress, time progress)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        p = min(1.0, max((step - self.warmup) / max(1, self.steps - self.warmup), time_fraction))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


# flag defaults that differ from TrainConfig's: per stage, and for every command line
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "ae": {"steps": 2000, "batch": 32, "lr": 1e-3},
    "wm": {"steps": 3000, "batch": 8, "lr": 3e-4},
    "idm": {"steps": 600, "batch": 64, "lr": 1e-3},
}
CLI_DEFAULTS: dict[str, Any] = {"threads": 2}

# Flags that may change when a run resumes: they say how long and how often, not what is trained. `--steps`
# raised continues a finished run (the cosine schedule stretches to the new length). A stage adds its own (wm:
# --half and --idm, which only shape the file written at the end).
RESUMABLE = frozenset({"steps", "time_limit", "save_every", "log_every", "sample_every", "keep_states", "threads",
                       "max_bad_steps"})
# Flags that steer the command rather than the run: never recorded or compared.
CONTROL = frozenset({"stage", "out", "dry_run", "no_resume", "force", "no_progress"})
# Flags that name paths: recorded as absolute paths, so that the same run from another folder compares equal.
PATH_FLAGS = frozenset({"data", "ae", "idm", "init"})


def flag_name(dest: str) -> str:
    """The flag a user types for an argparse destination: weight_decay -> --weight-decay."""
    return "--" + dest.replace("_", "-")


def add_train_flags(p: argparse.ArgumentParser, stage: str) -> None:
    """Add the flags every stage shares: the run's paths and controls, then one flag per TrainConfig field."""
    p.add_argument("--data", required=True, help="folder of episode files (from 'reverie record')")
    p.add_argument("--out", required=True, help="run folder (created; an existing run of this stage resumes)")
    p.add_argument("--preset", default="tiny", help="model size: tiny, small, oasis (default tiny)")
    defaults = {**CLI_DEFAULTS, **STAGE_DEFAULTS[stage]}
    for f in fields(TrainConfig):
        default = defaults.get(f.name, f.default)
        assert default is not MISSING, f.name
        if isinstance(default, bool):
            p.add_argument(flag_name(f.name), action="store_true", default=default, help=f.metadata["help"])
            continue
        p.add_argument(flag_name(f.name), type=type(default), default=default, choices=f.metadata.get("choices"),
                       help=f"{f.metadata['help']} (default {default})")
    p.add_argument("--skip-bad", action="store_true", help="skip damaged episode files with a warning")
    p.add_argument("--no-resume", action="store_true", help="ignore saved states in --out and start over")
    p.add_argument("--force", action="store_true",
                   help="resume although flags other than steps, time limit and cadences changed")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars: one line per --log-every step instead (for a log file)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed flags (warm-up at most a fifth of the run)."""
    tcfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    if not 0.0 <= tcfg.ema < 1.0:
        raise TrainingError(f"--ema {tcfg.ema}: the average's decay per step must be in [0, 1) (0.999 averages over "
                            "about the last 1,000 steps; 0 turns it off)")
    if tcfg.ema > 0 and tcfg.fsdp:
        raise TrainingError("--ema with --fsdp: the average of a sharded model is not supported; drop one of them")
    return replace(tcfg, warmup=min(tcfg.warmup, max(1, tcfg.steps // 5)))


def recorded_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags a run is made with, as config.json keeps them (paths absolute, controls left out)."""
    out = {}
    for k, v in sorted(vars(args).items()):
        if k in CONTROL:
            continue
        out[k] = str(Path(v).resolve()) if k in PATH_FLAGS and v else v
    return out


# ---------------------------------------------------------------------------------------------------------------
# Paths, checked before any work
# ---------------------------------------------------------------------------------------------------------------
def data_path(value: str) -> Path:
    """`--data`: a folder of episode files (or one file); a TrainingError naming the flag otherwise."""
    from train.data.episodes import SUFFIX

    p = Path(value)
    if not p.exists():
        raise TrainingError(f"--data {value}: no such folder; record episodes into it with "
                            f"'reverie record --out {value}'")
    if p.is_dir() and not any(p.glob("*" + SUFFIX)):
        raise TrainingError(f"--data {value}: no *{SUFFIX} episode files in this folder; record some with "
                            f"'reverie record --out {value}'")
    return p


def checkpoint_path(flag: str, value: str, name: str, made_by: str) -> Path:
    """A checkpoint flag (`--ae`, `--idm`): the file, or `name` inside a run folder; the error names the flag."""
    p = Path(value)
    if p.is_dir():
        if not (p / name).is_file():
            raise CheckpointError(f"{flag} {value}: a folder without {name}; pass the checkpoint that "
                                  f"'{made_by}' wrote (has that run finished?)")
        return p / name
    if not p.is_file():
        raise CheckpointError(f"{flag} {value}: no such checkpoint file; pass the {name} that '{made_by}' "
                              "wrote, or its run folder")
    return p


def init_path(value: str) -> Path:
    """`--init`: a checkpoint, a training run folder or one of its state folders; the error names the flag."""
    p = Path(value)
    if not p.exists():
        raise CheckpointError(f"--init {value}: no such checkpoint or training run; pass a .safetensors "
                              "checkpoint, a run folder of 'reverie train wm' or one of its state folders")
    return p


def open_episodes(args: argparse.Namespace):
    """The EpisodeSource of `--data` (checked first); the dataset's own errors are said as errors of the flag."""
    from train.data.windows import EpisodeSource

    data_path(args.data)
    try:
        return EpisodeSource(args.data, skip_bad=args.skip_bad)
    except ReverieError:  # a damaged episode file names itself and says what to do
        raise
    except (OSError, ValueError) as e:  # the dataset reader's plain errors: mixed frame sizes or action specs
        raise TrainingError(f"--data {args.data}: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# The one seeding rule
# ---------------------------------------------------------------------------------------------------------------
# Every random draw of a training run comes from a seed made by seed_for(), a pure function of (run seed, step,
# rank, stream). Since nothing carries over from one step to the next, step s draws the same windows and noise
# whether the run went straight there or was resumed, and 20 + 30 steps equal 50 straight steps bit for bit.
#   init     the initial weights (step 0, rank 0 on every rank: DDP replicas start equal)
#   data     which windows a step trains on (rank 0 on every rank: one global batch that each rank slices)
#   noise    torch's own RNG during a step (per rank: diffusion noise, tau, dropout differ between ranks)
#   crop     the autoencoder's random crop of a step (shared by ranks, like the data)
#   preview  the sample images written during and after training
STREAMS = ("init", "data", "noise", "crop", "preview")


def seed_for(seed: int, step: int = 0, rank: int = 0, stream: str = "data") -> int:
    """The seed of random stream `stream` at `step` on `rank` of a run seeded with `seed` (a 63-bit integer)."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; one of {STREAMS}")
    # a hash, not arithmetic: distinct (seed, step, rank, stream) never collide the way seed+rank and seed+1 do
    digest = hashlib.blake2b(f"{stream}:{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def step_generator(seed: int, step: int, rank: int = 0, stream: str = "data"):
    """A CPU generator for `stream` at `step` (by default the data position: shared by ranks when rank is 0)."""
    import torch

    return torch.Generator().manual_seed(seed_for(seed, step, rank, stream))
