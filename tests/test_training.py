"""The training loop and `reverie train`: bit-exact resume, crash-safe states, the NaN guard, 2-process DDP (gloo),
the learning-rate schedule, and clear errors for bad inputs.

fit() is driven directly with tiny models (milliseconds per step); the CLI runs use the tiny preset on a recorded
40-step dataset with a handful of steps at batch 2.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from cli_main import cli
from safetensors import safe_open
from safetensors.torch import load_file

import train.training.loop as train_loop
import train.training.run_dir as run_dir_module
from engine.checkpoint import load_checkpoint
from engine.config import WorldModelConfig
from engine.world_model import WorldModel
from train.training.loop import Dist, RunDir, TrainConfig, TrainingError, fit, step_generator
from train.training.wm_loss import WorldModelLoss

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


class Killed(Exception):
    """Stands in for the process dying at a chosen point."""


def tiny_wm(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(WorldModelConfig(d_model=32, heads=2, backbone_layers=2, head_layers=1, context_frames=4,
                                       latent_height=4, latent_width=4, latent_channels=4))


_g = torch.Generator().manual_seed(1234)
POOL_Z = torch.randn(8, 4, 4, 4, 4, generator=_g)                     # 8 windows (W, C, h, w)
POOL_A = (torch.rand(8, 4, 4, generator=_g) > 0.5).float()           # (W, A)


def wm_batch(step: int, d: Dist):
    idx = torch.randint(0, len(POOL_Z), (2,), generator=step_generator(0, step))
    return POOL_Z[idx], POOL_A[idx]


def wm_loss(m, batch):
    loss, _ = m(WorldModelLoss(), *batch)  # the loss draws tau, noise, context levels and action dropout from torch
    return loss, {}


def new_run(root: Path) -> RunDir:
    run = RunDir(root)
    run.write_config({"test": True})
    return run


def tcfg_for(steps: int, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(steps=steps, batch=2, lr=1e-3, warmup=1, save_every=1, log_every=1,
                                 keep_states=10), **kw})


def state_tensors(root: Path, step: int, name: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(root / "state" / f"step_{step:08d}" / f"{name}.state"))


def assert_bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def manifest(root: Path) -> dict:
    return json.loads((root / "state" / "manifest.json").read_text())


# ---------------------------------------------------------------------------------------------------------------
# Resume is bit-exact
# ---------------------------------------------------------------------------------------------------------------
def test_fit_killed_and_resumed_equals_straight_run(tmp_path):
    """The issue's case: 20 steps, killed, resumed to 50, equals 50 straight steps bit for bit."""
    straight = tiny_wm(0)
    fit(run=new_run(tmp_path / "a"), model=straight, tcfg=tcfg_for(50, save_every=10), device=CPU, dist_info=Dist(),
        batch_fn=wm_batch, loss_fn=wm_loss)

    def dies_at_step_20(step, d):
        if step == 20:
            raise Killed
        return wm_batch(step, d)

    run_b = new_run(tmp_path / "b")
    with pytest.raises(Killed):
        fit(run=run_b, model=tiny_wm(0), tcfg=tcfg_for(50, save_every=10), device=CPU, dist_info=Dist(),
            batch_fn=dies_at_step_20, loss_fn=wm_loss)
    assert manifest(run_b.root)["step"] == 20

    seen = []

    def recording(step, d):
        seen.append(step)
        return wm_batch(step, d)

    resumed = tiny_wm(99)  # different initial weights: everything must come from the saved state
    fit(run=run_b, model=resumed, tcfg=tcfg_for(50, save_every=10), device=CPU, dist_info=Dist(), batch_fn=recording,
        loss_fn=wm_loss)
    assert seen == list(range(20, 50))
    for name in ("model", "optim"):
        assert_bit_equal(state_tensors(run_b.root, 50, name), state_tensors(tmp_path / "a", 50, name))
    assert_bit_equal(resumed.state_dict(), straight.state_dict())
    # and training did move the weights
    assert not torch.equal(straight.state_dict()["head.out.weight"], tiny_wm(0).state_dict()["head.out.weight"])


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM: the step under way ends, a whole state of it is saved, and the same call resumes from it
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["SIGINT", "KeyboardInterrupt raised in a step"])
def test_fit_interrupted_at_a_random_step_resumes_from_that_step(tmp_path, capsys, how):
    """Ctrl-C at a random step between state saves (every 10): a real SIGINT lets step k finish and saves step k + 1;
    a KeyboardInterrupt raised inside step k (no handler holds it: fit() off the main thread) saves step k. Either
    way the same call resumes there, not at the last periodic save, and ends bit for bit where a straight run ends."""
    steps, save_every = 30, 10
    k = random.choice([s for s in range(1, steps - 1) if (s + 1) % save_every and s % save_every])
    saved = k + 1 if how == "SIGINT" else k
    straight = tiny_wm(0)
    fit(run=new_run(tmp_path / "a"), model=straight, tcfg=tcfg_for(steps, save_every=save_every), device=CPU,
        dist_info=Dist(), batch_fn=wm_batch, loss_fn=wm_loss)

    def ctrl_c_at_step_k(step, d):
        if step == k:
            if how == "SIGINT":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt
        return wm_batch(step, d)

    run_b = new_run(tmp_path / "b")
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        fit(run=run_b, model=tiny_wm(0), tcfg=tcfg_for(steps, save_every=save_every), device=CPU, dist_info=Dist(),
            batch_fn=ctrl_c_at_step_k, loss_fn=wm_loss)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "fit() left its handler behind"
    assert manifest(run_b.root)["step"] == saved, f"Ctrl-C at step {k}"
    err = capsys.readouterr().err
    assert f"stopped at step {saved}, its whole training state is saved in" in err, err
    assert "run the same command to resume from it" in err
    seen = []

    def recording(step, d):
        seen.append(step)
        return wm_batch(step, d)

    resumed = tiny_wm(99)
    fit(run=run_b, model=resumed, tcfg=tcfg_for(steps, save_every=save_every), device=CPU, dist_info=Dist(),
        batch_fn=recording, loss_fn=wm_loss)
    assert seen == list(range(saved, steps)), f"Ctrl-C at step {k}"
    assert_bit_equal(resumed.state_dict(), straight.state_dict())
    for name in ("model", "optim"):
        assert_bit_equal(state_tensors(run_b.root, steps, name), state_tensors(tmp_path / "a", steps, name))


