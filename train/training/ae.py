"""`reverie train ae`: train the autoencoder on recorded frames; writes RUN/ae.safetensors."""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass

import torch

from engine.autoencoder import Autoencoder, frames_to_tensor
from engine.checkpoint import CheckpointError, load_checkpoint, resolve_model, save_checkpoint
from engine.config import ModelConfig
from train.pictures.images import save_grid
from train.training.config import (
    TrainConfig,
    TrainingError,
    add_settings,
    data_path,
    open_episodes,
    restate,
    setting,
    settings_from_args,
    step_generator,
    within,
)
from train.training.loop import Dist, fit, start_run, trained_weights
from train.training.run_dir import check_out

HELP = "the autoencoder (frame <-> latent grid)"
LINEAGE = 8   # how many encoders back a checkpoint records (encoder_lineage)


@dataclass
class AESettings(TrainConfig):
    """`reverie train ae`: the shared settings, the preset, crops, the loss on changed pixels, a frozen encoder."""

    steps: int = restate("steps", 2000)
    batch: int = restate("batch", 32)
    lr: float = restate("lr", 1e-3)
    preset: str = setting("tiny", "model size: tiny, small, oasis", flag=True)
    crop: int = setting(0, "train on random crops of this size (a multiple of the latent factor; 0: whole frames)")
    change_weight: float = setting(0.0, "extra loss weight on the pixels that changed from the previous frame, where "
                                   "small moving things (a ball, a cursor) are: each such pixel weighs 1 + this; try "
                                   "8-256 for games with tiny moving objects", check=within(0, 1000))
    freeze_encoder: bool = setting(False, "with --init: train the decoder only; the latents stay exactly as they "
                                   "were, so a world model trained on them keeps working with the new decoder "
                                   "('reverie eval --ae' scores and writes the model with it)")


SETTINGS = AESettings


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `reverie train ae`: its paths, then its settings (train.training.config.add_settings)."""
    p.add_argument("--data", required=True, help="folder of episode files (from 'reverie record')")
    p.add_argument("--out", required=True, help="run folder (created; an existing run of this stage resumes)")
    p.add_argument("--init", default=None,
                   help="start from this autoencoder's weights: an autoencoder checkpoint or a model file (its "
                        "'ae' part); same preset")
    add_settings(p, AESettings)


def init_weights(path: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The autoencoder weights of a checkpoint (an autoencoder's, or a model file's 'ae' part; load_checkpoint gives
    float16 weights back as float32), and the lineage of encoders they descend from (encoder_lineage)."""
    try:
        ck = load_checkpoint(resolve_model(path))
    except (CheckpointError, OSError) as e:
        raise TrainingError(f"--init {path}: {e}") from None
    if not ck.has("ae"):
        raise TrainingError(f"--init {path}: holds no autoencoder weights (parts: {sorted(ck.tensors)})")
    return ck.tensors["ae"], encoder_lineage(ck.tensors["ae"], ck.extra)


