"""`reverie eval`: score a world model on held-out episodes, over as long as a person plays.

Each rollout primes a session with real context frames of a held-out episode and dreams `--horizon` frames under the
episode's recorded actions, then (past the end of the recording) an agent's, beside the real game under the same
actions where it can be replayed (train.evaluation.long_play). Metrics, against the real frames where there are some:
  psnr, ssim        per horizon step 1..H, mean over rollouts (SSIM: Wang et al. 2004, 11x11 Gaussian window)
  ae_psnr           autoencoder reconstruction PSNR of the real frames (the ceiling of the above)
  ae_small_objects  the reconstruction where the frame changed from the one before (PSNR and recall of those pixels,
                    where a ball or a cursor is), and per probe the share of real frames showing the object whose
                    reconstruction shows it too: a model cannot dream what its autoencoder erases
  action_following  an inverse-dynamics model reading the actions back from dream vs real frame pairs, beside its
                    accuracy on real frames and the chance level (train.evaluation.idm_judge)
  fd_floor          Fréchet distance of autoencoder latents, real vs real (train.evaluation.frechet)
  objects           object probes: the share of frames where each object is visible, real and dream
  control           how far the avatar moves while a direction is held, real vs dream; control_after_dream: the same
                    at the end of the dreams, for horizons past the first bucket (train.evaluation.objects)
  horizon_buckets   every metric per time bucket of horizon steps: 1-16, 17-100, 101-250, 251-500, 501-1000, then
                    doubling
Beside the JSON: a PNG of PSNR against horizon, a PNG per bucket (objects visible, real vs dream; or the Fréchet
distance for games without probes) and `<json stem>_dream.gif`, the first rollout's dream next to the real game.

The session may run its models in bfloat16 (the default on CUDA); every direct use of the autoencoder here casts
its input to the dtype of the module it enters, so the metrics work with any session dtype.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from train.data.windows import EpisodeSource
from train.evaluation.frechet import FrechetReference, bucket_distances, encode_latents, module_dtype, split_halves
from train.evaluation.long_play import (
    BUCKETS,
    bucket_edges,
    bucket_slices,
    evenly_spaced,
    masked_mean,
    plan_starts,
    run_rollouts,
    windows,
)
from train.training.rollout import psnr

__all__ = ["EvalError", "evaluate", "main", "module_dtype", "reconstruct", "ssim", "windows"]

RECON_CHUNK = 256           # frames through the autoencoder at a time for its reconstruction ceiling
AE_FRAMES = 1024            # real frames (evenly spaced) whose reconstruction gives the ceiling
KEPT_RADIUS = 2             # px (at the frame's size): a reconstructed object this close to the real one is kept
SSIM_CHUNK = 256            # frame pairs through SSIM at a time
MAX_FRAMES_GB = 8.0         # dream + real frames kept in memory for the metrics


class EvalError(ReverieError, ValueError):
    """A bad evaluation request: no usable data, a horizon longer than the episodes, ..."""


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM over the last three axes of uint8 images (..., H, W, 3), averaged over channels.

    The Gaussian window is separable, so the five local moments are blurred as one stack, along rows then columns,
    in float32: 80x faster than one 2-D float64 convolution per moment and within 2e-7 of it."""
    flat_a, flat_b = a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])
    out = [_ssim(flat_a[j:j + SSIM_CHUNK], flat_b[j:j + SSIM_CHUNK]) for j in range(0, len(flat_a), SSIM_CHUNK)]
    return (np.concatenate(out) if out else np.zeros(0)).reshape(a.shape[:-3])


