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
from cli_main import cli

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.session import Session
from train.evaluation.evaluate import reconstruct, ssim, windows
from train.training.rollout import psnr, rollout


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
    assert 0 <= af["generated"] <= 1 and 0 <= af["real"] <= 1
    assert "trained on --data for 5 steps" in af["idm"]
    # a 5-step IDM reads no better than chance: eval says the measure is unavailable and why, and gives no ratio
    assert af["real"] < af["judge_needs"] and af["available"] is False and af["ratio"] is None
    assert "chance level" in af["unavailable_because"]
    # the autoencoder where the frame changed, and per probe how often its reconstruction keeps what the frame shows
    small = r["ae_small_objects"]
    assert small["pairs"] > 0 and 0 <= small["changed_share"] <= 1
    assert set(small["objects"]) == set(r["objects"])
    assert len(r["objects"]["avatar"]["position_error_px"]) == 1
    assert r["steps"] == 1 and r["guidance"] == 1.0 and r["horizon"] == 2 and r["context"] == 2  # context = W/2
    assert r["episodes"] == 2 and r["rollouts"] == 2 and r["frames"] == 2 * 2
    assert r["psnr_step1"] == pytest.approx(r["psnr"][0])
    assert r["psnr_mean"] == pytest.approx(np.mean(r["psnr"])) and r["ssim_mean"] == pytest.approx(np.mean(r["ssim"]))
    assert all(math.isfinite(x) for x in finite_numbers(r))
    plot = trained.root / "eval.png"
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the long-horizon report, for a short horizon: one bucket, probes and control from the real starts
    (bucket,) = r["horizon_buckets"]
    assert (bucket["first"], bucket["last"], bucket["frames"]) == (1, 2, 4) and bucket["psnr"] == r["psnr_mean"]
    avatar = r["objects"]["avatar"]
    assert isinstance(avatar["visible_real"], float) and len(avatar["visible_dream"]) == 1
    assert all({"real_px", "dream_px"} <= set(r["control"][d]) for d in ("up", "down", "left", "right"))
    assert r["control_after_dream"] is None                      # not a long dream
    assert Path(r["video"]) == trained.root / "eval_dream.gif" and Path(r["video"]).exists()


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
    (["--context", "41"], "no episode has 42 frames"),
    (["--data", "/nonexistent/reverie-data"], "--data /nonexistent/reverie-data"),
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
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("flag,value", [
    ("--horizon", "0"), ("--steps", "0"), ("--steps", "5"), ("--guidance", "nan"), ("--guidance", "inf"),
    ("--guidance", "-1"), ("--context-noise", "nan"), ("--context-noise", "2"), ("--batch", "0"), ("--seed", "-1"),
    ("--threads", "0"), ("--rollouts-per-episode", "0"), ("--horizon", "x"),
])
def test_eval_bad_knobs_are_refused_before_the_run(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:     # argparse: exit 2 with the flag named, no traceback
        cli("eval", "--data", tmp_path, "--json", tmp_path / "o.json", flag, value)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "error" in err and "Traceback" not in err, err
    assert not (tmp_path / "o.json").exists()


def test_eval_json_into_a_new_folder_and_an_unwritable_one(trained, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "e.json"
    run_eval(trained, out, "--horizon", "1")
    assert out.exists() and out.with_suffix(".png").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    capsys.readouterr()
    assert cli("eval", "--model", trained.model, "--data", trained.data, "--json", blocker / "e.json",
               "--threads", "1") == 1
    err = capsys.readouterr().err
    assert "--json" in err and str(blocker) in err and "Traceback" not in err, err


def test_reconstruct_works_with_a_bfloat16_autoencoder():
    """What `reverie eval --device cuda` runs: the session casts the decoder (and may cast the encoder) to
    bfloat16; the ceiling must feed each part its own dtype (fp32 latents into a bf16 decoder used to fail)."""
    from tiny_model import tiny_models

    ae, _ = tiny_models()
    ae.eval()
    frames = images(3, 32, 32)
    ref = reconstruct(ae, frames, "cpu")
    assert ref.shape == frames.shape and ref.dtype == np.uint8
    ae.decoder.to(torch.bfloat16)                       # the session on CUDA
    half_dec = reconstruct(ae, frames, "cpu")
    ae.encoder.to(torch.bfloat16)
    half_all = reconstruct(ae, frames, "cpu")
    for got in (half_dec, half_all):
        assert got.shape == frames.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - ref.astype(int)).mean() < 4   # bf16 rounding, not garbage


def test_eval_with_a_bfloat16_session_decoder(trained, tmp_path, monkeypatch):
    """The whole eval path with the session's decoder in bfloat16 on the CPU, as it is on CUDA."""
    from train.evaluation import evaluate

    class Bf16Session(Session):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.ae.decoder.to(torch.bfloat16)

    monkeypatch.setattr(evaluate, "Session", Bf16Session)
    r = run_eval(trained, tmp_path / "bf16.json", "--horizon", "1")
    assert 0 < r["ae_psnr"] <= 100


def test_plot_labels_keep_their_dots_and_spaces(tmp_path):
    """The plot's text keeps a visible gap for a space and a separate mark for a dot (Pillow's 10 px default
    font drew "a.b c" as "a.bc" with the dot touching its neighbours)."""
    from PIL import Image

    from train.pictures.images import line_plot

    def title_ink(title: str) -> list[tuple[int, int]]:
        """Column runs of ink in the title band of a plot titled `title`: [(first, end), ...]."""
        path = line_plot(tmp_path / "t.png", {"y": [1.0, 2.0]}, title=title)
        band = np.asarray(Image.open(path).convert("L"))[:27, 55:] < 160   # above the plot frame, right of the axis
        cols = band.any(axis=0)
        runs, start = [], None
        for x, ink in enumerate([*cols, False]):
            if ink and start is None:
                start = x
            elif not ink and start is not None:
                runs.append((start, x))
                start = None
        return runs

    spaced, joined = title_ink("l l"), title_ink("ll")
    assert len(spaced) == 2 and len(joined) == 2
    space_gap, letter_gap = spaced[1][0] - spaced[0][1], joined[1][0] - joined[0][1]
    assert space_gap >= letter_gap + 3, (space_gap, letter_gap)       # a space is seen as a space
    dotted = title_ink("l.l")
    assert len(dotted) == 3, dotted                                    # l, the dot, l: three marks
    assert all(b - a >= 1 for a, b in dotted)


def test_rollout_returns_generated_and_real_side_by_side(trained):
    from train.data.windows import EpisodeSource

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


def test_eval_with_a_decoder_trained_for_the_models_latents(trained, tmp_path, capsys):
    """`train ae --init MODEL --set freeze_encoder=true` then `eval --ae`: the model is scored and written with the new
    decoder, its encoder and world model untouched; a decoder from another encoder is refused, nothing written."""
    new = tmp_path / "dec"
    common = ["--data", trained.data, "--steps", "2", "--batch", "2", "--threads", "1", "--lr", "0.01"]
    assert cli("train", "ae", "--out", new, "--init", trained.model, "--set", "freeze_encoder=true", *common) == 0
    r = run_eval(trained, tmp_path / "e.json", "--ae", new / "ae.safetensors", "--write-model",
                 tmp_path / "m.safetensors")
    assert r["decoder_from"] == str(new / "ae.safetensors")
    model, dec, written = (load_checkpoint(p) for p in (trained.model, new / "ae.safetensors",
                                                         tmp_path / "m.safetensors"))
    for k, v in written.tensors["ae"].items():
        want = (dec if k.startswith("decoder.") else model).tensors["ae"][k]
        assert torch.equal(v, want), k
    assert any(not torch.equal(dec.tensors["ae"][k], model.tensors["ae"][k]) for k in dec.tensors["ae"]
               if k.startswith("decoder."))
    assert all(torch.equal(v, model.tensors["wm"][k]) for k, v in written.tensors["wm"].items())

    # an autoencoder whose encoder moved: the world model would read latents it never saw
    moved = tmp_path / "both"
    assert cli("train", "ae", "--out", moved, "--init", trained.model, *common) == 0
    capsys.readouterr()
    rc = cli("eval", "--model", trained.model, "--data", trained.data, "--json", tmp_path / "x.json", "--ae",
             moved / "ae.safetensors", "--horizon", "2", "--threads", "1")
    err = capsys.readouterr().err
    assert rc == 1 and "--ae" in err and "encoder differs" in err and "freeze_encoder=true" in err, err
    assert not (tmp_path / "x.json").exists()
