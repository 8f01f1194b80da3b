"""`reverie train --recipe NAME` (train/training/recipe.py): every shipped recipe resolves; bad recipes, names and
settings get one line; a tiny quick run writes a playable model, and the same command again skips what is done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_main import cli

from engine.checkpoint import load_checkpoint
from train.training import recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    """Four short episodes of the built-in game (random agent), as `reverie record` writes them."""
    out = tmp_path_factory.mktemp("episodes")
    assert cli("record", "--env", "builtin:gems", "--agent", "random", "--episodes", 4, "--steps", 40, "--out", out,
               "--no-progress") == 0
    return out


@pytest.mark.parametrize("name", sorted(recipe.available()))
def test_every_shipped_recipe_resolves_in_a_dry_run(name, tmp_path, capsys):
    """Each stage's settings are known to its command, every @reference names an earlier stage, and the dry run
    prints every stage's command line."""
    assert cli("train", "--recipe", name, "--data", tmp_path / "data", "--out", tmp_path / "run", "--dry-run") == 0
    out = capsys.readouterr().out
    loaded = recipe.load_recipe(name)
    assert out.count("$ reverie ") == len(loaded.stages)
    for s in loaded.stages:
        assert f"stage {loaded.stages.index(s) + 1} {s.name} ({s.kind})" in out
    assert not (tmp_path / "run").exists(), "a dry run wrote the run folder"


def test_the_gems_recipe_is_the_shipped_default_schedule(capsys, tmp_path):
    """The gems recipe records its own data, ends with the soup (average + task vector) and evaluates it at the
    shipped model's run-time settings (1 step, guidance 1.75)."""
    r = recipe.load_recipe("gems")
    assert {d.name for d in r.data} >= {"train", "heldout", "random", "mix"}
    soup = next(s for s in r.stages if s.kind == "merge")
    assert [m[1] for m in soup.merge["models"]] == [0.5, 0.5] and soup.merge["add"]
    last = r.stages[-1]
    assert (last.kind, last.inputs["model"], last.settings["steps"], last.settings["guidance"]) == \
        ("eval", "@soup", 1, 1.75)
    assert r.model == "@eval"


@pytest.mark.parametrize(("argv", "words"), [
    (["--recipe", "nope"], ["no such recipe", "quick", "gems"]),
    (["--recipe", "quick", "--set", "wm.no_such_setting=1"], ["wm", "no_such_setting"]),
    (["--recipe", "quick", "--set", "nostage.steps=1"], ["no stage", "nostage"]),
    (["--recipe", "quick", "--set", "steps"], ["KEY=VALUE"]),
    (["--recipe", "quick"], ["--data"]),
])
def test_bad_recipe_commands_get_one_line(argv, words, tmp_path, capsys):
    data = [] if argv == ["--recipe", "quick"] else ["--data", str(tmp_path)]
    assert cli("train", *argv, *data, "--out", tmp_path / "run", "--dry-run") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_a_recipe_file_of_ones_own_is_checked(tmp_path, capsys):
    bad = tmp_path / "mine.toml"
    bad.write_text('model = "@wm"\n[[stage]]\nname = "wm"\nkind = "wm"\nae = "@ae"\n')
    assert cli("train", "--recipe", bad, "--data", tmp_path, "--out", tmp_path / "run", "--dry-run") == 1
    assert "no earlier stage is named 'ae'" in capsys.readouterr().err
    bad.write_text('model = "@x"\n[[stage]]\nname = "x"\nkind = "ae"\nstepz = 3\n')
    assert cli("train", "--recipe", bad, "--data", tmp_path, "--out", tmp_path / "run", "--dry-run") == 1
    assert "did you mean steps" in capsys.readouterr().err


