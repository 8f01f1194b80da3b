"""`reverie train --recipe NAME`: every stage of a named recipe, in order, into one run folder.

A recipe is a TOML file shipped in train/training/recipes/ (or a path to one of your own): the data it trains on,
then its stages, each a table of the settings its command takes:

    description = "..."
    model = "@eval"                      # the stage whose output becomes RUN/model.safetensors
    [settings]                           # shared by every training stage that has the setting
    threads = 2
    [[data]]                             # game recipes record their own data into --data (default RUN/data)
    name = "train"; env = "builtin:gems"; agent = "scripted"; episodes = 40; seed = 0
    [[data]]
    name = "mix"; union = ["train", "random"]
    [[stage]]
    name = "ae"; kind = "ae"; data = "train"; steps = 3000
    [[stage]]
    name = "wm"; kind = "wm"; data = "mix"; ae = "@ae"; idm = "@idm"; init = "@wm_mix/state"; ranks = 2

Kinds: ae, idm, wm (`reverie train KIND`, settings passed as `--set KEY=VALUE`), merge (`reverie train merge`:
`models = [["@a", 0.5], ["@b", 0.5]]`, `add = [["@own", "@control", 1.0]]`, `parts`), eval (`reverie eval`: its
flags; `write_model = true` writes the evaluated model with its run-time defaults). `@name` is the output of an
earlier stage (`@name/state`: a world model's newest training state); a bare name such as "default" is a shipped
model (engine/assets/). `beside = true` starts a stage in the
background on its own log; a stage that reads its output waits for it. `ranks = N` runs a stage data-parallel under
torchrun (N processes, one thread each).

Recipes without [[data]] train on --data: every tenth episode (at least one) is held out for the eval stages (the
set "heldout"; the rest is "train") unless --heldout names a folder. Each stage resumes when the same command runs
again: a finished stage is skipped (its output and its command are recorded in RUN/recipe/), an interrupted one
continues from the state it saved.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from engine.checkpoint import resolve_model
from engine.errors import ReverieError

RECIPES = Path(__file__).parent / "recipes"
TRAIN_KINDS = ("ae", "idm", "wm")
KINDS = (*TRAIN_KINDS, "merge", "eval")
OUTPUTS = {"ae": "ae.safetensors", "idm": "idm.safetensors", "wm": "model.safetensors"}
STAGE_KEYS = {"name", "kind", "data", "ae", "idm", "init", "model", "beside", "ranks", "models", "add", "parts",
              "write_model"}
TOP_KEYS = {"description", "model", "settings", "data", "stage"}
DATA_KEYS = {"name", "env", "agent", "episodes", "steps", "size", "seed", "union"}
HELDOUT_EVERY = 10


class RecipeError(ReverieError, ValueError):
    """A recipe that cannot run: unknown name, bad file, unknown setting."""


@dataclasses.dataclass
class DataSet:
    """A named folder of episodes: recorded by the recipe, the union of others, or a part of --data."""

    name: str
    record: dict[str, Any] | None = None
    union: list[str] | None = None


@dataclasses.dataclass
class Stage:
    """One command of a recipe: what it runs, on which data, with which settings and inputs."""

    name: str
    kind: str
    data: str = "train"
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)      # ae / idm / init / model -> @ref or path
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    beside: bool = False
    ranks: int = 1
    merge: dict[str, Any] = dataclasses.field(default_factory=dict)       # models / add / parts
    write_model: bool = False


@dataclasses.dataclass
class Recipe:
    name: str
    path: Path
    description: str
    model: str
    data: list[DataSet]
    stages: list[Stage]


# ---------------------------------------------------------------------------------------------------------------
# Reading a recipe
# ---------------------------------------------------------------------------------------------------------------
def available() -> dict[str, str]:
    """Shipped recipe names -> their one-line description."""
    out = {}
    for p in sorted(RECIPES.glob("*.toml")):
        with open(p, "rb") as f:
            out[p.stem] = tomllib.load(f).get("description", "").split(". ")[0]
    return out


def recipe_path(name: str) -> Path:
    """A shipped recipe's file, or a .toml path; a RecipeError naming the known recipes otherwise."""
    p = Path(name)
    if p.suffix == ".toml":
        if not p.is_file():
            raise RecipeError(f"--recipe {name}: no such file")
        return p
    if (RECIPES / f"{name}.toml").is_file():
        return RECIPES / f"{name}.toml"
    raise RecipeError(f"--recipe {name}: no such recipe; the recipes are {', '.join(available())} "
                      "(or pass a path to a .toml file of your own)")


