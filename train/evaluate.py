"""`reverie eval`: score a world model on held-out episodes by replaying their actions.

Metrics (all on frames, against the real game's):
  psnr, ssim    per horizon step 1..H, mean over rollouts (SSIM: Wang et al. 2004, 11x11 Gaussian window)
  ae_psnr       autoencoder reconstruction PSNR of the real frames (the ceiling of the above)
  action_following  exact-match accuracy of an inverse-dynamics model reading the actions back from generated
                    frame pairs vs from real pairs, and their ratio
A PNG plot of PSNR against horizon is written beside the JSON.

The session may run its models in bfloat16 (the default on CUDA); every direct use of the autoencoder here casts
its input to the dtype of the module it enters, so the metrics work with any session dtype.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.autoencoder import Autoencoder, frames_to_tensor, tensor_to_frames
from engine.checkpoint import CheckpointError, load_checkpoint
from engine.errors import ReverieError
from engine.knobs import (
    arg_type,
    check_batch,
    check_context_noise,
    check_device,
    check_guidance,
    check_seed,
    check_steps,
    check_threads,
)
from engine.output import check_count, prepare_output, write_json
from engine.session import DEFAULT_MODEL, Session
from train.data import EpisodeSource
from train.rollout import psnr, rollout

RECON_CHUNK = 256           # frames through the autoencoder at a time for its reconstruction ceiling


class EvalError(ReverieError, ValueError):
    """A bad evaluation request: no usable data, a horizon longer than the episodes, ..."""


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM over the last three axes of uint8 images (..., H, W, 3), averaged over channels."""
    x = torch.from_numpy(a.reshape(-1, *a.shape[-3:])).permute(0, 3, 1, 2).double() / 255.0
    y = torch.from_numpy(b.reshape(-1, *b.shape[-3:])).permute(0, 3, 1, 2).double() / 255.0
    size, sigma, C = 11, 1.5, x.shape[1]
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :]).expand(C, 1, size, size).contiguous()

    def blur(t):
        return F.conv2d(t, win, groups=C)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3)).numpy().reshape(a.shape[:-3])


def windows(src: EpisodeSource, need: int, per_episode: int, max_episodes: int) -> list[tuple[int, int]]:
    """(episode, start) of evenly spaced, non-overlapping windows of `need` frames."""
    out = []
    for e, n in enumerate(src.lengths[:max_episodes] if max_episodes else src.lengths):
        k = min(per_episode, n // need)
        if k == 0:
            continue
        stride = (n - need) // max(1, k - 1) if k > 1 else 0
        out += [(e, i * stride) for i in range(k)]
    return out


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of a module's parameters (float32 for one without any)."""
    return next((p.dtype for p in module.parameters()), torch.float32)


@torch.no_grad()
def reconstruct(ae: Autoencoder, frames: np.ndarray, device: torch.device | str) -> np.ndarray:
    """(N, H, W, 3) uint8 -> the autoencoder's reconstruction, (N, H, W, 3) uint8, whatever dtypes its encoder and
    decoder are in (the session casts the decoder to bfloat16 on CUDA)."""
    enc_dtype, dec_dtype = module_dtype(ae.encoder), module_dtype(ae.decoder)
    flat = torch.from_numpy(np.ascontiguousarray(frames))
    out = []
    for j in range(0, len(flat), RECON_CHUNK):
        x = frames_to_tensor(flat[j:j + RECON_CHUNK].to(device)).to(enc_dtype)   # (n, 3, H, W)
        z = ae.encode(x).to(dec_dtype)                                          # (n, C, h, w)
        out.append(tensor_to_frames(ae.decode(z).float()).cpu())                # (n, H, W, 3)
    return torch.cat(out).numpy()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reverie eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="world-model checkpoint (default: the shipped model)")
    p.add_argument("--data", required=True, help="folder of held-out episodes (not used in training)")
    p.add_argument("--horizon", type=arg_type(check_count(1), "--horizon", int), default=16,
                   help="frames generated per rollout (default 16)")
    p.add_argument("--context", type=arg_type(check_count(0), "--context", int), default=0,
                   help="real frames that prime each rollout (default 0: W/2)")
    p.add_argument("--json", type=Path, required=True, help="where to write the metrics (folders are made)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of PSNR vs horizon (default: beside --json)")
    p.add_argument("--steps", type=arg_type(check_steps, "--steps", int), default=None,
                   help="sampling steps, 1..4 (default: the model's)")
    p.add_argument("--guidance", type=arg_type(check_guidance, "--guidance"), default=None,
                   help="classifier-free guidance scale (default: the model's; 1.0 is off)")
    p.add_argument("--context-noise", type=arg_type(check_context_noise, "--context-noise"), default=None,
                   help="run-time context noise, 0..1 (default: the model's)")
    p.add_argument("--idm", default=None, help="inverse-dynamics checkpoint (default: the model's own 'idm' part)")
    p.add_argument("--idm-steps", type=arg_type(check_count(1), "--idm-steps", int), default=150,
                   help="if no IDM is given or bundled, train one on --data for this many steps")
    p.add_argument("--rollouts-per-episode", type=arg_type(check_count(1), "--rollouts-per-episode", int),
                   default=8, help="evenly spaced windows per held-out episode (default 8)")
    p.add_argument("--episodes", type=arg_type(check_count(0), "--episodes", int), default=0,
                   help="use at most this many episodes (0: all)")
    p.add_argument("--batch", type=arg_type(check_batch, "--batch", int), default=16, help="rollouts run together")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=2)
    p.add_argument("--seed", type=arg_type(check_seed, "--seed", int), default=0)
    p.add_argument("--write-model", default=None,
                   help="also write the evaluated checkpoint here with these metrics in its metadata (and "
                        "--context-noise, if given, as its run-time default)")
    p.add_argument("--half", action="store_true", help="with --write-model: store float16 weights")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return evaluate(args)
    except ReverieError as e:
        print(f"reverie eval: error: {e}", file=sys.stderr)
        return 1


