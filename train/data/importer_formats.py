"""Converters from other loggers' key logs to the input log of `reverie data import` (train/data/input_log.py).

pynput: the text log written by this listener, one event a line, `TIME EVENT [ARGS]` with TIME in Unix seconds
and keys and buttons as pynput prints them ('a', Key.space, Button.left, <65437> for a key with no character):

    import time
    from pynput import keyboard, mouse

    log = open("keys.log", "w")
    def emit(*parts): print(f"{time.time():.6f}", *parts, file=log, flush=True)
    emit("start")
    keyboard.Listener(on_press=lambda k: emit("press", k), on_release=lambda k: emit("release", k)).start()
    mouse.Listener(on_move=lambda x, y: emit("move", x, y), on_scroll=lambda x, y, dx, dy: emit("scroll", dx, dy),
                   on_click=lambda x, y, b, down: emit("press" if down else "release", b)).join()

    1712345678.101234 start
    1712345678.523000 press Key.space        -> down space
    1712345678.611000 release Key.space      -> up space
    1712345678.700000 press 'w'              -> down w
    1712345678.800000 press Button.left      -> down mouse_left
    1712345678.900000 move 640 360           (the first position: no event)
    1712345678.950000 move 652 357           -> move dx 12, dy -3
    1712345679.000000 scroll 0 -1            -> down and up of scroll_down at the same time (a tap)

Key names: Key.<name> -> <name>, a quoted character -> that character in lower case, Button.<name> ->
mouse_<name>, <N> -> vkN. Times are kept as written (Unix seconds), so pass `--video-start` (the Unix time of the
video's first frame) to `reverie data import`. Mouse motion is the difference of positions, which a game that
captures the pointer (most first-person games) recentres: log raw motion there instead.

    python -m train.data.importer_formats keys.log keys.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

from engine.errors import ReverieError
from train.data.input_log import COLUMNS, InputLogError

SCROLL = {(0, 1): "scroll_up", (0, -1): "scroll_down", (-1, 0): "scroll_left", (1, 0): "scroll_right"}


def pynput_key(text: str) -> str:
    """The import log's name of a key or button as pynput prints it."""
    text = text.strip()
    if len(text) >= 3 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].lower()
    if text.startswith("Key."):
        return text[4:]
    if text.startswith("Button."):
        return "mouse_" + text[7:]
    if text.startswith("<") and text.endswith(">") and text[1:-1].isdigit():
        return "vk" + text[1:-1]
    return text


def _decimal(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else repr(float(value))


def _sign(value: Fraction) -> int:
    return (value > 0) - (value < 0)


def pynput_events(lines: Iterable[str], where: str = "log") -> Iterator[dict[str, str]]:
    """Import-log rows (time, event, name, dx, dy as strings) of the lines of a pynput listener's log."""
    position = None
    for number, line in enumerate(lines, start=1):
        parts = line.split(None, 2)
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 2:
            raise InputLogError(where, number, f"expected 'TIME EVENT [ARGS]', got {line.strip()!r}")
        time, kind, rest = parts[0], parts[1], parts[2].strip() if len(parts) > 2 else ""
        try:
            Fraction(time)
        except (ValueError, ZeroDivisionError):
            raise InputLogError(where, number, f"time {time!r} is not a number") from None
        row = {"time": time, "event": "", "name": "", "dx": "", "dy": ""}
        if kind in ("start", "end"):
            yield {**row, "event": kind}
        elif kind in ("press", "release"):
            if not rest:
                raise InputLogError(where, number, f"{kind!r} needs a key")
            yield {**row, "event": "down" if kind == "press" else "up", "name": pynput_key(rest)}
        elif kind in ("move", "scroll"):
            try:
                x, y = (Fraction(v) for v in rest.split())
            except (ValueError, ZeroDivisionError):
                raise InputLogError(where, number, f"{kind!r} needs two numbers, got {rest!r}") from None
            if kind == "scroll":
                name = SCROLL.get((_sign(x), _sign(y)))
                if name is not None:
                    yield {**row, "event": "down", "name": name}
                    yield {**row, "event": "up", "name": name}
                continue
            if position is not None:
                yield {**row, "event": "move", "dx": _decimal(x - position[0]),
                       "dy": _decimal(y - position[1])}
            position = (x, y)
        else:
            raise InputLogError(where, number, f"unknown event {kind!r} (press, release, move, scroll, start, end)")


def convert_pynput(src: str | Path, dst: str | Path) -> int:
    """Convert a pynput listener's log file into an import log (CSV); returns the number of rows."""
    src, dst = Path(src), Path(dst)
    try:
        text = src.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputLogError(src, None, f"cannot read: {e}") from None
    rows = list(pynput_events(text.splitlines(), str(src)))
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(COLUMNS), lineterminator="\n")
            out.writeheader()
            out.writerows(rows)
        tmp.replace(dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputLogError(dst, None, f"cannot write: {e.strerror or e}") from None
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.data.importer_formats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="the pynput listener's log")
    p.add_argument("dst", type=Path, help="the import log to write (CSV)")
    a = p.parse_args(argv)
    try:
        n = convert_pynput(a.src, a.dst)
    except ReverieError as e:
        print(f"importer_formats: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {n} events to {a.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
