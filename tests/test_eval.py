"""`reverie eval`: the metrics JSON and plot after a tiny training run, its options and errors, and the metric
functions (PSNR, SSIM) and rollout helpers behind it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import reverie_cli
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.session import Session
from train.evaluate import ssim, windows
from train.rollout import psnr, rollout


def cli(*argv: str) -> int:
    torch.manual_seed(0)
    return reverie_cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    """A recorded dataset and a tiny-preset AE + WM (+ IDM) trained for two steps each."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    assert cli("record", "--env", "builtin:gems", "--agent", "scripted", "--episodes", "2", "--steps", "40", "--size",
               "64", "--out", data, "--seed", "1", "--no-progress") == 0
    common = ["--steps", "2", "--batch", "2", "--threads", "1"]
    assert cli("train", "ae", "--data", data, "--out", root / "ae", *common) == 0
    assert cli("train", "wm", "--data", data, "--ae", root / "ae", "--out", root / "wm", "--window", "4", *common) == 0
    assert cli("train", "idm", "--data", data, "--out", root / "idm", *common) == 0
    return SimpleNamespace(root=root, data=data, model=root / "wm" / "model.safetensors",
                           idm=root / "idm" / "idm.safetensors")


def run_eval(t: SimpleNamespace, out: Path, *extra: str, model: Path | None = None) -> dict:
    argv = ["eval", "--model", model or t.model, "--data", t.data, "--json", out, "--threads", "1", *extra]
    if "--horizon" not in extra:
        argv += ["--horizon", "2"]
    if "--rollouts-per-episode" not in extra:
        argv += ["--rollouts-per-episode", "1"]
    if "--idm-steps" not in extra:
        argv += ["--idm-steps", "5"]  # only used when no IDM is given or bundled
    assert cli(*argv) == 0
    return json.loads(Path(out).read_text())


@pytest.fixture(scope="module")
def default_result(trained) -> dict:
    return run_eval(trained, trained.root / "eval.json")


def finite_numbers(d) -> list[float]:
    if isinstance(d, dict):
        return [x for v in d.values() for x in finite_numbers(v)]
    if isinstance(d, list):
        return [x for v in d for x in finite_numbers(v)]
    return [float(d)] if isinstance(d, (int, float)) and not isinstance(d, bool) else []


# ---------------------------------------------------------------------------------------------------------------
# The JSON and the plot
# ---------------------------------------------------------------------------------------------------------------
def test_eval_writes_complete_finite_metrics_and_a_plot(trained, default_result):
    r = default_result
    assert len(r["psnr"]) == 2 and len(r["ssim"]) == 2  # one per horizon step
    assert all(0 < v <= 100 for v in r["psnr"]) and all(-1 <= v <= 1 for v in r["ssim"])
    assert 0 < r["ae_psnr"] <= 100
    af = r["action_following"]
    assert set(af) >= {"generated", "real", "ratio"}
    assert 0 <= af["generated"] <= 1 and 0 <= af["real"] <= 1 and af["ratio"] >= 0
    assert "trained on --data for 5 steps" in af["idm"]
    assert r["steps"] == 1 and r["guidance"] == 1.0 and r["horizon"] == 2 and r["context"] == 2  # context = W/2
    assert r["episodes"] == 2 and r["rollouts"] == 2 and r["frames"] == 2 * 2
    assert r["psnr_step1"] == pytest.approx(r["psnr"][0])
    assert r["psnr_mean"] == pytest.approx(np.mean(r["psnr"])) and r["ssim_mean"] == pytest.approx(np.mean(r["ssim"]))
    assert all(math.isfinite(x) for x in finite_numbers(r))
    plot = trained.root / "eval.png"
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_is_reproducible(trained, default_result):
    again = run_eval(trained, trained.root / "again.json")
    for key in ("psnr", "ssim", "ae_psnr", "action_following", "frames"):
        assert again[key] == default_result[key], key


def test_eval_options_reach_the_json(trained, tmp_path):
    plot = tmp_path / "plots" / "p.png"
    r = run_eval(trained, tmp_path / "o.json", "--steps", "1", "--guidance", "1.5", "--horizon", "3", "--episodes",
                 "1", "--rollouts-per-episode", "2", "--idm", trained.idm, "--plot", plot, "--context", "3",
                 "--context-noise", "0.0")
    assert len(r["psnr"]) == 3 and len(r["ssim"]) == 3
    assert r["steps"] == 1 and r["guidance"] == 1.5 and r["context"] == 3 and r["context_noise"] == 0.0
    assert r["episodes"] == 1 and r["rollouts"] == 2 and r["frames"] == 2 * 3
    assert r["action_following"]["idm"] == str(trained.idm)
    assert plot.exists() and not (tmp_path / "o.png").exists()
    assert all(math.isfinite(x) for x in finite_numbers(r))


def test_eval_uses_a_bundled_idm(trained, tmp_path):
    ck, idm = load_checkpoint(trained.model), load_checkpoint(trained.idm)
    bundled = save_checkpoint(tmp_path / "bundled.safetensors", kind=ck.kind, config=ck.config,
                              action_spec=ck.action_spec, parts={**ck.tensors, "idm": idm.tensors["idm"]},
                              data=ck.data, metrics=ck.metrics)  # what 'reverie train wm --idm' writes
    r = run_eval(trained, tmp_path / "o.json", model=bundled)
    assert r["action_following"]["idm"] == "bundled"


