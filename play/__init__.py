"""Play inside a world model: the pygame window, key maps, HUD, recording (`reverie play`), and the session
benchmark (`reverie bench`, play/bench.py)."""

import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame's import banner would clutter every command
