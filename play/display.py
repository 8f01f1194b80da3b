"""Whether a window can be shown here, asked before one is opened.

Without a display SDL does not fail: it falls back to its offscreen driver, so `reverie play` over SSH opened no
window and never exited. Where no display is named (Linux and other X11/Wayland systems: neither DISPLAY nor
WAYLAND_DISPLAY is set) play refuses before SDL starts, so SDL prints nothing; where SDL still lands on a driver
that shows nothing (offscreen, dummy) though nobody asked for one, play refuses after it starts. A driver the
user (or a test) picks through SDL_VIDEODRIVER is theirs: it is never second-guessed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from play.world import PlayError

HEADLESS_DRIVERS = ("offscreen", "dummy")           # SDL video drivers that put nothing on any screen
DRIVER_VARIABLES = ("SDL_VIDEODRIVER", "SDL_VIDEO_DRIVER")   # the driver choice, SDL 2's and SDL 3's names
DISPLAY_VARIABLES = ("DISPLAY", "WAYLAND_DISPLAY")  # X11's and Wayland's
# platforms whose display is not named by an environment variable
OWN_DISPLAY_PLATFORMS = ("darwin", "win32", "cygwin", "android", "ios", "emscripten")
HINT = "use --headless to run without a window, or run it where there is a display (a desktop session, ssh -X)"


def chosen_driver(environ: Mapping[str, str] | None = None) -> str | None:
    """The SDL video driver the user asked for, or None where SDL picks."""
    env = os.environ if environ is None else environ
    for name in DRIVER_VARIABLES:
        if env.get(name, "").strip():
            return env[name].strip()
    return None


def no_display_reason(environ: Mapping[str, str] | None = None, platform: str | None = None) -> str | None:
    """Why no window can be shown, known before SDL starts; None where one may be (or the user chose a driver)."""
    env = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if chosen_driver(env) is not None or platform.startswith(OWN_DISPLAY_PLATFORMS):
        return None
    if not any(env.get(name, "").strip() for name in DISPLAY_VARIABLES):
        return "no display to open a window on (DISPLAY and WAYLAND_DISPLAY are not set)"
    return None


def headless_driver_reason(driver: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Why SDL's started `driver` shows nothing though nobody asked for it; None where it is a real display."""
    if chosen_driver(environ) is not None or driver.lower() not in HEADLESS_DRIVERS:
        return None
    return f"no display to open a window on (SDL found none and fell back to its {driver} driver)"


def check_display(environ: Mapping[str, str] | None = None, platform: str | None = None) -> None:
    """PlayError (one line naming --headless) where it is already known that no window can be shown."""
    reason = no_display_reason(environ, platform)
    if reason is not None:
        raise PlayError(f"{reason}: {HINT}")


def check_driver(driver: str, environ: Mapping[str, str] | None = None) -> None:
    """PlayError (one line naming --headless) where SDL started a driver that shows nothing, unasked."""
    reason = headless_driver_reason(driver, environ)
    if reason is not None:
        raise PlayError(f"{reason}: {HINT}")


def start_display() -> str:
    """Start pygame's display for a window; returns SDL's driver. PlayError (one line naming --headless) where no
    display is named, SDL cannot start, or SDL fell back to a driver that shows nothing."""
    import pygame

    check_display()
    try:
        pygame.display.init()
    except pygame.error as e:
        raise PlayError(f"cannot start pygame's display ({e}): {HINT}") from None
    driver = pygame.display.get_driver()
    try:
        check_driver(driver)
    except PlayError:
        pygame.display.quit()
        raise
    return driver