def load_recipe(name: str, overrides: list[str] = ()) -> Recipe:
    """Read and check a recipe, with `--set` overrides (STAGE.KEY=VALUE, or KEY=VALUE for every training stage)."""
    path = recipe_path(name)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None
    where = f"{path}"
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {sorted(unknown)}; a recipe has {sorted(TOP_KEYS)}")
    shared = dict(raw.get("settings", {}))
    data = [parse_data(d, where) for d in raw.get("data", [])]
    stages = [parse_stage(s, i, where) for i, s in enumerate(raw.get("stage", []))]
    if not stages:
        raise RecipeError(f"{where}: no [[stage]] tables")
    names = [d.name for d in data] + [s.name for s in stages]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RecipeError(f"{where}: the name(s) {dup} are used twice; every data set and stage needs its own")
    for s in stages:   # shared settings go to each training stage that has not set them itself
        if s.kind in TRAIN_KINDS:
            s.settings = {**{k: v for k, v in shared.items() if k in stage_settings(s.kind)}, **s.settings}
    recipe = Recipe(path.stem, path, raw.get("description", ""), raw.get("model", ""), data, stages)
    apply_overrides(recipe, overrides)
    check(recipe)
    return recipe


def parse_data(d: dict, where: str) -> DataSet:
    unknown = set(d) - DATA_KEYS
    if unknown or "name" not in d:
        raise RecipeError(f"{where}: a [[data]] table needs a name and may have {sorted(DATA_KEYS)} "
                          f"(got {sorted(d)})")
    if "union" in d:
        return DataSet(d["name"], union=list(d["union"]))
    if "env" not in d:
        raise RecipeError(f"{where}: data set {d['name']!r} needs env (a game to record) or union (other sets)")
    return DataSet(d["name"], record={k: v for k, v in d.items() if k != "name"})


def parse_stage(s: dict, i: int, where: str) -> Stage:
    if "kind" not in s or s["kind"] not in KINDS:
        raise RecipeError(f"{where}: stage {i + 1} needs kind = one of {', '.join(KINDS)} (got {s.get('kind')!r})")
    kind = s["kind"]
    st = Stage(name=s.get("name", kind), kind=kind, data=s.get("data", "train"),
               inputs={k: s[k] for k in ("ae", "idm", "init", "model") if k in s},
               beside=bool(s.get("beside", False)), ranks=int(s.get("ranks", 1)),
               merge={k: s[k] for k in ("models", "add", "parts") if k in s},
               write_model=bool(s.get("write_model", False)))
    st.settings = {k: v for k, v in s.items() if k not in STAGE_KEYS}
    return st


def stage_settings(kind: str) -> dict[str, str]:
    """The setting names a stage kind takes -> a line of help (training stages: their settings dataclass; eval: its
    flags)."""
    if kind in TRAIN_KINDS:
        import importlib

        module = importlib.import_module({"ae": "train.training.ae", "idm": "train.training.idm",
                                          "wm": "train.training.wm"}[kind])
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(module.SETTINGS)}
    if kind == "eval":   # a command the recipe runs by name, as it runs every stage: asked through the dispatcher
        import reverie_cli

        return {a.dest: a.help or "" for a in reverie_cli.command_parser("eval")._actions if a.option_strings}
    return {}


# paths and controls the runner sets itself: a recipe never names them
RUNNER_OWNED = {"data", "out", "model", "json", "write_model", "ae", "idm", "init", "dry_run", "no_resume", "force",
                "help", "set"}


