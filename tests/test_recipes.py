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
    from train.data import cli as data_cli
    from train.data import record
    from train.evaluation import evaluate
    from train.training import cli as train_cli

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
    ("breakout.sh", {}, {"record": 3, "train": 14, "eval": 1}),
    ("breakout.sh", {"WM2_STEPS": "0"}, {"record": 3, "train": 13, "eval": 1}),
    ("breakout.sh", {f"WM{k}_STEPS": "0" for k in range(2, 10)}, {"record": 3, "train": 6, "eval": 1}),
    ("breakout.sh", {"DEVICE": "cuda"}, {"train": 5, "eval": 1}),
    ("doom.sh", {}, {"record": 4, "train": 6, "eval": 1}),
    ("default_model.sh", {}, {"record": 3, "train": 3, "eval": 1}),
    ("default_model_cpu.sh", {}, {"record": 4, "train": 13, "eval": 1}),
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
        if argv[0] == "train":
            argv = as_settings(argv)
        try:
            args = ps[argv[0]].parse_args(argv[1:])
        except SystemExit as e:
            pytest.fail(f"{recipe}: `reverie {' '.join(argv)}` does not parse (exit {e.code})")
        if argv[0] == "train":   # every value typed and in range, as the stage checks it before any work
            import importlib

            from train.training.config import settings_from_args

            stage = importlib.import_module(f"train.training.{args.stage}")
            settings_from_args(args, stage.SETTINGS, args.stage)


def as_settings(argv: list[str]) -> list[str]:
    """A shell recipe's `reverie train STAGE` argv with the settings it still gives as flags (`--rollout-iters 2`,
    `--freeze-encoder`) as `--set NAME=VALUE`: the stages take every setting that way, and only the common ones as
    flags. The shell recipes give way to the recipe files (train/training/recipes/); until they do, this checks that
    each setting they give exists and takes its value."""
    import dataclasses
    import importlib
    import typing

    cls = importlib.import_module(f"train.training.{argv[1]}").SETTINGS
    stages = next(a for a in parsers()["train"]._actions if a.dest == "stage").choices
    flags = {o for a in stages[argv[1]]._actions for o in a.option_strings}
    types = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out, i = argv[:2], 2
    while i < len(argv):
        word, name = argv[i], argv[i][2:].replace("-", "_")
        if word.startswith("--") and word not in flags and name in names:
            takes_value = types[name] is not bool or (i + 1 < len(argv) and not argv[i + 1].startswith("--"))
            out += ["--set", f"{name}={argv[i + 1] if takes_value else 'true'}"]
            i += 2 if takes_value else 1
        else:
            out.append(word)
            i += 1
    return out


def test_the_doom_recipe_records_an_agent_that_plays_weighs_the_monster_and_writes_the_longer_decoder(tmp_path):
    """Doom's data is mostly the scripted agent's (it aims and shoots), the world model's loss is weighed toward the
    monster in both its stages (the second from the first), the decoder trains on in one more stage from the one
    before, and eval scores and writes the last world model with the last decoder."""
    cmds = recipe_commands(tmp_path, "doom.sh", {})
    train = [c for c in cmds if c[0] == "record" and "heldout" not in c[c.index("--out") + 1]]
    agents = {c[c.index("--agent") + 1]: int(c[c.index("--episodes") + 1]) for c in train}
    assert agents["scripted"] > agents["random"]
    wms = [c for c in cmds if c[:2] == ["train", "wm"]]
    assert len(wms) == 2 and "--init" not in wms[0] and wms[1][wms[1].index("--init") + 1].split("/")[-2] == "wm"
    assert all(c[c.index("--objects") + 1] == "monster" and float(c[c.index("--object-weight") + 1]) > 0 for c in wms)
    aes = [c for c in cmds if c[:2] == ["train", "ae"]]
    outs = [c[c.index("--out") + 1].rsplit("/", 1)[-1] for c in aes]
    assert outs == ["ae_crops", "ae", "ae_dec2"]
    inits = [c[c.index("--init") + 1].split("/")[-2] for c in aes[1:]]
    assert inits == ["ae_crops", "ae"] and all("--freeze-encoder" in c for c in aes[1:])
    ev = next(c for c in cmds if c[0] == "eval")
    assert ev[ev.index("--ae") + 1].split("/")[-2] == "ae_dec2" and "--write-model" in ev
    assert ev[ev.index("--model") + 1].split("/")[-2] == "wm2"


