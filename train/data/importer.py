"""`reverie data import`: gameplay video plus an input log -> episode files with a declared action spec.

  reverie data import VIDEO LOG --buttons up,down,left,right,space --out DIR [--fps 15 --size 64 ...]
  reverie data import VIDEO --no-inputs --buttons ... --out DIR     (unlabeled, for `reverie data label`)

THE INPUT LOG is CSV with the header time,event,name,dx,dy (columns in any order), or JSON lines with those keys;
blank lines and "#" lines are skipped. One event a line: `down` / `up` of the key or button `name` (w, space,
mouse_left; any case), `move` of the mouse by `dx`, `dy` pixels, and optional `start` / `end` as the first / last
line, for when logging began / ended (by default the logged span runs from the first event to the last). `time` is
in seconds on the log's clock and never decreases. A key is held from its `down` to its next `up`; an `up` of a key
that is not down is an error. The format in full: train/data/input_log.py. Converters from other loggers' formats:
train/data/importer_formats.py (`python -m train.data.importer_formats --help`).

  time,event,name,dx,dy                 {"time": 0.0, "event": "start"}
  0.0,start,,,                          {"time": 0.5, "event": "down", "name": "space"}
  0.5,down,space,,                      {"time": 0.75, "event": "up", "name": "space"}
  0.75,up,space,,                       {"time": 0.8, "event": "move", "dx": 12, "dy": -3}
  0.8,move,,12,-3                       {"time": 4.0, "event": "end"}
  4.0,end,,,

TIMES. A log time t is video time  t - VIDEO_START + OFFSET  seconds, where video time 0 is the video's first
frame. --video-start (default 0) is the log time of the first frame (for logs of absolute times, e.g. Unix time);
--offset shifts every event (use a negative offset for a logger that logs events late). Times are compared in
whole microseconds.

FRAMES AND ACTIONS. Output frame k is at video time T_k = k / FPS and shows the source frame on screen then (the
last one whose timestamp is at or before T_k, allowing for the container's timestamp rounding: half its time unit,
at most 1 ms), so variable-frame-rate video is resampled by timestamp. Frames are cropped (--crop x,y,w,h in
source pixels) and then resized to SIZE x SIZE with an area filter (the aspect ratio is not kept). Action k leads
from frame k to frame k+1: a button is 1 in it if a key mapped to it is held at any moment of [T_k, T_{k+1}) (a
down at exactly T_k counts in action k; a tap counts in the action whose interval holds it). A mouse axis is the
sum of the motion logged in [T_k, T_{k+1}) divided by --mouse-scale, clipped to [-1, 1].

ACTION SPEC AND KEYS. Declare the spec with --buttons (and --axes, --game) or --spec FILE.json (an action spec as
`reverie data info --json` prints it). A key named like a button maps to it; --map KEY=BUTTON maps any other
(--map mouse_dx=turn maps mouse motion, the inputs mouse_dx and mouse_dy, to an axis), and --ignore KEY drops one.
Any other key in the log is an error that lists them all.

COVERAGE. The logged span must cover the video's frames, or the import stops and says by how much; --trim
imports only the frames inside the logged span.

OUTPUT. DIR/<video stem>_e0000.episode, ...; --episode-frames N splits the video into episodes of N frames, where
each episode starts on the last frame of the one before it, so every step is in exactly one episode. Env id
`video:<stem>`; metadata: labels ("log", or "none" with --no-inputs, whose actions are all zero for `reverie data
label` to fill in), source, log, offset, video_start, fps, key_map, ignored, crop, and where the episode starts.
Files appear only when whole; on any error every file this import wrote is removed. See docs/IMPORT.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from engine.actions import ActionSpec, ActionSpecError
from train.data.episodes import MAX_SIDE, SUFFIX, EpisodeWriter
from train.data.input_log import ImporterError, InputLog, actions_from_log, key_map, read_log

HELP = "gameplay video + an input log -> episode files"

DEFAULT_FPS = 15.0
MAX_FPS = 1000.0
DEFAULT_SIZE = 64
MIN_SIZE = 8
DEFAULT_MOUSE_SCALE = 50.0       # pixels of motion within one frame interval that make an axis value of 1
DEFAULT_GAME = "video"
US = 1_000_000                   # times are whole microseconds
MAX_TIMESTAMP_SLACK_US = 1000    # a container's timestamp rounding we allow for, at most (Matroska rounds to 1 ms)
INSTALL_HINT = "install the data extra: pip install 'reverie[data]'"


# ---- the output frame grid -----------------------------------------------------------------------------------
def grid_time(k: int, fps: Fraction) -> int:
    """T_k = k / fps in whole microseconds."""
    return round(Fraction(k * US) / fps)


def count_before(limit: int, fps: Fraction, inclusive: bool = False) -> int:
    """How many grid times T_0, T_1, ... lie below limit (at or below, if inclusive)."""
    below = (lambda t: t <= limit) if inclusive else (lambda t: t < limit)
    if not below(0):
        return 0
    k = max(0, int(Fraction(limit) * fps / US))
    while k > 0 and not below(grid_time(k, fps)):
        k -= 1
    while below(grid_time(k + 1, fps)):
        k += 1
    return k + 1


# ---- the video -----------------------------------------------------------------------------------------------
def _av():
    try:
        import av
    except ImportError as e:
        raise ImporterError(f"PyAV is needed to read video but is not installed ({e}); {INSTALL_HINT}") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What a demux pass (no decoding) tells about a video: size, frame times, end."""

    path: Path
    width: int
    height: int
    pts0: int                # the first frame's timestamp, in time_base units
    time_base: Fraction
    times_us: list[int]      # each frame's time from the first, in presentation order
    end_us: int              # when the last frame stops showing
    slack_us: int            # the container's timestamp rounding we allow for