def parse_value(text: str) -> Any:
    """A --set value read as a TOML value (numbers, true/false, ["lists"]), else as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(recipe: Recipe, overrides: list[str]) -> None:
    """Apply `--set STAGE.KEY=VALUE` / `--set KEY=VALUE` (every training stage) / `--set DATA.KEY=VALUE`."""
    stages = {s.name: s for s in recipe.stages}
    data = {d.name: d for d in recipe.data if d.record}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: give KEY=VALUE or STAGE.KEY=VALUE (e.g. wm.steps=5000)")
        value = parse_value(text)
        target, dot, k = key.rpartition(".")
        if not dot:   # every training stage that takes it
            hits = [s for s in recipe.stages if s.kind in TRAIN_KINDS and k in stage_settings(s.kind)]
            if not hits:
                raise RecipeError(f"--set {item}: no training stage of recipe {recipe.name} takes {k!r}; name the "
                                  f"stage as STAGE.{k} (stages: {', '.join(stages)})")
            for s in hits:
                s.settings[k] = value
        elif target in stages:
            stages[target].settings[k] = value
        elif target in data:
            if k not in DATA_KEYS - {"name", "union"}:
                raise RecipeError(f"--set {item}: data set {target} has {sorted(DATA_KEYS - {'name', 'union'})}")
            data[target].record[k] = value
        else:
            raise RecipeError(f"--set {item}: recipe {recipe.name} has no stage or recorded data set {target!r} "
                              f"(stages: {', '.join(stages)}; data: {', '.join(data) or 'none'})")


def check(recipe: Recipe) -> None:
    """Every setting known to its stage, every @reference to an earlier stage, every data set known."""
    where = str(recipe.path)
    sets = {"train", "heldout"} if not recipe.data else {d.name for d in recipe.data}
    for d in recipe.data:
        for u in d.union or ():
            if u not in sets:
                raise RecipeError(f"{where}: data set {d.name} unites {u!r}, which is not a data set")
    seen: dict[str, Stage] = {}
    for s in recipe.stages:
        if s.kind in (*TRAIN_KINDS, "eval") and s.data not in sets:
            raise RecipeError(f"{where}: stage {s.name} trains on data {s.data!r}; the data sets are "
                              f"{', '.join(sorted(sets))}")
        known = stage_settings(s.kind)
        if s.kind != "merge":
            bad = [k for k in s.settings if k not in known or k in RUNNER_OWNED]
            if bad:
                import difflib

                near = {b: difflib.get_close_matches(b, known, n=2) for b in bad}
                hint = "; ".join(f"{b}: did you mean {', '.join(m)}?" for b, m in near.items() if m)
                raise RecipeError(f"{where}: stage {s.name} ({s.kind}) has no setting(s) {bad}"
                                  + (f" ({hint})" if hint else "")
                                  + f"; see 'reverie {'train ' + s.kind if s.kind in TRAIN_KINDS else s.kind} --help'")
        for ref in references(s):
            base = ref[1:].split("/")[0]
            if base not in seen:
                raise RecipeError(f"{where}: stage {s.name} reads {ref}, but no earlier stage is named {base!r}")
        seen[s.name] = s
    if not recipe.model.startswith("@") or recipe.model[1:] not in seen:
        raise RecipeError(f"{where}: model = {recipe.model!r} must name a stage (\"@name\") whose output is the model")


def references(s: Stage) -> list[str]:
    """The @references a stage reads."""
    refs = [v for v in s.inputs.values() if isinstance(v, str) and v.startswith("@")]
    for m in s.merge.get("models", []):
        refs += [m[0]] if str(m[0]).startswith("@") else []
    for a in s.merge.get("add", []):
        refs += [x for x in a[:2] if str(x).startswith("@")]
    return refs


# ---------------------------------------------------------------------------------------------------------------
# From a recipe to commands
# ---------------------------------------------------------------------------------------------------------------
def output_of(run: Path, stages: dict[str, Stage], ref: str) -> Path:
    """The file or folder an @reference names: a stage's checkpoint, or (@name/state) its training states."""
    name, _, rest = ref[1:].partition("/")
    s = stages[name]
    if rest:
        return run / name / rest
    if s.kind in OUTPUTS:
        return run / name / OUTPUTS[s.kind]
    return run / f"{name}.safetensors"


