"""Run folders and flags of `reverie train`: a folder belongs to one stage, changed flags are refused unless asked,
paths are checked before any work, and all of it is said in one line through the `reverie` dispatcher.
Also the pieces the training loop stands on: the seeding rule, stats kept on the device, the device-side guard.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reverie_cli
from train.training.config import STREAMS, TrainConfig, TrainingError, seed_for, step_generator
from train.training.loop import Dist, Running, fit
from train.training.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def reverie(capsys, *argv: str) -> tuple[int, str]:
    """Run `reverie ...` in-process; (exit code, stderr)."""
    torch.manual_seed(0)
    capsys.readouterr()
    rc = reverie_cli.main(list(argv))
    return rc, capsys.readouterr().err


def one_line_error(err: str, stage: str) -> str:
    """The error a command printed: exactly one line, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"reverie train {stage}: error: "), err
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time: to prove nothing was touched."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rec") / "d"
    assert reverie_cli.main(["record", "--env", "builtin:gems", "--agent", "scripted", "--episodes", "2", "--steps",
                             "40", "--size", "64", "--out", str(out), "--seed", "1", "--no-progress"]) == 0
    return out


def ae_argv(recorded: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "ae", "--data", str(recorded), "--out", str(out), "--steps", "2", "--batch", "2", "--threads",
            "1", "--set", "save_every=1", *extra]


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory, recorded) -> Path:
    out = tmp_path_factory.mktemp("ae") / "run"
    torch.manual_seed(0)
    assert reverie_cli.main(ae_argv(recorded, out)) == 0
    return out


# ---------------------------------------------------------------------------------------------------------------
# A run folder belongs to one stage
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["--no-resume"], ["--force"]])
def test_another_stages_folder_is_refused_and_left_untouched(recorded, ae_run, capsys, extra):
    before = snapshot(ae_run)
    config = (ae_run / "config.json").read_bytes()
    rc, err = reverie(capsys, "train", "idm", "--data", str(recorded), "--out", str(ae_run), "--steps", "3",
                      "--batch", "2", "--threads", "1", *extra)
    assert rc == 1
    line = one_line_error(err, "idm")
    assert f"--out {ae_run}" in line and "'reverie train ae'" in line and "pick another --out" in line, line
    assert (ae_run / "config.json").read_bytes() == config
    assert snapshot(ae_run) == before  # no state written, none removed, no idm.safetensors


def test_wm_refuses_an_ae_folder_before_encoding(recorded, ae_run, capsys, monkeypatch):
    import train.training.wm

    monkeypatch.setattr(train.training.wm, "encode_dataset", lambda *a, **kw: pytest.fail("encoded"))
    before = snapshot(ae_run)
    rc, err = reverie(capsys, "train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out", str(ae_run),
                      "--steps", "1", "--batch", "2", "--threads", "1")
    assert rc == 1 and "'reverie train ae'" in one_line_error(err, "wm")
    assert snapshot(ae_run) == before


# ---------------------------------------------------------------------------------------------------------------
# Changed flags on resume
# ---------------------------------------------------------------------------------------------------------------
def test_changed_flag_is_refused_unless_forced(tmp_path, recorded, capsys):
    out = tmp_path / "r"
    assert reverie(capsys, *ae_argv(recorded, out))[0] == 0
    config = (out / "config.json").read_bytes()
    states = snapshot(out / "state")

    rc, err = reverie(capsys, *ae_argv(recorded, out, "--set", "crop=32", "--lr", "0.002"))
    assert rc == 1
    line = one_line_error(err, "ae")
    assert "crop 0 -> 32" in line and "lr 0.001 -> 0.002" in line and "--force" in line, line
    assert (out / "config.json").read_bytes() == config and snapshot(out / "state") == states

    # the same flags resume; so do the ones that only say how long and how often
    rc, _ = reverie(capsys, *ae_argv(recorded, out, "--steps", "3", "--set", "log_every=2", "--threads", "2"))
    assert rc == 0
    assert json.loads((out / "state" / "manifest.json").read_text())["step"] == 3

    # --force resumes with the new value and says what changed
    capsys.readouterr()
    torch.manual_seed(0)
    assert reverie_cli.main(ae_argv(recorded, out, "--steps", "4", "--set", "crop=32", "--force")) == 0
    said = capsys.readouterr().out
    assert "crop 0 -> 32" in said and "resuming from" in said
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["flags"]["crop"] == 32 and cfg["crop"] == 32 and cfg["train"]["steps"] == 4


def test_no_resume_starts_over_with_changed_flags(tmp_path, recorded, capsys):
    out = tmp_path / "r"
    assert reverie(capsys, *ae_argv(recorded, out))[0] == 0
    rc, _ = reverie(capsys, *ae_argv(recorded, out, "--set", "seed=5", "--steps", "1", "--no-resume"))
    assert rc == 0
    assert json.loads((out / "config.json").read_text())["flags"]["seed"] == 5
    assert sorted(p.name for p in (out / "state").glob("step_*")) == ["step_00000001"]


