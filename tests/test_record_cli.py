"""`reverie record` and `reverie data info|check`: files, exit codes, and clear errors without tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import reverie_cli
from train.data.episodes import Episode
from train.data.record import episode_path

ENV = "builtin:gems"
ROOT = Path(__file__).resolve().parents[1]
# what a server without a desktop session lacks, and the SDL driver choices a user may have exported
NO_SESSION = ("XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER", "SDL_VIDEO_DRIVER",
              "SDL_AUDIODRIVER", "SDL_AUDIO_DRIVER")


def run(*argv: str) -> int:
    return reverie_cli.main(list(argv))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rec") / "d"
    assert run("record", "--env", ENV, "--agent", "scripted", "--episodes", "2", "--steps", "40", "--size", "64",
               "--out", str(out), "--seed", "5", "--no-progress") == 0
    return out


def test_record_writes_named_seeded_episodes(recorded):
    files = sorted(p.name for p in recorded.iterdir())
    assert files == ["builtin-gems_s5_e0000.episode", "builtin-gems_s5_e0001.episode"]
    for e, name in enumerate(files):
        with Episode(recorded / name) as ep:
            ep.verify()
            assert ep.header["seed"] == 5 + e and ep.env_id == ENV and ep.header["agent"] == "scripted"
            assert ep.frame_shape == (64, 64, 3) and 2 <= len(ep) <= 41 and ep.num_actions == len(ep) - 1


def test_record_is_reproducible_and_workers_agree(recorded, tmp_path):
    out = tmp_path / "again"
    assert run("record", "--env", ENV, "--agent", "scripted", "--episodes", "2", "--steps", "40", "--out", str(out),
               "--seed", "5", "--workers", "2", "--no-progress") == 0
    for name in ("builtin-gems_s5_e0000.episode", "builtin-gems_s5_e0001.episode"):
        with Episode(recorded / name) as a, Episode(out / name) as b:
            assert np.array_equal(a.frames(), b.frames()) and np.array_equal(a.actions(), b.actions())


def test_record_summary_and_refusing_to_overwrite(recorded, capsys):
    capsys.readouterr()
    argv = ["record", "--env", ENV, "--episodes", "2", "--steps", "40", "--out", str(recorded), "--seed", "5",
            "--no-progress"]
    assert run(*argv) == 2
    assert "already exist" in capsys.readouterr().err
    assert run(*argv, "--overwrite") == 0
    assert "recorded 2 episodes" in capsys.readouterr().out


def test_help_lists_the_games(capsys):
    with pytest.raises(SystemExit) as e:
        run("record", "--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "builtin:gems" in out
    # the file names as they are: the env id with ':' made safe, the episode index in four digits
    assert episode_path(Path("OUT"), ENV, 0, 0).as_posix() == "OUT/builtin-gems_s0_e0000.episode"
    assert "OUT/builtin-gems_s0_e0000.episode" in out and "<env>_s" not in out


@pytest.mark.parametrize("args, message", [
    (["--env", "nosuch:game"], "unknown game"),
    (["--env", ENV, "--agent", "robot"], "unknown agent 'robot'"),
    (["--env", ENV, "--size", "2"], "--size must be between"),
    (["--env", ENV, "--episodes", "0"], "--episodes must be at least 1"),
    (["--env", ENV, "--steps", "-1"], "--steps must be at least 1"),
])
def test_record_errors_are_clear(tmp_path, capsys, args, message):
    assert run("record", *args, "--out", str(tmp_path / "o"), "--no-progress") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run("record", "--env", ENV, "--out", str(blocker / "sub"), "--no-progress") == 2
    err = capsys.readouterr().err
    assert "cannot write to output directory" in err and "Traceback" not in err


def test_command_line_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "reverie_cli", "record", "--env", "nosuch:game", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown game" in r.stderr and "Traceback" not in r.stderr


def test_data_info(recorded, capsys):
    capsys.readouterr()
    assert run("data", "info", str(recorded), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 2 and info["frames"] == info["actions"] + 2
    assert info["frame_shapes"] == {"64x64x3": 2} and info["action_specs"][0]["game"] == ENV
    assert run("data", "info", str(recorded)) == 0
    assert "2 episodes" in capsys.readouterr().out
    one = next(recorded.iterdir())
    assert run("data", "info", str(one)) == 0
    assert f"{one}: 1 episode, " in capsys.readouterr().out
    assert run("data", "check", str(one)) == 0
    assert f"{one}: 1 episode file, " in capsys.readouterr().out


def test_data_check_reports_every_bad_file(recorded, tmp_path, capsys):
    assert run("data", "check", str(recorded)) == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in recorded.iterdir():
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / p.name).write_bytes(bytes(data))
    (bad / "builtin-gems_s5_e0009.episode.tmp").write_bytes(b"RVEP")
    capsys.readouterr()
    assert run("data", "check", str(bad)) == 1
    out = capsys.readouterr().out
    for p in recorded.iterdir():
        assert f"BAD         {p.name}" in out
    assert "INCOMPLETE  builtin-gems_s5_e0009.episode.tmp" in out and "Traceback" not in out
    assert run("data", "check", str(tmp_path / "missing")) == 2


def test_killed_recorder_leaves_no_whole_looking_file(tmp_path, capsys):
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from engine.actions import ActionSpec
        from train.data.episodes import EpisodeWriter
        spec = ActionSpec(game="test:fake", buttons=("fire",))
        w = EpisodeWriter({str(tmp_path / "k.episode")!r}, env_id="test:fake", action_spec=spec,
                          frame_shape=(8, 8, 3), chunk_frames=4)
        w.append(np.zeros((8, 8, 3), np.uint8))
        for t in range(10**6):
            w.append(np.full((8, 8, 3), t % 256, np.uint8), spec.null())
            if t == 50:
                w._file.flush()
                print("writing", flush=True)
            time.sleep(0.001 if t > 50 else 0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.episode.tmp"]
    capsys.readouterr()
    assert run("data", "check", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "INCOMPLETE  k.episode.tmp" in out


def test_the_command_gives_numpy_one_blas_thread_unless_the_user_set_it():
    """numpy's OpenBLAS spins a thread per core on every small matrix product (frame resizing); two reverie
    processes side by side then ran 3x slower. The command sets one BLAS thread before numpy is imported, and leaves
    a value the user exported alone."""
    import sys

    code = ("import os, sys, reverie_cli; "
            "print(os.environ['OPENBLAS_NUM_THREADS'], 'numpy' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(e):
        return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True,
                              timeout=60, cwd=root).stdout.split()

    assert run(env) == ["1", "False"]              # set, and numpy not yet imported, so it takes effect
    assert run({**env, "OPENBLAS_NUM_THREADS": "3"}) == ["3", "False"]


@pytest.mark.parametrize("env, agent, workers, needs", [
    ("gym:CartPole-v1", "random", 2, ("gymnasium", "pygame")),
    ("ale:Breakout", "scripted", 1, ("ale_py",)),
    ("vizdoom:basic", "scripted", 1, ("vizdoom",)),
])
def test_a_recording_without_a_desktop_session_prints_only_its_own_line(tmp_path, env, agent, workers, needs):
    """On a server (no display, no XDG_RUNTIME_DIR) gymnasium's pygame renderer started SDL's video, which tried
    Wayland, and libwayland printed `error: XDG_RUNTIME_DIR is invalid or not set`; ale-py printed its banner. A
    successful recording prints its summary and nothing else, in the workers too."""
    for module in needs:
        pytest.importorskip(module)
    env_vars = {k: v for k, v in os.environ.items() if k not in NO_SESSION}
    r = subprocess.run([sys.executable, "-m", "reverie_cli", "record", "--env", env, "--agent", agent, "--episodes",
                        str(workers), "--workers", str(workers), "--steps", "6", "--out", str(tmp_path / "o"),
                        "--no-progress"], env=env_vars, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert len(r.stdout.splitlines()) == 1 and r.stdout.startswith(f"recorded {workers} episode")


@pytest.mark.parametrize("argv", [["data", "info", "--json"], ["data", "check"], ["--help"], ["record", "--help"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(recorded, argv):
    """`reverie data info --json DIR | head -1`: once the reader has gone, the command ends with the status of a
    command killed by SIGPIPE (141, as `cat` does) and prints nothing, no traceback and no 'Broken pipe'. (argparse
    ignores a failed write of a sub-command's --help itself, and exits 0.)"""
    if argv[0] == "data":
        argv = [*argv, str(recorded)]
    proc = subprocess.Popen([sys.executable, "-m", "reverie_cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    proc.stdout.close()                          # the reader leaves before the first line is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) in (reverie_cli.EXIT_READER_LEFT, 0)
    assert err == ""
