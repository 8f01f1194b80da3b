"""The input log of `reverie data import`: parse and check it, map its keys, and turn it into actions.

FORMAT. CSV with a header line, or JSON lines (one object a line; a file whose first content line starts with "{"
is JSON lines). Blank lines and lines starting with "#" are skipped. The CSV columns are any of time, event, name,
dx, dy, in any order, each at most once (time and event required); a field an event does not use is left empty (a
JSON line leaves its key out). Any other column or key is an error. Fields:

  time   seconds (a decimal number), on the log's clock; non-decreasing from line to line (equal times apply in
         file order)
  event  down | up      a key or button goes down / up; needs `name`
         move           relative mouse motion in pixels; needs `dx` and `dy`
         start | end    optional: when logging began / ended (first / last line); by default the logged span
                        runs from the first event to the last
  name   the key or button, e.g. w, space, mouse_left (compared in lower case)
  dx dy  numbers, for `move` only

An example of both forms is in `reverie data import --help` (train/data/importer.py), a worked one in docs/IMPORT.md.

HELD KEYS. A key is held from its `down` to its next `up` (or to the end of the log); a repeated `down` of a held
key (key repeat) changes nothing; an `up` of a key that is not down is an error (add a `down` on the first line for
a key held when logging began).

KEYS TO CONTROLS (key_map). A key named like a button of the action spec maps to it; --map KEY=BUTTON maps any
other (several keys may map to one button), and --ignore KEY drops one. Mouse motion is the inputs mouse_dx and
mouse_dy, which map to axes the same way (an axis named mouse_dx, or --map mouse_dx=turn) or are ignored. Keys map
only to buttons and motion only to axes. Any other input is an error that lists them all.

ACTIONS (actions_from_log). Given the output frame times T_0 < T_1 < ... in video microseconds, action k covers
[T_k, T_{k+1}): a button is 1 in it if a key mapped to it is held at any moment of that interval (a down at
exactly T_k counts in action k, not k-1; an up at exactly T_k ends the press before action k; a tap, down and up
at the same time, counts in the action whose interval holds that time, so no press is lost). A mouse axis is the
sum of the motion logged in the interval divided by the mouse scale, clipped to [-1, 1].

Converters from other loggers' formats: train/data/importer_formats.py. The whole import, with a worked example:
docs/IMPORT.md.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np

from engine.actions import ActionSpec
from engine.errors import ReverieError

EVENTS = ("down", "up", "move", "start", "end")
COLUMNS = ("time", "event", "name", "dx", "dy")
MOUSE_INPUTS = ("mouse_dx", "mouse_dy")


class ImporterError(ReverieError, ValueError):
    """A bad video, log or flag of `reverie data import`; the message names it and says what to do."""


class InputLogError(ImporterError):
    """A malformed input log; the message names the file and the line."""

    def __init__(self, path: str | Path, line: int | None, what: str):
        self.path, self.line = str(path), line
        super().__init__(f"{path}" + (f" line {line}" if line is not None else "") + f": {what}")


@dataclass(frozen=True)
class Event:
    """One line of an input log: a key down/up, a mouse motion, or a start/end marker."""

    time: Fraction      # seconds on the log's clock
    kind: str
    name: str = ""
    dx: float = 0.0
    dy: float = 0.0
    line: int = 0


@dataclass
class InputLog:
    """The events of a log (markers excluded) and its logged span, in log seconds."""

    path: Path
    events: list[Event]
    span: tuple[Fraction, Fraction]

    def inputs(self) -> set[str]:
        """Names of every input the log uses: its keys, and mouse_dx / mouse_dy if it has motion."""
        names = {e.name for e in self.events if e.kind in ("down", "up")}
        return names | (set(MOUSE_INPUTS) if any(e.kind == "move" for e in self.events) else set())


def _number(value: object, what: str, path: Path, line: int) -> Fraction:
    """A finite number from a CSV string or a JSON number, exactly."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise InputLogError(path, line, f"{what} must be a number, got {value!r}")
    try:
        return Fraction(value.strip() if isinstance(value, str) else value)
    except (ValueError, ZeroDivisionError, OverflowError, ArithmeticError):
        raise InputLogError(path, line, f"{what} must be a finite number, got {value!r}") from None