def evaluate(args: argparse.Namespace) -> int:
    from train.idm import action_accuracy, load_idm, predict

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    device = check_device(args.device)
    plot = args.plot or args.json.with_suffix(".png")
    prepare_output(args.json)                     # before the run, not after it
    prepare_output(plot, "--plot")
    if args.write_model:
        prepare_output(args.write_model, "--write-model")
    ckpt = load_checkpoint(args.model or DEFAULT_MODEL)
    try:
        src = EpisodeSource(args.data)
    except FileNotFoundError as e:                 # train.dataset says what is missing
        raise EvalError(f"--data {e}") from None
    except ValueError as e:
        raise EvalError(f"--data {args.data}: {e}") from None
    if not ckpt.action_spec.compatible(src.spec):
        raise CheckpointError(f"{ckpt.path}: a model of {ckpt.action_spec.game!r}, but {args.data} holds "
                              f"{src.spec.game!r} episodes")
    context = args.context or max(1, ckpt.config.world_model.context_frames // 2)
    need = context + args.horizon
    wins = windows(src, need, args.rollouts_per_episode, args.episodes)
    if not wins:
        raise EvalError(f"{args.data}: no episode has {need} frames (context {context} + horizon {args.horizon}); "
                        "lower --horizon or --context, or record longer episodes")
    gen_all, real_all, acts_all, ctx_last = [], [], [], []
    sess = None
    for i in range(0, len(wins), args.batch):
        chunk = wins[i:i + args.batch]
        if sess is None or sess.batch != len(chunk):
            sess = Session(ckpt, device=device, batch=len(chunk), steps=args.steps, guidance=args.guidance,
                           context_noise=args.context_noise, seed=args.seed, cuda_graph=False)
        fr = np.stack([src.episode_frames(e)[s:s + need] for e, s in chunk])
        ac = np.stack([src.actions[e][s:s + need] for e, s in chunk])
        seeds = [args.seed * 1_000_003 + i + j for j in range(len(chunk))]  # a rollout's noise: its index
        gen, real = rollout(sess, fr, ac, context, args.horizon, seeds)
        gen_all.append(gen)
        real_all.append(real)
        acts_all.append(ac[:, context:])
        ctx_last.append(fr[:, context - 1])
    gen, real = np.concatenate(gen_all), np.concatenate(real_all)      # (R, H, h, w, 3)
    acts, last_ctx = np.concatenate(acts_all), np.concatenate(ctx_last)  # (R, H, A), (R, h, w, 3)
    p, s = psnr(gen, real), ssim(gen, real)                           # (R, H)

    # autoencoder ceiling: reconstruct the real frames of the rollouts
    flat = real.reshape(-1, *real.shape[2:])                           # (R*H, h, w, 3)
    ae_psnr = float(psnr(reconstruct(sess.ae, flat, device), flat).mean())

    # action following through an inverse-dynamics model
    idm_note = "bundled"
    if args.idm:
        idm = load_idm(load_checkpoint(args.idm))
        idm_note = str(args.idm)
    elif ckpt.has("idm"):
        idm = load_idm(ckpt)
    else:
        idm = _quick_idm(args, src)
        idm_note = f"trained on --data for {args.idm_steps} steps (no IDM was given or bundled)"
    nb = len(ckpt.action_spec.buttons)
    before_gen = np.concatenate([last_ctx[:, None], gen[:, :-1]], axis=1)
    before_real = np.concatenate([last_ctx[:, None], real[:, :-1]], axis=1)
    target = torch.from_numpy(acts.reshape(-1, acts.shape[-1]))

    def score(before, after):
        """Overall accuracy and accuracy per horizon step."""
        with torch.no_grad():
            pred = predict(idm, torch.from_numpy(before.reshape(-1, *before.shape[2:])),
                           torch.from_numpy(after.reshape(-1, *after.shape[2:])), nb)
        per = pred.reshape(*acts.shape[:2], -1)
        tgt = target.reshape(*acts.shape[:2], -1)
        by_step = [action_accuracy(per[:, k], tgt[:, k], nb) for k in range(acts.shape[1])]
        return action_accuracy(pred, target, nb), by_step

    (acc_gen, gen_by_step), (acc_real, real_by_step) = score(before_gen, gen), score(before_real, real)
    result = {
        "psnr": [float(v) for v in p.mean(axis=0)], "ssim": [float(v) for v in s.mean(axis=0)],
        "psnr_step1": float(p[:, 0].mean()), "psnr_mean": float(p.mean()), "ssim_mean": float(s.mean()),
        "ae_psnr": ae_psnr,
        "action_following": {"generated": acc_gen, "real": acc_real,
                             "ratio": acc_gen / acc_real if acc_real > 0 else 0.0, "idm": idm_note,
                             "generated_by_step": gen_by_step, "real_by_step": real_by_step},
        "steps": sess.steps, "guidance": sess.guidance, "context": context, "horizon": args.horizon,
        "context_noise": sess.context_noise, "episodes": len({e for e, _ in wins}), "rollouts": len(wins),
        "frames": int(gen.shape[0] * gen.shape[1]), "model": str(ckpt.path), "data": str(args.data),
        "device": str(device), "seconds": time.perf_counter() - t_start,
    }
    out = write_json(args.json, result)
    try:
        from train.visual import line_plot

        line_plot(plot, {"PSNR (dB)": result["psnr"]}, title=f"{ckpt.path.name}: PSNR vs horizon",
                  xlabel="horizon step", hlines={"AE ceiling": ae_psnr})
    except ImportError:
        plot = None
    if args.write_model:
        from engine.checkpoint import save_checkpoint

        keep = ("psnr_step1", "psnr_mean", "ssim_mean", "ae_psnr", "action_following", "steps", "guidance",
                "context", "horizon", "context_noise", "episodes", "rollouts", "data")
        metrics = {**ckpt.metrics, "eval": {k: result[k] for k in keep}}
        # the evaluated run-time settings become the model's defaults
        wcfg = ckpt.config.world_model
        wcfg.context_noise, wcfg.sampling_steps, wcfg.guidance = sess.context_noise, sess.steps, sess.guidance
        save_checkpoint(args.write_model, kind=ckpt.kind, config=ckpt.config, action_spec=ckpt.action_spec,
                        parts=ckpt.tensors, data=ckpt.data, metrics=metrics, extra=ckpt.extra, half=args.half)
    print(f"psnr step 1 {result['psnr_step1']:.2f} dB, mean over {args.horizon} {result['psnr_mean']:.2f} dB, "
          f"ssim {result['ssim_mean']:.3f}, ae {ae_psnr:.2f} dB, action following {acc_gen:.3f} vs real "
          f"{acc_real:.3f} (ratio {result['action_following']['ratio']:.2f}) -> {out}" + (f", {plot}" if plot else ""))
    return 0


def _quick_idm(args: argparse.Namespace, src: EpisodeSource):
    """Train a small IDM on the evaluation data in-process (only when none is available)."""
    from train.idm import InverseDynamics, idm_loss
    from train.loop import step_generator

    print(f"reverie eval: no inverse-dynamics model given; training one on {args.data} for {args.idm_steps} "
          "steps (pass --idm or bundle one with 'reverie train wm --idm' for a fixed instrument)", file=sys.stderr)
    torch.manual_seed(args.seed)
    idm = InverseDynamics(src.spec.size)
    opt = torch.optim.AdamW(idm.parameters(), lr=1e-3)
    nb = len(src.spec.buttons)
    for step in range(args.idm_steps):
        win = src.sample(step_generator(args.seed + 7, step), 32, 2)
        fr = frames_to_tensor(win.frames)
        loss = idm_loss(idm(fr[:, 0], fr[:, 1]), win.actions[:, 1], nb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return idm.eval()
