"""The settings every stage shares, how a stage's command line is derived from its settings, path checks and the one
seeding rule.

Each stage (train.training.ae, .idm, .wm) has one settings dataclass (`SETTINGS`): TrainConfig's fields plus its own.
Every field is settable as `--set NAME=VALUE` (`--set rollout_iters=2 --set backbone_actions=false`), typed by the
field (a bool takes true/false/on/off/yes/no/1/0); the common ones (metadata `flag=True`) are also flags (`--steps`).
add_settings() derives the flags, `--set` and the list of settings in `--help` from the dataclass; settings_from_args()
builds the settings back, each bad name or value a one-line error. Paths (`--data`, `--out`, `--ae`, `--idm`,
`--init`) are flags of the stage, never settings.

Every resolved setting is recorded in the run folder's config.json ("flags", with the paths). Re-running into the same
`--out` may change only the RESUMABLE ones (how long and how often, not what is trained); any other change is refused
unless `--force` (resume with the new values) or `--no-resume` (start over) says so.

Paths are checked before any work (loading data, encoding): a missing `--data`, `--ae`, `--idm` or `--init` fails
at once with an error that names the flag the user typed.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import math
import textwrap
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine.checkpoint import CheckpointError, resolve_model, shipped_models
from engine.errors import ReverieError


class TrainingError(ReverieError, RuntimeError):
    """A run that cannot go on (diverged, bad resume state, a refused run folder, a bad setting)."""


def setting(default: Any, help: str, *, flag: bool = False, check: tuple[Callable[[Any], bool], str] | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """A settings field: its help, whether it is also a flag, and a check with what it must be ("at least 1")."""
    return field(default=default, metadata={"help": help, "flag": flag, "check": check, "choices": choices})


def at_least(lo: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= lo), f"at least {lo:g}"


def within(lo: float, hi: float, open_lo: bool = False, open_hi: bool = False) -> tuple[Callable[[Any], bool], str]:
    """A check for a number in [lo, hi] (or open at either end); NaN fails it."""
    def ok(v: float) -> bool:
        return (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi)
    return ok, f"in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"


@dataclass
class TrainConfig:
    """Optimisation settings shared by every stage."""

    steps: int = setting(2000, "optimizer steps", flag=True, check=at_least(1))
    batch: int = setting(16, "global batch (split across ranks)", flag=True, check=at_least(1))
    lr: float = setting(3e-4, "peak learning rate", flag=True, check=within(0, 1, open_lo=True))
    weight_decay: float = setting(0.01, "AdamW weight decay (matrices only)", check=at_least(0))
    warmup: int = setting(100, "linear warm-up steps (at most a fifth of the steps)", check=at_least(0))
    min_lr_ratio: float = setting(0.1, "cosine decay ends at lr times this", check=within(0, 1))
    grad_clip: float = setting(1.0, "clip the gradient norm to this", check=within(0, math.inf, open_lo=True))
    seed: int = setting(0, "seed of initial weights, data order and noise (see seed_for)", check=at_least(0))
    precision: str = setting("auto", "auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX-512 BF16, AMX), "
                             "fp32 on other CPUs", choices=("auto", "fp32", "bf16"))
    device: str = setting("auto", "auto, cpu, cuda, cuda:1 ...", flag=True)
    threads: int = setting(2, "torch CPU threads (0: torch's default)", flag=True, check=at_least(0))
    save_every: int = setting(500, "write a whole training state every N steps", check=at_least(1))
    log_every: int = setting(25, "log averaged metrics every N steps", check=at_least(1))
    sample_every: int = setting(0, "write sample images every N steps (0: at the end)", check=at_least(0))
    keep_states: int = setting(2, "how many training states to keep", check=at_least(1))
    max_bad_steps: int = setting(5, "stop after this many non-finite steps in a row", check=at_least(1))
    # > 0 ends the run when either steps or time run out; the schedule follows whichever is further along
    time_limit: float = setting(0.0, "stop after this many seconds (0: none; the LR schedule then follows time; not "
                                "bit-reproducible)", flag=True, check=at_least(0))
    fsdp: bool = setting(False, "under torchrun: shard the model over ranks (FSDP2) instead of replicating it (DDP)")
    ema: float = setting(0.0, "keep an exponential moving average of the weights with this decay per step (0.999 "
                         "averages about the last 1,000 steps; 0: off); the checkpoint holds the average",
                         check=within(0, 1, open_hi=True))

    def said(self, name: str) -> str:
        """Setting `name` as a user types it, for an error: `--steps 0` (a flag), `--set focus_share=1.5`."""
        text = shown(getattr(self, name))
        if type(self).__dataclass_fields__[name].metadata.get("flag"):
            return f"{flag_of(name)} {text}"
        return f"--set {name}={text}"

    def lr_at(self, step: int, time_fraction: float = 0.0) -> float:
        """Linear warm-up then cosine decay over max(step progress, time progress)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        p = min(1.0, max((step - self.warmup) / max(1, self.steps - self.warmup), time_fraction))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def restate(name: str, default: Any) -> Any:
    """TrainConfig's field `name` with a stage's own default (help, flag and check kept)."""
    return field(default=default, metadata=TrainConfig.__dataclass_fields__[name].metadata)