def test_signals_while_saving_finish_the_save(tmp_path, monkeypatch, capsys):
    """Ctrl-C, then Ctrl-C again and SIGTERM while the state is written: the save completes, the first signal
    decides (KeyboardInterrupt), and no half-written state is left."""
    real_save = RunDir.save_state

    def impatient(self, step, *a, **kw):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(self, step, *a, **kw)

    monkeypatch.setattr(RunDir, "save_state", impatient)
    run = new_run(tmp_path / "r")
    with pytest.raises(KeyboardInterrupt):
        fit(run=run, model=tiny_wm(0), tcfg=tcfg_for(6, save_every=3), device=CPU, dist_info=Dist(),
            batch_fn=wm_batch, loss_fn=wm_loss)
    assert manifest(run.root)["step"] == 3
    assert sorted(p.name for p in run.state_root.iterdir()) == ["manifest.json", "step_00000003"]
    assert "Ctrl-C (SIGINT): stopped at step 3" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_stops_with_exit_status_143_after_saving(tmp_path, capsys):
    """SIGTERM (a scheduler's, torchrun's): the step ends, its state is saved, and fit() raises SystemExit(143)."""
    def term_at_step_4(step, d):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return wm_batch(step, d)

    run = new_run(tmp_path / "r")
    with pytest.raises(SystemExit) as stopped:
        fit(run=run, model=tiny_wm(0), tcfg=tcfg_for(9, save_every=100), device=CPU, dist_info=Dist(),
            batch_fn=term_at_step_4, loss_fn=wm_loss)
    assert stopped.value.code == 143
    assert manifest(run.root)["step"] == 5
    assert "SIGTERM: stopped at step 5" in capsys.readouterr().err


