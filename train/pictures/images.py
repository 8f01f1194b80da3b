"""Pictures a person would rather look at than read: image grids (PNG), animations (GIF) and line plots (PNG).

Plot labels are drawn with a real font at a readable size (DejaVu Sans where the system has it, else Pillow's
bundled font at 13 px) and laid out by their measured width: Pillow's default 10 px font rounds the advance of
a space or a dot to 2 px, so "model.safetensors: PSNR vs horizon" came out as "modelsafetensors:PSNRvshorizon".
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.checkpoint import atomic_target


def _to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] or (B, H, W, 3) uint8 -> (B, H, W, 3) uint8."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype != torch.uint8:
            x = (x.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).movedim(-3, -1)
        x = x.numpy()
    return np.asarray(x, np.uint8)


def grid(rows: Sequence[torch.Tensor | np.ndarray], pad: int = 2) -> np.ndarray:
    """Rows of equally sized images -> one (H', W', 3) uint8 picture with a dark gutter."""
    rows_u8 = [_to_uint8(r) for r in rows]
    n = max(r.shape[0] for r in rows_u8)
    h, w = rows_u8[0].shape[1:3]
    out = np.full((len(rows_u8) * (h + pad) + pad, n * (w + pad) + pad, 3), 40, np.uint8)
    for i, r in enumerate(rows_u8):
        for j, img in enumerate(r):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = img
    return out


def save_png(path: str | os.PathLike, image: np.ndarray, scale: int = 1) -> Path:
    from PIL import Image

    if scale > 1:
        image = image.repeat(scale, 0).repeat(scale, 1)
    path = Path(path)
    with atomic_target(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def save_grid(path: str | os.PathLike, rows: Sequence[torch.Tensor | np.ndarray], scale: int = 2) -> Path:
    return save_png(path, grid(rows), scale)


def save_gif(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 15.0, scale: int = 2) -> Path:
    """(H, W, 3) uint8 frames -> looping GIF."""
    from PIL import Image

    imgs = [Image.fromarray(f.repeat(scale, 0).repeat(scale, 1) if scale > 1 else f) for f in frames]
    path = Path(path)
    with atomic_target(path) as tmp:
        imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    return path


LABEL_FONT_PX = 13          # plot text height; below about 12 px spaces and dots shrink to a pixel or two
LABEL_FONTS = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf")


@lru_cache(maxsize=4)
def label_font(size: int = LABEL_FONT_PX) -> Any:
    """The font plot labels are drawn with: a scalable system font, else Pillow's bundled one at `size`."""
    from PIL import ImageFont

    for name in LABEL_FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)       # Pillow >= 10.1 with FreeType
    except TypeError:
        return ImageFont.load_default()               # an old Pillow: its fixed-width bitmap font


PLOT_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


class _Canvas:
    """A white picture to plot on, with the plots' font (`label_font`) and text anchored on any Pillow."""

    def __init__(self, size: tuple[int, int]):
        from PIL import Image, ImageDraw

        self.img = Image.new("RGB", size, (255, 255, 255))
        self.d = ImageDraw.Draw(self.img)
        self.font = label_font()
        self.line_h = self.font.getbbox("Ag")[3] + 2

    def width(self, label: str) -> float:
        return self.d.textlength(label, font=self.font)

    def text(self, xy: tuple[float, float], label: str, fill: tuple[int, int, int], anchor: str = "la") -> None:
        try:
            self.d.text(xy, label, fill=fill, font=self.font, anchor=anchor)
        except ValueError:  # a bitmap font (Pillow without FreeType) takes no anchor: place it by its width
            w = self.width(label)
            dx = {"l": 0, "m": w / 2, "r": w}[anchor[0]]
            dy = {"a": 0, "m": self.line_h / 2, "b": self.line_h, "d": self.line_h}.get(anchor[1], 0)
            self.d.text((xy[0] - dx, xy[1] - dy), label, fill=fill, font=self.font)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_target(path) as tmp:
            self.img.save(tmp, format="PNG")
        return path


