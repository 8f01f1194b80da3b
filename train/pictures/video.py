"""The side-by-side video of `reverie eval`: a long dream next to the real game under the same actions, as a GIF.

Each video frame shows the real frame (left) and the dream's (right), scaled up 2x (nearest neighbour) with a thin
divider, under a strip that names each side and gives the horizon step (shortened for narrow frames). Where there is
no real frame (past a game over, or past the recording of a game that cannot be replayed) the left side is dark grey.
Long rollouts keep every k-th frame so that the file stays small (about 1 MB for 1000 frames of 32x32):
k = ceil(H / VIDEO_MAX_FRAMES).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from engine.checkpoint import atomic_target

VIDEO_FPS = 30
VIDEO_SCALE = 2
VIDEO_MAX_FRAMES = 500       # frames in the file at most; longer rollouts keep every k-th frame
DIVIDER_PX = 2
STRIP_PX = 12                # the text strip above the frames
NO_FRAME = (48, 48, 48)      # where there is no real frame
DIVIDER = (230, 230, 230)
STRIP = (16, 16, 16)
TEXT = (235, 235, 235)
PALETTE_SAMPLE = 16         # video frames the GIF's one palette is made from


def video_stride(horizon: int) -> int:
    """Keep every k-th frame: k = ceil(horizon / VIDEO_MAX_FRAMES)."""
    return max(1, math.ceil(horizon / VIDEO_MAX_FRAMES))


def video_frames(horizon: int) -> int:
    """How many frames side_by_side writes for a rollout of `horizon` frames."""
    return len(range(0, horizon, video_stride(horizon)))


def side_by_side(path: str | os.PathLike, real: np.ndarray, real_ok: np.ndarray, dream: np.ndarray,
                 fps: float = VIDEO_FPS, scale: int = VIDEO_SCALE) -> Path:
    """Write one rollout as a looping GIF: real (H, h, w, 3) | dream (H, h, w, 3); real_ok (H,) says where a real
    frame exists. Returns the path."""
    from PIL import Image, ImageDraw, ImageFont

    H, h, w, _ = dream.shape
    font = ImageFont.load_default()
    side_w = w * scale
    width, height = 2 * side_w + DIVIDER_PX, STRIP_PX + h * scale
    images = []
    for t in range(0, H, video_stride(H)):
        canvas = np.empty((height, width, 3), np.uint8)
        canvas[:STRIP_PX] = STRIP
        canvas[STRIP_PX:, side_w:side_w + DIVIDER_PX] = DIVIDER
        left = real[t] if real_ok[t] else np.broadcast_to(np.array(NO_FRAME, np.uint8), (h, w, 3))
        canvas[STRIP_PX:, :side_w] = left.repeat(scale, 0).repeat(scale, 1)
        canvas[STRIP_PX:, side_w + DIVIDER_PX:] = dream[t].repeat(scale, 0).repeat(scale, 1)
        img = Image.fromarray(canvas)
        draw = ImageDraw.Draw(img)
        for x, labels in ((2, ("real", "") if real_ok[t] else ("real: none", "none")),
                          (side_w + DIVIDER_PX + 2, (f"dream  {t + 1}/{H}", f"{t + 1}"))):
            fits = [s for s in labels if draw.textlength(s, font=font) <= side_w - 4]   # narrow frames: shorter
            draw.text((x, 0), fits[0] if fits else "", fill=TEXT, font=font)
        images.append(img)
    # one palette for the whole video, from frames spread over it: 20x faster than a palette per frame
    sample = Image.fromarray(np.concatenate([np.asarray(images[i]) for i in
                                             np.linspace(0, len(images) - 1, min(len(images), PALETTE_SAMPLE))
                                             .round().astype(int)]))
    palette = sample.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    frames = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    path = Path(path)
    with atomic_target(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps),
                       loop=0)
    return path
