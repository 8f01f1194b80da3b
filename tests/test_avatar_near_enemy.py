"""benchmarks/avatar_near_enemy.py: one step from real context near an enemy and far from one, on recorded
builtin:gems episodes with the shipped model (a few starts, so it runs in CI time)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import reverie_cli

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import avatar_near_enemy as bench  # noqa: E402


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("near") / "d"
    assert reverie_cli.main(["record", "--env", "builtin:gems", "--agent", "random", "--episodes", "2", "--steps",
                             "300", "--size", "64", "--out", str(out), "--seed", "7", "--no-progress"]) == 0
    return out


def test_starts_are_split_by_the_real_distance_to_an_enemy(heldout):
    from train.data.windows import EpisodeSource
    from train.games.probes import probes_for

    src = EpisodeSource(heldout)
    groups = bench.starts_by_distance(src, np.random.default_rng(0))
    assert groups["near"] and len(groups["far"]) == len(groups["near"])
    enemies = probes_for("builtin:gems")["enemies"]
    avatar = probes_for("builtin:gems")["avatar"]
    for name, group in groups.items():
        for e, t, dist, _, _ in group[:20]:
            frame = src.episode_frames(e)[t]
            cx, cy = avatar.centroid(frame)
            ys, xs = np.nonzero(enemies.mask(frame))
            nearest = np.hypot(xs + 0.5 - cx, ys + 0.5 - cy).min()
            assert nearest == pytest.approx(dist)
            assert (dist <= bench.NEAR) if name == "near" else (dist > bench.FAR)


def test_flashing_is_the_avatars_white_in_the_play_area_not_the_hud(heldout):
    """A start is flagged flashing when the avatar's white shows in the play area within its 8-frame blink cycle;
    the HUD's white score text must not count (it once flagged every start)."""
    from train.data.windows import EpisodeSource

    src = EpisodeSource(heldout)
    groups = bench.starts_by_distance(src, np.random.default_rng(0))
    starts = groups["near"] + groups["far"]
    flags = [f for *_, f in starts]
    assert not all(flags), "every start flagged flashing: the HUD text is being read as the avatar's white"
    y0 = bench.FLASH.region[0]
    for e, t, _, _, flashing in starts:
        frames = src.episode_frames(e)[max(t - 7, 0):t + 2]
        white = (np.abs(frames[:, y0:].astype(int) - np.array(bench.PLAYER_FLASH)).max(-1) <= bench.FLASH.tolerance)
        assert flashing == bool((white.sum((1, 2)) >= bench.FLASH.min_pixels).any())


def test_summary_splits_the_steps_without_a_hit_by_flashing():
    pred = np.array([0, 20, 20, 0, 20, 0])
    real = np.full(6, 36)
    hit = np.array([False, False, False, False, True, True])
    flash = np.array([True, True, False, False, False, True])
    s = bench.summarise(pred, real, hit, flash, 9)
    assert s["flashing"]["samples"] == 2 and s["flashing"]["missing"] == 0.5
    assert s["steady"]["samples"] == 2 and s["steady"]["missing"] == 0.5
    assert s["no_hit"]["samples"] == 4 and s["hit"]["samples"] == 2 and s["hit"]["missing"] == 0.5
    assert s["flashing_share"] == 0.5


def test_the_benchmark_writes_missing_shares_and_area_ratios(heldout, tmp_path, capsys):
    out = tmp_path / "near.json"
    rc = bench.main(["--data", str(heldout), "--reps", "1", "--max-near", "4", "--batch", "4", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    assert r["steps"] >= 1 and r["guidance"] > 0
    for name in ("near", "far"):
        assert r[name]["starts"] == 4 and r[name]["all"]["samples"] == 4
        assert 0.0 <= r[name]["all"]["missing"] <= 1.0 and r[name]["all"]["area_ratio"] > 0
        split = r[name]["steady"]["samples"] + r[name]["flashing"]["samples"]
        assert split == r[name]["no_hit"]["samples"]
    assert "near" in capsys.readouterr().out


def test_other_games_data_is_refused_in_one_line(tmp_path, capsys):
    data = tmp_path / "d"
    assert reverie_cli.main(["record", "--env", "builtin:gems", "--agent", "random", "--episodes", "1", "--steps",
                             "20", "--size", "32", "--out", str(data), "--seed", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert bench.main(["--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatar_near_enemy: ") and "64x64" in err and len(err.splitlines()) == 1