def _open(path: Path):
    """An opened container and its first video stream, or a clear error."""
    av = _av()
    if not path.is_file():
        raise ImporterError(f"video {path}: no such file; check the path")
    try:
        container = av.open(str(path))
    except Exception as e:  # PyAV raises many kinds for a file it cannot read
        raise ImporterError(f"cannot read video {path}: {e}; is it a whole video file that ffmpeg can play?") from None
    if not container.streams.video:
        container.close()
        raise ImporterError(f"{path} has no video stream; pass a video file")
    return container, container.streams.video[0]


def probe_video(path: str | Path) -> VideoInfo:
    """Frame timestamps and size of a video from its packets (no decoding)."""
    path = Path(path)
    container, stream = _open(path)
    try:
        packets = [(p.pts, p.duration) for p in container.demux(stream) if p.size]
        width, height = stream.codec_context.width, stream.codec_context.height
        rate, time_base = stream.average_rate, stream.time_base
    except Exception as e:
        raise ImporterError(f"cannot read video {path}: {e}; the file may be damaged") from None
    finally:
        container.close()
    if not packets or time_base is None:
        raise ImporterError(f"video {path} has no frames" + ("" if packets else " (or no time base)"))
    if any(pts is None for pts, _ in packets):
        raise ImporterError(f"video {path} has frames without timestamps; remux it, e.g. ffmpeg -i {path.name} "
                            "-c copy out.mkv")
    packets.sort(key=lambda p: p[0])
    time_base = Fraction(time_base)
    pts0 = packets[0][0]
    times = [round((pts - pts0) * time_base * US) for pts, _ in packets]
    last = packets[-1][1] * time_base * US if packets[-1][1] else 0
    if not last:  # no duration on the last packet: the frame interval before it, else the stream's rate
        last = times[-1] - times[-2] if len(times) > 1 else Fraction(US) / Fraction(rate) if rate else 0
    if not last:
        raise ImporterError(f"video {path} has one frame and no frame rate; it cannot be resampled")
    slack = min(MAX_TIMESTAMP_SLACK_US, round(time_base * US / 2))
    return VideoInfo(path, width, height, pts0, time_base, times, times[-1] + round(last), slack)