# Settings that may change when a run resumes: they say how long and how often, not what is trained. `steps` raised
# continues a finished run (the cosine schedule stretches to the new length). A stage adds its own (wm: half and
# idm, which only shape the file written at the end).
RESUMABLE = frozenset({"steps", "time_limit", "save_every", "log_every", "sample_every", "keep_states", "threads",
                       "max_bad_steps"})
# Flags that steer the command rather than the run: never recorded or compared.
CONTROL = frozenset({"stage", "out", "dry_run", "no_resume", "force", "no_progress"})
# Flags that name paths: recorded as absolute paths, so that the same run from another folder compares equal.
PATH_FLAGS = frozenset({"data", "ae", "idm", "init"})


def flag_name(dest: str) -> str:
    """A recorded name as a user sets it, for messages: a path or control as its flag (--data), a setting by name."""
    return "--" + dest.replace("_", "-") if dest in PATH_FLAGS or dest in CONTROL or dest == "skip_bad" else dest


def shown(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def flag_of(name: str) -> str:
    """The flag of a field: weight_decay -> --weight-decay."""
    return "--" + name.replace("_", "-")


def field_types(cls: type) -> dict[str, type]:
    """The type of each field of a settings dataclass (int, float, str or bool)."""
    return typing.get_type_hints(cls)


# ---------------------------------------------------------------------------------------------------------------
# The command line of a stage, derived from its settings dataclass
# ---------------------------------------------------------------------------------------------------------------
TRUE, FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")
HELP_WIDTH, HELP_INDENT = 100, 28   # the settings list of --help: line width, column of the help text


def parse_value(name: str, kind: type, text: str, choices: tuple[str, ...] | None = None) -> Any:
    """`text` as a value of setting `name` of type `kind`; a TrainingError saying what it takes."""
    t = text.strip()
    if kind is bool:
        if t.lower() in TRUE + FALSE:
            return t.lower() in TRUE
        raise TrainingError(f"--set {name}={text}: {name} is true or false (also on/off, yes/no, 1/0)")
    if kind is int:
        try:
            return int(t)
        except ValueError:
            raise TrainingError(f"--set {name}={text}: {name} takes a whole number") from None
    if kind is float:
        try:
            return float(t)
        except ValueError:
            raise TrainingError(f"--set {name}={text}: {name} takes a number") from None
    if choices and t not in choices:
        raise TrainingError(f"--set {name}={text}: {name} is one of {', '.join(choices)}")
    return t


def add_settings(p: argparse.ArgumentParser, settings: type[TrainConfig]) -> None:
    """Add a stage's settings to its parser (the flagged ones as flags, every one through `--set`, all listed in the
    epilog), then the controls every stage shares. Flags default to None: settings_from_args knows what was given."""
    types = field_types(settings)
    for f in fields(settings):
        if not f.metadata.get("flag"):
            continue
        kind, help_text = types[f.name], f.metadata["help"]
        if kind is bool:
            p.add_argument(flag_of(f.name), action="store_true", default=None, help=help_text)
        else:
            p.add_argument(flag_of(f.name), type=kind, default=None, metavar=f.name.upper(),
                           choices=f.metadata.get("choices"), help=f"{help_text} (default {shown(f.default)})")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="set any setting listed below (repeatable), e.g. --set rollout_iters=2")
    p.add_argument("--skip-bad", action="store_true", help="skip damaged episode files with a warning")
    p.add_argument("--no-resume", action="store_true", help="ignore saved states in --out and start over")
    p.add_argument("--force", action="store_true",
                   help="resume although settings other than steps, time limit and cadences changed")
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings and exit")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars: one line per log_every steps instead (for a log file)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = settings_help(settings)