def as_text(value: Any) -> str:
    """A setting as its command line takes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def command(s: Stage, run: Path, data: dict[str, Path], stages: dict[str, Stage]) -> list[str]:
    """The `reverie ...` argv (after `reverie`) of one stage."""
    path = {k: str(output_of(run, stages, v) if str(v).startswith("@") else resolve_model(v))
            for k, v in s.inputs.items()}
    if s.kind in TRAIN_KINDS:
        argv = ["train", s.kind, "--data", str(data[s.data]), "--out", str(run / s.name)]
        argv += [x for k in ("ae", "idm", "init") if k in path for x in (f"--{k}", path[k])]
        for k, v in s.settings.items():
            argv += ["--set", f"{k}={as_text(v)}"]
        return argv
    if s.kind == "merge":
        argv = ["train", "merge", "--out", str(run / f"{s.name}.safetensors")]
        for model, weight in s.merge.get("models", []):
            argv.append(f"{output_of(run, stages, model) if str(model).startswith('@') else model}:{weight}")
        for finetune, base, scale in s.merge.get("add", []):
            argv += ["--add", *(str(output_of(run, stages, x) if str(x).startswith("@") else x)
                                for x in (finetune, base)), str(scale)]
        if "parts" in s.merge:
            argv += ["--parts", as_text(s.merge["parts"])]
        return argv
    argv = ["eval", "--model", path.get("model", str(run / "model.safetensors")), "--data", str(data[s.data]),
            "--json", str(run / f"{s.name}.json")]
    argv += [x for k in ("ae", "idm") if k in path for x in (f"--{k}", path[k])]
    if s.write_model:
        argv += ["--write-model", str(run / f"{s.name}.safetensors")]
    return argv + flags(s.settings)


def flags(settings: dict[str, Any]) -> list[str]:
    """Settings as a command's flags: --key-name VALUE, a true switch as --key-name."""
    argv = []
    for k, v in settings.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool) and v:
            argv.append(flag)
        elif not isinstance(v, bool):
            argv += [flag, as_text(v)]
    return argv


def launcher(s: Stage) -> list[str]:
    """How a stage's argv is run: this Python's reverie, under torchrun for ranks > 1."""
    if s.ranks > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={s.ranks}",
                "-m", "reverie_cli"]
    return [sys.executable, "-m", "reverie_cli"]


def data_folders(recipe: Recipe, data_dir: Path, heldout: Path | None, run: Path) -> dict[str, Path]:
    """Where each data set lives: --data's parts for a recipe without [[data]], else DATA_DIR/<name>."""
    if not recipe.data:
        return {"train": run / "data" / "train", "heldout": heldout or run / "data" / "heldout"}
    return {d.name: data_dir / d.name for d in recipe.data}


def link_all(files: list[Path], folder: Path) -> None:
    """Hard links (copies across file systems) of `files` in `folder`, made whole under a temporary name."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in files:
        try:
            os.link(f, tmp / f.name)
        except OSError:
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def split_data(data: Path, heldout: Path | None, folders: dict[str, Path]) -> None:
    """The recipe's `train` (and, without --heldout, `heldout`: every tenth episode) sets from --data."""
    from train.data.episodes import SUFFIX

    files = sorted(data.glob("*" + SUFFIX)) if data.is_dir() else []
    if not files:
        raise RecipeError(f"--data {data}: holds no episode files (*{SUFFIX}); record some with "
                          f"'reverie record --env GAME --agent random --episodes 20 --out {data}'")
    if heldout is None:
        if len(files) < 2:
            raise RecipeError(f"--data {data}: one episode; the recipe holds some out for its eval: record more, or "
                              "pass --heldout DIR")
        held = files[HELDOUT_EVERY - 1::HELDOUT_EVERY] or files[-1:]
        link_all([f for f in files if f not in held], folders["train"])
        link_all(held, folders["heldout"])
    else:
        if not any(heldout.glob("*" + SUFFIX)):
            raise RecipeError(f"--heldout {heldout}: holds no episode files (*{SUFFIX}); record some, or leave "
                              "--heldout out to hold out every tenth episode of --data")
        link_all(files, folders["train"])


def record_data(recipe: Recipe, folders: dict[str, Path], say) -> None:
    """Record each [[data]] set that is not whole yet, then make the unions."""
    from train.data.episodes import SUFFIX

    for d in recipe.data:
        if d.record is None:
            continue
        r = {"agent": "random", "episodes": 1, "steps": 1000, "size": 64, "seed": 0, **d.record}
        folder = folders[d.name]
        if len(list(folder.glob("*" + SUFFIX))) >= int(r["episodes"]):
            say(f"data {d.name}: {r['episodes']} episodes already in {folder}")
            continue
        say(f"data {d.name}: record {r['episodes']} episodes of {r['env']} ({r['agent']} agent) into {folder}")
        argv = ["record", "--env", r["env"], "--agent", r["agent"], "--episodes", str(r["episodes"]), "--steps",
                str(r["steps"]), "--size", str(r["size"]), "--seed", str(r["seed"]), "--out", str(folder),
                "--workers", str(min(2, os.cpu_count() or 1)), "--overwrite"]
        rc = subprocess.call([sys.executable, "-m", "reverie_cli", *argv])
        if rc != 0:
            raise RecipeError(f"data {d.name}: 'reverie {' '.join(argv)}' failed ({rc})")
    for d in recipe.data:
        if d.union:
            files = [f for u in d.union for f in sorted(folders[u].glob("*" + SUFFIX))]
            link_all(files, folders[d.name])


