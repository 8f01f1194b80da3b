"""The recipes in runs/ (hours of training each) call the CLI with flags that exist and values it accepts: every
reverie command a recipe would run is collected by sourcing it with its work skipped (tests/recipe_argv.sh) and
parsed by that command's own parser. A renamed flag fails here, not an hour into a user's run."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def parsers() -> dict[str, argparse.ArgumentParser]:
    from train import cli as train_cli
    from train import data_cli, evaluate, record

    return {"train": train_cli.parser(), "record": record.build_parser(), "eval": evaluate.build_parser(),
            "data": data_cli.build_parser()}


def recipe_commands(tmp_path: Path, recipe: str, env: dict[str, str]) -> list[list[str]]:
    """The reverie argv (after the command's name) of every command `recipe` would run, in order."""
    out = tmp_path / "argv"
    r = subprocess.run(["bash", str(REPO / "tests" / "recipe_argv.sh"), str(REPO / "runs" / recipe), str(out),
                        str(tmp_path / "work")], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    commands = []
    for line in out.read_text().splitlines():
        words = line.split("\0")[:-1]
        at = next(i for i, w in enumerate(words) if w in ("reverie", "reverie_cli"))
        commands.append(words[at + 1:])
    return commands


RECIPES = [  # recipe, environment, the commands it must run at least
    ("breakout.sh", {}, {"record": 3, "train": 10, "eval": 1}),
    ("breakout.sh", {"WM2_MINUTES": "0"}, {"record": 3, "train": 9, "eval": 1}),
    ("breakout.sh", {"WM2_MINUTES": "0", "WM3_MINUTES": "0", "WM4_MINUTES": "0", "WM5_MINUTES": "0"},
     {"record": 3, "train": 4, "eval": 1}),
    ("breakout.sh", {"DEVICE": "cuda"}, {"train": 4, "eval": 1}),
    ("doom.sh", {}, {"record": 2, "train": 3, "eval": 1}),
    ("default_model.sh", {}, {"record": 3, "train": 3, "eval": 1}),
    ("default_model_cpu.sh", {}, {"record": 4, "train": 10, "eval": 1}),
]


@pytest.mark.parametrize(("recipe", "env", "least"), RECIPES, ids=[f"{r}{'-' + '-'.join(e.values()) if e else ''}"
                                                                   for r, e, _ in RECIPES])
def test_every_command_of_a_recipe_parses(tmp_path, recipe, env, least):
    commands = recipe_commands(tmp_path, recipe, env)
    counts = {name: sum(c[0] == name for c in commands) for name in least}
    assert all(counts[n] >= k for n, k in least.items()), (counts, commands)
    ps = parsers()
    for argv in commands:
        assert argv[0] in ps, f"{recipe}: a command this test does not know: {argv}"
        try:
            ps[argv[0]].parse_args(argv[1:])
        except SystemExit as e:
            pytest.fail(f"{recipe}: `reverie {' '.join(argv)}` does not parse (exit {e.code})")


def test_the_breakout_recipe_trains_its_last_stages_on_the_models_own_rollouts(tmp_path):
    """The shipped Breakout model's last three stages trained on its own rollouts; the recipe must say so to the CLI."""
    train = [c for c in recipe_commands(tmp_path, "breakout.sh", {}) if c[:2] == ["train", "wm"]]
    own = [c for c in train if "--rollout-iters" in c]
    assert len(own) == 3 and all(c[c.index("--rollout-iters") + 1] == "2" for c in own)
    assert train[-3:] == own and [c[c.index("--init") + 1].rsplit("/", 1)[-1] for c in own] == ["wm4", "wm5", "wm6"]


def test_a_wrong_flag_in_a_recipe_is_caught(tmp_path):
    """The check itself: a recipe with a misspelt flag fails it."""
    bad = tmp_path / "bad.sh"
    bad.write_text('set -euo pipefail\nW=${1:-x}\nreverie train ae --data "$W/d" --out "$W/ae" --stepz 5\n')
    out = tmp_path / "argv"
    subprocess.run(["bash", str(REPO / "tests" / "recipe_argv.sh"), str(bad), str(out), str(tmp_path / "w")],
                   check=True, timeout=60)
    argv = out.read_text().split("\0")[:-1]
    assert argv[:3] == ["reverie", "train", "ae"] and "--stepz" in argv
    with pytest.raises(SystemExit):
        parsers()["train"].parse_args(argv[2:])