def video_frames(info: VideoInfo, grid_us: np.ndarray, crop: tuple[int, int, int, int] | None,
                 size: int) -> Iterator[np.ndarray]:
    """The source frame on screen at each grid time, cropped and resized: (size, size, 3) uint8 each."""
    from train.games.gym_adapters import resize_area

    container, stream = _open(info.path)
    stream.thread_type = "AUTO"
    current = None          # [time, av frame, converted array or None]
    k, n = 0, len(grid_us)

    def take() -> np.ndarray:
        if current[2] is None:
            rgb = current[1].to_ndarray(format="rgb24")                 # (H, W, 3)
            if crop is not None:
                x, y, w, h = crop
                rgb = rgb[y:y + h, x:x + w]                              # (h, w, 3)
            current[2] = resize_area(rgb, size)                         # (size, size, 3)
        return current[2]

    try:
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    raise ImporterError(f"video {info.path}: a decoded frame has no timestamp; remux it, e.g. "
                                        f"ffmpeg -i {info.path.name} -c copy out.mkv")
                t = round((frame.pts - info.pts0) * info.time_base * US)
                if current is None and t > grid_us[0] + info.slack_us:
                    raise ImporterError(f"video {info.path}: the first decoded frame is at {t / US:.3f} s, after "
                                        f"the first frame to import ({grid_us[0] / US:.3f} s); re-encode the video")
                while k < n and grid_us[k] + info.slack_us < t:
                    yield take()
                    k += 1
                if k == n:
                    return
                current = [t, frame, None]
        except ImporterError:
            raise
        except Exception as e:  # a decoder error in the middle of the file
            raise ImporterError(f"cannot decode video {info.path} after {k} frames: {e}; the file may be "
                                "damaged") from None
        if current is None or current[0] < info.times_us[-1] - info.slack_us:
            got = "nothing" if current is None else f"only up to {current[0] / US:.3f} s"
            raise ImporterError(f"video {info.path} decoded to {got} of {info.times_us[-1] / US:.3f} s; the file "
                                "may be truncated or damaged")
        while k < n:
            yield take()
            k += 1
    finally:
        container.close()


# ---- the import ----------------------------------------------------------------------------------------------
@dataclass
class ImportConfig:
    """The resolved flags of one import (recorded in each episode's metadata)."""

    video: Path
    out: Path
    spec: ActionSpec
    log: Path | None = None
    fps: float = DEFAULT_FPS
    size: int = DEFAULT_SIZE
    crop: tuple[int, int, int, int] | None = None
    offset: Fraction = Fraction(0)
    video_start: Fraction = Fraction(0)
    trim: bool = False
    mouse_scale: float = DEFAULT_MOUSE_SCALE
    episode_frames: int = 0
    maps: list[str] = field(default_factory=list)
    ignores: list[str] = field(default_factory=list)
    agent: str = "human"
    overwrite: bool = False


@dataclass
class Plan:
    """What an import will write: output frame times, actions, episodes (frame ranges) and their files."""

    grid_us: np.ndarray                 # (n,) video time of each output frame
    actions: np.ndarray                 # (n-1, A)
    episodes: list[tuple[int, int]]     # first and last frame (inclusive) of each episode
    paths: list[Path]
    keys: dict[str, str | None]
    video: VideoInfo
    log: InputLog | None


def _seconds(us: int) -> str:
    return f"{us / US:.3f} s"


def plan_import(cfg: ImportConfig) -> Plan:
    """Read the log and probe the video; check the key map and the coverage; compute every action."""
    fps = Fraction(str(cfg.fps))
    log = read_log(cfg.log) if cfg.log is not None else None
    keys = key_map(log.inputs(), cfg.spec, cfg.maps, cfg.ignores) if log is not None else {}
    video = probe_video(cfg.video)
    if cfg.crop is not None:
        x, y, w, h = cfg.crop
        if x + w > video.width or y + h > video.height:
            raise ImporterError(f"--crop {x},{y},{w},{h} reaches past the video's {video.width}x{video.height} "
                                "pixels; crop inside the frame")
    n_video = count_before(video.end_us - video.slack_us, fps)
    first, last = 0, n_video - 1

    def to_video_us(t: Fraction) -> int:
        return round((t - cfg.video_start + cfg.offset) * US)

    if log is not None:
        lo, hi = (to_video_us(t) for t in log.span)
        if cfg.trim:
            first, last = max(first, count_before(lo, fps)), min(last, count_before(hi, fps, inclusive=True) - 1)
        elif lo > grid_time(first, fps) or hi < grid_time(last, fps):
            short = [f"{_seconds(lo - grid_time(first, fps))} at the start"] if lo > grid_time(first, fps) else []
            short += [f"{_seconds(grid_time(last, fps) - hi)} at the end"] if hi < grid_time(last, fps) else []
            raise ImporterError(
                f"input log {log.path} covers video time {_seconds(lo)} to {_seconds(hi)} (after --video-start "
                f"{float(cfg.video_start):g} and --offset {float(cfg.offset):g}), but the frames at {cfg.fps:g} fps "
                f"run from {_seconds(grid_time(first, fps))} to {_seconds(grid_time(last, fps))}: the log misses "
                f"{' and '.join(short)}; pass --trim to import only the logged span, add 'start' / "
                "'end' lines to the log if it did run then, or fix --video-start / --offset")
    if last - first < 1:
        where = " inside the logged span (--trim)" if cfg.trim else ""
        raise ImporterError(f"video {cfg.video} gives {max(0, last - first + 1)} frame(s) at {cfg.fps:g} fps{where}; "
                            "an episode needs at least 2: use a longer video or a higher --fps")
    grid_us = np.array([grid_time(k, fps) for k in range(first, last + 1)], np.int64)   # (n,)
    if log is not None:
        actions = actions_from_log(log, keys, cfg.spec, grid_us, to_video_us, cfg.mouse_scale)
    else:
        actions = np.zeros((len(grid_us) - 1, cfg.spec.size), np.float32)              # (n-1, A)
    step = cfg.episode_frames - 1 if 2 <= cfg.episode_frames < len(grid_us) else len(grid_us) - 1
    episodes = [(a, min(a + step, len(grid_us) - 1)) for a in range(0, len(grid_us) - 1, step)]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.video.stem).strip("-.") or "video"
    paths = [cfg.out / f"{stem}_e{e:04d}{SUFFIX}" for e in range(len(episodes))]
    return Plan(grid_us, actions, episodes, paths, keys, video, log)


