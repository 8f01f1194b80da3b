"""The README's commands, as a user types them: every `reverie ...` line in its code blocks parses with the
command's own parser (no flag that was renamed or deleted), and the walk-through "Make a world of your own game" runs
as written, at small sizes (fewer episodes and steps, a few training steps a stage)."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import reverie_cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def readme_commands() -> list[str]:
    """Every `reverie ...` command in the README's fenced code blocks, continuation lines joined, comments cut."""
    text = README.read_text()
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            for part in re.split(r"\s*&&\s*", line):
                if part.startswith("reverie "):
                    out.append(part)
    return out


def parse(command: str) -> None:
    """Parse `reverie ARGS` with the command's parser as the CLI would (SystemExit on a bad flag)."""
    argv = shlex.split(command)[1:]
    name = argv[0]
    if name == "train":
        from train.training import cli as train_cli

        parser = train_cli.parser() if argv[1] in train_cli.STAGES else train_cli.recipe_parser()
        parser.parse_args(argv[1:])
        return
    if len(argv) > 1 and (name, argv[1]) in reverie_cli.SUBCOMMANDS:   # `reverie eval agent ...`
        importlib.import_module(reverie_cli.SUBCOMMANDS[(name, argv[1])]).build_parser().parse_args(argv[2:])
        return
    reverie_cli.command_parser(name).parse_args(argv[1:])


def test_the_readme_shows_commands():
    names = {shlex.split(c)[1] for c in readme_commands()}
    assert {"play", "record", "data", "train", "eval", "export", "bench"} <= names, names


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command):
    try:
        parse(command)
    except SystemExit as e:
        pytest.fail(f"the README's `{command}` does not parse (exit {e.code})")


SMALL = [(r"--episodes \d+", "--episodes 3"), (r"--steps \d+", "--steps 40"), (r"--workers \d+", "--workers 1")]
RECIPE_SMALL = ["--set", "steps=2", "--set", "time_limit=0", "--set", "threads=1", "--set", "eval.threads=1"]


def walk_through() -> list[str]:
    """The README's own-game walk-through, in order: record, check, train, eval, and its web page (not served)."""
    wanted = ("reverie record", "reverie data check", "reverie data info", "reverie train --recipe", "reverie eval",
              "reverie export --format web")
    return [c for c in readme_commands() if c.startswith(wanted) and "--serve" not in c
            and not c.startswith("reverie eval agent")]   # the agents' section has its own tests


@pytest.mark.slow
def test_the_walk_through_runs_as_written_at_small_sizes(tmp_path):
    pytest.importorskip("ale_py")
    steps = walk_through()
    assert [s.split()[1] for s in steps][:2] == ["record", "record"], steps
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy"}
    for command in steps:
        for pattern, small in SMALL:
            command = re.sub(pattern, small, command)
        argv = shlex.split(command)[1:]
        if argv[:2] == ["train", "--recipe"]:
            argv += RECIPE_SMALL
        r = subprocess.run([sys.executable, "-m", "reverie_cli", *argv], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, f"`{command}` failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    model = next(tmp_path.glob("runs/*/model.safetensors"))
    assert (tmp_path / "eval.json").is_file() and model.is_file()
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "model" / "model.json").is_file()


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Session example, run as written (on the shipped model, on this CPU)."""
    block = re.search(r"```python\n(.*?)```", README.read_text(), flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)   # the project's own README, not input from anyone
    assert scope["frame"].shape == (64, 64, 3) and scope["branch"] is not scope["s"]
