"""The HUD: measured frame statistics in a strip of their own below the frames, toggled with H, and the help
overlay on F1.

The strip is part of the window, under the game, so the HUD never covers what the games draw in their own frames
(the score of builtin:gems and of Atari games along the top, lives, the paddle at the bottom). Its height is fixed
when the window opens, from the font and the frame's width: the statistics lines in as many columns as fit, plus a
row for short messages.

Every number shown is measured while playing: frames/s and p50/p99 frame time from the intervals between frames
the window actually presented, action-to-frame latency from the moment the main thread sampled the input a step
used to the flip that showed that step's frame, and the model's own step time.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace

import numpy as np
import pygame

STATS_WINDOW = 240          # recent frames the HUD's numbers are computed over
TEXT_CACHE = 64             # rendered text lines kept for reuse
TOAST_SECONDS = 2.5
REFRESH_SECONDS = 0.1       # the statistics text changes at most this often (readable, and cheaper)
MAX_LINES = 5               # statistics lines at most: three of timings, the world's knobs, PAUSED / REC / agent
STRIP_PADDING = 4           # pixels around the strip's text
COLUMN_GAP = 16             # pixels between columns of statistics
STRIP_BACKGROUND = (16, 16, 22)
TEXT_COLOUR = (240, 240, 240)
# the widest numbers a statistics line is laid out for (its columns do not move as the numbers change)
WIDEST_SUMMARY = {"fps": 999.9, "p50_ms": 999.9, "p99_ms": 9999.9, "step_ms": 999.9, "latency_ms": 9999.9}
WIDEST_FRAME = 999_999
WIDEST_GUIDANCE = 99.99


def percentile(values, q: float) -> float:
    """q-th percentile of a sequence (0 for an empty one)."""
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else 0.0


class FrameStats:
    """Intervals between presented frames, model step times and input-to-frame latencies."""

    def __init__(self, window: int = STATS_WINDOW, keep_all: bool = False):
        self.intervals_ms: deque[float] = deque(maxlen=window)
        self.step_ms: deque[float] = deque(maxlen=window)
        self.latency_ms: deque[float] = deque(maxlen=window)
        self.keep_all = keep_all
        self.all_intervals_ms: list[float] = []
        self.all_step_ms: list[float] = []
        self.all_latency_ms: list[float] = []
        self.all_render_ms: list[float] = []
        self.frames = 0             # frames presented since start
        self._last: float | None = None

    def frame(self, shown_at: float, step_ms: float, latency_ms: float, render_ms: float = 0.0) -> None:
        """Record one presented frame: when it was flipped, how long its model step took, its input latency."""
        if self._last is not None:
            dt = (shown_at - self._last) * 1e3
            self.intervals_ms.append(dt)
            if self.keep_all:
                self.all_intervals_ms.append(dt)
        self._last = shown_at
        self.step_ms.append(step_ms)
        self.latency_ms.append(latency_ms)
        if self.keep_all:
            self.all_step_ms.append(step_ms)
            self.all_latency_ms.append(latency_ms)
            self.all_render_ms.append(render_ms)
        self.frames += 1

    def gap(self) -> None:
        """Do not count the time until the next frame (a pause, a reset, a load)."""
        self._last = None

    @property
    def fps(self) -> float:
        total = sum(self.intervals_ms)
        return 1e3 * len(self.intervals_ms) / total if total > 0 else 0.0

    def summary(self) -> dict[str, float]:
        """The numbers the HUD shows."""
        return {"fps": self.fps, "p50_ms": percentile(self.intervals_ms, 50),
                "p99_ms": percentile(self.intervals_ms, 99), "step_ms": percentile(self.step_ms, 50),
                "latency_ms": percentile(self.latency_ms, 50)}


@dataclass
class HudInfo:
    """What the HUD reports besides the frame statistics."""

    backend: str
    steps: int | None
    guidance: float | None
    frame: int
    paused: bool = False
    recording: bool = False
    mode: str = "model"
    agent: str | None = None        # the agent playing (`--agent`), shown on the flags line


class Hud:
    """Draws the statistics box (H toggles it), the help overlay (F1) and short messages."""

    def __init__(self, font_size: int = 16, visible: bool = True):
        if not pygame.font.get_init():
            pygame.font.init()
        self.font = pygame.font.Font(None, font_size)
        self.visible = visible
        self.help_visible = False
        self._cache: OrderedDict[str, pygame.Surface] = OrderedDict()
        self._toast: tuple[str, float] | None = None
        self._summary: dict[str, float] = {}
        self._refreshed = -1e9
        self.last_lines: list[str] = []

    def toast(self, message: str, seconds: float = TOAST_SECONDS) -> None:
        """Show a short message (saved, loaded, recording) for a few seconds."""
        self._toast = (message, time.perf_counter() + seconds)

    @property
    def has_toast(self) -> bool:
        """A message is on screen (the window redraws until it expires)."""
        return self._toast is not None

    def lines(self, s: dict[str, float], info: HudInfo) -> list[str]:
        """The HUD's text from a FrameStats.summary() and the world's state."""
        lines = [f"{s['fps']:5.1f} frames/s   frame {info.frame}",
                 f"frame time p50 {s['p50_ms']:5.1f} ms  p99 {s['p99_ms']:5.1f} ms",
                 f"latency {s['latency_ms']:5.1f} ms   step {s['step_ms']:5.1f} ms"]
        if info.steps is not None:
            lines.append(f"steps {info.steps}   guidance {info.guidance:.2f}   {info.backend}")
        else:
            lines.append(f"{info.mode}   {info.backend}")
        flags = [f for f, on in ((f"agent: {info.agent}", info.agent), ("PAUSED", info.paused),
                                 ("REC", info.recording)) if on]
        if flags:
            lines.append("  ".join(flags))
        return lines

    def columns(self, width: int, info: HudInfo) -> int:
        """How many columns of statistics lines fit in `width` pixels (at least one)."""
        widest = replace(info, frame=WIDEST_FRAME, paused=True, recording=True,
                         guidance=None if info.guidance is None else WIDEST_GUIDANCE)
        line_width = max(self.font.size(t)[0] for t in self.lines(WIDEST_SUMMARY, widest))
        usable = width - 2 * STRIP_PADDING + COLUMN_GAP
        return max(1, min(MAX_LINES, usable // (line_width + COLUMN_GAP)))

    def rows(self, width: int, info: HudInfo) -> int:
        """Rows of statistics in a strip `width` pixels wide."""
        return math.ceil(MAX_LINES / self.columns(width, info))

    def strip_height(self, width: int, info: HudInfo) -> int:
        """Height of the strip below frames `width` pixels wide: the statistics' rows and a message row."""
        return (self.rows(width, info) + 1) * self.font.get_linesize() + 2 * STRIP_PADDING

    def draw(self, surface: pygame.Surface, strip: pygame.Rect, stats: FrameStats, info: HudInfo,
             help_lines: list[str], width: int | None = None) -> None:
        """Fill `strip` (the window's area below the frames) and draw into it the statistics (in the strip's first
        `width` pixels, the model's frame) and a message; the help overlay goes over the frame while F1 shows it.
        The statistics text is refreshed REFRESH_SECONDS apart."""
        now = time.perf_counter()
        if now - self._refreshed >= REFRESH_SECONDS:
            self._summary, self._refreshed = stats.summary(), now
        self.last_lines = self.lines(self._summary, info)
        area = surface.subsurface(strip)          # text that does not fit is cut at the strip's edge, never drawn
        area.fill(STRIP_BACKGROUND)               # over the game
        step = self.font.get_linesize()
        width = strip.width if width is None else min(width, strip.width)
        rows = self.rows(width, info)
        if self.visible:
            column_width = (width - 2 * STRIP_PADDING + COLUMN_GAP) // self.columns(width, info)
            for i, text in enumerate(self.last_lines):
                column, row = divmod(i, rows)
                area.blit(self._text(text), (STRIP_PADDING + column * column_width, STRIP_PADDING + row * step))
        if self._toast is not None:
            message, until = self._toast
            if now < until:
                area.blit(self._text(message), (STRIP_PADDING, STRIP_PADDING + rows * step))
            else:
                self._toast = None
        if self.help_visible:
            self.box(surface, help_lines, (4, 4))

    def label(self, surface: pygame.Surface, text: str, at: tuple[int, int]) -> None:
        """One line of text with its top-left corner at `at` (the strip's caption under the real game)."""
        surface.blit(self._text(text), at)

    def _text(self, text: str) -> pygame.Surface:
        surf = self._cache.get(text)
        if surf is None:
            surf = self.font.render(text, True, TEXT_COLOUR)
            self._cache[text] = surf
            if len(self._cache) > TEXT_CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(text)
        return surf

    def box(self, surface: pygame.Surface, lines: list[str], at: tuple[int, int]) -> None:
        """Lines of text on a translucent dark box with its top-left corner at `at`."""
        rendered = [self._text(t) for t in lines]
        step = self.font.get_linesize()
        w = max((r.get_width() for r in rendered), default=0) + 8
        h = step * len(rendered) + 6
        box = pygame.Surface((w, h), pygame.SRCALPHA)
        box.fill((0, 0, 0, 150))
        surface.blit(box, at)
        for i, r in enumerate(rendered):
            surface.blit(r, (at[0] + 4, at[1] + 3 + i * step))