def _metadata(cfg: ImportConfig, plan: Plan, e: int) -> dict:
    a, _ = plan.episodes[e]
    return {"labels": "log" if plan.log is not None else "none", "source": str(cfg.video.resolve()),
            "log": str(cfg.log.resolve()) if cfg.log is not None else None, "offset": float(cfg.offset),
            "video_start": float(cfg.video_start), "fps": cfg.fps,
            "key_map": {k: v for k, v in plan.keys.items() if v is not None},
            "ignored": sorted(k for k, v in plan.keys.items() if v is None), "mouse_scale": cfg.mouse_scale,
            "source_size": [plan.video.width, plan.video.height], "crop": list(cfg.crop) if cfg.crop else None,
            "episode_index": e, "episodes": len(plan.episodes), "first_frame": a,
            "start_time": float(plan.grid_us[a]) / US}


def write_episodes(cfg: ImportConfig, plan: Plan, progress: bool = False) -> list[Path]:
    """Decode, resample and write every episode of a plan; on any error remove every file written."""
    from tqdm import tqdm

    existing = [p.name for p in plan.paths if p.exists()]
    if existing and not cfg.overwrite:
        raise ImporterError(f"{len(existing)} episode file(s) already exist in {cfg.out} (e.g. {existing[0]}); "
                            "pass --overwrite or another --out")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise ImporterError(f"--out {cfg.out} is a file, not a directory")
    made = []  # directories this import creates, deepest first
    d = cfg.out
    while not d.exists():
        made.append(d)
        d = d.parent
    done: list[Path] = []
    stem = cfg.video.stem
    frames = video_frames(plan.video, plan.grid_us, cfg.crop, cfg.size)
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
        with tqdm(total=len(plan.grid_us), unit="frame", desc=f"import {cfg.video.name}", file=sys.stderr,
                  disable=True if not progress else None) as bar:
            previous = None
            for e, ((a, b), path) in enumerate(zip(plan.episodes, plan.paths)):
                with EpisodeWriter(path, env_id=f"video:{stem}", action_spec=cfg.spec,
                                   frame_shape=(cfg.size, cfg.size, 3), fps=cfg.fps, agent=cfg.agent,
                                   metadata=_metadata(cfg, plan, e)) as writer:
                    if previous is None:
                        previous = next(frames)
                        bar.update(1)
                    writer.append(previous)
                    for k in range(a + 1, b + 1):
                        previous = next(frames)
                        writer.append(previous, plan.actions[k - 1])
                        bar.update(1)
                done.append(path)
    except BaseException as e:
        frames.close()
        for path in done:
            path.unlink(missing_ok=True)
        for d in made:
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(e, OSError):
            raise ImporterError(f"cannot write episodes to {cfg.out}: {e.strerror or e}; nothing was kept") from None
        raise
    frames.close()
    return done