def line_plot(path: str | os.PathLike, series: dict[str, Sequence[float | None]], title: str = "", xlabel: str = "",
              hlines: dict[str, float] | None = None, size: tuple[int, int] = (640, 400),
              xticks: Sequence[str] | None = None) -> Path:
    """A small line plot (x = 1..n) drawn with Pillow, so no plotting library is needed. A None or NaN value is a
    gap in its line; `xticks` labels x = 1..n (default: the numbers)."""
    colors = PLOT_COLOURS[:4]
    cv = _Canvas(size)
    d, text, line_h = cv.d, cv.text, cv.line_h
    W, H = size
    left, right, top, bottom = 60, 20, 30, 45

    def finite(v: float | None) -> bool:
        return v is not None and math.isfinite(v)

    values = [v for s in series.values() for v in s if finite(v)] + list((hlines or {}).values())
    values = values or [0.0]
    lo, hi = min(values), max(values)
    lo, hi = (lo - 1, hi + 1) if hi - lo < 1e-6 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    n = max(len(s) for s in series.values())

    def xy(i: float, v: float) -> tuple[float, float]:
        x = left + (W - left - right) * ((i - 1) / max(1, n - 1))
        return x, top + (H - top - bottom) * (1 - (v - lo) / (hi - lo))

    d.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        _, y = xy(1, v)
        d.line([left - 4, y, left, y], fill=(0, 0, 0))
        text((left - 6, y), f"{v:.2f}" if hi - lo < 4 else f"{v:.1f}", (0, 0, 0), "rm")
    for i in range(1, n + 1, 1 if xticks else max(1, n // 8)):
        x, _ = xy(i, lo)
        d.line([x, H - bottom, x, H - bottom + 4], fill=(0, 0, 0))
        last = bool(xticks) and i == n > 1           # a long last label ends at the frame, not past the image
        text((x, H - bottom + 6), xticks[i - 1] if xticks else str(i), (0, 0, 0), "ra" if last else "ma")
    for name, v in (hlines or {}).items():
        _, y = xy(1, v)
        d.line([left, y, W - right, y], fill=(150, 150, 150), width=1)
        text((W - right - 4, y - 2), f"{name} {v:.1f}", (110, 110, 110), "rb")
    for j, (name, ys) in enumerate(series.items()):
        c = colors[j % len(colors)]
        runs: list[list[tuple[float, float]]] = [[]]   # the finite stretches of the series
        for i, v in enumerate(ys):
            if finite(v):
                runs[-1].append(xy(i + 1, v))
            elif runs[-1]:
                runs.append([])
        for pts in runs:
            if len(pts) > 1:
                d.line(pts, fill=c, width=2)
            for x, y in pts:
                d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c)
        text((left + 8, top + 6 + line_h * j), name, c)
    text((left, top - 6), title, (0, 0, 0), "lb")
    text((left + (W - left - right) / 2, H - 4), xlabel, (0, 0, 0), "md")
    return cv.save(path)


def scatter_plot(path: str | os.PathLike, points: Sequence[tuple[float, float, str, int]], groups: Sequence[str] = (),
                 xlabel: str = "", ylabel: str = "", size: tuple[int, int] = (720, 480),
                 xlines: dict[str, float] | None = None, ylines: dict[str, float] | None = None) -> Path:
    """A labelled scatter plot drawn with Pillow: points are (x, y, label, group index); each group gets a colour
    (named in a legend from `groups`) and each point its label, placed beside it where it overlaps no other label
    and stays inside the picture. `xlines` / `ylines` draw named reference lines (a bar) across the plot."""
    colors = PLOT_COLOURS
    cv = _Canvas(size)
    d, text, line_h = cv.d, cv.text, cv.line_h
    W, H = size
    left, right, top, bottom = 64, 16, 36, 48
    taken: list[tuple[float, float, float, float]] = []   # label boxes already drawn

    def span(vals: list[float]) -> tuple[float, float]:
        lo, hi = min(vals), max(vals)
        return (lo - 1, hi + 1) if hi - lo < 1e-9 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))

    x0, x1 = span([p[0] for p in points] + list((xlines or {}).values()))
    y0, y1 = span([p[1] for p in points] + list((ylines or {}).values()))

    def xy(x: float, y: float) -> tuple[float, float]:
        return (left + (W - left - right) * (x - x0) / (x1 - x0), top + (H - top - bottom) * (1 - (y - y0) / (y1 - y0)))

    def place(px: float, py: float, label: str) -> tuple[float, float]:
        """The top-left corner of the first spot beside (px, py) where the label fits and overlaps nothing."""
        w = cv.width(label)
        spots = [(px + 6, py - line_h / 2), (px - 6 - w, py - line_h / 2), (px + 6, py - line_h - 2), (px + 6, py + 2),
                 (px - 6 - w, py - line_h - 2), (px - 6 - w, py + 2), (px - w / 2, py - line_h - 6),
                 (px - w / 2, py + 6)]
        inside = [(x, y) for x, y in spots if left < x and x + w < W - right and top < y and y + line_h < H - bottom]
        for x, y in inside or spots:
            box = (x, y, x + w, y + line_h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
                taken.append(box)
                return x, y
        x, y = (inside or spots)[0]
        taken.append((x, y, x + w, y + line_h))
        return x, y

    d.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for k in range(5):
        xv, yv = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        px, _ = xy(xv, y0)
        _, py = xy(x0, yv)
        d.line([px, H - bottom, px, H - bottom + 4], fill=(0, 0, 0))
        text((px, H - bottom + 6), f"{xv:.2f}", (0, 0, 0), "ma")
        d.line([left - 4, py, left, py], fill=(0, 0, 0))
        text((left - 6, py), f"{yv:.2f}", (0, 0, 0), "rm")
    for name, v in (xlines or {}).items():
        px, _ = xy(v, y0)
        d.line([px, top, px, H - bottom], fill=(170, 170, 170))
        text((px + 3, H - bottom - 3), name, (110, 110, 110), "lb")
    for name, v in (ylines or {}).items():
        _, py = xy(x0, v)
        d.line([left, py, W - right, py], fill=(170, 170, 170))
        text((W - right - 4, py - 2), name, (110, 110, 110), "rb")
    for j, name in enumerate(groups):          # the legend, top left inside the frame
        c = colors[j % len(colors)]
        y = top + 6 + line_h * j
        d.ellipse([left + 8, y + line_h / 2 - 4, left + 16, y + line_h / 2 + 4], fill=c)
        text((left + 20, y), name, c)
        taken.append((left + 8, y, left + 24 + cv.width(name), y + line_h))
    marks = [(xy(x, y), label, group) for x, y, label, group in points]
    for (px, py), _, _ in marks:               # no label may cover a point
        taken.append((px - 4, py - 4, px + 4, py + 4))
    for (px, py), label, group in marks:
        c = colors[group % len(colors)]
        d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=c)
        text(place(px, py, label), label, c)
    text((4, top - 8), ylabel, (0, 0, 0), "lb")     # the y axis's name, above it
    text((left + (W - left - right) / 2, H - 4), xlabel, (0, 0, 0), "md")
    return cv.save(path)
