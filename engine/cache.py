"""Reverie's per-user cache folder, and a lock so that processes fill it one at a time.

The cache holds what is derived from a checkpoint once and reused (the ONNX graphs of `reverie export`, TensorRT
engines) and files third-party games insist on writing (vizdoom's ini). `REVERIE_CACHE` moves it; the default is
`$XDG_CACHE_HOME/reverie`, else `~/.cache/reverie`. Two players started at once on a new checkpoint both find the
graphs missing: `locked` makes the second wait for the first's export and then use it, instead of exporting again
and replacing the folder under the first.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

WINDOWS_RETRY_S = 0.1     # msvcrt has no blocking lock: how often a waiting process tries again


def cache_root() -> Path:
    env = os.environ.get("REVERIE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "reverie"


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (made if missing) for the body; other processes wait.

    The lock belongs to the open file, so a process that dies holding it releases it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    time.sleep(WINDOWS_RETRY_S)
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