def test_the_breakout_recipe_trains_its_last_stages_on_the_models_own_rollouts(tmp_path):
    """The shipped Breakout model's last five stages trained on its own rollouts, three on two-pass and two on
    three-pass ones; the recipe must say so to the CLI."""
    train = [c for c in recipe_commands(tmp_path, "breakout.sh", {}) if c[:2] == ["train", "wm"]]
    own = [c for c in train if "--rollout-iters" in c]
    assert [c[c.index("--rollout-iters") + 1] for c in own] == ["2", "2", "2", "3", "3"]
    assert train[-5:] == own
    assert [c[c.index("--init") + 1].rsplit("/", 1)[-1] for c in own] == ["wm4", "wm5", "wm6", "wm7", "wm8"]


def test_the_breakout_recipe_trains_the_shipped_models_steps_and_skips_a_stage_cleanly(tmp_path):
    """The CPU stages run the optimizer steps the shipped model trained (not a time budget, which gives another model
    on another CPU); a stage set to 0 steps is left out and the next one starts from the one before it."""
    def stages(env):
        train = [c for c in recipe_commands(tmp_path, "breakout.sh", env) if c[:2] == ["train", "wm"]]
        return [(c[c.index("--out") + 1].rsplit("/", 1)[-1], int(c[c.index("--steps") + 1]),
                 c[c.index("--init") + 1].rsplit("/", 1)[-1] if "--init" in c else None) for c in train]

    assert stages({}) == [("wm", 2150, None), ("wm2", 2153, "wm"), ("wm3", 4000, "wm2"), ("wm4", 5000, "wm3"),
                          ("wm5", 5063, "wm4"), ("wm6", 4432, "wm5"), ("wm7", 2785, "wm6"), ("wm8", 4136, "wm7"),
                          ("wm9", 2994, "wm8")]
    assert stages({"WM3_STEPS": "0", "WM6_STEPS": "0", "WM9_STEPS": "0"}) == [
        ("wm", 2150, None), ("wm2", 2153, "wm"), ("wm4", 5000, "wm2"), ("wm5", 5063, "wm4"), ("wm7", 2785, "wm5"),
        ("wm8", 4136, "wm7")]
    # the two-hour schedule: stages 1-2, one two-pass and one three-pass stage on the model's own rollouts
    assert stages({"QUICK": "1"}) == [("wm", 2150, None), ("wm2", 2153, "wm"), ("wm5", 5400, "wm2"),
                                      ("wm8", 3000, "wm5")]
    assert stages({"QUICK": "1", "WM8_STEPS": "100"})[-1] == ("wm8", 100, "wm5")
    evals = [c for c in recipe_commands(tmp_path, "breakout.sh", {"WM9_STEPS": "0"}) if c[0] == "eval"]
    assert evals[0][evals[0].index("--model") + 1].endswith("/wm8/model.safetensors")


def test_the_breakout_recipe_trains_the_decoder_longer_and_ships_that_decoder(tmp_path):
    """The shipped Breakout model's decoder trained 2,000 + 8,000 + 8,000 steps on whole frames with the encoder
    frozen (the two-hour schedule: 2,000 + 8,000); the eval that writes the model takes the last of them."""
    def decoder(env):
        commands = recipe_commands(tmp_path, "breakout.sh", env)
        dec = [c for c in commands if c[:2] == ["train", "ae"] and "--freeze-encoder" in c]
        chain = [(c[c.index("--out") + 1].rsplit("/", 1)[-1], int(c[c.index("--steps") + 1]),
                  c[c.index("--init") + 1].split("/")[-2]) for c in dec]
        ev = next(c for c in commands if c[0] == "eval")
        return chain, ev[ev.index("--ae") + 1].split("/")[-2]

    assert decoder({}) == ([("ae", 2000, "ae_crops"), ("ae_dec2", 8000, "ae"), ("ae_dec3", 8000, "ae_dec2")],
                           "ae_dec3")
    assert decoder({"QUICK": "1"}) == ([("ae", 2000, "ae_crops"), ("ae_dec2", 8000, "ae")], "ae_dec2")
    assert decoder({"DEC2_STEPS": "0", "DEC3_STEPS": "0"}) == ([("ae", 2000, "ae_crops")], "ae")


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


