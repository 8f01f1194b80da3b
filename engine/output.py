"""Run lengths and output files of the measuring commands (`reverie play`, `bench`, `eval`, benchmarks/).

`check_count` checks a count flag (frames, warm-up frames, horizons) the way engine.knobs checks the session's
knobs, for use with `engine.knobs.arg_type`.

A run that takes minutes must not fail at its very end because the folder of its `--json` does not exist or
cannot be written: `prepare_output` makes the folder and checks that a file can be created there before the run
starts, and names the flag and the path when it cannot. The write itself goes through a temporary name and a
rename (engine.checkpoint.atomic_write_text), so nothing half-written is left behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import ReverieError
from engine.knobs import KnobError

MAX_COUNT = 10_000_000      # frames, warm-up frames, horizons: a typo guard far above any real run


def check_count(lo: int, hi: int = MAX_COUNT) -> Callable[[Any, str], int]:
    """A check for a count flag (frames, warm-up frames, ...): an integer in lo..hi, KnobError naming it if not."""

    def check(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise KnobError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
        if not lo <= int(value) <= hi:
            raise KnobError(f"{name} must be in {lo}..{hi}, got {value!r}")
        return int(value)

    return check


class OutputError(ReverieError, OSError):
    """An output file that cannot be written (its folder cannot be made, is read-only, or the path is a folder)."""


def _no_file_above(folder: Path, path: Path, flag: str) -> None:
    """OutputError if `folder` or a folder above it is an existing file (mkdir would say only 'File exists')."""
    for above in (folder, *folder.parents):
        if above.exists():
            if not above.is_dir():
                raise OutputError(f"{flag} {path}: {above} is a file, not a folder")
            return


def _probe(folder: Path, path: Path, flag: str) -> None:
    """Make `folder` and create and remove a file in it; OutputError naming `flag` and `path` if that fails."""
    _no_file_above(folder, path, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".reverie-", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write there ({e.strerror or e}); choose a writable folder") \
            from None


def prepare_output(path: str | os.PathLike, flag: str = "--json") -> Path:
    """Make the folder of `path` and check that a file can be written there; OutputError naming `flag` if not."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'out.json'}")
    _probe(path.parent, path, flag)
    return path


def prepare_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Make the folder `path` and check that files can be written in it; OutputError naming `flag` if not."""
    path = Path(path)
    _probe(path, path, flag)
    return path


def write_json(path: str | os.PathLike, data: Any, flag: str = "--json") -> Path:
    """`data` as indented JSON at `path`, written whole or not at all; OutputError naming `flag` on failure."""
    from engine.checkpoint import atomic_write_text

    path = Path(path)
    try:
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write ({e.strerror or e})") from None
    return path