def encoder_fingerprint(ae: dict[str, torch.Tensor]) -> str:
    """A hash of an autoencoder's encoder weights at float16 (the precision models ship in)."""
    h = hashlib.sha256()
    for k in sorted(k for k in ae if k.startswith("encoder.")):
        h.update(f"{k}:{tuple(ae[k].shape)}".encode())
        h.update(ae[k].detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def encoder_lineage(ae: dict[str, torch.Tensor], extra: dict) -> list[str]:
    """The fingerprints of the encoder `ae` holds and of those it was trained from, newest first (a checkpoint's
    extra records them): a world model trained on one of them may warm-start on this autoencoder's latents."""
    older = [x for x in extra.get("encoder_lineage", []) if isinstance(x, str)] if isinstance(extra, dict) else []
    return list(dict.fromkeys([encoder_fingerprint(ae), *older]))[:LINEAGE]


def run(args: argparse.Namespace) -> int:
    """Train the autoencoder; write RUN/ae.safetensors."""
    s = settings_from_args(args, AESettings, "ae")
    data_path(args.data)  # every path, then the run folder, before any work
    flags = check_out(args, "ae")
    cfg = ModelConfig.from_name(s.preset)
    if s.crop and (s.crop % cfg.autoencoder.factor or not 0 < s.crop <= min(cfg.autoencoder.height,
                                                                             cfg.autoencoder.width)):
        raise TrainingError(f"{s.said('crop')}: must be a multiple of {cfg.autoencoder.factor} no larger than "
                            f"the frame of preset {s.preset!r}")
    if s.freeze_encoder and not args.init:
        raise TrainingError(f"{s.said('freeze_encoder')}: needs --init, the autoencoder whose encoder to keep")
    src = open_episodes(args)
    cfg = ModelConfig.from_name(s.preset, action_dim=src.spec.size)
    cfg.autoencoder.change_weight = s.change_weight
    cfg.autoencoder.validate()
    init, lineage = init_weights(args.init) if args.init else (None, [])
    H, W = cfg.autoencoder.height, cfg.autoencoder.width
    if tuple(src.frame_shape) != (H, W, 3):
        raise TrainingError(f"--data {args.data}: frames are {src.frame_shape}, preset {s.preset!r} expects "
                            f"({H}, {W}, 3); record with --size {H} or pick another preset")
    started = start_run(args.out, s, {"stage": "ae", "flags": flags, "model": cfg.to_dict(),
                                      "data": src.summary(), "crop": s.crop},
                        args.dry_run, args.no_resume)
    if started is None:
        return 0
    run_dir, device, dist_info = started
    model = Autoencoder(cfg.autoencoder).to(device)
    if init is not None:
        try:
            model.load_state_dict(init)
        except RuntimeError as e:
            raise TrainingError(f"--init {args.init}: its autoencoder does not fit preset {s.preset!r} "
                                f"({str(e).splitlines()[0]}); pass the preset it was trained with") from None
    if s.freeze_encoder:
        model.encoder.requires_grad_(False)

    def batch_fn(step: int, d: Dist) -> torch.Tensor:
        """This rank's slice of the frame pairs of `step` (cropped when --crop): (b, 2, 3, h, w), previous then
        current; the loss reconstructs the current frame and weighs what changed from the previous one."""
        win = src.sample(step_generator(s.seed, step), s.batch, 2)
        per = s.batch // d.world
        frames = win.frames[d.rank * per:(d.rank + 1) * per]  # (b, 2, H, W, 3)
        if s.crop:  # a random crop on the latent grid: convolutions see the same local patterns, 4x cheaper
            f = cfg.autoencoder.factor
            gen = step_generator(s.seed, step, stream="crop")
            y = int(torch.randint(0, (H - s.crop) // f + 1, (1,), generator=gen)) * f
            x = int(torch.randint(0, (W - s.crop) // f + 1, (1,), generator=gen)) * f
            frames = frames[:, :, y:y + s.crop, x:x + s.crop]
        return frames_to_tensor(frames.to(device, non_blocking=True))

    def loss_fn(m, pairs):
        """The autoencoder's loss and stats (its forward is its loss), on the current frames of the pairs."""
        return m(pairs[:, 1], pairs[:, 0])  # Autoencoder.forward is its loss; through DDP's wrapper when there is one

    def sample_fn(step: int):
        """Real frames over their reconstructions, as a PNG."""
        win = src.sample(step_generator(s.seed, 0, stream="preview"), 8, 1)
        frames = frames_to_tensor(win.frames[:, 0].to(device))
        with torch.no_grad():
            recon = model.decode(model.encode(frames)).clamp(0, 1)
        save_grid(run_dir.root / "samples" / f"ae_step{step:07d}.png", [frames, recon])
        return None

    last = fit(run=run_dir, model=model, tcfg=s, device=device, dist_info=dist_info, batch_fn=batch_fn,
               loss_fn=loss_fn, sample_fn=sample_fn,
               describe=lambda v: (f"loss {v['loss']:.4f} psnr {v.get('psnr', 0):.1f}dB changed: "
                                   f"{v.get('changed_psnr', float('nan')):.1f}dB, "
                                   f"recall {v.get('changed_recall', float('nan')):.2f}"), resume=not args.no_resume,
               progress=not args.no_progress)
    weights = trained_weights(run_dir, "ae.safetensors", last, model, s, dist_info)
    if weights is None:
        return 0
    if dist_info.main:
        model = Autoencoder(cfg.autoencoder).to(device)
        model.load_state_dict(weights)
        sample_fn(s.steps)
        path = save_checkpoint(run_dir.root / "ae.safetensors", kind="autoencoder", config=cfg,
                               action_spec=src.spec, parts={"ae": weights}, data=src.summary(),
                               metrics={k: float(v) for k, v in last.items()},
                               extra={"encoder_lineage": encoder_lineage(weights, {"encoder_lineage": lineage})})
        print(f"wrote {path} (train psnr {last.get('psnr', float('nan')):.2f} dB; over the pixels that changed from "
              f"the previous frame {last.get('changed_psnr', float('nan')):.2f} dB, recall "
              f"{last.get('changed_recall', float('nan')):.3f})")
    return 0