def test_run_dir_claim_unit(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.claim("ae", {"crop": 0}) == []  # a new folder
    run.write_config({"stage": "ae", "flags": {"crop": 0, "steps": 2}})
    assert run.claim("ae", {"crop": 32, "steps": 2}) == []  # nothing saved yet: nothing to resume
    run.state_root.mkdir()
    (run.state_root / "step_00000002").mkdir()
    (run.state_root / "step_00000002" / "state.json").write_text("{}")
    (run.state_root / "manifest.json").write_text(json.dumps({"latest": "step_00000002", "step": 2}))
    assert run.claim("ae", {"crop": 0, "steps": 9}) == []
    with pytest.raises(TrainingError, match="crop 0 -> 32"):
        run.claim("ae", {"crop": 32, "steps": 2})
    assert run.claim("ae", {"crop": 32}, force=True) == ["crop 0 -> 32"]
    assert run.claim("ae", {"crop": 32}, fresh=True) == []
    with pytest.raises(TrainingError, match="'reverie train ae'"):
        run.claim("wm", {"crop": 0})


def test_a_state_of_another_model_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path)
    small = torch.nn.Linear(3, 2)
    run.save_state(1, small, torch.optim.AdamW(small.parameters()), keep=2, extra={})
    other = torch.nn.Linear(4, 2)
    with pytest.raises(TrainingError, match="does not fit the model being trained.*--no-resume"):
        run.load_state(run.latest(), other, torch.optim.AdamW(other.parameters()))


# ---------------------------------------------------------------------------------------------------------------
# Paths are checked before any work, and the error names the flag typed
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--init", "--ae", "--idm", "--data"])
def test_missing_path_fails_fast_naming_its_flag(tmp_path, recorded, ae_run, capsys, monkeypatch, flag):
    import train.data.windows
    import train.training.wm

    monkeypatch.setattr(train.training.wm, "encode_dataset", lambda *a, **kw: pytest.fail("encoded"))
    monkeypatch.setattr(train.data.windows, "EpisodeSource", lambda *a, **kw: pytest.fail("read the episodes"))
    missing = str(tmp_path / "nonexist")
    paths = {"--data": str(recorded), "--ae": str(ae_run), "--idm": None, "--init": None, flag: missing}
    argv = ["train", "wm", "--out", str(tmp_path / "wm"), "--steps", "1", "--batch", "2", "--threads", "1"]
    for k, v in paths.items():
        argv += [k, v] if v else []
    rc, err = reverie(capsys, *argv)
    assert rc == 1
    line = one_line_error(err, "wm")
    assert f"{flag} {missing}" in line and "--model" not in line, line
    assert not (tmp_path / "wm").exists()


def test_missing_data_fails_fast_for_every_stage(tmp_path, capsys):
    for stage in ("ae", "idm"):
        rc, err = reverie(capsys, "train", stage, "--data", str(tmp_path / "none"), "--out", str(tmp_path / stage))
        assert rc == 1 and f"--data {tmp_path / 'none'}: no such folder" in one_line_error(err, stage)
        assert not (tmp_path / stage).exists()


# ---------------------------------------------------------------------------------------------------------------
# The stages and the CLI: no import cycle
# ---------------------------------------------------------------------------------------------------------------
def test_stages_do_not_import_the_cli():
    code = ("import sys, train.training.ae, train.training.wm, train.training.idm; "
            "assert 'train.training.cli' not in sys.modules, 'a stage imported train.training.cli'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# The one seeding rule
# ---------------------------------------------------------------------------------------------------------------
def test_seed_for_is_a_pure_function_with_independent_streams():
    seeds = {seed_for(s, k, r, st) for s in (0, 1) for k in (0, 1, 1_000_003) for r in (0, 1) for st in STREAMS}
    assert len(seeds) == 2 * 3 * 2 * len(STREAMS)  # no collisions such as seed + rank == (seed + 1) + (rank - 1)
    assert all(0 <= x < 2**63 for x in seeds)
    assert seed_for(3, 7, 1, "noise") == seed_for(3, 7, 1, "noise")
    a, b = step_generator(0, 5), step_generator(0, 5)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    with pytest.raises(KeyError):
        seed_for(0, stream="nope")


# ---------------------------------------------------------------------------------------------------------------
# Stats stay on the device; the device-side non-finite guard
# ---------------------------------------------------------------------------------------------------------------
def test_stage_stats_are_tensors_and_empty_bins_are_left_out():
    from engine.inverse_dynamics import accuracy, action_accuracy
    from train.training.wm_loss import tau_bin_stats

    stats = {"tau": torch.tensor([0.1, 0.15, 0.9, 0.5]), "loss": torch.tensor([1.0, 3.0, 5.0, 7.0]),
             "shortcut": torch.tensor([False, False, False, True]), "level": torch.tensor([6, 6, 6, 0])}
    out = tau_bin_stats(stats)
    assert out["loss_d1"].item() == 7.0  # the self-consistency loss at d = 1, the step 1-step sampling takes
    assert all(torch.is_tensor(v) and v.dim() == 0 for v in out.values())
    assert out["loss_tau0"].item() == 2.0 and out["loss_tau3"].item() == 5.0 and out["loss_shortcut"].item() == 7.0
    assert torch.isnan(out["loss_tau1"]) and torch.isnan(out["loss_tau2"])  # no sample in these bins
    pred, target = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.is_tensor(accuracy(pred, target, 2)) and action_accuracy(pred, target, 2) == 0.5

    running = Running()
    running.add(out)
    running.add({"loss_tau1": torch.tensor(4.0), "loss_tau0": torch.tensor(4.0)})
    running.add({"loss_tau1": torch.tensor(100.0)}, ok=torch.tensor(False))  # a skipped step counts for nothing
    means, counts = running.reduce()
    assert means["loss_tau0"] == 3.0 and means["loss_tau1"] == 4.0 and "loss_tau2" not in means
    assert counts["loss_tau0"] == 2.0 and counts["loss_tau1"] == 1.0


def guard_setup(bad_steps: set[int]):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def batch_fn(step, d):
        snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}  # weights after step - 1
        return step

    def loss_fn(m, step):
        loss = torch.nn.functional.mse_loss(m(x), y)
        return (loss * float("nan") if step in bad_steps else loss), {"twice": loss.detach() * 2}

    return model, batch_fn, loss_fn, snapshots


