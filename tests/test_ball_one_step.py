"""benchmarks/ball_one_step.py: one step of the shipped Breakout model from real context, on recorded Breakout
episodes (a few starts, so it runs in CI time)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import reverie_cli

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import ball_one_step as bench  # noqa: E402


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> Path:
    pytest.importorskip("ale_py")
    out = tmp_path_factory.mktemp("ball") / "d"
    assert reverie_cli.main(["record", "--env", "ale:Breakout", "--agent", "scripted", "--episodes", "1", "--steps",
                             "160", "--size", "64", "--out", str(out), "--seed", "11", "--no-progress"]) == 0
    return out


def test_starts_have_the_real_ball_in_three_frames_and_bounces_flip_direction(heldout):
    from train.data.windows import EpisodeSource
    from train.games.probes import probes_for

    src = EpisodeSource(heldout)
    starts = bench.ball_starts(src)
    assert len(starts) > 20
    ball = probes_for("ale:Breakout")["ball"]
    frames = src.episode_frames(0)
    seen, c = ball.visible(frames), ball.centroid(frames)
    for _, t, bounce in starts:
        assert seen[t - 1] and seen[t] and seen[t + 1]
        v0, v1 = c[t] - c[t - 1], c[t + 1] - c[t]
        assert bounce == bool(((v0 > 0) & (v1 < 0) | (v0 < 0) & (v1 > 0)).any())
    assert any(b for *_, b in starts) and not all(b for *_, b in starts)   # a rally has flights and bounces


def test_peak_brightness_tells_a_dim_ball_from_a_full_one():
    frame = np.zeros((2, 64, 64, 3), np.uint8)
    frame[0, 40, 20] = bench.RED                         # a full-red ball pixel
    frame[1, 40, 20] = (0.2 * bench.RED).astype(np.uint8)  # a dim smear of it
    peaks = bench.peak_near(frame, np.array([[21.0, 41.0], [21.0, 41.0]]))
    assert peaks[0] == pytest.approx(1.0, abs=0.01) and peaks[1] == pytest.approx(0.2, abs=0.01)
    assert bench.peak_near(frame[:1], np.array([[50.0, 10.0]]))[0] == 0.0    # nothing near that centre


def test_the_benchmark_writes_seen_shares_per_kind(heldout, tmp_path, capsys):
    out = tmp_path / "ball.json"
    rc = bench.main(["--data", str(heldout), "--max-starts", "8", "--batch", "4", "--steps", "1", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    assert r["all"]["starts"] == 8 and r["free"]["starts"] + r["bounce"]["starts"] == 8
    assert 0.0 <= r["all"]["ball_seen"] <= 1.0 and 0.0 <= r["all"]["more_than_one_blob"] <= 1.0
    assert r["all"]["peak_real_median"] > 0.27        # the real ball is bright enough for the probe
    assert r["steps"] == 1 and "ball seen after one step" in capsys.readouterr().out


def test_other_games_data_is_refused_by_name(tmp_path, capsys):
    d = tmp_path / "gems"
    assert reverie_cli.main(["record", "--env", "builtin:gems", "--agent", "random", "--episodes", "1", "--steps",
                             "20", "--size", "64", "--out", str(d), "--seed", "1", "--no-progress"]) == 0
    assert bench.main(["--data", str(d)]) == 2
    assert "needs ale:Breakout" in capsys.readouterr().err