def test_training_says_once_that_tensorboard_logs_are_off_without_it(tmp_path, monkeypatch, capsys):
    """The play set-up has no tensorboard: one line at the start names the extra that writes the logs."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # `import` of it raises ImportError
    run = new_run(tmp_path / "r")
    fit(run=run, model=tiny_wm(0), tcfg=tcfg_for(3), device=CPU, dist_info=Dist(), batch_fn=wm_batch,
        loss_fn=wm_loss)
    out = capsys.readouterr().out
    line = f"TensorBoard logs off: pip install -e '.[train]' (tensorboard) to write them to {run.root / 'tb'}"
    assert out.count("TensorBoard") == 1 and line in out, out
    assert not (run.root / "tb").exists() and (run.root / "metrics.jsonl").is_file()


def test_ddps_grad_strides_warning_alone_is_filtered(tmp_path):
    """DDP's "Grad strides do not match bucket view strides" (a harmless layout note, once per rank, four lines) is
    not shown; any other warning during training still is."""
    def loss_warning(m, batch):
        warnings.warn("Grad strides do not match bucket view strides. This may indicate grad was not created "
                      "according to the gradient layout contract, or that the param's strides changed since DDP "
                      "was constructed.  This is not an error, but may impair performance.", UserWarning, stacklevel=2)
        warnings.warn("something else", UserWarning, stacklevel=2)
        return wm_loss(m, batch)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit(run=new_run(tmp_path / "r"), model=tiny_wm(0), tcfg=tcfg_for(2), device=CPU, dist_info=Dist(),
            batch_fn=wm_batch, loss_fn=loss_warning)
    said = [str(w.message) for w in seen]
    assert said.count("something else") == 2 and not any("Grad strides" in s for s in said), said


# ---------------------------------------------------------------------------------------------------------------
# A crash while saving leaves the previous state whole and named
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["optimizer file", "manifest rename"])
def test_crash_while_saving_keeps_last_whole_state(tmp_path, monkeypatch, where):
    run = new_run(tmp_path / "r")
    if where == "optimizer file":
        real = run_dir_module.save_file

        def crashing(tensors, filename, metadata=None):
            if ".step_00000003.tmp" in filename and filename.endswith("optim.state"):
                raise Killed("died writing the optimizer state")
            return real(tensors, filename, metadata=metadata)

        monkeypatch.setattr(run_dir_module, "save_file", crashing)
    else:
        real = os.replace

        def crashing(src, dst):
            if Path(dst).name == "manifest.json" and json.loads(Path(src).read_text())["step"] == 3:
                raise Killed("died renaming the manifest")
            return real(src, dst)

        monkeypatch.setattr(os, "replace", crashing)
    with pytest.raises(Killed):
        fit(run=run, model=tiny_wm(0), tcfg=tcfg_for(5), device=CPU, dist_info=Dist(), batch_fn=wm_batch,
            loss_fn=wm_loss)
    monkeypatch.undo()

    assert manifest(run.root) == {"latest": "step_00000002", "step": 2}
    assert run.latest() == run.state_root / "step_00000002"
    if where == "optimizer file":  # the half-written state is only under its hidden temporary name
        assert not (run.state_root / "step_00000003").exists()
    straight = tmp_path / "straight"
    fit(run=new_run(straight), model=tiny_wm(0), tcfg=tcfg_for(5), device=CPU, dist_info=Dist(), batch_fn=wm_batch,
        loss_fn=wm_loss)
    assert_bit_equal(state_tensors(run.root, 2), state_tensors(straight, 2))

    # resuming after the crash ends where an uninterrupted run ends
    fit(run=run, model=tiny_wm(7), tcfg=tcfg_for(5), device=CPU, dist_info=Dist(), batch_fn=wm_batch,
        loss_fn=wm_loss)
    for name in ("model", "optim"):
        assert_bit_equal(state_tensors(run.root, 5, name), state_tensors(straight, 5, name))
    assert not list(run.state_root.glob(".*.tmp"))


def test_latest_state_errors_are_clear(tmp_path):
    run = RunDir(tmp_path)
    assert run.latest() is None
    run.state_root.mkdir(parents=True)
    (run.state_root / "manifest.json").write_text("{oops")
    with pytest.raises(TrainingError, match="unreadable manifest"):
        run.latest()
    (run.state_root / "manifest.json").write_text(json.dumps({"latest": "step_00000007", "step": 7}))
    with pytest.raises(TrainingError, match="names step_00000007, which is not a whole state folder"):
        run.latest()


def test_old_states_are_pruned(tmp_path):
    run = new_run(tmp_path)
    fit(run=run, model=tiny_wm(0), tcfg=tcfg_for(4, keep_states=2), device=CPU, dist_info=Dist(),
        batch_fn=wm_batch, loss_fn=wm_loss)
    assert sorted(p.name for p in run.state_root.iterdir()) == ["manifest.json", "step_00000003", "step_00000004"]


# ---------------------------------------------------------------------------------------------------------------
# NaN guard
# ---------------------------------------------------------------------------------------------------------------
def nan_setup(bad_steps: set[int], kind: str = "loss"):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def batch_fn(step, d):
        snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}  # weights after step - 1
        return step

    def loss_fn(m, step):
        loss = torch.nn.functional.mse_loss(m(x), y)
        if step in bad_steps:
            if kind == "loss":
                loss = loss * float("nan")
            else:  # finite loss, infinite gradient: d/dw sqrt(w - w) at 0
                s = m.weight.sum()
                loss = loss + torch.sqrt(s - s.detach())
        return loss, {}

    return model, batch_fn, loss_fn, snapshots


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_steps_are_skipped(tmp_path, kind):
    bad = {1, 2, 4}
    model, batch_fn, loss_fn, snaps = nan_setup(bad, kind)
    run = new_run(tmp_path)
    fit(run=run, model=model, tcfg=tcfg_for(6, max_bad_steps=3, lr=1e-2), device=CPU, dist_info=Dist(),
        batch_fn=batch_fn, loss_fn=loss_fn)
    snaps[6] = model.state_dict()
    for step in range(6):
        unchanged = all(torch.equal(snaps[step][k], snaps[step + 1][k]) for k in snaps[step])
        assert unchanged == (step in bad), f"step {step}: weights {'un' if unchanged else ''}changed"
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    # the optimizer counted only the good steps, and the log says which steps were skipped
    assert {float(v) for k, v in state_tensors(run.root, 6, "optim").items() if k.endswith("/step")} == {3.0}
    skipped = [r for r in map(json.loads, (run.root / "metrics.jsonl").read_text().splitlines())
               if "skipped_steps" in r]
    assert [(r["step"], r["skipped_steps"]) for r in skipped] == [(1, 1.0), (2, 2.0), (4, 1.0)]


def test_too_many_non_finite_steps_in_a_row_stop_the_run(tmp_path):
    model, batch_fn, loss_fn, snaps = nan_setup({2, 3, 4, 5})
    with pytest.raises(TrainingError) as info:
        fit(run=new_run(tmp_path), model=model, tcfg=tcfg_for(8, max_bad_steps=3), device=CPU, dist_info=Dist(),
            batch_fn=batch_fn, loss_fn=loss_fn)
    msg = str(info.value)
    assert "step 4" in msg and "non-finite loss" in msg and "3 in a row" in msg and "Lower --lr" in msg, msg
    assert max(snaps) == 4  # stopped at the third bad step
    assert all(torch.equal(snaps[2][k], v) for k, v in model.state_dict().items())  # never stepped on NaN
    assert manifest(tmp_path)["step"] == 2  # the last good state is still the one to resume from


def test_time_limit_stops_early_and_saves_what_was_learned(tmp_path):
    import time

    def slow_batch(step, d):
        time.sleep(0.1)
        return wm_batch(step, d)

    run = new_run(tmp_path)
    last = fit(run=run, model=tiny_wm(0), tcfg=tcfg_for(50, time_limit=0.35, save_every=1000), device=CPU,
               dist_info=Dist(), batch_fn=slow_batch, loss_fn=wm_loss)
    done = int(last["steps_done"])
    assert 1 <= done < 50
    assert manifest(run.root)["step"] == done  # saved although save_every was not reached
    assert json.loads((run.latest() / "state.json").read_text())["elapsed"] > 0


# ---------------------------------------------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------------------------------------------
def test_lr_schedule_warms_up_then_decays_to_the_floor():
    t = TrainConfig(steps=100, lr=1e-3, warmup=10, min_lr_ratio=0.1)
    lrs = [t.lr_at(s) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(1e-4) and min(lrs) >= 1e-4 - 1e-12


# ---------------------------------------------------------------------------------------------------------------
# Precision: `auto` is bf16 where the hardware computes it natively
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("native", ["AVX-512 BF16", None])
def test_auto_precision_is_bf16_only_on_cpus_that_compute_it(monkeypatch, native):
    monkeypatch.setattr(train_loop, "cpu_native_bf16", lambda: native)
    auto = TrainConfig()
    assert train_loop.autocast_dtype(auto, CPU) == (torch.bfloat16 if native else None)
    assert train_loop.autocast_dtype(auto, torch.device("cuda")) == torch.bfloat16
    # an explicit flag wins over the hardware either way
    assert train_loop.autocast_dtype(TrainConfig(precision="fp32"), CPU) is None
    assert train_loop.autocast_dtype(TrainConfig(precision="bf16"), CPU) == torch.bfloat16
    line = train_loop.describe_precision(*train_loop.choose_precision(auto, CPU))
    assert line.startswith("precision: bf16 autocast" if native else "precision: fp32")
    assert (native in line) if native else ("no native bf16" in line)


def test_native_bf16_is_read_from_torchs_cpu_probes(monkeypatch):
    for amx, avx in ((False, False), (False, True), (True, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx: v, raising=False)
        assert train_loop.cpu_native_bf16() == ("AMX" if amx else "AVX-512 BF16" if avx else None)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")      # a torch build without the probes: fp32
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert train_loop.cpu_native_bf16() is None


def test_bf16_autocast_training_on_cpu_follows_fp32(tmp_path):
    """What `auto` switches on for a CPU with native bf16 must train like fp32: the same data and seeds give the same
    losses step by step, within bf16 rounding."""
    losses = {}
    for precision in ("fp32", "bf16"):
        model = tiny_wm()
        fit(run=new_run(tmp_path / precision), model=model, device=CPU, dist_info=Dist(), batch_fn=wm_batch,
                  loss_fn=wm_loss, tcfg=TrainConfig(steps=8, batch=2, lr=3e-3, warmup=1, save_every=100, log_every=1,
                                                    precision=precision))
        rows = [json.loads(x) for x in (tmp_path / precision / "metrics.jsonl").read_text().splitlines()]
        losses[precision] = [r["loss"] for r in rows if "loss" in r]
    f32, b16 = losses["fp32"], losses["bf16"]
    assert len(f32) == len(b16) == 8
    assert all(abs(a - b) <= 0.05 * abs(a) + 1e-3 for a, b in zip(f32, b16)), (f32, b16)


# ---------------------------------------------------------------------------------------------------------------
# Data parallel: 2 processes with gloo
# ---------------------------------------------------------------------------------------------------------------
DDP_WORKER = textwrap.dedent("""
    import hashlib, json, sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from train.training.loop import TrainConfig, finish_distributed, fit, start_run, step_generator

    out = Path(sys.argv[1])
    tcfg = TrainConfig(steps=6, batch=8, lr=1e-2, warmup=1, save_every=3, log_every=1, threads=1, device="cpu",
                      precision="fp32")   # the averaging is checked at fp32 tolerance
    run, device, d = start_run(str(out / "run"), tcfg, {"stage": "ddp-test"})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    g = torch.Generator().manual_seed(7)
    X, Y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)

    def digest(m):
        h = hashlib.sha256()
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())
        return h.hexdigest()

    def batch_fn(step, di):
        idx = torch.randint(0, 64, (tcfg.batch,), generator=step_generator(tcfg.seed, step))
        per = tcfg.batch // di.world
        idx = idx[di.rank * per:(di.rank + 1) * per]  # each rank its own slice
        return X[idx], Y[idx]

    def loss_fn(m, b):
        return torch.nn.functional.mse_loss(m(b[0]), b[1]), {}

    initial = digest(model)
    fit(run=run, model=model, tcfg=tcfg, device=device, dist_info=d, batch_fn=batch_fn, loss_fn=loss_fn)
    save_file(dict(model.state_dict()), str(out / f"rank{d.rank}.safetensors"))
    (out / f"rank{d.rank}.json").write_text(json.dumps(
        {"rank": d.rank, "world": d.world, "initial": initial, "final": digest(model)}))
    finish_distributed()