def tcfg_for(steps: int, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(steps=steps, batch=2, lr=1e-2, warmup=1, save_every=1, log_every=1,
                                 keep_states=10), **kw})


def new_run(root: Path) -> RunDir:
    run = RunDir(root)
    run.write_config({"test": True})
    return run


def test_device_guard_skips_bad_steps_without_a_per_step_read(tmp_path):
    """The CUDA path (fused optimizer's found_inf, counters read at log time), run on CPU."""
    bad = {1, 2, 4}
    model, batch_fn, loss_fn, snaps = guard_setup(bad)
    run = new_run(tmp_path)
    last = fit(run=run, model=model, tcfg=tcfg_for(6, max_bad_steps=3, log_every=3, save_every=3), device=CPU,
               dist_info=Dist(), batch_fn=batch_fn, loss_fn=loss_fn, sync_guard=False)
    snaps[6] = model.state_dict()
    for step in range(6):
        unchanged = all(torch.equal(snaps[step][k], snaps[step + 1][k]) for k in snaps[step])
        assert unchanged == (step in bad), f"step {step}: weights {'un' if unchanged else ''}changed"
    from safetensors.torch import load_file

    optim = load_file(str(run.state_root / "step_00000006" / "optim.state"))
    assert {float(v) for k, v in optim.items() if k.endswith("/step")} == {3.0}  # only the good steps counted
    rows = [json.loads(line) for line in (run.root / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_steps"]) for r in rows if "skipped_steps" in r] == [(3, 2.0), (6, 1.0)]
    logged = [r for r in rows if "loss" in r]
    assert [r["step"] for r in logged] == [3, 6] and all(r["twice"] == pytest.approx(2 * r["loss"]) for r in logged)
    assert last["loss"] == logged[-1]["loss"] and last["steps_done"] == 6.0


def test_device_guard_stops_after_too_many_bad_steps_in_a_row(tmp_path):
    model, batch_fn, loss_fn, snaps = guard_setup({2, 3, 4, 5})
    with pytest.raises(TrainingError, match="3 steps.*3 in a row.*Lower --lr"):
        fit(run=new_run(tmp_path), model=model, tcfg=tcfg_for(8, max_bad_steps=3), device=CPU, dist_info=Dist(),
            batch_fn=batch_fn, loss_fn=loss_fn, sync_guard=False)
    assert max(snaps) == 4  # read at every step here (log_every=1): stopped at the third bad step
    assert all(torch.equal(snaps[2][k], v) for k, v in model.state_dict().items())  # never stepped on NaN


# ---------------------------------------------------------------------------------------------------------------
# A new decoder for the latents a world model already reads
# ---------------------------------------------------------------------------------------------------------------
def ae_parts(path: Path) -> tuple[dict, dict]:
    """(encoder, decoder) tensors of an autoencoder checkpoint, as float32."""
    from engine.checkpoint import load_checkpoint

    ae = {k: v.float() for k, v in load_checkpoint(path).tensors["ae"].items()}
    return ({k: v for k, v in ae.items() if k.startswith("encoder.")},
            {k: v for k, v in ae.items() if k.startswith("decoder.")})


def test_decoder_only_training_keeps_the_encoder_bit_for_bit(tmp_path, recorded, ae_run, capsys):
    start = ae_run / "ae.safetensors"
    out = tmp_path / "dec"
    rc, err = reverie(capsys, *ae_argv(recorded, out, "--init", str(start), "--set", "freeze_encoder=true", "--lr",
                                      "0.01"))
    assert rc == 0, err
    enc0, dec0 = ae_parts(start)
    enc1, dec1 = ae_parts(out / "ae.safetensors")
    assert all(torch.equal(enc0[k], enc1[k]) for k in enc0)
    assert sum(not torch.equal(dec0[k], dec1[k]) for k in dec0) > len(dec0) // 2   # the decoder did train

    # without --freeze-encoder the same start trains both halves
    rc, _ = reverie(capsys, *ae_argv(recorded, tmp_path / "both", "--init", str(start), "--lr", "0.01"))
    assert rc == 0
    enc2, _ = ae_parts(tmp_path / "both" / "ae.safetensors")
    assert any(not torch.equal(enc0[k], enc2[k]) for k in enc0)


@pytest.mark.parametrize("case", ["no_init", "missing", "not_a_checkpoint"])
def test_bad_init_is_one_line_naming_the_flag(tmp_path, recorded, ae_run, capsys, case):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    argv = {"no_init": ["--set", "freeze_encoder=on"],
            "missing": ["--init", str(tmp_path / "none.safetensors")],
            "not_a_checkpoint": ["--init", str(junk)]}[case]
    out = tmp_path / "r"
    rc, err = reverie(capsys, *ae_argv(recorded, out, *argv))
    assert rc == 1
    line = one_line_error(err, "ae")
    assert "--init" in line, line
    assert not (out / "ae.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------------
# patch: tokens per frame
# ---------------------------------------------------------------------------------------------------------------
def test_patch_1_trains_a_model_with_a_token_per_latent_cell_that_plays(tmp_path, recorded, ae_run, capsys):
    import numpy as np

    from engine.checkpoint import load_checkpoint
    from engine.session import Session

    out = tmp_path / "wm"
    rc, err = reverie(capsys, "train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out", str(out),
                      "--steps", "1", "--batch", "2", "--threads", "1", "--window", "4", "--set", "patch=1")
    assert rc == 0, err
    wm = load_checkpoint(out / "model.safetensors").config.world_model
    assert (wm.patch, wm.tokens_per_frame, wm.token_dim) == (1, 64, 16)
    sess = Session(out / "model.safetensors", backend="torch", threads=1)
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    sess.reset(frames, np.zeros((2, sess.spec.size), np.float32))
    frame = sess.step(sess.spec.encode(["right"]))
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8

    # a patch-2 model cannot warm-start a patch-1 one: one line naming --init
    rc, err = reverie(capsys, "train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out",
                      str(tmp_path / "wm2"), "--steps", "1", "--batch", "2", "--threads", "1", "--window", "4",
                      "--init", str(out / "model.safetensors"))
    assert rc == 1
    line = one_line_error(err, "wm")
    assert "--init" in line and "patch 2" in line and "16 latent values" in line and "--set patch=P" in line, line
    assert not (tmp_path / "wm2").exists()


def test_a_patch_that_does_not_split_the_latent_grid_is_refused(tmp_path, recorded, ae_run, capsys):
    rc, err = reverie(capsys, "train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out",
                      str(tmp_path / "wm"), "--steps", "1", "--batch", "2", "--threads", "1", "--set", "patch=3")
    assert rc == 1
    line = one_line_error(err, "wm")
    assert "--set patch=3" in line and "1, 2, 4, 8" in line, line
    assert not (tmp_path / "wm").exists()


# ---------------------------------------------------------------------------------------------------------------
# fresh_actions: a warm start that learns the actions anew
# ---------------------------------------------------------------------------------------------------------------
def test_fresh_actions_keeps_the_pretrained_frames_and_starts_the_action_inputs_from_zero(tmp_path, recorded, ae_run,
                                                                                        capsys):
    from safetensors.torch import save_file

    from engine.checkpoint import load_checkpoint
    from engine.world_model import ACTION_INPUTS

    base = ["train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--batch", "2", "--threads", "1",
            "--window", "4"]
    rc, err = reverie(capsys, *base, "--out", str(tmp_path / "pre"), "--steps", "2", "--lr", "0.01")
    assert rc == 0, err
    pre = {k: v.float() for k, v in load_checkpoint(tmp_path / "pre" / "model.safetensors").tensors["wm"].items()}
    assert pre["head.action_in.weight"].abs().max() > 0.05     # the pretrained model reads its actions

    rc, err = reverie(capsys, *base, "--out", str(tmp_path / "fresh"), "--steps", "1", "--lr", "1e-6", "--init",
                      str(tmp_path / "pre" / "model.safetensors"), "--set", "fresh_actions=true")
    assert rc == 0, err
    fresh = {k: v.float() for k, v in load_checkpoint(tmp_path / "fresh" / "model.safetensors").tensors["wm"].items()}
    for name in ACTION_INPUTS:       # one step of lr 1e-6 away from zero
        assert fresh[name].abs().max() < 1e-4, name
    others = [k for k in pre if k not in ACTION_INPUTS and k not in ("latent_mean", "latent_std")]
    assert others and all((fresh[k] - pre[k]).abs().max() < 1e-4 for k in others)

    # a model that reads actions of another size: refused with the way out named, then taken with fresh_actions
    wider = dict(pre)
    for name in ("backbone.action_in.weight", "head.action_in.weight", "head.action_tokens.weight"):
        wider[name] = torch.cat([pre[name], pre[name][:, :2]], dim=1)
    save_file(wider, str(tmp_path / "six_buttons.state"))
    rc, err = reverie(capsys, *base, "--out", str(tmp_path / "six"), "--steps", "1", "--init",
                      str(tmp_path / "six_buttons.state"))
    assert rc == 1
    line = one_line_error(err, "wm")
    assert "--init" in line and "6 values" in line and "--set fresh_actions=true" in line, line
    assert not (tmp_path / "six").exists()
    rc, err = reverie(capsys, *base, "--out", str(tmp_path / "six"), "--steps", "1", "--init",
                      str(tmp_path / "six_buttons.state"), "--set", "fresh_actions=true")
    assert rc == 0, err


def test_a_model_file_as_ae_passes_on_the_autoencoders_metrics_not_its_own_losses(tmp_path, recorded, ae_run, capsys):
    """A fine-tune reads its autoencoder from the model it refines (`--ae MODEL --init MODEL`): the new model file
    carries that autoencoder's PSNR, not the old world model's training losses under the autoencoder's name."""
    from engine.checkpoint import load_checkpoint

    base = ["train", "wm", "--data", str(recorded), "--batch", "2", "--threads", "1", "--window", "4", "--steps", "1"]
    rc, err = reverie(capsys, *base, "--ae", str(ae_run), "--out", str(tmp_path / "pre"))
    assert rc == 0, err
    pre = tmp_path / "pre" / "model.safetensors"
    ae_metrics = load_checkpoint(pre).extra["ae_metrics"]
    assert "psnr" in ae_metrics and "loss_tau0" not in ae_metrics
    rc, err = reverie(capsys, *base, "--ae", str(pre), "--init", str(pre), "--out", str(tmp_path / "ft"))
    assert rc == 0, err
    assert load_checkpoint(tmp_path / "ft" / "model.safetensors").extra["ae_metrics"] == ae_metrics



def test_a_warm_start_on_another_encoders_latents_is_refused(tmp_path, recorded, ae_run, capsys):
    """`--init MODEL --ae OTHER`: MODEL's world model reads the latents of its own encoder, so an --ae with another
    encoder is refused before any work, saying what to pass; an autoencoder whose decoder alone was retrained
    (freeze_encoder) keeps the encoder and is taken, and so is one trained on from it. The same holds for --init of a
    training run, whose config.json records the autoencoder it was trained with."""
    from engine.checkpoint import load_checkpoint

    base = ["train", "wm", "--data", str(recorded), "--batch", "2", "--threads", "1", "--window", "4", "--steps", "1"]
    rc, err = reverie(capsys, *base, "--ae", str(ae_run), "--out", str(tmp_path / "pre"))
    assert rc == 0, err
    pre = tmp_path / "pre" / "model.safetensors"
    assert reverie(capsys, *ae_argv(recorded, tmp_path / "other", "--set", "seed=1"))[0] == 0   # another encoder
    rc, err = reverie(capsys, *ae_argv(recorded, tmp_path / "decoder", "--init", str(ae_run / "ae.safetensors"),
                                       "--set", "freeze_encoder=true"))              # the same encoder, a new decoder
    assert rc == 0, err
    for init in (pre, tmp_path / "pre"):                                             # a model file, a run folder
        out = tmp_path / f"foreign_{init.name}"
        rc, err = reverie(capsys, *base, "--ae", str(tmp_path / "other"), "--init", str(init), "--out", str(out))
        assert rc == 1
        line = one_line_error(err, "wm")
        assert f"--ae {tmp_path / 'other'}" in line and "is not the one" in line and "leave --init out" in line, line
        assert "--ae " + (str(pre) if init == pre else str(ae_run / "ae.safetensors")) in line, line
        assert not out.exists()
    rc, err = reverie(capsys, *base, "--ae", str(tmp_path / "decoder"), "--init", str(pre), "--out",
                      str(tmp_path / "ok"))
    assert rc == 0, err
    # an autoencoder trained on from the model's (`train ae --init`, encoder and all) descends from its encoder: taken
    rc, err = reverie(capsys, *ae_argv(recorded, tmp_path / "tuned", "--init", str(pre), "--lr", "0.01"))
    assert rc == 0, err
    assert not torch.equal(*(load_checkpoint(p).tensors["ae"]["encoder.out.0.conv1.bias"]
                             for p in (pre, tmp_path / "tuned" / "ae.safetensors")))
    rc, err = reverie(capsys, *base, "--ae", str(tmp_path / "tuned"), "--init", str(pre), "--out",
                      str(tmp_path / "ok2"))
    assert rc == 0, err

def test_fresh_actions_without_init_is_refused(tmp_path, recorded, ae_run, capsys):
    rc, err = reverie(capsys, "train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out",
                      str(tmp_path / "wm"), "--steps", "1", "--batch", "2", "--threads", "1", "--set",
                      "fresh_actions=true")
    assert rc == 1
    line = one_line_error(err, "wm")
    assert "--set fresh_actions=true" in line and "--init" in line, line
    assert not (tmp_path / "wm").exists()


# ---------------------------------------------------------------------------------------------------------------
# object_weight: the loss weighs the tokens that hold what a player looks at
# ---------------------------------------------------------------------------------------------------------------
def test_object_weight_trains_on_a_game_with_probes_and_records_it(tmp_path, recorded, ae_run, capsys):
    from engine.checkpoint import load_checkpoint

    out = tmp_path / "wm"
    rc, err = reverie(capsys, "train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out", str(out),
                      "--steps", "2", "--batch", "2", "--threads", "1", "--window", "4", "--set", "object_weight=2",
                      "--set", "objects=avatar,enemies")
    assert rc == 0, err
    assert load_checkpoint(out / "model.safetensors").extra["loss"]["object_weight"] == 2.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)


@pytest.mark.parametrize("case", ["unknown_object", "objects_alone", "no_probes"])
def test_object_weight_refusals_are_one_line_and_touch_nothing(tmp_path, recorded, ae_run, capsys, case):
    data = recorded
    if case == "no_probes":  # the same episodes, said to be from a game that declares no probes
        from train.data.episodes import Episode, EpisodeWriter

        data = tmp_path / "other"
        data.mkdir()
        for f in sorted(recorded.glob("*.episode")):
            with Episode.open(f) as ep:
                frames, actions, spec = ep.frames(), ep.actions(), ep.spec
            with EpisodeWriter(data / f.name, env_id="gym:CartPole-v1", action_spec=spec,
                               frame_shape=frames.shape[1:]) as w:
                w.append(frames[0])
                for frame, action in zip(frames[1:], actions):
                    w.append(frame, action)
    flags = {"unknown_object": ["--set", "object_weight=1", "--set", "objects=avatar,ghost"],
             "objects_alone": ["--set", "objects=avatar"],
             "no_probes": ["--set", "object_weight=1"]}[case]
    rc, err = reverie(capsys, "train", "wm", "--data", str(data), "--ae", str(ae_run), "--out", str(tmp_path / "wm"),
                      "--steps", "1", "--batch", "2", "--threads", "1", "--window", "4", *flags)
    assert rc == 1
    line = one_line_error(err, "wm")
    want = {"unknown_object": ("--set objects=avatar,ghost", "ghost", "avatar, gems, enemies, score"),
            "objects_alone": ("--set objects=avatar", "object_weight"),
            "no_probes": ("--set object_weight", "gym:CartPole-v1", "builtin:gems")}[case]
    assert all(w in line for w in want), line
    assert not (tmp_path / "wm").exists()


# ---------------------------------------------------------------------------------------------------------------
# focus: a share of each batch from the windows where two probes meet in one token
# ---------------------------------------------------------------------------------------------------------------
def test_focused_windows_give_the_share_to_every_rank_and_fall_back_to_the_plain_draw():
    import numpy as np

    from train.data.windows import pick_focused_windows, pick_windows

    starts = [np.arange(100), np.arange(50)]
    focus = [np.array([3, 7]), np.array([], dtype=np.int64)]
    for batch, share in ((8, 0.5), (8, 0.75), (16, 0.75), (4, 1.0)):
        sel = pick_focused_windows(torch.Generator().manual_seed(1), starts, focus, batch, share)
        hits = [(e, s) in {(0, 3), (0, 7)} for e, s in sel]
        assert len(sel) == batch and sum(hits) >= round(share * batch)
        for rank in range(2):   # the slice each of 2 data-parallel ranks takes holds its half of the focus windows
            part = hits[rank * batch // 2:(rank + 1) * batch // 2]
            assert sum(part) >= round(share * batch) // 2
        again = pick_focused_windows(torch.Generator().manual_seed(1), starts, focus, batch, share)
        assert again == sel   # a pure function of the step's generator: resumed runs see the same windows
    empty = [np.array([], dtype=np.int64)] * 2
    assert (pick_focused_windows(torch.Generator().manual_seed(2), starts, empty, 8, 0.5)
            == pick_windows(torch.Generator().manual_seed(2), starts, 8))


def test_focus_trains_on_the_windows_where_the_probes_meet(tmp_path, recorded, ae_run, capsys):
    out = tmp_path / "wm"
    rc, err = reverie(capsys, "train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out", str(out),
                      "--steps", "2", "--batch", "2", "--threads", "1", "--window", "4", "--set",
                      "focus=avatar,enemies", "--set", "focus_share=0.5")
    said = capsys.readouterr().out if rc else ""
    assert rc == 0, err + said
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["flags"]["focus"] == "avatar,enemies"


@pytest.mark.parametrize("case", ["one_probe", "unknown", "share"])
def test_focus_refusals_are_one_line_and_touch_nothing(tmp_path, recorded, ae_run, capsys, case):
    flags = {"one_probe": ["--set", "focus=avatar"], "unknown": ["--set", "focus=avatar,ghost"],
             "share": ["--set", "focus=avatar,enemies", "--set", "focus_share=1.5"]}[case]
    rc, err = reverie(capsys, "train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out",
                      str(tmp_path / "wm"), "--steps", "1", "--batch", "2", "--threads", "1", "--window", "4", *flags)
    assert rc == 1
    line = one_line_error(err, "wm")
    want = {"one_probe": ("--set focus=avatar", "two different probes"),
            "unknown": ("--set focus=avatar,ghost", "ghost", "avatar, gems"),
            "share": ("--set focus_share=1.5", "(0, 1]")}[case]
    assert all(w in line for w in want), line
    assert not (tmp_path / "wm").exists()


def test_no_progress_leaves_a_log_file_without_bars_and_still_resumes(tmp_path, recorded, capsys):
    """`reverie train ... > log`: a bar redraws itself hundreds of times into a file; --no-progress leaves only the
    log_every lines, and it is no setting of the run (the same run resumes with or without it)."""
    out = tmp_path / "r"
    torch.manual_seed(0)
    capsys.readouterr()
    rc = reverie_cli.main(ae_argv(recorded, out, "--set", "log_every=1", "--no-progress"))
    said = capsys.readouterr()
    assert rc == 0 and "it/s" not in said.err and "\r" not in said.err, said.err
    assert "step 1/2: loss " in said.out and "step 2/2: loss " in said.out, said.out
    assert "no_progress" not in json.loads((out / "config.json").read_text())["flags"]
    rc, err = reverie(capsys, *ae_argv(recorded, out, "--steps", "3"))                 # resumes, bar and all
    assert rc == 0 and "it/s" in err
    assert json.loads((out / "state" / "manifest.json").read_text())["step"] == 3


# ---------------------------------------------------------------------------------------------------------------
# The weight average (ema)
# ---------------------------------------------------------------------------------------------------------------
def test_weight_average_follows_the_rule_and_holds_on_a_skipped_step():
    from train.training.loop import WeightAverage

    model = torch.nn.Linear(3, 2)
    avg = WeightAverage(model, 0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    avg.update(step=100)                                  # rate 1 - min(0.9, 101 / 110) = 0.1
    assert torch.allclose(avg.shadow["weight"], start["weight"] + 0.1)
    assert torch.equal(avg.shadow["bias"], start["bias"])
    avg.update(step=0)                                    # early: rate 1 - 1/10 = 0.9 toward the weights
    assert torch.allclose(avg.shadow["weight"], start["weight"] + 0.1 + 0.9 * 0.9)
    before = avg.shadow["weight"].clone()
    avg.update(step=100, ok=torch.tensor(False))          # a step skipped on the device moves nothing
    assert torch.equal(avg.shadow["weight"], before)


def test_ema_averages_the_run_saves_it_with_every_state_and_resumes_it(tmp_path):
    """Six steps with ema equal three, then three more resumed: the average is part of the whole state."""
    from safetensors.torch import load_file

    from train.training.loop import WeightAverage, trained_weights

    def run_steps(root: Path, steps: int):
        model, batch_fn, loss_fn, _ = guard_setup(set())
        run = RunDir(root)
        run.write_config({"test": True})
        last = fit(run=run, model=model, tcfg=tcfg_for(steps, ema=0.5), device=CPU, dist_info=Dist(),
                   batch_fn=batch_fn, loss_fn=loss_fn)
        return run, model, last

    straight, model, last = run_steps(tmp_path / "a", 6)
    saved = load_file(str(straight.state_root / "step_00000006" / "average.state"))
    assert set(saved) == {"weight", "bias"}
    assert not torch.allclose(saved["weight"], model.weight.detach())  # an average, not the last weights
    weights = trained_weights(straight, "m.safetensors", last, model, tcfg_for(6, ema=0.5), Dist())
    assert torch.equal(weights["weight"], saved["weight"])             # what the checkpoint holds
    plain = trained_weights(straight, "m.safetensors", last, model, tcfg_for(6), Dist())
    assert torch.equal(plain["weight"], model.weight.detach())

    # stopped after step 3, then resumed
    shutil.copytree(straight.state_root / "step_00000003", tmp_path / "b" / "state" / "step_00000003")
    (tmp_path / "b" / "state" / "manifest.json").write_text(json.dumps({"latest": "step_00000003", "step": 3}))
    resumed, _, _ = run_steps(tmp_path / "b", 6)
    again = load_file(str(resumed.state_root / "step_00000006" / "average.state"))
    assert all(torch.equal(saved[k], again[k]) for k in saved)

    # by hand: the weights each step left, averaged by the rule
    model, batch_fn, loss_fn, snaps = guard_setup(set())
    fit(run=new_run(tmp_path / "c"), model=model, tcfg=tcfg_for(6), device=CPU, dist_info=Dist(),
        batch_fn=batch_fn, loss_fn=loss_fn)
    snaps[6] = {k: v.clone() for k, v in model.state_dict().items()}
    expect = snaps[0]["weight"].clone()
    for step in range(6):
        rate = 1 - min(0.5, (1 + step) / (10 + step))
        expect = expect + rate * (snaps[step + 1]["weight"] - expect)
    assert torch.allclose(saved["weight"], expect, atol=1e-6)
    assert WeightAverage  # the class is public


def test_ema_writes_the_average_into_the_world_models_checkpoint(tmp_path, recorded, ae_run, capsys):
    from engine.checkpoint import load_checkpoint

    out = tmp_path / "wm"
    rc, err = reverie(capsys, "train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out", str(out),
                      "--steps", "3", "--batch", "2", "--threads", "1", "--window", "4", "--set", "ema=0.9",
                      "--lr", "1e-2", "--set", "warmup=1")
    assert rc == 0, err
    from safetensors.torch import load_file

    avg = load_file(str(out / "state" / "step_00000003" / "average.state"))
    last = load_file(str(out / "state" / "step_00000003" / "model.state"))
    ckpt = load_checkpoint(out / "model.safetensors")
    wm = ckpt.tensors["wm"]
    moved = [k for k in avg if not torch.allclose(avg[k], last[k])]
    assert moved, "the average equals the last weights: nothing was averaged"
    assert all(torch.allclose(wm[k].float(), avg[k], atol=1e-6) for k in moved)


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_ema_out_of_range_is_one_line_and_touches_nothing(tmp_path, recorded, ae_run, capsys, value):
    rc, err = reverie(capsys, "train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out",
                      str(tmp_path / "wm"), "--steps", "1", "--batch", "2", "--threads", "1", "--window", "4",
                      "--set", f"ema={value}")
    assert rc == 1
    line = one_line_error(err, "wm")
    assert f"--set ema={float(value)}" in line and "[0, 1)" in line, line
    assert not (tmp_path / "wm").exists()


def test_a_fine_tune_keeps_the_sampling_defaults_of_its_init_checkpoint(tmp_path, recorded, ae_run, capsys):
    """A model fine-tuned from the shipped one (1 step, guidance 1.75) must not start playing, evaluating and
    benchmarking at the preset's guidance 1.0: the dream it shows would change with no flag given."""
    import dataclasses

    from engine.checkpoint import load_checkpoint, save_checkpoint

    base = ("--data", str(recorded), "--ae", str(ae_run), "--steps", "1", "--batch", "2", "--threads", "1",
            "--window", "4")
    rc, err = reverie(capsys, "train", "wm", *base, "--out", str(tmp_path / "first"))
    assert rc == 0, err
    ck = load_checkpoint(tmp_path / "first" / "model.safetensors")
    assert ck.config.world_model.guidance == 1.0                                  # the preset's, with no --init
    tuned = dataclasses.replace(ck.config.world_model, guidance=1.75, sampling_steps=2, context_noise=0.1)
    cfg = dataclasses.replace(ck.config, world_model=tuned)
    save_checkpoint(tmp_path / "tuned.safetensors", kind=ck.kind, config=cfg, action_spec=ck.action_spec,
                    parts=ck.tensors)

    capsys.readouterr()
    rc = reverie_cli.main(["train", "wm", *base, "--out", str(tmp_path / "ft"), "--init",
                           str(tmp_path / "tuned.safetensors")])
    said = capsys.readouterr().out
    assert rc == 0
    assert "sampling defaults kept from --init: 2 step(s), guidance 1.75, context noise 0.1" in said, said
    wm = load_checkpoint(tmp_path / "ft" / "model.safetensors").config.world_model
    assert (wm.sampling_steps, wm.guidance, wm.context_noise) == (2, 1.75, 0.1)

    rc, err = reverie(capsys, "train", "wm", *base, "--out", str(tmp_path / "from_state"), "--init",
                      str(tmp_path / "first"))                                    # a training state has none
    assert rc == 0, err
    assert load_checkpoint(tmp_path / "from_state" / "model.safetensors").config.world_model.guidance == 1.0