# ---- command line --------------------------------------------------------------------------------------------
def add_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the sub-command."""
    p.add_argument("video", type=Path, help="the gameplay video (any file PyAV / ffmpeg can read)")
    p.add_argument("log", type=Path, nargs="?", help="the input log (CSV or JSON lines; format above)")
    p.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    s = p.add_argument_group("action spec (--buttons and/or --axes, or --spec)")
    s.add_argument("--buttons", help="button names, comma-separated, e.g. up,down,left,right,space")
    s.add_argument("--axes", help="axis names, comma-separated, e.g. turn,look (filled from mouse motion)")
    s.add_argument("--game", help=f"the spec's game name (default {DEFAULT_GAME})")
    s.add_argument("--spec", type=Path, help="an action spec as JSON: {\"game\", \"buttons\", \"axes\", \"version\"}")
    k = p.add_argument_group("keys")
    k.add_argument("--map", action="append", default=[], metavar="KEY=BUTTON",
                   help="map a key of the log to a button (mouse_dx / mouse_dy to an axis); repeatable")
    k.add_argument("--ignore", action="append", default=[], metavar="KEY", help="drop a key of the log; repeatable")
    k.add_argument("--no-inputs", action="store_true",
                   help="no log: import the video unlabeled (all-zero actions) for `reverie data label`")
    t = p.add_argument_group("time")
    t.add_argument("--offset", default="0", metavar="SECONDS",
                   help="added to every log time (negative for a logger that logs late; default 0)")
    t.add_argument("--video-start", default="0", metavar="SECONDS",
                   help="the log time of the video's first frame (default 0: log times are video times)")
    t.add_argument("--trim", action="store_true", help="import only the frames inside the logged span")
    t.add_argument("--mouse-scale", type=float, default=DEFAULT_MOUSE_SCALE, metavar="PIXELS",
                   help=f"mouse motion within one frame interval that is an axis value of 1 (default "
                        f"{DEFAULT_MOUSE_SCALE:g})")
    f = p.add_argument_group("frames and episodes")
    f.add_argument("--fps", type=float, default=DEFAULT_FPS, help=f"output frames per second (default {DEFAULT_FPS:g})")
    f.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help=f"frame side in pixels, frames are SIZE x SIZE (default {DEFAULT_SIZE})")
    f.add_argument("--crop", metavar="X,Y,W,H", help="crop this rectangle (source pixels) before resizing")
    f.add_argument("--episode-frames", type=int, default=0, metavar="N",
                   help="split into episodes of N frames (default 0: one episode)")
    f.add_argument("--agent", default="human", help="who played, for the episode header (default human)")
    f.add_argument("--overwrite", action="store_true", help="replace episode files that already exist")
    f.add_argument("--dry-run", action="store_true", help="check everything and print the plan; write nothing")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")


def _names(text: str | None, flag: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in (text or "").split(",") if n.strip())
    if text is not None and not names:
        raise ImporterError(f"{flag} {text!r}: give comma-separated names")
    return names


def _spec(a: argparse.Namespace) -> ActionSpec:
    """The action spec declared by --spec, or by --buttons / --axes / --game."""
    if a.spec is not None:
        if a.buttons is not None or a.axes is not None or a.game is not None:
            raise ImporterError("--spec declares the whole action spec; drop --buttons, --axes and --game")
        try:
            return ActionSpec.from_dict(json.loads(a.spec.read_text(encoding="utf-8")), where=f"--spec {a.spec}")
        except OSError as e:
            raise ImporterError(f"cannot read --spec {a.spec}: {e.strerror or e}") from None
        except ValueError as e:  # JSON errors and ActionSpecError
            raise ImporterError(f"--spec {a.spec}: {e}") from None
    if a.buttons is None and a.axes is None:
        raise ImporterError("declare the action spec: --buttons up,down,... (and --axes ...) or --spec FILE.json")
    try:
        return ActionSpec(game=a.game or DEFAULT_GAME, buttons=_names(a.buttons, "--buttons"),
                          axes=_names(a.axes, "--axes"))
    except ActionSpecError as e:
        raise ImporterError(f"--buttons / --axes / --game: {e}") from None


def _crop(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise ImporterError(f"--crop {text!r}: expected four integers X,Y,W,H, e.g. --crop 0,0,480,480") from None
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise ImporterError(f"--crop {text!r}: X and Y must be >= 0 and W and H >= 1")
    return x, y, w, h


def _seconds_flag(text: str, flag: str) -> Fraction:
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise ImporterError(f"{flag} {text!r}: expected a number of seconds, e.g. {flag} -0.05") from None


def config_from_args(a: argparse.Namespace) -> ImportConfig:
    """Check every flag and resolve them into an ImportConfig."""
    if a.no_inputs and a.log is not None:
        raise ImporterError(f"--no-inputs imports the video without a log, but a log was given ({a.log}); drop one")
    if not a.no_inputs and a.log is None:
        raise ImporterError("no input log given: pass VIDEO LOG, or --no-inputs to import the video unlabeled for "
                            "`reverie data label`")
    if a.no_inputs:
        used = [flag for flag, value, default in (("--map", a.map, []), ("--ignore", a.ignore, []),
                                                  ("--offset", a.offset, "0"), ("--video-start", a.video_start, "0"),
                                                  ("--trim", a.trim, False),
                                                  ("--mouse-scale", a.mouse_scale, DEFAULT_MOUSE_SCALE))
                if value != default]
        if used:
            one = len(used) == 1
            flags = used[0] if one else f"{', '.join(used[:-1])} and {used[-1]}"
            raise ImporterError(f"{flags} {'acts' if one else 'act'} on the input log, and --no-inputs imports the "
                                f"video without one: drop {used[0] if one else 'them'}, or give the log after the "
                                "video instead of --no-inputs")
    if not (0 < a.fps <= MAX_FPS):
        raise ImporterError(f"--fps must be above 0 and at most {MAX_FPS:g}, got {a.fps:g}")
    if not MIN_SIZE <= a.size <= MAX_SIDE:
        raise ImporterError(f"--size must be between {MIN_SIZE} and {MAX_SIDE} pixels, got {a.size}")
    if a.episode_frames != 0 and a.episode_frames < 2:
        raise ImporterError(f"--episode-frames must be 0 (one episode) or at least 2, got {a.episode_frames}")
    if not (a.mouse_scale > 0 and np.isfinite(a.mouse_scale)):
        raise ImporterError(f"--mouse-scale must be a positive number of pixels, got {a.mouse_scale:g}")
    if not a.agent.strip():
        raise ImporterError("--agent must not be empty")
    return ImportConfig(video=a.video, out=a.out, spec=_spec(a), log=a.log, fps=a.fps, size=a.size,
                        crop=_crop(a.crop), offset=_seconds_flag(a.offset, "--offset"),
                        video_start=_seconds_flag(a.video_start, "--video-start"), trim=a.trim,
                        mouse_scale=a.mouse_scale, episode_frames=a.episode_frames, maps=list(a.map),
                        ignores=list(a.ignore), agent=a.agent.strip(), overwrite=a.overwrite)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    plan = plan_import(cfg)
    n = len(plan.grid_us)
    labels = "labels from the log" if plan.log is not None else "unlabeled: all-zero actions for `reverie data label`"
    if args.dry_run:
        v = plan.video
        print(f"video   {cfg.video}: {v.width}x{v.height}, {len(v.times_us)} frames, {_seconds(v.end_us)}")
        print(f"frames  {n} at {cfg.fps:g} fps from {_seconds(int(plan.grid_us[0]))} to "
              f"{_seconds(int(plan.grid_us[-1]))}, {cfg.size}x{cfg.size}" + (f", crop {cfg.crop}" if cfg.crop else ""))
        print(f"spec    {json.dumps(cfg.spec.to_dict())}")
        if plan.log is not None:
            print(f"keys    {json.dumps(plan.keys)}")
            pressed = {c: int(plan.actions[:, i].astype(bool).sum()) for i, c in enumerate(cfg.spec.names)}
            print(f"actions {n - 1} ({labels}); non-zero per control: {json.dumps(pressed)}")
        else:
            print(f"actions {n - 1} ({labels})")
        for (a, b), path in zip(plan.episodes, plan.paths):
            print(f"episode {path} (frames {a}..{b})")
        return 0
    paths = write_episodes(cfg, plan, progress=not args.no_progress)
    print(f"imported {cfg.video}: {n} frames at {cfg.fps:g} fps, {n - 1} actions ({labels}) -> "
          f"{len(paths)} episode file(s) in {cfg.out}")
    return 0