""")


def test_two_process_ddp_ranks_agree_and_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert r0["final"] == r1["final"], "ranks ended with different weights"
    assert r0["final"] != r0["initial"], "training did not change the weights"

    # DDP averages the ranks' gradients: the same as one process on the whole batch
    torch.manual_seed(0)
    single = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    g = torch.Generator().manual_seed(7)
    X, Y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)

    def batch_fn(step, d):
        idx = torch.randint(0, 64, (8,), generator=step_generator(0, step))
        return X[idx], Y[idx]

    fit(run=new_run(tmp_path / "single"), model=single, device=CPU, dist_info=Dist(),
        tcfg=TrainConfig(steps=6, batch=8, lr=1e-2, warmup=1, save_every=3, log_every=1, precision="fp32"),
        batch_fn=batch_fn, loss_fn=lambda m, b: (torch.nn.functional.mse_loss(m(b[0]), b[1]), {}))
    ddp_weights = load_file(str(tmp_path / "rank0.safetensors"))
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ddp_weights[k], v, rtol=1e-5, atol=1e-6)
    # rank 0 alone wrote the run folder
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["world_size"] == 2
    assert manifest(tmp_path / "run")["step"] == 6
    assert_bit_equal(state_tensors(tmp_path / "run", 6), ddp_weights)


DDP_SIGNAL_WORKER = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import torch
    from train.training.loop import TrainConfig, finish_distributed, fit, start_run

    out, k = Path(sys.argv[1]), int(sys.argv[2])
    tcfg = TrainConfig(steps=50, batch=4, lr=1e-2, warmup=1, save_every=100, log_every=1, threads=1, device="cpu",
                       precision="fp32")
    run, device, d = start_run(str(out / "run"), tcfg, {"stage": "ddp-test"})
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def batch_fn(step, di):
        if step == k and di.rank == 1:   # SIGTERM to rank 1 alone
            os.kill(os.getpid(), signal.SIGTERM)
        return torch.randn(2, 8), torch.randn(2, 1)

    try:
        fit(run=run, model=model, tcfg=tcfg, device=device, dist_info=d, batch_fn=batch_fn,
            loss_fn=lambda m, b: (torch.nn.functional.mse_loss(m(b[0]), b[1]), {}))
        code = 0
    except SystemExit as e:
        code = e.code
    (out / f"rank{d.rank}.json").write_text(json.dumps({"code": code}))
    finish_distributed()   # both ranks have written theirs before either leaves
    sys.exit(code)
""")


def test_sigterm_to_one_rank_stops_every_rank_after_one_save(tmp_path):
    """Under torchrun a signal may reach one rank (or each at another step): the ranks agree at the next step
    boundary, save one whole state of that step together and all exit 143, none left waiting in an all-reduce."""
    script = tmp_path / "worker.py"
    script.write_text(DDP_SIGNAL_WORKER)
    k = random.randrange(1, 40)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path), str(k)], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    said = proc.stdout + proc.stderr
    codes = [json.loads((tmp_path / f"rank{r}.json").read_text())["code"] for r in (0, 1)]
    assert codes == [143, 143], said[-3000:]
    assert manifest(tmp_path / "run")["step"] == k + 1
    assert said.count(f"SIGTERM: stopped at step {k + 1}, its whole training state is saved") == 1, said[-3000:]