def _ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of (N, H, W, 3) uint8 pairs -> (N,) float64."""
    x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0                # (N, 3, H, W)
    y = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 255.0
    size, sigma, C = 11, 1.5, x.shape[1]
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)                      # (N, 5C, H, W)
    k = moments.shape[1]
    blurred = F.conv2d(moments, g.view(1, 1, size, 1).expand(k, 1, size, 1).contiguous(), groups=k)
    blurred = F.conv2d(blurred, g.view(1, 1, 1, size).expand(k, 1, 1, size).contiguous(), groups=k)
    mx, my, exx, eyy, exy = blurred.double().split(C, dim=1)                     # (N, C, H-10, W-10) each
    sxx, syy, sxy = exx - mx**2, eyy - my**2, exy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


@torch.no_grad()
def ae_small_objects(ae: Autoencoder, roll: Any, probes: dict[str, Any], device: torch.device | str) -> dict:
    """The autoencoder on what small moving things need (`autoencoder_on_pairs`), from up to AE_FRAMES consecutive
    real frame pairs of the rollouts."""
    ok = roll.real_ok[:, 1:] & roll.real_ok[:, :-1]                                    # (R, H - 1)
    pairs = np.argwhere(ok)
    pairs = pairs[evenly_spaced(len(pairs), AE_FRAMES)]
    r, t = pairs.T
    return autoencoder_on_pairs(ae, roll.real[r, t], roll.real[r, t + 1], probes, device)


def autoencoder_on_pairs(ae: Autoencoder, before: np.ndarray, after: np.ndarray, probes: dict[str, Any],
                         device: torch.device | str, recon: np.ndarray | None = None) -> dict:
    """How the autoencoder reconstructs the frames `after` (n, h, w, 3) uint8 where they changed from `before`:
    `changed_psnr`, `changed_recall`, `changed_share` (engine.autoencoder.small_object_metrics), and per probe
    `objects.<name>`: `visible_real_frames` (frames showing it), `visible_recon` (the share of those whose
    reconstruction shows it anywhere), `kept_recon` (... shows it within KEPT_RADIUS px of where it is: what
    counts, since a decoder's speckle can pass for a ball) and `false_recon` (the share of frames without it whose
    reconstruction shows it); None where there are no such frames."""
    from engine.autoencoder import small_object_metrics
    from train.evaluation.objects import near

    out: dict[str, Any] = {"pairs": len(after), "changed_psnr": None, "changed_recall": None, "changed_share": None,
                           "objects": {}}
    if not len(after):
        return out
    recon = reconstruct(ae, after, device) if recon is None else recon   # `recon`: the caller's, already made
    m = small_object_metrics(frames_to_tensor(torch.from_numpy(recon)), frames_to_tensor(torch.from_numpy(after)),
                             frames_to_tensor(torch.from_numpy(before)))
    out.update({k: (None if math.isnan(float(v)) else float(v)) for k, v in m.items()})
    for name, probe in probes.items():
        seen, shown = np.asarray(probe.visible(after), bool), np.asarray(probe.visible(recon), bool)
        kept = shown & near(probe.mask(recon), probe.mask(after), KEPT_RADIUS)

        def share(x: np.ndarray, where: np.ndarray) -> float | None:
            return float(x[where].mean()) if where.any() else None

        out["objects"][name] = {"visible_real_frames": int(seen.sum()), "visible_recon": share(shown, seen),
                                "kept_recon": share(kept, seen), "false_recon": share(shown, ~seen)}
    return out


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
    p = argparse.ArgumentParser(prog="reverie eval", description=__doc__.split("\n\n")[0],
                                epilog="To score an agent instead (its mean return over episodes of the real game "
                                       "or of a dream): reverie eval agent --agent AGENT --env GAME --episodes N "
                                       "(see 'reverie eval agent --help').")
    p.add_argument("--model", default=None, help="world-model checkpoint (default: the shipped model)")
    p.add_argument("--data", required=True, help="folder of held-out episodes (not used in training)")
    p.add_argument("--horizon", type=arg_type(check_count(1), "--horizon", int), default=16,
                   help="frames dreamt per rollout (default 16); past the end of an episode an agent plays on, "
                        "and the real game beside the dream where it can be replayed (builtin:gems, Atari)")
    p.add_argument("--context", type=arg_type(check_count(0), "--context", int), default=0,
                   help="real frames that prime each rollout (default 0: W/2)")
    p.add_argument("--json", type=Path, required=True,
                   help="where to write the metrics (folders are made); the GIF goes beside it")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG of PSNR vs horizon (default: beside --json); the per-bucket PNG goes beside it")
    p.add_argument("--steps", type=arg_type(check_steps, "--steps", int), default=None,
                   help="sampling steps, 1..4 (default: the model's)")
    p.add_argument("--guidance", type=arg_type(check_guidance, "--guidance"), default=None,
                   help="classifier-free guidance scale (default: the model's; 1.0 is off)")
    p.add_argument("--context-noise", type=arg_type(check_context_noise, "--context-noise"), default=None,
                   help="run-time context noise, 0..1 (default: the model's)")
    p.add_argument("--ae", default=None,
                   help="score the model with this autoencoder's decoder instead of its own (and write it into "
                        "--write-model): one trained with `reverie train ae --init MODEL --set "
                        "freeze_encoder=true`, whose encoder, and so the latents the world model reads, is the model's")
    p.add_argument("--idm", default=None, help="inverse-dynamics checkpoint (default: the model's own 'idm' part)")
    p.add_argument("--idm-steps", type=arg_type(check_count(1), "--idm-steps", int), default=150,
                   help="if no IDM is given or bundled, train one on --data for this many steps")
    p.add_argument("--rollouts-per-episode", type=arg_type(check_count(1), "--rollouts-per-episode", int),
                   default=8, help="evenly spaced windows per held-out episode (default 8; one per episode where "
                                   "the episode is shorter than context + horizon)")
    p.add_argument("--dreams-per-start", type=arg_type(check_count(1), "--dreams-per-start", int), default=1,
                   help="dream every start this many times, each with its own noise (default 1): more draws where "
                        "the episodes hold one window each (a long --horizon), for shares with a smaller standard "
                        "error")
    p.add_argument("--episodes", type=arg_type(check_count(0), "--episodes", int), default=0,
                   help="use at most this many episodes (0: all)")
    p.add_argument("--batch", type=arg_type(check_batch, "--batch", int), default=16, help="rollouts run together")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--threads", type=arg_type(check_threads, "--threads", int), default=2)
    p.add_argument("--seed", type=arg_type(check_seed, "--seed", int), default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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


def finite_json(x: Any) -> Any:
    """`x` with every NaN or infinity replaced by None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_json(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


@dataclass
class _Plan:
    """What one evaluation scores, settled before any rollout: the model, the held-out data, the starts, the game's
    probes, and where the files go."""

    ckpt: Any
    src: EpisodeSource
    device: torch.device
    context: int
    horizon: int
    starts: list[tuple[int, int]]      # (episode, frame) per rollout, each repeated dreams_per_start times
    env_id: str | None                 # the one game of the rollouts (None: several)
    probes: dict[str, Any]
    after_dream: Any                   # AfterDream: control at the end of long dreams, or None
    plot: Path
    buckets_plot: Path
    video: Path


def evaluate(args: argparse.Namespace) -> int:
    """`reverie eval`: prepare, dream, measure, write."""
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    plan = _prepare(args)
    sessions: dict[int, Session] = {}

    def make_session(batch: int) -> Session:
        if batch not in sessions:
            sessions[batch] = Session(plan.ckpt, device=plan.device, batch=batch, steps=args.steps,
                                      guidance=args.guidance, context_noise=args.context_noise, seed=args.seed,
                                      cuda_graph=False)
        return sessions[batch]

    seeds = [args.seed * 1_000_003 + r for r in range(len(plan.starts))]      # a rollout's noise: its index
    roll = run_rollouts(make_session, plan.src, plan.starts, plan.context, plan.horizon, seeds, args.batch,
                        plan.after_dream, progress=not args.no_progress)
    sess = next(iter(sessions.values()))
    result = _report(args, plan, sess, roll, _measure(args, plan, sess, roll, make_session))
    _write(args, plan, sess, roll, result, t_start)
    return 0


def _prepare(args: argparse.Namespace) -> _Plan:
    """Check the outputs can be written, load the model (with `--ae`'s decoder) and the held-out episodes, and plan
    the rollouts: their starts, and the probes and control checks the game has."""
    from train.evaluation.control import control_frames
    from train.evaluation.objects import AfterDream
    from train.games.probes import AVATAR, probes_for

    device = check_device(args.device)
    plot = args.plot or args.json.with_suffix(".png")
    prepare_output(args.json)                     # before the run, not after it
    prepare_output(plot, "--plot")
    if args.write_model:
        prepare_output(args.write_model, "--write-model")
    ckpt = load_checkpoint(args.model or DEFAULT_MODEL)
    if args.ae:
        swap_decoder(ckpt, args.ae)
    try:
        src = EpisodeSource(args.data)
    except FileNotFoundError as e:                 # train.data.dataset says what is missing
        raise EvalError(f"--data {e}") from None
    except ValueError as e:
        raise EvalError(f"--data {args.data}: {e}") from None
    if not ckpt.action_spec.compatible(src.spec):
        raise CheckpointError(f"{ckpt.path}: a model of {ckpt.action_spec.game!r}, but {args.data} holds "
                              f"{src.spec.game!r} episodes")
    context = args.context or max(1, ckpt.config.world_model.context_frames // 2)
    H = args.horizon
    starts = plan_starts(src, context, H, args.rollouts_per_episode, args.episodes)
    if not starts:
        raise EvalError(f"{args.data}: no episode has {context + 1} frames (context {context} + 1 to dream from); "
                        "lower --context, or record longer episodes")
    starts = [s for s in starts for _ in range(args.dreams_per_start)]  # the repeats differ in their noise
    gb = 2 * len(starts) * H * int(np.prod(src.frame_shape)) / 2**30
    if gb > MAX_FRAMES_GB:
        raise EvalError(f"{len(starts)} rollouts of {H} frames need {gb:.1f} GB for their frames (at most "
                        f"{MAX_FRAMES_GB:g}); lower --horizon, --rollouts-per-episode, --dreams-per-start or "
                        "--episodes")
    env_ids = {src.env_ids[e] for e, _ in starts}
    env_id = env_ids.pop() if len(env_ids) == 1 else None
    probes = probes_for(env_id) if env_id else {}
    avatar = probes.get(AVATAR)
    long_dream = H > BUCKETS[0][1]               # past the first bucket: control after the dream too
    after_dream = AfterDream(avatar, control_frames(env_id)) if avatar is not None and long_dream else None
    return _Plan(ckpt=ckpt, src=src, device=device, context=context, horizon=H, starts=starts, env_id=env_id,
                 probes=probes, after_dream=after_dream, plot=plot,
                 buckets_plot=plot.with_name(plot.stem + "_buckets.png"),
                 video=args.json.with_name(args.json.stem + "_dream.gif"))


def _measure(args: argparse.Namespace, plan: _Plan, sess: Session, roll: Any, make_session: Any) -> dict[str, Any]:
    """Every metric of the rollouts: PSNR and SSIM per rollout and step, the autoencoder's ceiling, action following,
    the Fréchet distances, the objects and control."""
    from train.evaluation.control import control_frames
    from train.evaluation.idm_judge import action_following, load_or_train_idm
    from train.evaluation.objects import CONTROL_STARTS, control_from_starts, object_report
    from train.games.probes import AVATAR, hits_for

    ckpt, src, device, starts, slices = plan.ckpt, plan.src, plan.device, plan.starts, bucket_slices(plan.horizon)
    m: dict[str, Any] = {}
    # pixels: PSNR and SSIM against the real frames, where there are some
    m["psnr"] = np.stack([psnr(d, r) for d, r in zip(roll.dream, roll.real)])          # (R, H)
    m["ssim"] = np.stack([ssim(d, r) for d, r in zip(roll.dream, roll.real)])
    real_frames = roll.real[roll.real_ok]                                               # (n, h, w, 3)
    ceiling = real_frames[evenly_spaced(len(real_frames), AE_FRAMES)]
    m["ae_psnr"] = float(psnr(reconstruct(sess.ae, ceiling, device), ceiling).mean())
    m["ae_small_objects"] = ae_small_objects(sess.ae, roll, plan.probes, device)
    # action following, drift (Fréchet distance), objects and control
    idm, idm_note = load_or_train_idm(args, ckpt, src)
    m["action_following"], m["idm_buckets"] = action_following(idm, idm_note, roll, len(ckpt.action_spec.buttons),
                                                               slices)
    half_a, half_b = split_halves([src.episode_frames(e) for e in sorted({e for e, _ in starts})])
    m["fd_floor"], m["fd_buckets"] = None, [{"fd": None, "fd_floor": None} for _ in slices]
    if min(len(half_a), len(half_b)) >= 1:
        ref = FrechetReference(encode_latents(sess.ae, half_a, device), encode_latents(sess.ae, half_b, device))
        m["fd_floor"], m["fd_buckets"] = ref.floor(), bucket_distances(ref, sess.ae, roll.dream, slices, device)
    m["objects"] = object_report(plan.probes, roll, slices, hits_for(plan.env_id) if plan.env_id else ())
    m["control"] = None
    avatar = plan.probes.get(AVATAR)
    if avatar is not None:
        firsts = list(range(0, len(starts), args.dreams_per_start))      # one dream of each distinct start
        m["control"] = control_from_starts(make_session, src, roll, plan.context, avatar, control_frames(plan.env_id),
                                           [firsts[i] for i in evenly_spaced(len(firsts), CONTROL_STARTS)])
    m["control_after_dream"] = plan.after_dream.report(plan.horizon) if plan.after_dream is not None else None
    return m


def _report(args: argparse.Namespace, plan: _Plan, sess: Session, roll: Any, m: dict[str, Any]) -> dict[str, Any]:
    """The metrics as eval's JSON: per horizon step, per time bucket and overall, with the settings they were made
    with (NaN as null)."""
    H, R, ok, p, s = plan.horizon, len(plan.starts), roll.real_ok, m["psnr"], m["ssim"]                # ok: (R, H)
    horizon_buckets = []
    for i, ((first, last), sl) in enumerate(zip(bucket_edges(H), bucket_slices(H))):
        horizon_buckets.append({
            "first": first, "last": last, "frames": R * (last - first + 1), "real_frames": int(ok[:, sl].sum()),
            "recorded_actions": masked_mean(roll.recorded[:, sl]),
            "psnr": masked_mean(p[:, sl], ok[:, sl]), "ssim": masked_mean(s[:, sl], ok[:, sl]),
            **m["fd_buckets"][i], **m["idm_buckets"][i],
            "objects": {k: {"visible_real": o["visible_real_buckets"][i], "visible_dream": o["visible_dream"][i],
                            "visible_clean_dream": o["visible_clean_dream"][i],
                            "area_real": o["area_real"][i], "area_dream": o["area_dream"][i],
                            "count_real": o["count_real"][i], "count_dream": o["count_dream"][i],
                            "position_error_px": o["position_error_px"][i]}
                        for k, o in m["objects"].items()},
        })
    replayed = roll.replay_notes.get("replayed", 0)
    why_not = next((k for k in roll.replay_notes if k != "replayed"), None)
    return finite_json({
        "psnr": [masked_mean(p[:, k], ok[:, k]) for k in range(H)],
        "ssim": [masked_mean(s[:, k], ok[:, k]) for k in range(H)],
        "psnr_step1": masked_mean(p[:, 0], ok[:, 0]), "psnr_mean": masked_mean(p, ok), "ssim_mean": masked_mean(s, ok),
        "ae_psnr": m["ae_psnr"],
        "ae_small_objects": m["ae_small_objects"],
        "action_following": m["action_following"],
        "fd_floor": m["fd_floor"],
        "horizon_buckets": horizon_buckets,
        "objects": m["objects"],
        "control": m["control"],
        "control_after_dream": m["control_after_dream"],
        "steps": sess.steps, "guidance": sess.guidance, "context": plan.context, "horizon": H,
        "context_noise": sess.context_noise, "episodes": len({e for e, _ in plan.starts}), "rollouts": R,
        "dreams_per_start": args.dreams_per_start,
        "frames": R * H, "real_frames": int(ok.sum()), "recorded_actions": masked_mean(roll.recorded),
        "real_reference": {"replayed_rollouts": replayed, "not_replayed_because": why_not},
        "env_id": plan.env_id, "model": str(plan.ckpt.path), "decoder_from": args.ae, "data": str(args.data),
        "device": str(plan.device),
        "video": None, "plots": [],
    })


def _write(args: argparse.Namespace, plan: _Plan, sess: Session, roll: Any, result: dict, t_start: float) -> None:
    """The plots and the side-by-side GIF (with Pillow), the JSON, the model with its metrics (`--write-model`),
    and one line that sums it up."""
    name = plan.ckpt.path.name
    try:
        from train.pictures.images import line_plot
        from train.pictures.video import side_by_side

        line_plot(plan.plot, {"PSNR (dB)": result["psnr"]}, title=f"{name}: PSNR vs horizon",
                  xlabel="horizon step",
                  hlines=None if result["ae_psnr"] is None else {"AE ceiling": result["ae_psnr"]})
        _bucket_plot(plan.buckets_plot, result, name, line_plot)
        result["plots"] = [str(plan.plot), str(plan.buckets_plot)]
        result["video"] = str(side_by_side(plan.video, roll.real[0], roll.real_ok[0], roll.dream[0]))
    except ImportError:                            # Pillow is an extra
        pass
    result["seconds"] = time.perf_counter() - t_start
    out = write_json(args.json, result)
    if args.write_model:
        _write_model(args, plan.ckpt, sess, result)
    af = result["action_following"]
    if not af["available"]:
        print(f"reverie eval: action following unavailable: {af['unavailable_because']}", file=sys.stderr)
    print(_summary(result, out))


def _summary(result: dict, out: Path) -> str:
    """The line eval ends with: the headline numbers and the files written."""
    af = result["action_following"]
    return (f"psnr step 1 {result['psnr_step1']:.2f} dB, mean over {result['horizon']} "
            f"{_num(result['psnr_mean'], '.2f')} dB, ssim {_num(result['ssim_mean'], '.3f')}, ae "
            f"{_num(result['ae_psnr'], '.2f')} dB, action following {af['generated']:.3f} vs real "
            f"{_num(af['real'], '.3f')} (ratio {_num(af['ratio'], '.2f')}, chance {af['chance']:.3f}"
            + (f"; by effect {_num(af['generated_by_effect'], '.3f')} vs {_num(af['real_by_effect'], '.3f')}, ratio "
               f"{_num(af['ratio_by_effect'], '.2f')}" if "ratio_by_effect" in af else "")
            + f"), fd floor {_num(result['fd_floor'], '.3g')}, {len(result['horizon_buckets'])} buckets -> {out}"
            + "".join(f", {f}" for f in result["plots"]) + (f", {result['video']}" if result["video"] else ""))


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _bucket_plot(path: Path, result: dict, name: str, line_plot: Any) -> None:
    """Per bucket: the avatar's (and one more object's) visible share, real vs dream (and the dream's frames that show
    it without extra copies); FD vs its floor without probes."""
    ticks = [f"{b['first']}-{b['last']}" for b in result["horizon_buckets"]]
    objects = result["objects"]
    if objects:
        names = sorted(objects, key=lambda k: k != "avatar")[:2]
        series = {}
        for k in names:
            series[f"{k} real"] = objects[k]["visible_real_buckets"]
            series[f"{k} dream"] = objects[k]["visible_dream"]
            series[f"{k} dream, no extra copies"] = objects[k]["visible_clean_dream"]
        line_plot(path, series, title=f"{name}: share of frames where the object is visible", xlabel="horizon steps",
                  xticks=ticks)
    else:
        line_plot(path, {"FD dream": [b["fd"] for b in result["horizon_buckets"]],
                         "FD floor (real vs real)": [b["fd_floor"] for b in result["horizon_buckets"]]},
                  title=f"{name}: Fréchet distance of latents", xlabel="horizon steps", xticks=ticks)


def swap_decoder(ckpt: Any, path: str) -> None:
    """Put the autoencoder of checkpoint `path` into `ckpt` in place of its own, after checking that its encoder is
    the model's (equal at float16, the precision models are shipped in): a new decoder for the same latents."""
    ae = load_checkpoint(path)
    if not ae.has("ae"):
        raise EvalError(f"--ae {path}: holds no autoencoder weights (parts: {sorted(ae.tensors)})")
    mine, theirs = ckpt.tensors["ae"], ae.tensors["ae"]
    if set(mine) != set(theirs) or any(mine[k].shape != theirs[k].shape for k in mine):
        raise EvalError(f"--ae {path}: an autoencoder of another shape than the model's ({ckpt.path}); it must "
                        "be trained from the model's with `reverie train ae --init MODEL --set freeze_encoder=true`")
    changed = [k for k in mine if k.startswith("encoder.")
               and not torch.equal(mine[k].to(torch.float16), theirs[k].to(torch.float16))]
    if changed:
        raise EvalError(f"--ae {path}: its encoder differs from the model's ({len(changed)} tensors, e.g. "
                        f"{changed[0]}), so the world model would read latents it was not trained on; train the "
                        "decoder alone (`reverie train ae --init MODEL --set freeze_encoder=true`) or retrain the "
                        "world model on this autoencoder (`reverie train wm --ae`)")
    ckpt.tensors["ae"] = {k: theirs[k] if k.startswith("decoder.") else v for k, v in mine.items()}
    ckpt.metrics = {**ckpt.metrics, "decoder_from": str(path)}


def _write_model(args: argparse.Namespace, ckpt: Any, sess: Session, result: dict) -> None:
    """The evaluated checkpoint with these metrics in its metadata and the evaluated settings as its defaults."""
    from engine.checkpoint import save_checkpoint

    keep = ("psnr_step1", "psnr_mean", "ssim_mean", "ae_psnr", "action_following", "steps", "guidance",
            "context", "horizon", "context_noise", "episodes", "rollouts", "data")
    metrics = {**ckpt.metrics, "eval": {k: result[k] for k in keep}}
    wcfg = ckpt.config.world_model
    wcfg.context_noise, wcfg.sampling_steps, wcfg.guidance = sess.context_noise, sess.steps, sess.guidance
    save_checkpoint(args.write_model, kind=ckpt.kind, config=ckpt.config, action_spec=ckpt.action_spec,
                    parts=ckpt.tensors, data=ckpt.data, metrics=metrics, extra=ckpt.extra, half=args.half)
