"""What a player sees, for `reverie eval`: object probes per time bucket and the control test.

Object probes (train.games.probes) are detectors a game declares on its own frames (builtin:gems: avatar, gems, enemies,
score; ale:Breakout: paddle, ball, bricks). A lost 6x6 avatar or a 1-pixel ball costs almost nothing in PSNR, so
eval reports for each probe the share of frames where it is visible, in the real game and in the dream, per bucket
of a long rollout, their ratio, and for the avatar the share of rollouts that end without it. "Visible" is met by one
gem of three or by a dimmed avatar, so eval also reports each probe's area (matched pixels per frame, at 64x64), real
and dream, per bucket: a dream that shows one gem where the game shows three has a third of the area. And it counts
them (separate groups of matched pixels, `count_real`, `count_dream`): two avatars pass "visible" and double the area,
so `visible_clean_dream` and `clean_ratio` count a dream frame only where it shows the object without extra copies.
Where both show an object, `position_error_px` is the median distance between the dream's and the real one per
bucket (a paddle a few pixels off); `area_lost_real` / `area_lost_dream` is how much of its area went between the
first and the last frames of a rollout (bricks that break, gems that are taken). Where a game declares that one
object goes only where another reaches it (train.games.probes.Hit: a brick breaks where the ball hits it), `hits` says
how much of it went where the other was in reach, real and dream, and how much came back: a dream whose bricks vanish
where no ball has been, or grow back, passes "bricks break" by area alone.

Control (games with an avatar probe; train.evaluation.control): from real starts, hold each direction for N frames in
the real game and on forks of dreams primed from the same frames (one batch), and compare how far the avatar moved;
then the same at the end of every rollout's dream (for horizons past the first bucket), where there is no real game to
compare with: how far the avatar moves and how often it is missing after a long dream.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.session import Session
from train.data.windows import EpisodeSource
from train.evaluation.long_play import Rollouts, episode_info, masked_mean, replay_game

END_FRAMES = 4          # the avatar is gone at the end when no one of the last this many frames shows it (it flashes)
CONTROL_STARTS = 8      # real starts the control test runs from, as one batch: 4 directions x N steps of it


def pixel_counts(probe: Any, frames: np.ndarray) -> np.ndarray:
    """(R, H, h, w, 3) uint8 -> (R, H) int: the probe's matched pixels per frame, one rollout at a time (the
    probe's masks are frame-sized)."""
    return np.stack([np.asarray(probe.count(f)) for f in frames])


def area_scale(frames: np.ndarray) -> float:
    """The factor that turns pixel counts on these frames into counts on a 64x64 frame."""
    return 64 * 64 / (frames.shape[-3] * frames.shape[-2])


def areas(probe: Any, frames: np.ndarray) -> np.ndarray:
    """(R, H, h, w, 3) uint8 -> (R, H) float: matched pixels per frame, scaled to a 64x64 frame."""
    return pixel_counts(probe, frames) * area_scale(frames)


