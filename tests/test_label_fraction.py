"""benchmarks/label_fraction.py end to end at toy sizes: the IDM labels the stripped episodes, and three world models
(fully labeled, relabeled, the labeled tenth alone) are trained from one pretrained model with fresh action inputs
and scored by one judge."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("label_fraction", REPO / "benchmarks" / "label_fraction.py")
lf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lf)
DEFAULT = REPO / "engine" / "assets" / "default.safetensors"


def test_fine_tunes_from_one_model_with_fresh_actions_and_reports_every_arm(tmp_path):
    out, work = tmp_path / "lf.json", tmp_path / "work"
    rc = lf.main(["--episodes", "4", "--steps", "30", "--fraction", "0.25", "--heldout", "1", "--idm-steps", "2",
                  "--judge-steps", "2", "--ae", str(DEFAULT), "--init-wm", str(DEFAULT), "--wm-steps", "1",
                  "--wm-batch", "2", "--horizon", "4", "--threads", "1", "--work", str(work), "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["labeled_episodes"] == 1 and result["relabeled_episodes"] == 3
    assert 0.0 <= result["labels"]["exact_keys"] <= 1.0
    arms = result["world_models"]
    assert set(arms) == {"full", "relabeled", "kept_only"}
    for name, arm in arms.items():
        assert math.isfinite(arm["psnr_step1"]) and math.isfinite(arm["psnr_mean"]), name
        assert arm["action_following"]["real"] is not None, name
    # each arm is its own fine-tune of the given model, with its action inputs started from zero
    for folder in ("wm_full_ft", "wm_relabeled_ft", "wm_kept_ft"):
        flags = json.loads((work / folder / "config.json").read_text())["flags"]
        assert flags["init"] == str(DEFAULT) and flags["fresh_actions"] is True, flags
    # one warm-up step from zero: the action inputs are still near zero where the pretrained model's are not
    tuned, init = load_file(str(work / "wm_full_ft" / "model.safetensors")), load_file(str(DEFAULT))
    key = "wm.head.action_in.weight"
    assert tuned[key].float().abs().max() < 1e-3 < init[key].float().abs().max()
