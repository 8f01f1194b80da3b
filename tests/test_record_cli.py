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
from train.data.episodes import Episode, EpisodeWriter
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


# ---- reward and episode end, recorded and read back --------------------------------------------------------------
@pytest.mark.parametrize("env, agent, steps, needs", [
    ("builtin:gems", "scripted", 300, ()),
    ("ale:Breakout", "scripted", 3000, ("ale_py",)),
    ("gym:CartPole-v1", "random", 3000, ("gymnasium", "pygame")),
    ("vizdoom:basic", "scripted", 3000, ("vizdoom",)),
    ("builtin:gems", "random", 25, ()),
])
def test_each_game_records_its_reward_and_end(tmp_path, env, agent, steps, needs):
    """The episode holds what the game said at each step: replaying the recorded actions from the episode's seed
    gives the same rewards, and the episode's last step is where and how the game ended it (or, cut off by --steps,
    truncated there)."""
    for module in needs:
        pytest.importorskip(module)
    from train.data.record import Job, record_episode
    from train.games.gym_adapters import headless_sdl
    from train.games.registry import make_game

    path = tmp_path / "e.episode"
    with headless_sdl():
        record_episode(Job(env, agent, 32, steps, 3, 0, str(path)))
        with Episode(path) as ep:
            ep.verify()
            assert ep.version == 3 and ep.has_reward
            rewards, ends, actions = ep.rewards(), ep.ends(), ep.actions()
            assert ep.reward_sum == pytest.approx(float(rewards.sum()), abs=1e-3)
            end = ep.end
        game = make_game(env, size=32, seed=3)
        try:
            game.reset(3)
            replayed = []
            for a in actions:
                game.step(a)
                replayed.append(game.reward)
            terminated, truncated = game.terminated, game.truncated
        finally:
            game.close()
    assert np.array_equal(rewards, np.float32(replayed)) and not ends[:-1].any()
    if len(actions) < steps:                     # the game ended it
        assert end in ("terminated", "truncated") and (end == "terminated") == terminated
        assert ends[-1] == (1 if terminated else 0) | (2 if truncated else 0)
    else:                                        # --steps cut it off, unless the game ended it right there
        assert end == ("terminated" if terminated else "truncated")
    if env != "builtin:gems" or agent == "scripted":
        assert rewards.any()                     # these games and agents earn something in an episode


def test_data_info_gives_the_reward_or_says_it_is_unknown(recorded, tmp_path, capsys):
    capsys.readouterr()
    assert run("data", "info", str(recorded), "--json") == 0
    report = json.loads(capsys.readouterr().out)["reward"]
    sums = []
    for p in sorted(recorded.iterdir()):
        with Episode(p) as ep:
            sums.append(ep.reward_sum)
    assert report["episodes"] == 2 and report["sum"] == sum(sums) and report["ends"] == {"truncated": 2}
    assert report["unknown"] == {}
    assert run("data", "info", str(recorded)) == 0
    out = capsys.readouterr().out
    assert f"reward:       sum {sum(sums):g} over 2 episodes" in out and "ended: truncated x2" in out
    # the same episodes as a version-2 file writes them: the header's format and the prefix say 2, no reward
    old = tmp_path / "old"
    old.mkdir()
    for p in sorted(recorded.iterdir()):
        with Episode(p) as ep, EpisodeWriter(old / p.name, env_id=ep.env_id, action_spec=ep.spec,
                                             frame_shape=ep.frame_shape) as w:
            w.extend(ep.frames(), ep.actions())
    for p in old.iterdir():
        rewrite_as_version_2(p)
    assert run("data", "info", str(old)) == 0
    out = capsys.readouterr().out
    assert "reward:       unknown (format 1/2 file)\n" in out and "sum" not in out
    assert run("data", "info", str(old), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format_versions"] == {"v2": 2} and report["reward"]["unknown"] == {"format 1/2 file": 2}


def rewrite_as_version_2(path: Path) -> None:
    """A version-3 file without rewards rewritten as version 2 (its only differences: the version, in the prefix and
    the header; the header's checksum in the footer follows)."""
    import zlib

    import msgpack

    from train.data.episodes import MAGIC, PREFIX, TRAILER

    data = path.read_bytes()
    _, version, header_len = PREFIX.unpack(data[:PREFIX.size])
    header = msgpack.unpackb(data[PREFIX.size:PREFIX.size + header_len])
    assert version == 3 and "reward" not in header
    header["format"] = 2
    hb = msgpack.packb(header, use_bin_type=True)
    shift = len(hb) - header_len
    footer_offset, _, _ = TRAILER.unpack(data[-TRAILER.size:])
    footer = msgpack.unpackb(data[footer_offset:-TRAILER.size])
    footer["header_crc"] = zlib.crc32(hb)
    footer["chunk_offsets"] = [o + shift for o in footer["chunk_offsets"]]
    fb = msgpack.packb(footer, use_bin_type=True)
    body = PREFIX.pack(MAGIC, 2, len(hb)) + hb + data[PREFIX.size + header_len:footer_offset]
    path.write_bytes(body + fb + TRAILER.pack(len(body), zlib.crc32(fb), MAGIC))


def test_play_recorder_writes_the_real_games_reward_and_end(tmp_path):
    """`play --human`'s Recorder, made with reward=True, writes what the game said at each step; stopped before the
    game ends the episode, the end is 'stopped'; a recorder of dreams (reward=False) writes the reward unknown."""
    from play.record import Recorder
    from train.games.registry import make_game

    game = make_game("builtin:gems", max_steps=30, seed=0)
    frame = game.reset(0)
    rec = Recorder(tmp_path, env_id=game.env_id, spec=game.action_spec, frame_shape=frame.shape, fps=game.fps,
                   gif=False, reward=True)
    rec.start(frame, seed=0)
    said, done = [], False
    while not done:
        frame, done = game.step(game.action_spec.encode(["right"]))
        said.append((game.reward, game.terminated, game.truncated))
        rec.add(frame, game.action_spec.encode(["right"]), game.reward, game.terminated, game.truncated)
    (path,) = rec.stop()
    with Episode(path) as ep:
        assert ep.rewards().tolist() == [r for r, _, _ in said] and ep.end == "truncated" and len(ep) == 31
    rec.start(game.reset(1), seed=1)
    rec.add(game.step(game.action_spec.null())[0], game.action_spec.null(), game.reward)
    (path,) = rec.stop()
    with Episode(path) as ep:
        assert ep.end == "stopped" and ep.rewards().tolist() == [0.0]
    dream = Recorder(tmp_path / "dream", env_id="model:builtin:gems", spec=game.action_spec, frame_shape=frame.shape,
                     fps=game.fps, gif=False)
    dream.start(frame)
    dream.add(frame, game.action_spec.null())
    (path,) = dream.stop()
    with Episode(path) as ep:
        assert not ep.has_reward and ep.end is None
