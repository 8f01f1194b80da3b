"""A training run's folder: its configuration, whole training states, the manifest, and which stage owns it.

A run folder holds `config.json` (the resolved configuration, with the stage and the flags it was made with),
`metrics.jsonl`, TensorBoard events under `tb/`, and whole training states under `state/step_XXXXXXXX/` (weights,
optimizer, every RNG, step), the newest of which is named by `state/manifest.json`, written last. State files are
safetensors named *.state, so the run's one *.safetensors file is the checkpoint it produces. A state folder is
written under a temporary name and renamed when whole, so a run killed at any moment resumes from the last whole
state.

A folder belongs to the stage that made it: `reverie train idm --out <an ae run>` is refused before any work and
touches nothing. Re-running a stage into its own folder resumes it, with the same flags (see
train.training.config.RESUMABLE for the ones that may change).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.checkpoint import atomic_write_text
from engine.errors import ReverieError
from train.training.config import RESUMABLE, TrainingError, flag_name, recorded_flags

AVERAGE_FILE = "average.state"   # the weight average of `--ema`, beside model.state


class RunDir:
    """Files of one training run."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.state_root = self.root / "state"

    def write_config(self, cfg: dict[str, Any]) -> None:
        """Write config.json (whole or not at all)."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / "config.json", json.dumps(cfg, indent=2, sort_keys=True, default=str))

    def read_config(self) -> dict[str, Any] | None:
        """config.json, or None when the folder has none yet."""
        path = self.root / "config.json"
        if not path.is_file():
            return None
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise TrainingError(f"{path}: unreadable ({e}); delete the run folder to start over, or pick another "
                                "--out") from None
        if not isinstance(cfg, dict):
            raise TrainingError(f"{path}: not a run configuration; pick another --out")
        return cfg

    def claim(self, stage: str, flags: dict[str, Any], resumable: Collection[str] = RESUMABLE,
              force: bool = False, fresh: bool = False) -> list[str]:
        """Check, touching nothing, that `stage` may run in this folder with `flags`; returns the changes --force
        accepted.

        Another stage's folder is refused always (resuming its state would fail, and starting over would destroy
        it). A state made with other flags is refused unless `force` (resume with the new values) or `fresh` (start
        over); flags in `resumable` may change freely."""
        if self.root.exists() and not self.root.is_dir():
            raise TrainingError(f"--out {self.root}: a file, not a run folder; pick another --out")
        cfg = self.read_config()
        if cfg is None:
            return []
        owner = cfg.get("stage")
        if owner is None:
            raise TrainingError(f"--out {self.root}: its config.json names no training stage, so it is not a run "
                                f"folder of 'reverie train {stage}'; pick another --out")
        if owner != stage:
            raise TrainingError(f"--out {self.root}: the run folder of 'reverie train {owner}' (its config.json "
                                f"says so); 'reverie train {stage}' will neither resume nor overwrite it, so pick "
                                "another --out")
        old = cfg.get("flags")
        if fresh or not isinstance(old, dict) or self.latest() is None:  # nothing of the old run would carry over
            return []
        changed = [f"{flag_name(k)} {_shown(old[k])} -> {_shown(v)}" for k, v in flags.items()
                   if k in old and k not in resumable and old[k] != v]
        if changed and not force:
            raise TrainingError(f"--out {self.root}: its {stage} run was made with other flags ({'; '.join(changed)})"
                                "; re-run with the same flags to resume it, add --force to resume with the new "
                                "values, --no-resume to start over, or pick another --out")
        return changed

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
                   extra: dict[str, Any], gathered: tuple[dict, dict] | None = None,
                   average: dict[str, torch.Tensor] | None = None) -> Path:
        """Write a whole training state under a temporary name, rename it, then point the manifest at it.

        `gathered`: full (model, optimizer) state dicts already gathered from a sharded (FSDP2) model.
        `average`: the run's weight average (`--ema`), written as average.state.
        """
        model_sd, opt_sd = gathered if gathered is not None else (model.state_dict(), opt.state_dict())
        name = f"step_{step:08d}"
        final = self.state_root / name
        tmp = self.state_root / f".{name}.tmp"
        for stale in [tmp, *self.state_root.glob(".step_*.tmp")]:  # this one, and those of saves cut off before
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model_sd.items()}, str(tmp / "model.state"))
        opt_tensors, opt_meta = _flatten_optimizer(opt_sd)
        save_file(opt_tensors, str(tmp / "optim.state"))
        if average is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in average.items()}, str(tmp / AVERAGE_FILE))
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
        """Load a whole state into model and optimizer (and the RNGs); a state of another model is a clear error."""
        try:
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
        except ReverieError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as e:  # torch says a mismatch as a RuntimeError
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrainingError(f"{path}: this training state does not fit the model being trained ({first}); "
                                "start over with --no-resume, or pick another --out") from None
        rng = load_file(str(path / "rng.state"))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available():
            states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
            if states:
                torch.cuda.set_rng_state_all(states)
        return meta

    def load_average(self, path: Path) -> dict[str, torch.Tensor] | None:
        """The weight average (`--ema`) saved with the state at `path`, or None when it holds none."""
        f = path / AVERAGE_FILE
        if not f.exists():
            return None
        try:
            return load_file(str(f))
        except (OSError, ValueError, SafetensorError) as e:
            raise TrainingError(f"{f}: unreadable weight average ({e}); resume from an older state or start over "
                                "with --no-resume") from None


def check_out(args: argparse.Namespace, stage: str, resumable: Collection[str] = RESUMABLE) -> dict[str, Any]:
    """Check `--out` for `stage` before any work (see RunDir.claim); returns the flags to record in config.json."""
    flags = recorded_flags(args)
    changed = RunDir(args.out).claim(stage, flags, resumable, force=args.force, fresh=args.no_resume)
    if changed and os.environ.get("RANK", "0") == "0":
        print(f"{args.out}: resuming with changed flags (--force): {'; '.join(changed)}")
    return flags


def _shown(v: Any) -> str:
    """A flag value as a user would type it (unset flags say so)."""
    return "(not given)" if v is None else str(v)


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
    """The inverse of _flatten_optimizer."""
    state: dict[int | str, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, _, name = key.rpartition("/")
        state.setdefault(int(pid) if pid.isdigit() else pid, {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}