def _event(fields: dict, path: Path, line: int) -> Event:
    """Check one line's fields (empty ones already dropped) and make its Event."""
    for key in ("time", "event"):
        if key not in fields:
            raise InputLogError(path, line, f"no {key!r} (every line needs time and event)")
    kind = fields["event"]
    if kind not in EVENTS:
        raise InputLogError(path, line, f"unknown event {kind!r}; events are {', '.join(EVENTS)}")
    needs = {"down": {"name"}, "up": {"name"}, "move": {"dx", "dy"}}.get(kind, set())
    missing, extra = sorted(needs - set(fields)), sorted(set(fields) - needs - {"time", "event"})
    if missing or extra:
        raise InputLogError(path, line, f"a {kind!r} event " + (f"needs {missing}" if missing else
                                                                f"takes no {extra}"))
    time = _number(fields["time"], "time", path, line)
    if kind == "move":
        dx, dy = (float(_number(fields[k], k, path, line)) for k in ("dx", "dy"))
        return Event(time, kind, dx=dx, dy=dy, line=line)
    name = fields.get("name", "")
    if not isinstance(name, str) or (kind in ("down", "up") and not name.strip()):
        raise InputLogError(path, line, f"name must be a key name, got {name!r}")
    return Event(time, kind, name=name.strip().lower(), line=line)


