"""benchmarks/avatar_births.py: where a second avatar comes from in a long dream (builtin:gems). The classes are
checked on drawn frames; the whole benchmark on a short dream of the shipped model, so it runs in CI time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import reverie_cli
from train.games.builtin import BACKGROUND, ENEMY_COLOURS, GEM, PLAYER

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import avatar_births as bench  # noqa: E402


def frames_with(*layers: list[tuple[tuple[int, int, int], int, int, int]]) -> np.ndarray:
    """One 64x64 frame per layer list: squares (colour, x, y, side) on the background."""
    out = np.empty((len(layers), 64, 64, 3), np.uint8)
    out[...] = BACKGROUND
    for t, squares in enumerate(layers):
        for colour, x, y, side in squares:
            out[t, y:y + side, x:x + side] = colour
    return out


def test_the_spawn_point_is_the_middle_of_the_play_area():
    x, y = bench.spawn_centre()
    assert x == 32 and 30 <= y <= 40


@pytest.mark.parametrize("kind", ["ghost", "spawn", "enemy", "gem", "nothing", "none"])
def test_each_kind_of_birth_is_told_by_what_the_frame_before_had_there(kind):
    spawn = bench.spawn_centre()
    one = (PLAYER, 8, 12, 6)                        # the avatar, far from everything below
    sx, sy = int(spawn[0]) - 3, int(spawn[1]) - 3
    before = {"ghost": [one, (PLAYER, 44, 44, 2)],  # 4 faint avatar-coloured pixels where the new one will be
              "spawn": [one], "enemy": [one, (ENEMY_COLOURS[0], 44, 44, 5)], "gem": [one, (GEM, 45, 45, 4)],
              "nothing": [one], "none": [one]}[kind]
    after = {"spawn": [one, (PLAYER, sx, sy, 6)], "none": [one]}.get(kind, [one, (PLAYER, 43, 43, 6)])
    kinds, two, n = bench.classify(frames_with(before, after), spawn)
    assert n == 2 and two == (0.0 if kind == "none" else 0.5)
    want = dict.fromkeys(bench.KINDS, 0)
    if kind != "none":
        want[kind] = 1
    assert kinds == want


def test_an_avatar_that_comes_back_alone_is_no_birth():
    """Only more avatars than the frame before count: the avatar lost and back again, or moving, is none."""
    spawn = bench.spawn_centre()
    seq = [[(PLAYER, 8, 12, 6)], [], [(PLAYER, 40, 40, 6)], [(PLAYER, 42, 40, 6)]]
    kinds, two, _ = bench.classify(frames_with(*seq), spawn)
    assert sum(kinds.values()) == 0 and two == 0.0


def test_the_benchmark_dreams_and_writes_its_counts(tmp_path, capsys):
    data = tmp_path / "d"
    assert reverie_cli.main(["record", "--env", "builtin:gems", "--agent", "scripted", "--episodes", "2", "--steps",
                             "60", "--size", "64", "--out", str(data), "--seed", "11", "--no-progress"]) == 0
    out = tmp_path / "births.json"
    rc = bench.main(["--data", str(data), "--episodes", "2", "--frames", "20", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    assert r["dreams"] == 2 and r["frames"] == 40
    assert 0.0 <= r["two_or_more"] <= 1.0 and r["births"] == sum(r["kinds"].values())
    assert set(r["kinds"]) == set(bench.KINDS)
    rc = bench.main(["--data", str(data), "--episodes", "3", "--frames", "20"])
    assert rc == 2 and "3 episodes" in capsys.readouterr().err