def settings_help(settings: type[TrainConfig]) -> str:
    """The list of settings for `--help`: name=default, then its help (and its flag, where it has one)."""
    lines = ["settings (--set NAME=VALUE; a bool takes true/false; those with a flag above may be given either way):"]
    for f in fields(settings):
        head = f"  {f.name}={shown(f.default)}"
        text = f.metadata["help"] + (f" [{flag_of(f.name)}]" if f.metadata.get("flag") else "")
        wrapped = textwrap.wrap(text, HELP_WIDTH - HELP_INDENT)
        lines.append(f"{head:<{HELP_INDENT}}{wrapped[0]}" if len(head) < HELP_INDENT
                     else f"{head}\n{'':<{HELP_INDENT}}{wrapped[0]}")
        lines += [f"{'':<{HELP_INDENT}}{w}" for w in wrapped[1:]]
    return "\n".join(lines)


def settings_from_args(args: argparse.Namespace, settings: type[TrainConfig], stage: str):
    """The stage's settings from its parsed flags and `--set`s, every value checked (one-line errors); the namespace
    then holds every resolved setting, as config.json records it. Warm-up is at most a fifth of the run."""
    by_name = {f.name: f for f in fields(settings)}
    types = field_types(settings)
    values: dict[str, Any] = {}
    given: dict[str, str] = {}
    for name, f in by_name.items():
        if f.metadata.get("flag") and getattr(args, name, None) is not None:
            values[name], given[name] = getattr(args, name), flag_of(name)
    for item in getattr(args, "set", None) or []:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise TrainingError(f"--set {item}: write NAME=VALUE, e.g. --set rollout_iters=2")
        if name not in by_name:
            raise TrainingError(unknown_setting(item, name, list(by_name), stage))
        if name in given:
            raise TrainingError(f"--set {item}: {name} is also given as {given[name]}; give it once")
        f = by_name[name]
        values[name], given[name] = parse_value(name, types[name], text, f.metadata.get("choices")), f"--set {name}"
    s = settings(**values)
    for name, f in by_name.items():
        check, value = f.metadata.get("check"), getattr(s, name)
        if check is not None and not check[0](value):
            by_flag = given[name] == flag_of(name)
            where = f"{flag_of(name)} {shown(value)}" if by_flag else f"--set {name}={shown(value)}"
            raise TrainingError(f"{where}: must be {check[1]}")
    if s.ema > 0 and s.fsdp:
        raise TrainingError(f"{s.said('ema')} with {s.said('fsdp')}: the average of a sharded model is not "
                            "supported; drop one of them")
    if hasattr(args, "set"):
        del args.set
    vars(args).update(asdict(s))
    return replace(s, warmup=min(s.warmup, max(1, s.steps // 5)))


def unknown_setting(item: str, name: str, known: list[str], stage: str) -> str:
    """The error of a `--set` of a name the stage does not have: the close matches, or where to look."""
    if name in PATH_FLAGS or name in ("out", "data"):
        return f"--set {item}: {name} is a path; give it as --{name}"
    close = difflib.get_close_matches(name.replace("-", "_"), known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else f"see 'reverie train {stage} --help' for the settings"
    return f"--set {item}: 'reverie train {stage}' has no setting {name!r}; {hint}"


def recorded_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings and paths a run is made with, as config.json keeps them (paths absolute, controls left out)."""
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
    """A checkpoint flag (`--ae`, `--idm`): the file, `name` inside a run folder, or a shipped model's name
    ("default"); the error names the flag."""
    p = resolve_model(value)
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
    """`--init`: a checkpoint, a shipped model's name, a training run folder or one of its state folders; the error
    names the flag."""
    p = resolve_model(value)
    if not p.exists():
        raise CheckpointError(f"--init {value}: no such checkpoint or training run; pass a .safetensors "
                              "checkpoint, a shipped model's name (" + ", ".join(shipped_models()) + "), a run "
                              "folder of 'reverie train wm' or one of its state folders")
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