# ---------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------
def fingerprint(argv: list[str]) -> str:
    return hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:16]


class Runner:
    """Runs a recipe's stages in order, background ones beside; skips what is done; stops whole on Ctrl-C."""

    def __init__(self, recipe: Recipe, run: Path, folders: dict[str, Path], force: bool):
        self.recipe, self.run, self.folders, self.force = recipe, run, folders, force
        self.stages = {s.name: s for s in recipe.stages}
        self.marks = run / "recipe"
        # the stages running beside: name -> (process, stage, its command, start time)
        self.background: dict[str, tuple[subprocess.Popen, Stage, list[str], float]] = {}
        self.current: subprocess.Popen | None = None    # the stage running in the foreground
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        m, s = divmod(int(time.monotonic() - self.t0), 60)
        print(f"[{self.recipe.name} {m:3d}:{s:02d}] {text}", flush=True)

    def done(self, s: Stage, argv: list[str]) -> bool:
        mark = self.marks / f"{s.name}.json"
        if not mark.is_file() or not output_of(self.run, self.stages, f"@{s.name}").exists():
            return False
        return json.loads(mark.read_text()).get("fingerprint") == fingerprint(argv)

    def mark(self, s: Stage, argv: list[str], seconds: float) -> None:
        self.marks.mkdir(parents=True, exist_ok=True)
        tmp = self.marks / f".{s.name}.json.tmp"
        tmp.write_text(json.dumps({"stage": s.name, "argv": argv, "fingerprint": fingerprint(argv),
                                   "seconds": round(seconds, 1)}, indent=1))
        tmp.replace(self.marks / f"{s.name}.json")

    def wait_for(self, names: set[str]) -> None:
        """Wait for the background stages `names`, and mark each done (a failed one is an error)."""
        for name in [n for n in self.background if n in names]:
            p, s, key, start = self.background.pop(name)
            if p.poll() is None:
                self.say(f"waiting for {name} (running beside, log: {self.run / (name + '.log')})")
            if p.wait() != 0:
                raise RecipeError(f"stage {name} failed ({p.returncode}); see {self.run / (name + '.log')}; fix it "
                                  "and run the same command again: finished stages are skipped")
            self.mark(s, key, time.monotonic() - start)

    def stage(self, i: int, s: Stage) -> None:
        argv = command(s, self.run, self.folders, self.stages)
        if self.force and s.kind in TRAIN_KINDS:
            argv.append("--force")
        head = f"stage {i}/{len(self.recipe.stages)} {s.name}"
        key = [a for a in argv if a != "--force"]
        if self.done(s, key):
            self.say(f"{head}: done before, skipped")
            return
        self.wait_for({r[1:].split("/")[0] for r in references(s)})
        self.say(f"{head}: reverie {' '.join(argv)}")
        start = time.monotonic()
        env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if s.ranks > 1 else {})}
        if s.beside:
            log = open(self.run / f"{s.name}.log", "w")
            # its own session: a Ctrl-C reaches the runner alone, which passes it on once (see interrupted)
            p = subprocess.Popen([*launcher(s), *argv, *(["--no-progress"] if s.kind in TRAIN_KINDS else [])],
                                 stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.background[s.name] = (p, s, key, start)
            self.say(f"{head}: running beside the next stages (log: {log.name})")
            return
        self.current = subprocess.Popen([*launcher(s), *argv], env=env, start_new_session=True)
        rc = self.current.wait()
        self.current = None
        if rc != 0:
            raise StageFailed(s.name, rc)
        self.mark(s, key, time.monotonic() - start)

    def all(self) -> Path:
        for i, s in enumerate(self.recipe.stages, 1):
            self.stage(i, s)
            self.wait_for({n for n, (p, *_) in self.background.items() if p.poll() is not None})  # ended: marked
        self.wait_for(set(self.background))
        model = output_of(self.run, self.stages, self.recipe.model)
        final = self.run / "model.safetensors"
        tmp = final.with_name(".model.safetensors.tmp")
        shutil.copyfile(model, tmp)
        tmp.replace(final)
        return final


class StageFailed(RecipeError):
    def __init__(self, name: str, rc: int):
        self.name, self.rc = name, rc
        super().__init__(f"stage {name} failed (exit {rc}); its message is above; fix it and run the same command "
                         "again: finished stages are skipped")


def interrupted(runner: Runner, sig: int) -> int:
    """Pass the signal on to the running stages (each in a session of its own, so each gets it once), wait while
    they save a whole state, then say how to resume."""
    running = [p for p in [runner.current, *(b[0] for b in runner.background.values())]
               if p is not None and p.poll() is None]
    for p in running:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
    for p in running:
        while True:
            try:
                p.wait()
                break
            except KeyboardInterrupt:   # a second Ctrl-C: the stage is still saving; a whole state comes first
                print("still saving the stage's state; it ends by itself", file=sys.stderr)
    print(f"reverie train --recipe {runner.recipe.name}: interrupted; every stage kept a whole state. Run the same "
          "command again to resume.", file=sys.stderr)
    return 128 + sig


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------
def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", required=True, metavar="NAME",
                   help="a shipped recipe (" + ", ".join(available()) + ") or a .toml file of your own")
    p.add_argument("--data", help="folder of episode files to train on (recipes that record their own data: where "
                                  "to record it; default RUN/data)")
    p.add_argument("--heldout", help="folder of held-out episodes for the eval stages (default: every tenth episode "
                                     "of --data)")
    p.add_argument("--out", required=True, help="run folder: one folder per stage, and RUN/model.safetensors")
    p.add_argument("--set", action="append", default=[], metavar="[STAGE.]KEY=VALUE",
                   help="change a setting: wm.steps=5000 (one stage), threads=1 (every training stage that has it), "
                        "train.episodes=10 (a recorded data set); repeatable")
    p.add_argument("--force", action="store_true", help="let stages resume although their settings changed")
    p.add_argument("--dry-run", action="store_true", help="print every stage's command and settings, run nothing")


