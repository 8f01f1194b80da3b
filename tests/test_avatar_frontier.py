"""benchmarks/avatar_frontier.py: the arms' avatar presence against their extra copies, drawn and ranked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import avatar_frontier as bench  # noqa: E402


def arm(name, visible, more, group="training"):
    return {"name": name, "avatar_visible": visible, "more_than_real": more, "group": group}


def test_the_frontier_keeps_only_arms_nothing_beats_on_both_axes():
    arms = [arm("shipped", 0.86, 0.16), arm("control", 0.89, 0.31), arm("focus", 0.95, 0.37),
            arm("worse", 0.85, 0.20), arm("own", 0.77, 0.03), arm("tie", 0.86, 0.16)]
    assert bench.frontier(arms) == ["shipped", "control", "focus", "own", "tie"]   # "worse": shipped beats it


def test_the_picture_is_drawn_and_the_frontier_printed(tmp_path, capsys):
    spec = {"shipped_more_than_real": 0.16,
            "arms": [arm("shipped", 0.86, 0.16, "shipped"), arm("object weight 2", 0.98, 0.39),
                     arm("ema", 0.78, 0.16, "averaging")]}
    (tmp_path / "f.json").write_text(json.dumps(spec))
    assert bench.main(["--json", str(tmp_path / "f.json"), "--png", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert "* shipped" in out and "  ema" in out and "* object weight 2" in out, out
    img = np.asarray(Image.open(tmp_path / "f.png").convert("RGB"))
    assert img.shape == (720, 1000, 3)
    colours = {tuple(c) for c in img.reshape(-1, 3)[::7]}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours       # two groups, two colours of points


def test_a_results_file_without_arms_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "f.json").write_text(json.dumps({"arms": [{"name": "x"}]}))
    assert bench.main(["--json", str(tmp_path / "f.json"), "--png", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "f.json") in err[0] and "avatar_visible" in err[0]
    assert not (tmp_path / "f.png").exists()