def test_eval_write_model_stores_the_metrics(trained, tmp_path):
    out = tmp_path / "scored.safetensors"
    r = run_eval(trained, tmp_path / "o.json", "--write-model", out, "--half")
    ck, orig = load_checkpoint(out), load_checkpoint(trained.model)
    assert ck.metrics["eval"]["psnr_mean"] == r["psnr_mean"] and ck.metrics["eval"]["steps"] == 1
    assert ck.metrics["loss"] == orig.metrics["loss"]  # the training metrics are kept
    for part in orig.tensors:
        for k, v in orig.tensors[part].items():
            if v.is_floating_point():
                torch.testing.assert_close(ck.tensors[part][k], v, rtol=1e-3, atol=1e-4)  # fp16 rounding
            else:
                assert torch.equal(ck.tensors[part][k], v)


def test_eval_write_model_makes_the_evaluated_settings_the_models_defaults(trained, tmp_path):
    from engine.session import Session

    out = tmp_path / "g2.safetensors"
    r = run_eval(trained, tmp_path / "o.json", "--write-model", out, "--steps", "2", "--guidance", "2.0")
    assert (r["steps"], r["guidance"]) == (2, 2.0)
    ck = load_checkpoint(out)
    assert (ck.config.world_model.sampling_steps, ck.config.world_model.guidance) == (2, 2.0)
    s = Session(out)
    assert (s.steps, s.guidance) == (2, 2.0)          # what play and bench run with no flags
    s = Session(out, steps=1, guidance=1.0)
    assert (s.steps, s.guidance) == (1, 1.0)          # flags still win
    assert run_eval(trained, tmp_path / "again.json", model=out)["guidance"] == 2.0  # eval re-scores alike


def test_eval_metrics_do_not_depend_on_batch(trained, tmp_path):
    one = run_eval(trained, tmp_path / "b1.json", "--batch", "1", "--horizon", "1")
    all_together = run_eval(trained, tmp_path / "b16.json", "--batch", "16", "--horizon", "1")
    # the same noise per rollout whatever the batch; only float rounding of batched matmuls may differ
    assert one["psnr"] == pytest.approx(all_together["psnr"], rel=1e-6)


@pytest.mark.parametrize("extra,needle", [
    (["--horizon", "0"], "--horizon must be >= 1"),
    (["--horizon", "500"], "no episode has 502 frames"),
    (["--steps", "0"], "steps must be in 1..4"),
])
def test_eval_bad_options_give_one_line_errors(trained, tmp_path, capsys, extra, needle):
    capsys.readouterr()
    argv = ["eval", "--model", trained.model, "--data", trained.data, "--json", tmp_path / "o.json", "--threads", "1",
            "--idm-steps", "1", *extra]
    if "--horizon" not in extra:
        argv += ["--horizon", "1"]
    assert cli(*argv) == 1
    err = capsys.readouterr().err
    assert "reverie eval: error:" in err and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "o.json").exists()


def test_rollout_returns_generated_and_real_side_by_side(trained):
    from train.data import EpisodeSource

    src = EpisodeSource(trained.data)
    sess = Session(trained.model, batch=2, steps=1, cuda_graph=False)
    frames = np.stack([src.episode_frames(e)[:5] for e in range(2)])  # (2, 5, 64, 64, 3)
    actions = np.stack([src.actions[e][:5] for e in range(2)])
    gen, real = rollout(sess, frames, actions, context=2, horizon=3)
    assert gen.shape == real.shape == (2, 3, 64, 64, 3) and gen.dtype == np.uint8
    assert np.array_equal(real, frames[:, 2:5])


# ---------------------------------------------------------------------------------------------------------------
# Metric functions
# ---------------------------------------------------------------------------------------------------------------
def images(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_psnr_identical_is_high_and_known_value():
    a = images(2, 16, 16)
    assert (psnr(a, a) >= 99).all()
    b = a.astype(np.int16)
    b = np.where(b < 255, b + 1, b - 1).astype(np.uint8)  # every value off by exactly 1
    np.testing.assert_allclose(psnr(a, b), 20 * np.log10(255), rtol=1e-9)  # 48.13 dB
    assert psnr(images(3, 4, 16, 16), images(3, 4, 16, 16, seed=1)).shape == (3, 4)


def test_ssim_identical_is_one_and_lower_for_worse_copies():
    a = images(2, 32, 32)
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-9)
    rng = np.random.default_rng(1)
    mild = np.clip(a.astype(np.int16) + rng.integers(-10, 11, a.shape), 0, 255).astype(np.uint8)
    s_mild, s_other = ssim(a, mild), ssim(a, images(2, 32, 32, seed=2))
    assert (s_mild < 1).all() and (s_other < s_mild).all()
    assert ssim(images(3, 2, 16, 16), images(3, 2, 16, 16, seed=3)).shape == (3, 2)
    np.testing.assert_allclose(ssim(a, mild), ssim(mild, a), rtol=1e-9)  # symmetric


def test_ssim_of_flat_images():
    gray = np.full((1, 16, 16, 3), 128, np.uint8)
    np.testing.assert_allclose(ssim(gray, gray), 1.0, atol=1e-9)
    assert ssim(gray, np.full_like(gray, 30))[0] < 0.5


def test_eval_windows_are_evenly_spaced_and_non_overlapping():
    src = SimpleNamespace(lengths=[41, 41, 5, 20])
    wins = windows(src, need=6, per_episode=3, max_episodes=0)
    assert [e for e, _ in wins] == [0, 0, 0, 1, 1, 1, 3, 3, 3]  # episode 2 is too short
    for e in (0, 1, 3):
        starts = [s for ee, s in wins if ee == e]
        assert starts[0] == 0 and starts[-1] + 6 <= src.lengths[e]
        assert all(b - a >= 6 for a, b in zip(starts, starts[1:]))
    assert windows(src, need=6, per_episode=10, max_episodes=1) == [(0, 7 * i) for i in range(6)]  # capped: 41 // 6
    assert windows(src, need=50, per_episode=1, max_episodes=0) == []