def mask_counts(probe: Any, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(R, H, h, w, 3) uint8 -> the probe's matched pixels (R, H), the separate objects it sees (R, H), the centroid
    of its matched pixels (R, H, 2) as (x, y) in 64x64 pixels (NaN where nothing matched) and how strongly it shows
    (R, H) per frame (Probe.blobs, Probe.centroid, Probe.strength), from one mask per frame, one rollout at a time."""
    from train.games.probes import blob_counts, mask_centroids

    h, w = frames.shape[-3:-1]
    need = probe.min_pixels_at(h, w)
    to_64 = np.array([64 / w, 64 / h])

    def measure(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:   # f: (H, h, w, 3)
        m = probe.mask(f)
        return m.sum(axis=(-2, -1)), blob_counts(m, need), mask_centroids(m) * to_64, probe.strength(f, m)

    return tuple(np.stack(x) for x in zip(*(measure(f) for f in frames)))


def clean_limit(n_real: np.ndarray, real: np.ndarray, real_ok: np.ndarray) -> np.ndarray:
    """(R, H) the most separate objects a dream frame may show and still count as clean: as many as its real frame
    (at least one) where there is one; elsewhere as many as 99% of the real frames that show the object do."""
    typical = max(1, int(np.quantile(n_real[real], 0.99))) if real.any() else 1
    return np.where(real_ok, np.maximum(n_real, 1), typical)


def grow(mask: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """`mask` dilated by `radius` cells both ways along `axis`."""
    out = mask.copy()
    n = mask.shape[axis]
    for d in range(1, min(radius, n - 1) + 1):
        ahead = [slice(None)] * mask.ndim
        behind = [slice(None)] * mask.ndim
        ahead[axis], behind[axis] = slice(d, None), slice(None, n - d)
        out[tuple(ahead)] |= mask[tuple(behind)]
        out[tuple(behind)] |= mask[tuple(ahead)]
    return out


def near(a: np.ndarray, b: np.ndarray, radius: int) -> np.ndarray:
    """(...,) bool: whether mask `a` (..., h, w) has a pixel within `radius` (Chebyshev) of a pixel of mask `b`."""
    return (a & grow(grow(b, radius, -2), radius, -1)).any(axis=(-2, -1))


def position_error(c_dream: np.ndarray, c_real: np.ndarray, both: np.ndarray) -> float | None:
    """Median distance (64x64 px) between the dream's and the real object's centroids over frames where both show
    it; None where there is no such frame."""
    d = np.linalg.norm(c_dream - c_real, axis=-1)[both]
    return float(np.median(d)) if d.size else None


def rollout_se(values: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """The standard error, over rollouts, of a share of frames: each rollout's mean of `values` (R, H) where `mask`
    holds (everywhere without one), their spread over the square root of their number. None with fewer than two
    rollouts. Rollouts are the independent draws of an eval (their episodes and noise differ, frames within one do
    not), so this, not the frame count, says how far another eval's share could be from this one's."""
    m = np.ones(values.shape, bool) if mask is None else mask
    n = m.sum(axis=1)
    per = np.where(m, values, 0).sum(axis=1)[n > 0] / n[n > 0]
    return float(per.std(ddof=1) / math.sqrt(per.size)) if per.size > 1 else None


def object_report(probes: dict[str, Any], roll: Rollouts, slices: Sequence[slice],
                  hits: Sequence[Any] = ()) -> dict[str, dict]:
    """objects.<name>: the share of frames where each probe sees its object, real and dream, overall and per bucket,
    their ratio, the object's area (pixels per frame at 64x64) real and dream per bucket with its overall ratio,
    (for the avatar) how many rollouts end without it, and for the game's Hit rules (train.games.probes.hits_for) what
    went where the hitting object reached it (`hits`, hit_report)."""
    from train.games.probes import AVATAR

    out = {}
    for name, probe in probes.items():
        # one mask per frame serves every measure: visible is "at least min_pixels matched", area the matched pixels,
        # count the separate groups of them
        count_dream, n_dream, c_dream, s_dream = mask_counts(probe, roll.dream)   # (R, H), (R, H), (R, H, 2), (R, H)
        count_real, n_real, c_real, s_real = mask_counts(probe, roll.real)
        need = probe.min_pixels_at(*roll.dream.shape[-3:-1])
        dream = count_dream >= need
        real = (count_real >= need) & roll.real_ok
        real_share, dream_share = masked_mean(real, roll.real_ok), masked_mean(dream)
        entry = {
            "visible_real": real_share,
            "visible_dream": [masked_mean(dream[:, sl]) for sl in slices],
            "visible_real_buckets": [masked_mean(real[:, sl], roll.real_ok[:, sl]) for sl in slices],
            "visible_dream_all": dream_share,
            "visible_dream_se": rollout_se(dream),
            "ratio": dream_share / real_share if real_share else None,
        }
        area_dream, area_real = count_dream * area_scale(roll.dream), count_real * area_scale(roll.real)
        real_area, dream_area = masked_mean(area_real, roll.real_ok), masked_mean(area_dream)
        entry.update({
            "area_real": [masked_mean(area_real[:, sl], roll.real_ok[:, sl]) for sl in slices],
            "area_dream": [masked_mean(area_dream[:, sl]) for sl in slices],
            "area_ratio": dream_area / real_area if real_area else None,
        })
        # how many: two avatars, or one gem of three, pass "visible" and can pass the area; the count sees them
        real_n, dream_n = masked_mean(n_real, roll.real_ok), masked_mean(n_dream)
        entry.update({
            "count_real": [masked_mean(n_real[:, sl], roll.real_ok[:, sl]) for sl in slices],
            "count_dream": [masked_mean(n_dream[:, sl]) for sl in slices],
            "count_ratio": dream_n / real_n if real_n else None,
            "more_than_real": masked_mean(n_dream > n_real, roll.real_ok),
            "more_than_real_se": rollout_se(n_dream > n_real, roll.real_ok),
        })
        # visible and not doubled: a dream that paints a second ball, or a haze of ball-coloured specks, passes
        # "visible" (and can pass the ratio) while a player sees no one ball. Clean: visible with no more separate
        # objects than the real frame shows (at least one), or, past the real reference, than 99% of real frames show
        clean = dream & (n_dream <= clean_limit(n_real, real, roll.real_ok))
        clean_share = masked_mean(clean)
        entry.update({
            "visible_clean_dream": [masked_mean(clean[:, sl]) for sl in slices],
            "clean_ratio": clean_share / real_share if real_share else None,
        })
        # how strongly: a dream whose ball is a dim speck where the real one is bright passes "visible"; the median
        # strength (Probe.strength) of the frames that show the object, real and dream, per bucket
        entry.update({
            "strength_real": [_median(s_real[:, sl][real[:, sl]]) for sl in slices],
            "strength_dream": [_median(s_dream[:, sl][dream[:, sl]]) for sl in slices],
        })
        # where: the median distance between the dream's object and the real one (a paddle a few pixels off), and
        # how much of it went between the first and the last frames (bricks that break, gems that are taken)
        both = dream & real
        end = slice(max(0, roll.horizon - END_FRAMES), roll.horizon)
        seen = roll.real_ok[:, :END_FRAMES].all(axis=1) & roll.real_ok[:, end].all(axis=1)
        lost_real = area_real[:, :END_FRAMES].mean(axis=1) - area_real[:, end].mean(axis=1)
        lost_dream = area_dream[:, :END_FRAMES].mean(axis=1) - area_dream[:, end].mean(axis=1)
        entry.update({
            "position_error_px": [position_error(c_dream[:, sl], c_real[:, sl], both[:, sl]) for sl in slices],
            "area_lost_real": masked_mean(lost_real, seen), "area_lost_dream": masked_mean(lost_dream, seen),
        })
        if name == AVATAR:
            end = slice(max(0, roll.horizon - END_FRAMES), roll.horizon)
            entry["gone_at_end"] = masked_mean(~dream[:, end].any(axis=1))
            seen_to_end = roll.real_ok[:, end].all(axis=1)                     # rollouts with a real game to the end
            entry["gone_at_end_real"] = masked_mean(~real[:, end].any(axis=1), seen_to_end)
            entry["end_frames"] = END_FRAMES
        out[name] = entry
    for hit in hits:
        if hit.target in out and hit.by in probes:
            out[hit.target]["hits"] = hit_report(hit, probes, roll, slices)
    return out


def stable_changes(m: np.ndarray, loose: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, H, h, w) masks, (R, H) which frames exist -> (gone, back), both (R, H, h, w), marked at the frame a pixel
    changes. Each pixel's state follows a trigger with two thresholds: present where `m` matches, absent where not
    even `loose` does (a looser mask, a superset of `m`), and in between it keeps its last state, so a generated pixel
    on the border of two brick rows that wobbles across the tolerance is no brick that breaks, and a brick that fades
    over several frames goes once, at the frame it is gone. A change counts when the old state held for two frames
    and the new one holds for two (a ball crossing a gap, or a one-frame flicker, is neither), all four frames
    existing (ok)."""
    gone, back = np.zeros_like(m), np.zeros_like(m)
    state = loose[:, 0]                                                   # (R, h, w)
    states = np.zeros_like(m)
    for t in range(m.shape[1]):
        state = m[:, t] | (loose[:, t] & state)
        states[:, t] = state
    if m.shape[1] >= 4:
        seen = (ok[:, :-3] & ok[:, 1:-2] & ok[:, 2:-1] & ok[:, 3:])[..., None, None]
        a, b, c, d = states[:, :-3], states[:, 1:-2], states[:, 2:-1], states[:, 3:]
        gone[:, 2:-1] = a & b & ~c & ~d & seen
        back[:, 2:-1] = ~a & ~b & c & d & seen
    return gone, back


def in_reach(hit: Any, target: Any, by_mask: np.ndarray) -> np.ndarray:
    """(R, H, h, w) masks of `hit.by` -> (R, H, w) bool: the columns within `hit.columns` of where `by` was seen at
    most `hit.rows` rows below `target`'s region, in the `hit.frames` frames up to each frame (and that frame)."""
    R, H, h, w = by_mask.shape
    _, y1, _, _ = target.region_at(h, w)
    below = by_mask[:, :, : min(h, y1 + round(hit.rows * h / 64))].any(axis=2)          # (R, H, w)
    recent = np.zeros_like(below)
    for dt in range(min(hit.frames, H - 1) + 1):
        recent[:, dt:] |= below[:, :H - dt]
    return grow(recent, max(1, round(hit.columns * w / 64)), -1)


def hit_report(hit: Any, probes: dict[str, Any], roll: Rollouts, slices: Sequence[slice]) -> dict[str, Any]:
    """objects.<target>.hits: how much of the target goes per rollout, real and dream, per bucket (px at 64x64), the
    share of it that went where `by` reached it, the dream's area gone with nothing in reach, and the area that came
    back. A dream whose bricks vanish where no ball has been, or grow back, passes "bricks break" by area alone."""
    target, by = probes[hit.target], probes[hit.by]
    wide = dataclasses.replace(target, tolerance=2 * target.tolerance)    # "gone" is farther than this from it
    out: dict[str, Any] = {"by": hit.by, "frames": hit.frames, "columns": hit.columns, "rows": hit.rows}
    scale = area_scale(roll.dream)
    for side, frames, ok in (("real", roll.real, roll.real_ok), ("dream", roll.dream, np.ones_like(roll.real_ok))):
        t_mask = np.stack([target.mask(f) for f in frames])                             # (R, H, h, w)
        gone, back = stable_changes(t_mask, np.stack([wide.mask(f) for f in frames]), ok)
        reach = in_reach(hit, target, np.stack([by.mask(f) for f in frames]))
        gone_px = gone.sum(axis=(2, 3)) * scale                                         # (R, H)
        reached_px = (gone & reach[:, :, None, :]).sum(axis=(2, 3)) * scale
        rollouts = max(1, int(ok[:, 0].sum()))
        out[f"gone_{side}"] = [float(gone_px[:, sl].sum()) / rollouts for sl in slices]
        total = float(gone_px.sum())
        out[f"reached_{side}"] = float(reached_px.sum()) / total if total else None
        out[f"unreached_{side}"] = (total - float(reached_px.sum())) / rollouts
        out[f"back_{side}"] = float(back.sum()) * scale / rollouts
    return out


def _median(values: np.ndarray) -> float | None:
    """The median of the finite values; None where there are none."""
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def _mean(values: Sequence[Any], weights: Sequence[float] | None = None) -> float | None:
    """Weighted mean of the finite numbers among `values` (None, NaN left out); None where there are none."""
    weights = [1.0] * len(values) if weights is None else weights
    pairs = [(float(x), w) for x, w in zip(values, weights) if x is not None and math.isfinite(float(x))]
    total = sum(w for _, w in pairs)
    return sum(x * w for x, w in pairs) / total if total else None


def summarize(results: Sequence[dict[str, dict]], keys: Sequence[str],
              weights: Sequence[float] | None = None) -> dict[str, dict]:
    """Per button: the (weighted) mean of each of `keys` over measure_control results."""
    buttons = results[0] if results else {}
    return {b: {k: _mean([r[b].get(k) for r in results], weights) for k in keys} for b in buttons}


def real_moves(src: EpisodeSource, starts: Sequence[tuple[int, int]], context: int, probe: Any, n: int,
               buttons: Sequence[str]) -> dict[str, list[float | None]]:
    """Per direction button, how far the real avatar moves in n held frames from each start (episode, first context
    frame): the real game replayed to the start's last context frame, restored after each hold; None for a start
    whose game cannot be replayed, NaN where the avatar is not visible at both ends."""
    from train.evaluation.control import DIRECTIONS, control_real, displacement

    real: dict[str, list[float | None]] = {b: [] for b in buttons}
    infos, unreplayable = {}, {}
    for e, s in starts:
        info = infos.setdefault(e, episode_info(src, e))
        frames, actions = src.episode_frames(e), src.actions[e]
        game, _ = replay_game(info.env_id, info.seed, frames[:s + context], actions[:s + context], unreplayable)
        if game is None:
            for b in buttons:
                real[b].append(None)
            continue
        try:
            for b in buttons:                                          # control_real restores the game each time
                real[b].append(float(displacement(control_real(game, b, n), probe, DIRECTIONS[b])))
        finally:
            game.close()
    return real


def control_from_starts(make_session: Callable[[int], Session], src: EpisodeSource, roll: Rollouts, context: int,
                        probe: Any, n: int, rollouts: Sequence[int]) -> dict[str, Any]:
    """control.<direction>: real_px, dream_px, dream_missing, ratio, from the real starts of `rollouts`: the dreams
    primed from their contexts as one batch (held on forks), the real game replayed to the same frames (where it can
    be) and held from each; ratio = dream_px / real_px of the means."""
    from train.evaluation.control import measure_control

    sess = make_session(len(rollouts))
    fr = np.stack([src.episode_frames(e)[s:s + context] for e, s in (roll.starts[r] for r in rollouts)])
    ac = np.stack([src.actions[e][s:s + context] for e, s in (roll.starts[r] for r in rollouts)])
    sess.reset(fr, ac, seed=[roll.seeds[r] for r in rollouts])          # (S, context, h, w, 3)
    dream = measure_control(sess, None, probe, n)                      # means over the S worlds
    real = real_moves(src, [roll.starts[r] for r in rollouts], context, probe, n, list(dream))
    out: dict[str, Any] = {"frames": n, "starts": len(rollouts)}
    for b, d in dream.items():
        real_px, dream_px = _mean(real[b]), _mean([d["dream_px"]])
        out[b] = {"real_px": real_px, "dream_px": dream_px, "dream_missing": d["dream_missing"],
                  "ratio": dream_px / real_px if real_px and dream_px is not None else None}
    return out


class AfterDream:
    """control_after_dream: measure_control on each batch of long dreams after their last frame (forks: the dreams
    are untouched), with no real game to compare with. Pass it to run_rollouts as `at_end`."""

    def __init__(self, probe: Any, n: int):
        self.probe, self.n = probe, n
        self.results: list[dict] = []
        self.rollouts: list[int] = []

    def __call__(self, session: Session, rollouts: list[int]) -> None:
        from train.evaluation.control import measure_control

        self.results.append(measure_control(session, None, self.probe, self.n))
        self.rollouts.append(len(rollouts))

    def report(self, horizon: int) -> dict[str, Any]:
        """control_after_dream.<direction>: dream_px and dream_missing, averaged over every rollout."""
        return {"after_frames": horizon, "frames": self.n, "rollouts": sum(self.rollouts),
                **summarize(self.results, ("dream_px", "dream_missing"), self.rollouts)}