def test_two_process_ddp_through_the_cli(tmp_path, recorded):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "reverie_cli", "train", "ae", "--data", str(recorded), "--out", str(out), "--steps",
                           "2", "--batch", "2", "--threads", "1"], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone writes
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    ck = load_checkpoint(out / "ae.safetensors")
    assert_bit_equal(ck.tensors["ae"], state_tensors(out, 2))


def test_two_process_wm_on_its_own_rollouts_through_the_cli(tmp_path, recorded, ae_run):
    """2 gloo ranks train the world model with own-rollout context, a change-weighted loss and a backbone without
    actions (its frozen action weights must not stall DDP's gradient reduction): rank 0 alone encodes the latent
    cache (the other rank waits and reads it), and the settings are kept in the model's config."""
    out = tmp_path / "wm2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "reverie_cli", *stage_argv("wm", recorded, ae_run, out, 2), "--set",
                           "rollout_iters=2", "--set", "backbone_actions=off", "--set", "change_weight=1.5"],
                          capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1
    assert (proc.stdout + proc.stderr).count("encode:   0%") == 1  # one encoding pass, not one per rank
    ck = load_checkpoint(out / "model.safetensors")
    assert ck.extra["loss"]["rollout_iters"] == 2 and (out / "latents.cache").is_file()
    assert ck.config.world_model.backbone_actions is False and ck.extra["loss"]["change_weight"] == 1.5


def test_two_process_fsdp_through_the_cli_resumes(tmp_path, recorded):
    """FSDP2 over 2 gloo ranks: the full weights are gathered into the checkpoint and a state, and a sharded run
    resumes from a full state (2 steps, then the same command to 3)."""
    out = tmp_path / "fsdp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(steps: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "reverie_cli", "train", "idm", "--data", str(recorded), "--out", str(out),
                               "--steps", str(steps), "--batch", "4", "--threads", "1", "--set", "fsdp=true", "--set",
                               "save_every=1"],
                              capture_output=True, text=True, timeout=180, cwd=REPO, env=env)

    first = run(2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    ck = load_checkpoint(out / "idm.safetensors")
    assert_bit_equal(ck.tensors["idm"], state_tensors(out, 2))
    second = run(3)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming" in second.stdout + second.stderr
    after = load_checkpoint(out / "idm.safetensors").tensors["idm"]
    assert_bit_equal(after, state_tensors(out, 3))
    assert any(not torch.equal(after[k], ck.tensors["idm"][k]) for k in after)  # step 3 trained on


# ---------------------------------------------------------------------------------------------------------------
# `reverie train` end to end (tiny preset, a few steps)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rec") / "d"
    assert cli("record", "--env", "builtin:gems", "--agent", "scripted", "--episodes", "2", "--steps", "40", "--size",
               "64", "--out", str(out), "--seed", "1", "--no-progress") == 0
    return out


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory, recorded) -> Path:
    out = tmp_path_factory.mktemp("ae") / "run"
    assert cli("train", "ae", "--data", str(recorded), "--out", str(out), "--steps", "2", "--batch", "2",
               "--threads", "1") == 0
    return out


def stage_argv(stage: str, recorded: Path, ae_run: Path, out: Path, steps: int) -> list[str]:
    argv = ["train", stage, "--data", str(recorded), "--out", str(out), "--steps", str(steps), "--batch", "2",
            "--threads", "1", "--set", "save_every=1"]
    if stage == "wm":
        argv += ["--ae", str(ae_run / "ae.safetensors"), "--window", "4"]
    return argv




@pytest.mark.parametrize("stage", ["ae", "wm"])
def test_cli_interrupted_and_resumed_equals_straight_run(tmp_path, recorded, ae_run, monkeypatch, capsys, stage):
    """5 steps straight vs the same command interrupted (Ctrl-C) right after the state of step 2, then re-run."""
    import train.training.rollout

    # end-of-run previews: not compared
    monkeypatch.setattr(train.training.rollout, "write_samples", lambda *a, **kw: {})
    assert cli(*stage_argv(stage, recorded, ae_run, tmp_path / "straight", 5)) == 0

    real_save = RunDir.save_state

    def interrupt_after_step_2(self, step, *a, **kw):
        path = real_save(self, step, *a, **kw)
        if step == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(RunDir, "save_state", interrupt_after_step_2)
    resumed = tmp_path / "resumed"
    assert cli(*stage_argv(stage, recorded, ae_run, resumed, 5)) == 130  # reverie: interrupted
    monkeypatch.setattr(RunDir, "save_state", real_save)
    assert manifest(resumed)["step"] == 2
    capsys.readouterr()
    assert cli(*stage_argv(stage, recorded, ae_run, resumed, 5)) == 0
    assert "resuming from" in capsys.readouterr().out
    assert_bit_equal(state_tensors(resumed, 5), state_tensors(tmp_path / "straight", 5))
    final = "ae.safetensors" if stage == "ae" else "model.safetensors"
    a, b = load_checkpoint(resumed / final), load_checkpoint(tmp_path / "straight" / final)
    for part in a.tensors:
        assert_bit_equal(a.tensors[part], b.tensors[part])


