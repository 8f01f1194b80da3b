"""`reverie train ae`: train the autoencoder on recorded frames; writes RUN/ae.safetensors."""

from __future__ import annotations

import argparse

import torch

from engine.autoencoder import Autoencoder, frames_to_tensor
from engine.checkpoint import CheckpointError, load_checkpoint, resolve_model, save_checkpoint
from engine.config import ModelConfig
from train.pictures.images import save_grid
from train.training.config import (
    TrainingError,
    add_train_flags,
    config_from_args,
    data_path,
    open_episodes,
    step_generator,
)
from train.training.loop import Dist, fit, start_run, trained_weights
from train.training.run_dir import check_out

HELP = "the autoencoder (frame <-> latent grid)"


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `reverie train ae`: the shared ones and the crop size."""
    add_train_flags(p, "ae")
    p.add_argument("--crop", type=int, default=0,
                   help="train on random crops of this size (a multiple of the latent factor; 0: whole frames)")
    p.add_argument("--change-weight", type=float, default=None,
                   help="extra loss weight on the pixels that changed from the previous frame, where small moving "
                        "things (a ball, a cursor) are: each such pixel weighs 1 + this (default: the preset's, 0). "
                        "Try 8-32 for games with tiny moving objects; the run logs changed_recall either way")
    p.add_argument("--decoder-noise", type=float, default=None,
                   help="max std of the noise added to latents while training the decoder, relative to their std "
                        "(default: the preset's, 0.25): it makes the decoder robust to a world model's imperfect "
                        "latents, and also teaches it to ignore the faint latent trace of a tiny object")
    p.add_argument("--init", default=None,
                   help="start from this autoencoder's weights: an autoencoder checkpoint or a model file (its "
                        "'ae' part); same preset")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="with --init: train the decoder only. The latents stay exactly as they were, so a world "
                        "model trained on them keeps working with the new decoder (`reverie eval --ae` scores "
                        "and writes the model with it)")


def init_weights(path: str) -> dict[str, torch.Tensor]:
    """The autoencoder weights of a checkpoint (an autoencoder's, or a model file's 'ae' part; load_checkpoint gives
    float16 weights back as float32)."""
    try:
        ck = load_checkpoint(resolve_model(path))
    except (CheckpointError, OSError) as e:
        raise TrainingError(f"--init {path}: {e}") from None
    if not ck.has("ae"):
        raise TrainingError(f"--init {path}: holds no autoencoder weights (parts: {sorted(ck.tensors)})")
    return ck.tensors["ae"]


def run(args: argparse.Namespace) -> int:
    """Train the autoencoder; write RUN/ae.safetensors."""
    tcfg = config_from_args(args)
    data_path(args.data)  # every path, then the run folder, before any work
    flags = check_out(args, "ae")
    cfg = ModelConfig.from_name(args.preset)
    if args.crop and (args.crop % cfg.autoencoder.factor or not 0 < args.crop <= min(cfg.autoencoder.height,
                                                                                         cfg.autoencoder.width)):
        raise TrainingError(f"--crop {args.crop}: must be a multiple of {cfg.autoencoder.factor} no larger than "
                            f"the frame of preset {args.preset!r}")
    src = open_episodes(args)
    cfg = ModelConfig.from_name(args.preset, action_dim=src.spec.size)
    if args.change_weight is not None:
        cfg.autoencoder.change_weight = args.change_weight
    if args.decoder_noise is not None:
        cfg.autoencoder.decoder_noise = args.decoder_noise
    cfg.autoencoder.validate()
    if args.freeze_encoder and not args.init:
        raise TrainingError("--freeze-encoder: needs --init, the autoencoder whose encoder to keep")
    init = init_weights(args.init) if args.init else None
    H, W = cfg.autoencoder.height, cfg.autoencoder.width
    if tuple(src.frame_shape) != (H, W, 3):
        raise TrainingError(f"--data {args.data}: frames are {src.frame_shape}, preset {args.preset!r} expects "
                            f"({H}, {W}, 3); record with --size {H} or pick another preset")
    started = start_run(args.out, tcfg, {"stage": "ae", "flags": flags, "model": cfg.to_dict(),
                                         "data": src.summary(), "crop": args.crop},
                        args.dry_run, args.no_resume)
    if started is None:
        return 0
    run_dir, device, dist_info = started
    model = Autoencoder(cfg.autoencoder).to(device)
    if init is not None:
        try:
            model.load_state_dict(init)
        except RuntimeError as e:
            raise TrainingError(f"--init {args.init}: its autoencoder does not fit preset {args.preset!r} "
                                f"({str(e).splitlines()[0]}); pass the preset it was trained with") from None
    if args.freeze_encoder:
        model.encoder.requires_grad_(False)

    def batch_fn(step: int, d: Dist) -> torch.Tensor:
        """This rank's slice of the frame pairs of `step` (cropped when --crop): (b, 2, 3, h, w), previous then
        current; the loss reconstructs the current frame and weighs what changed from the previous one."""
        win = src.sample(step_generator(tcfg.seed, step), tcfg.batch, 2)
        per = tcfg.batch // d.world
        frames = win.frames[d.rank * per:(d.rank + 1) * per]  # (b, 2, H, W, 3)
        if args.crop:  # a random crop on the latent grid: convolutions see the same local patterns, 4x cheaper
            f = cfg.autoencoder.factor
            gen = step_generator(tcfg.seed, step, stream="crop")
            y = int(torch.randint(0, (H - args.crop) // f + 1, (1,), generator=gen)) * f
            x = int(torch.randint(0, (W - args.crop) // f + 1, (1,), generator=gen)) * f
            frames = frames[:, :, y:y + args.crop, x:x + args.crop]
        return frames_to_tensor(frames.to(device, non_blocking=True))

    def loss_fn(m, pairs):
        """The autoencoder's loss and stats (its forward is its loss), on the current frames of the pairs."""
        return m(pairs[:, 1], pairs[:, 0])  # Autoencoder.forward is its loss; through DDP's wrapper when there is one

    def sample_fn(step: int):
        """Real frames over their reconstructions, as a PNG."""
        win = src.sample(step_generator(tcfg.seed, 0, stream="preview"), 8, 1)
        frames = frames_to_tensor(win.frames[:, 0].to(device))
        with torch.no_grad():
            recon = model.decode(model.encode(frames)).clamp(0, 1)
        save_grid(run_dir.root / "samples" / f"ae_step{step:07d}.png", [frames, recon])
        return None

    last = fit(run=run_dir, model=model, tcfg=tcfg, device=device, dist_info=dist_info, batch_fn=batch_fn,
               loss_fn=loss_fn, sample_fn=sample_fn,
               describe=lambda v: (f"loss {v['loss']:.4f} psnr {v.get('psnr', 0):.1f}dB changed: "
                                   f"{v.get('changed_psnr', float('nan')):.1f}dB, "
                                   f"recall {v.get('changed_recall', float('nan')):.2f}"), resume=not args.no_resume,
               progress=not args.no_progress)
    weights = trained_weights(run_dir, "ae.safetensors", last, model, tcfg, dist_info)
    if weights is None:
        return 0
    if dist_info.main:
        model = Autoencoder(cfg.autoencoder).to(device)
        model.load_state_dict(weights)
        sample_fn(tcfg.steps)
        path = save_checkpoint(run_dir.root / "ae.safetensors", kind="autoencoder", config=cfg,
                               action_spec=src.spec, parts={"ae": weights}, data=src.summary(),
                               metrics={k: float(v) for k, v in last.items()})
        print(f"wrote {path} (train psnr {last.get('psnr', float('nan')):.2f} dB; over the pixels that changed from "
              f"the previous frame {last.get('changed_psnr', float('nan')):.2f} dB, recall "
              f"{last.get('changed_recall', float('nan')):.3f})")
    return 0