def _lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, fields with empty ones dropped) of each content line of a CSV or JSON-lines log."""
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise ImporterError(f"cannot read input log {path}: {e.strerror or e}; check the path") from None
    header: list[str] | None = None
    jsonl = None
    number = 0
    with f:
        try:
            for number, text in enumerate(f, start=1):
                text = text.strip()
                if not text or text.startswith("#"):
                    continue
                if jsonl is None:
                    jsonl = text.startswith("{")
                if jsonl:
                    try:
                        obj = json.loads(text, parse_float=Decimal)
                    except ValueError as e:
                        raise InputLogError(path, number, f"not a JSON object ({e})") from None
                    if not isinstance(obj, dict):
                        raise InputLogError(path, number, f"not a JSON object but a {type(obj).__name__}")
                    fields = obj
                else:
                    row = next(csv.reader([text]))
                    if header is None:
                        header = [c.strip().lower() for c in row]
                        bad = sorted(set(header) - set(COLUMNS))
                        if bad or len(set(header)) != len(header) or not {"time", "event"} <= set(header):
                            raise InputLogError(path, number, f"bad CSV header {row}; the columns are "
                                                f"{','.join(COLUMNS)} (time and event required, each once)")
                        continue
                    if len(row) != len(header):
                        raise InputLogError(path, number, f"{len(row)} fields, but the header has {len(header)}")
                    fields = dict(zip(header, (v.strip() for v in row)))
                unknown = sorted(set(map(str, fields)) - set(COLUMNS))
                if unknown:
                    raise InputLogError(path, number, f"unknown fields {unknown}; fields are {list(COLUMNS)}")
                yield number, {k: v for k, v in fields.items() if v not in ("", None)}
        except UnicodeDecodeError:
            raise InputLogError(path, number + 1, "not UTF-8 text; save the log as UTF-8") from None


def read_log(path: str | Path) -> InputLog:
    """Parse and check an input log: fields, event order, start/end markers, downs before ups."""
    path = Path(path)
    events: list[Event] = []
    start = end = None
    held: set[str] = set()
    last: Event | None = None
    for number, fields in _lines(path):
        ev = _event(fields, path, number)
        if end is not None:
            raise InputLogError(path, number, f"an event after the 'end' on line {end.line}; 'end' must be last")
        if last is not None and ev.time < last.time:
            raise InputLogError(path, number, f"time {float(ev.time):g} is earlier than {float(last.time):g} on "
                                f"line {last.line}; times must not decrease (sort the log by time)")
        if ev.kind == "start":
            if last is not None:
                raise InputLogError(path, number, f"'start' must be the first event (line {last.line} is before it)")
            start = ev
        elif ev.kind == "end":
            end = ev
        else:
            if ev.kind == "down":
                held.add(ev.name)
            elif ev.kind == "up":
                if ev.name not in held:
                    raise InputLogError(path, number, f"'up' of {ev.name!r}, which is not down; add a 'down' of it at "
                                        "the start of the log if it was held when logging began")
                held.discard(ev.name)
            events.append(ev)
        last = ev
    if last is None:
        raise InputLogError(path, None, "no events; see `reverie data import --help` for the format")
    first_time = start.time if start is not None else events[0].time if events else last.time
    return InputLog(path, events, (first_time, last.time))


def key_map(inputs: set[str], spec: ActionSpec, maps: list[str], ignores: list[str]) -> dict[str, str | None]:
    """Control of each input of a log (None: ignored), from names, --map KEY=CONTROL and --ignore KEY."""
    mapped: dict[str, str] = {}
    for item in maps:
        key, sep, control = item.rpartition("=")
        key, control = key.strip().lower(), control.strip()
        if not sep or not key or not control:
            raise ImporterError(f"--map {item!r}: expected KEY=BUTTON, e.g. --map w=up")
        if key in mapped:
            raise ImporterError(f"--map: {key!r} is mapped twice ({mapped[key]!r} and {control!r}); map it once")
        if control not in spec.names:
            raise ImporterError(f"--map {item!r}: {control!r} is not in the action spec; buttons "
                                f"{list(spec.buttons)}, axes {list(spec.axes)}")
        if (key in MOUSE_INPUTS) != (control in spec.axes):
            raise ImporterError(f"--map {item!r}: keys map to buttons and mouse_dx / mouse_dy to axes")
        mapped[key] = control
    ignored = {i.strip().lower() for i in ignores}
    both = sorted(ignored & set(mapped))
    if both:
        raise ImporterError(f"{both} are both mapped (--map) and ignored (--ignore); choose one")
    out: dict[str, str | None] = {}
    unknown = []
    for name in sorted(inputs):
        if name in ignored:
            out[name] = None
        elif name in mapped:
            out[name] = mapped[name]
        elif name in (spec.axes if name in MOUSE_INPUTS else spec.buttons):
            out[name] = name
        else:
            unknown.append(name)
    if unknown:
        raise ImporterError(f"the input log has {len(unknown)} key(s) that are not in the action spec: "
                            f"{', '.join(map(repr, unknown))}; map each to a button with --map KEY=BUTTON "
                            f"(buttons: {', '.join(spec.buttons) or 'none'}) or drop it with --ignore KEY")
    return out


def actions_from_log(log: InputLog, keys: dict[str, str | None], spec: ActionSpec, grid_us: np.ndarray,
                     to_video_us: Callable[[Fraction], int], mouse_scale: float) -> np.ndarray:
    """Action k for each interval [T_k, T_{k+1}) of the grid, by the rules of this module's docstring: (n-1, A)."""
    starts, ends = grid_us[:-1], grid_us[1:]                      # (n-1,), (n-1,)
    actions = np.zeros((len(starts), spec.size), np.float32)     # (n-1, A)
    motion = np.zeros((len(starts), spec.size), np.float64)      # (n-1, A)

    def interval_of(t: int) -> int:
        """k with T_k <= t < T_{k+1}, or -1."""
        k = int(np.searchsorted(starts, t, side="right")) - 1
        return k if 0 <= k and t < ends[k] else -1

    def press(control: str, down: int, up: int | None) -> None:
        j = spec.index(control)
        if up == down:  # a tap
            k = interval_of(down)
            if k >= 0:
                actions[k, j] = 1.0
            return
        lo = int(np.searchsorted(ends, down, side="right"))          # first k with T_{k+1} > down
        hi = len(starts) if up is None else int(np.searchsorted(starts, up, side="left"))  # k with T_k < up
        actions[lo:hi, j] = 1.0

    downs: dict[str, int] = {}
    for ev in log.events:
        t = to_video_us(ev.time)
        if ev.kind == "move":
            k = interval_of(t)
            for name, value in zip(MOUSE_INPUTS, (ev.dx, ev.dy)):
                if k >= 0 and keys.get(name):
                    motion[k, spec.index(keys[name])] += value
        elif keys.get(ev.name) is None:
            continue
        elif ev.kind == "down":
            downs.setdefault(ev.name, t)
        else:
            press(keys[ev.name], downs.pop(ev.name), t)
    for name, t in downs.items():
        press(keys[name], t, None)
    nb = len(spec.buttons)
    actions[:, nb:] = np.clip(motion[:, nb:] / mouse_scale, -1.0, 1.0)
    return actions