def test_an_empty_data_folder_is_refused_before_any_stage(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli("train", "--recipe", "quick", "--data", tmp_path / "empty", "--out", tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert "holds no episode files" in err and "reverie record" in err
    assert not (tmp_path / "run" / "ae").exists()


def quick(episodes: Path, out: Path, *more: str) -> subprocess.CompletedProcess:
    """The quick recipe at a few steps a stage, as a user runs it (a process of its own)."""
    argv = [sys.executable, "-m", "reverie_cli", "train", "--recipe", "quick", "--data", str(episodes), "--out",
            str(out), "--set", "steps=2", "--set", "time_limit=0", "--set", "threads=1", "--set", "eval.threads=1",
            "--set", "eval.horizon=4", *more]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_the_quick_recipe_writes_a_model_and_a_second_run_skips_every_stage(episodes, tmp_path):
    run = tmp_path / "run"
    first = quick(episodes, run)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    model = load_checkpoint(run / "model.safetensors")
    assert model.kind == "world_model" and model.action_spec.game == "builtin:gems"
    held = sorted(p.name for p in (run / "data" / "heldout").iterdir())
    trained = sorted(p.name for p in (run / "data" / "train").iterdir())
    assert held and trained and not set(held) & set(trained)      # the eval's episodes were never trained on
    assert (run / "eval.json").is_file()
    again = quick(episodes, run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == 4, again.stdout


@pytest.mark.slow
def test_a_failed_stage_says_so_and_the_rerun_keeps_the_finished_ones(episodes, tmp_path):
    run = tmp_path / "run"
    failed = quick(episodes, run, "--set", "wm.lr=-1")
    assert failed.returncode == 1
    assert "stage wm failed" in failed.stderr and "run the same command again" in failed.stderr
    fixed = quick(episodes, run)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "ae: done before, skipped" in fixed.stdout and "idm: done before, skipped" in fixed.stdout


@pytest.mark.slow
def test_ctrl_c_during_a_recipe_saves_the_stage_and_the_same_command_resumes(episodes, tmp_path):
    """Ctrl-C reaches the runner, which passes it once to the running stage: the stage saves a whole state, the
    runner says how to resume and exits 130; the same command then skips the finished stages and the interrupted one
    resumes from its saved state."""
    import signal
    import time

    run = tmp_path / "run"
    argv = [sys.executable, "-m", "reverie_cli", "train", "--recipe", "quick", "--data", str(episodes), "--out",
            str(run), "--set", "steps=60", "--set", "ae.steps=2", "--set", "idm.steps=2", "--set", "time_limit=0",
            "--set", "threads=1", "--set", "save_every=1000", "--set", "log_every=5", "--set", "eval.threads=1",
            "--set", "eval.horizon=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list((run / "wm").glob("metrics.jsonl")) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.5)                                   # the world model is training (it logs its first steps)
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, out[-2000:] + err[-2000:]
    assert "run the same command" in err.lower() and "saved" in err, err
    states = list((run / "wm" / "state").glob("step_*"))
    assert states, "the interrupted stage saved no state"
    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ae: done before, skipped" in again.stdout and "idm: done before, skipped" in again.stdout
    assert "resum" in (again.stdout + again.stderr).lower()
    assert (run / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_stage_beside_the_others_is_waited_for_and_marked_done(episodes, tmp_path):
    """A `beside = true` stage runs in the background on its own log; the stage that reads its output waits for it,
    and a second run skips it like any finished stage."""
    mine = tmp_path / "mine.toml"
    mine.write_text('model = "@wm"\n[settings]\nsteps = 2\nthreads = 1\n'
                    '[[stage]]\nname = "idm"\nkind = "idm"\nbeside = true\n'
                    '[[stage]]\nname = "ae"\nkind = "ae"\n'
                    '[[stage]]\nname = "wm"\nkind = "wm"\nae = "@ae"\nidm = "@idm"\n')
    argv = [sys.executable, "-m", "reverie_cli", "train", "--recipe", str(mine), "--data", str(episodes), "--out",
            str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "running beside" in first.stdout and (tmp_path / "run" / "idm.log").is_file()
    assert load_checkpoint(tmp_path / "run" / "model.safetensors").has("idm")
    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 3, again.stdout
