"""Object probes: what a player looks at in a game, found by colour in its frames.

PSNR barely moves when a 6x6 avatar fades out or a 1-pixel ball vanishes, yet that is what a player sees first. A
probe is a detector on a game's own frames (real or generated): the pixels within `tolerance` (max abs channel
difference) of one of its colours, inside its region. It reports per frame the matched pixel count, whether the
object is visible (count >= min_pixels) and its centroid. Regions and pixel counts are given at 64x64 and scaled to
the frame's size, so one probe serves 32x32, 64x64 and 128x128 frames.

`probes_for(env_id)` lists a game's probes ({} for games without). The probe named AVATAR is the thing the player
steers; train.evaluation.control measures how far it moves when a direction is held.

Measured (1953 frames of builtin:gems, 6 episodes of scripted and random play, 256 of them with the player
flashing; "recon" = the shipped model's autoencoder, decode(encode(frame)), engine/assets/default.safetensors):
  avatar   tol 64: found (>= 9 px) in 100% of real frames and 100% of recon frames (tol 48: 99.95% of recon, tol 32:
           98.1%, tol 24: 90.9%); recon centroid within 1.01 px of the player's centre in every frame (mean error
           0.11 px). No false positive: with the player's pixels painted background, 0 matched pixels in real and in
           recon frames at tol 64 (the first stray pixel appears at tol 96); HUD text (15 from the flash white) is
           kept out by the region.
  gems     tol 48: 94.5% of gem pixels matched in recon, 0 stray pixels; >= 8 px in 100% of recon frames.
  enemies  tol 48: 91.9% of enemy pixels matched in recon (a 1-2 px halo of matches around them); >= 12 px in 100%
           of recon frames (the orange enemy is 78 from the gem colour, so real frames never cross-match at 48).
  score    tol 64: the thinnest digits ("1", "7") have 7-8 px in real frames and keep >= 3 px in every recon frame.
ale:Breakout (64x64 area-resized from 210x160; 480 frames of 3 episodes, FIRE then random actions): the paddle and
ball share the colour (200, 72, 72) and are told apart by region. The resize blends the 2x4 px ball into black: its
brightest 64x64 pixel is t * (200, 72, 72) with t from 0.25 (measured minimum) to 1 (median 0.5), so ball and paddle
match four points along that blend line with tolerance 24, which covers t in [0.18, 1.0] and rejects the black
background (60 away) and the grey wall blend (28, 28, 28) (32 away). The ball is found in 100% of the 318 frames in
which it is on screen between the bricks and the paddle (and of 552 more such frames of 5 other episodes, located by
the RAM), and in none of the frames where it is off screen. That ball probe (tolerance 24 around t = 0.3 .. 0.9) also
found a "ball" in every frame an autoencoder reconstructed, balls it had erased included: dark, faintly warm decoder
noise at the wall edges, e.g. (37, 26, 20), lies within 24 of t = 0.3. The ball probe now matches t = 0.35 .. 0.9 within
20 (t >= about 0.27): on 1,458 real frames of 4 scripted episodes with the ball between the bricks and the paddle (by
the RAM) it finds it in 99.4%, in none of 93 frames with no ball in play, and in 0.6% of a plain autoencoder's
reconstructions of the same frames, which (looked at) show no ball (2026-12-01).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import ReverieError
from train.games import builtin

AVATAR = "avatar"     # the probe name train.evaluation.control uses
PROBE_SIZE = 64       # regions and min_pixels are given for frames of PROBE_SIZE x PROBE_SIZE


class ProbeError(ReverieError, ValueError):
    """Frames a probe cannot read (not uint8 RGB images) or a malformed probe."""


@dataclass(frozen=True)
class Probe:
    """A colour detector: pixels within `tolerance` of one of `colours`, inside `region`."""

    name: str
    colours: tuple[tuple[int, int, int], ...]   # RGB; a pixel matches if within `tolerance` (max abs channel diff)
    min_pixels: int                              # matched pixels for "visible", at a 64x64 frame (scaled by area)
    region: tuple[int, int, int, int] | None = None   # (y0, y1, x0, x1) at 64x64 (scaled); None = whole frame
    tolerance: int = 48

    def __post_init__(self) -> None:
        if not self.colours or any(len(c) != 3 or not all(0 <= int(v) <= 255 for v in c) for c in self.colours):
            raise ProbeError(f"probe {self.name!r}: colours must be RGB triples in 0..255, got {self.colours!r}")
        if self.min_pixels < 1 or not 0 <= self.tolerance <= 255:
            raise ProbeError(f"probe {self.name!r}: need min_pixels >= 1 and tolerance in 0..255, got "
                             f"{self.min_pixels}, {self.tolerance}")
        if self.region is not None:
            y0, y1, x0, x1 = self.region
            if not (0 <= y0 < y1 <= PROBE_SIZE and 0 <= x0 < x1 <= PROBE_SIZE):
                raise ProbeError(f"probe {self.name!r}: region (y0, y1, x0, x1) must lie in 0..{PROBE_SIZE} with "
                                 f"y0 < y1 and x0 < x1, got {self.region}")

    # ---- geometry at a frame size ----------------------------------------------------------------------------
    def region_at(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The region in the pixels of a (height, width) frame."""
        if self.region is None:
            return 0, height, 0, width
        y0, y1, x0, x1 = self.region
        ys = round(y0 * height / PROBE_SIZE), round(y1 * height / PROBE_SIZE)
        xs = round(x0 * width / PROBE_SIZE), round(x1 * width / PROBE_SIZE)
        return ys[0], max(ys[1], ys[0] + 1), xs[0], max(xs[1], xs[0] + 1)

    def min_pixels_at(self, height: int, width: int) -> int:
        """min_pixels scaled by the frame's area relative to 64x64 (at least 1)."""
        return max(1, round(self.min_pixels * height * width / PROBE_SIZE**2))

    # ---- detection -------------------------------------------------------------------------------------------
    def mask(self, frames: np.ndarray) -> np.ndarray:
        """(..., H, W, 3) uint8 -> (..., H, W) bool: the pixels that match, inside the region."""
        frames = _check_frames(frames, self.name)
        h, w = frames.shape[-3:-1]
        y0, y1, x0, x1 = self.region_at(h, w)
        crop = frames[..., y0:y1, x0:x1, :].astype(np.int16)
        hit = np.zeros(crop.shape[:-1], bool)
        for c in self.colours:
            hit |= np.abs(crop - np.asarray(c, np.int16)).max(axis=-1) <= self.tolerance
        out = np.zeros(frames.shape[:-1], bool)
        out[..., y0:y1, x0:x1] = hit
        return out

    def count(self, frames: np.ndarray) -> np.ndarray:
        """(...,) int: matched pixels per frame."""
        return self.mask(frames).sum(axis=(-2, -1))

    def visible(self, frames: np.ndarray) -> np.ndarray:
        """(...,) bool: at least min_pixels (scaled to the frame size) matched."""
        frames = _check_frames(frames, self.name)
        return self.count(frames) >= self.min_pixels_at(*frames.shape[-3:-1])

    def strength(self, frames: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """(...,) float: how strongly the object shows, the brightest matched pixel's projection on the probe's
        brightest colour (1: that colour; Breakout's real ball, blended into black at 64x64, has a median of 0.6); NaN
        where nothing matches. "Visible" passes a dim speck the probe's tolerance lets in; this tells it from a ball.
        `mask`: these frames' `mask`, where the caller has it already."""
        frames = _check_frames(frames, self.name)
        m = self.mask(frames) if mask is None else mask
        ref = np.asarray(max(self.colours, key=sum), np.float32)
        t = (frames.astype(np.float32) @ ref) / max(float(ref @ ref), 1.0)
        flat = np.where(m, t, -np.inf).reshape(*m.shape[:-2], -1).max(axis=-1)
        return np.where(np.isfinite(flat), flat, np.nan)

    def blobs(self, frames: np.ndarray) -> np.ndarray:
        """(...,) int: how many separate objects the probe sees per frame: groups of touching matched pixels
        (8-neighbour) with at least min_pixels each (scaled to the frame size). "Visible" holds with one gem of
        three or with two avatars; the count does not."""
        frames = _check_frames(frames, self.name)
        return blob_counts(self.mask(frames), self.min_pixels_at(*frames.shape[-3:-1]))

    def centroid(self, frames: np.ndarray) -> np.ndarray:
        """(..., 2) float (x, y): mean position of the matched pixels in the frame's pixel coordinates, pixel i
        spanning [i, i + 1) (a sprite covering columns x..x+5 has centre x + 3); NaN where not visible."""
        frames = _check_frames(frames, self.name)
        h, w = frames.shape[-3:-1]
        m = self.mask(frames)
        c = mask_centroids(m)
        c[~(m.sum(axis=(-2, -1)) >= self.min_pixels_at(h, w))] = np.nan
        return c


def mask_centroids(mask: np.ndarray) -> np.ndarray:
    """(..., h, w) bool -> (..., 2) float64 (x, y): the mean position of the set pixels, pixel i spanning [i, i + 1);
    NaN where none is set."""
    h, w = mask.shape[-2:]
    n = mask.sum(axis=(-2, -1))
    xs = (mask.sum(axis=-2) * (np.arange(w) + 0.5)).sum(axis=-1)
    ys = (mask.sum(axis=-1) * (np.arange(h) + 0.5)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([xs / n, ys / n], axis=-1).astype(np.float64)


def blob_labels(mask: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, H, W) int32: each group of touching True pixels (8-neighbour) labelled by its largest
    pixel index + 1 (0 off the mask). Labels spread as a running max over each pixel's neighbourhood until nothing
    changes."""
    m = np.asarray(mask, bool)
    n, h, w = m.shape
    label = np.where(m, np.arange(1, h * w + 1, dtype=np.int32).reshape(1, h, w), 0)
    while True:
        pad = np.pad(label, ((0, 0), (1, 1), (1, 1)))
        spread = label.copy()
        for dy in range(3):
            for dx in range(3):
                np.maximum(spread, pad[:, dy:dy + h, dx:dx + w], out=spread)
        spread[~m] = 0
        if np.array_equal(spread, label):
            return label
        label = spread


def blob_centres(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """(H, W) bool -> (K, 2) float64 (x, y): the centres of one image's groups of touching True pixels with at least
    `min_pixels` pixels each, pixel i spanning [i, i + 1), in the order of their labels."""
    label = blob_labels(np.asarray(mask, bool)[None])[0]
    keys, sizes = np.unique(label[label > 0], return_counts=True)
    out = []
    for k in keys[sizes >= min_pixels]:
        ys, xs = np.nonzero(label == k)
        out.append((xs.mean() + 0.5, ys.mean() + 0.5))
    return np.asarray(out, np.float64).reshape(-1, 2)


def blob_counts(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """(..., H, W) bool -> (...,) int: the groups of touching True pixels (8-neighbour) with at least `min_pixels`
    pixels each, per image (blob_labels(), then the group sizes in one bincount)."""
    mask = np.asarray(mask, bool)
    lead, (h, w) = mask.shape[:-2], mask.shape[-2:]
    label = blob_labels(mask.reshape(-1, h, w))
    n, hw = label.shape[0], h * w
    flat = label.reshape(n, hw).astype(np.int64)
    keys = (flat + np.arange(n)[:, None] * (hw + 1))[flat > 0]
    sizes = np.bincount(keys, minlength=n * (hw + 1)).reshape(n, hw + 1)[:, 1:]
    return (sizes >= min_pixels).sum(axis=1).reshape(lead)


def _check_frames(frames: np.ndarray, name: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ProbeError(f"probe {name!r}: expected uint8 RGB frames (..., H, W, 3), got {frames.dtype} "
                         f"{frames.shape}")
    return frames


# ---- the games' probes ---------------------------------------------------------------------------------------
_PLAY = (builtin.HUD_HEIGHT, PROBE_SIZE, 0, PROBE_SIZE)   # below the HUD bar (rows 0..7)
_HUD = (0, builtin.HUD_HEIGHT, 0, PROBE_SIZE)

GEMS_PROBES = (
    # 9 px: the threshold for "the avatar is on screen" (a quarter of the 36 px sprite)
    Probe(AVATAR, (builtin.PLAYER, builtin.PLAYER_FLASH), min_pixels=9, region=_PLAY, tolerance=64),
    Probe("gems", (builtin.GEM,), min_pixels=8, region=_PLAY, tolerance=48),           # half a 4x4 gem
    Probe("enemies", builtin.ENEMY_COLOURS, min_pixels=12, region=_PLAY, tolerance=48),  # about half a 5x5 enemy
    Probe("score", (builtin.HUD_TEXT,), min_pixels=3, region=_HUD, tolerance=64),      # digits are always drawn
)

# ale:Breakout at 64x64 (210x160 area-resized: 3.28 rows and 2.5 columns per pixel). Raw layout: walls grey
# (142, 142, 142) (top rows 17..31, sides columns 0..7 and 152..159 -> 64x64 columns 0..3 and 60..63), bricks rows
# 57..92 in six colours (-> rows 17..28), paddle (16x4, 8x4 once shrunk) rows 189..192 (-> rows 57..58), ball 2x4,
# red wall feet at the bottom right (rows 189..194, -> columns 60..63).
BREAKOUT_RED = (200, 72, 72)          # paddle and ball (and the top brick row)
BREAKOUT_BRICKS = ((200, 72, 72), (198, 108, 58), (180, 122, 48), (162, 162, 42), (72, 160, 72), (66, 72, 200))
_RED_BLEND = tuple(tuple(round(t * v) for v in BREAKOUT_RED) for t in (0.3, 0.5, 0.7, 0.9))  # on black
_BALL_BLEND = tuple(tuple(round(t * v) for v in BREAKOUT_RED) for t in (0.35, 0.5, 0.7, 0.9))
BREAKOUT_PROBES = (
    # rows 57..59 (the paddle's two rows plus one of slack), columns 4..59 (away from the wall feet); the paddle
    # measured 12-16 matched px (5 for the shrunk 8 px paddle against the right wall); the ball touching the
    # paddle counts to it
    Probe("paddle", _RED_BLEND, min_pixels=3, region=(57, 60, 4, 60), tolerance=24),
    # between the bricks (row 28 is the last brick row) and the paddle, inside the side walls; 1-4 px. Stricter
    # than the paddle's colours: a decoder's dark, faintly warm noise at the wall edges, e.g. (37, 26, 20), lies
    # within 24 of the paddle's dimmest blend point and passed for a ball in every reconstructed frame
    Probe("ball", _BALL_BLEND, min_pixels=1, region=(29, 57, 3, 61), tolerance=20),
    Probe("bricks", BREAKOUT_BRICKS, min_pixels=4, region=(17, 29, 3, 61), tolerance=32),   # about one brick
)

# vizdoom:basic at 64x64 (160x120 area-resized): the monster (a cacodemon) floats on the far wall, rows 28..38 at
# 64x64, anywhere from column 0 to 63; the gun and muzzle flash are below row 42. Its dark purple and red shades,
# chosen greedily from the monster's pixels (by vizdoom's labels buffer) of 4,903 frames of 90 episodes, random and
# scripted play, among those no background pixel of those frames lies within 12 of. On 2,873 other frames (20
# random-agent and 40 scripted episodes) it finds the monster (>= 3 px, median 11-12) in 99.2-100% of frames (the
# misses: its last death frames) and matches no other pixel (2026-12-03, README "Doom").
DOOM_MONSTER = ((31, 19, 39), (47, 24, 43), (33, 26, 64), (59, 10, 21), (16, 7, 45), (35, 6, 26), (52, 35, 64),
                (74, 19, 39))
DOOM_PROBES = (Probe("monster", DOOM_MONSTER, min_pixels=3, region=(26, 42, 0, 64), tolerance=12),)

# ale:Boxing at 64x64: a green ring (110, 156, 66) with orange ropes, the player's boxer white (214, 214, 214), the
# opponent black; the boxers stay within rows 12..51 and columns 14..50, the score digits (white too) in row 2 and a
# black bar in columns 0..2 lie outside the region. On 4,004 frames of 4 random-agent episodes the player's boxer
# matched 26-53 px (tolerance 64; the green, 148 away, and the ropes, 152 away, never match) and the opponent 20-53
# px: both visible in every frame (2026-12-07).
BOXING_PROBES = (
    Probe(AVATAR, ((214, 214, 214),), min_pixels=12, region=(8, 58, 8, 58), tolerance=64),
    Probe("opponent", ((0, 0, 0),), min_pixels=10, region=(8, 58, 8, 58), tolerance=48),
)

_PROBES = {builtin.ENV_ID: GEMS_PROBES, "ale:Breakout": BREAKOUT_PROBES, "vizdoom:basic": DOOM_PROBES,
           "ale:Boxing": BOXING_PROBES}


@dataclass(frozen=True)
class Hit:
    """A game's rule that one object only goes where another reaches it (Breakout: a brick breaks where the ball
    hits it). Eval attributes each piece of `target` that goes to `by` when `by` was seen within `frames` frames up
    to it, within `columns` columns of it and at most `rows` rows below `target`'s region (64x64 px), and so tells
    bricks the dream's ball broke from bricks that vanish on their own.

    Breakout's numbers come from 8 held-out scripted episodes (seeds from 500,000; 526 px of bricks gone, as
    eval_objects.stable_changes counts them): the real ball is within reach of 97% of the broken brick area; the same
    episodes' ball taken from 10, 30 or 60 frames away is within reach of 1%, 28% and 19% (the share by chance). A
    wider reach (8 frames, 5 columns, 12 rows) read 98% real but 7-42% by chance; a narrower one (4 frames, 4
    columns) 93% real."""

    target: str
    by: str
    frames: int = 6
    columns: int = 5
    rows: int = 10


_HITS = {"ale:Breakout": (Hit("bricks", "ball"),)}


def probes_for(env_id: str) -> dict[str, Probe]:
    """The probes of a game by name ({} for a game without probes)."""
    return {p.name: p for p in _PROBES.get(env_id, ())}


def hits_for(env_id: str) -> list[Hit]:
    """The game's Hit rules ([] for a game without)."""
    return list(_HITS.get(env_id, ()))


def probe_games() -> list[str]:
    """The games that declare probes."""
    return sorted(_PROBES)


def shared_tokens(frames: np.ndarray, a: Probe, b: Probe, grid: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 frames -> (T,) bool: the frames where some cell of a gh x gw token grid holds pixels of both
    probes (builtin:gems: the avatar and an enemy in one token, where long dreams lose the avatar)."""
    return (token_masks(frames, (a,), grid) & token_masks(frames, (b,), grid)).any(axis=1)


def token_masks(frames: np.ndarray, probes: Sequence[Probe], grid: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 frames -> (T, gh * gw) bool: which cells of a gh x gw grid over the frame (a world
    model's tokens, row-major as it patchifies them) hold a pixel that one of `probes` matches."""
    frames = _check_frames(frames, "token masks")
    gh, gw = grid
    t, h, w = frames.shape[:3]
    if h % gh or w % gw:
        raise ProbeError(f"token masks: a {h}x{w} frame does not split into a {gh}x{gw} token grid")
    hit = np.zeros((t, h, w), bool)
    for p in probes:
        hit |= p.mask(frames)
    return hit.reshape(t, gh, h // gh, gw, w // gw).any(axis=(2, 4)).reshape(t, gh * gw)
