"""`reverie data import`: video + input log -> episodes; resampling, alignment, offset, crop, errors, the converter."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
iio = pytest.importorskip("imageio.v3")

import reverie_cli  # noqa: E402
from engine.errors import ReverieError  # noqa: E402
from train.data import cli as data_cli  # noqa: E402
from train.data import importer  # noqa: E402
from train.data.episodes import FORMAT_VERSION, Episode  # noqa: E402
from train.data.importer_formats import convert_pynput, pynput_events  # noqa: E402

SIDE = 32
FRAMES = 64
SOURCE_FPS = 30
BUTTONS = "space,up,fire"
GRAY_STEP = 4          # source frame i is gray 4 * i on its left half (white on its right half)
GRAY_TOLERANCE = 1     # ffv1 in yuv420p is exact up to the rgb <-> yuv rounding


def make_frames(n: int = FRAMES) -> np.ndarray:
    frames = np.full((n, SIDE, SIDE, 3), 255, np.uint8)                 # (n, H, W, 3)
    frames[:, :, : SIDE // 2] = (np.arange(n) * GRAY_STEP)[:, None, None, None].astype(np.uint8)
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """64 frames at 30 fps, frame i gray GRAY_STEP * i on the left half: its index can be read back."""
    path = tmp_path_factory.mktemp("video") / "play.mkv"
    iio.imwrite(path, make_frames(), plugin="pyav", codec="ffv1", fps=SOURCE_FPS)
    return path


def source_index(frames: np.ndarray) -> np.ndarray:
    """The source frame each (resized) frame shows, from the gray level of its left half."""
    left = frames[:, :, : frames.shape[2] // 2].reshape(len(frames), -1).astype(np.float64)   # (n, h * w/2 * 3)
    gray = left.mean(axis=1)
    index = np.round(gray / GRAY_STEP).astype(int)
    assert np.all(np.abs(gray - index * GRAY_STEP) <= GRAY_TOLERANCE)
    return index


def write_log(path: Path, rows: list[str], header: str = "time,event,name,dx,dy") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def import_(video: Path, log: Path | None, out: Path, *flags: str) -> int:
    argv = ["import", str(video)] + ([str(log)] if log is not None else []) + ["--out", str(out), "--no-progress"]
    return data_cli.main([*argv, "--buttons", BUTTONS, *flags] if "--spec" not in flags else [*argv, *flags])


def read(out: Path, name: str = "play_e0000.episode") -> Episode:
    return Episode(out / name)


def pressed(ep: Episode, button: str) -> list[int]:
    return np.flatnonzero(ep.actions()[:, ep.spec.index(button)]).tolist()


@pytest.fixture()
def log(tmp_path) -> Path:
    """Covers 0 .. 2.2 s; space down when output frame 8 (15 fps) appears; up held to the end; fire tapped."""
    return write_log(tmp_path / "keys.csv", [
        "0,start,,,",
        f"{8 / 15!r},down,space,,",
        "0.8,up,space,,",           # frame 12 at 15 fps: action 12 is free
        "1.0,down,W,,",             # mapped to up; upper case is the same key
        "1.1,down,w,,",             # key repeat: nothing changes
        "1.25,down,f,,",            # ignored
        "1.25,up,f,,",
        "1.3,down,fire,,",          # a tap inside [T_19, T_20) = [1.2667, 1.3333)
        "1.3,up,fire,,",
        "2.2,end,,,",
    ])


# ---- round trip ----------------------------------------------------------------------------------------------
def test_import_resamples_and_aligns_actions(video, log, tmp_path):
    out = tmp_path / "out"
    assert import_(video, log, out, "--map", "w=up", "--ignore", "f", "--size", "16") == 0
    assert sorted(p.name for p in out.iterdir()) == ["play_e0000.episode"]
    with read(out) as ep:
        assert len(ep) == FRAMES // 2 and ep.num_actions == FRAMES // 2 - 1 and ep.frame_shape == (16, 16, 3)
        assert ep.fps == 15 and ep.env_id == "video:play" and ep.header["agent"] == "human"
        assert source_index(ep.frames()).tolist() == list(range(0, FRAMES, 2))
        assert pressed(ep, "space") == [8, 9, 10, 11]      # down exactly at T_8: action 8, not 7; up at T_12
        assert pressed(ep, "up") == list(range(15, 31))    # T_15 = 1.0 to the end (never released)
        assert pressed(ep, "fire") == [19]                 # a tap counts in the interval that holds it
        meta = ep.header["metadata"]
        assert meta["labels"] == "log" and meta["source"] == str(video.resolve()) and meta["offset"] == 0.0
        assert meta["fps"] == 15.0 and meta["key_map"] == {"fire": "fire", "space": "space", "w": "up"}
        assert meta["ignored"] == ["f"] and meta["log"] == str(log.resolve())


def test_same_rate_keeps_every_frame_and_the_boundary_rule(video, tmp_path):
    log = write_log(tmp_path / "k.csv", ["0,start,,,", f"{10 / 30!r},down,space,,", f"{13 / 30!r},up,space,,",
                                         f"{63 / 30!r},end,,,"])
    assert import_(video, log, tmp_path / "o", "--fps", "30") == 0
    with read(tmp_path / "o") as ep:
        assert source_index(ep.frames()).tolist() == list(range(FRAMES))
        assert pressed(ep, "space") == [10, 11, 12]        # held over [T_10, T_13): actions 10, 11, 12


@pytest.mark.parametrize("flags, first", [(["--offset", "0.2"], 11), (["--offset", "-0.2"], 5),
                                         (["--video-start", "-0.4"], 14)])
def test_offset_and_video_start_shift_the_actions(video, log, tmp_path, flags, first):
    """Space goes down at log time 8/15 s: video time 8/15 + 0.2 s is frame 11 at 15 fps, and so on."""
    out = tmp_path / "o"
    assert import_(video, log, out, "--map", "w=up", "--ignore", "f", "--trim", *flags) == 0
    with read(out) as ep:
        meta = ep.header["metadata"]
        start = round(meta["start_time"] * 15)              # the first frame's index on the 15 fps grid
        assert pressed(ep, "space")[0] + start == first
        assert source_index(ep.frames()[:1]).tolist() == [2 * start]
        assert meta["offset" if flags[0] == "--offset" else "video_start"] == float(flags[1])


def test_jsonl_log_equals_csv(video, log, tmp_path):
    rows = [{"time": 0, "event": "start"}, {"time": 8 / 15, "event": "down", "name": "space"},
            {"time": 0.8, "event": "up", "name": "space"}, {"time": 1.0, "event": "down", "name": "W"},
            {"time": 1.1, "event": "down", "name": "w"}, {"time": 1.25, "event": "down", "name": "f"},
            {"time": 1.25, "event": "up", "name": "f"}, {"time": 1.3, "event": "down", "name": "fire"},
            {"time": 1.3, "event": "up", "name": "fire"}, {"time": 2.2, "event": "end"}]
    jl = tmp_path / "keys.jsonl"
    jl.write_text("# a comment\n\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
    for name, path in (("a", log), ("b", jl)):
        assert import_(video, path, tmp_path / name, "--map", "w=up", "--ignore", "f") == 0
    with read(tmp_path / "a") as a, read(tmp_path / "b") as b:
        assert np.array_equal(a.actions(), b.actions()) and a.actions().any()


def test_crop_and_resize(video, log, tmp_path):
    flags = ("--map", "w=up", "--ignore", "f", "--size", "8")
    assert import_(video, log, tmp_path / "right", *flags, "--crop", "16,0,16,32") == 0
    assert import_(video, log, tmp_path / "left", *flags, "--crop", "0,8,16,16") == 0
    with read(tmp_path / "right") as r, read(tmp_path / "left") as left:
        assert r.frame_shape == (8, 8, 3) and np.all(np.abs(r.frames().astype(int) - 255) <= GRAY_TOLERANCE)
        gray = left.frames().reshape(len(left), -1).astype(int)                    # (n, 8 * 8 * 3)
        assert np.all(np.abs(gray - (np.arange(0, FRAMES, 2) * GRAY_STEP)[:, None]) <= GRAY_TOLERANCE)
        assert left.header["metadata"]["crop"] == [0, 8, 16, 16]


def test_mouse_motion_maps_to_axes(video, tmp_path):
    log = write_log(tmp_path / "m.csv", ["0,start,,,", "0.1,move,,10,-5", "0.12,move,,30,0", "0.5,move,,-200,5",
                                         "2.2,end,,,"])
    out = tmp_path / "o"
    assert import_(video, log, out, "--axes", "turn,mouse_dy", "--map", "mouse_dx=turn", "--mouse-scale", "20") == 0
    with read(out) as ep:
        acts = ep.actions()
        assert ep.spec.axes == ("turn", "mouse_dy")
        assert acts[1, 3] == 1.0 and acts[1, 4] == -0.25         # 40 px / 20 clipped to 1; -5 / 20
        assert acts[7, 3] == -1.0 and acts[7, 4] == 0.25         # 0.5 s is in [T_7, T_8)
        assert np.count_nonzero(acts[:, 3:]) == 4 and not acts[:, :3].any()


def test_vfr_video_is_resampled_by_timestamp(tmp_path):
    import av

    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=30)
        s.width = s.height = SIDE
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i, ms in enumerate([0, 100, 150, 400, 450, 900]):
            f = av.VideoFrame.from_ndarray(make_frames(i + 1)[i], format="rgb24")
            f.pts, f.time_base = ms, Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert data_cli.main(["import", str(path), "--no-inputs", "--buttons", "a", "--fps", "10", "--out",
                          str(tmp_path / "o"), "--no-progress"]) == 0
    with read(tmp_path / "o", "vfr_e0000.episode") as ep:
        assert source_index(ep.frames()).tolist() == [0, 1, 2, 2, 3, 4, 4, 4, 4, 5]


def test_episode_split_shares_boundary_frames(video, log, tmp_path):
    flags = ("--map", "w=up", "--ignore", "f")
    assert import_(video, log, tmp_path / "one", *flags) == 0
    assert import_(video, log, tmp_path / "split", *flags, "--episode-frames", "10") == 0
    names = sorted(p.name for p in (tmp_path / "split").iterdir())
    assert names == [f"play_e{e:04d}.episode" for e in range(4)]
    with read(tmp_path / "one") as whole:
        frames, actions = [], []
        for e, name in enumerate(names):
            with read(tmp_path / "split", name) as ep:
                frames.append(ep.frames() if e == 0 else ep.frames()[1:])
                actions.append(ep.actions())
                meta = ep.header["metadata"]
                assert meta["episode_index"] == e and meta["episodes"] == 4 and meta["first_frame"] == 9 * e
        assert [len(a) for a in actions] == [9, 9, 9, 4]
        assert np.array_equal(np.concatenate(frames), whole.frames())
        assert np.array_equal(np.concatenate(actions), whole.actions())


def test_unlabeled_import_for_the_labeler(video, tmp_path):
    out = tmp_path / "o"
    assert import_(video, None, out, "--no-inputs") == 0
    with read(out) as ep:
        assert len(ep) == FRAMES // 2 and not ep.actions().any() and ep.num_actions == len(ep) - 1
        meta = ep.header["metadata"]
        assert meta["labels"] == "none" and meta["log"] is None and meta["key_map"] == {}


def test_data_info_on_imported_video(video, tmp_path, capsys):
    """A video has no game version to report: info names the env id alone (it said 'version ?')."""
    out = tmp_path / "o"
    assert import_(video, None, out, "--no-inputs") == 0
    capsys.readouterr()
    assert data_cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "env ids:      video:play x1\n" in text and "version" not in text
    assert data_cli.main(["info", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["env_ids"] == {"video:play": 1} and report["format_versions"] == {f"v{FORMAT_VERSION}": 1}


def test_imported_episodes_pass_check_and_load(video, log, tmp_path, capsys):
    from train.data.windows import EpisodeSource

    out = tmp_path / "o"
    assert import_(video, log, out, "--map", "w=up", "--ignore", "f", "--episode-frames", "17") == 0
    assert reverie_cli.main(["data", "check", str(out)]) == 0
    assert "all ok" in capsys.readouterr().out
    src = EpisodeSource(out)
    assert src.num_frames == 32 + 1 and src.spec.buttons == ("space", "up", "fire")   # one shared boundary frame
    assert src.actions[0].shape == (17, 3) and src.actions[0][9, 0] == 1.0            # actions[t] led to frame t


def test_spec_file_and_dry_run(video, log, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"game": "gems", "buttons": ["space", "up", "fire"], "version": 2}))
    out = tmp_path / "o"
    assert import_(video, log, out, "--spec", str(spec), "--map", "w=up", "--ignore", "f", "--dry-run") == 0
    assert not out.exists() and "play_e0000.episode" in capsys.readouterr().out
    assert import_(video, log, out, "--spec", str(spec), "--map", "w=up", "--ignore", "f") == 0
    with read(out) as ep:
        assert ep.spec.game == "gems" and ep.spec.version == 2


def test_help_documents_the_log_format(capsys):
    with pytest.raises(SystemExit) as e:
        data_cli.main(["import", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("time,event,name,dx,dy", "--map KEY=BUTTON", "--offset", "--no-inputs", "[T_k, T_{k+1})"):
        assert word in text


# ---- the converter example -----------------------------------------------------------------------------------
def test_pynput_converter(video, tmp_path):
    t0 = 1712345678.0
    src = tmp_path / "keys.log"
    src.write_text("\n".join([
        f"{t0:.6f} start", f"{t0 + 8 / 15:.6f} press Key.space", f"{t0 + 0.8:.6f} release Key.space",
        f"{t0 + 1:.6f} press 'W'", f"{t0 + 1.1:.6f} release 'w'", f"{t0 + 1.3:.6f} press Button.left",
        f"{t0 + 1.4:.6f} release Button.left", f"{t0 + 1.5:.6f} move 640 360", f"{t0 + 1.55:.6f} move 652.5 357",
        f"{t0 + 1.6:.6f} scroll 0 -1", f"{t0 + 1.7:.6f} press <65437>", f"{t0 + 2.2:.6f} end"]) + "\n")
    rows = list(pynput_events(src.read_text().splitlines()))
    assert [(r["event"], r["name"]) for r in rows[1:5]] == [("down", "space"), ("up", "space"), ("down", "w"),
                                                            ("up", "w")]
    assert rows[7] == {"time": f"{t0 + 1.55:.6f}", "event": "move", "name": "", "dx": "12.5", "dy": "-3"}
    assert [r["name"] for r in rows[8:11]] == ["scroll_down", "scroll_down", "vk65437"]
    dst = tmp_path / "keys.csv"
    assert convert_pynput(src, dst) == len(rows)
    out = tmp_path / "o"
    assert import_(video, dst, out, "--video-start", f"{t0:.6f}", "--map", "w=up", "--map", "mouse_left=fire",
                   "--ignore", "mouse_dx", "--ignore", "mouse_dy", "--ignore", "scroll_down", "--ignore",
                   "vk65437") == 0
    with read(out) as ep:
        assert pressed(ep, "space") == [8, 9, 10, 11] and pressed(ep, "up") == [15, 16]
        assert pressed(ep, "fire") == [19, 20]
    with pytest.raises(ReverieError, match="line 2: unknown event 'hover'"):
        list(pynput_events(["1 start", "2 hover 3 4"], "x.log"))


# ---- errors --------------------------------------------------------------------------------------------------
def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


@pytest.mark.parametrize("rows, message", [
    (["0,start,,,", "1.0,down,space,,", "0.5,up,space,,", "2.2,end,,,"],
     "line 4: time 0.5 is earlier than 1 on line 3"),
    (["0,start,,,", "0.5,press,space,,", "2.2,end,,,"], "line 3: unknown event 'press'"),
    (["0,start,,,", "zero,down,space,,", "2.2,end,,,"], "line 3: time must be a finite number, got 'zero'"),
    (["0,start,,,", "0.5,down,,,", "2.2,end,,,"], "line 3: a 'down' event needs ['name']"),
    (["0,start,,,", "0.5,move,,1,", "2.2,end,,,"], "line 3: a 'move' event needs ['dy']"),
    (["0,start,,,", "0.5,down,space,3,", "2.2,end,,,"], "line 3: a 'down' event takes no ['dx']"),
    (["0,start,,,", "0.5,down,space", "2.2,end,,,"], "line 3: 3 fields, but the header has 5"),
    (["0,start,,,", "0.5,up,space,,", "2.2,end,,,"], "line 3: 'up' of 'space', which is not down"),
    (["0,start,,,", "2.2,end,,,", "2.3,down,space,,"], "line 4: an event after the 'end' on line 3"),
    (["0.1,down,space,,", "0.2,start,,,"], "line 3: 'start' must be the first event"),
    ([], "no events"),
])
def test_malformed_logs_name_the_line(video, tmp_path, rows, message):
    log = write_log(tmp_path / "bad.csv", rows)
    with pytest.raises(ReverieError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        import_(video, log, tmp_path / "out")
    assert str(log) in str(e.value)
    assert_nothing_written(tmp_path / "out")


def test_bad_csv_header_and_bad_json(video, tmp_path):
    for name, text, message in (("h.csv", "t,event\n0,start\n", "line 1: bad CSV header"),
                                ("j.jsonl", '{"time": 0, "event": "start"}\n{"time": 1,\n', "line 2: not a JSON"),
                                ("k.jsonl", '{"time": 0, "event": "start", "key": "a"}\n', "line 1: unknown fields")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ReverieError, match=message):
            import_(video, tmp_path / name, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_unknown_keys_are_listed_with_both_options(video, log, tmp_path):
    with pytest.raises(ReverieError) as e:
        import_(video, log, tmp_path / "out")
    msg = str(e.value)
    assert "2 key(s) that are not in the action spec: 'f', 'w'" in msg
    assert "--map KEY=BUTTON" in msg and "--ignore KEY" in msg
    assert_nothing_written(tmp_path / "out")


def test_log_that_does_not_cover_the_video(video, tmp_path):
    log = write_log(tmp_path / "short.csv", ["0.5,down,space,,", "1.5,up,space,,"])
    with pytest.raises(ReverieError) as e:
        import_(video, log, tmp_path / "out")
    msg = str(e.value)
    assert "covers video time 0.500 s to 1.500 s" in msg and "0.500 s at the start and 0.567 s at the end" in msg
    assert "--trim" in msg
    assert_nothing_written(tmp_path / "out")
    assert import_(video, log, tmp_path / "out", "--trim") == 0
    with read(tmp_path / "out") as ep:
        meta = ep.header["metadata"]
        assert len(ep) == 15 and meta["start_time"] == pytest.approx(8 / 15) and meta["first_frame"] == 0
        assert pressed(ep, "space") == list(range(14))        # frames 8 .. 22 at 15 fps; the key held throughout
        assert source_index(ep.frames()).tolist() == list(range(16, 46, 2))


@pytest.mark.parametrize("name, message", [("missing.mp4", "no such file"), ("notes.mp4", "cannot read video")])
def test_missing_or_unreadable_video(tmp_path, log, name, message):
    path = tmp_path / name
    if name == "notes.mp4":
        path.write_text("not a video at all\n")
    with pytest.raises(ReverieError, match=message) as e:
        import_(path, log, tmp_path / "out", "--ignore", "w", "--ignore", "f")
    assert path.name in str(e.value)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("flags, message", [
    (["--fps", "0"], "--fps must be above 0"),
    (["--size", "4"], "--size must be between 8"),
    (["--crop", "1,2,3"], "--crop '1,2,3': expected four integers"),
    (["--crop", "20,0,16,16"], "--crop 20,0,16,16 reaches past the video's 32x32"),
    (["--offset", "soon"], "--offset 'soon': expected a number of seconds"),
    (["--episode-frames", "1"], "--episode-frames must be 0"),
    (["--mouse-scale", "0"], "--mouse-scale must be a positive"),
    (["--map", "w"], "--map 'w': expected KEY=BUTTON"),
    (["--map", "w=jump"], "'jump' is not in the action spec"),
    (["--map", "w=up", "--map", "w=fire"], "'w' is mapped twice"),
    (["--map", "w=up", "--ignore", "w"], "both mapped"),
    (["--buttons", "Up"], "bad control name 'Up'"),
    (["--spec", "nowhere.json"], "cannot read --spec"),
    (["--no-inputs"], "--no-inputs imports the video without a log, but a log was given"),
])
def test_bad_flags(video, log, tmp_path, flags, message):
    with pytest.raises(ReverieError, match=message.replace("(", r"\(")):
        import_(video, log, tmp_path / "out", "--map", "f=fire", "--ignore", "w", *flags)
    assert_nothing_written(tmp_path / "out")


def test_flags_that_need_a_log(video, tmp_path):
    with pytest.raises(ReverieError, match="no input log given"):
        import_(video, None, tmp_path / "out")
    with pytest.raises(ReverieError) as one:
        import_(video, None, tmp_path / "out", "--no-inputs", "--offset", "1")
    assert str(one.value) == ("--offset acts on the input log, and --no-inputs imports the video without one: drop "
                              "--offset, or give the log after the video instead of --no-inputs")
    with pytest.raises(ReverieError) as two:
        import_(video, None, tmp_path / "out", "--no-inputs", "--offset", "1", "--trim", "--map", "w=up")
    assert str(two.value) == ("--map, --offset and --trim act on the input log, and --no-inputs imports the video "
                              "without one: drop them, or give the log after the video instead of --no-inputs")
    with pytest.raises(ReverieError, match="declare the action spec"):
        data_cli.main(["import", str(video), "--no-inputs", "--out", str(tmp_path / "out")])
    assert_nothing_written(tmp_path / "out")


def test_existing_files_are_kept_unless_overwrite(video, tmp_path):
    out = tmp_path / "out"
    assert import_(video, None, out, "--no-inputs") == 0
    with pytest.raises(ReverieError, match="already exist"):
        import_(video, None, out, "--no-inputs")
    assert import_(video, None, out, "--no-inputs", "--overwrite") == 0


def test_failure_midway_removes_every_file(video, log, tmp_path, monkeypatch):
    real = importer.video_frames

    def failing(*args, **kwargs):
        for i, frame in enumerate(real(*args, **kwargs)):
            if i == 20:
                raise importer.ImporterError("cannot decode video: boom")
            yield frame

    monkeypatch.setattr(importer, "video_frames", failing)
    out = tmp_path / "new" / "out"
    with pytest.raises(ReverieError, match="boom"):
        import_(video, log, out, "--map", "w=up", "--ignore", "f", "--episode-frames", "8")
    assert not (tmp_path / "new").exists()                      # two episodes were whole: removed with the dirs


def test_cli_prints_one_line_without_traceback(video, tmp_path, capsys):
    assert reverie_cli.main(["data", "import", str(tmp_path / "none.mp4"), "--no-inputs", "--buttons", "a",
                             "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("reverie data: error: video ") and "no such file" in err and "Traceback" not in err