def dry_run(recipe: Recipe, run: Path, folders: dict[str, Path]) -> None:
    stages = {s.name: s for s in recipe.stages}
    print(f"recipe {recipe.name} ({recipe.path}): {recipe.description}")
    for d in recipe.data:
        what = f"union of {', '.join(d.union)}" if d.union else ", ".join(f"{k}={v}" for k, v in d.record.items())
        print(f"  data {d.name:<10} {folders[d.name]}: {what}")
    if not recipe.data:
        print(f"  data train / heldout: --data, every {HELDOUT_EVERY}th episode held out (or --heldout)")
    for i, s in enumerate(recipe.stages, 1):
        extra = (" [beside]" if s.beside else "") + (f" [{s.ranks} ranks]" if s.ranks > 1 else "")
        print(f"  stage {i} {s.name} ({s.kind}){extra}")
        for k, v in s.settings.items():
            print(f"      {k} = {json.dumps(v)}")
        print(f"      $ reverie {' '.join(command(s, run, folders, stages))}")
    print(f"  model: {output_of(run, stages, recipe.model)} -> {run / 'model.safetensors'}")


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.set)
    run_dir = Path(args.out)
    if not recipe.data and not args.data:
        raise RecipeError(f"--recipe {recipe.name}: trains on your episodes; give --data DIR (record some with "
                          "'reverie record --env GAME --agent random --episodes 20 --out DIR')")
    data_dir = Path(args.data) if args.data else run_dir / "data"
    heldout = Path(args.heldout) if args.heldout else None
    folders = data_folders(recipe, data_dir, heldout, run_dir)
    if args.dry_run:
        dry_run(recipe, run_dir, folders)
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(recipe, run_dir, folders, args.force)
    old = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt("SIGTERM")))
    try:
        if recipe.data:
            record_data(recipe, folders, runner.say)
        else:
            split_data(data_dir, heldout, folders)
        final = runner.all()
    except KeyboardInterrupt as e:
        return interrupted(runner, signal.SIGTERM if "SIGTERM" in str(e) else signal.SIGINT)
    except StageFailed as e:
        if e.rc in (130, 143):   # the stage itself was interrupted and saved its state
            return interrupted(runner, e.rc - 128)
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
    runner.say(f"wrote {final}: play it with 'reverie play --model {final}'")
    return 0