def test_cli_ctrl_c_at_a_random_step_saves_it_and_the_same_command_resumes(tmp_path, recorded, monkeypatch,
                                                                          capsys):
    """Ctrl-C (a real SIGINT) at a random step between state saves: the step under way ends, its whole state is
    saved and said in one line, `reverie` exits 130, and the same command resumes from that step and ends where a
    straight run ends."""
    import train.training.rollout

    monkeypatch.setattr(train.training.rollout, "write_samples", lambda *a, **kw: {})  # previews: not compared
    steps = 6

    def argv(out: Path) -> list[str]:
        return ["train", "ae", "--data", recorded, "--out", out, "--steps", steps, "--batch", "2", "--threads", "1",
                "--set", "save_every=100"]

    assert cli(*argv(tmp_path / "straight")) == 0
    k = random.randrange(1, steps - 1)     # the step under way when Ctrl-C comes
    real_step = train_loop._step

    def ctrl_c_at_step_k(loop, step, *a):
        if step == k:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(loop, step, *a)

    monkeypatch.setattr(train_loop, "_step", ctrl_c_at_step_k)
    resumed = tmp_path / "resumed"
    capsys.readouterr()
    assert cli(*argv(resumed)) == 130
    monkeypatch.setattr(train_loop, "_step", real_step)
    err = capsys.readouterr().err
    assert f"Ctrl-C (SIGINT): stopped at step {k + 1}, its whole training state is saved in" in err, err
    assert manifest(resumed)["step"] == k + 1
    assert cli(*argv(resumed)) == 0
    assert f"(step {k + 1})" in capsys.readouterr().out
    a, b = load_checkpoint(resumed / "ae.safetensors"), load_checkpoint(tmp_path / "straight" / "ae.safetensors")
    assert_bit_equal(a.tensors["ae"], b.tensors["ae"])


def test_sigterm_to_a_training_process_saves_and_the_same_command_resumes(tmp_path, recorded):
    """SIGTERM to `reverie train ae` at whatever step it has reached: it exits 143 with a whole state of that step
    (between saves), and the same command resumes from there."""
    import time

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "reverie_cli", "train", "ae", "--data", str(recorded), "--out", str(out),
            "--steps", "100000", "--batch", "2", "--threads", "1", "--no-progress", "--set", "save_every=100000",
            "--set", "log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run_until(ready) -> tuple[int, str, str]:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
        return proc.returncode, stdout, stderr

    def logged_steps() -> int:
        f = out / "metrics.jsonl"
        return len(f.read_text().splitlines()) if f.is_file() else 0

    rc, stdout, stderr = run_until(lambda: logged_steps() >= 3)
    assert rc == 143, stdout[-2000:] + stderr[-2000:]
    step = manifest(out)["step"]
    assert 3 <= step < 100000
    assert f"SIGTERM: stopped at step {step}, its whole training state is saved in" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr

    rows_before = logged_steps()
    rc, stdout, _ = run_until(lambda: logged_steps() > rows_before + 1)
    assert rc == 143
    assert f"resuming from {out / 'state' / f'step_{step:08d}'} (step {step})" in stdout
    assert manifest(out)["step"] > step


def test_cli_seed_sets_initial_weights(tmp_path, recorded):
    outs = []
    for i, rng_state in enumerate((1, 2)):
        torch.manual_seed(rng_state)  # e.g. a notebook or a sweep that ran something before
        out = tmp_path / f"r{i}"
        assert cli("train", "idm", "--data", str(recorded), "--out", str(out), "--steps", "1", "--batch", "2",
                   "--threads", "1", "--set", "seed=3", seed_torch=False) == 0
        outs.append(out)
    assert_bit_equal(state_tensors(outs[0], 1), state_tensors(outs[1], 1))


def test_cli_rerun_of_finished_run_keeps_weights(tmp_path, recorded, ae_run):
    out = tmp_path / "r"
    argv = stage_argv("ae", recorded, ae_run, out, 2)
    assert cli(*argv) == 0
    first = load_checkpoint(out / "ae.safetensors")
    assert cli(*argv) == 0  # nothing left to do: resumes at the end
    again = load_checkpoint(out / "ae.safetensors")
    assert_bit_equal(first.tensors["ae"], again.tensors["ae"])


def test_cli_rerun_of_finished_run_keeps_metrics(tmp_path, recorded, ae_run):
    out = tmp_path / "r"
    argv = stage_argv("ae", recorded, ae_run, out, 2)
    assert cli(*argv) == 0
    first = load_checkpoint(out / "ae.safetensors").metrics
    assert cli(*argv) == 0
    assert "psnr" in first and load_checkpoint(out / "ae.safetensors").metrics == first