def test_the_breakout_recipe_keeps_episodes_already_recorded(tmp_path):
    """Run again on a work folder that holds its episodes (a resumed or repeated run), the recipe trains on them
    instead of recording over them; an empty folder is recorded."""
    for d in ("train", "heldout"):
        (tmp_path / "work" / "data" / d).mkdir(parents=True)
    (tmp_path / "work" / "data" / "train" / "a.episode").write_bytes(b"")
    assert sum(c[0] == "record" for c in recipe_commands(tmp_path, "breakout.sh", {})) == 3
    (tmp_path / "work" / "data" / "heldout" / "b.episode").write_bytes(b"")
    commands = recipe_commands(tmp_path, "breakout.sh", {})
    assert not [c for c in commands if c[0] == "record"]
    assert [c for c in commands if c[:2] == ["train", "wm"]]


def test_the_breakout_recipe_refuses_a_schedule_it_does_not_know(tmp_path):
    r = subprocess.run(["bash", str(REPO / "runs" / "breakout.sh"), str(tmp_path / "w")], cwd=REPO,
                       env={**os.environ, "QUICK": "yes"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "QUICK=yes" in r.stderr
    assert not (tmp_path / "w").exists()


def test_the_cpu_default_recipe_ends_with_the_soup_and_the_own_rollout_vector_of_the_model_it_evaluated(tmp_path):
    """The shipped default is half the evaluated model, half a --focus --ema fine-tune of it, plus in the backbone's
    input layers and first three blocks the difference of two fine-tunes of it that differ only in --rollout-fraction
    (1.0 against the usual 0.5): all three start from the file eval wrote (its world model, autoencoder and IDM), and
    the result is evaluated into the shipped file."""
    import re

    cmds = recipe_commands(tmp_path, "default_model_cpu.sh", {})
    writes = [c for c in cmds if c[0] == "eval" and "--write-model" in c]
    first, shipped = (c[c.index("--write-model") + 1] for c in (writes[0], writes[-1]))
    tunes = [c for c in cmds if c[:2] == ["train", "wm"] and "--init" in c and c[c.index("--init") + 1] == first]
    assert len(tunes) == 3 and all(t[t.index(f) + 1] == first for t in tunes for f in ("--ae", "--idm"))
    focus, own, control = tunes
    assert float(focus[focus.index("--ema") + 1]) == 0.999 and focus[focus.index("--focus") + 1] == "avatar,enemies"
    assert float(own[own.index("--rollout-fraction") + 1]) == 1.0 and "--rollout-fraction" not in control
    strip = [i for i, w in enumerate(own) if w == "--rollout-fraction"][0]
    out = own.index("--out")
    assert own[:out] + own[out + 2:strip] == control[:out] + control[out + 2:], "the pair differs in more than the flag"
    text = (REPO / "runs" / "default_model_cpu.sh").read_text()
    add = re.search(r'--add "\$W/(wm_\w+)/model.safetensors" "\$W/(wm_\w+)/model.safetensors" 1.0 \\\n *'
                    r'--parts backbone.token_in,backbone.level_in,'
                    r'backbone.blocks.0,backbone.blocks.1,backbone.blocks.2\n', text)
    assert add and add.groups() == (own[out + 1].rsplit("/", 1)[1], control[out + 1].rsplit("/", 1)[1])
    # the shipped file is the soup, evaluated, not the model the fine-tunes started from
    assert shipped.endswith("/default.safetensors") and first != shipped
    assert cmds.index(control) < cmds.index(writes[-1])