def test_cli_wm_writes_a_loadable_model_with_config_and_metrics(tmp_path, recorded, ae_run, idm_run):
    out = tmp_path / "wm"
    assert cli(*stage_argv("wm", recorded, ae_run, out, 2), "--half", "--idm", str(idm_run)) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.get_slice("wm.head.x_in.weight").get_dtype() == "F16"  # --half stores float16
    ck = load_checkpoint(out / "model.safetensors")
    assert ck.kind == "world_model" and ck.has("ae") and ck.has("wm")
    trained = state_tensors(out, 2)
    for k, v in ck.tensors["wm"].items():  # loaded back as float32, equal to the trained weights up to fp16 rounding
        assert v.dtype == trained[k].dtype
        torch.testing.assert_close(v, trained[k], rtol=1e-3, atol=1e-4)
    frames, actions = ck.start_state()  # the built-in start state: the first W/2 frames of episode 0
    assert frames.shape == (2, 64, 64, 3) and frames.dtype == torch.uint8 and actions.shape == (2, 4)
    bundled, idm = ck.tensors["idm"], load_checkpoint(idm_run / "idm.safetensors").tensors["idm"]
    assert bundled.keys() == idm.keys()
    for k in idm:  # bundled for eval, stored float16 like the rest
        torch.testing.assert_close(bundled[k], idm[k], rtol=1e-3, atol=1e-4)
    assert ck.config.world_model.context_frames == 4 and ck.action_spec.game == "builtin:gems"
    assert ck.data["episodes"] == 2 and "loss" in ck.metrics
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["steps"] == 2 and cfg["window"] == 4 and cfg["stage"] == "wm"
    assert (out / "latents.cache").exists() and list((out / "samples").glob("*.png"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(k in rows[-1] for k in ("loss", "lr", "grad_norm"))


@pytest.fixture(scope="module")
def idm_run(tmp_path_factory, recorded) -> Path:
    out = tmp_path_factory.mktemp("idm") / "run"
    assert cli("train", "idm", "--data", str(recorded), "--out", str(out), "--steps", "2", "--batch", "4",
               "--threads", "1") == 0
    return out


def test_cli_idm_trains_and_writes_checkpoint(idm_run):
    from engine.inverse_dynamics import load_idm

    ck = load_checkpoint(idm_run / "idm.safetensors")
    assert ck.kind == "idm" and "accuracy" in ck.metrics
    idm = load_idm(ck)
    logits = idm(torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64))
    assert logits.shape == (3, ck.action_spec.size)


def test_cli_dry_run_prints_config_and_writes_nothing(tmp_path, recorded, capsys):
    out = tmp_path / "dry"
    capsys.readouterr()
    assert cli("train", "ae", "--data", str(recorded), "--out", str(out), "--steps", "7", "--dry-run") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["steps"] == 7 and printed["stage"] == "ae"
    assert printed["model"]["autoencoder"]["height"] == 64
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# The stage commands are derived from one settings dataclass per stage
# ---------------------------------------------------------------------------------------------------------------
DELETED = ("--shortcut-decay", "--head-patch", "--unsure-actions", "--train-only", "--decoder-noise")


def stage_parser(stage: str):
    from train.training import cli as train_cli

    sub = next(a for a in train_cli.parser()._actions if a.dest == "stage")
    return sub.choices[stage]


@pytest.mark.parametrize("stage", ["ae", "idm", "wm"])
def test_each_stage_has_a_settings_dataclass_its_flags_come_from(stage):
    """SETTINGS is the stage's dataclass (TrainConfig's fields and its own): every field has help, the flags are
    the fields marked as flags (plus paths and controls), and --help lists every field with its default."""
    import dataclasses
    import importlib

    cls = importlib.import_module(f"train.training.{stage}").SETTINGS
    assert dataclasses.is_dataclass(cls) and issubclass(cls, TrainConfig)
    names = [f.name for f in dataclasses.fields(cls)]
    assert all(f.metadata["help"] for f in dataclasses.fields(cls))
    p = stage_parser(stage)
    options = [o for a in p._actions for o in a.option_strings if o.startswith("--")]
    assert len(options) + 1 <= 25, options                            # -h counts too
    assert not [o for o in options if o in DELETED]
    flagged = {f.name for f in dataclasses.fields(cls) if f.metadata.get("flag")}
    settings_flags = {o[2:].replace("-", "_") for o in options} & set(names)
    assert settings_flags == flagged
    text = p.format_help()
    assert all(f"  {n}=" in text for n in names), text
    assert not [d for d in DELETED if d in text]


@pytest.mark.parametrize("stage", ["ae", "idm", "wm"])
def test_every_setting_round_trips_through_set(stage):
    """The recipe runner's contract: every field of SETTINGS, written as --set NAME=VALUE the way a recipe writes it
    (bools as true/false), comes back as the same value."""
    import argparse
    import dataclasses
    import importlib

    from train.training.config import settings_from_args

    cls = importlib.import_module(f"train.training.{stage}").SETTINGS
    other = {bool: lambda v: not v, int: lambda v: v + 3, float: lambda v: v / 2 + 0.25, str: lambda v: v}
    want = {f.name: other[type(f.default)](f.default) for f in dataclasses.fields(cls)}
    want.update(precision="fp32", fsdp=False, preset="small", focus="avatar,enemies", objects="avatar", ema=0.5)
    argv = [stage, "--data", "d", "--out", "o", *(["--ae", "a"] if stage == "wm" else [])]
    for k, v in want.items():
        if k in {f.name for f in dataclasses.fields(cls)}:
            argv += ["--set", f"{k}={('true' if v else 'false') if isinstance(v, bool) else v}"]
    args = argparse.Namespace(**vars(stage_parser(stage).parse_args(argv[1:])))
    got = settings_from_args(args, cls, stage)
    for f in dataclasses.fields(cls):
        expect = min(want[f.name], max(1, want["steps"] // 5)) if f.name == "warmup" else want[f.name]
        assert getattr(got, f.name) == expect, f.name
        assert getattr(args, f.name) == want[f.name], f.name          # what config.json records: as given


def test_train_wm_help_lists_at_most_25_options():
    from train.training import cli as train_cli

    with pytest.raises(SystemExit):
        train_cli.parser().parse_args(["wm", "--help"])
    options = [o for a in stage_parser("wm")._actions for o in a.option_strings]
    assert len([o for o in options if o.startswith("--")]) <= 25 and "-h" in options


def test_set_takes_every_setting_typed_by_its_field(tmp_path, recorded, ae_run, capsys):
    """`--set NAME=VALUE` sets any field, typed (a bool from true/false/on/off/yes/no/1/0; a string may hold commas);
    the run records the resolved settings."""
    out = tmp_path / "dry"
    capsys.readouterr()
    assert cli("train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out", str(out), "--window", "4",
               "--set", "rollout_iters=2", "--set", "backbone_actions=off", "--set", "focus=avatar,enemies",
               "--set", "focus_share=0.75", "--set", "precision=fp32", "--set", "ema=0.999", "--set", "half=1",
               "--set", "steps=9", "--dry-run") == 0
    printed = json.loads(capsys.readouterr().out.split("\n", 1)[1])   # after the line --focus prints
    train = printed["train"]
    assert (train["rollout_iters"], train["backbone_actions"], train["focus"], train["focus_share"]) == \
        (2, False, "avatar,enemies", 0.75)
    assert (train["precision"], train["ema"], train["half"], train["steps"], train["window"]) == \
        ("fp32", 0.999, True, 9, 4)
    assert printed["loss"]["rollout_iters"] == 2 and printed["model"]["world_model"]["backbone_actions"] is False
    assert printed["flags"]["rollout_iters"] == 2 and "set" not in printed["flags"]
    assert not out.exists()


@pytest.mark.parametrize(("argv", "needles"), [
    (["--set", "rolout_iters=2"], ["--set rolout_iters=2", "no setting 'rolout_iters'", "did you mean rollout_iters"]),
    (["--set", "rollout-iters=2"], ["did you mean rollout_iters"]),
    (["--set", "colour=red"], ["no setting 'colour'", "'reverie train wm --help'"]),
    (["--set", "rollout_iters"], ["--set rollout_iters", "NAME=VALUE"]),
    (["--set", "rollout_iters=two"], ["--set rollout_iters=two", "whole number"]),
    (["--set", "focus_share=half"], ["--set focus_share=half", "takes a number"]),
    (["--set", "backbone_actions=maybe"], ["--set backbone_actions=maybe", "true or false"]),
    (["--set", "precision=fp16"], ["--set precision=fp16", "auto, fp32, bf16"]),
    (["--set", "focus_share=1.5"], ["--set focus_share=1.5", "(0, 1]"]),
    (["--set", "rollout_fraction=nan"], ["--set rollout_fraction=nan", "[0, 1]"]),
    (["--set", "min_label_confidence=2"], ["--set min_label_confidence=2.0", "[0, 1]"]),
    (["--set", "ema=1"], ["--set ema=1.0", "[0, 1)"]),
    (["--set", "ema=0.9", "--set", "fsdp=true"], ["ema=0.9", "fsdp=true", "drop one"]),
    (["--steps", "0"], ["--steps 0", "at least 1"]),
    (["--steps", "5", "--set", "steps=6"], ["--set steps=6", "also given as --steps", "give it once"]),
    (["--set", "steps=5", "--set", "steps=6"], ["--set steps=6", "also given as --set steps"]),
    (["--set", "ae=x.safetensors"], ["--set ae=x.safetensors", "is a path", "--ae"]),
    (["--set", "objects=avatar"], ["--set objects=avatar", "object_weight"]),
    (["--set", "fresh_actions=true"], ["--set fresh_actions=true", "needs --init"]),
    (["--set", "patch=3"], ["--set patch=3", "1, 2, 4, 8"]),
])
def test_a_bad_setting_is_one_line_naming_it(tmp_path, recorded, ae_run, capsys, argv, needles):
    out = tmp_path / "wm"
    capsys.readouterr()
    rc = cli("train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out", str(out), "--threads", "1",
             "--window", "4", *argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("reverie train wm: error: "), err
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    assert not out.exists()


def test_cli_bad_inputs_give_one_line_errors(tmp_path, recorded, ae_run, capsys):
    small = tmp_path / "small"
    assert cli("record", "--env", "builtin:gems", "--episodes", "1", "--steps", "5", "--size", "32", "--out",
               str(small), "--seed", "1", "--no-progress") == 0
    cases = [
        (["train", "ae", "--data", str(small), "--out", str(tmp_path / "a"), "--steps", "1"],
         ["frames are (32, 32, 3)", "expects (64, 64, 3)", "--size 64"]),
        (["train", "ae", "--data", str(recorded), "--out", str(tmp_path / "b"), "--preset", "huge", "--steps", "1"],
         ["unknown preset 'huge'"]),
        (["train", "wm", "--data", str(recorded), "--ae", str(tmp_path / "none.safetensors"), "--out",
          str(tmp_path / "c"), "--steps", "1"], ["no such checkpoint file"]),
        (["train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out", str(tmp_path / "d"), "--steps", "1",
          "--batch", "1", "--threads", "1", "--window", "64"], ["fewer than the window of 64"]),
        # the autoencoder of another preset: say which preset it is, or how to train one of this preset
        (["train", "wm", "--data", str(recorded), "--ae", str(ae_run), "--out", str(tmp_path / "e"), "--steps", "1",
          "--preset", "small"], ["latents are 16x8x8", "preset 'small' reads 16x16x16", "--preset tiny",
                                 "'reverie train ae --preset small --data"]),
        # frames the autoencoder does not encode
        (["train", "wm", "--data", str(small), "--ae", str(ae_run), "--out", str(tmp_path / "f"), "--steps", "1"],
         ["--data", "frames are (32, 32, 3)", "encodes (64, 64, 3)", "--size 64"]),
    ]
    for argv, needles in cases:
        capsys.readouterr()
        rc = cli(*argv)
        err = capsys.readouterr().err
        assert rc == 1, (argv, err)
        assert "Traceback" not in err and f"reverie train {argv[1]}: error:" in err, err
        for n in needles:
            assert n in err, (n, err)


def test_state_files_hold_every_rng_and_the_step(tmp_path):
    run = new_run(tmp_path)
    fit(run=run, model=tiny_wm(0), tcfg=tcfg_for(1), device=CPU, dist_info=Dist(), batch_fn=wm_batch,
        loss_fn=wm_loss)
    folder = run.state_root / "step_00000001"
    assert sorted(p.name for p in folder.iterdir()) == ["model.state", "optim.state", "rng.state",
                                                       "state.json"]
    meta = json.loads((folder / "state.json").read_text())
    assert meta["step"] == 1 and meta["train"]["steps"] == 1
    assert "torch" in load_file(str(folder / "rng.state"))


def test_warm_start_finds_the_newest_state_from_a_run_or_state_folder(tmp_path):
    """`train wm --init` takes a checkpoint, a state folder, the run's state/ folder or the run folder itself; the
    last two follow the manifest to the newest whole state."""
    from train.training.loop import RunDir
    from train.training.wm import warm_start_weights

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    run = RunDir(tmp_path / "run")
    run.save_state(1, model, opt, keep=2, extra={})
    with torch.no_grad():
        model.weight.add_(1.0)
    newest = run.save_state(2, model, opt, keep=2, extra={})
    for where in (run.root, run.state_root, newest):
        got = warm_start_weights(str(where))
        assert got.sampling is None, where   # a training state has no run-time defaults of its own
        assert got.encoder is None, where    # nor a recorded autoencoder (this run has no config.json)
        assert torch.equal(got.weights["weight"], model.weight.detach()), where
